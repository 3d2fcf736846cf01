"""gradcheck.torch against PyTorch itself: autograd's gradients of nn.Sequential models
PASS for every supported layer, loss, reduction and target kind; a custom
autograd.Function with a planted backward bug FAILs naming the module's parameter; the
converted spec computes torch's loss (to 1e-12, checked by gradcheck's J(θ), not through
the converter). Skipped, saying so, where torch is not installed (it is never a
dependency of the package)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: gradcheck.torch is tested where it is")
nn = torch.nn

import gradcheck  # noqa: E402
import gradcheck.torch as gt  # noqa: E402


def seeded(seed):
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def mlp(bias=True):
    return nn.Sequential(nn.Linear(5, 7, bias=bias), nn.Tanh(), nn.Linear(7, 4), nn.LeakyReLU(0.1),
                         nn.Linear(4, 3, bias=bias)).double()


def convnet():
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 3, (2, 3), stride=2), nn.Sigmoid(), nn.AvgPool2d(2, stride=1),
                         nn.Flatten(), nn.Dropout(0.5), nn.Linear(3 * 1 * 1, 3)).double().eval()


def targets(kind, m, n, rng):
    if kind == "index":
        return torch.as_tensor(rng.integers(0, n, m))
    if kind == "prob":
        p = rng.uniform(size=(m, n))
        return torch.as_tensor(p / p.sum(axis=1, keepdims=True))
    if kind == "binary":
        return torch.as_tensor((rng.uniform(size=(m, n)) < 0.5).astype(float))
    return torch.as_tensor(rng.uniform(-1, 1, (m, n)))


CASES = [
    (nn.CrossEntropyLoss, "index", None),
    (nn.CrossEntropyLoss, "prob", None),
    (nn.BCEWithLogitsLoss, "binary", None),
    (nn.BCELoss, "binary", nn.Sigmoid),
    (nn.MSELoss, "real", None),
    (nn.MSELoss, "real", nn.Tanh),
]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss_cls,kind,tail", CASES)
@pytest.mark.parametrize("net", ["mlp", "mlp_nobias", "conv"])
def test_autograd_gradients_pass_and_the_converted_loss_is_torchs(net, loss_cls, kind, tail, reduction):
    rng = seeded(hash((net, loss_cls.__name__, kind, reduction)) % 1000)
    model = {"mlp": mlp, "mlp_nobias": lambda: mlp(False), "conv": convnet}[net]()
    if tail is not None:
        model = nn.Sequential(model, tail())
    m = 6
    X = torch.as_tensor(rng.standard_normal((m, 5)) if net != "conv" else rng.standard_normal((m, 2, 10, 10)))
    y = targets(kind, m, 3, rng)
    loss_fn = loss_cls(reduction=reduction)
    model.zero_grad()
    loss = loss_fn(model(X), y)
    loss.backward()
    r = gt.check(model, loss_fn, X, y, backend="cpu")
    assert r.verdict == "pass", (r.to_dict()["reasons"], str(r))
    assert {t.name for t in r.tensors} == {n for n, _ in model.named_parameters()}
    # The spec computes torch's loss: J(θ) × the reduction's factor (1e-12 relative: the
    # issue's bound; the two differ only in summation order, ~1e-15 measured).
    spec, _, factor = gt.convert(model, loss_fn, tuple(X.shape[1:]))
    n_out = spec["layers"][-1]["units"]
    scale = factor * m if reduction == "sum" else (1.0 if spec["loss"] == "softmax_cross_entropy" else factor / n_out)
    assert abs(r.to_dict()["cost"] * scale - loss.item()) <= 1e-12 * abs(loss.item())


class BuggyLinear(torch.autograd.Function):
    """y = x·Wᵀ + b with a hand-written backward whose dW forgets to sum over the batch
    (takes sample 0 only)."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        return x @ w.T + b

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g @ w, g[:1].T @ x[:1], g.sum(0)


class Custom(nn.Linear):
    def forward(self, x):
        return BuggyLinear.apply(x, self.weight, self.bias)


def test_a_custom_function_with_a_planted_backward_bug_fails_naming_its_parameter():
    rng = seeded(3)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), Custom(6, 3)).double()
    X = torch.as_tensor(rng.standard_normal((8, 5)))
    y = torch.as_tensor(rng.integers(0, 3, 8))
    loss_fn = nn.CrossEntropyLoss()
    loss_fn(model(X), y).backward()
    r = gt.check(model, loss_fn, X, y, backend="cpu")
    assert r.verdict == "fail"
    assert [t.name for t in r.tensors if not t.passed] == ["2.weight"]


def test_unsupported_modules_and_losses_are_refused_by_name():
    rng = seeded(4)
    X = torch.as_tensor(rng.standard_normal((4, 5)))
    y = torch.as_tensor(rng.integers(0, 3, 4))
    with pytest.raises(ValueError, match=r"module 1 \(BatchNorm1d\) is not supported"):
        gt.check(nn.Sequential(nn.Linear(5, 3), nn.BatchNorm1d(3), nn.Linear(3, 3)).double(), nn.CrossEntropyLoss(), X, y)
    with pytest.raises(ValueError, match="dropout in training mode"):
        gt.check(nn.Sequential(nn.Linear(5, 3), nn.Dropout(0.3), nn.Linear(3, 3)).double().train(), nn.CrossEntropyLoss(), X, y)
    with pytest.raises(ValueError, match="loss NLLLoss is not supported"):
        gt.check(nn.Sequential(nn.Linear(5, 3)).double(), nn.NLLLoss(), X, y)
    with pytest.raises(ValueError, match="reduction 'none'"):
        gt.check(nn.Sequential(nn.Linear(5, 3)).double(), nn.CrossEntropyLoss(reduction="none"), X, y)


def test_same_network_from_torch_numpy_course_layout_gives_the_same_report():
    """The torch model and the same network written in the course's layout (W (in, out))
    through gradcheck.check: the same verdicts and differences."""
    rng = seeded(5)
    model = mlp()
    X = torch.as_tensor(rng.standard_normal((6, 5)))
    y = torch.as_tensor(rng.integers(0, 3, 6))
    loss_fn = nn.CrossEntropyLoss()
    loss_fn(model(X), y).backward()
    via_torch = gt.check(model, loss_fn, X, y, backend="cpu")
    lin = [mod for mod in model if isinstance(mod, nn.Linear)]
    params, grads = {}, {}
    for k, mod in enumerate(lin, 1):
        params[f"W{k}"] = mod.weight.detach().numpy().T.copy()
        params[f"b{k}"] = mod.bias.detach().numpy().copy()
        grads[f"dW{k}"] = mod.weight.grad.numpy().T.copy()
        grads[f"db{k}"] = mod.bias.grad.numpy().copy()
    spec = {"input_shape": [5], "loss": "softmax_cross_entropy", "layers": [
        {"type": "dense", "units": 7, "activation": "tanh"},
        {"type": "dense", "units": 4, "activation": "leaky_relu:0.1"},
        {"type": "dense", "units": 3, "activation": "softmax"}]}
    course = gradcheck.check(params, X.numpy(), y.numpy(), grads, model=spec, backend="cpu")
    assert course.verdict == via_torch.verdict == "pass"
    for a, b in zip(course.tensors, via_torch.tensors):
        # Same numbers in another summation order (see test_layouts).
        assert abs(a.difference - b.difference) <= 1e-9 * a.difference + 1e-13
