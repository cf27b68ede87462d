"""Is an int8 model worth shipping? (issue 9, part 2: "a quantised (int8) or fp16 user branch,
kept only if P@K on the benchmarks drops by <= 0.5 pt").

Quantises a bundle's `user.onnx` (and `shop.onnx`) statically with onnxruntime's own tool (QDQ,
per-channel int8 weights, uint8 activations calibrated on train-split photos that no benchmark
evaluates on), then measures, with the bundle's own preprocessing:
  - the first-pass P@K on each benchmark's test split (the service's default answer), for the
    float32 bundle, for an int8 user branch against float32 shop embeddings (no catalogue
    re-embedding needed), and for both branches in int8;
  - the speed of each graph on the CPU provider at batch 1 and 8 (onnxruntime's default threads),
    in ms per image.
Nothing here changes the bundle; the quantised graphs are written under --out.

Usage (from models/):
  ../.venv/bin/python -m snapshop_ml.quantize --bundle default \\
      --calibration ../data/street2shop/manifest.csv \\
      --data ../data/street2shop/manifest.csv --data ../data/street2shop-hard/manifest.csv \\
      --data ../data/realphoto/manifest.csv --out runs/quantize
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

from .data.loaders import load_dataset
from .evaluate import EvalSet, p_at_k
from .export import session
from .preprocess import jpeg_draft_of, preprocess_file
from .train import machine_description

KS = (1, 5, 10, 20)


class Calibration(CalibrationDataReader):
    """Preprocessed train-split images, one at a time, as the graph's inputs."""

    def __init__(self, paths, size, draft, tags_of=None, tag_count=0):
        self.items = iter(paths)
        self.size, self.draft, self.tags_of, self.tag_count = size, draft, tags_of, tag_count

    def get_next(self):
        p = next(self.items, None)
        if p is None:
            return None
        x = {"image": preprocess_file(p, self.size, self.draft)[None]}
        if self.tags_of is not None:
            x["tags"] = self.tags_of(p)
        return x


CALIBRATION = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}


def quantize(src: Path, dst: Path, reader: CalibrationDataReader, method: str, op_types: list[str] | None) -> Path:
    pre = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CALIBRATION[method], op_types_to_quantize=op_types)
    pre.unlink()
    return dst


def ms_per_image(sess: ort.InferenceSession, feeds_of, batch: int, seconds: float = 4.0) -> float:
    feeds = feeds_of(batch)
    sess.run(None, feeds)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sess.run(None, feeds)
        n += 1
    return round(1e3 * (time.perf_counter() - t0) / (n * batch), 3)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=Path("default"))
    ap.add_argument("--calibration", type=Path, required=True, help="manifest whose train split calibrates")
    ap.add_argument("--calibration-images", type=int, default=200)
    ap.add_argument("--data", type=Path, action="append", required=True, help="benchmark manifests (test split)")
    ap.add_argument("--calibrate", choices=sorted(CALIBRATION), default="minmax")
    ap.add_argument("--op-types", default=None,
                    help="comma-separated ONNX op types to quantise (default: every op onnxruntime can)")
    ap.add_argument("--out", type=Path, default=Path("runs/quantize"))
    args = ap.parse_args(argv)
    op_types = args.op_types.split(",") if args.op_types else None
    t0 = time.time()
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    size, draft = manifest["input"]["height"], jpeg_draft_of(manifest)
    vocab = {t: i for i, t in enumerate(manifest["tags"]["vocabulary"])}
    args.out.mkdir(parents=True, exist_ok=True)

    def tag_vector(tags) -> np.ndarray:
        v = np.zeros((1, len(vocab)), np.float32)
        for t in tags:
            if t in vocab:
                v[0, vocab[t]] = 1.0
        return v

    cal = load_dataset(args.calibration)
    rng = np.random.default_rng(0)

    def pick(records):
        """A seeded sample of `--calibration-images` records, in dataset order."""
        n = min(args.calibration_images, len(records))
        return [records[i] for i in sorted(rng.choice(len(records), n, replace=False))]

    cal_users, cal_shops = pick(cal.subset("train", "user")), pick(cal.subset("train", "shop"))
    shop_tags = {str(r.path): tag_vector(r.tags) for r in cal_shops}
    graphs = {
        "user": quantize(args.bundle / "user.onnx", args.out / "user.int8.onnx",
                         Calibration([str(r.path) for r in cal_users], size, draft), args.calibrate, op_types),
        "shop": quantize(args.bundle / "shop.onnx", args.out / "shop.int8.onnx",
                         Calibration([str(r.path) for r in cal_shops], size, draft, lambda p: shop_tags[p]),
                         args.calibrate, op_types),
    }
    fp32 = {k: session(args.bundle / f"{k}.onnx") for k in ("user", "shop")}
    int8 = {k: session(p) for k, p in graphs.items()}

    report: dict = {"bundle": manifest["model_version"], "machine": machine_description(), "calibration": {
                        "manifest": str(args.calibration), "split": "train",
                        "user_images": len(cal_users), "shop_images": len(cal_shops)},
                    "method": f"onnxruntime.quantization.quantize_static, QDQ, per-channel QInt8 weights, "
                              f"QUInt8 activations, {args.calibrate} calibration, ops {op_types or 'all'}",
                    "benchmarks": {}}
    for data in args.data:
        ds = load_dataset(data)
        queries, gallery = ds.subset("test", "user"), ds.subset("test", "shop")
        es = EvalSet.from_records(queries, gallery)
        emb = {}
        for name, sess in (("fp32", fp32), ("int8", int8)):
            emb[f"user_{name}"] = np.stack([sess["user"].run(None, {"image": preprocess_file(p, size, draft)[None]})[1][0]
                                            for p in es.query_paths])
            emb[f"shop_{name}"] = np.stack([sess["shop"].run(None, {"image": preprocess_file(p, size, draft)[None],
                                                                    "tags": tag_vector(t)})[0][0]
                                            for p, t in zip(es.gallery_paths, es.gallery_tags)])
        rows = {
            "float32 (shipped)": (emb["user_fp32"], emb["shop_fp32"]),
            "int8 user branch, float32 catalogue": (emb["user_int8"], emb["shop_fp32"]),
            "int8 both branches": (emb["user_int8"], emb["shop_int8"]),
        }
        res = {name: p_at_k(u @ s.T, es.query_products, es.gallery_products, KS) for name, (u, s) in rows.items()}
        base = res["float32 (shipped)"]
        report["benchmarks"][data.parent.name] = {
            "manifest": str(data), "queries": len(queries), "gallery_images": len(gallery), "first_pass": res,
            "drop_pt": {name: {k: round(100 * (base[k] - r[k]), 2) for k in r} for name, r in res.items()},
            "embedding_cosine_int8_vs_fp32": {
                "user_mean": float(np.mean(np.sum(emb["user_int8"] * emb["user_fp32"], 1))),
                "shop_mean": float(np.mean(np.sum(emb["shop_int8"] * emb["shop_fp32"], 1)))},
        }
        print(data.parent.name, json.dumps(report["benchmarks"][data.parent.name]["drop_pt"]), flush=True)

    x = preprocess_file(cal_users[0].path, size, draft)[None]
    t = tag_vector(cal_shops[0].tags)
    feeds = {"user": lambda b: {"image": np.repeat(x, b, 0)},
             "shop": lambda b: {"image": np.repeat(x, b, 0), "tags": np.repeat(t, b, 0)}}
    report["speed_ms_per_image"] = {
        g: {name: {str(b): ms_per_image(s[g], feeds[g], b) for b in (1, 8)} for name, s in (("fp32", fp32), ("int8", int8))}
        for g in ("user", "shop")}
    print(json.dumps(report["speed_ms_per_image"]), flush=True)
    report["wall_time_s"] = round(time.time() - t0, 1)
    (args.out / "quantize.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out / 'quantize.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
