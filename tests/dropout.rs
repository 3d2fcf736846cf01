//! Dropout with fixed masks: the built-in backprop with masks, the CPU and GPU evaluators
//! applying the same masks, the two classic backward-pass slips diagnosed, masks from a
//! seed or from the data file, and `--save-masks`.
// Without the cli/gpu features some helpers and imports serve only gated-out tests.
#![cfg_attr(not(all(feature = "cli", feature = "gpu")), allow(unused))]

mod common;

use common::{failing, tempdir, write_npz};
use gradcheck::check::{Backend, GradCheck, Precision, Report};
use gradcheck::diagnose::MistakeKind;
use gradcheck::eval::cpu::{self, DropoutBackward, Threads};
use gradcheck::examples::random_problem;
use gradcheck::{Data, Dropout, Loss, Model, ModelSpec, Params};

/// 5-8-6-1 (relu, tanh, sigmoid), BCE, dropout keep_prob 0.8 on both hidden layers, m = 16.
fn spec(seed: Option<u64>) -> ModelSpec {
    ModelSpec {
        layers: vec![5, 8, 6, 1],
        activations: vec![
            "relu".parse().unwrap(),
            "tanh".parse().unwrap(),
            "sigmoid".parse().unwrap(),
        ],
        loss: Loss::BinaryCrossEntropy,
        l2: 0.0,
        dropout: Some(Dropout {
            keep_prob: 0.8,
            seed,
            layers: vec![1, 2],
        }),
    }
}

fn problem() -> (Model, Params, Data) {
    random_problem(spec(Some(3)), 16, 11).unwrap()
}

fn cpu_check() -> GradCheck {
    GradCheck::new().backend(Backend::Cpu)
}

fn kinds(r: &Report) -> Vec<(String, MistakeKind)> {
    r.tensors
        .iter()
        .filter_map(|t| t.diagnosis.as_ref().map(|d| (t.name.clone(), d.kind)))
        .collect()
}

fn refs(v: &[(String, ndarray::Array2<f64>)]) -> Vec<(&str, ndarray::Array2<f64>)> {
    v.iter().map(|(k, a)| (k.as_str(), a.clone())).collect()
}

fn slip(
    model: &Model,
    params: &Params,
    data: &Data,
    at: &[usize],
    how: DropoutBackward,
) -> gradcheck::Grads {
    cpu::backprop_with(model, params, data, |l| {
        if at.contains(&l) {
            how
        } else {
            DropoutBackward::Correct
        }
    })
}

#[test]
fn masks_are_drawn_from_the_seed_and_really_drop_units() {
    let (model, _, data) = problem();
    let d1 = data.mask_bits(1).unwrap();
    let d2 = data.mask_bits(2).unwrap();
    assert_eq!(d1.dim(), (8, 16));
    assert_eq!(d2.dim(), (6, 16));
    let kept = (d1.sum() + d2.sum()) / (14.0 * 16.0);
    // 224 Bernoulli(0.8) draws: 0.8 ± 3σ (σ = 0.027).
    assert!((kept - 0.8).abs() < 0.08, "kept fraction {kept}");
    assert!(data.mask_bits(3).is_none());
    // The forward pass applies them: a dropped unit's activation is exactly 0, a kept one
    // is g(z)·(1/keep_prob).
    let fwd = cpu::forward(&model, &problem().1, &data);
    for ((&bit, &a), &z) in d1.iter().zip(&fwd.a[0]).zip(&fwd.z[0]) {
        let want = if bit == 1.0 {
            z.max(0.0) * (1.0 / 0.8)
        } else {
            0.0
        };
        assert_eq!(a, want);
    }
    // Same seed, same masks; another seed, others.
    let again = random_problem(spec(Some(3)), 16, 11).unwrap().2;
    assert_eq!(again.masks, data.masks);
    let other = random_problem(spec(Some(4)), 16, 11).unwrap().2;
    assert_ne!(other.masks, data.masks);
}

#[test]
fn built_in_backprop_with_dropout_passes_and_matches_closed_forms() {
    let (model, params, data) = problem();
    let grads = cpu::backprop(&model, &params, &data);
    let r = cpu_check().run(&model, &params, &data, &grads).unwrap();
    assert!(r.passed, "difference {}", r.difference_counted);
    eprintln!("correct gradients with dropout: {:e}", r.difference_counted);
    // f64 central differences at ε = 1e-7 on a unit-scale cost: rounding ~u/ε ≈ 1e-9
    // relative per element (measured 5.4e-9 overall); a mask or scale missing in the
    // backprop would be O(1). 1e-7 is the notebook's order of noise.
    assert!(r.difference_counted < 1e-7, "{}", r.difference_counted);
    // keep_prob = 1 keeps every unit: the gradient is the one without dropout.
    let mut s1 = spec(Some(3));
    s1.dropout.as_mut().unwrap().keep_prob = 1.0;
    let (m1, p1, d1) = random_problem(s1.clone(), 16, 11).unwrap();
    let mut s0 = s1;
    s0.dropout = None;
    let m0 = Model::new(s0).unwrap();
    let d0 = Data::new(&m0, d1.x.clone(), d1.y.clone()).unwrap();
    assert_eq!(
        cpu::backprop(&m1, &p1, &d1).as_slice(),
        cpu::backprop(&m0, &p1, &d0).as_slice()
    );
    // Dropping every unit of layer 2 cuts W1, b1, W2, b2 off the cost: zero gradients.
    let (x, y) = (data.x.clone(), data.y.clone());
    let m_noseed = Model::new(spec(None)).unwrap();
    let all_off = Data::with_masks(
        &m_noseed,
        x,
        y,
        vec![
            (1, data.mask_bits(1).unwrap()),
            (2, ndarray::Array2::zeros((6, 16))),
        ],
    )
    .unwrap();
    let g = cpu::backprop(&m_noseed, &params, &all_off);
    let layout = m_noseed.layout();
    for t in 0..4 {
        assert!(
            g.as_slice()[layout.tensors()[t].range()]
                .iter()
                .all(|&v| v == 0.0)
        );
    }
    assert!(
        g.as_slice()[layout.tensors()[5].range()]
            .iter()
            .any(|&v| v != 0.0)
    );
}

#[test]
fn slips_fail_with_the_layers_affected_named_on_the_cpu() {
    let (model, params, data) = problem();
    let cases = [
        (
            &[1usize, 2][..],
            DropoutBackward::MaskMissing,
            MistakeKind::DropoutMaskMissing,
            vec!["W1", "b1", "W2", "b2"],
        ),
        (
            &[1, 2][..],
            DropoutBackward::ScaleMissing,
            MistakeKind::DropoutScaleMissing,
            vec!["W1", "b1", "W2", "b2"],
        ),
        (
            &[2][..],
            DropoutBackward::MaskMissing,
            MistakeKind::DropoutMaskMissing,
            vec!["W1", "b1", "W2", "b2"],
        ),
        (
            &[1][..],
            DropoutBackward::ScaleMissing,
            MistakeKind::DropoutScaleMissing,
            vec!["W1", "b1"],
        ),
        (
            &[1, 2][..],
            DropoutBackward::Ignored,
            MistakeKind::DropoutIgnored,
            vec!["W1", "b1", "W2", "b2"],
        ),
    ];
    for (at, how, kind, tensors) in cases {
        let grads = slip(&model, &params, &data, at, how);
        let r = cpu_check().run(&model, &params, &data, &grads).unwrap();
        assert!(!r.passed, "{how:?} at {at:?}");
        assert_eq!(failing(&r), tensors, "{how:?} at {at:?}");
        let k = kinds(&r);
        assert_eq!(k.len(), tensors.len(), "{how:?} at {at:?}: {k:?}");
        assert!(
            k.iter().all(|(_, x)| *x == kind),
            "{how:?} at {at:?}: {k:?}"
        );
        // The message names the layer(s) of the slip.
        let msg = &r.tensors[0].diagnosis.as_ref().unwrap().message;
        let named = if at.len() == 1 {
            format!("layer {}", at[0])
        } else {
            "layers 1, 2".into()
        };
        assert!(msg.contains(&named), "{msg}");
    }
}

#[test]
fn masks_from_the_data_file_equal_masks_from_the_seed() {
    let (model, params, data) = problem();
    let grads = slip(&model, &params, &data, &[2], DropoutBackward::MaskMissing);
    let seeded = cpu_check().run(&model, &params, &data, &grads).unwrap();
    let m_given = Model::new(spec(None)).unwrap();
    let given = Data::with_masks(
        &m_given,
        data.x.clone(),
        data.y.clone(),
        vec![
            (1, data.mask_bits(1).unwrap()),
            (2, data.mask_bits(2).unwrap()),
        ],
    )
    .unwrap();
    let from_file = cpu_check().run(&m_given, &params, &given, &grads).unwrap();
    assert_eq!(from_file.difference, seeded.difference);
    assert_eq!(from_file.tensors, seeded.tensors);
    assert_eq!(from_file.plus, seeded.plus);
}

#[test]
#[cfg(feature = "cli")]
fn cli_saves_masks_and_reads_them_back() {
    let dir = tempdir("dropout-cli");
    let (model, params, data) = problem();
    let layout = model.layout();
    let mut p_arrays = Vec::new();
    let mut g_arrays = Vec::new();
    let grads = slip(
        &model,
        &params,
        &data,
        &[1, 2],
        DropoutBackward::ScaleMissing,
    );
    for (t, slot) in layout.tensors().iter().enumerate() {
        let shape = (slot.rows, slot.cols);
        p_arrays.push((
            slot.name.clone(),
            ndarray::Array2::from_shape_vec(shape, params.tensor(t).to_vec()).unwrap(),
        ));
        g_arrays.push((
            format!("d{}", slot.name),
            ndarray::Array2::from_shape_vec(shape, grads.tensor(t).to_vec()).unwrap(),
        ));
    }

    let (pp, gp, dp) = (
        dir.join("params.npz"),
        dir.join("grads.npz"),
        dir.join("data.npz"),
    );
    write_npz(&pp, &refs(&p_arrays));
    write_npz(&gp, &refs(&g_arrays));
    write_npz(&dp, &[("X", data.x.clone()), ("Y", data.y.clone())]);
    let seeded_spec = dir.join("model.json");
    std::fs::write(&seeded_spec, serde_json::to_string(&spec(Some(3))).unwrap()).unwrap();
    let masks = dir.join("masks.npz");
    let s = |p: &std::path::Path| p.to_string_lossy().into_owned();
    // `check` on the CPU with these params and the given data and model, plus `extra`.
    let check = |data: &std::path::Path, model: &std::path::Path, extra: &[&str]| {
        let (d, m, p) = (s(data), s(model), s(&pp));
        let mut args = vec!["check", "--backend", "cpu", "--params", &p, "--data", &d];
        args.extend(["--model", &m]);
        args.extend(extra);
        common::gradcheck(&args)
    };
    let (gs, ms) = (s(&gp), s(&masks));
    let (code, out, err) = check(
        &dp,
        &seeded_spec,
        &["--grads", &gs, "--save-masks", &ms, "--json", "-"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("2 dropout mask(s) written"), "{err}");
    let seeded: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(out.contains("dropout_scale_missing"), "{out}");
    // The saved masks are the seed's, and as data keys they give the same report.
    let saved = gradcheck::io::Npz::open(&masks).unwrap();
    let keys: Vec<&str> = saved.arrays.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["D1", "D2"]);
    let m2 = |k: &str| {
        let a = &saved.arrays.iter().find(|(n, _)| n == k).unwrap().1;
        a.clone().into_dimensionality::<ndarray::Ix2>().unwrap()
    };
    assert_eq!(m2("D1"), data.mask_bits(1).unwrap());
    let dp2 = dir.join("data_masked.npz");
    write_npz(
        &dp2,
        &[
            ("X", data.x.clone()),
            ("Y", data.y.clone()),
            ("D1", m2("D1")),
            ("D2", m2("D2")),
        ],
    );
    let plain_spec = dir.join("model_noseed.json");
    std::fs::write(&plain_spec, serde_json::to_string(&spec(None)).unwrap()).unwrap();
    let (code, out, err) = check(&dp2, &plain_spec, &["--grads", &gs, "--json", "-"]);
    assert_eq!(code, 1, "{err}");
    let given: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(given["difference"], seeded["difference"]);
    assert_eq!(given["tensors"], seeded["tensors"]);

    // Bad inputs: exit 2, the file and key named.
    let bad =
        |arrays: &[(&str, ndarray::Array2<f64>)], model: &std::path::Path, needles: &[&str]| {
            let p = dir.join("bad.npz");
            write_npz(&p, arrays);
            let (code, _, err) = check(&p, model, &[]);
            assert_eq!(code, 2, "{err}");
            for n in needles {
                assert!(err.contains(n), "{n:?} not in {err}");
            }
            assert!(!err.contains("panicked"), "{err}");
        };
    let mut half = m2("D1");
    half[[0, 0]] = 0.5;
    bad(
        &[
            ("X", data.x.clone()),
            ("Y", data.y.clone()),
            ("D1", half),
            ("D2", m2("D2")),
        ],
        &plain_spec,
        &["bad.npz", "D1[0,0] = 0.5"],
    );
    bad(
        &[
            ("X", data.x.clone()),
            ("Y", data.y.clone()),
            ("D1", m2("D1")),
        ],
        &plain_spec,
        &["bad.npz", "D2", "seed"],
    );
    bad(
        &[
            ("X", data.x.clone()),
            ("Y", data.y.clone()),
            ("D1", m2("D2")),
            ("D2", m2("D2")),
        ],
        &plain_spec,
        &["D1 is 6×16", "8×16"],
    );
    let mut nodrop = spec(None);
    nodrop.dropout = None;
    let nodrop_path = dir.join("model_nodrop.json");
    std::fs::write(&nodrop_path, serde_json::to_string(&nodrop).unwrap()).unwrap();
    bad(
        &[
            ("X", data.x.clone()),
            ("Y", data.y.clone()),
            ("D1", m2("D1")),
        ],
        &nodrop_path,
        &["D1", "no dropout"],
    );
    let mut outlayer = spec(Some(1));
    outlayer.dropout.as_mut().unwrap().layers = vec![3];
    std::fs::write(&nodrop_path, serde_json::to_string(&outlayer).unwrap()).unwrap();
    bad(
        &[("X", data.x.clone()), ("Y", data.y.clone())],
        &nodrop_path,
        &["layer 3", "hidden"],
    );
}

#[test]
#[cfg(feature = "gpu")]
fn gpu_applies_the_same_masks() {
    let Some(ctx) = common::gpu() else { return };
    let (model, params, data) = problem();
    if ctx.has_f64() {
        // Every J± equal to the CPU's to the f64 GPU tolerance (≤ 1e-13 relative).
        let cpu = cpu::perturbed_costs(
            &model,
            &params,
            &data,
            1e-6,
            0..model.n_params(),
            Threads::Parallel,
        )
        .unwrap();
        let gpu = ctx
            .evaluate(
                &model,
                &params,
                &data,
                1e-6,
                Precision::F64Plain,
                Default::default(),
            )
            .unwrap();
        for (g, c) in gpu
            .plus
            .iter()
            .zip(&cpu.plus)
            .chain(gpu.minus.iter().zip(&cpu.minus))
        {
            assert!((g - c).abs() <= 1e-13 * c.abs(), "{g} vs {c}");
        }
        assert_eq!(gpu.kinks, cpu.kinks);
    }
    for precision in [Precision::F64, Precision::F32] {
        if precision == Precision::F64 && !ctx.has_f64() {
            continue;
        }
        let gc = GradCheck::new().backend(Backend::Gpu).precision(precision);
        let good = cpu::backprop(&model, &params, &data);
        let r = gc.run(&model, &params, &data, &good).unwrap();
        assert!(r.passed, "{precision:?}: {}", r.difference_counted);
        for (how, kind) in [
            (
                DropoutBackward::MaskMissing,
                MistakeKind::DropoutMaskMissing,
            ),
            (
                DropoutBackward::ScaleMissing,
                MistakeKind::DropoutScaleMissing,
            ),
        ] {
            let bad = slip(&model, &params, &data, &[1, 2], how);
            let r = gc.run(&model, &params, &data, &bad).unwrap();
            assert_eq!(
                failing(&r),
                ["W1", "b1", "W2", "b2"],
                "{precision:?} {how:?}"
            );
            assert!(kinds(&r).iter().all(|(_, k)| *k == kind));
        }
    }
}
