//! Planted bugs on random networks: the diagnosis names exactly the planted tensors and
//! kinds; with correct gradients nothing is diagnosed and the check passes — also at an ε
//! large enough to cross ReLU kinks.

use gradcheck::check::{Backend, GradCheck};
use gradcheck::diagnose::MistakeKind;
use gradcheck::eval::cpu;
use gradcheck::examples::random_problem;
use gradcheck::{Grads, Loss, ModelSpec};

fn spec(acts: [&str; 3], loss: Loss) -> ModelSpec {
    ModelSpec {
        // W2 is 4×4 (transposable); b1 and b2 are both 4×1 (swappable).
        layers: vec![5, 4, 4, 3],
        activations: acts.iter().map(|a| a.parse().unwrap()).collect(),
        loss,
        l2: 0.0,
        dropout: None,
    }
}

fn nets() -> Vec<ModelSpec> {
    vec![
        spec(["relu", "relu", "softmax"], Loss::SoftmaxCrossEntropy),
        spec(
            ["tanh", "leaky_relu:0.1", "identity"],
            Loss::MeanSquaredError,
        ),
        spec(["sigmoid", "relu", "sigmoid"], Loss::BinaryCrossEntropy),
    ]
}

type Plant = fn(&mut Grads, m: usize);

fn tensor(g: &mut Grads, name: &str) -> std::ops::Range<usize> {
    g.layout()
        .tensors()
        .iter()
        .find(|t| t.name == name)
        .unwrap()
        .range()
}

fn plants() -> Vec<(&'static str, Vec<&'static str>, MistakeKind, Plant)> {
    vec![
        ("scaled", vec!["W1"], MistakeKind::Scaled, |g, _| {
            let r = tensor(g, "W1");
            g.as_mut_slice()[r].iter_mut().for_each(|v| *v *= 3.0)
        }),
        ("sign", vec!["W3"], MistakeKind::SignFlipped, |g, _| {
            let r = tensor(g, "W3");
            g.as_mut_slice()[r].iter_mut().for_each(|v| *v = -*v)
        }),
        (
            "missing 1/m",
            vec!["b3"],
            MistakeKind::MissingAveraging,
            |g, m| {
                let r = tensor(g, "b3");
                g.as_mut_slice()[r].iter_mut().for_each(|v| *v *= m as f64)
            },
        ),
        ("transposed", vec!["W2"], MistakeKind::Transposed, |g, _| {
            let r = tensor(g, "W2");
            let w: Vec<f64> = g.as_slice()[r.clone()].to_vec();
            for i in 0..4 {
                for j in 0..4 {
                    g.as_mut_slice()[r.start + i * 4 + j] = w[j * 4 + i];
                }
            }
        }),
        ("all zero", vec!["b1"], MistakeKind::AllZero, |g, _| {
            let r = tensor(g, "b1");
            g.as_mut_slice()[r].iter_mut().for_each(|v| *v = 0.0)
        }),
        ("swapped", vec!["b1", "b2"], MistakeKind::Swapped, |g, _| {
            let (r1, r2) = (tensor(g, "b1"), tensor(g, "b2"));
            let a: Vec<f64> = g.as_slice()[r1.clone()].to_vec();
            let b: Vec<f64> = g.as_slice()[r2.clone()].to_vec();
            g.as_mut_slice()[r1].copy_from_slice(&b);
            g.as_mut_slice()[r2].copy_from_slice(&a);
        }),
        ("nan", vec!["W2"], MistakeKind::NotFinite, |g, _| {
            let r = tensor(g, "W2");
            g.as_mut_slice()[r.start + 5] = f64::NAN;
        }),
    ]
}

#[test]
fn planted_bugs_are_named_by_tensor_and_kind() {
    let m = 8;
    for (n, s) in nets().into_iter().enumerate() {
        let (model, params, data) = random_problem(s, m, 40 + n as u64).unwrap();
        let good = cpu::backprop(&model, &params, &data);
        for (what, tensors, kind, plant) in plants() {
            let mut g = good.clone();
            plant(&mut g, m);
            let r = GradCheck::new()
                .backend(Backend::Cpu)
                .epsilon(1e-6)
                .run(&model, &params, &data, &g)
                .unwrap();
            assert!(!r.passed, "net {n} {what}");
            let diagnosed: Vec<(&str, MistakeKind)> = r
                .tensors
                .iter()
                .filter_map(|t| t.diagnosis.as_ref().map(|d| (t.name.as_str(), d.kind)))
                .collect();
            let want: Vec<(&str, MistakeKind)> = tensors.iter().map(|t| (*t, kind)).collect();
            assert_eq!(diagnosed, want, "net {n}, planted {what}");
        }
    }
}

#[test]
fn correct_gradients_pass_with_nothing_diagnosed_even_across_kinks() {
    for (n, s) in nets().into_iter().enumerate() {
        let (model, params, data) = random_problem(s, 8, 40 + n as u64).unwrap();
        let good = cpu::backprop(&model, &params, &data);
        // 2e-7 (the notebook's) where rounding dominates; at ε = 3e-2 the ε² truncation
        // error alone is ~1e-4 relative, so the threshold is the f32-scale 1e-2 there.
        for eps in [1e-7, 1e-5, 3e-2] {
            let r = GradCheck::new()
                .backend(Backend::Cpu)
                .epsilon(eps)
                .threshold(if eps > 1e-3 { 1e-2 } else { 2e-7 })
                .run(&model, &params, &data, &good)
                .unwrap();
            assert!(
                r.passed,
                "net {n} ε {eps}: difference {} (kinks {})",
                r.difference_counted, r.kinks
            );
            assert!(
                r.tensors.iter().all(|t| t.diagnosis.is_none()),
                "net {n} ε {eps}"
            );
        }
    }
}

#[test]
fn large_steps_do_cross_kinks_and_excluding_them_matters() {
    let (model, params, data) = random_problem(
        spec(["relu", "relu", "softmax"], Loss::SoftmaxCrossEntropy),
        32,
        9,
    )
    .unwrap();
    let good = cpu::backprop(&model, &params, &data);
    let mut gc = GradCheck::new()
        .backend(Backend::Cpu)
        .epsilon(0.3)
        .threshold(1e-2);
    gc.auto_epsilon = false;
    let r = gc.run(&model, &params, &data, &good).unwrap();
    assert!(r.kinks > 0, "ε = 0.3 should cross some kink");
    // Correct gradients are never failed, however large ε.
    assert_ne!(
        r.verdict,
        gradcheck::check::Verdict::Fail,
        "{:?}",
        r.reasons
    );
    assert!(
        r.difference_counted < r.difference,
        "kinked elements carry the largest errors"
    );
}

/// A gradient off by 3e-8 relative (a stabilising 1e-8 inside a log does that): FAIL, the
/// two numbers printed with the digits that differ, the discrepancy in relative terms and
/// in units of its bound, and the words that say how small it is.
#[test]
fn a_tiny_error_prints_the_digits_that_differ_and_says_it_is_tiny() {
    let (model, params, data) = random_problem(nets()[0].clone(), 6, 5).unwrap();
    let mut g = cpu::backprop(&model, &params, &data);
    let r = model.layout().tensors()[2].range(); // W2
    g.as_mut_slice()[r]
        .iter_mut()
        .for_each(|v| *v *= 1.0 + 3e-8);
    let rep = GradCheck::new()
        .backend(Backend::Cpu)
        .run(&model, &params, &data, &g)
        .unwrap();
    assert_eq!(rep.verdict, gradcheck::check::Verdict::Fail);
    let text = gradcheck::report::render_text(&rep);
    let line = text.lines().find(|l| l.starts_with("W2 ")).unwrap();
    let (a, n) = (
        rep.tensors[2].worst[0].analytic,
        rep.tensors[2].worst[0].numeric,
    );
    let (sa, sn) = gradcheck::report::distinct(a, n);
    assert_ne!(sa, sn, "{line}");
    assert!(line.contains(&format!("{sa} vs {sn}")), "{line}");
    assert!(line.contains("(off by 3.0e-08 relative,"), "{line}");
    assert!(
        text.contains("a real but tiny error (under 1e-6 relative everywhere)"),
        "{text}"
    );
}

/// Gradients whose L2 term has the wrong strength — missing, halved, λ not divided by m,
/// or present where the cost has none — are named as such, with the λ the backprop used.
#[test]
fn l2_terms_of_the_wrong_strength_are_named() {
    let mut cost = nets()[1].clone();
    let m = 6;
    for (lam, used, says) in [
        (0.5, 0.0, "lacks the L2 term's gradient"),
        (0.5, 0.25, "has half the L2 gradient"),
        (0.5, 0.5 * m as f64, "λ was not divided by m"),
        (0.0, 0.3, "add \"l2\": 0.300000 to the model"),
    ] {
        cost.l2 = lam;
        let (model, params, data) = random_problem(cost.clone(), m, 9).unwrap();
        let mut theirs = cost.clone();
        theirs.l2 = used;
        let other = gradcheck::Model::new(theirs).unwrap();
        let g = cpu::backprop(&other, &params, &data);
        let g = Grads::new(model.layout().clone(), g.as_slice().to_vec()).unwrap();
        let rep = GradCheck::new()
            .backend(Backend::Cpu)
            .run(&model, &params, &data, &g)
            .unwrap();
        for t in rep.tensors.iter().filter(|t| t.name.starts_with('W')) {
            let d = t
                .diagnosis
                .as_ref()
                .unwrap_or_else(|| panic!("{}: undiagnosed", t.name));
            assert_eq!(d.kind, MistakeKind::L2Mismatch, "{}: {}", t.name, d.message);
            assert!(d.message.contains(says), "{}", d.message);
            assert!(
                (d.factor.unwrap() - used).abs() < 1e-6 * (1.0 + used),
                "{:?}",
                d.factor
            );
        }
        assert!(
            rep.tensors
                .iter()
                .filter(|t| t.name.starts_with('b'))
                .all(|t| t.passed)
        );
    }
}

/// Another cost's gradients, a mean over all m·nL outputs, and a one-element tensor with
/// the wrong sign are each named.
#[test]
fn other_costs_reductions_and_a_flipped_scalar_are_named() {
    let run = |model: &gradcheck::Model, params, data, g: &Grads| {
        GradCheck::new()
            .backend(Backend::Cpu)
            .run(model, params, data, g)
            .unwrap()
    };
    // BCE asked, MSE differentiated.
    let bce = spec(["tanh", "relu", "sigmoid"], Loss::BinaryCrossEntropy);
    let (model, params, data) = random_problem(bce.clone(), 5, 3).unwrap();
    let mut mse = bce.clone();
    mse.loss = Loss::MeanSquaredError;
    let g = cpu::backprop(&gradcheck::Model::new(mse).unwrap(), &params, &data);
    let rep = run(&model, &params, &data, &g);
    assert!(!rep.passed);
    for t in rep.tensors.iter().filter(|t| !t.passed) {
        let d = t.diagnosis.as_ref().unwrap();
        assert_eq!(d.kind, MistakeKind::OtherCost, "{}", d.message);
        assert!(
            d.message
                .contains("exactly the gradient of the mean squared error"),
            "{}",
            d.message
        );
    }
    // A mean over all m·nL outputs: every tensor 1/nL = 1/3 × the gradient.
    let (model, params, data) = random_problem(nets()[0].clone(), 5, 4).unwrap();
    let mut g = cpu::backprop(&model, &params, &data);
    g.as_mut_slice().iter_mut().for_each(|v| *v /= 3.0);
    let rep = run(&model, &params, &data, &g);
    let d = rep.tensors[0].diagnosis.as_ref().unwrap();
    assert!(
        d.message
            .contains("0.333 × the numeric gradient = 1/nL with nL = 3"),
        "{}",
        d.message
    );
    // A single-element bias with its sign flipped.
    let mut one = nets()[2].clone();
    one.layers = vec![5, 4, 4, 1];
    let (model, params, data) = random_problem(one, 5, 6).unwrap();
    let mut g = cpu::backprop(&model, &params, &data);
    let last = model.layout().tensors().last().unwrap().range();
    g.as_mut_slice()[last].iter_mut().for_each(|v| *v = -*v);
    let rep = run(&model, &params, &data, &g);
    let d = rep.tensors.last().unwrap().diagnosis.as_ref().unwrap();
    assert_eq!(d.kind, MistakeKind::SignFlipped, "{}", d.message);
}

/// Gradients whose every square weight is transposed come from samples-first code: the
/// diagnosis says so and names the layout switch.
#[test]
fn every_square_weight_transposed_suggests_the_layout() {
    let mut square = nets()[0].clone();
    square.layers = vec![4, 4, 4, 3];
    let (model, params, data) = random_problem(square, 6, 8).unwrap();
    let mut g = cpu::backprop(&model, &params, &data);
    for name in ["W1", "W2"] {
        let slot = model
            .layout()
            .tensors()
            .iter()
            .find(|t| t.name == name)
            .unwrap()
            .clone();
        let r = slot.range();
        let w: Vec<f64> = g.as_slice()[r.clone()].to_vec();
        for i in 0..4 {
            for j in 0..4 {
                g.as_mut_slice()[r.start + i * 4 + j] = w[j * 4 + i];
            }
        }
    }
    let rep = GradCheck::new()
        .backend(Backend::Cpu)
        .run(&model, &params, &data, &g)
        .unwrap();
    for name in ["W1", "W2"] {
        let t = rep.tensors.iter().find(|t| t.name == name).unwrap();
        let d = t.diagnosis.as_ref().unwrap();
        assert_eq!(d.kind, MistakeKind::Transposed, "{}", d.message);
        assert!(
            d.message.contains("\"layout\": \"samples_first\""),
            "{}",
            d.message
        );
    }
}
