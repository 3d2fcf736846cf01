//! The verdict is never a lie: every class of case that used to print a false PASS or a
//! false FAIL, planted on nets built here, in both directions — correct gradients never
//! FAIL, wrong ones (1 % or more) never PASS — on the CPU in both f64 arithmetics, and on
//! the GPU in every precision. Where a test allows INCONCLUSIVE it says why no central
//! difference could decide. The oracle is the built-in backprop (itself checked against
//! closed forms in eval::cpu's tests) and the planted factor.

mod common;

use gradcheck::check::{Backend, GradCheck, Precision, Verdict};
use gradcheck::eval::cpu;
use gradcheck::examples::random_problem;
use gradcheck::rng::Rng;
use gradcheck::{Data, Grads, Loss, Model, ModelSpec, Params};
use ndarray::Array2;

/// One check on the CPU at `eps` (`None`: the precision's default).
fn cpu_check(
    precision: Precision,
    eps: Option<f64>,
    model: &Model,
    params: &Params,
    data: &Data,
    grads: &Grads,
) -> gradcheck::Report {
    let mut gc = GradCheck::new().backend(Backend::Cpu).precision(precision);
    gc.epsilon = eps;
    gc.run(model, params, data, grads).unwrap()
}

/// `g` with tensor `name` multiplied by `f`.
fn scaled(g: &Grads, name: &str, f: f64) -> Grads {
    let mut g = g.clone();
    let r = tensor_range(&g, name);
    g.as_mut_slice()[r].iter_mut().for_each(|v| *v *= f);
    g
}

fn tensor_range(g: &Grads, name: &str) -> std::ops::Range<usize> {
    g.layout()
        .tensors()
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no tensor {name}"))
        .range()
}

/// A logistic unit σ(w·x + b) with BCE: samples' pre-activations are w·x_j + 1; the first
/// sample sits at `z` with y = 0 (confidently wrong), the `extra` others are ordinary.
fn logistic(z: f64, extra: usize) -> (Model, Params, Data) {
    let spec = ModelSpec {
        layers: vec![1, 1],
        activations: vec!["sigmoid".parse().unwrap()],
        loss: Loss::BinaryCrossEntropy,
        l2: 0.0,
        dropout: None,
    };
    let model = Model::new(spec).unwrap();
    let params = Params::new(model.layout().clone(), vec![z - 1.0, 1.0]).unwrap();
    let m = 1 + extra;
    let x = Array2::from_shape_fn(
        (1, m),
        |(_, j)| {
            if j == 0 { 1.0 } else { 0.3 * j as f64 - 0.5 }
        },
    );
    let y = Array2::from_shape_fn((1, m), |(_, j)| f64::from(u8::from(j % 2 == 1)));
    let data = Data::new(&model, x, y).unwrap();
    (model, params, data)
}

fn planted_bugs(g: &Grads) -> Vec<(&'static str, Grads)> {
    vec![
        ("dW1 zeroed", scaled(g, "W1", 0.0)),
        ("dW1 negated", scaled(g, "W1", -1.0)),
        ("dW1 × 10", scaled(g, "W1", 10.0)),
        ("dW1 × 2", scaled(g, "W1", 2.0)),
        ("db1 × 1.01", scaled(g, "b1", 1.01)),
    ]
}

#[test]
fn saturated_outputs_are_decided_by_the_delta_path_and_never_lie_in_plain_f64() {
    for (z, extra) in [(31.0, 0), (40.0, 0), (31.0, 5), (40.0, 5), (5.0, 3)] {
        let (model, params, data) = logistic(z, extra);
        let good = cpu::backprop(&model, &params, &data);
        let case = format!("z = {z}, {extra} ordinary samples");
        // J(θ) is finite (softplus), so the check runs: at z ≥ 36.7 σ(z) == 1.0 in f64.
        let r = cpu_check(Precision::F64, None, &model, &params, &data, &good);
        assert_eq!(r.verdict, Verdict::Pass, "{case}: {:?}", r.reasons);
        assert!(r.cost.is_finite(), "{case}: J = {}", r.cost);
        if extra == 0 {
            // J = softplus(z) ≈ z: the notebook's −log(1 − σ(z)) is inf from z = 36.7 on.
            assert!((r.cost - z).abs() < 1e-9, "{case}: J = {}", r.cost);
        }
        for (bug, g) in planted_bugs(&good) {
            let r = cpu_check(Precision::F64, None, &model, &params, &data, &g);
            assert_eq!(r.verdict, Verdict::Fail, "{case}, {bug}: {:?}", r.reasons);
        }
        // The notebook's arithmetic loses the gradient in −log(1 − σ(z)): it may not be
        // able to decide (exit 3), but it never calls a wrong gradient right or a right
        // one wrong.
        let r = cpu_check(Precision::F64Plain, None, &model, &params, &data, &good);
        assert_ne!(r.verdict, Verdict::Fail, "{case} plain: {:?}", r.reasons);
        for (bug, g) in planted_bugs(&good) {
            let r = cpu_check(Precision::F64Plain, None, &model, &params, &data, &g);
            assert_ne!(r.verdict, Verdict::Pass, "{case} plain, {bug}");
        }
    }
}

/// A relu net with zero biases and an all-zero input sample: every first-layer unit sits
/// exactly on its kink for that sample, so every b1 step crosses a kink on its + side.
fn zero_biases() -> (Model, Params, Data) {
    let spec = ModelSpec {
        layers: vec![3, 4, 2, 1],
        activations: ["relu", "relu", "sigmoid"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect(),
        loss: Loss::BinaryCrossEntropy,
        l2: 0.0,
        dropout: None,
    };
    let (model, params, data) = random_problem(spec, 6, 5).unwrap();
    let mut theta = params.as_slice().to_vec();
    for t in model.layout().tensors() {
        if t.name.starts_with('b') {
            theta[t.range()].iter_mut().for_each(|v| *v = 0.0);
        }
    }
    let params = Params::new(model.layout().clone(), theta).unwrap();
    let mut x = data.x.clone();
    x.column_mut(0).fill(0.0);
    let data = Data::new(&model, x, data.y.clone()).unwrap();
    (model, params, data)
}

#[test]
fn kinks_at_zero_biases_do_not_hide_the_bias_gradient() {
    let (model, params, data) = zero_biases();
    let good = cpu::backprop(&model, &params, &data);
    for precision in [Precision::F64, Precision::F64Plain] {
        let r = cpu_check(precision, None, &model, &params, &data, &good);
        let b1 = &r.tensors[1];
        assert_eq!(b1.name, "b1");
        assert!(
            b1.kinks > 0,
            "{precision:?}: the zero sample puts b1 on kinks"
        );
        assert_eq!(b1.unresolved, 0, "{precision:?}: one side is always smooth");
        assert_eq!(r.verdict, Verdict::Pass, "{precision:?}: {:?}", r.reasons);
        for f in [2.0, 0.0, -1.0] {
            let r = cpu_check(
                precision,
                None,
                &model,
                &params,
                &data,
                &scaled(&good, "b1", f),
            );
            assert_eq!(
                r.verdict,
                Verdict::Fail,
                "{precision:?} db1 × {f}: {}",
                gradcheck::report::render_text(&r)
            );
            assert_eq!(
                r.tensors[1].verdict,
                Verdict::Fail,
                "{precision:?} db1 × {f}"
            );
        }
    }
}

#[test]
fn epsilon_from_1e_minus_20_to_1e_minus_1_never_lies() {
    let fixed = gradcheck::examples::seed_problem(false).unwrap();
    let buggy = gradcheck::examples::seed_problem(true).unwrap();
    for precision in [Precision::F64, Precision::F64Plain] {
        for k in 1..=20 {
            let eps = 10f64.powi(-k);
            let p = &fixed;
            let r = cpu_check(precision, Some(eps), &p.model, &p.params, &p.data, &p.grads);
            assert_ne!(
                r.verdict,
                Verdict::Fail,
                "{precision:?} ε {eps:e}: correct gradients failed: {:?}",
                r.reasons
            );
            let p = &buggy;
            let r = cpu_check(precision, Some(eps), &p.model, &p.params, &p.data, &p.grads);
            assert_ne!(
                r.verdict,
                Verdict::Pass,
                "{precision:?} ε {eps:e}: the notebook's bugs passed"
            );
            // The Δ path takes exact steps: it decides at every ε of this range
            // (small ones in one go, large ones after re-checking at a smaller ε).
            if precision == Precision::F64 {
                assert_eq!(r.verdict, Verdict::Fail, "ε {eps:e}: {:?}", r.reasons);
            }
        }
    }
    // The notebook's own ε in its arithmetic: its verdicts, as before.
    let p = &fixed;
    let r = cpu_check(
        Precision::F64Plain,
        None,
        &p.model,
        &p.params,
        &p.data,
        &p.grads,
    );
    assert_eq!(r.verdict, Verdict::Pass, "{:?}", r.reasons);
}

#[test]
fn one_by_one_tensors_get_no_factor_and_m_only_with_evidence() {
    let p = gradcheck::examples::seed_problem(false).unwrap();
    let g = scaled(&p.grads, "b3", 1.07);
    let r = cpu_check(Precision::F64, None, &p.model, &p.params, &p.data, &g);
    assert_eq!(r.verdict, Verdict::Fail);
    let b3 = r.tensors.iter().find(|t| t.name == "b3").unwrap();
    let d = b3
        .diagnosis
        .as_ref()
        .expect("a failing tensor is described");
    assert_eq!(
        d.kind,
        gradcheck::diagnose::MistakeKind::Elementwise,
        "{}",
        d.message
    );
    // m = 3: a factor of 3.02 is not "the 1/m averaging is missing".
    let g = scaled(&p.grads, "W1", 3.02);
    let r = cpu_check(Precision::F64, None, &p.model, &p.params, &p.data, &g);
    let w1 = &r.tensors[0];
    let d = w1.diagnosis.as_ref().unwrap();
    assert_eq!(
        d.kind,
        gradcheck::diagnose::MistakeKind::Scaled,
        "{}",
        d.message
    );
    let g = scaled(&p.grads, "W1", 3.0);
    let r = cpu_check(Precision::F64, None, &p.model, &p.params, &p.data, &g);
    let d = r.tensors[0].diagnosis.as_ref().unwrap();
    assert_eq!(
        d.kind,
        gradcheck::diagnose::MistakeKind::MissingAveraging,
        "{}",
        d.message
    );
}

#[test]
fn truncation_at_large_epsilon_never_fails_a_correct_backprop() {
    // A tanh/softmax net at ε = 1e-2: the O(ε²) truncation is ~1e-5 relative, 50× the
    // notebook's threshold, and used to be reported as a wrong gradient.
    let spec = ModelSpec {
        layers: vec![64, 32, 16, 4],
        activations: ["tanh", "tanh", "softmax"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect(),
        loss: Loss::SoftmaxCrossEntropy,
        l2: 0.0,
        dropout: None,
    };
    let (model, params, data) = random_problem(spec, 16, 3).unwrap();
    let good = cpu::backprop(&model, &params, &data);
    for eps in [1e-1, 3e-2, 1e-2, 1e-3] {
        let mut gc = GradCheck::new()
            .backend(Backend::Cpu)
            .precision(Precision::F64)
            .epsilon(eps);
        gc.auto_epsilon = false;
        let r = gc.run(&model, &params, &data, &good).unwrap();
        assert_ne!(r.verdict, Verdict::Fail, "ε {eps}: {:?}", r.reasons);
        assert!(
            r.tensors.iter().all(|t| t.diagnosis.is_none()),
            "ε {eps}: no diagnosis without a failure"
        );
        // With the re-check the tool decides by itself.
        let r = cpu_check(Precision::F64, Some(eps), &model, &params, &data, &good);
        assert_eq!(r.verdict, Verdict::Pass, "ε {eps}: {:?}", r.reasons);
    }
}

#[test]
fn builtin_gradients_are_not_called_yours() {
    let p = gradcheck::examples::seed_problem(false).unwrap();
    let g = cpu::backprop(&p.model, &p.params, &p.data);
    let mut r = cpu_check(Precision::F64, None, &p.model, &p.params, &p.data, &g);
    r.builtin_gradients = true;
    let text = gradcheck::report::render_text(&r);
    assert!(text.contains("built-in backprop agrees"), "{text}");
    assert!(!text.contains("your backward propagation"), "{text}");
    let spec: ModelSpec =
        serde_json::from_str(r#"{"layers": [2, 1], "activations": ["identity"], "loss": "mse"}"#)
            .unwrap();
    assert_eq!(spec.loss, Loss::MeanSquaredError, "both spellings of MSE");
}

// ---- The property test: random nets of the whole family × planted bugs × ε. ----------

/// A random net of the family: depth 1–3, widths 1–7, every hidden activation, each
/// loss with its output, L2 and dropout sometimes.
fn random_net(rng: &mut Rng) -> ModelSpec {
    let depth = 1 + (rng.next_f64() * 3.0) as usize;
    let mut layers = vec![1 + (rng.next_f64() * 6.0) as usize];
    for _ in 0..depth - 1 {
        layers.push(1 + (rng.next_f64() * 7.0) as usize);
    }
    let hidden = ["relu", "tanh", "sigmoid", "leaky_relu:0.1", "identity"];
    let mut activations: Vec<_> = (0..depth - 1)
        .map(|_| hidden[(rng.next_f64() * 5.0) as usize].parse().unwrap())
        .collect();
    let (loss, out, width) = match (rng.next_f64() * 3.0) as usize {
        0 => (Loss::BinaryCrossEntropy, "sigmoid", 1),
        1 => (
            Loss::SoftmaxCrossEntropy,
            "softmax",
            2 + (rng.next_f64() * 3.0) as usize,
        ),
        _ => (
            Loss::MeanSquaredError,
            "identity",
            1 + (rng.next_f64() * 2.0) as usize,
        ),
    };
    layers.push(width);
    activations.push(out.parse().unwrap());
    let dropout = (depth > 1 && rng.next_f64() < 0.25).then(|| gradcheck::Dropout {
        keep_prob: 0.8,
        seed: Some(7),
        layers: vec![1],
    });
    ModelSpec {
        layers,
        activations,
        loss,
        l2: if rng.next_f64() < 0.3 { 0.1 } else { 0.0 },
        dropout,
    }
}

/// Bugs of 1 % or more, each on one tensor t of the net (names in the message).
fn bugs(good: &Grads, model: &Model, rng: &mut Rng) -> Vec<(String, Grads)> {
    let tensors = model.layout().tensors();
    let t = &tensors[(rng.next_f64() * tensors.len() as f64) as usize];
    let r = t.range();
    let name = t.name.clone();
    let mut out = Vec::new();
    let factor = 1.01 + rng.next_f64();
    out.push((
        format!("d{name} × {factor:.3}"),
        scaled(good, &name, factor),
    ));
    out.push((format!("d{name} negated"), scaled(good, &name, -1.0)));
    out.push((format!("d{name} zeroed"), scaled(good, &name, 0.0)));

    // One element off by 1 %: the largest, whose own error bound can see 1 % of it.
    let mut one = good.clone();
    let big = r
        .clone()
        .max_by(|&a, &b| {
            good.as_slice()[a]
                .abs()
                .total_cmp(&good.as_slice()[b].abs())
        })
        .unwrap();
    one.as_mut_slice()[big] *= 1.01;
    out.push((format!("d{name}: its largest element × 1.01"), one));
    if t.rows == t.cols && t.rows > 1 {
        let mut tr = good.clone();
        for i in 0..t.rows {
            for j in 0..t.cols {
                tr.as_mut_slice()[r.start + i * t.cols + j] =
                    good.as_slice()[r.start + j * t.cols + i];
            }
        }
        if tr != *good {
            out.push((format!("d{name} transposed"), tr));
        }
    }
    // A slip in some elements only (a wrong derivative on some units looks like this).
    let mut half = good.clone();
    for i in r.clone().step_by(2) {
        half.as_mut_slice()[i] = -half.as_mut_slice()[i];
    }
    if half != *good {
        out.push((format!("d{name}: every other element negated"), half));
    }
    out
}

/// Checks and inconclusive verdicts counted by a property run: all, and per config of
/// correct gradients only.
struct Counts {
    checks: usize,
    inconclusive: usize,
    /// Per config: (checks of correct gradients, of which inconclusive).
    correct: Vec<(usize, usize)>,
}

/// The property over 24 random nets × their planted bugs × `configs` (backend, precision,
/// ε): correct gradients never FAIL, planted bugs never PASS.
fn property(seed: u64, configs: &[(Backend, Precision, f64)]) -> Counts {
    let mut rng = Rng(seed);
    let (mut checks, mut inconclusive) = (0usize, 0usize);
    let mut correct = vec![(0usize, 0usize); configs.len()];
    for net in 0..24 {
        let spec = random_net(&mut rng);
        let what = format!("net {net} {:?} {:?}", spec.layers, spec.activations);
        let m = 1 + (rng.next_f64() * 9.0) as usize;
        let (model, params, data) = random_problem(spec, m, seed + net).unwrap();
        let good = cpu::backprop(&model, &params, &data);
        // A bug that vanishes (a zero gradient scaled) is no bug: skip those.
        let planted: Vec<_> = bugs(&good, &model, &mut rng)
            .into_iter()
            .filter(|(_, g)| diff(g, &good) > 0.0)
            .collect();
        for (c, &(backend, precision, eps)) in configs.iter().enumerate() {
            let gc = GradCheck::new()
                .backend(backend)
                .precision(precision)
                .epsilon(eps);
            let setting = format!("{what} m={m} ε {eps:e} {backend:?} {precision:?}");
            let r = gc.run(&model, &params, &data, &good).unwrap();
            checks += 1;
            inconclusive += usize::from(r.verdict == Verdict::Inconclusive);
            correct[c].0 += 1;
            correct[c].1 += usize::from(r.verdict == Verdict::Inconclusive);
            assert_ne!(
                r.verdict,
                Verdict::Fail,
                "{setting}: correct gradients failed: {:?}",
                r.reasons
            );
            for (bug, g) in &planted {
                let r = gc.run(&model, &params, &data, g).unwrap();
                checks += 1;
                inconclusive += usize::from(r.verdict == Verdict::Inconclusive);
                assert_ne!(r.verdict, Verdict::Pass, "{setting}: {bug} passed");
            }
        }
    }
    Counts {
        checks,
        inconclusive,
        correct,
    }
}

#[test]
fn property_random_nets_planted_bugs_and_epsilons_never_get_a_false_verdict() {
    // The default setting first (CPU f64, the notebook's ε).
    let mut configs = vec![(Backend::Cpu, Precision::F64, 1e-7)];
    for eps in [1e-8, 1e-6, 1e-4, 1e-2] {
        for precision in [Precision::F64, Precision::F64Plain] {
            configs.push((Backend::Cpu, precision, eps));
        }
    }
    let counts = property(1000, &configs);
    let rate = |(n, k): (usize, usize)| k as f64 / n.max(1) as f64;
    eprintln!(
        "property test: {} checks, {} inconclusive ({:.1} %); correct gradients at the default setting: {:.1} % inconclusive",
        counts.checks,
        counts.inconclusive,
        100.0 * counts.inconclusive as f64 / counts.checks as f64,
        100.0 * rate(counts.correct[0])
    );
    // A checker that answered INCONCLUSIVE to everything would pass the assertions
    // inside `property`: bound the rate. Measured: 0 % of correct gradients at the
    // default setting, 4.7 % of all checks over every setting (ε = 1e-8 in plain f64 and
    // ε = 1e-2 are inconclusive by design, their reasons say why).
    assert!(rate(counts.correct[0]) <= 0.02, "{:?}", counts.correct[0]);
    assert!(
        counts.inconclusive as f64 <= 0.10 * counts.checks as f64,
        "{} of {}",
        counts.inconclusive,
        counts.checks
    );
}

/// ‖a − b‖∞.
fn diff(a: &Grads, b: &Grads) -> f64 {
    a.as_slice()
        .iter()
        .zip(b.as_slice())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

// ---- The GPU, every precision -------------------------------------------------------

#[cfg(feature = "gpu")]
#[test]
fn gpu_every_precision_never_lies_on_the_planted_classes() {
    let Some(ctx) = common::gpu() else { return };
    let mut precisions = vec![Precision::F32, Precision::F32Plain];
    if ctx.has_f64() {
        precisions.extend([Precision::F64, Precision::F64Plain]);
    }
    let gpu_check = |precision, model: &Model, params: &Params, data: &Data, g: &Grads| {
        GradCheck::new()
            .backend(Backend::Gpu)
            .precision(precision)
            .run(model, params, data, g)
            .unwrap()
    };
    let mut cases = vec![("zero biases".to_string(), zero_biases())];
    for z in [31.0, 40.0] {
        cases.push((format!("logistic z = {z}"), logistic(z, 3)));
    }
    for (name, (model, params, data)) in &cases {
        let good = cpu::backprop(model, params, data);
        for &precision in &precisions {
            let r = gpu_check(precision, model, params, data, &good);
            assert_ne!(
                r.verdict,
                Verdict::Fail,
                "{name} {precision:?}: {:?}",
                r.reasons
            );
            // The Δ paths decide these (saturation and kinks are what they are for).
            if matches!(precision, Precision::F64 | Precision::F32) {
                assert_eq!(
                    r.verdict,
                    Verdict::Pass,
                    "{name} {precision:?}: {:?}",
                    r.reasons
                );
            }
            for (bug, g) in planted_bugs(&good) {
                let r = gpu_check(precision, model, params, data, &g);
                assert_ne!(
                    r.verdict,
                    Verdict::Pass,
                    "{name} {precision:?}: {bug} passed"
                );
                if matches!(precision, Precision::F64 | Precision::F32) {
                    assert_eq!(r.verdict, Verdict::Fail, "{name} {precision:?}: {bug}");
                }
            }
        }
    }
}

#[cfg(feature = "gpu")]
#[test]
fn gpu_f32_small_gradient_tensors_are_judged_by_their_own_bounds() {
    // Inputs scaled by 1e-4 … 1e-8 make dW1 tiny next to the other tensors: one noise
    // floor for the whole net used to pass ×2, ×1.1 and zero bugs there.
    let Some(_) = common::gpu() else { return };
    for s in [1e-4, 1e-6, 1e-8] {
        let spec = ModelSpec {
            layers: vec![4, 5, 3, 1],
            activations: ["relu", "tanh", "sigmoid"]
                .iter()
                .map(|a| a.parse().unwrap())
                .collect(),
            loss: Loss::BinaryCrossEntropy,
            l2: 0.0,
            dropout: None,
        };
        let (model, params, data) = random_problem(spec, 8, 11).unwrap();
        let data = Data::new(&model, data.x.mapv(|v| v * s), data.y.clone()).unwrap();
        let good = cpu::backprop(&model, &params, &data);
        let gc = GradCheck::new()
            .backend(Backend::Gpu)
            .precision(Precision::F32);
        let r = gc.run(&model, &params, &data, &good).unwrap();
        assert_ne!(r.verdict, Verdict::Fail, "scale {s}: {:?}", r.reasons);
        for f in [2.0, 1.1, 0.0] {
            let r = gc
                .run(&model, &params, &data, &scaled(&good, "W1", f))
                .unwrap();
            assert_ne!(r.verdict, Verdict::Pass, "scale {s}: dW1 × {f} passed");
            assert_ne!(r.tensors[0].verdict, Verdict::Pass, "scale {s}: dW1 × {f}");
        }
    }
}

#[cfg(feature = "gpu")]
#[test]
fn property_on_the_gpu_f64_and_f32_delta_paths() {
    // The same property on the GPU's Δ paths (f32 is what GPUs without f64 get).
    let Some(ctx) = common::gpu() else { return };
    let mut configs = Vec::new();
    for eps in [1e-6, 1e-3] {
        configs.push((Backend::Gpu, Precision::F32, eps));
        if ctx.has_f64() {
            configs.push((Backend::Gpu, Precision::F64, eps));
        }
    }
    let counts = property(500, &configs);
    eprintln!(
        "GPU property test: {} checks, {} inconclusive ({:.1} %)",
        counts.checks,
        counts.inconclusive,
        100.0 * counts.inconclusive as f64 / counts.checks as f64
    );
    assert!(
        counts.inconclusive as f64 <= 0.10 * counts.checks as f64,
        "{} of {}",
        counts.inconclusive,
        counts.checks
    );
}

// ---- The analytic side's own conditioning, and elements judged by their own terms. ---

/// The textbook backprop, written here from the formulas (not gradcheck's): Z = W·A + b,
/// then dZ_L = A_L − Y (sigmoid + BCE, softmax + CE), dW = dZ·Aᵀ/m, db = Σ dZ/m,
/// dA = Wᵀ·dZ and dZ = dA ⊙ (1 − A²) (tanh) or dA ⊙ A ⊙ (1 − A) (sigmoid) — every g'
/// from the rounded A, as users write it.
fn textbook_grads(model: &Model, params: &Params, data: &Data) -> Grads {
    let depth = model.depth();
    let mut acts = vec![data.x.clone()];
    for l in 0..depth {
        let z = params.weight(l).dot(&acts[l]) + params.bias(l).insert_axis(ndarray::Axis(1));
        let a = match model.activation(l).to_string().as_str() {
            "tanh" => z.mapv(f64::tanh),
            "relu" => z.mapv(|v| v.max(0.0)),
            "sigmoid" => z.mapv(|v| 1.0 / (1.0 + (-v).exp())),
            "softmax" => {
                let mut a = z.clone();
                for mut col in a.columns_mut() {
                    let mx = col.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                    col.mapv_inplace(|v| (v - mx).exp());
                    let s = col.sum();
                    col.mapv_inplace(|v| v / s);
                }
                a
            }
            other => panic!("textbook_grads: no {other}"),
        };
        acts.push(a);
    }
    let m = data.m() as f64;
    let mut dz = &acts[depth] - &data.y;
    let mut values = vec![0.0; model.n_params()];
    for l in (0..depth).rev() {
        let dw = dz.dot(&acts[l].t()) / m;
        let db = dz.sum_axis(ndarray::Axis(1)) / m;
        let layout = model.layout();
        for (v, d) in values[layout.weight(l).range()].iter_mut().zip(dw.iter()) {
            *v = *d;
        }
        for (v, d) in values[layout.bias(l).range()].iter_mut().zip(db.iter()) {
            *v = *d;
        }
        if l > 0 {
            let da = params.weight(l).t().dot(&dz);
            let a = &acts[l];
            dz = match model.activation(l - 1).to_string().as_str() {
                "tanh" => da * &a.mapv(|a| 1.0 - a * a),
                "relu" => da * &a.mapv(|a| f64::from(u8::from(a > 0.0))),
                _ => da * &a.mapv(|a| a * (1.0 - a)),
            };
        }
    }
    Grads::new(model.layout().clone(), values).unwrap()
}

#[test]
fn saturated_tanh_and_sigmoid_units_never_fail_a_textbook_backprop() {
    // Unnormalised inputs (×12) saturate the hidden units: 1 − A² and A·(1 − A) from a
    // rounded A ≈ ±1 or ≈ 1 lose most of their digits, which the analytic side's
    // allowance must cover (it used to say "wrong, 3.9e6 × its bound").
    let mut rng = Rng(77);
    let (mut fails_planted, mut planted, mut inconclusive_good) = (0, 0, 0);
    for net in 0..60 {
        let hidden = ["tanh", "sigmoid"];
        let depth = 2 + (rng.next_f64() * 2.0) as usize;
        let mut layers = vec![2 + (rng.next_f64() * 4.0) as usize];
        let mut activations = Vec::new();
        for _ in 0..depth - 1 {
            layers.push(2 + (rng.next_f64() * 5.0) as usize);
            activations.push(hidden[(rng.next_f64() * 2.0) as usize].parse().unwrap());
        }
        let (loss, out, width) = if rng.next_f64() < 0.5 {
            (Loss::BinaryCrossEntropy, "sigmoid", 1)
        } else {
            (Loss::SoftmaxCrossEntropy, "softmax", 3)
        };
        layers.push(width);
        activations.push(out.parse().unwrap());
        let spec = ModelSpec {
            layers,
            activations,
            loss,
            l2: 0.0,
            dropout: None,
        };
        let m = 1 + net % 4;
        let (model, params, mut data) = random_problem(spec.clone(), m, 500 + net as u64).unwrap();
        data.x.mapv_inplace(|v| v * 12.0);
        let good = textbook_grads(&model, &params, &data);
        let what = format!("net {net} {:?} {:?} m={m}", spec.layers, spec.activations);
        let r = cpu_check(Precision::F64, None, &model, &params, &data, &good);
        assert_ne!(
            r.verdict,
            Verdict::Fail,
            "{what}: textbook gradients failed: {:?}",
            r.reasons
        );
        inconclusive_good += usize::from(r.verdict == Verdict::Inconclusive);
        // A 1 % error of the largest tensor still fails where saturation lets it show.
        let t = model
            .layout()
            .tensors()
            .iter()
            .max_by(|a, b| {
                let n = |t: &&gradcheck::model::TensorSlot| {
                    good.as_slice()[t.range()]
                        .iter()
                        .map(|v| v * v)
                        .sum::<f64>()
                };
                n(a).total_cmp(&n(b))
            })
            .unwrap()
            .name
            .clone();
        let bad = scaled(&good, &t, 1.01);
        let r = cpu_check(Precision::F64, None, &model, &params, &data, &bad);
        assert_ne!(r.verdict, Verdict::Pass, "{what}: d{t} × 1.01 passed");
        planted += 1;
        fails_planted += usize::from(r.verdict == Verdict::Fail);
    }
    eprintln!(
        "saturated nets: {inconclusive_good} of 60 correct inconclusive; {fails_planted} of {planted} planted 1 % errors FAIL"
    );
    // Measured: every planted error fails; saturation left 0 correct checks inconclusive.
    assert!(
        fails_planted * 10 >= planted * 9,
        "{fails_planted} of {planted}"
    );
    assert!(inconclusive_good <= 6, "{inconclusive_good} of 60");
}

#[test]
fn a_column_of_tiny_inputs_is_checked_by_its_own_bounds() {
    // Input features spanning 1e-6 … 1e6 (weights scaled inversely, so every unit works
    // in its normal range): dW1's columns span 12 orders of magnitude. A tensor-wide
    // floor used to let the tiny column be doubled, zeroed or negated and still PASS.
    let spec = ModelSpec {
        layers: vec![4, 5, 1],
        activations: vec!["tanh".parse().unwrap(), "sigmoid".parse().unwrap()],
        loss: Loss::BinaryCrossEntropy,
        l2: 0.0,
        dropout: None,
    };
    let scales = [1e-6, 1e-2, 1e2, 1e6];
    for seed in 0..5 {
        let (model, mut params, mut data) = random_problem(spec.clone(), 8, 40 + seed).unwrap();
        for (c, s) in scales.iter().enumerate() {
            data.x.row_mut(c).mapv_inplace(|v| v * s);
            let w = model.layout().weight(0);
            for r in 0..w.rows {
                params.as_mut_slice()[w.offset + r * w.cols + c] /= s;
            }
        }
        let good = textbook_grads(&model, &params, &data);
        let r = cpu_check(Precision::F64, None, &model, &params, &data, &good);
        assert_ne!(
            r.verdict,
            Verdict::Fail,
            "seed {seed}: correct gradients failed: {:?}",
            r.reasons
        );
        let w1 = model.layout().weight(0).clone();
        for (what, f) in [("doubled", 2.0), ("zeroed", 0.0), ("negated", -1.0)] {
            let mut bad = good.clone();
            for row in 0..w1.rows {
                bad.as_mut_slice()[w1.offset + row * w1.cols] *= f;
            }
            let r = cpu_check(Precision::F64, None, &model, &params, &data, &bad);
            let t = &r.tensors[0];
            assert_eq!(t.name, "W1");
            assert_eq!(
                r.verdict,
                Verdict::Fail,
                "seed {seed}: the 1e-6 column {what}: {:?}",
                t
            );
            assert!(t.wrong >= 1, "seed {seed}: {what}: {t:?}");
        }
    }
}

#[test]
fn float32_gradients_saved_as_float64_are_judged_as_float32() {
    // Correct gradients rounded to float32 and saved as float64 used to FAIL on every
    // element with no hint. They pass, with a note; a 1 % error in them still fails.
    let spec = ModelSpec {
        layers: vec![6, 5, 3],
        activations: vec!["tanh".parse().unwrap(), "softmax".parse().unwrap()],
        loss: Loss::SoftmaxCrossEntropy,
        l2: 0.0,
        dropout: None,
    };
    let (model, params, data) = random_problem(spec, 16, 3).unwrap();
    let exact = textbook_grads(&model, &params, &data);
    let mut as_f32 = exact.clone();
    as_f32
        .as_mut_slice()
        .iter_mut()
        .for_each(|v| *v = f64::from(*v as f32));
    assert!(gradcheck::check::float32_in_disguise(as_f32.as_slice()));
    assert!(!gradcheck::check::float32_in_disguise(exact.as_slice()));
    assert!(!gradcheck::check::float32_in_disguise(&[
        0.0, 1.0, -2.5, 0.125
    ]));
    let r = cpu_check(Precision::F64, None, &model, &params, &data, &as_f32);
    assert_eq!(r.verdict, Verdict::Pass, "{:?}", r.reasons);
    assert!(
        r.notes.iter().any(|n| n.contains("float32")),
        "{:?}",
        r.notes
    );
    // The bug computed in float32 too.
    let mut bad = scaled(&as_f32, "W2", 1.01);
    bad.as_mut_slice()
        .iter_mut()
        .for_each(|v| *v = f64::from(*v as f32));
    let r = cpu_check(Precision::F64, None, &model, &params, &data, &bad);
    assert_eq!(r.verdict, Verdict::Fail);
    assert_eq!(common::failing(&r), ["W2"]);
    // Real float64 gradients carry no such note.
    let r = cpu_check(Precision::F64, None, &model, &params, &data, &exact);
    assert!(
        r.notes.iter().all(|n| !n.contains("float32")),
        "{:?}",
        r.notes
    );
}

#[test]
fn where_counts_only_elements_proven_wrong() {
    // One wrong element of 2,163 at ε large enough for many ReLU kinks: "wrong in k of n"
    // used to count every element whose central difference (meaningless across a kink)
    // was past a relative tolerance (80 of 50,000 in the audit).
    let spec = ModelSpec {
        layers: vec![50, 40, 3],
        activations: vec!["relu".parse().unwrap(), "softmax".parse().unwrap()],
        loss: Loss::SoftmaxCrossEntropy,
        l2: 0.0,
        dropout: None,
    };
    let (model, params, data) = random_problem(spec, 12, 8).unwrap();
    let good = cpu::backprop(&model, &params, &data);
    let mut bad = good.clone();
    let w1 = tensor_range(&good, "W1");
    let big = w1
        .clone()
        .max_by(|&a, &b| {
            good.as_slice()[a]
                .abs()
                .total_cmp(&good.as_slice()[b].abs())
        })
        .unwrap();
    bad.as_mut_slice()[big] *= 1.5;
    let mut failed = 0;
    for eps in [1e-7, 1e-3, 1e-2, 3e-2] {
        let mut gc = GradCheck::new().backend(Backend::Cpu).epsilon(eps);
        gc.auto_epsilon = false;
        let r = gc.run(&model, &params, &data, &bad).unwrap();
        let t = &r.tensors[0];
        assert_ne!(t.verdict, Verdict::Pass, "ε={eps}");
        if t.verdict == Verdict::Fail {
            failed += 1;
            assert_eq!(t.wrong, 1, "ε={eps}: {t:?}");
            let d = t.diagnosis.as_ref().expect("a failing tensor is diagnosed");
            assert!(
                d.message.contains("wrong in 1 of 2000"),
                "ε={eps}: {}",
                d.message
            );
        }
    }
    assert!(failed >= 2, "the planted element failed at {failed} ε");
}

#[test]
fn an_exact_kink_is_not_sent_back_to_an_epsilon_already_tried() {
    // b1's unit sits at z = 0 for one sample and at z = 1e-300 for another: its +ε step
    // crosses the kink in the first, its −ε step in the second, at every ε. The re-check
    // at ε/1000 cannot help, and the report used to suggest that ε again.
    let spec = ModelSpec {
        layers: vec![1, 1, 1],
        activations: vec!["relu".parse().unwrap(), "identity".parse().unwrap()],
        loss: Loss::MeanSquaredError,
        l2: 0.0,
        dropout: None,
    };
    let model = Model::new(spec).unwrap();
    let params = Params::new(model.layout().clone(), vec![1.0, 0.0, 0.7, 0.1]).unwrap();
    let x = Array2::from_shape_vec((1, 3), vec![0.0, 1e-300, 1.0]).unwrap();
    let y = Array2::from_shape_vec((1, 3), vec![0.3, -0.2, 0.4]).unwrap();
    let data = Data::new(&model, x, y).unwrap();
    let good = cpu::backprop(&model, &params, &data);
    let r = cpu_check(Precision::F64, None, &model, &params, &data, &good);
    assert_eq!(r.verdict, Verdict::Inconclusive, "{:?}", r.reasons);
    assert!(r.unresolved >= 1);
    let tried = [1e-7, 1e-10];
    if let Some(e) = r.suggested_epsilon {
        assert!(
            tried.iter().all(|t| (t - e).abs() > 1e-9 * t),
            "suggests {e:e} again"
        );
    }
    assert!(
        r.notes.iter().any(|n| n.contains("exact kink")),
        "{:?}",
        r.notes
    );
}

#[cfg(feature = "gpu")]
#[test]
fn gpu_f32_plain_numeric_gradients_stay_within_their_bounds() {
    // The bound is a claim about the numeric gradient itself: against the exact gradient
    // (the built-in backprop), every judged element of f32-plain must lie within it, at
    // every ε (measured over 240 runs: at most 0.40 of a bound, at ε = 5e-2).
    let Some(_) = common::gpu() else { return };
    let mut rng = Rng(9);
    let mut worst = 0.0f64;
    for net in 0..30 {
        let spec = random_net(&mut rng);
        let m = 1 + (rng.next_f64() * 9.0) as usize;
        let (model, params, data) = random_problem(spec, m, 700 + net).unwrap();
        let exact = cpu::backprop(&model, &params, &data);
        for eps in [1e-5, 1e-4, 1e-3, 1e-2, 5e-2] {
            let mut gc = GradCheck::new()
                .backend(Backend::Gpu)
                .precision(Precision::F32Plain)
                .epsilon(eps);
            gc.auto_epsilon = false;
            let r = gc.run(&model, &params, &data, &exact).unwrap();
            assert_ne!(
                r.verdict,
                Verdict::Fail,
                "net {net} ε={eps}: {:?}",
                r.reasons
            );
            for t in &r.tensors {
                assert!(
                    t.diagnosis.is_none(),
                    "net {net} ε={eps}: {:?}",
                    t.diagnosis
                );
                worst = worst.max(t.max_excess);
            }
        }
    }
    eprintln!("f32-plain: worst |numeric − exact| = {worst:.2} bounds");
    assert!(worst <= 1.0, "{worst}");
}

#[test]
fn wide_nets_whose_gradients_came_from_another_forward_pass_never_fail() {
    // The user's forward pass sums in another order (numpy's BLAS; here ndarray's product)
    // than gradcheck's: with hundreds of terms per unit its Z differ by rounding, and for a
    // confident output (a ≈ y) that is a large relative change of a − y. A 784-512-256-1
    // benchmark case once FAILed 2 correct elements of dW2 by 4.4 bounds for this alone.
    let mut fails = Vec::new();
    for (n, layers) in [
        vec![400, 256, 128, 1],
        vec![300, 200, 1],
        vec![256, 256, 64, 3],
    ]
    .into_iter()
    .enumerate()
    {
        let depth = layers.len() - 1;
        let (loss, out) = if layers[depth] == 1 {
            (Loss::BinaryCrossEntropy, "sigmoid")
        } else {
            (Loss::SoftmaxCrossEntropy, "softmax")
        };
        let mut activations: Vec<gradcheck::Activation> = vec!["relu".parse().unwrap(); depth - 1];
        activations.push(out.parse().unwrap());
        let spec = ModelSpec {
            layers: layers.clone(),
            activations,
            loss,
            l2: 0.0,
            dropout: None,
        };
        for seed in 0..3 {
            let (model, params, data) =
                random_problem(spec.clone(), 48, 900 + 10 * n as u64 + seed).unwrap();
            let grads = textbook_grads(&model, &params, &data);
            let r = cpu_check(Precision::F64, None, &model, &params, &data, &grads);
            if r.verdict == Verdict::Fail {
                fails.push(format!("{layers:?} seed {seed}: {:?}", r.reasons));
            }
            // And a 1 % error of the last layer still fails.
            let bad = scaled(&grads, &format!("W{depth}"), 1.01);
            let r = cpu_check(Precision::F64, None, &model, &params, &data, &bad);
            assert_eq!(r.verdict, Verdict::Fail, "{layers:?} seed {seed}");
        }
    }
    assert!(fails.is_empty(), "{fails:#?}");
}

#[test]
fn a_unit_exactly_at_its_kink_accepts_either_relu_derivative_there() {
    // 1-1-1 net, x = 0 and b1 = 0: z1 = 0 exactly, relu'(0) is any value in [0, 1]. The
    // +ε step of b1 crosses the kink: the judged difference is the backward one (0); a
    // backprop with relu'(0) = 1 (a `Z >= 0` mask) gives db1 = W2·(z2 − y), the forward
    // one. Both are subgradients and must not FAIL; anything outside [0, 1]·W2·(z2 − y)
    // is wrong. Closed form: z2 = b2 = 0.1, z2 − y = −0.3, W2·(z2 − y) = −0.21.
    let spec = ModelSpec {
        layers: vec![1, 1, 1],
        activations: vec!["relu".parse().unwrap(), "identity".parse().unwrap()],
        loss: Loss::MeanSquaredError,
        l2: 0.0,
        dropout: None,
    };
    let model = Model::new(spec).unwrap();
    let params = Params::new(model.layout().clone(), vec![0.5, 0.0, 0.7, 0.1]).unwrap();
    let x = Array2::from_shape_vec((1, 1), vec![0.0]).unwrap();
    let y = Array2::from_shape_vec((1, 1), vec![0.4]).unwrap();
    let data = Data::new(&model, x, y).unwrap();
    let grads_with = |db1: f64| {
        // dW1 = dz1·x = 0, db1 as given, dW2 = dz2·a1 = 0, db2 = z2 − y.
        Grads::new(model.layout().clone(), vec![0.0, db1, 0.0, -0.3]).unwrap()
    };
    for precision in [Precision::F64, Precision::F64Plain] {
        for (db1, ok) in [
            (0.0, true),
            (-0.21, true),
            (-0.1, true),
            (0.21, false),
            (-0.63, false),
        ] {
            let r = cpu_check(precision, None, &model, &params, &data, &grads_with(db1));
            let b1 = &r.tensors[1];
            if ok {
                assert_ne!(
                    b1.verdict,
                    Verdict::Fail,
                    "{precision:?} db1 = {db1}: {:?}",
                    b1.reason
                );
            } else {
                assert_eq!(b1.verdict, Verdict::Fail, "{precision:?} db1 = {db1}");
            }
        }
    }
}
