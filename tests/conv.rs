//! Networks of layer types (conv2d, pooling, flatten, dense) checked as MLPs are: the
//! built-in conv example (numpy's gradients, fixtures/conv/make.py: an independent model)
//! gives its planted slips as FAIL with their diagnoses and PASSes when fixed; random conv
//! nets over every option PASS with correct gradients and FAIL with every classic slip,
//! named; a dense-only layered net computes exactly what the MLP evaluator does; the same
//! net in the course's and PyTorch's layouts gets the same report; and a layer type
//! written here, in the test, is checked without touching the library.

mod common;

use common::conv_nets::{built, random_conv_spec, random_data};

use std::sync::Arc;

use gradcheck::check::{Backend, GradCheck, Verdict};
use gradcheck::eval::cpu;
use gradcheck::model::{ArrayLayout, Layer, NetParts, NetSpec, ParamShape, Spec, Tensors};
use gradcheck::net;
use gradcheck::rng::Rng;
use gradcheck::verdict::MistakeKind;
use gradcheck::{Activation, Data, Grads, Loss, Model, ModelSpec, Params};

fn cpu_check(model: &Model, params: &Params, data: &Data, grads: &Grads) -> gradcheck::Report {
    GradCheck::new()
        .backend(Backend::Cpu)
        .run(model, params, data, grads)
        .unwrap()
}

fn backprop(model: &Model, params: &Params, data: &Data) -> Grads {
    net::backprop_with(model, model.net().unwrap(), params, data, None)
}

#[test]
fn built_in_conv_examples_give_the_planted_slips_and_pass_when_fixed() {
    let gc = GradCheck::new().backend(Backend::Cpu);
    let p = gradcheck::examples::conv_problem(true).unwrap();
    let r = gc.run(&p.model, &p.params, &p.data, &p.grads).unwrap();
    assert_eq!(r.verdict, Verdict::Fail);
    assert_eq!(common::failing(&r), ["W1", "b1", "b2"]);
    let says = |name: &str| {
        let t = r.tensors.iter().find(|t| t.name == name).unwrap();
        let d = t.diagnosis.as_ref().expect("diagnosed");
        assert_eq!(d.kind, MistakeKind::LayerSlip, "{name}: {}", d.message);
        d.message.clone()
    };
    assert!(says("W1").contains("layer 2 (max_pool)") && says("W1").contains("[max_to_all]"));
    assert!(says("b1").contains("[max_to_all]"));
    assert!(says("b2").contains("layer 3 (conv2d)") && says("b2").contains("[db_one_position]"));
    // numpy's correct gradients: the cost and every element agree with the built-in
    // backprop (two independent implementations) and the check passes.
    let p = gradcheck::examples::conv_problem(false).unwrap();
    let r = gc.run(&p.model, &p.params, &p.data, &p.grads).unwrap();
    assert_eq!(r.verdict, Verdict::Pass, "{:?}", r.reasons);
    let ours = backprop(&p.model, &p.params, &p.data);
    for (a, b) in ours.as_slice().iter().zip(p.grads.as_slice()) {
        assert!((a - b).abs() <= 1e-13 * (1.0 + b.abs()), "{a} vs numpy {b}");
    }
    let j = net::forward(&p.model, p.model.net().unwrap(), &p.params, &p.data).cost;
    // fixtures/conv/make.py printed J = 4.316597598901654.
    assert!((j - 4.316597598901654).abs() < 1e-14 * j, "{j}");
}

#[test]
fn random_conv_nets_pass_correct_gradients_and_fail_every_slip_by_name() {
    let (mut passes, mut inconclusive, mut slips_tried, mut crossed) = (0, 0, 0, 0);
    let mut rng = Rng(2026);
    for k in 0..24 {
        let spec = random_conv_spec(&mut rng, k);
        let model = built(spec.clone());
        let m = 1 + k % 5;
        let (params, data) = random_data(&model, m, 100 + k as u64);
        let good = backprop(&model, &params, &data);
        let r = cpu_check(&model, &params, &data, &good);
        assert_ne!(r.verdict, Verdict::Fail, "net {k} {spec}: {:?}", r.reasons);
        match r.verdict {
            Verdict::Pass => passes += 1,
            _ => inconclusive += 1,
        }
        // At ε = 1e-2 steps cross ReLU kinks and max-pool winners: still never a FAIL.
        let mut wide = GradCheck::new().backend(Backend::Cpu);
        wide.epsilon = Some(1e-2);
        let r = wide.run(&model, &params, &data, &good).unwrap();
        assert_ne!(
            r.verdict,
            Verdict::Fail,
            "net {k} at ε = 1e-2: {:?}",
            r.reasons
        );
        // (its report may have re-checked at a smaller ε: count the crossings at 1e-2 itself)
        let at = gradcheck::eval::layered::perturbed_deltas(
            &model,
            model.net().unwrap(),
            &params,
            &data,
            1e-2,
            0..model.n_params(),
            cpu::Threads::Parallel,
        )
        .unwrap();
        crossed += at.kinks.iter().filter(|&&k| k != 0).count();
        let net = model.net().unwrap();
        for (l, layer) in net.layers.iter().enumerate() {
            for (s, slip) in layer.slips().iter().enumerate() {
                let bad = net::backprop_with(&model, net, &params, &data, Some((l, s)));
                let moved = gradcheck::metric::difference(bad.as_slice(), good.as_slice());
                if moved < 0.01 {
                    continue; // this slip changes nothing here (stride 1, no padding, …)
                }
                slips_tried += 1;
                let r = cpu_check(&model, &params, &data, &bad);
                assert_eq!(
                    r.verdict,
                    Verdict::Fail,
                    "net {k}, slip {}: {:?}",
                    slip.name,
                    r.reasons
                );
                assert!(
                    r.tensors.iter().any(|t| t
                        .diagnosis
                        .as_ref()
                        .is_some_and(|d| d.message.contains(&format!("[{}]", slip.name)))),
                    "net {k}: slip {} not named: {:?}",
                    slip.name,
                    r.tensors.iter().map(|t| &t.diagnosis).collect::<Vec<_>>()
                );
            }
        }
    }
    eprintln!(
        "{passes} pass, {inconclusive} inconclusive, {slips_tried} slips tried, {crossed} kinks crossed at 1e-2"
    );
    // Measured: 24 of 24 PASS; the bound allows a rare kink that no ε separates.
    assert!(
        inconclusive <= 2,
        "{passes} pass, {inconclusive} inconclusive"
    );
    assert!(
        slips_tried >= 40,
        "only {slips_tried} slips made a difference"
    );
    assert!(
        crossed > 100,
        "only {crossed} elements crossed a kink at ε = 1e-2"
    );
}

#[test]
fn a_dense_only_layered_net_computes_what_the_mlp_evaluator_does() {
    for (acts, loss) in [
        (["relu", "relu", "sigmoid"], "binary_cross_entropy"),
        (["tanh", "leaky_relu", "softmax"], "softmax_cross_entropy"),
        (["sigmoid", "identity", "identity"], "mse"),
    ] {
        let sizes = [5, 4, 3, if loss == "binary_cross_entropy" { 1 } else { 3 }];
        let mlp_spec: ModelSpec = serde_json::from_value(serde_json::json!({
            "layers": sizes, "activations": acts, "loss": loss, "l2": 0.3
        }))
        .unwrap();
        let mlp = Model::new(mlp_spec).unwrap();
        // PyTorch's layout: W (out, in), b (out,) — the MLP's flat order exactly.
        let layered = built(serde_json::json!({
            "input_shape": [5], "layout": "nchw", "l2": 0.3, "loss": loss,
            "layers": (0..3).map(|l| serde_json::json!(
                {"type": "dense", "units": sizes[l + 1], "activation": acts[l]})).collect::<Vec<_>>()
        }));
        let (params, data) = gradcheck::examples::random_problem(mlp.spec().clone(), 6, 7)
            .map(|(_, p, d)| (p, d))
            .unwrap();
        let lp = Params::new(layered.layout().clone(), params.as_slice().to_vec()).unwrap();
        let ld = Data::new(&layered, data.x.clone(), data.y.clone()).unwrap();
        let j_mlp = cpu::stable_cost(&mlp, &cpu::forward(&mlp, &params, &data), &data);
        let j_net = net::forward(&layered, layered.net().unwrap(), &lp, &ld).cost;
        assert!(
            (j_mlp - j_net).abs() <= 1e-15 * j_mlp.abs(),
            "{loss}: {j_mlp} vs {j_net}"
        );
        let g_mlp = cpu::backprop(&mlp, &params, &data);
        let g_net = backprop(&layered, &lp, &ld);
        for (a, b) in g_mlp.as_slice().iter().zip(g_net.as_slice()) {
            assert!(
                (a - b).abs() <= 1e-14 * (1.0 + a.abs()),
                "{loss}: {a} vs {b}"
            );
        }
        let eps = 1e-6;
        let a = cpu::perturbed_deltas(
            &mlp,
            &params,
            &data,
            eps,
            0..mlp.n_params(),
            cpu::Threads::Serial,
        )
        .unwrap();
        let b = gradcheck::eval::layered::perturbed_deltas(
            &layered,
            layered.net().unwrap(),
            &lp,
            &ld,
            eps,
            0..layered.n_params(),
            cpu::Threads::Parallel,
        )
        .unwrap();
        let mags = b.magnitudes.as_ref().unwrap();
        for (i, mag) in mags.iter().enumerate() {
            // Both are ΔJ± to a few u of Σ|Δloss_j|/m (different summation orders).
            let tol = 1e-14 * (mag[0] + mag[1]) + 1e-300;
            assert!(
                (a.plus[i] - b.plus[i]).abs() <= tol,
                "{loss} #{i}: {} vs {}",
                a.plus[i],
                b.plus[i]
            );
            assert!((a.minus[i] - b.minus[i]).abs() <= tol, "{loss} #{i}");
            assert_eq!(a.kinks[i], b.kinks[i], "{loss} #{i}: kink flags");
        }
    }
}

/// Course layout → PyTorch layout of the same network: X (m, H, W, C) → (m, C, H, W), conv
/// W (f, f, Ci, Co) → (Co, Ci, f, f), b (1, 1, 1, C) → (C,), and the dense layer after
/// flatten re-indexed from the (h, w, c) order to (c, h, w), W (in, out) → (out, in).
#[test]
fn course_and_pytorch_layouts_give_the_same_report() {
    let layers = serde_json::json!([
        {"type": "conv2d", "filters": 3, "kernel": [3, 2], "stride": 2, "padding": 1, "activation": "relu"},
        {"type": "max_pool", "size": 2, "stride": 1},
        {"type": "flatten"},
        {"type": "dense", "units": 4, "activation": "softmax"}
    ]);
    let (h, w, c) = (7, 6, 2);
    let course = built(
        serde_json::json!({"input_shape": [h, w, c], "layers": layers,
        "loss": "softmax_cross_entropy"}),
    );
    let torch = built(
        serde_json::json!({"input_shape": [c, h, w], "layout": "nchw",
        "layers": layers, "loss": "softmax_cross_entropy"}),
    );
    let (params, data) = random_data(&course, 5, 11);
    let mut grads = backprop(&course, &params, &data);
    grads.as_mut_slice()[3] *= 1.02; // a planted 2 % error in W1
    // Permute θ and the gradient into PyTorch's order.
    let lc = course.layout().tensors();
    let lt = torch.layout().tensors();
    let (fh, fw, co) = (3, 2, 3);
    let net = course.net().unwrap();
    let pool_out = net.layers[2].out_len(); // after conv, relu, max_pool
    let (positions, channels) = (pool_out / co, co);
    let permute = |v: &[f64]| -> Vec<f64> {
        let mut out = vec![0.0; v.len()];
        for i in 0..fh {
            for j in 0..fw {
                for ci in 0..c {
                    for o in 0..co {
                        out[lt[0].offset + ((o * c + ci) * fh + i) * fw + j] =
                            v[lc[0].offset + ((i * fw + j) * c + ci) * co + o];
                    }
                }
            }
        }
        out[lt[1].range()].copy_from_slice(&v[lc[1].range()]);
        for k in 0..pool_out {
            let flat_torch = (k % channels) * positions + k / channels;
            for u in 0..4 {
                out[lt[2].offset + u * pool_out + flat_torch] = v[lc[2].offset + k * 4 + u];
            }
        }
        out[lt[3].range()].copy_from_slice(&v[lc[3].range()]);
        out
    };
    let tp = Params::new(torch.layout().clone(), permute(params.as_slice())).unwrap();
    let tg = Grads::new(torch.layout().clone(), permute(grads.as_slice())).unwrap();
    // The data inside is channels-last either way: the same columns.
    let td = Data::new(&torch, data.x.clone(), data.y.clone()).unwrap();
    let jc = net::forward(&course, net, &params, &data).cost;
    let jt = net::forward(&torch, torch.net().unwrap(), &tp, &td).cost;
    assert!((jc - jt).abs() <= 1e-14 * jc, "{jc} vs {jt}");
    let rc = cpu_check(&course, &params, &data, &grads);
    let rt = cpu_check(&torch, &tp, &td, &tg);
    assert_eq!(rc.verdict, Verdict::Fail);
    assert_eq!(rt.verdict, rc.verdict);
    for (a, b) in rc.tensors.iter().zip(&rt.tensors) {
        assert_eq!(a.verdict, b.verdict, "{}", a.name);
        // Same numbers up to summation order: a correct tensor's difference is rounding.
        assert!(
            (a.difference - b.difference).abs() <= 1e-9 * a.difference + 1e-13,
            "{}: {} vs {}",
            a.name,
            a.difference,
            b.difference
        );
    }
    assert_eq!(rt.tensors[0].shape, vec![3, 2, 3, 2]);
    assert_eq!(rc.tensors[0].shape, vec![3, 2, 2, 3]);
}

/// A layer type written here: y = s·x (no parameters). Nothing in the library knows it.
#[derive(Debug)]
struct ScaleBy {
    s: f64,
    len: usize,
}

impl Layer for ScaleBy {
    fn kind(&self) -> &'static str {
        "scale_by"
    }
    fn in_len(&self) -> usize {
        self.len
    }
    fn out_len(&self) -> usize {
        self.len
    }
    fn forward(&self, _p: &Tensors<'_>, x: &[f64], y: &mut [f64]) {
        y.iter_mut().zip(x).for_each(|(y, x)| *y = self.s * x);
    }
    fn backward(
        &self,
        _p: &Tensors<'_>,
        _x: &[f64],
        _y: &[f64],
        dy: &[f64],
        dx: &mut [f64],
        _dp: &mut [&mut [f64]],
        _slip: Option<usize>,
    ) {
        dx.iter_mut().zip(dy).for_each(|(d, g)| *d = self.s * g);
    }
    // Only the dense Δ form: the library's default sparse one wraps it.
    fn delta(&self, p: &Tensors<'_>, _x: &[f64], _y: &[f64], dx: &[f64], dy: &mut [f64]) -> bool {
        self.forward(p, dx, dy);
        false
    }
    fn params(&self) -> Vec<ParamShape> {
        Vec::new()
    }
}

#[test]
fn a_layer_type_written_in_the_test_is_checked_without_library_changes() {
    let layers: Vec<Arc<dyn Layer>> = vec![
        Arc::new(net::Dense {
            n_in: 4,
            n_out: 3,
            bias: true,
            layout: ArrayLayout::Nchw,
        }),
        Arc::new(ScaleBy { s: -2.5, len: 3 }),
        Arc::new(net::Act {
            g: Activation::Tanh,
            len: 3,
        }),
        Arc::new(net::Dense {
            n_in: 3,
            n_out: 2,
            bias: false,
            layout: ArrayLayout::Nchw,
        }),
    ];
    let model = Model::layered(NetParts {
        layers,
        output: Activation::Sigmoid,
        loss: Loss::BinaryCrossEntropy,
        l2: 0.0,
        names: None,
        input_shape: vec![4],
        array_layout: ArrayLayout::Nchw,
        spec: None,
    })
    .unwrap();
    assert_eq!(
        model
            .layout()
            .tensors()
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["W1", "b1", "W2"]
    );
    let (params, data) = random_data(&model, 5, 3);
    let good = backprop(&model, &params, &data);
    let r = cpu_check(&model, &params, &data, &good);
    assert_eq!(r.verdict, Verdict::Pass, "{:?}", r.reasons);
    let mut bad = good.clone();
    bad.as_mut_slice()[13] *= -1.0; // b1[1] with the sign of a forgotten −2.5
    let r = cpu_check(&model, &params, &data, &bad);
    assert_eq!(common::failing(&r), ["b1"]);
    // A type without a GPU kernel (`Layer::kernel` is None): the GPU refuses it by name,
    // `auto` runs it on the CPU.
    #[cfg(feature = "gpu")]
    if let Some(_ctx) = common::gpu() {
        let e = GradCheck::new()
            .backend(Backend::Gpu)
            .run(&model, &params, &data, &good)
            .unwrap_err()
            .to_string();
        assert!(e.contains("layer 2 (scale_by) has no GPU kernel"), "{e}");
        let r = GradCheck::new()
            .backend(Backend::Auto)
            .run(&model, &params, &data, &good)
            .unwrap();
        assert_eq!((r.verdict, r.backend.as_str()), (Verdict::Pass, "cpu"));
    }
}

#[test]
fn bad_conv_specs_are_refused_naming_the_layer() {
    for (spec, says) in [
        (
            serde_json::json!({"input_shape": [4, 4, 1], "loss": "mse",
            "layers": [{"type": "conv2d", "filters": 2, "kernel": 5}]}),
            "layer 1 (conv2d): a kernel of 5 does not fit",
        ),
        (
            serde_json::json!({"input_shape": [4, 4, 1], "loss": "mse",
            "layers": [{"type": "max_pool", "size": 2}, {"type": "dense", "units": 2}]}),
            "layer 2 (dense): its input is 2×2×1: put a flatten layer before it",
        ),
        (
            serde_json::json!({"input_shape": [4, 4], "loss": "mse",
            "layers": [{"type": "flatten"}]}),
            "input_shape [4, 4]",
        ),
    ] {
        let Spec::Net(n) = Spec::from_json(&spec.to_string()).unwrap() else {
            panic!()
        };
        let e = net::build(&n).unwrap_err().to_string();
        assert!(e.contains(says), "{e}");
    }
    let e = Spec::from_json(r#"{"input_shape": [3], "layers": [{"type": "dense", "units": 2, "size": 3}], "loss": "mse"}"#)
        .unwrap_err();
    assert!(e.contains("unknown field `size`"), "{e}");
    let e = Spec::from_json(r#"{"input_shape": [8, 8, 1], "layers": [{"type": "conv2d", "filters": 2, "kernel": 3, "padding": -1}], "loss": "mse"}"#)
        .unwrap_err();
    assert!(
        e.contains("padding -1: a whole number ≥ 0, \"same\" or \"valid\""),
        "{e}"
    );
    let e = Spec::from_json(r#"{"input_shape": [8, 8, 1], "layers": [{"type": "conv2d", "filters": 2, "kernel": 3, "padding": "full"}], "loss": "mse"}"#)
        .unwrap_err();
    assert!(e.contains("padding \"full\": a whole number"), "{e}");
    // NetSpec round-trips through JSON (shards store it).
    let spec: NetSpec = serde_json::from_str(gradcheck::examples::CONV_MODEL).unwrap();
    let again: NetSpec = serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
    assert_eq!(spec, again);
}

/// Every front end takes a conv net as it takes an MLP: check (exit 1 with the slips named,
/// 0 when fixed), shards merged into the single run's report, a sweep, a batch manifest;
/// `compare` (GPU numerics) and `--backend gpu` say why not, exit 2.
#[cfg(feature = "cli")]
#[test]
fn conv_nets_go_through_every_front_end() {
    use common::gradcheck as run;
    let (code, out, _) = run(&["check", "--example", "conv-buggy", "--backend", "cpu"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("[max_to_all]") && out.contains("[db_one_position]"),
        "{out}"
    );
    let (code, _, _) = run(&[
        "check",
        "--example",
        "conv-fixed",
        "--backend",
        "cpu",
        "--quiet",
    ]);
    assert_eq!(code, 0);
    let dir = common::tempdir("conv-fronts");
    let (p1, p2, whole) = (
        dir.join("p1.json"),
        dir.join("p2.json"),
        dir.join("whole.json"),
    );
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    for (i, p) in [(1, &p1), (2, &p2)] {
        let shard = format!("{i}/2");
        let (code, _, err) = run(&[
            "check",
            "--example",
            "conv-buggy",
            "--backend",
            "cpu",
            "--shard",
            &shard,
            "--json",
            &s(p),
        ]);
        assert_eq!(code, 0, "{err}");
    }
    let merged = dir.join("merged.json");
    let (code, _, err) = run(&[
        "merge",
        "--example",
        "conv-buggy",
        "--json",
        &s(&merged),
        &s(&p1),
        &s(&p2),
    ]);
    assert_eq!(code, 1, "{err}");
    run(&[
        "check",
        "--example",
        "conv-buggy",
        "--backend",
        "cpu",
        "--json",
        &s(&whole),
    ]);
    let diff = |p: &std::path::Path| -> f64 {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        v["difference"].as_f64().unwrap()
    };
    assert_eq!(diff(&merged), diff(&whole));
    let (code, out, err) = run(&[
        "sweep",
        "--example",
        "conv-fixed",
        "--backend",
        "cpu",
        "--from",
        "1e-2",
        "--to",
        "1e-6",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("16×16×3-conv2d-max_pool-conv2d-max_pool-flatten-dense net"),
        "{out}"
    );
    let manifest = dir.join("b.toml");
    std::fs::write(
        &manifest,
        "[[job]]\nname = \"conv\"\nexample = \"conv-buggy\"\nbackend = \"cpu\"\n",
    )
    .unwrap();
    let (code, out, err) = run(&["batch", &s(&manifest)]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("[db_one_position]"), "{out}");
    // The GPU runs conv nets too (tests/gpu_conv.rs holds it to the CPU); without an
    // adapter both say so and exit 2.
    #[cfg(feature = "gpu")]
    let has_gpu = gradcheck::eval::gpu::GpuContext::shared(None).is_ok();
    #[cfg(not(feature = "gpu"))]
    let has_gpu = false;
    let (code, out, err) = run(&["compare", "--example", "conv-fixed"]);
    assert_eq!(code, if has_gpu { 0 } else { 2 }, "{out}{err}");
    if has_gpu {
        assert!(out.contains("W1") && out.contains("f32"), "{out}");
    }
    let (code, out, err) = run(&["check", "--example", "conv-fixed", "--backend", "gpu"]);
    assert_eq!(code, if has_gpu { 0 } else { 2 }, "{out}{err}");
}

/// "dW from one sample instead of the sum over samples", the slip every layer with
/// parameters can have, is named on the tensors it changed.
#[test]
fn gradients_from_one_sample_are_named() {
    let p = gradcheck::examples::conv_problem(false).unwrap();
    let net = p.model.net().unwrap();
    let conv2 = net
        .layers
        .iter()
        .position(|l| l.kind() == "conv2d")
        .unwrap()
        + 3;
    assert_eq!(net.layers[conv2].kind(), "conv2d");
    let bad = net::backprop_with(
        &p.model,
        net,
        &p.params,
        &p.data,
        Some((conv2, net::ONE_SAMPLE)),
    );
    let r = cpu_check(&p.model, &p.params, &p.data, &bad);
    assert_eq!(common::failing(&r), ["W2", "b2"]);
    for t in r.tensors.iter().filter(|t| !t.passed) {
        let d = t.diagnosis.as_ref().unwrap();
        assert!(
            d.message.contains("layer 3 (conv2d)") && d.message.contains("[one_sample]"),
            "{}",
            d.message
        );
    }
}

/// f64-plain (J± formed by a forward pass from the perturbed layer, then subtracted)
/// agrees with the Δ path to the plain path's rounding, and gives the same verdicts.
#[test]
fn the_plain_path_agrees_with_the_delta_path() {
    let mut rng = Rng(77);
    for k in [0, 4, 7] {
        let model = built(random_conv_spec(&mut rng, k));
        let (params, data) = random_data(&model, 3, k as u64);
        let (n, net) = (model.n_params(), model.net().unwrap());
        let e = 1e-6;
        let plain = gradcheck::eval::layered::perturbed_costs(
            &model,
            net,
            &params,
            &data,
            e,
            0..n,
            cpu::Threads::Parallel,
        )
        .unwrap();
        let delta = gradcheck::eval::layered::perturbed_deltas(
            &model,
            net,
            &params,
            &data,
            e,
            0..n,
            cpu::Threads::Parallel,
        )
        .unwrap();
        assert!((plain.cost - delta.cost).abs() <= 1e-13 * plain.cost.abs());
        for i in 0..n {
            // Plain J± carry the rounding of the whole cost (a few u·|J| per sum, grown
            // through ~10 layers and m samples): 64 × 1e-13 covers that with room, while a
            // wrong ΔJ (≈ ε·|g| ≈ 1e-7 here) is far outside.
            let tol = 1e-13 * (1.0 + plain.cost.abs()) * 64.0;
            assert!(
                ((plain.plus[i] - plain.cost) - delta.plus[i]).abs() <= tol,
                "net {k} #{i}"
            );
            assert!(
                ((plain.minus[i] - plain.cost) - delta.minus[i]).abs() <= tol,
                "net {k} #{i}"
            );
        }
        let good = backprop(&model, &params, &data);
        let gc = GradCheck::new()
            .backend(Backend::Cpu)
            .precision(gradcheck::Precision::F64Plain);
        let r = gc.run(&model, &params, &data, &good).unwrap();
        assert_ne!(r.verdict, Verdict::Fail, "net {k}: {:?}", r.reasons);
    }
}

/// Each built-in layer's lane-wise sparse Δ form (what the evaluator runs) equals its
/// dense one (`delta`, written independently: conv as the forward map without bias,
/// pooling window by window) on sparse random changes, lane by lane, with the same kink
/// flags. Tolerance: the two sum a conv output's terms in different orders, a few u of
/// the largest |Δy|.
#[test]
fn sparse_lanes_equal_the_dense_delta_in_every_layer() {
    use gradcheck::model::LANES;
    let mut rng = Rng(5);
    for k in 0..12 {
        let model = built(random_conv_spec(&mut rng, k));
        let (params, data) = random_data(&model, 2, k as u64);
        let net = model.net().unwrap();
        let fwd = net::forward(&model, net, &params, &data);
        for (l, layer) in net.layers.iter().enumerate() {
            let p = net::tensors_of(&model, net, params.as_slice(), l);
            let (x, y) = (fwd.input(net, l, 1), fwd.output(net, l, 1));
            let changed: Vec<usize> = (0..layer.in_len()).filter(|i| i % 3 == k % 3).collect();
            let mut lanes = vec![[0.0; LANES]; layer.in_len()];
            for &i in &changed {
                let d = 1e-3 * rng.sym();
                lanes[i] = [d, -d, 2.0 * d, -2.0 * d];
            }
            let mut out = vec![[0.0; LANES]; layer.out_len()];
            let (mut out_changed, mut dense) = (Vec::new(), vec![0.0; layer.out_len()]);
            let (kinks, _) =
                layer.delta_lanes(&p, x, y, &lanes, &changed, &mut out, &mut out_changed, None);
            for lane in 0..LANES {
                let dx: Vec<f64> = lanes.iter().map(|v| v[lane]).collect();
                let kink = layer.delta(&p, x, y, &dx, &mut dense);
                assert_eq!(
                    kink,
                    kinks[lane],
                    "net {k} layer {l} ({}) lane {lane}",
                    layer.kind()
                );
                let scale = dense.iter().fold(0.0f64, |a, v| a.max(v.abs()));
                for (q, &d) in dense.iter().enumerate() {
                    let got = if out_changed.contains(&q) {
                        out[q][lane]
                    } else {
                        0.0
                    };
                    assert!(
                        (got - d).abs() <= 1e-14 * scale,
                        "net {k} layer {l} ({}) lane {lane} #{q}: {got} vs {d}",
                        layer.kind()
                    );
                }
            }
        }
    }
}
