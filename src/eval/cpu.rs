//! The CPU f64 reference: forward cost, analytic backprop (the "known good" gradients)
//! and the J(θ ± ε·e_i) of every perturbation, serial or on all cores.
//!
//! The perturbed costs exploit the network's structure exactly as the GPU does: a
//! perturbation of `W_l[r,c]` or `b_l[r]` changes only row r of Z_l, the next layer sees the
//! rank-1 change `W_{l+1}[:,r] ⊗ ΔA_l[r,:]`, and only the samples whose activations really
//! changed are carried further (for the others every later value is bitwise the base
//! value, so skipping them changes no bit of J).
//!
//! May use: `model`, `error`.

use std::ops::Range;

use ndarray::Array2;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::eval::Progress;
use crate::model::{Activation, Data, Loss, Model, Params, TensorKind};
pub use crate::net::math::{
    act_delta, loss_delta, sample_loss, sample_loss_stable, sigmoid, softplus, tanh_complement,
};
use crate::net::math::{dot, expm1, log1p};
pub use crate::net::mlp::{
    DropoutBackward, Forward, TermSizes, backprop, backprop_with, cost, forward, noise_scale,
    stable_cost, term_sizes,
};
use crate::net::mlp::{mask, mask_at, total_cost};
pub use crate::net::shortcut::{
    SHORTCUT_MARGIN, Shortcut, UNBOUNDED, inside, shortcut_fits, shortcut_table_budget,
    shortcut_table_bytes, shortcuts,
};

/// J(θ ± ε·e_i) for a range of parameters, plus which of them cross an activation kink.
#[derive(Debug, Clone, PartialEq)]
pub struct Perturbed {
    /// J(θ) at the unperturbed point.
    pub cost: f64,
    /// J(θ + ε·e_i) for each i of the range.
    pub plus: Vec<f64>,
    /// J(θ − ε·e_i) for each i of the range.
    pub minus: Vec<f64>,
    /// Where the +ε step ([`KINK_PLUS`]) or the −ε step ([`KINK_MINUS`]) moved some
    /// ReLU/leaky-ReLU pre-activation across 0 (bit flags; 0 = smooth both ways).
    pub kinks: Vec<u8>,
    /// Δ path only: Σ_j |Δloss_j|/m + |ΔL2| of the +ε and −ε steps, the size of what was
    /// summed into ΔJ± (their rounding error is a few u of it).
    pub magnitudes: Option<Vec<[f64; 2]>>,
    /// [`noise_scale`] of the base pass: what the plain paths' J± are rounded against.
    pub cost_scale: f64,
    /// Layered networks: per parameter, the width of the interval of valid derivatives
    /// that exact max-pool ties at θ leave open (0 without ties); `None` elsewhere.
    pub tie_widths: Option<Vec<f64>>,
}

thread_local! {
    /// The counter the evaluations on this thread report to (set by [`counting_into`]
    /// for one evaluator call).
    static COUNTING_INTO: std::cell::RefCell<Option<Progress>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with the CPU evaluations it starts on this thread counting their
/// perturbations into `progress` (their worker threads included); nothing is counted
/// outside such a call.
pub fn counting_into<T>(progress: Option<&Progress>, f: impl FnOnce() -> T) -> T {
    let before = COUNTING_INTO.with(|c| c.replace(progress.cloned()));
    let out = f();
    COUNTING_INTO.with(|c| c.replace(before));
    out
}

/// Kink flag: the +ε step crossed a kink.
pub const KINK_PLUS: u8 = 1;
/// Kink flag: the −ε step crossed a kink.
pub const KINK_MINUS: u8 = 2;

/// The kink flags of a perturbation from whether its +ε and −ε steps crossed.
pub(crate) fn kink_bits(plus: bool, minus: bool) -> u8 {
    (u8::from(plus) * KINK_PLUS) | (u8::from(minus) * KINK_MINUS)
}

/// How many threads the CPU evaluator uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// One thread (the reference order of work; results are identical either way).
    Serial,
    /// Rayon's global pool.
    Parallel,
}

/// Runs `f` with a thread pool of its own (every parallel loop inside it uses that pool).
/// After `fork()` the child has only the forking thread while the global pool believes its
/// workers exist — a parallel loop there would wait forever; a pool built in the child
/// has real threads. Falls back to running `f` on the global pool if none can be built.
pub fn with_own_thread_pool<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    match rayon::ThreadPoolBuilder::new().build() {
        Ok(pool) => pool.install(f),
        Err(_) => f(),
    }
}

/// Evaluates every J(θ ± ε·e_i), i ∈ `range`, on the CPU in f64.
///
/// The perturbed parameter is fl(θ_i ± ε), as the notebook's `theta_plus[i] += epsilon`.
pub fn perturbed_costs(
    model: &Model,
    params: &Params,
    data: &Data,
    epsilon: f64,
    range: Range<usize>,
    threads: Threads,
) -> Result<Perturbed> {
    mlp_only(model)?;
    check_range(model, &range)?;
    let fwd = forward(model, params, data);
    let ctx = Ctx {
        model,
        params,
        data,
        fwd: &fwd,
        epsilon,
    };
    let rows = each_parameter(range, threads, |s, i| {
        let (p, kp) = ctx.eval(s, i, 1.0);
        let (q, kq) = ctx.eval(s, i, -1.0);
        (p, q, kink_bits(kp, kq), [0.0; 2])
    });
    let scale = noise_scale(model, &fwd, data);
    Ok(assemble(fwd.cost, scale, rows, false))
}

/// A parameter range must lie inside 0..N.
/// The MLP evaluators take the MLP shorthand only (a layered network's is eval::layered).
fn mlp_only(model: &Model) -> Result<()> {
    if model.net().is_some() {
        return Err(Error::Internal(
            "the MLP evaluator was given a layered network (eval::layered evaluates those)".into(),
        ));
    }
    Ok(())
}

pub(crate) fn check_range(model: &Model, range: &Range<usize>) -> Result<()> {
    if range.end > model.n_params() || range.start > range.end {
        return Err(Error::Config(format!(
            "parameter range {range:?} is outside 0..{}",
            model.n_params()
        )));
    }
    Ok(())
}

/// The counter of the current [`counting_into`] call on this thread.
fn counting_sink() -> Option<Progress> {
    COUNTING_INTO.with(|c| c.borrow().clone())
}

/// `one(scratch, i)` for every i of the range, serially or on rayon's pool (one scratch
/// per work split; the order of the results is the range's either way), counting progress.
pub(crate) fn each_parameter<T: Send>(
    range: Range<usize>,
    threads: Threads,
    one: impl Fn(&mut Scratch, usize) -> T + Sync + Send,
) -> Vec<T> {
    let sink = counting_sink();
    let scratch = || {
        let mut s = Scratch::default();
        s.progress = sink.clone();
        s
    };
    let counted = |s: &mut Scratch, i: usize| {
        let row = one(s, i);
        s.count_done();
        row
    };
    match threads {
        Threads::Serial => {
            let mut s = scratch();
            range.map(|i| counted(&mut s, i)).collect()
        }
        Threads::Parallel => range
            .into_par_iter()
            .with_min_len(64)
            .map_init(scratch, counted)
            .collect(),
    }
}

/// The per-parameter rows (ΔJ⁺ or J⁺, ΔJ⁻ or J⁻, kink flags, magnitudes) as a
/// [`Perturbed`]; the magnitudes kept only for the Δ path.
pub(crate) fn assemble(
    cost: f64,
    cost_scale: f64,
    rows: Vec<(f64, f64, u8, [f64; 2])>,
    magnitudes: bool,
) -> Perturbed {
    let mut out = Perturbed {
        cost,
        cost_scale,
        plus: Vec::with_capacity(rows.len()),
        minus: Vec::with_capacity(rows.len()),
        kinks: Vec::with_capacity(rows.len()),
        magnitudes: magnitudes.then(|| Vec::with_capacity(rows.len())),
        tie_widths: None,
    };
    for (p, q, k, mag) in rows {
        out.plus.push(p);
        out.minus.push(q);
        out.kinks.push(k);
        if let Some(m) = &mut out.magnitudes {
            m.push(mag);
        }
    }
    out
}

struct Ctx<'a> {
    model: &'a Model,
    params: &'a Params,
    data: &'a Data,
    fwd: &'a Forward,
    epsilon: f64,
}

/// Per-thread buffers, reused across perturbations.
#[derive(Default)]
pub(crate) struct Scratch {
    /// Samples whose values changed, and the changed value of the perturbed row there.
    cols: Vec<usize>,
    vals: Vec<f64>,
    /// Changed columns of the current/next layer, stored column by column.
    cur: Vec<f64>,
    next: Vec<f64>,
    losses: Vec<f64>,
    zcol: Vec<f64>,
    ycol: Vec<f64>,
    /// Perturbations done since this thread last added to the check's [`Progress`].
    pending: usize,
    /// The check's counter (`None`: nothing counts).
    progress: Option<Progress>,
}

impl Scratch {
    /// Counts one ± pair; adds to the check's counter every 512 (a shared atomic per
    /// parameter would bounce its cache line between the cores), and the rest when the
    /// scratch is dropped.
    pub(crate) fn count_done(&mut self) {
        self.pending += 2;
        if self.pending >= 512 {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if let Some(p) = &self.progress {
            p.add(self.pending);
        }
        self.pending = 0;
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.flush();
    }
}

#[inline]
fn crosses(g: Activation, z0: f64, z1: f64) -> bool {
    g.has_kink() && ((z0 > 0.0) != (z1 > 0.0))
}

impl Ctx<'_> {
    /// J(θ + sign·ε·e_i) and whether the step crossed a kink.
    fn eval(&self, s: &mut Scratch, i: usize, sign: f64) -> (f64, bool) {
        let (model, fwd) = (self.model, self.fwd);
        let layout = model.layout();
        let pos = layout.locate(i).expect("index in range");
        let slot = &layout.tensors()[pos.tensor];
        let (l, r) = (slot.layer, pos.row);
        let th = self.params.as_slice()[i];
        let moved = th + sign * self.epsilon;
        let delta = moved - th;
        let mut kink = self.changed_row(s, l, r, slot.kind, pos.col, delta);
        s.losses.clear();
        s.losses.extend_from_slice(&fwd.sample_loss);
        if l + 1 == model.depth() {
            self.output_row_losses(s, l, r);
        } else {
            kink |= self.hidden_row_losses(s, l, r);
        }
        let sumsq = match slot.kind {
            TensorKind::Weight => fwd.weight_sumsq - th * th + moved * moved,
            TensorKind::Bias => fwd.weight_sumsq,
        };
        (total_cost(model, self.data.m(), &s.losses, sumsq), kink)
    }

    /// Row r of Z_l, the only row the step changes: the samples where it moved into
    /// `s.cols`, their new values into `s.vals`; whether one crossed a kink.
    #[inline(always)]
    fn changed_row(
        &self,
        s: &mut Scratch,
        l: usize,
        r: usize,
        kind: TensorKind,
        col: usize,
        delta: f64,
    ) -> bool {
        let fwd = self.fwd;
        let input = if l == 0 {
            self.data.x.view()
        } else {
            fwd.a[l - 1].view()
        };
        let g = self.model.activation(l);
        let mut kink = false;
        s.cols.clear();
        s.vals.clear();
        for j in 0..self.data.m() {
            let z0 = fwd.z[l][[r, j]];
            let z1 = match kind {
                TensorKind::Weight => z0 + delta * input[[col, j]],
                TensorKind::Bias => z0 + delta,
            };
            if z1 != z0 {
                kink |= crosses(g, z0, z1) && mask_at(self.data, l, r, j) != 0.0;
                s.cols.push(j);
                s.vals.push(z1);
            }
        }
        kink
    }

    /// Output layer: the changed row goes straight into the changed samples' losses.
    #[inline(always)]
    fn output_row_losses(&self, s: &mut Scratch, l: usize, r: usize) {
        let g = self.model.activation(l);
        for (&j, &z1) in s.cols.iter().zip(&s.vals) {
            s.zcol.clear();
            s.zcol.extend(self.fwd.z[l].column(j).iter());
            s.zcol[r] = z1;
            s.ycol.clear();
            s.ycol.extend(self.data.y.column(j).iter());
            s.losses[j] = sample_loss(self.model.loss(), g, &s.zcol, &s.ycol);
        }
    }

    /// A hidden layer's changed row: its activation change, the rank-1 update of layer
    /// l + 1, the dense layers after it for the changed samples only, their losses;
    /// whether a unit crossed a kink.
    #[inline(always)]
    fn hidden_row_losses(&self, s: &mut Scratch, l: usize, r: usize) -> bool {
        let (model, fwd) = (self.model, self.fwd);
        let depth = model.depth();
        let ny = model.sizes()[depth];
        let g = model.activation(l);
        let mut kink = false;
        // ΔA_l[r, j], keeping only samples where the activation really moved.
        let mut keep = 0;
        for k in 0..s.cols.len() {
            let j = s.cols[k];
            let da = g.apply(s.vals[k]) * mask_at(self.data, l, r, j) - fwd.a[l][[r, j]];
            if da != 0.0 {
                s.cols[keep] = j;
                s.vals[keep] = da;
                keep += 1;
            }
        }
        s.cols.truncate(keep);
        s.vals.truncate(keep);
        // Layer l+1: rank-1 update of the base pre-activations.
        let p = l + 1;
        let np = model.sizes()[p + 1];
        let w = self.params.weight(p);
        let gp = model.activation(p);
        s.cur.clear();
        for (&j, &da) in s.cols.iter().zip(&s.vals) {
            for ii in 0..np {
                let z0 = fwd.z[p][[ii, j]];
                let z1 = z0 + w[[ii, r]] * da;
                kink |= crosses(gp, z0, z1) && mask_at(self.data, p, ii, j) != 0.0;
                s.cur.push(z1);
            }
        }
        // Dense layers after that, only for the changed samples.
        let mut width = np;
        for q in p + 1..depth {
            kink |= self.dense_layer(s, q, width);
            width = model.sizes()[q + 1];
        }
        let gout = model.activation(depth - 1);
        for (k, &j) in s.cols.iter().enumerate() {
            s.ycol.clear();
            s.ycol.extend(self.data.y.column(j).iter());
            s.losses[j] = sample_loss(model.loss(), gout, &s.cur[k * ny..(k + 1) * ny], &s.ycol);
        }
        kink
    }

    /// Layer q of the changed samples: A_{q−1} = g(Z_{q−1}) (dropout applied) in place,
    /// then Z_q = W_q·A_{q−1} + b_q (FMA in index order) into `s.cur`.
    #[inline(always)]
    fn dense_layer(&self, s: &mut Scratch, q: usize, width: usize) -> bool {
        let (model, fwd) = (self.model, self.fwd);
        let gq = model.activation(q - 1);
        let mut kink = false;
        for (k, &j) in s.cols.iter().enumerate() {
            for (ii, v) in s.cur[k * width..(k + 1) * width].iter_mut().enumerate() {
                *v = gq.apply(*v) * mask_at(self.data, q - 1, ii, j);
            }
        }
        let wq = self.params.weight(q);
        let bq = self.params.bias(q);
        let nq = model.sizes()[q + 1];
        let gnext = model.activation(q);
        s.next.clear();
        for k in 0..s.cols.len() {
            let a = &s.cur[k * width..(k + 1) * width];
            for ii in 0..nq {
                let mut acc = 0.0;
                for (t, &wt) in wq.row(ii).iter().enumerate() {
                    acc = wt.mul_add(a[t], acc);
                }
                let z1 = acc + bq[ii];
                kink |= crosses(gnext, fwd.z[q][[ii, s.cols[k]]], z1)
                    && mask_at(self.data, q, ii, s.cols[k]) != 0.0;
                s.next.push(z1);
            }
        }
        std::mem::swap(&mut s.cur, &mut s.next);
        kink
    }
}

// ---------------------------------------------------------------------------------------
// The Δ path in f64 ("stable" arithmetic): each perturbed stage carries its change from the
// base pass in a closed form, so ΔJ± = J(θ ± ε·e_i) − J(θ) keep a relative accuracy of a
// few u of Σ|Δloss_j| whatever ε is (no J± ≈ J to subtract), and saturated outputs
// (σ(z) = 1 in f64) cost nothing: the losses go through softplus of the logit. The same
// closed forms as the GPU's (shaders/common.wgsl `act_delta`, shaders/cost.wgsl
// `sample_loss_delta`), in the host's f64 with std's exp_m1/ln_1p.
// ---------------------------------------------------------------------------------------

/// tanh(z0 + dz) − tanh(z0) from the base pass's t0 = tanh z0 and c0 = 1 − |t0|
/// (tables: no transcendental per call for a small step). On one side of 0 and for
/// |dz| < 1e-4, 1 − |tanh z1| = c0/(1 + (1 − c0/2)·expm1(2·dz·sgn z0)) exactly (with
/// E = e^{2|z0|}: 2/(1 + E·e^{2s}) = c0/(1 + E/(1 + E)·expm1(2s))), so nothing cancels,
/// and tanh dz takes its exact short series; elsewhere [`act_delta`].
fn tanh_delta(t0: f64, c0: f64, z0: f64, dz: f64) -> f64 {
    let z1 = z0 + dz;
    if dz.abs() >= 1e-4 || (z0 >= 0.0) != (z1 >= 0.0) {
        return act_delta(Activation::Tanh, z0, dz);
    }
    let s = if z0 >= 0.0 { dz } else { -dz };
    let c1 = c0 / (1.0 + (1.0 - 0.5 * c0) * expm1(2.0 * s));
    (c0 + t0.abs() * c1) * (dz * (1.0 - dz * dz / 3.0))
}

/// σ(z0 + dz) − σ(z0) from the base pass's s0 = σ(z0) and n0 = σ(−z0): with a = e^{−z0},
/// 1 + a·e^{−dz} = (1 + a)(1 + n0·expm1(−dz)), so σ(z1) = s0/(1 + n0·expm1(−dz)) and the
/// change σ(z1)·n0·(−expm1(−dz)) (the closed form of [`act_delta`]) needs no exp for a
/// small step (|dz| < 1e-4; a large one could overflow expm1: the closed form then).
fn sigmoid_delta(s0: f64, n0: f64, z0: f64, dz: f64) -> f64 {
    if dz.abs() >= 1e-4 {
        return act_delta(Activation::Sigmoid, z0, dz);
    }
    let e = expm1(-dz);
    s0 / (1.0 + n0 * e) * n0 * (-e)
}

/// Neumaier's compensated sum.
#[derive(Default)]
pub(crate) struct Compensated {
    sum: f64,
    carry: f64,
}

impl Compensated {
    pub(crate) fn add(&mut self, v: f64) {
        let t = self.sum + v;
        if self.sum.abs() >= v.abs() {
            self.carry += (self.sum - t) + v;
        } else {
            self.carry += (v - t) + self.sum;
        }
        self.sum = t;
    }
    pub(crate) fn value(&self) -> f64 {
        self.sum + self.carry
    }
}

/// Every ΔJ± = J(θ ± ε·e_i) − J(θ), i ∈ `range`, on the Δ path in f64 (see above). The
/// step is exactly ±ε (not fl(θ_i ± ε) − θ_i), so the central difference divides by 2ε.
/// `cost` is the stable J(θ).
pub fn perturbed_deltas(
    model: &Model,
    params: &Params,
    data: &Data,
    epsilon: f64,
    range: Range<usize>,
    threads: Threads,
) -> Result<Perturbed> {
    deltas(model, params, data, epsilon, range, threads, true)
}

/// [`perturbed_deltas`] layer by layer everywhere, without the piecewise-linear
/// shortcut: the reference the shortcut is tested against.
pub fn perturbed_deltas_layerwise(
    model: &Model,
    params: &Params,
    data: &Data,
    epsilon: f64,
    range: Range<usize>,
    threads: Threads,
) -> Result<Perturbed> {
    deltas(model, params, data, epsilon, range, threads, false)
}

#[allow(clippy::too_many_arguments)]
fn deltas(
    model: &Model,
    params: &Params,
    data: &Data,
    epsilon: f64,
    range: Range<usize>,
    threads: Threads,
    shortcuts: bool,
) -> Result<Perturbed> {
    mlp_only(model)?;
    check_range(model, &range)?;
    let fwd = forward(model, params, data);
    let ctx = DeltaCtx::new(model, params, data, &fwd, epsilon, shortcuts);
    let rows = each_parameter(range, threads, |s, i| {
        let (p, mp, kp) = ctx.eval(s, i, 1.0);
        let (q, mq, kq) = ctx.eval(s, i, -1.0);
        (p, q, kink_bits(kp, kq), [mp, mq])
    });
    let scale = noise_scale(model, &fwd, data);
    Ok(assemble(stable_cost(model, &fwd, data), scale, rows, true))
}

/// The base pass rearranged for the Δ path: everything a perturbation reads, sample-major
/// and contiguous (no strided or bounds-checked indexing in the hot loops).
struct DeltaCtx<'a> {
    model: &'a Model,
    params: &'a Params,
    data: &'a Data,
    epsilon: f64,
    /// Per layer l: Z_l transposed, [j·n_l + i].
    zt: Vec<Vec<f64>>,
    /// Per tanh or sigmoid layer l, of Z_l transposed: (tanh z, 1 − |tanh z|) (see
    /// [`tanh_delta`]) or (σ(z), σ(−z)) (see [`sigmoid_delta`]).
    act0: Vec<Option<Vec<[f64; 2]>>>,
    /// Per layer l: Z_l row-major, [i·m + j] (the perturbed row's samples, contiguous).
    zr: Vec<Vec<f64>>,
    /// Per layer l: the dropout factors row-major.
    mr: Vec<Option<Vec<f64>>>,
    /// Per layer l: the dropout factors transposed (None without dropout).
    mt: Vec<Option<Vec<f64>>>,
    /// Per layer l: W_l's columns, [c·n_l + i] = W_l[i, c] (the rank-1 update's column).
    wcols: Vec<Vec<f64>>,
    /// Per layer l: the input of layer l row-major (X or A_{l−1}), [c·m + j].
    input: Vec<Vec<f64>>,
    /// Y transposed, [j·nL + i].
    yt: Vec<f64>,
    /// BCE: σ(−z) and σ(z) of the output's base pre-activations, [j·nL + i].
    sig: Vec<[f64; 2]>,
    /// Per layer l, when every hidden layer after l + 1 is piecewise linear: the shortcut
    /// through them (see [`Shortcut`]).
    shortcut: Vec<Option<Shortcut>>,
}

impl<'a> DeltaCtx<'a> {
    fn new(
        model: &'a Model,
        params: &'a Params,
        data: &'a Data,
        fwd: &Forward,
        epsilon: f64,
        shortcuts: bool,
    ) -> Self {
        let depth = model.depth();
        let t = |a: &Array2<f64>| a.t().iter().copied().collect::<Vec<f64>>();
        let zt: Vec<Vec<f64>> = fwd.z.iter().map(t).collect();
        let mt = (0..depth).map(|l| mask(data, l).map(t)).collect();
        let wcols = (0..depth)
            .map(|l| params.weight(l).t().iter().copied().collect())
            .collect();
        let input = (0..depth)
            .map(|l| {
                if l == 0 {
                    data.x.iter().copied().collect()
                } else {
                    fwd.a[l - 1].iter().copied().collect()
                }
            })
            .collect();
        let sig = if model.loss() == Loss::BinaryCrossEntropy {
            zt[depth - 1]
                .iter()
                .map(|&z| [sigmoid(-z), sigmoid(z)])
                .collect()
        } else {
            Vec::new()
        };
        let rows = |a: &Array2<f64>| a.iter().copied().collect::<Vec<f64>>();
        // Hidden layers only (the output's change goes through the loss's own forms).
        let act0 = (0..depth)
            .map(|l| match model.activation(l) {
                _ if l + 1 == depth => None,
                Activation::Tanh => Some(
                    zt[l]
                        .iter()
                        .map(|&z| [z.tanh(), tanh_complement(z)])
                        .collect(),
                ),
                Activation::Sigmoid => {
                    Some(zt[l].iter().map(|&z| [sigmoid(z), sigmoid(-z)]).collect())
                }
                _ => None,
            })
            .collect();
        let mut ctx = DeltaCtx {
            model,
            params,
            data,
            epsilon,
            act0,
            zr: fwd.z.iter().map(rows).collect(),
            mr: (0..depth).map(|l| mask(data, l).map(rows)).collect(),
            zt,
            mt,
            wcols,
            input,
            yt: t(&data.y),
            sig,
            shortcut: Vec::new(),
        };
        if shortcuts {
            ctx.shortcut = crate::net::shortcut::shortcuts(model, params, data, fwd);
        } else {
            ctx.shortcut = (0..depth).map(|_| None).collect();
        }
        ctx
    }

    /// ΔA of unit `at` (sample-major) of layer l: through the base-pass tables where the
    /// layer has them (tanh, sigmoid), [`act_delta`] otherwise.
    #[inline(always)]
    fn act_delta_at(&self, l: usize, at: usize, z0: f64, dz: f64) -> f64 {
        let g = self.model.activation(l);
        match (&self.act0[l], g) {
            (Some(t), Activation::Tanh) => tanh_delta(t[at][0], t[at][1], z0, dz),
            (Some(t), Activation::Sigmoid) => sigmoid_delta(t[at][0], t[at][1], z0, dz),
            _ => act_delta(g, z0, dz),
        }
    }

    /// The dropout factor of (i, j) in layer l's sample-major table.
    fn mask(&self, l: usize, at: usize) -> f64 {
        self.mt[l].as_ref().map_or(1.0, |m| m[at])
    }

    /// Δloss of sample j from its output pre-activation change `dz` (nL values).
    #[inline(always)]
    fn sample_delta(&self, j: usize, dz: &[f64]) -> f64 {
        let ny = dz.len();
        let y = &self.yt[j * ny..(j + 1) * ny];
        if self.model.loss() == Loss::BinaryCrossEntropy {
            // softplus(u + d) − softplus(u) = log1p(σ(u)·expm1(d)), σ(±z0) precomputed;
            // a label of exactly 0 or 1 leaves one term.
            let sig = &self.sig[j * ny..(j + 1) * ny];
            let mut t = 0.0;
            for ((&d, &y), &[s_neg, s_pos]) in dz.iter().zip(y).zip(sig) {
                if y != 0.0 {
                    t += y * log1p(s_neg * expm1(-d));
                }
                if y != 1.0 {
                    t += (1.0 - y) * log1p(s_pos * expm1(d));
                }
            }
            t
        } else {
            let depth = self.model.depth();
            let z0 = &self.zt[depth - 1][j * ny..(j + 1) * ny];
            loss_delta(
                self.model.loss(),
                self.model.activation(depth - 1),
                z0,
                dz,
                y,
            )
        }
    }

    /// ΔJ of the step sign·ε·e_i, the magnitude Σ|Δloss_j|/m + |ΔL2| summed into it, and
    /// whether the step crossed a kink.
    fn eval(&self, s: &mut Scratch, i: usize, sign: f64) -> (f64, f64, bool) {
        let model = self.model;
        let layout = model.layout();
        let pos = layout.locate(i).expect("index in range");
        let slot = &layout.tensors()[pos.tensor];
        let (l, r) = (slot.layer, pos.row);
        let depth = model.depth();
        let m = self.data.m();
        let ny = model.sizes()[depth];
        let d = sign * self.epsilon;
        // Σ_j Δloss_j (compensated) and Σ_j |Δloss_j|.
        let mut sum = Compensated::default();
        let mut mag = 0.0;
        let mut kink = self.delta_row(s, l, r, slot.kind, pos.col, d);
        // s.cur: per moved sample, the current layer's ΔZ column.
        s.cur.clear();
        if l + 1 == depth {
            for &dz in &s.vals {
                let at = s.cur.len();
                s.cur.resize(at + ny, 0.0);
                s.cur[at + r] = dz;
            }
        } else {
            self.activation_change(s, l, r);
            if let Some(sc) = &self.shortcut[l] {
                self.through_shortcut(s, sc, r, &mut sum, &mut mag);
            }
            kink |= self.rank1(s, l, r);
            // Later layers: ΔA = g(Z + ΔZ) − g(Z), ΔZ_q = W_q·ΔA (no bias).
            let mut width = model.sizes()[l + 2];
            for q in l + 2..depth {
                kink |= self.delta_layer(s, q, width);
                width = model.sizes()[q + 1];
            }
        }
        // The exact path's samples' loss changes (the shortcut's were added as they came).
        for (k, &j) in s.cols.iter().enumerate() {
            let dl = self.sample_delta(j, &s.cur[k * ny..(k + 1) * ny]);
            sum.add(dl);
            mag += dl.abs();
        }
        let inv_m = 1.0 / m as f64;
        let mut dj = sum.value() * inv_m;
        mag *= inv_m;
        if slot.kind == TensorKind::Weight && model.l2() != 0.0 {
            let th = self.params.as_slice()[i];
            let dl2 = model.l2() / (2.0 * m as f64) * d * (2.0 * th + d);
            dj += dl2;
            mag += dl2.abs();
        }
        (dj, mag, kink)
    }

    /// ΔZ_l[r, j] of the step d for the samples it moves (`s.cols`, `s.vals`); whether one
    /// crossed a kink.
    #[inline(always)]
    fn delta_row(
        &self,
        s: &mut Scratch,
        l: usize,
        r: usize,
        kind: TensorKind,
        col: usize,
        d: f64,
    ) -> bool {
        let m = self.data.m();
        let g = self.model.activation(l);
        let mut kink = false;
        s.cols.clear();
        s.vals.clear();
        let row = match kind {
            TensorKind::Weight => Some(&self.input[l][col * m..(col + 1) * m]),
            TensorKind::Bias => None,
        };
        let z_row = &self.zr[l][r * m..(r + 1) * m];
        let m_row = self.mr[l].as_ref().map(|f| &f[r * m..(r + 1) * m]);
        for j in 0..m {
            let dz = row.map_or(d, |x| d * x[j]);
            if dz != 0.0 {
                let z0 = z_row[j];
                kink |= crosses(g, z0, z0 + dz) && m_row.is_none_or(|f| f[j] != 0.0);
                s.cols.push(j);
                s.vals.push(dz);
            }
        }
        kink
    }

    /// ΔA_l[r, j] from ΔZ_l[r, j] in place, keeping the samples whose activation really
    /// moved.
    #[inline(always)]
    fn activation_change(&self, s: &mut Scratch, l: usize, r: usize) {
        let m = self.data.m();
        let z_row = &self.zr[l][r * m..(r + 1) * m];
        let m_row = self.mr[l].as_ref().map(|f| &f[r * m..(r + 1) * m]);
        let n_l = self.model.sizes()[l + 1];
        let mut keep = 0;
        for k in 0..s.cols.len() {
            let j = s.cols[k];
            let da = self.act_delta_at(l, j * n_l + r, z_row[j], s.vals[k])
                * m_row.map_or(1.0, |f| f[j]);
            if da != 0.0 {
                s.cols[keep] = j;
                s.vals[keep] = da;
                keep += 1;
            }
        }
        s.cols.truncate(keep);
        s.vals.truncate(keep);
    }

    /// Samples whose t stays inside the shortcut's interval go straight to the output (well
    /// inside: a relative margin keeps rounding off the edge) and into the sum; the others
    /// stay listed for the exact path.
    #[inline(always)]
    fn through_shortcut(
        &self,
        s: &mut Scratch,
        sc: &Shortcut,
        r: usize,
        sum: &mut Compensated,
        mag: &mut f64,
    ) {
        let (m, ny) = (self.data.m(), self.model.sizes()[self.model.depth()]);
        let mut keep = 0;
        for k in 0..s.cols.len() {
            let (j, t) = (s.cols[k], s.vals[k]);
            let at = r * m + j;
            if inside(t, sc.lo[at], sc.hi[at], SHORTCUT_MARGIN) {
                s.zcol.clear();
                s.zcol
                    .extend(sc.v[at * ny..(at + 1) * ny].iter().map(|v| v * t));
                let dl = self.sample_delta(j, &s.zcol);
                sum.add(dl);
                *mag += dl.abs();
            } else {
                s.cols[keep] = j;
                s.vals[keep] = t;
                keep += 1;
            }
        }
        s.cols.truncate(keep);
        s.vals.truncate(keep);
    }

    /// Layer l+1: ΔZ = W[:, r]·ΔA_l[r, j] (rank 1) into `s.cur`; whether a unit crossed a
    /// kink.
    #[inline(always)]
    fn rank1(&self, s: &mut Scratch, l: usize, r: usize) -> bool {
        let p = l + 1;
        let np = self.model.sizes()[p + 1];
        let wc = &self.wcols[p][r * np..(r + 1) * np];
        let kinky = self.model.activation(p).has_kink();
        let mut kink = false;
        for (&j, &da) in s.cols.iter().zip(&s.vals) {
            let z0 = &self.zt[p][j * np..(j + 1) * np];
            let at = s.cur.len();
            s.cur.extend(wc.iter().map(|&w| w * da));
            if kinky {
                for (ii, (&z, &dz)) in z0.iter().zip(&s.cur[at..]).enumerate() {
                    kink |= ((z > 0.0) != (z + dz > 0.0)) && self.mask(p, j * np + ii) != 0.0;
                }
            }
        }
        kink
    }

    /// Layer q of the listed samples: ΔA_{q−1} in place, then ΔZ_q = W_q·ΔA_{q−1} into
    /// `s.cur`; whether a unit crossed a kink.
    #[inline(always)]
    fn delta_layer(&self, s: &mut Scratch, q: usize, width: usize) -> bool {
        for (k, &j) in s.cols.iter().enumerate() {
            let z0 = &self.zt[q - 1][j * width..(j + 1) * width];
            for (ii, v) in s.cur[k * width..(k + 1) * width].iter_mut().enumerate() {
                *v = self.act_delta_at(q - 1, j * width + ii, z0[ii], *v)
                    * self.mask(q - 1, j * width + ii);
            }
        }
        let wq = self.params.weight(q);
        let wq = wq.as_slice().expect("standard layout");
        let nq = self.model.sizes()[q + 1];
        let kinky = self.model.activation(q).has_kink();
        let mut kink = false;
        s.next.clear();
        for (k, &j) in s.cols.iter().enumerate() {
            let a = &s.cur[k * width..(k + 1) * width];
            let z0 = &self.zt[q][j * nq..(j + 1) * nq];
            for ii in 0..nq {
                let dz = dot(&wq[ii * width..(ii + 1) * width], a);
                if kinky {
                    kink |=
                        ((z0[ii] > 0.0) != (z0[ii] + dz > 0.0)) && self.mask(q, j * nq + ii) != 0.0;
                }
                s.next.push(dz);
            }
        }
        std::mem::swap(&mut s.cur, &mut s.next);
        kink
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelSpec, ParamLayout};

    fn tiny(act: &str, loss: Loss, out: &str, l2: f64) -> (Model, Params, Data) {
        let spec = ModelSpec {
            layers: vec![3, 4, 2],
            activations: vec![act.parse().unwrap(), out.parse().unwrap()],
            loss,
            l2,
            dropout: None,
        };
        let model = Model::new(spec).unwrap();
        let n = model.n_params();
        let theta: Vec<f64> = (0..n)
            .map(|i| ((i * 37 % 11) as f64 - 5.0) * 0.13)
            .collect();
        let params = Params::new(model.layout().clone(), theta).unwrap();
        let x = Array2::from_shape_fn((3, 5), |(i, j)| ((i * 5 + j) as f64 * 0.7).sin());
        let y = match loss {
            Loss::SoftmaxCrossEntropy => {
                Array2::from_shape_fn((2, 5), |(i, j)| f64::from(u8::from(i == j % 2)))
            }
            _ => Array2::from_shape_fn((2, 5), |(i, j)| f64::from(u8::from((i + j) % 3 == 0))),
        };
        let data = Data::new(&model, x, y).unwrap();
        (model, params, data)
    }

    /// Naive reference: copy θ, perturb, full forward pass.
    fn naive(model: &Model, params: &Params, data: &Data, i: usize, step: f64) -> f64 {
        let mut p = params.clone();
        p.as_mut_slice()[i] += step;
        cost(model, &p, data)
    }

    #[test]
    fn structured_perturbations_equal_full_forward_passes() {
        for (act, loss, out, l2) in [
            ("relu", Loss::BinaryCrossEntropy, "sigmoid", 0.0),
            ("tanh", Loss::SoftmaxCrossEntropy, "softmax", 0.3),
            ("leaky_relu:0.1", Loss::MeanSquaredError, "identity", 0.1),
            ("sigmoid", Loss::MeanSquaredError, "tanh", 0.0),
        ] {
            let (model, params, data) = tiny(act, loss, out, l2);
            let eps = 1e-3;
            let got = perturbed_costs(
                &model,
                &params,
                &data,
                eps,
                0..model.n_params(),
                Threads::Serial,
            )
            .unwrap();
            for i in 0..model.n_params() {
                let (p, q) = (
                    naive(&model, &params, &data, i, eps),
                    naive(&model, &params, &data, i, -eps),
                );
                // Rank-1 vs full recomputation reorders one addition per value: a few ulps of J.
                assert!(
                    (got.plus[i] - p).abs() <= 1e-14 * p.abs(),
                    "{act} {i}: {} vs {p}",
                    got.plus[i]
                );
                assert!(
                    (got.minus[i] - q).abs() <= 1e-14 * q.abs(),
                    "{act} {i}: {} vs {q}",
                    got.minus[i]
                );
            }
            let par = perturbed_costs(
                &model,
                &params,
                &data,
                eps,
                0..model.n_params(),
                Threads::Parallel,
            )
            .unwrap();
            assert_eq!(par, got, "threads must not change a bit");
        }
    }

    #[test]
    fn backprop_matches_central_differences_for_every_activation_and_cost() {
        for (act, loss, out, l2) in [
            ("relu", Loss::BinaryCrossEntropy, "sigmoid", 0.0),
            ("sigmoid", Loss::BinaryCrossEntropy, "sigmoid", 0.2),
            ("tanh", Loss::SoftmaxCrossEntropy, "softmax", 0.3),
            ("leaky_relu:0.1", Loss::MeanSquaredError, "identity", 0.1),
            ("identity", Loss::MeanSquaredError, "sigmoid", 0.0),
            ("sigmoid", Loss::MeanSquaredError, "tanh", 0.0),
            ("relu", Loss::MeanSquaredError, "relu", 0.0),
        ] {
            let (model, params, data) = tiny(act, loss, out, l2);
            let g = backprop(&model, &params, &data);
            let eps = 1e-5;
            let pc = perturbed_costs(
                &model,
                &params,
                &data,
                eps,
                0..model.n_params(),
                Threads::Serial,
            )
            .unwrap();
            for i in 0..model.n_params() {
                if pc.kinks[i] != 0 {
                    continue;
                }
                let num = (pc.plus[i] - pc.minus[i]) / (2.0 * eps);
                // Truncation O(ε²·J''') ≈ 1e-10 plus rounding u·J/ε ≈ 1e-11 here.
                assert!(
                    (num - g.as_slice()[i]).abs() < 1e-8,
                    "{act}/{loss}: {} analytic {} numeric {num}",
                    model.layout().element_name(i),
                    g.as_slice()[i]
                );
            }
        }
    }

    #[test]
    fn delta_path_shortcut_equals_the_layerwise_path() {
        // Piecewise-linear hidden layers (the shortcut's domain), dropout, L2, every loss;
        // ε large enough that some steps cross kinks (those take the exact path).
        for (acts, loss) in [
            (["relu", "relu", "sigmoid"], Loss::BinaryCrossEntropy),
            (
                ["leaky_relu:0.1", "identity", "softmax"],
                Loss::SoftmaxCrossEntropy,
            ),
            (["tanh", "relu", "identity"], Loss::MeanSquaredError),
        ] {
            let spec = ModelSpec {
                layers: vec![4, 6, 5, 3],
                activations: acts.iter().map(|a| a.parse().unwrap()).collect(),
                loss,
                l2: 0.05,
                dropout: Some(crate::model::Dropout {
                    keep_prob: 0.7,
                    seed: Some(3),
                    layers: vec![1, 2],
                }),
            };
            let spec = ModelSpec {
                layers: if acts[2] == "sigmoid" {
                    vec![4, 6, 5, 1]
                } else {
                    spec.layers.clone()
                },
                ..spec
            };
            let model = Model::new(spec).unwrap();
            let mut rng = crate::rng::Rng(4);
            let theta = (0..model.n_params()).map(|_| rng.sym()).collect();
            let params = Params::new(model.layout().clone(), theta).unwrap();
            let (n0, ny) = (model.sizes()[0], *model.sizes().last().unwrap());
            let x = Array2::from_shape_fn((n0, 9), |_| 1.5 * rng.sym());
            let y = Array2::from_shape_fn((ny, 9), |(i, j)| f64::from(u8::from(i == j % ny)));
            let data = Data::new(&model, x, y).unwrap();
            for eps in [1e-7, 3e-2] {
                let n = model.n_params();
                let fast =
                    perturbed_deltas(&model, &params, &data, eps, 0..n, Threads::Serial).unwrap();
                let slow =
                    perturbed_deltas_layerwise(&model, &params, &data, eps, 0..n, Threads::Serial)
                        .unwrap();
                assert_eq!(fast.kinks, slow.kinks, "{acts:?} ε {eps}");
                let (mf, ms) = (fast.magnitudes.unwrap(), slow.magnitudes.unwrap());
                for i in 0..n {
                    for (a, b, mag) in [
                        (fast.plus[i], slow.plus[i], ms[i][0]),
                        (fast.minus[i], slow.minus[i], ms[i][1]),
                    ] {
                        // The same dot products regrouped: a few u of what was summed.
                        assert!(
                            (a - b).abs() <= 1e-13 * mag + f64::MIN_POSITIVE,
                            "{acts:?} ε {eps} {}: {a} vs {b}",
                            model.layout().element_name(i)
                        );
                    }
                    assert!((mf[i][0] - ms[i][0]).abs() <= 1e-13 * ms[i][0]);
                }
            }
        }
    }

    #[test]
    fn act_delta_from_tables_equals_the_closed_form() {
        // Against act_delta's closed form (another identity, three transcendentals) over
        // saturated and central z0, both signs, steps from 1e-13 to just under 1e-4 — and
        // across 0, where it defers to it. And the slope: Δ/dz → sech² z0 = c0·(2 − c0).
        let mut worst = 0.0f64;
        for z0 in [
            -31.0, -18.0, -3.2, -0.7, -1e-3, 0.0, 2e-9, 0.05, 1.3, 6.0, 19.5, 40.0,
        ] {
            let (t0, c0) = (f64::tanh(z0), tanh_complement(z0));
            for dz in [1e-13, -3e-11, 7e-9, -2e-7, 5e-6, -9.9e-5, 3e-3] {
                let (got, want) = (
                    tanh_delta(t0, c0, z0, dz),
                    act_delta(Activation::Tanh, z0, dz),
                );
                worst = worst.max((got - want).abs() / want.abs().max(f64::MIN_POSITIVE));
            }
            // At d = 1e-12 the slope differs from sech² z0 by its O(d) term, |tanh z0|·d
            // ≤ 1e-12 relative, plus a few ulps: 1e-11 leaves room for both.
            let d = 1e-12;
            let slope = tanh_delta(t0, c0, z0, d) / d;
            let sech2 = c0 * (2.0 - c0);
            assert!(
                (slope - sech2).abs() <= 1e-11 * sech2,
                "z0 = {z0}: {slope} vs {sech2}"
            );
        }
        // Both are accurate to a few ulps: within 1e-14 relative of each other.
        assert!(worst <= 1e-14, "worst relative difference {worst:e}");
        // σ likewise (large steps defer to the closed form).
        let mut worst = 0.0f64;
        for z0 in [-40.0, -12.0, -1.5, 0.0, 0.2, 3.0, 25.0, 45.0] {
            for dz in [1e-13, -3e-11, 7e-9, -2e-7, 5e-6, -9.9e-5, 3e-3, -0.4, 2.0] {
                let got = sigmoid_delta(sigmoid(z0), sigmoid(-z0), z0, dz);
                let want = act_delta(Activation::Sigmoid, z0, dz);
                worst = worst.max((got - want).abs() / want.abs().max(f64::MIN_POSITIVE));
            }
        }
        assert!(worst <= 1e-14, "σ: worst relative difference {worst:e}");
    }

    #[test]
    fn closed_form_derivatives_of_activations() {
        // g'(z) against the closed forms at a few points away from kinks.
        for z in [-2.5f64, -0.3, 0.4, 1.7] {
            let s = 1.0 / (1.0 + (-z).exp());
            assert!((Activation::Sigmoid.derivative(z, s) - s * (1.0 - s)).abs() < 1e-16);
            let t = z.tanh();
            assert!((Activation::Tanh.derivative(z, t) - (1.0 / z.cosh().powi(2))).abs() < 1e-15);
            assert_eq!(
                Activation::Relu.derivative(z, 0.0),
                if z > 0.0 { 1.0 } else { 0.0 }
            );
            assert_eq!(
                Activation::LeakyRelu(0.2).derivative(z, 0.0),
                if z > 0.0 { 1.0 } else { 0.2 }
            );
            assert_eq!(Activation::Identity.derivative(z, z), 1.0);
        }
        let _ = ParamLayout::new(&[1, 1]).unwrap();
    }
}
