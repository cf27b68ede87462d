#!/usr/bin/env bash
# Runs every test: the model pipeline's pytest suite, then the Rust workspace's tests
# (unit tests, the golden-vector parity check, and the HTTP integration suite), and ends with
# one line counting them all.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh --no-build
. scripts/env.sh
# Tests that need ONNX Runtime or the shipped bundle fail here, instead of skipping, when either
# is missing: CI must never pass by testing less.
export SNAPSHOP_REQUIRE_ORT=1 SNAPSHOP_REQUIRE_BUNDLE=1
log="$(mktemp -d)"
trap 'rm -rf "$log"' EXIT

echo "== pytest (models/)"
(cd models && ../.venv/bin/python -m pytest -q -p no:cacheprovider tests) 2>&1 | tee "$log/pytest"
echo "== cargo test (workspace)"
cargo test --workspace --locked 2>&1 | tee "$log/cargo"

py_passed=$(grep -Eo '[0-9]+ passed' "$log/pytest" | tail -n 1 | cut -d' ' -f1)
py_failed=$(grep -Eo '[0-9]+ failed' "$log/pytest" | tail -n 1 | cut -d' ' -f1)
sum() { awk '{ s += $1 } END { print s + 0 }'; }
rs_passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log/cargo" | grep -Eo '[0-9]+ passed' | sum)
rs_failed=$(grep -Eo '[0-9]+ failed;' "$log/cargo" | sum)
echo "pytest: ${py_passed:-0} passed, ${py_failed:-0} failed"
echo "cargo: ${rs_passed:-0} passed, ${rs_failed:-0} failed"
echo "total: $(( ${py_passed:-0} + ${rs_passed:-0} )) passed, $(( ${py_failed:-0} + ${rs_failed:-0} )) failed"
