//! The kernels' shared interface: the Job uniform (one per dispatch, moved by dynamic
//! offsets), the one bind group layout, and the compute pipelines, built once per
//! precision and kept in the context.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytemuck::{Pod, Zeroable};
use wgpu::util::DeviceExt;

use super::source;
use crate::error::{Error, Result};

/// The per-dispatch description (mirrors `struct Job` in shaders/common.wgsl).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, Pod, Zeroable)]
pub(super) struct Job {
    pub(super) m: u32,
    pub(super) first: u32,
    pub(super) cols: u32,
    pub(super) w_param: u32,
    pub(super) rows_l: u32,
    pub(super) cols_l: u32,
    pub(super) in_dim: u32,
    pub(super) out_dim: u32,
    pub(super) act: u32,
    pub(super) is_output: u32,
    pub(super) w_off: u32,
    pub(super) b_off: u32,
    pub(super) in_off: u32,
    pub(super) in_is_x: u32,
    pub(super) z_off: u32,
    pub(super) a_off: u32,
    pub(super) y_off: u32,
    pub(super) loss: u32,
    pub(super) slope_idx: u32,
    pub(super) theta_off: u32,
    pub(super) l2: u32,
    pub(super) total: u32,
    pub(super) n_params: u32,
    pub(super) delta: u32,
    pub(super) mask_off: u32,
    pub(super) sig_off: u32,
    pub(super) sc_v: u32,
    pub(super) sc_lo: u32,
    pub(super) sc_hi: u32,
    pub(super) n_out: u32,
    pub(super) out_z: u32,
    pub(super) out_a: u32,
    pub(super) out_act: u32,
    pub(super) out_slope: u32,
    pub(super) layer: u32,
    pub(super) list_off: u32,
    pub(super) scratch_w: u32,
    pub(super) threads: u32,
    pub(super) j_begin: u32,
    pub(super) j_end: u32,
    pub(super) item0: u32,
    pub(super) widest: u32,
    pub(super) n_layers: u32,
    pub(super) tensor_tab: u32,
    pub(super) n_tensors: u32,
}

/// Workgroup width of the 1-D kernels, and the tile of `dense` (shaders agree).
pub(super) const WG: u32 = 64;
pub(super) const TILE: u32 = 16;

/// The pipelines of one precision.
pub(super) struct Pipelines {
    pub(super) layout: wgpu::BindGroupLayout,
    pub(super) by_entry: HashMap<&'static str, wgpu::ComputePipeline>,
}

/// Which kernels a set of pipelines holds: the MLP's families (and the math probe), or the
/// layer types' (`layered`). Each set is compiled only when first used: a software
/// adapter compiles a family in tens of milliseconds, which an MLP check should not pay
/// for conv kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum KernelSet {
    Mlp,
    Layered,
}

/// The pipelines of each precision and kernel set, built on first use (a context keeps
/// one cache).
#[derive(Default)]
pub(super) struct PipelineCache(Mutex<HashMap<(bool, KernelSet), Arc<Pipelines>>>);

impl PipelineCache {
    /// The pipelines of f64 (or f32) and `set` on `device`, built once.
    pub(super) fn get(
        &self,
        device: &wgpu::Device,
        f64: bool,
        set: KernelSet,
    ) -> Result<Arc<Pipelines>> {
        if let Some(p) = self.0.lock().expect("pipelines").get(&(f64, set)) {
            return Ok(p.clone());
        }
        let built = Arc::new(build(device, f64, set)?);
        self.0
            .lock()
            .expect("pipelines")
            .insert((f64, set), built.clone());
        Ok(built)
    }
}

/// The bind group layout, the pipeline layout and every family's pipelines at a precision.
fn build(device: &wgpu::Device, f64: bool, set: KernelSet) -> Result<Pipelines> {
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
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
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("gradcheck"),
        entries: &[
            wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: true,
                    min_binding_size: wgpu::BufferSize::new(std::mem::size_of::<Job>() as u64),
                },
                count: None,
            },
            storage(1, true),
            storage(2, false),
            storage(3, false),
            storage(4, false),
            storage(5, false),
            storage(6, false),
            storage(7, true),
        ],
    });
    let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some("gradcheck"),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let mut by_entry = HashMap::new();
    for (name, parts, entries) in source::families()
        .into_iter()
        .filter(|f| (f.0 == "layered") == (set == KernelSet::Layered))
    {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(name),
            source: wgpu::ShaderSource::Wgsl(source::module_for_build(parts, f64).into()),
        });
        for &entry in entries {
            let p = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
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
        return Err(Error::gpu(
            crate::error::GpuErrorKind::Internal,
            format!(
                "building the {} kernels failed: {e}",
                if f64 { "f64" } else { "f32" }
            ),
        ));
    }
    Ok(Pipelines { layout, by_entry })
}

/// The uniform buffer of a list of jobs, one per `stride` bytes (the adapter's
/// dynamic-offset alignment), and that stride.
pub(super) fn jobs_buffer<'a>(
    device: &wgpu::Device,
    limits: &wgpu::Limits,
    jobs: impl IntoIterator<Item = &'a Job>,
) -> (wgpu::Buffer, usize) {
    let size = std::mem::size_of::<Job>();
    // Dynamic offsets must be multiples of the alignment: round the Job size up.
    let stride = size.next_multiple_of(limits.min_uniform_buffer_offset_alignment as usize);
    let mut bytes = Vec::new();
    for job in jobs {
        let at = bytes.len();
        bytes.resize(at + stride, 0);
        bytes[at..at + size].copy_from_slice(bytemuck::bytes_of(job));
    }
    let buf = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("jobs"),
        contents: &bytes,
        usage: wgpu::BufferUsages::UNIFORM,
    });
    (buf, stride)
}

/// The bind group of the shared layout: the jobs uniform (bound one Job wide, moved
/// by dynamic offsets), then model, base, src, dst, results, kinks, the parameter list.
pub(super) fn bind_group(
    device: &wgpu::Device,
    pipes: &Pipelines,
    jobs: &wgpu::Buffer,
    buffers: [&wgpu::Buffer; 7],
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
    device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("gradcheck"),
        layout: &pipes.layout,
        entries: &entries,
    })
}
