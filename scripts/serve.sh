#!/usr/bin/env bash
# One command from a fresh clone to a running service: installs what is missing, builds, and
# serves on the embedded default (SQLite under ./data/service, the shipped bundle models/default).
# Extra arguments go to `snapshop serve` (e.g. --listen 0.0.0.0:8080).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
. scripts/env.sh
exec ./target/release/snapshop serve --data-dir "${SNAPSHOP_DATA_DIR:-data/service}" --bundle models/default "$@"
