//! Networks given as layer types (conv nets) on the GPU: every ΔJ± (or J±) of a check in
//! one submission per ε, through `shaders/layered.wgsl` — one thread per (perturbation,
//! sample) carrying the changed layer's output change through each layer's Δ form (or the
//! plain forward pass from the perturbed layer on), then one thread per perturbation summing
//! its samples in order. The CPU twin is `eval::layered`, decision for decision: the same
//! sparse Δ forms, kink flags and max-pool tie widths.
//!
//! Each layer type says how the kernels compute it ([`crate::model::Layer::kernel`]); a
//! network with a type that has no kernel is refused as `Unsupported` (`auto` runs it on
//! the CPU).

use wgpu::util::DeviceExt;

use super::context::GpuContext;
use super::pipelines::Pipelines;
use super::run::{Dispatch, sample_windows, to_u32};
use super::{EvalOptions, Real};
use crate::error::{Error, GpuErrorKind, Result};
use crate::eval::{Evaluation, Precision};
use crate::model::layer::{Kernel, KernelKind};
use crate::model::{Data, Loss, Model, Net, Params, TensorKind};
use crate::net::{self, math};

/// Words per layer-table row (shaders/layered.wgsl `LW`): kind, in_len, out_len, input and
/// output offsets in the base buffer, the tensors' offsets in the model buffer, the
/// max-pool ∂J/∂y table's offset, then [`Kernel::MAX_WORDS`] geometry words.
const LW: usize = 24;
/// Words per tensor-table row (`TW`): flat offset, length, layer, index | weight << 8.
const TW: usize = 4;
/// Scratch regions per thread: the Δ path's two value regions, two lists and marks; the
/// plain path's two value regions.
const DELTA_REGIONS: usize = 5;
const PLAIN_REGIONS: usize = 2;

impl GpuContext {
    /// Every ΔJ± (Δ paths) or J± (plain paths) of a layered network at each of `epsilons`;
    /// `precision` already resolved for this adapter.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn evaluate_layered(
        &self,
        model: &Model,
        net: &Net,
        params: &Params,
        data: &Data,
        epsilons: &[f64],
        precision: Precision,
        opts: &EvalOptions,
    ) -> Result<Vec<Evaluation>> {
        let kernels = kernels_of(net)?;
        let delta = matches!(precision, Precision::F64 | Precision::F32);
        let fwd = net::forward(model, net, params, data);
        let outs = if matches!(precision, Precision::F64 | Precision::F64Plain) {
            self.run_layered::<f64>(model, net, &kernels, params, epsilons, opts, &fwd, delta)?
        } else {
            self.run_layered::<f32>(model, net, &kernels, params, epsilons, opts, &fwd, delta)?
        };
        let n = model.n_params();
        let range = opts.range.clone().unwrap_or(0..n);
        let has_ties = delta && net.layers.iter().any(|l| l.kind() == "max_pool");
        // J(θ) as the CPU's layered evaluator reports it: the stable forms on the Δ paths,
        // the notebook's expressions on the plain ones.
        let cost = if delta {
            fwd.cost
        } else {
            plain_cost(model, net, params, &fwd)
        };
        let cost_scale = net::noise_scale(model, net, params, &fwd);
        let mut evals = Vec::with_capacity(epsilons.len());
        for (out, &epsilon) in outs.into_iter().zip(epsilons) {
            let outside = |v: f64, i: usize| if range.contains(&i) { v } else { f64::NAN };
            let plus = out.plus.iter().enumerate().map(|(i, &v)| outside(v, i));
            let minus = out.minus.iter().enumerate().map(|(i, &v)| outside(v, i));
            let magnitudes = out.magnitudes.as_ref().map(|mag| {
                (0..n)
                    .map(|i| [outside(mag[2 * i], i), outside(mag[2 * i + 1], i)])
                    .collect()
            });
            // The CPU's: the +ε step's tie width per unit step (0 outside the range).
            let tie_widths = has_ties.then(|| {
                (0..n)
                    .map(|i| {
                        if range.contains(&i) {
                            out.ties[2 * i] / epsilon
                        } else {
                            0.0
                        }
                    })
                    .collect()
            });
            evals.push(Evaluation {
                cost,
                plus: plus.collect(),
                minus: minus.collect(),
                cost_scale,
                kinks: out.kinks,
                magnitudes,
                tie_widths,
                kernel_times: out.kernel_times,
                ..self.evaluation_of(precision, params.as_slice(), epsilon)
            });
        }
        Ok(evals)
    }

    #[allow(clippy::too_many_arguments)]
    fn run_layered<R: Real>(
        &self,
        model: &Model,
        net: &Net,
        kernels: &[Kernel],
        params: &Params,
        epsilons: &[f64],
        opts: &EvalOptions,
        fwd: &net::Forward,
        delta: bool,
    ) -> Result<Vec<LayeredOutput>> {
        let pipes = self.layered_pipelines(R::IS_F64)?;
        let host = Host::new(model, net, kernels, params, fwd, delta)?;
        let plan = self.plan_layered::<R>(model, net, kernels, &host, opts, delta)?;
        let scope_oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let scope_val = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let bufs = self.layered_buffers::<R>(&pipes, &host, &plan, model.n_params());
        let mut outs = Vec::with_capacity(epsilons.len());
        for &epsilon in epsilons {
            outs.push(self.submit_layered::<R>(
                &pipes,
                &bufs,
                &plan,
                epsilon,
                opts.timings,
                delta,
            )?);
        }
        Self::pop_scopes(scope_val, scope_oom)?;
        Ok(outs)
    }

    /// The dispatches of one evaluation: per chunk of parameters (their per-sample values
    /// fit one batch buffer), the item kernel in blocks of as many threads as the scratch
    /// binding holds, then the sums (in sample windows where the adapter caps loops).
    fn plan_layered<R: Real>(
        &self,
        model: &Model,
        net: &Net,
        kernels: &[Kernel],
        host: &Host,
        opts: &EvalOptions,
        delta: bool,
    ) -> Result<LayeredPlan> {
        let m = host.m;
        let wanted = opts.range.clone().unwrap_or(0..model.n_params());
        let widest = net.layers.iter().map(|l| l.out_len()).max().unwrap_or(1);
        if !R::IS_F64 && widest >= 1 << 24 {
            // The lists hold entry indices as reals: exact in f32 below 2²⁴.
            return Err(Error::gpu(
                GpuErrorKind::Limit,
                format!("a layer output of {widest} values is too wide for the f32 kernels"),
            ));
        }
        // Threads per dispatch: each has its scratch, within one storage binding of up to
        // 2 GiB (a conv net's items are few but wide: more threads in flight is what hides
        // a GPU's memory latency; llvmpipe's 128 MiB binding limit gives ≈ 1,600 threads
        // for the built-in example, an H100's 2 GiB ≈ 26,000: all 20,960 items at once).
        let scratch_bytes = self
            .limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
            .min(2 << 30);
        let regions = if delta { DELTA_REGIONS } else { PLAIN_REGIONS };
        // Parameters per chunk: their Δloss (and tie widths) per sample in the batch buffer.
        let per_chunk = self.batch_capacity(R::SIZE as u64) as usize / (2 * m) / 2;
        // No more threads than a chunk has items (a small net allocates a small scratch).
        let most_items = (2 * per_chunk.min(wanted.len()).max(1) * m).next_multiple_of(64);
        let threads = (scratch_bytes as usize / R::SIZE / (regions * widest))
            .min(1 << 18)
            .min(most_items)
            / 64
            * 64;
        if threads == 0 || per_chunk == 0 {
            return Err(Error::gpu(
                GpuErrorKind::Limit,
                format!(
                    "a layer output of {widest} values (or m = {m} samples) does not fit the adapter's storage binding"
                ),
            ));
        }
        let budget = match opts.loop_budget {
            Some(b) => b,
            None => self.loop_cap()?,
        };
        let per_item = perturbed_layers(model, net, &wanted)
            .into_iter()
            .map(|from| loop_bound(model, net, kernels, from, delta))
            .max()
            .unwrap_or(0);
        if budget != u32::MAX && per_item > u64::from(budget) * 3 / 4 {
            return Err(Error::gpu(
                GpuErrorKind::Limit,
                format!(
                    "one sample of this net needs up to {per_item} loop iterations in one shader invocation, more than {} allows ({budget}, a software adapter's limit): use --backend cpu",
                    self.info.name
                ),
            ));
        }
        let grid = |total: usize| -> (u32, u32) {
            let groups = (total as u32).div_ceil(64).max(1);
            let x = groups.min(self.limits.max_compute_workgroups_per_dimension);
            (x, groups.div_ceil(x))
        };
        let common = host.job(model, delta, widest, threads)?;
        let entry = if delta {
            "layered_delta"
        } else {
            "layered_plain"
        };
        let mut jobs = Vec::new();
        let mut first = wanted.start;
        while first < wanted.end {
            let count = per_chunk.min(wanted.end - first);
            let items = 2 * count * m;
            let mut job = common;
            job.first = to_u32(first, "parameter index")?;
            job.cols = to_u32(items, "items of a chunk")?;
            for item0 in (0..items).step_by(threads) {
                let mut j = job;
                j.item0 = item0 as u32;
                j.total = (threads.min(items - item0)) as u32;
                let (gx, gy) = grid(j.total as usize);
                jobs.push(Dispatch::new(entry, j, gx, gy));
            }
            job.total = to_u32(2 * count, "perturbations of a chunk")?;
            let (gx, gy) = grid(2 * count);
            for (b, e) in sample_windows(budget, m, 4, 1)? {
                let mut j = job;
                (j.j_begin, j.j_end) = (b, e);
                jobs.push(Dispatch::new("layered_reduce", j, gx, gy));
            }
            first += count;
        }
        Ok(LayeredPlan {
            jobs,
            batch_reals: 4 * per_chunk.min(model.n_params()) * m,
            scratch_reals: regions * widest * threads,
        })
    }

    /// The buffers of the evaluations, uploaded once, and the bind group.
    fn layered_buffers<R: Real>(
        &self,
        pipes: &Pipelines,
        host: &Host,
        plan: &LayeredPlan,
        n: usize,
    ) -> LayeredBuffers {
        let dev = &self.device;
        let usage_rw = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let init = |label: &str, contents: &[u8], usage| {
            dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage,
            })
        };
        let mk = |label: &str, bytes: usize, usage| {
            dev.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes.max(4) as u64,
                usage,
                mapped_at_creation: false,
            })
        };
        let model = init(
            "model",
            bytemuck::cast_slice(&R::convert(&host.model)),
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        );
        let base = init(
            "base",
            bytemuck::cast_slice(&R::convert(&host.base)),
            wgpu::BufferUsages::STORAGE,
        );
        let table = init(
            "layer and tensor tables",
            bytemuck::cast_slice(&host.table),
            wgpu::BufferUsages::STORAGE,
        );
        let batch = mk("per-sample losses", plan.batch_reals * R::SIZE, usage_rw);
        // Zeroed at creation; every item leaves its scratch zero again (the Δ path's
        // invariant), so it is never cleared.
        let scratch = mk("scratch", plan.scratch_reals * R::SIZE, usage_rw);
        // ΔJ± (or J±), magnitudes, carries of the sample windows, tie widths.
        let results_bytes = 8 * n.max(1) * R::SIZE;
        let results = mk("results", results_bytes, usage_rw);
        let kinks = mk(
            "kinks",
            n.max(1) * 4,
            wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
        );
        let read = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
        let results_rb = mk("results readback", results_bytes, read);
        let kinks_rb = mk("kinks readback", n.max(1) * 4, read);
        let (jobs, stride) = self.jobs_buffer(plan.jobs.iter().map(|d| &d.job));
        let group = self.bind_group(
            pipes,
            &jobs,
            [&model, &base, &batch, &scratch, &results, &kinks, &table],
        );
        LayeredBuffers {
            model,
            results,
            kinks,
            results_rb,
            kinks_rb,
            stride,
            group,
            n,
        }
    }

    /// One evaluation at `epsilon`: ε into the header, one submission, the results read.
    fn submit_layered<R: Real>(
        &self,
        pipes: &Pipelines,
        bufs: &LayeredBuffers,
        plan: &LayeredPlan,
        epsilon: f64,
        timings: bool,
        delta: bool,
    ) -> Result<LayeredOutput> {
        let n = bufs.n;
        let (mut enc, mut profiler) =
            self.begin_evaluation::<R>(&bufs.model, &bufs.kinks, epsilon, timings);
        let group = &bufs.group;
        self.record(
            &mut enc,
            pipes,
            &plan.jobs,
            bufs.stride,
            [group, group],
            profiler.as_mut(),
        );
        if let Some(p) = profiler.as_mut() {
            p.resolve(self, &mut enc);
        }
        enc.copy_buffer_to_buffer(&bufs.results, 0, &bufs.results_rb, 0, None);
        enc.copy_buffer_to_buffer(&bufs.kinks, 0, &bufs.kinks_rb, 0, None);
        self.queue.submit([enc.finish()]);
        let vals: Vec<f64> =
            bytemuck::pod_collect_to_vec::<u8, R>(&self.read_back(&bufs.results_rb)?)
                .into_iter()
                .map(Real::to_f64)
                .collect();
        let flags: Vec<u32> = bytemuck::pod_collect_to_vec(&self.read_back(&bufs.kinks_rb)?);
        let kernel_times = match profiler {
            Some(p) => p.collect(self)?,
            None => Vec::new(),
        };
        // Bit 0: the +ε step crossed a kink, bit 1: the −ε step.
        Ok(LayeredOutput {
            plus: (0..n).map(|i| vals[2 * i]).collect(),
            minus: (0..n).map(|i| vals[2 * i + 1]).collect(),
            kinks: flags.iter().take(n).map(|&f| (f & 3) as u8).collect(),
            magnitudes: delta.then(|| vals[2 * n..4 * n].to_vec()),
            ties: vals[6 * n..8 * n].to_vec(),
            kernel_times,
        })
    }
}

/// The dispatches of one evaluation and the sizes of the buffers they use.
struct LayeredPlan {
    jobs: Vec<Dispatch>,
    /// Per-sample values of a chunk: Δloss (or loss) and tie widths.
    batch_reals: usize,
    /// Every thread's scratch regions.
    scratch_reals: usize,
}

/// The buffers an evaluation reads and writes, and the one bind group over them.
struct LayeredBuffers {
    model: wgpu::Buffer,
    results: wgpu::Buffer,
    kinks: wgpu::Buffer,
    results_rb: wgpu::Buffer,
    kinks_rb: wgpu::Buffer,
    stride: usize,
    group: wgpu::BindGroup,
    n: usize,
}

/// What one evaluation of a layered net brings back.
struct LayeredOutput {
    plus: Vec<f64>,
    minus: Vec<f64>,
    kinks: Vec<u8>,
    magnitudes: Option<Vec<f64>>,
    /// Σ_j tie width per perturbation slot (2i plus, 2i + 1 minus).
    ties: Vec<f64>,
    kernel_times: Vec<crate::eval::KernelTime>,
}

/// Every layer's kernel description, or `Unsupported` naming the first type without one.
fn kernels_of(net: &Net) -> Result<Vec<Kernel>> {
    net.layers
        .iter()
        .enumerate()
        .map(|(q, l)| {
            l.kernel()
                .filter(|k| k.words.len() <= Kernel::MAX_WORDS)
                .ok_or_else(|| {
                    Error::gpu(
                        GpuErrorKind::Unsupported,
                        format!(
                            "layer {} ({}) has no GPU kernel; the network runs on the CPU: use --backend cpu or auto",
                            q + 1,
                            l.kind()
                        ),
                    )
                })
        })
        .collect()
}

/// The buffers' contents and where each part starts.
struct Host {
    /// header (ε, λ/(2m), Σ‖W‖², 0) | per layer its activation slope, then the output's |
    /// θ | Y (n_out × m).
    model: Vec<f64>,
    /// X and every layer's output (sample-major) | max-pool ∂J/∂y (Δ path) | the output's
    /// Z, A (n_out × m) | BCE's σ(−z), σ(z).
    base: Vec<f64>,
    /// Layer table, then tensor table.
    table: Vec<u32>,
    theta_off: usize,
    y_off: usize,
    out_slope: usize,
    out_z: usize,
    out_a: usize,
    sig_off: usize,
    tensor_tab: usize,
    /// Samples.
    m: usize,
}

impl Host {
    fn new(
        model: &Model,
        net: &Net,
        kernels: &[Kernel],
        params: &Params,
        fwd: &net::Forward,
        delta: bool,
    ) -> Result<Host> {
        let m = fwd.m;
        let n_out = model.sizes()[1];
        // Model buffer.
        let mut host = vec![
            0.0,
            model.l2() / (2.0 * m as f64),
            net::weight_sumsq(model, params),
            0.0,
        ];
        let slopes = host.len();
        host.extend(kernels.iter().map(|k| k.slope));
        let out_slope = host.len();
        host.push(net.output.slope());
        let theta_off = host.len();
        host.extend_from_slice(params.as_slice());
        let y_off = host.len();
        host.extend(feature_major(&fwd.y, n_out, m));
        let (base, offsets) = base_of(model, net, params, fwd, delta);
        let table = tables_of(model, net, kernels, &offsets, theta_off, slopes)?;
        to_u32(host.len(), "model buffer length")?;
        to_u32(base.len(), "base buffer length")?;
        Ok(Host {
            model: host,
            base,
            tensor_tab: net.layers.len() * LW,
            table,
            theta_off,
            y_off,
            out_slope,
            out_z: offsets.out_z,
            out_a: offsets.out_a,
            sig_off: offsets.sig_off,
            m,
        })
    }

    /// The fields every dispatch shares.
    fn job(
        &self,
        model: &Model,
        delta: bool,
        widest: usize,
        threads: usize,
    ) -> Result<super::pipelines::Job> {
        let net = model.net().expect("a layered model");
        Ok(super::pipelines::Job {
            m: to_u32(self.m, "samples")?,
            y_off: to_u32(self.y_off, "Y offset")?,
            theta_off: to_u32(self.theta_off, "θ offset")?,
            loss: model.loss().code(),
            l2: u32::from(model.l2() != 0.0),
            n_params: to_u32(model.n_params(), "parameters")?,
            delta: u32::from(delta),
            sig_off: to_u32(self.sig_off, "base offset")?,
            n_out: model.sizes()[1] as u32,
            out_z: to_u32(self.out_z, "base offset")?,
            out_a: to_u32(self.out_a, "base offset")?,
            out_act: net.output.code(),
            out_slope: to_u32(self.out_slope, "slope index")?,
            j_end: self.m as u32,
            widest: to_u32(widest, "layer width")?,
            threads: to_u32(threads, "threads")?,
            n_layers: net.layers.len() as u32,
            tensor_tab: to_u32(self.tensor_tab, "table length")?,
            n_tensors: model.layout().tensors().len() as u32,
            ..Default::default()
        })
    }
}

/// Sample-major values (m × n) as the kernels' loss reads them: n × m.
fn feature_major(v: &[f64], n: usize, m: usize) -> impl Iterator<Item = f64> + '_ {
    (0..n).flat_map(move |c| (0..m).map(move |j| v[j * n + c]))
}

/// Where the parts of the base buffer start.
struct BaseOffsets {
    /// Per layer, its output (its input: the layer before's, X for the first at 0).
    outs: Vec<usize>,
    /// Per layer, its ∂J/∂y table (max pooling on the Δ path; 0: none).
    grads: Vec<usize>,
    out_z: usize,
    out_a: usize,
    sig_off: usize,
}

/// The base buffer: X and every layer's output (sample-major, the CPU's f64 pass) |
/// max-pool ∂J/∂y (Δ path: the tie widths) | the output's Z and A (n_out × m) | BCE's
/// σ(−z), σ(z).
fn base_of(
    model: &Model,
    net: &Net,
    params: &Params,
    fwd: &net::Forward,
    delta: bool,
) -> (Vec<f64>, BaseOffsets) {
    let (m, depth, n_out) = (fwd.m, net.layers.len(), model.sizes()[1]);
    let mut base = fwd.x.clone();
    let mut outs = Vec::with_capacity(depth);
    for out in &fwd.outs {
        outs.push(base.len());
        base.extend_from_slice(out);
    }
    let mut grads = vec![0; depth];
    if delta && net.layers.iter().any(|l| l.kind() == "max_pool") {
        let all = net::output_gradients(model, net, params, fwd);
        for (q, g) in all.into_iter().enumerate() {
            if net.layers[q].kind() == "max_pool" {
                grads[q] = base.len();
                base.extend(g);
            }
        }
    }
    let last = &fwd.outs[depth - 1];
    let out_z = base.len();
    base.extend(feature_major(last, n_out, m));
    let out_a = base.len();
    base.extend(feature_major(last, n_out, m).map(|z| net.output.apply(z)));
    let sig_off = base.len();
    if model.loss() == Loss::BinaryCrossEntropy {
        for sign in [-1.0, 1.0] {
            base.extend(feature_major(last, n_out, m).map(|z| math::sigmoid(sign * z)));
        }
    }
    (
        base,
        BaseOffsets {
            outs,
            grads,
            out_z,
            out_a,
            sig_off,
        },
    )
}

/// The layer table (`LW` words per layer: kind, sizes, offsets, the kernel's geometry, an
/// activation's slope index) and the tensor table (`TW` per tensor).
fn tables_of(
    model: &Model,
    net: &Net,
    kernels: &[Kernel],
    offsets: &BaseOffsets,
    theta_off: usize,
    slopes: usize,
) -> Result<Vec<u32>> {
    let slots = model.layout().tensors();
    let mut table = Vec::with_capacity(net.layers.len() * LW + slots.len() * TW);
    for (q, (layer, k)) in net.layers.iter().zip(kernels).enumerate() {
        let mut tensors = net.tensors[q].clone();
        let offset =
            |t: Option<usize>| t.map_or(Ok(0), |t| to_u32(theta_off + slots[t].offset, "θ offset"));
        let mut row = vec![
            k.kind as u32,
            to_u32(layer.in_len(), "layer input")?,
            to_u32(layer.out_len(), "layer output")?,
            to_u32(if q == 0 { 0 } else { offsets.outs[q - 1] }, "base offset")?,
            to_u32(offsets.outs[q], "base offset")?,
            offset(tensors.next())?,
            offset(tensors.next())?,
            to_u32(offsets.grads[q], "base offset")?,
        ];
        row.extend(&k.words);
        if k.kind == KernelKind::Activation {
            row.push(to_u32(slopes + q, "slope index")?);
        }
        row.resize(LW, 0);
        table.extend(row);
    }
    for (q, r) in net.tensors.iter().enumerate() {
        for (k, t) in r.clone().enumerate() {
            let is_w = u32::from(slots[t].kind == TensorKind::Weight);
            table.extend([
                to_u32(slots[t].offset, "θ offset")?,
                to_u32(slots[t].len(), "tensor length")?,
                q as u32,
                k as u32 | (is_w << 8),
            ]);
        }
    }
    Ok(table)
}

/// The layers owning a parameter of `range` (a perturbation of each runs through every
/// layer after it).
fn perturbed_layers(model: &Model, net: &Net, range: &std::ops::Range<usize>) -> Vec<usize> {
    let slots = model.layout().tensors();
    (0..net.layers.len())
        .filter(|&q| {
            net.tensors[q]
                .clone()
                .any(|t| slots[t].range().start < range.end && slots[t].range().end > range.start)
        })
        .collect()
}

/// An upper bound of the loop iterations one item runs when layer `from` is perturbed:
/// what a software adapter's per-invocation loop cap ([`GpuContext::loop_cap`]) is checked
/// against. The Δ path follows the changed entries (at most as many as the closed forms
/// can reach: one channel of a conv output, a window's reach through pooling); the plain
/// path computes every layer after `from` whole.
fn loop_bound(model: &Model, net: &Net, kernels: &[Kernel], from: usize, delta: bool) -> u64 {
    let n_out = model.sizes()[1] as u64;
    // The loss (as the MLP's: softmax's "others" sums n², f64 logs' scaling loops), the
    // tensor search, the output's kink test and clearing.
    let mut cost = 4 + (n_out + 2) * (n_out + 2) + 60 * n_out + 30;
    cost += 2 * model.layout().tensors().len() as u64 + 3 * n_out;
    // Entries changed going into the next layer (Δ path).
    let mut changed = 0u64;
    for (q, (layer, k)) in net.layers.iter().zip(kernels).enumerate().skip(from) {
        let (i, o) = (layer.in_len() as u64, layer.out_len() as u64);
        let w = |n: usize| u64::from(k.words.get(n).copied().unwrap_or(0));
        // Windows reaching one entry along each axis: ⌈f/stride⌉.
        let reach = |f: u64, s: u64| f.div_ceil(s.max(1));
        let (step, next) = match (k.kind, delta && q > from) {
            (KernelKind::Conv2d, _) if delta && q == from => {
                let positions = w(9) * w(10);
                (positions, positions)
            }
            (KernelKind::Dense, _) if delta && q == from => (1, 1),
            (KernelKind::Conv2d, true) => {
                let (cout, fh, fw, s) = (w(3), w(4), w(5), w(6));
                let hits = reach(fh, s) * reach(fw, s);
                let positions = (w(9) * w(10)).min(changed * hits);
                (
                    changed * (2 * fh * (1 + fw) + hits * cout) + positions * (cout + 2),
                    positions * cout,
                )
            }
            (KernelKind::MaxPool | KernelKind::AvgPool, true) => {
                let (fh, fw, s) = (w(3), w(4), w(5));
                let (ry, rx) = (reach(fh, s), reach(fw, s));
                let touched = o.min(changed * ry * rx);
                (
                    2 * changed * (ry * (1 + rx) + 1) + touched * (fh * (1 + fw) + 2),
                    touched,
                )
            }
            (KernelKind::Dense, true) => (changed * (w(1) + 1) + w(1), w(1)),
            (KernelKind::Flatten, true) => (changed, changed),
            (KernelKind::Activation, true) => {
                let per = if w(0) == 2 || w(0) == 3 { 60 } else { 1 };
                (changed * per, changed)
            }
            // The plain path: every layer whole, but for the perturbed layer's outputs the
            // parameter does not reach (copied from the base pass).
            (KernelKind::Conv2d, false) => {
                let (cin, cout, fh, fw) = (w(2), w(3), w(4), w(5));
                let computed = if q == from { o / cout.max(1) } else { o };
                (o + computed * (fh * (1 + fw * (1 + cin)) + 2), o)
            }
            (KernelKind::MaxPool | KernelKind::AvgPool, false) => (o * (w(3) * (1 + w(4)) + 2), o),
            (KernelKind::Dense, false) if q == from => (w(1) + w(0) + 1, o),
            (KernelKind::Dense, false) => (w(1) * (w(0) + 1), o),
            (KernelKind::Flatten, false) => (i, o),
            (KernelKind::Activation, false) => (i * if w(0) == 2 || w(0) == 3 { 60 } else { 1 }, o),
        };
        cost += step + changed + 2;
        changed = next;
    }
    cost
}

/// J(θ) in the notebook's expressions (the plain paths' reference, as the CPU's).
fn plain_cost(model: &Model, net: &Net, params: &Params, fwd: &net::Forward) -> f64 {
    let n_out = model.sizes()[1];
    let last = net.layers.len() - 1;
    let mut s = 0.0;
    for j in 0..fwd.m {
        s += math::sample_loss(
            model.loss(),
            net.output,
            fwd.output(net, last, j),
            fwd.target(n_out, j),
        );
    }
    let m = fwd.m as f64;
    let mut cost = (1.0 / m) * s;
    if model.l2() != 0.0 {
        cost += model.l2() / (2.0 * m) * net::weight_sumsq(model, params);
    }
    cost
}
