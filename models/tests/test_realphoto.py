"""The real-photo benchmark builder (snapshop_ml/data/realphoto.py) and its committed split."""

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from snapshop_ml.data import realphoto
from snapshop_ml.data.loaders import load_csv_manifest
from snapshop_ml.data.synth import available_photos

TINY = {
    "format": 1, "seed": 0, "queries_per_product": {"train": 1, "val": 1, "test": 2},
    "sources": [
        {"id": "skimage:coffee", "origin": "skimage", "file": "coffee.png", "role": "object", "split": "train",
         "tiles": [1, 1]},
        {"id": "skimage:brick", "origin": "skimage", "file": "brick.png", "role": "background", "split": "train"},
        {"id": "skimage:astronaut", "origin": "skimage", "file": "astronaut.png", "role": "object", "split": "val",
         "tiles": [1, 1]},
        {"id": "skimage:gravel", "origin": "skimage", "file": "gravel.png", "role": "background", "split": "val"},
        {"id": "skimage:chelsea", "origin": "skimage", "file": "chelsea.png", "role": "object", "split": "test",
         "tiles": [2, 1]},
        {"id": "skimage:motorcycle_left", "origin": "skimage", "file": "motorcycle_left.png", "role": "object",
         "split": "test", "tiles": [1, 1]},
        {"id": "skimage:motorcycle_right", "origin": "skimage", "file": "motorcycle_right.png", "role": "pair",
         "split": "test", "pair_of": "skimage:motorcycle_left"},
        {"id": "skimage:camera", "origin": "skimage", "file": "camera.png", "role": "distractor", "split": "test",
         "tiles": [2, 2]},
        {"id": "skimage:grass", "origin": "skimage", "file": "grass.png", "role": "background", "split": "test"},
    ],
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("rp")
    split = root / "split.json"
    split.write_text(json.dumps(TINY))
    stats = realphoto.build(root / "a", split)
    return root, split, stats


def _digest(d):
    return {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def test_tiny_build_is_a_loadable_manifest(tiny):
    root, _, stats = tiny
    ds = load_csv_manifest(root / "a" / "manifest.csv")
    s = ds.stats()
    assert s == stats["per_split"]
    # test: chelsea's 2 tiles and the motorcycle are query products; camera's 4 tiles are distractors
    assert s["test"] == {"products": 3, "user_images": 3 * 2 + 1, "shop_images": 7, "distractor_products": 4}
    assert s["train"]["products"] == 1 and s["val"]["products"] == 1
    assert stats["queries"]["test"] == {"augmented": 6, "real": 1}
    header = (root / "a" / "manifest.csv").read_text().splitlines()[0]
    assert header == "image,product_id,domain,split,tags"
    shop = [r for r in ds.records if r.domain == "shop"]
    assert all(r.tags == ("source:skimage",) for r in shop)
    assert all(r.tags == () for r in ds.records if r.domain == "user")
    real = [r for r in ds.records if "_user_real_" in r.path.name]
    assert [r.product_id for r in real] == ["rp-motorcycle-left-0"]
    for r in ds.records:
        with Image.open(r.path) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and max(im.size) <= 480


def test_build_is_deterministic(tiny):
    root, split, _ = tiny
    realphoto.build(root / "b", split)
    assert _digest(root / "a") == _digest(root / "b")


def test_other_seed_changes_queries_not_products(tiny):
    root, split, _ = tiny
    realphoto.build(root / "c", split, seed=1)
    a, c = _digest(root / "a"), _digest(root / "c")
    assert {k: v for k, v in a.items() if "_shop_" in k} == {k: v for k, v in c.items() if "_shop_" in k}
    assert all(a[k] != c[k] for k in a if "_user_" in k and "_real_" not in k)


def test_augmentation_is_deterministic_and_varies():
    product = Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 90, 3), dtype=np.uint8))
    bgs = [Image.new("RGB", (300, 200), (40, 90, 160)), Image.new("RGB", (200, 300), (200, 180, 120))]
    one, p1 = realphoto.phone_photo(product, bgs, realphoto.product_rng(0, "rp-x-0", 0))
    two, p2 = realphoto.phone_photo(product, bgs, realphoto.product_rng(0, "rp-x-0", 0))
    other, _ = realphoto.phone_photo(product, bgs, realphoto.product_rng(0, "rp-x-0", 1))
    assert one == two and p1 == p2
    assert one != other
    assert one[:2] == b"\xff\xd8"  # JPEG


def test_committed_split_is_disjoint_by_source():
    doc = realphoto.load_split()
    sources = doc["sources"]
    assert all(len(e.get("sha256", "")) == 64 for e in sources)
    split_of_file, split_of_hash = {}, {}
    for e in sources:
        assert split_of_file.setdefault((e["origin"], e["file"]), e["split"]) == e["split"]
        assert split_of_hash.setdefault(e["sha256"], e["split"]) == e["split"], e["id"]
    assert len({e["id"] for e in sources}) == len(sources)
    assert len(split_of_hash) == len(sources)  # no photograph listed twice
    by_split = {s: {e["role"] for e in sources if e["split"] == s} for s in ("train", "val", "test")}
    assert by_split["val"] >= {"object", "distractor", "background"}
    assert by_split["test"] >= {"object", "distractor", "background", "pair"}
    # The synthetic benchmark (the shipped bundle's training data) uses every skimage/sklearn photo
    # it knows; those stay in train, except the flagged real stereo pair.
    for e in sources:
        if e["origin"] in ("skimage", "sklearn") and e["split"] != "train":
            assert e["id"].startswith("skimage:motorcycle_") and "note" in e, e["id"]
    assert "motorcycle" in available_photos()


def test_committed_split_sources_resolve_in_the_wheels():
    doc = realphoto.load_split()
    wheel = [e for e in doc["sources"] if e["origin"] in ("skimage", "sklearn")]
    realphoto.check_sources(wheel)  # present and byte-identical to the recorded sha256


def test_bad_split_files_are_refused(tmp_path):
    bad = dict(TINY, sources=[dict(TINY["sources"][0], role="product")])
    (tmp_path / "s.json").write_text(json.dumps(bad))
    with pytest.raises(realphoto.DatasetError, match="unknown role"):
        realphoto.load_split(tmp_path / "s.json")
    missing = dict(TINY, sources=[dict(TINY["sources"][0], file="nope.png")])
    (tmp_path / "m.json").write_text(json.dumps(missing))
    with pytest.raises(realphoto.SourceError, match="missing"):
        realphoto.build(tmp_path / "out", tmp_path / "m.json")


def test_fusion_keys_and_fit():
    from snapshop_ml.evaluate import EvalSet
    from snapshop_ml import evaluate_real as er

    es = EvalSet([], np.array([0, 1]), [], np.array([0, 1, 2]), [(), (), ()])
    first = np.array([[0.9, 0.8, 0.1], [0.9, 0.8, 0.1]])
    ctx = np.array([[0.2, 0.9, np.nan], [0.2, 0.9, np.nan]])  # image 2 is not a candidate
    assert np.array_equal(er.fused_keys(first, ctx, 0.0)[:, :2], first[:, :2])
    assert np.all(np.isneginf(er.fused_keys(first, ctx, 0.5)[:, 2]))
    w, curve = er.fit_fusion(first, ctx, es)
    assert [c["w"] for c in curve] == list(er.FUSION_GRID)
    # query 0 (product 0) wants the first pass, query 1 (product 1) wants ctx: P@1 = 0.5 either
    # way, so the tie goes to the smallest weight
    assert w == 0.0 and curve[0]["pk"]["1"] == 0.5
    assert er.describe_fusion(0.25) == {"w": 0.25, "a": 0.75, "b": 0.25, "b_over_a": 0.3333}


def test_evaluate_real_on_the_tiny_build(tiny, tmp_path, capsys):
    from snapshop_ml import evaluate_real as er

    root, _, _ = tiny
    bundle = er.HERE / "default"
    out = tmp_path / "report.json"
    rc = er.main(["--bundle", str(bundle), "--data", str(root / "a"), "--out", str(out), "--sizes", "96"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["sizes"]["test"] == {"queries": 7, "gallery_images": 7, "gallery_products": 7}
    rows = report["rows"]
    assert "ImageNet MobileNetV2, mean-pooled, 96 px (no training)" in rows
    assert set(rows["bundle first pass"]["test"]) == {"1", "5", "10", "20"}
    assert 0.0 <= report["fusion"]["w"] <= 1.0
    assert list(report["real_pair_ranks_test"]["bundle first pass"]) == ["rp-motorcycle-left-0_user_real_motorcycle-right.jpg"]
    assert "| bundle first pass |" in capsys.readouterr().out
