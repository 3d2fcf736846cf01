//! The verdict: every numeric gradient element carries a bound on its own error, and the
//! user's gradient is judged against it — pass, fail or inconclusive, per element, per
//! tensor and overall. The notebook's difference is computed too, as its number.
//!
//! The error model, per element i (ε_i = half the step really taken):
//!
//! * **rounding** of what was subtracted: on the Δ paths each ΔJ± is accurate to a few
//!   units u of Σ_j|Δloss_j|/m (the evaluator reports that magnitude per element and
//!   side); on the plain paths J± each carry u times the cost's conditioned scale
//!   ([`crate::eval::cpu::noise_scale`]). Both times [`growth`] (error growth through the
//!   dot products of the net), divided by the step;
//! * **truncation**, estimated from the same differences at 2ε (Richardson:
//!   g(2ε) − g(ε) = 3·c·ε² for the central difference, c·ε for a one-sided one), counted
//!   twice, plus the rounding of that estimate;
//! * the **analytic side's own rounding**: the user's backprop summed the same per-sample
//!   terms, in its own precision (f32 gradients get u32 here);
//! * plain f64: the gap between the step taken, fl(θ + ε) − fl(θ − ε), and the 2ε divided by.
//!
//! Kinks: a step that crosses a ReLU kink makes the central difference meaningless; the
//! one-sided difference on the side that does not cross is still a derivative (of the
//! piece θ lies on), and an analytic value equal to either one-sided derivative is a valid
//! subgradient (relu'(0) = 0 or 1). Both sides crossing: unresolved at this ε.
//!
//! An element is **consistent** when |analytic − numeric| ≤ bound, **wrong** when it
//! exceeds [`FAIL_MARGIN`] bounds (a proof), **suspicious** in between. A tensor FAILS when
//! an element is wrong; PASSES when every resolved element is consistent and the bounds
//! resolve a relative error of [`RESOLUTION`] of the tensor (so that a 1 % error would
//! have shown); is INCONCLUSIVE otherwise, with the reason.
//!
//! May use: `eval` (the [`Evaluation`] it judges), `model`, `metric`. Knows nothing of
//! backends, diagnoses or front ends.

use serde::Serialize;

use crate::eval::cpu::TermSizes;
use crate::eval::{Evaluation, KINK_MINUS, KINK_PLUS};
use crate::metric::difference;
use crate::model::{ParamLayout, TensorKind};

/// How steps that cross a ReLU kink are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum KinkPolicy {
    /// Never trust a central difference across a kink: check the element by the
    /// one-sided difference on the side that does not cross (unresolved if both do).
    Exclude,
    /// Use the central difference anyway (the notebook's behaviour; can fail correct
    /// gradients).
    Include,
}

/// The notebook's ε.
pub const DEFAULT_EPSILON: f64 = 1e-7;
/// The notebook's threshold on the difference. Its rule ("difference > 2e-7: there is a
/// mistake") is reported beside the verdict; the verdict itself comes from the error
/// model, because the difference mixes rounding, truncation and kinks with real errors.
pub const DEFAULT_THRESHOLD: f64 = 2e-7;
/// f32 (Δ path) default ε. Its rounding error is relative to ΔJ itself (≈ u32 per
/// element, whatever ε), so ε only has to make the truncation error (∝ ε²) small and
/// kinks rare: at 1e-4 the seed's truncation part is 2e-10.
pub const F32_EPSILON: f64 = 1e-4;
/// f32 (Δ path) notebook threshold: correct gradients give 3.6e-8 (seed-fixed), 4.8e-8
/// (64-32-16-1), 5.4e-8 (784-64-32-1) on llvmpipe; 1e-6 leaves 20×.
pub const F32_THRESHOLD: f64 = 1e-6;
/// f32-plain default ε: near the optimum cbrt(3·u32) ≈ 7e-3 of truncation (ε²) against
/// rounding (u32·|J|/ε) for unit-scale costs, rounded down to keep kinks rarer.
pub const F32_PLAIN_EPSILON: f64 = 1e-3;
/// f32-plain notebook threshold: at ε = 1e-3 correct gradients on the seed net give ≈ 4e-3.
pub const F32_PLAIN_THRESHOLD: f64 = 1e-2;

/// Safety factor on the rounding estimates, per unit of [`growth`]. Measured: the worst
/// element error of correct gradients is ≤ 0.6 u·scale/ε (plain, seed net) and ≤ 10
/// u·Σ|Δloss|/ε (f32 Δ path, 4-layer nets), against 2·growth = 18 (seed) … 135 (784-512-256-1).
pub const ROUNDING_FACTOR: f64 = 2.0;

/// An element is wrong — a proof of a bug — when its discrepancy exceeds this many times
/// its bound (which already carries the safety factors above).
pub const FAIL_MARGIN: f64 = 2.0;

/// A tensor passes only when ‖bounds‖ ≤ RESOLUTION · ‖gradient‖: then a wrong gradient
/// off by 1 % of the tensor (‖analytic − true‖ ≥ 0.01‖true‖) shows as some element beyond
/// [`FAIL_MARGIN`] bounds: 0.01 = (FAIL_MARGIN + 2) · RESOLUTION leaves one bound for the
/// numeric gradient's own error.
pub const RESOLUTION: f64 = 0.01 / (FAIL_MARGIN + 2.0);

/// A tensor's differences are trusted to prove a bug only while their visible truncation
/// (Richardson's estimate) is at most this fraction of the tensor's gradient: beyond it ε is
/// large enough for higher-order terms to cancel the estimate itself (measured: at ε = 0.1
/// on a tanh/softmax net, 3 of 2048 correct elements exceeded twice their estimate, with
/// the tensor's estimate at 2e-3 of its gradient). Such a tensor is re-checked at a smaller ε.
pub const ASYMPTOTIC: f64 = 1e-4;

/// Error growth through the net's dot products: depth + Σ √fan-in over the weight
/// tensors (rounding errors of n-term dot products grow like √n in practice, and add up
/// layer by layer). 1 + √cols for a single tensor.
pub fn growth(layout: &ParamLayout) -> f64 {
    let weights: Vec<_> = layout
        .tensors()
        .iter()
        .filter(|t| t.kind == TensorKind::Weight)
        .collect();
    weights.len().max(1) as f64
        + weights
            .iter()
            .map(|t| (t.fan_in as f64).sqrt())
            .sum::<f64>()
            .max(1.0)
}

/// The three answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every resolved element consistent, and the bounds resolve 1 % of every tensor.
    Pass,
    /// Some element is off by more than [`FAIL_MARGIN`] times its bound: a bug.
    Fail,
    /// Neither could be shown; the report says why.
    Inconclusive,
}

impl Verdict {
    /// "pass", "FAIL", "inconclusive" (as the table prints it).
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "FAIL",
            Verdict::Inconclusive => "inconclusive",
        }
    }

    /// The process exit code: 0 pass, 1 fail, 3 inconclusive (2 is bad input).
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Pass => 0,
            Verdict::Fail => 1,
            Verdict::Inconclusive => 3,
        }
    }
}

/// Which difference judged an element.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// (J⁺ − J⁻)/2ε.
    Central,
    /// Richardson's (4·g(ε) − g(2ε))/3 (`--stencil 4`).
    Richardson,
    /// (J⁺ − J)/ε: the −ε step crossed a kink.
    Forward,
    /// (J − J⁻)/ε: the +ε step crossed a kink.
    Backward,
    /// None could be taken.
    None,
}

/// How one element came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// |analytic − numeric| ≤ bound.
    Consistent,
    /// Between 1 and [`FAIL_MARGIN`] bounds off.
    Suspicious,
    /// More than [`FAIL_MARGIN`] bounds off (or not finite).
    Wrong,
    /// Both ±ε steps cross kinks.
    KinkBothSides,
    /// A kink within 2ε on the side used, so its truncation cannot be estimated.
    KinkWithinTwoEpsilon,
    /// J± not finite (the notebook's arithmetic at a saturated output).
    NotFinite,
    /// ε is below the resolution of θ_i: the step moved nothing.
    StepUnderflow,
}

impl Status {
    fn resolved(self) -> bool {
        matches!(
            self,
            Status::Consistent | Status::Suspicious | Status::Wrong
        )
    }
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
    /// The gradients are another cost's (MSE's where cross-entropy was asked, …).
    OtherCost,
    /// analytic − numeric = c·W: the L2 term's gradient in the wrong strength (the factor
    /// is the λ the backprop used).
    L2Mismatch,
    /// One of a layer type's classic backprop slips (a flipped kernel, db not summed over
    /// positions, the pooling gradient routed wrong, …): the message names the layer.
    LayerSlip,
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
    /// The numeric gradient it was judged against (see `method`).
    pub numeric: f64,
    /// |analytic − numeric|.
    pub abs_error: f64,
    /// The bound on the numeric gradient's error.
    pub bound: f64,
    /// Which difference was used.
    pub method: Method,
    /// How it came out.
    pub status: Status,
    /// Whether a ±ε step crossed a kink.
    pub kink: bool,
}

/// The check of one tensor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorReport {
    /// "W1", "b1", …
    pub name: String,
    /// [rows, cols] (a bias: [n, 1]); a layered network's tensor: its shape as the user's
    /// arrays have it.
    pub shape: Vec<usize>,
    /// The notebook's difference over this tensor's elements (central differences).
    pub difference: f64,
    /// RMS of analytic − numeric over the resolved elements.
    pub rms_error: f64,
    /// The verdict.
    pub verdict: Verdict,
    /// verdict == Pass.
    pub passed: bool,
    /// ‖bounds‖ / ‖gradient‖ over the resolved elements: the relative error this check can
    /// see in this tensor (PASS needs ≤ [`RESOLUTION`]).
    pub resolution: f64,
    /// The largest |analytic − numeric| / bound (> [`FAIL_MARGIN`]: wrong).
    pub max_excess: f64,
    /// Elements whose ±ε step crossed a kink.
    pub kinks: usize,
    /// Of those, checked by a one-sided difference.
    pub one_sided: usize,
    /// Elements no difference could judge at this ε.
    pub unresolved: usize,
    /// Elements off by more than [`FAIL_MARGIN`] bounds.
    pub wrong: usize,
    /// Elements between 1 and [`FAIL_MARGIN`] bounds off.
    pub suspicious: usize,
    /// Nonzero elements judged consistent whose own bound exceeds [`RESOLUTION`] of their
    /// value: a 1 % error of such an element alone would not have shown; it was checked
    /// only as part of the tensor (the tensor's resolution covers it).
    pub coarse: usize,
    /// The k elements furthest from their numeric gradient, in bounds.
    pub worst: Vec<Worst>,
    /// Why the verdict is not pass (reason and remedy).
    pub reason: Option<String>,
    /// What kind of mistake it looks like, when the evidence is clear.
    pub diagnosis: Option<Diagnosis>,
    /// The largest estimated truncation error of the resolved elements' differences
    /// (from the 2ε evaluation), when there was one.
    pub error_estimate: Option<f64>,
}

/// Timings of the phases, seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Reading and validating the inputs (front ends fill it in).
    pub load_s: f64,
    /// Computing every J± (at ε and 2ε, re-checks included).
    pub evaluate_s: f64,
    /// Judging and diagnosing them.
    pub judge_s: f64,
    /// The whole check (load excluded).
    pub total_s: f64,
    /// Device time per GPU kernel over every evaluation of the check, when asked for
    /// (`--timings`) and the adapter has timestamp queries; empty otherwise.
    pub kernels: Vec<crate::eval::KernelTime>,
}

/// The version of the report's JSON layout (2: verdicts and error bounds; 1 had `passed`
/// from the notebook's threshold and one noise floor).
pub const SCHEMA_VERSION: u32 = 2;

/// The full result of a check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The gradcheck version that wrote it.
    pub gradcheck_version: String,
    /// ‖grad − gradapprox‖ / (‖grad‖ + ‖gradapprox‖) over every element, central
    /// differences (the notebook's number).
    pub difference: f64,
    /// The same over the resolved elements, against the differences that judged them.
    pub difference_counted: f64,
    /// The verdict: the worst of the tensors' (any FAIL fails; all PASS passes).
    pub verdict: Verdict,
    /// verdict == Pass.
    pub passed: bool,
    /// The notebook's threshold on the difference.
    pub threshold: f64,
    /// The notebook's own rule, difference ≤ threshold (reported, not the verdict).
    pub notebook_rule_passed: bool,
    /// ε of the central differences.
    pub epsilon: f64,
    /// Which evaluator ran: "cpu" or "gpu" (or "cpu (fast mode)").
    pub backend: String,
    /// The GPU adapter, when the GPU ran.
    pub adapter: Option<String>,
    /// Its precision and arithmetic.
    pub precision: crate::eval::Precision,
    /// Whether the analytic gradients are the built-in backprop's (no user gradients given).
    pub builtin_gradients: bool,
    /// N.
    pub n_params: usize,
    /// m.
    pub m: usize,
    /// J(θ).
    pub cost: f64,
    /// Elements whose ±ε step crossed a kink.
    pub kinks: usize,
    /// Whether kinked elements were judged by one-sided differences (policy `exclude`).
    pub kinks_excluded: bool,
    /// Elements no difference could judge at this ε.
    pub unresolved: usize,
    /// One entry per tensor, in flat order.
    pub tensors: Vec<TensorReport>,
    /// Why the verdict is what it is, when it is not a pass.
    pub reasons: Vec<String>,
    /// An ε that would cure an inconclusive verdict (truncation, kinks, plain rounding).
    pub suggested_epsilon: Option<f64>,
    /// Facts the user should know (model inferred, backend fallback, …).
    pub notes: Vec<String>,
    /// The model the gradients were judged against when it was guessed from the weight
    /// shapes (no spec given), e.g. "relu hidden layers, sigmoid output, binary
    /// cross-entropy"; `None` when the user gave the model.
    pub model_guessed: Option<String>,
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
    /// Every J(θ + ε·e_i) (ΔJ on the Δ paths; omitted from JSON).
    #[serde(skip)]
    pub plus: Vec<f64>,
    /// Every J(θ − ε·e_i) (ΔJ on the Δ paths; omitted from JSON).
    #[serde(skip)]
    pub minus: Vec<f64>,
    /// Per element, whether it was judged wrong (beyond [`FAIL_MARGIN`] bounds: what the
    /// diagnoses' "wrong in k of n" counts; omitted from JSON).
    #[serde(skip)]
    pub wrong_elements: Vec<bool>,
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

/// How evaluations are judged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    /// Kink policy.
    pub kinks: KinkPolicy,
    /// How many worst elements to list per tensor.
    pub top_k: usize,
    /// Unit roundoff of the analytic gradients (2⁻⁵³ for f64 files, 2⁻²⁴ for f32 ones):
    /// the user's backprop rounded its sums in that precision.
    pub gradient_roundoff: f64,
    /// 2 (judge the central difference) or 4 (judge Richardson's (4·g(ε) − g(2ε))/3).
    pub stencil: u8,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            kinks: KinkPolicy::Exclude,
            top_k: 3,
            gradient_roundoff: f64::EPSILON / 2.0,
            stencil: 2,
        }
    }
}

/// What a verdict is computed from.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    /// The parameter layout (tensor names and shapes).
    pub layout: &'a ParamLayout,
    /// The analytic gradient, flat.
    pub grad: &'a [f64],
    /// The evaluation at ε.
    pub eval: &'a Evaluation,
    /// The same at 2ε, for the truncation estimate. Without it truncation is unknown:
    /// nothing can be proven wrong or right, only consistent at this ε.
    pub wide: Option<&'a Evaluation>,
    /// ε.
    pub epsilon: f64,
    /// The notebook's threshold (its rule is reported beside the verdict).
    pub threshold: f64,
    /// m (for the report).
    pub m: usize,
    /// Rounding-error growth of the net evaluated ([`growth`] of its layout).
    pub growth: f64,
    /// Per element, the size of the terms each side sums ([`crate::eval::cpu::term_sizes`]):
    /// each element's rounding is then bounded by its own terms. Without it (a closure, the
    /// fast mode's directions) by at least the tensor's RMS term size.
    pub terms: Option<&'a TermSizes>,
}

/// One element judged.
#[derive(Debug, Clone, Copy)]
struct Judged {
    numeric: f64,
    bound: f64,
    /// The part of `bound` that is the width of valid derivatives at a max-pool tie: a
    /// property of the function, not an uncertainty of the measurement, so it does not
    /// count against the tensor's resolution.
    tie: f64,
    /// The rounding and truncation parts of the bound (for the remedy).
    rounding: f64,
    truncation: f64,
    signal: f64,
    method: Method,
    status: Status,
}

impl Judged {
    /// An element that cannot be judged: no bound, no method.
    fn unresolved(status: Status, numeric: f64) -> Judged {
        Judged {
            numeric,
            tie: 0.0,
            bound: f64::INFINITY,
            rounding: f64::INFINITY,
            truncation: f64::INFINITY,
            signal: 0.0,
            method: Method::None,
            status,
        }
    }
}

/// The difference chosen for an element ([`Rules::estimate`]).
struct Chosen {
    /// Its kink flags (0 where kinks are included).
    kinks: u8,
    method: Method,
    /// Whether the difference is central (before Richardson's combination).
    central: bool,
    est: Estimate,
}

/// "gpu (adapter name)" from the evaluator as ("gpu", the adapter); other backends as they
/// are.
fn backend_and_adapter(backend: &str) -> (String, Option<String>) {
    match backend
        .strip_prefix("gpu (")
        .and_then(|a| a.strip_suffix(')'))
    {
        Some(a) => ("gpu".to_string(), Some(a.to_string())),
        None => (backend.to_string(), None),
    }
}

/// An element's status from its bound: consistent within it; on a kink at θ, consistent
/// anywhere between the two one-sided derivatives (a subgradient, the interval's width
/// counted in its bound); wrong only far outside (and where `provable`), suspicious
/// between.
fn decide_element(
    g: f64,
    mut judged: Judged,
    at: &Side<'_>,
    i: usize,
    kinks: u8,
    provable: bool,
) -> Judged {
    let (numeric, bound) = (judged.numeric, judged.bound);
    let d = (g - numeric).abs();
    if d <= bound {
        return judged;
    }
    // θ exactly on a kink (z = 0 for some unit): every value between the two one-sided
    // derivatives is a valid subgradient (relu'(0) ∈ [0, 1]). The crossing side's
    // difference bounds that interval; a g inside it is consistent, with the interval's
    // width counted in its bound (so that such elements cannot make a PASS cheap).
    let mut far = d > FAIL_MARGIN * bound && judged.signal <= 0.1 * d;
    if kinks != 0 {
        let other = at.one_sided(i, kinks == KINK_MINUS);
        if other.value.is_finite() {
            let (lo, hi) = (numeric.min(other.value), numeric.max(other.value));
            let outside = (lo - g).max(g - hi).max(0.0);
            let slack = bound + other.rounding;
            if outside <= slack {
                judged.truncation += (hi - lo) + other.rounding;
                judged.bound = judged.rounding + judged.truncation;
                return judged;
            }
            far &= outside > FAIL_MARGIN * slack;
        } else {
            far = false;
        }
    }
    judged.status = if far && provable {
        Status::Wrong
    } else {
        Status::Suspicious
    };
    judged
}

/// A difference and its error bound's parts.
#[derive(Debug, Clone, Copy)]
struct Estimate {
    value: f64,
    rounding: f64,
    truncation: f64,
    /// The truncation estimate less its own rounding noise (≥ 0): what tells a
    /// truncation-limited ε from a rounding-limited one.
    signal: f64,
}

/// Per-element access to one evaluation: ΔJ± and their error bounds.
struct Side<'a> {
    eval: &'a Evaluation,
    epsilon: f64,
    /// ROUNDING_FACTOR · growth · u.
    ku: f64,
    /// The central differences of this evaluation.
    central: Vec<f64>,
}

impl Side<'_> {
    /// Half the step really taken (ε, or fl32 steps / 2).
    fn half_step(&self, i: usize) -> f64 {
        match &self.eval.steps {
            Some(h) => 0.5 * h[i],
            None => self.epsilon,
        }
    }
    /// Error bounds of ΔJ⁺, ΔJ⁻ and of J(θ) (0 on the Δ paths, which never form J±).
    fn errors(&self, i: usize) -> (f64, f64, f64) {
        match &self.eval.magnitudes {
            Some(m) => (self.ku * m[i][0], self.ku * m[i][1], 0.0),
            None => {
                let e = self.ku * self.eval.cost_scale;
                (e, e, e)
            }
        }
    }
    fn central(&self, i: usize) -> Estimate {
        let (ep, em, _) = self.errors(i);
        Estimate {
            value: self.central[i],
            rounding: (ep + em) / (2.0 * self.half_step(i)),
            truncation: 0.0,
            signal: 0.0,
        }
    }
    /// (J⁺ − J)/ε (`forward`) or (J − J⁻)/ε.
    fn one_sided(&self, i: usize, forward: bool) -> Estimate {
        let (dp, dm) = self.eval.delta(i);
        let (ep, em, e0) = self.errors(i);
        let h = self.half_step(i);
        if forward {
            Estimate {
                value: dp / h,
                rounding: (ep + e0) / h,
                truncation: 0.0,
                signal: 0.0,
            }
        } else {
            Estimate {
                value: -dm / h,
                rounding: (em + e0) / h,
                truncation: 0.0,
                signal: 0.0,
            }
        }
    }
    fn kinks(&self, i: usize) -> u8 {
        self.eval.kinks[i]
    }
    /// Per-sample size of the gradient, Σ_j|∂loss_j/∂θ_i|/m (what the analytic side summed).
    fn term_size(&self, i: usize, g: f64, c: f64) -> f64 {
        match &self.eval.magnitudes {
            Some(m) => 0.5 * (m[i][0] + m[i][1]) / self.half_step(i),
            None => g.abs().max(c.abs()),
        }
    }
}

/// The truncation allowance each element of a tensor shares with its neighbours: half
/// the largest visible truncation (Richardson signal) among the resolved elements of its
/// row or of its column, whichever is smaller. Truncation of W[r, c] scales with its row's
/// curvature times its column's input size (∝ x_c³ for a first layer), so the smaller of
/// the two maxima still covers the element's own — while a column of tiny inputs is not
/// drowned by the tensor's largest column. One-column or one-row tensors (biases) share
/// the tensor's maximum.
fn truncation_floors(
    slot: &crate::model::TensorSlot,
    first: &[Judged],
    max_signal: f64,
) -> Vec<f64> {
    let (rows, cols) = (slot.rows, slot.cols);
    if rows < 2 || cols < 2 {
        return vec![0.5 * max_signal; slot.len()];
    }
    let signal = |r: usize, c: usize| {
        let j = &first[slot.offset + r * cols + c];
        if j.status.resolved() { j.signal } else { 0.0 }
    };
    let row_max: Vec<f64> = (0..rows)
        .map(|r| (0..cols).map(|c| signal(r, c)).fold(0.0, f64::max))
        .collect();
    let col_max: Vec<f64> = (0..cols)
        .map(|c| (0..rows).map(|r| signal(r, c)).fold(0.0, f64::max))
        .collect();
    (0..rows * cols)
        .map(|k| 0.5 * row_max[k / cols].min(col_max[k % cols]))
        .collect()
}

/// Adds the truncation estimate from the 2ε difference of the same kind: Richardson's
/// |g(2ε) − g(ε)|/3 for central differences (error c·ε²), |g(2ε) − g(ε)| for one-sided
/// ones (c·ε), plus that estimate's own rounding, counted twice.
fn with_truncation(at: Estimate, wide: Estimate, central: bool) -> Estimate {
    let (scale, noise) = if central {
        (1.0 / 3.0, (at.rounding + wide.rounding) / 3.0)
    } else {
        (1.0, at.rounding + wide.rounding)
    };
    let seen = (wide.value - at.value).abs() * scale;
    Estimate {
        truncation: 2.0 * (seen + noise),
        signal: (seen - noise).max(0.0),
        ..at
    }
}

impl Rules {
    /// Judges every element, tensor and the whole (see the module doc for the rules).
    pub fn judge(&self, ev: &Evidence<'_>) -> Report {
        let (layout, grad, eval) = (ev.layout, ev.grad, ev.eval);
        let ku = ROUNDING_FACTOR * ev.growth;
        let at = Side {
            eval,
            epsilon: ev.epsilon,
            ku: ku * eval.unit_roundoff,
            central: eval.gradapprox(ev.epsilon),
        };
        let wide = ev.wide.map(|w| Side {
            eval: w,
            epsilon: 2.0 * ev.epsilon,
            ku: ku * w.unit_roundoff,
            central: w.gradapprox(2.0 * ev.epsilon),
        });
        let judged = self.judge_elements(ev, &at, wide.as_ref(), ku * self.gradient_roundoff);
        // The numbers the notebook would print: central (or Richardson) differences.
        let approx: Vec<f64> = match (&wide, self.stencil) {
            (Some(w), 4) => at
                .central
                .iter()
                .zip(&w.central)
                .map(|(c, cw)| (4.0 * c - cw) / 3.0)
                .collect(),
            _ => at.central.clone(),
        };
        let mut tensors = Vec::new();
        let mut suggestions = Vec::new();
        for slot in layout.tensors() {
            let (t, eps) = self.judge_tensor(slot, layout, grad, &approx, &judged, ev);
            tensors.push(t);
            suggestions.extend(eps);
        }
        let (verdict, reasons, suggested_epsilon) = overall(&tensors, &suggestions);
        let (a, n): (Vec<f64>, Vec<f64>) = (0..grad.len())
            .filter(|&i| judged[i].status.resolved())
            .map(|i| (grad[i], judged[i].numeric))
            .unzip();
        let kinks = eval.kinks.iter().filter(|&&k| k != 0).count();
        let difference = difference(grad, &approx);
        let (backend, adapter) = backend_and_adapter(&eval.backend);
        Report {
            schema_version: SCHEMA_VERSION,
            gradcheck_version: env!("CARGO_PKG_VERSION").to_string(),
            difference,
            difference_counted: crate::metric::difference(&a, &n),
            verdict,
            passed: verdict == Verdict::Pass,
            threshold: ev.threshold,
            notebook_rule_passed: difference <= ev.threshold,
            epsilon: ev.epsilon,
            backend,
            adapter,
            precision: eval.precision,
            builtin_gradients: false,
            n_params: grad.len(),
            m: ev.m,
            cost: eval.cost,
            kinks,
            kinks_excluded: self.kinks == KinkPolicy::Exclude && kinks > 0,
            unresolved: judged.iter().filter(|j| !j.status.resolved()).count(),
            tensors,
            reasons,
            suggested_epsilon,
            notes: eval.notes.clone(),
            model_guessed: None,
            timings: Timings::default(),
            mode: "full".into(),
            stencil: if self.stencil == 4 && ev.wide.is_some() {
                4
            } else {
                2
            },
            fast: None,
            gradapprox: approx,
            plus: eval.plus.clone(),
            minus: eval.minus.clone(),
            wrong_elements: judged.iter().map(|j| j.status == Status::Wrong).collect(),
        }
    }

    /// Every element's verdict, in two passes: each element's own truncation estimate
    /// first, then per tensor a shared allowance and whether its ε is in the asymptotic
    /// range ([`shared_floors`]), then the verdicts with them. `kg`: the analytic side's
    /// rounding factor.
    fn judge_elements(
        &self,
        ev: &Evidence<'_>,
        at: &Side<'_>,
        wide: Option<&Side<'_>>,
        kg: f64,
    ) -> Vec<Judged> {
        let grad = ev.grad;
        let sizes = term_sizes_of(ev, at);
        let first: Vec<Judged> = (0..grad.len())
            .map(|i| self.judge_element(i, grad[i], at, wide, kg, sizes[i], 0.0, true))
            .collect();
        let (floor, provable) = shared_floors(ev.layout, &first);
        (0..grad.len())
            .map(|i| self.judge_element(i, grad[i], at, wide, kg, sizes[i], floor[i], provable[i]))
            .collect()
    }

    /// The verdict on element i (see the module doc). `sizes` are the numeric and analytic
    /// sides' term sizes (floors for their rounding, see `judge`); `floor` is a truncation
    /// allowance shared by the element's row or column ([`truncation_floors`]: a
    /// per-element Richardson estimate can cancel by accident); `provable` is false when the tensor's ε is outside
    /// the range where truncation is predictable (then nothing is proven wrong at it).
    #[allow(clippy::too_many_arguments)]
    fn judge_element(
        &self,
        i: usize,
        g: f64,
        at: &Side<'_>,
        wide: Option<&Side<'_>>,
        kg: f64,
        sizes: [f64; 2],
        floor: f64,
        provable: bool,
    ) -> Judged {
        let c = at.central[i];
        if !g.is_finite() {
            return Judged {
                status: Status::Wrong,
                bound: 0.0,
                rounding: 0.0,
                truncation: 0.0,
                method: Method::Central,
                ..Judged::unresolved(Status::Wrong, c)
            };
        }
        let step_error = at.eval.step_errors.as_ref().map_or(0.0, |s| s[i]);
        if at.half_step(i) == 0.0 || step_error >= 0.5 {
            return Judged::unresolved(Status::StepUnderflow, c);
        }
        let chosen = match self.estimate(i, at, wide) {
            Ok(chosen) => chosen,
            Err(status) => return Judged::unresolved(status.0, status.1),
        };
        let numeric = chosen.est.value;
        if !numeric.is_finite() {
            return Judged::unresolved(Status::NotFinite, numeric);
        }
        // Both sides' rounding, at least the tensor's (see `judge`), the nominal-step gap,
        // and underflow of ΔJ.
        let [numeric_terms, analytic_terms] = sizes;
        let rounding = chosen.est.rounding.max(at.ku * numeric_terms)
            + kg * at.term_size(i, g, numeric).max(analytic_terms)
            + numeric.abs() * step_error
            + f64::MIN_POSITIVE / at.half_step(i);
        // An exact max-pool tie at θ: any tied entry may take the gradient, so the valid
        // derivatives fill an interval whose midpoint the central difference is (a
        // one-sided difference is one of its ends).
        let tie = at.eval.tie_widths.as_ref().map_or(0.0, |w| w[i])
            * if chosen.central { 0.5 } else { 1.0 };
        let judged = Judged {
            numeric,
            bound: rounding + chosen.est.truncation + floor + tie,
            tie,
            rounding,
            truncation: chosen.est.truncation + floor + tie,
            signal: chosen.est.signal,
            method: chosen.method,
            status: Status::Consistent,
        };
        decide_element(g, judged, at, i, chosen.kinks, provable)
    }

    /// The difference an element is judged by: central where neither step crossed a kink,
    /// one-sided on the smooth side where one did, with its truncation estimated from
    /// the 2ε evaluation (and Richardson's combination for stencil 4). `Err`: the element
    /// cannot be judged (a kink both ways, or within 2ε), with the value to report.
    fn estimate(
        &self,
        i: usize,
        at: &Side<'_>,
        wide: Option<&Side<'_>>,
    ) -> std::result::Result<Chosen, (Status, f64)> {
        let include = self.kinks == KinkPolicy::Include;
        let kinks = if include { 0 } else { at.kinks(i) };
        let wide_kinks = match wide {
            Some(w) if !include => w.kinks(i),
            _ => 0,
        };
        // The difference judged, with its 2ε counterpart when that side is smooth at 2ε.
        let (method, est, w) = match kinks {
            0 => (
                Method::Central,
                at.central(i),
                wide.filter(|_| wide_kinks == 0).map(|w| w.central(i)),
            ),
            // The +ε step crossed: the backward difference is a derivative of θ's piece.
            KINK_PLUS => (
                Method::Backward,
                at.one_sided(i, false),
                wide.filter(|_| wide_kinks & KINK_MINUS == 0)
                    .map(|w| w.one_sided(i, false)),
            ),
            KINK_MINUS => (
                Method::Forward,
                at.one_sided(i, true),
                wide.filter(|_| wide_kinks & KINK_PLUS == 0)
                    .map(|w| w.one_sided(i, true)),
            ),
            _ => return Err((Status::KinkBothSides, at.central[i])),
        };
        let central = method == Method::Central;
        let Some(w) = w else {
            // A kink within 2ε (or no 2ε evaluation): the truncation is unknown.
            return Err((Status::KinkWithinTwoEpsilon, est.value));
        };
        let mut est = with_truncation(est, w, central);
        let method = if central && self.stencil == 4 {
            est.value = (4.0 * est.value - w.value) / 3.0;
            est.rounding = (4.0 * est.rounding + w.rounding) / 3.0;
            Method::Richardson
        } else {
            method
        };
        Ok(Chosen {
            kinks,
            method,
            central,
            est,
        })
    }

    /// A tensor's verdict, and the ε that would resolve it (if that is its problem).
    fn judge_tensor(
        &self,
        slot: &crate::model::TensorSlot,
        layout: &ParamLayout,
        grad: &[f64],
        approx: &[f64],
        judged: &[Judged],
        ev: &Evidence<'_>,
    ) -> (TensorReport, Option<f64>) {
        let range = slot.range();
        let st = TensorStats::of(range.clone(), grad, judged, ev);
        let (verdict, reason, suggestion) = decide(&slot.name, range.clone(), judged, &st, ev);
        let worst = self.worst_elements(range.clone(), layout, grad, judged, ev);
        let error_estimate = ev.wide.map(|_| {
            st.resolved
                .iter()
                .map(|&i| judged[i].truncation)
                .fold(0.0, f64::max)
        });
        (
            TensorReport {
                name: slot.name.clone(),
                shape: if slot.shape.len() == 1 && slot.cols == 1 {
                    vec![slot.rows, 1]
                } else {
                    slot.shape.clone()
                },
                difference: difference(&grad[range.clone()], &approx[range]),
                rms_error: st.rms_error,
                verdict,
                passed: verdict == Verdict::Pass,
                resolution: st.resolution,
                max_excess: st.max_excess,
                kinks: st.kinks,
                one_sided: st.one_sided,
                unresolved: st.unresolved,
                wrong: st.wrong,
                suspicious: st.suspicious,
                coarse: st.coarse,
                worst,
                reason,
                diagnosis: None,
                error_estimate,
            },
            suggestion,
        )
    }

    /// The top k elements by excess (ties by index): a selection, then a sort of those k.
    fn worst_elements(
        &self,
        range: std::ops::Range<usize>,
        layout: &ParamLayout,
        grad: &[f64],
        judged: &[Judged],
        ev: &Evidence<'_>,
    ) -> Vec<Worst> {
        let mut order: Vec<usize> = range.collect();
        let by_excess = |x: &usize, y: &usize| {
            excess(grad[*y], &judged[*y])
                .total_cmp(&excess(grad[*x], &judged[*x]))
                .then(x.cmp(y))
        };
        if self.top_k > 0 && self.top_k < order.len() {
            order.select_nth_unstable_by(self.top_k - 1, by_excess);
            order.truncate(self.top_k);
        }
        order.sort_by(by_excess);
        order
            .into_iter()
            .take(self.top_k)
            .map(|i| Worst {
                index: i,
                element: layout.element_name(i),
                analytic: grad[i],
                numeric: judged[i].numeric,
                abs_error: (grad[i] - judged[i].numeric).abs(),
                bound: judged[i].bound,
                method: judged[i].method,
                status: judged[i].status,
                kink: ev.eval.kinks[i] != 0,
            })
            .collect()
    }

    /// [`Rules::judge`] of an evaluation alone (no 2ε evaluation: truncation unknown, so
    /// the verdict can only be inconclusive; for numbers such as a sweep's points).
    pub fn build_report(
        &self,
        layout: &ParamLayout,
        grad: &[f64],
        eval: &Evaluation,
        epsilon: f64,
        threshold: f64,
        m: usize,
    ) -> Report {
        self.judge(&Evidence {
            layout,
            grad,
            eval,
            wide: None,
            epsilon,
            threshold,
            m,
            growth: growth(layout),
            terms: None,
        })
    }
}

/// ε as the reasons print it.
fn py(x: f64) -> String {
    format!("{x:e}")
}

/// The most common reason elements went unjudged, in words.
fn dominant_reason(statuses: impl Iterator<Item = Status>) -> &'static str {
    let mut counts = [0usize; 4];
    for s in statuses {
        match s {
            Status::KinkBothSides => counts[0] += 1,
            Status::KinkWithinTwoEpsilon => counts[1] += 1,
            Status::NotFinite => counts[2] += 1,
            Status::StepUnderflow => counts[3] += 1,
            _ => {}
        }
    }
    let texts = [
        "both ±ε steps cross a ReLU kink: a smaller ε separates them, unless a unit sits exactly at z = 0",
        "a ReLU kink lies within 2ε, so the truncation error cannot be estimated: a smaller ε",
        "the cost is not finite at θ ± ε (a saturated output in the notebook's arithmetic: --precision f64 computes it stably)",
        "ε is below the resolution of θ: θ ± ε rounds to θ; use a larger ε or --precision f64 (the Δ path takes exact steps)",
    ];
    let k = (0..4).max_by_key(|&k| counts[k]).unwrap_or(0);
    texts[k]
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

/// |analytic − numeric| in units of the element's bound (−1: not judged).
fn excess(g: f64, j: &Judged) -> f64 {
    if !j.status.resolved() {
        -1.0
    } else if j.bound > 0.0 {
        (g - j.numeric).abs() / j.bound
    } else if g == j.numeric {
        0.0
    } else {
        f64::INFINITY
    }
}

/// What a tensor's verdict is decided from: its elements' statuses counted, and the norms
/// of their bounds, signals and gradients over the resolved ones.
struct TensorStats {
    resolved: Vec<usize>,
    wrong: usize,
    suspicious: usize,
    coarse: usize,
    unresolved: usize,
    kinks: usize,
    one_sided: usize,
    n_round: f64,
    n_signal: f64,
    n_numeric: f64,
    resolution: f64,
    g_all: f64,
    g_unres: f64,
    rms_error: f64,
    max_excess: f64,
}

impl TensorStats {
    fn of(
        range: std::ops::Range<usize>,
        grad: &[f64],
        judged: &[Judged],
        ev: &Evidence<'_>,
    ) -> Self {
        let count = |f: &dyn Fn(&Judged) -> bool| range.clone().filter(|&i| f(&judged[i])).count();
        let resolved: Vec<usize> = range
            .clone()
            .filter(|&i| judged[i].status.resolved())
            .collect();
        let coarse = range
            .clone()
            .filter(|&i| {
                let (j, size) = (&judged[i], grad[i].abs().max(judged[i].numeric.abs()));
                j.status == Status::Consistent && size > 0.0 && j.bound - j.tie > RESOLUTION * size
            })
            .count();
        let norm =
            |f: &dyn Fn(usize) -> f64| resolved.iter().map(|&i| f(i).powi(2)).sum::<f64>().sqrt();
        // A tie's width is the function's, not the measurement's: not counted here.
        let n_bound = norm(&|i| judged[i].bound - judged[i].tie);
        let n_grad = norm(&|i| grad[i]).max(norm(&|i| judged[i].numeric));
        let resolution = if n_bound == 0.0 {
            0.0
        } else if n_grad > 0.0 {
            n_bound / n_grad
        } else {
            f64::INFINITY
        };
        let rms_error = if resolved.is_empty() {
            0.0
        } else {
            (resolved
                .iter()
                .map(|&i| (grad[i] - judged[i].numeric).powi(2))
                .sum::<f64>()
                / resolved.len() as f64)
                .sqrt()
        };
        TensorStats {
            wrong: count(&|j| j.status == Status::Wrong),
            suspicious: count(&|j| j.status == Status::Suspicious),
            coarse,
            unresolved: range.len() - resolved.len(),
            kinks: range.clone().filter(|&i| ev.eval.kinks[i] != 0).count(),
            one_sided: count(&|j| matches!(j.method, Method::Forward | Method::Backward)),
            n_round: norm(&|i| judged[i].rounding),
            n_signal: norm(&|i| judged[i].signal),
            n_numeric: norm(&|i| judged[i].numeric),
            resolution,
            // Analytic weight of all elements, and of those nothing could judge.
            g_all: range.clone().map(|i| grad[i].powi(2)).sum::<f64>().sqrt(),
            g_unres: range
                .clone()
                .filter(|&i| !judged[i].status.resolved())
                .map(|i| grad[i].powi(2))
                .sum::<f64>()
                .sqrt(),
            rms_error,
            max_excess: resolved
                .iter()
                .map(|&i| excess(grad[i], &judged[i]))
                .fold(0.0, f64::max),
            resolved,
        }
    }
}

/// A tensor's verdict from its stats, the reason when it is not a pass, and the ε that
/// would resolve it (if that is its problem).
fn decide(
    name: &str,
    range: std::ops::Range<usize>,
    judged: &[Judged],
    st: &TensorStats,
    ev: &Evidence<'_>,
) -> (Verdict, Option<String>, Option<f64>) {
    let mut suggestion: Option<f64> = None;
    // Kinks are separated by a smaller ε; on the Δ paths that costs no accuracy.
    let kink_unresolved = range.clone().any(|i| {
        matches!(
            judged[i].status,
            Status::KinkBothSides | Status::KinkWithinTwoEpsilon
        )
    });
    if kink_unresolved && ev.eval.magnitudes.is_some() && ev.wide.is_some() {
        suggestion = Some(ev.epsilon / 1000.0);
    }
    // θ ± ε rounding to θ is cured by the notebook's ε.
    if range
        .clone()
        .any(|i| judged[i].status == Status::StepUnderflow)
        && ev.epsilon < DEFAULT_EPSILON
    {
        suggestion = Some(DEFAULT_EPSILON);
    }
    let (verdict, reason) = if st.wrong > 0 {
        (
            Verdict::Fail,
            Some(format!(
                "{name}: {} of {} elements differ from the numeric gradient by more than {FAIL_MARGIN} × their error bound",
                st.wrong,
                range.len()
            )),
        )
    } else if st.suspicious > 0 {
        let r_sig = st.n_signal / st.n_numeric.max(f64::MIN_POSITIVE);
        if r_sig > ASYMPTOTIC {
            // Truncation ∝ ε²: bring it to a tenth of the asymptotic limit.
            suggestion = Some(ev.epsilon * (0.1 * ASYMPTOTIC / r_sig).sqrt().min(0.5));
            (
                Verdict::Inconclusive,
                Some(format!(
                    "{name}: {} element(s) differ by more than their error bound, but ε = {} is too large for the truncation estimate to be trusted (it is {:.2} % of the gradient): a smaller ε",
                    st.suspicious,
                    py(ev.epsilon),
                    100.0 * r_sig
                )),
            )
        } else {
            (
                Verdict::Inconclusive,
                Some(format!(
                    "{name}: {} element(s) differ by 1–{FAIL_MARGIN} × their error bound: neither shown right nor wrong",
                    st.suspicious
                )),
            )
        }
    } else if st.resolved.is_empty() {
        (
            Verdict::Inconclusive,
            Some(format!(
                "{name}: no element could be judged at ε = {} ({})",
                py(ev.epsilon),
                dominant_reason(range.clone().map(|i| judged[i].status))
            )),
        )
    } else if st.resolution > RESOLUTION || st.g_unres > RESOLUTION * st.g_all {
        let (why, e) = coarse_reason(name, range, judged, st, ev);
        if e.is_some() {
            suggestion = e;
        }
        (
            Verdict::Inconclusive,
            Some(format!(
                "{name}: {why}; PASS needs {:.2} %",
                100.0 * RESOLUTION
            )),
        )
    } else {
        (Verdict::Pass, None)
    };
    (verdict, reason, suggestion)
}

/// Why a tensor's bounds are too coarse for a PASS, and the ε that would help.
fn coarse_reason(
    name: &str,
    range: std::ops::Range<usize>,
    judged: &[Judged],
    st: &TensorStats,
    ev: &Evidence<'_>,
) -> (String, Option<f64>) {
    if st.g_unres > RESOLUTION * st.g_all {
        (
            format!(
                "{} element(s) carrying {:.1} % of d{name} could not be judged ({})",
                st.unresolved,
                100.0 * st.g_unres / st.g_all,
                dominant_reason(range.map(|i| judged[i].status))
            ),
            None,
        )
    } else if st.n_signal > st.n_round {
        // Truncation ∝ ε², rounding ∝ 1/ε: the optimum balances them.
        let e = ev.epsilon * (st.n_round / (2.0 * st.n_signal)).cbrt().clamp(1e-3, 0.5);
        (
            format!(
                "the numeric gradient is only known to {:.2} % (truncation at ε = {} dominates: a smaller ε)",
                100.0 * st.resolution,
                py(ev.epsilon)
            ),
            Some(e),
        )
    } else if ev.eval.magnitudes.is_some() {
        (
            format!(
                "the numeric gradient is only known to {:.2} % (rounding dominates: the gradient is too small for {} here)",
                100.0 * st.resolution,
                ev.eval.precision
            ),
            None,
        )
    } else {
        let e = ev.epsilon
            * (st.n_round / (2.0 * st.n_signal.max(f64::MIN_POSITIVE)))
                .cbrt()
                .clamp(2.0, 1e3);
        (
            format!(
                "the numeric gradient is only known to {:.2} % (rounding dominates: ε = {} is too small for the plain arithmetic; the Δ path, --precision f64, has no such limit)",
                100.0 * st.resolution,
                py(ev.epsilon)
            ),
            Some(e),
        )
    }
}

/// Per element, the numeric and analytic sides' term sizes (their rounding is relative to
/// the magnitudes flowing through the sums, not to the element's own value: a small
/// element can be a large cancellation): each element's own when the model's are known
/// (`terms`), otherwise its tensor's RMS per-sample term size.
fn term_sizes_of(ev: &Evidence<'_>, at: &Side<'_>) -> Vec<[f64; 2]> {
    match ev.terms {
        Some(t) => t
            .numeric
            .iter()
            .zip(&t.analytic)
            .map(|(&n, &a)| [n, a])
            .collect(),
        None => {
            let mut rms_of = vec![[0.0; 2]; ev.grad.len()];
            for slot in ev.layout.tensors() {
                let r = slot.range();
                let sq: f64 = r
                    .clone()
                    .map(|i| at.term_size(i, ev.grad[i], at.central[i]))
                    .filter(|t| t.is_finite())
                    .map(|t| t * t)
                    .sum();
                let rms = (sq / r.len().max(1) as f64).sqrt();
                rms_of[r].iter_mut().for_each(|v| *v = [rms; 2]);
            }
            rms_of
        }
    }
}

/// From the first pass: per element the truncation allowance it shares with its row or
/// column ([`truncation_floors`]), and whether its tensor's ε is in the asymptotic range
/// (only then can a discrepancy prove a bug).
fn shared_floors(layout: &ParamLayout, first: &[Judged]) -> (Vec<f64>, Vec<bool>) {
    let mut floor = vec![0.0; first.len()];
    let mut provable = vec![true; first.len()];
    for slot in layout.tensors() {
        let r = slot.range();
        let ok: Vec<usize> = r.clone().filter(|&i| first[i].status.resolved()).collect();
        let max_signal = ok.iter().map(|&i| first[i].signal).fold(0.0, f64::max);
        let n_signal = ok
            .iter()
            .map(|&i| first[i].signal.powi(2))
            .sum::<f64>()
            .sqrt();
        let n_value = ok
            .iter()
            .map(|&i| first[i].numeric.powi(2))
            .sum::<f64>()
            .sqrt();
        let asymptotic = n_signal <= ASYMPTOTIC * n_value;
        let shared = truncation_floors(slot, first, max_signal);
        for (i, f) in r.zip(shared) {
            floor[i] = f;
            provable[i] = asymptotic;
        }
    }
    (floor, provable)
}

/// The overall verdict from the tensors', their reasons, and the ε to re-check at (one
/// significant digit: a suggestion, not a measurement).
fn overall(tensors: &[TensorReport], suggestions: &[f64]) -> (Verdict, Vec<String>, Option<f64>) {
    let verdict = if tensors.iter().any(|t| t.verdict == Verdict::Fail) {
        Verdict::Fail
    } else if tensors.iter().all(|t| t.verdict == Verdict::Pass) {
        Verdict::Pass
    } else {
        Verdict::Inconclusive
    };
    let reasons: Vec<String> = tensors
        .iter()
        .filter(|t| t.verdict != Verdict::Pass)
        .filter_map(|t| t.reason.clone())
        .collect();
    let suggested_epsilon = if verdict == Verdict::Inconclusive {
        suggestions
            .iter()
            .copied()
            .reduce(f64::min)
            .map(|e| format!("{e:.0e}").parse().unwrap_or(e))
    } else {
        None
    };
    (verdict, reasons, suggested_epsilon)
}
