//! A model guessed from the weight shapes never gives a confident FAIL: a correct tanh /
//! softmax backprop checked without its spec used to be judged as relu / sigmoid / BCE and
//! failed on every tensor.
#![cfg(feature = "cli")]

mod common;

use common::{gradcheck, tempdir, write_npz};
use gradcheck::eval::cpu;
use gradcheck::examples::random_problem;
use gradcheck::{Grads, Loss, ModelSpec};
use ndarray::Array2;

/// Writes params, data and gradients of a net as the notebook's .npz files.
fn files(dir: &std::path::Path, spec: ModelSpec, scale: f64) -> [String; 3] {
    let (model, params, data) = random_problem(spec, 9, 12).unwrap();
    let grads: Grads = cpu::backprop(&model, &params, &data);
    let mut p = Vec::new();
    let mut g = Vec::new();
    for t in model.layout().tensors() {
        let vals =
            |v: &[f64]| Array2::from_shape_vec((t.rows, t.cols), v[t.range()].to_vec()).unwrap();
        p.push((t.name.clone(), vals(params.as_slice())));
        g.push((
            format!("d{}", t.name),
            vals(grads.as_slice()).mapv(|x| x * scale),
        ));
    }
    let path = |n: &str| dir.join(n).to_string_lossy().into_owned();
    write_npz(std::path::Path::new(&path("p.npz")), &borrow(&p));
    write_npz(
        std::path::Path::new(&path("d.npz")),
        &[("X", data.x.clone()), ("Y", data.y.clone())],
    );
    write_npz(std::path::Path::new(&path("g.npz")), &borrow(&g));
    [path("p.npz"), path("d.npz"), path("g.npz")]
}

fn borrow(v: &[(String, Array2<f64>)]) -> Vec<(&str, Array2<f64>)> {
    v.iter().map(|(k, a)| (k.as_str(), a.clone())).collect()
}

fn tanh_softmax() -> ModelSpec {
    ModelSpec {
        layers: vec![4, 5, 3],
        activations: vec!["tanh".parse().unwrap(), "softmax".parse().unwrap()],
        loss: Loss::SoftmaxCrossEntropy,
        l2: 0.0,
        dropout: None,
    }
}

#[test]
fn a_correct_backprop_of_another_model_is_named_not_failed() {
    let dir = tempdir("guess");
    let [p, d, g] = files(&dir, tanh_softmax(), 1.0);
    let json = dir.join("r.json");
    let (code, out, err) = gradcheck(&[
        "check",
        "--params",
        &p,
        "--data",
        &d,
        "--grads",
        &g,
        "--backend",
        "cpu",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(code, 3, "inconclusive, not FAIL: {out}{err}");
    assert!(out.contains("MODEL GUESSED"), "{out}");
    assert!(
        out.contains(
            "your gradients are those of tanh hidden layers, softmax output, softmax cross-entropy"
        ),
        "{out}"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(
        doc["model_guessed"],
        "relu hidden layers, sigmoid output, binary cross-entropy"
    );
    assert_eq!(doc["verdict"], "inconclusive");
}

#[test]
fn a_wrong_backprop_against_a_guessed_model_is_not_a_confident_fail_either() {
    // Every gradient doubled: no model of these shapes fits; still the guess is named.
    let dir = tempdir("guess-wrong");
    let [p, d, g] = files(&dir, tanh_softmax(), 2.0);
    let (code, out, _) = gradcheck(&[
        "check",
        "--params",
        &p,
        "--data",
        &d,
        "--grads",
        &g,
        "--backend",
        "cpu",
    ]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("no other activation/cost of these shapes fits"),
        "{out}"
    );
}

#[test]
fn the_notebooks_own_files_without_a_spec_still_fail_where_they_are_wrong() {
    // The notebook's model is the guess, and only two tensors fail: a real FAIL.
    let s = common::seed_dir();
    let f = |n: &str| s.join(n).to_string_lossy().into_owned();
    let (code, out, _) = gradcheck(&[
        "check",
        "--params",
        &f("seed_params.npz"),
        "--data",
        &f("seed_data.npz"),
        "--grads",
        &f("seed_grads_buggy.npz"),
        "--backend",
        "cpu",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("MODEL GUESSED"), "{out}");
}
