//! Per-kernel device times: a timestamp pair around every dispatch — each dispatch in its
//! own compute pass, so that TIMESTAMP_QUERY alone suffices (no timestamps inside
//! passes) — resolved after the passes and summed per entry point.

use super::context::GpuContext;
use crate::error::Result;
use crate::eval::KernelTime;

/// Timestamp slots per query set (wgpu's maximum: 2048 dispatches).
const PER_SET: u32 = wgpu::QUERY_SET_MAX_QUERIES;

/// The timestamps of one submission's dispatches.
pub(super) struct Profiler {
    sets: Vec<wgpu::QuerySet>,
    /// Entry point of each timed dispatch, in order.
    names: Vec<&'static str>,
    readbacks: Vec<(wgpu::Buffer, u64)>,
}

impl Profiler {
    pub(super) fn new() -> Profiler {
        Profiler {
            sets: Vec::new(),
            names: Vec::new(),
            readbacks: Vec::new(),
        }
    }

    /// The timestamp writes of the next dispatch (of kernel `entry`).
    pub(super) fn next(
        &mut self,
        ctx: &GpuContext,
        entry: &'static str,
    ) -> wgpu::ComputePassTimestampWrites<'_> {
        let at = 2 * self.names.len() as u32;
        if at / PER_SET == self.sets.len() as u32 {
            self.sets
                .push(ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("kernel times"),
                    ty: wgpu::QueryType::Timestamp,
                    count: PER_SET,
                }));
        }
        self.names.push(entry);
        let set = &self.sets[(at / PER_SET) as usize];
        wgpu::ComputePassTimestampWrites {
            query_set: set,
            beginning_of_pass_write_index: Some(at % PER_SET),
            end_of_pass_write_index: Some(at % PER_SET + 1),
        }
    }

    /// Records the resolution of every query set into buffers that can be read back.
    pub(super) fn resolve(&mut self, ctx: &GpuContext, enc: &mut wgpu::CommandEncoder) {
        let total = 2 * self.names.len() as u32;
        for (s, set) in self.sets.iter().enumerate() {
            let used = (total - s as u32 * PER_SET).min(PER_SET);
            let bytes = u64::from(used) * u64::from(wgpu::QUERY_SIZE);
            let buffer = |usage| {
                ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("kernel times"),
                    size: bytes,
                    usage,
                    mapped_at_creation: false,
                })
            };
            let resolved = buffer(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC);
            let readback = buffer(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
            enc.resolve_query_set(set, 0..used, &resolved, 0);
            enc.copy_buffer_to_buffer(&resolved, 0, &readback, 0, bytes);
            self.readbacks.push((readback, bytes));
        }
    }

    /// After the submission: seconds per kernel, first-seen order.
    pub(super) fn collect(self, ctx: &GpuContext) -> Result<Vec<KernelTime>> {
        let period_ns = f64::from(ctx.queue.get_timestamp_period());
        let mut ticks: Vec<u64> = Vec::new();
        for (buffer, _) in &self.readbacks {
            ticks.extend(bytemuck::pod_collect_to_vec::<u8, u64>(
                &ctx.read_back(buffer)?,
            ));
        }
        let mut out: Vec<KernelTime> = Vec::new();
        for (d, name) in self.names.iter().enumerate() {
            let (begin, end) = (ticks[2 * d], ticks[2 * d + 1]);
            let one = KernelTime {
                kernel: (*name).to_owned(),
                dispatches: 1,
                // Some drivers reset the counter between passes: a negative span is 0.
                seconds: end.saturating_sub(begin) as f64 * period_ns * 1e-9,
            };
            crate::eval::add_kernel_times(&mut out, &[one]);
        }
        Ok(out)
    }
}
