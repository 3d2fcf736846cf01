//! The seed notebook reproduced: built-in examples and the notebook's own .npz files, on
//! the CPU f64 reference. Tolerances are DESIGN.md's: accumulation order changes the last
//! digits, so the buggy difference must agree to 1e-8 relative, the fixed one (pure
//! rounding noise) to 0.5 %, the 1-D one to 1e-12.
// Without the cli/gpu features some helpers and imports serve only gated-out tests.
#![cfg_attr(not(all(feature = "cli", feature = "gpu")), allow(unused))]

mod common;

use common::seed_dir;
use gradcheck::examples::expected;
use gradcheck::io::Npz;

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}

fn tensor_pass(v: &serde_json::Value) -> Vec<(String, bool)> {
    v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                t["passed"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
#[cfg(feature = "cli")]
fn seed_1d_example() {
    let (code, out, err) = common::gradcheck(&[
        "check",
        "--example",
        "seed-1d",
        "--backend",
        "cpu",
        "--json",
        "-",
    ]);
    assert_eq!(code, 0, "{err}");
    let v = json(&out);
    assert!(
        rel(
            v["difference"].as_f64().unwrap(),
            expected::ONE_D_DIFFERENCE
        ) <= 1e-12
    );
}

fn check_buggy(v: &serde_json::Value) {
    let d = v["difference"].as_f64().unwrap();
    assert!(rel(d, expected::BUGGY_DIFFERENCE) <= 1e-8, "{d}");
    assert!(!v["passed"].as_bool().unwrap());
    let want: Vec<(String, bool)> = [
        ("W1", true),
        ("b1", false),
        ("W2", false),
        ("b2", true),
        ("W3", true),
        ("b3", true),
    ]
    .iter()
    .map(|(n, p)| (n.to_string(), *p))
    .collect();
    assert_eq!(tensor_pass(v), want);
}

fn check_fixed(v: &serde_json::Value) {
    let d = v["difference"].as_f64().unwrap();
    assert!(rel(d, expected::FIXED_DIFFERENCE) <= 5e-3, "{d}");
    assert!(v["passed"].as_bool().unwrap());
    // J(θ) is one forward pass: equal to the notebook's to an ulp.
    approx::assert_relative_eq!(
        v["cost"].as_f64().unwrap(),
        expected::COST,
        max_relative = 1e-15
    );
}

#[test]
#[cfg(feature = "cli")]
fn seed_examples_built_in() {
    let (code, out, err) = common::gradcheck(&[
        "check",
        "--example",
        "seed-buggy",
        "--backend",
        "cpu",
        "--json",
        "-",
    ]);
    assert_eq!(code, 1, "{err}");
    check_buggy(&json(&out));
    let (code, out, err) = common::gradcheck(&[
        "check",
        "--example",
        "seed-fixed",
        "--backend",
        "cpu",
        "--json",
        "-",
    ]);
    assert_eq!(code, 0, "{err}");
    check_fixed(&json(&out));
}

#[test]
#[cfg(feature = "cli")]
fn seed_from_the_notebooks_npz_files() {
    let d = seed_dir();
    let p = |f: &str| d.join(f).to_string_lossy().into_owned();
    let (params, data) = (p("seed_params.npz"), p("seed_data.npz"));
    for (grads, code) in [("seed_grads_buggy.npz", 1), ("seed_grads_fixed.npz", 0)] {
        let (c, out, err) = common::gradcheck(&[
            "check",
            "--params",
            &params,
            "--data",
            &data,
            "--grads",
            &p(grads),
            "--backend",
            "cpu",
            "--precision",
            "f64-plain",
            "--json",
            "-",
        ]);
        assert_eq!(c, code, "{grads}: {err}");
        let v = json(&out);
        if code == 1 {
            check_buggy(&v)
        } else {
            check_fixed(&v)
        }
        assert!(
            v["notes"][0].as_str().unwrap().contains("inferred"),
            "the report says the model was inferred"
        );
    }
}

#[test]
fn seed_notebook_gradapprox_element_by_element() {
    let p = gradcheck::examples::seed_problem(false).unwrap();
    let r = gradcheck::GradCheck::new()
        .backend(gradcheck::Backend::Cpu)
        .precision(gradcheck::Precision::F64Plain)
        .run(&p.model, &p.params, &p.data, &p.grads)
        .unwrap();
    let text = std::fs::read_to_string(seed_dir().join("seed_expected.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let want: Vec<f64> = v["n_d"]["gradapprox"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(want.len(), r.gradapprox.len());
    for (i, (g, w)) in r.gradapprox.iter().zip(&want).enumerate() {
        // Same arithmetic as numpy (FMA-accumulated products): equal to the last bits.
        assert!(
            (g - w).abs() <= 1e-12 * w.abs().max(1e-3),
            "element {i}: {g} vs {w}"
        );
    }
}

#[test]
fn built_in_backprop_reproduces_the_notebooks_fixed_gradients() {
    let d = seed_dir();
    let p = gradcheck::examples::seed_problem(false).unwrap();
    let g = gradcheck::eval::cpu::backprop(&p.model, &p.params, &p.data);
    let fixed = gradcheck::io::grads_from(
        &Npz::open(&d.join("seed_grads_fixed.npz")).unwrap(),
        &p.model,
    )
    .unwrap();
    for (i, (a, b)) in g.as_slice().iter().zip(fixed.as_slice()).enumerate() {
        assert!(
            (a - b).abs() <= 1e-12,
            "{}: {a} vs {b}",
            p.model.layout().element_name(i)
        );
    }
}

#[test]
#[cfg(feature = "cli")]
fn fast_mode_flags_seed_buggy_and_passes_seed_fixed() {
    let (code, out, err) = common::gradcheck(&[
        "check",
        "--example",
        "seed-buggy",
        "--fast",
        "--backend",
        "cpu",
        "--json",
        "-",
    ]);
    assert_eq!(code, 1, "{err}");
    let v = json(&out);
    assert_eq!(v["mode"], "full (after the fast check did not pass)");
    assert!(!v["fast"]["passed"].as_bool().unwrap());
    check_buggy(&v);
    let (code, out, err) = common::gradcheck(&[
        "check",
        "--example",
        "seed-fixed",
        "--fast",
        "6",
        "--seed",
        "3",
        "--backend",
        "cpu",
        "--json",
        "-",
    ]);
    assert_eq!(code, 0, "{err}");
    let v = json(&out);
    assert_eq!(v["mode"], "fast");
    assert_eq!(v["fast"]["directions"].as_array().unwrap().len(), 6);
    assert_eq!(v["fast"]["seed"], 3);
    // Directional derivatives carry the same rounding noise as coordinate ones.
    assert!(v["fast"]["difference"].as_f64().unwrap() < 2e-7);
}

#[test]
#[cfg(feature = "cli")]
fn four_point_stencil_is_sharper_and_estimates_the_error() {
    // At ε = 1e-3 the 2-point difference is truncation-dominated (1.7e-8 measured); the
    // 4-point one removes the ε² term (1.6e-11 measured).
    let run = |st: &str| {
        let (code, out, err) = common::gradcheck(&[
            "check",
            "--example",
            "seed-fixed",
            "--backend",
            "cpu",
            "--epsilon",
            "1e-3",
            "--stencil",
            st,
            "--json",
            "-",
        ]);
        assert_eq!(code, 0, "{err}");
        json(&out)
    };
    let (two, four) = (run("2"), run("4"));
    assert_eq!(four["stencil"], 4);
    let (d2, d4) = (
        two["difference"].as_f64().unwrap(),
        four["difference"].as_f64().unwrap(),
    );
    assert!(d4 < d2 / 100.0, "{d2} {d4}");
    let est = four["tensors"][0]["error_estimate"].as_f64().unwrap();
    let rms2 = two["tensors"][0]["rms_error"].as_f64().unwrap();
    // The estimate |g₂ − g₄| tracks the 2-point error: same order as its RMS error.
    assert!(est > rms2 / 10.0 && est < rms2 * 10.0, "{est} vs {rms2}");
    let (code, _, err) = common::gradcheck(&["check", "--example", "seed-fixed", "--stencil", "3"]);
    assert_eq!(code, 2, "{err}");
}
