//! Random conv nets and their data, shared by the CPU (tests/conv.rs) and GPU
//! (tests/gpu_conv.rs) conv tests.

use gradcheck::model::{Spec, TensorKind};
use gradcheck::net;
use gradcheck::rng::Rng;
use gradcheck::{Data, Loss, Model, Params};
use ndarray::Array2;

/// The model a JSON spec of a layered network describes.
pub fn built(spec: serde_json::Value) -> Model {
    let Spec::Net(n) = Spec::from_json(&spec.to_string()).unwrap() else {
        panic!("not a layered spec")
    };
    net::build(&n).unwrap()
}

/// θ with He-scaled uniform weights, X uniform in [−1.5, 1.5), targets that fit the loss.
pub fn random_data(model: &Model, m: usize, seed: u64) -> (Params, Data) {
    let mut rng = Rng(seed);
    let layout = model.layout().clone();
    let mut values = vec![0.0; layout.len()];
    for t in layout.tensors() {
        let scale = (2.0 / t.fan_in as f64).sqrt();
        for v in &mut values[t.range()] {
            *v = rng.sym() * scale * if t.kind == TensorKind::Bias { 0.3 } else { 1.0 };
        }
    }
    let (n_in, n_out) = (model.sizes()[0], model.sizes()[1]);
    let x = Array2::from_shape_fn((n_in, m), |_| 1.5 * rng.sym());
    let y = match model.loss() {
        Loss::SoftmaxCrossEntropy => {
            let mut y = Array2::zeros((n_out, m));
            for j in 0..m {
                y[[(rng.next_f64() * n_out as f64) as usize % n_out, j]] = 1.0;
            }
            y
        }
        Loss::BinaryCrossEntropy => {
            Array2::from_shape_fn((n_out, m), |_| f64::from(u8::from(rng.next_f64() < 0.5)))
        }
        Loss::MeanSquaredError => Array2::from_shape_fn((n_out, m), |_| rng.sym()),
    };
    let data = Data::new(model, x, y).unwrap();
    (Params::new(layout, values).unwrap(), data)
}

/// A random conv net over the layer options: stride 1–3, padding valid/same/k, square and
/// non-square kernels, 1–4 channels, pooling 2–3 with stride ≠ size, each activation.
pub fn random_conv_spec(rng: &mut Rng, k: usize) -> serde_json::Value {
    let acts = ["relu", "tanh", "sigmoid", "leaky_relu", "identity"];
    let pick = |rng: &mut Rng, n: usize| (rng.next_f64() * n as f64) as usize % n;
    let c_in = 1 + pick(rng, 3);
    let (h, w) = (10 + pick(rng, 4), 10 + pick(rng, 3));
    let stride = 1 + k % 3;
    let padding = match k % 3 {
        0 => serde_json::json!("same"),
        1 => serde_json::json!("valid"),
        _ => serde_json::json!(1),
    };
    let kernel = if k.is_multiple_of(2) {
        serde_json::json!(2 + pick(rng, 2))
    } else {
        serde_json::json!([2, 3])
    };
    let pool = if k % 4 < 2 { "max_pool" } else { "avg_pool" };
    let (loss, out, units) = match k % 3 {
        0 => ("softmax_cross_entropy", "softmax", 3),
        1 => ("binary_cross_entropy", "sigmoid", 1),
        _ => ("mse", "identity", 2),
    };
    let layout = if k % 5 == 4 { "nchw" } else { "course" };
    let input_shape = if layout == "nchw" {
        vec![c_in, h, w]
    } else {
        vec![h, w, c_in]
    };
    serde_json::json!({
        "input_shape": input_shape,
        "layout": layout,
        "layers": [
            {"type": "conv2d", "filters": 2 + pick(rng, 3), "kernel": kernel, "stride": stride,
             "padding": padding, "activation": acts[k % acts.len()]},
            {"type": pool, "size": 2, "stride": 1},
            {"type": "conv2d", "filters": 1 + pick(rng, 3), "kernel": 2, "padding": "same",
             "activation": acts[(k + 2) % acts.len()]},
            {"type": if pool == "max_pool" { "avg_pool" } else { "max_pool" }, "size": 2},
            {"type": "flatten"},
            {"type": "dense", "units": units, "activation": out}
        ],
        "loss": loss,
        "l2": if k % 4 == 3 { 0.1 } else { 0.0 }
    })
}
