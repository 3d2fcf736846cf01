//! The per-element math every layer type and cost shares, in f64: activations' and
//! losses' values and their closed-form changes (the Δ path: g(z + dz) − g(z) and
//! loss(z + Δz) − loss(z) without subtracting two rounded values). The GPU's shaders
//! (`shaders/common.wgsl` `act_delta`, `shaders/cost.wgsl` `sample_loss_delta`) are their
//! twins.
//!
//! May use: `model`.

use crate::model::{Activation, Loss};

/// The loss of one sample from its output pre-activations `z` (nL values) and targets `y`.
pub fn sample_loss(loss: Loss, out: Activation, z: &[f64], y: &[f64]) -> f64 {
    match loss {
        Loss::BinaryCrossEntropy => {
            // The notebook's expression, operation for operation.
            let mut s = 0.0;
            for (&zi, &yi) in z.iter().zip(y) {
                let a = out.apply(zi);
                s += (-a.ln()) * yi + (-(1.0 - a).ln()) * (1.0 - yi);
            }
            s
        }
        Loss::SoftmaxCrossEntropy => {
            let mx = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let mut se = 0.0;
            for &zi in z {
                se += (zi - mx).exp();
            }
            let lse = mx + se.ln();
            let mut s = 0.0;
            for (&zi, &yi) in z.iter().zip(y) {
                s += yi * (lse - zi);
            }
            s
        }
        Loss::MeanSquaredError => {
            let mut s = 0.0;
            for (&zi, &yi) in z.iter().zip(y) {
                let d = out.apply(zi) - yi;
                s += 0.5 * d * d;
            }
            s
        }
    }
}

/// softplus(z) = log(1 + e^z), without overflow or cancellation.
pub fn softplus(z: f64) -> f64 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}

/// σ(z) without overflow for large |z|.
pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// 1 − |tanh z| = 2/(1 + e^{2|z|}), without cancellation.
pub fn tanh_complement(z: f64) -> f64 {
    2.0 / (1.0 + (2.0 * z.abs()).exp())
}

/// g(z0 + dz) − g(z0) without subtracting two nearly equal rounded values.
#[inline(always)]
pub fn act_delta(g: Activation, z0: f64, dz: f64) -> f64 {
    let z1 = z0 + dz;
    match g {
        Activation::Relu | Activation::LeakyRelu(_) => {
            if z0 > 0.0 && z1 > 0.0 {
                dz
            } else if z0 <= 0.0 && z1 <= 0.0 {
                g.slope() * dz
            } else {
                // A crossing (flagged as a kink): one side is exactly slope·z.
                g.apply(z1) - g.apply(z0)
            }
        }
        // σ(z + d) − σ(z) = σ(z + d)·σ(−z)·(1 − e^−d).
        Activation::Sigmoid => sigmoid(z1) * sigmoid(-z0) * (-expm1(-dz)),
        // tanh a − tanh b = (1 − tanh a·tanh b)·tanh(a − b).
        Activation::Tanh => {
            let t0 = z0.tanh();
            let c = if (z0 >= 0.0) == (z1 >= 0.0) {
                tanh_complement(z0) + t0.abs() * tanh_complement(z1)
            } else {
                1.0 + (t0 * z1.tanh()).abs()
            };
            c * if dz.abs() < 1e-4 {
                // tanh d = d − d³/3 + 2d⁵/15: exact in f64 here.
                dz * (1.0 - dz * dz / 3.0)
            } else {
                dz.tanh()
            }
        }
        Activation::Identity | Activation::Softmax => dz,
    }
}

/// e^x − 1 − x, accurate for small x.
fn exp_tail(x: f64) -> f64 {
    if x.abs() < 1e-3 {
        x * x * (0.5 + x * (1.0 / 6.0 + x * (1.0 / 24.0 + x / 120.0)))
    } else {
        x.exp_m1() - x
    }
}

/// log(1 + s) − s, accurate for small s.
fn log1p_tail(s: f64) -> f64 {
    if s.abs() < 1e-3 {
        s * s * (-0.5 + s * (1.0 / 3.0 + s * (-0.25 + s * (0.2 - s / 6.0))))
    } else {
        s.ln_1p() - s
    }
}

/// The loss of one sample through softplus of the logit (BCE) or log-sum-exp (softmax CE):
/// finite and accurate where the notebook's −log(1 − σ(z)) gives inf (σ(z) = 1 in f64).
pub fn sample_loss_stable(loss: Loss, out: Activation, z: &[f64], y: &[f64]) -> f64 {
    match loss {
        Loss::BinaryCrossEntropy => z
            .iter()
            .zip(y)
            .map(|(&zi, &yi)| yi * softplus(-zi) + (1.0 - yi) * softplus(zi))
            .sum(),
        _ => sample_loss(loss, out, z, y),
    }
}

/// loss(z0 + Δz) − loss(z0) of one sample in closed forms (the GPU's `sample_loss_delta`).
pub fn loss_delta(loss: Loss, out: Activation, z0: &[f64], dz: &[f64], y: &[f64]) -> f64 {
    match loss {
        // softplus(u + d) − softplus(u) = log1p(σ(u)·expm1(d)).
        Loss::BinaryCrossEntropy => z0
            .iter()
            .zip(dz)
            .zip(y)
            .map(|((&z, &d), &y)| {
                y * (sigmoid(-z) * (-d).exp_m1()).ln_1p()
                    + (1.0 - y) * (sigmoid(z) * d.exp_m1()).ln_1p()
            })
            .sum(),
        // Δloss = Σ (Y·p_c − y_c)·Δz_c + Y·(Q + log1p_tail(S)), S = Σ p_c·expm1(Δz_c),
        // Q = Σ p_c·exp_tail(Δz_c), Y = Σ y_c; Y·p_c − y_c from the "others" sums, summed
        // afresh when one term dominates (exact zeros for one-hot y).
        Loss::SoftmaxCrossEntropy => {
            let mx = z0.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = z0.iter().map(|z| (z - mx).exp()).collect();
            let se: f64 = e.iter().sum();
            let yy: f64 = y.iter().sum();
            let (mut lin, mut sm, mut q) = (0.0, 0.0, 0.0);
            for c in 0..z0.len() {
                let (ec, yc) = (e[c], y[c]);
                let (mut other_e, mut other_y) = (se - ec, yy - yc);
                if 2.0 * ec > se || 2.0 * yc > yy {
                    other_e = (0..z0.len()).filter(|&d| d != c).map(|d| e[d]).sum();
                    other_y = (0..z0.len()).filter(|&d| d != c).map(|d| y[d]).sum();
                }
                lin += (other_y * ec - yc * other_e) / se * dz[c];
                let pc = ec / se;
                sm += pc * dz[c].exp_m1();
                q += pc * exp_tail(dz[c]);
            }
            lin + yy * (q + log1p_tail(sm))
        }
        // ½(a + Δa − y)² − ½(a − y)² = Δa·((a − y) + Δa/2).
        Loss::MeanSquaredError => z0
            .iter()
            .zip(dz)
            .zip(y)
            .map(|((&z, &d), &y)| {
                let da = act_delta(out, z, d);
                da * ((out.apply(z) - y) + 0.5 * da)
            })
            .sum(),
    }
}

/// e^x − 1: a four-term series where it is exact in f64 (|x| < 1e-4: the next term is
/// below 1e-18 relative), std's exp_m1 elsewhere. The Δ path calls it per sample and
/// perturbation, mostly with tiny arguments.
pub(crate) fn expm1(x: f64) -> f64 {
    if x.abs() < 1e-4 {
        x * (1.0 + x * (0.5 + x * (1.0 / 6.0 + x * (1.0 / 24.0))))
    } else {
        x.exp_m1()
    }
}

/// log(1 + x), likewise (|x| < 1e-4: next term below 2e-17 relative).
pub(crate) fn log1p(x: f64) -> f64 {
    if x.abs() < 1e-4 {
        x * (1.0 + x * (-0.5 + x * (1.0 / 3.0 + x * (-0.25))))
    } else {
        x.ln_1p()
    }
}

/// How much one output's rounding moves its sample's loss, per unit roundoff: the
/// conditioning term of the plain paths' noise scale (−log(1 − a) turns the rounding of
/// a ≈ 1 into u·a/(1 − a)).
pub fn loss_conditioning(loss: Loss, z: f64, a: f64, y: f64) -> f64 {
    match loss {
        Loss::BinaryCrossEntropy => {
            y.abs() + (1.0 - y).abs() * a / (1.0 - a).max(f64::MIN_POSITIVE)
        }
        Loss::SoftmaxCrossEntropy => y.abs() * (1.0 + z.abs()),
        Loss::MeanSquaredError => (a - y).abs() * (a.abs() + z.abs()),
    }
}

/// Σ a_t·b_t with four accumulators (the Δ path's dot products: vectorisable; their
/// rounding is part of the error bound, they need not match any other order).
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..4 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}
