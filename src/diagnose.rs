//! What kind of mistake a failing tensor's gradient looks like, from its analytic and
//! numeric values (and, for dropout slips, from the built-in backprop with each slip).
//!
//! May use: `verdict` (it annotates a [`Report`]), `eval::cpu`, `model`, `metric`.
//!
//! A diagnosis is only given when the evidence is clear: the pattern must explain the
//! analytic values to within [`FIT_TOLERANCE`] (relative residual), otherwise the tensor
//! is only reported as wrong in k of n elements, with where.

use crate::eval::cpu::{self, DropoutBackward};
use crate::metric::difference;
use crate::model::{
    Activation, Data, Grads, Loss, Model, ParamLayout, Params, TensorKind, TensorSlot,
};
pub use crate::verdict::{Diagnosis, MistakeKind};
use crate::verdict::{Report, TensorReport, Verdict};

/// Largest relative residual ‖analytic − pattern(numeric)‖/‖analytic‖ for which a
/// pattern is called. Correct gradients sit at 1e-7 or below in f64 (1e-3 in f32 at its
/// default ε), planted bugs at 1; 1e-2 leaves room for f32 noise either way.
pub const FIT_TOLERANCE: f64 = 1e-2;

/// An element counts as wrong when |analytic − numeric| exceeds this fraction of the
/// tensor's RMS numeric value (plus an absolute floor for all-zero tensors).
pub const ELEMENT_TOLERANCE: f64 = 1e-3;

/// A failing tensor is put down to a dropout slip when it equals the gradient of a
/// backward pass with that slip to this difference: our backprop and the user's agree
/// to ~1e-15 when they compute the same thing, the slips move tensors by O(keep_prob).
pub const SLIP_MATCH: f64 = 1e-6;

/// Replaces the diagnoses of failing tensors that are exactly what a backward pass with
/// one of the classic dropout slips produces (mask missing, 1/keep_prob missing, dropout
/// ignored), at one dropout layer or at all of them — found by running the built-in
/// backprop with each slip and comparing, not by pattern-fitting.
pub fn dropout_slips(
    model: &Model,
    params: &Params,
    data: &Data,
    grad: &[f64],
    tensors: &mut [TensorReport],
) {
    let Some(d) = model.dropout() else { return };
    if tensors.iter().all(|t| t.verdict != Verdict::Fail) {
        return;
    }
    let correct = cpu::backprop(model, params, data);
    let mut targets: Vec<Vec<usize>> = d.layers.iter().map(|&l| vec![l]).collect();
    if d.layers.len() > 1 {
        let mut all = d.layers.clone();
        all.sort_unstable();
        targets.push(all);
    }
    let slips = [
        (
            DropoutBackward::MaskMissing,
            MistakeKind::DropoutMaskMissing,
        ),
        (
            DropoutBackward::ScaleMissing,
            MistakeKind::DropoutScaleMissing,
        ),
        (DropoutBackward::Ignored, MistakeKind::DropoutIgnored),
    ];
    let layout = model.layout();
    for target in &targets {
        for (slip, kind) in slips {
            let g = cpu::backprop_with(model, params, data, |l| {
                if target.contains(&l) {
                    slip
                } else {
                    DropoutBackward::Correct
                }
            });
            for (t, slot) in tensors.iter_mut().zip(layout.tensors()) {
                let r = slot.range();
                let already = t.diagnosis.as_ref().is_some_and(|x| {
                    matches!(
                        x.kind,
                        MistakeKind::DropoutMaskMissing
                            | MistakeKind::DropoutScaleMissing
                            | MistakeKind::DropoutIgnored
                    )
                });
                if t.verdict != Verdict::Fail
                    || already
                    || difference(&g.as_slice()[r.clone()], &correct.as_slice()[r.clone()])
                        <= SLIP_MATCH
                    || difference(&grad[r.clone()], &g.as_slice()[r.clone()]) > SLIP_MATCH
                {
                    continue;
                }
                let layers = target
                    .iter()
                    .map(|l| l.to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                let (of, masks) = if target.len() == 1 {
                    (format!("layer {layers}"), format!("D{layers}"))
                } else {
                    (format!("layers {layers}"), "the masks".into())
                };
                let message = match kind {
                    MistakeKind::DropoutMaskMissing => format!(
                        "d{} is what a backward pass without the dropout mask of {of} gives: multiply dA by {masks} there, not only by 1/keep_prob",
                        slot.name
                    ),
                    MistakeKind::DropoutScaleMissing => format!(
                        "d{} is what a backward pass without the 1/keep_prob = 1/{} scaling of {of}'s dropout gives: divide dA by keep_prob after applying {masks}",
                        slot.name, d.keep_prob
                    ),
                    _ => format!(
                        "d{} is what a backward pass that ignores the dropout of {of} gives: dA must be multiplied by {masks} and divided by keep_prob",
                        slot.name
                    ),
                };
                t.diagnosis = Some(Diagnosis {
                    kind,
                    factor: None,
                    message,
                });
            }
        }
    }
}

/// A failing weight tensor whose error is a multiple of the weights themselves — analytic
/// − numeric = c·W — has an L2 term in the wrong strength: missing, halved, in the other
/// convention (λ instead of λ/m), or present where the cost has none. Says which λ the
/// backprop used.
pub fn l2_slips(model: &Model, params: &Params, data: &Data, grad: &[f64], report: &mut Report) {
    let m = data.m() as f64;
    let lam = model.l2();
    for (t, slot) in report.tensors.iter_mut().zip(model.layout().tensors()) {
        // Only where no sharper pattern was found (a NaN, a swap, a transpose, …).
        let open = t
            .diagnosis
            .as_ref()
            .is_none_or(|d| matches!(d.kind, MistakeKind::Elementwise | MistakeKind::Scaled));
        if t.verdict != Verdict::Fail || slot.kind != TensorKind::Weight || !open {
            continue;
        }
        let r = slot.range();
        let Some(approx) = report.gradapprox.get(r.clone()) else {
            continue;
        };
        let w = &params.as_slice()[r.clone()];
        let d: Vec<f64> = grad[r].iter().zip(approx).map(|(g, n)| g - n).collect();
        let ww = w.iter().map(|x| x * x).sum::<f64>();
        if ww == 0.0 || norm(&d) == 0.0 || !d.iter().all(|v| v.is_finite()) {
            continue;
        }
        let c = d.iter().zip(w).map(|(x, y)| x * y).sum::<f64>() / ww;
        if residual(&d, w.iter().map(|y| c * y)) > FIT_TOLERANCE || w.len() < 2 {
            continue;
        }
        // The backprop's λ_b: its L2 gradient is λ_b/m·W where the cost's is λ/m·W.
        let used = lam + c * m;
        let name = &slot.name;
        let message = if lam > 0.0 && used.abs() <= FIT_TOLERANCE * lam {
            format!(
                "d{name} lacks the L2 term's gradient: add λ/m·{name} = {}·{name} (the cost has λ = {lam})",
                lam / m
            )
        } else if lam > 0.0 && close(used, 0.5 * lam) {
            format!("d{name} has half the L2 gradient: d/dW of λ/(2m)·‖W‖² is λ/m·W, not λ/(2m)·W")
        } else if lam > 0.0 && close(used, lam * m) {
            format!(
                "d{name}'s L2 gradient is λ·W, the cost's is λ/m·W: λ was not divided by m (or set \"l2_scale\": \"total\" if your cost is (λ/2)·‖W‖²)"
            )
        } else if lam == 0.0 {
            format!(
                "d{name} has an L2 gradient λ/m·W with λ = {used:.6} that the cost does not have: add \"l2\": {used:.6} to the model"
            )
        } else {
            format!(
                "d{name} − numeric = {c:.4e}·{name}: your backprop's L2 term uses λ = {used:.6}, the cost's λ = {lam}"
            )
        };
        t.diagnosis = Some(Diagnosis {
            kind: MistakeKind::L2Mismatch,
            factor: Some(used),
            message,
        });
    }
}

/// Gradients of the wrong cost: every failing tensor is what the built-in backprop of
/// another loss gives (MSE's where binary cross-entropy was asked, …), or a tensor is
/// 1/nL or 2/nL × the numeric gradient (the gradient of a mean over all m·nL outputs, as
/// PyTorch's reduction="mean" takes it, not of the mean over the m samples).
pub fn cost_slips(model: &Model, params: &Params, data: &Data, grad: &[f64], report: &mut Report) {
    let failing: Vec<usize> = (0..report.tensors.len())
        .filter(|&t| report.tensors[t].verdict == Verdict::Fail)
        .collect();
    if failing.is_empty() {
        return;
    }
    let n_out = model.sizes().last().copied().unwrap_or(1);
    for &t in &failing {
        let tr = &mut report.tensors[t];
        let Some(d) = tr
            .diagnosis
            .as_mut()
            .filter(|d| d.kind == MistakeKind::Scaled)
        else {
            continue;
        };
        let c = d.factor.unwrap_or(0.0);
        let nl = n_out as f64;
        if n_out > 1 && close(c, 1.0 / nl) {
            d.message = format!(
                "{} = 1/nL with nL = {n_out} outputs: the gradient of the mean over all m·nL outputs (PyTorch's reduction=\"mean\"), not of the cost's mean over the m samples",
                d.message
            );
        } else if n_out > 2 && close(c, 2.0 / nl) {
            d.message = format!(
                "{} = 2/nL with nL = {n_out} outputs: the gradient of the mean squared error over all m·nL outputs without the ½ (PyTorch's MSELoss), not of ½·Σ(a − y)²/m",
                d.message
            );
        }
    }
    let out = match model.net() {
        Some(net) => net.output,
        None => model.activation(model.depth() - 1),
    };
    let layout = model.layout();
    for other in [
        Loss::BinaryCrossEntropy,
        Loss::SoftmaxCrossEntropy,
        Loss::MeanSquaredError,
    ] {
        let fits = match other {
            Loss::BinaryCrossEntropy => out == Activation::Sigmoid,
            Loss::SoftmaxCrossEntropy => out == Activation::Softmax,
            Loss::MeanSquaredError => out != Activation::Softmax,
        };
        if other == model.loss() || !fits {
            continue;
        }
        let Some(g) = backprop_with_loss(model, params, data, other) else {
            continue;
        };
        let explains = failing.iter().all(|&t| {
            let r = layout.tensors()[t].range();
            difference(&grad[r.clone()], &g.as_slice()[r]) <= SLIP_MATCH
        });
        if !explains {
            continue;
        }
        for &t in &failing {
            report.tensors[t].diagnosis = Some(Diagnosis {
                kind: MistakeKind::OtherCost,
                factor: None,
                message: format!(
                    "d{} is exactly the gradient of {} (the backprop differentiates another cost than the model's {})",
                    layout.tensors()[t].name,
                    cost_name(other),
                    cost_name(model.loss())
                ),
            });
        }
        return;
    }
}

fn cost_name(l: Loss) -> &'static str {
    match l {
        Loss::BinaryCrossEntropy => "binary cross-entropy",
        Loss::SoftmaxCrossEntropy => "softmax cross-entropy",
        Loss::MeanSquaredError => "the mean squared error ½·Σ(a − y)²/m",
    }
}

/// The built-in backprop of the same network with another cost.
fn backprop_with_loss(model: &Model, params: &Params, data: &Data, loss: Loss) -> Option<Grads> {
    match model.net() {
        Some(net) => {
            let mut spec = net.spec.clone()?;
            spec.loss = loss;
            let other = crate::net::build(&spec).ok()?;
            let other = other.with_l2(model.l2());
            Some(crate::net::backprop_with(
                &other,
                other.net()?,
                params,
                data,
                None,
            ))
        }
        None => {
            let mut spec = model.spec().clone();
            spec.loss = loss;
            let other = Model::new(spec).ok()?;
            Some(cpu::backprop(&other, params, data))
        }
    }
}

/// For a layered network with failing tensors: runs the built-in backprop with each layer's
/// classic slips ([`crate::model::Layer::slips`]) and names the slip that reproduces a
/// failing tensor to [`SLIP_MATCH`] (and changes it: a slip without effect there proves
/// nothing), on every failing tensor it explains.
pub fn layer_slips(
    model: &Model,
    params: &Params,
    data: &Data,
    grad: &[f64],
    tensors: &mut [TensorReport],
) {
    let Some(net) = model.net() else { return };
    if tensors.iter().all(|t| t.verdict != Verdict::Fail) {
        return;
    }
    let correct = crate::net::backprop_with(model, net, params, data, None);
    let layout = model.layout();
    for (l, layer) in net.layers.iter().enumerate() {
        let generic = (!layer.params().is_empty())
            .then_some((crate::net::ONE_SAMPLE, &crate::net::ONE_SAMPLE_SLIP));
        for (s, slip) in layer.slips().iter().enumerate().chain(generic) {
            let g = crate::net::backprop_with(model, net, params, data, Some((l, s)));
            for (t, slot) in tensors.iter_mut().zip(layout.tensors()) {
                let r = slot.range();
                if t.verdict != Verdict::Fail
                    || t.diagnosis
                        .as_ref()
                        .is_some_and(|d| d.kind == MistakeKind::LayerSlip)
                    || difference(&g.as_slice()[r.clone()], &correct.as_slice()[r.clone()])
                        <= SLIP_MATCH
                    || difference(&grad[r.clone()], &g.as_slice()[r.clone()]) > SLIP_MATCH
                {
                    continue;
                }
                t.diagnosis = Some(Diagnosis {
                    kind: MistakeKind::LayerSlip,
                    factor: None,
                    message: format!(
                        "d{} is what a backward pass gives where, in layer {} ({}), {} [{}]",
                        slot.name,
                        net.spec_position(l),
                        layer.kind(),
                        slip.says,
                        slip.name
                    ),
                });
            }
        }
    }
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn residual(a: &[f64], pattern: impl Iterator<Item = f64>) -> f64 {
    let r: f64 = a
        .iter()
        .zip(pattern)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt();
    let na = norm(a);
    if na == 0.0 { f64::INFINITY } else { r / na }
}

/// A fitted factor with its real digits: 2.000, 0.125, 6.250e-4 (not 0.001).
fn factor(c: f64) -> String {
    if (0.1..1e4).contains(&c.abs()) {
        format!("{c:.3}")
    } else {
        format!("{c:.3e}")
    }
}

fn close(x: f64, y: f64) -> bool {
    (x - y).abs() <= FIT_TOLERANCE * y.abs()
}

/// Diagnoses one failing tensor from its analytic (`a`) and numeric (`n`) gradients.
/// `m` is the number of samples (to recognise a missing or doubled 1/m); `resolution` the
/// relative error of the numeric gradient (a factor is called m only within it). A single
/// element shows no pattern: it gets no factor.
pub fn diagnose_tensor(
    slot: &TensorSlot,
    a: &[f64],
    n: &[f64],
    m: usize,
    resolution: f64,
) -> Option<Diagnosis> {
    diagnose_tensor_with(slot, a, n, m, resolution, None)
}

/// [`diagnose_tensor`], with the elements the error model judged wrong (when known): "wrong
/// in k of n" then counts those, not every element a relative tolerance flags (at a large ε
/// truncation alone moves many elements past such a tolerance).
fn diagnose_tensor_with(
    slot: &TensorSlot,
    a: &[f64],
    n: &[f64],
    m: usize,
    resolution: f64,
    judged_wrong: Option<&[bool]>,
) -> Option<Diagnosis> {
    let gname = format!("d{}", slot.name);
    degenerate(&gname, a, n)
        .or_else(|| whole_tensor_pattern(slot, &gname, a, n, m, resolution))
        .or_else(|| where_wrong(slot, &gname, a, n, judged_wrong))
}

/// NaN/infinite entries, an all-zero gradient, or a one-element tensor (its sign, or no
/// pattern to find).
fn degenerate(gname: &str, a: &[f64], n: &[f64]) -> Option<Diagnosis> {
    let bad = a.iter().filter(|v| !v.is_finite()).count();
    if bad > 0 {
        return Some(Diagnosis {
            kind: MistakeKind::NotFinite,
            factor: None,
            message: format!("{gname} has {bad} NaN/infinite entries"),
        });
    }
    let nn = norm(n);
    if norm(a) == 0.0 && nn > 0.0 {
        return Some(Diagnosis {
            kind: MistakeKind::AllZero,
            factor: None,
            message: format!(
                "{gname} is all zero but the numeric gradient is not (a missing or never-written gradient?)"
            ),
        });
    }
    if a.len() == 1 && nn > 0.0 && close(a[0], -n[0]) {
        return Some(Diagnosis {
            kind: MistakeKind::SignFlipped,
            factor: Some(-1.0),
            message: format!(
                "{gname} = {:.6e} has the wrong sign (the numeric gradient is {:.6e})",
                a[0], n[0]
            ),
        });
    }
    if a.len() == 1 && nn > 0.0 {
        return Some(Diagnosis {
            kind: MistakeKind::Elementwise,
            factor: None,
            message: format!(
                "{gname} = {:.6e} where the numeric gradient is {:.6e} (one element shows no pattern)",
                a[0], n[0]
            ),
        });
    }
    None
}

/// The whole tensor a multiple of the numeric gradient (the sign, m, 1/m, any factor) or
/// its transpose.
fn whole_tensor_pattern(
    slot: &TensorSlot,
    gname: &str,
    a: &[f64],
    n: &[f64],
    m: usize,
    resolution: f64,
) -> Option<Diagnosis> {
    let nn = norm(n);
    if nn == 0.0 {
        return None;
    }
    // Equal to m (or 1/m) within what the numeric gradient resolves, not just within the
    // fit tolerance: a factor of 3.02 with m = 3 is a scaling, not a missing 1/m.
    let exactly = |c: f64, want: f64| {
        (c - want).abs() <= (4.0 * resolution).clamp(1e-9, FIT_TOLERANCE) * want.abs()
    };
    // Least-squares factor c minimising ‖a − c·n‖.
    let c = a.iter().zip(n).map(|(x, y)| x * y).sum::<f64>() / (nn * nn);
    if residual(a, n.iter().map(|y| c * y)) <= FIT_TOLERANCE && !close(c, 1.0) {
        let mf = m as f64;
        let (kind, message) = if close(c, -1.0) {
            (
                MistakeKind::SignFlipped,
                format!("{gname} has the wrong sign (−1 × the numeric gradient)"),
            )
        } else if m > 1 && exactly(c, mf) {
            (
                MistakeKind::MissingAveraging,
                format!(
                    "{gname} is {} × the numeric gradient = m: the 1/m averaging is missing",
                    factor(c)
                ),
            )
        } else if m > 1 && exactly(c, 1.0 / mf) {
            (
                MistakeKind::DoubledAveraging,
                format!(
                    "{gname} is {} × the numeric gradient = 1/m: the 1/m averaging is applied twice",
                    factor(c)
                ),
            )
        } else {
            (
                MistakeKind::Scaled,
                format!("{gname} is {} × the numeric gradient", factor(c)),
            )
        };
        return Some(Diagnosis {
            kind,
            factor: Some(c),
            message,
        });
    }
    if slot.kind == TensorKind::Weight && slot.rows == slot.cols && slot.rows > 1 {
        let k = slot.rows;
        if residual(a, (0..a.len()).map(|i| n[(i % k) * k + i / k])) <= FIT_TOLERANCE {
            return Some(Diagnosis {
                kind: MistakeKind::Transposed,
                factor: None,
                message: format!("{gname} is the transpose of the numeric gradient"),
            });
        }
    }
    None
}

/// No pattern: which rows and columns hold the wrong elements (those the error model
/// judged wrong, when known).
fn where_wrong(
    slot: &TensorSlot,
    gname: &str,
    a: &[f64],
    n: &[f64],
    judged_wrong: Option<&[bool]>,
) -> Option<Diagnosis> {
    let nn = norm(n);
    let scale = (nn * nn / n.len().max(1) as f64).sqrt();
    let tol = ELEMENT_TOLERANCE * scale + 1e-12;
    let wrong: Vec<usize> = (0..a.len())
        .filter(|&i| match judged_wrong {
            Some(w) => w[i],
            None => (a[i] - n[i]).abs() > tol,
        })
        .collect();
    if wrong.is_empty() {
        return None;
    }
    let mut rows: Vec<usize> = wrong.iter().map(|i| i / slot.cols).collect();
    rows.dedup();
    let mut cols: Vec<usize> = wrong.iter().map(|i| i % slot.cols).collect();
    cols.sort_unstable();
    cols.dedup();
    let list = |v: &[usize]| {
        let s: Vec<String> = v.iter().take(8).map(|x| x.to_string()).collect();
        if v.len() > 8 {
            format!("{}, … ({} in all)", s.join(", "), v.len())
        } else {
            s.join(", ")
        }
    };
    let place = match slot.kind {
        TensorKind::Bias => format!("rows {}", list(&rows)),
        TensorKind::Weight => format!("rows {}; columns {}", list(&rows), list(&cols)),
    };
    Some(Diagnosis {
        kind: MistakeKind::Elementwise,
        factor: None,
        message: format!(
            "{gname} is wrong in {} of {} elements ({place})",
            wrong.len(),
            a.len()
        ),
    })
}

/// Diagnoses every failing tensor of a report from the analytic gradient `grad` and the
/// report's central differences, then recognises swapped pairs.
pub fn diagnose_report(report: &mut Report, layout: &ParamLayout, grad: &[f64], m: usize) {
    let approx = &report.gradapprox;
    for (t, slot) in report.tensors.iter_mut().zip(layout.tensors()) {
        if t.verdict == Verdict::Fail {
            let r = slot.range();
            let wrong = report.wrong_elements.get(r.clone());
            t.diagnosis =
                diagnose_tensor_with(slot, &grad[r.clone()], &approx[r], m, t.resolution, wrong);
        }
    }
    let approx = std::mem::take(&mut report.gradapprox);
    find_swaps(layout, grad, &approx, &mut report.tensors);
    report.gradapprox = approx;
    layout_hint(layout, &mut report.tensors);
}

/// Every square weight transposed: not a slip in each layer but arrays in the other
/// layout (samples first, W as (n_in, n_out)) — say which switch fits.
fn layout_hint(layout: &ParamLayout, tensors: &mut [TensorReport]) {
    let square: Vec<usize> = layout
        .tensors()
        .iter()
        .enumerate()
        .filter(|(_, s)| s.kind == TensorKind::Weight && s.rows == s.cols && s.rows > 1)
        .map(|(t, _)| t)
        .collect();
    let transposed = |t: usize| {
        tensors[t]
            .diagnosis
            .as_ref()
            .is_some_and(|d| d.kind == MistakeKind::Transposed)
    };
    if square.len() < 2 || !square.iter().all(|&t| transposed(t)) {
        return;
    }
    for &t in &square {
        if let Some(d) = tensors[t].diagnosis.as_mut() {
            d.message.push_str(
                " — as is every square weight: the gradients are laid out samples first (W as (n_in, n_out)); transpose them, or give the whole model in that layout (\"layout\": \"samples_first\")",
            );
        }
    }
}

/// Recognises pairs of failing same-shape tensors whose gradients were swapped, and
/// replaces their diagnoses.
pub fn find_swaps(
    layout: &ParamLayout,
    grad: &[f64],
    approx: &[f64],
    tensors: &mut [TensorReport],
) {
    let slots = layout.tensors();
    for s in 0..slots.len() {
        for t in s + 1..slots.len() {
            if tensors[s].verdict != Verdict::Fail || tensors[t].verdict != Verdict::Fail {
                continue;
            }
            let (rs, rt) = (slots[s].range(), slots[t].range());
            if slots[s].rows != slots[t].rows || slots[s].cols != slots[t].cols {
                continue;
            }
            if difference(&grad[rs.clone()], &approx[rt.clone()]) <= FIT_TOLERANCE
                && difference(&grad[rt], &approx[rs]) <= FIT_TOLERANCE
            {
                let (ns, nt) = (slots[s].name.clone(), slots[t].name.clone());
                for (k, me, other) in [(s, &ns, &nt), (t, &nt, &ns)] {
                    tensors[k].diagnosis = Some(Diagnosis {
                        kind: MistakeKind::Swapped,
                        factor: None,
                        message: format!(
                            "d{me} holds the gradient of {other}: d{ns} and d{nt} are swapped"
                        ),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(rows: usize, cols: usize) -> TensorSlot {
        TensorSlot {
            name: "W2".into(),
            layer: 1,
            kind: TensorKind::Weight,
            rows,
            cols,
            offset: 0,
            shape: vec![rows, cols],
            fan_in: cols,
        }
    }

    fn numeric(n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| ((i * 7919) % 23) as f64 / 7.0 - 1.3)
            .collect()
    }

    #[test]
    fn recognises_each_pattern() {
        let s = slot(3, 3);
        let n = numeric(9);
        let scaled: Vec<f64> = n.iter().map(|v| 2.0 * v).collect();
        let d = diagnose_tensor(&s, &scaled, &n, 5, 1e-12).unwrap();
        assert_eq!(d.kind, MistakeKind::Scaled);
        assert!((d.factor.unwrap() - 2.0).abs() < 1e-12);
        let neg: Vec<f64> = n.iter().map(|v| -v).collect();
        assert_eq!(
            diagnose_tensor(&s, &neg, &n, 5, 1e-12).unwrap().kind,
            MistakeKind::SignFlipped
        );
        let by_m: Vec<f64> = n.iter().map(|v| 5.0 * v).collect();
        assert_eq!(
            diagnose_tensor(&s, &by_m, &n, 5, 1e-12).unwrap().kind,
            MistakeKind::MissingAveraging
        );
        let t: Vec<f64> = (0..9).map(|i| n[(i % 3) * 3 + i / 3]).collect();
        assert_eq!(
            diagnose_tensor(&s, &t, &n, 5, 1e-12).unwrap().kind,
            MistakeKind::Transposed
        );
        assert_eq!(
            diagnose_tensor(&s, &[0.0; 9], &n, 5, 1e-12).unwrap().kind,
            MistakeKind::AllZero
        );
        let mut one = n.clone();
        one[4] += 1.0;
        let d = diagnose_tensor(&s, &one, &n, 5, 1e-12).unwrap();
        assert_eq!(d.kind, MistakeKind::Elementwise);
        assert!(
            d.message.contains("1 of 9") && d.message.contains("rows 1; columns 1"),
            "{}",
            d.message
        );
        let mut nan = n.clone();
        nan[0] = f64::NAN;
        assert_eq!(
            diagnose_tensor(&s, &nan, &n, 5, 1e-12).unwrap().kind,
            MistakeKind::NotFinite
        );
    }
}
