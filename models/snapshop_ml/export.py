"""Export a trained checkpoint as the ONNX bundle of models/BUNDLE.md.

Writes shop.onnx, user.onnx, ctx.onnx, eval.json, golden/ (fixture images, HEIC ones included, and the
outputs the Rust side must reproduce) and manifest.json (with the sha256 of every other file). Before the
manifest is written, torch and onnxruntime are compared on random inputs (max abs diff <= 1e-4);
a bundle that fails the check is not written.

Usage (from models/): python -m snapshop_ml.export --run runs/default --data ../data/street2shop/manifest.csv --out default
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from PIL import Image
from torch import nn

from .heic import ROTATE_CW, save_heic, stored_rotated
from .network import NetConfig, YNet
from .preprocess import load_rgb, manifest_section, preprocess_file

FORMAT_VERSION = 1
OPSET = 17
PARITY_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """The bundle could not be produced (bad checkpoint, parity failure, ...)."""


class ShopGraph(nn.Module):
    def __init__(self, m: YNet):
        super().__init__()
        self.m = m

    def forward(self, image, tags):
        return self.m.forward_shop(image, tags)


class UserGraph(nn.Module):
    def __init__(self, m: YNet):
        super().__init__()
        self.m = m

    def forward(self, image):
        return self.m.forward_user(image)


class CtxGraph(nn.Module):
    def __init__(self, m: YNet):
        super().__init__()
        self.m = m

    def forward(self, features, candidates):
        return self.m.rerank(features, candidates)


def load_checkpoint(path: Path) -> tuple[YNet, list[str]]:
    if not path.is_file():
        raise ExportError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    try:
        cfg = NetConfig(**ckpt["net"])
        model = YNet(cfg)
        model.load_state_dict(ckpt["state_dict"])
        vocab = list(ckpt["vocabulary"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise ExportError(f"{path} is not a snapshop checkpoint: {exc}") from exc
    if len(vocab) != cfg.num_tags:
        raise ExportError(f"{path}: vocabulary has {len(vocab)} tags, the network {cfg.num_tags}")
    return model.eval(), vocab


def graph_specs(cfg: NetConfig) -> dict:
    s, t, l, c = cfg.input_size, cfg.num_tags, cfg.locations, cfg.embed_dim
    return {
        "shop": {"file": "shop.onnx", "inputs": {"image": ["N", 3, s, s], "tags": ["N", t]},
                 "outputs": {"embedding": ["N", c]}},
        "user": {"file": "user.onnx", "inputs": {"image": ["N", 3, s, s]},
                 "outputs": {"features": ["N", l, c], "embedding": ["N", c]}},
        "ctx": {"file": "ctx.onnx", "inputs": {"features": ["B", l, c], "candidates": ["B", "K", c]},
                "outputs": {"scores": ["B", "K"], "attention": ["B", "K", l]}},
    }


def _export(module: nn.Module, args: tuple, path: Path, spec: dict) -> None:
    inputs, outputs = list(spec["inputs"]), list(spec["outputs"])
    dynamic = {}
    for name, shape in {**spec["inputs"], **spec["outputs"]}.items():
        dims = {i: d for i, d in enumerate(shape) if isinstance(d, str)}
        if dims:
            dynamic[name] = dims
    torch.onnx.export(
        module, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=dynamic,
        opset_version=OPSET, do_constant_folding=True, dynamo=False,
    )
    _stamp_shapes(path, spec)


def _stamp_shapes(path: Path, spec: dict) -> None:
    """Write the contract's shapes onto the graph's inputs and outputs.

    The exporter leaves derived output dims symbolic (e.g. 'Divembedding_dim_1'); the service
    checks fixed dims from the session metadata, so they must be concrete, and the dynamic ones
    carry the contract's names (N, B, K).
    """
    model = onnx.load(str(path))
    for value in list(model.graph.input) + list(model.graph.output):
        shape = {**spec["inputs"], **spec["outputs"]}.get(value.name)
        if shape is None:
            continue
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for d in shape:
            dim = dims.add()
            if isinstance(d, int):
                dim.dim_value = d
            else:
                dim.dim_param = d
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def export_graphs(model: YNet, out: Path) -> None:
    cfg = model.cfg
    specs = graph_specs(cfg)
    img = torch.randn(2, 3, cfg.input_size, cfg.input_size)
    tags = torch.zeros(2, cfg.num_tags)
    feats = torch.randn(2, cfg.locations, cfg.embed_dim)
    cands = torch.nn.functional.normalize(torch.randn(2, 3, cfg.embed_dim), dim=-1)
    # The exporter restores each wrapper's train/eval mode afterwards, recursively: wrappers must
    # be in eval mode too, or the model is left with BatchNorm in training mode.
    with torch.no_grad():
        _export(ShopGraph(model).eval(), (img, tags), out / "shop.onnx", specs["shop"])
        _export(UserGraph(model).eval(), (img,), out / "user.onnx", specs["user"])
        _export(CtxGraph(model).eval(), (feats, cands), out / "ctx.onnx", specs["ctx"])
    model.eval()


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@torch.no_grad()
def parity(model: YNet, bundle: Path, seed: int = 0) -> dict[str, float]:
    """Max abs difference between torch and onnxruntime on random inputs, per output."""
    cfg = model.cfg
    model.eval()
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(3, 3, cfg.input_size, cfg.input_size, generator=g)
    tags = (torch.rand(3, cfg.num_tags, generator=g) < 0.15).float()
    feats = torch.randn(2, cfg.locations, cfg.embed_dim, generator=g)
    cands = torch.nn.functional.normalize(torch.randn(2, 5, cfg.embed_dim, generator=g), dim=-1)
    diffs = {}
    shop = session(bundle / "shop.onnx").run(None, {"image": img.numpy(), "tags": tags.numpy()})
    diffs["shop.embedding"] = float(np.abs(shop[0] - model.forward_shop(img, tags).numpy()).max())
    user = session(bundle / "user.onnx").run(None, {"image": img.numpy()})
    ref_f, ref_e = model.forward_user(img)
    diffs["user.features"] = float(np.abs(user[0] - ref_f.numpy()).max())
    diffs["user.embedding"] = float(np.abs(user[1] - ref_e.numpy()).max())
    ctx = session(bundle / "ctx.onnx").run(None, {"features": feats.numpy(), "candidates": cands.numpy()})
    ref_s, ref_a = model.rerank(feats, cands)
    diffs["ctx.scores"] = float(np.abs(ctx[0] - ref_s.numpy()).max())
    diffs["ctx.attention"] = float(np.abs(ctx[1] - ref_a.numpy()).max())
    return diffs


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class OnnxBundle:
    """The exported graphs run through onnxruntime with the contract's preprocessing."""

    def __init__(self, bundle: Path, vocab: list[str], input_size: int, jpeg_draft: int = 0):
        self.shop = session(bundle / "shop.onnx")
        self.user = session(bundle / "user.onnx")
        self.ctx = session(bundle / "ctx.onnx")
        self.vocab = {t: i for i, t in enumerate(vocab)}
        self.size = input_size
        self.jpeg_draft = int(jpeg_draft)  # the draft factor, preprocess.jpeg_draft_of(manifest)

    def tags(self, tags) -> np.ndarray:
        v = np.zeros((1, len(self.vocab)), np.float32)
        for t in tags:
            if t in self.vocab:
                v[0, self.vocab[t]] = 1.0
        return v

    def embed_shop(self, path, tags) -> np.ndarray:
        x = preprocess_file(path, self.size, self.jpeg_draft)[None]
        return self.shop.run(None, {"image": x, "tags": self.tags(tags)})[0][0]

    def embed_user(self, path) -> tuple[np.ndarray, np.ndarray]:
        f, e = self.user.run(None, {"image": preprocess_file(path, self.size, self.jpeg_draft)[None]})
        return f[0], e[0]

    def rerank(self, features: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s, a = self.ctx.run(None, {"features": features[None], "candidates": candidates[None].astype(np.float32)})
        return s[0], a[0]


def _floats(a) -> list:
    return np.round(np.asarray(a, dtype=np.float64), 7).tolist()


def _describe(onnx: OnnxBundle, gdir: Path, name: str, domain: str, rng: np.random.Generator | None, tags=None,
              picks: list | None = None) -> dict:
    """The golden entry of one fixture image: preprocessing checksums and the graph outputs.
    The 16 sampled positions are drawn from `rng`, or given as `picks` ((c, y, x) each) to redo
    an entry at the positions it had."""
    x = preprocess_file(gdir / name, onnx.size, onnx.jpeg_draft)
    if picks is None:
        picks = [(int(rng.integers(3)), int(rng.integers(onnx.size)), int(rng.integers(onnx.size)))
                 for _ in range(16)]
    e = {"file": name, "domain": domain, "preprocessed_sum": float(x.astype(np.float64).sum()),
         "preprocessed_sample": [[c, y, xx, float(x[c, y, xx])] for c, y, xx in picks]}
    if domain == "user":
        f, emb = onnx.embed_user(gdir / name)
        e.update(embedding=_floats(emb), features=_floats(f))
    else:
        e.update(tags=list(tags), embedding=_floats(onnx.embed_shop(gdir / name, tags)))
    return e


# The HEIC fixtures: a 4:3 crop of street_0 (a phone photo's shape), upright and stored sideways
# with an irot box. Their sample positions come from their own generator, so adding them left
# every other golden value as it was.
HEIC_GOLDEN = ("street_heic.heic", "street_heic_rot.heic")


def heic_golden(onnx: OnnxBundle, gdir: Path) -> list[dict]:
    """Write the HEIC fixtures (pillow-heif's encoder) from `gdir/street_0.jpg` and return their
    golden entries (user domain)."""
    upright = load_rgb(gdir / "street_0.jpg")
    w, h = upright.size
    upright = upright.crop((0, (h - h * 3 // 4) // 2, w, (h - h * 3 // 4) // 2 + h * 3 // 4))
    save_heic(upright, gdir / HEIC_GOLDEN[0])
    save_heic(stored_rotated(upright), gdir / HEIC_GOLDEN[1], orientation=ROTATE_CW)
    rng = np.random.default_rng(11)
    return [_describe(onnx, gdir, name, "user", rng) for name in HEIC_GOLDEN]


# A 12 MP phone photo (4000 x 3000 JPEG): the file on which `preprocess.jpeg_draft` takes a DCT
# scale (1/4 at the pipeline's factor 2). Made from street_0 (a 4:3 crop, upscaled, with seeded
# sensor-like noise so it costs what a real phone photo costs to decode); its sample positions
# have their own generator too.
PHONE_GOLDEN = "street_12mp.jpg"


def phone_sized(img: Image.Image, seed: int) -> Image.Image:
    """`img` upscaled (bicubic) to 12 MP, 4000 x 3000 or 3000 x 4000 as it is wide or tall, with
    seeded noise of +-4 levels: a file as costly to decode as a phone photo, with no more detail."""
    w, h = img.size
    a = np.asarray(img.resize((4000, 3000) if w >= h else (3000, 4000), Image.Resampling.BICUBIC)).astype(np.int16)
    a += np.random.default_rng(seed).integers(-4, 5, size=a.shape, dtype=np.int16)
    return Image.fromarray(a.clip(0, 255).astype(np.uint8))


def phone_golden(onnx: OnnxBundle, gdir: Path) -> list[dict]:
    """Write the 12 MP fixture from `gdir/street_0.jpg` and return its golden entry (user domain)."""
    upright = load_rgb(gdir / "street_0.jpg")
    w, h = upright.size
    top = (h - h * 3 // 4) // 2
    phone_sized(upright.crop((0, top, w, top + h * 3 // 4)), 12).save(gdir / PHONE_GOLDEN, quality=88)
    return [_describe(onnx, gdir, PHONE_GOLDEN, "user", np.random.default_rng(13))]


def write_golden(onnx: OnnxBundle, street: list[Path], shop: list[tuple[Path, tuple[str, ...]]], out: Path,
                 model_version: str) -> None:
    """Fixture images (JPEG and PNG, one with an EXIF rotation; HEIC, one with an irot rotation) and
    their expected outputs."""
    gdir = out / "golden"
    if gdir.exists():
        shutil.rmtree(gdir)
    gdir.mkdir(parents=True)
    entries = []
    rng = np.random.default_rng(7)

    def describe(name: str, domain: str, tags=None):
        e = _describe(onnx, gdir, name, domain, rng, tags)
        entries.append(e)
        return e

    for i, src in enumerate(street):
        load_rgb(src).save(gdir / f"street_{i}.jpg", quality=92)
        describe(f"street_{i}.jpg", "user")
    # A phone photo stored sideways: pixels rotated, EXIF orientation 6 says "rotate 90° CW to view".
    upright = load_rgb(street[0])
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(gdir / "street_rot.jpg", quality=92, exif=exif)
    describe("street_rot.jpg", "user")
    for i, (src, tags) in enumerate(shop):
        load_rgb(src).save(gdir / f"shop_{i}.png")
        describe(f"shop_{i}.png", "shop", tags)
    query = entries[0]
    cands = [e for e in entries if e["domain"] == "shop"]
    scores, att = onnx.rerank(np.asarray(query["features"], np.float32),
                              np.asarray([c["embedding"] for c in cands], np.float32))
    entries.extend(heic_golden(onnx, gdir))
    entries.extend(phone_golden(onnx, gdir))
    golden = {"model_version": model_version, "tolerance": 1e-3, "images": entries,
              "rerank": {"query": query["file"], "candidates": [c["file"] for c in cands],
                         "scores": _floats(scores), "attention": _floats(att)}}
    (gdir / "golden.json").write_text(json.dumps(golden))


def bundle_files(out: Path) -> dict:
    """The manifest's `files`: every file of the bundle but manifest.json, with its sha256 and size."""
    return {p.relative_to(out).as_posix(): {"sha256": sha256(p), "bytes": p.stat().st_size}
            for p in sorted(out.rglob("*")) if p.is_file() and p.name != "manifest.json"}


def write_manifest(out: Path, model: YNet, vocab: list[str], model_version: str, evaluation: dict, training: dict,
                   parity_diffs: dict, rerank: dict | None = None, jpeg_draft: int = 0) -> dict:
    """`rerank` is the manifest's re-rank block (`snapshop_ml.rerank` adds `default` and `fusion`);
    None means the paper's re-rank of the top 256 by the CtxYNet score alone."""
    cfg = model.cfg
    files = bundle_files(out)
    manifest = {
        "format_version": FORMAT_VERSION,
        "model_version": model_version,
        "backbone": "mobilenet_v2",
        "input": {"height": cfg.input_size, "width": cfg.input_size, "channels": 3, "layout": "NCHW", "color": "RGB"},
        "preprocess": manifest_section(cfg.input_size, jpeg_draft),
        "embedding_dim": cfg.embed_dim,
        "grid": {"h": cfg.grid, "w": cfg.grid},
        "locations": cfg.locations,
        "tags": {"count": len(vocab), "vocabulary": vocab},
        "graphs": graph_specs(cfg),
        "metric": "cosine",
        "rerank": rerank or {"candidates": 256},
        "evaluation": evaluation,
        "training": training,
        "parity": {"max_abs_diff": parity_diffs, "tolerance": PARITY_TOLERANCE},
        "files": files,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def export_bundle(model: YNet, vocab: list[str], out: Path, evaluation: dict, training: dict,
                  street: list[Path], shop: list[tuple[Path, tuple[str, ...]]], version_tag: str,
                  jpeg_draft: int = 0) -> dict:
    """Write the whole bundle into `out` (replacing what is there)."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("manifest.json", "shop.onnx", "user.onnx", "ctx.onnx", "eval.json"):
        (out / stale).unlink(missing_ok=True)
    export_graphs(model, out)
    diffs = parity(model, out)
    worst = max(diffs.values())
    if worst > PARITY_TOLERANCE:
        raise ExportError(f"torch/onnxruntime parity failed: {diffs}")
    version = f"ynet-mnv2-{model.cfg.input_size}-{dt.date.today():%Y%m%d}-{sha256(out / 'shop.onnx')[:8]}-{version_tag}"
    (out / "eval.json").write_text(json.dumps(evaluation, indent=2) + "\n")
    write_golden(OnnxBundle(out, vocab, model.cfg.input_size, jpeg_draft), street, shop, out, version)
    return write_manifest(out, model, vocab, version, evaluation, training, diffs, jpeg_draft=jpeg_draft)
