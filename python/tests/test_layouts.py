"""The same network in the notebook's feature-major form and in the samples-first form
(CS231n: X (m, n0), W (n_in, n_out), b (n_out,), y class indices, 0.5·reg·ΣW²): the same
verdicts and differences, the model written as the user's code has it."""

import numpy as np
import pytest

import gradcheck


def net(seed):
    rng = np.random.default_rng(seed)
    sizes = [6, 5, 3]
    m = 7
    p = {}
    for l in (1, 2):
        p[f"W{l}"] = rng.standard_normal((sizes[l], sizes[l - 1])) * 0.7
        p[f"b{l}"] = rng.standard_normal((sizes[l], 1)) * 0.1
    X = rng.standard_normal((sizes[0], m))
    labels = rng.integers(0, 3, m)
    Y = np.eye(3)[labels].T
    return p, X, Y, labels


def backprop(p, X, Y, lam):
    """The notebook's feature-major backprop with (λ/(2m))·Σ‖W‖²."""
    m = X.shape[1]
    Z1 = p["W1"] @ X + p["b1"]
    A1 = np.tanh(Z1)
    Z2 = p["W2"] @ A1 + p["b2"]
    e = np.exp(Z2 - Z2.max(axis=0))
    dZ2 = (e / e.sum(axis=0) - Y) / m
    g = {"dW2": dZ2 @ A1.T + lam / m * p["W2"], "db2": dZ2.sum(axis=1, keepdims=True)}
    dZ1 = (p["W2"].T @ dZ2) * (1 - A1 ** 2)
    g["dW1"] = dZ1 @ X.T + lam / m * p["W1"]
    g["db1"] = dZ1.sum(axis=1, keepdims=True)
    return g


@pytest.mark.parametrize("planted", [1.0, 1.05])
def test_samples_first_and_feature_major_give_the_same_report(planted):
    p, X, Y, labels = net(1)
    lam = 0.3
    g = backprop(p, X, Y, lam)
    g["dW1"] = g["dW1"] * planted
    feature = gradcheck.check(p, X, Y, g, backend="cpu", model={
        "layers": [6, 5, 3], "activations": ["tanh", "softmax"], "loss": "softmax_cross_entropy", "l2": lam})
    m = X.shape[1]
    ps = {k: (v.T.copy() if k.startswith("W") else v.ravel().copy()) for k, v in p.items()}
    gs = {k: (v.T.copy() if k.startswith("dW") else v.ravel().copy()) for k, v in g.items()}
    sample = gradcheck.check(ps, X.T.copy(), labels, gs, backend="cpu", model={
        "layers": [6, 5, 3], "activations": ["tanh", "softmax"], "loss": "softmax_cross_entropy",
        "layout": "samples_first", "l2": lam / m, "l2_scale": "total"})
    assert feature.verdict == sample.verdict == ("pass" if planted == 1.0 else "fail")
    for a, b in zip(feature.tensors, sample.tensors):
        assert a.name == b.name and a.verdict == b.verdict
        # The same numbers summed in another order: equal to rounding (a correct tensor's
        # difference is itself rounding, hence the absolute 1e-13).
        assert abs(a.difference - b.difference) <= 1e-9 * a.difference + 1e-13
    # Elements are named as each form indexes them: W1[r, c] feature-major is W1[c, r].
    worst = [t for t in sample.tensors if t.name == "W1"][0].worst[0]
    assert worst["element"].startswith("W1[")


def test_layout_errors_name_the_fix():
    p, X, Y, labels = net(2)
    g = backprop(p, X, Y, 0.0)
    with pytest.raises(ValueError, match="l2_scale needs the samples-first form"):
        gradcheck.check(p, X, Y, g, model={"layers": [6, 5, 3], "activations": ["tanh", "softmax"],
                                           "loss": "softmax_cross_entropy", "l2_scale": "total"})
    with pytest.raises(ValueError, match=r"W1 has shape \[5, 6\] but W1 is \[6, 5\]"):
        gradcheck.check(p, X, Y, g, model={"layers": [6, 5, 3], "activations": ["tanh", "softmax"],
                                           "loss": "softmax_cross_entropy", "layout": "samples_first"})


def test_a_missing_gradient_names_the_dicts_keys():
    p, X, Y, labels = net(3)
    g = backprop(p, X, Y, 0.0)
    wrong = {k[1:]: v for k, v in g.items()}  # W1, b1, … instead of dW1, db1, …
    with pytest.raises(ValueError, match=r"gradients has W2, b2, W1, b1; dW1, db1, dW2, db2 are missing — the gradient of parameter K is named dK"):
        gradcheck.check(p, X, Y, wrong)
    del g["db2"]
    with pytest.raises(ValueError, match=r"db2 is missing"):
        gradcheck.check(p, X, Y, g)


def test_no_mesa_noise_on_stderr_from_the_first_gpu_probe():
    """A headless machine without XDG_RUNTIME_DIR: Mesa's WSI message must not reach the
    user's stderr (the package points the variable at a private directory, as the CLI)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    code = (
        "import numpy as np, gradcheck\n"
        "p = {'W1': np.ones((2, 3)) * 0.3, 'b1': np.zeros((2, 1)), 'W2': np.ones((1, 2)) * 0.2, 'b2': np.zeros((1, 1))}\n"
        "X = np.arange(12.0).reshape(3, 4) / 10; Y = np.array([[0.0, 1.0, 1.0, 0.0]])\n"
        "try:\n    gradcheck.check(p, X, Y, backend='gpu')\nexcept ValueError as e:\n    print('no adapter:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "XDG_RUNTIME_DIR" not in out.stderr, out.stderr
