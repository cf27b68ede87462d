#!/usr/bin/env python3
"""Where a search's time goes under load, and what the inference queue's batching buys
(issue 9, part 2).

One command, on loopback, with the release build and the shipped bundle:
  - ingests the split's gallery once into a temporary data directory (snapshop's HTTP ingest);
  - for every variant (the default settings, then each `--variant LABEL=SETTINGS`), starts the
    server on its own copy of that directory, waits until it is ready, and loads it with the
    split's street photos (~300 px) and with a 12 MP JPEG, at concurrency 1, 4 and 16 (the
    client of scripts/sidebyside.py: one thread and keep-alive connection per concurrent request);
  - reads the server's own /metrics before and after every cell, so that each cell reports what
    the service measured in it: the stage times of a search (decode, embed, ANN, re-rank), the
    user-branch model call, the time requests waited in the inference queue, and the
    batch-size histogram (requests per user-branch call), next to req/s, latency percentiles and
    the server's CPU per search (from /proc).

SETTINGS are serve flags (`--intra-threads 1`) and environment overrides (`SNAPSHOP_...=value`),
separated by spaces, for example:

    bash scripts/setup.sh --no-build && . scripts/env.sh && cargo build --release --locked
    python3 scripts/batching.py --quick                      # seconds per cell: proves it works
    python3 scripts/batching.py \\
        --variant "nospin=--intra-spinning false" \\
        --variant "delay2ms=SNAPSHOP_QUEUE__MAX_QUEUE_DELAY_US=2000"

`--perf CELL` (e.g. `default:12mp:16`) also records that cell with `perf record` (Debian's
`perf`) and writes the shared objects' share of the server's samples (`perf report --sort dso`).
It prints a table and writes target/batching/report.json (the machine, load averages, the git
commit, every cell). Every server it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sidebyside import (Server, add_server_args, cpu_model, free_port, git, ingest_http, loadavg, make_12mp,
                        ort_env, read_split, request, run_cell)

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("decode", "embed", "ann", "rerank", "total")
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ([0-9.eE+-]+|NaN|\+Inf|-Inf)$')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """Every sample of the server's /metrics, keyed by (name, labels)."""
    status, body = request("127.0.0.1", port, "GET", "/metrics", timeout=30)
    if status != 200:
        raise SystemExit(f"batching: /metrics answered {status}")
    out = {}
    for line in body.decode().splitlines():
        m = SAMPLE.match(line)
        if m:
            out[(m.group(1), frozenset(LABEL.findall(m.group(2) or "")))] = float(m.group(3))
    return out


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def mean_ms(before: dict, after: dict, base: str, **labels: str) -> float | None:
    """Mean of a seconds histogram over the cell, in ms."""
    n = delta(before, after, base + "_count", **labels)
    return round(1e3 * delta(before, after, base + "_sum", **labels) / n, 2) if n > 0 else None


def batch_histogram(before: dict, after: dict, kind: str) -> dict[str, int]:
    """Model calls of the cell by batch size (the histogram's buckets: ≤1, 2, 3-4, 5-8, ...)."""
    name = "snapshop_inference_batch_size_bucket"
    cum = sorted(
        (float(dict(k[1])["le"]), delta(before, after, name, **dict(k[1])))
        for k in after
        if k[0] == name and dict(k[1]).get("kind") == kind and dict(k[1])["le"] != "+Inf"
    )
    out, prev, lo = {}, 0.0, 1
    for le, c in cum:
        if c - prev > 0:
            out[f"{lo}" if lo == int(le) else f"{lo}-{int(le)}"] = int(round(c - prev))
        prev, lo = c, int(le) + 1
    return out


def service_view(before: dict, after: dict) -> dict:
    calls = delta(before, after, "snapshop_inference_batch_size_count", kind="user")
    reqs = delta(before, after, "snapshop_inference_batch_size_sum", kind="user")
    return {
        "stage_ms": {s: mean_ms(before, after, "snapshop_search_stage_duration_seconds", stage=s) for s in STAGES},
        "user_call_ms": mean_ms(before, after, "snapshop_inference_seconds", kind="user"),
        "rerank_call_ms": mean_ms(before, after, "snapshop_inference_seconds", kind="rerank"),
        "queue_wait_ms": mean_ms(before, after, "snapshop_inference_queue_wait_seconds", kind="user"),
        "user_calls": int(calls),
        "requests_per_user_call": round(reqs / calls, 2) if calls else None,
        "user_batch_histogram": batch_histogram(before, after, "user"),
        "overloaded": int(delta(before, after, "snapshop_inference_overloaded_total")),
    }


def parse_variant(spec: str) -> tuple[str, list[str], dict[str, str]]:
    label, _, settings = spec.partition("=")
    flags, env = [], {}
    for tok in settings.split():
        name, eq, value = tok.partition("=")
        if eq and re.fullmatch(r"SNAPSHOP_[A-Z0-9_]+", name):
            env[name] = value
        else:
            flags.append(tok)
    return label, flags, env


def perf_dso(pid: int, seconds: float, out: Path) -> dict:
    """`perf record` of the server for `seconds`, summarised by shared object."""
    data = out.with_suffix(".data")
    rec = subprocess.run(["perf", "record", "-F", "499", "-p", str(pid), "-o", str(data), "--",
                          "sleep", str(seconds)], capture_output=True, text=True)
    if rec.returncode != 0:
        return {"error": rec.stderr.strip()[-300:]}
    rep = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "dso", "--stdio"],
                         capture_output=True, text=True)
    out.write_text(rep.stdout)
    shares = {}
    for line in rep.stdout.splitlines():
        m = re.match(r"\s+([0-9.]+)%\s+(\S.*)$", line)
        if m and float(m.group(1)) >= 0.5:
            shares[m.group(2).strip()] = float(m.group(1))
    report = out.resolve()
    return {"report": str(report.relative_to(ROOT) if report.is_relative_to(ROOT) else report), "dso_percent": shares}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few seconds per cell")
    add_server_args(ap)
    ap.add_argument("--photos", default="small,12mp")
    ap.add_argument("--seconds", type=float, default=None, help="per cell (default 15; quick 2)")
    ap.add_argument("--requests", type=int, default=None, help="per cell at most (default 3000; quick 100)")
    ap.add_argument("--variant", action="append", default=[], metavar="LABEL=SETTINGS")
    ap.add_argument("--perf", action="append", default=[], metavar="VARIANT:PHOTO:C",
                    help="also profile this cell with perf record (e.g. default:12mp:16)")
    ap.add_argument("--out", type=Path, default=ROOT / "target/batching")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    seconds = args.seconds or (2.0 if args.quick else 15.0)
    max_requests = args.requests or (100 if args.quick else 3000)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    photos = args.photos.split(",")
    for what, path in (("release binary", args.bin), ("manifest", args.manifest)):
        if not path.exists():
            print(f"batching: missing {what} {path} (see this script's docstring)", file=sys.stderr)
            return 2
    if "12mp" in photos and not args.photo_12mp.exists():
        make_12mp(args.photo_12mp, args.manifest, str(ROOT / ".venv/bin/python"))
    env = ort_env()
    if env is None:
        print("batching: set ORT_DYLIB_PATH (. scripts/env.sh)", file=sys.stderr)
        return 2
    env.update(SNAPSHOP_AUTH__DEV_MODE="true", SNAPSHOP_RATE_LIMITS__ENABLED="false", SNAPSHOP_LOG="warn")
    args.out.mkdir(parents=True, exist_ok=True)
    shops, queries = read_split(args.manifest, args.split)
    bodies = {"small": [p.read_bytes() for p, _ in queries], "12mp": [args.photo_12mp.read_bytes()]}
    variants = [("default", [], {})] + [parse_variant(v) for v in args.variant]
    report: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "kernel": platform.release()},
        "git": {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))},
        "bounds": {"seconds": seconds, "requests": max_requests},
        "loadavg_start": loadavg(),
        "variants": {label: {"flags": flags, "env": venv} for label, flags, venv in variants},
        "cells": [],
    }
    tmp = Path(tempfile.mkdtemp(prefix="batching-"))
    server = None
    profiler = ThreadPoolExecutor(max_workers=1)

    def start(label: str, flags: list[str], venv: dict, data: Path) -> Server:
        port = free_port()
        s = Server(label, [str(args.bin), "serve", "--data-dir", str(data), "--bundle", str(args.bundle),
                           "--listen", f"127.0.0.1:{port}", *flags],
                   dict(env, **venv), port, args.out / f"{label}.log", "/readyz", "/v1/search?k=20",
                   "/v1/merchants/load/products")
        s.wait_ready(180)
        return s

    try:
        gallery = tmp / "gallery"
        server = start("ingest", [], {}, gallery)
        report["ingest"] = ingest_http(server, shops, 4)
        print(f"batching: gallery ingested: {json.dumps(report['ingest'])}", flush=True)
        server.stop()
        server = None
        for label, flags, venv in variants:
            data = tmp / label
            shutil.copytree(gallery, data)
            server = start(label, flags, venv, data)
            for photo in photos:
                for c in concurrencies:
                    before = scrape(server.port)
                    # perf, when asked for, records beside the cell for its first `seconds` * 0.8.
                    perf = (profiler.submit(perf_dso, server.proc.pid, seconds * 0.8,
                                            args.out / f"perf-{label}-{photo}-c{c}.txt")
                            if f"{label}:{photo}:{c}" in args.perf else None)
                    cell = run_cell(server, bodies[photo], c, max_requests, seconds, warmup=2)
                    after = scrape(server.port)
                    cell.update(variant=label, photo=photo, service=service_view(before, after))
                    if perf is not None:
                        cell["perf"] = perf.result()
                    report["cells"].append(cell)
                    sv = cell["service"]
                    print(f"  {label:>10} {photo:>5} c{c:<2} {cell['rps']:7.1f} req/s  p50 {cell['p50_ms']} ms  "
                          f"cpu {cell['server_cpu_ms_per_req']} ms/req  stages {sv['stage_ms']}  "
                          f"user call {sv['user_call_ms']} ms  wait {sv['queue_wait_ms']} ms  "
                          f"batch {sv['requests_per_user_call']} {sv['user_batch_histogram']}", flush=True)
            server.stop()
            server = None
            shutil.rmtree(data, ignore_errors=True)
    finally:
        profiler.shutdown()
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    report["loadavg_end"] = loadavg()
    (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print("\n| variant | photo | c | req/s | p50 ms | CPU ms/search | decode | embed | user call | queue wait | "
          "requests per call |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for cell in report["cells"]:
        sv = cell["service"]
        print(f"| {cell['variant']} | {cell['photo']} | {cell['concurrency']} | {cell['rps']} | {cell['p50_ms']} | "
              f"{cell['server_cpu_ms_per_req']} | {sv['stage_ms']['decode']} | {sv['stage_ms']['embed']} | "
              f"{sv['user_call_ms']} | {sv['queue_wait_ms']} | {sv['requests_per_user_call']} |")
    print(f"\nbatching: wrote {args.out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
