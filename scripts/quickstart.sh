#!/usr/bin/env bash
# The README's quick start, run as written against a fresh server: an admin key from the CLI, a
# merchant key made with it, an upload, a search key made by the merchant, a search; then a
# revoked key refused at once; and last, no key and no key hash in any line the server logged
# (at debug level). Prints `quickstart: N passed, M failed`; exits non-zero on any failure.
#
#   bash scripts/quickstart.sh            # uses target/debug/snapshop (SNAPSHOP_BIN for another)
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
. scripts/env.sh
BIN="${SNAPSHOP_BIN:-target/debug/snapshop}"
[ -x "$BIN" ] || { echo "quickstart: $BIN is missing: cargo build --bin snapshop" >&2; exit 1; }
# The server reads SNAPSHOP_* as configuration: give it none of the test harness's.
for v in $(env | grep -o '^SNAPSHOP_[A-Z_]*' || true); do unset "$v"; done

work="$(mktemp -d)"
data="$work/data"
log="$work/server.log"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok - $1"; }
not_ok() { failed=$((failed + 1)); echo "not ok - $1"; [ -n "${2:-}" ] && echo "  $2"; }
check() { # NAME EXPECTED ACTUAL
  if [ "$2" = "$3" ]; then ok "$1"; else not_ok "$1" "expected $2, got $3"; fi
}

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$port"
SNAPSHOP_LOG=debug "$BIN" serve --listen "127.0.0.1:$port" --data-dir "$data" \
  --bundle models/default --intra-threads 1 >"$log" 2>&1 &
pid=$!
for _ in $(seq 120); do curl -sf "$URL/readyz" >/dev/null && break; sleep 0.5; done
check "the server is ready" 200 "$(curl -s -o /dev/null -w '%{http_code}' "$URL/readyz")"

FRONT=tests/fixtures/subset/images/p02430_shop_p02430_shop_0.jpg
BACK=tests/fixtures/subset/images/p02430_shop_p02430_shop_1.jpg
[ -f "$BACK" ] || BACK="$FRONT"
STREET=$(ls tests/fixtures/subset/images/p02430_user_* 2>/dev/null | head -n 1)
[ -n "$STREET" ] || STREET="$FRONT"

# --- the README's steps ---------------------------------------------------------------------------
key() { python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])'; }
ADMIN=$("$BIN" keys create --admin --label ops --data-dir "$data" 2>>"$work/cli.log")
check "1. snapshop keys create --admin prints an sk_admin_ key" sk_admin_ "${ADMIN:0:9}"
MERCHANT=$(curl -s "$URL/v1/keys" -H "Authorization: Bearer $ADMIN" \
  -H 'content-type: application/json' -d '{"kind":"merchant","merchant":"acme"}' | key)
check "2. the admin key makes a merchant key" sk_live_ "${MERCHANT:0:8}"
status=$(curl -s -o "$work/created.json" -w '%{http_code}' -X POST "$URL/v1/merchants/acme/products" \
  -H "Authorization: Bearer $MERCHANT" \
  -F 'product={"id":"sku-1","title":"Red dress","tags":["category:dress","color:red"]};type=application/json' \
  -F "image=@$FRONT" -F "image=@$BACK")
check "3. the merchant uploads a product" 201 "$status"
SEARCH=$(curl -s "$URL/v1/keys" -H "Authorization: Bearer $MERCHANT" \
  -H 'content-type: application/json' -d '{"kind":"search","allowed_origins":["https://shop.example"]}' | key)
check "4. the merchant makes a search key" pk_live_ "${SEARCH:0:8}"
first=$(curl -s -X POST "$URL/v1/search?k=10&filter=category:dress,color:red|color:blue" \
  -H "Authorization: Bearer $SEARCH" -H 'content-type: image/jpeg' --data-binary "@$STREET" |
  python3 -c 'import json, sys; r = json.load(sys.stdin)["results"]; print(r[0]["product_id"] if r else "none")')
check "5. the search key finds the product" sku-1 "$first"
first=$(curl -s -X POST "$URL/v1/search" -H "Authorization: Bearer $SEARCH" \
  -F "image=@$STREET" -F 'options={"k":5,"explain":true}' |
  python3 -c 'import json, sys; r = json.load(sys.stdin)["results"]; print(bool(r and r[0].get("attention")))')
check "the multipart search returns attention" True "$first"
check "metrics need no key" 200 "$(curl -s -o /dev/null -w '%{http_code}' "$URL/metrics")"

# --- what a key may not do, and revocation ----------------------------------------------------------
check "the search key cannot write" 403 "$(curl -s -o /dev/null -w '%{http_code}' -X DELETE \
  "$URL/v1/merchants/acme/products/sku-1" -H "Authorization: Bearer $SEARCH")"
check "no key: 401" 401 "$(curl -s -o /dev/null -w '%{http_code}' "$URL/v1/merchants/acme/products")"
id=$("$BIN" keys list --data-dir "$data" 2>/dev/null | awk '$2 == "search" { print $1; exit }')
"$BIN" keys revoke "$id" --data-dir "$data" 2>>"$work/cli.log"
check "a key revoked on the CLI is refused on the next request" 401 "$(curl -s -o /dev/null -w '%{http_code}' \
  -X POST "$URL/v1/search" -H "Authorization: Bearer $SEARCH" -H 'content-type: image/jpeg' --data-binary "@$STREET")"
check "the CLI lists keys without tokens" 0 "$("$BIN" keys list --all --data-dir "$data" 2>/dev/null | grep -c -- "$ADMIN\|$MERCHANT\|$SEARCH")"

# --- no key or key hash in the logs -----------------------------------------------------------------
kill "$pid" && wait "$pid" 2>/dev/null
pid=""
lines=$(wc -l <"$log")
leaks=0
for k in "$ADMIN" "$MERCHANT" "$SEARCH"; do
  h=$(printf %s "$k" | sha256sum | cut -c1-64)
  secret="${k:16}" # past the visible prefix
  n=$(cat "$log" "$work/cli.log" | grep -c -e "$k" -e "$h" -e "$secret" || true)
  leaks=$((leaks + n))
done
check "no key, secret part or key hash in $lines server log lines (debug level)" 0 "$leaks"
[ "$lines" -gt 20 ] && ok "the server logged at debug level" || not_ok "the server logged at debug level" "$lines lines"

echo "quickstart: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
