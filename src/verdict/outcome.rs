//! What a verdict says: the report and its parts (per tensor, per element, the fast
//! check's), the three answers, how kinks are treated, and the notebook's default ε and
//! thresholds per precision.

use serde::Serialize;

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

/// The three answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every resolved element consistent, and the bounds resolve 1 % of every tensor.
    Pass,
    /// Some element is off by more than [`FAIL_MARGIN`](super::FAIL_MARGIN) times its bound: a bug.
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
    /// Between 1 and [`FAIL_MARGIN`](super::FAIL_MARGIN) bounds off.
    Suspicious,
    /// More than [`FAIL_MARGIN`](super::FAIL_MARGIN) bounds off (or not finite).
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
    pub(super) fn resolved(self) -> bool {
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
    /// see in this tensor (PASS needs ≤ [`RESOLUTION`](super::RESOLUTION)).
    pub resolution: f64,
    /// The largest |analytic − numeric| / bound (> [`FAIL_MARGIN`](super::FAIL_MARGIN): wrong).
    pub max_excess: f64,
    /// Elements whose ±ε step crossed a kink.
    pub kinks: usize,
    /// Of those, checked by a one-sided difference.
    pub one_sided: usize,
    /// Elements no difference could judge at this ε.
    pub unresolved: usize,
    /// Elements off by more than [`FAIL_MARGIN`](super::FAIL_MARGIN) bounds.
    pub wrong: usize,
    /// Elements between 1 and [`FAIL_MARGIN`](super::FAIL_MARGIN) bounds off.
    pub suspicious: usize,
    /// Nonzero elements judged consistent whose own bound exceeds [`RESOLUTION`](super::RESOLUTION) of their
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
    /// Per element, whether it was judged wrong (beyond [`FAIL_MARGIN`](super::FAIL_MARGIN) bounds: what the
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
