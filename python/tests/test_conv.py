"""Conv nets through the Python package, against the independent numpy model in
conv_numpy.py (the course's loops, written from the definitions): its gradients PASS on
random nets over every layer option, its classic slips FAIL with their names, both
max-pool tie rules PASS on nets full of ties, and the PyTorch layout gives the course
layout's report."""

import json
import pathlib

import numpy as np
import pytest

import gradcheck
from conv_numpy import forward_backward, random_params

ROOT = pathlib.Path(__file__).resolve().parents[2]


def random_net(k, rng):
    acts = ["relu", "tanh", "sigmoid", "leaky_relu", "identity"]
    stride = 1 + k % 3
    padding = ["same", "valid", 1][k % 3]
    kernel = [2, [2, 3], 3][k % 3]
    pool = "max_pool" if k % 2 == 0 else "avg_pool"
    loss, out, units = [
        ("softmax_cross_entropy", "softmax", 3),
        ("binary_cross_entropy", "sigmoid", 1),
        ("mse", "identity", 2),
    ][k % 3]
    c = 1 + k % 4
    shape = (10 + k % 3, 9 + k % 4, c)
    layers = [
        {"type": "conv2d", "filters": 2 + k % 3, "kernel": kernel, "stride": stride, "padding": padding, "activation": acts[k % 5]},
        {"type": pool, "size": 2 + k % 2, "stride": 1},
        {"type": "conv2d", "filters": 1 + k % 4, "kernel": 2, "padding": "same", "activation": acts[(k + 2) % 5]},
        {"type": "max_pool" if pool == "avg_pool" else "avg_pool", "size": 2},
        {"type": "flatten"},
        {"type": "dense", "units": units, "activation": out},
    ]
    m = 1 + (3 * k) % 8
    X = rng.uniform(-1.5, 1.5, (m,) + shape)
    if loss == "softmax_cross_entropy":
        Y = np.eye(units)[rng.integers(0, units, m)]
    elif loss == "binary_cross_entropy":
        Y = (rng.uniform(size=(m, 1)) < 0.5).astype(float)
    else:
        Y = rng.uniform(-1, 1, (m, units))
    params = random_params(layers, shape, rng)
    return layers, loss, shape, params, X, Y


@pytest.mark.parametrize("k", range(12))
def test_numpy_gradients_of_random_conv_nets_pass_and_their_slips_fail(k):
    rng = np.random.default_rng(k)
    layers, loss, shape, params, X, Y = random_net(k, rng)
    l2 = 0.2 if k % 4 == 3 else 0.0
    J, grads = forward_backward(layers, loss, params, X, Y, l2=l2)
    model = {"input_shape": list(shape), "layers": layers, "loss": loss, "l2": l2}
    r = gradcheck.check(params, X, Y, grads, model=model, backend="cpu")
    assert r.verdict == "pass", r.to_dict()["reasons"]
    doc = r.to_dict()
    # Two implementations of the same network: the same cost to rounding (a few hundred
    # terms, u ≈ 1e-16 each: 1e-13 relative has room), gradients within rounding (the
    # notebook's difference of two correct f64 gradients is ~1e-15; 1e-12 has room, a 1 %
    # slip gives ~5e-3).
    assert abs(doc["cost"] - J) <= 1e-13 * abs(J)
    assert r.difference < 1e-12
    for slip, at in [("max_to_all", [i for i, L in enumerate(layers) if L["type"] == "max_pool"][0]),
                     ("db_one_position", 2)]:
        _, bad = forward_backward(layers, loss, params, X, Y, l2=l2, slips={at: slip})
        moved = max(np.abs(bad[g] - grads[g]).max() / (np.abs(grads[g]).max() + 1e-300) for g in grads)
        if moved < 0.01:
            continue  # the slip changes nothing on this net
        r = gradcheck.check(params, X, Y, bad, model=model, backend="cpu")
        assert r.verdict == "fail"
        named = [t.diagnosis for t in r.tensors if not t.passed]
        assert any(d and f"[{slip}]" in d for d in named), named


def test_max_pool_ties_pass_with_either_tie_rule():
    """Integer inputs and ReLU zeros make many tied maxima; any tied entry's gradient is a
    valid subgradient: the course's first-maximum mask and a last-maximum one both PASS,
    and sending the gradient to every tied entry (twice the derivative) does not."""
    rng = np.random.default_rng(7)
    layers = [
        {"type": "conv2d", "filters": 3, "kernel": 2, "padding": "valid", "activation": "relu"},
        {"type": "max_pool", "size": 2},
        {"type": "flatten"},
        {"type": "dense", "units": 3, "activation": "softmax"},
    ]
    shape = (9, 9, 2)
    X = rng.integers(-2, 3, (4,) + shape).astype(float)
    params = random_params(layers, shape, rng)
    params["W1"] = rng.integers(-1, 2, params["W1"].shape).astype(float)
    # Half-integer biases: pre-activations never sit exactly at a ReLU kink, while the
    # pooled values tie all the time.
    params["b1"] = np.full_like(params["b1"], 0.5)
    Y = np.eye(3)[rng.integers(0, 3, 4)]
    model = {"input_shape": list(shape), "layers": layers, "loss": "softmax_cross_entropy"}
    verdicts = {}
    for tie in ["first", "last"]:
        _, g = forward_backward(layers, model["loss"], params, X, Y, tie=tie)
        r = gradcheck.check(params, X, Y, g, model=model, backend="cpu")
        verdicts[tie] = r.verdict
    _, first = forward_backward(layers, model["loss"], params, X, Y, tie="first")
    _, last = forward_backward(layers, model["loss"], params, X, Y, tie="last")
    assert not np.allclose(first["dW1"], last["dW1"]), "the net has no ties that matter"
    assert verdicts == {"first": "pass", "last": "pass"}, verdicts
    _, every = forward_backward(layers, model["loss"], params, X, Y, slips={1: "max_to_all"})
    r = gradcheck.check(params, X, Y, every, model=model, backend="cpu")
    assert r.verdict == "fail" and "[max_to_all]" in r.tensors[0].diagnosis


def to_nchw(layers, params, X, shape):
    """The course-layout network's arrays in PyTorch's layout (dense after flatten
    re-indexed from (h, w, c) to (c, h, w), W (in, out) → (out, in))."""
    H, W, C = shape
    out = {}
    k = 0
    feat = None
    h, w, c = H, W, C
    for L in layers:
        if L["type"] == "conv2d":
            k += 1
            out[f"W{k}"] = params[f"W{k}"].transpose(3, 2, 0, 1).copy()
            out[f"b{k}"] = params[f"b{k}"].reshape(-1)
            c = L["filters"]
            f = L["kernel"]
            f1, f2 = (f, f) if np.isscalar(f) else f
            s = L.get("stride", 1)
            pad = L.get("padding", 0)
            if pad == "same":
                h, w = -(-h // s), -(-w // s)
            else:
                p = 0 if pad == "valid" else pad
                h, w = (h + 2 * p - f1) // s + 1, (w + 2 * p - f2) // s + 1
        elif L["type"] in ("max_pool", "avg_pool"):
            f = L["size"]
            s = L.get("stride", f)
            h, w = (h - f) // s + 1, (w - f) // s + 1
        elif L["type"] == "flatten":
            feat = (h, w, c)
        else:
            k += 1
            Wd = params[f"W{k}"]
            if feat is not None:
                fh, fw, fc = feat
                Wd = Wd.reshape(fh, fw, fc, -1).transpose(2, 0, 1, 3).reshape(fh * fw * fc, -1)
                feat = None
            out[f"W{k}"] = Wd.T.copy()
            out[f"b{k}"] = params[f"b{k}"].reshape(-1)
    return out, X.transpose(0, 3, 1, 2).copy()


def test_pytorch_layout_gives_the_course_layouts_report():
    rng = np.random.default_rng(3)
    layers, loss, shape, params, X, Y = random_net(4, rng)
    _, grads = forward_backward(layers, loss, params, X, Y)
    grads["dW1"] = grads["dW1"] * 1.03  # a planted 3 % error
    model = {"input_shape": list(shape), "layers": layers, "loss": loss}
    course = gradcheck.check(params, X, Y, grads, model=model, backend="cpu")
    tp, tX = to_nchw(layers, params, X, shape)
    tg = {"d" + k: v for k, v in to_nchw(layers, {k[1:]: v for k, v in grads.items()}, X, shape)[0].items()}
    H, W, C = shape
    torch_model = {**model, "input_shape": [C, H, W]}
    torch = gradcheck.check(tp, tX, Y, tg, model=torch_model, layout="nchw", backend="cpu")
    assert course.verdict == torch.verdict == "fail"
    for a, b in zip(course.tensors, torch.tensors):
        assert a.verdict == b.verdict, a.name
        # Same numbers in another summation order (see test_layouts).
        assert abs(a.difference - b.difference) <= 1e-9 * a.difference + 1e-13


def test_conv_example_fixture_is_the_numpy_models():
    """The built-in --example conv-* files are what conv_numpy computes (no drift)."""
    spec = json.loads((ROOT / "fixtures" / "conv" / "conv_model.json").read_text())

    def load(name):
        with np.load(ROOT / "fixtures" / "conv" / name) as z:
            return {k: z[k] for k in z.files}

    params, data = load("conv_params.npz"), load("conv_data.npz")
    _, fixed = forward_backward(spec["layers"], spec["loss"], params, data["X"], data["Y"])
    _, buggy = forward_backward(spec["layers"], spec["loss"], params, data["X"], data["Y"],
                                slips={1: "max_to_all", 2: "db_one_position"})
    for name, expect in [("conv_grads_fixed.npz", fixed), ("conv_grads_buggy.npz", buggy)]:
        got = load(name)
        for k in expect:
            np.testing.assert_allclose(got[k], expect[k], rtol=1e-13, atol=1e-15)
    r = gradcheck.check(params, data["X"], data["Y"], load("conv_grads_buggy.npz"), model=spec, backend="cpu")
    assert [t.name for t in r.tensors if not t.passed] == ["W1", "b1", "b2"]


def test_class_indices_and_bad_conv_inputs():
    rng = np.random.default_rng(5)
    layers, loss, shape, params, X, Y = random_net(0, rng)  # softmax
    _, grads = forward_backward(layers, loss, params, X, Y)
    model = {"input_shape": list(shape), "layers": layers, "loss": loss}
    one_hot = gradcheck.check(params, X, Y, grads, model=model, backend="cpu")
    idx = gradcheck.check(params, X, Y.argmax(axis=1), grads, model=model, backend="cpu")
    assert one_hot.difference == idx.difference and idx.verdict == "pass"
    with pytest.raises(ValueError, match=r"X has shape \[.*\] but the model takes"):
        gradcheck.check(params, X[:, :-1], Y, grads, model=model)
    with pytest.raises(ValueError, match=r"W1 has shape"):
        gradcheck.check({**params, "W1": params["W1"][:1]}, X, Y, grads, model=model)
    with pytest.raises(ValueError, match="layout= applies to a network of layer types"):
        gradcheck.check(params, X, Y, grads, layout="nchw")


def test_readme_conv_example_runs_and_says_what_the_readme_says():
    """The README's conv example, as written there: PASS; with the mask slip the README
    describes: FAIL with that diagnosis."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Checking a convolutional network"):]
    code = section[section.index("```python\n") + 10:]
    code = code[:code.index("```")]
    scope = {}
    exec(compile(code.replace("print(", "result = ("), "README.md", "exec"), scope)
    assert scope["result"].verdict == "pass"
    assert "mask = blocks == P[:, :, None, :, None, :]" in code
    slipped = code.replace("mask = blocks == P[:, :, None, :, None, :]", "mask = np.ones_like(blocks, bool)")
    exec(compile(slipped.replace("print(", "result = ("), "README.md", "exec"), scope)
    r = scope["result"]
    assert r.verdict == "fail"
    assert "in layer 2 (max_pool), the max-pool gradient goes to every entry of the window" in r.tensors[0].diagnosis


def test_jupyter_display_of_a_conv_report():
    """The HTML table shows 4-D and 1-D tensor shapes (it used to index shape[1])."""
    rng = np.random.default_rng(9)
    layers, loss, shape, params, X, Y = random_net(0, rng)
    _, grads = forward_backward(layers, loss, params, X, Y)
    r = gradcheck.check(params, X, Y, grads, model={"input_shape": list(shape), "layers": layers, "loss": loss},
                        backend="cpu")
    html = r._repr_html_()
    w1 = "×".join(map(str, params["W1"].shape))
    assert f"<td>{w1}</td>" in html and "<td>3</td>" in html, html


def gpu_or_skip():
    """True where a GPU adapter answers; skips otherwise — except under CI=true, where
    .ci/run installed llvmpipe and the GPU must be there."""
    import os

    try:
        gradcheck.check(
            {"W1": np.ones((1, 2)) * 0.3, "b1": np.zeros((1, 1))},
            np.ones((2, 3)), np.array([[0.0, 1.0, 1.0]]), backend="gpu",
        )
    except ValueError as e:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"no GPU adapter: {e}")


@pytest.mark.parametrize("k", [0, 1, 5])
def test_numpy_conv_nets_get_the_same_verdicts_on_the_gpu(k):
    """numpy's gradients of random conv nets (correct, and with a planted max-pool slip)
    checked on the GPU kernels: the CPU's verdicts, differences and diagnoses."""
    gpu_or_skip()
    rng = np.random.default_rng(k)
    layers, loss, shape, params, X, Y = random_net(k, rng)
    J, grads = forward_backward(layers, loss, params, X, Y)
    model = {"input_shape": list(shape), "layers": layers, "loss": loss}
    pool_at = [i for i, L in enumerate(layers) if L["type"] == "max_pool"][0]
    _, bad = forward_backward(layers, loss, params, X, Y, slips={pool_at: "max_to_all"})
    for g in (grads, bad):
        cpu = gradcheck.check(params, X, Y, g, model=model, backend="cpu")
        gpu = gradcheck.check(params, X, Y, g, model=model, backend="gpu", precision="f64")
        assert gpu.to_dict()["backend"] == "gpu"
        assert gpu.verdict == cpu.verdict
        assert [t.passed for t in gpu.tensors] == [t.passed for t in cpu.tensors]
        assert [t.diagnosis for t in gpu.tensors] == [t.diagnosis for t in cpu.tensors]
        # ΔJ± agree to 1e-13 of their magnitudes: the differences to 1e-6 of themselves
        # (or within the ~1e-16 rounding noise a correct gradient's difference is).
        assert abs(gpu.difference - cpu.difference) <= 1e-6 * cpu.difference + 1e-14
