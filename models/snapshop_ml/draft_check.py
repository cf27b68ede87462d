"""P@K of a bundle with the JPEG decode at each draft factor, on a benchmark's own queries and on
the same queries re-encoded as 12 MP phone-sized JPEGs.

    cd models && ../.venv/bin/python -m snapshop_ml.draft_check --bundle default \
        --data ../data/realphoto/manifest.csv [--factors 0,1,2] [--split test]

Why it exists (issue 9, part 1): `preprocess.jpeg_draft` decodes a JPEG at a reduced DCT scale
before the resize. On the benchmarks' own images (at most ~480 px) the factor decides whether
anything changes at all; on a phone photo it decides how much of the picture the DCT scaling
throws away before the resize. This measures both, with the bundle's own graphs through
onnxruntime: factor 0 is the full decode, k is Pillow's `draft()` asked for k times the input
size (what `preprocess.jpeg_draft_factor` = k makes the service do). Gallery images and queries
are decoded the same way within a row, as the service decodes them.

The 12 MP query of a street photo is the photo upscaled (bicubic) to 4000 x 3000 (3000 x 4000 when
it is taller than wide) with seeded noise of +-4 levels, JPEG quality 90, written once into
`--work` (default `models/.cache/draft_check/`). It is not a real phone photo: the upscale adds
no detail, so it tests the decode path, not the model on sharper pictures.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from .evaluate import p_at_k
from .evaluate_real import eval_sets
from .export import OnnxBundle, phone_sized
from .preprocess import load_rgb, preprocess_file
from .train import machine_description

log = logging.getLogger("snapshop_ml.draft_check")
HERE = Path(__file__).resolve().parent.parent  # models/
KS = (1, 5, 10, 20)


def phone_query(src: Path, out: Path, seed: int) -> Path:
    """`src` as a 12 MP phone-sized JPEG (`export.phone_sized`, quality 90), made once."""
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp.jpg")
        phone_sized(load_rgb(src), seed).save(tmp, quality=90)
        tmp.rename(out)
    return out


def tensor(path: Path, size: int, factor: int) -> np.ndarray:
    return preprocess_file(path, size, factor)[None]


def run(bundle: Path, data: Path, split: str, factors: list[int], work: Path) -> dict:
    manifest = json.loads((bundle / "manifest.json").read_text())
    size = manifest["input"]["height"]
    onnx = OnnxBundle(bundle, manifest["tags"]["vocabulary"], size)
    es = eval_sets(data, (split,))[split]
    phone = [phone_query(Path(p), work / data.parent.name / split / f"{i:05d}.jpg", i)
             for i, p in enumerate(es.query_paths)]
    rows: dict[str, dict] = {}
    for k in factors:
        t0 = time.time()
        gallery = np.stack([onnx.shop.run(None, {"image": tensor(Path(p), size, k), "tags": onnx.tags(t)})[0][0]
                            for p, t in zip(es.gallery_paths, es.gallery_tags)])
        for name, paths in (("own queries", es.query_paths), ("12 MP queries", phone)):
            q = np.stack([onnx.user.run(None, {"image": tensor(Path(p), size, k)})[1][0] for p in paths])
            label = f"factor {k} ({'full decode' if k == 0 else f'draft for {k * size} px'}), {name}"
            rows[label] = p_at_k((q @ gallery.T).astype(np.float64), es.query_products, es.gallery_products, KS)
            log.info("%s: %s (%.0f s)", label, json.dumps({n: round(v, 3) for n, v in rows[label].items()}),
                     time.time() - t0)
    return {"bundle": str(bundle), "model_version": manifest["model_version"], "benchmark": str(data),
            "split": split, "queries": len(es.query_paths), "gallery_images": len(es.gallery_paths),
            "rows": rows, "machine": machine_description()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=str(HERE / "default"))
    ap.add_argument("--data", required=True, help="benchmark manifest.csv")
    ap.add_argument("--split", default="test")
    ap.add_argument("--factors", default="0,1,2", help="draft factors, comma-separated (0: full decode)")
    ap.add_argument("--work", default=str(HERE / ".cache/draft_check"), help="where the 12 MP queries are written")
    ap.add_argument("--out", default=None, help="JSON report (default <work>/report.json)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        factors = [int(f) for f in args.factors.split(",")]
        if any(not 0 <= f <= 8 for f in factors):
            raise ValueError("draft factors are 0 to 8")
        report = run(Path(args.bundle), Path(args.data), args.split, factors, Path(args.work))
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(args.work) / "report.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\n{report['benchmark']} {report['split']}: {report['queries']} queries, "
          f"{report['gallery_images']} gallery images, {report['model_version']}\n")
    print("| decode | " + " | ".join(f"P@{k}" for k in KS) + " |")
    print("|---|" + "---|" * len(KS))
    for label, r in report["rows"].items():
        print(f"| {label} | " + " | ".join(f"{r[str(k)]:.3f}" for k in KS) + " |")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
