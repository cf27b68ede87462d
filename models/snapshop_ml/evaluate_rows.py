"""Every trained row of the results table, evaluated on other benchmarks.

    python -m snapshop_ml.evaluate_rows --run runs/default \
        --data ../data/realphoto/manifest.csv --data ../data/street2shop-hard/manifest.csv \
        [--out runs/default/rows-eval.json]

`train.py` saves one checkpoint per row in its run directory (`ynet.pt`, `tagynet-{random,hard}.pt`,
`ctxynet-{random,hard}.pt`). This evaluates each of them, and the untrained ImageNet backbone at
the same input size, on the val and test splits of every benchmark given, exactly as `train.py`
evaluates its own test split (torch, the float16 stem cache, `evaluate.evaluate_model`: results
grouped by product, CtxYNet re-ranking the top 256 of its own first pass with the score alone).
The shipped bundle's own figures (onnxruntime, the fused re-rank of the manifest) come from
`snapshop_ml.rerank`; the two agree on the first pass to within float16 rounding.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from .data.loaders import load_dataset
from .evaluate import EvalSet, evaluate_model, p_at_k, pretrained_embeddings
from .export import ExportError, load_checkpoint
from .features import stem_cache
from .network import FROZEN_STEM_BLOCKS, pretrained_mobilenet_v2
from .preprocess import DRAFT_FACTOR
from .train import machine_description

log = logging.getLogger("snapshop_ml.evaluate_rows")
HERE = Path(__file__).resolve().parent.parent  # models/
ROOT = HERE.parent

#: (row name as in eval.json, checkpoint file, tag attention on the shop side, CtxYNet re-rank)
ROWS = (
    ("ynet", "ynet.pt", False, False),
    ("tagynet", "tagynet-random.pt", True, False),
    ("ctxynet", "ctxynet-random.pt", True, True),
    ("tagynet+batch-hard", "tagynet-hard.pt", True, False),
    ("ctxynet+batch-hard", "ctxynet-hard.pt", True, True),
)


def rel(p: Path) -> str:
    try:
        return Path(p).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(p)


def evaluate_benchmark(run: Path, manifest: Path, splits, cache_dir: Path | None,
                       input_size: int | None = None, jpeg_draft: int = 0, only: tuple[str, ...] | None = None,
                       rerank: bool = True) -> dict:
    """Every row whose checkpoint is in `run` (or the rows named in `only`), plus the pretrained
    row; with no checkpoint at all, only the pretrained row at `input_size` (an error without
    one). `rerank=False` gives the CtxYNet rows their first pass alone, under the row's name."""
    ds = load_dataset(manifest)
    sets = {s: EvalSet.from_records(ds.subset(s, "user"), ds.subset(s, "shop")) for s in splits}
    sets = {s: es for s, es in sets.items() if es.query_paths and es.gallery_paths}
    models = {}
    rows_wanted = [r for r in ROWS if only is None or r[0] in only]
    for name, file, _, _ in rows_wanted:
        if (run / file).is_file():
            models[name] = load_checkpoint(run / file)
        else:
            log.warning("%s: no checkpoint %s, row skipped", name, run / file)
    if not models and input_size is None:
        raise ExportError(f"{run}: no row checkpoints (train with snapshop_ml.train first)")
    size = next(iter(models.values()))[0].cfg.input_size if models else input_size
    paths = [p for es in sets.values() for p in es.query_paths + es.gallery_paths]
    stem = stem_cache(paths, size, cache_dir, jpeg_draft=jpeg_draft)
    rows: dict[str, dict] = {}
    top = pretrained_mobilenet_v2().features[FROZEN_STEM_BLOCKS:].to(memory_format=torch.channels_last)
    for s, es in sets.items():
        q = pretrained_embeddings(top, es.query_paths, stem)
        g = pretrained_embeddings(top, es.gallery_paths, stem)
        rows.setdefault("pretrained", {})[s] = p_at_k((q @ g.T).double().numpy(), es.query_products,
                                                      es.gallery_products)
    for name, _, tagged, row_reranks in rows_wanted:
        if name not in models:
            continue
        model, vocab = models[name]
        for s, es in sets.items():
            t0 = time.time()
            r = evaluate_model(model, es, stem, False, vocab if tagged else None, rerank and row_reranks)
            if rerank and row_reranks:
                rows.setdefault(name, {})[s] = r["rerank"]
                rows.setdefault(f"{name} first pass", {})[s] = r["first_pass"]
            else:
                rows.setdefault(name, {})[s] = r["first_pass"]
            log.info("%s %s %s: %s (%.0f s)", manifest.parent.name, s, name,
                     " ".join(f"@{k}={v:.3f}" for k, v in rows[name][s].items()), time.time() - t0)
    sizes = {s: {"queries": len(es.query_paths), "gallery_images": len(es.gallery_paths),
                 "gallery_products": len(set(es.gallery_products.tolist()))} for s, es in sets.items()}
    return {"manifest": rel(manifest), "input_size": size, "jpeg_draft": jpeg_draft, "sizes": sizes, "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(HERE / "runs/default"), help="run directory with the row checkpoints")
    ap.add_argument("--data", action="append", required=True, help="benchmark manifest (repeatable)")
    ap.add_argument("--splits", nargs="*", default=["val", "test"])
    ap.add_argument("--input-size", type=int, default=None,
                    help="with no checkpoints in --run: the pretrained row alone at this size")
    ap.add_argument("--jpeg-draft", type=int, default=DRAFT_FACTOR,
                    help="draft factor of the JPEG decode (0: full size; default the training default; match the bundle)")
    ap.add_argument("--cache-dir", default=str(HERE / ".cache"))
    ap.add_argument("--out", default=None, help="default <run>/rows-eval.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run = Path(args.run)
    t0 = time.time()
    report = {"run": rel(run), "machine": machine_description(), "benchmarks": {}}
    try:
        for d in args.data:
            m = Path(d) / "manifest.csv" if Path(d).is_dir() else Path(d)
            report["benchmarks"][m.parent.name] = evaluate_benchmark(
                run, m, args.splits, Path(args.cache_dir) if args.cache_dir else None, args.input_size,
                args.jpeg_draft)
    except (OSError, ValueError, ExportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report["wall_time_s"] = round(time.time() - t0, 1)
    out = Path(args.out) if args.out else run / "rows-eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    for name, b in report["benchmarks"].items():
        for s in args.splits:
            if s not in b["sizes"]:
                continue
            print(f"\n{name} {s} ({b['sizes'][s]['queries']} queries, {b['sizes'][s]['gallery_images']} images)\n")
            print("| row | P@1 | P@5 | P@10 | P@20 |\n|---|---|---|---|---|")
            for row, by in b["rows"].items():
                if s in by:
                    print(f"| {row} | " + " | ".join(f"{by[s][k]:.3f}" for k in ("1", "5", "10", "20")) + " |")
    print(f"\nwrote {out} ({report['wall_time_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
