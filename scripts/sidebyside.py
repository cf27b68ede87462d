#!/usr/bin/env python3
"""snapshop and the FastAPI baseline (benches/baseline/) side by side, in one run (issue 9, part 4).

One command starts, on loopback:
  - snapshop (the release build) on a fresh temporary data directory, with `auth.dev_mode` on and
    rate limits off (the baseline has neither), the shipped bundle, its default settings;
  - the baseline twice, under uvicorn, on the same bundle: with 1 worker (onnxruntime's own
    thread count) and with 2 workers (1 intra-op thread each), since the machine has 2 cores;
loads the same gallery into all three (the split's shop images; snapshop and the 1-worker
baseline through their HTTP ingest, the same client and concurrency; the 2-worker baseline from
the gallery file `benches/baseline/app.py build` writes, since each uvicorn worker holds its own
index), checks that they answer and how often their top-1 product agrees, then loads each at
concurrency 1, 4 and 16 with the split's street photos (~300 px JPEGs, cycled) and with a 12 MP
JPEG (target/bench/street_12mp.jpg, made as scripts/bench.sh makes it). Every cell runs the
servers one after another, in an order that alternates from cell to cell (so that background
load drifts over both alike), each bounded by a number of requests and of seconds.

The client is this script (standard library: one thread and one keep-alive connection per
concurrent request). It measures its own CPU time and each server's (from /proc), and, with
`hey` installed (Debian package `hey`), runs hey against each server on one small photo at
concurrency 16 and compares its throughput with this client's on the same photo: if they agree,
the client is not the bottleneck.

    bash scripts/setup.sh --no-build --baseline && . scripts/env.sh
    cargo build --release --locked
    python3 scripts/sidebyside.py --quick        # a few seconds per cell: proves it works
    python3 scripts/sidebyside.py                # the full run (~15-20 min on 2 cores)
    python3 scripts/sidebyside.py --snapshop-variant "intra1=--intra-threads 1"   # + a tuned snapshop

It prints a table and writes target/sidebyside/report.json (req/s, p50/p95/p99, errors, CPU per
request, per server per cell; the ratios snapshop/baseline; the machine, load averages, versions
and the git commit). Loopback only; every server it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import csv
import glob
import http.client
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from load import multipart  # scripts/load.py, beside this file: the same upload body

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------
# Machine state

def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy (not idle or iowait) since boot, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    return (sum(f[:8]) - idle) / CLK_TCK


def tree_pids(pid: int) -> list[int]:
    """pid and its descendants (uvicorn's workers are children of its supervisor)."""
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:
            continue
        rest = text[text.rindex(")") + 2 :].split()
        children.setdefault(int(rest[1]), []).append(int(text.split()[0]))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process tree, in seconds."""
    total = 0
    for p in tree_pids(pid):
        try:
            text = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        rest = text[text.rindex(")") + 2 :].split()
        total += int(rest[11]) + int(rest[12])
    return total / CLK_TCK


def self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ---------------------------------------------------------------------------------------------
# HTTP

def request(host: str, port: int, method: str, path: str, body: bytes | None = None,
            ctype: str | None = None, timeout: float = 120.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        headers = {"content-type": ctype} if ctype else {}
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


class Server:
    def __init__(self, name: str, cmd: list[str], env: dict, port: int, log: Path, ready_path: str,
                 search_path: str, ingest_path: str | None, cwd: Path = ROOT):
        self.name, self.cmd, self.port, self.log = name, cmd, port, log
        self.ready_path, self.search_path, self.ingest_path = ready_path, search_path, ingest_path
        self.fh = open(log, "wb")
        # A session of its own, so that stop() ends exactly this server and its workers.
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=self.fh, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout: float) -> float:
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited with {self.proc.returncode}; see {self.log}")
            try:
                status, _ = request("127.0.0.1", self.port, "GET", self.ready_path, timeout=5)
                if status == 200:
                    return time.time() - t0
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"{self.name} not ready after {timeout} s; see {self.log}")

    def cpu_s(self) -> float:
        return proc_cpu_s(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.fh.close()


# ---------------------------------------------------------------------------------------------
# Load

def percentile(sorted_values: list[float], p: float) -> float | None:
    if not sorted_values:
        return None
    # nearest rank
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(p * len(sorted_values)) - 1))]


def run_cell(server: Server, bodies: list[bytes], concurrency: int, max_requests: int,
             max_seconds: float, warmup: int) -> dict:
    """`concurrency` threads, each with one keep-alive connection, send POST search requests
    back to back (bodies cycled) until `max_requests` are sent or `max_seconds` have passed."""
    lock = threading.Lock()
    counter = {"next": 0}
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    deadline = [math.inf]  # set once every thread has warmed up

    def take() -> int | None:
        with lock:
            i = counter["next"]
            if i >= max_requests or time.perf_counter() > deadline[0]:
                return None
            counter["next"] = i + 1
            return i

    def one(conn: http.client.HTTPConnection, body: bytes) -> tuple[int, float]:
        t = time.perf_counter()
        conn.request("POST", server.search_path, body=body, headers={"content-type": "image/jpeg"})
        r = conn.getresponse()
        r.read()
        return r.status, time.perf_counter() - t

    def worker(wid: int, ready: threading.Barrier, go: threading.Barrier) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        for j in range(warmup):  # not counted: connections made, caches warm
            try:
                one(conn, bodies[(wid + j * concurrency) % len(bodies)])
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        ready.wait()
        go.wait()
        # A fresh connection: the warm-up one may have idled past the server's keep-alive
        # timeout while the other threads warmed up (uvicorn closes after 5 s).
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        while (i := take()) is not None:
            try:
                status, dt = one(conn, bodies[i % len(bodies)])
                key = str(status)
            except (OSError, http.client.HTTPException) as exc:
                status, dt, key = 0, 0.0, type(exc).__name__
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
            with lock:
                statuses[key] = statuses.get(key, 0) + 1
                if status == 200:
                    latencies.append(dt)
        conn.close()

    ready, go = threading.Barrier(concurrency + 1), threading.Barrier(concurrency + 1)
    threads = [threading.Thread(target=worker, args=(w, ready, go), daemon=True) for w in range(concurrency)]
    for t in threads:
        t.start()
    ready.wait()  # every thread warmed up and waiting
    load0 = loadavg()
    cpu_client0, cpu_server0, busy0 = self_cpu_s(), server.cpu_s(), machine_busy_s()
    t0 = time.perf_counter()
    deadline[0] = t0 + max_seconds
    go.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    cpu_client, cpu_server, busy = self_cpu_s() - cpu_client0, server.cpu_s() - cpu_server0, machine_busy_s() - busy0
    lat = sorted(latencies)
    ok = len(lat)
    sent = sum(statuses.values())
    ms = lambda v: round(1e3 * v, 2) if v is not None else None  # noqa: E731
    return {
        "server": server.name, "concurrency": concurrency, "requests": sent, "ok": ok,
        "errors": sent - ok, "statuses": statuses, "wall_s": round(wall, 2),
        "rps": round(ok / wall, 2) if wall > 0 else 0.0,
        "p50_ms": ms(percentile(lat, 0.50)), "p95_ms": ms(percentile(lat, 0.95)),
        "p99_ms": ms(percentile(lat, 0.99)), "mean_ms": ms(sum(lat) / ok if ok else None),
        "server_cpu_ms_per_req": round(1e3 * cpu_server / ok, 2) if ok else None,
        "server_cores": round(cpu_server / wall, 2) if wall > 0 else None,
        "client_cores": round(cpu_client / wall, 2) if wall > 0 else None,
        "client_cpu_ms_per_req": round(1e3 * cpu_client / ok, 3) if ok else None,
        # what the rest of the machine (other jobs) used meanwhile, in cores
        "other_cores": round(max(0.0, busy - cpu_client - cpu_server) / wall, 2) if wall > 0 else None,
        "loadavg_before": load0, "loadavg_after": loadavg(),
    }


def hey_rps(hey: str, server: Server, photo: Path, concurrency: int, n: int, timeout: float) -> dict:
    url = f"http://127.0.0.1:{server.port}{server.search_path}"
    cmd = [hey, "-n", str(n), "-c", str(concurrency), "-m", "POST", "-T", "image/jpeg", "-D", str(photo), url]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout
    except subprocess.TimeoutExpired:
        return {"error": f"hey ran past {timeout} s"}
    m = re.search(r"Requests/sec:\s*([0-9.]+)", out)
    codes = dict(re.findall(r"\[(\d+)\]\s+(\d+) responses", out))
    p50 = re.search(r"50%+ in ([0-9.]+) secs", out)
    return {"rps": float(m.group(1)) if m else None, "statuses": codes, "requests": n,
            "p50_ms": round(1e3 * float(p50.group(1)), 2) if p50 else None}


# ---------------------------------------------------------------------------------------------
# Data

def read_split(manifest: Path, split: str):
    shops: dict[str, tuple[set[str], list[Path]]] = {}
    queries: list[tuple[Path, str]] = []
    with open(manifest, newline="") as fh:
        for row in csv.DictReader(fh):
            if row["split"] != split:
                continue
            path = manifest.parent / row["image"]
            if row["domain"] == "shop":
                tags, files = shops.setdefault(row["product_id"], (set(), []))
                tags.update(t for t in row["tags"].split(";") if t)
                files.append(path)
            else:
                queries.append((path, row["product_id"]))
    return shops, queries


def make_12mp(path: Path, manifest: Path, python: str) -> None:
    """As scripts/bench.sh: a test street photo upscaled to 4000x3000 with sensor-like noise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    code = r"""
import sys, glob
import numpy as np
from PIL import Image
src = sorted(glob.glob(sys.argv[2] + "/images/test/*_user_0.jpg"))[0]
img = Image.open(src).convert("RGB").resize((4000, 3000), Image.BICUBIC)
a = np.asarray(img).astype(np.int16)
a = a + np.random.default_rng(0).integers(-6, 7, size=a.shape, dtype=np.int16)
Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(sys.argv[1], quality=92)
print("made", sys.argv[1], "from", src)
"""
    subprocess.run([python, "-c", code, str(path), str(manifest.parent)], check=True, cwd=ROOT)


def ingest_http(server: Server, shops, workers: int) -> dict:
    def one(item):
        pid, (tags, files) = item
        body, ctype = multipart({"id": pid, "title": pid, "tags": sorted(tags)}, files)
        status, text = request("127.0.0.1", server.port, "POST", server.ingest_path, body, ctype)
        return status, len(files), text

    t0 = time.perf_counter()
    cpu0 = server.cpu_s()
    statuses: dict[str, int] = {}
    images = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for status, n, text in pool.map(one, sorted(shops.items())):
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            if status in (200, 201):
                images += n
            elif statuses[str(status)] == 1:
                print(f"  {server.name}: ingest answered {status}: {text[:200]!r}", flush=True)
    dt = time.perf_counter() - t0
    return {"products": len(shops), "images": images, "seconds": round(dt, 2),
            "images_per_s": round(images / dt, 1), "statuses": statuses, "concurrency": workers,
            "server_cpu_ms_per_image": round(1e3 * (server.cpu_s() - cpu0) / max(images, 1), 2),
            "loadavg": loadavg()}


def top_products(server: Server, body: bytes, k: int = 20) -> list[str] | None:
    status, text = request("127.0.0.1", server.port, "POST", server.search_path.replace("k=20", f"k={k}"),
                           body, "image/jpeg")
    if status != 200:
        return None
    return [r["product_id"] for r in json.loads(text)["results"]]


# ---------------------------------------------------------------------------------------------

def geomean(xs: list[float]) -> float:
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else 0.0


def add_server_args(ap: argparse.ArgumentParser) -> None:
    """The options every load script of snapshop's release server shares (also scripts/batching.py)."""
    ap.add_argument("--bin", type=Path, default=ROOT / "target/release/snapshop")
    ap.add_argument("--bundle", type=Path, default=ROOT / "models/default")
    ap.add_argument("--manifest", type=Path, default=ROOT / "data/street2shop/manifest.csv")
    ap.add_argument("--split", default="test")
    ap.add_argument("--photo-12mp", type=Path, default=ROOT / "target/bench/street_12mp.jpg")
    ap.add_argument("--concurrency", default="1,4,16")


def ort_env() -> dict | None:
    """os.environ with ORT_DYLIB_PATH set (to the .venv wheel's library when unset); None if
    there is none to set."""
    env = dict(os.environ)
    if not env.get("ORT_DYLIB_PATH"):
        libs = sorted(glob.glob(str(ROOT / ".venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*")))
        if not libs:
            return None
        env["ORT_DYLIB_PATH"] = libs[-1]
    return env


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few seconds per cell, to prove it works end to end")
    add_server_args(ap)
    ap.add_argument("--baseline-python", default=str(ROOT / ".venv-baseline/bin/python"))
    ap.add_argument("--requests", type=int, default=None, help="per cell and server, small photos (default 3000; quick 150)")
    ap.add_argument("--seconds", type=float, default=None, help="per cell and server (default 30; quick 3)")
    ap.add_argument("--requests-12mp", type=int, default=None, help="per cell and server, 12 MP (default 1000; quick 40)")
    ap.add_argument("--agreement-queries", type=int, default=None, help="default 50; quick 20")
    ap.add_argument("--ingest-concurrency", type=int, default=4)
    ap.add_argument("--baselines", default="1,2", help="uvicorn worker counts to run the baseline with")
    ap.add_argument("--snapshop-variant", action="append", default=[], metavar="LABEL=FLAGS",
                    help="also run snapshop with extra serve flags, e.g. 'intra1=--intra-threads 1' "
                         "(reported beside the default one; the ratios use the default)")
    ap.add_argument("--no-hey", action="store_true", help="skip the hey cross-check of the client")
    ap.add_argument("--out", type=Path, default=ROOT / "target/sidebyside")
    args = ap.parse_args()
    # SIGTERM (timeout, kill) unwinds like Ctrl-C, so that the servers started here are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    q = args.quick
    n_small = args.requests or (150 if q else 3000)
    n_big = args.requests_12mp or (40 if q else 1000)
    seconds = args.seconds or (3.0 if q else 30.0)
    n_agree = args.agreement_queries or (20 if q else 50)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    worker_counts = [int(w) for w in args.baselines.split(",")]
    cores = os.cpu_count() or 1

    for what, path in (("release binary", args.bin), ("manifest", args.manifest), ("baseline venv", Path(args.baseline_python))):
        if not path.exists():
            print(f"sidebyside: missing {what} {path} (see this script's docstring)", file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.photo_12mp.exists():
        make_12mp(args.photo_12mp, args.manifest, args.baseline_python)
    env = ort_env()
    if env is None:
        print("sidebyside: set ORT_DYLIB_PATH (. scripts/env.sh)", file=sys.stderr)
        return 2

    shops, queries = read_split(args.manifest, args.split)
    small = [p.read_bytes() for p, _ in queries]
    big = [args.photo_12mp.read_bytes()]
    n_images = sum(len(f) for _, f in shops.values())
    print(f"sidebyside: gallery {len(shops)} products, {n_images} images; {len(small)} street photos; "
          f"12 MP photo {len(big[0]) / 1e6:.1f} MB; load average {loadavg()}", flush=True)

    report: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "quick": q,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpu": cpu_model(), "cores": cores, "kernel": platform.release(),
                    "python": platform.python_version()},
        "git": {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))},
        "bounds": {"small_requests": n_small, "big_requests": n_big, "seconds": seconds,
                   "concurrency": concurrencies},
        "loadavg_start": loadavg(),
    }
    servers: list[Server] = []
    tmp = Path(tempfile.mkdtemp(prefix="sidebyside-"))
    try:
        # -- snapshop
        port = free_port()
        snap_env = dict(env, SNAPSHOP_AUTH__DEV_MODE="true", SNAPSHOP_RATE_LIMITS__ENABLED="false",
                        SNAPSHOP_LOG="warn")
        snap = Server("snapshop", [str(args.bin), "serve", "--data-dir", str(tmp / "snapshop"),
                                   "--bundle", str(args.bundle), "--listen", f"127.0.0.1:{port}"],
                      snap_env, port, args.out / "snapshop.log", "/readyz", "/v1/search?k=20",
                      "/v1/merchants/load/products")
        servers.append(snap)
        snap_ready = snap.wait_ready(120)
        variants: list[Server] = []
        for spec in args.snapshop_variant:
            label, _, flags = spec.partition("=")
            vport = free_port()
            v = Server(f"snapshop-{label}", [str(args.bin), "serve", "--data-dir", str(tmp / f"snapshop-{label}"),
                                             "--bundle", str(args.bundle), "--listen", f"127.0.0.1:{vport}", *flags.split()],
                       snap_env, vport, args.out / f"snapshop-{label}.log", "/readyz", "/v1/search?k=20",
                       "/v1/merchants/load/products")
            servers.append(v)
            variants.append(v)
            v.wait_ready(120)
        version = subprocess.run([str(args.bin), "--version"], capture_output=True, text=True).stdout.strip()
        # -- the baselines
        bpy = args.baseline_python
        vers = subprocess.run([bpy, "-c", "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
                               "('fastapi','uvicorn','onnxruntime','hnswlib','numpy','pillow','starlette','uvloop','httptools')}))"],
                              capture_output=True, text=True, check=True).stdout
        report["versions"] = {"snapshop": version, "ort_dylib": env["ORT_DYLIB_PATH"],
                              "baseline": json.loads(vers),
                              "bundle": json.loads((args.bundle / "manifest.json").read_text())["model_version"]}
        gallery_dir = args.out / "baseline-gallery"
        baselines: list[Server] = []
        built = None
        for w in worker_counts:
            bport = free_port()
            benv = dict(env, BASELINE_BUNDLE=str(args.bundle), BASELINE_INTRA_THREADS=str(max(1, cores // w) if w > 1 else 0))
            if w > 1:
                if built is None:
                    out = subprocess.run([bpy, str(ROOT / "benches/baseline/app.py"), "build", "--bundle", str(args.bundle),
                                          "--manifest", str(args.manifest), "--split", args.split, "--out", str(gallery_dir)],
                                         capture_output=True, text=True, cwd=ROOT)
                    if out.returncode:
                        raise SystemExit(f"baseline build failed: {out.stderr[-2000:]}")
                    built = json.loads(out.stdout.strip().splitlines()[-1])
                    print(f"  baseline gallery built offline: {built}", flush=True)
                benv["BASELINE_GALLERY"] = str(gallery_dir)
            cmd = [bpy, "-m", "uvicorn", "--app-dir", str(ROOT / "benches/baseline"), "app:app", "--host", "127.0.0.1",
                   "--port", str(bport), "--workers", str(w), "--no-access-log", "--log-level", "warning",
                   "--loop", "uvloop", "--http", "httptools"]
            b = Server(f"baseline-{w}w", cmd, benv, bport, args.out / f"baseline-{w}w.log", "/healthz",
                       "/v1/search?k=20", "/v1/products" if w == 1 else None)
            servers.append(b)
            baselines.append(b)
        for b in baselines:
            b.wait_ready(180)
        print(f"  servers up: snapshop {version} on :{snap.port} (ready in {snap_ready:.1f} s), "
              + ", ".join(f"{b.name} on :{b.port}" for b in baselines), flush=True)

        # -- the gallery, into every server
        ingest = {}
        for s in [snap, *variants]:
            ingest[s.name] = ingest_http(s, shops, args.ingest_concurrency)
            print(f"  ingest {s.name}: {ingest[s.name]}", flush=True)
        for b in baselines:
            if b.ingest_path:
                ingest[b.name] = ingest_http(b, shops, args.ingest_concurrency)
                print(f"  ingest {b.name}: {ingest[b.name]}", flush=True)
        if built:
            ingest["baseline offline build (for the 2-worker server)"] = built
        report["ingest"] = ingest
        everyone = [snap, *variants, *baselines]
        # snapshop applies writes to its search view at commit; wait until a search finds results
        for s in everyone:
            for _ in range(100):
                if top_products(s, small[0]):
                    break
                time.sleep(0.2)
            status, text = request("127.0.0.1", s.port, "GET", "/healthz")
            print(f"  {s.name} answers; /healthz {status}", flush=True)
            if s in baselines:
                h = json.loads(text)
                if h["images"] != n_images:
                    raise SystemExit(f"{s.name} holds {h['images']} images, not {n_images}")

        # -- agreement
        agree: dict = {}
        step = max(1, len(queries) // n_agree)
        sample = queries[::step][:n_agree]
        tops = {s.name: [top_products(s, p.read_bytes()) for p, _ in sample] for s in everyone}
        for b in [*variants, *baselines]:
            same1 = sum(1 for a, c in zip(tops["snapshop"], tops[b.name]) if a and c and a[0] == c[0])
            overlap = [len(set(a) & set(c)) / max(len(a), 1) for a, c in zip(tops["snapshop"], tops[b.name]) if a and c]
            agree[b.name] = {"queries": len(sample), "top1_agree": same1,
                             "top20_overlap_mean": round(sum(overlap) / max(len(overlap), 1), 3)}
        for s in everyone:
            hits = sum(1 for (p, pid), t in zip(sample, tops[s.name]) if t and t[0] == pid)
            agree.setdefault(s.name, {})["top1_is_true_product"] = hits
        report["agreement"] = agree
        print(f"  agreement on {len(sample)} queries: {agree}", flush=True)

        # -- warm-up: one short burst per server and photo kind (not measured)
        for s in everyone:
            run_cell(s, small, 2, 20, 10, 0)
            run_cell(s, big, 2, 4, 20, 0)

        # -- the cells
        cells = []
        order = everyone
        index = 0
        for kind, bodies, n in (("small", small, n_small), ("12mp", big, n_big)):
            for c in concurrencies:
                runs = {}
                seq = order if index % 2 == 0 else list(reversed(order))
                index += 1
                for s in seq:
                    r = run_cell(s, bodies, c, n, seconds, warmup=1 if kind == "12mp" else 2)
                    runs[s.name] = r
                    print(f"  {kind:5s} c{c:<2d} {s.name:12s} {r['rps']:8.2f} req/s  p50 {r['p50_ms']} p95 {r['p95_ms']} "
                          f"p99 {r['p99_ms']} ms  errors {r['errors']}  server {r['server_cpu_ms_per_req']} ms CPU/req  "
                          f"client {r['client_cores']} cores  others {r['other_cores']} cores  load {r['loadavg_after']}",
                          flush=True)
                cells.append({"photo": kind, "concurrency": c, "order": [s.name for s in seq], "runs": runs})
        report["cells"] = cells

        # -- which baseline: the better over all cells (geometric mean of req/s)
        gm = {b.name: geomean([cell["runs"][b.name]["rps"] for cell in cells]) for b in baselines}
        best = max(gm, key=gm.get)
        report["baseline_choice"] = {"geomean_rps": {k: round(v, 2) for k, v in gm.items()}, "chosen": best}
        for cell in cells:
            sr = cell["runs"]["snapshop"]["rps"]
            br = cell["runs"][best]["rps"]
            bb = max(cell["runs"][b.name]["rps"] for b in baselines)
            cell["ratio"] = round(sr / br, 2) if br else None
            cell["ratio_vs_best_baseline_in_cell"] = round(sr / bb, 2) if bb else None
            cell["ratio_server_cpu_per_req"] = (
                round(cell["runs"][best]["server_cpu_ms_per_req"] / cell["runs"]["snapshop"]["server_cpu_ms_per_req"], 2)
                if cell["runs"]["snapshop"]["server_cpu_ms_per_req"] and cell["runs"][best]["server_cpu_ms_per_req"] else None)

        # -- is the client the bottleneck? hey against the same servers, one photo, c16
        hey = shutil.which("hey")
        if hey and not args.no_hey:
            photo = sample[0][0]
            body = [photo.read_bytes()]
            check = {"photo": str(photo.relative_to(ROOT)) if photo.is_relative_to(ROOT) else str(photo), "concurrency": 16}
            check_s = min(seconds, 15.0)
            for s in [snap, *baselines]:
                mine = run_cell(s, body, 16, n_small, check_s, 2)
                n = max(50, int(mine["rps"] * check_s))
                theirs = hey_rps(hey, s, photo, 16, n, check_s * 3 + 30)
                check[s.name] = {"this_client_rps": mine["rps"], "this_client_cores": mine["client_cores"],
                                 "hey_rps": theirs.get("rps"), "hey": theirs, "loadavg": loadavg()}
                print(f"  client check {s.name}: this client {mine['rps']} req/s, hey {theirs.get('rps')} req/s", flush=True)
            report["client_check"] = check
        else:
            report["client_check"] = {"skipped": "hey not installed" if not hey else "--no-hey"}

        report["loadavg_end"] = loadavg()
        report["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    # -- the summary
    targets = {("small", 1): 2.0, ("small", 4): 2.0, ("small", 16): 2.0,
               ("12mp", 1): 3.0, ("12mp", 4): 3.0, ("12mp", 16): 3.0}
    lines = [f"\nbaseline: {best} (geometric mean req/s {report['baseline_choice']['geomean_rps']})",
             "| photo | c | snapshop req/s | baseline req/s | ratio | target | snapshop p50/p95/p99 ms | baseline p50/p95/p99 ms | errors s/b |",
             "|---|---|---|---|---|---|---|---|---|"]
    summary = []
    for cell in cells:
        s, b = cell["runs"]["snapshop"], cell["runs"][best]
        t = targets.get((cell["photo"], cell["concurrency"]))
        met = cell["ratio"] is not None and t is not None and cell["ratio"] >= t
        summary.append({"photo": cell["photo"], "concurrency": cell["concurrency"], "snapshop_rps": s["rps"],
                        "baseline_rps": b["rps"], "ratio": cell["ratio"], "target_ratio": t, "met": met})
        lines.append(f"| {cell['photo']} | {cell['concurrency']} | {s['rps']} | {b['rps']} | {cell['ratio']}x | "
                     f">= {t}x {'met' if met else 'missed'} | {s['p50_ms']}/{s['p95_ms']}/{s['p99_ms']} | "
                     f"{b['p50_ms']}/{b['p95_ms']}/{b['p99_ms']} | {s['errors']}/{b['errors']} |")
    for name in sorted({n for cell in cells for n in cell["runs"] if n.startswith("snapshop-")}):
        parts = []
        for cell in cells:
            v, bl = cell["runs"][name]["rps"], cell["runs"][best]["rps"]
            cell.setdefault("variant_ratios", {})[name] = round(v / bl, 2) if bl else None
            parts.append(f"{cell['photo']} c{cell['concurrency']} {v} req/s ({cell['variant_ratios'][name]}x)")
        lines.append(f"{name}: " + "; ".join(parts))
    c16 = next((c for c in cells if c["photo"] == "12mp" and c["concurrency"] == 16), None)
    if c16:
        r = c16["runs"]["snapshop"]["rps"]
        report["target_12mp_c16_80rps"] = {"rps": r, "met": r >= 80}
        lines.append(f"12 MP at concurrency 16: {r} req/s (target >= 80: {'met' if r >= 80 else 'missed'})")
    report["summary"] = summary
    lines.append(f"load average: start {report['loadavg_start']}, end {report['loadavg_end']}; "
                 f"{report['machine']['cpu']}, {cores} cores; commit {report['git']['commit'][:12]}"
                 f"{' (dirty)' if report['git']['dirty'] else ''}")
    print("\n".join(lines))
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
