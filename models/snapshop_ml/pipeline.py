"""One command from nothing to the shipped bundle: generate the benchmark (if missing), train the
three stages, evaluate, export `models/default/`, write the Rust parity fixture and the report.

Usage (from models/): python -m snapshop_ml.pipeline            # the default bundle
       python -m snapshop_ml.pipeline --data /path/to/manifest.csv --bundle my-bundle
The wall time of the whole run is measured and written into the manifest and docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from .data.loaders import load_dataset, write_csv_manifest
from .data.records import RetrievalDataset
from .evaluate import KS, RERANK_CANDIDATES, EvalSet, p_at_k
from .export import ExportError, OnnxBundle, export_bundle, load_checkpoint, write_manifest
from .report import plot_attention, plot_pk, results_markdown
from .train import TrainConfig, TrainingError, setup_logging, train

log = logging.getLogger("snapshop_ml.pipeline")
HERE = Path(__file__).resolve().parent.parent  # models/
ROOT = HERE.parent
SUBSET_KS = (1, 5, 10, 20)
DEFAULT_DATA = ROOT / "data/street2shop/manifest.csv"
DEFAULT_BUNDLE = HERE / "default"
PATH_KEYS = ("data", "out", "cache_dir")  # TrainConfig fields that hold paths


def repo_relative(path: str | Path, root: Path | None = None) -> str:
    """A path as the manifest and the docs record it: relative to the repository root (`/`
    separated) when it lies inside the repository, so that no training machine's directory
    layout leaks into a bundle; a path outside the repository is kept as given."""
    p, root = Path(path), ROOT if root is None else root
    try:
        return (p if p.is_absolute() else Path.cwd() / p).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def relative_config(config: dict, root: Path | None = None) -> dict:
    """The training config with its path fields made repository-relative."""
    return {k: repo_relative(v, root) if k in PATH_KEYS and isinstance(v, str) else v for k, v in config.items()}


def relative_command(argv: list[str], root: Path | None = None) -> str:
    """The training command as recorded: `scripts/train.sh` (run from the repository root) with
    the path options made repository-relative."""
    out, path_opts = [], ("--data", "--bundle", "--run", "--docs", "--fixture")
    for i, a in enumerate(argv):
        opt, eq, val = a.partition("=")
        if eq and opt in path_opts:
            a = f"{opt}={repo_relative(val, root)}"
        elif i > 0 and argv[i - 1] in path_opts:
            a = repo_relative(a, root)
        out.append(a)
    return " ".join(["scripts/train.sh"] + [shlex.quote(a) for a in out])


def ensure_dataset(data: Path, seed: int, scale: float) -> Path:
    """The CSV manifest to train on; generates the synthetic benchmark when it is missing."""
    if data.suffix == ".csv" and data.is_file() or data.is_dir() and (data / "Eval").is_dir():
        return data
    if data.suffix == ".csv" and data.parent.name == "street2shop":
        from .data import synth

        log.info("generating the benchmark into %s (seed %d, scale %.2f)", data.parent, seed, scale)
        synth.generate(data.parent, seed=seed, scale=scale, workers=2)
        return data
    raise FileNotFoundError(f"dataset not found: {data}")


def pick_fixtures(ds: RetrievalDataset, count: int = 2):
    """Golden fixture images: test street photos and tagged test shop images of the same products."""
    users = ds.subset("test", "user")
    shops = {r.product_id: r for r in ds.subset("test", "shop")}
    chosen = [u for u in users if u.product_id in shops][: count * 5 : 5]
    return [u.path for u in chosen], [(shops[u.product_id].path, shops[u.product_id].tags) for u in chosen]


def write_subset_fixture(ds: RetrievalDataset, onnx: OnnxBundle, out: Path, products: int = 60) -> dict:
    """A small labelled subset of the test split for the Rust end-to-end parity test, with the
    P@K that the exported graphs give on it (same grouping and re-ranking as the service)."""
    users = ds.subset("test", "user")
    shops = ds.subset("test", "shop")
    query_products = sorted({u.product_id for u in users})[:products]
    distractors = sorted({s.product_id for s in shops} - {u.product_id for u in users})[:products]
    keep = set(query_products) | set(distractors)
    queries = [next(u for u in users if u.product_id == p) for p in query_products]
    gallery = [s for s in shops if s.product_id in keep]
    if out.exists():
        shutil.rmtree(out)
    (out / "images").mkdir(parents=True)
    records = []
    for r in queries + gallery:
        dst = out / "images" / f"{r.product_id}_{r.domain}_{Path(r.path).name}"
        shutil.copyfile(r.path, dst)
        records.append(type(r)(path=dst, product_id=r.product_id, domain=r.domain, split="test", tags=r.tags))
    write_csv_manifest(records, out / "manifest.csv")
    es = EvalSet.from_records(queries, gallery)
    user = [onnx.embed_user(q.path) for q in queries]
    shop = np.stack([onnx.embed_shop(g.path, g.tags) for g in gallery])
    first = np.stack([e for _, e in user]) @ shop.T
    n = min(RERANK_CANDIDATES, len(gallery))
    keys = np.full(first.shape, -np.inf)
    for i, (feats, _) in enumerate(user):
        top = np.argsort(-first[i], kind="stable")[:n]
        scores, _ = onnx.rerank(feats, shop[top])
        keys[i, top] = scores
    expected = {
        "k": list(SUBSET_KS),
        "queries": len(queries),
        "gallery": len(gallery),
        "candidates": n,
        "first_pass": p_at_k(first, es.query_products, es.gallery_products, SUBSET_KS),
        "rerank": p_at_k(keys, es.query_products, es.gallery_products, SUBSET_KS),
        "note": "computed by models/snapshop_ml/pipeline.py with onnxruntime on the shipped bundle",
    }
    (out / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    return expected


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    ap.add_argument("--run", default=str(HERE / "runs/default"))
    ap.add_argument("--docs", default=None,
                    help="results.md and figures (default: docs/ for the default bundle, else <run>/docs)")
    ap.add_argument("--fixture", default=None,
                    help="Rust parity subset (default: tests/fixtures/subset for the default bundle, else <run>/subset)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=1.0, help="benchmark size when it has to be generated")
    ap.add_argument("--steps", type=int, nargs=3, metavar=("YNET", "TAG", "CTX"), default=None)
    args = ap.parse_args(argv)
    t0 = time.time()
    run = Path(args.run)
    # Only the default bundle may overwrite the repository's docs and the service's parity fixture.
    is_default = Path(args.data).resolve() == DEFAULT_DATA and Path(args.bundle).resolve() == DEFAULT_BUNDLE
    args.docs = args.docs or str(ROOT / "docs" if is_default else run / "docs")
    args.fixture = args.fixture or str(ROOT / "tests/fixtures/subset" if is_default else run / "subset")
    setup_logging(run)
    command = relative_command(list(argv or sys.argv[1:]))
    try:
        data = ensure_dataset(Path(args.data), args.seed, args.scale)
        cfg = TrainConfig(data=str(data), out=str(run), seed=args.seed, cache_dir=str(HERE / ".cache"))
        if args.steps:
            cfg.steps_ynet, cfg.steps_tag, cfg.steps_ctx = args.steps
        summary = train(cfg)
        model, vocab = load_checkpoint(run / "final.pt")
        ds = load_dataset(data)
        street, shop = pick_fixtures(ds)
        evaluation = {
            "metric": "P@K (Eq. 8): a query hits when its product is among the top K products",
            "split": "test",
            "rows": summary["results"],
            "shipped_chain": summary["shipped_chain"],
            "rerank_candidates": RERANK_CANDIDATES,
            "ks": list(KS),
        }
        training = {
            "data": {"source": repo_relative(data), "stats": summary["dataset"]["stats"]},
            "command": command,
            "machine": summary["machine"],
            "stage_timings_s": summary["timings"],
            "config": relative_config(summary["train_config"]),
        }
        bundle = Path(args.bundle)
        manifest = export_bundle(model, vocab, bundle, evaluation, training, street, shop, summary["shipped_chain"])
        onnx = OnnxBundle(bundle, vocab, model.cfg.input_size)
        expected = write_subset_fixture(ds, onnx, Path(args.fixture))
        log.info("subset fixture: %s", json.dumps(expected))
        docs = Path(args.docs)
        (docs / "img").mkdir(parents=True, exist_ok=True)
        plot_pk(summary["results"], docs / "img/pk_test.png")
        pairs = [(s, p, t) for s, (p, t) in zip(*pick_fixtures(ds, 4))]
        plot_attention(onnx, pairs, docs / "img/attention.png", model.cfg.grid, model, vocab)
        wall = time.time() - t0
        training["wall_time_s"] = round(wall, 1)
        manifest = write_manifest(bundle, model, vocab, manifest["model_version"], evaluation, training,
                                  manifest["parity"]["max_abs_diff"])
        (docs / "results.md").write_text(results_markdown(summary, manifest, command, wall))
        log.info("pipeline done in %.1f min: bundle %s", wall / 60, manifest["model_version"])
    except (TrainingError, ExportError, ValueError, FileNotFoundError) as exc:
        log.error("pipeline failed: %s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
