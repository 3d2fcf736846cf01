//! The error model: every numeric gradient element's bound on its own error — rounding of
//! what was subtracted (times the net's error growth), truncation estimated from the 2ε
//! evaluation, the analytic side's own rounding, the plain path's step gap — and the
//! allowances a tensor's elements share.

use super::outcome::{Method, Status};
use crate::eval::Evaluation;
use crate::eval::cpu::TermSizes;
use crate::model::{ParamLayout, TensorKind};

/// Safety factor on the rounding estimates, per unit of [`growth`]. Measured: the worst
/// element error of correct gradients is ≤ 0.6 u·scale/ε (plain, seed net) and ≤ 10
/// u·Σ|Δloss|/ε (f32 Δ path, 4-layer nets), against 2·growth = 18 (seed) … 135 (784-512-256-1).
pub const ROUNDING_FACTOR: f64 = 2.0;

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
pub(super) struct Judged {
    pub(super) numeric: f64,
    pub(super) bound: f64,
    /// The part of `bound` that is the width of valid derivatives at a max-pool tie: a
    /// property of the function, not an uncertainty of the measurement, so it does not
    /// count against the tensor's resolution.
    pub(super) tie: f64,
    /// The rounding and truncation parts of the bound (for the remedy).
    pub(super) rounding: f64,
    pub(super) truncation: f64,
    pub(super) signal: f64,
    pub(super) method: Method,
    pub(super) status: Status,
}

impl Judged {
    /// An element that cannot be judged: no bound, no method.
    pub(super) fn unresolved(status: Status, numeric: f64) -> Judged {
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

/// A difference and its error bound's parts.
#[derive(Debug, Clone, Copy)]
pub(super) struct Estimate {
    pub(super) value: f64,
    pub(super) rounding: f64,
    pub(super) truncation: f64,
    /// The truncation estimate less its own rounding noise (≥ 0): what tells a
    /// truncation-limited ε from a rounding-limited one.
    pub(super) signal: f64,
}

/// Per-element access to one evaluation: ΔJ± and their error bounds.
pub(super) struct Side<'a> {
    pub(super) eval: &'a Evaluation,
    pub(super) epsilon: f64,
    /// ROUNDING_FACTOR · growth · u.
    pub(super) ku: f64,
    /// The central differences of this evaluation.
    pub(super) central: Vec<f64>,
}

impl Side<'_> {
    /// Half the step really taken (ε, or fl32 steps / 2).
    pub(super) fn half_step(&self, i: usize) -> f64 {
        match &self.eval.steps {
            Some(h) => 0.5 * h[i],
            None => self.epsilon,
        }
    }
    /// Error bounds of ΔJ⁺, ΔJ⁻ and of J(θ) (0 on the Δ paths, which never form J±).
    pub(super) fn errors(&self, i: usize) -> (f64, f64, f64) {
        match &self.eval.magnitudes {
            Some(m) => (self.ku * m[i][0], self.ku * m[i][1], 0.0),
            None => {
                let e = self.ku * self.eval.cost_scale;
                (e, e, e)
            }
        }
    }
    pub(super) fn central(&self, i: usize) -> Estimate {
        let (ep, em, _) = self.errors(i);
        Estimate {
            value: self.central[i],
            rounding: (ep + em) / (2.0 * self.half_step(i)),
            truncation: 0.0,
            signal: 0.0,
        }
    }
    /// (J⁺ − J)/ε (`forward`) or (J − J⁻)/ε.
    pub(super) fn one_sided(&self, i: usize, forward: bool) -> Estimate {
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
    pub(super) fn kinks(&self, i: usize) -> u8 {
        self.eval.kinks[i]
    }
    /// Per-sample size of the gradient, Σ_j|∂loss_j/∂θ_i|/m (what the analytic side summed).
    pub(super) fn term_size(&self, i: usize, g: f64, c: f64) -> f64 {
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
pub(super) fn truncation_floors(
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
pub(super) fn with_truncation(at: Estimate, wide: Estimate, central: bool) -> Estimate {
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

/// |analytic − numeric| in units of the element's bound (−1: not judged).
pub(super) fn excess(g: f64, j: &Judged) -> f64 {
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

/// Per element, the numeric and analytic sides' term sizes (their rounding is relative to
/// the magnitudes flowing through the sums, not to the element's own value: a small
/// element can be a large cancellation): each element's own when the model's are known
/// (`terms`), otherwise its tensor's RMS per-sample term size.
pub(super) fn term_sizes_of(ev: &Evidence<'_>, at: &Side<'_>) -> Vec<[f64; 2]> {
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
pub(super) fn shared_floors(layout: &ParamLayout, first: &[Judged]) -> (Vec<f64>, Vec<bool>) {
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::eval::Precision;

    /// A Δ-path evaluation of n elements: ΔJ± and their magnitudes Σ|Δloss|/m.
    pub(in crate::verdict) fn delta_eval(
        plus: &[f64],
        minus: &[f64],
        mags: &[[f64; 2]],
    ) -> Evaluation {
        Evaluation {
            cost: 1.0,
            plus: plus.to_vec(),
            minus: minus.to_vec(),
            deltas: true,
            cost_scale: 1.0,
            kinks: vec![0; plus.len()],
            magnitudes: Some(mags.to_vec()),
            step_errors: None,
            backend: "cpu".into(),
            precision: Precision::F64,
            unit_roundoff: f64::EPSILON / 2.0,
            steps: None,
            tie_widths: None,
            notes: Vec::new(),
            kernel_times: Vec::new(),
        }
    }

    #[test]
    fn growth_is_depth_plus_the_root_fan_ins() {
        // W1 (9×4, fan-in 4), W2 (1×9, fan-in 9): 2 weight tensors + √4 + √9.
        let layout = ParamLayout::new(&[4, 9, 1]).unwrap();
        assert_eq!(growth(&layout), 7.0);
    }

    #[test]
    fn truncation_is_richardsons_estimate_plus_its_own_noise_counted_twice() {
        let at = Estimate {
            value: 1.0,
            rounding: 3e-12,
            truncation: 0.0,
            signal: 0.0,
        };
        let wide = Estimate {
            value: 1.0 + 3e-6,
            rounding: 6e-12,
            ..at
        };
        // Central: g(2ε) − g(ε) = 3·c·ε², so c·ε² = 1e-6; noise (3e-12 + 6e-12)/3.
        let c = with_truncation(at, wide, true);
        // (1 + 3e-6) − 1 is exact to 2e-16: compare to 1e-15.
        assert!(
            (c.truncation - 2.0 * (1e-6 + 3e-12)).abs() < 1e-15,
            "{}",
            c.truncation
        );
        assert!((c.signal - (1e-6 - 3e-12)).abs() < 1e-15);
        assert_eq!((c.value, c.rounding), (at.value, at.rounding));
        // One-sided: the whole gap (c·ε), the noise not divided.
        let o = with_truncation(at, wide, false);
        assert!((o.truncation - 2.0 * (3e-6 + 9e-12)).abs() < 1e-15);
        // A gap inside the noise is no signal.
        let quiet = Estimate {
            value: 1.0 + 1e-12,
            ..wide
        };
        assert_eq!(with_truncation(at, quiet, true).signal, 0.0);
    }

    #[test]
    fn differences_and_their_rounding_from_one_evaluation() {
        let eval = delta_eval(&[2e-7, 1e-7], &[-2e-7, -3e-7], &[[4.0, 6.0], [1.0, 1.0]]);
        let side = Side {
            eval: &eval,
            epsilon: 1e-7,
            ku: 10.0 * f64::EPSILON,
            central: eval.gradapprox(1e-7),
        };
        // Central (ΔJ⁺ − ΔJ⁻)/2ε, its rounding ku·(m⁺ + m⁻)/2ε.
        let c = side.central(0);
        assert!((c.value - 2.0).abs() < 1e-12);
        assert!((c.rounding - 10.0 * f64::EPSILON * 10.0 / 2e-7).abs() < 1e-20);
        // One-sided: ΔJ⁺/ε forward, −ΔJ⁻/ε backward, each side's own rounding.
        assert!((side.one_sided(1, true).value - 1.0).abs() < 1e-12);
        assert!((side.one_sided(1, false).value - 3.0).abs() < 1e-12);
        assert!(
            (side.one_sided(0, true).rounding - 10.0 * f64::EPSILON * 4.0 / 1e-7).abs() < 1e-20
        );
        // The analytic side's term size: the mean magnitude per unit step.
        assert!((side.term_size(0, 2.0, 2.0) - 5.0 / 1e-7).abs() < 1e-6);
    }

    #[test]
    fn a_discrepancy_is_counted_in_bounds() {
        let j = Judged {
            numeric: 1.0,
            bound: 0.5,
            ..Judged::unresolved(Status::Consistent, 1.0)
        };
        assert_eq!(excess(2.0, &j), 2.0);
        assert_eq!(
            excess(1.0, &Judged::unresolved(Status::KinkBothSides, 1.0)),
            -1.0
        );
        let exact = Judged { bound: 0.0, ..j };
        assert_eq!(excess(1.0, &exact), 0.0);
        assert_eq!(excess(1.5, &exact), f64::INFINITY);
    }

    #[test]
    fn a_weights_truncation_floor_is_the_smaller_of_its_row_and_column_maxima() {
        let layout = ParamLayout::new(&[2, 2, 1]).unwrap();
        let w1 = &layout.tensors()[0];
        let signals = [4.0, 0.0, 0.0, 1.0];
        let first: Vec<Judged> = signals
            .iter()
            .map(|&s| Judged {
                signal: s,
                ..Judged::unresolved(Status::Consistent, 0.0)
            })
            .collect();
        // Rows' maxima 4, 1; columns' 4, 1 → 0.5·min per element: the small row and
        // column keep their own scale, not the tensor's largest.
        assert_eq!(truncation_floors(w1, &first, 4.0), vec![2.0, 0.5, 0.5, 0.5]);
        // A bias (one column) shares half its tensor's maximum.
        let b1 = &layout.tensors()[1];
        assert_eq!(truncation_floors(b1, &first, 4.0), vec![2.0, 2.0]);
    }
}
