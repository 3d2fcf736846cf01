"""Check a PyTorch model's gradients — autograd's, or your custom ``autograd.Function``'s —
without writing any export code:

    import gradcheck.torch
    r = gradcheck.torch.check(model, torch.nn.CrossEntropyLoss(), X, y)

``model`` is an ``nn.Sequential`` (nested ones are flattened) of Linear (with or without
bias), Conv2d, MaxPool2d, AvgPool2d, Flatten, Dropout (in eval mode, or p = 0) and
element-wise activations (ReLU, LeakyReLU, Sigmoid, Tanh, Identity) after a Linear or
Conv2d. ``loss_fn`` is CrossEntropyLoss (class indices or probabilities), BCELoss (after a
Sigmoid), BCEWithLogitsLoss or MSELoss, with any ``reduction``. The model is converted
exactly (float64, PyTorch's layout); the gradients are the parameters' ``.grad`` after
your own ``backward()`` (``grads=None`` runs forward and backward once here), rescaled
from the loss's reduction to gradcheck's per-sample mean. Tensors are named as
``model.named_parameters()`` names them ("0.weight", "3.bias"). torch is imported here
only: it is not a dependency of the package.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from . import Report
from . import check as _check

__all__ = ["check", "convert"]


def _activation(mod) -> Optional[str]:
    import torch.nn as nn

    if isinstance(mod, nn.ReLU):
        return "relu"
    if isinstance(mod, nn.LeakyReLU):
        return f"leaky_relu:{mod.negative_slope!r}"
    if isinstance(mod, nn.Sigmoid):
        return "sigmoid"
    if isinstance(mod, nn.Tanh):
        return "tanh"
    if isinstance(mod, nn.Identity):
        return "identity"
    return None


def _pair(v, what, name):
    if isinstance(v, int):
        return v, v
    if isinstance(v, tuple) and len(v) == 2:
        return v
    raise ValueError(f"{name}: {what} = {v!r} is not supported")


def _modules(model):
    import torch.nn as nn

    if isinstance(model, nn.Sequential):
        for name, mod in model.named_children():
            for sub, m in _modules(mod):
                yield (f"{name}.{sub}" if sub else name), m
    else:
        yield "", model


def convert(model, loss_fn, input_shape) -> tuple[dict, dict, float]:
    """The gradcheck model spec, the parameters (float64 numpy, by their module names)
    and the factor c with torch's loss = c × gradcheck's cost."""
    import torch.nn as nn

    layers: list[dict] = []
    params: dict[str, np.ndarray] = {}
    last_param_layer: Optional[dict] = None
    for name, mod in _modules(model):
        where = f"module {name or '(root)'} ({type(mod).__name__})"
        act = _activation(mod)
        if act is not None:
            if last_param_layer is None or last_param_layer.get("activation", "identity") != "identity":
                if act == "identity":
                    continue
                raise ValueError(f"{where}: an activation must follow a Linear or Conv2d directly")
            last_param_layer["activation"] = act
            continue
        last_param_layer = None
        if isinstance(mod, nn.Linear):
            spec = {"type": "dense", "units": mod.out_features}
            names = [f"{name}.weight", f"{name}.bias"]
            if mod.bias is None:
                spec["bias"] = False
            spec["names"] = names
            params[names[0]] = mod.weight.detach().double().cpu().numpy().copy()
            if mod.bias is not None:
                params[names[1]] = mod.bias.detach().double().cpu().numpy().copy()
            layers.append(spec)
            last_param_layer = spec
        elif isinstance(mod, nn.Conv2d):
            if mod.groups != 1 or _pair(mod.dilation, "dilation", where) != (1, 1) or mod.padding_mode != "zeros":
                raise ValueError(f"{where}: groups, dilation and padding modes other than zeros are not supported")
            if mod.bias is None:
                raise ValueError(f"{where}: a Conv2d without bias is not supported")
            sh, sw = _pair(mod.stride, "stride", where)
            if sh != sw:
                raise ValueError(f"{where}: stride {mod.stride} must be the same in both directions")
            pad = mod.padding
            if not isinstance(pad, str):
                ph, pw = _pair(pad, "padding", where)
                if ph != pw:
                    raise ValueError(f"{where}: padding {pad} must be the same in both directions")
                pad = ph
            kh, kw = _pair(mod.kernel_size, "kernel_size", where)
            names = [f"{name}.weight", f"{name}.bias"]
            spec = {"type": "conv2d", "filters": mod.out_channels, "kernel": [kh, kw], "stride": sh,
                    "padding": pad, "names": names}
            params[names[0]] = mod.weight.detach().double().cpu().numpy().copy()
            params[names[1]] = mod.bias.detach().double().cpu().numpy().copy()
            layers.append(spec)
            last_param_layer = spec
        elif isinstance(mod, (nn.MaxPool2d, nn.AvgPool2d)):
            if _pair(mod.padding, "padding", where) != (0, 0) or mod.ceil_mode:
                raise ValueError(f"{where}: padding and ceil_mode are not supported")
            if isinstance(mod, nn.MaxPool2d) and _pair(mod.dilation, "dilation", where) != (1, 1):
                raise ValueError(f"{where}: dilation is not supported")
            kh, kw = _pair(mod.kernel_size, "kernel_size", where)
            sh, sw = _pair(mod.stride if mod.stride is not None else mod.kernel_size, "stride", where)
            if sh != sw:
                raise ValueError(f"{where}: stride must be the same in both directions")
            kind = "max_pool" if isinstance(mod, nn.MaxPool2d) else "avg_pool"
            layers.append({"type": kind, "size": [kh, kw], "stride": sh})
        elif isinstance(mod, nn.Flatten):
            if mod.start_dim != 1 or mod.end_dim != -1:
                raise ValueError(f"{where}: only Flatten(start_dim=1, end_dim=-1)")
            layers.append({"type": "flatten"})
        elif isinstance(mod, nn.Dropout):
            if mod.training and mod.p > 0:
                raise ValueError(
                    f"{where}: dropout in training mode draws a new mask at every forward pass; call model.eval() (or check with p = 0)"
                )
        else:
            raise ValueError(f"{where} is not supported (Linear, Conv2d, MaxPool2d, AvgPool2d, Flatten, Dropout and ReLU/LeakyReLU/Sigmoid/Tanh are)")
    if not layers or layers[-1]["type"] != "dense":
        raise ValueError("the model must end with a Linear layer, optionally followed by its activation")
    out = layers[-1].get("activation", "identity")
    red = getattr(loss_fn, "reduction", None)
    if red not in ("mean", "sum"):
        raise ValueError(f"loss reduction {red!r}: only 'mean' and 'sum' give one number to differentiate")
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        if out != "identity":
            raise ValueError("CrossEntropyLoss takes logits: the model must not end with an activation")
        if loss_fn.weight is not None or loss_fn.label_smoothing != 0:
            raise ValueError("CrossEntropyLoss with weight or label_smoothing is not supported")
        layers[-1]["activation"] = "softmax"
        loss, factor = "softmax_cross_entropy", 1.0
    elif isinstance(loss_fn, nn.BCEWithLogitsLoss):
        if out != "identity":
            raise ValueError("BCEWithLogitsLoss takes logits: the model must not end with an activation")
        if loss_fn.weight is not None or loss_fn.pos_weight is not None:
            raise ValueError("BCEWithLogitsLoss with weight or pos_weight is not supported")
        layers[-1]["activation"] = "sigmoid"
        loss, factor = "binary_cross_entropy", 1.0
    elif isinstance(loss_fn, nn.BCELoss):
        if out != "sigmoid":
            raise ValueError("BCELoss takes probabilities: the model must end with a Sigmoid")
        if loss_fn.weight is not None:
            raise ValueError("BCELoss with weight is not supported")
        loss, factor = "binary_cross_entropy", 1.0
    elif isinstance(loss_fn, nn.MSELoss):
        loss, factor = "mse", 2.0  # gradcheck's MSE is ½·Σ(a − y)²/m
    else:
        raise ValueError(f"loss {type(loss_fn).__name__} is not supported (CrossEntropyLoss, BCELoss, BCEWithLogitsLoss, MSELoss are)")
    spec = {"input_shape": list(input_shape), "layout": "nchw", "layers": layers, "loss": loss}
    return spec, params, factor


def check(
    model,
    loss_fn,
    X,
    y,
    grads: Optional[Mapping[str, Any]] = None,
    **options,
) -> Report:
    """Checks the gradients of ``loss_fn(model(X), y)`` w.r.t. the model's parameters.

    ``grads`` maps ``model.named_parameters()`` names to gradients; ``None`` takes each
    parameter's ``.grad`` when all are set (after your own ``loss.backward()``), or runs
    forward and backward here. Other keyword arguments are :func:`gradcheck.check`'s
    (``epsilon=``, ``backend=``, …)."""
    import torch

    Xn = X.detach().double().cpu().numpy() if isinstance(X, torch.Tensor) else np.asarray(X, dtype=np.float64)
    yt = y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
    m = Xn.shape[0]
    spec, params, factor = convert(model, loss_fn, Xn.shape[1:])
    named = dict(model.named_parameters())
    if grads is None:
        if all(p.grad is not None for p in named.values()):
            grads = {k: p.grad for k, p in named.items()}
        else:
            model.zero_grad()
            out = model(torch.as_tensor(Xn, dtype=next(iter(named.values())).dtype))
            loss_fn(out, yt).backward()
            grads = {k: p.grad for k, p in named.items()}
    missing = [k for k in params if k not in grads or grads[k] is None]
    if missing:
        raise ValueError(f"no gradient for {', '.join(missing)} (run loss.backward() first, or pass grads=)")
    # torch's loss = factor × scale × gradcheck's cost, so its gradient too.
    n_out = spec["layers"][-1]["units"]
    if loss_fn.reduction == "sum":
        scale = factor * m
    elif spec["loss"] == "softmax_cross_entropy":
        scale = 1.0  # CrossEntropyLoss's mean is over the m samples
    else:
        scale = factor / n_out  # mean over all m·n_out outputs
    g = {}
    for k in params:
        v = grads[k]
        v = v.detach().double().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v, dtype=np.float64)
        g["d" + k] = v / scale
    if spec["loss"] == "softmax_cross_entropy" and yt.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        Y = yt.cpu().numpy()
        if (Y < 0).any():
            raise ValueError("CrossEntropyLoss targets hold a negative class index (ignore_index is not supported)")
    else:
        Y = yt.detach().double().cpu().numpy()
        if Y.ndim == 1:
            Y = Y.reshape(m, -1)
    return _check(params, Xn, Y, g, model=spec, **options)
