//! Fully connected layers, element-wise activations and flatten as [`Layer`] types.

use crate::model::layer::{Kernel, KernelKind, layout_word};
use crate::model::{Activation, ArrayLayout, LANES, Lanes, Layer, ParamShape, TensorKind, Tensors};

use super::math::act_delta;

/// z = W·x + b: W as (n_in, n_out) in the course's samples-first layout, (out, in) in
/// PyTorch's (nn.Linear); an optional bias (n_out).
#[derive(Debug, Clone)]
pub struct Dense {
    /// Inputs per sample.
    pub n_in: usize,
    /// Outputs per sample.
    pub n_out: usize,
    /// Whether a bias tensor follows the weight.
    pub bias: bool,
    /// How the weight is indexed.
    pub layout: ArrayLayout,
}

impl Dense {
    /// Flat index of the weight connecting input `i` to output `o`.
    #[inline]
    fn w(&self, i: usize, o: usize) -> usize {
        match self.layout {
            ArrayLayout::Course => i * self.n_out + o,
            ArrayLayout::Nchw => o * self.n_in + i,
        }
    }
}

impl Layer for Dense {
    fn kind(&self) -> &'static str {
        "dense"
    }
    fn in_len(&self) -> usize {
        self.n_in
    }
    fn out_len(&self) -> usize {
        self.n_out
    }
    fn params(&self) -> Vec<ParamShape> {
        let shape = match self.layout {
            ArrayLayout::Course => vec![self.n_in, self.n_out],
            ArrayLayout::Nchw => vec![self.n_out, self.n_in],
        };
        let mut p = vec![ParamShape {
            kind: TensorKind::Weight,
            shape,
            fan_in: self.n_in,
        }];
        if self.bias {
            p.push(ParamShape {
                kind: TensorKind::Bias,
                shape: vec![self.n_out],
                fan_in: 1,
            });
        }
        p
    }
    fn forward(&self, p: &Tensors<'_>, x: &[f64], y: &mut [f64]) {
        let w = p[0];
        for (o, out) in y.iter_mut().enumerate() {
            let mut s = 0.0;
            for (i, &xi) in x.iter().enumerate() {
                s = w[self.w(i, o)].mul_add(xi, s);
            }
            *out = if self.bias { s + p[1][o] } else { s };
        }
    }
    fn backward(
        &self,
        p: &Tensors<'_>,
        x: &[f64],
        _y: &[f64],
        dy: &[f64],
        dx: &mut [f64],
        dp: &mut [&mut [f64]],
        _slip: Option<usize>,
    ) {
        let w = p[0];
        for (i, d) in dx.iter_mut().enumerate() {
            *d = (0..self.n_out).map(|o| w[self.w(i, o)] * dy[o]).sum();
        }
        for (i, &xi) in x.iter().enumerate() {
            for (o, &g) in dy.iter().enumerate() {
                dp[0][self.w(i, o)] += g * xi;
            }
        }
        if self.bias {
            for (b, &g) in dp[1].iter_mut().zip(dy) {
                *b += g;
            }
        }
    }
    fn delta(&self, p: &Tensors<'_>, _x: &[f64], _y: &[f64], dx: &[f64], dy: &mut [f64]) -> bool {
        dy.fill(0.0);
        for (i, &d) in dx.iter().enumerate() {
            if d != 0.0 {
                for (o, v) in dy.iter_mut().enumerate() {
                    *v += p[0][self.w(i, o)] * d;
                }
            }
        }
        false
    }
    #[allow(clippy::too_many_arguments)]
    fn delta_lanes(
        &self,
        p: &Tensors<'_>,
        _x: &[f64],
        _y: &[f64],
        dx: &[Lanes],
        changed: &[usize],
        dy: &mut [Lanes],
        dy_changed: &mut Vec<usize>,
        _out_grad: Option<&[f64]>,
    ) -> ([bool; LANES], [f64; LANES]) {
        for &i in changed {
            let d = dx[i];
            if d == [0.0; LANES] {
                continue;
            }
            for (o, v) in dy.iter_mut().enumerate() {
                let w = p[0][self.w(i, o)];
                for l in 0..LANES {
                    v[l] += w * d[l];
                }
            }
        }
        dy_changed.clear();
        dy_changed.extend(0..self.n_out);
        ([false; LANES], [0.0; LANES])
    }
    fn param_delta(
        &self,
        _p: &Tensors<'_>,
        x: &[f64],
        tensor: usize,
        index: usize,
        step: f64,
        dy: &mut [f64],
        dy_changed: &mut Vec<usize>,
    ) {
        let o = if tensor == 1 {
            dy[index] = step;
            index
        } else {
            let (i, o) = match self.layout {
                ArrayLayout::Course => (index / self.n_out, index % self.n_out),
                ArrayLayout::Nchw => (index % self.n_in, index / self.n_in),
            };
            dy[o] = step * x[i];
            o
        };
        dy_changed.clear();
        dy_changed.push(o);
    }
    fn kernel(&self) -> Option<Kernel> {
        Some(Kernel {
            kind: KernelKind::Dense,
            words: vec![
                self.n_in as u32,
                self.n_out as u32,
                u32::from(self.bias),
                layout_word(self.layout),
            ],
            slope: 0.0,
        })
    }
}

/// An element-wise activation g (not softmax: that one belongs to the cost).
#[derive(Debug, Clone)]
pub struct Act {
    /// g.
    pub g: Activation,
    /// Values per sample.
    pub len: usize,
}

impl Layer for Act {
    fn kind(&self) -> &'static str {
        "activation"
    }
    fn in_len(&self) -> usize {
        self.len
    }
    fn out_len(&self) -> usize {
        self.len
    }
    fn forward(&self, _p: &Tensors<'_>, x: &[f64], y: &mut [f64]) {
        for (a, &z) in y.iter_mut().zip(x) {
            *a = self.g.apply(z);
        }
    }
    fn backward(
        &self,
        _p: &Tensors<'_>,
        x: &[f64],
        y: &[f64],
        dy: &[f64],
        dx: &mut [f64],
        _dp: &mut [&mut [f64]],
        _slip: Option<usize>,
    ) {
        for (((d, &g), &z), &a) in dx.iter_mut().zip(dy).zip(x).zip(y) {
            *d = g * self.g.derivative(z, a);
        }
    }
    fn delta(&self, _p: &Tensors<'_>, x: &[f64], _y: &[f64], dx: &[f64], dy: &mut [f64]) -> bool {
        let kinky = self.g.has_kink();
        let mut crossed = false;
        for ((v, &z), &d) in dy.iter_mut().zip(x).zip(dx) {
            if d == 0.0 {
                *v = 0.0;
                continue;
            }
            *v = act_delta(self.g, z, d);
            crossed |= kinky && ((z > 0.0) != (z + d > 0.0));
        }
        crossed
    }
    #[allow(clippy::too_many_arguments)]
    fn delta_lanes(
        &self,
        _p: &Tensors<'_>,
        x: &[f64],
        _y: &[f64],
        dx: &[Lanes],
        changed: &[usize],
        dy: &mut [Lanes],
        dy_changed: &mut Vec<usize>,
        _out_grad: Option<&[f64]>,
    ) -> ([bool; LANES], [f64; LANES]) {
        let kinky = self.g.has_kink();
        let mut crossed = [false; LANES];
        dy_changed.clear();
        if self.g == Activation::Relu {
            // act_delta's ReLU cases, written out for the lanes (the hot loop of conv nets).
            for &k in changed {
                let (z, d) = (x[k], dx[k]);
                let on = z > 0.0;
                let mut v = [0.0; LANES];
                for l in 0..LANES {
                    let z1 = z + d[l];
                    v[l] = match (on, z1 > 0.0) {
                        (true, true) => d[l],
                        (true, false) => -z,
                        (false, true) => z1,
                        (false, false) => 0.0,
                    };
                    crossed[l] |= d[l] != 0.0 && on != (z1 > 0.0);
                }
                if v != [0.0; LANES] {
                    dy[k] = v;
                    dy_changed.push(k);
                }
            }
            return (crossed, [0.0; LANES]);
        }
        for &k in changed {
            let (z, d) = (x[k], dx[k]);
            let mut v = [0.0; LANES];
            for l in 0..LANES {
                if d[l] != 0.0 {
                    v[l] = act_delta(self.g, z, d[l]);
                    crossed[l] |= kinky && ((z > 0.0) != (z + d[l] > 0.0));
                }
            }
            // An inactive ReLU unit passes nothing on: leave it out of the list.
            if v != [0.0; LANES] {
                dy[k] = v;
                dy_changed.push(k);
            }
        }
        (crossed, [0.0; LANES])
    }
    fn kernel(&self) -> Option<Kernel> {
        Some(Kernel {
            kind: KernelKind::Activation,
            words: vec![self.g.code()],
            slope: self.g.slope(),
        })
    }
}

/// (H, W, C) channels-last → a vector: in the course's layout the same order (numpy's
/// reshape of (m, H, W, C)), in PyTorch's the (c, h, w) order of nn.Flatten on NCHW.
#[derive(Debug, Clone)]
pub struct Flatten {
    /// Positions H·W.
    pub positions: usize,
    /// Channels C.
    pub channels: usize,
    /// Which order the flattened vector has.
    pub layout: ArrayLayout,
}

impl Flatten {
    /// Output index of channels-last input index `k`.
    #[inline]
    fn to(&self, k: usize) -> usize {
        match self.layout {
            ArrayLayout::Course => k,
            ArrayLayout::Nchw => (k % self.channels) * self.positions + k / self.channels,
        }
    }
}

impl Layer for Flatten {
    fn kind(&self) -> &'static str {
        "flatten"
    }
    fn in_len(&self) -> usize {
        self.positions * self.channels
    }
    fn out_len(&self) -> usize {
        self.positions * self.channels
    }
    fn forward(&self, _p: &Tensors<'_>, x: &[f64], y: &mut [f64]) {
        for (k, &v) in x.iter().enumerate() {
            y[self.to(k)] = v;
        }
    }
    fn backward(
        &self,
        _p: &Tensors<'_>,
        _x: &[f64],
        _y: &[f64],
        dy: &[f64],
        dx: &mut [f64],
        _dp: &mut [&mut [f64]],
        _slip: Option<usize>,
    ) {
        for (k, d) in dx.iter_mut().enumerate() {
            *d = dy[self.to(k)];
        }
    }
    fn delta(&self, p: &Tensors<'_>, _x: &[f64], _y: &[f64], dx: &[f64], dy: &mut [f64]) -> bool {
        // Linear: the change is the forward map of the input's change.
        self.forward(p, dx, dy);
        false
    }
    #[allow(clippy::too_many_arguments)]
    fn delta_lanes(
        &self,
        _p: &Tensors<'_>,
        _x: &[f64],
        _y: &[f64],
        dx: &[Lanes],
        changed: &[usize],
        dy: &mut [Lanes],
        dy_changed: &mut Vec<usize>,
        _out_grad: Option<&[f64]>,
    ) -> ([bool; LANES], [f64; LANES]) {
        dy_changed.clear();
        for &k in changed {
            dy[self.to(k)] = dx[k];
            dy_changed.push(self.to(k));
        }
        ([false; LANES], [0.0; LANES])
    }
    fn kernel(&self) -> Option<Kernel> {
        Some(Kernel {
            kind: KernelKind::Flatten,
            words: vec![
                self.positions as u32,
                self.channels as u32,
                layout_word(self.layout),
            ],
            slope: 0.0,
        })
    }
}
