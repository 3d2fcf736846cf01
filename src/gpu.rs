//! The GPU evaluator: every J(θ ± ε·e_i) in one queue submission, through wgpu and the
//! WGSL kernels in `shaders/`.
//!
//! One [`GpuContext`] holds the device and the pipelines (built once per precision);
//! [`GpuContext::evaluate`] uploads θ, X, Y once, runs the base forward pass, then for
//! each chunk of perturbations (consecutive parameters of one layer) the stages
//! perturb_row → rank1 → dense… → sample_loss → reduce, all recorded into one encoder and
//! submitted once. Chunks exist only where the adapter's limits demand them.
//!
//! The same kernels run three ways: f64, f32-plain (perturbed values, as f64), and the f32
//! Δ path, where every stage carries its change from the base pass (ΔZ, ΔA, Δloss) in
//! closed forms without cancellation and the base pass comes from the CPU's f64 one; the
//! Job's `delta` flag selects it (see `act_delta` in shaders/common.wgsl).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytemuck::{Pod, Zeroable};
use wgpu::util::DeviceExt;

use crate::check::{Evaluation, Precision};
use crate::cpu;
use crate::error::{Error, Result};
use crate::model::{Data, Model, Params};

/// Kernel sources, one file per family; the host prepends `alias real = f32|f64;` and the
/// precision's math functions.
pub mod source {
    /// f64 exp/log/tanh.
    pub const MATH_F64: &str = include_str!("../shaders/math_f64.wgsl");
    /// f32 exp/log/tanh (builtins).
    pub const MATH_F32: &str = include_str!("../shaders/math_f32.wgsl");
    /// Bindings, the Job struct, activations.
    pub const COMMON: &str = include_str!("../shaders/common.wgsl");
    /// The base forward pass.
    pub const FORWARD: &str = include_str!("../shaders/forward.wgsl");
    /// The perturbed passes: perturb_row, rank1, dense.
    pub const PERTURB: &str = include_str!("../shaders/perturb.wgsl");
    /// Per-sample losses and the per-perturbation reduction.
    pub const COST: &str = include_str!("../shaders/cost.wgsl");
    /// One elementary function over a buffer (accuracy measurements).
    pub const PROBE: &str = include_str!("../shaders/probe.wgsl");

    /// The full source of one kernel family at a precision (`f64` or not).
    pub fn module(family: &str, f64: bool) -> String {
        let (alias, math) = if f64 {
            ("alias real = f64;\n", MATH_F64)
        } else {
            ("alias real = f32;\n", MATH_F32)
        };
        format!("{alias}{math}\n{COMMON}\n{family}")
    }

    /// Every (family name, source, entry points) the evaluator uses.
    pub fn families() -> [(&'static str, &'static str, &'static [&'static str]); 4] {
        [
            ("forward", FORWARD, &["base_layer"]),
            (
                "perturb",
                PERTURB,
                &["perturb_row", "rank1", "dense", "dense_narrow"],
            ),
            ("cost", COST, &["sample_loss", "reduce"]),
            ("probe", PROBE, &["math_probe"]),
        ]
    }
}

/// The per-dispatch description (mirrors `struct Job` in shaders/common.wgsl).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, Pod, Zeroable)]
struct Job {
    m: u32,
    first: u32,
    cols: u32,
    w_param: u32,
    rows_l: u32,
    cols_l: u32,
    in_dim: u32,
    out_dim: u32,
    act: u32,
    is_output: u32,
    w_off: u32,
    b_off: u32,
    in_off: u32,
    in_is_x: u32,
    z_off: u32,
    a_off: u32,
    y_off: u32,
    loss: u32,
    slope_idx: u32,
    theta_off: u32,
    l2: u32,
    total: u32,
    n_params: u32,
    delta: u32,
    mask_off: u32,
}

/// Workgroup width of the 1-D kernels, and the tile of `dense` (shaders agree).
const WG: u32 = 64;
const TILE: u32 = 16;

/// The pipelines of one precision.
struct Pipelines {
    layout: wgpu::BindGroupLayout,
    by_entry: HashMap<&'static str, wgpu::ComputePipeline>,
}

/// One adapter's device, queue and pipelines, shared by every check of a process.
pub struct GpuContext {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    has_f64: bool,
    lost: Arc<AtomicBool>,
    pipelines: Mutex<HashMap<bool, Arc<Pipelines>>>,
}

/// One adapter as `gradcheck devices` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdapterSummary {
    /// Adapter name.
    pub name: String,
    /// Vulkan, Metal, Dx12, …
    pub backend: String,
    /// DiscreteGpu, IntegratedGpu, Cpu, …
    pub device_type: String,
    /// Whether SHADER_F64 is available.
    pub shader_f64: bool,
    /// Largest storage-buffer binding, bytes.
    pub max_storage_buffer_binding_size: u64,
    /// Largest buffer, bytes.
    pub max_buffer_size: u64,
    /// Workgroups per dispatch dimension.
    pub max_compute_workgroups_per_dimension: u32,
    /// Storage buffers per shader stage.
    pub max_storage_buffers_per_shader_stage: u32,
}

fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

/// All adapters, best first (discrete GPUs first, f64-capable first within a type).
fn adapters() -> Vec<wgpu::Adapter> {
    let mut list = pollster::block_on(instance().enumerate_adapters(wgpu::Backends::all()));
    list.retain(|a| {
        a.get_downlevel_capabilities()
            .flags
            .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
    });
    list.sort_by_key(|a| {
        (
            rank(a.get_info().device_type),
            !a.features().contains(wgpu::Features::SHADER_F64),
        )
    });
    list
}

/// The adapters found, for `gradcheck devices`.
pub fn list_adapters() -> Vec<AdapterSummary> {
    adapters()
        .iter()
        .map(|a| {
            let (i, l) = (a.get_info(), a.limits());
            AdapterSummary {
                name: i.name,
                backend: format!("{:?}", i.backend),
                device_type: format!("{:?}", i.device_type),
                shader_f64: a.features().contains(wgpu::Features::SHADER_F64),
                max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
                max_buffer_size: l.max_buffer_size,
                max_compute_workgroups_per_dimension: l.max_compute_workgroups_per_dimension,
                max_storage_buffers_per_shader_stage: l.max_storage_buffers_per_shader_stage,
            }
        })
        .collect()
}

/// A human description of the adapters found.
pub fn describe_adapters() -> String {
    let list = list_adapters();
    if list.is_empty() {
        return "no GPU adapter found (on Debian/Ubuntu, `apt-get install mesa-vulkan-drivers` gives the software adapter llvmpipe)\n".into();
    }
    let mut s = String::new();
    for (n, a) in list.iter().enumerate() {
        s += &format!(
            "{n}: {} [{}, {}] f64: {}\n   max storage binding {} MiB, max buffer {} MiB, {} workgroups/dim, {} storage buffers/stage\n",
            a.name,
            a.backend,
            a.device_type,
            if a.shader_f64 { "yes" } else { "no" },
            a.max_storage_buffer_binding_size >> 20,
            a.max_buffer_size >> 20,
            a.max_compute_workgroups_per_dimension,
            a.max_storage_buffers_per_shader_stage
        );
    }
    s
}

fn gpu_err(e: impl std::fmt::Display) -> Error {
    Error::Gpu(e.to_string())
}

impl GpuContext {
    /// Opens the best adapter whose name contains `filter` (or `WGPU_ADAPTER_NAME`), with
    /// the adapter's own limits (not the 128/256 MiB defaults) and SHADER_F64 when offered.
    pub fn new(filter: Option<&str>) -> Result<Self> {
        let env = std::env::var("WGPU_ADAPTER_NAME").ok();
        let filter = filter.map(str::to_owned).or(env).map(|f| f.to_lowercase());
        let all = adapters();
        let adapter = all
            .into_iter()
            .find(|a| filter.as_ref().is_none_or(|f| a.get_info().name.to_lowercase().contains(f)))
            .ok_or_else(|| {
                Error::Gpu(match &filter {
                    Some(f) => format!("no GPU adapter matching {f:?} (see `gradcheck devices`)"),
                    None => "no GPU adapter found (on Debian/Ubuntu, `apt-get install mesa-vulkan-drivers` provides the software adapter llvmpipe)".into(),
                })
            })?;
        let has_f64 = adapter.features().contains(wgpu::Features::SHADER_F64);
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("gradcheck"),
            required_features: if has_f64 {
                wgpu::Features::SHADER_F64
            } else {
                wgpu::Features::empty()
            },
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| Error::Gpu(format!("could not open {}: {e}", adapter.get_info().name)))?;
        let lost = Arc::new(AtomicBool::new(false));
        let flag = lost.clone();
        device.set_device_lost_callback(move |_, _| flag.store(true, Ordering::SeqCst));
        Ok(GpuContext {
            device,
            queue,
            info: adapter.get_info(),
            limits,
            has_f64,
            lost,
            pipelines: Mutex::new(HashMap::new()),
        })
    }

    /// The shared context for an adapter filter, opened on first use.
    pub fn shared(filter: Option<&str>) -> Result<Arc<GpuContext>> {
        static CONTEXTS: OnceLock<Mutex<HashMap<Option<String>, Arc<GpuContext>>>> =
            OnceLock::new();
        let map = CONTEXTS.get_or_init(|| Mutex::new(HashMap::new()));
        let key = filter.map(str::to_owned);
        if let Some(c) = map.lock().expect("context map").get(&key) {
            return Ok(c.clone());
        }
        let c = Arc::new(GpuContext::new(filter)?);
        map.lock().expect("context map").insert(key, c.clone());
        Ok(c)
    }

    /// The adapter's name.
    pub fn adapter_name(&self) -> &str {
        &self.info.name
    }

    /// Whether f64 shaders are available.
    pub fn has_f64(&self) -> bool {
        self.has_f64
    }

    fn pipelines(&self, f64: bool) -> Result<Arc<Pipelines>> {
        if let Some(p) = self.pipelines.lock().expect("pipelines").get(&f64) {
            return Ok(p.clone());
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let storage = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some("gradcheck"),
                entries: &[
                    wgpu::BindGroupLayoutEntry {
                        binding: 0,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Uniform,
                            has_dynamic_offset: true,
                            min_binding_size: wgpu::BufferSize::new(
                                std::mem::size_of::<Job>() as u64
                            ),
                        },
                        count: None,
                    },
                    storage(1, true),
                    storage(2, false),
                    storage(3, false),
                    storage(4, false),
                    storage(5, false),
                    storage(6, false),
                ],
            });
        let pl = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some("gradcheck"),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let mut by_entry = HashMap::new();
        for (name, src, entries) in source::families() {
            let module = self
                .device
                .create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(name),
                    source: wgpu::ShaderSource::Wgsl(source::module(src, f64).into()),
                });
            for &entry in entries {
                let p = self
                    .device
                    .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                        label: Some(entry),
                        layout: Some(&pl),
                        module: &module,
                        entry_point: Some(entry),
                        compilation_options: Default::default(),
                        cache: None,
                    });
                by_entry.insert(entry, p);
            }
        }
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!(
                "building the {} kernels failed: {e}",
                if f64 { "f64" } else { "f32" }
            )));
        }
        let p = Arc::new(Pipelines { layout, by_entry });
        self.pipelines
            .lock()
            .expect("pipelines")
            .insert(f64, p.clone());
        Ok(p)
    }

    /// Capacity in reals of one batch buffer: the adapter's binding/buffer limits, capped
    /// at 512 MiB so a job leaves room for others on the device.
    fn batch_capacity(&self, real_size: u64) -> u64 {
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
        crate::check::validate_epsilon(epsilon)?;
        let precision = match precision {
            Precision::F64 if !self.has_f64 => {
                return Err(Error::Gpu(format!(
                    "{} has no SHADER_F64; use --precision f32",
                    self.info.name
                )));
            }
            Precision::Auto if self.has_f64 => Precision::F64,
            Precision::Auto => Precision::F32,
            p => p,
        };
        let use_f64 = precision == Precision::F64;
        let delta = precision == Precision::F32;
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
            let out = self.run::<f64>(model, params, data, epsilon, &plan, &fwd, false)?;
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
        let cost_scale = match &out.magnitudes {
            // RMS over the evaluated i of Σ_j|Δloss_j|/m, averaged over ±.
            Some(mag) if !range.is_empty() => {
                let sq: f64 = range
                    .clone()
                    .map(|i| {
                        let a = 0.5 * (mag[2 * i] + mag[2 * i + 1]);
                        a * a
                    })
                    .sum();
                (sq / range.len() as f64).sqrt()
            }
            _ => cpu::noise_scale(model, &fwd, data),
        };
        Ok(Evaluation {
            cost: fwd.cost,
            plus: out.plus,
            minus: out.minus,
            deltas: delta,
            cost_scale,
            kinks: out.kinks,
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
            kinks: flags.iter().take(n).map(|&f| f != 0).collect(),
            magnitudes: delta.then(|| vals[2 * n..4 * n].iter().map(|v| v.to_f64()).collect()),
        })
    }
}

/// What one evaluation brings back from the device.
struct RunOutput {
    plus: Vec<f64>,
    minus: Vec<f64>,
    kinks: Vec<bool>,
    /// Δ path: Σ_j|Δloss_j|/m of every perturbation (2i plus, 2i + 1 minus).
    magnitudes: Option<Vec<f64>>,
}

/// The elementary functions the kernels implement (see shaders/probe.wgsl).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MathFn {
    /// exp.
    Exp,
    /// Natural log.
    Log,
    /// tanh.
    Tanh,
    /// 1/(1 + exp(−x)).
    Sigmoid,
    /// exp(x) − 1 (the Δ path's).
    Expm1,
    /// log(1 + x) (the Δ path's).
    Log1p,
}

impl MathFn {
    /// The host's f64 reference.
    pub fn reference(self, x: f64) -> f64 {
        match self {
            MathFn::Exp => x.exp(),
            MathFn::Log => x.ln(),
            MathFn::Tanh => x.tanh(),
            MathFn::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            MathFn::Expm1 => x.exp_m1(),
            MathFn::Log1p => x.ln_1p(),
        }
    }
}

impl GpuContext {
    /// Evaluates `f` at every x on the device, in f64 or f32 (for accuracy measurements).
    pub fn math_probe(&self, f: MathFn, use_f64: bool, xs: &[f64]) -> Result<Vec<f64>> {
        if use_f64 {
            self.probe::<f64>(f, xs)
        } else {
            self.probe::<f32>(f, xs)
        }
    }

    fn probe<R: Real>(&self, f: MathFn, xs: &[f64]) -> Result<Vec<f64>> {
        if R::IS_F64 && !self.has_f64 {
            return Err(Error::Gpu(format!("{} has no SHADER_F64", self.info.name)));
        }
        let pipes = self.pipelines(R::IS_F64)?;
        let dev = &self.device;
        let n = xs.len().max(1);
        let storage = |label: &str, contents: &[u8]| {
            dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            })
        };
        let mut padded = xs.to_vec();
        padded.resize(n, 1.0);
        let input = storage("probe in", bytemuck::cast_slice(&R::convert(&padded)));
        let output = storage("probe out", &vec![0u8; n * R::SIZE]);
        let header = storage("probe model", bytemuck::cast_slice(&R::convert(&[0.0; 4])));
        let small = storage("probe scratch", &[0u8; 16]);
        let job = Job {
            act: f as u32,
            total: n as u32,
            ..Job::default()
        };
        let (ubuf, _) = self.jobs_buffer([&job]);
        let group = self.bind_group(
            &pipes,
            &ubuf,
            [&header, &small, &input, &output, &small, &small],
        );
        let bytes = (n * R::SIZE) as u64;
        let staging = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("probe readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = dev.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("probe"),
        });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("probe"),
                timestamp_writes: None,
            });
            pass.set_pipeline(&pipes.by_entry["math_probe"]);
            pass.set_bind_group(0, &group, &[0]);
            let groups = (n as u32).div_ceil(WG);
            let x = groups.min(self.limits.max_compute_workgroups_per_dimension);
            pass.dispatch_workgroups(x, groups.div_ceil(x), 1);
        }
        enc.copy_buffer_to_buffer(&output, 0, &staging, 0, bytes);
        self.queue.submit([enc.finish()]);
        let bytes = self.read_back(&staging)?;
        Ok(bytemuck::pod_collect_to_vec::<u8, R>(&bytes)
            .into_iter()
            .take(xs.len())
            .map(R::to_f64)
            .collect())
    }

    /// The uniform buffer of a list of jobs, one per `stride` bytes (the adapter's
    /// dynamic-offset alignment), and that stride.
    fn jobs_buffer<'a>(&self, jobs: impl IntoIterator<Item = &'a Job>) -> (wgpu::Buffer, usize) {
        let size = std::mem::size_of::<Job>();
        // Dynamic offsets must be multiples of the alignment: round the Job size up.
        let stride =
            size.next_multiple_of(self.limits.min_uniform_buffer_offset_alignment as usize);
        let mut bytes = Vec::new();
        for job in jobs {
            let at = bytes.len();
            bytes.resize(at + stride, 0);
            bytes[at..at + size].copy_from_slice(bytemuck::bytes_of(job));
        }
        let buf = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("jobs"),
                contents: &bytes,
                usage: wgpu::BufferUsages::UNIFORM,
            });
        (buf, stride)
    }

    /// The bind group of the shared layout: the jobs uniform (bound one Job wide, moved
    /// by dynamic offsets), then model, base, src, dst, results, kinks.
    fn bind_group(
        &self,
        pipes: &Pipelines,
        jobs: &wgpu::Buffer,
        buffers: [&wgpu::Buffer; 6],
    ) -> wgpu::BindGroup {
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: jobs,
                offset: 0,
                size: wgpu::BufferSize::new(std::mem::size_of::<Job>() as u64),
            }),
        }];
        for (n, b) in buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: n as u32 + 1,
                resource: b.as_entire_binding(),
            });
        }
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("gradcheck"),
            layout: &pipes.layout,
            entries: &entries,
        })
    }

    /// Maps a MAP_READ buffer after the last submission and copies its bytes out.
    fn read_back(&self, staging: &wgpu::Buffer) -> Result<Vec<u8>> {
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(gpu_err)?;
        if self.lost.load(Ordering::SeqCst) {
            return Err(Error::Gpu(
                "the device was lost during the evaluation".into(),
            ));
        }
        rx.recv().map_err(gpu_err)?.map_err(gpu_err)?;
        let view = slice.get_mapped_range().map_err(gpu_err)?;
        let out = view.to_vec();
        drop(view);
        staging.unmap();
        Ok(out)
    }
}

/// f32 or f64 on the device.
trait Real: Pod {
    const IS_F64: bool;
    const SIZE: usize;
    fn convert(v: &[f64]) -> Vec<Self>;
    fn to_f64(self) -> f64;
}

impl Real for f64 {
    const IS_F64: bool = true;
    const SIZE: usize = 8;
    fn convert(v: &[f64]) -> Vec<Self> {
        v.to_vec()
    }
    fn to_f64(self) -> f64 {
        self
    }
}

impl Real for f32 {
    const IS_F64: bool = false;
    const SIZE: usize = 4;
    fn convert(v: &[f64]) -> Vec<Self> {
        v.iter().map(|&x| x as f32).collect()
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

/// Options of [`GpuContext::evaluate`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EvalOptions {
    /// Caps the parameters per chunk (tests force tiny chunks with it).
    pub max_chunk: Option<usize>,
    /// Evaluate only these parameters (a shard); the others' J± come back as NaN.
    pub range: Option<std::ops::Range<usize>>,
}

/// A chunk: `count` consecutive parameters of layer `layer` starting at flat index `first`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Chunk {
    layer: usize,
    first: usize,
    count: usize,
}

/// How the 2N perturbations are split to respect the batch buffer capacity.
#[derive(Debug)]
struct Plan {
    chunks: Vec<Chunk>,
    /// Reals each of the two batch buffers must hold.
    batch_reals: usize,
}

impl Plan {
    fn new(model: &Model, data: &Data, capacity: u64, opts: &EvalOptions) -> Result<Plan> {
        let wanted = opts.range.clone().unwrap_or(0..model.n_params());
        let m = data.m();
        let sizes = model.sizes();
        let depth = model.depth();
        let mut chunks = Vec::new();
        let mut batch_reals = 1;
        for l in 0..depth {
            // Widest batch column block any stage of a layer-l perturbation writes.
            let widest = if l + 1 == depth {
                sizes[depth]
            } else {
                *sizes[l + 2..].iter().max().expect("non-empty")
            }
            .max(1);
            let per_param = 2 * m * widest;
            // dense's grid: columns ≤ 65 535 tiles of 16.
            let by_grid = (65_535 * TILE as usize) / (2 * m);
            let fit = (capacity as usize / per_param)
                .min(by_grid)
                .min(opts.max_chunk.unwrap_or(usize::MAX));
            if fit == 0 {
                return Err(Error::Gpu(format!(
                    "one perturbation of layer {} needs {} values of batch memory, more than the adapter's buffer limit allows",
                    l + 1,
                    per_param / 2
                )));
            }
            let layer = model.layout().weight(l).offset..model.layout().bias(l).range().end;
            let range = layer.start.max(wanted.start)..layer.end.min(wanted.end);
            let mut first = range.start;
            while first < range.end {
                let count = fit.min(range.end - first);
                chunks.push(Chunk {
                    layer: l,
                    first,
                    count,
                });
                batch_reals = batch_reals.max(count * per_param);
                first += count;
            }
        }
        Ok(Plan {
            chunks,
            batch_reals,
        })
    }
}
