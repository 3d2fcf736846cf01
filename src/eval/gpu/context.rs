//! The device: adapter choice (best first, optionally by name), the adapter's own limits,
//! one shared context per adapter filter, and reading results back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::pipelines::{self, Job, KernelSet, PipelineCache, Pipelines};
use crate::error::{Error, Result};

/// One adapter's device, queue and pipelines, shared by every check of a process.
pub struct GpuContext {
    pub(super) device: wgpu::Device,
    pub(super) queue: wgpu::Queue,
    pub(super) info: wgpu::AdapterInfo,
    pub(super) limits: wgpu::Limits,
    pub(super) has_f64: bool,
    /// Whether the device has TIMESTAMP_QUERY (per-kernel times).
    pub(super) has_timestamps: bool,
    pub(super) lost: Arc<AtomicBool>,
    pipelines: PipelineCache,
    /// Loop iterations one invocation may run in all ([`GpuContext::loop_cap`]), probed once.
    loop_cap: OnceLock<u32>,
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

pub(super) fn gpu_err(e: impl std::fmt::Display) -> Error {
    Error::gpu(crate::error::GpuErrorKind::DeviceLost, e.to_string())
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
                Error::gpu(crate::error::GpuErrorKind::NoAdapter, match &filter {
                    Some(f) => format!("no GPU adapter matching {f:?} (see `gradcheck devices`)"),
                    None => match std::env::var("WGPU_BACKEND") {
                        // A backend named in the environment is the likelier cause.
                        Ok(b) => format!("no GPU adapter found with WGPU_BACKEND={b:?} (vulkan, metal, dx12 or gl; unset it to try every backend)"),
                        Err(_) => "no GPU adapter found (on Debian/Ubuntu, `apt-get install mesa-vulkan-drivers` provides the software adapter llvmpipe)".into(),
                    },
                })
            })?;
        let has_f64 = adapter.features().contains(wgpu::Features::SHADER_F64);
        let has_timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        let mut features = wgpu::Features::empty();
        features.set(wgpu::Features::SHADER_F64, has_f64);
        features.set(wgpu::Features::TIMESTAMP_QUERY, has_timestamps);
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("gradcheck"),
            required_features: features,
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| {
            Error::gpu(
                crate::error::GpuErrorKind::NoAdapter,
                format!("could not open {}: {e}", adapter.get_info().name),
            )
        })?;
        let lost = Arc::new(AtomicBool::new(false));
        let flag = lost.clone();
        device.set_device_lost_callback(move |_, _| flag.store(true, Ordering::SeqCst));
        Ok(GpuContext {
            device,
            queue,
            info: adapter.get_info(),
            limits,
            has_f64,
            has_timestamps,
            lost,
            pipelines: PipelineCache::default(),
            loop_cap: OnceLock::new(),
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

    /// The MLP kernels' pipelines in f64 (or f32), built on first use.
    pub(super) fn pipelines(&self, f64: bool) -> Result<Arc<Pipelines>> {
        self.pipelines.get(&self.device, f64, KernelSet::Mlp)
    }

    /// The layer types' kernels (`shaders/layered.wgsl`), built on first use.
    pub(super) fn layered_pipelines(&self, f64: bool) -> Result<Arc<Pipelines>> {
        self.pipelines.get(&self.device, f64, KernelSet::Layered)
    }

    /// The uniform buffer of a list of jobs and its stride (see [`pipelines::jobs_buffer`]).
    pub(super) fn jobs_buffer<'a>(
        &self,
        jobs: impl IntoIterator<Item = &'a Job>,
    ) -> (wgpu::Buffer, usize) {
        pipelines::jobs_buffer(&self.device, &self.limits, jobs)
    }

    /// The bind group of the shared layout over `buffers` (see [`pipelines::bind_group`]).
    pub(super) fn bind_group(
        &self,
        pipes: &Pipelines,
        jobs: &wgpu::Buffer,
        buffers: [&wgpu::Buffer; 7],
    ) -> wgpu::BindGroup {
        pipelines::bind_group(&self.device, pipes, jobs, buffers)
    }

    /// The adapter's name.
    pub fn adapter_name(&self) -> &str {
        &self.info.name
    }

    /// Whether the adapter is a software one (a GPU emulated on the CPU, e.g. llvmpipe).
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// Whether f64 shaders are available.
    pub fn has_f64(&self) -> bool {
        self.has_f64
    }

    /// Whether kernel times can be measured (TIMESTAMP_QUERY).
    pub fn has_timestamps(&self) -> bool {
        self.has_timestamps
    }

    /// How many loop iterations one shader invocation may run in all before the driver
    /// ends its loops (silently): Mesa's llvmpipe stops every loop of an invocation after
    /// 65,535 iterations shared by all of its loops, which a thread summing thousands of
    /// samples reaches. Measured once per adapter by a probe that counts to 2²⁰
    /// (`u32::MAX` when it gets there: no cap seen); the fused kernels split their samples
    /// into windows within it.
    pub fn loop_cap(&self) -> Result<u32> {
        if let Some(&c) = self.loop_cap.get() {
            return Ok(c);
        }
        const TARGET: u32 = 1 << 20;
        let src = "@group(0) @binding(0) var<storage, read_write> io: array<u32>;
@compute @workgroup_size(1)
fn count() {
    var n = 0u;
    for (var i = 0u; i < io[0]; i++) {
        n += io[1];
    }
    io[2] = n;
}";
        let dev = &self.device;
        let scope = dev.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = dev.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("loop cap probe"),
            source: wgpu::ShaderSource::Wgsl(src.into()),
        });
        let pipeline = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("loop cap probe"),
            layout: None,
            module: &module,
            entry_point: Some("count"),
            compilation_options: Default::default(),
            cache: None,
        });
        let io = wgpu::util::DeviceExt::create_buffer_init(
            dev,
            &wgpu::util::BufferInitDescriptor {
                label: Some("loop cap probe"),
                contents: bytemuck::cast_slice(&[TARGET, 1, 0, 0]),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            },
        );
        let staging = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("loop cap readback"),
            size: 16,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let group = dev.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: io.as_entire_binding(),
            }],
        });
        let mut enc = dev.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &group, &[]);
            pass.dispatch_workgroups(1, 1, 1);
        }
        enc.copy_buffer_to_buffer(&io, 0, &staging, 0, 16);
        self.queue.submit([enc.finish()]);
        let out: Vec<u32> = bytemuck::pod_collect_to_vec(&self.read_back(&staging)?);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Internal(format!("the GPU loop probe failed: {e}")));
        }
        let counted = out[2];
        let cap = if counted >= TARGET { u32::MAX } else { counted };
        Ok(*self.loop_cap.get_or_init(|| cap))
    }

    /// Maps a MAP_READ buffer after the last submission and copies its bytes out.
    pub(super) fn read_back(&self, staging: &wgpu::Buffer) -> Result<Vec<u8>> {
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(gpu_err)?;
        if self.lost.load(Ordering::SeqCst) {
            return Err(Error::gpu(
                crate::error::GpuErrorKind::DeviceLost,
                "the device was lost during the evaluation",
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
