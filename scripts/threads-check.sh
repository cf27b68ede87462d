#!/usr/bin/env bash
# Compares ONNX Runtime's intra-op thread settings under load (issue 9, part 2): for the default
# (`intra_threads = 0`, one thread per core) and `--intra-threads 1`, starts the release server on
# a throwaway data dir, ingests the benchmark's test gallery through HTTP (scripts/load.py
# --ingest), then loads it with the test street photos at concurrency 1, 4 and 16 (400 requests
# each). Writes target/threads-check/<variant>.c<N>.json (the load average first). Needs the
# release build and data/street2shop (scripts/setup.sh, then the pipeline's data generator).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
. scripts/env.sh
OUT=target/threads-check
PORT="${PORT:-18090}"
mkdir -p "$OUT"
for variant in default intra1; do
  dir="$(mktemp -d)"
  extra=()
  [ "$variant" = intra1 ] && extra=(--intra-threads 1)
  SNAPSHOP_AUTH__DEV_MODE=true SNAPSHOP_RATE_LIMITS__ENABLED=false ./target/release/snapshop serve \
    --data-dir "$dir" --bundle models/default --listen "127.0.0.1:$PORT" "${extra[@]}" > "$OUT/$variant.server.log" 2>&1 &
  pid=$!
  for _ in $(seq 60); do curl -sf "http://127.0.0.1:$PORT/readyz" > /dev/null && break; sleep 1; done
  .venv/bin/python scripts/load.py --url "http://127.0.0.1:$PORT" --ingest --concurrency 1 --requests 20 > "$OUT/$variant.ingest.json"
  for c in 1 4 16; do
    echo "load average $(cut -d' ' -f1-3 /proc/loadavg)" > "$OUT/$variant.c$c.json"
    .venv/bin/python scripts/load.py --url "http://127.0.0.1:$PORT" --concurrency "$c" --requests 400 >> "$OUT/$variant.c$c.json"
  done
  kill "$pid"; wait "$pid" 2> /dev/null || true
  rm -rf "$dir"
done
for f in "$OUT"/*.c*.json; do
  echo "$f: $(head -1 "$f"); $(tail -n +2 "$f" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["throughput_rps"], "req/s, p50", d["latency_ms"]["p50"], "ms,", d["statuses"])')"
done
