"""Peers for the conv example (fixtures/conv: the net of `--example conv-fixed`), timed in
one process each and printed as JSON:

    conv_peer.py numpy  FIXTURES   the course-style peer, vectorised: J(θ ± ε·e_i) for every
                                   i by a full numpy forward pass (sliding windows + einsum)
    conv_peer.py torch  FIXTURES   torch.autograd.gradcheck (full mode, float64) of the same
                                   nn.Sequential + CrossEntropyLoss (needs torch)
"""
import json
import os
import sys
import time

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

EPS = 1e-7


def load(d):
    spec = json.load(open(os.path.join(d, "conv_model.json")))
    with np.load(os.path.join(d, "conv_params.npz")) as z:
        params = {k: z[k] for k in z.files}
    with np.load(os.path.join(d, "conv_data.npz")) as z:
        X, Y = z["X"], z["Y"]
    return spec, params, X, Y


def same_pad(n, f):
    total = f - 1
    return total // 2, total - total // 2


def cost(spec, p, X, Y):
    A, k = X, 0
    for L in spec["layers"]:
        if L["type"] == "conv2d":
            k += 1
            W, b = p[f"W{k}"], p[f"b{k}"]
            f = W.shape[0]
            t, u = same_pad(A.shape[1], f)
            Ap = np.pad(A, ((0, 0), (t, u), (t, u), (0, 0)))
            win = sliding_window_view(Ap, (f, f), axis=(1, 2))  # m, H, W, C, f, f
            A = np.einsum("mhwcij,ijcd->mhwd", win, W, optimize=True) + b.reshape(1, 1, 1, -1)
            A = np.maximum(A, 0)
        elif L["type"] == "max_pool":
            s = L["size"]
            m, H, Wd, C = A.shape
            A = A[:, : H // s * s, : Wd // s * s].reshape(m, H // s, s, Wd // s, s, C).max(axis=(2, 4))
        elif L["type"] == "flatten":
            A = A.reshape(A.shape[0], -1)
        else:
            k += 1
            Z = A @ p[f"W{k}"] + p[f"b{k}"]
            Z = Z - Z.max(axis=1, keepdims=True)
            lse = np.log(np.exp(Z).sum(axis=1))
            return np.sum(Y * (lse[:, None] - Z)) / X.shape[0]


def numpy_peer(d):
    spec, params, X, Y = load(d)
    t0 = time.perf_counter()
    n = 0
    for key, arr in params.items():
        flat = arr.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + EPS
            jp = cost(spec, params, X, Y)
            flat[i] = old - EPS
            jm = cost(spec, params, X, Y)
            flat[i] = old
            n += 1
            _ = (jp - jm) / (2 * EPS)
    return {"seconds": time.perf_counter() - t0, "n_params": n}


def torch_peer(d):
    import torch

    spec, params, X, Y = load(d)
    torch.set_num_threads(os.cpu_count())
    seq = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 4, padding="same"), torch.nn.ReLU(), torch.nn.MaxPool2d(4),
        torch.nn.Conv2d(8, 16, 2, padding="same"), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(64, 6),
    ).double()
    with torch.no_grad():
        seq[0].weight.copy_(torch.from_numpy(params["W1"].transpose(3, 2, 0, 1).copy()))
        seq[0].bias.copy_(torch.from_numpy(params["b1"].reshape(-1)))
        seq[3].weight.copy_(torch.from_numpy(params["W2"].transpose(3, 2, 0, 1).copy()))
        seq[3].bias.copy_(torch.from_numpy(params["b2"].reshape(-1)))
        # Course flatten order (h, w, c) → PyTorch's (c, h, w).
        W3 = params["W3"].reshape(2, 2, 16, 6).transpose(2, 0, 1, 3).reshape(64, 6)
        seq[7].weight.copy_(torch.from_numpy(W3.T.copy()))
        seq[7].bias.copy_(torch.from_numpy(params["b3"]))
    x = torch.from_numpy(X.transpose(0, 3, 1, 2).copy())
    y = torch.from_numpy(Y.argmax(axis=1))
    names = [n for n, _ in seq.named_parameters()]
    leaves = [p.detach().clone().requires_grad_(True) for p in seq.parameters()]

    def f(*ps):
        out = torch.func.functional_call(seq, dict(zip(names, ps)), (x,))
        return torch.nn.functional.cross_entropy(out, y)

    t0 = time.perf_counter()
    ok = torch.autograd.gradcheck(f, tuple(leaves), eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=False)
    return {"seconds": time.perf_counter() - t0, "passed": bool(ok), "torch": torch.__version__,
            "n_params": sum(p.numel() for p in leaves)}


if __name__ == "__main__":
    which, d = sys.argv[1], sys.argv[2]
    print(json.dumps(numpy_peer(d) if which == "numpy" else torch_peer(d)))
