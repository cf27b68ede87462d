#!/usr/bin/env python3
"""Concurrent load against a running snapshop server, over real HTTP (loopback only).

Optionally ingests a split's gallery first (one product per product id, tags from the manifest),
then sends the split's street photos to POST /v1/search from `--concurrency` threads, a bounded
number of requests in all, and prints throughput, latency percentiles, errors by status, and the
server's own batching (mean requests per model call, from /metrics).

    scripts/serve.sh --listen 127.0.0.1:8080 &   # then, with a key that may write merchant `load`:
    SNAPSHOP_API_KEY=... .venv/bin/python scripts/load.py --url http://127.0.0.1:8080 --ingest --concurrency 4 --requests 300

The key (`--api-key`, default `$SNAPSHOP_API_KEY`) is sent as `Authorization: Bearer`; a server
in `auth.dev_mode` needs none.

Only the standard library is used.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


API_KEY: str | None = None  # set by main(); sent on every request when present


def headers(content_type: str | None = None) -> dict[str, str]:
    h = {"content-type": content_type} if content_type else {}
    if API_KEY:
        h["authorization"] = f"Bearer {API_KEY}"
    return h


def post(url: str, body: bytes, content_type: str, timeout: float = 60.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers=headers(content_type))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def multipart(product: dict, images: list[Path]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="product"\r\n'
        f"Content-Type: application/json\r\n\r\n{json.dumps(product)}\r\n".encode()
    ]
    for img in images:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{img.name}"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n".encode() + img.read_bytes() + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def read_split(manifest: Path, split: str):
    base = manifest.parent
    shops: dict[str, tuple[set[str], list[Path]]] = {}
    queries: list[Path] = []
    with open(manifest, newline="") as fh:
        for row in csv.DictReader(fh):
            if row["split"] != split:
                continue
            if row["domain"] == "shop":
                tags, files = shops.setdefault(row["product_id"], (set(), []))
                tags.update(t for t in row["tags"].split(";") if t)
                files.append(base / row["image"])
            else:
                queries.append(base / row["image"])
    return shops, queries


def batch_totals(metrics_text: str) -> dict[str, tuple[float, float]]:
    """(requests, model calls) by kind, from the inference batch-size histogram."""
    out: dict[str, list[float]] = {}
    for line in metrics_text.splitlines():
        m = re.match(r'snapshop_inference_batch_size_(sum|count)\{kind="(\w+)"\} ([0-9.eE+-]+)', line)
        if m:
            out.setdefault(m.group(2), [0.0, 0.0])[0 if m.group(1) == "sum" else 1] = float(m.group(3))
    return {k: (v[0], v[1]) for k, v in out.items()}


def mean_batch(before: dict, after: dict) -> dict[str, float]:
    """Mean requests per model call during the run, by kind."""
    out = {}
    for kind, (reqs, calls) in after.items():
        r0, c0 = before.get(kind, (0.0, 0.0))
        if calls > c0:
            out[kind] = round((reqs - r0) / (calls - c0), 2)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--manifest", type=Path, default=Path("data/street2shop/manifest.csv"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--ingest", action="store_true", help="upload the split's gallery first (merchant `load`)")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--requests", type=int, default=200, help="total search requests (bounded)")
    ap.add_argument("--max-seconds", type=float, default=300.0, help="stop sending after this long")
    ap.add_argument("--api-key", default=os.environ.get("SNAPSHOP_API_KEY"),
                    help="sent as Authorization: Bearer (default $SNAPSHOP_API_KEY; none for a dev-mode server)")
    args = ap.parse_args()
    global API_KEY
    API_KEY = args.api_key
    if not args.url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        print("error: this load script only targets the loopback interface", file=sys.stderr)
        return 2
    shops, queries = read_split(args.manifest, args.split)
    if not queries:
        print(f"error: no street photos in split {args.split!r} of {args.manifest}", file=sys.stderr)
        return 2

    if args.ingest:
        t0 = time.time()
        statuses = Counter()
        for pid, (tags, files) in sorted(shops.items()):
            body, ctype = multipart({"id": pid, "title": pid, "tags": sorted(tags)}, files)
            status, _ = post(f"{args.url}/v1/merchants/load/products", body, ctype)
            statuses[status] += 1
        print(f"ingest: {len(shops)} products in {time.time() - t0:.1f} s, statuses {dict(statuses)}")

    with urllib.request.urlopen(f"{args.url}/metrics") as r:
        before = batch_totals(r.read().decode())
    latencies: list[float] = []
    statuses = Counter()
    lock = threading.Lock()
    deadline = time.time() + args.max_seconds

    def one(i: int) -> None:
        if time.time() > deadline:
            return
        body = queries[i % len(queries)].read_bytes()
        t = time.perf_counter()
        status, _ = post(f"{args.url}/v1/search?k=20", body, "image/jpeg")
        dt = time.perf_counter() - t
        with lock:
            statuses[status] += 1
            if status == 200:
                latencies.append(dt)

    t0 = time.time()
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        list(pool.map(one, range(args.requests)))
    wall = time.time() - t0
    with urllib.request.urlopen(f"{args.url}/metrics") as r:
        after = batch_totals(r.read().decode())
    lat = sorted(latencies)

    def pct(p: float) -> float:
        return 1e3 * lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")

    report = {
        "concurrency": args.concurrency,
        "requests": sum(statuses.values()),
        "statuses": dict(statuses),
        "wall_s": round(wall, 2),
        "throughput_rps": round(len(lat) / wall, 2) if wall else 0.0,
        "latency_ms": {"p50": round(pct(0.5), 1), "p95": round(pct(0.95), 1), "p99": round(pct(0.99), 1),
                       "mean": round(1e3 * statistics.fmean(lat), 1) if lat else None},
        "requests_per_model_call": mean_batch(before, after),
    }
    print(json.dumps(report, indent=2))
    return 0 if statuses.get(200, 0) else 1


if __name__ == "__main__":
    sys.exit(main())
