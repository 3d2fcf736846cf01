//! Max and average pooling as [`Layer`] types: per channel, no padding, windows `stride`
//! apart (overlapping windows add their gradients).

use crate::model::{Layer, Slip, Tensors};

/// A pooling window's geometry on channels-last samples.
#[derive(Debug, Clone)]
pub struct Window {
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Channels.
    pub c: usize,
    /// Window height.
    pub fh: usize,
    /// Window width.
    pub fw: usize,
    /// Stride.
    pub stride: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
}

impl Window {
    /// The input indices (channels-last) of output `q`'s window, row by row.
    #[inline]
    fn entries(&self, q: usize) -> impl Iterator<Item = usize> + '_ {
        let (pos, ch) = (q / self.c, q % self.c);
        let (oy, ox) = (pos / self.ow, pos % self.ow);
        (0..self.fh).flat_map(move |i| {
            (0..self.fw).map(move |j| {
                ((oy * self.stride + i) * self.w + ox * self.stride + j) * self.c + ch
            })
        })
    }
    fn in_len(&self) -> usize {
        self.h * self.w * self.c
    }
    fn out_len(&self) -> usize {
        self.oh * self.ow * self.c
    }
}

const MAX_SLIPS: &[Slip] = &[
    Slip {
        name: "max_to_all",
        says: "the max-pool gradient goes to every entry of the window, not only its maximum",
    },
    Slip {
        name: "max_to_first_entry",
        says: "the max-pool gradient goes to the window's first (top-left) entry, not its maximum",
    },
];

/// Max pooling. The gradient goes to the window's first maximum (the course's mask,
/// PyTorch's choice too); at a tie any convex combination is a valid subgradient, and the
/// verdict accepts it.
#[derive(Debug, Clone)]
pub struct MaxPool(pub Window);

impl MaxPool {
    /// The first maximum of output `q`'s window.
    fn argmax(&self, x: &[f64], q: usize) -> usize {
        let mut best = usize::MAX;
        for k in self.0.entries(q) {
            if best == usize::MAX || x[k] > x[best] {
                best = k;
            }
        }
        best
    }
}

impl Layer for MaxPool {
    fn kind(&self) -> &'static str {
        "max_pool"
    }
    fn in_len(&self) -> usize {
        self.0.in_len()
    }
    fn out_len(&self) -> usize {
        self.0.out_len()
    }
    fn forward(&self, _p: &Tensors<'_>, x: &[f64], y: &mut [f64]) {
        for (q, v) in y.iter_mut().enumerate() {
            *v = x[self.argmax(x, q)];
        }
    }
    fn backward(
        &self,
        _p: &Tensors<'_>,
        x: &[f64],
        _y: &[f64],
        dy: &[f64],
        dx: &mut [f64],
        _dp: &mut [&mut [f64]],
        slip: Option<usize>,
    ) {
        dx.fill(0.0);
        for (q, &g) in dy.iter().enumerate() {
            match slip {
                Some(0) => self.0.entries(q).for_each(|k| dx[k] += g),
                Some(_) => {
                    let first = self.0.entries(q).next().expect("a window has entries");
                    dx[first] += g;
                }
                None => dx[self.argmax(x, q)] += g,
            }
        }
    }
    fn delta(&self, _p: &Tensors<'_>, x: &[f64], y: &[f64], dx: &[f64], dy: &mut [f64]) -> bool {
        // max_k(x_k + dx_k) − x* = max_k((x_k − x*) + dx_k): a term of the maxima at θ
        // (x_k = x*) is dx_k exactly. An entry that was not a maximum ending strictly above
        // them is a kink crossed within the step; a tie at θ is a kink at θ itself, whose
        // ambiguity `tie_spread` accounts for.
        let mut crossed = false;
        for (q, v) in dy.iter_mut().enumerate() {
            if self.0.entries(q).all(|k| dx[k] == 0.0) {
                *v = 0.0;
                continue;
            }
            let top = y[q];
            let (mut tied, mut others) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
            for k in self.0.entries(q) {
                if x[k] == top {
                    tied = tied.max(dx[k]);
                } else {
                    others = others.max((x[k] - top) + dx[k]);
                }
            }
            crossed |= others > tied;
            *v = tied.max(others);
        }
        crossed
    }
    fn tie_spread(&self, x: &[f64], y: &[f64], dx: &[f64], out_grad: &[f64]) -> f64 {
        let mut spread = 0.0;
        for (q, &g) in out_grad.iter().enumerate() {
            let (mut lo, mut hi, mut n) = (f64::INFINITY, f64::NEG_INFINITY, 0);
            for k in self.0.entries(q).filter(|&k| x[k] == y[q]) {
                lo = lo.min(dx[k]);
                hi = hi.max(dx[k]);
                n += 1;
            }
            if n > 1 && hi > lo {
                spread += g.abs() * (hi - lo);
            }
        }
        spread
    }
    fn slips(&self) -> &'static [Slip] {
        MAX_SLIPS
    }
}

const AVG_SLIPS: &[Slip] = &[Slip {
    name: "avg_not_divided",
    says: "the average-pool gradient is not divided by the window size",
}];

/// Average pooling.
#[derive(Debug, Clone)]
pub struct AvgPool(pub Window);

impl Layer for AvgPool {
    fn kind(&self) -> &'static str {
        "avg_pool"
    }
    fn in_len(&self) -> usize {
        self.0.in_len()
    }
    fn out_len(&self) -> usize {
        self.0.out_len()
    }
    fn forward(&self, _p: &Tensors<'_>, x: &[f64], y: &mut [f64]) {
        let n = (self.0.fh * self.0.fw) as f64;
        for (q, v) in y.iter_mut().enumerate() {
            *v = self.0.entries(q).map(|k| x[k]).sum::<f64>() / n;
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
        slip: Option<usize>,
    ) {
        let n = if slip.is_some() {
            1.0
        } else {
            (self.0.fh * self.0.fw) as f64
        };
        dx.fill(0.0);
        for (q, &g) in dy.iter().enumerate() {
            self.0.entries(q).for_each(|k| dx[k] += g / n);
        }
    }
    fn delta(&self, p: &Tensors<'_>, _x: &[f64], _y: &[f64], dx: &[f64], dy: &mut [f64]) -> bool {
        // Linear.
        self.forward(p, dx, dy);
        false
    }
    fn slips(&self) -> &'static [Slip] {
        AVG_SLIPS
    }
}
