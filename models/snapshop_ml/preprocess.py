"""Image decoding and preprocessing, exactly as the bundle contract (models/BUNDLE.md) states.

The Rust service reimplements these steps; the golden outputs written at export time prove that
both sides agree. Change nothing here without bumping the bundle's format version.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
RESIZE_METHOD = "pillow_bilinear"


class ImageLoadError(ValueError):
    """An image file is missing or cannot be decoded."""


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image file, apply its EXIF orientation, convert to 8-bit RGB."""
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            return img.convert("RGB")
    except FileNotFoundError as exc:
        raise ImageLoadError(f"image not found: {path}") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageLoadError(f"cannot decode image {path}: {exc}") from exc


def resize(img: Image.Image, size: int) -> Image.Image:
    """Resize the whole image to size x size, ignoring aspect ratio (Pillow BILINEAR)."""
    return img.resize((size, size), Image.Resampling.BILINEAR)


def to_tensor(img: Image.Image) -> np.ndarray:
    """RGB uint8 HWC -> normalised float32 CHW."""
    arr = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    arr = (arr - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)


def preprocess_file(path: str | Path, size: int) -> np.ndarray:
    """The whole contract: file -> float32 [3, size, size]."""
    return to_tensor(resize(load_rgb(path), size))


def manifest_section(size: int) -> dict:
    """The `preprocess` section of the bundle manifest."""
    return {
        "exif_transpose": True,
        "resize": {"method": RESIZE_METHOD, "width": size, "height": size, "keep_aspect": False},
        "scale": 1.0 / 255.0,
        "mean": list(MEAN),
        "std": list(STD),
    }
