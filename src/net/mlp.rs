//! The fully connected network's reference math in f64 (the MLP shorthand): the forward
//! pass and cost, the built-in backprop (the "known good" gradient, with dropout's slips
//! for the diagnoses), and each gradient element's term sizes for the verdict's error
//! model. The evaluators (eval::cpu, eval::gpu) are built on it.
//!
//! May use: `model`, `net::math`.

use ndarray::{Array2, ArrayView2, Axis};

use crate::model::{Data, Grads, Loss, Model, Params};

use super::math::{sample_loss, sample_loss_stable};

/// The base forward pass, kept for the perturbations.
#[derive(Debug, Clone)]
pub struct Forward {
    /// Pre-activations Z_l, n_l × m, one per layer.
    pub z: Vec<Array2<f64>>,
    /// Activations A_l = g(Z_l), n_l × m, one per layer (the last one is the output).
    pub a: Vec<Array2<f64>>,
    /// Per-sample loss (summed over output rows, before the 1/m).
    pub sample_loss: Vec<f64>,
    /// Σ_l ‖W_l‖²_F, for the L2 term.
    pub weight_sumsq: f64,
    /// J(θ).
    pub cost: f64,
}

/// Z = W·A + b with each dot product accumulated by fused multiply-adds in index order:
/// exactly what OpenBLAS's dgemm (numpy's `W @ A`) does for these shapes, which is what
/// makes the notebook's rounding noise, and so its 1.19e-7, reproduce to the last digits.
/// The GPU kernels accumulate the same way (WGSL `fma`).
pub(crate) fn affine(w: ArrayView2<'_, f64>, b: &[f64], input: ArrayView2<'_, f64>) -> Array2<f64> {
    let (rows, n, m) = (w.nrows(), w.ncols(), input.ncols());
    // Contiguous copies: W's rows and the input's columns (one per sample).
    let wv: Vec<f64> = w.iter().copied().collect();
    let xt: Vec<f64> = input.t().iter().copied().collect();
    let mut z = vec![0.0; rows * m];
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has FMA (checked just above).
            unsafe { affine_fma(&wv, &xt, n, m, &mut z) };
        } else {
            affine_kernel(&wv, &xt, n, m, &mut z);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    affine_kernel(&wv, &xt, n, m, &mut z);
    for (i, row) in z.chunks_exact_mut(m.max(1)).enumerate() {
        row.iter_mut().for_each(|v| *v += b[i]);
    }
    Array2::from_shape_vec((rows, m), z).expect("rows × m")
}

/// [`affine_kernel`] compiled with hardware FMA: `mul_add` becomes one instruction
/// instead of a library call (an FMA is correctly rounded either way: the same bits).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn affine_fma(w: &[f64], xt: &[f64], n: usize, m: usize, z: &mut [f64]) {
    affine_kernel(w, xt, n, m, z);
}

/// z[i·m + j] = Σ_t W[i, t]·x_j[t], each sum an FMA chain in index order; four samples at
/// a time so that four independent chains hide the FMA latency.
#[inline(always)]
pub(crate) fn affine_kernel(w: &[f64], xt: &[f64], n: usize, m: usize, z: &mut [f64]) {
    for (i, wr) in w
        .chunks_exact(n.max(1))
        .enumerate()
        .take(z.len() / m.max(1))
    {
        let zr = &mut z[i * m..(i + 1) * m];
        let mut j = 0;
        while j + 4 <= m {
            let (x0, x1, x2, x3) = (
                &xt[j * n..(j + 1) * n],
                &xt[(j + 1) * n..(j + 2) * n],
                &xt[(j + 2) * n..(j + 3) * n],
                &xt[(j + 3) * n..(j + 4) * n],
            );
            let mut s = [0.0f64; 4];
            for t in 0..n {
                let wt = wr[t];
                s[0] = wt.mul_add(x0[t], s[0]);
                s[1] = wt.mul_add(x1[t], s[1]);
                s[2] = wt.mul_add(x2[t], s[2]);
                s[3] = wt.mul_add(x3[t], s[3]);
            }
            zr[j..j + 4].copy_from_slice(&s);
            j += 4;
        }
        for (jj, out) in zr.iter_mut().enumerate().skip(j) {
            let x = &xt[jj * n..(jj + 1) * n];
            let mut s = 0.0;
            for t in 0..n {
                s = wr[t].mul_add(x[t], s);
            }
            *out = s;
        }
    }
}

/// J from the per-sample losses (summed in sample order) and the weights' sum of squares.
pub(crate) fn total_cost(model: &Model, m: usize, losses: &[f64], weight_sumsq: f64) -> f64 {
    let mut s = 0.0;
    for &v in losses {
        s += v;
    }
    let mut j = (1.0 / m as f64) * s;
    if model.l2() != 0.0 {
        j += model.l2() / (2.0 * m as f64) * weight_sumsq;
    }
    j
}

/// The forward pass and cost at θ.
pub fn forward(model: &Model, params: &Params, data: &Data) -> Forward {
    let depth = model.depth();
    let mut z = Vec::with_capacity(depth);
    let mut a: Vec<Array2<f64>> = Vec::with_capacity(depth);
    for l in 0..depth {
        let input = if l == 0 {
            data.x.view()
        } else {
            a[l - 1].view()
        };
        let b = params.bias(l);
        let zl = affine(params.weight(l), b.as_slice().expect("contiguous"), input);
        let g = model.activation(l);
        let mut al = zl.mapv(|v| g.apply(v));
        if let Some(mask) = mask(data, l) {
            al *= mask;
        }
        a.push(al);
        z.push(zl);
    }
    let m = data.m();
    let out = model.activation(depth - 1);
    let zl = &z[depth - 1];
    let sample_loss: Vec<f64> = (0..m)
        .map(|j| {
            let zc: Vec<f64> = zl.column(j).to_vec();
            let yc: Vec<f64> = data.y.column(j).to_vec();
            sample_loss(model.loss(), out, &zc, &yc)
        })
        .collect();
    let weight_sumsq = (0..depth)
        .map(|l| params.weight(l).iter().map(|w| w * w).sum::<f64>())
        .sum();
    let cost = total_cost(model, m, &sample_loss, weight_sumsq);
    Forward {
        z,
        a,
        sample_loss,
        weight_sumsq,
        cost,
    }
}

/// The magnitude whose rounding is the noise in each J±: per sample |loss_j| plus the
/// cost's conditioning, averaged over samples, plus the L2 term. For the notebook's
/// binary cross-entropy, −log(1 − a) turns the rounding of a (≈ u) into an absolute error
/// u·a/(1 − a): on the seed net one sample has a = 0.9989, which alone makes the noise
/// ~300·u per J and explains its per-tensor differences of ~3e-7.
pub fn noise_scale(model: &Model, fwd: &Forward, data: &Data) -> f64 {
    let out = model.depth() - 1;
    let m = data.m() as f64;
    let mut total = 0.0;
    for j in 0..data.m() {
        let mut s = fwd.sample_loss[j].abs();
        for i in 0..fwd.z[out].nrows() {
            let (z, a, y) = (fwd.z[out][[i, j]], fwd.a[out][[i, j]], data.y[[i, j]]);
            s += crate::net::math::loss_conditioning(model.loss(), z, a, y);
        }
        total += s;
    }
    total / m + model.l2() / (2.0 * m) * fwd.weight_sumsq
}

/// The dropout factor D_l/keep_prob of 0-based layer `l`, if it has dropout.
pub(crate) fn mask(data: &Data, l: usize) -> Option<&Array2<f64>> {
    data.masks.get(l).and_then(Option::as_ref)
}

/// The factor element (i, j) of layer l's activations is multiplied by (1 without dropout).
pub(crate) fn mask_at(data: &Data, l: usize, i: usize, j: usize) -> f64 {
    mask(data, l).map_or(1.0, |m| m[[i, j]])
}

/// How a backward pass treats a dropout layer: correctly, or with one of the classic
/// slips (the diagnosis compares a failing gradient with each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropoutBackward {
    /// dA ⊙ D / keep_prob.
    Correct,
    /// dA / keep_prob: the mask is not applied.
    MaskMissing,
    /// dA ⊙ D: the 1/keep_prob scaling is not applied.
    ScaleMissing,
    /// dA: dropout ignored in the backward pass.
    Ignored,
}

/// J(θ).
pub fn cost(model: &Model, params: &Params, data: &Data) -> f64 {
    forward(model, params, data).cost
}

/// The analytic gradient dJ/dθ by backpropagation: the built-in "known good" gradients.
pub fn backprop(model: &Model, params: &Params, data: &Data) -> Grads {
    backprop_with(model, params, data, |_| DropoutBackward::Correct)
}

/// [`backprop`] with the dropout of each 1-based layer treated as `how(layer)` says.
pub fn backprop_with(
    model: &Model,
    params: &Params,
    data: &Data,
    how: impl Fn(usize) -> DropoutBackward,
) -> Grads {
    let fwd = forward(model, params, data);
    let depth = model.depth();
    let m = data.m() as f64;
    let out = depth - 1;
    let (zl, al) = (&fwd.z[out], &fwd.a[out]);
    // dJ/dZ_L times m.
    let mut dz: Array2<f64> = match model.loss() {
        Loss::BinaryCrossEntropy => al - &data.y,
        Loss::SoftmaxCrossEntropy => {
            let mut d = Array2::zeros(zl.raw_dim());
            for j in 0..zl.ncols() {
                let col = zl.column(j);
                let mx = col.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let se: f64 = col.iter().map(|v| (v - mx).exp()).sum();
                let ysum: f64 = data.y.column(j).sum();
                for i in 0..zl.nrows() {
                    d[[i, j]] = (col[i] - mx).exp() / se * ysum - data.y[[i, j]];
                }
            }
            d
        }
        Loss::MeanSquaredError => {
            let g = model.activation(out);
            let mut d = al - &data.y;
            ndarray::Zip::from(&mut d)
                .and(zl)
                .and(al)
                .for_each(|d, &z, &a| *d *= g.derivative(z, a));
            d
        }
    };
    let mut values = vec![0.0; model.n_params()];
    let layout = model.layout();
    for l in (0..depth).rev() {
        let input = if l == 0 {
            data.x.view()
        } else {
            fwd.a[l - 1].view()
        };
        let mut dw = dz.dot(&input.t()) * (1.0 / m);
        if model.l2() != 0.0 {
            dw.scaled_add(model.l2() / m, &params.weight(l));
        }
        let db = dz.sum_axis(Axis(1)) * (1.0 / m);
        // Row-major whatever layout ndarray's product chose (m = 1 gives column-major).
        for (v, d) in values[layout.weight(l).range()].iter_mut().zip(dw.iter()) {
            *v = *d;
        }
        for (v, d) in values[layout.bias(l).range()].iter_mut().zip(db.iter()) {
            *v = *d;
        }
        if l > 0 {
            let g = model.activation(l - 1);
            let mut da = params.weight(l).t().dot(&dz);
            if let (Some(f), Some(d)) = (mask(data, l - 1), model.dropout()) {
                match how(l) {
                    DropoutBackward::Correct => da *= f,
                    DropoutBackward::MaskMissing => da *= 1.0 / d.keep_prob,
                    DropoutBackward::ScaleMissing => {
                        da *= &f.mapv(|v| f64::from(u8::from(v != 0.0)))
                    }
                    DropoutBackward::Ignored => {}
                }
            }
            // g' from the unmasked activation (a masked A_l is not g(Z_l)).
            ndarray::Zip::from(&mut da)
                .and(&fwd.z[l - 1])
                .for_each(|d, &z| *d *= g.derivative(z, g.apply(z)));
            dz = da;
        }
    }
    Grads::new(layout.clone(), values).expect("layout length")
}

/// Per gradient element, the size of the terms a backprop sums to form it: the same
/// backward pass with every quantity replaced by its absolute value (|W|ᵀ, |g'|, |inputs|),
/// so that an element's rounding can be bounded by its own terms — a small element of a
/// column of tiny inputs gets a tiny bound, and one formed with cancellation a large one —
/// instead of by a tensor-wide floor.
#[derive(Debug, Clone, PartialEq)]
pub struct TermSizes {
    /// The analytic side: as the textbook formulas compute it from the rounded forward
    /// pass (A − Y from A and Y, 1 − A² and A·(1 − A) from A: see
    /// [`crate::model::Activation::derivative_term_size`]); saturated units make these large.
    pub analytic: Vec<f64>,
    /// The numeric side: the per-sample derivatives' own terms (|dZ_L|, |g'|), what the
    /// Δ path's per-sample changes are summed from.
    pub numeric: Vec<f64>,
}

/// F_l, the size of what a forward pass sums into each Z_l: |W_l|·(|A_{l−1}| + |g'|·F_{l−1})
/// plus |b_l|, the input's own error carried through |g'|. u·F_l bounds (up to the growth
/// factor) how far a forward pass's rounding can move Z_l.
pub(crate) fn forward_sums(
    model: &Model,
    params: &Params,
    data: &Data,
    fwd: &Forward,
) -> Vec<Array2<f64>> {
    let mut sums: Vec<Array2<f64>> = Vec::with_capacity(model.depth());
    for l in 0..model.depth() {
        let input = if l == 0 {
            data.x.mapv(f64::abs)
        } else {
            let g = model.activation(l - 1);
            let mut inp = fwd.a[l - 1].mapv(f64::abs);
            ndarray::Zip::from(&mut inp)
                .and(&fwd.z[l - 1])
                .and(&sums[l - 1])
                .for_each(|v, &z, &f| *v += g.derivative(z, g.apply(z)).abs() * f);
            if let Some(mk) = mask(data, l - 1) {
                inp *= &mk.mapv(f64::abs);
            }
            inp
        };
        let b = params.bias(l).mapv(f64::abs).insert_axis(Axis(1));
        sums.push(params.weight(l).mapv(f64::abs).dot(&input) + &b);
    }
    sums
}

/// [`TermSizes`] of every parameter at θ.
pub fn term_sizes(model: &Model, params: &Params, data: &Data) -> TermSizes {
    let fwd = forward(model, params, data);
    TermSizes {
        analytic: abs_backprop(model, params, data, &fwd, true),
        numeric: abs_backprop(model, params, data, &fwd, false),
    }
}

/// [`backprop`] in absolute values (`formula_terms`: the analytic side's, see [`TermSizes`]).
pub(crate) fn abs_backprop(
    model: &Model,
    params: &Params,
    data: &Data,
    fwd: &Forward,
    formula_terms: bool,
) -> Vec<f64> {
    let depth = model.depth();
    let m = data.m() as f64;
    let out = depth - 1;
    let (zl, al) = (&fwd.z[out], &fwd.a[out]);
    let g_out = model.activation(out);
    // The analytic side also ran its own forward pass: its Z_l are off by rounding relative
    // to what was summed into them (F_l), which moves every g' and dZ_L by g''·δz — for a
    // confident output (a ≈ y) a large relative change of a − y.
    let sums = if formula_terms {
        forward_sums(model, params, data, fwd)
    } else {
        Vec::new()
    };
    // |dJ/dZ_L|·m, or the sizes of what it is formed from.
    let mut dz: Array2<f64> = Array2::zeros(zl.raw_dim());
    for j in 0..zl.ncols() {
        let ysum: f64 = data.y.column(j).sum();
        let col = zl.column(j);
        let mx = col.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let se: f64 = col.iter().map(|v| (v - mx).exp()).sum();
        for i in 0..zl.nrows() {
            let (z, a, y) = (zl[[i, j]], al[[i, j]], data.y[[i, j]]);
            dz[[i, j]] = match (model.loss(), formula_terms) {
                (Loss::BinaryCrossEntropy, false) => (a - y).abs(),
                (Loss::BinaryCrossEntropy, true) => {
                    a.abs() + y.abs() + a * (1.0 - a) * sums[out][[i, j]]
                }
                (Loss::SoftmaxCrossEntropy, false) => ((z - mx).exp() / se * ysum - y).abs(),
                (Loss::SoftmaxCrossEntropy, true) => {
                    let p = (z - mx).exp() / se;
                    (p * ysum).abs() + y.abs() + p * (1.0 - p) * ysum.abs() * sums[out][[i, j]]
                }
                (Loss::MeanSquaredError, false) => (a - y).abs() * g_out.derivative(z, a).abs(),
                (Loss::MeanSquaredError, true) => {
                    let g1 = g_out.derivative(z, a).abs();
                    (a.abs() + y.abs()) * g_out.derivative_term_size(z, a)
                        + (g1 * g1 + (a - y).abs() * g_out.second_derivative_size(a))
                            * sums[out][[i, j]]
                }
            };
        }
    }
    let mut values = vec![0.0; model.n_params()];
    let layout = model.layout();
    for l in (0..depth).rev() {
        let input = if l == 0 {
            data.x.mapv(f64::abs)
        } else {
            fwd.a[l - 1].mapv(f64::abs)
        };
        let mut dw = dz.dot(&input.t()) * (1.0 / m);
        let w_abs = params.weight(l).mapv(f64::abs);
        if model.l2() != 0.0 {
            dw.scaled_add(model.l2() / m, &w_abs);
        }
        let db = dz.sum_axis(Axis(1)) * (1.0 / m);
        for (v, d) in values[layout.weight(l).range()].iter_mut().zip(dw.iter()) {
            *v = *d;
        }
        for (v, d) in values[layout.bias(l).range()].iter_mut().zip(db.iter()) {
            *v = *d;
        }
        if l > 0 {
            let g = model.activation(l - 1);
            let mut da = w_abs.t().dot(&dz);
            if let Some(f) = mask(data, l - 1) {
                da *= &f.mapv(f64::abs);
            }
            let none = Array2::zeros((0, 0));
            let f = if formula_terms { &sums[l - 1] } else { &none };
            ndarray::Zip::indexed(&mut da)
                .and(&fwd.z[l - 1])
                .for_each(|(i, j), d, &z| {
                    let a = g.apply(z);
                    *d *= if formula_terms {
                        g.derivative_term_size(z, a) + g.second_derivative_size(a) * f[[i, j]]
                    } else {
                        g.derivative(z, a).abs()
                    };
                });
            dz = da;
        }
    }
    values
}

/// J(θ) with the losses in their stable forms ([`sample_loss_stable`]).
pub fn stable_cost(model: &Model, fwd: &Forward, data: &Data) -> f64 {
    let out = model.depth() - 1;
    let zl = &fwd.z[out];
    let losses: Vec<f64> = (0..data.m())
        .map(|j| {
            let z: Vec<f64> = zl.column(j).to_vec();
            let y: Vec<f64> = data.y.column(j).to_vec();
            sample_loss_stable(model.loss(), model.activation(out), &z, &y)
        })
        .collect();
    total_cost(model, data.m(), &losses, fwd.weight_sumsq)
}
