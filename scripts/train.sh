#!/usr/bin/env bash
# Trains the default bundle end to end on this machine (a GPU is used when present):
# generates the benchmark into data/street2shop and the real-photo benchmark into data/realphoto
# if missing (installing the Debian wallpapers it is cut from), trains YNet -> TagYNet -> CtxYNet,
# evaluates, exports models/default, the Rust parity fixture and docs/results.md.
# Logs: models/runs/default/train.log. Extra arguments go to `python -m snapshop_ml.pipeline`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh --no-build --realphoto
cd models
exec ../.venv/bin/python -m snapshop_ml.pipeline "$@"
