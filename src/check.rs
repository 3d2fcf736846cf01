//! The check itself: central differences from the J± of an evaluator, the notebook's
//! difference globally and per tensor, the worst elements, and the verdict.

use std::time::Instant;

use serde::Serialize;

use crate::cpu::{self, Threads};
use crate::diagnose::{self, Diagnosis};
use crate::error::{Error, Result};
use crate::model::{Data, Grads, Model, ParamLayout, Params};

/// Which evaluator computes the J±.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The GPU when an adapter is there, otherwise the CPU (and the report says so).
    Auto,
    /// The CPU f64 reference.
    Cpu,
    /// The GPU (wgpu); an error when no adapter is usable.
    Gpu,
}

/// Floating-point precision of the GPU evaluation (the CPU is always f64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
pub enum Precision {
    /// f64 where the adapter has SHADER_F64, f32 otherwise.
    #[serde(rename = "auto")]
    Auto,
    /// f64 shaders (own exp/log; needs SHADER_F64).
    #[serde(rename = "f64")]
    F64,
    /// f32 shaders that evaluate ΔJ± = J(θ ± ε·e_i) − J(θ) directly, every stage carrying
    /// its change from the base pass in a closed form without cancellation: verdicts as
    /// sharp as f64's on hardware without f64 (see [`F32_EPSILON`]).
    #[serde(rename = "f32")]
    F32,
    /// f32 shaders computing J± themselves and subtracting them, as a naive port would:
    /// needs a large ε and a loose threshold (see [`F32_PLAIN_EPSILON`]); kept to show
    /// what the Δ path gains.
    #[value(name = "f32-plain")]
    #[serde(rename = "f32-plain")]
    F32Plain,
}

impl Precision {
    /// The label reports use: "f64", "f32", "f32-plain" ("auto" until resolved).
    pub fn label(self) -> &'static str {
        match self {
            Precision::Auto => "auto",
            Precision::F64 => "f64",
            Precision::F32 => "f32",
            Precision::F32Plain => "f32-plain",
        }
    }
}

/// Whether perturbations that cross a ReLU kink count in the verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KinkPolicy {
    /// Keep them out of the verdict (they are still reported and counted).
    Exclude,
    /// Count them like every other element.
    Include,
}

/// The notebook's ε.
pub const DEFAULT_EPSILON: f64 = 1e-7;
/// The notebook's verdict threshold on the difference.
pub const DEFAULT_THRESHOLD: f64 = 2e-7;
/// f32 (Δ path) default ε. Its rounding error is relative to ΔJ itself (≈ u32 per
/// element, whatever ε), so ε only has to make the truncation error (∝ ε²) small and
/// kinks rare: at 1e-4 the seed's truncation part is 2e-10.
pub const F32_EPSILON: f64 = 1e-4;
/// f32 (Δ path) default threshold: a few u32 = 6e-8 relative per element leave correct
/// gradients at 3.6e-8 (seed-fixed), 4.8e-8 (64-32-16-1), 5.4e-8 (784-64-32-1) on
/// llvmpipe; 1e-6 leaves 20× for deeper nets and is 10⁵ below the planted bugs.
pub const F32_THRESHOLD: f64 = 1e-6;
/// f32-plain default ε: near the optimum cbrt(3·u32) ≈ 7e-3 of truncation (ε²) against
/// rounding (u32·|J|/ε) for unit-scale costs, rounded down to keep kinks rarer.
pub const F32_PLAIN_EPSILON: f64 = 1e-3;
/// f32-plain default threshold: at ε = 1e-3 correct gradients on the seed net give ≈ 4e-3
/// (rounding u32·|J|/ε ≈ 3e-4 per element); planted bugs give ≥ 0.1.
pub const F32_PLAIN_THRESHOLD: f64 = 1e-2;
/// Safety factor on the per-element rounding-noise estimate u·scale/ε used by the
/// per-tensor rule (see [`noise_floor`]). Measured on the seed net: the RMS error of
/// correct gradients is 0.5–0.6 × u·scale/ε; 8 leaves room for error growth through
/// deeper nets while staying 10⁵ below the smallest planted bug there.
pub const NOISE_FACTOR: f64 = 8.0;

/// J± of every perturbation, however they were computed.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// J(θ).
    pub cost: f64,
    /// J(θ + ε·e_i), or J(θ + ε·e_i) − J(θ) when `deltas`.
    pub plus: Vec<f64>,
    /// J(θ − ε·e_i), or J(θ − ε·e_i) − J(θ) when `deltas`.
    pub minus: Vec<f64>,
    /// Whether `plus`/`minus` hold the changes ΔJ± from J(θ) (the f32 Δ path: adding them
    /// back to J(θ) would round away the digits it gained) rather than J± themselves.
    pub deltas: bool,
    /// The size of the numbers whose rounding makes the noise in J±: per-sample loss
    /// magnitude Σ|loss_j|/m + L2 term; on the Δ path the RMS over i of Σ_j|Δloss_j|/m.
    pub cost_scale: f64,
    /// Whether the ±ε step of parameter i crossed a ReLU/leaky-ReLU kink.
    pub kinks: Vec<bool>,
    /// "cpu" or "gpu (adapter name)".
    pub backend: String,
    /// "f64", "f32" or "f32-plain".
    pub precision: String,
    /// Unit roundoff of the precision the J± were computed in.
    pub unit_roundoff: f64,
    /// The real steps (θ_i + ε) − (θ_i − ε) when they differ from 2ε (f32: fl32(θ ± ε)
    /// is off by up to u32·|θ|, so dividing by the nominal 2ε would bias every element);
    /// `None` = the nominal 2ε, as the notebook divides. A zero step (ε below the
    /// precision's resolution at θ_i) moves nothing: its gradapprox is reported as 0.
    pub steps: Option<Vec<f64>>,
    /// Anything the user should know about how this was computed (fallbacks, …).
    pub notes: Vec<String>,
}

impl Evaluation {
    /// ΔJ± = (J(θ + ε·e_i) − J(θ), J(θ − ε·e_i) − J(θ)) of parameter i, whichever way
    /// they are stored.
    pub fn delta(&self, i: usize) -> (f64, f64) {
        if self.deltas {
            (self.plus[i], self.minus[i])
        } else {
            (self.plus[i] - self.cost, self.minus[i] - self.cost)
        }
    }

    /// (J⁺_i − J⁻_i)/(2ε) for every i, in f64 (over the real steps where recorded).
    pub fn gradapprox(&self, epsilon: f64) -> Vec<f64> {
        match &self.steps {
            None => self
                .plus
                .iter()
                .zip(&self.minus)
                .map(|(p, m)| (p - m) / (2.0 * epsilon))
                .collect(),
            Some(h) => self
                .plus
                .iter()
                .zip(&self.minus)
                .zip(h)
                .map(|((p, m), h)| if *h == 0.0 { 0.0 } else { (p - m) / h })
                .collect(),
        }
    }
}

/// ‖a − b‖₂ / (‖a‖₂ + ‖b‖₂), 0 when both are zero (the notebook's difference).
pub fn difference(a: &[f64], b: &[f64]) -> f64 {
    let (mut num, mut na, mut nb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        num += (x - y) * (x - y);
        na += x * x;
        nb += y * y;
    }
    let den = na.sqrt() + nb.sqrt();
    if den == 0.0 { 0.0 } else { num.sqrt() / den }
}

/// The rounding-noise floor of one central difference: J± each carry an absolute error
/// of roughly u·scale (scale includes the cost's conditioning, see [`cpu::noise_scale`]),
/// so their difference over 2ε carries about u·scale/ε; [`NOISE_FACTOR`] covers the error
/// growth through the forward pass.
pub fn noise_floor(unit_roundoff: f64, cost_scale: f64, epsilon: f64) -> f64 {
    NOISE_FACTOR * unit_roundoff * cost_scale.max(f64::MIN_POSITIVE) / epsilon
}

/// One element in a tensor's worst list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Worst {
    /// Flat index in θ.
    pub index: usize,
    /// Human name, e.g. `W2[1,4]`.
    pub element: String,
    /// The user's (analytic) gradient.
    pub analytic: f64,
    /// The central difference.
    pub numeric: f64,
    /// |analytic − numeric|.
    pub abs_error: f64,
    /// Whether this element's perturbation crossed a kink.
    pub kink: bool,
}

/// The check of one tensor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorReport {
    /// "W1", "b1", …
    pub name: String,
    /// [rows, cols].
    pub shape: [usize; 2],
    /// The notebook's difference over this tensor's elements (kinks excluded per policy).
    pub difference: f64,
    /// RMS of analytic − numeric over the counted elements.
    pub rms_error: f64,
    /// Whether this tensor passes (see [`GradCheck`] for the rule).
    pub passed: bool,
    /// Elements whose perturbation crossed a kink.
    pub kinks: usize,
    /// The k largest |analytic − numeric|.
    pub worst: Vec<Worst>,
    /// What kind of mistake it looks like, when the evidence is clear.
    pub diagnosis: Option<Diagnosis>,
    /// With the 4-point stencil: the largest |gradapprox₂ − gradapprox₄| over the counted
    /// elements, an estimate of the 2-point truncation error.
    pub error_estimate: Option<f64>,
}

/// Timings of the phases, seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Computing every J±.
    pub evaluate_s: f64,
    /// The whole check.
    pub total_s: f64,
}

/// The full result of a check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// ‖grad − gradapprox‖ / (‖grad‖ + ‖gradapprox‖) over every element (the notebook's number).
    pub difference: f64,
    /// The same over the elements counted in the verdict (equal to `difference` when no kink is excluded).
    pub difference_counted: f64,
    /// The verdict.
    pub passed: bool,
    /// Threshold on the difference.
    pub threshold: f64,
    /// ε of the central differences.
    pub epsilon: f64,
    /// Per-element rounding-noise floor used by the per-tensor rule.
    pub noise_floor: f64,
    /// Which evaluator ran.
    pub backend: String,
    /// Its precision.
    pub precision: String,
    /// N.
    pub n_params: usize,
    /// m.
    pub m: usize,
    /// J(θ).
    pub cost: f64,
    /// Elements whose ±ε step crossed a kink.
    pub kinks: usize,
    /// Whether kinked elements were left out of the verdict.
    pub kinks_excluded: bool,
    /// One entry per tensor, in flat order.
    pub tensors: Vec<TensorReport>,
    /// Facts the user should know (model inferred, backend fallback, …).
    pub notes: Vec<String>,
    /// Wall-clock time.
    pub timings: Timings,
    /// Which check decided: "full", "fast", or "full (after the fast check failed)".
    pub mode: String,
    /// Central-difference stencil: 2 points (O(ε²)) or 4 points (O(ε⁴)).
    pub stencil: u8,
    /// The fast check, when one ran.
    pub fast: Option<FastCheck>,
    /// Every central difference, flat (omitted from JSON: it can be millions of values).
    #[serde(skip)]
    pub gradapprox: Vec<f64>,
    /// Every J(θ + ε·e_i) (omitted from JSON).
    #[serde(skip)]
    pub plus: Vec<f64>,
    /// Every J(θ − ε·e_i) (omitted from JSON).
    #[serde(skip)]
    pub minus: Vec<f64>,
}

/// Configures and runs a gradient check.
///
/// Verdict: the check passes when the global difference (over the counted elements) is at
/// most the threshold (or its RMS error is under the noise floor) **and** every tensor passes. A tensor passes when its own difference
/// is at most the threshold, or when its RMS error is below the rounding-noise floor
/// ([`noise_floor`]): a tiny tensor such as b3 has a noisy relative difference even with
/// correct gradients (the notebook's b1 shows 3.3e-7), while an error that large in
/// absolute terms cannot be told from rounding by any finite difference at this ε.
#[derive(Debug, Clone)]
pub struct GradCheck {
    /// ε; `None` = the precision's default.
    pub epsilon: Option<f64>,
    /// Threshold; `None` = the precision's default.
    pub threshold: Option<f64>,
    /// Evaluator.
    pub backend: Backend,
    /// GPU precision.
    pub precision: Precision,
    /// Kink policy.
    pub kinks: KinkPolicy,
    /// How many worst elements to list per tensor.
    pub top_k: usize,
    /// CPU threading.
    pub threads: Threads,
    /// Substring of the GPU adapter's name to pick.
    pub adapter: Option<String>,
    /// 2 (the notebook's central difference) or 4 (Richardson: (4·g(ε) − g(2ε))/3,
    /// i.e. (8(J₁⁺ − J₁⁻) − (J₂⁺ − J₂⁻))/12ε, error O(ε⁴); costs a second evaluation at 2ε).
    pub stencil: u8,
    /// Evaluate only these parameters (a shard, see [`crate::shard`]); the others' J±
    /// are NaN.
    pub range: Option<std::ops::Range<usize>>,
}

impl Default for GradCheck {
    fn default() -> Self {
        GradCheck {
            epsilon: None,
            threshold: None,
            backend: Backend::Auto,
            precision: Precision::Auto,
            kinks: KinkPolicy::Exclude,
            top_k: 3,
            threads: Threads::Parallel,
            adapter: None,
            stencil: 2,
            range: None,
        }
    }
}

impl GradCheck {
    /// Defaults: the notebook's ε and threshold, auto backend and precision, kinks excluded.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets ε.
    pub fn epsilon(mut self, e: f64) -> Self {
        self.epsilon = Some(e);
        self
    }
    /// Sets the threshold.
    pub fn threshold(mut self, t: f64) -> Self {
        self.threshold = Some(t);
        self
    }
    /// Sets the backend.
    pub fn backend(mut self, b: Backend) -> Self {
        self.backend = b;
        self
    }
    /// Sets the precision.
    pub fn precision(mut self, p: Precision) -> Self {
        self.precision = p;
        self
    }
    /// Sets the kink policy.
    pub fn kinks(mut self, k: KinkPolicy) -> Self {
        self.kinks = k;
        self
    }

    /// Computes every J± with the configured backend.
    pub fn evaluate(
        &self,
        model: &Model,
        params: &Params,
        data: &Data,
        epsilon: f64,
    ) -> Result<Evaluation> {
        validate_epsilon(epsilon)?;
        let n = model.n_params();
        let range = self.range.clone().unwrap_or(0..n);
        let cpu_eval = |notes: Vec<String>| -> Result<Evaluation> {
            let p =
                cpu::perturbed_costs(model, params, data, epsilon, range.clone(), self.threads)?;
            // Full-length vectors: NaN (and no kink) outside the range.
            let mut plus = vec![f64::NAN; n];
            let mut minus = vec![f64::NAN; n];
            let mut kinks = vec![false; n];
            plus[range.clone()].copy_from_slice(&p.plus);
            minus[range.clone()].copy_from_slice(&p.minus);
            kinks[range.clone()].copy_from_slice(&p.kinks);
            Ok(Evaluation {
                cost: p.cost,
                plus,
                minus,
                deltas: false,
                cost_scale: cost_scale(model, params, data),
                kinks,
                backend: "cpu".into(),
                precision: "f64".into(),
                unit_roundoff: f64::EPSILON / 2.0,
                steps: None,
                notes,
            })
        };
        let opts = crate::gpu::EvalOptions {
            max_chunk: None,
            range: self.range.clone(),
        };
        let gpu_eval = || {
            crate::gpu::GpuContext::shared(self.adapter.as_deref())?.evaluate(
                model,
                params,
                data,
                epsilon,
                self.precision,
                opts.clone(),
            )
        };
        match self.backend {
            Backend::Cpu => cpu_eval(Vec::new()),
            Backend::Gpu => gpu_eval(),
            Backend::Auto => match gpu_eval() {
                Ok(e) => Ok(e),
                Err(Error::Gpu(why)) => cpu_eval(vec![format!(
                    "GPU unavailable ({why}); fell back to the CPU f64 evaluator"
                )]),
                Err(e) => Err(e),
            },
        }
    }

    /// The precision the J± will be computed in ("f64", "f32" or "f32-plain"), so that
    /// the matching default ε and threshold can be chosen before evaluating: f64 on the
    /// CPU and on adapters with SHADER_F64, f32 when asked for or when the GPU has no f64.
    pub fn resolved_precision(&self) -> &'static str {
        match (self.backend, self.precision) {
            (Backend::Cpu, _) | (_, Precision::F64) => "f64",
            (_, p @ (Precision::F32 | Precision::F32Plain)) => p.label(),
            (_, Precision::Auto) => match crate::gpu::GpuContext::shared(self.adapter.as_deref()) {
                Ok(c) if !c.has_f64() => "f32",
                _ => "f64",
            },
        }
    }

    /// The ε and threshold this check uses for a precision label.
    pub fn defaults_for(&self, precision: &str) -> (f64, f64) {
        let (e, t) = match precision {
            "f32" => (F32_EPSILON, F32_THRESHOLD),
            "f32-plain" => (F32_PLAIN_EPSILON, F32_PLAIN_THRESHOLD),
            _ => (DEFAULT_EPSILON, DEFAULT_THRESHOLD),
        };
        (self.epsilon.unwrap_or(e), self.threshold.unwrap_or(t))
    }

    /// Runs the check of `grads` against central differences of the model's cost.
    pub fn run(
        &self,
        model: &Model,
        params: &Params,
        data: &Data,
        grads: &Grads,
    ) -> Result<Report> {
        let t0 = Instant::now();
        if grads.layout() != model.layout() {
            return Err(Error::Shape(
                "gradients are not laid out like the parameters".into(),
            ));
        }
        let precision_hint = self.resolved_precision();
        let (epsilon, threshold) = self.defaults_for(precision_hint);
        validate_threshold(threshold)?;
        if !matches!(self.stencil, 2 | 4) {
            return Err(Error::Config(format!(
                "stencil {}: only 2 and 4 are supported",
                self.stencil
            )));
        }
        let eval = self.evaluate(model, params, data, epsilon)?;
        let (layout, grad, m) = (model.layout(), grads.as_slice(), data.m());
        let mut report = match self.stencil {
            2 => self.build_report(layout, grad, &eval, epsilon, threshold, m),
            4 => {
                let wide = self.evaluate(model, params, data, 2.0 * epsilon)?;
                let (g1, g2) = (eval.gradapprox(epsilon), wide.gradapprox(2.0 * epsilon));
                let g4: Vec<f64> = g1
                    .iter()
                    .zip(&g2)
                    .map(|(a, b)| (4.0 * a - b) / 3.0)
                    .collect();
                let err: Vec<f64> = g1.iter().zip(&g4).map(|(a, b)| (a - b).abs()).collect();
                let mut both = eval.clone();
                for (k, w) in both.kinks.iter_mut().zip(&wide.kinks) {
                    *k |= *w;
                }
                self.build_report_with(layout, grad, &both, g4, Some(&err), epsilon, threshold, m)
            }
            _ => unreachable!("validated above"),
        };
        diagnose::dropout_slips(model, params, data, grad, &mut report.tensors);
        let evaluate_s = t0.elapsed().as_secs_f64();
        report.timings = Timings {
            evaluate_s,
            total_s: t0.elapsed().as_secs_f64(),
        };
        Ok(report)
    }

    /// Builds the report from an evaluation: differences, verdicts, worst elements, diagnoses.
    pub fn build_report(
        &self,
        layout: &ParamLayout,
        grad: &[f64],
        eval: &Evaluation,
        epsilon: f64,
        threshold: f64,
        m: usize,
    ) -> Report {
        self.build_report_with(
            layout,
            grad,
            eval,
            eval.gradapprox(epsilon),
            None,
            epsilon,
            threshold,
            m,
        )
    }

    /// [`GradCheck::build_report`] with the central differences given (`approx`), and
    /// optionally a per-element error estimate of them (the 4-point stencil's).
    #[allow(clippy::too_many_arguments)]
    pub fn build_report_with(
        &self,
        layout: &ParamLayout,
        grad: &[f64],
        eval: &Evaluation,
        approx: Vec<f64>,
        error_estimate: Option<&[f64]>,
        epsilon: f64,
        threshold: f64,
        m: usize,
    ) -> Report {
        let counted = |i: usize| self.kinks == KinkPolicy::Include || !eval.kinks[i];
        let floor = noise_floor(eval.unit_roundoff, eval.cost_scale, epsilon);
        let mut tensors = Vec::new();
        for slot in layout.tensors() {
            let range = slot.range();
            let idx: Vec<usize> = range.clone().filter(|&i| counted(i)).collect();
            let (diff, rms) = diff_and_rms(grad, &approx, &idx);
            let mut worst: Vec<Worst> = range
                .clone()
                .map(|i| Worst {
                    index: i,
                    element: layout.element_name(i),
                    analytic: grad[i],
                    numeric: approx[i],
                    abs_error: (grad[i] - approx[i]).abs(),
                    kink: eval.kinks[i],
                })
                .collect();
            worst.sort_by(|x, y| {
                y.abs_error
                    .total_cmp(&x.abs_error)
                    .then(x.index.cmp(&y.index))
            });
            worst.truncate(self.top_k);
            let passed = !rms.is_nan() && (diff <= threshold || rms <= floor);
            let diagnosis = if passed {
                None
            } else {
                diagnose::diagnose_tensor(slot, &grad[range.clone()], &approx[range.clone()], m)
            };
            let error_estimate =
                error_estimate.map(|e| idx.iter().map(|&i| e[i]).fold(0.0, f64::max));
            tensors.push(TensorReport {
                error_estimate,
                name: slot.name.clone(),
                shape: [slot.rows, slot.cols],
                difference: diff,
                rms_error: rms,
                passed,
                kinks: range.clone().filter(|&i| eval.kinks[i]).count(),
                worst,
                diagnosis,
            });
        }
        diagnose::find_swaps(layout, grad, &approx, &mut tensors);
        let all = difference(grad, &approx);
        let idx: Vec<usize> = (0..grad.len()).filter(|&i| counted(i)).collect();
        let (counted_diff, rms_all) = diff_and_rms(grad, &approx, &idx);
        let kinks = eval.kinks.iter().filter(|&&k| k).count();
        // The same noise-aware rule as per tensor, and then every tensor must pass.
        let passed = !rms_all.is_nan()
            && (counted_diff <= threshold || rms_all <= floor)
            && tensors.iter().all(|t| t.passed);
        Report {
            difference: all,
            difference_counted: counted_diff,
            passed,
            threshold,
            epsilon,
            noise_floor: floor,
            backend: eval.backend.clone(),
            precision: eval.precision.clone(),
            n_params: grad.len(),
            m,
            cost: eval.cost,
            kinks,
            kinks_excluded: self.kinks == KinkPolicy::Exclude && kinks > 0,
            tensors,
            notes: eval.notes.clone(),
            timings: Timings::default(),
            mode: "full".into(),
            stencil: if error_estimate.is_some() { 4 } else { 2 },
            fast: None,
            gradapprox: approx,
            plus: eval.plus.clone(),
            minus: eval.minus.clone(),
        }
    }
}

/// The magnitude whose rounding is the noise in J± ([`cpu::noise_scale`]).
pub fn cost_scale(model: &Model, params: &Params, data: &Data) -> f64 {
    cpu::noise_scale(model, &cpu::forward(model, params, data), data)
}

/// The difference and the RMS of analytic − numeric over the elements `idx`.
fn diff_and_rms(grad: &[f64], approx: &[f64], idx: &[usize]) -> (f64, f64) {
    let (a, n): (Vec<f64>, Vec<f64>) = idx.iter().map(|&i| (grad[i], approx[i])).unzip();
    let sq: f64 = a.iter().zip(&n).map(|(x, y)| (x - y) * (x - y)).sum();
    let rms = if idx.is_empty() {
        0.0
    } else {
        (sq / idx.len() as f64).sqrt()
    };
    (difference(&a, &n), rms)
}

/// ε must be a finite number > 0.
pub fn validate_epsilon(e: f64) -> Result<()> {
    if e.is_finite() && e > 0.0 {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "epsilon = {e} must be a finite number > 0"
        )))
    }
}

/// The threshold must be a finite number > 0.
pub fn validate_threshold(t: f64) -> Result<()> {
    if t.is_finite() && t > 0.0 {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "threshold = {t} must be a finite number > 0"
        )))
    }
}

/// Central differences of any function on the CPU: `f` is J and `theta` the point. One
/// copy of θ is perturbed in place and restored after each element (fl(θ_i ± ε), as the
/// notebook). The result feeds [`GradCheck::build_report`] with a layout such as
/// [`ParamLayout::single`].
pub fn check_fn<F: FnMut(&[f64]) -> f64>(
    mut f: F,
    theta: &[f64],
    epsilon: f64,
) -> Result<Evaluation> {
    validate_epsilon(epsilon)?;
    let mut t = theta.to_vec();
    let cost = f(&t);
    let (mut plus, mut minus) = (Vec::with_capacity(t.len()), Vec::with_capacity(t.len()));
    for i in 0..t.len() {
        let orig = t[i];
        t[i] = orig + epsilon;
        plus.push(f(&t));
        t[i] = orig - epsilon;
        minus.push(f(&t));
        t[i] = orig;
    }
    Ok(Evaluation {
        cost,
        cost_scale: cost.abs(),
        kinks: vec![false; t.len()],
        plus,
        minus,
        deltas: false,
        backend: "cpu".into(),
        precision: "f64".into(),
        unit_roundoff: f64::EPSILON / 2.0,
        steps: None,
        notes: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notebook_one_dimensional_check() {
        // J(θ) = θ·x at x = 2, θ = 4: dJ/dθ = x.
        let x = 2.0;
        let eval = check_fn(|t| t[0] * x, &[4.0], 1e-7).unwrap();
        let approx = eval.gradapprox(1e-7);
        assert!((approx[0] - 2.0).abs() < 1e-8);
        let d = difference(&[x], &approx);
        // The notebook's own number, to 1e-12 relative.
        let want = 2.919335883291695e-10;
        assert!((d - want).abs() <= 1e-12 * want, "{d}");
    }

    #[test]
    fn difference_is_symmetric_and_zero_safe() {
        assert_eq!(difference(&[0.0, 0.0], &[0.0, 0.0]), 0.0);
        assert_eq!(difference(&[1.0], &[-1.0]), 1.0);
        let d = difference(&[1.0, 2.0], &[1.0, 2.2]);
        assert!((d - 0.2 / (5f64.sqrt() + (1.0 + 4.84f64).sqrt())).abs() < 1e-15);
    }

    #[test]
    fn bad_epsilon_is_an_error() {
        for e in [0.0, -1e-7, f64::NAN, f64::INFINITY] {
            assert!(check_fn(|t| t[0], &[1.0], e).is_err());
        }
    }
}

/// One random direction of the fast mode.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Direction {
    /// g·u, the analytic directional derivative.
    pub analytic: f64,
    /// (J(θ + εu) − J(θ − εu)) / 2ε.
    pub numeric: f64,
}

/// The fast mode's result: K random directions instead of N coordinates.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FastCheck {
    /// Directions drawn.
    pub directions: Vec<Direction>,
    /// Seed of the directions (reported so a run can be repeated).
    pub seed: u64,
    /// The notebook's difference over the K directional derivatives.
    pub difference: f64,
    /// Whether it is under the threshold.
    pub passed: bool,
}

/// Fast mode: compares g·u with the central difference of J along K random directions u
/// with ±1 entries (so each coordinate moves by ε, as in the full check): 2K forward
/// passes on the CPU in f64 instead of 2N. It catches a wrong gradient cheaply but cannot
/// say where, and a few wrong entries among many right ones can be diluted below the
/// threshold: a failure should be followed by the full check.
pub fn fast_check(
    p: &crate::io::Problem,
    k: usize,
    seed: u64,
    epsilon: f64,
    threshold: f64,
) -> Result<FastCheck> {
    validate_epsilon(epsilon)?;
    if k == 0 {
        return Err(Error::Config("--fast needs at least one direction".into()));
    }
    let (model, params, data, grads) = (&p.model, &p.params, &p.data, &p.grads);
    let mut rng = crate::examples::Rng(seed);
    let n = model.n_params();
    let mut directions = Vec::with_capacity(k);
    let mut shifted = params.clone();
    for _ in 0..k {
        let u: Vec<f64> = (0..n)
            .map(|_| if rng.next_f64() < 0.5 { -1.0 } else { 1.0 })
            .collect();
        let analytic = grads.as_slice().iter().zip(&u).map(|(g, u)| g * u).sum();
        let mut cost_at = |sign: f64| {
            for ((s, t), u) in shifted
                .as_mut_slice()
                .iter_mut()
                .zip(params.as_slice())
                .zip(&u)
            {
                *s = t + sign * epsilon * u;
            }
            cpu::cost(model, &shifted, data)
        };
        let numeric = (cost_at(1.0) - cost_at(-1.0)) / (2.0 * epsilon);
        directions.push(Direction { analytic, numeric });
    }
    let (a, b): (Vec<f64>, Vec<f64>) = directions.iter().map(|d| (d.analytic, d.numeric)).unzip();
    let difference = difference(&a, &b);
    Ok(FastCheck {
        directions,
        seed,
        difference,
        passed: difference <= threshold,
    })
}
