//! Every bad input gets one clear line naming the file, key and shapes, and exit 2.
#![cfg(feature = "cli")]

mod common;

use common::{gradcheck, seed_dir, tempdir, write_npz};
use gradcheck::io::Npz;
use ndarray::Array2;

/// The seed files as (key, matrix) lists, to be broken one way at a time.
fn seed_arrays(file: &str) -> Vec<(String, Array2<f64>)> {
    let npz = Npz::open(&seed_dir().join(file)).unwrap();
    npz.arrays
        .into_iter()
        .map(|(k, a)| {
            let s = a.shape().to_vec();
            let (r, c) = if s.len() == 2 {
                (s[0], s[1])
            } else {
                (s[0], 1)
            };
            (
                k,
                Array2::from_shape_vec((r, c), a.iter().copied().collect()).unwrap(),
            )
        })
        .collect()
}

fn write(dir: &std::path::Path, name: &str, arrays: &[(String, Array2<f64>)]) -> String {
    let p = dir.join(name);
    let refs: Vec<(&str, Array2<f64>)> = arrays
        .iter()
        .map(|(k, a)| (k.as_str(), a.clone()))
        .collect();
    write_npz(&p, &refs);
    p.to_string_lossy().into_owned()
}

/// Runs check on (params, data, grads) and asserts exit 2 with every `needles` in stderr.
fn expect_error(args: &[&str], needles: &[&str]) {
    let mut full = vec!["check", "--backend", "cpu"];
    full.extend_from_slice(args);
    let (code, out, err) = gradcheck(&full);
    assert_eq!(code, 2, "args {args:?}: stdout {out} stderr {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in {err:?}");
    }
}

struct Files {
    dir: common::TempDir,
    params: String,
    data: String,
    grads: String,
}

fn files(tag: &str) -> Files {
    let dir = tempdir(tag);
    let params = write(&dir, "params.npz", &seed_arrays("seed_params.npz"));
    let data = write(&dir, "data.npz", &seed_arrays("seed_data.npz"));
    let grads = write(&dir, "grads.npz", &seed_arrays("seed_grads_fixed.npz"));
    Files {
        dir,
        params,
        data,
        grads,
    }
}

#[test]
fn rewritten_seed_files_still_pass() {
    // Guards the helpers: the unbroken copies must check out (exit 0).
    let f = files("ok");
    let (code, _, err) = gradcheck(&[
        "check",
        "--backend",
        "cpu",
        "--params",
        &f.params,
        "--data",
        &f.data,
        "--grads",
        &f.grads,
    ]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn missing_file_and_not_an_npz() {
    let f = files("missing");
    let nope = f.dir.join("nope.npz").to_string_lossy().into_owned();
    expect_error(&["--params", &nope, "--data", &f.data], &["nope.npz"]);
    let junk = f.dir.join("junk.npz");
    std::fs::write(&junk, b"this is not a zip").unwrap();
    let junk = junk.to_string_lossy().into_owned();
    expect_error(
        &["--params", &f.params, "--data", &f.data, "--grads", &junk],
        &["junk.npz", "not a numpy .npz"],
    );
}

#[test]
fn missing_and_extra_keys() {
    let f = files("keys");
    let mut g = seed_arrays("seed_grads_fixed.npz");
    g.retain(|(k, _)| k != "db2");
    let gp = write(&f.dir, "g_missing.npz", &g);
    expect_error(
        &["--params", &f.params, "--data", &f.data, "--grads", &gp],
        &["g_missing.npz", "missing key \"db2\""],
    );
    let mut g = seed_arrays("seed_grads_fixed.npz");
    g.push(("dW9".into(), Array2::zeros((1, 1))));
    let gp = write(&f.dir, "g_extra.npz", &g);
    expect_error(
        &["--params", &f.params, "--data", &f.data, "--grads", &gp],
        &["g_extra.npz", "unexpected key \"dW9\""],
    );
}

#[test]
fn transposed_gradient_shape() {
    let f = files("shape");
    let mut g = seed_arrays("seed_grads_fixed.npz");
    for (k, a) in &mut g {
        if k == "dW2" {
            *a = a.t().to_owned();
        }
    }
    let gp = write(&f.dir, "g_t.npz", &g);
    expect_error(
        &["--params", &f.params, "--data", &f.data, "--grads", &gp],
        &["g_t.npz", "dW2 is 5×3", "W2 is 3×5"],
    );
}

#[test]
fn data_shapes() {
    let f = files("data");
    let mut d = seed_arrays("seed_data.npz");
    d[0].1 = Array2::zeros((3, 3)); // X with 3 rows, n0 = 4
    let k0 = d[0].0.clone();
    let dp = write(&f.dir, "d_rows.npz", &d);
    expect_error(
        &["--params", &f.params, "--data", &dp],
        &["d_rows.npz", &format!("{k0} is 3×3"), "n0 = 4"],
    );
    let mut d = seed_arrays("seed_data.npz");
    for (k, a) in &mut d {
        if k == "Y" {
            *a = Array2::zeros((1, 2));
        }
    }
    let dp = write(&f.dir, "d_cols.npz", &d);
    expect_error(
        &["--params", &f.params, "--data", &dp],
        &["d_cols.npz", "Y is 1×2", "X is 4×3"],
    );
}

#[test]
fn non_finite_values() {
    let f = files("nan");
    let mut p = seed_arrays("seed_params.npz");
    p[2].1[[1, 2]] = f64::NAN;
    let key = p[2].0.clone();
    let pp = write(&f.dir, "p_nan.npz", &p);
    expect_error(
        &["--params", &pp, "--data", &f.data],
        &["p_nan.npz", &key, "NaN", "[1, 2]"],
    );
    let mut d = seed_arrays("seed_data.npz");
    d[0].1[[0, 0]] = f64::INFINITY;
    let dp = write(&f.dir, "d_inf.npz", &d);
    expect_error(
        &["--params", &f.params, "--data", &dp],
        &["d_inf.npz", "inf"],
    );
}

#[test]
fn spec_disagreeing_with_parameters_and_bad_specs() {
    let f = files("spec");
    let spec = f.dir.join("m.json");
    std::fs::write(&spec, r#"{"layers":[4,6,3,1],"activations":["relu","relu","sigmoid"],"loss":"binary_cross_entropy"}"#).unwrap();
    let sp = spec.to_string_lossy().into_owned();
    expect_error(
        &["--params", &f.params, "--data", &f.data, "--model", &sp],
        &["params.npz", "[4, 5, 3, 1]", "[4, 6, 3, 1]"],
    );
    std::fs::write(&spec, r#"{"layers":[4,5,3,1],"activations":["relu","swish","sigmoid"],"loss":"binary_cross_entropy"}"#).unwrap();
    expect_error(
        &["--params", &f.params, "--data", &f.data, "--model", &sp],
        &["m.json", "swish"],
    );
    std::fs::write(&spec, r#"{"layers":[100000000,100000000,1],"activations":["relu","sigmoid"],"loss":"binary_cross_entropy"}"#).unwrap();
    expect_error(
        &["--params", &f.params, "--data", &f.data, "--model", &sp],
        &["W1", "100000000×100000000"],
    );
}

#[test]
fn bad_epsilon_and_threshold() {
    for e in ["0", "-1e-7", "nan"] {
        expect_error(&["--example", "seed-fixed", "--epsilon", e], &["epsilon"]);
    }
    expect_error(
        &["--example", "seed-fixed", "--threshold", "-1"],
        &["threshold"],
    );
}

#[test]
fn usage_errors_exit_2() {
    let (code, _, _) = gradcheck(&["check"]);
    assert_eq!(code, 2);
    let (code, _, _) = gradcheck(&["check", "--example", "nope"]);
    assert_eq!(code, 2);
    let (code, _, _) = gradcheck(&["frobnicate"]);
    assert_eq!(code, 2);
}

#[test]
fn help_texts_carry_no_rustdoc_syntax_and_honest_defaults() {
    for sub in ["check", "compare", "batch", "sweep", "merge", "devices"] {
        let (code, out, err) = gradcheck(&[sub, "--help"]);
        assert_eq!(code, 0, "{sub}: {err}");
        assert!(
            !out.contains("[`"),
            "{sub} --help shows rustdoc link syntax:\n{out}"
        );
        assert!(!out.contains("0.0000000001"), "{sub} --help: {out}");
    }
    // The 1-D example is offered only where it runs.
    for sub in ["compare", "sweep", "merge"] {
        let (code, out, _) = gradcheck(&[sub, "--help"]);
        assert_eq!(code, 0);
        assert!(!out.contains("seed-1d"), "{sub} offers seed-1d:\n{out}");
    }
    let (code, out, _) = gradcheck(&["check", "--help"]);
    assert!(code == 0 && out.contains("seed-1d"), "{out}");
    let (code, _, err) = gradcheck(&["check", "--example", "seed-fixed", "--stencil", "3"]);
    assert_eq!(code, 2);
    assert!(err.contains("2 or 4"), "{err}");
}

#[test]
fn completions_and_man_page_are_generated() {
    let (code, out, err) = gradcheck(&["completions", "bash"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("gradcheck") && out.contains("--epsilon"),
        "{out}"
    );
    let (code, out, err) = gradcheck(&["manpage"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(".ie") || out.contains(".TH"), "{out}");
    let (code, _, _) = gradcheck(&["completions", "nosh"]);
    assert_eq!(code, 2);
}

#[test]
fn every_exit_code_is_in_every_help_and_the_man_page() {
    let verdict = ["0 every", "1 a", "2 ", "3 "];
    for (sub, codes) in [
        ("check", &verdict[..]),
        ("batch", &verdict[..]),
        ("merge", &verdict[..]),
        ("compare", &["0 done", "2 bad"][..]),
        ("sweep", &["0 done", "2 bad"][..]),
        ("devices", &["0 done", "2 bad"][..]),
    ] {
        let (code, out, _) = gradcheck(&[sub, "--help"]);
        assert_eq!(code, 0);
        let exit = out
            .lines()
            .find(|l| l.starts_with("Exit status:"))
            .unwrap_or_else(|| panic!("{sub} --help has no exit status:\n{out}"));
        for c in codes {
            assert!(exit.contains(c), "{sub}: {c:?} missing from {exit:?}");
        }
    }
    let (_, out, _) = gradcheck(&["--help"]);
    assert!(out.contains("Exit status: 0"), "{out}");
    let (_, man, _) = gradcheck(&["manpage"]);
    assert!(man.contains(".SH \"EXIT STATUS\""), "{man}");
    // No page is referred to that is not shipped.
    assert!(!man.contains("(1)"), "{man}");
    let (_, out, _) = gradcheck(&["check", "--help"]);
    let precision = out
        .lines()
        .find(|l| l.contains("--precision"))
        .unwrap_or("");
    assert!(out.contains("[default: auto]"), "{out}");
    assert!(
        !precision.contains("[default: auto] [default"),
        "{precision}"
    );
}
