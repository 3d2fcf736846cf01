"""An independent numpy model of the conv/pool networks gradcheck checks, written from the
definitions (the course's "convolution model, step by step" loops), not from the Rust code:
the oracle of the conv tests. Course layout: X (m, H, W, C), W (f, f, C_prev, C),
b (1, 1, 1, C), dense W (n_in, n_out), b (n_out,), Y (m, classes).

A network is a list of layers (dicts as in gradcheck's JSON spec); parameters are a dict
W1, b1, W2, b2, ... in the order of the layers that have them.
"""

import numpy as np

LEAKY = 0.01  # gradcheck's "leaky_relu" slope (write "leaky_relu:0.2" for another)


def _pads(n, f, stride, padding):
    if padding == "same":
        out = -(-n // stride)
        total = max((out - 1) * stride + f - n, 0)
        return total // 2, total - total // 2, out
    p = 0 if padding == "valid" else int(padding)
    return p, p, (n + 2 * p - f) // stride + 1


def _act(name, z):
    if name == "relu":
        return np.maximum(z, 0)
    if name == "sigmoid":
        return 1 / (1 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    if name == "leaky_relu":
        return np.where(z > 0, z, LEAKY * z)
    return z


def _act_grad(name, z):
    if name == "relu":
        return (z > 0).astype(float)
    if name == "sigmoid":
        s = 1 / (1 + np.exp(-z))
        return s * (1 - s)
    if name == "tanh":
        return 1 - np.tanh(z) ** 2
    if name == "leaky_relu":
        return np.where(z > 0, 1.0, LEAKY)
    return np.ones_like(z)


def conv_forward(A, W, b, stride, padding):
    m, H, Wd, C = A.shape
    f1, f2, _, F = W.shape
    t, bt, Hout = _pads(H, f1, stride, padding)
    l, r, Wout = _pads(Wd, f2, stride, padding)
    Ap = np.pad(A, ((0, 0), (t, bt), (l, r), (0, 0)))
    Z = np.zeros((m, Hout, Wout, F))
    for i in range(m):
        for h in range(Hout):
            for w in range(Wout):
                patch = Ap[i, h * stride:h * stride + f1, w * stride:w * stride + f2, :]
                for c in range(F):
                    Z[i, h, w, c] = np.sum(patch * W[..., c]) + b[0, 0, 0, c]
    return Z, (A, W, stride, (t, bt, l, r))


def conv_backward(dZ, cache, db_one_position=False):
    A, W, stride, (t, bt, l, r) = cache
    m, H, Wd, C = A.shape
    f1, f2, _, F = W.shape
    _, Hout, Wout, _ = dZ.shape
    Ap = np.pad(A, ((0, 0), (t, bt), (l, r), (0, 0)))
    dAp = np.zeros_like(Ap)
    dW = np.zeros_like(W)
    db = np.zeros((1, 1, 1, F))
    for i in range(m):
        for h in range(Hout):
            for w in range(Wout):
                hs, ws = h * stride, w * stride
                for c in range(F):
                    dAp[i, hs:hs + f1, ws:ws + f2, :] += W[..., c] * dZ[i, h, w, c]
                    dW[..., c] += Ap[i, hs:hs + f1, ws:ws + f2, :] * dZ[i, h, w, c]
                    if not db_one_position:
                        db[..., c] += dZ[i, h, w, c]
        if db_one_position:  # the slip: one position's dZ per sample, not the sum
            db[0, 0, 0, :] += dZ[i, Hout - 1, Wout - 1, :]
    dA = dAp[:, t:t + H, l:l + Wd, :]
    return dA, dW, db


def pool_forward(A, size, stride, mode):
    m, H, Wd, C = A.shape
    f1, f2 = (size, size) if np.isscalar(size) else size
    Hout, Wout = (H - f1) // stride + 1, (Wd - f2) // stride + 1
    Z = np.zeros((m, Hout, Wout, C))
    for i in range(m):
        for h in range(Hout):
            for w in range(Wout):
                win = A[i, h * stride:h * stride + f1, w * stride:w * stride + f2, :]
                Z[i, h, w, :] = win.max(axis=(0, 1)) if mode == "max" else win.mean(axis=(0, 1))
    return Z, (A, f1, f2, stride, mode)


def pool_backward(dZ, cache, tie="first"):
    A, f1, f2, stride, mode = cache
    dA = np.zeros_like(A)
    m, Hout, Wout, C = dZ.shape
    for i in range(m):
        for h in range(Hout):
            for w in range(Wout):
                hs, ws = h * stride, w * stride
                for c in range(C):
                    if mode == "max" and tie == "all":  # the slip: to every entry
                        dA[i, hs:hs + f1, ws:ws + f2, c] += dZ[i, h, w, c]
                    elif mode == "max":
                        win = A[i, hs:hs + f1, ws:ws + f2, c].ravel()
                        k = int(np.argmax(win)) if tie == "first" else len(win) - 1 - int(np.argmax(win[::-1]))
                        dA[i, hs + k // f2, ws + k % f2, c] += dZ[i, h, w, c]
                    else:
                        dA[i, hs:hs + f1, ws:ws + f2, c] += dZ[i, h, w, c] / (f1 * f2)
    return dA


def _loss_and_grad(loss, out, Z, Y):
    """Per-sample losses summed / m and dJ/dZ (samples first)."""
    m = Z.shape[0]
    if loss == "softmax_cross_entropy":
        e = np.exp(Z - Z.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        lse = np.log(e.sum(axis=1)) + Z.max(axis=1)
        J = np.sum(Y * (lse[:, None] - Z)) / m
        return J, (p * Y.sum(axis=1, keepdims=True) - Y) / m
    if loss == "binary_cross_entropy":
        a = 1 / (1 + np.exp(-Z))
        J = np.sum(np.logaddexp(0, -Z) * Y + np.logaddexp(0, Z) * (1 - Y)) / m
        return J, (a - Y) / m
    a = _act(out, Z)
    return 0.5 * np.sum((a - Y) ** 2) / m, (a - Y) * _act_grad(out, Z) / m


def forward_backward(layers, loss, params, X, Y, l2=0.0, tie="first", slips=None):
    """J and the gradients dW1, db1, ... of the network (course layout). ``slips`` maps a
    layer's index in ``layers`` to a classic mistake in its backward pass:
    "db_one_position" (conv) or "max_to_all" (max pool)."""
    slips = slips or {}
    A, caches, k = X, [], 0
    for i, L in enumerate(layers):
        last = i == len(layers) - 1
        if L["type"] == "conv2d":
            k += 1
            Z, cache = conv_forward(A, params[f"W{k}"], params[f"b{k}"], L.get("stride", 1), L.get("padding", 0))
            act = L.get("activation", "identity")
            caches.append(("conv", i, cache, Z, act, k))
            A = Z if last else _act(act, Z)
        elif L["type"] in ("max_pool", "avg_pool"):
            s = L.get("stride", L["size"] if np.isscalar(L["size"]) else L["size"][0])
            A, cache = pool_forward(A, L["size"], s, "max" if L["type"] == "max_pool" else "avg")
            caches.append(("pool", i, cache, None, None, 0))
        elif L["type"] == "flatten":
            caches.append(("flatten", i, A.shape, None, None, 0))
            A = A.reshape(A.shape[0], -1)
        else:
            k += 1
            Z = A @ params[f"W{k}"] + params[f"b{k}"].reshape(1, -1)
            act = L.get("activation", "identity")
            caches.append(("dense", i, A, Z, act, k))
            A = Z if last else _act(act, Z)
    out = layers[-1].get("activation", "identity")
    J, dA = _loss_and_grad(loss, out, A, Y)
    m = X.shape[0]
    J += l2 / (2 * m) * sum(np.sum(params[f"W{j}"] ** 2) for j in range(1, k + 1))
    grads = {}
    for i in range(len(caches) - 1, -1, -1):
        kind, at, cache, Z, act, j = caches[i]
        last = i == len(caches) - 1
        if kind in ("conv", "dense") and not last:
            dA = dA * _act_grad(act, Z)
        if kind == "conv":
            dA, dW, db = conv_backward(dA, cache, slips.get(at) == "db_one_position")
            grads[f"dW{j}"], grads[f"db{j}"] = dW + l2 / m * params[f"W{j}"], db
        elif kind == "dense":
            grads[f"dW{j}"] = cache.T @ dA + l2 / m * params[f"W{j}"]
            grads[f"db{j}"] = dA.sum(axis=0)
            dA = dA @ params[f"W{j}"].T
        elif kind == "pool":
            dA = pool_backward(dA, cache, "all" if slips.get(at) == "max_to_all" else tie)
        else:
            dA = dA.reshape(cache)
    return J, grads


def random_params(layers, input_shape, rng):
    """He-style random parameters for the network (course layout)."""
    H, Wd, C = input_shape
    params, k = {}, 0
    for L in layers:
        if L["type"] == "conv2d":
            k += 1
            f = L["kernel"]
            f1, f2 = (f, f) if np.isscalar(f) else f
            F, s = L["filters"], L.get("stride", 1)
            params[f"W{k}"] = rng.standard_normal((f1, f2, C, F)) * np.sqrt(2 / (f1 * f2 * C))
            params[f"b{k}"] = rng.standard_normal((1, 1, 1, F)) * 0.1
            H, Wd = _pads(H, f1, s, L.get("padding", 0))[2], _pads(Wd, f2, s, L.get("padding", 0))[2]
            C = F
        elif L["type"] in ("max_pool", "avg_pool"):
            f = L["size"]
            f1, f2 = (f, f) if np.isscalar(f) else f
            s = L.get("stride", f1)
            H, Wd = (H - f1) // s + 1, (Wd - f2) // s + 1
        elif L["type"] == "flatten":
            H, Wd, C = 1, 1, H * Wd * C
        else:
            k += 1
            params[f"W{k}"] = rng.standard_normal((C, L["units"])) * np.sqrt(2 / C)
            params[f"b{k}"] = rng.standard_normal(L["units"]) * 0.1
            C = L["units"]
    return params
