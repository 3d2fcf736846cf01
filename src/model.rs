//! The model family: fully connected networks (the MLP shorthand) and networks of layer
//! types ([`layer::Layer`]: conv2d, pooling, flatten, dense, or a caller's own), their
//! activations and costs, and the flat parameter layout (W1, b1, W2, b2, … each row-major
//! in the user's shape) that every other module indexes by.
//!
//! May use: `error`, `rng` (dropout masks drawn from a seed). Knows nothing above it: the
//! built-in layer types' math lives in `net`, which implements the trait defined here.

use std::fmt;
use std::str::FromStr;

use ndarray::{ArrayView1, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::error::Error;

pub mod layer;

pub use layer::{
    ArrayLayout, L2Scale, LANES, Lanes, Layer, LayerSpec, NetSpec, ParamShape, Slip, Tensors,
};

/// An element-wise activation applied after a layer's affine map (or, for
/// [`Activation::Softmax`], a column-wise one, allowed only on the output layer).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// max(z, 0); derivative taken as 0 at z = 0, as the notebook does.
    Relu,
    /// 1 / (1 + exp(−z)).
    Sigmoid,
    /// tanh(z).
    Tanh,
    /// z for z > 0, slope·z otherwise.
    LeakyRelu(f64),
    /// z.
    Identity,
    /// exp(z_i) / Σ_k exp(z_k) over each column; output layer with softmax cross-entropy only.
    Softmax,
}

impl Activation {
    /// g(z) for the element-wise activations (softmax is handled by the cost).
    pub fn apply(self, z: f64) -> f64 {
        match self {
            Activation::Relu => z.max(0.0),
            Activation::Sigmoid => 1.0 / (1.0 + (-z).exp()),
            Activation::Tanh => z.tanh(),
            Activation::LeakyRelu(s) => {
                if z > 0.0 {
                    z
                } else {
                    s * z
                }
            }
            Activation::Identity | Activation::Softmax => z,
        }
    }

    /// The size of the terms the textbook formula for g' combines: what its rounding is
    /// relative to. 1 − A² (tanh) from an A rounded by u has an absolute error of about
    /// 2u·A², and A·(1 − A) (sigmoid) about u·A², however small g' is: near saturation
    /// (|A| → 1) that is a large relative error of a correct backprop, which the verdict's
    /// allowance for the analytic side must cover. ≥ |g'(z)| everywhere.
    pub fn derivative_term_size(self, z: f64, a: f64) -> f64 {
        match self {
            Activation::Sigmoid => a.abs(),
            Activation::Tanh => 1.0 + a * a,
            _ => self.derivative(z, a).abs(),
        }
    }

    /// |g''| through a = g(z) (0 for the piecewise-linear ones): how much a rounding error
    /// δz of the forward pass moves g'.
    pub fn second_derivative_size(self, a: f64) -> f64 {
        match self {
            Activation::Sigmoid => (a * (1.0 - a) * (1.0 - 2.0 * a)).abs(),
            Activation::Tanh => (2.0 * a * (1.0 - a * a)).abs(),
            _ => 0.0,
        }
    }

    /// g'(z) expressed through z and a = g(z) (whichever is cheaper/more accurate).
    pub fn derivative(self, z: f64, a: f64) -> f64 {
        match self {
            Activation::Relu => f64::from(u8::from(z > 0.0)),
            Activation::Sigmoid => a * (1.0 - a),
            Activation::Tanh => 1.0 - a * a,
            Activation::LeakyRelu(s) => {
                if z > 0.0 {
                    1.0
                } else {
                    s
                }
            }
            Activation::Identity | Activation::Softmax => 1.0,
        }
    }

    /// True for activations with a kink at z = 0 (central differences across it are unreliable).
    pub fn has_kink(self) -> bool {
        matches!(self, Activation::Relu | Activation::LeakyRelu(_))
    }

    /// Small integer code shared with the WGSL kernels (`shaders/activation.wgsl`).
    pub fn code(self) -> u32 {
        match self {
            Activation::Identity => 0,
            Activation::Relu => 1,
            Activation::Sigmoid => 2,
            Activation::Tanh => 3,
            Activation::LeakyRelu(_) => 4,
            Activation::Softmax => 5,
        }
    }

    /// The leaky-ReLU slope (0 for every other activation).
    pub fn slope(self) -> f64 {
        match self {
            Activation::LeakyRelu(s) => s,
            _ => 0.0,
        }
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Activation::Relu => f.write_str("relu"),
            Activation::Sigmoid => f.write_str("sigmoid"),
            Activation::Tanh => f.write_str("tanh"),
            Activation::LeakyRelu(s) => write!(f, "leaky_relu:{s}"),
            Activation::Identity => f.write_str("identity"),
            Activation::Softmax => f.write_str("softmax"),
        }
    }
}

/// Default leaky-ReLU slope when the spec says just `"leaky_relu"`.
pub const DEFAULT_LEAKY_SLOPE: f64 = 0.01;

impl FromStr for Activation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        let plain = |a: Activation| match arg {
            None => Ok(a),
            Some(_) => Err(format!("activation {name:?} takes no parameter")),
        };
        match name {
            "relu" => plain(Activation::Relu),
            "sigmoid" => plain(Activation::Sigmoid),
            "tanh" => plain(Activation::Tanh),
            "identity" | "linear" => plain(Activation::Identity),
            "softmax" => plain(Activation::Softmax),
            "leaky_relu" => match arg {
                None => Ok(Activation::LeakyRelu(DEFAULT_LEAKY_SLOPE)),
                Some(a) => a
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .map(Activation::LeakyRelu)
                    .ok_or_else(|| format!("leaky_relu slope {a:?} is not a finite number")),
            },
            _ => Err(format!(
                "unknown activation {s:?} (expected relu, sigmoid, tanh, leaky_relu[:slope], identity, softmax)"
            )),
        }
    }
}

impl Serialize for Activation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Activation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The cost J(θ) averaged over the m samples (plus the optional L2 term).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// −(1/m)·Σ[y·log a + (1−y)·log(1−a)] with a = σ(z): in the notebook's arithmetic
    /// exactly as the notebook writes it (so its rounding noise, and its 1.19e-7 "correct"
    /// difference, reproduce); on the Δ paths through softplus of the logit.
    BinaryCrossEntropy,
    /// −(1/m)·Σ_j Σ_i y_ij·log softmax(z)_ij, evaluated as Σ_i y_ij·(logsumexp(z_j) − z_ij).
    SoftmaxCrossEntropy,
    /// (1/(2m))·Σ_j Σ_i (a_ij − y_ij)²: the ½ is the convention of the course this
    /// tool grew from, so that dJ/da = (a − y)/m. Spelled `mse` or `mean_squared_error`.
    #[serde(alias = "mse")]
    MeanSquaredError,
}

impl Loss {
    /// Small integer code shared with the WGSL kernels (`shaders/cost.wgsl`).
    pub fn code(self) -> u32 {
        match self {
            Loss::BinaryCrossEntropy => 0,
            Loss::SoftmaxCrossEntropy => 1,
            Loss::MeanSquaredError => 2,
        }
    }
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Loss::BinaryCrossEntropy => "binary_cross_entropy",
            Loss::SoftmaxCrossEntropy => "softmax_cross_entropy",
            Loss::MeanSquaredError => "mse",
        })
    }
}

/// A model as written in a spec file:
/// `{"layers":[4,5,3,1],"activations":["relu","relu","sigmoid"],"loss":"binary_cross_entropy","l2":0.0}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Layer sizes n0 (inputs) … nL (outputs).
    pub layers: Vec<usize>,
    /// One activation per layer after the input (L entries).
    pub activations: Vec<Activation>,
    /// The cost.
    pub loss: Loss,
    /// L2 strength λ of the term (λ/(2m))·Σ‖W_l‖²_F (0 = none).
    #[serde(default)]
    pub l2: f64,
    /// Inverted dropout on hidden layers, with masks held fixed for every perturbation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropout: Option<Dropout>,
}

/// Inverted dropout: A_l ← (A_l ⊙ D_l)/keep_prob on the listed hidden layers. The 0/1
/// masks D_l (n_l × m) come from the data file (keys D1, D2, …) or are drawn once from
/// `seed` — D_l[i, j] = 1 when the next SplitMix64 uniform is < keep_prob, layers in
/// increasing order, each row-major — and are then the same for J(θ) and all 2N J±, so
/// the cost is a deterministic function of θ and its gradient can be checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dropout {
    /// Probability of keeping a unit, in (0, 1].
    pub keep_prob: f64,
    /// Seed of the masks not given in the data file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// 1-based hidden layers with dropout (1 … L−1).
    pub layers: Vec<usize>,
}

impl ModelSpec {
    /// The notebook's defaults for the given sizes: relu hidden layers, sigmoid output,
    /// binary cross-entropy, no L2.
    pub fn notebook_default(layers: Vec<usize>) -> Self {
        let l = layers.len().saturating_sub(1);
        let mut activations = vec![Activation::Relu; l];
        if let Some(last) = activations.last_mut() {
            *last = Activation::Sigmoid;
        }
        ModelSpec {
            layers,
            activations,
            loss: Loss::BinaryCrossEntropy,
            l2: 0.0,
            dropout: None,
        }
    }
}

/// A model spec file: the MLP shorthand ([`ModelSpec`]) or a network of layer types
/// ([`NetSpec`], recognised by its `input_shape`).
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    /// `{"layers": [4, 5, 3, 1], "activations": [...], "loss": ...}`.
    Mlp(ModelSpec),
    /// `{"input_shape": [16, 16, 3], "layers": [{"type": "conv2d", ...}, ...], "loss": ...}`.
    Net(NetSpec),
}

impl Spec {
    /// Parses a spec from JSON; the error says which of the two forms was read. The MLP
    /// shorthand with a `layout` ("samples_first": X (m, n0), W (n_{l−1}, n_l), b (n_l),
    /// Y (m, nL) or class indices; "nchw": W (n_l, n_{l−1}) with samples-first X) is the
    /// same network as dense layers.
    pub fn from_json(text: &str) -> Result<Spec, String> {
        let mut value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if value.get("input_shape").is_none() {
            if let Some(obj) = value.as_object_mut() {
                let layout = obj.remove("layout");
                let scale = obj.remove("l2_scale");
                if layout.is_some() || scale.is_some() {
                    let mlp: ModelSpec =
                        serde_json::from_value(serde_json::Value::Object(obj.clone()))
                            .map_err(|e| e.to_string())?;
                    return Self::mlp_as_net(mlp, layout, scale).map(Spec::Net);
                }
            }
        }
        if value.get("input_shape").is_some() {
            serde_json::from_value(value)
                .map(Spec::Net)
                .map_err(|e| format!("a network of layer types (it has input_shape): {e}"))
        } else {
            serde_json::from_value(value)
                .map(Spec::Mlp)
                .map_err(|e| e.to_string())
        }
    }
}

impl Spec {
    /// The MLP shorthand as dense layers in a samples-first layout.
    fn mlp_as_net(
        mlp: ModelSpec,
        layout: Option<serde_json::Value>,
        scale: Option<serde_json::Value>,
    ) -> Result<NetSpec, String> {
        let layout: ArrayLayout = match layout {
            None => {
                return Err(
                    "l2_scale needs the samples-first form: add \"layout\": \"samples_first\" (the feature-major spec's λ is per sample)".into(),
                );
            }
            Some(v) => serde_json::from_value(v)
                .map_err(|e| format!("layout: {e} (samples_first, course or nchw)"))?,
        };
        let l2_scale = match scale {
            None => L2Scale::PerSample,
            Some(v) => serde_json::from_value(v)
                .map_err(|e| format!("l2_scale: {e} (per_sample or total)"))?,
        };
        if mlp.dropout.is_some() {
            return Err("dropout is only supported in the feature-major form (no layout)".into());
        }
        Model::new(mlp.clone()).map_err(|e| e.to_string())?;
        Ok(NetSpec {
            input_shape: vec![mlp.layers[0]],
            layout,
            layers: mlp.layers[1..]
                .iter()
                .zip(&mlp.activations)
                .map(|(&units, &activation)| LayerSpec::Dense {
                    units,
                    activation,
                    bias: true,
                    names: None,
                })
                .collect(),
            loss: mlp.loss,
            l2: mlp.l2,
            l2_scale,
        })
    }
}

impl From<ModelSpec> for Spec {
    fn from(s: ModelSpec) -> Self {
        Spec::Mlp(s)
    }
}

/// The largest parameter or activation count accepted; beyond it the job could not fit
/// in memory and is refused before anything is allocated.
pub const MAX_ELEMENTS: usize = 1 << 31;

/// A validated model: sizes, activations, cost and the parameter layout — a fully
/// connected net (the MLP shorthand), or any sequence of [`Layer`]s ([`Model::net`]).
#[derive(Debug, Clone)]
pub struct Model {
    spec: ModelSpec,
    layout: ParamLayout,
    net: Option<std::sync::Arc<Net>>,
}

impl PartialEq for Model {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec
            && self.layout == other.layout
            && format!("{:?}", self.net) == format!("{:?}", other.net)
    }
}

/// What [`Model::layered`] builds a model from.
#[derive(Debug)]
pub struct NetParts {
    /// The layers, input to output (the output activation is not one of them).
    pub layers: Vec<std::sync::Arc<dyn Layer>>,
    /// The output activation, applied inside the cost.
    pub output: Activation,
    /// The cost.
    pub loss: Loss,
    /// L2 strength λ over the weight tensors.
    pub l2: f64,
    /// Tensor names in flat order (`None`: W1, b1, W2, …).
    pub names: Option<Vec<String>>,
    /// One sample's shape as the user's X has it.
    pub input_shape: Vec<usize>,
    /// How the user's arrays are laid out.
    pub array_layout: ArrayLayout,
    /// The spec it came from, if any.
    pub spec: Option<NetSpec>,
}

/// A network given as a sequence of layers (conv2d, pooling, flatten, dense, or a layer
/// type of the caller's), ending in the output activation and the cost.
#[derive(Debug)]
pub struct Net {
    /// The spec it was built from (`None` for a network assembled in code).
    pub spec: Option<NetSpec>,
    /// One sample's shape as the user's X has it (without m).
    pub input_shape: Vec<usize>,
    /// How the user's arrays are laid out.
    pub array_layout: ArrayLayout,
    /// The layers, input to output (the output activation is not one of them).
    pub layers: Vec<std::sync::Arc<dyn Layer>>,
    /// The output activation, applied inside the cost.
    pub output: Activation,
    /// Per layer, its tensors' indices in [`ParamLayout::tensors`].
    pub tensors: Vec<std::ops::Range<usize>>,
}

impl Net {
    /// The 1-based number users know internal layer `l` by: activations are part of the
    /// conv/dense layer before them in a spec, so they are not counted.
    pub fn spec_position(&self, l: usize) -> usize {
        self.layers[..=l]
            .iter()
            .filter(|x| x.kind() != "activation")
            .count()
            .max(1)
    }
}

impl Model {
    /// Validates a spec (sizes, activation count, activation/cost compatibility, λ).
    pub fn new(spec: ModelSpec) -> Result<Self, Error> {
        let bad = |msg: String| Err(Error::Spec(msg));
        if spec.layers.len() < 2 {
            return bad(format!(
                "layers {:?}: need at least an input and an output size",
                spec.layers
            ));
        }
        if let Some(i) = spec.layers.iter().position(|&n| n == 0) {
            return bad(format!("layers {:?}: size {i} is zero", spec.layers));
        }
        let l = spec.layers.len() - 1;
        if spec.activations.len() != l {
            return bad(format!(
                "layers {:?} need {l} activations, the spec gives {}",
                spec.layers,
                spec.activations.len()
            ));
        }
        for (i, a) in spec.activations.iter().enumerate() {
            if *a == Activation::Softmax && i + 1 != l {
                return bad(format!(
                    "softmax is only allowed on the output layer, not layer {}",
                    i + 1
                ));
            }
        }
        let out = spec.activations[l - 1];
        match spec.loss {
            Loss::BinaryCrossEntropy if out != Activation::Sigmoid => {
                return bad(format!(
                    "binary_cross_entropy needs a sigmoid output layer, not {out}"
                ));
            }
            Loss::SoftmaxCrossEntropy if out != Activation::Softmax => {
                return bad(format!(
                    "softmax_cross_entropy needs a softmax output layer, not {out}"
                ));
            }
            Loss::MeanSquaredError if out == Activation::Softmax => {
                return bad("mse with a softmax output is not supported".into());
            }
            _ => {}
        }
        if !(spec.l2.is_finite() && spec.l2 >= 0.0) {
            return bad(format!("l2 = {} must be a finite number ≥ 0", spec.l2));
        }
        if let Some(d) = &spec.dropout {
            if !(d.keep_prob > 0.0 && d.keep_prob <= 1.0) {
                return bad(format!(
                    "dropout keep_prob = {} must be in (0, 1]",
                    d.keep_prob
                ));
            }
            if d.layers.is_empty() {
                return bad("dropout.layers is empty: name the hidden layers (1-based)".into());
            }
            for (k, &layer) in d.layers.iter().enumerate() {
                if layer == 0 || layer >= l {
                    return bad(format!(
                        "dropout on layer {layer}: only hidden layers 1 … {} can have it",
                        l - 1
                    ));
                }
                if d.layers[..k].contains(&layer) {
                    return bad(format!("dropout layer {layer} is listed twice"));
                }
            }
        }
        let layout = ParamLayout::new(&spec.layers)?;
        Ok(Model {
            spec,
            layout,
            net: None,
        })
    }

    /// A network of layers (each one's input must be the previous one's output) whose
    /// last layer's output goes through the output activation into the cost. Tensors are
    /// named by `parts.names` (one per tensor, flat order) or W1, b1, W2, b2, … in order
    /// of the layers that have parameters (a dense layer without bias: W only).
    pub fn layered(parts: NetParts) -> Result<Self, Error> {
        let NetParts {
            layers,
            output,
            loss,
            l2,
            names,
            input_shape,
            array_layout,
            spec,
        } = parts;
        let bad = |msg: String| Err(Error::Spec(msg));
        let (Some(first), Some(last)) = (layers.first(), layers.last()) else {
            return bad("the network has no layers".into());
        };
        let n_in: usize = input_shape.iter().product();
        if first.in_len() != n_in {
            return bad(format!(
                "the input shape {input_shape:?} has {n_in} values but the first layer ({}) takes {}",
                first.kind(),
                first.in_len()
            ));
        }
        for (k, pair) in layers.windows(2).enumerate() {
            if pair[0].out_len() != pair[1].in_len() {
                return bad(format!(
                    "layer {} ({}) gives {} values per sample but layer {} ({}) takes {}",
                    k + 1,
                    pair[0].kind(),
                    pair[0].out_len(),
                    k + 2,
                    pair[1].kind(),
                    pair[1].in_len()
                ));
            }
        }
        let summary = ModelSpec {
            layers: vec![n_in, last.out_len()],
            activations: vec![output],
            loss,
            l2,
            dropout: None,
        };
        // The output activation and the cost must fit each other as for an MLP.
        let mut check = summary.clone();
        check.layers = vec![1, 1];
        Model::new(check)?;
        let (layout, tensors) = ParamLayout::of_layers(&layers, names)?;
        Ok(Model {
            spec: summary,
            layout,
            net: Some(std::sync::Arc::new(Net {
                spec,
                input_shape,
                array_layout,
                layers,
                output,
                tensors,
            })),
        })
    }

    /// The same model with L2 strength `l2` (per sample).
    pub fn with_l2(&self, l2: f64) -> Model {
        let mut m = self.clone();
        m.spec.l2 = l2;
        m
    }

    /// The network as a sequence of layers, when it was given as one (conv nets, …);
    /// `None` for the MLP shorthand, whose dedicated evaluators are faster.
    pub fn net(&self) -> Option<&Net> {
        self.net.as_deref()
    }

    /// The spec this model was built from (for a layered network, its summary: input and
    /// output sizes, output activation, cost, λ; see [`Model::net`]).
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The dropout settings, if any.
    pub fn dropout(&self) -> Option<&Dropout> {
        self.spec.dropout.as_ref()
    }
    /// Layer sizes n0 … nL (a layered network: inputs and outputs per sample).
    pub fn sizes(&self) -> &[usize] {
        &self.spec.layers
    }
    /// Number of layers L (affine maps).
    pub fn depth(&self) -> usize {
        self.spec.layers.len() - 1
    }
    /// Activation of layer `l` (0-based: layer 0 is the first affine map).
    pub fn activation(&self, l: usize) -> Activation {
        self.spec.activations[l]
    }
    /// The cost.
    pub fn loss(&self) -> Loss {
        self.spec.loss
    }
    /// L2 strength λ.
    pub fn l2(&self) -> f64 {
        self.spec.l2
    }
    /// The flat parameter layout.
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }
    /// Total number of parameters N.
    pub fn n_params(&self) -> usize {
        self.layout.len()
    }
}

/// Whether a tensor is a weight matrix or a bias vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TensorKind {
    /// W_l, n_l × n_{l−1}.
    Weight,
    /// b_l, n_l × 1.
    Bias,
}

/// One tensor of the flat parameter vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSlot {
    /// "W1", "b1", …
    pub name: String,
    /// 0-based layer index.
    pub layer: usize,
    /// Weight or bias.
    pub kind: TensorKind,
    /// Rows (n_l; a layered network's tensor: the product of all axes but the last).
    pub rows: usize,
    /// Columns (n_{l−1} for weights, 1 for biases; a layered network's: the last axis).
    pub cols: usize,
    /// Offset of element (0, 0) in the flat vector.
    pub offset: usize,
    /// The shape as the user indexes it: (n_l, n_{l−1}) and (n_l) for the MLP shorthand,
    /// e.g. (f, f, C_prev, C) for a course-layout convolution.
    pub shape: Vec<usize>,
    /// Products summed into each output this tensor feeds (error growth; 1 for biases).
    pub fan_in: usize,
}

impl TensorSlot {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }
    /// Always false: tensors of a valid model have at least one element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Flat index range of this tensor.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// A flat index resolved to its tensor and position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Index into [`ParamLayout::tensors`].
    pub tensor: usize,
    /// Row within the tensor.
    pub row: usize,
    /// Column within the tensor (0 for biases).
    pub col: usize,
}

/// The map between the flat parameter index and (tensor, row, col): W1, b1, W2, b2, …,
/// each row-major (the notebook's `dictionary_to_vector`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamLayout {
    tensors: Vec<TensorSlot>,
    len: usize,
}

impl ParamLayout {
    /// The layout for layer sizes n0 … nL.
    pub fn new(sizes: &[usize]) -> Result<Self, Error> {
        let mut tensors = Vec::new();
        let mut offset: usize = 0;
        for l in 1..sizes.len() {
            let (rows, cols) = (sizes[l], sizes[l - 1]);
            for (kind, name, c) in [
                (TensorKind::Weight, format!("W{l}"), cols),
                (TensorKind::Bias, format!("b{l}"), 1),
            ] {
                let n = rows
                    .checked_mul(c)
                    .filter(|&n| n <= MAX_ELEMENTS)
                    .ok_or_else(|| {
                        Error::Spec(format!(
                            "{name} would be {rows}×{c}: more than {MAX_ELEMENTS} elements"
                        ))
                    })?;
                tensors.push(TensorSlot {
                    name,
                    layer: l - 1,
                    kind,
                    rows,
                    cols: c,
                    offset,
                    shape: if kind == TensorKind::Weight {
                        vec![rows, c]
                    } else {
                        vec![rows]
                    },
                    fan_in: c,
                });
                offset += n;
                if offset > MAX_ELEMENTS {
                    return Err(Error::Spec(format!(
                        "layers {sizes:?} have more than {MAX_ELEMENTS} parameters"
                    )));
                }
            }
        }
        Ok(ParamLayout {
            tensors,
            len: offset,
        })
    }

    /// A layout of one tensor (for checks of arbitrary functions, e.g. the 1-D example).
    pub fn single(name: &str, rows: usize, cols: usize) -> Self {
        ParamLayout {
            tensors: vec![TensorSlot {
                name: name.into(),
                layer: 0,
                kind: TensorKind::Weight,
                rows,
                cols,
                offset: 0,
                shape: vec![rows, cols],
                fan_in: cols,
            }],
            len: rows * cols,
        }
    }

    /// The layout of a layered network's tensors (flat order: layer by layer, each
    /// layer's tensors in its order, each row-major in the user's shape) and, per layer,
    /// the indices of its tensors. `names` (one per tensor) replaces W1, b1, W2, ….
    pub fn of_layers(
        layers: &[std::sync::Arc<dyn Layer>],
        names: Option<Vec<String>>,
    ) -> Result<(Self, Vec<std::ops::Range<usize>>), Error> {
        let mut tensors: Vec<TensorSlot> = Vec::new();
        let mut per_layer = Vec::with_capacity(layers.len());
        let mut offset = 0usize;
        let mut numbered = 0;
        for (l, layer) in layers.iter().enumerate() {
            let first = tensors.len();
            let shapes = layer.params();
            if !shapes.is_empty() {
                numbered += 1;
            }
            for p in shapes {
                let len = p
                    .shape
                    .iter()
                    .try_fold(1usize, |a, &d| a.checked_mul(d))
                    .filter(|&n| n <= MAX_ELEMENTS && n > 0)
                    .ok_or_else(|| {
                        Error::Spec(format!(
                            "layer {} ({}): a tensor of shape {:?} is empty or has more than {MAX_ELEMENTS} elements",
                            l + 1,
                            layer.kind(),
                            p.shape
                        ))
                    })?;
                let letter = if p.kind == TensorKind::Weight {
                    "W"
                } else {
                    "b"
                };
                let cols = *p.shape.last().unwrap_or(&1);
                tensors.push(TensorSlot {
                    name: format!("{letter}{numbered}"),
                    layer: l,
                    kind: p.kind,
                    rows: len / cols,
                    cols,
                    offset,
                    shape: p.shape,
                    fan_in: p.fan_in,
                });
                offset += len;
                if offset > MAX_ELEMENTS {
                    return Err(Error::Spec(format!(
                        "the network has more than {MAX_ELEMENTS} parameters"
                    )));
                }
            }
            per_layer.push(first..tensors.len());
        }
        if tensors.is_empty() {
            return Err(Error::Spec("the network has no parameters to check".into()));
        }
        if let Some(names) = names {
            if names.len() != tensors.len() {
                return Err(Error::Spec(format!(
                    "{} tensor names given for {} tensors",
                    names.len(),
                    tensors.len()
                )));
            }
            for (k, name) in names.iter().enumerate() {
                if name.is_empty() || names[..k].contains(name) {
                    return Err(Error::Spec(format!(
                        "tensor name {name:?} is empty or given twice"
                    )));
                }
            }
            for (t, name) in tensors.iter_mut().zip(names) {
                t.name = name;
            }
        }
        Ok((
            ParamLayout {
                tensors,
                len: offset,
            },
            per_layer,
        ))
    }

    /// All tensors in flat order.
    pub fn tensors(&self) -> &[TensorSlot] {
        &self.tensors
    }
    /// Total number of parameters.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when there are no parameters (never for a valid model).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The weight tensor of layer `l` (0-based).
    pub fn weight(&self, l: usize) -> &TensorSlot {
        &self.tensors[2 * l]
    }
    /// The bias tensor of layer `l` (0-based).
    pub fn bias(&self, l: usize) -> &TensorSlot {
        &self.tensors[2 * l + 1]
    }
    /// Resolves a flat index; `None` past the end.
    pub fn locate(&self, index: usize) -> Option<Position> {
        if index >= self.len {
            return None;
        }
        let tensor = self
            .tensors
            .partition_point(|t| t.offset + t.len() <= index);
        let t = &self.tensors[tensor];
        let local = index - t.offset;
        Some(Position {
            tensor,
            row: local / t.cols,
            col: local % t.cols,
        })
    }
    /// The flat index of (tensor, row, col).
    pub fn index(&self, p: Position) -> usize {
        let t = &self.tensors[p.tensor];
        t.offset + p.row * t.cols + p.col
    }
    /// Human name of a flat index as the user indexes it, e.g. `W2[1,4]`, `b1[3]`,
    /// `W1[0,2,1,5]`.
    pub fn element_name(&self, index: usize) -> String {
        match self.locate(index) {
            Some(p) => {
                let t = &self.tensors[p.tensor];
                let mut rest = index - t.offset;
                let mut at = vec![0; t.shape.len()];
                for (a, &d) in at.iter_mut().zip(&t.shape).rev() {
                    *a = rest % d.max(1);
                    rest /= d.max(1);
                }
                let at: Vec<String> = at.iter().map(usize::to_string).collect();
                format!("{}[{}]", t.name, at.join(","))
            }
            None => format!("#{index}"),
        }
    }
}

/// A flat vector laid out by a [`ParamLayout`]: parameters θ, or gradients of J w.r.t. θ.
#[derive(Debug, Clone, PartialEq)]
pub struct FlatTensors {
    values: Vec<f64>,
    layout: ParamLayout,
}

/// Model parameters θ (W1, b1, …).
pub type Params = FlatTensors;
/// Gradients dJ/dθ (dW1, db1, …) in the same layout.
pub type Grads = FlatTensors;

impl FlatTensors {
    /// Wraps a flat vector; its length must match the layout.
    pub fn new(layout: ParamLayout, values: Vec<f64>) -> Result<Self, Error> {
        if values.len() != layout.len() {
            return Err(Error::Shape(format!(
                "flat vector has {} values, the layout needs {}",
                values.len(),
                layout.len()
            )));
        }
        Ok(FlatTensors { values, layout })
    }
    /// All values, flat.
    pub fn as_slice(&self) -> &[f64] {
        &self.values
    }
    /// All values, flat and mutable.
    pub fn as_mut_slice(&mut self) -> &mut [f64] {
        &mut self.values
    }
    /// The layout.
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }
    /// The values of one tensor, flat.
    pub fn tensor(&self, t: usize) -> &[f64] {
        &self.values[self.layout.tensors[t].range()]
    }
    /// W_l (0-based l) as an n_l × n_{l−1} view.
    pub fn weight(&self, l: usize) -> ArrayView2<'_, f64> {
        let t = self.layout.weight(l);
        ArrayView2::from_shape((t.rows, t.cols), &self.values[t.range()])
            .expect("layout and values agree")
    }
    /// b_l (0-based l) as a length-n_l view.
    pub fn bias(&self, l: usize) -> ArrayView1<'_, f64> {
        ArrayView1::from(&self.values[self.layout.bias(l).range()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_round_trips_every_index_in_notebook_order() {
        let lay = ParamLayout::new(&[4, 5, 3, 1]).unwrap();
        assert_eq!(lay.len(), 47);
        let names: Vec<_> = lay.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["W1", "b1", "W2", "b2", "W3", "b3"]);
        for i in 0..lay.len() {
            assert_eq!(lay.index(lay.locate(i).unwrap()), i);
        }
        // W1 is 5×4 row-major: index 6 = row 1, col 2; b1 starts at 20; W2 at 25.
        assert_eq!(lay.element_name(6), "W1[1,2]");
        assert_eq!(lay.element_name(20), "b1[0]");
        assert_eq!(lay.element_name(25), "W2[0,0]");
        assert_eq!(lay.element_name(46), "b3[0]");
        assert!(lay.locate(47).is_none());
    }

    #[test]
    fn activation_parse_and_errors() {
        assert_eq!("leaky_relu:0.2".parse(), Ok(Activation::LeakyRelu(0.2)));
        assert_eq!(
            "leaky_relu".parse(),
            Ok(Activation::LeakyRelu(DEFAULT_LEAKY_SLOPE))
        );
        assert!("swish".parse::<Activation>().is_err());
        assert!("relu:3".parse::<Activation>().is_err());
        assert!("leaky_relu:nan".parse::<Activation>().is_err());
    }

    #[test]
    fn spec_validation_names_the_problem() {
        let mut s = ModelSpec::notebook_default(vec![4, 5, 3, 1]);
        assert!(Model::new(s.clone()).is_ok());
        s.activations.pop();
        let e = Model::new(s).unwrap_err().to_string();
        assert!(e.contains("need 3 activations"), "{e}");
        let mut s = ModelSpec::notebook_default(vec![4, 2]);
        s.activations[0] = Activation::Relu;
        let e = Model::new(s).unwrap_err().to_string();
        assert!(e.contains("sigmoid output"), "{e}");
        let e = ParamLayout::new(&[1 << 20, 1 << 20, 1])
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than"), "{e}");
    }
}

/// A batch of m samples: X (n0 × m) and Y (nL × m), one sample per column, and the
/// dropout masks held fixed for them.
#[derive(Debug, Clone, PartialEq)]
pub struct Data {
    /// Inputs, n0 × m.
    pub x: ndarray::Array2<f64>,
    /// Targets, nL × m.
    pub y: ndarray::Array2<f64>,
    /// Per layer (0-based), the dropout factor D_l/keep_prob (n_l × m: 0 or 1/keep_prob)
    /// the activations are multiplied by; `None` for layers without dropout.
    pub masks: Vec<Option<ndarray::Array2<f64>>>,
}

impl Data {
    /// Checks X and Y against the model (X rows = n0, Y rows = nL, same m ≥ 1); dropout
    /// masks, if the model has dropout, are drawn from its seed.
    pub fn new(
        model: &Model,
        x: ndarray::Array2<f64>,
        y: ndarray::Array2<f64>,
    ) -> Result<Self, Error> {
        Self::with_masks(model, x, y, Vec::new())
    }

    /// As [`Data::new`], with 0/1 dropout masks given as (1-based layer, D_l n_l × m);
    /// the model's other dropout layers are drawn from its seed (all layers are drawn in
    /// order first, so a layer's drawn mask does not depend on which others were given).
    pub fn with_masks(
        model: &Model,
        x: ndarray::Array2<f64>,
        y: ndarray::Array2<f64>,
        given: Vec<(usize, ndarray::Array2<f64>)>,
    ) -> Result<Self, Error> {
        let mut data = Self::unmasked(model, x, y)?;
        let depth = model.depth();
        let m = data.m();
        data.masks = vec![None; depth];
        let Some(d) = model.dropout() else {
            if let Some((layer, _)) = given.first() {
                return Err(Error::Spec(format!(
                    "the data has a dropout mask D{layer} but the model has no dropout: add \"dropout\": {{\"keep_prob\": …, \"layers\": [{layer}]}} to the model spec"
                )));
            }
            return Ok(data);
        };
        let mut drawn: Vec<Option<ndarray::Array2<f64>>> = vec![None; depth];
        if let Some(seed) = d.seed {
            let mut rng = crate::rng::Rng(seed);
            let mut layers = d.layers.clone();
            layers.sort_unstable();
            for layer in layers {
                let n = model.sizes()[layer];
                drawn[layer - 1] = Some(ndarray::Array2::from_shape_fn((n, m), |_| {
                    f64::from(u8::from(rng.next_f64() < d.keep_prob))
                }));
            }
        }
        for (layer, mask) in given {
            if !d.layers.contains(&layer) {
                return Err(Error::Spec(format!(
                    "the data has a dropout mask D{layer} but the model's dropout layers are {:?}",
                    d.layers
                )));
            }
            let n = model.sizes()[layer];
            if mask.dim() != (n, m) {
                return Err(Error::Shape(format!(
                    "D{layer} is {}×{} but layer {layer} needs n_{layer} × m = {n}×{m}",
                    mask.nrows(),
                    mask.ncols()
                )));
            }
            if let Some(((i, j), v)) = mask.indexed_iter().find(|(_, v)| **v != 0.0 && **v != 1.0) {
                return Err(Error::Shape(format!(
                    "D{layer}[{i},{j}] = {v}: a dropout mask holds only 0 and 1 (the 1/keep_prob scaling is applied by gradcheck)"
                )));
            }
            drawn[layer - 1] = Some(mask);
        }
        for &layer in &d.layers {
            let mask = drawn[layer - 1].take().ok_or_else(|| {
                Error::Spec(format!(
                    "dropout on layer {layer} needs its mask: D{layer} in the data file, or a \"seed\" in the model's dropout to draw it"
                ))
            })?;
            let scale = 1.0 / d.keep_prob;
            data.masks[layer - 1] = Some(mask.mapv(|v| v * scale));
        }
        Ok(data)
    }

    /// The 0/1 mask D_l of 1-based layer `layer`, if it has dropout.
    pub fn mask_bits(&self, layer: usize) -> Option<ndarray::Array2<f64>> {
        self.masks
            .get(layer.checked_sub(1)?)?
            .as_ref()
            .map(|f| f.mapv(|v| f64::from(u8::from(v != 0.0))))
    }

    fn unmasked(
        model: &Model,
        x: ndarray::Array2<f64>,
        y: ndarray::Array2<f64>,
    ) -> Result<Self, Error> {
        let (n0, nl) = (model.sizes()[0], *model.sizes().last().expect("validated"));
        if x.nrows() != n0 {
            return Err(Error::Shape(format!(
                "X is {}×{} but the model's input layer has n0 = {n0} (X must be n0 × m)",
                x.nrows(),
                x.ncols()
            )));
        }
        if y.nrows() != nl || y.ncols() != x.ncols() {
            return Err(Error::Shape(format!(
                "Y is {}×{} but must be nL × m = {nl}×{} (X is {}×{})",
                y.nrows(),
                y.ncols(),
                x.ncols(),
                x.nrows(),
                x.ncols()
            )));
        }
        if x.ncols() == 0 {
            return Err(Error::Shape("X has no samples (m = 0)".into()));
        }
        Ok(Data {
            x,
            y,
            masks: Vec::new(),
        })
    }
    /// Number of samples m.
    pub fn m(&self) -> usize {
        self.x.ncols()
    }
}
