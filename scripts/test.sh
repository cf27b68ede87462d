#!/usr/bin/env bash
# Runs every test: the model pipeline's pytest suite, then the Rust workspace's tests
# (unit tests, the golden-vector parity check, and the HTTP integration suite).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh --no-build
. scripts/env.sh
# Tests that need ONNX Runtime or the shipped bundle fail here, instead of skipping, when either
# is missing: CI must never pass by testing less.
export SNAPSHOP_REQUIRE_ORT=1 SNAPSHOP_REQUIRE_BUNDLE=1
echo "== pytest (models/)"
(cd models && ../.venv/bin/python -m pytest -q -p no:cacheprovider tests)
echo "== cargo test (workspace)"
cargo test --workspace --locked
