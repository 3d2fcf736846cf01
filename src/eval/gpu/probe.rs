//! Elementary functions evaluated on the device, one per element (accuracy tests of the
//! kernels' own exp/log/tanh/expm1/log1p against the host's f64).

use wgpu::util::DeviceExt;

use super::Real;
use super::context::GpuContext;
use super::pipelines::{Job, WG};
use crate::error::{Error, Result};

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
            return Err(Error::gpu(
                crate::error::GpuErrorKind::MissingFeature,
                format!("{} has no SHADER_F64", self.info.name),
            ));
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
        // Distinct stand-ins for the unused bindings (one buffer may not be bound both
        // read-write and read-only in a dispatch).
        let small = storage("probe scratch", &[0u8; 16]);
        let list = storage("probe list", &[0u8; 16]);
        let job = Job {
            act: f as u32,
            total: n as u32,
            ..Job::default()
        };
        let (ubuf, _) = self.jobs_buffer([&job]);
        let group = self.bind_group(
            &pipes,
            &ubuf,
            [&header, &small, &input, &output, &small, &small, &list],
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
}
