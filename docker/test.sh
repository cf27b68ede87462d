#!/usr/bin/env bash
# Proves the deployment with podman (no Docker engine or registry needed):
#   1. builds docker/Dockerfile and docker/prometheus/Dockerfile;
#   2. runs the snapshop image alone: /readyz says ready, the HEALTHCHECK passes, it runs as the
#      non-root user, and an upload and a search go through ONNX Runtime inside the container;
#   3. brings the compose stack up without Grafana (`up snapshop prometheus`: Grafana's image comes
#      from a registry), checks through Prometheus's HTTP API that the snapshop target is up, that
#      the alert rules are loaded and that a snapshop metric is queryable; then brings it down.
# Prints each step's time and `docker: N passed, M failed`. Too slow for the normal test run (the
# first build compiles the workspace in the container); docs/deploy.md has a run's output.
#
#   CTR=/var/tmp/snapshop-podman bash docker/test.sh
#
# CTR is the podman state that /work/shared/containers/setup-podman.sh made (its env.sh, and the
# local debian:bookworm-slim and rust:1-bookworm base images). CONTEXT (default: this checkout)
# is the build context, e.g. a `git archive` export when the checkout is mid-edit. With a Docker
# engine instead, run the same steps with `docker build`, `docker run` and `docker compose`.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CTR="${CTR:-/var/tmp/snapshop-podman}"
[ -f "$CTR/env.sh" ] || { echo "docker: no $CTR/env.sh: run setup-podman.sh first (CTR=$CTR)" >&2; exit 1; }
CONTEXT="${CONTEXT:-$ROOT}"
. "$CTR/env.sh"
cd "$ROOT"

IMAGE=localhost/snapshop:latest
PROM_IMAGE=localhost/snapshop-prometheus:latest
NAME=snapshop-test
PROJECT=snapshoptest
began=$(date +%s)
passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok - $1"; }
not_ok() { failed=$((failed + 1)); echo "not ok - $1"; [ -n "${2:-}" ] && echo "$2" | sed 's/^/  /'; }
check() { # NAME EXPECTED ACTUAL
  if [ "$2" = "$3" ]; then ok "$1"; else not_ok "$1" "expected $2, got $3"; fi
}
exec 3>&1 # t prints its times here, past the redirections of the command it times
t() { # NAME COMMAND...: runs it, prints its time, returns its status
  local name="$1" s rc
  shift
  s=$(date +%s.%N)
  "$@"
  rc=$?
  printf '### %-44s %7.1fs\n' "$name" "$(echo "$(date +%s.%N) - $s" | bc)" >&3
  return $rc
}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_ready() { # URL SECONDS
  for _ in $(seq "$(($2 * 2))"); do curl -sf "$1" >/dev/null && return 0; sleep 0.5; done
  return 1
}
json() { python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"; }
compose() { (cd docker && podman-compose -p "$PROJECT" "$@"); }
cleanup() {
  podman rm -f -t 5 "$NAME" >/dev/null 2>&1
  podman volume rm -f "$NAME-data" >/dev/null 2>&1
  if [ -n "${stack_up:-}" ]; then
    compose down -v >/dev/null 2>&1
    podman network rm -f "${PROJECT}_default" >/dev/null 2>&1 # podman-compose 1.0.3 leaves it
  fi
}
trap cleanup EXIT

# --- 1. the images --------------------------------------------------------------------------------------
if t "podman build docker/Dockerfile" podman build --pull=never --format docker -q \
  -f "$CONTEXT/docker/Dockerfile" -t "$IMAGE" "$CONTEXT" >"$CTR/tmp/build.log" 2>&1; then
  ok "docker/Dockerfile builds"
else
  not_ok "docker/Dockerfile builds" "$(tail -n 30 "$CTR/tmp/build.log")"
  echo "docker: $passed passed, $failed failed"
  exit 1
fi
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
echo "# image $IMAGE: $((size / 1000000)) MB"
podman image inspect --format '{{json .Config.Healthcheck}}' "$IMAGE" | grep -q healthz &&
  ok "the image keeps its HEALTHCHECK" || not_ok "the image keeps its HEALTHCHECK"
if t "podman build docker/prometheus" podman build --pull=never --format docker -q \
  -t "$PROM_IMAGE" "$CONTEXT/docker/prometheus" >"$CTR/tmp/build-prometheus.log" 2>&1; then
  ok "docker/prometheus/Dockerfile builds"
else
  not_ok "docker/prometheus/Dockerfile builds" "$(tail -n 30 "$CTR/tmp/build-prometheus.log")"
fi

# --- 2. the image alone ------------------------------------------------------------------------------------
port=$(free_port)
URL="http://127.0.0.1:$port"
# (stderr: podman without systemd says it cannot add the health check's timer; `podman
# healthcheck run` below runs the check itself.)
t "podman run" podman run -d --init --pull=never --name "$NAME" -v "$NAME-data:/data" \
  -p "127.0.0.1:$port:8080" "$IMAGE" >/dev/null 2>"$CTR/tmp/run.log"
if t "wait for /readyz" wait_ready "$URL/readyz" 180; then
  check "/readyz says ready" ready "$(curl -s "$URL/readyz" | json 'd["status"]')"
else
  not_ok "/readyz says ready" "$(podman logs --tail 20 "$NAME" 2>&1)"
fi
check "the service runs as the non-root user snapshop (uid 10001)" "10001" "$(podman exec "$NAME" id -u)"
check "the HEALTHCHECK passes" 0 "$(podman healthcheck run "$NAME" >/dev/null 2>&1; echo $?)"
ADMIN=$(podman exec "$NAME" snapshop keys create --admin --label test --data-dir /data 2>/dev/null)
check "snapshop keys create --admin in the container" sk_admin_ "${ADMIN:0:9}"
FIX=tests/fixtures/subset/images
check "an upload embeds through ONNX Runtime in the container" 201 "$(curl -s -o /dev/null -w '%{http_code}' \
  -X POST "$URL/v1/merchants/acme/products" -H "Authorization: Bearer $ADMIN" \
  -F 'product={"id":"sku-1","title":"Red dress","tags":["category:dress","color:red"]};type=application/json' \
  -F "image=@$FIX/p02400_shop_p02400_shop_0.jpg" -F "image=@$FIX/p02400_shop_p02400_shop_1.jpg")"
check "a street photo finds the product" sku-1 "$(curl -s -X POST "$URL/v1/search?k=5" \
  -H "Authorization: Bearer $ADMIN" -H 'content-type: image/jpeg' \
  --data-binary "@$FIX/p02400_user_p02400_user_0.jpg" | json 'd["results"][0]["product_id"] if d.get("results") else "none"')"
t "podman rm (graceful stop)" podman rm -f -t 40 "$NAME" >/dev/null 2>&1
podman volume rm -f "$NAME-data" >/dev/null

# --- 3. the compose stack, without Grafana -----------------------------------------------------------------
export HTTP_PORT PROMETHEUS_PORT
HTTP_PORT=$(free_port)
PROMETHEUS_PORT=$(free_port)
PROM="http://127.0.0.1:$PROMETHEUS_PORT"
stack_up=1
t "podman-compose up snapshop prometheus" compose up -d --no-build snapshop prometheus >"$CTR/tmp/compose.log" 2>&1 ||
  not_ok "podman-compose up" "$(tail -n 20 "$CTR/tmp/compose.log")"
t "wait for snapshop's /readyz" wait_ready "http://127.0.0.1:$HTTP_PORT/readyz" 180 ||
  not_ok "snapshop in the stack gets ready" "$(podman logs --tail 20 "${PROJECT}_snapshop_1" 2>&1)"
t "wait for Prometheus" wait_ready "$PROM/-/ready" 60 || not_ok "Prometheus gets ready"
up_target() { curl -sf "$PROM/api/v1/targets" | json '[t["health"] for t in d["data"]["activeTargets"] if t["labels"]["job"] == "snapshop"]' | grep -q "'up'"; }
wait_up() { for _ in $(seq 60); do up_target && return 0; sleep 1; done; return 1; }
if t "wait for the snapshop target to be up" wait_up; then
  ok "Prometheus scrapes snapshop: target up (/api/v1/targets)"
else
  not_ok "Prometheus scrapes snapshop: target up (/api/v1/targets)" "$(curl -s "$PROM/api/v1/targets")"
fi
rules=$(grep -c -- '- alert:' docker/prometheus/alerts.yml)
check "Prometheus loaded the $rules alert rules of alerts.yml (/api/v1/rules)" "$rules" "$(curl -s "$PROM/api/v1/rules" |
  json 'sum(r["type"] == "alerting" for g in d["data"]["groups"] for r in g["rules"])')"
check "snapshop_ready is 1 in Prometheus (/api/v1/query)" 1 "$(curl -s "$PROM/api/v1/query?query=snapshop_ready" |
  json 'd["data"]["result"][0]["value"][1] if d["data"]["result"] else "none"')"
check "no alert fires on the idle stack (/api/v1/alerts)" 0 "$(curl -s "$PROM/api/v1/alerts" |
  json 'sum(a["state"] == "firing" for a in d["data"]["alerts"])')"
t "podman-compose down" compose down -v >/dev/null 2>&1
podman network rm -f "${PROJECT}_default" >/dev/null 2>&1
stack_up=""
left=$(podman ps -a --format '{{.Names}}' | grep -c "^${PROJECT}_\|^$NAME$")
check "nothing of the stack is left running" 0 "$left"

echo "docker: $passed passed, $failed failed in $(($(date +%s) - began)) s"
[ "$failed" -eq 0 ]
