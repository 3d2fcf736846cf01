"""gradcheck from Python: prove that a hand-written backprop is right.

    import gradcheck
    r = gradcheck.check(parameters, X, Y, gradients)
    r.verdict, r.difference, r.tensors      # and, in Jupyter, a table

The dicts are the course notebook's: ``parameters`` holds W1, b1, … (W_l is n_l × n_{l-1},
b_l is n_l × 1), ``gradients`` holds dW1, db1, … (extra keys such as dZ3 or dA2 are
ignored), X is n0 × m and Y is nL × m, one sample per column. The check itself is the Rust
library's (the same as the ``gradcheck`` command line): every central difference, each
with a bound on its own error, and a verdict that is pass, fail or inconclusive.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np


def _quiet_wsi() -> None:
    """Mesa's Vulkan WSI prints "XDG_RUNTIME_DIR is invalid or not set" on every adapter
    probe of a headless machine; gradcheck never opens a window: point the variable (only
    when unset) at a private directory, as the command line does."""
    import os
    import tempfile

    if "XDG_RUNTIME_DIR" in os.environ:
        return
    d = os.path.join(tempfile.gettempdir(), f"gradcheck-runtime-{os.getuid() if hasattr(os, 'getuid') else 0}")
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = d
    except OSError:
        pass


_quiet_wsi()

from . import _gradcheck  # noqa: E402

__all__ = ["check", "gradient_check_n", "Report", "Tensor", "__version__"]
__version__ = _gradcheck.version()

# The notebook's parameter and gradient names.
_PARAM = re.compile(r"^[Wb][1-9][0-9]*$")
_GRAD = re.compile(r"^d[Wb][1-9][0-9]*$")


def _wire(name: str, value: Any, label: str):
    """(name, shape, float64 bytes, was float32) for the Rust side: any memory order and
    float dtype, one contiguous float64 copy."""
    try:
        arr = np.asarray(value)
    except Exception as e:  # noqa: BLE001 - the message is what matters
        raise ValueError(f"{label}: {name} is not an array ({e})") from None
    if arr.dtype.kind not in "fiub" or arr.dtype == np.float16:
        raise ValueError(f"{label}: {name} has dtype {arr.dtype}; expected float64 or float32")
    was_f32 = arr.dtype == np.float32
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    return (name, list(arr.shape), arr.tobytes(), bool(was_f32))


def _arrays(d: Mapping[str, Any], label: str, keep) -> list:
    if not isinstance(d, Mapping):
        raise ValueError(f"{label}: expected a dict of arrays, got {type(d).__name__}")
    return [_wire(k, v, label) for k, v in d.items() if keep(k)]


@dataclass
class Tensor:
    """One tensor's result."""

    name: str
    shape: tuple
    difference: float
    verdict: str
    passed: bool
    resolution: float
    diagnosis: Optional[str]
    reason: Optional[str]
    worst: list = field(default_factory=list)


class Report:
    """The result of a check: ``verdict`` ("pass", "fail", "inconclusive"), ``passed``,
    ``difference`` (the notebook's number), ``tensors``; ``to_dict()`` / ``to_json()`` give
    the command line's JSON document."""

    def __init__(self, document: str, text: str):
        self._json = document
        self._text = text
        self._dict = json.loads(document)
        d = self._dict
        self.verdict: str = d["verdict"]
        self.passed: bool = d["passed"]
        # JSON has no NaN: a non-finite difference comes back as null.
        self.difference: float = _number(d["difference"])
        self.epsilon: float = d["epsilon"]
        self.backend: str = d["backend"]
        self.precision: str = d["precision"]
        self.reasons: list = d["reasons"]
        self.notes: list = d["notes"]
        # The model judged against, when it was guessed from the weight shapes.
        self.model_guessed: Optional[str] = d.get("model_guessed")
        self.tensors = [
            Tensor(
                name=t["name"],
                shape=tuple(t["shape"]),
                difference=_number(t["difference"]),
                verdict=t["verdict"],
                passed=t["passed"],
                resolution=_number(t["resolution"]),
                diagnosis=(t["diagnosis"] or {}).get("message"),
                reason=t["reason"],
                worst=t["worst"],
            )
            for t in d["tensors"]
        ]

    def to_dict(self) -> dict:
        """The report as the command line's ``--json`` document (a fresh copy)."""
        return json.loads(self._json)

    def to_json(self) -> str:
        """The command line's ``--json`` text, unchanged."""
        return self._json

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"<gradcheck.Report {self.verdict} difference={self.difference!r}>"

    def _repr_html_(self) -> str:
        # Pass, fail and inconclusive each in their own colour and class; the notes and
        # reasons as the text report gives them; every column headed.
        color = {"pass": "#1a7f37", "fail": "#cf222e", "inconclusive": "#9a6700"}
        shade = {"fail": "#ffebe9", "inconclusive": "#fff8c5"}
        rows = []
        for t in self.tensors:
            bg = shade.get(t.verdict)
            style = f' style="background:{bg}"' if bg else ""
            note = html.escape(t.diagnosis or t.reason or "")
            rows.append(
                f'<tr class="gradcheck-{t.verdict}"{style}><td>{html.escape(t.name)}</td>'
                f"<td>{'×'.join(map(str, t.shape))}</td>"
                f"<td>{t.difference:.3e}</td><td>{t.resolution:.1e}</td>"
                f'<td style="color:{color.get(t.verdict, "black")}"><b>{t.verdict}</b></td>'
                f"<td>{note}</td></tr>"
            )
        reasons = "".join(f"<li>{html.escape(r)}</li>" for r in self.reasons)
        notes = "".join(f"<li>note: {html.escape(n)}</li>" for n in self.notes)
        resolution = (
            "resolution: the relative error this check can see in the tensor "
            "(‖bounds‖ / ‖gradient‖); a pass needs it below 0.25 %, so that a 1 % error "
            "would have shown"
        )
        guess = (
            f'<p style="color:#9a6700"><b>Model guessed</b> from the weight shapes: '
            f"{html.escape(self.model_guessed)} (give yours with <code>model=</code>)</p>"
            if self.model_guessed
            else ""
        )
        return (
            f'<div class="gradcheck gradcheck-{self.verdict}">{guess}'
            f'<p><b style="color:{color.get(self.verdict, "black")}">'
            f"{self.verdict.upper()}</b> — difference {self.difference!r} "
            f"(ε = {self.epsilon:g}, {html.escape(self.backend)}, {html.escape(self.precision)})</p>"
            f"{f'<ul>{notes}</ul>' if notes else ''}"
            f"{f'<ul>{reasons}</ul>' if reasons else ''}"
            "<table><thead><tr><th>tensor</th><th>shape</th><th>difference</th>"
            f'<th title="{html.escape(resolution)}">resolution</th><th>verdict</th>'
            "<th>diagnosis / reason</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
            f"<p><small>{html.escape(resolution)}.</small></p></div>"
        )


def _number(x) -> float:
    return float("nan") if x is None else float(x)


def _check_option(name: str, value, kinds):
    """A wrong type of an option raises naming it (a string ε or a float stencil used to
    run silently with a default); its value is the library's to judge (ValueError with the
    command line's message)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise TypeError(f"{name} must be {' or '.join(k.__name__ for k in kinds)}, not {type(value).__name__} ({value!r})")
    if isinstance(value, int) and value < 0:
        raise ValueError(f"{name} = {value}: must not be negative")


def _not_a_dict(name: str, value, looks_like: str):
    """A dict where an array belongs: the notebook's argument order, most likely."""
    if isinstance(value, Mapping):
        keys = ", ".join(list(value)[:4])
        raise ValueError(
            f"{name} is a dict ({keys}, …), not an array: it looks like {looks_like}. "
            "check() takes (parameters, X, Y, gradients); the notebook's gradient_check_n "
            "takes (parameters, gradients, X, Y)"
        )


def check(
    parameters: Mapping[str, Any],
    X: Any,
    Y: Any,
    gradients: Optional[Mapping[str, Any]] = None,
    *,
    model: Optional[Mapping[str, Any]] = None,
    epsilon: Optional[float] = None,
    threshold: Optional[float] = None,
    backend: str = "auto",
    precision: str = "auto",
    kinks: str = "exclude",
    stencil: int = 2,
    masks: Optional[Mapping[str, Any]] = None,
    layout: Optional[str] = None,
) -> Report:
    """Checks ``gradients`` (dW1, db1, …) against central differences of the cost at
    ``parameters`` (W1, b1, …) on the data X (n0 × m), Y (nL × m).

    A network of layer types (conv2d, max_pool, avg_pool, flatten, dense) is a ``model``
    with ``input_shape`` and ``layers`` (see the README); its arrays are samples first:
    the course's layout (X (m, H, W, C), W (f, f, C_prev, C), b (1, 1, 1, C), dense W
    (n_in, n_out), Y (m, classes) or class indices (m,)), or PyTorch's with
    ``layout="nchw"`` (X (m, C, H, W), weight (C_out, C_in, f, f), bias (C_out,)).

    Without ``gradients`` the built-in backprop's are checked (the report says so).
    ``model`` is the command line's JSON spec as a dict (layers, activations, loss, l2,
    dropout); without it the notebook's choices are inferred from the weight shapes.
    ``masks`` holds the dropout masks your forward pass drew, {"D1": …, "D2": …} (0/1,
    n_l × m, layer l's), so that the check perturbs the same network your backprop
    differentiated (a ``seed`` in the model's dropout draws other masks, which a correct
    backprop cannot match).
    Bad input raises ValueError naming the tensor and the shapes.
    """
    _not_a_dict("X", X, "the gradients")
    _not_a_dict("Y", Y, "the gradients")
    if gradients is not None and not isinstance(gradients, Mapping):
        raise ValueError(
            f"gradients is a {type(gradients).__name__}, not a dict of dW1, db1, …: "
            "check() takes (parameters, X, Y, gradients); the notebook's gradient_check_n "
            "takes (parameters, gradients, X, Y)"
        )
    _check_option("epsilon", epsilon, (int, float))
    _check_option("threshold", threshold, (int, float))
    _check_option("stencil", stencil, (int,))
    _check_option("layout", layout, (str,))
    if layout is not None:
        if model is None or "input_shape" not in model:
            raise ValueError(
                "layout= applies to a network of layer types: give model= with input_shape and layers"
            )
        model = {**model, "layout": layout}
    params = _arrays(parameters, "parameters", lambda k: True)
    data = [_wire("X", X, "data"), _wire("Y", Y, "data")]
    if masks is not None:
        data += _arrays(masks, "masks", lambda k: True)
    grads = None
    if gradients is not None:
        missing = [f"d{k}" for k in parameters if f"d{k}" not in gradients]
        if missing:
            have = ", ".join(map(str, gradients)) or "nothing"
            raise ValueError(
                f"gradients has {have}; {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing"
                " — the gradient of parameter K is named dK (the notebook's backprop names them dW1, db1, …)"
            )
        # dW1, db1, … or d + any parameter's name; the backprop's caches (dA1, dZ1) stay out.
        grads = _arrays(
            gradients,
            "gradients",
            lambda k: bool(_GRAD.match(k)) or (k.startswith("d") and k[1:] in parameters),
        )
    options = json.dumps(
        {
            "epsilon": epsilon,
            "threshold": threshold,
            "backend": backend,
            "precision": precision,
            "kinks": kinks,
            "stencil": stencil,
        }
    )
    spec = json.dumps(dict(model)) if model is not None else None
    n = sum(int(np.size(v)) for v in parameters.values())
    document, text = _with_progress(
        lambda: _gradcheck.check(params, data, grads, spec, options), 4 * n
    )
    return Report(document, text)


def _with_progress(run, total: int):
    """Runs ``run`` (the Rust check, which releases the GIL) in a worker thread; a check
    that takes longer than two seconds shows how far it is on sys.stderr (Jupyter shows
    that stream under the cell), as the command line's bar does."""
    import sys
    import threading
    import time

    out = {}

    def work():
        try:
            out["value"] = run()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            out["error"] = e

    start, t0 = _gradcheck.progress(), time.monotonic()
    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(2.0)
    shown = False
    while worker.is_alive():
        done = min(_gradcheck.progress() - start, total)
        sys.stderr.write(
            f"\rgradcheck: {done:,}/{total:,} perturbations (2N at ε and at 2ε), "
            f"{time.monotonic() - t0:.0f} s"
        )
        sys.stderr.flush()
        shown = True
        worker.join(0.5)
    if shown:
        sys.stderr.write("\n")
    if "error" in out:
        raise out["error"]
    return out["value"]


def gradient_check_n(parameters, gradients, X, Y, epsilon=1e-7, print_msg=False):
    """The course notebook's ``gradient_check_n``, drop-in: returns the difference
    ‖grad − gradapprox‖ / (‖grad‖ + ‖gradapprox‖) computed in the notebook's own
    arithmetic (its digits), and prints the notebook's message when ``print_msg``.

    It reproduces the notebook on purpose, its weaknesses included: the plain arithmetic
    evaluates every J± in full (slow on large nets), and its single 2e-7 rule mixes rounding
    noise with real errors, so correct gradients of a large net can print "There is a
    mistake" (2.6e-7 on 784-512-256-1). For a verdict, use :func:`check`: every element
    against its own error bound, on the fast Δ path, with a diagnosis when something is
    wrong."""
    params = {k: v for k, v in parameters.items() if _PARAM.match(k)}
    r = check(params, X, Y, gradients, epsilon=epsilon, precision="f64-plain")
    difference = r.difference
    if print_msg:
        # NaN (a non-finite gradient) is a mistake too, though NaN > 2e-7 is False.
        if not difference <= 2e-7:
            print(
                "\033[93m"
                + "There is a mistake in the backward propagation! difference = "
                + str(difference)
                + "\033[0m"
            )
        else:
            print(
                "\033[92m"
                + "Your backward propagation works perfectly fine! difference = "
                + str(difference)
                + "\033[0m"
            )
    return difference
