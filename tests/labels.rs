//! Class-index labels (y of shape (m,) with integers 0 … C − 1, what every classifier has)
//! for softmax cross-entropy: the same report as the one-hot Y, and an index out of range
//! named by its sample.
#![cfg(feature = "cli")]

mod common;

use common::{gradcheck, tempdir, write_npz};
use gradcheck::eval::cpu;
use gradcheck::examples::random_problem;
use gradcheck::{Loss, ModelSpec};
use ndarray::{Array1, Array2};
use ndarray_npy::NpzWriter;

fn refs(v: &[(String, Array2<f64>)]) -> Vec<(&str, Array2<f64>)> {
    v.iter().map(|(k, a)| (k.as_str(), a.clone())).collect()
}

#[test]
fn class_indices_give_the_one_hot_report() {
    let spec = ModelSpec {
        layers: vec![4, 5, 3],
        activations: vec!["tanh".parse().unwrap(), "softmax".parse().unwrap()],
        loss: Loss::SoftmaxCrossEntropy,
        l2: 0.0,
        dropout: None,
    };
    let (model, params, data) = random_problem(spec.clone(), 7, 5).unwrap();
    let grads = cpu::backprop(&model, &params, &data);
    let dir = tempdir("labels");
    let mut p = Vec::new();
    let mut g = Vec::new();
    for t in model.layout().tensors() {
        let m =
            |v: &[f64]| Array2::from_shape_vec((t.rows, t.cols), v[t.range()].to_vec()).unwrap();
        p.push((t.name.clone(), m(params.as_slice())));
        g.push((format!("d{}", t.name), m(grads.as_slice())));
    }
    let path = |n: &str| dir.join(n).to_string_lossy().into_owned();
    write_npz(std::path::Path::new(&path("p.npz")), &refs(&p));
    write_npz(std::path::Path::new(&path("g.npz")), &refs(&g));
    write_npz(
        std::path::Path::new(&path("onehot.npz")),
        &[("X", data.x.clone()), ("Y", data.y.clone())],
    );
    let classes: Array1<i64> = data
        .y
        .columns()
        .into_iter()
        .map(|c| c.iter().position(|&v| v == 1.0).unwrap() as i64)
        .collect();
    let write_indices = |name: &str, labels: &Array1<i64>| {
        let mut w = NpzWriter::new(std::fs::File::create(path(name)).unwrap());
        w.add_array("X", &data.x).unwrap();
        w.add_array("Y", labels).unwrap();
        w.finish().unwrap();
    };
    write_indices("idx.npz", &classes);
    std::fs::write(path("model.json"), serde_json::to_string(&spec).unwrap()).unwrap();
    let run = |d: &str| {
        gradcheck(&[
            "check",
            "--params",
            &path("p.npz"),
            "--data",
            &path(d),
            "--grads",
            &path("g.npz"),
            "--model",
            &path("model.json"),
            "--backend",
            "cpu",
            "--json",
            "-",
        ])
    };
    let (code, one_hot, err) = run("onehot.npz");
    assert_eq!(code, 0, "{err}");
    let (code, indices, err) = run("idx.npz");
    assert_eq!(code, 0, "{err}");
    let (a, b): (serde_json::Value, serde_json::Value) = (
        serde_json::from_str(&one_hot).unwrap(),
        serde_json::from_str(&indices).unwrap(),
    );
    assert_eq!(a["difference"], b["difference"]);
    assert_eq!(a["tensors"], b["tensors"]);
    // An index past the last class names its sample.
    let mut bad = classes.clone();
    bad[4] = 3;
    write_indices("bad.npz", &bad);
    let (code, _, err) = run("bad.npz");
    assert_eq!(code, 2);
    assert!(
        err.contains("sample 4 has 3") && err.contains("3 classes"),
        "{err}"
    );
}
