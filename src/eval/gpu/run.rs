//! Evaluations at one or more ε: upload θ, X, Y, the masks, the base pass and the shortcut
//! tables once, build the dispatch lists and bind groups once, then per ε write ε into the
//! model header and submit once: on the Δ paths the fused kernels (`fused_delta`, then
//! `fused_exact` for its work list and the layers without a shortcut), on the plain paths
//! the staged kernels (base pass, perturb_row → rank1 → dense… → sample_loss → reduce);
//! read J± (or ΔJ±) and the kink flags back.

use wgpu::util::DeviceExt;

use super::context::GpuContext;
use super::pipelines::{Job, Pipelines, TILE, WG};
use super::plan::Plan;
use super::timing::Profiler;
use super::{EvalOptions, Real};
use crate::error::{Error, Result};
use crate::eval::{Evaluation, Precision, validate_epsilon};
use crate::model::{Data, Model, Params};
use crate::net::{math, mlp, shortcut};

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
        let mut all = self.evaluate_many(model, params, data, &[epsilon], precision, opts)?;
        Ok(all.pop().expect("one evaluation per ε"))
    }

    /// [`Self::evaluate`] at several ε (a check's ε and 2ε): the base pass, the shortcut
    /// tables, the uploads and the recorded kernels are shared; one submission per ε.
    pub fn evaluate_many(
        &self,
        model: &Model,
        params: &Params,
        data: &Data,
        epsilons: &[f64],
        precision: Precision,
        opts: EvalOptions,
    ) -> Result<Vec<Evaluation>> {
        for &e in epsilons {
            validate_epsilon(e)?;
        }
        let precision = self.resolve(precision)?;
        if let Some(r) = &opts.range {
            if r.start > r.end || r.end > model.n_params() {
                return Err(Error::Config(format!(
                    "parameter range {r:?} is outside 0..{}",
                    model.n_params()
                )));
            }
        }
        if let Some(net) = model.net() {
            return self.evaluate_layered(model, net, params, data, epsilons, precision, &opts);
        }
        let delta = matches!(precision, Precision::F64 | Precision::F32);
        let fwd = mlp::forward(model, params, data);
        let outs = if matches!(precision, Precision::F64 | Precision::F64Plain) {
            self.run::<f64>(model, params, data, epsilons, &opts, &fwd, delta)?
        } else {
            self.run::<f32>(model, params, data, epsilons, &opts, &fwd, delta)?
        };
        // The Δ paths' J(θ) through softplus / log-sum-exp (finite when σ(z) = 1).
        let cost = if delta {
            mlp::stable_cost(model, &fwd, data)
        } else {
            fwd.cost
        };
        let range = opts.range.clone().unwrap_or(0..model.n_params());
        let n = model.n_params();
        let mut evals = Vec::with_capacity(epsilons.len());
        for (mut out, &epsilon) in outs.into_iter().zip(epsilons) {
            for i in (0..range.start).chain(range.end..n) {
                out.plus[i] = f64::NAN;
                out.minus[i] = f64::NAN;
            }
            let magnitudes = out.magnitudes.map(|mag| {
                (0..n)
                    .map(|i| match range.contains(&i) {
                        true => [mag[2 * i], mag[2 * i + 1]],
                        false => [f64::NAN; 2],
                    })
                    .collect::<Vec<_>>()
            });
            let cost_scale = match &magnitudes {
                // RMS over the evaluated i of Σ_j|Δloss_j|/m, averaged over ±.
                Some(mag) if !range.is_empty() => {
                    let sq: f64 = range
                        .clone()
                        .map(|i| (0.5 * (mag[i][0] + mag[i][1])).powi(2))
                        .sum();
                    (sq / range.len() as f64).sqrt()
                }
                _ => mlp::noise_scale(model, &fwd, data),
            };
            evals.push(Evaluation {
                cost,
                plus: out.plus,
                minus: out.minus,
                cost_scale,
                kinks: out.kinks,
                magnitudes,
                kernel_times: out.kernel_times,
                ..self.evaluation_of(precision, params.as_slice(), epsilon)
            });
        }
        Ok(evals)
    }

    /// The precision asked for as this adapter runs it: Auto is f64 where the adapter has
    /// SHADER_F64 (f32 elsewhere); an f64 precision without it is an error.
    fn resolve(&self, precision: Precision) -> Result<Precision> {
        match precision {
            Precision::F64 | Precision::F64Plain if !self.has_f64 => Err(Error::gpu(
                crate::error::GpuErrorKind::MissingFeature,
                format!("{} has no SHADER_F64; use --precision f32", self.info.name),
            )),
            Precision::Auto if self.has_f64 => Ok(Precision::F64),
            Precision::Auto => Ok(Precision::F32),
            p => Ok(p),
        }
    }

    /// An evaluation on this adapter at a resolved `precision` and `epsilon`: what follows
    /// from them (backend, arithmetic, unit roundoff, the steps really taken), its values
    /// empty for the caller to fill.
    pub(super) fn evaluation_of(
        &self,
        precision: Precision,
        theta: &[f64],
        epsilon: f64,
    ) -> Evaluation {
        let use_f64 = matches!(precision, Precision::F64 | Precision::F64Plain);
        let delta = matches!(precision, Precision::F64 | Precision::F32);
        let steps = (!use_f64).then(|| {
            let e32 = epsilon as f32;
            theta
                .iter()
                .map(|&t| {
                    if delta {
                        // The Δ path moves each pre-activation by exactly ±fl32(ε)·x.
                        2.0 * f64::from(e32)
                    } else {
                        // fl(θ ± ε) − θ differs from ε by up to u32·|θ|: the real steps.
                        f64::from(t as f32 + e32) - f64::from(t as f32 - e32)
                    }
                })
                .collect()
        });
        Evaluation {
            cost: f64::NAN,
            plus: Vec::new(),
            minus: Vec::new(),
            deltas: delta,
            cost_scale: f64::NAN,
            kinks: Vec::new(),
            magnitudes: None,
            step_errors: (precision == Precision::F64Plain)
                .then(|| crate::eval::nominal_step_errors(theta, epsilon)),
            backend: format!("gpu ({})", self.info.name),
            precision,
            unit_roundoff: if use_f64 {
                f64::EPSILON / 2.0
            } else {
                f64::from(f32::EPSILON) / 2.0
            },
            steps,
            tie_widths: None,
            notes: Vec::new(),
            kernel_times: Vec::new(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn run<R: Real>(
        &self,
        model: &Model,
        params: &Params,
        data: &Data,
        epsilons: &[f64],
        opts: &EvalOptions,
        fwd: &mlp::Forward,
        delta: bool,
    ) -> Result<Vec<RunOutput>> {
        let pipes = self.pipelines(R::IS_F64)?;
        let n = model.n_params();
        let mh = model_host::<R>(model, params, data, fwd)?;
        let bh = self.base_host::<R>(model, params, data, fwd, delta, opts.staged_only)?;
        let budget = match opts.loop_budget {
            Some(b) => b,
            None => self.loop_cap()?,
        };
        let stages = Stages::new(model, data.m(), &mh, &bh, delta, budget, &self.limits);
        let wanted = opts.range.clone().unwrap_or(0..n);
        let scratch_cap = self.batch_capacity(R::SIZE as u64) as usize;
        let fused = stages.fused(&bh.fused, &wanted, scratch_cap)?;
        let plan = Plan::new(
            model,
            data,
            self.batch_capacity(R::SIZE as u64),
            opts.max_chunk,
            &fused.staged,
        )?;
        let staged_jobs = stages.staged(&plan, &self.info.name)?;

        let scope_oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let scope_val = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let bufs = self.mlp_buffers::<R>(&mh, &bh, delta, n, fused.kinks_len);
        let mut phases = Vec::new();
        if !fused.jobs.is_empty() {
            // The fused kernels' layer table sits where the staged ones bind their list;
            // src is unused, dst is fused_exact's scratch.
            let table = stages.layer_table(&bh.act_tables);
            let table = self.upload("layer table", bytemuck::cast_slice(&table), false);
            let unused = self.storage::<R>("unused", 1);
            let scratch = self.storage::<R>("scratch", fused.scratch_len);
            let (ubuf, stride) = self.jobs_buffer(fused.jobs.iter().map(|d| &d.job));
            let group = self.bind_group(
                &pipes,
                &ubuf,
                [
                    &bufs.model,
                    &bufs.base,
                    &unused,
                    &scratch,
                    &bufs.results,
                    &bufs.kinks,
                    &table,
                ],
            );
            phases.push((fused.jobs, ubuf, stride, [group.clone(), group]));
        }
        if !staged_jobs.is_empty() {
            let batch_a = self.storage::<R>("batch a", plan.batch_reals);
            let batch_b = self.storage::<R>("batch b", plan.batch_reals);
            let items: Vec<u32> = fused.staged.iter().map(|&p| p as u32).collect();
            let items = if items.is_empty() { vec![0u32] } else { items };
            let plist = self.upload("parameter list", bytemuck::cast_slice(&items), false);
            let (ubuf, stride) = self.jobs_buffer(staged_jobs.iter().map(|d| &d.job));
            // Two bind groups: (src, dst) = (a, b) and (b, a).
            let [m_, b_, r_, k_] = [&bufs.model, &bufs.base, &bufs.results, &bufs.kinks];
            let g_ab = self.bind_group(&pipes, &ubuf, [m_, b_, &batch_a, &batch_b, r_, k_, &plist]);
            let g_ba = self.bind_group(&pipes, &ubuf, [m_, b_, &batch_b, &batch_a, r_, k_, &plist]);
            phases.push((staged_jobs, ubuf, stride, [g_ab, g_ba]));
        }
        let mut outs = Vec::with_capacity(epsilons.len());
        for &epsilon in epsilons {
            outs.push(self.submit::<R>(&pipes, &bufs, &phases, epsilon, opts.timings, delta)?);
        }
        Self::pop_scopes(scope_val, scope_oom)?;
        Ok(outs)
    }

    /// The start of one evaluation's submission: ε into the model buffer's header, an
    /// encoder whose first command clears the kink flags, and the profiler when per-kernel
    /// times are asked for (and the adapter has timestamps).
    pub(super) fn begin_evaluation<R: Real>(
        &self,
        model: &wgpu::Buffer,
        kinks: &wgpu::Buffer,
        epsilon: f64,
        timings: bool,
    ) -> (wgpu::CommandEncoder, Option<Profiler>) {
        self.queue
            .write_buffer(model, 0, bytemuck::cast_slice(&R::convert(&[epsilon])));
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("gradcheck"),
            });
        enc.clear_buffer(kinks, 0, None);
        (enc, (timings && self.has_timestamps).then(Profiler::new))
    }

    /// A buffer initialised with `contents` (storage; COPY_DST where it is written later).
    fn upload(&self, label: &str, contents: &[u8], writable: bool) -> wgpu::Buffer {
        let mut usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        if writable {
            usage |= wgpu::BufferUsages::COPY_DST;
        }
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage,
            })
    }

    /// A zeroed storage buffer of `reals` values.
    fn storage<R: Real>(&self, label: &str, reals: usize) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (reals.max(1) * R::SIZE) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    }

    /// The buffers every phase binds: model (ε written per submission), base pass,
    /// results, kink flags (and the fused kernels' work lists), and their readbacks.
    fn mlp_buffers<R: Real>(
        &self,
        mh: &ModelHost,
        bh: &BaseHost,
        delta: bool,
        n: usize,
        kinks_len: usize,
    ) -> MlpBuffers {
        let dev = &self.device;
        let model = self.upload("model", bytemuck::cast_slice(&R::convert(&mh.host)), true);
        // The Δ path linearises around the base pass: take the CPU's f64 one (already
        // computed for J(θ)), at the user's θ and rounded once, rather than an f32 pass
        // whose accumulated rounding would move that point. Plain paths run their own.
        let base = if delta {
            self.upload(
                "base",
                bytemuck::cast_slice(&R::convert(&bh.host_base)),
                false,
            )
        } else {
            self.storage::<R>("base", bh.base_len)
        };
        // J± (plain) or ΔJ± then Σ|Δloss|/m (Δ path), plus even and minus odd; on the Δ
        // path the fused kernels' carries follow (read back: the first 4N).
        let results_reals = if delta { 4 * n } else { 2 * n };
        let results = self.storage::<R>("results", if delta { 6 * n } else { results_reals });
        let kinks = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("kinks and work lists"),
            size: (kinks_len * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let readback = |label: &str, size: u64| {
            dev.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        let results_len = (results_reals.max(1) * R::SIZE) as u64;
        MlpBuffers {
            results_rb: readback("results readback", results_len),
            kinks_rb: readback("kinks readback", (n.max(1) * 4) as u64),
            results_len,
            model,
            base,
            results,
            kinks,
            n,
        }
    }

    /// One evaluation at `epsilon`: ε into the model header, every phase recorded into
    /// one encoder, one submission, J± (or ΔJ±) and the kink flags read back.
    fn submit<R: Real>(
        &self,
        pipes: &Pipelines,
        bufs: &MlpBuffers,
        phases: &[Phase],
        epsilon: f64,
        timings: bool,
        delta: bool,
    ) -> Result<RunOutput> {
        let (mut enc, mut profiler) =
            self.begin_evaluation::<R>(&bufs.model, &bufs.kinks, epsilon, timings);
        for (jobs, _, stride, [a, b]) in phases {
            self.record(&mut enc, pipes, jobs, *stride, [a, b], profiler.as_mut());
        }
        if let Some(p) = profiler.as_mut() {
            p.resolve(self, &mut enc);
        }
        let n = bufs.n;
        enc.copy_buffer_to_buffer(&bufs.results, 0, &bufs.results_rb, 0, bufs.results_len);
        enc.copy_buffer_to_buffer(&bufs.kinks, 0, &bufs.kinks_rb, 0, (n.max(1) * 4) as u64);
        self.queue.submit([enc.finish()]);
        let mut out = self.read_results::<R>(&bufs.results_rb, &bufs.kinks_rb, n, delta)?;
        if let Some(p) = profiler {
            out.kernel_times = p.collect(self)?;
        }
        Ok(out)
    }

    /// Records `jobs` into `enc`: one compute pass, or one pass per dispatch with a
    /// timestamp pair around it when profiling. `groups` = (src a, src b) bind groups.
    /// [`BaseHost`] of the model (see there).
    fn base_host<R: Real>(
        &self,
        model: &Model,
        params: &Params,
        data: &Data,
        fwd: &mlp::Forward,
        delta: bool,
        staged_only: bool,
    ) -> Result<BaseHost> {
        let (m, depth, sizes) = (data.m(), model.depth(), model.sizes());
        // Base buffer: Z_l and A_l of every layer; on the Δ path (taken from the CPU's
        // f64 pass) followed by BCE's σ(∓z) of the output and the fused layers' shortcut
        // tables.
        let mut z_off = Vec::new();
        let mut a_off = Vec::new();
        let mut base_len = 0usize;
        for &nl in &sizes[1..] {
            z_off.push(base_len);
            base_len += nl * m;
            a_off.push(base_len);
            base_len += nl * m;
        }
        let mut host_base = Vec::new();
        let mut sig_off = 0;
        let mut act_tables = vec![0u32; depth];
        // Per layer: None = staged; Some(tables) = fused, with the shortcut's (v, lo, hi)
        // offsets when it has one (the output layer goes direct, layers without one layer
        // by layer in `fused_exact`). Every layer of the Δ path is fused unless a test
        // asks for the staged kernels.
        let mut fused: Vec<Option<Option<[usize; 3]>>> = vec![None; depth];
        if delta {
            host_base.reserve(base_len);
            for (z, a) in fwd.z.iter().zip(&fwd.a) {
                host_base.extend(z.iter());
                host_base.extend(a.iter());
            }
            sig_off = host_base.len();
            if model.loss() == crate::model::Loss::BinaryCrossEntropy {
                let zl = &fwd.z[depth - 1];
                host_base.extend(zl.iter().map(|&z| math::sigmoid(-z)));
                host_base.extend(zl.iter().map(|&z| math::sigmoid(z)));
            }
            // tanh layers: tanh z and 1 − |tanh z|; sigmoid layers: σ(z) and σ(−z), of the
            // base pass, hidden layers (the fused kernels' `layer_act_delta`, as the CPU's
            // tables).
            for (l, z) in fwd.z.iter().enumerate().take(depth - 1) {
                let pair: fn(f64) -> [f64; 2] = match model.activation(l) {
                    crate::model::Activation::Tanh => |z| [z.tanh(), math::tanh_complement(z)],
                    crate::model::Activation::Sigmoid => |z| [math::sigmoid(z), math::sigmoid(-z)],
                    _ => continue,
                };
                act_tables[l] = to_u32(host_base.len(), "activation table offset")?;
                host_base.extend(z.iter().map(|&z| pair(z)[0]));
                host_base.extend(z.iter().map(|&z| pair(z)[1]));
            }
            // Shortcut tables only within the binding limit; a layer whose tables do not
            // fit goes layer by layer in `fused_exact`.
            let cap = self.batch_capacity(R::SIZE as u64) as usize;
            if !staged_only {
                let shortcuts = shortcut::shortcuts(model, params, data, fwd);
                for (l, sc) in shortcuts.into_iter().enumerate() {
                    let tables =
                        sc.filter(|sc| host_base.len() + sc.v.len() + 2 * sc.lo.len() <= cap);
                    fused[l] = match tables {
                        Some(sc) => {
                            let v = host_base.len();
                            host_base.extend_from_slice(&sc.v);
                            let lo = host_base.len();
                            host_base.extend_from_slice(&sc.lo);
                            let hi = host_base.len();
                            host_base.extend_from_slice(&sc.hi);
                            Some(Some([v, lo, hi]))
                        }
                        None => Some(None),
                    };
                }
            }
            if !R::IS_F64 {
                // ±UNBOUNDED would be f32 infinities.
                for b in &mut host_base[sig_off..] {
                    *b = b.clamp(-1e30, 1e30);
                }
            }
        }
        to_u32(base_len.max(host_base.len()), "activation count")?;

        Ok(BaseHost {
            z_off,
            a_off,
            base_len,
            host_base,
            sig_off,
            act_tables,
            fused,
        })
    }

    pub(super) fn record(
        &self,
        enc: &mut wgpu::CommandEncoder,
        pipes: &Pipelines,
        jobs: &[Dispatch],
        stride: usize,
        groups: [&wgpu::BindGroup; 2],
        profiler: Option<&mut Profiler>,
    ) {
        let put = |pass: &mut wgpu::ComputePass<'_>, n: usize, d: &Dispatch| {
            pass.set_pipeline(&pipes.by_entry[d.entry]);
            pass.set_bind_group(0, groups[usize::from(d.src_is_b)], &[(n * stride) as u32]);
            pass.dispatch_workgroups(d.gx, d.gy, 1);
        };
        match profiler {
            Some(p) => {
                for (n, d) in jobs.iter().enumerate() {
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some(d.entry),
                        timestamp_writes: Some(p.next(self, d.entry)),
                    });
                    put(&mut pass, n, d);
                }
            }
            None => {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("every J±"),
                    timestamp_writes: None,
                });
                for (n, d) in jobs.iter().enumerate() {
                    put(&mut pass, n, d);
                }
            }
        }
    }

    pub(super) fn pop_scopes(val: wgpu::ErrorScopeGuard, oom: wgpu::ErrorScopeGuard) -> Result<()> {
        if let Some(e) = pollster::block_on(val.pop()) {
            return Err(Error::gpu(
                crate::error::GpuErrorKind::Internal,
                format!("validation: {e}"),
            ));
        }
        if let Some(e) = pollster::block_on(oom.pop()) {
            return Err(Error::gpu(
                crate::error::GpuErrorKind::OutOfMemory,
                format!("out of GPU memory: {e}"),
            ));
        }
        Ok(())
    }

    /// Reads J± (ΔJ± and magnitudes) and the kink flags after the last submission.
    fn read_results<R: Real>(
        &self,
        results_rb: &wgpu::Buffer,
        kinks_rb: &wgpu::Buffer,
        n: usize,
        delta: bool,
    ) -> Result<RunOutput> {
        let vals: Vec<R> = bytemuck::pod_collect_to_vec(&self.read_back(results_rb)?);
        let flags: Vec<u32> = bytemuck::pod_collect_to_vec(&self.read_back(kinks_rb)?);
        Ok(RunOutput {
            plus: (0..n).map(|i| vals[2 * i].to_f64()).collect(),
            minus: (0..n).map(|i| vals[2 * i + 1].to_f64()).collect(),
            // Bit 0: the +ε step crossed a kink, bit 1: the −ε step (shaders'
            // flag_kink).
            kinks: flags.iter().take(n).map(|&f| (f & 3) as u8).collect(),
            magnitudes: delta.then(|| vals[2 * n..4 * n].iter().map(|v| v.to_f64()).collect()),
            kernel_times: Vec::new(),
        })
    }
}

/// One phase of a submission: its dispatches, their jobs uniform and stride, and the
/// bind groups (src, dst) = (a, b) and (b, a).
type Phase = (Vec<Dispatch>, wgpu::Buffer, usize, [wgpu::BindGroup; 2]);

/// The buffers every phase of an MLP evaluation binds, and the readbacks.
struct MlpBuffers {
    model: wgpu::Buffer,
    base: wgpu::Buffer,
    results: wgpu::Buffer,
    kinks: wgpu::Buffer,
    results_rb: wgpu::Buffer,
    kinks_rb: wgpu::Buffer,
    /// Bytes of results read back (J± or ΔJ± and magnitudes).
    results_len: u64,
    n: usize,
}

/// The fused phase's dispatches, the parameters left to the staged kernels, and the sizes
/// of the buffers the fused kernels need.
struct FusedList {
    jobs: Vec<Dispatch>,
    staged: Vec<usize>,
    /// u32s of the kinks buffer: the flags, then each shortcut layer's work list.
    kinks_len: usize,
    /// Reals of fused_exact's scratch.
    scratch_len: usize,
}

/// What every dispatch list of an MLP evaluation is built from: the model's sizes, where
/// each part of the buffers starts, and the adapter's grid and loop limits.
struct Stages<'a> {
    model: &'a Model,
    m: usize,
    common: Job,
    slope_at: usize,
    theta_off: usize,
    x_off: usize,
    z_off: &'a [usize],
    a_off: &'a [usize],
    mask_off: &'a [u32],
    delta: bool,
    budget: u32,
    max_groups: u32,
}

impl<'a> Stages<'a> {
    fn new(
        model: &'a Model,
        m: usize,
        mh: &'a ModelHost,
        bh: &'a BaseHost,
        delta: bool,
        budget: u32,
        limits: &wgpu::Limits,
    ) -> Stages<'a> {
        let depth = model.depth();
        let out = depth - 1;
        // Fields every dispatch shares.
        let common = Job {
            m: m as u32,
            y_off: mh.y_off as u32,
            theta_off: mh.theta_off as u32,
            loss: model.loss().code(),
            l2: u32::from(model.l2() != 0.0),
            n_params: model.n_params() as u32,
            delta: u32::from(delta),
            sig_off: bh.sig_off as u32,
            n_out: model.sizes()[depth] as u32,
            out_z: bh.z_off[out] as u32,
            out_a: bh.a_off[out] as u32,
            out_act: model.activation(out).code(),
            out_slope: (mh.slope_at + out) as u32,
            j_end: m as u32,
            ..Job::default()
        };
        Stages {
            model,
            m,
            common,
            slope_at: mh.slope_at,
            theta_off: mh.theta_off,
            x_off: mh.x_off,
            z_off: &bh.z_off,
            a_off: &bh.a_off,
            mask_off: &mh.mask_off,
            delta,
            budget,
            max_groups: limits.max_compute_workgroups_per_dimension,
        }
    }

    /// A 1-D grid of `total` threads as (x, y) workgroups within the per-dimension limit.
    fn grid(&self, total: u32) -> (u32, u32) {
        let groups = total.div_ceil(WG).max(1);
        let x = groups.min(self.max_groups);
        (x, groups.div_ceil(x))
    }

    fn windows(&self, per_sample: u64, per_thread: u64) -> Result<Vec<(u32, u32)>> {
        sample_windows(self.budget, self.m, per_sample, per_thread)
    }

    /// `s` as a stage computing layer q: its activation, sizes, W and b, input, base Z/A
    /// and dropout factors (each kernel reads the ones it needs).
    fn at_layer(&self, mut s: Job, q: usize) -> Job {
        let (model, sizes, layout) = (self.model, self.model.sizes(), self.model.layout());
        s.act = model.activation(q).code();
        s.slope_idx = (self.slope_at + q) as u32;
        s.is_output = u32::from(q + 1 == model.depth());
        s.in_dim = sizes[q] as u32;
        s.out_dim = sizes[q + 1] as u32;
        s.w_off = (self.theta_off + layout.weight(q).offset) as u32;
        s.b_off = (self.theta_off + layout.bias(q).offset) as u32;
        s.in_is_x = u32::from(q == 0);
        s.in_off = (if q == 0 {
            self.x_off
        } else {
            self.a_off[q - 1]
        }) as u32;
        s.z_off = self.z_off[q] as u32;
        s.a_off = self.a_off[q] as u32;
        s.mask_off = self.mask_off[q];
        s.w_param = layout.weight(q).offset as u32;
        s.rows_l = sizes[q + 1] as u32;
        s.cols_l = sizes[q] as u32;
        s
    }

    /// The fused layers' dispatches, one thread per perturbation: `fused_delta` (output
    /// layer; shortcut layers, putting the perturbations with samples outside their
    /// interval on a work list in the kinks buffer) and `fused_exact` (those samples, or
    /// every sample of a layer without a shortcut, layer by layer in per-thread scratch
    /// vectors of at most `scratch_cap` reals in all). The other layers' parameters of
    /// `wanted` are left to the staged kernels.
    fn fused(
        &self,
        fused: &[Option<Option<[usize; 3]>>],
        wanted: &std::ops::Range<usize>,
        scratch_cap: usize,
    ) -> Result<FusedList> {
        let (sizes, layout) = (self.model.sizes(), self.model.layout());
        let depth = self.model.depth();
        let mut list = FusedList {
            jobs: Vec::new(),
            staged: Vec::new(),
            kinks_len: self.model.n_params().max(1),
            scratch_len: 1,
        };
        for (l, f) in fused.iter().enumerate() {
            let range = layout.weight(l).offset..layout.bias(l).range().end;
            let range = range.start.max(wanted.start)..range.end.min(wanted.end);
            let Some(tables) = f else {
                list.staged.extend(range);
                continue;
            };
            if range.is_empty() {
                continue;
            }
            let mut j = self.at_layer(self.common, l);
            j.layer = l as u32;
            j.first = range.start as u32;
            j.total = to_u32(2 * range.len(), "perturbations of a layer")?;
            let (gx, gy) = self.grid(j.total);
            if l + 1 == depth {
                for w in self.windows(loop_cost_per_sample(sizes, l, false), 1)? {
                    list.jobs
                        .push(Dispatch::new("fused_delta", windowed(j, w), gx, gy));
                }
                continue;
            }
            // Scratch threads: enough to fill a large GPU, within the scratch binding.
            let width = sizes[l + 2..].iter().copied().max().expect("a later layer");
            j.scratch_w = to_u32(width, "layer width")?;
            j.threads = (2 * range.len())
                .min(scratch_cap / (2 * width))
                .min(1 << 18) as u32;
            if j.threads == 0 {
                return Err(Error::gpu(
                    crate::error::GpuErrorKind::Limit,
                    format!("a layer of width {width} does not fit the adapter's storage binding"),
                ));
            }
            list.scratch_len = list.scratch_len.max(j.threads as usize * 2 * width);
            if let Some([v, lo, hi]) = tables {
                j.sc_v = to_u32(*v, "shortcut table offset")?;
                j.sc_lo = to_u32(*lo, "shortcut table offset")?;
                j.sc_hi = to_u32(*hi, "shortcut table offset")?;
                j.list_off = to_u32(list.kinks_len, "work list offset")?;
                list.kinks_len += 1 + 2 * range.len();
                for w in self.windows(loop_cost_per_sample(sizes, l, false), 1)? {
                    list.jobs
                        .push(Dispatch::new("fused_delta", windowed(j, w), gx, gy));
                }
                // cols = 1: redo fused_delta's work list.
                j.cols = 1;
            }
            let per_thread = (2 * range.len()).div_ceil(j.threads as usize) as u64;
            let (ex, ey) = self.grid(j.threads);
            for w in self.windows(loop_cost_per_sample(sizes, l, true), per_thread)? {
                list.jobs
                    .push(Dispatch::new("fused_exact", windowed(j, w), ex, ey));
            }
        }
        to_u32(list.kinks_len, "kinks buffer length")?;
        Ok(list)
    }

    /// The fused kernels' layer table: per layer, W offset, in and out widths, Z offset,
    /// activation, slope index, dropout offset, activation tables' offset.
    fn layer_table(&self, act_tables: &[u32]) -> Vec<u32> {
        let mut table = Vec::with_capacity(8 * act_tables.len());
        for (q, &tables_at) in act_tables.iter().enumerate() {
            let j = self.at_layer(self.common, q);
            table.extend([
                j.w_off,
                j.in_dim,
                j.out_dim,
                j.z_off,
                j.act,
                j.slope_idx,
                j.mask_off,
                tables_at,
            ]);
        }
        table
    }

    /// The staged kernels' dispatches: the base forward pass (plain paths), then per
    /// chunk of the listed parameters perturb_row → rank1 → dense… → sample_loss → reduce.
    fn staged(&self, plan: &Plan, adapter: &str) -> Result<Vec<Dispatch>> {
        let (sizes, depth, m) = (self.model.sizes(), self.model.depth(), self.m);
        let mut jobs: Vec<Dispatch> = Vec::new();
        if plan.chunks.is_empty() && self.delta {
            return Ok(jobs);
        }
        // The staged kernels loop over the samples (reduce) and a layer's inputs within
        // one invocation: no windows there, so refuse what the cap cuts short.
        let widest = sizes.iter().copied().max().unwrap_or(1);
        let longest = (m.max(widest) as u64) * 2 + 64;
        if longest > u64::from(self.budget) {
            return Err(Error::gpu(
                crate::error::GpuErrorKind::Limit,
                format!(
                    "{adapter} ends every loop of a shader invocation after {} iterations, and the staged kernels (the plain precisions) would need {longest} for m = {m} samples and layers up to {widest} wide: use --precision f64 or f32 (the fused Δ path splits its samples to fit), or --backend cpu",
                    self.budget
                ),
            ));
        }
        for l in (0..depth).filter(|_| !self.delta) {
            let mut j = self.at_layer(self.common, l);
            j.total = to_u32(sizes[l + 1] * m, "layer size × m")?;
            let (gx, gy) = self.grid(j.total);
            jobs.push(Dispatch::new("base_layer", j, gx, gy));
        }
        for chunk in &plan.chunks {
            self.staged_chunk(chunk, &mut jobs)?;
        }
        Ok(jobs)
    }

    /// One chunk's perturb_row → rank1 → dense… → sample_loss → reduce, alternating the
    /// two batch buffers.
    fn staged_chunk(&self, chunk: &super::plan::Chunk, jobs: &mut Vec<Dispatch>) -> Result<()> {
        let (sizes, depth, m) = (self.model.sizes(), self.model.depth(), self.m);
        let l = chunk.layer;
        let k = 2 * chunk.count;
        let cols = to_u32(k * m, "chunk columns")?;
        let mut j = self.at_layer(self.common, l);
        j.first = chunk.first as u32;
        j.cols = cols;
        let mut push = |entry, job, src_is_b, (gx, gy): (u32, u32)| {
            jobs.push(Dispatch {
                entry,
                job,
                src_is_b,
                gx,
                gy,
            })
        };
        // perturb_row: → batch a.
        let mut s = j;
        s.total = cols;
        push("perturb_row", s, true, self.grid(s.total));
        let mut in_a = true; // the latest output is in batch a
        if l + 1 < depth {
            let mut s = self.at_layer(j, l + 1);
            (s.w_param, s.rows_l, s.cols_l) = (j.w_param, j.rows_l, j.cols_l);
            s.total = to_u32(sizes[l + 2] * k * m, "rank-1 stage size")?;
            push("rank1", s, !in_a, self.grid(s.total));
            in_a = !in_a;
            for q in l + 2..depth {
                let mut s = self.at_layer(j, q);
                let out = sizes[q + 1] as u32;
                if out < TILE {
                    s.total = to_u32(sizes[q + 1] * k * m, "dense stage size")?;
                    push("dense_narrow", s, !in_a, self.grid(s.total));
                    in_a = !in_a;
                    continue;
                }
                let gx = cols.div_ceil(TILE);
                if gx > self.max_groups {
                    return Err(Error::Internal(format!(
                        "a chunk of {cols} columns exceeds the workgroup limit"
                    )));
                }
                push("dense", s, !in_a, (gx, out.div_ceil(TILE)));
                in_a = !in_a;
            }
        }
        // The losses read the output layer's base Z (and A for MSE).
        let mut s = self.at_layer(j, depth - 1);
        (s.w_param, s.rows_l, s.cols_l) = (j.w_param, j.rows_l, j.cols_l);
        s.total = cols;
        push("sample_loss", s, !in_a, self.grid(s.total));
        in_a = !in_a;
        let mut s = j;
        s.total = k as u32;
        push("reduce", s, !in_a, self.grid(s.total));
        Ok(())
    }
}

/// Upper bound of the loop iterations a fused kernel runs per sample (see
/// [`GpuContext::loop_cap`]): the loss (softmax's "others" sums are n² at worst; every f64
/// log may run its two scaling loops, up to 26 iterations) and, for `fused_exact`, the
/// layer-by-layer products after layer l (ΔA, then each output unit's dot product).
fn loop_cost_per_sample(sizes: &[usize], l: usize, exact: bool) -> u64 {
    let depth = sizes.len() - 1;
    let n = sizes[depth] as u64;
    let mut cost = 4 + (n + 2) * (n + 2) + 60 * n + 30;
    if exact {
        cost += sizes[l + 2] as u64 + 1;
        for q in l + 2..depth {
            let (w_in, w_out) = (sizes[q] as u64, sizes[q + 1] as u64);
            cost += (w_in + 1) + (w_out + 1) + w_out * (w_in + 2);
        }
    }
    cost
}

/// The fused kernels' sample windows: [0, m) whole where the adapter has no loop cap,
/// else windows whose loop iterations (per sample × perturbations per thread × samples) stay
/// within three quarters of the cap (the rest for the kernels' own bookkeeping loops).
pub(super) fn sample_windows(
    budget: u32,
    m: usize,
    per_sample: u64,
    per_thread: u64,
) -> Result<Vec<(u32, u32)>> {
    if budget == u32::MAX {
        return Ok(vec![(0, m as u32)]);
    }
    let usable = (u64::from(budget) * 3 / 4).saturating_sub(per_thread * 8);
    let width = usable / (per_sample * per_thread.max(1));
    if width == 0 {
        return Err(Error::gpu(
            crate::error::GpuErrorKind::Limit,
            format!(
                "one sample of this net needs about {} loop iterations in one shader invocation, more than this adapter allows ({budget}, a software adapter's limit): use --backend cpu",
                per_sample * per_thread.max(1)
            ),
        ));
    }
    let width = width as usize;
    Ok((0..m)
        .step_by(width)
        .map(|j| (j as u32, (j + width).min(m) as u32))
        .collect())
}

/// `job` over the samples `[w.0, w.1)`.
fn windowed(mut job: Job, w: (u32, u32)) -> Job {
    (job.j_begin, job.j_end) = w;
    job
}

/// One recorded dispatch: kernel, its Job, which batch buffer is its source, grid.
pub(super) struct Dispatch {
    entry: &'static str,
    pub(super) job: Job,
    src_is_b: bool,
    gx: u32,
    gy: u32,
}

impl Dispatch {
    /// A dispatch that binds no batch buffer as its source.
    pub(super) fn new(entry: &'static str, job: Job, gx: u32, gy: u32) -> Dispatch {
        Dispatch {
            entry,
            job,
            src_is_b: false,
            gx,
            gy,
        }
    }
}

/// What one evaluation brings back from the device.
struct RunOutput {
    plus: Vec<f64>,
    minus: Vec<f64>,
    kinks: Vec<u8>,
    /// Δ path: Σ_j|Δloss_j|/m of every perturbation (2i plus, 2i + 1 minus).
    magnitudes: Option<Vec<f64>>,
    /// Device time per kernel (when profiled).
    kernel_times: Vec<crate::eval::KernelTime>,
}

/// The model buffer's contents — header (ε, λ/(2m), Σ‖W‖², the shortcut's margin) | the
/// activations' slopes | θ | X | Y | dropout factors — and where each part starts.
struct ModelHost {
    host: Vec<f64>,
    slope_at: usize,
    theta_off: usize,
    x_off: usize,
    y_off: usize,
    mask_off: Vec<u32>,
}

fn model_host<R: Real>(
    model: &Model,
    params: &Params,
    data: &Data,
    fwd: &mlp::Forward,
) -> Result<ModelHost> {
    let (m, depth) = (data.m(), model.depth());
    // Model buffer: header | θ | X | Y | dropout factors. The shortcut's margin: the
    // CPU's in f64; in f32, t and the bounds carry f32 rounding (≤ a few 6e-8).
    let margin = if R::IS_F64 {
        shortcut::SHORTCUT_MARGIN
    } else {
        1e-5
    };
    // Header [0], ε, is written before each ε's submission.
    let mut host: Vec<f64> = vec![0.0, model.l2() / (2.0 * m as f64), fwd.weight_sumsq, margin];
    let slope_at = host.len();
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
    to_u32(host.len(), "model buffer length")?;
    Ok(ModelHost {
        host,
        slope_at,
        theta_off,
        x_off,
        y_off,
        mask_off,
    })
}

/// The base buffer's layout — Z_l and A_l of every layer — and, on the Δ path, its
/// contents and which layers the fused kernels take (with their shortcut tables).
struct BaseHost {
    z_off: Vec<usize>,
    a_off: Vec<usize>,
    base_len: usize,
    host_base: Vec<f64>,
    sig_off: usize,
    act_tables: Vec<u32>,
    fused: Vec<Option<Option<[usize; 3]>>>,
}

/// A size the kernels index with 32 bits.
pub(super) fn to_u32(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| {
        Error::gpu(
            crate::error::GpuErrorKind::Limit,
            format!("{what} = {v} exceeds the 32-bit indices of the kernels"),
        )
    })
}
