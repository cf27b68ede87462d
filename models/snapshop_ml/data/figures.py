"""Figures for docs/benchmark.md.

    python -m snapshop_ml.data.figures ../data/street2shop/manifest.csv --out ../docs/img/benchmark_grid.png \
        [--pk baseline.json --pk-out ../docs/img/benchmark_pk.png]

Draws a few products of one split: shop photo(s) then street photos, one product per row, with the
product's tags as the row caption.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from .loaders import load_dataset
from .records import ImageRecord


def product_rows(records: list[ImageRecord], n: int, max_shop: int = 2, max_user: int = 3,
                 want_second_shop: int = 2) -> list[tuple[list[ImageRecord], list[ImageRecord]]]:
    """Pick ``n`` products with street photos, spreading categories; prefer a few with 2 shop photos."""
    shop, user = defaultdict(list), defaultdict(list)
    for r in records:
        (shop if r.domain == "shop" else user)[r.product_id].append(r)
    chosen, seen_cat = [], set()
    pids = [p for p in shop if user.get(p)]
    two = [p for p in pids if len(shop[p]) >= 2][:want_second_shop]
    for p in two + pids:
        if len(chosen) >= n:
            break
        cat = next((t for t in shop[p][0].tags if t.startswith("category:")), "")
        if p in [c for c, _, _ in chosen] or (cat in seen_cat and p not in two):
            continue
        seen_cat.add(cat)
        chosen.append((p, shop[p][:max_shop], user[p][:max_user]))
    return [(s, u) for _, s, u in chosen]


def draw_grid(records: list[ImageRecord], out: Path, n: int = 6, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    rows = product_rows(records, n)
    strip_h, gap = 200, 10
    fig, axes = plt.subplots(len(rows), 1, figsize=(11, len(rows) * 2.35))
    axes = [axes] if len(rows) == 1 else list(axes)
    for ax, (shops, users) in zip(axes, rows):
        tiles, labels = [], []
        for r in shops + users:
            with Image.open(r.path) as im:
                im = im.convert("RGB")
                w = round(im.width * strip_h / im.height)
                tiles.append(im.resize((w, strip_h), Image.Resampling.BILINEAR))
                labels.append(f"{'shop' if r.domain == 'shop' else 'street'} {im.width}x{im.height}")
        total = sum(t.width for t in tiles) + gap * (len(tiles) + 1) + (3 * gap if users else 0)
        strip = Image.new("RGB", (total, strip_h), "white")
        x = gap
        for k, t in enumerate(tiles):
            if k == len(shops):
                x += 3 * gap  # a wider gap between the shop and the street photos
            strip.paste(t, (x, 0))
            ax.text(x + t.width / 2, strip_h + 4, labels[k], ha="center", va="top", fontsize=7)
            x += t.width + gap
        ax.imshow(strip)
        ax.set_xlim(0, 1180)
        ax.set_ylim(strip_h + 22, 0)
        ax.axis("off")
        tags = ", ".join(shops[0].tags)
        ax.set_title(f"{shops[0].product_id}: {tags}", fontsize=8.5, loc="left")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def draw_pk(result: dict, out: Path, title: str = "") -> Path:
    """P@K curves of a baseline_check result (one line per split)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for split, r in result.items():
        ks = [int(k[2:]) for k in r if k.startswith("P@")]
        ax.plot(ks, [r[f"P@{k}"] for k in ks], marker="o",
                label=f"{split}: {r['queries']} queries, {r['gallery']} gallery images")
    ax.set_xscale("log")
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.set_ylim(0, 1)
    ax.set_xlabel("K")
    ax.set_ylabel("P@K")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(title or "pretrained MobileNetV2 (no training)", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Draw the benchmark example grid.")
    ap.add_argument("manifest")
    ap.add_argument("--out", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("-n", type=int, default=6)
    ap.add_argument("--pk", help="also draw the P@K curves of this baseline_check --json file")
    ap.add_argument("--pk-out", help="where to write the P@K figure")
    args = ap.parse_args(argv)
    if args.pk:
        import json

        draw_pk(json.loads(Path(args.pk).read_text()), Path(args.pk_out or Path(args.out).with_name("benchmark_pk.png")))
    ds = load_dataset(args.manifest)
    draw_grid(ds.subset(args.split), Path(args.out), args.n,
              f"street2shop ({args.split} split): shop photos (left) and street photos of the same product")
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
