//! The f64 Δ path of a network given as layer types (conv nets, …): for each perturbation
//! and sample, the changed layer's output change in closed form ([`crate::model::Layer::param_delta`]:
//! one output channel of a conv layer, one unit of a dense one), carried layer by layer by
//! each type's Δ form ([`crate::model::Layer::delta`]: sparse in the entries that changed, kinks
//! flagged), into the loss's closed-form change; ΔJ± summed over samples with Neumaier's
//! compensation. No J± is formed, so nothing cancels, whatever ε is.
//!
//! May use: `net`, `model`, `eval::cpu` (the shared driver: threads, progress, results).

use std::ops::Range;

use crate::error::Result;
use crate::model::{Data, LANES, Lanes, Model, Net, Params, TensorKind};
use crate::net::{self, math::loss_delta};

use super::cpu::{
    Compensated, Perturbed, Threads, assemble, check_range, each_parameter, kink_bits,
};

/// Every ΔJ± = J(θ ± ε·e_i) − J(θ), i ∈ `range`, with their magnitudes and kink flags.
pub fn perturbed_deltas(
    model: &Model,
    net: &Net,
    params: &Params,
    data: &Data,
    epsilon: f64,
    range: Range<usize>,
    threads: Threads,
) -> Result<Perturbed> {
    let mut one = perturbed_deltas_many(model, net, params, data, &[epsilon], range, threads)?;
    one.pop()
        .ok_or_else(|| crate::error::Error::Internal("no evaluation came back".into()))
}

/// [`perturbed_deltas`] at each of `epsilons` (a check's ε and 2ε): two at a time, their
/// ±steps carried together as the four lanes of [`crate::model::Layer::delta_lanes`].
pub fn perturbed_deltas_many(
    model: &Model,
    net: &Net,
    params: &Params,
    data: &Data,
    epsilons: &[f64],
    range: Range<usize>,
    threads: Threads,
) -> Result<Vec<Perturbed>> {
    check_range(model, &range)?;
    let fwd = net::forward(model, net, params, data);
    // ∂J/∂y per layer, for the width of the derivatives a max-pool tie leaves open.
    let has_ties = net.layers.iter().any(|l| l.kind() == "max_pool");
    let out_grads = if has_ties {
        net::output_gradients(model, net, params, &fwd)
    } else {
        Vec::new()
    };
    let ctx = Ctx {
        out_grads: &out_grads,
        model,
        net,
        params,
        fwd: &fwd,
        owner: owners(model, net),
        tensors: (0..net.layers.len())
            .map(|l| net::tensors_of(model, net, params.as_slice(), l))
            .collect(),
        widest: net.layers.iter().map(|l| l.out_len()).max().unwrap_or(0),
    };
    let scale = net::noise_scale(model, net, params, &fwd);
    let mut out = Vec::with_capacity(epsilons.len());
    for pair in epsilons.chunks(2) {
        let (a, b) = (pair[0], *pair.last().expect("a chunk is not empty"));
        let rows = each_parameter(range.clone(), threads, |s, i| {
            if pair.len() == 2 {
                s.count_done(); // two ± pairs per parameter
            }
            ctx.eval_lanes(i, [a, -a, b, -b])
        });
        for (k, &e) in pair.iter().enumerate() {
            let (lp, lm) = (2 * k, 2 * k + 1);
            let mut ties = Vec::with_capacity(rows.len());
            let one: Vec<_> = rows
                .iter()
                .map(|r| {
                    ties.push(r[lp].3 / e);
                    (
                        r[lp].0,
                        r[lm].0,
                        kink_bits(r[lp].2, r[lm].2),
                        [r[lp].1, r[lm].1],
                    )
                })
                .collect();
            let mut p = assemble(fwd.cost, scale, one, true);
            p.tie_widths = has_ties.then_some(ties);
            out.push(p);
        }
    }
    Ok(out)
}

/// Every J(θ ± ε·e_i) itself, i ∈ `range` (f64-plain: J± formed and subtracted, as a
/// naive check does; each from the perturbed layer on, in plain sums, the loss as
/// [`net::math::sample_loss`] writes it).
pub fn perturbed_costs(
    model: &Model,
    net: &Net,
    params: &Params,
    data: &Data,
    epsilon: f64,
    range: Range<usize>,
    threads: Threads,
) -> Result<Perturbed> {
    check_range(model, &range)?;
    let fwd = net::forward(model, net, params, data);
    let tensors: Vec<Vec<&[f64]>> = (0..net.layers.len())
        .map(|l| net::tensors_of(model, net, params.as_slice(), l))
        .collect();
    let owner = owners(model, net);
    let sumsq = net::weight_sumsq(model, params);
    let values = params.as_slice();
    let layout = model.layout();
    let m = fwd.m as f64;
    // J with θ_i = v (`None`: θ itself).
    let cost = |changed: Option<(usize, f64)>| -> f64 {
        let (l, local, tensor, v) = match changed {
            Some((i, v)) => {
                let pos = layout.locate(i).expect("range checked");
                let (l, t) = owner[pos.tensor];
                (l, i - layout.tensors()[pos.tensor].offset, t, v)
            }
            None => (0, 0, usize::MAX, 0.0),
        };
        let own: Option<Vec<f64>> = (tensor != usize::MAX).then(|| {
            let mut o = tensors[l][tensor].to_vec();
            o[local] = v;
            o
        });
        let mut p_l = tensors[l].clone();
        if let Some(o) = &own {
            p_l[tensor] = o;
        }
        let n_out = model.sizes()[1];
        let widest = net.layers.iter().map(|x| x.out_len()).max().unwrap_or(0);
        let (mut a, mut b) = (vec![0.0; widest], vec![0.0; widest]);
        let mut s = 0.0;
        for j in 0..fwd.m {
            let first = &net.layers[l];
            first.forward(&p_l, fwd.input(net, l, j), &mut a[..first.out_len()]);
            for (layer, p) in net.layers.iter().zip(&tensors).skip(l + 1) {
                layer.forward(p, &a[..layer.in_len()], &mut b[..layer.out_len()]);
                std::mem::swap(&mut a, &mut b);
            }
            s +=
                net::math::sample_loss(model.loss(), net.output, &a[..n_out], fwd.target(n_out, j));
        }
        let mut j = (1.0 / m) * s;
        if model.l2() != 0.0 {
            let mut q = sumsq;
            if let Some((i, v)) = changed {
                if layout.tensors()[owner_tensor(layout, i)].kind == TensorKind::Weight {
                    q = q - values[i] * values[i] + v * v;
                }
            }
            j += model.l2() / (2.0 * m) * q;
        }
        j
    };
    let rows = each_parameter(range, threads, |_, i| {
        let p = cost(Some((i, values[i] + epsilon)));
        let q = cost(Some((i, values[i] - epsilon)));
        (p, q, 0, [0.0; 2])
    });
    let scale = net::noise_scale(model, net, params, &fwd);
    Ok(assemble(cost(None), scale, rows, false))
}

fn owner_tensor(layout: &crate::model::ParamLayout, i: usize) -> usize {
    layout.locate(i).map_or(0, |p| p.tensor)
}

/// Per tensor: the layer that owns it and its index among that layer's tensors.
fn owners(model: &Model, net: &Net) -> Vec<(usize, usize)> {
    let mut owner = vec![(0, 0); model.layout().tensors().len()];
    for (l, r) in net.tensors.iter().enumerate() {
        for (k, t) in r.clone().enumerate() {
            owner[t] = (l, k);
        }
    }
    owner
}

struct Ctx<'a> {
    /// Per layer, ∂J/∂y per sample (empty without max pooling).
    out_grads: &'a [Vec<f64>],
    model: &'a Model,
    net: &'a Net,
    params: &'a Params,
    fwd: &'a net::Forward,
    owner: Vec<(usize, usize)>,
    /// Per layer, its tensors of θ.
    tensors: Vec<Vec<&'a [f64]>>,
    widest: usize,
}

impl Ctx<'_> {
    /// Per lane (θ_i += steps[l]): ΔJ, Σ_j|Δloss_j|/m + |ΔL2|, whether a kink was crossed,
    /// and the first-order width of the ΔJ that ties at θ leave open.
    fn eval_lanes(&self, i: usize, steps: Lanes) -> [(f64, f64, bool, f64); LANES] {
        let (model, net, fwd) = (self.model, self.net, self.fwd);
        let layout = model.layout();
        let pos = layout.locate(i).expect("range checked");
        let slot = &layout.tensors()[pos.tensor];
        let (l, t) = self.owner[pos.tensor];
        let values = self.params.as_slice();
        let n_out = model.sizes()[1];
        let last = net.layers.len() - 1;
        let width = net.layers[l].out_len();
        let mut unit = vec![0.0; width];
        let (mut cur, mut next) = (
            vec![[0.0; LANES]; self.widest],
            vec![[0.0; LANES]; self.widest],
        );
        let mut sum: [Compensated; LANES] = Default::default();
        let (mut mag, mut kink, mut spread) = ([0.0; LANES], [false; LANES], [0.0; LANES]);
        // All buffers are zeros between samples: each stage writes, and the next clears,
        // only the entries it lists as changed.
        let (mut changed, mut next_changed) = (Vec::new(), Vec::new());
        let mut dz = vec![0.0; n_out];
        for j in 0..fwd.m {
            // The layers are affine in each parameter: the change for a unit step, scaled.
            net.layers[l].param_delta(
                &self.tensors[l],
                fwd.input(net, l, j),
                t,
                i - slot.offset,
                1.0,
                &mut unit,
                &mut changed,
            );
            for &c in &changed {
                cur[c] = steps.map(|s| s * unit[c]);
                unit[c] = 0.0;
            }
            for k in l + 1..net.layers.len() {
                let layer = &net.layers[k];
                let n = layer.out_len();
                let out_grad =
                    (!self.out_grads.is_empty()).then(|| &self.out_grads[k][j * n..(j + 1) * n]);
                let (crossed, tie) = layer.delta_lanes(
                    &self.tensors[k],
                    fwd.input(net, k, j),
                    fwd.output(net, k, j),
                    &cur[..layer.in_len()],
                    &changed,
                    &mut next[..n],
                    &mut next_changed,
                    out_grad,
                );
                for lane in 0..LANES {
                    kink[lane] |= crossed[lane];
                    spread[lane] += tie[lane];
                }
                for &c in &changed {
                    cur[c] = [0.0; LANES];
                }
                std::mem::swap(&mut cur, &mut next);
                std::mem::swap(&mut changed, &mut next_changed);
            }
            let z0 = fwd.output(net, last, j);
            let y = fwd.target(n_out, j);
            for lane in 0..LANES {
                for (d, c) in dz.iter_mut().zip(&cur[..n_out]) {
                    *d = c[lane];
                }
                if net.output.has_kink() {
                    kink[lane] |= z0
                        .iter()
                        .zip(&dz)
                        .any(|(&z, &d)| (z > 0.0) != (z + d > 0.0));
                }
                let dl = loss_delta(model.loss(), net.output, z0, &dz, y);
                sum[lane].add(dl);
                mag[lane] += dl.abs();
            }
            for &c in &changed {
                cur[c] = [0.0; LANES];
            }
        }
        let m = fwd.m as f64;
        std::array::from_fn(|lane| {
            let step = steps[lane];
            let mut dj = sum[lane].value() * (1.0 / m);
            let mut mg = mag[lane] * (1.0 / m);
            if slot.kind == TensorKind::Weight && model.l2() != 0.0 {
                let th = values[i];
                let dl2 = model.l2() / (2.0 * m) * step * (2.0 * th + step);
                dj += dl2;
                mg += dl2.abs();
            }
            (dj, mg, kink[lane], spread[lane])
        })
    }
}
