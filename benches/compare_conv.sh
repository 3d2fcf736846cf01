#!/usr/bin/env bash
# The conv example (`--example conv-fixed`: 16×16×3, conv 4×4×8 same + relu, max-pool 4,
# conv 2×2×16 same + relu, max-pool 2, dense softmax over 6; m = 8, N = 1,310) timed side by
# side in one run: gradcheck's CPU f64 check and its GPU f64 check (whole process, ε and
# 2ε, every element bounded; the GPU row where an adapter with SHADER_F64 answers, llvmpipe
# here — a CPU emulator, so a floor, not a GPU figure), a course-style numpy peer (J(θ ± ε·e_i) by a vectorised numpy forward pass per
# perturbation), and torch.autograd.gradcheck (full mode, float64) where torch imports.
#
#     benches/compare_conv.sh            TORCH_PYTHON=/path/to/python-with-torch to use one
#
# torch is never installed by this script (nor a test dependency): give a Python that has it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=${WORK:-$(mktemp -d)}
venv=${PEERS_VENV:-$work/venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q numpy
py=$venv/bin/python
peer=$root/benches/peers/conv_peer.py
fixtures=$root/fixtures/conv
cargo build --release --locked --quiet --manifest-path "$root/Cargo.toml"
bin=${CARGO_TARGET_DIR:-$root/target}/release/gradcheck
torch_py=${TORCH_PYTHON:-$py}
# Whole-process seconds of a command, three runs, "min–max".
range3() {
    local ts=()
    for _ in 1 2 3; do
        local t0 t1
        t0=$(date +%s.%N)
        "$@" >/dev/null 2>&1 || true
        t1=$(date +%s.%N)
        ts+=("$t1-$t0")
    done
    "$py" -c "t=[${ts[0]}, ${ts[1]}, ${ts[2]}]; a, b = min(t), max(t); print(('%.3g' % a) if b < 1.1 * a else '%.3g–%.3g' % (a, b))"
}
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), load $(cut -d' ' -f1-3 /proc/loadavg) at start, $(date -u +%Y-%m-%d)"
gc=$(range3 "$bin" check --example conv-fixed --backend cpu --quiet)
eval_s=$("$bin" check --example conv-fixed --backend cpu --json - 2>/dev/null | "$py" -c 'import json,sys; print(json.load(sys.stdin)["timings"]["evaluate_s"])')
gpu_eval=n/a gpu_whole=n/a gpu_name="no adapter"
if "$bin" check --example conv-fixed --backend gpu --precision f64 --quiet >/dev/null 2>&1; then
    gpu_whole=$(range3 "$bin" check --example conv-fixed --backend gpu --precision f64 --quiet)
    gpu_json=$("$bin" check --example conv-fixed --backend gpu --precision f64 --json - 2>/dev/null)
    gpu_eval=$(echo "$gpu_json" | "$py" -c 'import json,sys; print("%.3g" % json.load(sys.stdin)["timings"]["evaluate_s"])')
    gpu_name=$(echo "$gpu_json" | "$py" -c 'import json,sys; print(json.load(sys.stdin)["adapter"])')
fi
np_check=$("$py" "$peer" numpy "$fixtures" | "$py" -c 'import json,sys; print("%.3g" % json.load(sys.stdin)["seconds"])')
np_whole=$(range3 "$py" "$peer" numpy "$fixtures")
if "$torch_py" -c 'import torch' 2>/dev/null; then
    torch_check=$("$torch_py" "$peer" torch "$fixtures" 2>/dev/null | "$py" -c 'import json,sys; d=json.load(sys.stdin); print("%.3g" % d["seconds"])')
    torch_whole=$(range3 "$torch_py" "$peer" torch "$fixtures")
    torch_v=$("$torch_py" -c 'import torch; print(torch.__version__)')
else
    torch_check=n/a torch_whole=n/a torch_v="not installed"
fi
# What a dense check computes: 4N forward passes (±ε at ε and 2ε) of 213,760 flops per
# sample (conv1 98,304 + conv2 8,192 + dense 384 multiply-adds) × m = 8.
"$py" - "$eval_s" <<PY
import sys
n, m, fwd = 1310, 8, 213760
e = float(sys.argv[1])
print(f"gradcheck evaluation: {4 * n} perturbations in {e:.3g} s = {e / (4 * n) * 1e6:.2f} µs each; "
      f"dense-forward equivalent {4 * n * m * fwd / 1e9:.2f} GFLOP = {4 * n * m * fwd / e / 1e9:.0f} GFLOP/s")
PY
echo "gpu adapter: $gpu_name"
printf '%-34s %14s %14s\n' "" "the check (s)" "whole process"
printf '%-34s %14s %14s\n' "gradcheck cpu f64 (ε and 2ε)" "$(printf '%.3g' "$eval_s")" "$gc"
printf '%-34s %14s %14s\n' "gradcheck gpu f64 (ε and 2ε)" "$gpu_eval" "$gpu_whole"
printf '%-34s %14s %14s\n' "numpy forward per perturbation" "$np_check" "$np_whole"
printf '%-34s %14s %14s\n' "torch.autograd.gradcheck ($torch_v)" "$torch_check" "$torch_whole"
