//! Sample counts on the GPU's fused Δ path: every sample is summed whatever m is, on
//! adapters that cap the loop iterations of one shader invocation (Mesa's llvmpipe ends
//! every loop after 65,535 iterations in all, which once made `--precision f64` sum only
//! the first ~3,641 samples of a softmax net). The oracle is the CPU's f64 Δ path.
#![cfg(feature = "gpu")]

mod common;

use common::gpu;
use gradcheck::check::Precision;
use gradcheck::eval::cpu::{self, Threads};
use gradcheck::eval::gpu::{EvalOptions, GpuContext};
use gradcheck::examples::random_problem;
use gradcheck::{Loss, ModelSpec};

fn spec(layers: &[usize], acts: &[&str], loss: Loss) -> ModelSpec {
    ModelSpec {
        layers: layers.to_vec(),
        activations: acts.iter().map(|a| a.parse().unwrap()).collect(),
        loss,
        l2: 0.0,
        dropout: None,
    }
}

/// Nets that take each fused kernel: softmax output only (`fused_delta`, the loss with
/// the most loop iterations), a tanh hidden layer (`fused_exact` for every sample), ReLU
/// (the shortcut, with kinks at ε = 1e-2 sent to the work list), BCE and MSE.
fn nets() -> Vec<ModelSpec> {
    vec![
        spec(&[2, 3], &["softmax"], Loss::SoftmaxCrossEntropy),
        spec(&[3, 4, 2], &["tanh", "softmax"], Loss::SoftmaxCrossEntropy),
        spec(&[3, 5, 1], &["relu", "sigmoid"], Loss::BinaryCrossEntropy),
        spec(
            &[2, 4, 3, 2],
            &["leaky_relu", "tanh", "identity"],
            Loss::MeanSquaredError,
        ),
    ]
}

/// The largest |GPU − CPU| of ΔJ± over every perturbation, in units of Σ_j|Δloss_j|/m.
fn worst_against_cpu(
    ctx: &GpuContext,
    net: &ModelSpec,
    m: usize,
    eps: f64,
    precision: Precision,
    opts: EvalOptions,
) -> f64 {
    let (model, params, data) = random_problem(net.clone(), m, 31 + m as u64).unwrap();
    let cpu = cpu::perturbed_deltas(
        &model,
        &params,
        &data,
        eps,
        0..model.n_params(),
        Threads::Parallel,
    )
    .unwrap();
    let gpu = ctx
        .evaluate(&model, &params, &data, eps, precision, opts)
        .unwrap();
    let mag = cpu.magnitudes.unwrap();
    let mut worst = 0.0f64;
    for (i, [mp, mm]) in mag.iter().enumerate() {
        for (g, c, s) in [
            (gpu.plus[i], cpu.plus[i], mp),
            (gpu.minus[i], cpu.minus[i], mm),
        ] {
            worst = worst.max((g - c).abs() / s.max(f64::MIN_POSITIVE));
        }
    }
    worst
}

#[test]
fn every_sample_is_summed_at_sample_counts_around_powers_of_two_and_the_loop_cap() {
    let Some(ctx) = gpu() else { return };
    let cap = ctx.loop_cap().unwrap();
    eprintln!("{}: loop cap {cap}", ctx.adapter_name());
    let mut ms: Vec<usize> = vec![1, 2, 3, 3641, 3642, 20_000];
    for p in [8, 10, 12, 13, 14] {
        ms.extend([(1 << p) - 1, 1 << p, (1 << p) + 1]);
    }
    ms.sort_unstable();
    for net in nets() {
        for &m in &ms {
            for (precision, bound) in [(Precision::F64, 1e-13), (Precision::F32, 2e-5)] {
                // f64: the closed forms agree with the CPU's to a few ulps of what is summed
                // (1e-13, as tests/gpu.rs); f32: u32 ≈ 6e-8 per term times the net's growth
                // stays under 2e-5, while a lost sample moves ΔJ by about 1/m of
                // Σ|Δloss|/m: ≥ 5e-5 at m ≤ 20,000.
                let worst =
                    worst_against_cpu(&ctx, &net, m, 1e-6, precision, EvalOptions::default());
                assert!(
                    worst <= bound,
                    "{:?} m={m} {precision:?}: GPU differs from the CPU by {worst:e} of Σ|Δloss|/m",
                    net.layers
                );
            }
        }
    }
    // Around the cap itself, one sample per loop iteration at least.
    let net = spec(&[1, 1], &["identity"], Loss::MeanSquaredError);
    for m in [65_535, 65_536, 65_537] {
        let worst = worst_against_cpu(&ctx, &net, m, 1e-6, Precision::F64, EvalOptions::default());
        assert!(worst <= 1e-13, "m={m}: {worst:e}");
    }
}

#[test]
fn sample_windows_change_no_bit() {
    let Some(ctx) = gpu() else { return };
    for (n, net) in nets().into_iter().enumerate() {
        for eps in [1e-6, 1e-2] {
            let m = 300;
            let (model, params, data) = random_problem(net.clone(), m, 90 + n as u64).unwrap();
            let run = |budget: Option<u32>| {
                let opts = EvalOptions {
                    loop_budget: budget,
                    ..Default::default()
                };
                ctx.evaluate(&model, &params, &data, eps, Precision::F64, opts)
                    .unwrap()
            };
            let whole = run(Some(u32::MAX));
            // Small enough for windows of a few samples each.
            let windowed = run(Some(4_000));
            assert_eq!(whole.plus, windowed.plus, "{:?} ε={eps}", net.layers);
            assert_eq!(whole.minus, windowed.minus, "{:?} ε={eps}", net.layers);
            assert_eq!(whole.magnitudes, windowed.magnitudes);
            assert_eq!(whole.kinks, windowed.kinks);
        }
    }
}

#[test]
fn a_sample_too_large_for_the_loop_cap_is_an_error_not_a_wrong_sum() {
    let Some(ctx) = gpu() else { return };
    let (model, params, data) = random_problem(
        spec(
            &[3, 40, 40, 2],
            &["tanh", "tanh", "softmax"],
            Loss::SoftmaxCrossEntropy,
        ),
        5,
        1,
    )
    .unwrap();
    let opts = EvalOptions {
        loop_budget: Some(200),
        ..Default::default()
    };
    let err = ctx
        .evaluate(&model, &params, &data, 1e-6, Precision::F64, opts)
        .unwrap_err();
    assert!(err.to_string().contains("--backend cpu"), "{err}");
}
