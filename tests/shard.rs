//! A check split into shards and merged gives the same report as one run, with
//! bit-identical J± (the partials store them with round-trip precision).
#![cfg(feature = "cli")]

mod common;

use common::{gradcheck, seed_dir, tempdir};

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

#[test]
fn four_shards_merge_into_the_single_run_report() {
    let dir = tempdir("shard");
    let d = seed_dir();
    let p = |f: &str| d.join(f).to_string_lossy().into_owned();
    let (params, data, grads) = (
        p("seed_params.npz"),
        p("seed_data.npz"),
        p("seed_grads_buggy.npz"),
    );
    let inputs = ["--params", &params, "--data", &data, "--grads", &grads];
    let mut parts = Vec::new();
    for i in 1..=4 {
        let part = dir
            .join(format!("part{i}.json"))
            .to_string_lossy()
            .into_owned();
        let mut args = vec!["check", "--backend", "cpu", "--shard"];
        let s = format!("{i}/4");
        args.push(&s);
        args.extend_from_slice(&inputs);
        args.extend_from_slice(&["--json", &part]);
        let (code, out, err) = gradcheck(&args);
        assert_eq!(code, 0, "{out} {err}");
        parts.push(part);
    }
    let mut args = vec!["merge", "--json", "-"];
    args.extend_from_slice(&inputs);
    // Any order: merge sorts by range.
    for part in parts.iter().rev() {
        args.push(part);
    }
    let (code, out, err) = gradcheck(&args);
    assert_eq!(code, 1, "{err}");
    let merged = json(&out);
    let mut args = vec!["check", "--backend", "cpu", "--json", "-"];
    args.extend_from_slice(&inputs);
    let (_, out, _) = gradcheck(&args);
    let single = json(&out);
    // Bit-identical J± ⇒ identical differences, to the last bit.
    assert_eq!(
        merged["difference"].as_f64().unwrap().to_bits(),
        single["difference"].as_f64().unwrap().to_bits()
    );
    assert_eq!(merged["tensors"], single["tensors"]);

    // Missing a shard is an error naming the gap.
    let mut args = vec!["merge"];
    args.extend_from_slice(&inputs);
    args.extend_from_slice(&[&parts[0], &parts[2], &parts[3]]);
    let (code, _, err) = gradcheck(&args);
    assert_eq!(code, 2);
    assert!(err.contains("uncovered"), "{err}");
}

#[test]
fn shard_spec_errors() {
    let (code, _, err) = gradcheck(&[
        "check",
        "--example",
        "seed-fixed",
        "--shard",
        "5/4",
        "--json",
        "-",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("I/N"), "{err}");
}
