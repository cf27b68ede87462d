"""Figures and the results document: the P@K plot (like the paper's Figures 3-4), the attention
picture (like Figure 6) and `docs/results.md`, all from a run's results.json and the bundle."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import torch  # noqa: E402

from .evaluate import KS, tag_matrix  # noqa: E402
from .export import OnnxBundle  # noqa: E402
from .network import YNet, tag_attention  # noqa: E402
from .preprocess import load_rgb, preprocess_file  # noqa: E402

ROW_LABELS = {
    "pretrained": "1. MobileNetV2 ImageNet, mean-pooled",
    "ynet": "2. YNet",
    "tagynet": "3. TagYNet",
    "ctxynet": "4. CtxYNet (re-rank top 256)",
    "tagynet+batch-hard": "5a. TagYNet + batch-hard",
    "ctxynet+batch-hard": "5b. CtxYNet + batch-hard (re-rank top 256)",
}


def table_rows(results: dict, split: str = "test") -> list[tuple[str, str, dict]]:
    return [(key, label, results[key][split]) for key, label in ROW_LABELS.items() if split in results.get(key, {})]


def plot_pk(results: dict, path: Path, split: str = "test") -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for key, label, pk in table_rows(results, split):
        ax.plot(KS, [pk[str(k)] for k in KS], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xticks(KS, [str(k) for k in KS])
    ax.set_xlabel("K")
    ax.set_ylabel("P@K")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(f"Street-to-shop P@K, {split} split")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _heat(ax, img: Image.Image, weights: np.ndarray, grid: int, title: str) -> None:
    ax.imshow(img)
    w = weights.reshape(grid, grid)
    ax.imshow(np.asarray(Image.fromarray((w / w.max() * 255).astype(np.uint8)).resize(img.size, Image.Resampling.BILINEAR)),
              cmap="jet", alpha=0.45)
    for fn, colour in ((np.argmax, "lime"), (np.argmin, "red")):
        r, c = divmod(int(fn(weights)), grid)
        cw, ch = img.size[0] / grid, img.size[1] / grid
        ax.add_patch(plt.Rectangle((c * cw, r * ch), cw, ch, fill=False, edgecolor=colour, linewidth=2))
    ax.set_title(title, fontsize=7)
    ax.axis("off")


@torch.no_grad()
def tag_attention_map(model: YNet, shop: Path, tags: tuple[str, ...], vocab: list[str]) -> np.ndarray:
    """TagYNet's attention (Eq. 2) over a shop image's grid: the graphs do not output it."""
    model = model.eval()
    x = torch.from_numpy(preprocess_file(shop, model.cfg.input_size))[None]
    _, a = tag_attention(model.shop_map(model.shared(x)), tag_matrix([tags], vocab), model.tag_embed)
    return a[0].numpy()


def plot_attention(onnx: OnnxBundle, pairs: list[tuple[Path, Path, tuple[str, ...]]], path: Path, grid: int,
                   model: YNet | None = None, vocab: list[str] | None = None) -> None:
    """For each (street photo, matching shop image): the query's CtxYNet attention w.r.t. the
    shop image (max location green, min red) and, given the model, the shop image's TagYNet
    attention from its tags."""
    fig, axes = plt.subplots(len(pairs), 2, figsize=(5, 2.6 * len(pairs)))
    axes = np.atleast_2d(axes)
    for row, (street, shop, tags) in enumerate(pairs):
        feats, _ = onnx.embed_user(street)
        cand = onnx.embed_shop(shop, tags)
        score, att = onnx.rerank(feats, cand[None])
        _heat(axes[row, 0], load_rgb(street), att[0], grid, f"query: CtxYNet attention (score {score[0]:.2f})")
        caption = "\n".join([" ".join(tags[i : i + 3]) for i in range(0, len(tags), 3)])
        if model is not None and vocab is not None:
            _heat(axes[row, 1], load_rgb(shop), tag_attention_map(model, shop, tags, vocab), grid,
                  "shop: TagYNet attention\n" + caption)
        else:
            axes[row, 1].imshow(load_rgb(shop))
            axes[row, 1].set_title(caption, fontsize=6)
            axes[row, 1].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def forgetting_tools(cfg: dict) -> str:
    """The issue-7 part-2 settings a training config used, in words."""
    tools = []
    if cfg.get("distill"):
        tools.append(f"distillation towards frozen ImageNet, weight {cfg['distill']:g}, on the train photos of "
                     f"`{cfg.get('distill_data')}`")
    if cfg.get("real_data"):
        tools.append(f"the train split of `{cfg['real_data']}` as extra products, "
                     f"{100 * cfg.get('real_fraction', 0):g} % of every batch")
    if cfg.get("backbone_lr_scale", 1.0) != 1.0:
        tools.append(f"subnetwork I's fine-tuned blocks at {cfg['backbone_lr_scale']:g}x the learning rate")
    return "; ".join(tools) or "none"


def results_markdown(summary: dict, bundle_manifest: dict, command: str, wall_s: float,
                     rows_eval: dict | None = None) -> str:
    res = summary["results"]
    lines = [
        "# Results: street-to-shop retrieval on the project's benchmark",
        "",
        "Generated by `models/snapshop_ml/pipeline.py` (do not edit by hand; rerun the pipeline).",
        "",
        f"- Bundle: `{bundle_manifest['model_version']}`",
        f"- Command: `{command}` (runs `python -m snapshop_ml.pipeline` in `models/`)",
        f"- Wall time of the whole pipeline (data generation, training, evaluation, export): {wall_s / 60:.1f} min",
        f"- Machine: {summary['machine']}",
        f"- Training stage timings (s): {json.dumps(summary['timings'])}",
        f"- Shipped chain: {summary['shipped_chain']} negatives (chosen by validation P@20 of the CtxYNet row)",
        f"- Against forgetting: {forgetting_tools(bundle_manifest.get('training', {}).get('config', {}))} "
        "(each tool measured alone in [`forgetting.md`](forgetting.md))",
        "",
        "P@K (Eq. 8) on the held-out test products. Results are products (a product ranks at its best",
        "image); rows 4 and 5b re-rank the top 256 images of their own TagYNet first pass with CtxYNet,",
        "exactly as the service does.",
        "",
        "| row | " + " | ".join(f"P@{k}" for k in KS) + " |",
        "|---|" + "---|" * len(KS),
    ]
    for key, label, pk in table_rows(res, "test"):
        lines.append(f"| {label} | " + " | ".join(f"{pk[str(k)]:.3f}" for k in KS) + " |")
    for key in ("ctxynet first pass", "ctxynet+batch-hard first pass"):
        if "test" in res.get(key, {}):
            pk = res[key]["test"]
            lines.append(f"| ({key}, no re-rank) | " + " | ".join(f"{pk[str(k)]:.3f}" for k in KS) + " |")
    lines += ["", "Validation split (used to choose the shipped chain):", "",
              "| row | " + " | ".join(f"P@{k}" for k in KS) + " |", "|---|" + "---|" * len(KS)]
    for key, label, pk in table_rows(res, "val"):
        lines.append(f"| {label} | " + " | ".join(f"{pk[str(k)]:.3f}" for k in KS) + " |")
    lines += ["", "![P@K](img/pk_test.png)", "", "![attention](img/attention.png)", ""]
    lines += rerank_stage_markdown(bundle_manifest)
    rows_eval = rows_eval or bundle_manifest.get("evaluation", {}).get("other_benchmarks")
    if rows_eval:
        lines += rows_eval_markdown(rows_eval)
    return "\n".join(lines)


def _pk_table(rows: dict[str, dict], ks=(1, 5, 10, 20)) -> list[str]:
    out = ["| row | " + " | ".join(f"P@{k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    for name, pk in rows.items():
        out.append(f"| {name} | " + " | ".join(f"{pk[str(k)]:.3f}" for k in ks) + " |")
    return out


def rerank_stage_markdown(bundle_manifest: dict) -> list[str]:
    """The re-rank stage's tables (`snapshop_ml.rerank`, in the manifest's evaluation)."""
    ev = bundle_manifest.get("evaluation", {})
    st, shipped = ev.get("rerank_stage"), ev.get("shipped")
    if not st or not shipped:
        return []
    rr = bundle_manifest.get("rerank", {})
    f = st["fusion"]
    lines = [
        "## The re-rank stage: subnetwork V on mined candidate lists, score fusion, the default",
        "",
        f"Command: `{st['command']}`. It keeps shop.onnx and user.onnx, mines the top 256 first-pass",
        "images of every train street photo, retrains subnetwork V on those lists from zero, fits",
        "`a·first_pass + b·ctx` on validation, and lets the re-rank be the default only if it beats",
        "the first pass there (models/snapshop_ml/rerank.py).",
        "",
        f"- Shipped: the {'retrained' if f.get('v') == 'new' else 'bundle' + chr(39) + 's own'} V, fusion "
        f"{rr.get('fusion')}, **re-rank by default: {rr.get('default', True)}** ({st['default']['why']}).",
        f"- Loss: {st['head_config']['loss']}; benchmarks: "
        + ", ".join(f"{n} (`{b['manifest']}`)" for n, b in shipped["benchmarks"].items()) + ".",
        "",
    ]
    for name, splits in st["rows"].items():
        for split in ("test", "val"):
            if split in splits:
                lines += [f"**{name}, {split} split**", ""] + _pk_table(splits[split]) + [""]
    return lines


def rows_eval_markdown(rows_eval: dict) -> list[str]:
    """Every trained row on other benchmarks (`snapshop_ml.evaluate_rows`)."""
    lines = ["## Every row on every benchmark", "",
             f"From `snapshop_ml.evaluate_rows` on the checkpoints of `{rows_eval['run']}` ({rows_eval['machine']}; "
             f"{rows_eval['wall_time_s']:.0f} s). torch with the float16 stem cache, as the pipeline's own table; CtxYNet "
             "rows re-rank with the score alone. The shipped bundle's own first pass and re-rank on these benchmarks "
             "are in the re-rank stage's tables above."]
    if rows_eval.get("command"):
        lines += ["", f"Command: `{rows_eval['command']}`."]
    if rows_eval.get("note"):
        lines += ["", f"Note: {rows_eval['note']}."]
    lines.append("")
    for name, b in rows_eval["benchmarks"].items():
        if "test" not in b["sizes"]:
            continue
        sz = b["sizes"]["test"]
        rows = {ROW_LABELS.get(k, f"({k}, no re-rank)"): v["test"] for k, v in b["rows"].items() if "test" in v}
        lines += [f"**{name}** (`{b['manifest']}`), test: {sz['queries']} queries, {sz['gallery_images']} images of "
                  f"{sz['gallery_products']} products", ""] + _pk_table(rows, KS) + [""]
    return lines


def summary_from_manifest(manifest: dict) -> dict:
    """The parts of a training summary that results_markdown needs, read back from a bundle."""
    ev, tr = manifest["evaluation"], manifest["training"]
    return {"results": ev["rows"], "shipped_chain": ev["shipped_chain"], "machine": tr["machine"],
            "timings": tr.get("stage_timings_s", {})}


def main(argv=None) -> int:
    """Rewrite docs/results.md from a bundle (and, optionally, an evaluate_rows report) without
    retraining: `python -m snapshop_ml.report --bundle default --rows runs/full/rows-eval.json`."""
    import argparse
    import sys

    here = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--bundle", default=str(here / "default"))
    ap.add_argument("--rows", default=None,
                    help="snapshop_ml.evaluate_rows JSON report (default: the bundle's eval.json other_benchmarks)")
    ap.add_argument("--out", default=str(here.parent / "docs/results.md"))
    args = ap.parse_args(argv)
    try:
        manifest = json.loads((Path(args.bundle) / "manifest.json").read_text())
        rows = json.loads(Path(args.rows).read_text()) if args.rows else None
        text = results_markdown(summary_from_manifest(manifest), manifest, manifest["training"]["command"],
                                manifest["training"]["wall_time_s"], rows)
    except (OSError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
