"""Writing HEIC test images with pillow-heif's encoder (libheif + x265), for the golden fixtures.

Reading HEIC needs nothing from here: `preprocess.py` registers pillow-heif's opener, and
`load_rgb` decodes HEIC like any other format. This module only makes files: the golden HEIC
photos (`export.write_golden`, `bundle add-heic-golden`) and the crafted decompression bombs of
`tests/fixtures/heic/make_heic_fixtures.py`. It must never be needed to preprocess an image.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pillow_heif
from PIL import Image

# Saving as "HEIF" needs the plugin (preprocess.py registers it too; registering is idempotent).
pillow_heif.register_heif_opener()

# 4:2:0 as iPhones write it (the case where libheif releases convert to RGB differently).
CHROMA = 420
QUALITY = 60
# EXIF orientation 6: "rotate 90° clockwise to view"; pillow-heif turns it into an irot box.
ROTATE_CW = 6


def heic_bytes(img: Image.Image, quality: int = QUALITY, orientation: int = 1) -> bytes:
    """Encode an RGB image as HEIC (8-bit, 4:2:0). With `orientation` != 1 the stored pixels are
    `img` as given and the file says, in its irot/imir boxes, how to make them upright."""
    if img.mode != "RGB":
        raise ValueError(f"expected an RGB image, got {img.mode}")
    kwargs = {"quality": quality, "chroma": CHROMA}
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    out = io.BytesIO()
    img.save(out, format="HEIF", **kwargs)
    return out.getvalue()


def save_heic(img: Image.Image, path: Path, quality: int = QUALITY, orientation: int = 1) -> None:
    """`heic_bytes` into a file."""
    Path(path).write_bytes(heic_bytes(img, quality, orientation))


def stored_rotated(upright: Image.Image) -> Image.Image:
    """The pixels a camera stores for `upright` when it writes orientation 6 (`ROTATE_CW`)."""
    return upright.transpose(Image.Transpose.ROTATE_90)


def ispe_offsets(data: bytes) -> list[int]:
    """Offsets of the width field of every `ispe` box (the 32-bit width and height follow the
    4-byte version and flags), found by walking meta -> iprp -> ipco."""

    def boxes(start: int, end: int):
        pos = start
        while pos + 8 <= end:
            size, kind = struct.unpack(">I4s", data[pos:pos + 8])
            header = 8
            if size == 1:
                size = struct.unpack(">Q", data[pos + 8:pos + 16])[0]
                header = 16
            elif size == 0:
                size = end - pos
            if size < header or pos + size > end:
                raise ValueError(f"malformed box {kind!r} at {pos}")
            yield kind, pos + header, pos + size
            pos += size

    def child(start: int, end: int, kind: bytes) -> tuple[int, int]:
        for k, s, e in boxes(start, end):
            if k == kind:
                return s, e
        raise ValueError(f"no {kind!r} box")

    meta = child(0, len(data), b"meta")
    iprp = child(meta[0] + 4, meta[1], b"iprp")  # meta is a full box
    ipco = child(*iprp, b"ipco")
    return [s + 4 for k, s, _ in boxes(*ipco) if k == b"ispe"]


def with_ispe(data: bytes, width: int, height: int) -> bytes:
    """`data` with every `ispe` box declaring `width` x `height` (the coded picture unchanged):
    a decompression bomb whose header promises far more pixels than the file holds."""
    out = bytearray(data)
    offsets = ispe_offsets(data)
    if not offsets:
        raise ValueError("no ispe box to patch")
    for off in offsets:
        out[off:off + 8] = struct.pack(">II", width, height)
    return bytes(out)
