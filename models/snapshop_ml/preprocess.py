"""Image decoding and preprocessing, exactly as the bundle contract (models/BUNDLE.md) states.

The Rust service reimplements these steps; the golden outputs written at export time prove that
both sides agree. Change nothing here without bumping the bundle's format version.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pillow_heif
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

# HEIC/HEIF (iPhone photos) through pillow-heif's libheif. It applies the file's irot/imir/clap
# transformations itself and resets the EXIF orientation tag to 1, so exif_transpose below leaves
# a HEIC as libheif made it upright (the service does the same: preprocess.rs / heic.rs).
pillow_heif.register_heif_opener()

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
RESIZE_METHOD = "pillow_bilinear"
# EXIF orientations that swap width and height (the transposing ones: 5, 6, 7, 8).
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


class ImageLoadError(ValueError):
    """An image file is missing or cannot be decoded."""


def draft_jpeg(img: Image.Image, size: tuple[int, int]) -> None:
    """Let libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale, no smaller than `size` (BUNDLE.md 1b).

    `size` is the (width, height) the upright image will be resized to. `Image.draft` acts on the
    stored pixels, before the EXIF orientation is applied, so for an orientation that swaps the
    axes (5-8) it is asked for (height, width). Pillow then picks the largest s in {8, 4, 2, 1}
    with s <= min(stored_w // req_w, stored_h // req_h) and decodes ceil(w / s) x ceil(h / s)
    pixels with libjpeg's DCT scaling (nothing else changes: same IDCT and upsampling settings).
    A no-op for other formats, and for a JPEG already loaded.
    """
    if img.format != "JPEG":
        return
    w, h = size
    if img.getexif().get(ExifTags.Base.Orientation, 1) in TRANSPOSING_ORIENTATIONS:
        w, h = h, w
    img.draft("RGB", (w, h))


def load_rgb(path: str | Path, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode an image file (JPEG, PNG, WebP, HEIC/HEIF), apply its EXIF orientation (for HEIC:
    libheif's irot/imir, the tag being reset), convert to 8-bit RGB.

    With `draft_size` (manifest `preprocess.jpeg_draft`), a JPEG is decoded at the smallest DCT
    scale that still gives at least that many upright pixels (`draft_jpeg`).
    """
    try:
        with Image.open(path) as img:
            if draft_size is not None:
                draft_jpeg(img, draft_size)
            img = ImageOps.exif_transpose(img)
            return img.convert("RGB")
    except FileNotFoundError as exc:
        raise ImageLoadError(f"image not found: {path}") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        # pillow-heif reports a damaged HEIC (a truncated one, say) with ValueError.
        raise ImageLoadError(f"cannot decode image {path}: {exc}") from exc


def resize(img: Image.Image, size: int) -> Image.Image:
    """Resize the whole image to size x size, ignoring aspect ratio (Pillow BILINEAR)."""
    return img.resize((size, size), Image.Resampling.BILINEAR)


def to_tensor(img: Image.Image) -> np.ndarray:
    """RGB uint8 HWC -> normalised float32 CHW."""
    arr = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    arr = (arr - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)


# The pipeline's draft factor: Pillow's draft() is asked for twice the input size, so an image
# under twice that size (every image of our benchmarks) decodes in full and a 12 MP photo at 1/4
# scale (docs/performance.md, "Decode at the size the model needs").
DRAFT_FACTOR = 2


def preprocess_file(path: str | Path, size: int, jpeg_draft: int = 0) -> np.ndarray:
    """The whole contract: file -> float32 [3, size, size]. `jpeg_draft` is the draft factor
    (`jpeg_draft_of`): 0 (or False) for a full-size decode, k to decode a JPEG at the DCT scale
    Pillow's draft() picks for k times the input size (True is 1)."""
    k = int(jpeg_draft)
    return to_tensor(resize(load_rgb(path, (k * size, k * size) if k else None), size))


def jpeg_draft_of(manifest: dict) -> int:
    """The manifest's draft factor: 0 without `preprocess.jpeg_draft` (every bundle made before
    it), else `preprocess.jpeg_draft_factor` (absent: 1)."""
    pre = manifest.get("preprocess", {})
    value = pre.get("jpeg_draft", False)
    if not isinstance(value, bool):
        raise ValueError(f"preprocess.jpeg_draft must be true or false, found {value!r}")
    factor = pre.get("jpeg_draft_factor", 1)
    if isinstance(factor, bool) or not isinstance(factor, int) or not 1 <= factor <= 8:
        raise ValueError(f"preprocess.jpeg_draft_factor must be an integer from 1 to 8, found {factor!r}")
    return factor if value else 0


def manifest_section(size: int, jpeg_draft: int = 0) -> dict:
    """The `preprocess` section of the bundle manifest for draft factor `jpeg_draft` (0: none).
    `jpeg_draft` is written only when on and `jpeg_draft_factor` only when above 1, so a bundle
    without them reads exactly as before."""
    section = {
        "exif_transpose": True,
        "resize": {"method": RESIZE_METHOD, "width": size, "height": size, "keep_aspect": False},
        "scale": 1.0 / 255.0,
        "mean": list(MEAN),
        "std": list(STD),
    }
    if jpeg_draft:
        section["jpeg_draft"] = True
        if int(jpeg_draft) > 1:
            section["jpeg_draft_factor"] = int(jpeg_draft)
    return section
