//! GPU vs CPU numerics: the same J± from the GPU in f32 and f64 against the CPU f64
//! reference, as errors of J±, of gradapprox, and of the resulting differences.

use serde::Serialize;

use crate::check::{self, DEFAULT_EPSILON, F32_EPSILON, Precision, difference};
use crate::cpu::{self, Threads};
use crate::error::Result;
use crate::gpu::GpuContext;
use crate::model::{Data, Grads, Model, Params};

/// Errors of one tensor (or of everything).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Errors {
    /// Tensor name, or "all".
    pub name: String,
    /// max |J_gpu − J_cpu| over this tensor's J±.
    pub j_max_abs: f64,
    /// max |J_gpu − J_cpu| / |J_cpu|.
    pub j_max_rel: f64,
    /// max |J_gpu − J_cpu| in ulps of the GPU precision at J_cpu.
    pub j_max_ulp: f64,
    /// max |gradapprox_gpu − gradapprox_cpu|.
    pub gradapprox_max_abs: f64,
    /// The difference against the user's gradients from the GPU's J±.
    pub difference_gpu: f64,
    /// The same from the CPU's J±.
    pub difference_cpu: f64,
}

/// One precision's comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrecisionComparison {
    /// "f64" or "f32".
    pub precision: String,
    /// ε used by both sides.
    pub epsilon: f64,
    /// Over every parameter, then per tensor.
    pub all: Errors,
    /// Per tensor.
    pub tensors: Vec<Errors>,
}

/// The whole comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// The adapter.
    pub adapter: String,
    /// One entry per precision the adapter has.
    pub precisions: Vec<PrecisionComparison>,
}

fn ulp(x: f64, f64_precision: bool) -> f64 {
    if f64_precision {
        let a = x.abs();
        (f64::from_bits(a.to_bits() + 1) - a).max(f64::MIN_POSITIVE)
    } else {
        let a = (x as f32).abs();
        f64::from(f32::from_bits(a.to_bits() + 1) - a).max(f64::from(f32::MIN_POSITIVE))
    }
}

/// Both sides of one precision's comparison.
struct Sides<'a> {
    gpu: &'a check::Evaluation,
    cpu: &'a cpu::Perturbed,
    ga_gpu: &'a [f64],
    ga_cpu: &'a [f64],
    grad: &'a [f64],
    is_f64: bool,
}

fn errors(name: &str, range: std::ops::Range<usize>, s: &Sides<'_>) -> Errors {
    let (gpu, cpu_eval, ga_gpu, ga_cpu, grad, is_f64) =
        (s.gpu, s.cpu, s.ga_gpu, s.ga_cpu, s.grad, s.is_f64);
    let mut e = Errors {
        name: name.into(),
        j_max_abs: 0.0,
        j_max_rel: 0.0,
        j_max_ulp: 0.0,
        gradapprox_max_abs: 0.0,
        difference_gpu: difference(&grad[range.clone()], &ga_gpu[range.clone()]),
        difference_cpu: difference(&grad[range.clone()], &ga_cpu[range.clone()]),
    };
    for i in range {
        for (g, c) in [
            (gpu.plus[i], cpu_eval.plus[i]),
            (gpu.minus[i], cpu_eval.minus[i]),
        ] {
            let d = (g - c).abs();
            e.j_max_abs = e.j_max_abs.max(d);
            e.j_max_rel = e.j_max_rel.max(d / c.abs().max(f64::MIN_POSITIVE));
            e.j_max_ulp = e.j_max_ulp.max(d / ulp(c, is_f64));
        }
        e.gradapprox_max_abs = e.gradapprox_max_abs.max((ga_gpu[i] - ga_cpu[i]).abs());
    }
    e
}

/// Compares every precision the adapter offers against the CPU f64 reference. `epsilon`
/// = None uses each precision's default ε.
pub fn compare(
    ctx: &GpuContext,
    model: &Model,
    params: &Params,
    data: &Data,
    grads: &Grads,
    epsilon: Option<f64>,
) -> Result<Comparison> {
    let mut precisions = Vec::new();
    let mut list = vec![(Precision::F32, F32_EPSILON)];
    if ctx.has_f64() {
        list.insert(0, (Precision::F64, DEFAULT_EPSILON));
    }
    let grad = grads.as_slice();
    for (p, default_eps) in list {
        let eps = epsilon.unwrap_or(default_eps);
        let is_f64 = p == Precision::F64;
        let gpu = ctx.evaluate(model, params, data, eps, p, Default::default())?;
        let cpu_eval = cpu::perturbed_costs(
            model,
            params,
            data,
            eps,
            0..model.n_params(),
            Threads::Parallel,
        )?;
        let ga_gpu = gpu.gradapprox(eps);
        let ga_cpu: Vec<f64> = cpu_eval
            .plus
            .iter()
            .zip(&cpu_eval.minus)
            .map(|(a, b)| (a - b) / (2.0 * eps))
            .collect();
        let sides = Sides {
            gpu: &gpu,
            cpu: &cpu_eval,
            ga_gpu: &ga_gpu,
            ga_cpu: &ga_cpu,
            grad,
            is_f64,
        };
        let all = errors("all", 0..model.n_params(), &sides);
        let tensors = model
            .layout()
            .tensors()
            .iter()
            .map(|t| errors(&t.name, t.range(), &sides))
            .collect();
        precisions.push(PrecisionComparison {
            precision: if is_f64 { "f64" } else { "f32" }.into(),
            epsilon: eps,
            all,
            tensors,
        });
    }
    Ok(Comparison {
        adapter: ctx.adapter_name().to_string(),
        precisions,
    })
}

/// The comparison as a table.
pub fn render_text(c: &Comparison) -> String {
    let mut s = format!("GPU ({}) vs CPU f64 reference\n", c.adapter);
    for p in &c.precisions {
        s += &format!("\n{} at ε = {:e}\n", p.precision, p.epsilon);
        s += &format!(
            "{:<8} {:>11} {:>11} {:>10} {:>14} {:>12} {:>12}\n",
            "tensor",
            "J± max abs",
            "J± max rel",
            "J± ulp",
            "gradapprox abs",
            "diff (gpu)",
            "diff (cpu)"
        );
        for e in std::iter::once(&p.all).chain(&p.tensors) {
            s += &format!(
                "{:<8} {:>11.3e} {:>11.3e} {:>10.2} {:>14.3e} {:>12.4e} {:>12.4e}\n",
                e.name,
                e.j_max_abs,
                e.j_max_rel,
                e.j_max_ulp,
                e.gradapprox_max_abs,
                e.difference_gpu,
                e.difference_cpu
            );
        }
    }
    s
}
