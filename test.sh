#!/usr/bin/env bash
# All the tests, one command: the Rust tests (cargo test), then the Python package built
# into a fresh virtual environment (pip install ./python, as a user would) and its pytest
# suite. Without python3/venv the Python part is skipped with the reason — except under
# CI=true, where it must run.
set -euo pipefail
cd "$(dirname "$0")"
# Mesa's Vulkan WSI complains on every adapter enumeration when this is unset (headless
# machines); the CLI sets it itself, test processes get it here.
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
    XDG_RUNTIME_DIR=$(mktemp -d)
    export XDG_RUNTIME_DIR
fi
cargo test --locked

skip() {
    if [ "${CI:-}" = true ]; then
        echo "test.sh: $1 — under CI the Python tests must run" >&2
        exit 1
    fi
    echo "test.sh: skipping the Python tests: $1" >&2
    exit 0
}
command -v python3 >/dev/null || skip "no python3"
# The CLI, for the test that compares the package's JSON with the command line's.
cargo build --release --locked
venv=target/py-venv
rm -rf "$venv"
python3 -m venv "$venv" 2>/dev/null || skip "python3 -m venv failed (Debian: apt-get install python3-venv)"
"$venv/bin/pip" install -q maturin pytest numpy || skip "pip could not install maturin, pytest, numpy"
# The extension builds in its own target folder (its release profile differs); --locked
# through maturin's cargo arguments.
PATH="$PWD/$venv/bin:$PATH" CARGO_TARGET_DIR="$PWD/target/python" MATURIN_PEP517_ARGS="--locked" \
    "$venv/bin/pip" install -q --no-build-isolation ./python
mkdir -p target/tmp
set +e
# The package-vs-CLI test finds the binary through this (CARGO_TARGET_DIR may be set).
export GRADCHECK_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/gradcheck"
"$venv/bin/python" -m pytest python/tests -q -p no:cacheprovider -rs | tee target/tmp/pytest.txt
code=${PIPESTATUS[0]}
set -e
[ "$code" = 0 ] || exit "$code"
grep -Eq '^[0-9]+ passed' target/tmp/pytest.txt || { echo "test.sh: pytest ran no test" >&2; exit 1; }
