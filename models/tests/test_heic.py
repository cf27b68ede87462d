"""HEIC/HEIF in the pipeline: pillow-heif decodes it through `preprocess.load_rgb`, upright by the
file's irot box, and the helpers that make the test files (snapshop_ml/heic.py) do what they say."""

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from snapshop_ml import preprocess
from snapshop_ml.heic import ROTATE_CW, heic_bytes, ispe_offsets, stored_rotated, with_ispe

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "heic"


def block_mean(img: Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
    return np.asarray(img.crop(box), np.float64).reshape(-1, 3).mean(0)


def test_heic_decodes_upright_rgb():
    img = preprocess.load_rgb(FIXTURES / "small.heic")
    assert (img.mode, img.size) == ("RGB", (64, 48))
    red = block_mean(img, (2, 2, 14, 10))
    blue = block_mean(img, (50, 38, 62, 46))
    assert red[0] > 180 and red[2] < 70, red
    assert blue[2] > 180 and blue[0] < 70, blue
    x = preprocess.preprocess_file(FIXTURES / "small.heic", 32)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32 and np.isfinite(x).all()


def test_irot_is_applied_once_and_the_exif_tag_reset():
    # Stored 48x64 with irot and an EXIF orientation of 6: pillow-heif rotates it with the irot
    # box and sets the tag to 1, so exif_transpose leaves it upright instead of turning it again.
    with Image.open(FIXTURES / "small_rot.heic") as raw:
        assert raw.size == (64, 48)
        assert raw.getexif().get(0x0112) == 1
        assert raw.info["original_orientation"] == ROTATE_CW
    rot = np.asarray(preprocess.load_rgb(FIXTURES / "small_rot.heic"), np.float64)
    plain = np.asarray(preprocess.load_rgb(FIXTURES / "small.heic"), np.float64)
    assert rot.shape == plain.shape == (48, 64, 3)
    assert np.abs(rot - plain).mean() < 4.0  # only the lossy re-encoding differs


def test_heic_bytes_round_trip_with_orientation():
    y, x = np.mgrid[0:40, 0:56]
    upright = Image.fromarray(np.stack([x * 4, y * 5, (x + y) * 2], -1).astype(np.uint8), "RGB")
    for orientation, stored in ((1, upright), (ROTATE_CW, stored_rotated(upright))):
        data = heic_bytes(stored, quality=90, orientation=orientation)
        assert data[4:12] == b"ftypheic"
        back = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
        assert back.size == upright.size, (orientation, back.size)
        assert np.abs(np.asarray(back, np.float64) - np.asarray(upright, np.float64)).mean() < 3.0


def test_bomb_declares_the_patched_size_and_keeps_the_rest():
    small = (FIXTURES / "small.heic").read_bytes()
    bomb = (FIXTURES / "bomb_ispe_20000.heic").read_bytes()
    assert len(bomb) == len(small)
    offsets = ispe_offsets(bomb)
    assert offsets and all(struct.unpack(">II", bomb[o:o + 8]) == (20000, 20000) for o in offsets)
    assert with_ispe(small, 20000, 20000) == bomb
    with pytest.raises(ValueError, match="no b'meta' box"):
        ispe_offsets(b"\x00\x00\x00\x10ftypheic\x00\x00\x00\x00")


def test_a_truncated_heic_is_a_load_error(tmp_path):
    data = (FIXTURES / "small.heic").read_bytes()
    half = tmp_path / "half.heic"
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(preprocess.ImageLoadError, match="cannot decode"):
        preprocess.load_rgb(half)
