//! GPU vs CPU numerics: the same J± from the GPU in f64, f32 (Δ path) and f32-plain against
//! the CPU f64 reference, as errors of J±, of the changes ΔJ± = J± − J(θ) (what a central
//! difference really uses), of gradapprox, and of the resulting differences.
//!
//! A front end (feature `gpu`). May use: `eval` (both backends directly), `verdict`'s defaults, `metric`.

use serde::Serialize;

use crate::error::Result;
use crate::eval::cpu::{self, Threads};
use crate::eval::gpu::GpuContext;
use crate::eval::{self, Precision, layered};
use crate::metric::difference;
use crate::model::{Data, Grads, Model, Params};
use crate::verdict::{DEFAULT_EPSILON, F32_EPSILON, F32_PLAIN_EPSILON};

/// Errors of one tensor (or of everything).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Errors {
    /// Tensor name, or "all".
    pub name: String,
    /// max |J_gpu − J_cpu| over this tensor's J±.
    pub j_max_abs: f64,
    /// max |J_gpu − J_cpu| / |J_cpu|.
    pub j_max_rel: f64,
    /// max |J_gpu − J_cpu| in ulps of the GPU precision at the value the GPU stores
    /// (J±, or ΔJ± on the Δ path).
    pub j_max_ulp: f64,
    /// Median over i and ± of |ΔJ_gpu − ΔJ_cpu| / |ΔJ_cpu| (over the changes that are
    /// not exactly 0): the relative error of the changes, which is what the central
    /// differences inherit.
    pub dj_median_rel: f64,
    /// The same, maximum (large where the samples' changes cancel, or at kinks).
    pub dj_max_rel: f64,
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
    /// The GPU's precision compared.
    pub precision: Precision,
    /// ε used by both sides.
    pub epsilon: f64,
    /// Over every parameter, then per tensor.
    pub all: Errors,
    /// Per tensor.
    pub tensors: Vec<Errors>,
    /// Wall time of the GPU evaluation, seconds (upload, kernels, readback).
    pub gpu_s: f64,
    /// … of which the kernels' device time, when the adapter has timestamp queries.
    pub gpu_kernels_s: Option<f64>,
    /// Wall time of the CPU reference's evaluation, seconds (every core).
    pub cpu_s: f64,
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
    gpu: &'a eval::Evaluation,
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
        dj_median_rel: 0.0,
        dj_max_rel: 0.0,
        gradapprox_max_abs: 0.0,
        difference_gpu: difference(&grad[range.clone()], &ga_gpu[range.clone()]),
        difference_cpu: difference(&grad[range.clone()], &ga_cpu[range.clone()]),
    };
    let mut rel_changes = Vec::new();
    for i in range {
        let (dp, dm) = gpu.delta(i);
        // The Δ paths are compared with the CPU's f64 Δ path (ΔJ± directly), the plain
        // ones with the CPU's plain J±.
        let reference_deltas = cpu_eval.magnitudes.is_some();
        for (dg, r) in [(dp, cpu_eval.plus[i]), (dm, cpu_eval.minus[i])] {
            let (c, dc) = if reference_deltas {
                (cpu_eval.cost + r, r)
            } else {
                (r, r - cpu_eval.cost)
            };
            // J± itself: the Δ path's J± is J(θ) + ΔJ± (only for this comparison: in f64
            // the sum would round away ΔJ's low digits for the check).
            let d = (gpu.cost + dg - c).abs();
            e.j_max_abs = e.j_max_abs.max(d);
            e.j_max_rel = e.j_max_rel.max(d / c.abs().max(f64::MIN_POSITIVE));
            let stored = if gpu.deltas { dc } else { c };
            e.j_max_ulp = e.j_max_ulp.max((dg - dc).abs() / ulp(stored, is_f64));
            if dc != 0.0 {
                // Exact zeros (dead units) have no relative error to speak of.
                rel_changes.push((dg - dc).abs() / dc.abs());
            }
        }
        e.gradapprox_max_abs = e.gradapprox_max_abs.max((ga_gpu[i] - ga_cpu[i]).abs());
    }
    rel_changes.sort_by(f64::total_cmp);
    if let Some(&max) = rel_changes.last() {
        e.dj_max_rel = max;
        e.dj_median_rel = rel_changes[rel_changes.len() / 2];
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
    let mut list = vec![
        (Precision::F32, F32_EPSILON),
        (Precision::F32Plain, F32_PLAIN_EPSILON),
    ];
    if ctx.has_f64() {
        list.insert(0, (Precision::F64Plain, DEFAULT_EPSILON));
        list.insert(0, (Precision::F64, DEFAULT_EPSILON));
    }
    let grad = grads.as_slice();
    for (p, default_eps) in list {
        let eps = epsilon.unwrap_or(default_eps);
        let is_f64 = matches!(p, Precision::F64 | Precision::F64Plain);
        let timed = crate::eval::gpu::EvalOptions {
            timings: true,
            ..Default::default()
        };
        let t0 = std::time::Instant::now();
        let gpu = ctx.evaluate(model, params, data, eps, p, timed)?;
        let gpu_s = t0.elapsed().as_secs_f64();
        let gpu_kernels_s = (!gpu.kernel_times.is_empty())
            .then(|| gpu.kernel_times.iter().map(|k| k.seconds).sum());
        // The f32 Δ path steps by exactly fl32(ε): the reference takes the same step, so
        // that only arithmetic is compared (the f64 one steps by ε itself).
        let cpu_eps = if p == Precision::F32 {
            f64::from(eps as f32)
        } else {
            eps
        };
        let t0 = std::time::Instant::now();
        let all = 0..model.n_params();
        let cpu_eval = match (model.net(), gpu.deltas) {
            (None, true) => {
                cpu::perturbed_deltas(model, params, data, cpu_eps, all, Threads::Parallel)?
            }
            (None, false) => {
                cpu::perturbed_costs(model, params, data, cpu_eps, all, Threads::Parallel)?
            }
            (Some(net), true) => layered::perturbed_deltas(
                model,
                net,
                params,
                data,
                cpu_eps,
                all,
                Threads::Parallel,
            )?,
            (Some(net), false) => {
                layered::perturbed_costs(model, net, params, data, cpu_eps, all, Threads::Parallel)?
            }
        };
        let cpu_s = t0.elapsed().as_secs_f64();
        let ga_gpu = gpu.gradapprox(eps);
        let ga_cpu: Vec<f64> = cpu_eval
            .plus
            .iter()
            .zip(&cpu_eval.minus)
            .map(|(a, b)| (a - b) / (2.0 * cpu_eps))
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
            precision: p,
            epsilon: eps,
            all,
            tensors,
            gpu_s,
            gpu_kernels_s,
            cpu_s,
        });
    }
    Ok(Comparison {
        adapter: ctx.adapter_name().to_string(),
        precisions,
    })
}

/// The comparison as a table.
pub fn render_text(c: &Comparison) -> String {
    let mut s = format!(
        "GPU ({}) vs CPU f64 reference (ΔJ± columns: relative error of J± − J(θ))\n",
        c.adapter
    );
    for p in &c.precisions {
        s += &format!("\n{} at ε = {:e}\n", p.precision, p.epsilon);
        s += &format!(
            "time: GPU {:.3} s{} · CPU {:.3} s (one evaluation each)\n",
            p.gpu_s,
            p.gpu_kernels_s
                .map_or(String::new(), |k| format!(" (kernels {k:.3} s)")),
            p.cpu_s
        );
        s += &format!(
            "{:<8} {:>11} {:>11} {:>10} {:>11} {:>11} {:>14} {:>12} {:>12}\n",
            "tensor",
            "J± max abs",
            "J± max rel",
            "ulp",
            "ΔJ± median",
            "ΔJ± max",
            "gradapprox abs",
            "diff (gpu)",
            "diff (cpu)"
        );
        for e in std::iter::once(&p.all).chain(&p.tensors) {
            s += &format!(
                "{:<8} {:>11.3e} {:>11.3e} {:>10.2} {:>11.3e} {:>11.3e} {:>14.3e} {:>12.4e} {:>12.4e}\n",
                e.name,
                e.j_max_abs,
                e.j_max_rel,
                e.j_max_ulp,
                e.dj_median_rel,
                e.dj_max_rel,
                e.gradapprox_max_abs,
                e.difference_gpu,
                e.difference_cpu
            );
        }
    }
    s
}
