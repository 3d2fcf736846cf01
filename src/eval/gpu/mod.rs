//! The GPU evaluator: every J(θ ± ε·e_i) in one queue submission, through wgpu and the
//! WGSL kernels in `shaders/`.
//!
//! One [`GpuContext`] holds the device and the pipelines (built once per precision);
//! [`GpuContext::evaluate`] uploads θ, X, Y once and records everything into one encoder:
//!
//! * **Δ paths** (`f64`, `f32`): the fused kernels, one thread per perturbation, nothing
//!   per sample written. `fused_delta` takes the changed row of Z_l sample by sample to
//!   the output in closed form — e_r·ΔZ for an output-layer parameter, v·t past
//!   piecewise-linear layers ([`crate::net::shortcut::Shortcut`] tables, as the CPU's) while t
//!   stays inside its kink-free interval — then the loss change and the compensated sum.
//!   `fused_exact` carries the other samples (outside the interval, or every sample of a
//!   layer without a shortcut) layer by layer in per-thread scratch vectors. The base pass
//!   comes from the CPU's f64 one.
//! * **Plain paths** (`f64-plain`, `f32-plain`), and the Δ path when a test asks
//!   (`EvalOptions::staged_only`): the staged kernels — base pass, then per chunk of
//!   parameters perturb_row → rank1 → dense… → sample_loss → reduce through two batch
//!   buffers. Chunks exist only where the adapter's limits demand them.
//!
//! `--timings` puts a timestamp pair around every dispatch (`timing`).
//!
//! Files: `context` (adapter, limits, readback), `source` (kernel text), `pipelines` (Job
//! uniform, bind group layout, pipelines), `plan` (chunks of the staged kernels), `run`
//! (one evaluation), `timing` (timestamp queries), `probe` (math accuracy). May use:
//! `eval`, `model`, `error`.

mod context;
mod layered;
mod pipelines;
mod plan;
mod probe;
mod run;
pub mod source;
mod timing;

use std::ops::Range;
use std::sync::Arc;

pub use context::{AdapterSummary, GpuContext, describe_adapters, list_adapters};
pub use probe::MathFn;

use crate::error::Result;
use crate::eval::{Evaluation, Evaluator, Precision};
use crate::model::{Data, Model, Params};

/// The GPU as an [`Evaluator`]: a shared context and the precision asked for.
#[derive(Clone)]
pub struct GpuEvaluator {
    /// The device.
    pub context: Arc<GpuContext>,
    /// Precision (Auto resolves to f64 where the adapter has it).
    pub precision: Precision,
    /// Caps the parameters per chunk (tests force tiny chunks with it).
    pub max_chunk: Option<usize>,
    /// Per-kernel device times in the evaluations.
    pub timings: bool,
}

impl GpuEvaluator {
    /// Opens (or reuses) the context of the best adapter whose name contains `adapter`.
    pub fn new(adapter: Option<&str>, precision: Precision) -> Result<Self> {
        Ok(GpuEvaluator {
            context: GpuContext::shared(adapter)?,
            precision,
            max_chunk: None,
            timings: false,
        })
    }
}

impl Evaluator for GpuEvaluator {
    fn evaluate_many(
        &self,
        model: &Model,
        params: &Params,
        data: &Data,
        epsilons: &[f64],
        range: Range<usize>,
    ) -> Result<Vec<Evaluation>> {
        let opts = EvalOptions {
            max_chunk: self.max_chunk,
            range: (range != (0..model.n_params())).then_some(range),
            timings: self.timings,
            ..EvalOptions::default()
        };
        self.context
            .evaluate_many(model, params, data, epsilons, self.precision, opts)
    }

    fn precision(&self) -> Precision {
        match self.precision {
            Precision::Auto if self.context.has_f64() => Precision::F64,
            Precision::Auto => Precision::F32,
            p => p,
        }
    }

    fn set_kernel_timings(&mut self, on: bool) {
        self.timings = on;
    }
}

/// Options of [`GpuContext::evaluate`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EvalOptions {
    /// Caps the parameters per chunk (tests force tiny chunks with it).
    pub max_chunk: Option<usize>,
    /// Evaluate only these parameters (a shard); the others' J± come back as NaN.
    pub range: Option<std::ops::Range<usize>>,
    /// Run every layer on the staged kernels, none fused (tests compare the two).
    pub staged_only: bool,
    /// Measure every kernel's device time (timestamp queries, where the adapter has them).
    pub timings: bool,
    /// Loop iterations per invocation to plan for instead of the adapter's
    /// ([`GpuContext::loop_cap`]); tests force small sample windows with it.
    pub loop_budget: Option<u32>,
}

/// f32 or f64 on the device.
pub(super) trait Real: bytemuck::Pod {
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
