"""The project's synthetic street-to-shop benchmark.

No fashion dataset can be downloaded here, so we render one: procedural garments (10 categories,
shape attributes, procedural patterns and crops of the real photographs that ship inside
scikit-image and scikit-learn), each photographed

* in the **shop** domain: clean, centred, evenly lit, plain light background, 256x320; about a
  third of the shop photos show a second item (a top over trousers, a dress beside a bag) that
  only the tags tell apart;
* in the **user** (street) domain: worn by a mannequin (skin, hair, random other clothes),
  in front of cluttered real-photo backgrounds, with perspective, rotation, scale, cropping,
  occlusion, lighting changes, colour casts, blur, noise and JPEG artefacts.

Everything derives from ``--seed``: product ``i`` uses ``numpy.random.default_rng([seed, i, k])``
streams only, so products are independent of each other and of the worker count, and the same seed
gives a byte-identical ``manifest.csv`` and identical pixels.

Usage (from ``models/``)::

    python -m snapshop_ml.data.synth --out ../data/street2shop --seed 0 [--scale 1.0] [--workers 1]
"""

from __future__ import annotations

import argparse
import colorsys
import functools
import io
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

from .loaders import write_csv_manifest
from .records import ImageRecord, RetrievalDataset

GENERATOR_VERSION = 1

# ------------------------------------------------------------------------------------------
# sizes

FRAME_H = 512  # the body frame every garment is drawn in (coordinates in units of FRAME_H)
FRAME_W = 384
CX = FRAME_W / 2
SHOP_SIZE = (256, 320)  # w, h

# ------------------------------------------------------------------------------------------
# vocabulary

# category -> (kind, sleeves, collars, lengths, fits, patterns)
TOP_PATTERNS = ("solid", "stripes", "checks", "dots", "floral", "logo", "graphic", "allover")
BOTTOM_PATTERNS = ("solid", "stripes", "checks", "dots", "floral", "allover")
CATEGORIES: dict[str, dict] = {
    "tshirt": dict(kind="top", sleeve=("short", "short", "none", "long"), collar=("crew", "crew", "v"),
                   length=(), fit=("slim", "regular", "loose"), pattern=TOP_PATTERNS),
    "shirt": dict(kind="top", sleeve=("long", "long", "short"), collar=("shirt",), length=(),
                  fit=("slim", "regular", "loose"), pattern=("solid", "stripes", "checks", "dots", "floral")),
    "sweater": dict(kind="top", sleeve=("long",), collar=("crew", "v"), length=(), fit=("regular", "loose"),
                    pattern=("solid", "stripes", "checks", "dots", "logo", "graphic")),
    "hoodie": dict(kind="top", sleeve=("long",), collar=("hood",), length=(), fit=("regular", "loose"),
                   pattern=("solid", "stripes", "logo", "graphic", "allover")),
    "jacket": dict(kind="outer", sleeve=("long",), collar=("lapel", "shirt", "hood"), length=(),
                   fit=("slim", "regular"), pattern=("solid", "checks", "stripes", "allover")),
    "coat": dict(kind="outer", sleeve=("long",), collar=("lapel", "shirt"), length=("short", "knee", "long"),
                 fit=("slim", "regular", "loose"), pattern=("solid", "checks", "stripes")),
    "dress": dict(kind="full", sleeve=("none", "short", "long"), collar=("crew", "v"),
                  length=("short", "knee", "long"), fit=("slim", "regular", "loose"),
                  pattern=("solid", "stripes", "checks", "dots", "floral", "logo", "allover")),
    "skirt": dict(kind="bottom", sleeve=(), collar=(), length=("short", "knee", "long"),
                  fit=("slim", "regular", "loose"), pattern=BOTTOM_PATTERNS),
    "trousers": dict(kind="bottom", sleeve=(), collar=(), length=("long",), fit=("slim", "regular", "loose"),
                     pattern=("solid", "stripes", "checks", "dots", "allover")),
    "shorts": dict(kind="bottom", sleeve=(), collar=(), length=("short",), fit=("slim", "regular", "loose"),
                   pattern=BOTTOM_PATTERNS),
}
CATEGORY_NAMES = tuple(CATEGORIES)
TOP_CATEGORIES = tuple(c for c, v in CATEGORIES.items() if v["kind"] == "top")
BOTTOM_CATEGORIES = tuple(c for c, v in CATEGORIES.items() if v["kind"] == "bottom")

# colour family -> (hue range in degrees, saturation range, value range)
COLOR_FAMILIES: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "red": ((-12, 8), (0.65, 0.95), (0.55, 0.9)),
    "orange": ((18, 32), (0.7, 0.95), (0.8, 1.0)),
    "yellow": ((46, 58), (0.6, 0.9), (0.85, 1.0)),
    "green": ((85, 150), (0.45, 0.85), (0.35, 0.8)),
    "blue": ((200, 235), (0.5, 0.9), (0.4, 0.9)),
    "purple": ((265, 295), (0.4, 0.75), (0.35, 0.75)),
    "pink": ((320, 345), (0.3, 0.6), (0.85, 1.0)),
    "brown": ((18, 32), (0.5, 0.8), (0.25, 0.48)),
    "black": ((0, 360), (0.0, 0.15), (0.06, 0.16)),
    "white": ((0, 360), (0.0, 0.06), (0.92, 1.0)),
    "grey": ((0, 360), (0.0, 0.08), (0.4, 0.7)),
    "beige": ((32, 45), (0.15, 0.32), (0.8, 0.93)),
}
COLOR_NAMES = tuple(COLOR_FAMILIES)
PATTERN_NAMES = ("solid", "stripes", "checks", "dots", "floral", "logo", "graphic", "allover")


def tag_vocabulary() -> list[str]:
    """Every tag the generator can emit (the train split uses a subset of these)."""
    tags = {f"category:{c}" for c in CATEGORIES}
    for spec in CATEGORIES.values():
        tags |= {f"sleeve:{v}" for v in spec["sleeve"]}
        tags |= {f"collar:{v}" for v in spec["collar"]}
        tags |= {f"length:{v}" for v in spec["length"]}
        tags |= {f"fit:{v}" for v in spec["fit"]}
        tags |= {f"pattern:{v}" for v in spec["pattern"]}
    tags |= {f"color:{c}" for c in COLOR_NAMES} | {"color:multi"}
    return sorted(tags)


# ------------------------------------------------------------------------------------------
# difficulty knobs


@dataclass
class Knobs:
    """Difficulty knobs (see docs/benchmark.md). Override with ``--knob name=value``."""

    # counts (before --scale)
    train_products: int = 1500
    val_products: int = 300
    test_products: int = 500
    distractors_per_query: float = 2.0  # shop-only products added to the val/test galleries
    distractor_same_color: float = 0.5  # probability a distractor also copies the colour family
    train_street: int = 3  # street photos per train product
    eval_street_max: int = 2  # 1..this street photos per val/test product
    shop_max: int = 2  # 1..this shop photos per product
    second_shop_prob: float = 0.35  # probability of the second shop photo (if shop_max >= 2)
    # shop photos
    outfit_prob: float = 0.35  # shop photo shows a second item
    # street photos
    street_fill: tuple[float, float] = (0.45, 0.95)  # product height / canvas height
    context: tuple[float, float] = (0.05, 0.6)  # extra frame around the product (fraction)
    cut_prob: float = 0.35  # probability the product is cut by the frame
    rotation_deg: float = 14.0
    perspective: float = 0.07  # corner jitter, fraction of the canvas
    photo_background_prob: float = 0.8
    clutter: tuple[int, int] = (4, 18)
    occlusion_prob: float = 0.45
    brightness: tuple[float, float] = (0.6, 1.3)
    color_cast: float = 0.16
    blur_max: float = 1.6
    noise_max: float = 9.0
    jpeg_quality: tuple[int, int] = (60, 90)
    fabric_shift: float = 0.06  # per-photo hue/saturation drift of the garment (dye / white balance)


#: Named knob settings. `v1` is the benchmark every figure before issue 7 part 4 was measured on
#: (the defaults above); `hard` keeps the train split byte-identical (train products come first and
#: the knobs below only touch val/test galleries) and fills the val/test galleries with many more
#: look-alike distractors: same category and pattern as a query product, and nearly always its
#: colour family, so that the first pass has to tell near-twins apart.
PRESETS: dict[str, dict[str, object]] = {
    "v1": {},
    "hard": {"distractors_per_query": 20.0, "distractor_same_color": 0.9},
    "hard10": {"distractors_per_query": 10.0, "distractor_same_color": 0.9},
}


def _knob_text(value) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


def _parse_knob(knobs: Knobs, text: str) -> None:
    name, sep, value = text.partition("=")
    types = {f.name: f for f in fields(Knobs)}
    if not sep or name not in types:
        raise SystemExit(f"error: bad --knob {text!r}; known knobs: {', '.join(types)}")
    cur = getattr(knobs, name)
    if isinstance(cur, tuple):
        parts = [p for p in value.replace(":", ",").split(",") if p]
        new = tuple(type(c)(p) for c, p in zip(cur, parts))
        if len(new) != len(cur):
            raise SystemExit(f"error: --knob {name} needs {len(cur)} values")
    else:
        new = type(cur)(value)
    setattr(knobs, name, new)


# ------------------------------------------------------------------------------------------
# shipped real photographs (no download: bundled with scikit-image / scikit-learn)

_PRINT_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina",
                 "immunohistochemistry", "colorwheel", "motorcycle", "china", "flower")
_GRAY_PHOTOS = ("camera", "brick", "grass", "gravel", "coins", "moon", "page", "text", "horse",
                "clock", "cell")
_BACKGROUND_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle", "china", "flower",
                      "immunohistochemistry", "camera", "brick", "grass", "gravel", "coins", "moon",
                      "page", "text", "clock", "cell")


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> Image.Image:
    """A bundled photograph as an RGB PIL image (loaded once per process)."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        arr = load_sample_image(f"{name}.jpg")
    else:
        import skimage.data as skd

        if name == "motorcycle":
            arr = skd.stereo_motorcycle()[0]
        else:
            arr = getattr(skd, name)()
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        arr = (255 * (arr.astype(np.float64) / max(arr.max(), 1))).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return Image.fromarray(arr[:, :, :3].copy(), "RGB")


def available_photos() -> list[str]:
    return sorted(set(_PRINT_PHOTOS) | set(_GRAY_PHOTOS) | set(_BACKGROUND_PHOTOS))


def _photo_crop(rng: np.random.Generator, names: tuple[str, ...], size: tuple[int, int],
                min_frac: float = 0.25, max_frac: float = 0.9) -> Image.Image:
    """A random crop of a random bundled photo, resized to ``size`` (w, h)."""
    img = _photo(names[int(rng.integers(len(names)))])
    w, h = size
    iw, ih = img.size
    aspect = w / h
    frac = rng.uniform(min_frac, max_frac)
    cw = frac * min(iw, ih * aspect)
    ch = cw / aspect
    x0 = rng.uniform(0, iw - cw)
    y0 = rng.uniform(0, ih - ch)
    crop = img.resize((w, h), Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return crop


# ------------------------------------------------------------------------------------------
# colours


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((h % 360) / 360.0, min(max(s, 0), 1), min(max(v, 0), 1))
    return (int(round(r * 255)), int(round(g * 255)), int(round(b * 255)))


def _sample_color(rng: np.random.Generator, family: str) -> tuple[int, int, int]:
    (h0, h1), (s0, s1), (v0, v1) = COLOR_FAMILIES[family]
    return _hsv(rng.uniform(h0, h1), rng.uniform(s0, s1), rng.uniform(v0, v1))


def _contrast_color(rng: np.random.Generator, base: tuple[int, int, int]) -> tuple[int, int, int]:
    r = rng.random()
    if r < 0.25:
        return _sample_color(rng, "white")
    if r < 0.4:
        return _sample_color(rng, "black")
    if r < 0.6:  # a lighter / darker shade of the base
        f = rng.choice([0.45, 0.6, 1.5, 1.8])
        return tuple(int(min(255, c * f + (30 if f > 1 else 0))) for c in base)  # type: ignore[return-value]
    fam = COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))]
    return _sample_color(rng, fam)


def _shade(c: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, v * f))) for v in c)  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------
# product specification


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def sample_spec(rng: np.random.Generator, category: str | None = None, pattern: str | None = None,
                color: str | None = None, categories: tuple[str, ...] = CATEGORY_NAMES) -> dict:
    """Sample a garment: category, shape attributes, colours, pattern parameters (all plain data)."""
    cat = category or _pick(rng, categories)
    c = CATEGORIES[cat]
    spec: dict = {"category": cat, "kind": c["kind"]}
    spec["sleeve"] = _pick(rng, c["sleeve"]) if c["sleeve"] else None
    spec["collar"] = _pick(rng, c["collar"]) if c["collar"] else None
    spec["length"] = _pick(rng, c["length"]) if c["length"] else None
    spec["fit"] = _pick(rng, c["fit"]) if c["fit"] else None
    pat = pattern if pattern in c["pattern"] else _pick(rng, c["pattern"])
    spec["pattern"] = pat
    fam = color or _pick(rng, COLOR_NAMES)
    spec["color_family"] = "multi" if pat == "allover" else fam
    base = _sample_color(rng, fam)
    spec["base"] = base
    spec["second"] = _contrast_color(rng, base)
    spec["third"] = _contrast_color(rng, base)
    # shape jitter (units of FRAME_H)
    spec["shape"] = {
        "shoulder": float(rng.uniform(0.098, 0.112)),
        "chest": {"slim": 0.082, "regular": 0.094, "loose": 0.108}.get(spec["fit"] or "regular", 0.094)
        + float(rng.uniform(-0.006, 0.006)),
        "hem": float(rng.uniform(-0.02, 0.02)),
        "sleeve": float(rng.uniform(0.85, 1.1)),
        "flare": float(rng.uniform(0.8, 1.2)),
        "neck": float(rng.uniform(0.85, 1.2)),
        "pocket": bool(rng.random() < 0.4),
        "buttons": int(rng.integers(3, 7)),
        "trim": bool(rng.random() < 0.35),
    }
    # pattern parameters
    p: dict = {}
    if pat == "stripes":
        p = {"angle": float(_pick(rng, (0.0, 0.0, 90.0, 90.0, 45.0, -45.0)) + rng.uniform(-6, 6)),
             "period": float(rng.uniform(6, 40)), "duty": float(rng.uniform(0.2, 0.6)),
             "colors": int(rng.integers(2, 4)), "phase": float(rng.random())}
    elif pat == "checks":
        p = {"period": float(rng.uniform(10, 44)), "duty": float(rng.uniform(0.3, 0.6)),
             "angle": float(_pick(rng, (0.0, 0.0, 45.0))), "lines": bool(rng.random() < 0.5),
             "phase": (float(rng.random()), float(rng.random()))}
    elif pat == "dots":
        p = {"spacing": float(rng.uniform(12, 40)), "radius": float(rng.uniform(0.12, 0.35)),
             "stagger": bool(rng.random() < 0.5), "phase": (float(rng.random()), float(rng.random()))}
    elif pat == "floral":
        p = {"count": int(rng.integers(18, 70)), "size": float(rng.uniform(6, 18)),
             "petals": int(rng.integers(4, 8)), "leaves": bool(rng.random() < 0.6),
             "seed": int(rng.integers(2**31))}
    elif pat == "logo":
        letters = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"
        n = int(rng.integers(2, 6))
        p = {"text": "".join(letters[int(i)] for i in rng.integers(len(letters), size=n)),
             "font": int(rng.integers(22, 40)), "shape": _pick(rng, ("circle", "star", "triangle", "ring", "diamond", "bar", "none")),
             "dx": float(rng.uniform(-0.03, 0.03)), "dy": float(rng.uniform(-0.02, 0.04)),
             "layout": _pick(rng, ("above", "below", "left", "center"))}
    elif pat == "graphic":
        p = {"seed": int(rng.integers(2**31)), "w": float(rng.uniform(0.09, 0.15)), "h": float(rng.uniform(0.07, 0.13)),
             "dy": float(rng.uniform(-0.01, 0.05)), "border": bool(rng.random() < 0.5), "round": bool(rng.random() < 0.3)}
    elif pat == "allover":
        p = {"seed": int(rng.integers(2**31)), "saturate": float(rng.uniform(0.7, 1.3))}
    spec["pp"] = p
    spec["weave"] = float(rng.uniform(0.0, 0.06))
    return spec


def spec_tags(spec: dict) -> tuple[str, ...]:
    tags = [f"category:{spec['category']}", f"pattern:{spec['pattern']}", f"color:{spec['color_family']}"]
    for k in ("sleeve", "collar", "length", "fit"):
        if spec.get(k):
            tags.append(f"{k}:{spec[k]}")
    return tuple(sorted(tags))


# ------------------------------------------------------------------------------------------
# drawing helpers (coordinates: x relative to the frame centre, both in units of FRAME_H)


def P(x: float, y: float) -> tuple[float, float]:
    return (CX + x * FRAME_H, y * FRAME_H)


def _grid() -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:FRAME_H, 0:FRAME_W].astype(np.float32)
    return xx, yy


_XX, _YY = _grid()


def _texture(spec: dict, box: tuple[int, int, int, int]) -> Image.Image:
    """The fabric over ``box`` (x0, y0, x1, y1) of the body frame, as RGB, before shading."""
    pat = spec["pattern"]
    p = spec["pp"]
    base = np.array(spec["base"], np.float32)
    c2 = np.array(spec["second"], np.float32)
    c3 = np.array(spec["third"], np.float32)
    bx0, by0, bx1, by1 = box
    xx, yy = _XX[by0:by1, bx0:bx1], _YY[by0:by1, bx0:bx1]
    if pat == "stripes":
        a = math.radians(p["angle"])
        u = xx * math.cos(a) + yy * math.sin(a)
        k = np.floor(u / p["period"] + p["phase"])
        frac = u / p["period"] + p["phase"] - k
        on = frac < p["duty"]
        if p["colors"] == 3:
            which = (k.astype(np.int64) % 2 == 0)
            img = np.where(on[..., None], np.where(which[..., None], c2, c3), base)
        else:
            img = np.where(on[..., None], c2, base)
    elif pat == "checks":
        a = math.radians(p["angle"])
        u = xx * math.cos(a) + yy * math.sin(a)
        v = -xx * math.sin(a) + yy * math.cos(a)
        fa = ((u / p["period"] + p["phase"][0]) % 1.0) < p["duty"]
        fb = ((v / p["period"] + p["phase"][1]) % 1.0) < p["duty"]
        img = np.where((fa & fb)[..., None], 0.5 * c2 + 0.5 * base * 0.6,
                       np.where((fa ^ fb)[..., None], 0.55 * c2 + 0.45 * base, base))
        if p["lines"]:
            la = ((u / p["period"] + p["phase"][0] + 0.5) % 1.0) < 0.08
            lb = ((v / p["period"] + p["phase"][1] + 0.5) % 1.0) < 0.08
            img = np.where((la | lb)[..., None], c3, img)
    elif pat == "dots":
        s = p["spacing"]
        row = np.floor(yy / s + p["phase"][1])
        xo = xx + (row % 2) * (s / 2 if p["stagger"] else 0)
        dx = ((xo / s + p["phase"][0]) % 1.0) - 0.5
        dy = ((yy / s + p["phase"][1]) % 1.0) - 0.5
        on = dx * dx + dy * dy < p["radius"] ** 2
        img = np.where(on[..., None], c2, base)
    elif pat == "allover":
        r = np.random.default_rng(p["seed"])
        crop = _photo_crop(r, _PRINT_PHOTOS, (FRAME_W, FRAME_H), 0.3, 0.95)
        img = np.asarray(crop.crop(box), np.float32)
        mean = img.mean(axis=2, keepdims=True)
        img = mean + (img - mean) * p["saturate"]
    else:  # solid, floral, logo, graphic start from the base colour
        img = np.broadcast_to(base, (by1 - by0, bx1 - bx0, 3))
    if spec["weave"] > 0:
        w = 1.0 + spec["weave"] * np.sin(xx * 1.7)[..., None] * np.sin(yy * 1.7)[..., None]
        img = img * w
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    if pat == "floral":
        r = np.random.default_rng(p["seed"])
        d = ImageDraw.Draw(im)
        green = _hsv(r.uniform(90, 140), 0.6, r.uniform(0.3, 0.6))
        for _ in range(p["count"]):
            x, y = r.uniform(0, FRAME_W) - bx0, r.uniform(0.1 * FRAME_H, FRAME_H) - by0
            sz = p["size"] * r.uniform(0.7, 1.3)
            col = spec["second"] if r.random() < 0.6 else spec["third"]
            rot = r.uniform(0, 2 * math.pi)
            if p["leaves"]:
                lx, ly = x + 1.3 * sz * math.cos(rot + 2), y + 1.3 * sz * math.sin(rot + 2)
                d.ellipse((lx - sz * 0.6, ly - sz * 0.35, lx + sz * 0.6, ly + sz * 0.35), fill=green)
            for k in range(p["petals"]):
                t = rot + 2 * math.pi * k / p["petals"]
                px, py = x + 0.6 * sz * math.cos(t), y + 0.6 * sz * math.sin(t)
                d.ellipse((px - sz * 0.45, py - sz * 0.45, px + sz * 0.45, py + sz * 0.45), fill=col)
            d.ellipse((x - sz * 0.3, y - sz * 0.3, x + sz * 0.3, y + sz * 0.3), fill=_shade(spec["third"], 0.8))
    elif pat in ("logo", "graphic"):
        _chest_print(im, spec, bx0, by0)
    return im


@functools.lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _chest_print(im: Image.Image, spec: dict, ox: int, oy: int) -> None:
    p = spec["pp"]
    d = ImageDraw.Draw(im)
    chest_y = 0.27 if spec["kind"] != "full" else 0.25
    if spec["pattern"] == "logo":
        cx, cy = P(p["dx"], chest_y + p["dy"])
        cx, cy = cx - ox, cy - oy
        font = _font(p["font"])
        col, col2 = spec["second"], spec["third"]
        r = p["font"] * 0.7
        shape = p["shape"]
        lay = p["layout"]
        sx, sy = cx, cy
        tx, ty = cx, cy
        if shape != "none":
            if lay == "above":
                sy, ty = cy - r * 0.9, cy + r * 0.8
            elif lay == "below":
                sy, ty = cy + r * 0.9, cy - r * 0.6
            elif lay == "left":
                sx = cx - r * 0.6 - len(p["text"]) * p["font"] * 0.33
                tx = cx + r * 0.6
        if shape == "circle":
            d.ellipse((sx - r, sy - r, sx + r, sy + r), fill=col2)
        elif shape == "ring":
            d.ellipse((sx - r, sy - r, sx + r, sy + r), outline=col2, width=max(3, int(r / 4)))
        elif shape == "triangle":
            d.polygon([(sx, sy - r), (sx - r, sy + r * 0.8), (sx + r, sy + r * 0.8)], fill=col2)
        elif shape == "diamond":
            d.polygon([(sx, sy - r), (sx - r, sy), (sx, sy + r), (sx + r, sy)], fill=col2)
        elif shape == "bar":
            d.rectangle((sx - 2 * r, sy - r * 0.35, sx + 2 * r, sy + r * 0.35), fill=col2)
        elif shape == "star":
            pts = []
            for k in range(10):
                rr = r if k % 2 == 0 else r * 0.45
                t = -math.pi / 2 + k * math.pi / 5
                pts.append((sx + rr * math.cos(t), sy + rr * math.sin(t)))
            d.polygon(pts, fill=col2)
        d.text((tx, ty), p["text"], fill=col, font=font, anchor="mm")
    else:  # graphic: a crop of a real photo printed on the chest
        r = np.random.default_rng(p["seed"])
        w, h = int(p["w"] * FRAME_H), int(p["h"] * FRAME_H)
        crop = _photo_crop(r, _PRINT_PHOTOS, (w, h), 0.2, 0.8)
        cx, cy = P(0, chest_y + p["dy"])
        cx, cy = cx - ox, cy - oy
        x0, y0 = int(cx - w / 2), int(cy - h / 2)
        if p["border"]:
            d.rectangle((x0 - 4, y0 - 4, x0 + w + 3, y0 + h + 3), fill=spec["second"])
        if p["round"]:
            m = Image.new("L", (w, h), 0)
            ImageDraw.Draw(m).ellipse((0, 0, w - 1, h - 1), fill=255)
            im.paste(crop, (x0, y0), m)
        else:
            im.paste(crop, (x0, y0))


def _sleeve_geometry(sh: dict, side: int, kind_len: float) -> list:
    """Polygon of a sleeve of relative length ``kind_len`` (0..1 of the arm) on ``side`` (-1/+1)."""
    sx, sy = side * sh["shoulder"], 0.165
    hx, hy = side * (sh["shoulder"] + 0.045), 0.50
    dx, dy = hx - sx, hy - sy
    n = math.hypot(dx, dy)
    dx, dy = dx / n, dy / n
    ex, ey = sx + dx * n * kind_len, sy + dy * n * kind_len
    nx, ny = -dy, dx
    if nx * side < 0:
        nx, ny = -nx, -ny
    w = (0.023 if kind_len > 0.5 else 0.03) * (1.0 + 0.3 * (sh["chest"] - 0.094) / 0.014)
    armpit = (side * (sh["chest"] - 0.002), 0.245)
    return [P(sx + side * 0.004, sy - 0.008), P(ex + nx * w, ey + ny * w), P(ex - nx * w, ey - ny * w), P(*armpit)]


def _garment_mask_and_details(spec: dict) -> tuple[Image.Image, list]:
    """Silhouette mask (L) plus a list of detail drawing ops applied after shading."""
    kind = spec["kind"]
    sh = spec["shape"]
    cat = spec["category"]
    m = Image.new("L", (FRAME_W, FRAME_H), 0)
    d = ImageDraw.Draw(m)
    ops: list = []
    if kind in ("top", "outer", "full"):
        sw, ch = sh["shoulder"], sh["chest"]
        if kind == "full":
            hem = 0.42
        elif cat == "coat":
            hem = {"short": 0.6, "knee": 0.72, "long": 0.86}[spec["length"]] + sh["hem"]
        elif cat == "jacket":
            hem = 0.5 + sh["hem"] * 0.5
        else:
            hem = 0.53 + sh["hem"]
        hemw = ch + (0.01 if kind != "full" else -0.012) + (0.02 if cat == "coat" else 0)
        body = [P(-0.03 * sh["neck"], 0.142), P(-sw, 0.163), P(-ch, 0.25), P(-hemw, hem),
                P(hemw, hem), P(ch, 0.25), P(sw, 0.163), P(0.03 * sh["neck"], 0.142)]
        if spec["collar"] == "hood":
            d.ellipse((*P(-0.07, 0.01), *P(0.07, 0.175)), fill=255)
        d.polygon(body, fill=255)
        slen = {"none": 0.0, "short": 0.3, "long": 1.0}[spec["sleeve"] or "none"] * sh["sleeve"]
        slen = min(slen, 1.02)
        if slen > 0:
            for side in (-1, 1):
                d.polygon(_sleeve_geometry(sh, side, slen), fill=255)
        # neckline cut
        nk = sh["neck"]
        col = spec["collar"]
        if col == "crew":
            d.ellipse((*P(-0.036 * nk, 0.125), *P(0.036 * nk, 0.158)), fill=0)
        elif col == "v":
            d.polygon([P(-0.036 * nk, 0.14), P(0.036 * nk, 0.14), P(0, 0.215)], fill=0)
        elif col == "shirt":
            d.polygon([P(-0.028, 0.14), P(0.028, 0.14), P(0, 0.19)], fill=0)
            cc = spec["third"] if sh["trim"] else _shade(spec["base"], 0.85)
            ops.append(("polygon", [P(-0.04, 0.138), P(-0.002, 0.19), P(-0.05, 0.18)], cc))
            ops.append(("polygon", [P(0.04, 0.138), P(0.002, 0.19), P(0.05, 0.18)], cc))
        elif col == "lapel":
            d.polygon([P(-0.032, 0.14), P(0.032, 0.14), P(0, 0.3)], fill=0)
            dark = _shade(spec["base"], 0.7)
            ops.append(("polygon", [P(-0.034, 0.14), P(-0.002, 0.3), P(-0.06, 0.22)], dark))
            ops.append(("polygon", [P(0.034, 0.14), P(0.002, 0.3), P(0.06, 0.22)], dark))
        elif col == "hood":
            ops.append(("ellipse", (*P(-0.045, 0.03), *P(0.045, 0.15)), _shade(spec["base"], 0.35)))
        # front details
        if kind == "outer":
            ops.append(("line", [P(0, 0.2 if col != "lapel" else 0.3), P(0, hem)], _shade(spec["base"], 0.5), 3))
            if cat == "coat" or sh["buttons"] % 2:
                y0 = 0.31 if col == "lapel" else 0.22
                for k in range(sh["buttons"]):
                    y = y0 + (hem - 0.05 - y0) * k / max(1, sh["buttons"] - 1)
                    ops.append(("ellipse", (*P(0.012, y - 0.006), *P(0.024, y + 0.006)), _shade(spec["third"], 0.7)))
            if sh["pocket"]:
                ops.append(("rect", (*P(-0.085, hem - 0.11), *P(-0.035, hem - 0.1)), _shade(spec["base"], 0.55)))
                ops.append(("rect", (*P(0.035, hem - 0.11), *P(0.085, hem - 0.1)), _shade(spec["base"], 0.55)))
        elif cat == "shirt":
            ops.append(("line", [P(0, 0.19), P(0, hem)], _shade(spec["base"], 0.8), 2))
            for k in range(sh["buttons"] + 2):
                y = 0.2 + (hem - 0.23) * k / (sh["buttons"] + 1)
                ops.append(("ellipse", (*P(-0.005, y - 0.004), *P(0.005, y + 0.004)), (235, 235, 230)))
            if sh["pocket"]:
                ops.append(("rectline", (*P(0.03, 0.22), *P(0.07, 0.27)), _shade(spec["base"], 0.75)))
        elif cat == "hoodie":
            ops.append(("polygon", [P(-0.06, hem - 0.12), P(0.06, hem - 0.12), P(0.075, hem - 0.03), P(-0.075, hem - 0.03)],
                        _shade(spec["base"], 0.8)))
            ops.append(("line", [P(-0.015, 0.16), P(-0.02, 0.24)], spec["third"], 2))
            ops.append(("line", [P(0.015, 0.16), P(0.02, 0.24)], spec["third"], 2))
        if cat in ("sweater", "hoodie") or (sh["trim"] and cat == "tshirt"):
            band = spec["third"] if sh["trim"] else _shade(spec["base"], 0.8)
            ops.append(("rect", (*P(-hemw, hem - 0.02), *P(hemw, hem)), band))
        if kind == "full":
            # skirt part of the dress
            fl = {"slim": 0.1, "regular": 0.135, "loose": 0.18}[spec["fit"]] * sh["flare"]
            dh = {"short": 0.6, "knee": 0.72, "long": 0.9}[spec["length"]] + sh["hem"]
            d.polygon([P(-ch + 0.01, 0.4), P(ch - 0.01, 0.4), P(fl, dh - 0.01), P(0, dh + 0.01), P(-fl, dh - 0.01)], fill=255)
            if sh["trim"]:
                ops.append(("line", [P(-ch + 0.01, 0.42), P(ch - 0.01, 0.42)], spec["third"], 5))
    else:  # bottoms
        wy = 0.42
        if cat == "skirt":
            fl = {"slim": 0.095, "regular": 0.13, "loose": 0.175}[spec["fit"]] * sh["flare"]
            hy = {"short": 0.58, "knee": 0.7, "long": 0.88}[spec["length"]] + sh["hem"]
            d.polygon([P(-0.082, wy), P(0.082, wy), P(-fl * -1, hy - 0.01), P(0, hy + 0.008), P(-fl, hy - 0.01)], fill=255)
            ops.append(("rect", (*P(-0.082, wy), *P(0.082, wy + 0.018)), _shade(spec["base"], 0.75)))
        else:
            hw = {"slim": 0.03, "regular": 0.038, "loose": 0.05}[spec["fit"]]
            hy = (0.93 if cat == "trousers" else 0.62) + sh["hem"] * 0.5
            if cat == "shorts":
                hw += 0.015
            lx = 0.045
            d.polygon([P(-0.085, wy), P(0.085, wy), P(0.092, 0.52), P(lx + hw + 0.005, hy), P(lx - hw, hy),
                       P(0.004, 0.55), P(-0.004, 0.55), P(-lx + hw, hy), P(-lx - hw - 0.005, hy), P(-0.092, 0.52)], fill=255)
            ops.append(("rect", (*P(-0.085, wy), *P(0.085, wy + 0.016)), _shade(spec["base"], 0.7)))
            ops.append(("line", [P(0.0, wy + 0.016), P(0.0, 0.51)], _shade(spec["base"], 0.6), 2))
            if sh["pocket"]:
                ops.append(("line", [P(-0.07, wy + 0.02), P(-0.085, 0.49)], _shade(spec["base"], 0.6), 2))
                ops.append(("line", [P(0.07, wy + 0.02), P(0.085, 0.49)], _shade(spec["base"], 0.6), 2))
            if sh["trim"]:
                ops.append(("line", [P(-0.09, 0.45), P(-lx - hw - 0.003, hy)], spec["third"], 4))
                ops.append(("line", [P(0.09, 0.45), P(lx + hw + 0.003, hy)], spec["third"], 4))
    return m, ops


def render_garment(spec: dict) -> Image.Image:
    """The garment as an RGBA image in the body frame (transparent elsewhere)."""
    mask, ops = _garment_mask_and_details(spec)
    x0, y0, x1, y1 = mask.getbbox() or (0, 0, FRAME_W, FRAME_H)
    pad = 8
    box = (max(0, x0 - pad), max(0, y0 - pad), min(FRAME_W, x1 + pad), min(FRAME_H, y1 + pad))
    tex = _texture(spec, box)
    # shading: darker towards the silhouette edges, soft vertical folds
    soft = np.asarray(mask.crop(box).filter(ImageFilter.BoxBlur(7)), np.float32) / 255.0
    ph = (spec["shape"]["hem"] + 0.02) * 150.0
    xx, yy = _XX[box[1]:box[3], box[0]:box[2]], _YY[box[1]:box[3], box[0]:box[2]]
    folds = 1.0 + 0.05 * np.sin(xx / (9.0 + 4 * spec["shape"]["flare"]) + ph) * np.sin(yy / 53.0 + ph)
    shade = (0.72 + 0.28 * soft) * folds
    arr = np.asarray(tex, np.float32) * shade[..., None]
    img = Image.new("RGB", (FRAME_W, FRAME_H), (0, 0, 0))
    img.paste(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB"), box[:2])
    d = ImageDraw.Draw(img)
    for op in ops:
        if op[0] == "polygon":
            d.polygon(op[1], fill=op[2])
        elif op[0] == "ellipse":
            d.ellipse(op[1], fill=op[2])
        elif op[0] == "rect":
            d.rectangle(op[1], fill=op[2])
        elif op[0] == "rectline":
            d.rectangle(op[1], outline=op[2], width=2)
        elif op[0] == "line":
            d.line(op[1], fill=op[2], width=op[3])
    img.putalpha(mask)
    return img


def render_bag(rng: np.random.Generator) -> Image.Image:
    """A handbag drawn beside the body (for 'second item' shop photos of dresses and coats)."""
    img = Image.new("RGBA", (FRAME_W, FRAME_H), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    col = _sample_color(rng, _pick(rng, COLOR_NAMES))
    x0 = rng.uniform(0.16, 0.2)
    y0 = rng.uniform(0.38, 0.5)
    w, h = rng.uniform(0.09, 0.14), rng.uniform(0.07, 0.11)
    d.arc((*P(x0 + w * 0.2, y0 - h * 0.7), *P(x0 + w * 0.8, y0 + h * 0.3)), 180, 360, fill=_shade(col, 0.6), width=5)
    d.rounded_rectangle((*P(x0, y0), *P(x0 + w, y0 + h)), radius=6, fill=col)
    d.rectangle((*P(x0, y0 + h * 0.25), *P(x0 + w, y0 + h * 0.32)), fill=_shade(col, 0.7))
    return img


# Companion garments (the other clothes in a photo) come from a small per-seed pool: rendering
# them afresh for every photo would dominate the generation time.
_POOL_GROUPS = {"bottom": BOTTOM_CATEGORIES, "top": TOP_CATEGORIES, "inner": ("tshirt", "sweater", "shirt"),
                "jacket": ("jacket",)}
POOL_SIZE = 48


@functools.lru_cache(maxsize=4 * POOL_SIZE)
def _pooled(seed: int, group: str, j: int) -> Image.Image:
    rng = np.random.default_rng([seed, 1_000_000_000 + list(_POOL_GROUPS).index(group), j])
    return render_garment(sample_spec(rng, categories=_POOL_GROUPS[group]))


def companion(seed: int, group: str, rng: np.random.Generator) -> Image.Image:
    """A garment of ``group`` drawn from the pool (do not modify the returned image)."""
    return _pooled(seed, group, int(rng.integers(POOL_SIZE)))


@functools.lru_cache(maxsize=1)
def _noise_tile() -> np.ndarray:
    return np.random.default_rng(20261127).normal(0, 1, size=(512, 512, 3)).astype(np.float32)


SKIN = ((255, 224, 196), (240, 200, 170), (224, 172, 140), (198, 134, 100), (141, 85, 60), (95, 60, 40))
HAIR = ((20, 15, 10), (60, 40, 25), (110, 75, 40), (200, 170, 110), (140, 60, 30), (90, 90, 90))


@functools.lru_cache(maxsize=POOL_SIZE)
def _pooled_body(seed: int, j: int) -> tuple[Image.Image, Image.Image]:
    return render_body(np.random.default_rng([seed, 2_000_000_000, j]))


def render_body(rng: np.random.Generator) -> tuple[Image.Image, Image.Image]:
    """A mannequin: (body without head, head layer) as RGBA images of the body frame."""
    skin = SKIN[int(rng.integers(len(SKIN)))]
    skin = tuple(int(np.clip(c + rng.normal(0, 6), 0, 255)) for c in skin)
    hair = HAIR[int(rng.integers(len(HAIR)))]
    body = Image.new("RGBA", (FRAME_W, FRAME_H), (0, 0, 0, 0))
    d = ImageDraw.Draw(body)
    sh = 0.105
    for side in (-1, 1):  # arms and hands
        a0, a1 = P(side * sh, 0.17), P(side * (sh + 0.045), 0.5)
        d.line([a0, a1], fill=skin, width=int(0.038 * FRAME_H))
        d.ellipse((a1[0] - 9, a1[1] - 6, a1[0] + 9, a1[1] + 16), fill=skin)
        l0, l1 = P(side * 0.045, 0.5), P(side * 0.045, 0.94)
        d.line([l0, l1], fill=skin, width=int(0.052 * FRAME_H))
        shoe = _shade(hair, 0.8) if rng.random() < 0.5 else (30, 30, 35)
        d.ellipse((*P(side * 0.045 - 0.035, 0.935), *P(side * 0.045 + 0.035, 0.975)), fill=shoe)
    d.polygon([P(-sh, 0.16), P(sh, 0.16), P(0.09, 0.5), P(-0.09, 0.5)], fill=skin)  # torso
    d.rectangle((*P(-0.02, 0.1), *P(0.02, 0.16)), fill=_shade(skin, 0.9))  # neck
    head = Image.new("RGBA", (FRAME_W, FRAME_H), (0, 0, 0, 0))
    h = ImageDraw.Draw(head)
    long_hair = rng.random() < 0.5
    if long_hair:
        h.rounded_rectangle((*P(-0.05, 0.02), *P(0.05, 0.2)), radius=12, fill=hair)
        h.rectangle((*P(-0.02, 0.1), *P(0.02, 0.2)), fill=_shade(skin, 0.9))  # neck in front
    h.ellipse((*P(-0.038, 0.03), *P(0.038, 0.135)), fill=skin)
    h.chord((*P(-0.042, 0.018), *P(0.042, 0.11)), 180, 360, fill=hair)
    for side in (-1, 1):
        ex, ey = P(side * 0.014, 0.085)
        h.ellipse((ex - 2, ey - 1.5, ex + 2, ey + 1.5), fill=(40, 30, 30))
    return body, head


# ------------------------------------------------------------------------------------------
# photographs


def _alpha_bbox(img: Image.Image) -> tuple[int, int, int, int]:
    bb = img.getchannel("A").getbbox()
    return bb if bb else (0, 0, img.width, img.height)


def shop_photo(layers: list[Image.Image], rng: np.random.Generator, zoom: float = 1.0) -> Image.Image:
    """A clean catalogue photo of the composed layers: centred, light plain background."""
    comp = Image.new("RGBA", (FRAME_W, FRAME_H), (0, 0, 0, 0))
    for layer in layers:
        comp.alpha_composite(layer)
    x0, y0, x1, y1 = _alpha_bbox(comp)
    w, h = SHOP_SIZE
    tone = rng.uniform(232, 252)
    tint = rng.normal(0, 3, size=3)
    bgc = tuple(int(np.clip(tone + t, 0, 255)) for t in tint)
    bg = Image.new("RGB", (w, h), bgc)
    if rng.random() < 0.5:  # faint vertical gradient (studio sweep)
        grad = np.linspace(1.0, rng.uniform(0.9, 0.97), h, dtype=np.float32)[:, None, None]
        bg = Image.fromarray(np.clip(np.asarray(bg, np.float32) * grad, 0, 255).astype(np.uint8), "RGB")
    fill = rng.uniform(0.84, 0.93) * zoom
    s = min(fill * w / (x1 - x0), fill * h / (y1 - y0))
    crop = comp.crop((x0, y0, x1, y1))
    cw, chh = max(1, int(round((x1 - x0) * s))), max(1, int(round((y1 - y0) * s)))
    crop = crop.resize((cw, chh), Image.Resampling.BILINEAR)
    px, py = (w - cw) // 2, (h - chh) // 2
    if zoom > 1.0:
        py = int((h - chh) * rng.uniform(0.15, 0.5))
    if rng.random() < 0.6:  # soft drop shadow
        sh = Image.new("RGBA", (w, h), (0, 0, 0, 0))
        a = crop.getchannel("A").point(lambda v: int(v * 0.22))
        shadow = Image.new("RGBA", crop.size, (40, 40, 40, 0))
        shadow.putalpha(a)
        sh.paste(shadow, (px + 4, py + 5))
        sh = sh.filter(ImageFilter.BoxBlur(4))
        bg = Image.alpha_composite(bg.convert("RGBA"), sh).convert("RGB")
    bg.paste(crop, (px, py), crop)
    return bg


def _perspective_coeffs(dst: np.ndarray, src: np.ndarray) -> list[float]:
    """Coefficients for PIL's PERSPECTIVE transform mapping output points ``dst`` to input ``src``."""
    a = []
    b = []
    for (x, y), (u, v) in zip(dst, src):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        b += [u, v]
    return np.linalg.solve(np.array(a, np.float64), np.array(b, np.float64)).tolist()


def _background(rng: np.random.Generator, size: tuple[int, int], k: Knobs) -> Image.Image:
    w, h = size
    if rng.random() < k.photo_background_prob:
        bg = _photo_crop(rng, _BACKGROUND_PHOTOS, (w, h), 0.2, 0.9)
        if rng.random() < 0.5:  # tint grey photos
            arr = np.asarray(bg, np.float32) * rng.uniform(0.7, 1.2, size=3)
            bg = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    else:
        c0 = _sample_color(rng, _pick(rng, COLOR_NAMES))
        bg = Image.new("RGB", (w, h), c0)
    d = ImageDraw.Draw(bg)
    for _ in range(int(rng.integers(k.clutter[0], k.clutter[1] + 1))):
        c = _sample_color(rng, _pick(rng, COLOR_NAMES))
        x0, y0 = rng.uniform(-0.2, 1.0) * w, rng.uniform(-0.2, 1.0) * h
        x1, y1 = x0 + rng.uniform(0.05, 0.5) * w, y0 + rng.uniform(0.05, 0.5) * h
        t = rng.random()
        if t < 0.4:
            d.rectangle((x0, y0, x1, y1), fill=c)
        elif t < 0.7:
            d.ellipse((x0, y0, x1, y1), fill=c)
        elif t < 0.9:
            d.line((x0, y0, x1, y1), fill=c, width=int(rng.integers(2, 12)))
        else:
            patch = _photo_crop(rng, _BACKGROUND_PHOTOS, (max(8, int(x1 - x0)), max(8, int(y1 - y0))), 0.1, 0.5)
            bg.paste(patch, (int(x0), int(y0)))
    if rng.random() < 0.6:
        bg = bg.filter(ImageFilter.BoxBlur(rng.uniform(0.5, 2.5)))  # depth of field
    return bg


def _occlude(img: Image.Image, rng: np.random.Generator, box: tuple[float, float, float, float]) -> None:
    """Partially cover the product region with a foreground object (bag, arm, pole, sign)."""
    d = ImageDraw.Draw(img)
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    t = rng.random()
    if t < 0.35:  # a strap / pole across
        cx = rng.uniform(x0, x1)
        c = _sample_color(rng, _pick(rng, COLOR_NAMES))
        d.line((cx - bw * rng.uniform(-0.3, 0.3), y0 - 10, cx, y1 + 10), fill=c, width=int(rng.uniform(0.04, 0.12) * bw + 3))
    elif t < 0.7:  # a bag / object in a corner
        c = _sample_color(rng, _pick(rng, COLOR_NAMES))
        ow, oh = rng.uniform(0.25, 0.45) * bw, rng.uniform(0.2, 0.35) * bh
        ox = x0 - ow * 0.3 if rng.random() < 0.5 else x1 - ow * 0.7
        oy = rng.uniform(y0 + 0.3 * bh, y1 - 0.2 * bh)
        d.rounded_rectangle((ox, oy, ox + ow, oy + oh), radius=8, fill=c)
    else:  # a photo patch (another person / object)
        ow, oh = int(rng.uniform(0.2, 0.4) * bw) + 8, int(rng.uniform(0.2, 0.4) * bh) + 8
        patch = _photo_crop(rng, _BACKGROUND_PHOTOS, (ow, oh), 0.1, 0.5)
        m = Image.new("L", (ow, oh), 0)
        ImageDraw.Draw(m).ellipse((0, 0, ow - 1, oh - 1), fill=255)
        ox = int(x0 - ow * 0.3) if rng.random() < 0.5 else int(x1 - ow * 0.7)
        oy = int(rng.uniform(y0, y1 - oh * 0.5))
        img.paste(patch, (ox, oy), m)


def _fabric_drift(layer: Image.Image, rng: np.random.Generator, amount: float) -> Image.Image:
    """Per-photo colour drift of the garment (dye, white balance): per-channel gains via a LUT."""
    if amount <= 0:
        return layer
    gains = rng.uniform(1 - amount, 1 + amount, size=3)
    v = np.arange(256, dtype=np.float64)
    lut = np.concatenate([np.minimum(255, v * g) for g in gains] + [v]).astype(np.int64)
    return layer.point(lut.tolist())


def street_photo(product: Image.Image, spec: dict, rng: np.random.Generator, k: Knobs,
                 seed: int = 0) -> tuple[Image.Image, int]:
    """A street photo of the product worn by a mannequin; returns (image, JPEG quality)."""
    body, head = _pooled_body(seed, int(rng.integers(POOL_SIZE)))
    layers = [body]
    kind = spec["kind"]
    prod = _fabric_drift(product, rng, k.fabric_shift)
    if kind in ("top", "outer"):
        bottom = companion(seed, "bottom", rng)
        if kind == "outer" and rng.random() < 0.7:
            layers += [bottom, companion(seed, "inner", rng), prod]
        else:
            layers += [bottom, prod]
    elif kind == "bottom":
        layers += [prod, companion(seed, "top", rng)]
    else:  # dress
        layers += [prod]
        if rng.random() < 0.25:
            layers.append(companion(seed, "jacket", rng))
    layers.append(head)
    fig = Image.new("RGBA", (FRAME_W, FRAME_H), (0, 0, 0, 0))
    for layer in layers:
        fig.alpha_composite(layer)

    # canvas
    aspect = _pick(rng, ((3, 4), (1, 1), (4, 3), (3, 4)))
    long_side = int(rng.integers(240, 401))
    if aspect[0] >= aspect[1]:
        W, H = long_side, int(round(long_side * aspect[1] / aspect[0]))
    else:
        W, H = int(round(long_side * aspect[0] / aspect[1])), long_side
    # window around the product in frame coordinates
    px0, py0, px1, py1 = _alpha_bbox(product)
    pw, ph = px1 - px0, py1 - py0
    c0, c1 = k.context
    ex = [rng.uniform(c0, c1) for _ in range(4)]
    wx0, wy0 = px0 - ex[0] * pw, py0 - ex[1] * ph
    wx1, wy1 = px1 + ex[2] * pw, py1 + ex[3] * ph
    if rng.random() < k.cut_prob:  # the frame cuts part of the product
        side = int(rng.integers(4))
        cut = rng.uniform(0.1, 0.3)
        if side == 0:
            wx0 = px0 + cut * pw
        elif side == 1:
            wy0 = py0 + cut * ph
        elif side == 2:
            wx1 = px1 - cut * pw
        else:
            wy1 = py1 - cut * ph
    # map the window into the canvas: scale so the product fills `street_fill` of the canvas height
    fill = rng.uniform(*k.street_fill)
    s = min(fill * H / ph, 0.98 * W / max(1, (wx1 - wx0)), 1.1 * H / max(1, (wy1 - wy0)))
    cxw, cyw = (wx0 + wx1) / 2, (wy0 + wy1) / 2
    ocx = W / 2 + rng.uniform(-0.12, 0.12) * W
    ocy = H / 2 + rng.uniform(-0.1, 0.1) * H
    ang = math.radians(rng.uniform(-k.rotation_deg, k.rotation_deg))
    ca, sa = math.cos(ang), math.sin(ang)
    src = []
    dst = np.array([[0, 0], [W, 0], [W, H], [0, H]], np.float64)
    for (ox, oy) in dst:
        jx = ox + rng.uniform(-k.perspective, k.perspective) * W
        jy = oy + rng.uniform(-k.perspective, k.perspective) * H
        dx, dy = (jx - ocx) / s, (jy - ocy) / s
        src.append([cxw + ca * dx - sa * dy, cyw + sa * dx + ca * dy])
    coeffs = _perspective_coeffs(dst, np.array(src))
    warped = fig.transform((W, H), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR)
    img = _background(rng, (W, H), k)
    img.paste(warped, (0, 0), warped)
    # product box on the canvas (approximate, for the occluder)
    if rng.random() < k.occlusion_prob:
        bx0 = ocx + (px0 - cxw) * s
        bx1 = ocx + (px1 - cxw) * s
        by0 = ocy + (py0 - cyw) * s
        by1 = ocy + (py1 - cyw) * s
        for _ in range(int(rng.integers(1, 3))):
            _occlude(img, rng, (bx0, by0, bx1, by1))
    # photometric: directional light, brightness, gamma, colour cast (LUT), blur, noise
    gain = rng.uniform(*k.brightness)
    cast = 1.0 + rng.uniform(-k.color_cast, k.color_cast, size=3)
    gamma = rng.uniform(0.8, 1.25)
    t = rng.uniform(0, 2 * math.pi)
    a = rng.uniform(0, 0.35)
    g = np.array([[1 + a * ((x - 0.5) * math.cos(t) + (y - 0.5) * math.sin(t)) for x in (0, 1)] for y in (0, 1)])
    gmax = float(g.max())
    grad = Image.fromarray(np.round(g / gmax * 255).astype(np.uint8), "L").resize((W, H), Image.Resampling.BILINEAR)
    img = ImageChops.multiply(img, Image.merge("RGB", (grad, grad, grad)))
    v = (np.arange(256, dtype=np.float64) / 255.0) ** gamma
    lut = np.concatenate([np.minimum(255, 255 * v * gain * cast[c] * gmax) for c in range(3)]).astype(np.int64)
    img = img.point(lut.tolist())
    br = rng.uniform(0, k.blur_max)
    if br > 0.3:
        img = img.filter(ImageFilter.GaussianBlur(br))
    sigma = rng.uniform(0, k.noise_max)
    if sigma > 0.5:
        ox, oy = int(rng.integers(0, 512 - W + 1)), int(rng.integers(0, 512 - H + 1))
        noise = _noise_tile()[oy:oy + H, ox:ox + W]
        if rng.random() < 0.5:
            noise = noise[..., :1]
        img = Image.fromarray(np.clip(np.asarray(img, np.float32) + sigma * noise, 0, 255).astype(np.uint8), "RGB")
    q = int(rng.integers(k.jpeg_quality[0], k.jpeg_quality[1] + 1))
    return img, q


# ------------------------------------------------------------------------------------------
# the dataset


@dataclass
class Plan:
    seed: int
    scale: float
    knobs: Knobs
    n_train: int = 0
    n_val: int = 0
    n_test: int = 0
    n_val_d: int = 0
    n_test_d: int = 0
    # product index ranges: train | val queries | val distractors | test queries | test distractors
    bounds: list[int] = field(default_factory=list)

    @classmethod
    def make(cls, seed: int, scale: float, knobs: Knobs) -> "Plan":
        def n(base: float) -> int:
            return max(1, int(round(base * scale)))

        p = cls(seed, scale, knobs)
        p.n_train, p.n_val, p.n_test = n(knobs.train_products), n(knobs.val_products), n(knobs.test_products)
        p.n_val_d = int(round(p.n_val * knobs.distractors_per_query))
        p.n_test_d = int(round(p.n_test * knobs.distractors_per_query))
        b = [0]
        for c in (p.n_train, p.n_val, p.n_val_d, p.n_test, p.n_test_d):
            b.append(b[-1] + c)
        p.bounds = b
        return p

    @property
    def total(self) -> int:
        return self.bounds[-1]

    def role(self, idx: int) -> tuple[str, bool, int | None]:
        """(split, is_distractor, query product index it imitates)."""
        b = self.bounds
        if idx < b[1]:
            return "train", False, None
        if idx < b[2]:
            return "val", False, None
        if idx < b[3]:
            return "val", True, b[1] + (idx - b[2]) % max(1, self.n_val)
        if idx < b[4]:
            return "test", False, None
        return "test", True, b[3] + (idx - b[4]) % max(1, self.n_test)


def product_spec(seed: int, idx: int, plan: Plan) -> dict:
    split, distractor, like = plan.role(idx)
    rng = np.random.default_rng([seed, idx, 0])
    if distractor:
        ref = product_spec(seed, like, plan)  # type: ignore[arg-type]
        same_color = rng.random() < plan.knobs.distractor_same_color
        fam = ref["color_family"] if same_color and ref["color_family"] != "multi" else None
        return sample_spec(rng, category=ref["category"], pattern=ref["pattern"], color=fam)
    return sample_spec(rng)


def generate_product(args: tuple[int, int, Plan, str]) -> list[tuple[str, str, str, str, str, int]]:
    """Render and save every photo of product ``idx``; returns manifest rows + file sizes."""
    seed, idx, plan, out = args
    k = plan.knobs
    split, distractor, _ = plan.role(idx)
    spec = product_spec(seed, idx, plan)
    tags = ";".join(spec_tags(spec))
    pid = f"p{idx:05d}"
    rng = np.random.default_rng([seed, idx, 1])
    garment = render_garment(spec)
    rows = []
    img_dir = Path(out) / "images" / split
    img_dir.mkdir(parents=True, exist_ok=True)

    # shop photos
    layers = [garment]
    if rng.random() < k.outfit_prob:
        if spec["kind"] in ("top", "outer"):
            layers = [companion(seed, "bottom", rng), garment]
        elif spec["kind"] == "bottom":
            layers = [garment, companion(seed, "top", rng)]
        else:
            layers = [garment, render_bag(rng)]
    n_shop = 1 + int(k.shop_max >= 2 and rng.random() < k.second_shop_prob)
    for j in range(n_shop):
        zoom = 1.0 if j == 0 else rng.uniform(0.95, 1.25)
        lay = layers if (j == 0 or rng.random() < 0.5) else [garment]
        img = shop_photo(lay, rng, zoom)
        rel = f"images/{split}/{pid}_shop_{j}.jpg"
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=94)
        (Path(out) / rel).write_bytes(buf.getvalue())
        rows.append((rel, pid, "shop", split, tags, buf.tell()))

    # street photos
    if distractor:
        n_street = 0
    elif split == "train":
        n_street = k.train_street
    else:
        n_street = int(rng.integers(1, k.eval_street_max + 1))
    for j in range(n_street):
        img, q = street_photo(garment, spec, rng, k, seed)
        rel = f"images/{split}/{pid}_user_{j}.jpg"
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=q)
        (Path(out) / rel).write_bytes(buf.getvalue())
        rows.append((rel, pid, "user", split, "", buf.tell()))
    return rows


def generate(out: str | os.PathLike, seed: int = 0, scale: float = 1.0, workers: int = 1,
             knobs: Knobs | None = None, quiet: bool = False) -> dict:
    """Generate the benchmark into ``out`` (images/, manifest.csv, stats.json); returns the stats."""
    knobs = knobs or Knobs()
    out = Path(out).resolve()
    plan = Plan.make(seed, scale, knobs)
    if (out / "images").exists():
        shutil.rmtree(out / "images")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    jobs = [(seed, i, plan, str(out)) for i in range(plan.total)]
    results: list[list] = []
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(min(workers, 2)) as pool:
            for i, rows in enumerate(pool.imap(generate_product, jobs, chunksize=8)):
                results.append(rows)
                if not quiet and (i + 1) % 500 == 0:
                    print(f"  {i + 1}/{plan.total} products, {time.time() - t0:.0f}s", file=sys.stderr)
    else:
        for i, job in enumerate(jobs):
            results.append(generate_product(job))
            if not quiet and (i + 1) % 500 == 0:
                print(f"  {i + 1}/{plan.total} products, {time.time() - t0:.0f}s", file=sys.stderr)

    records = []
    total_bytes = 0
    per = {s: {"products": 0, "distractor_products": 0, "street_photos": 0, "shop_photos": 0}
           for s in ("train", "val", "test")}
    cat_hist: dict[str, int] = {}
    pat_hist: dict[str, int] = {}
    for i, rows in enumerate(results):
        split, distractor, _ = plan.role(i)
        per[split]["distractor_products" if distractor else "products"] += 1
        for rel, pid, domain, spl, tags, nbytes in rows:
            total_bytes += nbytes
            per[spl]["street_photos" if domain == "user" else "shop_photos"] += 1
            records.append(ImageRecord(out / rel, pid, domain, spl, tuple(t for t in tags.split(";") if t)))
        tg = rows[0][4].split(";")
        for t in tg:
            if t.startswith("category:"):
                cat_hist[t[9:]] = cat_hist.get(t[9:], 0) + 1
            elif t.startswith("pattern:"):
                pat_hist[t[8:]] = pat_hist.get(t[8:], 0) + 1
    ds = RetrievalDataset("street2shop", records)
    write_csv_manifest(ds, out / "manifest.csv")
    vocab = ds.tag_vocabulary()
    stats = {
        "name": "street2shop",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "scale": scale,
        "splits": per,
        "images": len(records),
        "bytes": total_bytes,
        "tag_vocabulary": vocab,
        "tag_count": len(vocab),
        "categories": dict(sorted(cat_hist.items())),
        "patterns": dict(sorted(pat_hist.items())),
        "shop_size": list(SHOP_SIZE),
        "knobs": asdict(knobs),
        "command": " ".join(["python -m snapshop_ml.data.synth --out OUT", f"--seed {seed} --scale {scale}"]
                            + [f"--knob {f.name}={_knob_text(getattr(knobs, f.name))}" for f in fields(Knobs)
                               if getattr(knobs, f.name) != getattr(Knobs(), f.name)]),
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=False) + "\n")
    if not quiet:
        print(f"wrote {len(records)} images ({total_bytes / 1e6:.1f} MB) of {plan.total} products "
              f"to {out} in {time.time() - t0:.1f}s", file=sys.stderr)
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory (images/, manifest.csv, stats.json)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply the number of products (1.0 = 1500/300/500 train/val/test)")
    ap.add_argument("--workers", type=int, default=1, help="processes (at most 2)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="v1",
                    help="named knob settings (PRESETS in synth.py); --knob overrides on top")
    ap.add_argument("--knob", action="append", default=[], metavar="NAME=VALUE",
                    help="override a difficulty knob (see Knobs in synth.py); tuples as a,b")
    args = ap.parse_args(argv)
    if args.scale <= 0:
        ap.error("--scale must be > 0")
    knobs = Knobs(**PRESETS[args.preset])
    for text in args.knob:
        _parse_knob(knobs, text)
    generate(args.out, args.seed, args.scale, max(1, min(2, args.workers)), knobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
