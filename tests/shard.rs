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

#[test]
fn a_big_net_merges_from_2_8_and_64_parts() {
    // Part files of a 200k-parameter net exceed the 16 MiB cap of small JSON files (the
    // README's 533 k net's halves were 47 MiB and refused); they are capped by the input
    // budget instead, and every split merges into the single run's report.
    use gradcheck::check::Backend;
    use gradcheck::plan::Plan;
    use gradcheck::{Loss, ModelSpec};
    let spec = ModelSpec {
        layers: vec![784, 256, 1],
        activations: vec!["relu".parse().unwrap(), "sigmoid".parse().unwrap()],
        loss: Loss::BinaryCrossEntropy,
        l2: 0.0,
        dropout: None,
    };
    let (model, params, data) = gradcheck::examples::random_problem(spec, 4, 3).unwrap();
    let grads = gradcheck::eval::cpu::backprop(&model, &params, &data);
    let problem = gradcheck::problem::Problem {
        model,
        params,
        data,
        grads,
        notes: Vec::new(),
        builtin_grads: false,
        grad_roundoff: f64::EPSILON / 2.0,
        notebook: false,
        load_s: 0.0,
        model_guessed: false,
    };
    let plan = Plan {
        backend: Backend::Cpu,
        ..Plan::default()
    };
    let whole = plan.check(&problem).unwrap();
    let dir = tempdir("big-shards");
    for n in [2, 8, 64] {
        let mut parts = Vec::new();
        let mut biggest = 0;
        for i in 1..=n {
            let path = dir.join(format!("part{i}.json"));
            let text = serde_json::to_string(&plan.shard(&problem, i, n).unwrap()).unwrap();
            biggest = biggest.max(text.len());
            std::fs::write(&path, text).unwrap();
            parts.push(gradcheck::shard::load_partial(&path).unwrap());
        }
        if n == 2 {
            assert!(biggest > 16 << 20, "{biggest} bytes: not over the old cap");
        }
        let merged = plan.merge(&problem, &parts, false).unwrap();
        assert_eq!(merged.plus, whole.plus, "{n} parts");
        assert_eq!(merged.minus, whole.minus, "{n} parts");
        assert_eq!(merged.difference, whole.difference, "{n} parts");
        assert_eq!(merged.verdict, whole.verdict, "{n} parts");
    }
}
