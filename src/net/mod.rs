//! The reference math of networks given as a sequence of layer types: the built-in layer
//! types ([`Conv2d`], [`MaxPool`], [`AvgPool`], [`Flatten`], [`Dense`], [`Act`]) and how a
//! spec becomes a [`Model`] of them ([`build`]), the f64 forward pass and cost, and the
//! built-in backprop (the "known good" gradient), with a layer's classic slip on demand
//! for the diagnoses.
//!
//! May use: `model`, `error`. The evaluators (`eval`) are built on it, never the reverse.

pub mod conv;
pub mod dense;
pub mod math;
pub mod mlp;
pub mod pool;
pub mod shortcut;

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::model::layer::Padding;
use crate::model::{
    Activation, ArrayLayout, Data, Grads, Layer, LayerSpec, Loss, Model, Net, NetParts, NetSpec,
    Params, TensorKind,
};

pub use conv::Conv2d;
pub use dense::{Act, Dense, Flatten};
pub use pool::{AvgPool, MaxPool, Window};

/// The largest kernel, stride, padding or filter count accepted (sizes stay far from
/// overflow in every product).
const MAX_SIDE: usize = 1 << 24;

/// Builds the model a [`NetSpec`] describes: the geometry of every layer checked (an
/// error names the layer and the sizes that do not fit), activations as their own layers,
/// the last layer's activation kept as the output's (it belongs to the cost).
pub fn build(spec: &NetSpec) -> Result<Model> {
    let (mut h, mut w, mut c) = input_shape_of(spec)?;
    // Every size is checked before anything multiplies it (no overflow on any input).
    let fits = |h: usize, w: usize, c: usize| {
        h.checked_mul(w)
            .and_then(|v| v.checked_mul(c))
            .is_some_and(|n| n <= crate::model::MAX_ELEMENTS)
    };
    let mut layers: Vec<Arc<dyn Layer>> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut output = Activation::Identity;
    let last = spec.layers.len().saturating_sub(1);
    for (k, ls) in spec.layers.iter().enumerate() {
        let at = |msg: String| Error::Spec(format!("layer {} ({}): {msg}", k + 1, kind_of(ls)));
        let numbered = 1 + spec.layers[..k]
            .iter()
            .filter(|l| matches!(l, LayerSpec::Conv2d { .. } | LayerSpec::Dense { .. }))
            .count();
        let (layer, shape, activation) =
            layer_of(ls, (h, w, c), spec.layout, numbered, &mut names).map_err(at)?;
        layers.push(layer);
        (h, w, c) = shape;
        if !fits(h, w, c) {
            return Err(at(format!(
                "its output {h}×{w}×{c} has more than {} values per sample",
                crate::model::MAX_ELEMENTS
            )));
        }
        if k == last {
            output = activation;
        } else if activation == Activation::Softmax {
            return Err(at("softmax is only allowed on the last layer".into()));
        } else if activation != Activation::Identity {
            layers.push(Arc::new(Act {
                g: activation,
                len: h * w * c,
            }));
        }
    }
    Model::layered(NetParts {
        layers,
        output,
        loss: spec.loss,
        l2: spec.l2,
        names: Some(names),
        input_shape: spec.input_shape.clone(),
        array_layout: spec.layout,
        spec: Some(spec.clone()),
    })
}

/// One layer of a spec on an (h, w, c) input: the layer type, its output shape and the
/// activation that follows it; its tensors' names pushed (`numbered`: its number among the
/// layers with parameters). The error says what does not fit (the caller names the layer).
fn layer_of(
    ls: &LayerSpec,
    (h, w, c): Shape,
    layout: ArrayLayout,
    numbered: usize,
    names: &mut Vec<String>,
) -> std::result::Result<(Arc<dyn Layer>, Shape, Activation), String> {
    Ok(match ls {
        LayerSpec::Conv2d {
            filters,
            kernel,
            stride,
            padding,
            activation,
            names: given,
        } => {
            push_names(names, given.as_ref(), numbered, true);
            let conv = conv_of(*filters, kernel.hw(), *stride, padding, (h, w, c), layout)?;
            let shape = (conv.oh, conv.ow, conv.cout);
            (Arc::new(conv), shape, *activation)
        }
        LayerSpec::MaxPool { size, stride } | LayerSpec::AvgPool { size, stride } => {
            let max = matches!(ls, LayerSpec::MaxPool { .. });
            let (layer, shape) = pool_of(size.hw(), *stride, max, (h, w, c))?;
            (layer, shape, Activation::Identity)
        }
        LayerSpec::Flatten => {
            let flat = Flatten {
                positions: h * w,
                channels: c,
                layout,
            };
            (Arc::new(flat), (1, 1, h * w * c), Activation::Identity)
        }
        LayerSpec::Dense {
            units,
            activation,
            bias,
            names: given,
        } => {
            if h * w != 1 {
                return Err(format!(
                    "its input is {h}×{w}×{c}: put a flatten layer before it"
                ));
            }
            if *units == 0 {
                return Err("units must be ≥ 1".into());
            }
            push_names(names, given.as_ref(), numbered, *bias);
            let dense = Dense {
                n_in: c,
                n_out: *units,
                bias: *bias,
                layout,
            };
            (Arc::new(dense), (1, 1, *units), *activation)
        }
    })
}

/// (h, w, c) of one sample, channels-last.
type Shape = (usize, usize, usize);

/// The input's (h, w, c) from the spec's shape in its layout, every size ≥ 1 and the
/// product within [`crate::model::MAX_ELEMENTS`] (checked without overflow).
fn input_shape_of(spec: &NetSpec) -> Result<Shape> {
    let (h, w, c) = match (spec.layout, spec.input_shape.as_slice()) {
        (_, [n]) => (1, 1, *n),
        (ArrayLayout::Course, [h, w, c]) => (*h, *w, *c),
        (ArrayLayout::Nchw, [c, h, w]) => (*h, *w, *c),
        (_, other) => {
            return Err(Error::Spec(format!(
                "input_shape {other:?}: give (H, W, C) (course layout), (C, H, W) (nchw) or (n)"
            )));
        }
    };
    let size = h.checked_mul(w).and_then(|v| v.checked_mul(c));
    if h == 0 || w == 0 || c == 0 || size.is_none_or(|n| n > crate::model::MAX_ELEMENTS) {
        return Err(Error::Spec(format!(
            "input_shape {:?}: every size ≥ 1 and at most {} values per sample",
            spec.input_shape,
            crate::model::MAX_ELEMENTS
        )));
    }
    Ok((h, w, c))
}

/// A max or average pooling layer on an (h, w, c) input, its window checked.
fn pool_of(
    (fh, fw): (usize, usize),
    stride: Option<usize>,
    max: bool,
    (h, w, c): Shape,
) -> std::result::Result<(Arc<dyn Layer>, Shape), String> {
    let s = stride.unwrap_or(fh);
    if fh == 0 || fw == 0 || s == 0 || s > MAX_SIDE {
        return Err(format!("size and stride must be in 1 … {MAX_SIDE}"));
    }
    if fh > h || fw > w {
        return Err(format!("a {fh}×{fw} window does not fit the {h}×{w} input"));
    }
    let win = Window::new(h, w, c, fh, fw, s);
    let shape = (win.oh, win.ow, c);
    if max {
        Ok((Arc::new(MaxPool(win)), shape))
    } else {
        Ok((Arc::new(AvgPool(win)), shape))
    }
}

/// A convolution on an (h, w, c) input, its geometry checked.
fn conv_of(
    filters: usize,
    (fh, fw): (usize, usize),
    stride: usize,
    padding: &Padding,
    (h, w, c): Shape,
    layout: ArrayLayout,
) -> std::result::Result<Conv2d, String> {
    if filters == 0 || fh == 0 || fw == 0 || stride == 0 {
        return Err("filters, kernel and stride must be ≥ 1".into());
    }
    let pixels = match padding {
        Padding::Pixels(p) => *p,
        Padding::Named(_) => 0,
    };
    if [filters, fh, fw, stride, pixels]
        .iter()
        .any(|&v| v > MAX_SIDE)
    {
        return Err(format!(
            "filters, kernel, stride and padding must be at most {MAX_SIDE}"
        ));
    }
    let ((oh, pad_top), (ow, pad_left)) = (
        conv_extent(h, fh, stride, padding)?,
        conv_extent(w, fw, stride, padding)?,
    );
    Ok(Conv2d {
        h,
        w,
        cin: c,
        cout: filters,
        fh,
        fw,
        stride,
        pad_top,
        pad_left,
        oh,
        ow,
        layout,
    })
}

fn kind_of(ls: &LayerSpec) -> &'static str {
    match ls {
        LayerSpec::Conv2d { .. } => "conv2d",
        LayerSpec::MaxPool { .. } => "max_pool",
        LayerSpec::AvgPool { .. } => "avg_pool",
        LayerSpec::Flatten => "flatten",
        LayerSpec::Dense { .. } => "dense",
    }
}

fn push_names(names: &mut Vec<String>, given: Option<&[String; 2]>, k: usize, bias: bool) {
    match given {
        Some([w, b]) => {
            names.push(w.clone());
            if bias {
                names.push(b.clone());
            }
        }
        None => {
            names.push(format!("W{k}"));
            if bias {
                names.push(format!("b{k}"));
            }
        }
    }
}

/// Output size and leading zero padding of a convolution along one axis.
fn conv_extent(
    n: usize,
    f: usize,
    stride: usize,
    padding: &Padding,
) -> std::result::Result<(usize, usize), String> {
    let pixels = match padding {
        Padding::Pixels(p) => *p,
        Padding::Named(s) if s == "valid" => 0,
        Padding::Named(s) if s == "same" => {
            // TensorFlow's rule: output ⌈n/stride⌉, the odd pixel at the bottom/right.
            let out = n.div_ceil(stride);
            let total = ((out - 1) * stride + f).saturating_sub(n);
            return Ok((out, total / 2));
        }
        Padding::Named(s) => return Err(format!("padding {s:?}: a number, \"same\" or \"valid\"")),
    };
    if n + 2 * pixels < f {
        return Err(format!(
            "a kernel of {f} does not fit an input of {n} with padding {pixels}"
        ));
    }
    Ok(((n + 2 * pixels - f) / stride + 1, pixels))
}

/// The parameter tensors of layer `l`, as slices of the flat θ (or gradient).
pub fn tensors_of<'a>(model: &Model, net: &Net, values: &'a [f64], l: usize) -> Vec<&'a [f64]> {
    let slots = model.layout().tensors();
    net.tensors[l]
        .clone()
        .map(|t| &values[slots[t].range()])
        .collect()
}

/// The base pass of a layered network on every sample: inputs and each layer's output,
/// sample-major (sample j's values contiguous), and the targets likewise.
#[derive(Debug, Clone)]
pub struct Forward {
    /// m.
    pub m: usize,
    /// X, m × n_in.
    pub x: Vec<f64>,
    /// Per layer, its output, m × out_len.
    pub outs: Vec<Vec<f64>>,
    /// Y, m × n_out.
    pub y: Vec<f64>,
    /// Per-sample loss (stable forms: softplus, log-sum-exp).
    pub sample_loss: Vec<f64>,
    /// J(θ): Σ losses/m + (λ/2m)·Σ‖W‖², summed in sample order.
    pub cost: f64,
}

impl Forward {
    /// Layer `l`'s input for sample j.
    pub fn input(&self, net: &Net, l: usize, j: usize) -> &[f64] {
        let n = net.layers[l].in_len();
        let src = if l == 0 { &self.x } else { &self.outs[l - 1] };
        &src[j * n..(j + 1) * n]
    }
    /// Layer `l`'s output for sample j.
    pub fn output(&self, net: &Net, l: usize, j: usize) -> &[f64] {
        let n = net.layers[l].out_len();
        &self.outs[l][j * n..(j + 1) * n]
    }
    /// Sample j's targets.
    pub fn target(&self, n_out: usize, j: usize) -> &[f64] {
        &self.y[j * n_out..(j + 1) * n_out]
    }
}

/// The forward pass and cost at θ.
pub fn forward(model: &Model, net: &Net, params: &Params, data: &Data) -> Forward {
    let m = data.m();
    let x: Vec<f64> = data.x.t().iter().copied().collect();
    let y: Vec<f64> = data.y.t().iter().copied().collect();
    let mut outs: Vec<Vec<f64>> = Vec::with_capacity(net.layers.len());
    for (l, layer) in net.layers.iter().enumerate() {
        let p = tensors_of(model, net, params.as_slice(), l);
        let (n_in, n_out) = (layer.in_len(), layer.out_len());
        let mut out = vec![0.0; m * n_out];
        let input = if l == 0 { &x } else { &outs[l - 1] };
        for (xj, yj) in input.chunks_exact(n_in).zip(out.chunks_exact_mut(n_out)) {
            layer.forward(&p, xj, yj);
        }
        outs.push(out);
    }
    let n_out = model.sizes()[1];
    let last = outs.last().expect("a network has layers");
    let sample_loss: Vec<f64> = (0..m)
        .map(|j| {
            math::sample_loss_stable(
                model.loss(),
                net.output,
                &last[j * n_out..(j + 1) * n_out],
                &y[j * n_out..(j + 1) * n_out],
            )
        })
        .collect();
    let mut s = 0.0;
    for &v in &sample_loss {
        s += v;
    }
    let mut cost = (1.0 / m as f64) * s;
    if model.l2() != 0.0 {
        cost += model.l2() / (2.0 * m as f64) * weight_sumsq(model, params);
    }
    Forward {
        m,
        x,
        outs,
        y,
        sample_loss,
        cost,
    }
}

/// The magnitude whose rounding is the noise in a plain J(θ): per sample |loss_j| plus
/// its outputs' conditioning, averaged, plus the L2 term (as the MLP's).
pub fn noise_scale(model: &Model, net: &Net, params: &Params, fwd: &Forward) -> f64 {
    let n_out = model.sizes()[1];
    let last = net.layers.len() - 1;
    let mut total = 0.0;
    for j in 0..fwd.m {
        let mut s = fwd.sample_loss[j].abs();
        for (&z, &y) in fwd.output(net, last, j).iter().zip(fwd.target(n_out, j)) {
            s += math::loss_conditioning(model.loss(), z, net.output.apply(z), y);
        }
        total += s;
    }
    let m = fwd.m as f64;
    total / m + model.l2() / (2.0 * m) * weight_sumsq(model, params)
}

/// Σ‖W‖² over the weight tensors.
pub fn weight_sumsq(model: &Model, params: &Params) -> f64 {
    model
        .layout()
        .tensors()
        .iter()
        .filter(|t| t.kind == TensorKind::Weight)
        .map(|t| {
            params.as_slice()[t.range()]
                .iter()
                .map(|w| w * w)
                .sum::<f64>()
        })
        .sum()
}

/// dloss_j/dz of one sample's output pre-activations (the MLP's formulas: a − y for
/// sigmoid + BCE, softmax·Σy − y for softmax CE, (a − y)·g'(z) for MSE).
pub fn output_gradient(loss: Loss, out: Activation, z: &[f64], y: &[f64], dz: &mut [f64]) {
    match loss {
        Loss::BinaryCrossEntropy => {
            for ((d, &zi), &yi) in dz.iter_mut().zip(z).zip(y) {
                *d = out.apply(zi) - yi;
            }
        }
        Loss::SoftmaxCrossEntropy => {
            let mx = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let se: f64 = z.iter().map(|v| (v - mx).exp()).sum();
            let ysum: f64 = y.iter().sum();
            for ((d, &zi), &yi) in dz.iter_mut().zip(z).zip(y) {
                *d = (zi - mx).exp() / se * ysum - yi;
            }
        }
        Loss::MeanSquaredError => {
            for ((d, &zi), &yi) in dz.iter_mut().zip(z).zip(y) {
                let a = out.apply(zi);
                *d = (a - yi) * out.derivative(zi, a);
            }
        }
    }
}

/// The slip every layer with parameters can have (index for [`backprop_with`]): its
/// parameter gradients from one sample (the last) instead of the sum over the samples.
pub const ONE_SAMPLE: usize = usize::MAX;

/// What [`ONE_SAMPLE`] is, in words.
pub const ONE_SAMPLE_SLIP: crate::model::Slip = crate::model::Slip {
    name: "one_sample",
    says: "the parameter gradients come from one sample (the last) instead of the sum over the samples",
};

/// The analytic gradient by backpropagation; `slip` = (layer, slip index) runs that
/// layer's backward with one of its classic mistakes (for the diagnoses).
pub fn backprop_with(
    model: &Model,
    net: &Net,
    params: &Params,
    data: &Data,
    slip: Option<(usize, usize)>,
) -> Grads {
    let fwd = forward(model, net, params, data);
    backward(model, net, params, &fwd, slip, None)
}

/// ∂J/∂y of every layer's output at θ, per sample (m × out_len each, the 1/m included):
/// what a change of that output is worth to first order.
pub fn output_gradients(model: &Model, net: &Net, params: &Params, fwd: &Forward) -> Vec<Vec<f64>> {
    let mut keep: Vec<Vec<f64>> = net
        .layers
        .iter()
        .map(|l| vec![0.0; fwd.m * l.out_len()])
        .collect();
    backward(model, net, params, fwd, None, Some(&mut keep));
    keep
}

/// The backward pass over `fwd`; `keep` receives each layer's ∂J/∂y per sample.
fn backward(
    model: &Model,
    net: &Net,
    params: &Params,
    fwd: &Forward,
    slip: Option<(usize, usize)>,
    mut keep: Option<&mut Vec<Vec<f64>>>,
) -> Grads {
    let layout = model.layout();
    let mut grads = vec![0.0; model.n_params()];
    let n_out = model.sizes()[1];
    let widest = net.layers.iter().map(|l| l.in_len().max(l.out_len())).max();
    let (mut dy, mut dx) = (
        vec![0.0; widest.unwrap_or(0)],
        vec![0.0; widest.unwrap_or(0)],
    );
    for j in 0..fwd.m {
        let last = net.layers.len() - 1;
        output_gradient(
            model.loss(),
            net.output,
            fwd.output(net, last, j),
            fwd.target(n_out, j),
            &mut dy[..n_out],
        );
        for l in (0..net.layers.len()).rev() {
            let layer = &net.layers[l];
            if let Some(keep) = keep.as_deref_mut() {
                let n = layer.out_len();
                for (k, d) in keep[l][j * n..(j + 1) * n].iter_mut().zip(&dy[..n]) {
                    *k = d / fwd.m as f64;
                }
            }
            let p = tensors_of(model, net, params.as_slice(), l);
            let own = slip.filter(|s| s.0 == l).map(|s| s.1);
            // The generic slip: this layer's parameter gradients from the last sample only.
            let mut dropped = if own == Some(ONE_SAMPLE) && j + 1 < fwd.m {
                grads.clone()
            } else {
                Vec::new()
            };
            let into = if dropped.is_empty() {
                &mut grads
            } else {
                &mut dropped
            };
            let mut dp = tensor_slices_mut(model, net, into, l);
            layer.backward(
                &p,
                fwd.input(net, l, j),
                fwd.output(net, l, j),
                &dy[..layer.out_len()],
                &mut dx[..layer.in_len()],
                &mut dp,
                own.filter(|&s| s != ONE_SAMPLE),
            );
            std::mem::swap(&mut dx, &mut dy);
        }
    }
    let m = fwd.m as f64;
    for v in &mut grads {
        *v *= 1.0 / m;
    }
    if model.l2() != 0.0 {
        for t in layout
            .tensors()
            .iter()
            .filter(|t| t.kind == TensorKind::Weight)
        {
            for i in t.range() {
                grads[i] += model.l2() / m * params.as_slice()[i];
            }
        }
    }
    Grads::new(layout.clone(), grads).expect("layout length")
}

/// Layer `l`'s tensors as mutable slices of a flat vector (they are contiguous in it).
fn tensor_slices_mut<'a>(
    model: &Model,
    net: &Net,
    values: &'a mut [f64],
    l: usize,
) -> Vec<&'a mut [f64]> {
    let slots = model.layout().tensors();
    let range = net.tensors[l].clone();
    let Some(first) = slots.get(range.start).filter(|_| !range.is_empty()) else {
        return Vec::new();
    };
    let mut rest = &mut values[first.offset..];
    let mut out = Vec::with_capacity(range.len());
    for t in range {
        let (head, tail) = rest.split_at_mut(slots[t].len());
        out.push(head);
        rest = tail;
    }
    out
}
