#!/usr/bin/env bash
# Side-by-side timing against the numpy peers in ../shared/peers, in one run, on the same
# cases (seconds for all N central differences, loading excluded; gradcheck's number is
# the report's evaluate_s, which includes its base forward pass).
#
#     benches/compare_peers.sh [LAYERS M ...]     default: the three issue cases
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
peers=${PEERS:-$root/../shared/peers}
work=${WORK:-$(mktemp -d)}
py=$(PEERS_VENV=${PEERS_VENV:-$work/venv} "$peers/setup.sh")
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
bin=$root/target/release/gradcheck
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(4,5,3,1 3 64,32,16,1 32 784,64,32,1 64)
printf '%-16s %-4s %10s %10s %10s %10s %10s\n' layers m numpy-loop numpy-best cpu-f64 gpu-f64 gpu-f32
for ((k = 0; k < ${#cases[@]}; k += 2)); do
    layers=${cases[k]} m=${cases[k+1]}
    dir=$work/case-${layers//,/-}-$m
    "$py" "$peers/make_case.py" --layers "$layers" --m "$m" --seed 0 --out "$dir" >/dev/null
    sec() { "$py" -c 'import json,sys; print("%.4f" % json.loads(sys.stdin.read().strip().splitlines()[-1])["seconds"])'; }
    loop=$("$py" "$peers/bench_numpy_loop.py" "$dir" | sec)
    best=$("$py" "$peers/bench_numpy_batched.py" "$dir" --mode prefix | sec)
    ours() {
        "$bin" check --params "$dir/params.npz" --data "$dir/data.npz" --grads "$dir/grads.npz" "$@" --json - 2>/dev/null \
            | "$py" -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["timings"]["evaluate_s"])' || echo n/a
    }
    cpu=$(ours --backend cpu)
    g64=$(ours --backend gpu --precision f64)
    g32=$(ours --backend gpu --precision f32)
    printf '%-16s %-4s %10s %10s %10s %10s %10s\n' "$layers" "$m" "$loop" "$best" "$cpu" "$g64" "$g32"
done
# f32 accuracy on the same cases, correct gradients: the peers' best f32 (numpy batched at
# its best ε 1e-3) against gradcheck's f32 Δ path (ε 1e-4) and f32-plain (ε 1e-3). Overall
# difference as the notebook computes it (kinks included on both sides), then ours with
# kinked elements left out as the verdict does.
printf '\n%-16s %-4s %12s %12s %12s %12s\n' layers m numpy-f32 gpu-f32 "(no kinks)" gpu-f32-plain
for ((k = 0; k < ${#cases[@]}; k += 2)); do
    layers=${cases[k]} m=${cases[k+1]}
    dir=$work/case-${layers//,/-}-$m
    np32=$("$py" "$peers/bench_numpy_batched.py" "$dir" --mode prefix --dtype float32 --eps 1e-3 \
        | "$py" -c 'import json,sys; print("%.3e" % json.loads(sys.stdin.read().strip().splitlines()[-1])["difference"])')
    diff() {
        "$bin" check --params "$dir/params.npz" --data "$dir/data.npz" --grads "$dir/grads.npz" --backend gpu "$@" --json - 2>/dev/null \
            | "$py" -c 'import json,sys; r = json.load(sys.stdin); print("%.3e %.3e" % (r["difference"], r["difference_counted"]))' || echo "n/a n/a"
    }
    read -r d32 d32c <<<"$(diff --precision f32)"
    read -r p32 _ <<<"$(diff --precision f32-plain)"
    printf '%-16s %-4s %12s %12s %12s %12s\n' "$layers" "$m" "$np32" "$d32" "$d32c" "$p32"
done
echo "gpu adapter: $("$bin" devices | head -n 1)"
