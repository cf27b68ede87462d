"""Check and use an exported bundle from the command line, with onnxruntime only.

    python -m snapshop_ml.bundle verify default
    python -m snapshop_ml.bundle embed default photo.jpg                       # user branch
    python -m snapshop_ml.bundle embed default shop.png --tags category:dress color:red
    python -m snapshop_ml.bundle add-heic-golden default                       # HEIC golden entries
    python -m snapshop_ml.bundle enable-jpeg-draft default                     # DCT-scaled JPEG decode

`verify` re-hashes every file, loads the three graphs and checks their inputs and outputs against
the manifest. `add-heic-golden` writes the HEIC fixtures and their golden entries into a bundle
exported before they existed (as `export` now does), and updates the manifest's checksums.
`enable-jpeg-draft` turns on `preprocess.jpeg_draft` in a bundle exported without it, with the
pipeline's draft factor (`--factor`, default 2: JPEGs are then decoded at the DCT scale Pillow's
`draft()` picks for twice the input size before the resize, BUNDLE.md step 1b): it recomputes every
golden entry with that preprocessing, adds the 12 MP golden photo, and gives the bundle a new model
version (`-draft`), since large JPEGs now embed differently and stored embeddings must be redone. Bad input (missing files, a malformed manifest, an unknown tag) ends with one line
on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .export import (FORMAT_VERSION, HEIC_GOLDEN, PHONE_GOLDEN, OnnxBundle, _describe, _floats, bundle_files,
                     heic_golden, phone_golden, session, sha256)
from .preprocess import DRAFT_FACTOR, RESIZE_METHOD, ImageLoadError, jpeg_draft_of

REQUIRED = ("format_version", "model_version", "input", "preprocess", "embedding_dim", "grid", "locations", "tags",
            "graphs", "files")


class BundleError(ValueError):
    """The bundle is missing, malformed or inconsistent."""


def read_manifest(bundle: Path) -> dict:
    path = bundle / "manifest.json"
    if not path.is_file():
        raise BundleError(f"{path}: no manifest (is {bundle} a bundle directory?)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: malformed JSON at line {exc.lineno}: {exc.msg}") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: expected a JSON object")
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise BundleError(f"{path}: missing field(s) {', '.join(missing)}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise BundleError(f"{path}: format_version {manifest['format_version']} (this pipeline reads {FORMAT_VERSION})")
    if manifest["preprocess"].get("resize", {}).get("method") != RESIZE_METHOD:
        raise BundleError(f"{path}: unknown resize method {manifest['preprocess'].get('resize')}")
    try:
        jpeg_draft_of(manifest)
    except ValueError as exc:
        raise BundleError(f"{path}: {exc}") from exc
    if manifest["locations"] != manifest["grid"]["h"] * manifest["grid"]["w"]:
        raise BundleError(f"{path}: locations {manifest['locations']} != grid h*w")
    if manifest["tags"]["count"] != len(manifest["tags"]["vocabulary"]):
        raise BundleError(f"{path}: tags.count disagrees with the vocabulary")
    return manifest


def verify(bundle: Path) -> dict:
    """Hashes and graph signatures; returns the manifest when everything agrees."""
    manifest = read_manifest(bundle)
    for rel, meta in manifest["files"].items():
        p = bundle / rel
        if not p.is_file():
            raise BundleError(f"{p}: listed in the manifest but missing")
        if sha256(p) != meta["sha256"]:
            raise BundleError(f"{p}: sha256 differs from the manifest")
    for name, spec in manifest["graphs"].items():
        sess = session(bundle / spec["file"])
        for kind, actual in (("inputs", sess.get_inputs()), ("outputs", sess.get_outputs())):
            found = {t.name: [d if isinstance(d, int) else str(d) for d in t.shape] for t in actual}
            for tensor, shape in spec[kind].items():
                if tensor not in found:
                    raise BundleError(f"{name}: {kind[:-1]} {tensor!r} missing (graph has {sorted(found)})")
                fixed = [(i, d) for i, d in enumerate(shape) if isinstance(d, int)]
                got = found[tensor]
                if len(got) != len(shape) or any(got[i] != d for i, d in fixed):
                    raise BundleError(f"{name}: {tensor} has shape {got}, the manifest says {shape}")
    return manifest


def add_heic_golden(bundle: Path) -> list[str]:
    """Write the HEIC fixtures (`export.heic_golden`) into `bundle/golden`, replace their entries in
    golden.json (every other entry is kept as it is) and update the manifest's file list. Returns
    the files written."""
    manifest = verify(bundle)
    onnx = OnnxBundle(bundle, manifest["tags"]["vocabulary"], manifest["input"]["height"], jpeg_draft_of(manifest))
    gdir = bundle / "golden"
    golden = json.loads((gdir / "golden.json").read_text())
    kept = [e for e in golden["images"] if e["file"] not in HEIC_GOLDEN]
    golden["images"] = kept + heic_golden(onnx, gdir)
    (gdir / "golden.json").write_text(json.dumps(golden))
    written = ["golden/golden.json", *(f"golden/{name}" for name in HEIC_GOLDEN)]
    for rel in written:
        manifest["files"][rel] = {"sha256": sha256(bundle / rel), "bytes": (bundle / rel).stat().st_size}
    manifest["files"] = dict(sorted(manifest["files"].items()))
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    verify(bundle)
    return written


def enable_jpeg_draft(bundle: Path, factor: int = DRAFT_FACTOR) -> str:
    """Set `preprocess.jpeg_draft` (and `jpeg_draft_factor` above 1) in `bundle`, redo its golden
    outputs with it (the 12 MP photo added), rename the model version with a `-draft` suffix,
    update the checksums. Returns the new model version."""
    manifest = verify(bundle)
    if jpeg_draft_of(manifest):
        raise BundleError(f"{bundle}: preprocess.jpeg_draft is already on")
    if not 1 <= factor <= 8:
        raise BundleError(f"draft factor {factor}: must be 1 to 8")
    manifest["preprocess"]["jpeg_draft"] = True
    if factor > 1:
        manifest["preprocess"]["jpeg_draft_factor"] = factor
    onnx = OnnxBundle(bundle, manifest["tags"]["vocabulary"], manifest["input"]["height"], factor)
    gdir = bundle / "golden"
    golden = json.loads((gdir / "golden.json").read_text())
    # Every entry redone with the draft decode, at the sample positions it had.
    images = [_describe(onnx, gdir, e["file"], e["domain"], None, e.get("tags"),
                        picks=[(c, y, x) for c, y, x, _ in e["preprocessed_sample"]])
              for e in golden["images"] if e["file"] != PHONE_GOLDEN]
    images += phone_golden(onnx, gdir)
    by_file = {e["file"]: e for e in images}
    rr = golden["rerank"]
    scores, att = onnx.rerank(np.asarray(by_file[rr["query"]]["features"], np.float32),
                              np.asarray([by_file[c]["embedding"] for c in rr["candidates"]], np.float32))
    rr.update(scores=_floats(scores), attention=_floats(att))
    version = manifest["model_version"] + "-draft"
    manifest["model_version"] = golden["model_version"] = version
    golden["images"] = images
    (gdir / "golden.json").write_text(json.dumps(golden))
    manifest["files"] = bundle_files(bundle)
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    verify(bundle)
    return version


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify", help="check hashes and graph signatures")
    v.add_argument("bundle", type=Path)
    e = sub.add_parser("embed", help="print an image's embedding as JSON")
    e.add_argument("bundle", type=Path)
    e.add_argument("image", type=Path)
    e.add_argument("--tags", nargs="*", default=None, help="shop image tags (key:value); omit for a street photo")
    h = sub.add_parser("add-heic-golden", help="write the HEIC fixtures and their golden entries")
    h.add_argument("bundle", type=Path)
    d = sub.add_parser("enable-jpeg-draft", help="turn on the DCT-scaled JPEG decode and redo the golden outputs")
    d.add_argument("bundle", type=Path)
    d.add_argument("--factor", type=int, default=DRAFT_FACTOR, help="the draft factor (1-8)")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "enable-jpeg-draft":
            version = enable_jpeg_draft(args.bundle, args.factor)
            print(f"{args.bundle}: preprocess.jpeg_draft on (factor {args.factor}), model version {version}")
            return 0
        if args.cmd == "add-heic-golden":
            for rel in add_heic_golden(args.bundle):
                print(f"wrote {args.bundle / rel}")
            return 0
        if args.cmd == "verify":
            m = verify(args.bundle)
            print(f"ok: {m['model_version']} ({len(m['files'])} files, {m['tags']['count']} tags)")
            return 0
        manifest = verify(args.bundle)
        vocab = manifest["tags"]["vocabulary"]
        onnx = OnnxBundle(args.bundle, vocab, manifest["input"]["height"], jpeg_draft_of(manifest))
        if args.tags is None:
            _, emb = onnx.embed_user(args.image)
        else:
            unknown = [t for t in args.tags if t not in vocab]
            if unknown:
                keys = sorted({t.split(":", 1)[0] for t in vocab})
                raise BundleError(f"unknown tag(s) {', '.join(unknown)}; the vocabulary's keys are {', '.join(keys)}"
                                  f" (python -m snapshop_ml.bundle verify {args.bundle} lists the bundle)")
            emb = onnx.embed_shop(args.image, args.tags)
        print(json.dumps({"model_version": manifest["model_version"], "embedding": np.round(emb, 6).tolist()}))
        return 0
    except (BundleError, ImageLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
