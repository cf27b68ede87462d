"""Export: torch/onnxruntime parity, the manifest contract, golden outputs, bad-input messages."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from snapshop_ml import bundle as bundle_cli
from snapshop_ml.export import PARITY_TOLERANCE, ExportError, OnnxBundle, export_bundle, load_checkpoint, parity
from snapshop_ml.network import NetConfig, YNet

VOCAB = ["category:dress", "category:shirt", "color:blue", "color:red", "pattern:stripes"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = YNet(NetConfig(num_tags=len(VOCAB), embed_dim=16, input_size=64)).eval()
    with torch.no_grad():  # non-trivial attention, so parity covers Eq. 1-6
        model.tag_embed.normal_(0, 0.05)
        model.ctx_v.normal_(0, 0.05)
        model.ctx_u.normal_(0, 0.05)
    src = tmp_path_factory.mktemp("src")
    rng = np.random.default_rng(0)
    street, shop = [], []
    for i in range(2):
        smooth = Image.fromarray(rng.integers(0, 255, (6, 5, 3), dtype=np.uint8)).resize((70, 90), Image.BICUBIC)
        smooth.save(src / f"u{i}.jpg", quality=95)
        Image.fromarray(rng.integers(0, 255, (80, 64, 3), dtype=np.uint8)).save(src / f"s{i}.png")
        street.append(src / f"u{i}.jpg")
        shop.append((src / f"s{i}.png", ("category:dress", "color:red", "brand:unknown")))
    out = tmp_path_factory.mktemp("bundle")
    manifest = export_bundle(model, VOCAB, out, {"rows": {}}, {"note": "test"}, street, shop, "test")
    return model, out, manifest


def test_parity_within_tolerance(exported):
    model, out, manifest = exported
    diffs = parity(model, out, seed=3)
    assert set(diffs) == {"shop.embedding", "user.features", "user.embedding", "ctx.scores", "ctx.attention"}
    assert max(diffs.values()) <= PARITY_TOLERANCE
    assert manifest["parity"]["tolerance"] == PARITY_TOLERANCE


def test_dynamic_batch_and_candidate_counts(exported):
    _, out, manifest = exported
    onnx = OnnxBundle(out, VOCAB, 64)
    feats = np.random.default_rng(1).standard_normal((4, 7, 16)).astype(np.float32)
    scores, att = onnx.ctx.run(None, {"features": feats[:, :4],
                                      "candidates": np.ones((4, 7, 16), np.float32) / 4.0})
    assert scores.shape == (4, 7) and att.shape == (4, 7, 4)
    np.testing.assert_allclose(att.sum(-1), 1.0, atol=1e-5)


def test_manifest_matches_contract(exported):
    _, out, manifest = exported
    assert manifest["grid"] == {"h": 2, "w": 2} and manifest["locations"] == 4
    assert manifest["tags"]["vocabulary"] == VOCAB
    assert manifest["graphs"]["ctx"]["outputs"]["attention"] == ["B", "K", 4]
    assert {"shop.onnx", "user.onnx", "ctx.onnx", "eval.json", "golden/golden.json"} <= set(manifest["files"])
    assert bundle_cli.verify(out)["model_version"] == manifest["model_version"]


def _embeddings_reproduce(onnx: OnnxBundle, gdir: Path, golden: dict) -> None:
    """Every golden entry's embedding, recomputed through `onnx`, matches to 1e-5."""
    for e in golden["images"]:
        if e["domain"] == "user":
            _, emb = onnx.embed_user(gdir / e["file"])
        else:
            emb = onnx.embed_shop(gdir / e["file"], e["tags"])
        np.testing.assert_allclose(emb, e["embedding"], atol=1e-5, err_msg=e["file"])


def test_golden_outputs_reproduce(exported):
    _, out, _ = exported
    golden = json.loads((out / "golden" / "golden.json").read_text())
    onnx = OnnxBundle(out, VOCAB, 64)
    files = {e["file"] for e in golden["images"]}
    assert {"street_0.jpg", "street_rot.jpg", "shop_0.png", "street_heic.heic", "street_heic_rot.heic"} <= files
    _embeddings_reproduce(onnx, out / "golden", golden)
    # The EXIF-rotated copy decodes upright: close to the original (only JPEG re-encoding differs).
    by = {e["file"]: np.asarray(e["embedding"]) for e in golden["images"]}
    assert by["street_rot.jpg"] @ by["street_0.jpg"] > 0.98
    # The HEIC pair likewise: stored sideways with an irot box, decoded upright.
    assert by["street_heic_rot.heic"] @ by["street_heic.heic"] > 0.98


def test_bad_inputs_give_clear_messages(exported, tmp_path, capsys):
    _, out, _ = exported
    with pytest.raises(ExportError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    assert bundle_cli.main(["embed", str(out), str(out / "golden" / "shop_0.png"), "--tags", "colour:red"]) == 2
    assert "unknown tag(s) colour:red" in capsys.readouterr().err
    assert bundle_cli.main(["embed", str(out), str(tmp_path / "missing.jpg")]) == 2
    assert "image not found" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{ not json")
    assert bundle_cli.main(["verify", str(broken)]) == 2
    assert "malformed JSON" in capsys.readouterr().err
    assert bundle_cli.main(["verify", str(tmp_path)]) == 2
    assert "no manifest" in capsys.readouterr().err


def test_enable_jpeg_draft_redoes_the_golden_outputs(exported, tmp_path):
    """`bundle enable-jpeg-draft`: the manifest says so, the version changes, every golden entry
    (the 12 MP photo included, decoded at 1/8 scale) reproduces with the draft decode, and the
    small fixtures keep their values (a draft only applies from twice the input size)."""
    import shutil
    from snapshop_ml.export import PHONE_GOLDEN
    from snapshop_ml.preprocess import jpeg_draft_of

    _, out, manifest = exported
    copy = tmp_path / "bundle"
    shutil.copytree(out, copy)
    before = {e["file"]: e for e in json.loads((copy / "golden/golden.json").read_text())["images"]}
    version = bundle_cli.enable_jpeg_draft(copy)
    assert version == manifest["model_version"] + "-draft"
    m = bundle_cli.verify(copy)
    assert m["model_version"] == version and jpeg_draft_of(m) == 2
    assert m["preprocess"]["jpeg_draft"] is True and m["preprocess"]["jpeg_draft_factor"] == 2
    golden = json.loads((copy / "golden/golden.json").read_text())
    assert golden["model_version"] == version
    _embeddings_reproduce(OnnxBundle(copy, VOCAB, 64, jpeg_draft=2), copy / "golden", golden)
    for e in golden["images"]:
        if e["file"] != PHONE_GOLDEN and e["file"] in before:
            # The small fixtures (at most 90 px) are under twice the draft size (2 x 2 x 64 px):
            # no DCT scale, the same pixels.
            assert e["preprocessed_sum"] == before[e["file"]]["preprocessed_sum"]
    with Image.open(copy / "golden" / PHONE_GOLDEN) as im:
        assert im.size == (4000, 3000)
    with pytest.raises(bundle_cli.BundleError, match="already on"):
        bundle_cli.enable_jpeg_draft(copy)


def test_the_draft_factor_is_read_and_checked():
    from snapshop_ml.preprocess import jpeg_draft_of, manifest_section

    assert jpeg_draft_of({"preprocess": manifest_section(192)}) == 0
    assert jpeg_draft_of({"preprocess": manifest_section(192, 1)}) == 1
    assert "jpeg_draft_factor" not in manifest_section(192, 1)
    assert jpeg_draft_of({"preprocess": manifest_section(192, 2)}) == 2
    assert jpeg_draft_of({"preprocess": {"jpeg_draft_factor": 4}}) == 0  # the factor alone turns nothing on
    for bad in (0, 9, 2.0, True, "2"):
        with pytest.raises(ValueError, match="jpeg_draft_factor"):
            jpeg_draft_of({"preprocess": {"jpeg_draft": True, "jpeg_draft_factor": bad}})
