#!/usr/bin/env bash
# Side-by-side timing against the numpy peers (benches/peers/numpy_peer.py: the notebook's
# loop and the strongest vectorised version), in one run, on the same cases, from a clone:
# it needs only python3 with venv (numpy goes into a virtual environment it makes).
#
#     benches/compare_peers.sh [LAYERS M ...]     default: the README's cases
#
# Every figure is whole-process wall time (what a user waits for: loading, the checks at ε
# and 2ε), three runs each, printed as min–max; the machine, its load and the date head
# the table. GPU columns run whenever an adapter answers (llvmpipe included).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=${WORK:-$(mktemp -d)}
venv=${PEERS_VENV:-$work/venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q numpy
py=$venv/bin/python
peer=$root/benches/peers/numpy_peer.py
cargo build --release --locked --quiet --manifest-path "$root/Cargo.toml"
bin=${CARGO_TARGET_DIR:-$root/target}/release/gradcheck
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(4,5,3,1 3 10,8,1 16 64,32,16,1 32 784,64,32,1 64 784,512,256,1 64)
# Three runs: "min–max" seconds.
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
# The peer's own time for its N central differences (its JSON), min of three.
peer3() {
    local best=""
    for _ in 1 2 3; do
        local t
        t=$("$py" "$peer" "$@" | "$py" -c 'import json,sys; print(json.load(sys.stdin)["seconds"])')
        best=$("$py" -c "a='$best'; print('%.3g' % (float('$t') if not a else min(float(a), float('$t'))))")
    done
    echo "$best"
}
gpu_ok=$("$bin" devices 2>/dev/null | grep -q 'f64:' && echo 1 || echo 0)
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), load $(cut -d' ' -f1-3 /proc/loadavg) at start, $(date -u +%Y-%m-%d)"
[ "$gpu_ok" = 1 ] && echo "gpu: $("$bin" devices | head -n 1)"
printf '%-16s %-4s %8s %10s %10s %12s %12s %12s %12s\n' layers m N numpy-loop numpy-pfx "cpu (f64)" "default" "gpu f64" "gpu f32"
for ((k = 0; k < ${#cases[@]}; k += 2)); do
    layers=${cases[k]} m=${cases[k+1]}
    dir=$work/case-${layers//,/-}-$m
    "$py" "$peer" case --layers "$layers" --m "$m" --seed 0 --out "$dir"
    n=$("$py" -c "import json; print(json.load(open('$dir/meta.json'))['n_params'])")
    # The loop peer only where it finishes in reasonable time (2N full forward passes).
    loop=n/a
    [ "$n" -le 60000 ] && loop=$(peer3 loop "$dir")
    pfx=$(peer3 prefix "$dir")
    args=(check --params "$dir/params.npz" --data "$dir/data.npz" --grads "$dir/grads.npz" --quiet)
    cpu=$(range3 "$bin" "${args[@]}" --backend cpu)
    dflt=$(range3 "$bin" "${args[@]}")
    g64=n/a g32=n/a
    if [ "$gpu_ok" = 1 ]; then
        g64=$(range3 "$bin" "${args[@]}" --backend gpu --precision f64)
        g32=$(range3 "$bin" "${args[@]}" --backend gpu --precision f32)
    fi
    printf '%-16s %-4s %8s %10s %10s %12s %12s %12s %12s\n' "$layers" "$m" "$n" "$loop" "$pfx" "$cpu" "$dflt" "$g64" "$g32"
done
echo "load $(cut -d' ' -f1-3 /proc/loadavg) at end"
echo "(seconds; numpy: its N central differences at ε, best of 3; gradcheck: whole process at ε and 2ε with every element's error bound, 3 runs, min–max; default = no --backend)"
