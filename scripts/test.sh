#!/usr/bin/env bash
# Runs every test: the model pipeline's pytest suite, then the Rust workspace's tests
# (unit tests, the golden-vector parity check, and the HTTP integration suite).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh --no-build
. scripts/env.sh
echo "== pytest (models/)"
(cd models && ../.venv/bin/python -m pytest -q -p no:cacheprovider tests)
echo "== cargo test (workspace)"
cargo test --workspace --locked
