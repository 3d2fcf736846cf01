//! Conv nets on the GPU (shaders/layered.wgsl) against the CPU's f64 reference
//! (eval::layered), on random nets over every layer option: the f64 Δ path's ΔJ± to
//! 1e-13 of Σ_j|Δloss_j|/m with identical kink flags and tie widths, at an ε that crosses
//! no kink and one that crosses many; the f32 Δ path within the verdict's bound; f64-plain
//! J± to 1e-13 relative; the built-in examples' verdicts and diagnoses as on the CPU.
#![cfg(feature = "gpu")]

mod common;

use common::conv_nets::{built, random_conv_spec, random_data};
use common::gpu;
use gradcheck::check::{Backend, GradCheck, Verdict};
use gradcheck::eval::gpu::EvalOptions;
use gradcheck::eval::layered;
use gradcheck::eval::{Precision, Threads};
use gradcheck::net;
use gradcheck::rng::Rng;
use gradcheck::{Data, Model, Params};
use ndarray::Array2;

fn cpu_deltas(model: &Model, params: &Params, data: &Data, eps: f64) -> layered_cpu::Out {
    let net = model.net().unwrap();
    let p = layered::perturbed_deltas(
        model,
        net,
        params,
        data,
        eps,
        0..model.n_params(),
        Threads::Parallel,
    )
    .unwrap();
    layered_cpu::Out {
        plus: p.plus,
        minus: p.minus,
        kinks: p.kinks,
        magnitudes: p.magnitudes.unwrap(),
        ties: p.tie_widths,
    }
}

mod layered_cpu {
    /// The CPU's evaluation, full range.
    pub struct Out {
        pub plus: Vec<f64>,
        pub minus: Vec<f64>,
        pub kinks: Vec<u8>,
        pub magnitudes: Vec<[f64; 2]>,
        pub ties: Option<Vec<f64>>,
    }
}

/// A random conv net of tests/conv.rs (every option across k) with its data.
fn random_net(k: usize) -> (Model, Params, Data) {
    let mut rng = Rng(9100 + k as u64);
    let model = built(random_conv_spec(&mut rng, k));
    let (params, data) = random_data(&model, 3 + k % 4, 300 + k as u64);
    (model, params, data)
}

#[test]
fn gpu_f64_delta_path_equals_the_cpu_on_random_conv_nets() {
    let Some(ctx) = gpu() else { return };
    if !ctx.has_f64() {
        eprintln!("skipping: {} has no SHADER_F64", ctx.adapter_name());
        return;
    }
    let (mut crossed_at_large, mut crossed_at_small, mut tied) = (0, 0, 0);
    for k in 0..12 {
        let (model, params, data) = random_net(k);
        for eps in [1e-6, 1e-2] {
            let cpu = cpu_deltas(&model, &params, &data, eps);
            let gpu = ctx
                .evaluate(
                    &model,
                    &params,
                    &data,
                    eps,
                    Precision::F64,
                    EvalOptions::default(),
                )
                .unwrap();
            assert!(gpu.deltas && gpu.precision == gradcheck::eval::Precision::F64);
            let mags = gpu.magnitudes.as_ref().unwrap();
            let mut worst = 0.0f64;
            for (i, gm) in mags.iter().enumerate() {
                // Both sides sum the same per-sample closed forms (in another order within a
                // sample's sparse sums): rounding of the order of u64 of what was summed.
                for (g, c, mag, gmag) in [
                    (gpu.plus[i], cpu.plus[i], cpu.magnitudes[i][0], gm[0]),
                    (gpu.minus[i], cpu.minus[i], cpu.magnitudes[i][1], gm[1]),
                ] {
                    let err = (g - c).abs() / mag.max(f64::MIN_POSITIVE);
                    worst = worst.max(err);
                    assert!(
                        (g - c).abs() <= 1e-13 * mag,
                        "net {k} ε={eps:e} param {i}: gpu {g:e} vs cpu {c:e} (Σ|Δloss|/m {mag:e})"
                    );
                    assert!((gmag - mag).abs() <= 1e-13 * mag, "magnitude {i}");
                }
            }
            assert_eq!(gpu.kinks, cpu.kinks, "net {k} ε={eps:e}: kink flags");
            let crossed = cpu.kinks.iter().filter(|&&f| f != 0).count();
            if eps == 1e-2 {
                crossed_at_large += crossed;
            } else {
                crossed_at_small += crossed;
            }
            match (&cpu.ties, &gpu.tie_widths) {
                (Some(c), Some(g)) => {
                    // Tie widths are sums over samples and windows of |∂J/∂y|·(spread of
                    // the tied Δx), the same products in another order (the GPU sums
                    // per sample, then over samples): rounding ≈ 1e-15 relative.
                    for (i, (a, b)) in c.iter().zip(g).enumerate() {
                        assert!(
                            (a - b).abs() <= 1e-12 * a.abs().max(1e-300),
                            "net {k} tie width {i}: cpu {a:e} gpu {b:e}"
                        );
                    }
                    tied += c.iter().filter(|&&t| t > 0.0).count();
                }
                (None, None) => {}
                other => panic!("net {k}: tie widths on one side only: {other:?}"),
            }
            eprintln!(
                "net {k} ({} params, m = {}) ε={eps:e}: worst |ΔJ_gpu − ΔJ_cpu| = {worst:.2e} of Σ|Δloss|/m, {crossed} crossed a kink",
                model.n_params(),
                data.m()
            );
        }
    }
    // The large ε must have crossed kinks (ReLU and max-pool winners), or the test proved
    // nothing about the kink paths.
    eprintln!(
        "kinks crossed: {crossed_at_large} at ε = 1e-2, {crossed_at_small} at 1e-6; {tied} tie widths"
    );
    assert!(crossed_at_large > 100, "{crossed_at_large}");
    assert!(crossed_at_small < crossed_at_large);
}

#[test]
fn max_pool_ties_give_the_cpus_tie_widths_on_the_gpu() {
    let Some(ctx) = gpu() else { return };
    if !ctx.has_f64() {
        return;
    }
    // Integer inputs and weights: pooled windows tie all the time.
    let model = built(serde_json::json!({
        "input_shape": [8, 8, 2],
        "layers": [
            {"type": "conv2d", "filters": 3, "kernel": 2, "padding": "same", "activation": "relu"},
            {"type": "max_pool", "size": 2},
            {"type": "flatten"},
            {"type": "dense", "units": 3, "activation": "softmax"}
        ],
        "loss": "softmax_cross_entropy"
    }));
    let mut rng = Rng(77);
    let n = model.n_params();
    let values: Vec<f64> = (0..n)
        .map(|_| ((rng.next_f64() * 3.0) as i64 - 1) as f64)
        .collect();
    let params = Params::new(model.layout().clone(), values).unwrap();
    let m = 4;
    let x = Array2::from_shape_fn((model.sizes()[0], m), |_| (rng.next_f64() * 3.0).floor());
    let mut y = Array2::zeros((3, m));
    for j in 0..m {
        y[[j % 3, j]] = 1.0;
    }
    let data = Data::new(&model, x, y).unwrap();
    let eps = 1e-6;
    let cpu = cpu_deltas(&model, &params, &data, eps);
    let gpu = ctx
        .evaluate(
            &model,
            &params,
            &data,
            eps,
            Precision::F64,
            EvalOptions::default(),
        )
        .unwrap();
    let (c, g) = (cpu.ties.unwrap(), gpu.tie_widths.unwrap());
    let tied = c.iter().filter(|&&t| t > 0.0).count();
    assert!(tied > 10, "the net was meant to tie: {tied}");
    // The same products summed in another order (see above): rounding ≈ 1e-15 relative.
    for i in 0..n {
        assert!(
            (c[i] - g[i]).abs() <= 1e-12 * c[i].abs(),
            "{i}: {} vs {}",
            c[i],
            g[i]
        );
        let mag = cpu.magnitudes[i][0];
        assert!((gpu.plus[i] - cpu.plus[i]).abs() <= 1e-13 * mag, "{i}");
    }
    assert_eq!(gpu.kinks, cpu.kinks);
    // And the verdict: the built-in backprop (first maximum) PASSes on the GPU.
    let grads = net::backprop_with(&model, model.net().unwrap(), &params, &data, None);
    let r = GradCheck::new()
        .backend(Backend::Gpu)
        .run(&model, &params, &data, &grads)
        .unwrap();
    assert_eq!(r.verdict, Verdict::Pass, "{:?}", r.reasons);
}

#[test]
fn gpu_f64_plain_costs_equal_the_cpus() {
    let Some(ctx) = gpu() else { return };
    if !ctx.has_f64() {
        return;
    }
    for k in [0, 3, 4, 7, 10] {
        let (model, params, data) = random_net(k);
        let net = model.net().unwrap();
        let eps = 1e-4;
        let cpu = layered::perturbed_costs(
            &model,
            net,
            &params,
            &data,
            eps,
            0..model.n_params(),
            Threads::Parallel,
        )
        .unwrap();
        let gpu = ctx
            .evaluate(
                &model,
                &params,
                &data,
                eps,
                Precision::F64Plain,
                EvalOptions::default(),
            )
            .unwrap();
        assert!(!gpu.deltas && gpu.precision == gradcheck::eval::Precision::F64Plain);
        // J(θ) is computed on the host either way, from the same forward pass, in two
        // loops over the samples: a few ulps at most.
        assert!((gpu.cost - cpu.cost).abs() <= 1e-15 * cpu.cost.abs());
        let mut worst = 0.0f64;
        for i in 0..model.n_params() {
            for (g, c) in [(gpu.plus[i], cpu.plus[i]), (gpu.minus[i], cpu.minus[i])] {
                // Same operations in the same order (fma), the GPU's exp/log within an ulp
                // or two of the CPU's.
                let rel = (g - c).abs() / c.abs();
                worst = worst.max(rel);
                assert!(rel <= 1e-13, "net {k} param {i}: gpu {g:e} vs cpu {c:e}");
            }
        }
        eprintln!("net {k}: f64-plain J± within {worst:.1e} relative of the CPU's");
    }
}

#[test]
fn gpu_f32_delta_path_is_within_the_verdicts_bound() {
    let Some(ctx) = gpu() else { return };
    let u32_ = f64::from(f32::EPSILON) / 2.0;
    for k in [1, 2, 5, 8, 11] {
        let (model, params, data) = random_net(k);
        let eps = 1e-3;
        // The f32 Δ path steps by fl32(ε): the f64 reference takes the same step.
        let e32 = f64::from(eps as f32);
        let cpu = cpu_deltas(&model, &params, &data, e32);
        let gpu = ctx
            .evaluate(
                &model,
                &params,
                &data,
                eps,
                Precision::F32,
                EvalOptions::default(),
            )
            .unwrap();
        assert!(gpu.deltas && gpu.precision == gradcheck::eval::Precision::F32);
        let mut worst = 0.0f64;
        for i in 0..model.n_params() {
            if cpu.kinks[i] != 0 || gpu.kinks[i] != 0 {
                continue; // a crossed kink is flagged and kept out of verdicts
            }
            for (g, c, mag) in [
                (gpu.plus[i], cpu.plus[i], cpu.magnitudes[i][0]),
                (gpu.minus[i], cpu.minus[i], cpu.magnitudes[i][1]),
            ] {
                worst = worst.max((g - c).abs() / (u32_ * mag));
            }
        }
        eprintln!("net {k}: |ΔJ32 − ΔJ64| ≤ {worst:.1} u32·Σ|Δloss_j|/m");
        // The verdict bounds the f32 Δ path's rounding by a few u32 per operation in each
        // sample's chain (θ, X rounded once, the sums of the Δ forms, the closed-form loss
        // change) times Σ_j|Δloss_j|/m; 128 u32 is what the MLP's f32 test allows.
        assert!(worst <= 128.0, "net {k}: {worst} u32");
    }
}

#[test]
fn built_in_conv_examples_give_the_cpus_verdicts_and_diagnoses_on_the_gpu() {
    let Some(ctx) = gpu() else { return };
    if !ctx.has_f64() {
        return;
    }
    for buggy in [true, false] {
        let p = gradcheck::examples::conv_problem(buggy).unwrap();
        let run = |backend| {
            GradCheck::new()
                .backend(backend)
                .run(&p.model, &p.params, &p.data, &p.grads)
                .unwrap()
        };
        let (cpu, gpu) = (run(Backend::Cpu), run(Backend::Gpu));
        assert!(gpu.backend.starts_with("gpu"), "{}", gpu.backend);
        assert_eq!(gpu.verdict, cpu.verdict);
        assert_eq!(common::failing(&gpu), common::failing(&cpu));
        for (g, c) in gpu.tensors.iter().zip(&cpu.tensors) {
            assert_eq!(g.passed, c.passed, "{}", g.name);
            let says = |t: &gradcheck::check::TensorReport| {
                t.diagnosis.as_ref().map(|d| (d.kind, d.message.clone()))
            };
            assert_eq!(says(g), says(c), "{}", g.name);
            // Same ΔJ± to 1e-13 of their magnitudes: the differences agree to 1e-6 of
            // themselves, or within the rounding noise (≈ 1e-16) where that is all they are.
            assert!(
                (g.difference - c.difference).abs() <= 1e-6 * c.difference + 1e-14,
                "{}: {} vs {}",
                g.name,
                g.difference,
                c.difference
            );
        }
        let expected = if buggy { Verdict::Fail } else { Verdict::Pass };
        assert_eq!(gpu.verdict, expected);
        // `auto` still prefers the CPU to a software adapter (it is slower there).
        if ctx.is_software() {
            assert_eq!(run(Backend::Auto).backend, "cpu");
        }
    }
}

#[test]
fn shards_and_tiny_loop_budgets() {
    let Some(ctx) = gpu() else { return };
    let (model, params, data) = random_net(3);
    let n = model.n_params();
    let precision = if ctx.has_f64() {
        Precision::F64
    } else {
        Precision::F32
    };
    let whole = ctx
        .evaluate(
            &model,
            &params,
            &data,
            1e-5,
            precision,
            EvalOptions::default(),
        )
        .unwrap();
    // A shard: its range as in the whole run, the rest NaN.
    let range = n / 3..2 * n / 3;
    let part = ctx
        .evaluate(
            &model,
            &params,
            &data,
            1e-5,
            precision,
            EvalOptions {
                range: Some(range.clone()),
                ..Default::default()
            },
        )
        .unwrap();
    for i in 0..n {
        if range.contains(&i) {
            assert_eq!(part.plus[i].to_bits(), whole.plus[i].to_bits(), "{i}");
            assert_eq!(part.kinks[i], whole.kinks[i]);
        } else {
            assert!(part.plus[i].is_nan() && part.minus[i].is_nan());
        }
    }
    // A loop budget too small for one sample: refused (never silently cut short).
    let err = ctx
        .evaluate(
            &model,
            &params,
            &data,
            1e-5,
            precision,
            EvalOptions {
                loop_budget: Some(500),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("loop iterations"), "{err}");
    // A budget that fits one sample but not every sample's sum: the sums go in windows,
    // and the numbers are those of one pass, bit for bit.
    let dense = built(serde_json::json!({
        "input_shape": [3],
        "layers": [{"type": "dense", "units": 2, "activation": "tanh"},
                   {"type": "dense", "units": 1, "activation": "sigmoid"}],
        "loss": "binary_cross_entropy"
    }));
    let (dp, dd) = random_data(&dense, 400, 5);
    let one = ctx
        .evaluate(&dense, &dp, &dd, 1e-5, precision, EvalOptions::default())
        .unwrap();
    let windows = ctx
        .evaluate(
            &dense,
            &dp,
            &dd,
            1e-5,
            precision,
            EvalOptions {
                loop_budget: Some(1200),
                ..Default::default()
            },
        )
        .unwrap();
    for i in 0..dense.n_params() {
        assert_eq!(one.plus[i].to_bits(), windows.plus[i].to_bits(), "{i}");
        assert_eq!(one.minus[i].to_bits(), windows.minus[i].to_bits(), "{i}");
    }
}
