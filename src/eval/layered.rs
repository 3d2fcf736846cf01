//! The f64 Δ path of a network given as layer types (conv nets, …): for each perturbation
//! and sample, the changed layer's output change in closed form ([`Layer::param_delta`]:
//! one output channel of a conv layer, one unit of a dense one), carried layer by layer by
//! each type's Δ form ([`Layer::delta`]: sparse in the entries that changed, kinks
//! flagged), into the loss's closed-form change; ΔJ± summed over samples with Neumaier's
//! compensation. No J± is formed, so nothing cancels, whatever ε is.
//!
//! May use: `net`, `model`, `eval::cpu` (the shared driver: threads, progress, results).

use std::ops::Range;

use crate::error::Result;
use crate::model::{Data, Model, Net, Params, TensorKind};
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
        epsilon,
        owner: owners(model, net),
        tensors: (0..net.layers.len())
            .map(|l| net::tensors_of(model, net, params.as_slice(), l))
            .collect(),
        widest: net.layers.iter().map(|l| l.out_len()).max().unwrap_or(0),
    };
    let rows = each_parameter(range, threads, |_, i| {
        let (p, mp, kp, tie) = ctx.eval(i, 1.0);
        let (q, mq, kq, _) = ctx.eval(i, -1.0);
        ((p, q, kink_bits(kp, kq), [mp, mq]), tie)
    });
    let (rows, ties): (Vec<_>, Vec<f64>) = rows.into_iter().unzip();
    let scale = net::noise_scale(model, net, params, &fwd);
    let mut out = assemble(fwd.cost, scale, rows, true);
    out.tie_widths = has_ties.then_some(ties);
    Ok(out)
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
    epsilon: f64,
    owner: Vec<(usize, usize)>,
    /// Per layer, its tensors of θ.
    tensors: Vec<Vec<&'a [f64]>>,
    widest: usize,
}

impl Ctx<'_> {
    /// ΔJ of θ_i += sign·ε, Σ_j|Δloss_j|/m + |ΔL2|, whether a kink was crossed, and the
    /// width of the valid derivatives that ties at θ leave open.
    fn eval(&self, i: usize, sign: f64) -> (f64, f64, bool, f64) {
        let (model, net, fwd) = (self.model, self.net, self.fwd);
        let layout = model.layout();
        let pos = layout.locate(i).expect("range checked");
        let slot = &layout.tensors()[pos.tensor];
        let (l, t) = self.owner[pos.tensor];
        let step = sign * self.epsilon;
        let values = self.params.as_slice();
        let n_out = model.sizes()[1];
        let last = net.layers.len() - 1;
        let (mut cur, mut next) = (vec![0.0; self.widest], vec![0.0; self.widest]);
        let (mut sum, mut mag, mut kink, mut spread) = (Compensated::default(), 0.0, false, 0.0);
        // Both buffers are all zeros between samples: each stage writes, and the next
        // clears, only the entries it lists as changed.
        let (mut changed, mut next_changed) = (Vec::new(), Vec::new());
        for j in 0..fwd.m {
            let layer = &net.layers[l];
            layer.param_delta(
                &self.tensors[l],
                fwd.input(net, l, j),
                t,
                i - slot.offset,
                step,
                &mut cur[..layer.out_len()],
                &mut changed,
            );
            for k in l + 1..net.layers.len() {
                let layer = &net.layers[k];
                let n = layer.out_len();
                let out_grad =
                    (!self.out_grads.is_empty()).then(|| &self.out_grads[k][j * n..(j + 1) * n]);
                let (crossed, tie) = layer.delta_sparse(
                    &self.tensors[k],
                    fwd.input(net, k, j),
                    fwd.output(net, k, j),
                    &cur[..layer.in_len()],
                    &changed,
                    &mut next[..n],
                    &mut next_changed,
                    out_grad,
                );
                kink |= crossed;
                spread += tie;
                for &c in &changed {
                    cur[c] = 0.0;
                }
                std::mem::swap(&mut cur, &mut next);
                std::mem::swap(&mut changed, &mut next_changed);
            }
            let z0 = fwd.output(net, last, j);
            let dz = &cur[..n_out];
            if net.output.has_kink() {
                kink |= z0.iter().zip(dz).any(|(&z, &d)| (z > 0.0) != (z + d > 0.0));
            }
            let dl = loss_delta(model.loss(), net.output, z0, dz, fwd.target(n_out, j));
            sum.add(dl);
            mag += dl.abs();
            for &c in &changed {
                cur[c] = 0.0;
            }
        }
        let m = fwd.m as f64;
        let mut dj = sum.value() * (1.0 / m);
        mag *= 1.0 / m;
        if slot.kind == TensorKind::Weight && model.l2() != 0.0 {
            let th = values[i];
            let dl2 = model.l2() / (2.0 * m) * step * (2.0 * th + step);
            dj += dl2;
            mag += dl2.abs();
        }
        (dj, mag, kink, spread / self.epsilon)
    }
}
