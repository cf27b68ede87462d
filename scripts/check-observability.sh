#!/usr/bin/env bash
# Checks the deployment's observability files against each other and against a live server:
#   1. promtool: the Prometheus config (docker/prometheus/prometheus.yml), the alert rules
#      (alerts.yml) and their unit tests (alerts.test.yml), and every dashboard query as PromQL;
#   2. a fresh debug server (an upload and a search with a fixture image, so that histograms have
#      samples, and a 404, so that the error counter has one): `promtool check metrics` on its
#      live /metrics must have no complaint, and the new gauges and counters must read right;
#   3. the Grafana dashboard (docker/grafana/dashboards/snapshop.json): its structure (panels with
#      targets, the provisioned datasource's uid, unique panel ids), and every `snapshop_*` name in
#      a dashboard or alert expression must be exported by that live server.
# Prints `observability: N passed, M failed`; exits non-zero on any failure. promtool comes from
# Debian's `prometheus` package: `bash scripts/setup.sh --no-build --observability`.
#
#   bash scripts/check-observability.sh     # uses target/debug/snapshop (SNAPSHOP_BIN for another)
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
. scripts/env.sh
BIN="${SNAPSHOP_BIN:-target/debug/snapshop}"
PY=.venv/bin/python
[ -x "$BIN" ] || { echo "observability: $BIN is missing: cargo build --bin snapshop" >&2; exit 1; }
# The server reads SNAPSHOP_* as configuration: give it none of the test harness's.
for v in $(env | grep -o '^SNAPSHOP_[A-Z_]*' || true); do unset "$v"; done

PROM=docker/prometheus
DASHBOARD=docker/grafana/dashboards/snapshop.json
DATASOURCES=docker/grafana/provisioning/datasources/prometheus.yml

work="$(mktemp -d)"
data="$work/data"
log="$work/server.log"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok - $1"; }
not_ok() { failed=$((failed + 1)); echo "not ok - $1"; [ -n "${2:-}" ] && echo "$2" | sed 's/^/  /'; }
check() { # NAME EXPECTED ACTUAL
  if [ "$2" = "$3" ]; then ok "$1"; else not_ok "$1" "expected $2, got $3"; fi
}
# A command that must succeed and print nothing but promtool's SUCCESS lines.
promtool_ok() { # NAME ARGS...
  local name="$1" out rc
  shift
  if ! command -v promtool >/dev/null; then
    not_ok "$name" "promtool is missing: bash scripts/setup.sh --no-build --observability"
    return
  fi
  out=$(promtool "$@" 2>&1)
  rc=$?
  if [ "$rc" = 0 ]; then ok "$name"; else not_ok "$name" "promtool $* exited $rc: $out"; fi
}

# --- 1. promtool on the config, the rules and the dashboard's queries ---------------------------------
promtool_ok "promtool check config $PROM/prometheus.yml" check config "$PROM/prometheus.yml"
promtool_ok "promtool check rules $PROM/alerts.yml" check rules "$PROM/alerts.yml"
promtool_ok "promtool test rules $PROM/alerts.test.yml (each alert fires past its threshold, not below)" \
  test rules "$PROM/alerts.test.yml"
# Every dashboard query as a recording rule, so that promtool parses it as PromQL (Grafana's
# $__rate_interval and $__interval become 5m).
if "$PY" - "$DASHBOARD" >"$work/dashboard-rules.yml" 2>"$work/dashboard-rules.err" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
def panels(ps):
    for p in ps:
        yield p
        yield from panels(p.get("panels", []))
rules = []
for p in panels(d.get("panels", [])):
    for t in p.get("targets", []):
        expr = t.get("expr", "").replace("$__rate_interval", "5m").replace("$__interval", "5m")
        rules.append({"record": f"dashboard:panel_{p['id']}_{t.get('refId', 'A')}", "expr": expr})
print(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}, indent=1))
EOF
then
  promtool_ok "every dashboard query parses as PromQL (promtool check rules)" check rules "$work/dashboard-rules.yml"
else
  not_ok "every dashboard query parses as PromQL (promtool check rules)" "$(cat "$work/dashboard-rules.err")"
fi

# --- 2. a live server's /metrics ------------------------------------------------------------------------
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$port"
"$BIN" serve --listen "127.0.0.1:$port" --data-dir "$data" --bundle models/default \
  --intra-threads 1 >"$log" 2>&1 &
pid=$!
for _ in $(seq 120); do curl -sf "$URL/readyz" >/dev/null && break; sleep 0.5; done
check "the server is ready" 200 "$(curl -s -o /dev/null -w '%{http_code}' "$URL/readyz")"

FRONT=tests/fixtures/subset/images/p02400_shop_p02400_shop_0.jpg
BACK=tests/fixtures/subset/images/p02400_shop_p02400_shop_1.jpg
STREET=tests/fixtures/subset/images/p02400_user_p02400_user_0.jpg
ADMIN=$("$BIN" keys create --admin --label observability --data-dir "$data" 2>>"$work/cli.log")
check "snapshop keys create --admin prints an admin key" sk_admin_ "${ADMIN:0:9}"
check "an upload of a product with two images" 201 "$(curl -s -o /dev/null -w '%{http_code}' \
  -X POST "$URL/v1/merchants/acme/products" -H "Authorization: Bearer $ADMIN" \
  -F 'product={"id":"sku-1","title":"Red dress","tags":["category:dress","color:red"]};type=application/json' \
  -F "image=@$FRONT" -F "image=@$BACK")"
check "a search with a street photo" 200 "$(curl -s -o /dev/null -w '%{http_code}' \
  -X POST "$URL/v1/search?k=5" -H "Authorization: Bearer $ADMIN" -H 'content-type: image/jpeg' \
  --data-binary "@$STREET")"
check "a missing product (for the error counter)" 404 "$(curl -s -o /dev/null -w '%{http_code}' \
  "$URL/v1/merchants/acme/products/missing" -H "Authorization: Bearer $ADMIN")"
curl -s "$URL/metrics" >"$work/metrics.txt"
check "/metrics answers" 0 "$?"
if command -v promtool >/dev/null; then
  lint=$(promtool check metrics <"$work/metrics.txt" 2>&1)
  rc=$?
  if [ "$rc" = 0 ] && [ -z "$lint" ]; then
    ok "promtool check metrics: no complaint about $(grep -c '^# TYPE snapshop_' "$work/metrics.txt") snapshop_ families"
  else
    not_ok "promtool check metrics: no complaint" "exit $rc: $lint"
  fi
else
  not_ok "promtool check metrics: no complaint" "promtool is missing: bash scripts/setup.sh --no-build --observability"
fi
value() { # METRIC-LINE-PREFIX -> its value in the scraped text (empty if absent)
  awk -v m="$1" 'index($0, m " ") == 1 { print $2 }' "$work/metrics.txt"
}
check "snapshop_images_ingested_total counts the 2 uploaded images" 2 "$(value snapshop_images_ingested_total)"
check "snapshop_ready is 1 while /readyz answers ready" 1 "$(value snapshop_ready)"
check "snapshop_inference_queue_capacity is queue.capacity (256 by default)" 256 "$(value snapshop_inference_queue_capacity)"

# --- 3. the dashboard's structure, and every name in a query or an alert exported live -----------------
"$PY" - "$DASHBOARD" "$DATASOURCES" "$PROM/alerts.yml" "$work/metrics.txt" >"$work/dashboard.out" 2>&1 <<'EOF'
import json, re, sys
try:
    import yaml  # in the venv with schemathesis (scripts/setup.sh --schemathesis)
except ImportError:
    print("not ok - PyYAML is importable (bash scripts/setup.sh --no-build --schemathesis)")
    sys.exit(0)

dashboard_path, datasources_path, alerts_path, metrics_path = sys.argv[1:5]
def result(name, problems):
    if problems:
        print(f"not ok - {name}")
        for p in problems[:20]:
            print(f"  {p}")
    else:
        print(f"ok - {name}")

try:
    d = json.load(open(dashboard_path))
    result(f"{dashboard_path} parses as JSON", [])
except ValueError as e:
    result(f"{dashboard_path} parses as JSON", [str(e)])
    sys.exit(0)

def walk(ps):
    for p in ps:
        yield p
        yield from walk(p.get("panels", []))
panels = list(walk(d.get("panels", [])))
shown = [p for p in panels if p.get("type") != "row"]

problems = [f"no {k}" for k in ("uid", "title", "schemaVersion") if not d.get(k)]
if not shown:
    problems.append("no panels")
for p in shown:
    g = p.get("gridPos", {})
    if not (g.get("w", 0) > 0 and g.get("h", 0) > 0 and g.get("x", 0) + g.get("w", 0) <= 24):
        problems.append(f"panel {p.get('id')} {p.get('title')!r}: bad gridPos {g}")
    if not p.get("title"):
        problems.append(f"panel {p.get('id')}: no title")
result(f"the dashboard has a uid, a title and {len(shown)} panels laid out on the 24-column grid", problems)

problems = [f"panel {p.get('id')} {p.get('title')!r} has no target with an expr" for p in shown
            if not p.get("targets") or not all(t.get("expr", "").strip() for t in p["targets"])]
problems += [f"panel {p.get('id')} {p.get('title')!r}: refIds repeat" for p in shown
             if len({t.get("refId") for t in p.get("targets", [])}) != len(p.get("targets", []))]
result("every panel has targets, each with a query and its own refId", problems)

ids = [p.get("id") for p in panels]
problems = [f"id {i} is used {ids.count(i)} times" for i in sorted(set(ids), key=str) if ids.count(i) > 1]
problems += [f"panel {p.get('title')!r} has no integer id" for p in panels if not isinstance(p.get("id"), int)]
result(f"the {len(panels)} panel ids are unique", problems)

sources = yaml.safe_load(open(datasources_path))["datasources"]
uids = {s["uid"] for s in sources if s.get("type") == "prometheus"}
problems = [] if len(uids) == 1 else [f"{datasources_path} provisions {len(uids)} Prometheus uids: {uids}"]
for p in shown:
    for where, ds in [("panel", p.get("datasource"))] + [(f"target {t.get('refId')}", t.get("datasource")) for t in p.get("targets", [])]:
        if not isinstance(ds, dict) or ds.get("uid") not in uids or ds.get("type") != "prometheus":
            problems.append(f"panel {p.get('id')} {p.get('title')!r} {where}: datasource {ds!r}, provisioned {sorted(uids)}")
result(f"every panel and target names the provisioned datasource ({', '.join(sorted(uids))})", problems)

# What the live server exports: every sample's metric name (histograms: _bucket, _sum, _count).
exported = set()
for line in open(metrics_path):
    if line.strip() and not line.startswith("#"):
        exported.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
names = re.compile(r"\bsnapshop_[a-zA-Z0-9_]+\b")
def missing(exprs):
    used = {n for e in exprs for n in names.findall(e)}
    return used, sorted(used - exported)
if not exported:
    result("the live /metrics has samples", ["no samples scraped"])
used, gone = missing(t["expr"] for p in shown for t in p.get("targets", []))
result(f"the {len(used)} snapshop_* names in dashboard queries are all exported live",
       [f"{n} is not exported" for n in gone] + ([] if used else ["no snapshop_* name in any query"]))
rules = [r for g in yaml.safe_load(open(alerts_path))["groups"] for r in g["rules"]]
used, gone = missing(r["expr"] for r in rules)
result(f"the {len(used)} snapshop_* names in the {len(rules)} alert rules are all exported live",
       [f"{n} is not exported" for n in gone] + ([] if used else ["no snapshop_* name in any rule"]))
EOF
rc=$?
cat "$work/dashboard.out"
passed=$((passed + $(grep -c '^ok - ' "$work/dashboard.out")))
failed=$((failed + $(grep -c '^not ok - ' "$work/dashboard.out")))
[ "$rc" = 0 ] || not_ok "the dashboard checks ran" "exit $rc"

if [ "$failed" -gt 0 ] && [ -n "$pid" ]; then
  echo "  (server log, last lines:)"
  tail -n 20 "$log" | sed 's/^/  /'
fi
echo "observability: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
