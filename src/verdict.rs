//! The verdict: central differences against the analytic gradient, the notebook's
//! difference globally and per tensor, the worst elements, and pass or fail.
//!
//! May use: `eval` (the [`Evaluation`] it judges), `model`, `metric`. Knows nothing of
//! backends, diagnoses or front ends.

use serde::Serialize;

use crate::eval::Evaluation;
use crate::metric::{diff_and_rms, difference};
use crate::model::ParamLayout;

/// Whether perturbations that cross a ReLU kink count in the verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
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

/// The rounding-noise floor of one central difference: J± each carry an absolute error
/// of roughly u·scale (scale includes the cost's conditioning, see [`crate::eval::cpu::noise_scale`]),
/// so their difference over 2ε carries about u·scale/ε; [`NOISE_FACTOR`] covers the error
/// growth through the forward pass.
pub fn noise_floor(unit_roundoff: f64, cost_scale: f64, epsilon: f64) -> f64 {
    NOISE_FACTOR * unit_roundoff * cost_scale.max(f64::MIN_POSITIVE) / epsilon
}

/// The kinds of mistake recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MistakeKind {
    /// analytic = c · numeric for a constant c ≠ 1.
    Scaled,
    /// analytic = −numeric.
    SignFlipped,
    /// analytic = c · numeric with c = m: the 1/m averaging is missing.
    MissingAveraging,
    /// analytic = c · numeric with c = 1/m: the 1/m averaging is applied twice.
    DoubledAveraging,
    /// analytic = numericᵀ (square weight matrices).
    Transposed,
    /// analytic is all zeros while the numeric gradient is not.
    AllZero,
    /// analytic holds this tensor's neighbour's gradient and vice versa.
    Swapped,
    /// analytic has NaN or infinite entries.
    NotFinite,
    /// The dropout mask is not applied in the backward pass (1/keep_prob is).
    DropoutMaskMissing,
    /// The 1/keep_prob scaling is not applied in the backward pass (the mask is).
    DropoutScaleMissing,
    /// Dropout is ignored in the backward pass (neither mask nor scaling).
    DropoutIgnored,
    /// No pattern; wrong in some elements.
    Elementwise,
}

/// The diagnosis of one tensor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnosis {
    /// The pattern.
    pub kind: MistakeKind,
    /// The fitted factor for scaled gradients.
    pub factor: Option<f64>,
    /// One sentence for the user.
    pub message: String,
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
    /// Whether this tensor passes (see [`Rules::build_report`] for the rule).
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

/// How evaluations are judged: the kink policy and how many worst elements to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Kink policy.
    pub kinks: KinkPolicy,
    /// How many worst elements to list per tensor.
    pub top_k: usize,
}

impl Rules {
    /// Builds the report from an evaluation: differences, verdicts, worst elements (the
    /// diagnoses are `diagnose`'s to add).
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

    /// [`Rules::build_report`] with the central differences given (`approx`), and
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
                diagnosis: None,
            });
        }
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

/// The threshold must be a finite number > 0.
pub fn validate_threshold(t: f64) -> crate::error::Result<()> {
    if t.is_finite() && t > 0.0 {
        Ok(())
    } else {
        Err(crate::error::Error::Config(format!(
            "threshold = {t} must be a finite number > 0"
        )))
    }
}
