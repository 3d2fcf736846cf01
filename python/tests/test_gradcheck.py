"""The Python package against independent oracles: the notebook's own numbers (its fixture
files and arrays built here), the CLI's JSON for the same inputs, and planted bugs."""

import json
import os
import pathlib
import subprocess

import numpy as np
import pytest

import gradcheck

ROOT = pathlib.Path(__file__).resolve().parents[2]
SEED = ROOT.parent / "shared" / "fixtures" / "seed"
if not (SEED / "seed_params.npz").exists():
    SEED = ROOT / "fixtures" / "seed"
EXPECTED = json.loads((SEED / "seed_expected.json").read_text()) if (SEED / "seed_expected.json").exists() else None
BUGGY = 0.2850931567761623
FIXED = 1.1890913024229996e-07


def load(name):
    with np.load(SEED / name) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def seed():
    data = load("seed_data.npz")
    return load("seed_params.npz"), data["X"], data["Y"], load("seed_grads_buggy.npz"), load("seed_grads_fixed.npz")


def rel(a, b):
    return abs(a - b) / abs(b)


# DESIGN.md's tolerances for the notebook's numbers: accumulation order changes the last
# digits, so the buggy difference (dominated by the bugs) must agree to 1e-8 relative and
# the fixed one (pure rounding noise) to 0.5 %.


def test_gradient_check_n_gives_the_notebooks_numbers(seed, capsys):
    params, X, Y, buggy, fixed = seed
    d = gradcheck.gradient_check_n(params, buggy, X, Y, print_msg=True)
    assert rel(d, BUGGY) <= 1e-8
    assert "There is a mistake in the backward propagation!" in capsys.readouterr().out
    d = gradcheck.gradient_check_n(params, fixed, X, Y, epsilon=1e-7, print_msg=True)
    assert rel(d, FIXED) <= 5e-3
    assert "works perfectly fine" in capsys.readouterr().out


def test_check_names_the_failing_tensors_and_their_diagnoses(seed):
    params, X, Y, buggy, fixed = seed
    r = gradcheck.check(params, X, Y, buggy, backend="cpu")
    assert r.verdict == "fail" and not r.passed
    failing = {t.name: t.diagnosis for t in r.tensors if not t.passed}
    assert set(failing) == {"b1", "W2"}
    assert "4.000" in failing["b1"] and "2.000" in failing["W2"]
    r = gradcheck.check(params, X, Y, fixed, backend="cpu")
    assert r.verdict == "pass"
    # The default f64 Δ path: the notebook's fixed gradients agree to the last bits.
    assert r.difference < 1e-14


def test_the_notebooks_extra_gradient_keys_are_ignored(seed):
    params, X, Y, buggy, fixed = seed
    g = dict(fixed, dZ3=np.ones((1, 3)), dA2=np.ones((3, 3)))
    assert gradcheck.check(params, X, Y, g, backend="cpu").passed


def test_arrays_built_here_one_dimensional_notebook_net():
    # The notebook's 4-5-3-1 net on arrays made in the test: the built-in backprop passes.
    rng = np.random.default_rng(1)
    params = {
        "W1": rng.standard_normal((5, 4)), "b1": rng.standard_normal((5, 1)),
        "W2": rng.standard_normal((3, 5)), "b2": rng.standard_normal((3, 1)),
        "W3": rng.standard_normal((1, 3)), "b3": rng.standard_normal((1, 1)),
    }
    X = rng.standard_normal((4, 3))
    Y = np.array([[1.0, 0.0, 1.0]])
    r = gradcheck.check(params, X, Y, backend="cpu")
    assert r.passed
    assert "built-in backprop" in str(r)
    assert r.to_dict()["builtin_gradients"] is True


def test_float32_and_fortran_order_inputs(seed):
    params, X, Y, buggy, fixed = seed
    f_params = {k: np.asfortranarray(v) for k, v in params.items()}
    r = gradcheck.check(f_params, np.asfortranarray(X), Y, fixed, backend="cpu")
    assert r.passed
    g32 = {k: v.astype(np.float32) for k, v in fixed.items()}
    r = gradcheck.check(params, X, Y, g32, backend="cpu")
    # f32 gradients carry f32 rounding: judged with it, they pass; bugs still fail.
    assert r.passed, r.reasons
    b32 = {k: v.astype(np.float32) for k, v in buggy.items()}
    assert gradcheck.check(params, X, Y, b32, backend="cpu").verdict == "fail"


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda p, X, Y, g: (dict(p, W2=np.ones((4, 4))), X, Y, g), "W2"),
        (lambda p, X, Y, g: ({k: v for k, v in p.items() if k != "b2"}, X, Y, g), "b2"),
        (lambda p, X, Y, g: (p, X[:3], Y, g), "X"),
        (lambda p, X, Y, g: (p, X, np.ones((2, 3)), g), "Y"),
        (lambda p, X, Y, g: (dict(p, W1=np.full((5, 4), np.nan)), X, Y, g), "W1"),
        (lambda p, X, Y, g: (p, X, Y, dict(g, dW3=np.ones((2, 2)))), "dW3"),
        (lambda p, X, Y, g: (p, X, Y, {k: v for k, v in g.items() if k != "db1"}), "db1"),
        (lambda p, X, Y, g: (dict(p, W1=np.array([["a"] * 4] * 5)), X, Y, g), "W1"),
    ],
)
def test_bad_input_raises_value_error_naming_the_tensor(seed, mutate, needle):
    params, X, Y, buggy, fixed = seed
    p, x, y, g = mutate(params, X, Y, fixed)
    with pytest.raises(ValueError, match=needle):
        gradcheck.check(p, x, y, g, backend="cpu")


def test_bad_options_raise_value_error(seed):
    params, X, Y, buggy, fixed = seed
    with pytest.raises(ValueError, match="backend"):
        gradcheck.check(params, X, Y, fixed, backend="tpu")
    with pytest.raises(ValueError, match="epsilon"):
        gradcheck.check(params, X, Y, fixed, epsilon=1e300)


def test_html_table_and_json_equal_to_the_cli(seed, tmp_path):
    params, X, Y, buggy, fixed = seed
    r = gradcheck.check(params, X, Y, buggy, backend="cpu", precision="f64-plain")
    page = r._repr_html_()
    assert "<table>" in page and "W2" in page and "background" in page
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    cli = os.environ.get("GRADCHECK_BIN", str(target / "release" / "gradcheck"))
    if not pathlib.Path(cli).exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"no CLI binary at {cli} (under CI the comparison must run)")
        pytest.skip(f"no CLI binary at {cli}")
    out = subprocess.run(
        [cli, "check", "--params", str(SEED / "seed_params.npz"), "--data", str(SEED / "seed_data.npz"),
         "--grads", str(SEED / "seed_grads_buggy.npz"), "--backend", "cpu", "--precision", "f64-plain",
         "--json", "-"],
        capture_output=True, text=True,
    )
    assert out.returncode == 1, out.stderr
    ours, theirs = r.to_dict(), json.loads(out.stdout)
    # Same document but for wall-clock times and the notes naming where inputs came from.
    for d in (ours, theirs):
        d.pop("timings")
        d.pop("notes")
    assert ours == theirs


def test_saturated_outputs_are_decided():
    # A logistic unit at z = 40 with y = 0: σ(z) == 1.0 in f64, J = 40.
    params = {"W1": np.array([[39.0]]), "b1": np.array([[1.0]])}
    X, Y = np.array([[1.0]]), np.array([[0.0]])
    model = {"layers": [1, 1], "activations": ["sigmoid"], "loss": "binary_cross_entropy"}
    good = {"dW1": np.array([[1.0]]), "db1": np.array([[1.0]])}
    assert gradcheck.check(params, X, Y, good, model=model, backend="cpu").passed
    bad = {"dW1": np.array([[2.0]]), "db1": np.array([[1.0]])}
    assert gradcheck.check(params, X, Y, bad, model=model, backend="cpu").verdict == "fail"


def test_the_users_own_dropout_masks():
    # A numpy net with inverted dropout on its hidden layer, its backprop written here;
    # the check must perturb the network with the user's own masks D1.
    rng = np.random.default_rng(4)
    n0, n1, m, keep = 3, 5, 7, 0.7
    W1, b1 = rng.normal(size=(n1, n0)), rng.normal(size=(n1, 1))
    W2, b2 = rng.normal(size=(1, n1)), rng.normal(size=(1, 1))
    X = rng.normal(size=(n0, m))
    Y = (rng.random((1, m)) < 0.5).astype(float)
    D1 = (rng.random((n1, m)) < keep).astype(float)
    Z1 = W1 @ X + b1
    A1 = np.maximum(Z1, 0) * D1 / keep
    A2 = 1 / (1 + np.exp(-(W2 @ A1 + b2)))
    dZ2 = A2 - Y
    dA1 = W2.T @ dZ2 * D1 / keep
    dZ1 = dA1 * (Z1 > 0)
    grads = {"dW1": dZ1 @ X.T / m, "db1": dZ1.sum(axis=1, keepdims=True) / m,
             "dW2": dZ2 @ A1.T / m, "db2": dZ2.sum(axis=1, keepdims=True) / m}
    params = {"W1": W1, "b1": b1, "W2": W2, "b2": b2}
    model = {"layers": [n0, n1, 1], "activations": ["relu", "sigmoid"], "loss": "binary_cross_entropy",
             "dropout": {"keep_prob": keep, "layers": [1]}}
    r = gradcheck.check(params, X, Y, grads, model=model, masks={"D1": D1})
    assert r.verdict == "pass", r.reasons
    # The mask applied in the forward pass but forgotten in the backward pass: a bug.
    bad = dict(grads)
    dZ1_bad = (W2.T @ dZ2 / keep) * (Z1 > 0)
    bad["dW1"] = dZ1_bad @ X.T / m
    r = gradcheck.check(params, X, Y, bad, model=model, masks={"D1": D1})
    assert r.verdict == "fail"
    assert [t.name for t in r.tensors if t.verdict == "fail"] == ["W1"]


def test_notebook_argument_order_and_option_types_are_named(seed):
    params, X, Y, buggy, _ = seed
    with pytest.raises(ValueError, match="X is a dict.*gradient_check_n"):
        gradcheck.check(params, buggy, X, Y)
    with pytest.raises(TypeError, match="epsilon must be"):
        gradcheck.check(params, X, Y, buggy, epsilon="1e-3")
    with pytest.raises(TypeError, match="stencil must be"):
        gradcheck.check(params, X, Y, buggy, stencil=4.0)
    with pytest.raises(ValueError, match="stencil = 260: must be 2"):
        gradcheck.check(params, X, Y, buggy, stencil=260)
    half = {k: v.astype(np.float16) for k, v in buggy.items()}
    with pytest.raises(ValueError, match="float16"):
        gradcheck.check(params, X, Y, half)


def test_html_shows_notes_and_tells_fail_from_inconclusive(seed):
    params, X, Y, buggy, _ = seed
    r = gradcheck.check(params, X, Y, buggy)
    page = r._repr_html_()
    assert r.notes and all(__import__("html").escape(n) in page for n in r.notes)
    assert 'class="gradcheck-fail"' in page and "diagnosis / reason" in page
    assert "resolution: the relative error" in page
    # An inconclusive row has its own class and colour: ε far too large for a pass.
    r = gradcheck.check(params, X, Y, load("seed_grads_fixed.npz"), epsilon=0.5, precision="f64")
    if r.verdict == "inconclusive":
        page = r._repr_html_()
        assert 'class="gradcheck-inconclusive"' in page and "#fff8c5" in page


def test_a_nan_gradient_renders_and_prints(seed, capsys):
    params, X, Y, buggy, _ = seed
    nan = dict(buggy)
    nan["dW1"] = buggy["dW1"].copy()
    nan["dW1"][0, 0] = np.nan
    r = gradcheck.check(params, X, Y, nan)
    assert r.verdict == "fail"
    assert "NaN" in r._repr_html_() or "nan" in r._repr_html_()
    d = gradcheck.gradient_check_n(params, nan, X, Y, print_msg=True)
    assert "mistake" in capsys.readouterr().out
    assert d != d or d > 2e-7


def test_bad_values_get_the_librarys_message(seed):
    params, X, Y, _, fixed = seed
    with pytest.raises(ValueError, match=r"epsilon = 5: must be a number in \(0, 1\] \(or auto\)"):
        gradcheck.check(params, X, Y, fixed, epsilon=5.0)
    with pytest.raises(ValueError, match=r"stencil = 260: must be 2 or 4"):
        gradcheck.check(params, X, Y, fixed, stencil=260)


def _check_in_child(queue, params, X, Y, grads):
    queue.put(gradcheck.check(params, X, Y, grads).verdict)


def test_a_check_in_a_forked_child_after_one_in_the_parent(seed):
    # The parent's thread pool does not survive fork(): the child's check used to hang.
    import multiprocessing

    params, X, Y, _, fixed = seed
    assert gradcheck.check(params, X, Y, fixed).verdict == "pass"
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_check_in_child, args=(queue, params, X, Y, fixed))
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
        pytest.fail("the check in the forked child hung")
    assert child.exitcode == 0
    assert queue.get(timeout=5) == "pass"


def test_class_index_labels_for_softmax():
    # y as class indices (m,), what every classifier has: the same report as one-hot.
    rng = np.random.default_rng(2)
    n0, n1, C, m = 3, 4, 3, 6
    P = {"W1": rng.normal(size=(n1, n0)), "b1": rng.normal(size=(n1, 1)),
         "W2": rng.normal(size=(C, n1)), "b2": rng.normal(size=(C, 1))}
    X = rng.normal(size=(n0, m))
    y = rng.integers(0, C, size=m)
    Y = np.eye(C)[:, y]
    model = {"layers": [n0, n1, C], "activations": ["tanh", "softmax"], "loss": "softmax_cross_entropy"}
    a = gradcheck.check(P, X, Y, model=model, backend="cpu")
    b = gradcheck.check(P, X, y, model=model, backend="cpu")
    assert a.verdict == b.verdict == "pass"
    assert a.difference == b.difference
    with pytest.raises(ValueError, match="sample 0 has 7"):
        gradcheck.check(P, X, np.r_[7, y[1:]], model=model, backend="cpu")


def test_ctrl_c_interrupts_a_long_check_at_once(tmp_path):
    # The check runs in a worker thread (the GIL released): the caller's thread waits
    # interruptibly, so KeyboardInterrupt arrives at once, not when the check ends.
    import signal
    import sys
    import time

    script = tmp_path / "long.py"
    script.write_text(
        "import numpy as np, gradcheck\n"
        "rng = np.random.default_rng(0)\n"
        "sizes = [784, 256, 128, 1]\n"
        "P = {}\n"
        "for l in range(1, 4):\n"
        "    P[f'W{l}'] = rng.normal(size=(sizes[l], sizes[l-1])) * 0.05\n"
        "    P[f'b{l}'] = np.zeros((sizes[l], 1))\n"
        "X = rng.normal(size=(784, 64)); Y = (rng.random((1, 64)) < 0.5) * 1.0\n"
        "print('started', flush=True)\n"
        "gradcheck.check(P, X, Y, backend='cpu', precision='f64-plain')\n"
        "print('finished', flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    time.sleep(1.0)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("Ctrl-C did not interrupt the check within 10 s")
    waited = time.monotonic() - t0
    assert "finished" not in out, "the check ran to its end before the interrupt"
    assert "KeyboardInterrupt" in err, err
    assert waited < 2.0, f"{waited:.2f} s from Ctrl-C to exit"
