#!/usr/bin/env bash
# Runs every test: the model pipeline's pytest suite, then the Rust workspace's tests
# (unit tests, the golden-vector parity check, the store contract suite on SQLite and on a real
# PostgreSQL, and the HTTP integration suite), then the web page's browser test (tests/web/:
# Playwright driving Debian's chromium against the real server), the README's quick start with
# API keys (scripts/quickstart.sh, which also greps the server's debug log for keys and their
# hashes), the scale-out proof (scripts/replicas.py: three replicas on a throwaway Postgres, with
# kill -9, a Postgres outage and a model swap), and schemathesis over every operation of the
# OpenAPI spec (scripts/schemathesis.sh), and ends with one line counting them all.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh --no-build --browser-test --postgres-test --schemathesis --observability
. scripts/env.sh
. scripts/test-postgres.sh
# Tests that need ONNX Runtime or the shipped bundle fail here, instead of skipping, when either
# is missing: CI must never pass by testing less.
export SNAPSHOP_REQUIRE_ORT=1 SNAPSHOP_REQUIRE_BUNDLE=1
log="$(mktemp -d)"
trap 'snapshop_pg_stop; rm -rf "$log"' EXIT
# A PostgreSQL for the store's contract suite: the local server on 127.0.0.1:5432 if it lets
# postgres create a database (a fresh one for this run), else a throwaway initdb/pg_ctl server on
# a free port; it exports SNAPSHOP_TEST_POSTGRES_URL and SNAPSHOP_REQUIRE_POSTGRES=1, so those
# tests fail rather than skip without it. Both are dropped or stopped at exit.
echo "== postgres (store contract suite)"
snapshop_pg_start

echo "== pytest (models/)"
(cd models && ../.venv/bin/python -m pytest -q -p no:cacheprovider tests) 2>&1 | tee "$log/pytest"
echo "== cargo test (workspace)"
cargo test --workspace --locked 2>&1 | tee "$log/cargo"
echo "== browser test (tests/web/)"
# It serves target/debug/snapshop, which the cargo tests just built (a separate `cargo build`
# could rebuild it with other dependency features).
# Screenshots go to the temporary directory; refresh docs/img/ with
# `SNAPSHOP_WEB_SCREENSHOTS=docs/img node tests/web/search.mjs`.
SNAPSHOP_WEB_SCREENSHOTS="${SNAPSHOP_WEB_SCREENSHOTS:-$log/screenshots}" node tests/web/search.mjs 2>&1 | tee "$log/web"
# The merchant console (/console), the same way; refresh its docs/img/console-*.png with
# `SNAPSHOP_WEB_SCREENSHOTS=docs/img node tests/web/console.mjs`.
SNAPSHOP_WEB_SCREENSHOTS="${SNAPSHOP_WEB_SCREENSHOTS:-$log/screenshots}" node tests/web/console.mjs 2>&1 | tee "$log/web-console"
echo "== quick start with keys (scripts/quickstart.sh)"
bash scripts/quickstart.sh 2>&1 | tee "$log/quickstart"
echo "== replicas on Postgres (scripts/replicas.py)"
# Its own throwaway PostgreSQL (it stops and starts it), three replicas of target/debug/snapshop.
python3 scripts/replicas.py 2>&1 | tee "$log/replicas"
echo "== observability (scripts/check-observability.sh)"
# promtool on the Prometheus config, alert rules (and their unit tests) and a live /metrics; the
# Grafana dashboard's structure; every metric its queries and the alerts use, exported live.
bash scripts/check-observability.sh 2>&1 | tee "$log/observability"
echo "== schemathesis (scripts/schemathesis.sh)"
bash scripts/schemathesis.sh 2>&1 | tee "$log/schemathesis"

# Counts from each runner's own summary lines (awk: no failure when a count is absent).
count() { # FILE LINE-REGEX WORD -> sum of the numbers just before WORD on matching lines
  awk -v re="$2" -v word="$3" '$0 ~ re { for (i = 2; i <= NF; i++) if ($i ~ "^" word) n += $(i - 1) } END { print n + 0 }' "$1"
}
py_summary="$log/pytest.last"
grep -E '[0-9]+ (passed|failed)' "$log/pytest" | tail -n 1 > "$py_summary" || true
py_passed=$(count "$py_summary" '.' passed)
py_failed=$(count "$py_summary" '.' failed)
rs_passed=$(count "$log/cargo" '^test result:' passed)
rs_failed=$(count "$log/cargo" '^test result:' failed)
web_passed=$(count "$log/web" '^web:' passed)
web_failed=$(count "$log/web" '^web:' failed)
web_passed=$(( web_passed + $(count "$log/web-console" '^web:' passed) ))
web_failed=$(( web_failed + $(count "$log/web-console" '^web:' failed) ))
qs_passed=$(count "$log/quickstart" '^quickstart:' passed)
qs_failed=$(count "$log/quickstart" '^quickstart:' failed)
rp_passed=$(count "$log/replicas" '^replicas:' passed)
rp_failed=$(count "$log/replicas" '^replicas:' failed)
ob_passed=$(count "$log/observability" '^observability:' passed)
ob_failed=$(count "$log/observability" '^observability:' failed)
# schemathesis counts operations fuzzed (each one a test) and failures.
st_line=$(grep -E '^schemathesis: [0-9]+ operations' "$log/schemathesis" | tail -n 1 || true)
st_ops=$(echo "$st_line" | awk '{print $2 + 0}')
st_failed=$(echo "$st_line" | awk '{print $7 + $9}')
[ -n "$st_line" ] || st_failed=1
echo "pytest: ${py_passed:-0} passed, ${py_failed:-0} failed"
echo "cargo: ${rs_passed:-0} passed, ${rs_failed:-0} failed"
echo "web: ${web_passed:-0} passed, ${web_failed:-0} failed"
echo "quickstart: ${qs_passed:-0} passed, ${qs_failed:-0} failed"
echo "replicas: ${rp_passed:-0} passed, ${rp_failed:-0} failed"
echo "observability: ${ob_passed:-0} passed, ${ob_failed:-0} failed"
echo "${st_line:-schemathesis: no summary line}"
echo "total: $(( ${py_passed:-0} + ${rs_passed:-0} + ${web_passed:-0} + ${qs_passed:-0} + ${rp_passed:-0} + ${ob_passed:-0} + ${st_ops:-0} )) passed, $(( ${py_failed:-0} + ${rs_failed:-0} + ${web_failed:-0} + ${qs_failed:-0} + ${rp_failed:-0} + ${ob_failed:-0} + ${st_failed:-0} )) failed"
