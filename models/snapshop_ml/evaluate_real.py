"""P@K on the real-photo benchmark (docs/realphoto.md) for the models that need no retraining.

    python -m snapshop_ml.evaluate_real --bundle default --data ../data/realphoto \
        [--synthetic ../data/street2shop/manifest.csv] [--out runs/realphoto-eval.json]

Rows, each on the val and test splits (queries: the split's user images; gallery: every shop
image of the split, distractors included; P@K as `evaluate.p_at_k` defines it, results grouped
by product as the service does):

- ImageNet MobileNetV2, mean-pooled, untrained, at the bundle's input size and at 224 px
  (computed exactly like the pipeline's "pretrained" row: float16 stem cache, the remaining
  ImageNet blocks, mean over the grid, L2-normalised);
- the bundle through onnxruntime: the first pass (user.onnx mean embedding against shop.onnx
  embeddings with the shop image's tags; tags outside the bundle's vocabulary are ignored, as the
  service does) and the CtxYNet re-rank of the top 256 (ctx.onnx), the service's default;
- score fusion for the re-rank, `a * first_pass + b * ctx` over the same 256 candidates, with
  the weight w = b / (a + b) fitted on the val split (grid 0, 0.05, ..., 1, maximising the mean of
  P@1, 5, 10, 20; ties go to the smaller w) and reported on test. With `--synthetic` the same fit
  is also made on the synthetic benchmark's val split and reported on its test split.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .data.loaders import load_dataset
from .evaluate import RERANK_CANDIDATES, EvalSet, p_at_k, pretrained_embeddings
from .export import OnnxBundle
from .features import stem_cache
from .network import FROZEN_STEM_BLOCKS, pretrained_mobilenet_v2
from .preprocess import jpeg_draft_of
from .train import machine_description

log = logging.getLogger("snapshop_ml.evaluate_real")
HERE = Path(__file__).resolve().parent.parent  # models/
ROOT = HERE.parent
KS = (1, 5, 10, 20)
FUSION_GRID = tuple(round(0.05 * i, 2) for i in range(21))


def eval_sets(manifest: Path, splits=("val", "test")) -> dict[str, EvalSet]:
    ds = load_dataset(manifest)
    return {s: EvalSet.from_records(ds.subset(s, "user"), ds.subset(s, "shop")) for s in splits}


def pk(keys: np.ndarray, es: EvalSet) -> dict[str, float]:
    return p_at_k(keys, es.query_products, es.gallery_products, KS)


@torch.no_grad()
def pretrained_scores(es: EvalSet, size: int, jpeg_draft: int = 0) -> np.ndarray:
    """[Q, G] cosine similarities of mean-pooled ImageNet MobileNetV2 features at `size` px
    (`jpeg_draft`: the draft factor of the bundle's own preprocessing, 0 for a full decode)."""
    stem = stem_cache(es.query_paths + es.gallery_paths, size, None, jpeg_draft=jpeg_draft)
    top = pretrained_mobilenet_v2().features[FROZEN_STEM_BLOCKS:].to(memory_format=torch.channels_last)
    q = pretrained_embeddings(top, es.query_paths, stem)
    g = pretrained_embeddings(top, es.gallery_paths, stem)
    return (q @ g.T).double().numpy()


def bundle_scores(onnx: OnnxBundle, es: EvalSet, n: int = RERANK_CANDIDATES) -> tuple[np.ndarray, np.ndarray]:
    """(first-pass [Q, G] scores, ctx [Q, G] scores with NaN outside each query's top `n`),
    computed exactly as the service does (and as pipeline.write_subset_fixture)."""
    users = [onnx.embed_user(p) for p in es.query_paths]
    shop = np.stack([onnx.embed_shop(p, t) for p, t in zip(es.gallery_paths, es.gallery_tags)])
    first = (np.stack([e for _, e in users]) @ shop.T).astype(np.float64)
    n = min(n, len(es.gallery_paths))
    ctx = np.full(first.shape, np.nan)
    for i, (feats, _) in enumerate(users):
        top = np.argsort(-first[i], kind="stable")[:n]
        scores, _ = onnx.rerank(feats, shop[top])
        ctx[i, top] = scores
    return first, ctx


def fused_keys(first: np.ndarray, ctx: np.ndarray, w: float) -> np.ndarray:
    """(1 - w) * first + w * ctx on the re-rank candidates, -inf elsewhere (never returned)."""
    keys = (1.0 - w) * first + w * np.nan_to_num(ctx)
    return np.where(np.isnan(ctx), -np.inf, keys)


def fit_fusion(first: np.ndarray, ctx: np.ndarray, es: EvalSet) -> tuple[float, list]:
    """The grid weight with the best mean P@{1,5,10,20} (smallest w on ties), and the whole curve."""
    curve = []
    for w in FUSION_GRID:
        r = pk(fused_keys(first, ctx, w), es)
        curve.append({"w": w, "pk": r, "mean": float(np.mean(list(r.values())))})
    best = max(curve, key=lambda c: (round(c["mean"], 12), -c["w"]))
    return best["w"], curve


def describe_fusion(w: float) -> dict:
    """a and b with a + b = 1 (only their ratio changes the ranking)."""
    return {"w": w, "a": round(1.0 - w, 4), "b": round(w, 4),
            "b_over_a": None if w == 1.0 else round(w / (1.0 - w), 4)}


def product_ranks(keys: np.ndarray, es: EvalSet) -> np.ndarray:
    """Each query's product rank under `keys` (as p_at_k counts it; 0 = never returned)."""
    num = int(max(es.query_products.max(initial=0), es.gallery_products.max(initial=0))) + 1
    prod = np.full((keys.shape[0], num), -np.inf)
    for g, p in enumerate(es.gallery_products):
        np.maximum(prod[:, p], keys[:, g], out=prod[:, p])
    own = prod[np.arange(len(es.query_products)), es.query_products]
    return np.where(np.isfinite(own), 1 + (prod > own[:, None]).sum(axis=1), 0)


def evaluate_bundle_on(onnx: OnnxBundle, sets: dict[str, EvalSet]) -> dict:
    """First pass, re-rank and val-fitted fusion of one bundle on one benchmark's val/test."""
    out: dict = {"rows": {}, "fusion": {}}
    scores = {}
    for s, es in sets.items():
        t0 = time.time()
        scores[s] = bundle_scores(onnx, es)
        log.info("bundle on %s: %d queries x %d gallery images (%.0f s)", s, len(es.query_paths),
                 len(es.gallery_paths), time.time() - t0)
        first, ctx = scores[s]
        out["rows"].setdefault("bundle first pass", {})[s] = pk(first, es)
        out["rows"].setdefault("bundle CtxYNet re-rank (service default)", {})[s] = pk(fused_keys(first, ctx, 1.0), es)
        delta = np.abs(np.nan_to_num(ctx) - first)[~np.isnan(ctx)]
        top1_first = np.argmax(first, axis=1)
        top1_ctx = np.argmax(fused_keys(first, ctx, 1.0), axis=1)
        out.setdefault("rerank_diagnostics", {})[s] = {
            "mean_abs_ctx_minus_first_over_candidates": float(delta.mean()),
            "top1_image_changed": int((top1_first != top1_ctx).sum()),
            "queries": len(es.query_paths),
        }
    if "val" in sets:
        w, curve = fit_fusion(*scores["val"], sets["val"])
        out["fusion"] = {**describe_fusion(w), "fitted_on": "val", "val_curve": curve}
        for s, es in sets.items():
            out["rows"].setdefault(f"bundle fusion (a={1 - w:.2f}, b={w:.2f}, fitted on val)", {})[s] = \
                pk(fused_keys(*scores[s], w), es)
    return out, scores


def markdown_table(rows: dict, split: str) -> str:
    lines = ["| row | " + " | ".join(f"P@{k}" for k in KS) + " |", "|---" * (len(KS) + 1) + "|"]
    for name, by_split in rows.items():
        if split in by_split:
            lines.append(f"| {name} | " + " | ".join(f"{by_split[split][str(k)]:.3f}" for k in KS) + " |")
    return "\n".join(lines)


def rel(p: Path) -> str:
    try:
        return Path(p).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(p)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=str(HERE / "default"))
    ap.add_argument("--data", default=str(ROOT / "data/realphoto"), help="benchmark directory or manifest.csv")
    ap.add_argument("--synthetic", default=None,
                    help="also fit/report the fusion on this synthetic manifest (skipped when missing)")
    ap.add_argument("--out", default=str(HERE / "runs/realphoto-eval.json"))
    ap.add_argument("--sizes", type=int, nargs="*", default=None,
                    help="pretrained input sizes (default: the bundle's and 224)")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.time()
    bundle = Path(args.bundle)
    manifest_path = Path(args.data) / "manifest.csv" if Path(args.data).is_dir() else Path(args.data)
    try:
        manifest = json.loads((bundle / "manifest.json").read_text())
        vocab, size = manifest["tags"]["vocabulary"], manifest["input"]["height"]
        sets = eval_sets(manifest_path)
    except (OSError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows: dict = {}
    test_keys: dict[str, np.ndarray] = {}
    for s_px in args.sizes or sorted({size, 224}):
        name = f"ImageNet MobileNetV2, mean-pooled, {s_px} px (no training)"
        for split, es in sets.items():
            keys = pretrained_scores(es, s_px, jpeg_draft_of(manifest))
            rows.setdefault(name, {})[split] = pk(keys, es)
            if split == "test":
                test_keys[name] = keys
        log.info("%s: %s", name, json.dumps(rows[name]))
    onnx = OnnxBundle(bundle, vocab, size, jpeg_draft_of(manifest))
    real, scores = evaluate_bundle_on(onnx, sets)
    rows.update(real["rows"])
    if "test" in scores:
        first, ctx = scores["test"]
        test_keys["bundle first pass"] = first
        test_keys["bundle CtxYNet re-rank (service default)"] = fused_keys(first, ctx, 1.0)
        test_keys["bundle fusion"] = fused_keys(first, ctx, real["fusion"]["w"]) if real["fusion"] else None
    # The real second shots (as opposed to augmented queries): their product rank in every row.
    real_queries = [i for i, p in enumerate(sets["test"].query_paths) if "_user_real_" in Path(p).name] \
        if "test" in sets else []
    real_pairs = {name: {Path(sets["test"].query_paths[i]).name: int(product_ranks(k, sets["test"])[i])
                         for i in real_queries} for name, k in test_keys.items() if k is not None}
    report = {
        "benchmark": rel(manifest_path),
        "bundle": rel(bundle),
        "model_version": manifest["model_version"],
        "metric": "P@K (Eq. 8): a query hits when its product is among the top K products (grouped by product)",
        "ks": list(KS),
        "rerank_candidates": RERANK_CANDIDATES,
        "sizes": {s: {"queries": len(es.query_paths), "gallery_images": len(es.gallery_paths),
                      "gallery_products": int(len(set(es.gallery_products.tolist())))} for s, es in sets.items()},
        "rows": rows,
        "fusion": real["fusion"],
        "rerank_diagnostics": real["rerank_diagnostics"],
        "real_pair_ranks_test": real_pairs,
        "note": "shop images carry only source:* tags, none in the bundle's vocabulary, so the shop "
                "embeddings are the tag-free (mean-pooled) TagYNet ones",
    }
    if args.synthetic:
        syn = Path(args.synthetic)
        if syn.is_file():
            ssets = eval_sets(syn)
            res, _ = evaluate_bundle_on(onnx, ssets)
            report["synthetic"] = {"benchmark": rel(syn), **res}
        else:
            report["synthetic"] = {"skipped": f"{rel(syn)} not found (generate it with python -m snapshop_ml.data.synth)"}
            log.warning("synthetic fusion skipped: %s missing", syn)
    report["machine"] = machine_description()
    report["wall_time_s"] = round(time.time() - t_start, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    for split in sets:
        print(f"\n{split} ({report['sizes'][split]['queries']} queries, {report['sizes'][split]['gallery_images']} "
              f"gallery images of {report['sizes'][split]['gallery_products']} products)\n")
        print(markdown_table(rows, split))
    if real_queries:
        print("\nreal second shots (test): product rank per row: " +
              "; ".join(f"{n}: {list(r.values())}" for n, r in real_pairs.items()))
    f = report["fusion"]
    print(f"\nfusion fitted on val: w = b/(a+b) = {f['w']} (a = {f['a']}, b = {f['b']})")
    if "synthetic" in report:
        syn = report["synthetic"]
        if "rows" in syn:
            print(f"\nsynthetic benchmark, fusion fitted on its val split: w = {syn['fusion']['w']}")
            print(markdown_table(syn["rows"], "test"))
        else:
            print(f"\nsynthetic: {syn['skipped']}")
    print(f"\nwrote {out} ({report['wall_time_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
