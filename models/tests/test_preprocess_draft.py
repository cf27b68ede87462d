"""`preprocess.jpeg_draft` (BUNDLE.md step 1b): Pillow's draft before the resize, opt-in."""

import json

import numpy as np
import pytest
from PIL import Image

from snapshop_ml import preprocess
from snapshop_ml.bundle import BundleError, read_manifest


def _jpeg(path, size, orientation=1, mode="RGB"):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB").convert(mode)
    kw = {}
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif
    img.save(path, quality=90, **kw)
    return path


def test_manifest_flag_is_optional():
    assert "jpeg_draft" not in preprocess.manifest_section(192)
    assert preprocess.manifest_section(192, jpeg_draft=True)["jpeg_draft"] is True
    assert preprocess.jpeg_draft_of({"preprocess": {}}) == 0
    assert preprocess.jpeg_draft_of({"preprocess": {"jpeg_draft": True}}) == 1
    with pytest.raises(ValueError):
        preprocess.jpeg_draft_of({"preprocess": {"jpeg_draft": "yes"}})


@pytest.mark.parametrize("size,scale", [((4000, 3000), 8), ((1535, 1000), 4), ((800, 600), 2),
                                        ((383, 1000), 1), ((300, 200), 1)])
def test_draft_scale_is_pillows_rule(tmp_path, size, scale):
    p = _jpeg(tmp_path / "a.jpg", size)
    img = preprocess.load_rgb(p, (192, 192))
    assert img.size == (-(-size[0] // scale), -(-size[1] // scale))
    assert preprocess.load_rgb(p).size == size  # no draft without the flag
    x = preprocess.preprocess_file(p, 192, jpeg_draft=True)
    assert x.shape == (3, 192, 192) and x.dtype == np.float32


def test_draft_size_is_asked_in_stored_orientation(tmp_path):
    # Stored 1000x400, EXIF 6: upright 400x1000. For an upright target of 100x50 the request in
    # stored terms is 50x100: min(1000 // 50, 400 // 100) = 4 (unswapped it would be 8).
    p = _jpeg(tmp_path / "r.jpg", (1000, 400), orientation=6)
    assert preprocess.load_rgb(p).size == (400, 1000)
    assert preprocess.load_rgb(p, (100, 50)).size == (100, 250)


def test_png_and_greyscale(tmp_path):
    png = tmp_path / "a.png"
    Image.new("RGB", (1000, 1000), (10, 20, 30)).save(png)
    assert preprocess.load_rgb(png, (192, 192)).size == (1000, 1000)
    g = _jpeg(tmp_path / "g.jpg", (800, 800), mode="L")
    img = preprocess.load_rgb(g, (192, 192))
    assert (img.mode, img.size) == ("RGB", (200, 200))


def test_bundle_rejects_a_non_boolean_flag(tmp_path):
    manifest = {"format_version": 1, "model_version": "x", "input": {}, "embedding_dim": 4,
                "grid": {"h": 1, "w": 1}, "locations": 1, "tags": {"count": 0, "vocabulary": []},
                "graphs": {}, "files": {},
                "preprocess": {"resize": {"method": preprocess.RESIZE_METHOD}, "jpeg_draft": 1}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="jpeg_draft"):
        read_manifest(tmp_path)
    manifest["preprocess"]["jpeg_draft"] = True
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert read_manifest(tmp_path)["preprocess"]["jpeg_draft"] is True
