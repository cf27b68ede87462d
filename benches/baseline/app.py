"""The FastAPI baseline: the image search a team would otherwise write, on snapshop's bundle.

Written from its three libraries only (onnxruntime, hnswlib, FastAPI; Pillow, numpy, uvicorn and
python-multipart around them), with nothing imported from snapshop or its model pipeline. It
serves the same bundle (`models/default`, contract in models/BUNDLE.md) the same way as the
service's search path, minus everything else the service does (auth, persistence, filters,
metrics, batching across requests):

    POST /v1/search?k=20        raw image body (or multipart `image`): decode with Pillow as the
                                manifest's `preprocess` says (`draft` when `jpeg_draft` is true,
                                EXIF transpose, RGB, BILINEAR resize, normalise), user.onnx, hnswlib
                                top 256 by inner product on the L2-normalised embeddings, one
                                ctx.onnx call re-ranking those 256, grouped by product (best image
                                wins), top k as JSON
    POST /v1/products           multipart: JSON part `product` ({"id", "title", "tags"}) and one or
                                more `image` parts; embedded with shop.onnx and its tags (multi-hot
                                over the bundle's vocabulary, unknown tags ignored), added to the index
    GET  /healthz               {"ok": true, "images": N, "products": M}

Configuration, from the environment (so that `uvicorn --workers N` gives every worker the same):
    BASELINE_BUNDLE         the bundle directory (default models/default)
    BASELINE_GALLERY        a gallery saved by `python benches/baseline/app.py build` (loaded at
                            start by every worker; with more than one worker, POST /v1/products
                            reaches only one of them, so multi-worker runs use this)
    BASELINE_INTRA_THREADS  onnxruntime intra-op threads per session (default 0: onnxruntime's own
                            choice, one per core)

Offline commands:
    python benches/baseline/app.py build --manifest data/street2shop/manifest.csv --split test \
        --out target/sidebyside/baseline-gallery      # embed a split's shop images, save the index
    python benches/baseline/app.py check              # golden outputs of the bundle reproduced?
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import threading
import time
from pathlib import Path

import hnswlib
import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from PIL import ExifTags, Image, ImageOps
from starlette.concurrency import run_in_threadpool

# EXIF orientations that swap width and height: Image.draft acts on the stored pixels, so for
# these the draft size is asked for transposed (models/BUNDLE.md, step 1b).
TRANSPOSING = (5, 6, 7, 8)
FIRST_PASS = 256  # the bundle's rerank.candidates, read from the manifest below
HNSW_M = 16  # the same graph parameters as snapshop's defaults (docs/configuration.md)
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 256


class Model:
    """The bundle's three graphs and its preprocessing."""

    def __init__(self, bundle: Path, intra_threads: int = 0):
        self.bundle = bundle
        m = json.loads((bundle / "manifest.json").read_text())
        self.manifest = m
        pre = m["preprocess"]
        if pre["resize"]["method"] != "pillow_bilinear" or pre["resize"].get("keep_aspect", False):
            raise SystemExit(f"baseline: unsupported resize {pre['resize']}")
        self.width, self.height = int(pre["resize"]["width"]), int(pre["resize"]["height"])
        self.scale = np.float32(pre["scale"])
        self.mean = np.asarray(pre["mean"], np.float32)
        self.std = np.asarray(pre["std"], np.float32)
        self.exif_transpose = bool(pre.get("exif_transpose", True))
        self.jpeg_draft = pre.get("jpeg_draft", False)
        if not isinstance(self.jpeg_draft, bool):
            raise SystemExit("baseline: preprocess.jpeg_draft must be a boolean")
        self.draft_factor = pre.get("jpeg_draft_factor", 1)
        if isinstance(self.draft_factor, bool) or not isinstance(self.draft_factor, int) or not 1 <= self.draft_factor <= 8:
            raise SystemExit("baseline: preprocess.jpeg_draft_factor must be an integer from 1 to 8")
        self.vocabulary = list(m["tags"]["vocabulary"])
        self.tag_index = {t: i for i, t in enumerate(self.vocabulary)}
        self.dim = int(m["embedding_dim"])
        rerank = m.get("rerank", {})
        self.candidates = int(rerank.get("candidates", FIRST_PASS))
        self.rerank_default = bool(rerank.get("default", True))
        fusion = rerank.get("fusion", {"first_pass": 0.0, "ctx": 1.0})
        self.fusion_first, self.fusion_ctx = float(fusion["first_pass"]), float(fusion["ctx"])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]

        def session(name: str) -> ort.InferenceSession:
            return ort.InferenceSession(str(bundle / m["graphs"][name]["file"]), opts, providers=providers)

        self.shop, self.user, self.ctx = session("shop"), session("user"), session("ctx")

    def preprocess(self, data: bytes) -> np.ndarray:
        """Image bytes -> float32 [3, H, W], as models/BUNDLE.md says."""
        with Image.open(io.BytesIO(data)) as img:
            if self.jpeg_draft and img.format == "JPEG":
                w, h = self.width * self.draft_factor, self.height * self.draft_factor
                if img.getexif().get(ExifTags.Base.Orientation, 1) in TRANSPOSING:
                    w, h = h, w
                img.draft("RGB", (w, h))
            if self.exif_transpose:
                img = ImageOps.exif_transpose(img)
            img = img.convert("RGB").resize((self.width, self.height), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.float32) * self.scale
        arr = (arr - self.mean) / self.std
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def tags_vector(self, tags: list[str]) -> np.ndarray:
        v = np.zeros(len(self.vocabulary), np.float32)
        for t in tags:
            i = self.tag_index.get(t.strip())
            if i is not None:
                v[i] = 1.0
        return v

    def embed_shop(self, images: np.ndarray, tags: np.ndarray) -> np.ndarray:
        return self.shop.run(["embedding"], {"image": images, "tags": tags})[0]

    def embed_user(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        features, embedding = self.user.run(["features", "embedding"], {"image": image[None]})
        return features, embedding[0]

    def rerank(self, features: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        return self.ctx.run(["scores"], {"features": features, "candidates": candidates[None]})[0][0]


class Gallery:
    """Shop image embeddings in an hnswlib graph (inner product on unit vectors = cosine), with
    the product of each image. Writes take a lock; searches do not (hnswlib allows concurrent
    knn_query alongside add_items)."""

    def __init__(self, dim: int, capacity: int = 4096):
        self.dim = dim
        self.index = hnswlib.Index(space="ip", dim=dim)
        self.index.init_index(max_elements=capacity, M=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION)
        self.index.set_ef(HNSW_EF_SEARCH)
        self.index.set_num_threads(1)
        self.vectors = np.zeros((capacity, dim), np.float32)
        self.image_product: list[int] = []  # image label -> product number
        self.products: list[dict] = []  # product number -> {"id", "title", "tags"}
        self.product_number: dict[str, int] = {}
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.image_product)

    def add(self, product: dict, embeddings: np.ndarray) -> list[int]:
        with self.lock:
            if product["id"] in self.product_number:
                raise KeyError(product["id"])
            pn = len(self.products)
            self.products.append(product)
            self.product_number[product["id"]] = pn
            start, n = len(self.image_product), len(embeddings)
            if start + n > self.index.get_max_elements():
                cap = max(2 * self.index.get_max_elements(), start + n)
                self.index.resize_index(cap)
                grown = np.zeros((cap, self.dim), np.float32)
                grown[:start] = self.vectors[:start]
                self.vectors = grown
            labels = np.arange(start, start + n)
            self.vectors[start : start + n] = embeddings
            self.index.add_items(embeddings, labels, num_threads=1)
            self.image_product.extend([pn] * n)
            return labels.tolist()

    def first_pass(self, query: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        n = min(n, len(self))
        labels, distances = self.index.knn_query(query[None], k=n, num_threads=1)
        return labels[0].astype(np.int64), 1.0 - distances[0]  # ip distance = 1 - dot

    def save(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.index.save_index(str(out / "index.bin"))
        np.save(out / "vectors.npy", self.vectors[: len(self)])
        (out / "gallery.json").write_text(
            json.dumps({"image_product": self.image_product, "products": self.products, "dim": self.dim})
        )

    @classmethod
    def load(cls, path: Path) -> "Gallery":
        meta = json.loads((path / "gallery.json").read_text())
        vectors = np.load(path / "vectors.npy")
        g = cls(meta["dim"], capacity=max(len(vectors), 16))
        g.index = hnswlib.Index(space="ip", dim=meta["dim"])
        g.index.load_index(str(path / "index.bin"), max_elements=max(len(vectors), 16))
        g.index.set_ef(HNSW_EF_SEARCH)
        g.index.set_num_threads(1)
        g.vectors = np.array(vectors, np.float32)
        g.image_product = meta["image_product"]
        g.products = meta["products"]
        g.product_number = {p["id"]: i for i, p in enumerate(g.products)}
        return g


def search(model: Model, gallery: Gallery, data: bytes, k: int, rerank: bool | None = None) -> dict:
    t0 = time.perf_counter()
    x = model.preprocess(data)
    t1 = time.perf_counter()
    features, query = model.embed_user(x)
    t2 = time.perf_counter()
    labels, first_scores = gallery.first_pass(query, model.candidates)
    t3 = time.perf_counter()
    rerank = model.rerank_default if rerank is None else rerank
    if rerank and len(labels):
        ctx = model.rerank(features, gallery.vectors[labels])
        scores = model.fusion_first * first_scores + model.fusion_ctx * ctx
    else:
        scores = first_scores
    t4 = time.perf_counter()
    order = np.argsort(-scores, kind="stable")
    results, seen = [], set()
    first_rank = {int(label): r for r, label in enumerate(labels)}
    for i in order:
        label = int(labels[i])
        pn = gallery.image_product[label]
        if pn in seen:
            continue
        seen.add(pn)
        p = gallery.products[pn]
        results.append({
            "product_id": p["id"], "title": p.get("title", p["id"]), "tags": p.get("tags", []),
            "image_id": label, "score": float(scores[i]),
            "first_pass_rank": first_rank[label], "first_pass_score": float(first_scores[i]),
        })
        if len(results) == k:
            break
    t5 = time.perf_counter()
    ms = lambda a, b: round(1e3 * (b - a), 3)  # noqa: E731
    return {
        "reranked": bool(rerank), "candidates": int(len(labels)), "results": results,
        "timings_ms": {"decode": ms(t0, t1), "embed": ms(t1, t2), "ann": ms(t2, t3),
                       "rerank": ms(t3, t4), "total": ms(t0, t5)},
    }


def ingest(model: Model, gallery: Gallery, product: dict, images: list[bytes]) -> list[int]:
    x = np.stack([model.preprocess(b) for b in images])
    tags = np.repeat(model.tags_vector(product.get("tags", []))[None], len(images), axis=0)
    return gallery.add(product, model.embed_shop(x, tags))


# ---------------------------------------------------------------------------------------------
# The web app (FastAPI). Imported by uvicorn as `app:app` (with --app-dir benches/baseline).

def create_app():
    bundle = Path(os.environ.get("BASELINE_BUNDLE", "models/default"))
    model = Model(bundle, int(os.environ.get("BASELINE_INTRA_THREADS", "0")))
    gallery_dir = os.environ.get("BASELINE_GALLERY")
    gallery = Gallery.load(Path(gallery_dir)) if gallery_dir else Gallery(model.dim)
    app = FastAPI(title="snapshop baseline (FastAPI + onnxruntime + hnswlib)")

    @app.get("/healthz")
    def healthz():
        return {"ok": True, "images": len(gallery), "products": len(gallery.products),
                "model_version": model.manifest["model_version"], "pid": os.getpid()}

    @app.post("/v1/search")
    async def search_route(request: Request, k: int = 20, rerank: bool | None = None):
        if not 1 <= k <= 100:
            raise HTTPException(400, "k must be 1-100")
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            form = await request.form()
            part = form.get("image")
            if part is None or isinstance(part, str):
                raise HTTPException(422, "multipart search needs an `image` part")
            data = await part.read()
        else:
            data = await request.body()
        if not data:
            raise HTTPException(422, "empty image")
        if len(gallery) == 0:
            return {"reranked": False, "candidates": 0, "results": []}
        try:
            answer = await run_in_threadpool(search, model, gallery, data, k, rerank)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise HTTPException(422, f"image_undecodable: {exc}")
        return JSONResponse(answer)

    @app.post("/v1/products", status_code=201)
    async def create_product(request: Request):
        form = await request.form()
        raw = form.get("product")
        if raw is None:
            raise HTTPException(422, "needs a JSON part `product`")
        product = json.loads(raw if isinstance(raw, str) else (await raw.read()).decode())
        if not isinstance(product, dict) or not isinstance(product.get("id"), str):
            raise HTTPException(422, "product needs an `id`")
        product = {"id": product["id"], "title": product.get("title", product["id"]),
                   "tags": sorted(set(product.get("tags", [])))}
        images = [await p.read() for p in form.getlist("image") if not isinstance(p, str)]
        if not images:
            raise HTTPException(422, "needs at least one `image` part")
        try:
            labels = await run_in_threadpool(ingest, model, gallery, product, images)
        except KeyError:
            raise HTTPException(409, "product_exists")
        except (OSError, ValueError) as exc:
            raise HTTPException(422, f"image_undecodable: {exc}")
        return {"id": product["id"], "image_ids": labels}

    return app


if os.environ.get("BASELINE_NO_APP") != "1" and __name__ != "__main__":
    app = create_app()


# ---------------------------------------------------------------------------------------------
# Offline commands.

def read_split(manifest: Path, split: str) -> dict[str, tuple[set[str], list[Path]]]:
    shops: dict[str, tuple[set[str], list[Path]]] = {}
    with open(manifest, newline="") as fh:
        for row in csv.DictReader(fh):
            if row["split"] == split and row["domain"] == "shop":
                tags, files = shops.setdefault(row["product_id"], (set(), []))
                tags.update(t for t in row["tags"].split(";") if t)
                files.append(manifest.parent / row["image"])
    return shops


def cmd_build(args) -> int:
    model = Model(args.bundle, args.intra_threads)
    gallery = Gallery(model.dim)
    shops = read_split(args.manifest, args.split)
    t0 = time.perf_counter()
    n_images = 0
    for pid, (tags, files) in sorted(shops.items()):
        ingest(model, gallery, {"id": pid, "title": pid, "tags": sorted(tags)}, [f.read_bytes() for f in files])
        n_images += len(files)
    dt = time.perf_counter() - t0
    gallery.save(args.out)
    report = {"products": len(shops), "images": n_images, "seconds": round(dt, 2),
              "images_per_s": round(n_images / dt, 1) if dt else None, "out": str(args.out)}
    print(json.dumps(report))
    return 0


def cmd_check(args) -> int:
    """The bundle's golden outputs (models/default/golden/golden.json) through this baseline."""
    model = Model(args.bundle)
    gdir = args.bundle / "golden"
    golden = json.loads((gdir / "golden.json").read_text())
    tol = float(golden.get("tolerance", 1e-3))
    worst = 0.0
    for entry in golden["images"]:
        if entry["file"].lower().endswith((".heic", ".heif")):
            print(f"{entry['file']:28s} skipped: the baseline decodes no HEIC (no pillow-heif)")
            continue
        x = model.preprocess((gdir / entry["file"]).read_bytes())
        if entry["domain"] == "shop":
            emb = model.embed_shop(x[None], model.tags_vector(entry.get("tags", []))[None])[0]
        else:
            emb = model.embed_user(x)[1]
        d = float(np.abs(emb - np.asarray(entry["embedding"], np.float32)).max())
        sd = abs(float(x.sum()) - float(entry["preprocessed_sum"]))
        worst = max(worst, d)
        print(f"{entry['file']:28s} {entry['domain']:5s} embedding max|diff| {d:.2e}  "
              f"preprocessed_sum diff {sd:.3g}")
    ok = worst <= tol
    print(f"check: worst embedding diff {worst:.2e}, tolerance {tol:g}: {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="embed a split's shop gallery and save it for BASELINE_GALLERY")
    b.add_argument("--bundle", type=Path, default=Path("models/default"))
    b.add_argument("--manifest", type=Path, default=Path("data/street2shop/manifest.csv"))
    b.add_argument("--split", default="test")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--intra-threads", type=int, default=0)
    c = sub.add_parser("check", help="reproduce the bundle's golden outputs")
    c.add_argument("--bundle", type=Path, default=Path("models/default"))
    args = ap.parse_args()
    return {"build": cmd_build, "check": cmd_check}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
