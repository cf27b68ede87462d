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
import torch

from .data.loaders import load_dataset, write_csv_manifest
from .data.records import RetrievalDataset
from .evaluate import KS, RERANK_CANDIDATES, EvalSet, p_at_k
from .export import ExportError, OnnxBundle, export_bundle, load_checkpoint, write_manifest
from . import evaluate_rows
from . import rerank as rerank_stage
from .report import plot_attention, plot_pk, results_markdown
from .train import TrainConfig, TrainingError, machine_description, setup_logging, train

log = logging.getLogger("snapshop_ml.pipeline")
HERE = Path(__file__).resolve().parent.parent  # models/
ROOT = HERE.parent
SUBSET_KS = (1, 5, 10, 20)
DEFAULT_DATA = ROOT / "data/street2shop/manifest.csv"
DEFAULT_BUNDLE = HERE / "default"
#: The shipped recipe's tools against forgetting (issue 7 part 2; docs/forgetting.md measured each).
RECIPE = {"real_fraction": 0.125, "distill": 0.0}
PATH_KEYS = ("data", "out", "cache_dir", "distill_data", "real_data")  # TrainConfig fields that hold paths


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
    return {k: repo_relative(v, root) if k in PATH_KEYS and isinstance(v, str) and v else v for k, v in config.items()}


def relative_command(argv: list[str], root: Path | None = None) -> str:
    """The training command as recorded: `scripts/train.sh` (run from the repository root) with
    the path options made repository-relative."""
    out, path_opts = [], ("--data", "--bundle", "--run", "--docs", "--fixture", "--real")
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


def ensure_hard(data: Path, seed: int, scale: float) -> None:
    """The hard preset beside the default benchmark (`hard_of`), generated when missing: the
    re-rank stage fits on its val split and every row is measured on it."""
    if data.resolve() != DEFAULT_DATA or hard_of(data) is not None:
        return
    from .data import synth

    out = data.parent.with_name(data.parent.name + "-hard")
    log.info("generating the hard preset into %s (seed %d, scale %.2f)", out, seed, scale)
    synth.generate(out, seed=seed, scale=scale, workers=2, knobs=synth.Knobs(**synth.PRESETS["hard"]))


def ensure_real(real: Path, needed: bool, build: bool) -> Path | None:
    """The real-photo benchmark's manifest; with `build`, built when missing (`realphoto build`,
    ~15 s) if its sources are installed. Without it the pipeline still trains, with the recipe's
    real-photo tools off and a warning (the manifest's training config records what ran),
    unless it was asked for by name (`needed`), which is an error."""
    if real.is_file():
        return real
    from .data import realphoto

    if build:
        try:
            log.info("building the real-photo benchmark into %s", real.parent)
            realphoto.build(real.parent)
            return real
        except realphoto.SourceError as exc:
            log.warning("the real-photo benchmark cannot be built: %s (scripts/setup.sh --realphoto installs "
                        "its sources)", exc)
    if needed:
        raise FileNotFoundError(f"real-photo benchmark not found: {real} (docs/realphoto.md builds it)")
    log.warning("no real-photo benchmark: %s not found (docs/realphoto.md builds it)", real)
    return None


def pick_fixtures(ds: RetrievalDataset, count: int = 2):
    """Golden fixture images: test street photos and tagged test shop images of the same products."""
    users = ds.subset("test", "user")
    shops = {r.product_id: r for r in ds.subset("test", "shop")}
    chosen = [u for u in users if u.product_id in shops][: count * 5 : 5]
    return [u.path for u in chosen], [(shops[u.product_id].path, shops[u.product_id].tags) for u in chosen]


def subset_expected(onnx: OnnxBundle, queries, gallery, rerank: dict | None = None) -> dict:
    """P@K of the exported graphs on a labelled set, with the service's grouping, candidate list
    and score fusion (`rerank` is the manifest's re-rank block; absent fusion = the CtxYNet score
    alone). The Rust end-to-end test asks for `rerank=true` explicitly, whatever the default."""
    es = EvalSet.from_records(queries, gallery)
    fusion = (rerank or {}).get("fusion", {"first_pass": 0.0, "ctx": 1.0})
    user = [onnx.embed_user(q.path) for q in queries]
    shop = np.stack([onnx.embed_shop(g.path, g.tags) for g in gallery])
    first = np.stack([e for _, e in user]) @ shop.T
    n = min(RERANK_CANDIDATES, len(gallery))
    keys = np.full(first.shape, -np.inf)
    for i, (feats, _) in enumerate(user):
        top = np.argsort(-first[i], kind="stable")[:n]
        scores, _ = onnx.rerank(feats, shop[top])
        keys[i, top] = fusion["first_pass"] * first[i, top] + fusion["ctx"] * scores
    return {
        "k": list(SUBSET_KS),
        "queries": len(queries),
        "gallery": len(gallery),
        "candidates": n,
        "fusion": fusion,
        "first_pass": p_at_k(first, es.query_products, es.gallery_products, SUBSET_KS),
        "rerank": p_at_k(keys, es.query_products, es.gallery_products, SUBSET_KS),
        "note": "computed by models/snapshop_ml/pipeline.py with onnxruntime on the shipped bundle",
    }


def write_subset_fixture(ds: RetrievalDataset, onnx: OnnxBundle, out: Path, products: int = 60,
                         rerank: dict | None = None) -> dict:
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
    return refresh_subset_expected(onnx, out, rerank)


def refresh_subset_expected(onnx: OnnxBundle, out: Path, rerank: dict | None = None) -> dict:
    """(Re)write `out/expected.json` from the fixture's own manifest and images."""
    fx = load_dataset(out / "manifest.csv")
    expected = subset_expected(onnx, fx.subset("test", "user"), fx.subset("test", "shop"), rerank)
    (out / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    return expected


def hard_of(data: Path) -> Path | None:
    """The hard preset of the synthetic benchmark beside it (`<dir>-hard/manifest.csv`), if generated."""
    hard = data.parent.with_name(data.parent.name + "-hard") / "manifest.csv"
    return hard if data.suffix == ".csv" and hard.is_file() else None


def rerank_benchmarks(data: Path, real: Path | None) -> tuple[dict[str, Path], dict[str, Path]]:
    """(benchmarks the re-rank stage trains, stops and fits on; benchmarks it only measures).

    The hard preset shares the training data's train split and has the same validation queries
    against ten times the look-alike distractors (20 per query product instead of 2), so when it
    exists its val split decides (it separates the rows, where the old setting's P@20 is near its
    ceiling) and the old setting is only measured."""
    fit = {}
    hard = hard_of(data)
    fit["synthetic-hard" if hard else "synthetic"] = hard or data
    if real is not None:
        fit["real"] = real
    return fit, ({"synthetic": data} if hard else {})


def other_benchmark_rows(run: Path, data: Path, benchmarks: dict[str, Path], jpeg_draft: int) -> dict | None:
    """Every trained row of this run on the other benchmarks present (real photos, hard preset)."""
    others = {n: m for n, m in benchmarks.items() if m != data}
    if not others:
        return None
    t0 = time.time()
    report = {"run": repo_relative(run), "machine": machine_description(), "benchmarks": {}}
    for name, m in others.items():
        report["benchmarks"][name] = evaluate_rows.evaluate_benchmark(run, m, ("val", "test"), HERE / ".cache",
                                                                      jpeg_draft=jpeg_draft)
        report["benchmarks"][name]["manifest"] = repo_relative(m)
    report["wall_time_s"] = round(time.time() - t0, 1)
    (run / "rows-eval.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


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
    ap.add_argument("--real", default=None,
                    help="real-photo benchmark manifest for the re-rank stage (default data/realphoto/manifest.csv, "
                         "used when it exists; docs/realphoto.md)")
    ap.add_argument("--real-fraction", type=float, default=RECIPE["real_fraction"],
                    help="share of every training batch drawn from the real-photo benchmark's train split "
                         "(0: none; the real-photo tools are off when that benchmark is missing)")
    ap.add_argument("--distill", type=float, default=RECIPE["distill"],
                    help="weight of the distillation towards frozen ImageNet on the real train photos (0: off)")
    ap.add_argument("--no-rerank-stage", action="store_true",
                    help="ship subnetwork V as the CtxYNet stage left it (no mined-list retraining, no fusion)")
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
        ensure_hard(data, args.seed, args.scale)
        tools_on = args.real_fraction > 0 or args.distill > 0
        if args.real:
            real = ensure_real(Path(args.real), needed=True, build=False)
        else:
            real = ensure_real(ROOT / "data/realphoto/manifest.csv", needed=False, build=tools_on)
        cfg = TrainConfig(data=str(data), out=str(run), seed=args.seed, cache_dir=str(HERE / ".cache"))
        if real is not None and args.real_fraction > 0:
            cfg.real_data, cfg.real_fraction = str(real), args.real_fraction
        if real is not None and args.distill > 0:
            cfg.distill, cfg.distill_data = args.distill, str(real)
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
        manifest = export_bundle(model, vocab, bundle, evaluation, training, street, shop, summary["shipped_chain"],
                                 jpeg_draft=cfg.jpeg_draft)
        fit, also = rerank_benchmarks(data, real)
        if not args.no_rerank_stage:
            rr = rerank_stage.run(bundle, fit, rerank_stage.HeadConfig(), True, run / "rerank.json",
                                  HERE / ".cache/rerank", command, root=ROOT, eval_only=also)
            log.info("re-rank stage: fusion %s, default %s", json.dumps(rr["fusion"]["w"]), json.dumps(rr["default"]))
            manifest = json.loads((bundle / "manifest.json").read_text())
            evaluation = json.loads((bundle / "eval.json").read_text())
            training["rerank_stage"] = manifest["training"]["rerank_stage"]
            v, u = rerank_stage.ctx_weights_of(bundle / "ctx.onnx")
            with torch.no_grad():  # the attention figure below shows the V that ships
                model.ctx_v.copy_(torch.from_numpy(v))
                model.ctx_u.copy_(torch.from_numpy(u))
        onnx = OnnxBundle(bundle, vocab, model.cfg.input_size, cfg.jpeg_draft)
        expected = write_subset_fixture(ds, onnx, Path(args.fixture), rerank=manifest.get("rerank"))
        log.info("subset fixture: %s", json.dumps(expected))
        docs = Path(args.docs)
        (docs / "img").mkdir(parents=True, exist_ok=True)
        plot_pk(summary["results"], docs / "img/pk_test.png")
        pairs = [(s, p, t) for s, (p, t) in zip(*pick_fixtures(ds, 4))]
        plot_attention(onnx, pairs, docs / "img/attention.png", model.cfg.grid, model, vocab)
        rows_eval = other_benchmark_rows(run, data, {**fit, **also}, cfg.jpeg_draft)
        if rows_eval:
            evaluation["other_benchmarks"] = rows_eval
            (bundle / "eval.json").write_text(json.dumps(evaluation, indent=2) + "\n")
        wall = time.time() - t0
        training["wall_time_s"] = round(wall, 1)
        manifest = write_manifest(bundle, model, vocab, manifest["model_version"], evaluation, training,
                                  manifest["parity"]["max_abs_diff"], rerank=manifest.get("rerank"),
                                  jpeg_draft=cfg.jpeg_draft)
        (docs / "results.md").write_text(results_markdown(summary, manifest, command, training["wall_time_s"]))
        log.info("pipeline done in %.1f min: bundle %s", wall / 60, manifest["model_version"])
    except (TrainingError, ExportError, ValueError, FileNotFoundError, RuntimeError) as exc:
        log.error("pipeline failed: %s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
