"""The real-photo benchmark: products cut from real photographs that ship inside registry
packages, and phone-style queries of them (see docs/realphoto.md).

    python -m snapshop_ml.data.realphoto build --out ../data/realphoto           # the benchmark
    python -m snapshop_ml.data.realphoto build --out /tmp/rp --origins skimage,sklearn
    python -m snapshop_ml.data.realphoto check                                   # sources present?

Everything comes from `realphoto_split.json` next to this file (committed): which photograph is
used, for what (catalogue product, gallery-only distractor, query background, real second shot),
and in which split. Splits are by source photograph: every product, query and background made
from one photograph stays in that photograph's split. A product is one tile of a source photo
(the photo is cut into `tiles = [cols, rows]` disjoint tiles, so no two products overlap).

Queries ("user" images) are (a) the real second shots of the `pair` sources, and (b) phone-style
versions of each product made by `phone_photo`: crop, perspective and rotation, pasted on a
crop of a background photo of the same split, occlusion, lighting, colour cast, blur, noise and
JPEG. Everything is seeded per product (`numpy.random.default_rng([seed, crc32(product), k])`),
so the same seed gives byte-identical images and manifest.

The output is the CSV manifest of `loaders.py` (image,product_id,domain,split,tags) plus
`stats.json`, which `snapshop eval --manifest <out>/manifest.csv --split test` reads unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .loaders import load_csv_manifest, write_csv_manifest
from .records import SPLITS, DatasetError, ImageRecord

Image.MAX_IMAGE_PIXELS = None
SPLIT_FILE = Path(__file__).with_name("realphoto_split.json")
ROLES = ("object", "distractor", "background", "pair")
ORIGINS = ("skimage", "sklearn", "debian")
SHOP_LONG_SIDE = 480  # catalogue images are stored at most this long
BG_MAX_SIDE = 1600  # backgrounds are decoded at about this size


class SourceError(DatasetError):
    """A source photograph named in the split file is missing or differs from the recorded one."""


# --------------------------------------------------------------------------------------------
# sources


def origin_root(origin: str) -> Path | None:
    if origin == "skimage":
        import skimage

        return Path(skimage.__file__).parent / "data"
    if origin == "sklearn":
        import sklearn

        return Path(sklearn.__file__).parent / "datasets" / "images"
    if origin == "debian":
        return None
    raise ValueError(f"unknown origin {origin!r} (expected one of {', '.join(ORIGINS)})")


def resolve_source(entry: dict) -> Path:
    """The file of one split-file entry: inside the installed wheel, or an absolute Debian path."""
    root = origin_root(entry["origin"])
    return Path(entry["file"]) if root is None else root / entry["file"]


def load_split(path: str | os.PathLike = SPLIT_FILE) -> dict:
    """Read and validate the split file."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read the split file: {exc}") from exc
    ids = set()
    for i, e in enumerate(doc.get("sources", [])):
        where = f"{path}: source {i} ({e.get('id')}): "
        for k in ("id", "origin", "file", "role", "split"):
            if k not in e:
                raise DatasetError(f"{where}missing {k!r}")
        if e["id"] in ids:
            raise DatasetError(f"{where}duplicate id")
        ids.add(e["id"])
        if e["role"] not in ROLES:
            raise DatasetError(f"{where}unknown role {e['role']!r}")
        if e["split"] not in SPLITS:
            raise DatasetError(f"{where}unknown split {e['split']!r}")
        if e["origin"] not in ORIGINS:
            raise DatasetError(f"{where}unknown origin {e['origin']!r}")
        if e["role"] == "distractor" and e["split"] == "train":
            raise DatasetError(f"{where}distractors belong to val/test")
    by_id = {e["id"]: e for e in doc["sources"]}
    for e in doc["sources"]:
        if e["role"] == "pair":
            base = by_id.get(e.get("pair_of"))
            if base is None or base["role"] != "object" or base["split"] != e["split"]:
                raise DatasetError(f"{path}: {e['id']}: pair_of must name an object source of the same split")
            if tuple(base.get("tiles", (1, 1))) != (1, 1):
                raise DatasetError(f"{path}: {e['id']}: the paired object must be a single tile")
    return doc


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_version(entry: dict) -> str | None:
    if entry["origin"] == "skimage":
        import skimage

        return f"scikit-image {skimage.__version__}"
    if entry["origin"] == "sklearn":
        import sklearn

        return f"scikit-learn {sklearn.__version__}"
    pkg = entry.get("package")
    try:
        v = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True, timeout=20)
        return f"{pkg} {v.stdout.strip()}" if v.returncode == 0 else f"{pkg} (not installed)"
    except (OSError, subprocess.SubprocessError):
        return f"{pkg} (unknown)"


def check_sources(sources: list[dict], verify: bool = True) -> None:
    """Every selected source exists (and has its recorded sha256 when `verify`)."""
    missing, changed = [], []
    for e in sources:
        p = resolve_source(e)
        if not p.is_file():
            missing.append(e)
        elif verify and e.get("sha256") and sha256_file(p) != e["sha256"]:
            changed.append(e)
    if missing:
        pkgs = sorted({e.get("package", e["origin"]) for e in missing})
        raise SourceError(f"{len(missing)} source photo(s) missing, e.g. {resolve_source(missing[0])}; install "
                          f"{' '.join(pkgs)} (apt-get install -y --no-install-recommends ... for Debian packages), "
                          f"or build a subset with --origins")
    if changed:
        raise SourceError(f"{len(changed)} source photo(s) differ from the split file's sha256, e.g. "
                          f"{resolve_source(changed[0])} ({package_version(changed[0])}); another package version "
                          f"gives another benchmark (pass --no-verify to build it anyway)")


def open_rgb(path: Path, max_side: int | None = None) -> Image.Image:
    with Image.open(path) as im:
        if max_side and im.format == "JPEG":
            im.draft("RGB", (max_side, max_side))  # decode large JPEG wallpapers at a reduced size
        im = im.convert("RGB")
    if max_side and max(im.size) > max_side:
        s = max_side / max(im.size)
        im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.Resampling.LANCZOS)
    return im


def slug(source_id: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in source_id.split(":", 1)[-1].replace(":", "-")).strip("-").lower()


def tiles_of(img: Image.Image, cols: int, rows: int) -> list[Image.Image]:
    """The photo cut into cols x rows disjoint tiles, row-major, each at most SHOP_LONG_SIDE long."""
    out = []
    for r in range(rows):
        for c in range(cols):
            box = (round(c * img.width / cols), round(r * img.height / rows),
                   round((c + 1) * img.width / cols), round((r + 1) * img.height / rows))
            t = img.crop(box)
            if max(t.size) > SHOP_LONG_SIDE:
                s = SHOP_LONG_SIDE / max(t.size)
                t = t.resize((max(1, round(t.width * s)), max(1, round(t.height * s))), Image.Resampling.LANCZOS)
            out.append(t)
    return out


# --------------------------------------------------------------------------------------------
# phone-style augmentation


def product_rng(seed: int, product_id: str, k: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(product_id.encode()), k])


def _perspective_coeffs(dst: np.ndarray, src: np.ndarray) -> list[float]:
    """Coefficients for Image.transform(PERSPECTIVE): maps output points dst to input points src."""
    a = []
    for (x, y), (u, v) in zip(dst, src):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    return np.linalg.solve(np.asarray(a, np.float64), src.reshape(-1).astype(np.float64)).tolist()


def _bg_crop(rng: np.random.Generator, bg: Image.Image, size: tuple[int, int], lo: float, hi: float) -> Image.Image:
    w, h = size
    aspect = w / h
    frac = rng.uniform(lo, hi)
    cw = frac * min(bg.width, bg.height * aspect)
    ch = cw / aspect
    x0, y0 = rng.uniform(0, bg.width - cw), rng.uniform(0, bg.height - ch)
    out = bg.resize((w, h), Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else out


def phone_photo(product: Image.Image, backgrounds: list[Image.Image], rng: np.random.Generator) -> tuple[bytes, dict]:
    """A phone-style photo of a catalogue image, as JPEG bytes, and the parameters drawn."""
    p = {}
    # 1. crop: keep 65-100 % of each side
    fx, fy = rng.uniform(0.65, 1.0, size=2)
    cw, ch = max(8, round(product.width * fx)), max(8, round(product.height * fy))
    x0, y0 = int(rng.integers(0, product.width - cw + 1)), int(rng.integers(0, product.height - ch + 1))
    obj = product.crop((x0, y0, x0 + cw, y0 + ch)).convert("RGBA")
    p["crop"] = [round(fx, 3), round(fy, 3)]
    # 2. canvas and background
    aspect = (3 / 4, 1.0, 4 / 3)[int(rng.integers(3))]
    long_side = int(rng.integers(320, 481))
    W, H = (long_side, round(long_side / aspect)) if aspect >= 1 else (round(long_side * aspect), long_side)
    bi = int(rng.integers(len(backgrounds)))
    canvas = _bg_crop(rng, backgrounds[bi], (W, H), 0.25, 0.9)
    if rng.random() < 0.5:
        canvas = canvas.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 3.0))))  # depth of field
    p["canvas"] = [W, H]
    p["background"] = bi
    # 3. size and geometry: the product fills 45-85 % of the frame, rotated and in perspective
    fill = rng.uniform(0.45, 0.85)
    s = fill * min(W / obj.width, H / obj.height)
    ow, oh = max(8, round(obj.width * s)), max(8, round(obj.height * s))
    obj = obj.resize((ow, oh), Image.Resampling.BILINEAR)
    angle = rng.uniform(-15, 15)
    obj = obj.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    jitter = 0.08 * np.array([obj.width, obj.height])
    src = np.array([[0, 0], [obj.width, 0], [obj.width, obj.height], [0, obj.height]], np.float64)
    dst = src + rng.uniform(-1, 1, size=(4, 2)) * jitter
    dst -= dst.min(axis=0)
    size = tuple(int(v) for v in np.ceil(dst.max(axis=0)))
    obj = obj.transform(size, Image.Transform.PERSPECTIVE, _perspective_coeffs(dst, src), Image.Resampling.BICUBIC)
    p["fill"], p["rotation"] = round(fill, 3), round(angle, 2)
    # position: centred-ish, may be cut by the frame by up to 10 % per side
    px = int(rng.uniform(-0.1 * obj.width, max(-0.1 * obj.width + 1, W - 0.9 * obj.width)))
    py = int(rng.uniform(-0.1 * obj.height, max(-0.1 * obj.height + 1, H - 0.9 * obj.height)))
    canvas.paste(obj, (px, py), obj)
    # 4. occlusion: a patch of another background photo or a flat-coloured shape over the product
    if rng.random() < 0.4:
        area = rng.uniform(0.05, 0.2) * obj.width * obj.height
        ar = rng.uniform(0.4, 2.5)
        w_, h_ = max(4, int(np.sqrt(area * ar))), max(4, int(np.sqrt(area / ar)))
        cx, cy = px + rng.uniform(0.1, 0.9) * obj.width, py + rng.uniform(0.1, 0.9) * obj.height
        box = (int(cx - w_ / 2), int(cy - h_ / 2))
        if rng.random() < 0.6:
            patch = _bg_crop(rng, backgrounds[int(rng.integers(len(backgrounds)))], (w_, h_), 0.05, 0.4)
            mask = Image.new("L", (w_, h_), 0)
            ImageDraw.Draw(mask).rounded_rectangle((0, 0, w_ - 1, h_ - 1), radius=int(min(w_, h_) * 0.3), fill=255)
            canvas.paste(patch, box, mask)
        else:
            colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
            ImageDraw.Draw(canvas).ellipse((box[0], box[1], box[0] + w_, box[1] + h_), fill=colour)
        p["occluded"] = round(float(area / (obj.width * obj.height)), 3)
    # 5. photometry: directional light, brightness, gamma, colour cast
    a = np.asarray(canvas, np.float32) / 255.0
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    ramp = ((xx / W - 0.5) * np.cos(theta) + (yy / H - 0.5) * np.sin(theta))
    light = 1.0 + rng.uniform(0, 0.5) * ramp
    bright = rng.uniform(0.7, 1.3)
    gamma = rng.uniform(0.8, 1.25)
    cast = 1.0 + rng.uniform(-0.12, 0.12, size=3)
    a = np.clip(a * light[..., None] * bright * cast[None, None, :], 0, 1) ** gamma
    p.update(brightness=round(bright, 3), gamma=round(gamma, 3), cast=np.round(cast, 3).tolist())
    # 6. sensor: blur, noise, JPEG
    img = Image.fromarray((a * 255 + 0.5).astype(np.uint8), "RGB")
    sigma = rng.uniform(0, 1.5)
    if sigma > 0.2:
        img = img.filter(ImageFilter.GaussianBlur(float(sigma)))
    noise = rng.uniform(0, 6)
    arr = np.asarray(img, np.float32) + rng.normal(0, noise, size=(H, W, 1 if rng.random() < 0.5 else 3))
    img = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")
    quality = int(rng.integers(55, 86))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    p.update(blur=round(sigma, 2), noise=round(noise, 2), jpeg=quality)
    return buf.getvalue(), p


# --------------------------------------------------------------------------------------------
# the builder


def select(doc: dict, origins: set[str] | None = None, limit: int | None = None) -> list[dict]:
    """The split file's sources, restricted to `origins`; `limit` keeps the first N objects and
    distractors of each split (a tiny build for tests), backgrounds and pairs as needed."""
    sources = [e for e in doc["sources"] if origins is None or e["origin"] in origins]
    ids = {e["id"] for e in sources}
    sources = [e for e in sources if e["role"] != "pair" or e["pair_of"] in ids]
    if limit is not None:
        kept, count = [], Counter()
        for e in sources:
            if e["role"] in ("object", "distractor"):
                count[(e["split"], e["role"])] += 1
                if count[(e["split"], e["role"])] > limit:
                    continue
            kept.append(e)
        ids = {e["id"] for e in kept}
        sources = [e for e in kept if e["role"] != "pair" or e["pair_of"] in ids]
    return sources


def build(out: str | os.PathLike, split_file: str | os.PathLike = SPLIT_FILE, origins: set[str] | None = None,
          seed: int | None = None, limit: int | None = None, verify: bool = True,
          queries_per_product: dict | None = None) -> dict:
    """Write images/, manifest.csv and stats.json into `out`; returns the statistics."""
    doc = load_split(split_file)
    seed = doc.get("seed", 0) if seed is None else seed
    qpp = {**doc.get("queries_per_product", {"train": 3, "val": 2, "test": 2}), **(queries_per_product or {})}
    sources = select(doc, origins, limit)
    check_sources(sources, verify)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    backgrounds = {s: [open_rgb(resolve_source(e), BG_MAX_SIDE) for e in sources
                       if e["role"] == "background" and e["split"] == s] for s in SPLITS}
    needed = {e["split"] for e in sources if e["role"] == "object" and qpp.get(e["split"], 0) > 0}
    for s in needed:
        if not backgrounds[s]:
            raise DatasetError(f"split {s}: has object sources but no background source to paste queries on")
    records: list[ImageRecord] = []
    queries_meta = []
    for e in sources:
        if e["role"] not in ("object", "distractor"):
            continue
        split = e["split"]
        cols, rows = e.get("tiles", (1, 1))
        img = open_rgb(resolve_source(e), max(SHOP_LONG_SIDE * max(cols, rows), SHOP_LONG_SIDE))
        tags = (f"source:{e['origin']}",)
        d = out / "images" / split
        d.mkdir(parents=True, exist_ok=True)
        for t, tile in enumerate(tiles_of(img, cols, rows)):
            pid = f"rp-{slug(e['id'])}-{t}"
            shop = d / f"{pid}_shop_0.jpg"
            tile.save(shop, format="JPEG", quality=92)
            records.append(ImageRecord(path=shop.resolve(), product_id=pid, domain="shop", split=split, tags=tags))
            if e["role"] != "object":
                continue
            for k in range(qpp.get(split, 0)):
                data, params = phone_photo(tile, backgrounds[split], product_rng(seed, pid, k))
                q = d / f"{pid}_user_{k}.jpg"
                q.write_bytes(data)
                records.append(ImageRecord(path=q.resolve(), product_id=pid, domain="user", split=split))
                queries_meta.append({"image": q.relative_to(out).as_posix(), "product_id": pid, "kind": "augmented",
                                     "source": e["id"], "params": params})
            for pe in (x for x in sources if x["role"] == "pair" and x["pair_of"] == e["id"]):
                real = open_rgb(resolve_source(pe), SHOP_LONG_SIDE)
                q = d / f"{pid}_user_real_{slug(pe['id'])}.jpg"
                real.save(q, format="JPEG", quality=92)
                records.append(ImageRecord(path=q.resolve(), product_id=pid, domain="user", split=split))
                queries_meta.append({"image": q.relative_to(out).as_posix(), "product_id": pid, "kind": "real",
                                     "source": pe["id"]})
    manifest = write_csv_manifest(records, out / "manifest.csv")
    ds = load_csv_manifest(manifest)
    stats = {
        "seed": seed,
        "split_file": _rel(Path(split_file)),
        "per_split": ds.stats(),
        "queries": {s: dict(Counter(q["kind"] for q in queries_meta
                                    if q["image"].startswith(f"images/{s}/"))) for s in SPLITS},
        "sources": [{"id": e["id"], "role": e["role"], "split": e["split"], "tiles": e.get("tiles"),
                     "file": e["file"], "package": package_version(e)} for e in sources],
        "sources_per_split": {s: dict(Counter(e["role"] for e in sources if e["split"] == s)) for s in SPLITS},
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    (out / "queries.json").write_text(json.dumps(queries_meta, indent=1) + "\n")
    return stats


def _rel(p: Path) -> str:
    """A path relative to the repository root when it is inside it."""
    root = Path(__file__).resolve().parents[3]
    try:
        return p.resolve().relative_to(root).as_posix()
    except ValueError:
        return p.as_posix()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write the benchmark")
    b.add_argument("--out", required=True)
    b.add_argument("--split-file", default=str(SPLIT_FILE))
    b.add_argument("--origins", default=None, help="comma-separated subset of skimage,sklearn,debian")
    b.add_argument("--seed", type=int, default=None, help="default: the split file's seed")
    b.add_argument("--limit", type=int, default=None, help="at most N object and N distractor sources per split")
    b.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the source photos")
    c = sub.add_parser("check", help="are the source photos installed and unchanged?")
    c.add_argument("--split-file", default=str(SPLIT_FILE))
    args = ap.parse_args(argv)
    try:
        if args.cmd == "check":
            doc = load_split(args.split_file)
            check_sources(doc["sources"])
            print(f"ok: {len(doc['sources'])} source photos present and unchanged")
            return 0
        origins = set(args.origins.split(",")) if args.origins else None
        stats = build(args.out, args.split_file, origins, args.seed, args.limit, not args.no_verify)
        for s in SPLITS:
            print(f"{s:5s} {json.dumps(stats['per_split'][s])} queries {json.dumps(stats['queries'][s])}")
        return 0
    except (DatasetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
