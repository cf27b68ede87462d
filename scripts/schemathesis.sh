#!/usr/bin/env bash
# Fuzzes the running API against its own OpenAPI contract with schemathesis (pinned in
# scripts/requirements-schemathesis.txt; `bash scripts/setup.sh --no-build --schemathesis`
# installs it into .venv). It starts the debug build (target/debug/snapshop, as `cargo build
# --bin snapshop` or the cargo tests leave it) on a free loopback port with a temporary data
# directory and the shipped bundle, waits for /readyz, and runs every operation of
# /openapi.json through schemathesis's examples, coverage and fuzzing phases, bounded so that
# the run takes at most a few minutes on 2 cores. Every response is checked: no 5xx, only
# documented statuses, content types, headers and bodies that match their schemas, invalid
# input rejected, and 405 for undocumented methods.
#
# The server starts with a fresh bootstrap admin key (SNAPSHOP_ADMIN_KEY), and the script makes
# a merchant key (merchant `acme`) and a search key with it. Three runs follow, each with one
# key: the merchant key over the merchant routes (`/v1/merchants/...`: mostly other merchants'
# paths, so mostly 403), the search key over search and the vocabulary, and last the admin key
# over every operation (an admin may act for any merchant, so the product routes' handlers are
# exercised for real; it runs last because it may revoke keys). Rate limits are off for the run
# (they are tested in tests/api/keys.rs); a fuzzer would spend its cases on 429s.
#
# Environment:
#   SCHEMATHESIS_MAX_EXAMPLES  test cases per operation and phase (default 150).
#   SCHEMATHESIS_SEED          the random seed (default 1, so that runs repeat; `random` for a
#                              new one each run).
#   SCHEMATHESIS_REPORT_DIR    where the JUnit and JSON reports go (default: a temporary
#                              directory, removed at exit).
#
# Prints `schemathesis: N operations, M test cases, F failures` and exits non-zero on any
# failure (or when the run itself errs).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

want="$(sed -n 's/^schemathesis==//p' scripts/requirements-schemathesis.txt)"
have="$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("schemathesis"))' 2>/dev/null || true)"
if [ "$have" != "$want" ]; then
  echo "schemathesis: $want is not installed in .venv (found '${have:-none}'): run bash scripts/setup.sh --no-build --schemathesis" >&2
  exit 2
fi
bin="target/debug/snapshop"
if [ ! -x "$bin" ]; then
  echo "schemathesis: $bin is missing: run cargo build --bin snapshop" >&2
  exit 2
fi
. scripts/env.sh
# The server reads SNAPSHOP_* as configuration: give it none of the caller's (scripts/test.sh
# exports its own SNAPSHOP_REQUIRE_* flags).
for v in $(env | grep -o '^SNAPSHOP_[A-Z_]*' || true); do unset "$v"; done

work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
report_dir="${SCHEMATHESIS_REPORT_DIR:-$work/report}"
mkdir -p "$report_dir"

port="$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
base="http://127.0.0.1:$port"
admin_key="sk_admin_$(.venv/bin/python -c 'import secrets; print(secrets.token_hex(24))')"
SNAPSHOP_ADMIN_KEY="$admin_key" SNAPSHOP_RATE_LIMITS__ENABLED=false \
SNAPSHOP_LOG="${SNAPSHOP_LOG:-warn}" "$bin" serve --listen "127.0.0.1:$port" \
  --data-dir "$work/data" --bundle models/default --intra-threads 1 \
  >"$work/server.log" 2>&1 &
server_pid=$!

ready=0
for _ in $(seq 1 240); do
  if ! kill -0 "$server_pid" 2>/dev/null; then
    break
  fi
  if .venv/bin/python - "$base/readyz" <<'EOF' 2>/dev/null; then
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
EOF
    ready=1
    break
  fi
  sleep 0.5
done
if [ "$ready" != 1 ]; then
  echo "schemathesis: the server did not become ready; its log:" >&2
  cat "$work/server.log" >&2
  exit 1
fi

# Authorization per operation: merchant routes get the merchant key, the rest the search key.
# schemathesis applies a header to every operation, so each key gets its own run over its
# operations when either is set. A run with a key also checks that requests without it, or
# with a bad one, are refused (401); a run without a key fuzzes a copy of the spec without
# its security requirements (there is nothing to authenticate with).
merchant_ops='^/v1/merchants/'
checks="not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance,negative_data_rejection,unsupported_method,allow_header_conformance"
auth_checks="missing_required_header,ignored_auth"
seed="${SCHEMATHESIS_SEED:-1}"
.venv/bin/python - "$base/openapi.json" "$work/openapi.json" "$work/openapi-no-auth.json" <<'EOF'
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
    spec = json.load(r)
with open(sys.argv[2], "w") as f:
    json.dump(spec, f)
for item in spec.get("paths", {}).values():
    for op in item.values():
        if isinstance(op, dict):
            op.pop("security", None)
spec.pop("security", None)
with open(sys.argv[3], "w") as f:
    json.dump(spec, f)
EOF
# One worker: with several, hypothesis's threads hit a CPython 3.11 `ast.parse` bug
# ("AST constructor recursion depth mismatch"), a run error that is not the API's.
common=(
  --url "$base"
  --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-150}"
  --phases examples,coverage,fuzzing
  --workers 1
  --request-timeout 30
  --suppress-health-check too_slow,filter_too_much,data_too_large
  --warnings off
  --no-color
)
if [ "$seed" != random ]; then
  common+=(--seed "$seed")
fi

# One run: NAME, an optional key, then filters.
run() {
  local name="$1" key="$2"
  shift 2
  local args=("${common[@]}" --report junit,json
    --report-junit-path "$report_dir/$name.junit.xml"
    --report-json-path "$report_dir/$name.json")
  local spec="$work/openapi-no-auth.json"
  if [ -n "$key" ]; then
    spec="$work/openapi.json"
    args+=(--checks "$checks,$auth_checks" --header "Authorization: Bearer $key")
  else
    args+=(--checks "$checks")
  fi
  set +e
  # From the temporary directory, where schemathesis keeps its crash cache (`.schemathesis/`):
  # each run starts fresh and leaves nothing in the work tree.
  (cd "$work" && "$ROOT/.venv/bin/schemathesis" run "$spec" "${args[@]}" "$@") 2>&1 | tee "$work/$name.log"
  local rc=${PIPESTATUS[0]}
  set -e
  echo "$rc" > "$work/$name.rc"
}

# A key made with the admin key, from its JSON body.
make_key() {
  .venv/bin/python - "$base/v1/keys" "$admin_key" "$1" <<'EOF'
import json, sys, urllib.request
req = urllib.request.Request(sys.argv[1], data=sys.argv[3].encode(), method="POST",
                             headers={"authorization": f"Bearer {sys.argv[2]}",
                                      "content-type": "application/json"})
with urllib.request.urlopen(req, timeout=10) as r:
    print(json.load(r)["key"])
EOF
}
merchant_key="$(make_key '{"kind": "merchant", "merchant": "acme", "label": "schemathesis"}')"
search_key="$(make_key '{"kind": "search", "label": "schemathesis"}')"
run merchant "$merchant_key" --include-path-regex "$merchant_ops"
run search "$search_key" --include-path-regex '^/v1/(search|tags)$'
run admin "$admin_key"
runs=(merchant search admin)

if ! kill -0 "$server_pid" 2>/dev/null; then
  echo "schemathesis: the server died during the run; its log:" >&2
  tail -n 50 "$work/server.log" >&2
  exit 1
fi

# The summary, from the JSON reports and the exit codes.
summary="$(.venv/bin/python - "$report_dir" "$work" "${runs[@]}" <<'EOF'
import json, sys, pathlib
report_dir, work, names = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3:]
ops = cases = failures = errors = 0
bad_rc = 0
for name in names:
    rc = int((work / f"{name}.rc").read_text().strip() or 1)
    path = report_dir / f"{name}.json"
    if not path.exists():
        print(f"no report for run {name}", file=sys.stderr)
        bad_rc = 1
        continue
    r = json.loads(path.read_text())
    ops += r["operations"]["tested"]
    cases += r["test_cases"]["generated"]
    failures += max(r["test_cases"]["unique_failures"], len(r["failures"]))
    errors += len(r["errors"]) + r["operations"]["errored"]
    if rc != 0 or not r.get("complete", False):
        bad_rc = 1
print(ops, cases, failures, errors, bad_rc)
EOF
)"
read -r ops cases failures errors bad_rc <<<"$summary"
echo "schemathesis: $ops operations, $cases test cases, $failures failures, $errors errors"
if [ "$failures" != 0 ] || [ "$errors" != 0 ] || [ "$bad_rc" != 0 ]; then
  exit 1
fi
