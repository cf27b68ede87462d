"""The synthetic street-to-shop benchmark: determinism, splits, tags, domains."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from snapshop_ml.data import load_csv_manifest, parse_tags
from snapshop_ml.data import synth

SCALE = 0.004  # 6 train, 1 val, 2 test products (+ 2 / 4 distractors)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted((root / "images").rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("s2s") / "a"
    synth.generate(out, seed=0, scale=SCALE, quiet=True)
    return out


def test_outputs_exist(tiny):
    assert (tiny / "manifest.csv").is_file()
    st = json.loads((tiny / "stats.json").read_text())
    ds = load_csv_manifest(tiny / "manifest.csv")
    assert st["images"] == len(ds)
    for split, s in st["splits"].items():
        assert s["street_photos"] == len(ds.subset(split, "user"))
        assert s["shop_photos"] == len(ds.subset(split, "shop"))
        assert s["products"] == ds.stats()[split]["products"]
        assert s["distractor_products"] == ds.stats()[split]["distractor_products"]
    assert st["splits"]["train"]["products"] == 6
    assert st["splits"]["test"]["distractor_products"] == 4


def test_deterministic(tiny, tmp_path):
    again = tmp_path / "b"
    synth.generate(again, seed=0, scale=SCALE, quiet=True)
    assert (again / "manifest.csv").read_bytes() == (tiny / "manifest.csv").read_bytes()
    assert _files(again) == _files(tiny)
    assert (again / "stats.json").read_bytes() == (tiny / "stats.json").read_bytes()


def test_worker_count_does_not_matter(tiny, tmp_path):
    par = tmp_path / "w2"
    synth.generate(par, seed=0, scale=SCALE, workers=2, quiet=True)
    assert (par / "manifest.csv").read_bytes() == (tiny / "manifest.csv").read_bytes()
    assert _files(par) == _files(tiny)


def test_other_seed_differs(tiny, tmp_path):
    other = tmp_path / "s1"
    synth.generate(other, seed=1, scale=SCALE, quiet=True)
    a, b = _files(tiny), _files(other)
    common = set(a) & set(b)
    assert common
    assert sum(a[k] != b[k] for k in common) == len(common)
    assert (other / "manifest.csv").read_bytes() != (tiny / "manifest.csv").read_bytes()


def test_products_independent_of_each_other():
    """A product's rendering depends only on (seed, index), not on what was generated before it."""
    plan = synth.Plan.make(0, 1.0, synth.Knobs())
    a = synth.product_spec(0, 7, plan)
    synth.product_spec(0, 3, plan)
    assert synth.product_spec(0, 7, plan) == a
    assert synth.product_spec(1, 7, plan) != a


def test_splits_disjoint_and_complete(tiny):
    ds = load_csv_manifest(tiny / "manifest.csv")
    by_product = defaultdict(set)
    domains = defaultdict(set)
    for r in ds.records:
        by_product[r.product_id].add(r.split)
        domains[r.product_id].add(r.domain)
    assert all(len(s) == 1 for s in by_product.values())  # no product in two splits
    assert all("shop" in d for d in domains.values())  # every product has shop photos
    train = [p for p, s in by_product.items() if s == {"train"}]
    assert all(domains[p] == {"user", "shop"} for p in train)  # no distractors in train
    per_train = defaultdict(int)
    for r in ds.subset("train", "user"):
        per_train[r.product_id] += 1
    assert set(per_train.values()) == {3}
    for split in ("val", "test"):
        queries = {r.product_id for r in ds.subset(split, "user")}
        gallery = {r.product_id for r in ds.subset(split, "shop")}
        assert queries and queries <= gallery
        assert len(gallery - queries) == 2 * len(queries)  # distractors


def test_distractors_look_like_queries(tiny):
    ds = load_csv_manifest(tiny / "manifest.csv")
    for split in ("val", "test"):
        queries = {r.product_id for r in ds.subset(split, "user")}
        tags = {r.product_id: dict(t.split(":", 1) for t in r.tags) for r in ds.subset(split, "shop")}
        qkeys = {(tags[p]["category"], tags[p]["pattern"]) for p in queries}
        for p, t in tags.items():
            if p not in queries:
                assert (t["category"], t["pattern"]) in qkeys


def test_tags_well_formed(tiny):
    ds = load_csv_manifest(tiny / "manifest.csv")
    vocab = set(synth.tag_vocabulary())
    assert 30 <= len(vocab) <= 60
    for r in ds.records:
        if r.domain == "user":
            assert r.tags == ()
            continue
        assert r.tags == parse_tags(";".join(r.tags)) and r.tags == tuple(sorted(r.tags))
        assert set(r.tags) <= vocab
        keys = [t.split(":")[0] for t in r.tags]
        assert len(keys) == len(set(keys))  # one value per key
        assert {"category", "pattern", "color"} <= set(keys)
    # all shop photos of a product share its tags
    per = defaultdict(set)
    for r in ds.records:
        if r.domain == "shop":
            per[r.product_id].add(r.tags)
    assert all(len(v) == 1 for v in per.values())


def test_images_and_domains(tiny):
    ds = load_csv_manifest(tiny / "manifest.csv")
    shop_sizes, street = set(), []
    for r in ds.records:
        with Image.open(r.path) as im:
            assert im.mode == "RGB" and im.format == "JPEG"
            if r.domain == "shop":
                shop_sizes.add(im.size)
            else:
                w, h = im.size
                assert 180 <= min(w, h) and max(w, h) <= 400
                street.append(r)
    assert shop_sizes == {synth.SHOP_SIZE}
    # a street photo is not a copy of its shop photo: compare at the model's input size
    shop_of = {r.product_id: r.path for r in ds.records if r.domain == "shop"}
    for r in street:
        a = np.asarray(Image.open(r.path).convert("RGB").resize((224, 224)), np.float32)
        b = np.asarray(Image.open(shop_of[r.product_id]).convert("RGB").resize((224, 224)), np.float32)
        assert np.abs(a - b).mean() > 20
    # shop photos have a plain light background (corners), street photos a cluttered one
    def corners(path):
        x = np.asarray(Image.open(path).convert("L"), np.float32)
        return [x[:10, :10], x[:10, -10:], x[-10:, :10], x[-10:, -10:]]

    for r in ds.records:
        if r.domain == "shop" and r.path.stem.endswith("_shop_0"):
            assert all(c.mean() > 180 and c.std() < 12 for c in corners(r.path))
    street_std = np.mean([np.std(np.concatenate([c.ravel() for c in corners(r.path)])) for r in street])
    assert street_std > 20


def test_bundled_photos_load_offline():
    for name in synth.available_photos():
        im = synth._photo(name)
        assert im.mode == "RGB" and min(im.size) >= 100


def test_cli_knob_override(tmp_path):
    out = tmp_path / "k"
    assert synth.main(["--out", str(out), "--seed", "3", "--scale", "0.002",
                       "--knob", "distractors_per_query=0", "--knob", "street_fill=0.5,0.6"]) == 0
    st = json.loads((out / "stats.json").read_text())
    assert st["knobs"]["street_fill"] == [0.5, 0.6]
    assert st["command"].endswith("--seed 3 --scale 0.002 --knob distractors_per_query=0.0 --knob street_fill=0.5,0.6")
    assert st["splits"]["test"]["distractor_products"] == 0
    with pytest.raises(SystemExit):
        synth.main(["--out", str(out), "--knob", "nonsense=1"])


def test_hard_preset_keeps_the_train_split_and_adds_look_alike_distractors(tiny, tmp_path):
    hard = tmp_path / "hard"
    assert synth.main(["--out", str(hard), "--seed", "0", "--scale", str(SCALE), "--preset", "hard"]) == 0
    st, st1 = (json.loads((d / "stats.json").read_text()) for d in (hard, tiny))
    assert st["knobs"]["distractors_per_query"] == synth.PRESETS["hard"]["distractors_per_query"]
    assert "--knob distractors_per_query=" in st["command"]  # the command reproduces it
    # train products come first and no hard knob touches them: the same rows, the same bytes
    train = {k: v for k, v in _files(hard).items() if k.startswith("images/train/")}
    assert train and train == {k: v for k, v in _files(tiny).items() if k.startswith("images/train/")}
    rows = lambda d: [ln for ln in (d / "manifest.csv").read_text().splitlines() if ",train," in ln]  # noqa: E731
    assert rows(hard) == rows(tiny)
    for split in ("val", "test"):
        assert st["splits"][split]["distractor_products"] > 3 * st1["splits"][split]["distractor_products"]
    test_distractors_look_like_queries(hard)
