//! Max and average pooling as [`Layer`] types: per channel, no padding, windows `stride`
//! apart (overlapping windows add their gradients).

use crate::model::layer::{Kernel, KernelKind};
use crate::model::{LANES, Lanes, Layer, Slip, Tensors};

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
    /// Per input position (y·W + x): the windows that read it, oy0..=oy1 × ox0..=ox1.
    reach: Vec<[u32; 4]>,
}

impl Window {
    /// A window of fh × fw, `stride` apart, over an h × w × c input (fh ≤ h, fw ≤ w).
    pub fn new(h: usize, w: usize, c: usize, fh: usize, fw: usize, stride: usize) -> Window {
        let (oh, ow) = ((h - fh) / stride + 1, (w - fw) / stride + 1);
        // Windows o with o·stride ≤ v < o·stride + f.
        let span = |v: usize, f: usize, n: usize| {
            (
                (v + 1).saturating_sub(f).div_ceil(stride),
                (v / stride).min(n - 1),
            )
        };
        let reach = (0..h * w)
            .map(|pos| {
                let ((y0, y1), (x0, x1)) = (span(pos / w, fh, oh), span(pos % w, fw, ow));
                [y0 as u32, y1 as u32, x0 as u32, x1 as u32]
            })
            .collect();
        Window {
            h,
            w,
            c,
            fh,
            fw,
            stride,
            oh,
            ow,
            reach,
        }
    }
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
    /// The outputs whose windows read any of `changed`, no repeats, in the order first
    /// met (entries whose change is 0 in every lane change nothing). `dy` (all zeros on
    /// entry) marks them with NaN in lane 0, which the caller overwrites.
    fn touched_lanes(
        &self,
        changed: &[usize],
        dx: &[Lanes],
        dy: &mut [Lanes],
        out: &mut Vec<usize>,
    ) {
        out.clear();
        for &k in changed {
            if dx[k] == [0.0; LANES] {
                continue;
            }
            let pos = k / self.c;
            let ch = k - pos * self.c;
            let [oy0, oy1, ox0, ox1] = self.reach[pos].map(|v| v as usize);
            for oy in oy0..=oy1 {
                for ox in ox0..=ox1 {
                    let q = (oy * self.ow + ox) * self.c + ch;
                    if !dy[q][0].is_nan() {
                        dy[q][0] = f64::NAN;
                        out.push(q);
                    }
                }
            }
        }
    }
    /// Calls `f` on output `q`'s window entries, row by row.
    #[inline(always)]
    fn each_entry(&self, q: usize, mut f: impl FnMut(usize)) {
        let (pos, ch) = (q / self.c, q % self.c);
        let (oy, ox) = (pos / self.ow, pos % self.ow);
        for i in 0..self.fh {
            let row = ((oy * self.stride + i) * self.w + ox * self.stride) * self.c + ch;
            for j in 0..self.fw {
                f(row + j * self.c);
            }
        }
    }
    /// The kernels' description of a pooling layer over this window.
    fn kernel(&self, kind: KernelKind) -> Kernel {
        Kernel {
            kind,
            words: [
                self.h,
                self.w,
                self.c,
                self.fh,
                self.fw,
                self.stride,
                self.oh,
                self.ow,
            ]
            .map(|v| v as u32)
            .to_vec(),
            slope: 0.0,
        }
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
    #[allow(clippy::too_many_arguments)]
    fn delta_lanes(
        &self,
        _p: &Tensors<'_>,
        x: &[f64],
        y: &[f64],
        dx: &[Lanes],
        changed: &[usize],
        dy: &mut [Lanes],
        dy_changed: &mut Vec<usize>,
        out_grad: Option<&[f64]>,
    ) -> ([bool; LANES], [f64; LANES]) {
        // max_k(x_k + dx_k) − x* = max_k((x_k − x*) + dx_k), per lane: a term of the
        // maxima at θ (x_k = x*) is dx_k exactly. A window whose maxima did not change keeps
        // them (dx = 0 there), so its change is max(0, the best changed entry's term): the
        // work follows the changed entries. A window where a maximum changed is redone
        // whole; its tied maxima's spread of dx is the tie width (see `Layer::delta_lanes`).
        self.0.touched_lanes(changed, dx, dy, dy_changed);
        for &q in dy_changed.iter() {
            dy[q] = [f64::NEG_INFINITY; LANES];
        }
        let mut whole = Vec::new();
        for &k in changed {
            if dx[k] == [0.0; LANES] {
                continue;
            }
            let pos = k / self.0.c;
            let ch = k - pos * self.0.c;
            let [oy0, oy1, ox0, ox1] = self.0.reach[pos].map(|v| v as usize);
            for oy in oy0..=oy1 {
                for ox in ox0..=ox1 {
                    let q = (oy * self.0.ow + ox) * self.0.c + ch;
                    if x[k] == y[q] {
                        whole.push(q);
                    } else {
                        let gap = x[k] - y[q];
                        for l in 0..LANES {
                            dy[q][l] = dy[q][l].max(gap + dx[k][l]);
                        }
                    }
                }
            }
        }
        whole.sort_unstable();
        whole.dedup();
        let mut crossed = [false; LANES];
        for &q in dy_changed.iter() {
            if whole.binary_search(&q).is_err() {
                for l in 0..LANES {
                    crossed[l] |= dy[q][l] > 0.0;
                    dy[q][l] = dy[q][l].max(0.0);
                }
            }
        }
        let mut spread = [0.0; LANES];
        for &q in &whole {
            let top = y[q];
            let (mut tied, mut others) = ([f64::NEG_INFINITY; LANES], [f64::NEG_INFINITY; LANES]);
            let (mut lo, mut n_tied) = ([f64::INFINITY; LANES], 0);
            self.0.each_entry(q, |k| {
                if x[k] == top {
                    n_tied += 1;
                    for l in 0..LANES {
                        tied[l] = tied[l].max(dx[k][l]);
                        lo[l] = lo[l].min(dx[k][l]);
                    }
                } else {
                    for l in 0..LANES {
                        others[l] = others[l].max((x[k] - top) + dx[k][l]);
                    }
                }
            });
            for l in 0..LANES {
                crossed[l] |= others[l] > tied[l];
                dy[q][l] = tied[l].max(others[l]);
                if let Some(g) = out_grad.filter(|_| n_tied > 1 && tied[l] > lo[l]) {
                    spread[l] += g[q].abs() * (tied[l] - lo[l]);
                }
            }
        }
        (crossed, spread)
    }
    fn slips(&self) -> &'static [Slip] {
        MAX_SLIPS
    }
    fn kernel(&self) -> Option<Kernel> {
        Some(self.0.kernel(KernelKind::MaxPool))
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
        self.0.touched_lanes(changed, dx, dy, dy_changed);
        let n = (self.0.fh * self.0.fw) as f64;
        for &q in dy_changed.iter() {
            let mut s = [0.0; LANES];
            self.0.each_entry(q, |k| {
                for l in 0..LANES {
                    s[l] += dx[k][l];
                }
            });
            dy[q] = s.map(|v| v / n);
        }
        ([false; LANES], [0.0; LANES])
    }
    fn slips(&self) -> &'static [Slip] {
        AVG_SLIPS
    }
    fn kernel(&self) -> Option<Kernel> {
        Some(self.0.kernel(KernelKind::AvgPool))
    }
}
