//! The decisions: an element consistent, wrong (beyond [`FAIL_MARGIN`] bounds) or
//! suspicious; a tensor's verdict from its elements and the resolution of its bounds, with
//! the reason and the ε that would settle it; the overall verdict.

use super::bounds::{ASYMPTOTIC, Evidence, Judged, Side, excess, with_truncation};
use super::outcome::{DEFAULT_EPSILON, Method, Status, TensorReport, Verdict};
use crate::eval::KINK_PLUS;

/// An element is wrong — a proof of a bug — when its discrepancy exceeds this many times
/// its bound (which already carries the safety factors above).
pub const FAIL_MARGIN: f64 = 2.0;

/// A tensor passes only when ‖bounds‖ ≤ RESOLUTION · ‖gradient‖: then a wrong gradient
/// off by 1 % of the tensor (‖analytic − true‖ ≥ 0.01‖true‖) shows as some element beyond
/// [`FAIL_MARGIN`] bounds: 0.01 = (FAIL_MARGIN + 2) · RESOLUTION leaves one bound for the
/// numeric gradient's own error.
pub const RESOLUTION: f64 = 0.01 / (FAIL_MARGIN + 2.0);

/// An element's status from its bound: consistent within it; on a kink at θ, consistent
/// anywhere between the two one-sided derivatives (a subgradient, the interval's width
/// counted in its bound); wrong only far outside (and where `provable`), suspicious
/// between.
pub(super) fn decide_element(
    g: f64,
    mut judged: Judged,
    at: &Side<'_>,
    wide: Option<&Side<'_>>,
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
        // The other piece's derivative: forward where the +ε step crossed (the judged
        // difference is then the backward one), backward where the −ε step did; its
        // truncation (c·ε, one-sided) from the same difference at 2ε where that step
        // crossed the same way (the kink at θ itself, not one further out).
        let forward = kinks == KINK_PLUS;
        let mut other = at.one_sided(i, forward);
        if let Some(w) = wide.filter(|w| w.kinks(i) == kinks) {
            other = with_truncation(other, w.one_sided(i, forward), false);
        }
        if other.value.is_finite() {
            let (lo, hi) = (numeric.min(other.value), numeric.max(other.value));
            let outside = (lo - g).max(g - hi).max(0.0);
            let slack = bound + other.rounding + other.truncation;
            if outside <= slack {
                judged.truncation += (hi - lo) + other.rounding + other.truncation;
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

/// ε as the reasons print it.
pub(super) fn py(x: f64) -> String {
    format!("{x:e}")
}

/// The most common reason elements went unjudged, in words.
pub(super) fn dominant_reason(statuses: impl Iterator<Item = Status>) -> &'static str {
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

/// What a tensor's verdict is decided from: its elements' statuses counted, and the norms
/// of their bounds, signals and gradients over the resolved ones.
pub(super) struct TensorStats {
    pub(super) resolved: Vec<usize>,
    pub(super) wrong: usize,
    pub(super) suspicious: usize,
    pub(super) coarse: usize,
    pub(super) unresolved: usize,
    pub(super) kinks: usize,
    pub(super) one_sided: usize,
    pub(super) n_round: f64,
    pub(super) n_signal: f64,
    pub(super) n_numeric: f64,
    pub(super) resolution: f64,
    pub(super) g_all: f64,
    pub(super) g_unres: f64,
    pub(super) rms_error: f64,
    pub(super) max_excess: f64,
}

impl TensorStats {
    pub(super) fn of(
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
pub(super) fn decide(
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
pub(super) fn coarse_reason(
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

/// The overall verdict from the tensors', their reasons, and the ε to re-check at (one
/// significant digit: a suggestion, not a measurement).
pub(super) fn overall(
    tensors: &[TensorReport],
    suggestions: &[f64],
) -> (Verdict, Vec<String>, Option<f64>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::bounds::tests::delta_eval;

    fn judged(numeric: f64, bound: f64, signal: f64) -> Judged {
        Judged {
            numeric,
            bound,
            rounding: bound / 2.0,
            truncation: bound / 2.0,
            signal,
            status: Status::Consistent,
            ..Judged::unresolved(Status::Consistent, numeric)
        }
    }

    fn side(eval: &crate::eval::Evaluation) -> Side<'_> {
        Side {
            eval,
            epsilon: 1e-3,
            ku: 0.0,
            central: eval.gradapprox(1e-3),
        }
    }

    #[test]
    fn an_element_is_consistent_within_its_bound_wrong_only_beyond_the_margin() {
        let eval = delta_eval(&[1e-3], &[-1e-3], &[[1e-3, 1e-3]]);
        let at = side(&eval);
        let j = judged(1.0, 0.01, 0.0);
        let status =
            |g: f64, provable: bool| decide_element(g, j, &at, None, 0, 0, provable).status;
        assert_eq!(status(1.0 + 0.009, true), Status::Consistent);
        // Between one and FAIL_MARGIN bounds: not a proof.
        assert_eq!(status(1.0 + 0.015, true), Status::Suspicious);
        assert_eq!(status(1.0 + 0.03, true), Status::Wrong);
        // Outside the asymptotic range nothing is proven.
        assert_eq!(status(1.0 + 0.03, false), Status::Suspicious);
        // A truncation signal of the discrepancy's size is no proof either.
        let noisy = judged(1.0, 0.01, 0.01);
        assert_eq!(
            decide_element(1.03, noisy, &at, None, 0, 0, true).status,
            Status::Suspicious
        );
    }

    #[test]
    fn on_a_kink_any_value_between_the_one_sided_derivatives_is_consistent() {
        // The +ε step crossed: backward difference 1 is judged; forward is 0 (relu'(0) ∈
        // [0, 1]). A g of 0.4 is a subgradient, its bound widened by the interval.
        let eval = delta_eval(&[0.0], &[-1e-3], &[[1e-3, 1e-3]]);
        let at = side(&eval);
        let j = judged(1.0, 0.01, 0.0);
        let inside = decide_element(0.4, j, &at, None, 0, KINK_PLUS, true);
        assert_eq!(inside.status, Status::Consistent);
        assert!(
            (inside.bound - (0.01 + 1.0)).abs() < 1e-12,
            "{}",
            inside.bound
        );
        assert_eq!(
            decide_element(-0.5, j, &at, None, 0, KINK_PLUS, true).status,
            Status::Wrong
        );
    }

    fn tensor(name: &str, verdict: Verdict, reason: Option<&str>) -> TensorReport {
        TensorReport {
            name: name.into(),
            shape: vec![1],
            difference: 0.0,
            rms_error: 0.0,
            verdict,
            passed: verdict == Verdict::Pass,
            resolution: 0.0,
            max_excess: 0.0,
            kinks: 0,
            one_sided: 0,
            unresolved: 0,
            wrong: 0,
            suspicious: 0,
            coarse: 0,
            worst: Vec::new(),
            reason: reason.map(str::to_string),
            diagnosis: None,
            error_estimate: None,
        }
    }

    #[test]
    fn the_overall_verdict_fails_on_any_tensor_and_passes_only_on_all() {
        let pass = tensor("W1", Verdict::Pass, None);
        let unsure = tensor("b1", Verdict::Inconclusive, Some("kinks"));
        let fail = tensor("W2", Verdict::Fail, Some("wrong"));
        let (v, reasons, eps) = overall(&[pass.clone(), unsure.clone(), fail], &[3.7e-5]);
        assert_eq!((v, reasons.len(), eps), (Verdict::Fail, 2, None));
        let (v, _, _) = overall(std::slice::from_ref(&pass), &[]);
        assert_eq!(v, Verdict::Pass);
        // Inconclusive: the smallest suggested ε, to one significant digit.
        let (v, reasons, eps) = overall(&[pass, unsure], &[3.7e-5, 8e-4]);
        assert_eq!(
            (v, reasons, eps),
            (Verdict::Inconclusive, vec!["kinks".to_string()], Some(4e-5))
        );
    }

    #[test]
    fn the_most_common_reason_elements_went_unjudged_is_named() {
        let said = dominant_reason(
            [
                Status::KinkWithinTwoEpsilon,
                Status::StepUnderflow,
                Status::KinkWithinTwoEpsilon,
                Status::Consistent,
            ]
            .into_iter(),
        );
        assert!(said.contains("within 2ε"), "{said}");
        assert!(dominant_reason([Status::StepUnderflow].into_iter()).contains("resolution of θ"));
    }
}
