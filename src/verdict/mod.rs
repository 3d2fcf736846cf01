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
//! Files: `outcome` (what a verdict says: the report's types, the default ε and
//! thresholds), `bounds` (the error model: each element's bound from the evaluations),
//! `rules` (the decisions: an element consistent, wrong or suspicious; a tensor's and the
//! overall verdict, and the reasons), and here the [`Rules`] that run them.
//!
//! May use: `eval` (the [`Evaluation`] it judges), `model`, `metric`. Knows nothing of
//! backends, diagnoses or front ends.

mod bounds;
mod outcome;
mod rules;

pub use bounds::{ASYMPTOTIC, Evidence, ROUNDING_FACTOR, growth};
pub use outcome::*;
pub use rules::{FAIL_MARGIN, RESOLUTION};

use bounds::{Estimate, Judged, Side, excess, shared_floors, term_sizes_of, with_truncation};
use rules::{TensorStats, decide, decide_element, overall};

use crate::eval::{Evaluation, KINK_MINUS, KINK_PLUS};
use crate::metric::difference;
use crate::model::ParamLayout;

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
        decide_element(g, judged, at, wide, i, chosen.kinks, provable)
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
