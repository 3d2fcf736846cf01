//! Networks as a sequence of layer types: the [`Layer`] trait every layer type implements
//! (its parameter tensors and its math on one sample), the JSON spec of such a network
//! ([`NetSpec`]: conv2d, pooling, flatten, dense) and the array layouts users bring.
//!
//! The trait is defined here, below every evaluator; the built-in layer types implement it
//! in `net` (their CPU f64 math), and a new layer type is one more implementation — check,
//! verdict, report and the front ends see only the trait and the flat parameter layout.
//!
//! Activations inside a layered network are channels-last: a sample's values are laid
//! out (h, w, c) row-major whatever layout the user's arrays came in; loading converts.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Activation, Loss, TensorKind};

/// One parameter tensor of a layer, as the user indexes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamShape {
    /// Weight (counted in the L2 term) or bias.
    pub kind: TensorKind,
    /// The shape as the user's arrays have it, e.g. (f, f, C_prev, C) or (C_out, C_in, f, f).
    pub shape: Vec<usize>,
    /// How many products are summed into each output it feeds (error growth of the sums).
    pub fan_in: usize,
}

/// How many input changes [`Layer::delta_lanes`] carries at once: a perturbation's
/// +ε, −ε, +2ε and −2ε steps.
pub const LANES: usize = 4;

/// One entry's change in each lane.
pub type Lanes = [f64; LANES];

/// The parameter tensors of one layer, each a slice of the flat θ (or of the gradient).
pub type Tensors<'a> = [&'a [f64]];

/// A layer type: its parameter tensors and its math on one sample, in f64.
///
/// `x` is the layer's input for one sample (`in_len` values), `y` its output
/// (`out_len`), `p` its parameter tensors in the order of [`Layer::params`]. Every
/// method is the reference math of the layer: the built-in backprop, the plain forward pass
/// and the Δ path are all made of these calls.
pub trait Layer: fmt::Debug + Send + Sync {
    /// The type's name in specs and messages, e.g. "conv2d".
    fn kind(&self) -> &'static str;
    /// Values per sample going in.
    fn in_len(&self) -> usize;
    /// Values per sample coming out.
    fn out_len(&self) -> usize;
    /// Its parameter tensors (none for activations, pooling, flatten).
    fn params(&self) -> Vec<ParamShape> {
        Vec::new()
    }
    /// y = layer(x).
    fn forward(&self, p: &Tensors<'_>, x: &[f64], y: &mut [f64]);
    /// Backpropagation through the layer: writes dJ/dx into `dx` and adds dJ/dp into `dp`
    /// (one slice per tensor, summed over samples by the caller's calls). `slip` selects
    /// one of [`Layer::slips`] (a classic mistake, for the diagnoses); `None` is correct.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        p: &Tensors<'_>,
        x: &[f64],
        y: &[f64],
        dy: &[f64],
        dx: &mut [f64],
        dp: &mut [&mut [f64]],
        slip: Option<usize>,
    );
    /// The Δ form: the change of the output when the input changes by `dx` (y(x + dx) −
    /// y(x), computed without subtracting two rounded outputs). Returns whether the change
    /// crossed a kink (a ReLU unit across 0, a max-pool window's winner). Entries of `dx`
    /// that are exactly 0 cost nothing: a perturbation's change is sparse early on.
    fn delta(&self, p: &Tensors<'_>, x: &[f64], y: &[f64], dx: &[f64], dy: &mut [f64]) -> bool;
    /// [`Layer::delta`] where only the entries `changed` of `dx` (no repeats) can be
    /// nonzero: writes only the entries of `dy` it lists in `dy_changed` (no repeats, in
    /// a deterministic order; `dy` is all zeros on entry), so a perturbation's work follows what it
    /// changed. With `out_grad` (∂J/∂y of this sample) it also returns the tie width:
    /// where θ sits exactly on a tie (a max-pool window with several equal maxima) that
    /// `dx` moves apart, every tied entry may take the gradient, and the derivative along
    /// `dx` is any value in an interval; Σ |∂J/∂y_q|·(max − min of the tied entries' dx)
    /// is that interval's first-order width. The default is the dense `delta`, every
    /// output listed, no ties.
    #[allow(clippy::too_many_arguments)]
    fn delta_sparse(
        &self,
        p: &Tensors<'_>,
        x: &[f64],
        y: &[f64],
        dx: &[f64],
        _changed: &[usize],
        dy: &mut [f64],
        dy_changed: &mut Vec<usize>,
        _out_grad: Option<&[f64]>,
    ) -> (bool, f64) {
        let kink = self.delta(p, x, y, dx, dy);
        dy_changed.clear();
        dy_changed.extend(0..dy.len());
        (kink, 0.0)
    }
    /// [`Layer::delta_sparse`] for [`LANES`] input changes at once (a perturbation's ±ε
    /// and ±2ε steps share every index computation): `changed` lists the entries nonzero
    /// in any lane, and kinks and tie widths come back per lane. The default runs
    /// `delta_sparse` lane by lane; the built-in layers compute the lanes together.
    #[allow(clippy::too_many_arguments)]
    fn delta_lanes(
        &self,
        p: &Tensors<'_>,
        x: &[f64],
        y: &[f64],
        dx: &[Lanes],
        changed: &[usize],
        dy: &mut [Lanes],
        dy_changed: &mut Vec<usize>,
        out_grad: Option<&[f64]>,
    ) -> ([bool; LANES], [f64; LANES]) {
        let (mut kinks, mut ties) = ([false; LANES], [0.0; LANES]);
        let (mut one_in, mut one_out) = (vec![0.0; dx.len()], vec![0.0; dy.len()]);
        let mut lane_changed = Vec::new();
        let mut seen = vec![false; dy.len()];
        dy_changed.clear();
        for l in 0..LANES {
            for &k in changed {
                one_in[k] = dx[k][l];
            }
            (kinks[l], ties[l]) = self.delta_sparse(
                p,
                x,
                y,
                &one_in,
                changed,
                &mut one_out,
                &mut lane_changed,
                out_grad,
            );
            for &k in &lane_changed {
                dy[k][l] = one_out[k];
                one_out[k] = 0.0;
                if !seen[k] {
                    seen[k] = true;
                    dy_changed.push(k);
                }
            }
            for &k in changed {
                one_in[k] = 0.0;
            }
        }
        (kinks, ties)
    }
    /// The change of the output when element `index` of tensor `tensor` changes by `step`
    /// (all the layers with parameters are affine in each parameter, so this is exact),
    /// written like [`Layer::delta_sparse`]'s: only the listed entries of `dy` (all zeros
    /// on entry).
    #[allow(clippy::too_many_arguments)]
    fn param_delta(
        &self,
        _p: &Tensors<'_>,
        _x: &[f64],
        _tensor: usize,
        _index: usize,
        _step: f64,
        _dy: &mut [f64],
        _dy_changed: &mut Vec<usize>,
    ) {
    }
    /// The classic backprop mistakes of this layer type, by name (index = `slip`).
    fn slips(&self) -> &'static [Slip] {
        &[]
    }
    /// How the GPU's layered kernels (`shaders/layered.wgsl`) compute this type: its kernel
    /// kind and geometry. `None` (the default): the type has no kernel, and a network
    /// containing it runs on the CPU (`--backend auto` falls back, saying why).
    fn kernel(&self) -> Option<Kernel> {
        None
    }
}

/// A built-in layer type's description for the GPU kernels: which branch of
/// `shaders/layered.wgsl` computes it and the sizes that branch reads, in its order.
#[derive(Debug, Clone, PartialEq)]
pub struct Kernel {
    /// The branch.
    pub kind: KernelKind,
    /// Its geometry words (at most [`Kernel::MAX_WORDS`]), e.g. a conv's h, w, c_in, c_out,
    /// fh, fw, stride, pad_top, pad_left, oh, ow, layout.
    pub words: Vec<u32>,
    /// An activation's leaky-ReLU slope (0 elsewhere).
    pub slope: f64,
}

impl Kernel {
    /// Geometry words a layer-table row has room for.
    pub const MAX_WORDS: usize = 16;
}

/// The branches of `shaders/layered.wgsl` (codes as the shader numbers them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    /// 2-D convolution: words h, w, c_in, c_out, fh, fw, stride, pad_top, pad_left, oh, ow,
    /// layout (0 course, 1 PyTorch).
    Conv2d = 1,
    /// Max pooling: h, w, c, fh, fw, stride, oh, ow.
    MaxPool = 2,
    /// Average pooling: as max pooling.
    AvgPool = 3,
    /// Flatten: positions, channels, layout.
    Flatten = 4,
    /// Dense: n_in, n_out, bias (0/1), layout.
    Dense = 5,
    /// Element-wise activation: its code ([`crate::model::Activation::code`]).
    Activation = 6,
}

/// The layout word of the kernels: 0 course, 1 PyTorch.
pub fn layout_word(layout: ArrayLayout) -> u32 {
    match layout {
        ArrayLayout::Course => 0,
        ArrayLayout::Nchw => 1,
    }
}

/// A classic backprop mistake of a layer type, which the diagnosis tests a failing tensor
/// against (the built-in backprop with the mistake, compared with the user's gradient).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slip {
    /// Short name, e.g. "kernel_flipped".
    pub name: &'static str,
    /// What the user's code did, in words.
    pub says: &'static str,
}

/// How the user's arrays are laid out (the network inside is channels-last either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArrayLayout {
    /// The course's: samples first, channels last. X (m, H, W, C) or (m, n); conv W
    /// (f, f, C_prev, C), b (1, 1, 1, C); dense W (n_in, n_out), b (n_out,) or (1, n_out);
    /// Y (m, classes) or class indices (m,).
    #[default]
    #[serde(alias = "samples_first", alias = "nhwc")]
    Course,
    /// PyTorch's: X (m, C, H, W); conv weight (C_out, C_in, fh, fw), bias (C_out,);
    /// Linear weight (out, in), bias (out,); flatten in (c, h, w) order.
    #[serde(alias = "pytorch", alias = "torch")]
    Nchw,
}

/// A kernel or window size: one number (square) or (height, width).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Size2 {
    /// f × f.
    Square(usize),
    /// fh × fw.
    Rect([usize; 2]),
}

impl Size2 {
    /// (height, width).
    pub fn hw(self) -> (usize, usize) {
        match self {
            Size2::Square(f) => (f, f),
            Size2::Rect([h, w]) => (h, w),
        }
    }
}

/// Zero padding of a convolution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Padding {
    /// p rows/columns of zeros on every side.
    Pixels(usize),
    /// "same" (output ⌈H/stride⌉, the extra row/column at the bottom/right, as TensorFlow
    /// and PyTorch's padding="same") or "valid" (none).
    Named(String),
}

impl<'de> Deserialize<'de> for Padding {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        match &v {
            serde_json::Value::Number(n) if n.as_u64().is_some() => {
                Ok(Padding::Pixels(n.as_u64().unwrap_or(0) as usize))
            }
            serde_json::Value::String(s) if s == "same" || s == "valid" => {
                Ok(Padding::Named(s.clone()))
            }
            other => Err(serde::de::Error::custom(format!(
                "padding {other}: a whole number ≥ 0, \"same\" or \"valid\""
            ))),
        }
    }
}

impl Default for Padding {
    fn default() -> Self {
        Padding::Pixels(0)
    }
}

fn one() -> usize {
    1
}

fn identity() -> Activation {
    Activation::Identity
}

/// One layer of a [`NetSpec`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LayerSpec {
    /// 2-D convolution (cross-correlation, as every framework computes it) with zero
    /// padding and a bias per filter, then an element-wise activation.
    Conv2d {
        /// Output channels C.
        filters: usize,
        /// f or (fh, fw).
        kernel: Size2,
        /// Stride (both directions).
        #[serde(default = "one")]
        stride: usize,
        /// Zero padding: a number, "same" or "valid".
        #[serde(default)]
        padding: Padding,
        /// Applied after the bias.
        #[serde(default = "identity")]
        activation: Activation,
        /// Tensor names (weight, bias); default W{k}, b{k}.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        names: Option<[String; 2]>,
    },
    /// Max pooling per channel, no padding; the first maximum of a window takes the
    /// gradient (the course's mask), though any tied entry is accepted.
    MaxPool {
        /// f or (fh, fw).
        size: Size2,
        /// Stride; default = the window size.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stride: Option<usize>,
    },
    /// Average pooling per channel, no padding.
    AvgPool {
        /// f or (fh, fw).
        size: Size2,
        /// Stride; default = the window size.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stride: Option<usize>,
    },
    /// (H, W, C) → H·W·C values, in the layout's order.
    Flatten,
    /// Fully connected: z = W·x + b, then an element-wise activation (the last dense
    /// layer's activation is the output's: sigmoid, softmax, identity, …).
    Dense {
        /// Output size.
        units: usize,
        /// Applied after the bias.
        #[serde(default = "identity")]
        activation: Activation,
        /// Whether it has a bias (nn.Linear(bias=False) has none).
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        bias: bool,
        /// Tensor names (weight, bias); default W{k}, b{k}.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        names: Option<[String; 2]>,
    },
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// A network as a sequence of layers, as written in a spec file:
///
/// ```json
/// {"input_shape": [16, 16, 3], "layout": "course",
///  "layers": [{"type": "conv2d", "filters": 8, "kernel": 4, "padding": "same", "activation": "relu"},
///             {"type": "max_pool", "size": 4},
///             {"type": "flatten"},
///             {"type": "dense", "units": 6, "activation": "softmax"}],
///  "loss": "softmax_cross_entropy"}
/// ```
///
/// Parameter tensors are named W1, b1, W2, b2, … in the order of the layers that have
/// parameters (or by their `names`); gradients by the same names with a `d` in front.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetSpec {
    /// One sample's shape: (H, W, C) in the course's layout, (C, H, W) in PyTorch's, or
    /// (n) for a network that starts with a dense layer.
    pub input_shape: Vec<usize>,
    /// How the arrays are laid out.
    #[serde(default)]
    pub layout: ArrayLayout,
    /// The layers, input to output.
    pub layers: Vec<LayerSpec>,
    /// The cost (the last layer's activation is the output's).
    pub loss: Loss,
    /// L2 strength λ over the weight tensors (0 = none): (λ/(2m))·Σ‖W‖², or with
    /// `l2_scale` "total" (λ/2)·Σ‖W‖² as CS231n's 0.5·reg·ΣW² writes it.
    #[serde(default)]
    pub l2: f64,
    /// How λ is scaled: per sample (the course's λ/(2m), default) or in total (λ/2).
    #[serde(default, skip_serializing_if = "L2Scale::is_per_sample")]
    pub l2_scale: L2Scale,
}

/// The convention of the L2 term's strength.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum L2Scale {
    /// (λ/(2m))·Σ‖W‖²: the course's.
    #[default]
    PerSample,
    /// (λ/2)·Σ‖W‖²: CS231n's 0.5·reg·ΣW² (= per sample with λ·m).
    Total,
}

impl L2Scale {
    fn is_per_sample(&self) -> bool {
        *self == L2Scale::PerSample
    }
}
