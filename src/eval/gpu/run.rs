//! One evaluation: upload θ, X, Y and the masks once, record the base pass and every
//! chunk's stages (perturb_row → rank1 → dense… → sample_loss → reduce) into one encoder,
//! submit once, read J± (or ΔJ±) and the kink flags back.

use wgpu::util::DeviceExt;

use super::context::GpuContext;
use super::pipelines::{Job, TILE, WG};
use super::plan::Plan;
use super::{EvalOptions, Real};
use crate::error::{Error, Result};
use crate::eval::{Evaluation, Precision, cpu, validate_epsilon};
use crate::model::{Data, Model, Params};

impl GpuContext {
    /// Capacity in reals of one batch buffer: the adapter's binding/buffer limits, capped
    /// at 512 MiB so a job leaves room for others on the device.
    pub(super) fn batch_capacity(&self, real_size: u64) -> u64 {
        let bytes = self
            .limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
            .min(512 << 20);
        bytes / real_size
    }

    /// Every J(θ ± ε·e_i) on this device (or those of `opts.range`). `precision` Auto
    /// picks f64 when available.
    pub fn evaluate(
        &self,
        model: &Model,
        params: &Params,
        data: &Data,
        epsilon: f64,
        precision: Precision,
        opts: EvalOptions,
    ) -> Result<Evaluation> {
        validate_epsilon(epsilon)?;
        let precision = match precision {
            Precision::F64 | Precision::F64Plain if !self.has_f64 => {
                return Err(Error::Gpu(format!(
                    "{} has no SHADER_F64; use --precision f32",
                    self.info.name
                )));
            }
            Precision::Auto if self.has_f64 => Precision::F64,
            Precision::Auto => Precision::F32,
            p => p,
        };
        let use_f64 = matches!(precision, Precision::F64 | Precision::F64Plain);
        let delta = matches!(precision, Precision::F64 | Precision::F32);
        let plan = Plan::new(
            model,
            data,
            self.batch_capacity(if use_f64 { 8 } else { 4 }),
            &opts,
        )?;
        if let Some(r) = &opts.range {
            if r.start > r.end || r.end > model.n_params() {
                return Err(Error::Config(format!(
                    "parameter range {r:?} is outside 0..{}",
                    model.n_params()
                )));
            }
        }
        let fwd = cpu::forward(model, params, data);
        let (mut out, steps) = if use_f64 {
            // f64 Δ: the step is exactly ±ε·x; plain: divided by 2ε as the notebook does.
            let out = self.run::<f64>(model, params, data, epsilon, &plan, &fwd, delta)?;
            (out, None)
        } else {
            let out = self.run::<f32>(model, params, data, epsilon, &plan, &fwd, delta)?;
            let e32 = epsilon as f32;
            let steps = if delta {
                // The Δ path moves each pre-activation by exactly ±fl32(ε)·x: 2·fl32(ε).
                vec![2.0 * f64::from(e32); model.n_params()]
            } else {
                // fl(θ ± ε) − θ differs from ε by up to u32·|θ|: divide by the real steps.
                params
                    .as_slice()
                    .iter()
                    .map(|&t| f64::from(t as f32 + e32) - f64::from(t as f32 - e32))
                    .collect()
            };
            (out, Some(steps))
        };
        let range = opts.range.clone().unwrap_or(0..model.n_params());
        for i in (0..range.start).chain(range.end..model.n_params()) {
            out.plus[i] = f64::NAN;
            out.minus[i] = f64::NAN;
        }
        let magnitudes = out.magnitudes.map(|mag| {
            (0..model.n_params())
                .map(|i| {
                    if range.contains(&i) {
                        [mag[2 * i], mag[2 * i + 1]]
                    } else {
                        [f64::NAN; 2]
                    }
                })
                .collect::<Vec<_>>()
        });
        let cost_scale = match &magnitudes {
            // RMS over the evaluated i of Σ_j|Δloss_j|/m, averaged over ±.
            Some(mag) if !range.is_empty() => {
                let sq: f64 = range
                    .clone()
                    .map(|i| {
                        let a = 0.5 * (mag[i][0] + mag[i][1]);
                        a * a
                    })
                    .sum();
                (sq / range.len() as f64).sqrt()
            }
            _ => cpu::noise_scale(model, &fwd, data),
        };
        let plain_f64 = precision == Precision::F64Plain;
        Ok(Evaluation {
            // The Δ paths' J(θ) through softplus / log-sum-exp (finite when σ(z) = 1).
            cost: if delta {
                cpu::stable_cost(model, &fwd, data)
            } else {
                fwd.cost
            },
            plus: out.plus,
            minus: out.minus,
            deltas: delta,
            cost_scale,
            kinks: out.kinks,
            magnitudes,
            step_errors: plain_f64
                .then(|| crate::eval::nominal_step_errors(params.as_slice(), epsilon)),
            backend: format!("gpu ({})", self.info.name),
            precision: precision.label().into(),
            unit_roundoff: if use_f64 {
                f64::EPSILON / 2.0
            } else {
                f64::from(f32::EPSILON) / 2.0
            },
            steps,
            notes: Vec::new(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn run<R: Real>(
        &self,
        model: &Model,
        params: &Params,
        data: &Data,
        epsilon: f64,
        plan: &Plan,
        fwd: &cpu::Forward,
        delta: bool,
    ) -> Result<RunOutput> {
        let pipes = self.pipelines(R::IS_F64)?;
        let dev = &self.device;
        let n = model.n_params();
        let m = data.m();
        let depth = model.depth();
        let sizes = model.sizes();
        // Model buffer: header | θ | X | Y | dropout factors.
        let header = 3 + depth;
        let mut host: Vec<f64> = vec![epsilon, model.l2() / (2.0 * m as f64), fwd.weight_sumsq];
        host.extend((0..depth).map(|l| model.activation(l).slope()));
        let theta_off = host.len();
        host.extend_from_slice(params.as_slice());
        let x_off = host.len();
        host.extend(data.x.iter());
        let y_off = host.len();
        host.extend(data.y.iter());
        // Dropout factors D_l/keep_prob per layer (offset 0 = none: the header is there).
        let mut mask_off = vec![0u32; depth];
        for (l, f) in data.masks.iter().enumerate() {
            if let Some(f) = f {
                mask_off[l] = host.len() as u32;
                host.extend(f.iter());
            }
        }
        debug_assert_eq!(theta_off, header);
        let to_u32 = |v: usize, what: &str| {
            u32::try_from(v).map_err(|_| {
                Error::Gpu(format!(
                    "{what} = {v} exceeds the 32-bit indices of the kernels"
                ))
            })
        };
        to_u32(host.len(), "model buffer length")?;
        // Base buffer: Z_l and A_l of every layer.
        let mut z_off = Vec::new();
        let mut a_off = Vec::new();
        let mut base_len = 0usize;
        for &nl in &sizes[1..] {
            z_off.push(base_len);
            base_len += nl * m;
            a_off.push(base_len);
            base_len += nl * m;
        }
        to_u32(base_len, "activation count")?;

        let scope_oom = dev.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let scope_val = dev.push_error_scope(wgpu::ErrorFilter::Validation);
        let usage_rw = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let model_buf = dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("model"),
            contents: bytemuck::cast_slice(&R::convert(&host)),
            usage: wgpu::BufferUsages::STORAGE,
        });
        let mk = |label: &str, reals: usize| {
            dev.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: (reals.max(1) * R::SIZE) as u64,
                usage: usage_rw,
                mapped_at_creation: false,
            })
        };
        // The Δ path linearises around the base pass: take the CPU's f64 one (already
        // computed for J(θ)), at the user's θ and rounded once, rather than an f32 pass
        // whose accumulated rounding would move that point. Plain paths run their own.
        let base_buf = if delta {
            let mut host_base = Vec::with_capacity(base_len);
            for (z, a) in fwd.z.iter().zip(&fwd.a) {
                host_base.extend(z.iter());
                host_base.extend(a.iter());
            }
            dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("base"),
                contents: bytemuck::cast_slice(&R::convert(&host_base)),
                usage: usage_rw,
            })
        } else {
            mk("base", base_len)
        };
        let batch_a = mk("batch a", plan.batch_reals);
        let batch_b = mk("batch b", plan.batch_reals);
        // J± (plain) or ΔJ± then Σ|Δloss|/m (Δ path), plus even and minus odd.
        let results_reals = if delta { 4 * n } else { 2 * n };
        let results = mk("results", results_reals);
        let kinks = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("kinks"),
            size: (n.max(1) * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });

        // Every dispatch: (entry, job, which batch buffer is src, workgroups x, y).
        let mut jobs: Vec<(&'static str, Job, bool, u32, u32)> = Vec::new();
        let layout = model.layout();
        let grid = |total: u32| -> (u32, u32) {
            let groups = total.div_ceil(WG).max(1);
            let x = groups.min(self.limits.max_compute_workgroups_per_dimension);
            (x, groups.div_ceil(x))
        };
        // Fields every dispatch shares.
        let common = Job {
            m: m as u32,
            y_off: y_off as u32,
            theta_off: theta_off as u32,
            loss: model.loss().code(),
            l2: u32::from(model.l2() != 0.0),
            n_params: n as u32,
            delta: u32::from(delta),
            ..Job::default()
        };
        let param_off = |i: usize| (theta_off + i) as u32;
        // A stage computing layer q: its activation, sizes, W and b, input, base Z/A and
        // dropout factors (each kernel reads the ones it needs).
        let at_layer = |mut s: Job, q: usize| {
            s.act = model.activation(q).code();
            s.slope_idx = (3 + q) as u32;
            s.is_output = u32::from(q + 1 == depth);
            s.in_dim = sizes[q] as u32;
            s.out_dim = sizes[q + 1] as u32;
            s.w_off = param_off(layout.weight(q).offset);
            s.b_off = param_off(layout.bias(q).offset);
            s.in_is_x = u32::from(q == 0);
            s.in_off = (if q == 0 { x_off } else { a_off[q - 1] }) as u32;
            s.z_off = z_off[q] as u32;
            s.a_off = a_off[q] as u32;
            s.mask_off = mask_off[q];
            s
        };
        // Base forward (the Δ path has it from the CPU).
        for l in (0..depth).filter(|_| !delta) {
            let mut j = at_layer(common, l);
            j.total = to_u32(sizes[l + 1] * m, "layer size × m")?;
            let (gx, gy) = grid(j.total);
            jobs.push(("base_layer", j, false, gx, gy));
        }
        // Perturbation chunks.
        for chunk in &plan.chunks {
            let l = chunk.layer;
            let k = 2 * chunk.count;
            let cols = to_u32(k * m, "chunk columns")?;
            let mut j = common;
            j.first = chunk.first as u32;
            j.cols = cols;
            j.w_param = layout.weight(l).offset as u32;
            j.rows_l = sizes[l + 1] as u32;
            j.cols_l = sizes[l] as u32;
            // perturb_row: → batch a.
            let mut s = at_layer(j, l);
            s.total = cols;
            let (gx, gy) = grid(s.total);
            jobs.push(("perturb_row", s, true, gx, gy));
            let mut in_a = true; // the latest output is in batch a
            if l + 1 < depth {
                let q = l + 1;
                let mut s = at_layer(j, q);
                s.total = to_u32(sizes[q + 1] * k * m, "rank-1 stage size")?;
                let (gx, gy) = grid(s.total);
                jobs.push(("rank1", s, !in_a, gx, gy));
                in_a = !in_a;
                for q in l + 2..depth {
                    let mut s = at_layer(j, q);
                    let out = sizes[q + 1] as u32;
                    if out < TILE {
                        s.total = to_u32(sizes[q + 1] * k * m, "dense stage size")?;
                        let (gx, gy) = grid(s.total);
                        jobs.push(("dense_narrow", s, !in_a, gx, gy));
                        in_a = !in_a;
                        continue;
                    }
                    let gx = cols.div_ceil(TILE);
                    let gy = out.div_ceil(TILE);
                    if gx > self.limits.max_compute_workgroups_per_dimension {
                        return Err(Error::Gpu(format!(
                            "internal: chunk of {cols} columns exceeds the workgroup limit"
                        )));
                    }
                    jobs.push(("dense", s, !in_a, gx, gy));
                    in_a = !in_a;
                }
            }
            // The losses read the output layer's base Z (and A for MSE).
            let mut s = at_layer(j, depth - 1);
            s.total = cols;
            let (gx, gy) = grid(s.total);
            jobs.push(("sample_loss", s, !in_a, gx, gy));
            in_a = !in_a;
            let mut s = j;
            s.total = k as u32;
            let (gx, gy) = grid(s.total);
            jobs.push(("reduce", s, !in_a, gx, gy));
        }

        let (ubuf, stride) = self.jobs_buffer(jobs.iter().map(|(_, job, ..)| job));
        // Two bind groups: (src, dst) = (a, b) and (b, a).
        let g_ab = self.bind_group(
            &pipes,
            &ubuf,
            [&model_buf, &base_buf, &batch_a, &batch_b, &results, &kinks],
        );
        let g_ba = self.bind_group(
            &pipes,
            &ubuf,
            [&model_buf, &base_buf, &batch_b, &batch_a, &results, &kinks],
        );

        let results_len = (results_reals * R::SIZE) as u64;
        let kinks_len = (n.max(1) * 4) as u64;
        let readback = |label: &str, size: u64| {
            dev.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        let results_rb = readback("results readback", results_len);
        let kinks_rb = readback("kinks readback", kinks_len);
        let mut enc = dev.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("gradcheck"),
        });
        enc.clear_buffer(&kinks, 0, None);
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("every J±"),
                timestamp_writes: None,
            });
            for (n, (entry, _, src_is_b, gx, gy)) in jobs.iter().enumerate() {
                // src_is_b: the stage reads batch b (and writes a).
                let g = if *src_is_b { &g_ba } else { &g_ab };
                pass.set_pipeline(&pipes.by_entry[entry]);
                pass.set_bind_group(0, g, &[(n * stride) as u32]);
                pass.dispatch_workgroups(*gx, *gy, 1);
            }
        }
        enc.copy_buffer_to_buffer(&results, 0, &results_rb, 0, results_len);
        enc.copy_buffer_to_buffer(&kinks, 0, &kinks_rb, 0, kinks_len);
        self.queue.submit([enc.finish()]);
        if let Some(e) = pollster::block_on(scope_val.pop()) {
            return Err(Error::Gpu(format!("validation: {e}")));
        }
        if let Some(e) = pollster::block_on(scope_oom.pop()) {
            return Err(Error::Gpu(format!("out of GPU memory: {e}")));
        }
        let vals: Vec<R> = bytemuck::pod_collect_to_vec(&self.read_back(&results_rb)?);
        let flags: Vec<u32> = bytemuck::pod_collect_to_vec(&self.read_back(&kinks_rb)?);
        Ok(RunOutput {
            plus: (0..n).map(|i| vals[2 * i].to_f64()).collect(),
            minus: (0..n).map(|i| vals[2 * i + 1].to_f64()).collect(),
            // Bit 0: the +ε step crossed a kink, bit 1: the −ε step (shaders' flag_kink).
            kinks: flags.iter().take(n).map(|&f| f as u8).collect(),
            magnitudes: delta.then(|| vals[2 * n..4 * n].iter().map(|v| v.to_f64()).collect()),
        })
    }
}

/// What one evaluation brings back from the device.
struct RunOutput {
    plus: Vec<f64>,
    minus: Vec<f64>,
    kinks: Vec<u8>,
    /// Δ path: Σ_j|Δloss_j|/m of every perturbation (2i plus, 2i + 1 minus).
    magnitudes: Option<Vec<f64>>,
}
