//! 2-D convolution as a [`Layer`] type: cross-correlation with zero padding and a bias per
//! filter, on channels-last samples, weights in the course's or PyTorch's layout.

use crate::model::layer::{Kernel, KernelKind, layout_word};
use crate::model::{ArrayLayout, LANES, Lanes, Layer, ParamShape, Slip, TensorKind, Tensors};

/// The classic conv backprop slips (index = `slip` in [`Layer::backward`]).
const SLIPS: &[Slip] = &[
    Slip {
        name: "kernel_flipped",
        says: "dW and dA_prev use the kernel flipped (convolution instead of the forward pass's cross-correlation)",
    },
    Slip {
        name: "db_one_position",
        says: "db is not summed over the output positions (one position's dZ per sample)",
    },
    Slip {
        name: "stride_ignored",
        says: "the backward pass ignores the stride (windows start at every position, not every stride-th)",
    },
    Slip {
        name: "padding_not_cropped",
        says: "dA_prev is the padded gradient not cropped by the padding (shifted by the pad)",
    },
];
const KERNEL_FLIPPED: usize = 0;
const DB_ONE_POSITION: usize = 1;
const STRIDE_IGNORED: usize = 2;
const PADDING_NOT_CROPPED: usize = 3;

/// A convolution's geometry (all sizes per sample).
#[derive(Debug, Clone)]
pub struct Conv2d {
    /// Input height, width, channels.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Input channels C_prev.
    pub cin: usize,
    /// Filters C.
    pub cout: usize,
    /// Kernel height.
    pub fh: usize,
    /// Kernel width.
    pub fw: usize,
    /// Stride (both directions).
    pub stride: usize,
    /// Zero rows above the input.
    pub pad_top: usize,
    /// Zero columns left of it.
    pub pad_left: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
    /// How the weight is indexed.
    pub layout: ArrayLayout,
}

impl Conv2d {
    /// Flat index of W at kernel row i, column j, input channel ci, filter co.
    #[inline]
    fn widx(&self, i: usize, j: usize, ci: usize, co: usize) -> usize {
        match self.layout {
            ArrayLayout::Course => ((i * self.fw + j) * self.cin + ci) * self.cout + co,
            ArrayLayout::Nchw => ((co * self.cin + ci) * self.fh + i) * self.fw + j,
        }
    }

    /// (i, j, ci, co) of a flat weight index.
    fn unravel(&self, k: usize) -> (usize, usize, usize, usize) {
        match self.layout {
            ArrayLayout::Course => {
                let co = k % self.cout;
                let r = k / self.cout;
                let ci = r % self.cin;
                let r = r / self.cin;
                (r / self.fw, r % self.fw, ci, co)
            }
            ArrayLayout::Nchw => {
                let j = k % self.fw;
                let r = k / self.fw;
                let i = r % self.fh;
                let r = r / self.fh;
                (i, j, r % self.cin, r / self.cin)
            }
        }
    }

    /// The input position a window at output (oy, ox) reads at kernel offset (i, j),
    /// with windows `stride` apart; `None` in the padding.
    #[inline]
    fn input_at(&self, oy: usize, ox: usize, i: usize, j: usize, stride: usize) -> Option<usize> {
        let y = (oy * stride + i).checked_sub(self.pad_top)?;
        let x = (ox * stride + j).checked_sub(self.pad_left)?;
        (y < self.h && x < self.w).then_some(y * self.w + x)
    }
}

impl Layer for Conv2d {
    fn kind(&self) -> &'static str {
        "conv2d"
    }
    fn in_len(&self) -> usize {
        self.h * self.w * self.cin
    }
    fn out_len(&self) -> usize {
        self.oh * self.ow * self.cout
    }
    fn params(&self) -> Vec<ParamShape> {
        let (w, b) = match self.layout {
            ArrayLayout::Course => (
                vec![self.fh, self.fw, self.cin, self.cout],
                vec![1, 1, 1, self.cout],
            ),
            ArrayLayout::Nchw => (vec![self.cout, self.cin, self.fh, self.fw], vec![self.cout]),
        };
        vec![
            ParamShape {
                kind: TensorKind::Weight,
                shape: w,
                fan_in: self.fh * self.fw * self.cin,
            },
            ParamShape {
                kind: TensorKind::Bias,
                shape: b,
                fan_in: 1,
            },
        ]
    }
    fn forward(&self, p: &Tensors<'_>, x: &[f64], y: &mut [f64]) {
        let (wt, b) = (p[0], p[1]);
        for oy in 0..self.oh {
            for ox in 0..self.ow {
                let out = &mut y[(oy * self.ow + ox) * self.cout..][..self.cout];
                out.copy_from_slice(b);
                for i in 0..self.fh {
                    for j in 0..self.fw {
                        let Some(at) = self.input_at(oy, ox, i, j, self.stride) else {
                            continue;
                        };
                        for ci in 0..self.cin {
                            let v = x[at * self.cin + ci];
                            for (co, o) in out.iter_mut().enumerate() {
                                *o = wt[self.widx(i, j, ci, co)].mul_add(v, *o);
                            }
                        }
                    }
                }
            }
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
        slip: Option<usize>,
    ) {
        let wt = p[0];
        let stride = if slip == Some(STRIDE_IGNORED) {
            1
        } else {
            self.stride
        };
        let flip = slip == Some(KERNEL_FLIPPED);
        dx.fill(0.0);
        for oy in 0..self.oh {
            for ox in 0..self.ow {
                let g = &dy[(oy * self.ow + ox) * self.cout..][..self.cout];
                for i in 0..self.fh {
                    for j in 0..self.fw {
                        let Some(at) = self.input_at(oy, ox, i, j, stride) else {
                            continue;
                        };
                        // Where the gradient lands in dA_prev: the padded position not
                        // cropped (shifted by the pad) is a slip.
                        let land = if slip == Some(PADDING_NOT_CROPPED) {
                            let (y, xx) = (oy * stride + i, ox * stride + j);
                            (y < self.h && xx < self.w).then_some(y * self.w + xx)
                        } else {
                            Some(at)
                        };
                        let (ki, kj) = if flip {
                            (self.fh - 1 - i, self.fw - 1 - j)
                        } else {
                            (i, j)
                        };
                        for ci in 0..self.cin {
                            let v = x[at * self.cin + ci];
                            let mut s = 0.0;
                            for (co, &gc) in g.iter().enumerate() {
                                let k = self.widx(ki, kj, ci, co);
                                s += wt[k] * gc;
                                dp[0][k] += v * gc;
                            }
                            if let Some(l) = land {
                                dx[l * self.cin + ci] += s;
                            }
                        }
                    }
                }
            }
        }
        let positions = self.oh * self.ow;
        for (co, b) in dp[1].iter_mut().enumerate() {
            if slip == Some(DB_ONE_POSITION) {
                *b += dy[(positions - 1) * self.cout + co];
            } else {
                *b += (0..positions).map(|q| dy[q * self.cout + co]).sum::<f64>();
            }
        }
    }
    fn delta(&self, p: &Tensors<'_>, _x: &[f64], _y: &[f64], dx: &[f64], dy: &mut [f64]) -> bool {
        // Linear in x: the forward map of the change, without the bias.
        let no_bias = vec![0.0; self.cout];
        self.forward(&[p[0], &no_bias], dx, dy);
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
        // Linear in x: scatter each changed input entry to the outputs whose windows read it
        // (first the positions reached, marked with NaN in channel 0 once each).
        let wt = p[0];
        dy_changed.clear();
        for pass in 0..2 {
            for &k in changed {
                let d = dx[k];
                if d == [0.0; LANES] {
                    continue;
                }
                let (at, ci) = (k / self.cin, k % self.cin);
                let (iy, ix) = (at / self.w + self.pad_top, at % self.w + self.pad_left);
                for i in 0..self.fh.min(iy + 1) {
                    let oy = iy - i;
                    if oy % self.stride != 0 || oy / self.stride >= self.oh {
                        continue;
                    }
                    for j in 0..self.fw.min(ix + 1) {
                        let ox = ix - j;
                        if ox % self.stride != 0 || ox / self.stride >= self.ow {
                            continue;
                        }
                        let q = (oy / self.stride) * self.ow + ox / self.stride;
                        let out = &mut dy[q * self.cout..][..self.cout];
                        if pass == 0 {
                            if !out[0][0].is_nan() {
                                out[0][0] = f64::NAN;
                                dy_changed.push(q);
                            }
                            continue;
                        }
                        for (co, v) in out.iter_mut().enumerate() {
                            let w = wt[self.widx(i, j, ci, co)];
                            for l in 0..LANES {
                                v[l] += w * d[l];
                            }
                        }
                    }
                }
            }
            if pass == 0 {
                for &q in dy_changed.iter() {
                    dy[q * self.cout][0] = 0.0;
                }
            }
        }
        let positions = dy_changed.len();
        for t in 0..positions {
            let q = dy_changed[t];
            dy_changed.extend((1..self.cout).map(|co| q * self.cout + co));
            dy_changed[t] = q * self.cout;
        }
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
        dy_changed.clear();
        if tensor == 1 {
            for q in 0..self.oh * self.ow {
                dy[q * self.cout + index] = step;
                dy_changed.push(q * self.cout + index);
            }
            return;
        }
        // ΔZ[·, ·, co] = step · the input channel ci shifted by (i, j).
        let (i, j, ci, co) = self.unravel(index);
        for oy in 0..self.oh {
            for ox in 0..self.ow {
                if let Some(at) = self.input_at(oy, ox, i, j, self.stride) {
                    let q = (oy * self.ow + ox) * self.cout + co;
                    dy[q] = step * x[at * self.cin + ci];
                    dy_changed.push(q);
                }
            }
        }
    }
    fn slips(&self) -> &'static [Slip] {
        SLIPS
    }
    fn kernel(&self) -> Option<Kernel> {
        Some(Kernel {
            kind: KernelKind::Conv2d,
            words: [
                self.h,
                self.w,
                self.cin,
                self.cout,
                self.fh,
                self.fw,
                self.stride,
                self.pad_top,
                self.pad_left,
                self.oh,
                self.ow,
            ]
            .iter()
            .map(|&v| v as u32)
            .chain([layout_word(self.layout)])
            .collect(),
            slope: 0.0,
        })
    }
}
