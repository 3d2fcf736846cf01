"""The numpy peers gradcheck is measured against, written here so that the benchmark runs
from a clone with nothing but numpy.

    python numpy_peer.py case  --layers 784,64,32,1 --m 64 --seed 0 --out DIR
    python numpy_peer.py loop     DIR      # the course notebook's loop: 2N full forward passes
    python numpy_peer.py prefix   DIR      # the strongest vectorised peer (below)

Network LINEAR→RELU→…→LINEAR→SIGMOID, binary cross-entropy (the notebook's), parameters
W1, b1, … (W_l is n_l × n_{l−1}, b_l is n_l × 1), X n0 × m, Y 1 × m, ε = 1e-7.

`prefix` is structure-aware: a step on W_l[r, c] or b_l[r] changes only row r of Z_l (by
±ε·A_{l−1}[c, :] or ±ε), so the activations before layer l are reused, layer l + 1 gets a
rank-1 update, and only the layers after it are recomputed — for a chunk of perturbations
at once (one matrix product per layer with shared weights). The same J(θ ± ε·e_i) as the
loop up to rounding.

Each bench prints one JSON line: seconds for all N central differences (loading excluded)
and the notebook's difference against the case's gradients.
"""
import argparse
import json
import pathlib
import time

import numpy as np


def forward(params, X, L):
    A, cache = X, [X]
    for l in range(1, L + 1):
        Z = params[f"W{l}"] @ A + params[f"b{l}"]
        A = 1 / (1 + np.exp(-Z)) if l == L else np.maximum(0, Z)
        cache.append(A)
    return A, cache


def cost(A, Y):
    m = Y.shape[1]
    return float(np.sum(-np.log(A) * Y - np.log(1 - A) * (1 - Y)) / m)


def backprop(params, X, Y, L):
    m = X.shape[1]
    _, cache = forward(params, X, L)
    grads, dZ = {}, cache[L] - Y
    for l in range(L, 0, -1):
        grads[f"dW{l}"] = dZ @ cache[l - 1].T / m
        grads[f"db{l}"] = dZ.sum(axis=1, keepdims=True) / m
        if l > 1:
            dZ = (params[f"W{l}"].T @ dZ) * (cache[l - 1] > 0)
    return grads


def make_case(layers, m, seed, out):
    rng = np.random.default_rng(seed)
    params = {}
    for l in range(1, len(layers)):
        params[f"W{l}"] = rng.standard_normal((layers[l], layers[l - 1])) * np.sqrt(2 / layers[l - 1])
        params[f"b{l}"] = rng.standard_normal((layers[l], 1)) * 0.1
    X = rng.standard_normal((layers[0], m))
    Y = (rng.random((1, m)) < 0.5).astype(float)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "params.npz", **params)
    np.savez(out / "data.npz", X=X, Y=Y)
    np.savez(out / "grads.npz", **backprop(params, X, Y, len(layers) - 1))
    n = sum(v.size for v in params.values())
    (out / "meta.json").write_text(json.dumps({"layers": layers, "m": m, "n_params": n}))


def load(case):
    case = pathlib.Path(case)
    p, d, g = (dict(np.load(case / f)) for f in ("params.npz", "data.npz", "grads.npz"))
    L = len(p) // 2
    names = [f"{k}{l}" for l in range(1, L + 1) for k in "Wb"]
    return p, d["X"], d["Y"], g, L, names


def flat(d, names, prefix=""):
    return np.concatenate([d[prefix + n].ravel() for n in names])


def loop(case, eps=1e-7):
    p, X, Y, g, L, names = load(case)
    t0 = time.perf_counter()
    approx = []
    for n in names:
        for i in range(p[n].size):
            v = p[n].flat[i]
            p[n].flat[i] = v + eps
            jp = cost(forward(p, X, L)[0], Y)
            p[n].flat[i] = v - eps
            jm = cost(forward(p, X, L)[0], Y)
            p[n].flat[i] = v
            approx.append((jp - jm) / (2 * eps))
    return time.perf_counter() - t0, np.array(approx), flat(g, names, "d")


def prefix(case, eps=1e-7, chunk=256):
    p, X, Y, g, L, names = load(case)
    t0 = time.perf_counter()
    m = X.shape[1]
    _, cache = forward(p, X, L)
    Zs = [None] + [p[f"W{l}"] @ cache[l - 1] + p[f"b{l}"] for l in range(1, L + 1)]

    def act(Z, q):
        return 1 / (1 + np.exp(-Z)) if q == L else np.maximum(0, Z)

    def cost_of(AL):
        return np.sum(-np.log(AL[:, 0, :]) * Y - np.log(1 - AL[:, 0, :]) * (1 - Y), axis=1) / m

    approx = []
    for l in range(1, L + 1):
        rows, cols = p[f"W{l}"].shape
        # Each step: (row r of Z_l, its change ±ε·A_{l−1}[c, :] or ±ε).
        r_all = np.concatenate([np.repeat(np.arange(rows), cols), np.arange(rows)])
        c_all = np.concatenate([np.tile(np.arange(cols), rows), np.full(rows, -1)])
        for s in range(0, r_all.size, chunk):
            r, c = r_all[s:s + chunk], c_all[s:s + chunk]
            x = np.where(c[:, None] >= 0, cache[l - 1][np.maximum(c, 0)], 1.0)  # (K, m)
            r2 = np.concatenate([r, r])
            d = np.concatenate([eps * x, -eps * x])  # (2K, m)
            zrow = Zs[l][r2] + d  # the changed row of Z_l
            if l == L:
                Z = np.repeat(Zs[L][None], r2.size, axis=0)
                Z[np.arange(r2.size), r2] = zrow
                J = cost_of(act(Z, L))
            else:
                # Layer l + 1 sees a rank-1 change: W_{l+1}[:, r] ⊗ ΔA_l[r, :].
                dA = act(zrow, l) - cache[l][r2]
                Z = Zs[l + 1][None] + p[f"W{l + 1}"][:, r2].T[:, :, None] * dA[:, None, :]
                A = act(Z, l + 1)
                for q in range(l + 2, L + 1):
                    A = act(np.matmul(p[f"W{q}"], A) + p[f"b{q}"], q)
                J = cost_of(A)
            K = r.size
            approx.extend((J[:K] - J[K:]) / (2 * eps))
    return time.perf_counter() - t0, np.array(approx), flat(g, names, "d")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["case", "loop", "prefix"])
    ap.add_argument("dir", nargs="?")
    ap.add_argument("--layers")
    ap.add_argument("--m", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.what == "case":
        make_case([int(x) for x in a.layers.split(",")], a.m, a.seed, a.out)
        return
    seconds, approx, grad = (loop if a.what == "loop" else prefix)(a.dir)
    diff = np.linalg.norm(grad - approx) / (np.linalg.norm(grad) + np.linalg.norm(approx))
    print(json.dumps({"seconds": seconds, "difference": float(diff)}))


if __name__ == "__main__":
    main()
