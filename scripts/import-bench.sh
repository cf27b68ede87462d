#!/usr/bin/env bash
# The import rate of docs/import.md: the shop images of tests/fixtures/subset (one row per image)
# imported with `snapshop import` into a fresh server (the shipped bundle, CPU), then imported
# again (everything unchanged). Prints the importer's two summary lines. Then the same file as a
# server-side import job (POST /v1/merchants/{m}/imports, images read under import.root) for a
# second merchant, twice, with each job's counts and time.
#
#   bash scripts/import-bench.sh            # target/debug/snapshop; SNAPSHOP_BIN for a release build
#   bash scripts/import-bench.sh data/street2shop test   # the benchmark's test gallery (2,052 images)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
. scripts/env.sh
BIN="${SNAPSHOP_BIN:-target/debug/snapshop}"
[ -x "$BIN" ] || { echo "import-bench: $BIN is missing: cargo build --bin snapshop" >&2; exit 1; }
for v in $(env | grep -o '^SNAPSHOP_[A-Z_]*' || true); do unset "$v"; done
# A dataset directory with a manifest.csv (image, product_id, domain, split, tags), and a split.
DATA="$(cd "${1:-tests/fixtures/subset}" && pwd)"
SPLIT="${2:-}"

work="$(mktemp -d)"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# The CSV: one row per shop image, the product's title and tags on its first row.
python3 - "$DATA" "$work/subset.csv" "$SPLIT" <<'EOF'
import csv, sys, pathlib
root, out, split = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
seen = set()
with open(root / "manifest.csv") as f, open(out, "w", newline="") as g:
    w = csv.writer(g)
    w.writerow(["id", "title", "tags", "image"])
    for row in csv.DictReader(f):
        if row["domain"] != "shop" or (split and row["split"] != split):
            continue
        first = row["product_id"] not in seen
        seen.add(row["product_id"])
        tags = ",".join(t for t in row["tags"].split(";") if t) if first else ""
        w.writerow([row["product_id"], f"product {row['product_id']}" if first else "", tags,
                    str(root / row["image"])])
EOF

admin="sk_admin_$(python3 -c 'import secrets; print(secrets.token_hex(24))')"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
SNAPSHOP_ADMIN_KEY="$admin" SNAPSHOP_LOG=warn SNAPSHOP_IMPORT__ROOT="$DATA" "$BIN" serve --listen "127.0.0.1:$port" \
  --data-dir "$work/data" --bundle models/default >"$work/server.log" 2>&1 &
pid=$!
for _ in $(seq 240); do curl -sf "$url/readyz" >/dev/null && break; sleep 0.5; done
key=$(curl -sf "$url/v1/keys" -H "Authorization: Bearer $admin" -H 'content-type: application/json' \
  -d '{"kind": "merchant", "merchant": "acme"}' | python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])')
echo "import-bench: $(nproc) cores, $BIN, $(grep -c . "$work/subset.csv") lines"
for run in first rerun; do
  SNAPSHOP_KEY="$key" "$BIN" import "$work/subset.csv" --url "$url" --merchant acme \
    --progress "${PROGRESS:-none}" --errors "$work/errors-$run.csv" 2>&1 | grep '^import:'
done
jobkey=$(curl -sf "$url/v1/keys" -H "Authorization: Bearer $admin" -H 'content-type: application/json' \
  -d '{"kind": "merchant", "merchant": "acme-jobs"}' | python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])')
for run in first rerun; do
  python3 - "$url" "$jobkey" "$work/subset.csv" <<'EOF'
import json, sys, time, urllib.request
url, key, path = sys.argv[1:]
auth = {"Authorization": f"Bearer {key}"}
body = open(path, "rb").read()
start = time.monotonic()
req = urllib.request.Request(f"{url}/v1/merchants/acme-jobs/imports", data=body, method="POST",
                             headers={**auth, "content-type": "text/csv"})
job = json.load(urllib.request.urlopen(req))
while job["status"] in ("queued", "running"):
    time.sleep(0.1)
    job = json.load(urllib.request.urlopen(urllib.request.Request(
        f"{url}/v1/merchants/acme-jobs/imports/{job['id']}", headers=auth)))
s = time.monotonic() - start
print(f"import job: {job['status']}, {job['rows']} rows, {job['products']} products "
      f"({job['created']} created, {job['updated']} updated, {job['unchanged']} unchanged, "
      f"{job['failed']} failed), {job['images']} images, {job['error_count']} errors in {s:.1f} s")
EOF
done
