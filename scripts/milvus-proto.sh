#!/usr/bin/env bash
# The Milvus prototype's figures in docs/scaling.md: recall@256 and latency of the in-process
# index and of the Milvus backend (src/view/milvus.rs, cargo feature `milvus`) on the same 100k
# vectors, unfiltered and with ~10% and ~1% filters, plus Milvus's insert/delete visibility and
# memory. Not part of CI or scripts/test.sh: it installs Milvus Lite (PyPI `milvus` 2.3.5, an
# embedded Milvus standalone server, ~58 MB) into its own venv, and runs for ~12-15 min here.
#
#   bash scripts/milvus-proto.sh [--n 100000] [--keep]
#
# Steps: (1) footprint example: builds our index over N clustered vectors, measures it, dumps
# the vectors; (2) starts Milvus on 127.0.0.1:19530 with its data under target/milvus-proto;
# (3) pymilvus makes the collection (HNSW M 16, efConstruction 200, IP, as ours); (4) the Rust
# backend loads the vectors; (5) searches through the backend while the rows are still in a
# growing segment; (6) flush + wait for the HNSW index (pymilvus); (7) searches through the
# backend again, and through gRPC with ef 512; (8) insert/delete visibility; (9) Milvus's RSS.
# Everything lands in target/milvus-proto/ (logs and one JSON line per step in results.jsonl).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
N=100000
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --n) N="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
OUT=target/milvus-proto
VENV="${MILVUS_PROTO_VENV:-$OUT/venv}"
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
DATA="$OUT/vectors-$N.bin"

if [ ! -x "$VENV/bin/milvus-server" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r scripts/milvus-proto.requirements.txt
fi
PY="$VENV/bin/python"

echo "== build (release): footprint, milvus_ann"
cargo build --release -p snapshop-index --example footprint
cargo build --release --features milvus --example milvus_ann

echo "== in-process index over $N vectors (uptime: $(uptime))"
./target/release/examples/footprint --n "$N" --dump "$DATA" | tee "$OUT/footprint.log"
tail -n 1 "$OUT/footprint.log" >> "$RESULTS"

echo "== Milvus Lite 2.3.5"
rm -rf "$OUT/milvus-data"
mkdir -p "$OUT/milvus-data"
"$VENV/bin/milvus-server" --data "$ROOT/$OUT/milvus-data" --proxy-port 19530 > "$OUT/milvus-server.log" 2>&1 &
SERVER=$!
cleanup() {
  [ "$KEEP" = 1 ] && return
  # milvus-server stops its Milvus child on SIGINT (a plain TERM would orphan it).
  kill -INT "$SERVER" 2>/dev/null || true
  sleep 3
  if [ -n "${MPID:-}" ] && kill -0 "$MPID" 2>/dev/null; then kill "$MPID" || true; fi
  wait "$SERVER" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1 120); do
  curl -sf localhost:9091/healthz >/dev/null 2>&1 && break
  curl -sf localhost:19530/v1/vector/collections >/dev/null 2>&1 && break
  sleep 1
done
MPID=$(pgrep -f "$ROOT/$OUT/milvus-data/bin/milvus run standalone" | head -n 1 || true)
echo "milvus pid ${MPID:-?}"

"$PY" scripts/milvus_proto.py create --dim 256 | tee -a "$RESULTS"
[ -n "$MPID" ] && "$PY" scripts/milvus_proto.py rss --pid "$MPID" | sed 's/^{/{"when": "empty", /' >> "$RESULTS"

echo "== load through the Rust backend"
./target/release/examples/milvus_ann load --data "$DATA" | tee -a "$RESULTS"

echo "== search: growing segment (as inserted, before any flush)"
./target/release/examples/milvus_ann search --data "$DATA" --label growing | tee -a "$RESULTS"

echo "== flush, wait for the HNSW index"
"$PY" scripts/milvus_proto.py seal | tee -a "$RESULTS"

echo "== search: sealed + HNSW, through the REST backend"
./target/release/examples/milvus_ann search --data "$DATA" --label sealed | tee -a "$RESULTS"

echo "== search: sealed + HNSW, through gRPC with ef 512 (what the REST API cannot ask for)"
"$PY" scripts/milvus_proto.py search-grpc --data "$DATA" --ef 512 --consistency Strong | tee -a "$RESULTS"
"$PY" scripts/milvus_proto.py search-grpc --data "$DATA" --ef 512 --consistency Eventually | tee -a "$RESULTS"

echo "== freshness: insert -> searchable, delete -> gone"
./target/release/examples/milvus_ann fresh --data "$DATA" --writes 50 | tee -a "$RESULTS"

[ -n "$MPID" ] && "$PY" scripts/milvus_proto.py rss --pid "$MPID" | sed 's/^{/{"when": "loaded", /' >> "$RESULTS"
echo "== done: $RESULTS"
