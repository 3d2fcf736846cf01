//! The MLP's piecewise-linear shortcut tables, built once from the base pass at θ and read
//! by both evaluators' Δ paths (the CPU's `eval::cpu`, the GPU's fused kernels): past layer
//! l, a change of row r reaches the output as v·t while t stays inside an interval that
//! crosses no kink.
//!
//! May use: `model`, `net` (the reference math below the evaluators).

use ndarray::Array2;
use rayon::prelude::*;

use super::math::dot;
use super::mlp::{Forward, mask};
use crate::model::{Activation, Data, Model, Params};

/// Past layer l, a perturbation of row r reaches the output, sample by sample, through
/// ΔZ_out[:, j] = v_{r,j}·t with t = ΔA_l[r, j] — exactly, as long as no ReLU/leaky kink
/// after layer l is crossed (each layer is then linear on its side): v is the chain
/// W_L·D_{L−1}·…·D_{l+2}·W_{l+2}·D_{l+1}·W_{l+1}[:, r] with D the slopes (and dropout
/// factors) at the base pass, and the t that cross no kink form an interval. Inside it a
/// perturbation costs O(nL) per sample instead of the dense layers; outside, the exact
/// path runs. The rounding differs from the layer-by-layer path by the same dot products
/// regrouped, which the error bound's growth factor covers.
///
/// The GPU's fused kernel reads the same tables ([`shortcuts`]).
pub struct Shortcut {
    /// [(r·m + j)·nL + o]: the output's change per unit of t.
    pub v: Vec<f64>,
    /// [r·m + j]: the open interval (lo, hi) of t crossing no kink; ±[`UNBOUNDED`] where
    /// no kink bounds that side (finite, so that the margin arithmetic stays finite).
    pub lo: Vec<f64>,
    /// See `lo`.
    pub hi: Vec<f64>,
}

/// The "no bound" of a [`Shortcut`] interval (an infinite one would make
/// `lo + margin·|lo|` NaN and silently turn the shortcut off).
pub const UNBOUNDED: f64 = 1e300;

/// How far inside its interval t must lie for the shortcut (relative to the bound): keeps
/// the rounding of t and of the bounds (≤ a few ulps in f64) off the kink.
pub const SHORTCUT_MARGIN: f64 = 1e-9;

/// Bytes the shortcut tables of one layer may take ([`Shortcut`]: n_{l+1}·m·(nL + 2)
/// values): 2 GiB, or `GRADCHECK_MAX_TABLE_BYTES`. A layer over it takes the
/// layer-by-layer Δ path (the same numbers, more work per sample) instead of exhausting
/// memory (a 64-4096-256 net at m = 2,048 would need 17 GB).
pub fn shortcut_table_budget() -> u64 {
    std::env::var("GRADCHECK_MAX_TABLE_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2 << 30)
}

/// The bytes of layer l's shortcut tables.
pub fn shortcut_table_bytes(model: &Model, data: &Data, l: usize) -> u64 {
    let sizes = model.sizes();
    let per_row = (*sizes.last().expect("a model has layers") as u64 + 2) * 8;
    sizes[l + 1] as u64 * data.m() as u64 * per_row
}

/// Whether layer l's shortcut tables fit [`shortcut_table_budget`].
pub fn shortcut_fits(model: &Model, data: &Data, l: usize) -> bool {
    shortcut_table_bytes(model, data, l) <= shortcut_table_budget()
}

/// Whether t lies inside the open interval (lo, hi) by the relative `margin`.
pub fn inside(t: f64, lo: f64, hi: f64, margin: f64) -> bool {
    t > lo + margin * lo.abs() && t < hi - margin * hi.abs()
}

/// The piecewise-linear shortcut of every layer that has one (see [`Shortcut`]), from
/// the base pass `fwd` at θ: layer l has one when every hidden layer after it is
/// piecewise linear (ReLU, leaky ReLU, identity) and its tables fit
/// [`shortcut_table_budget`].
pub fn shortcuts(
    model: &Model,
    params: &Params,
    data: &Data,
    fwd: &Forward,
) -> Vec<Option<Shortcut>> {
    let depth = model.depth();
    let t = |a: &Array2<f64>| a.t().iter().copied().collect::<Vec<f64>>();
    let base = Base {
        model,
        params,
        data,
        zt: fwd.z.iter().map(t).collect(),
        mt: (0..depth).map(|l| mask(data, l).map(t)).collect(),
        wcols: (0..depth)
            .map(|l| params.weight(l).t().iter().copied().collect())
            .collect(),
    };
    (0..depth)
        .map(|l| {
            let linear = (l + 2..depth).all(|q| {
                matches!(
                    model.activation(q - 1),
                    Activation::Relu | Activation::LeakyRelu(_) | Activation::Identity
                )
            });
            (l + 1 < depth && linear && shortcut_fits(model, data, l)).then(|| base.shortcut_of(l))
        })
        .collect()
}

/// The base pass as the tables read it: sample-major and contiguous.
struct Base<'a> {
    model: &'a Model,
    params: &'a Params,
    data: &'a Data,
    /// Per layer, Z transposed, [j·n_l + i].
    zt: Vec<Vec<f64>>,
    /// Per layer, the dropout factors transposed (None without dropout).
    mt: Vec<Option<Vec<f64>>>,
    /// Per layer, W_l's columns, [c·n_l + i] = W_l[i, c].
    wcols: Vec<Vec<f64>>,
}

impl Base<'_> {
    /// The [`Shortcut`] past layer l.
    fn shortcut_of(&self, l: usize) -> Shortcut {
        let (sizes, m) = (self.model.sizes(), self.data.m());
        let ny = sizes[self.model.depth()];
        // Rows r are independent: in parallel (the GPU's fused kernels wait for these).
        let rows: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> = (0..sizes[l + 1])
            .into_par_iter()
            .map_init(
                || (Vec::new(), Vec::new()),
                |(u, next), r| {
                    let mut row = (vec![0.0; m * ny], vec![-UNBOUNDED; m], vec![UNBOUNDED; m]);
                    for j in 0..m {
                        self.shortcut_at(l, r, j, u, next, &mut row, ny);
                    }
                    row
                },
            )
            .collect();
        let mut sc = Shortcut {
            v: Vec::with_capacity(rows.len() * m * ny),
            lo: Vec::with_capacity(rows.len() * m),
            hi: Vec::with_capacity(rows.len() * m),
        };
        for (v, lo, hi) in rows {
            sc.v.extend(v);
            sc.lo.extend(lo);
            sc.hi.extend(hi);
        }
        sc
    }

    /// Sample j of row r of [`Self::shortcut_of`] into `row` = (v, lo, hi) of that row.
    #[allow(clippy::too_many_arguments)]
    fn shortcut_at(
        &self,
        l: usize,
        r: usize,
        j: usize,
        u: &mut Vec<f64>,
        next: &mut Vec<f64>,
        row: &mut (Vec<f64>, Vec<f64>, Vec<f64>),
        ny: usize,
    ) {
        let (model, sizes) = (self.model, self.model.sizes());
        let depth = model.depth();
        let (v, lo, hi) = row;
        u.clear();
        u.extend_from_slice(&self.wcols[l + 1][r * sizes[l + 2]..(r + 1) * sizes[l + 2]]);
        for p in l + 1..depth {
            let np = sizes[p + 1];
            let g = model.activation(p);
            let z0 = &self.zt[p][j * np..(j + 1) * np];
            if g.has_kink() {
                // z0 + U·t stays on z0's side of 0 (z0 > 0: > 0; z0 ≤ 0: ≤ 0).
                for ii in 0..np {
                    if u[ii] == 0.0 || self.mask(p, j * np + ii) == 0.0 {
                        continue;
                    }
                    let edge = -z0[ii] / u[ii];
                    let upward = (z0[ii] > 0.0) == (u[ii] > 0.0);
                    if upward {
                        lo[j] = lo[j].max(edge);
                    } else {
                        hi[j] = hi[j].min(edge);
                    }
                }
            }
            if p + 1 == depth {
                v[j * ny..(j + 1) * ny].copy_from_slice(u);
                return;
            }
            // D ⊙ U, then W_{p+1}·(D ⊙ U).
            for (ii, x) in u.iter_mut().enumerate() {
                let slope = if g == Activation::Identity || z0[ii] > 0.0 {
                    1.0
                } else {
                    g.slope()
                };
                *x *= slope * self.mask(p, j * np + ii);
            }
            let w = self.params.weight(p + 1);
            let w = w.as_slice().expect("standard layout");
            next.clear();
            next.extend((0..sizes[p + 2]).map(|o| dot(&w[o * np..(o + 1) * np], u)));
            std::mem::swap(u, next);
        }
    }

    /// The dropout factor of (i, j) in layer l's sample-major table.
    fn mask(&self, l: usize, at: usize) -> f64 {
        self.mt[l].as_ref().map_or(1.0, |m| m[at])
    }
}
