//! The choice of evaluator: what `--backend cpu|gpu|auto` stands for, and `auto`'s
//! fallback to the CPU where no usable GPU is there (never on a GPU's own failure).
//!
//! May use: `eval` (the trait and both backends), `error`.

use std::ops::Range;

#[cfg(feature = "gpu")]
use super::gpu;
use super::{Backend, CpuEvaluator, Evaluation, Evaluator, Precision, Progress, Threads};
use crate::error::{Error, Result};
use crate::model::{Data, Model, Params};

/// A real GPU, falling back to the CPU (with a note saying why) when the GPU backend
/// cannot do the job (buffer limits, no f64, device lost): `--backend auto`.
#[cfg(feature = "gpu")]
struct GpuOrCpu {
    gpu: gpu::GpuEvaluator,
    cpu: CpuEvaluator,
}

#[cfg(feature = "gpu")]
impl Evaluator for GpuOrCpu {
    fn precision(&self) -> Precision {
        self.gpu.precision()
    }

    fn set_kernel_timings(&mut self, on: bool) {
        self.gpu.set_kernel_timings(on);
    }

    fn evaluate_many(
        &self,
        model: &Model,
        params: &Params,
        data: &Data,
        epsilons: &[f64],
        range: Range<usize>,
    ) -> Result<Vec<Evaluation>> {
        match self
            .gpu
            .evaluate_many(model, params, data, epsilons, range.clone())
        {
            Err(Error::Gpu { kind, msg: why }) if kind.cpu_may_stand_in() => {
                let mut all = self
                    .cpu
                    .evaluate_many(model, params, data, epsilons, range)?;
                for e in &mut all {
                    e.notes.push(format!(
                        "the GPU could not do it ({why}); fell back to the CPU {} evaluator",
                        e.precision
                    ));
                }
                Ok(all)
            }
            other => other,
        }
    }
}

/// An evaluator with a note for the report (why it was chosen).
struct Noted<E> {
    inner: E,
    note: String,
}

impl<E: Evaluator> Evaluator for Noted<E> {
    fn precision(&self) -> Precision {
        self.inner.precision()
    }

    fn set_kernel_timings(&mut self, on: bool) {
        self.inner.set_kernel_timings(on);
    }

    fn evaluate_many(
        &self,
        model: &Model,
        params: &Params,
        data: &Data,
        epsilons: &[f64],
        range: Range<usize>,
    ) -> Result<Vec<Evaluation>> {
        let mut all = self
            .inner
            .evaluate_many(model, params, data, epsilons, range)?;
        for e in &mut all {
            e.notes.push(self.note.clone());
        }
        Ok(all)
    }
}

/// The evaluator a backend choice stands for. `adapter` picks a GPU adapter by name.
///
/// `auto` takes a real GPU when there is one, and the CPU otherwise — also when the only
/// adapter is a software one (Mesa's llvmpipe emulates a GPU on these same cores, 11–15×
/// slower than the native CPU evaluator); naming it with `adapter` or `--backend gpu`
/// still uses it. The report says which was chosen and why.
pub fn evaluator(
    backend: Backend,
    precision: Precision,
    adapter: Option<&str>,
    threads: Threads,
    progress: Option<Progress>,
) -> Result<Box<dyn Evaluator>> {
    let cpu = CpuEvaluator {
        threads,
        precision,
        progress,
    };
    let on_cpu = |why: String| -> Box<dyn Evaluator> {
        Box::new(Noted {
            inner: cpu.clone(),
            note: why,
        })
    };
    #[cfg(feature = "gpu")]
    {
        match backend {
            Backend::Cpu => Ok(Box::new(cpu)),
            Backend::Gpu => Ok(Box::new(gpu::GpuEvaluator::new(adapter, precision)?)),
            Backend::Auto => match gpu::GpuEvaluator::new(adapter, precision) {
                // Only a machine without a usable GPU falls back; a GPU that fails (a
                // shader bug, a lost device) is reported, not hidden behind a CPU run.
                Err(Error::Gpu { kind, msg }) if kind.cpu_may_stand_in() => {
                    // The install hint is for --backend gpu: auto would skip llvmpipe.
                    let why = msg.split(" (on Debian").next().unwrap_or(&msg);
                    Ok(on_cpu(format!(
                        "no usable GPU ({why}): evaluated on the CPU"
                    )))
                }
                Err(e) => Err(e),
                Ok(g) if g.context.is_software() && adapter.is_none() => Ok(on_cpu(format!(
                    "evaluated on the CPU: the only GPU adapter, {}, is a software emulator (--backend gpu uses it anyway)",
                    g.context.adapter_name()
                ))),
                Ok(g) => Ok(Box::new(GpuOrCpu { gpu: g, cpu })),
            },
        }
    }
    #[cfg(not(feature = "gpu"))]
    {
        let _ = adapter;
        match backend {
            Backend::Cpu => Ok(Box::new(cpu)),
            Backend::Gpu => Err(Error::gpu(
                crate::error::GpuErrorKind::NoAdapter,
                "this build of gradcheck has no GPU backend (built without the `gpu` feature)",
            )),
            Backend::Auto => Ok(on_cpu(
                "built without the `gpu` feature: evaluated on the CPU".into(),
            )),
        }
    }
}
