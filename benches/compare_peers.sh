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
[ ${#cases[@]} -gt 0 ] || cases=(4,5,3,1 3 784,64,32,1 64 128,128,128,128,1 32 784,512,256,1 64)
# Whole-process wall time, best of 3 (what a user waits for: loading, both evaluations).
best3() {
    local best=""
    for _ in 1 2 3; do
        local t0 t1
        t0=$(date +%s.%N)
        "$@" >/dev/null 2>&1 || true
        t1=$(date +%s.%N)
        best=$("$py" -c "a='$best'; t=$t1-$t0; print('%.3f' % (t if not a else min(float(a), t)))")
    done
    echo "$best"
}
soft=$("$bin" devices | grep -c ', Cpu\]' || true)
# GPU columns whenever an adapter answers (llvmpipe included: it is what CI has).
gpu_ok=$("$bin" devices >/dev/null 2>&1 && echo 1 || echo 0)
printf '%-20s %-4s %8s %12s %12s %12s %10s %10s %10s\n' layers m N numpy-prefix cpu-f64 cpu-f64-plain speedup gpu-f64 gpu-f32
for ((k = 0; k < ${#cases[@]}; k += 2)); do
    layers=${cases[k]} m=${cases[k+1]}
    dir=$work/case-${layers//,/-}-$m
    "$py" "$peers/make_case.py" --layers "$layers" --m "$m" --seed 0 --out "$dir" >/dev/null
    n=$("$py" -c "import json; print(json.load(open('$dir/meta.json'))['n_params'])")
    np_t=$(best3 "$py" "$peers/bench_numpy_batched.py" "$dir" --mode prefix)
    args=(check --params "$dir/params.npz" --data "$dir/data.npz" --grads "$dir/grads.npz" --backend cpu)
    f64=$(best3 "$bin" "${args[@]}" --precision f64)
    plain=$(best3 "$bin" "${args[@]}" --precision f64-plain)
    g64=n/a g32=n/a
    if [ "$gpu_ok" = 1 ]; then
        gargs=(check --params "$dir/params.npz" --data "$dir/data.npz" --grads "$dir/grads.npz" --backend gpu)
        g64=$(best3 "$bin" "${gargs[@]}" --precision f64)
        g32=$(best3 "$bin" "${gargs[@]}" --precision f32)
    fi
    printf '%-20s %-4s %8s %12s %12s %12s %9.1fx %10s %10s\n' "$layers" "$m" "$n" "$np_t" "$f64" "$plain" \
        "$("$py" -c "print($np_t / max($f64, 1e-9))")" "$g64" "$g32"
done
[ "$gpu_ok" = 1 ] && echo "gpu columns: $("$bin" devices | head -n 1)"
echo "(seconds, whole process, best of 3; cpu-f64 evaluates at ε and 2ε for the error bounds)"
if [ "$soft" != 0 ] || ! "$bin" devices | grep -q 'f64: '; then
    echo "no hardware GPU adapter: the GPU f32 accuracy table needs one (llvmpipe is a CPU emulator)"
    exit 0
fi
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
