#!/usr/bin/env python3
"""The GPU path's checks (issue 9, part 5), run by scripts/gpu-check.sh; CPU mode without CUDA.

Three parts, each with a time budget, all written to $OUT/gpu-check.json as they finish:
  1. parity: each of the bundle's three graphs on the CUDA execution provider against the CPU
     one, on the golden images (models/default/golden/) and on seeded random inputs: the max abs
     difference per output. Without CUDA: the CPU provider against golden.json's recorded
     outputs instead (the CUDA comparison is then "not measured").
  2. sweep: user.onnx at batch sizes 1, 2, 4, ..., 64: images/s per batch size, on every
     provider available (CUDA and CPU, or CPU alone).
  3. e2e: `snapshop serve --device cuda` (or `--device cpu` without CUDA) on a temporary data
     directory, the small gallery of tests/fixtures/subset/ ingested over HTTP, then 12 MP JPEG
     searches at concurrency 1 and 16, bounded by requests and seconds; req/s, p50/p95/p99, the
     device /readyz reports, and the server's mean per-stage times (from /metrics).

It needs onnxruntime and numpy (and Pillow for the golden images and to make the 12 MP photo;
without Pillow those steps are skipped, saying so). The load client is scripts/sidebyside.py's.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sidebyside as sbs  # noqa: E402  (the stdlib HTTP client and server handling)

ROOT = Path(__file__).resolve().parent.parent

try:
    from PIL import ExifTags, Image, ImageOps
except ImportError:  # parity on random inputs only, no 12 MP photo made
    Image = None


def log(*a) -> None:
    print(*a, flush=True)


class Report:
    def __init__(self, path: Path, base: dict):
        self.path, self.data = path, base

    def put(self, key: str, value) -> None:
        self.data[key] = value
        self.path.write_text(json.dumps(self.data, indent=2) + "\n")


def preprocess(manifest: dict, data: bytes) -> np.ndarray:
    """models/BUNDLE.md's preprocessing with Pillow (as benches/baseline/app.py)."""
    pre = manifest["preprocess"]
    w, h = pre["resize"]["width"], pre["resize"]["height"]
    with Image.open(io.BytesIO(data)) as img:
        if pre.get("jpeg_draft", False) and img.format == "JPEG":
            k = int(pre.get("jpeg_draft_factor", 1))
            dw, dh = (k * h, k * w) if img.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8) else (k * w, k * h)
            img.draft("RGB", (dw, dh))
        img = ImageOps.exif_transpose(img).convert("RGB").resize((w, h), Image.Resampling.BILINEAR)
    arr = np.asarray(img, np.float32) * np.float32(pre["scale"])
    arr = (arr - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def sessions(bundle: Path, manifest: dict, provider: str, threads: int) -> dict:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    out = {}
    for name in ("shop", "user", "ctx"):
        s = ort.InferenceSession(str(bundle / manifest["graphs"][name]["file"]), opts, providers=providers)
        if s.get_providers()[0] != provider:
            raise RuntimeError(f"{name}.onnx did not get {provider} (got {s.get_providers()})")
        out[name] = s
    return out


def graph_inputs(bundle: Path, manifest: dict, rng: np.random.Generator) -> dict:
    """Inputs for each graph: the golden images (when Pillow is there) and random ones."""
    size = (manifest["input"]["height"], manifest["input"]["width"])
    t, c, locs = manifest["tags"]["count"], manifest["embedding_dim"], manifest["locations"]
    inputs = {"shop": [], "user": [], "ctx": []}
    if Image is not None:
        gdir = bundle / "golden"
        golden = json.loads((gdir / "golden.json").read_text())
        vocab = {v: i for i, v in enumerate(manifest["tags"]["vocabulary"])}
        for e in golden["images"]:
            try:
                x = preprocess(manifest, (gdir / e["file"]).read_bytes())[None]
            except OSError:  # HEIC without pillow-heif
                continue
            if e["domain"] == "shop":
                tags = np.zeros((1, t), np.float32)
                for tag in e.get("tags", []):
                    if tag in vocab:
                        tags[0, vocab[tag]] = 1.0
                inputs["shop"].append((f"golden:{e['file']}", {"image": x, "tags": tags}))
            else:
                inputs["user"].append((f"golden:{e['file']}", {"image": x}))
    x = rng.standard_normal((4, 3, *size), dtype=np.float32)
    inputs["shop"].append(("random:4", {"image": x, "tags": (rng.random((4, t)) < 0.1).astype(np.float32)}))
    inputs["user"].append(("random:4", {"image": x}))
    cand = rng.standard_normal((2, 256, c), dtype=np.float32)
    cand /= np.linalg.norm(cand, axis=-1, keepdims=True)
    inputs["ctx"].append(("random:2x256", {"features": rng.standard_normal((2, locs, c), dtype=np.float32),
                                           "candidates": cand}))
    return inputs


def part_parity(bundle: Path, manifest: dict, cuda: bool, threads: int) -> dict:
    rng = np.random.default_rng(0)
    inputs = graph_inputs(bundle, manifest, rng)
    cpu = sessions(bundle, manifest, "CPUExecutionProvider", threads)
    # The golden re-rank as a ctx.onnx input too: its query's features and its candidates'
    # embeddings (computed on the CPU, so that both providers see the same ctx input).
    feeds = {n.split(":", 1)[1]: f for g in ("shop", "user") for n, f in inputs[g] if n.startswith("golden:")}
    if Image is not None:
        rr = json.loads((bundle / "golden" / "golden.json").read_text()).get("rerank")
        if rr and rr["query"] in feeds and all(c in feeds for c in rr["candidates"]):
            feats = cpu["user"].run(["features"], feeds[rr["query"]])[0]
            cands = np.concatenate([cpu["shop"].run(["embedding"], feeds[c])[0] for c in rr["candidates"]])[None]
            inputs["ctx"].insert(0, (f"golden:rerank:{rr['query']}", {"features": feats, "candidates": cands}))
    out: dict = {"inputs": {g: [n for n, _ in v] for g, v in inputs.items()}}
    if cuda:
        gpu = sessions(bundle, manifest, "CUDAExecutionProvider", 0)
        worst: dict = {}
        for g, items in inputs.items():
            names = [o.name for o in cpu[g].get_outputs()]
            for label, feed in items:
                a, b = cpu[g].run(names, feed), gpu[g].run(names, feed)
                for n, x, y in zip(names, a, b):
                    d = float(np.abs(x - y).max())
                    worst[f"{g}.{n}"] = max(worst.get(f"{g}.{n}", 0.0), d)
                    out.setdefault("per_input", []).append({"graph": g, "output": n, "input": label, "max_abs_diff": d})
        out["cuda_vs_cpu_max_abs_diff"] = worst
        log("parity CUDA vs CPU, max abs diff per output:", json.dumps(worst))
    else:
        out["cuda_vs_cpu_max_abs_diff"] = "not measured: no CUDA execution provider here"
        log("parity: no CUDA here; CPU provider against golden.json instead")
    # The provider(s) against the outputs recorded in golden.json (embeddings; the re-rank).
    if Image is not None:
        gdir = bundle / "golden"
        golden = json.loads((gdir / "golden.json").read_text())
        provs = {"cpu": cpu}
        if cuda:
            provs["cuda"] = gpu
        vs_golden: dict = {}
        by_file = {n.split(":", 1)[1]: f for g in ("shop", "user") for n, f in inputs[g] if n.startswith("golden:")}
        for pname, sess in provs.items():
            worst = 0.0
            for e in golden["images"]:
                feed = by_file.get(e["file"])
                if feed is None:
                    continue
                g = "shop" if e["domain"] == "shop" else "user"
                emb = sess[g].run(["embedding"], feed)[0][0]
                worst = max(worst, float(np.abs(emb - np.asarray(e["embedding"], np.float32)).max()))
            vs_golden[pname] = {"embedding_max_abs_diff": worst, "tolerance": golden.get("tolerance")}
            rr = golden.get("rerank")
            if rr and rr["query"] in by_file and all(c in by_file for c in rr["candidates"]):
                feats = sess["user"].run(["features"], by_file[rr["query"]])[0]
                cands = np.concatenate([sess["shop"].run(["embedding"], by_file[c])[0] for c in rr["candidates"]])[None]
                scores = sess["ctx"].run(["scores"], {"features": feats, "candidates": cands})[0][0]
                vs_golden[pname]["rerank_scores_max_abs_diff"] = float(np.abs(scores - np.asarray(rr["scores"])).max())
        out["vs_golden_json"] = vs_golden
        log("parity against golden.json:", json.dumps(vs_golden))
    else:
        out["vs_golden_json"] = "skipped: no Pillow to decode the golden images"
    return out


def part_sweep(bundle: Path, manifest: dict, providers: list[str], threads: int, budget_s: float) -> dict:
    size = (manifest["input"]["height"], manifest["input"]["width"])
    rng = np.random.default_rng(1)
    out: dict = {}
    per = budget_s / max(1, len(providers)) / 7
    for p in providers:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads if p == "CPUExecutionProvider" else 0
        provs = [p] if p == "CPUExecutionProvider" else [p, "CPUExecutionProvider"]
        s = ort.InferenceSession(str(bundle / manifest["graphs"]["user"]["file"]), opts, providers=provs)
        rows = []
        for b in (1, 2, 4, 8, 16, 32, 64):
            x = rng.standard_normal((b, 3, *size), dtype=np.float32)
            s.run(None, {"image": x})  # warm-up (CUDA: allocations, cuDNN algorithm search)
            runs, t0 = 0, time.perf_counter()
            while True:
                s.run(None, {"image": x})
                runs += 1
                dt = time.perf_counter() - t0
                if (dt >= per and runs >= 2) or dt >= 3 * per:
                    break
            rows.append({"batch": b, "runs": runs, "ms_per_batch": round(1e3 * dt / runs, 2),
                         "images_per_s": round(b * runs / dt, 1)})
            log(f"sweep {p}: batch {b:2d}: {rows[-1]['images_per_s']:8.1f} images/s ({rows[-1]['ms_per_batch']} ms per call)")
        out[p] = rows
    return out


def stage_means(metrics: str) -> dict:
    sums, counts = {}, {}
    for m in re.finditer(r'snapshop_search_stage_duration_seconds_(sum|count)\{stage="(\w+)"\} ([0-9.eE+-]+)', metrics):
        (sums if m.group(1) == "sum" else counts)[m.group(2)] = float(m.group(3))
    return {"sum": sums, "count": counts}


def stage_delta(before: dict, after: dict) -> dict:
    out = {}
    for st, s in after["sum"].items():
        n = after["count"].get(st, 0) - before["count"].get(st, 0)
        if n > 0:
            out[st] = round(1e3 * (s - before["sum"].get(st, 0.0)) / n, 2)
    return out


def part_e2e(args, device: str, ort_dylib: str, budget_s: float) -> dict:
    out: dict = {"device_asked": device}
    binary = Path(args.bin)
    if not binary.exists():
        return {"skipped": f"no release binary at {binary} (cargo build --release --locked)"}
    photo = Path(args.photo_12mp)
    if not photo.exists():
        if Image is None:
            return {"skipped": f"no 12 MP photo at {photo} and no Pillow to make one"}
        # As scripts/bench.sh makes it, from the bundle's golden street photo (data/ may be absent).
        photo.parent.mkdir(parents=True, exist_ok=True)
        src = args.bundle / "golden" / "street_0.jpg"
        img = Image.open(src).convert("RGB").resize((4000, 3000), Image.BICUBIC)
        a = np.asarray(img).astype(np.int16) + np.random.default_rng(0).integers(-6, 7, size=(3000, 4000, 3), dtype=np.int16)
        Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(photo, quality=92)
        log(f"e2e: made {photo} from {src}")
    out["photo"] = {"path": str(photo), "bytes": photo.stat().st_size}
    shops, queries = sbs.read_split(args.gallery, "test")
    tmp = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    port = sbs.free_port()
    env = dict(os.environ, ORT_DYLIB_PATH=ort_dylib, SNAPSHOP_AUTH__DEV_MODE="true",
               SNAPSHOP_RATE_LIMITS__ENABLED="false", SNAPSHOP_LOG="warn")
    server = sbs.Server("snapshop", [str(binary), "serve", "--data-dir", str(tmp), "--bundle", str(args.bundle),
                                     "--listen", f"127.0.0.1:{port}", "--device", device],
                        env, port, args.out / "snapshop.log", "/readyz", "/v1/search?k=20", "/v1/merchants/load/products")
    t_end = time.time() + budget_s
    try:
        out["ready_s"] = round(server.wait_ready(90), 2)
        _, ready = sbs.request("127.0.0.1", port, "GET", "/readyz")
        out["device_in_use"] = json.loads(ready).get("device")
        log(f"e2e: snapshop ready in {out['ready_s']} s, device asked {device}, in use {out['device_in_use']}")
        out["ingest"] = sbs.ingest_http(server, shops, 4)
        log(f"e2e: ingest {out['ingest']}")
        body = [photo.read_bytes()]
        sbs.run_cell(server, body, 2, 4, 20, 0)  # warm-up
        out["cells"] = []
        for c, n in ((1, args.requests_c1), (16, args.requests_c16)):
            left = t_end - time.time()
            if left < 5:
                out["cells"].append({"concurrency": c, "skipped": "time budget spent"})
                continue
            _, m0 = sbs.request("127.0.0.1", port, "GET", "/metrics")
            r = sbs.run_cell(server, body, c, n, min(args.cell_seconds, left - 3), 1)
            _, m1 = sbs.request("127.0.0.1", port, "GET", "/metrics")
            r["stage_mean_ms"] = stage_delta(stage_means(m0.decode()), stage_means(m1.decode()))
            out["cells"].append(r)
            log(f"e2e: 12 MP c{c}: {r['rps']} req/s, p50 {r['p50_ms']} p95 {r['p95_ms']} p99 {r['p99_ms']} ms, "
                f"errors {r['errors']}, stages {r['stage_mean_ms']}, load {r['loadavg_after']}")
    finally:
        server.stop()
        subprocess.run(["rm", "-rf", str(tmp)])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "target/gpu-check")
    ap.add_argument("--bundle", type=Path, default=ROOT / "models/default")
    ap.add_argument("--bin", default=str(ROOT / "target/release/snapshop"))
    ap.add_argument("--ort-dylib", default=os.environ.get("ORT_DYLIB_PATH", ""))
    ap.add_argument("--gallery", type=Path, default=ROOT / "tests/fixtures/subset/manifest.csv")
    ap.add_argument("--photo-12mp", default=str(ROOT / "target/bench/street_12mp.jpg"))
    ap.add_argument("--threads", type=int, default=0, help="CPU provider intra-op threads (0: onnxruntime's choice)")
    ap.add_argument("--sweep-seconds", type=float, default=60.0, help="budget of the batch sweep, all providers")
    ap.add_argument("--e2e-seconds", type=float, default=120.0, help="budget of the load test")
    ap.add_argument("--cell-seconds", type=float, default=40.0)
    ap.add_argument("--requests-c1", type=int, default=60)
    ap.add_argument("--requests-c16", type=int, default=400)
    args = ap.parse_args()
    # SIGTERM (timeout, kill) unwinds like Ctrl-C, so that the servers started here are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    available = ort.get_available_providers()
    cuda = "CUDAExecutionProvider" in available
    mode = "cuda" if cuda else "cpu"
    gpu = ""
    if cuda:
        try:
            gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            gpu = "nvidia-smi not available"
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    report = Report(args.out / "gpu-check.json", {
        "mode": mode,
        "note": None if cuda else "CPU mode: no CUDAExecutionProvider in this onnxruntime; CUDA figures still to be measured on a GPU",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpu": sbs.cpu_model(), "cores": os.cpu_count(), "gpu": gpu or None, "kernel": platform.release()},
        "onnxruntime": {"version": ort.__version__, "providers": available, "python": sys.executable,
                        "dylib_for_service": args.ort_dylib},
        "bundle": manifest["model_version"],
        "git": {"commit": sbs.git("rev-parse", "HEAD"), "dirty": bool(sbs.git("status", "--porcelain"))},
        "loadavg_start": sbs.loadavg(),
    })
    log(f"gpu-check: mode {mode.upper()}{'' if cuda else ' (no CUDA execution provider: CPU figures only)'}; "
        f"onnxruntime {ort.__version__} {available}; load average {sbs.loadavg()}")
    try:
        report.put("parity", part_parity(args.bundle, manifest, cuda, args.threads))
    except Exception as exc:  # a broken CUDA setup must not stop the other parts
        report.put("parity", {"error": repr(exc)})
        log(f"parity failed: {exc!r}")
    providers = (["CUDAExecutionProvider"] if cuda else []) + ["CPUExecutionProvider"]
    try:
        report.put("sweep", part_sweep(args.bundle, manifest, providers, args.threads, args.sweep_seconds))
    except Exception as exc:
        report.put("sweep", {"error": repr(exc)})
        log(f"sweep failed: {exc!r}")
    report.put("loadavg_after_sweep", sbs.loadavg())
    if not args.ort_dylib:
        report.put("e2e", {"skipped": "no ORT_DYLIB_PATH for the service"})
        log("e2e skipped: no ORT_DYLIB_PATH for the service")
    else:
        try:
            report.put("e2e", part_e2e(args, mode, args.ort_dylib, args.e2e_seconds))
            if "skipped" in report.data["e2e"]:
                log(f"e2e skipped: {report.data['e2e']['skipped']}")
        except (Exception, SystemExit) as exc:
            report.put("e2e", {"error": repr(exc)})
            log(f"e2e failed: {exc!r}")
    report.put("loadavg_end", sbs.loadavg())
    report.put("wall_s", round(time.time() - t0, 1))
    log(f"gpu-check: done in {time.time() - t0:.0f} s; wrote {report.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
