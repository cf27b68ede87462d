"""Subnetwork V retrained on the candidate lists it re-ranks in service, and the score fusion.

    python -m snapshop_ml.rerank --bundle default --data ../data/street2shop/manifest.csv \
        [--real ../data/realphoto/manifest.csv] [--loss listwise|eq7] [--write]

Why this stage exists (issue 7, part 3): the CtxYNet stage of `train.py` learns subnetwork V
from random or in-batch negatives, but in service V only ever sees the top 256 images of the
TagYNet first pass, and there it barely moved the ranking (its score differed from the first
pass by ~0.01 on average and made P@1 and P@20 slightly worse). This stage keeps the bundle's
user and shop graphs exactly as they are (so the first pass, the index and every stored
embedding are unchanged) and retrains only V (v and U of Eq. 4-6, 9.5k weights) on what it will
really see:

1. every image of every split is embedded once through the bundle's own ONNX graphs, with the
   service's preprocessing (`OnnxBundle`), and cached under `models/.cache/rerank/`;
2. for every train street photo the top 256 first-pass images of its split's gallery are mined
   (the service's candidate list, positives included only where the first pass found them);
3. V is trained on those lists, from zero (where its score equals the first pass), with either
   a listwise loss (softmax over the 256 candidates, the query's own product as the target,
   learnt temperature) or the paper's adapted triplet loss (Eq. 7) against the hardest mined
   negative; the epoch with the best validation P@K is kept;
4. the final score is `a * first_pass + b * ctx`; w = b / (a + b) > 0 is fitted on the
   validation splits of every benchmark given (mean of P@1, 5, 10, 20, each benchmark weighted
   equally), for the bundle's own V and for the retrained one; the retrained V ships only when
   its fused validation score is strictly higher;
5. the re-rank is the bundle's default only when, on validation, the fused score is at least
   the first pass at P@1 and P@20 on every benchmark, better on their mean, and wins
   significantly more top-1 hits than it loses (a one-sided sign test, p < 0.05); otherwise the
   manifest says `rerank.default: false`, and searches skip the re-rank unless asked (and get
   the fused score when they do).

Everything is reported on val and test of each benchmark. With `--write` the manifest's `rerank`
block, `eval.json` (its `shipped` and `rerank_stage` blocks) and the file hashes are rewritten
in place; when the retrained V ships, so are `ctx.onnx` and the golden re-rank outputs, and the
model version gains a `-rr` suffix. shop.onnx and user.onnx are never touched, so the first
pass and every stored embedding stay as they were.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from .data.loaders import load_dataset
from .evaluate import KS as ALL_KS
from .evaluate import RERANK_CANDIDATES, EvalSet, p_at_k
from .export import CtxGraph, OnnxBundle, _export, bundle_files, graph_specs, session, sha256
from .network import NetConfig, YNet, context_attention
from .preprocess import jpeg_draft_of, preprocess_file
from .train import machine_description

log = logging.getLogger("snapshop_ml.rerank")
HERE = Path(__file__).resolve().parent.parent  # models/
ROOT = HERE.parent
KS = (1, 5, 10, 20)
FUSION_GRID = tuple(round(0.05 * i, 2) for i in range(21))
SPLITS = ("train", "val", "test")


# ------------------------------------------------------------------------------------------
# embeddings through the bundle (cached)


@dataclass
class Split:
    """One split of one benchmark, embedded by the bundle: user maps and embeddings, shop embeddings."""

    es: EvalSet
    maps: np.ndarray  # [Q, L, C] float32, raw user feature maps (user.onnx `features`)
    user: np.ndarray  # [Q, C] float32, L2-normalised
    shop: np.ndarray  # [G, C] float32, L2-normalised TagYNet embeddings


def _run_batched(sess, feeds_fn, n: int, batch: int = 32) -> list[list[np.ndarray]]:
    outs: list[list[np.ndarray]] = []
    for i in range(0, n, batch):
        res = sess.run(None, feeds_fn(slice(i, min(n, i + batch))))
        for j, r in enumerate(res):
            if len(outs) <= j:
                outs.append([])
            outs[j].append(r)
    return outs


def embed_split(onnx_bundle: OnnxBundle, es: EvalSet) -> Split:
    """Embed a split's queries and gallery exactly as the service does (batched: same numbers
    as one image at a time up to float rounding, checked in the tests)."""
    size, draft = onnx_bundle.size, onnx_bundle.jpeg_draft

    def images(paths):
        return np.stack([preprocess_file(p, size, draft) for p in paths])

    if es.query_paths:
        maps, user = _run_batched(onnx_bundle.user, lambda sl: {"image": images(es.query_paths[sl])},
                                  len(es.query_paths))
        maps, user = np.concatenate(maps), np.concatenate(user)
    else:
        maps = user = np.zeros((0, 0, 0), np.float32)
    tags = np.concatenate([onnx_bundle.tags(t) for t in es.gallery_tags]) if es.gallery_tags else None
    (shop,) = _run_batched(onnx_bundle.shop, lambda sl: {"image": images(es.gallery_paths[sl]), "tags": tags[sl]},
                           len(es.gallery_paths))
    return Split(es, maps.astype(np.float32), user.astype(np.float32), np.concatenate(shop).astype(np.float32))


def _cache_key(onnx_bundle: OnnxBundle, bundle: Path, manifest: Path, split: str) -> str:
    """What the embeddings depend on: the two graphs, the preprocessing, the data, the split."""
    h = hashlib.sha256()
    for name in ("user.onnx", "shop.onnx"):
        h.update(sha256(bundle / name).encode())
    h.update(f"{onnx_bundle.size}/{onnx_bundle.jpeg_draft}/{sorted(onnx_bundle.vocab)}".encode())
    h.update(sha256(manifest).encode() if manifest.is_file() else str(manifest.resolve()).encode())
    h.update(split.encode())
    return h.hexdigest()[:20]


def load_benchmark(onnx_bundle: OnnxBundle, bundle: Path, manifest: Path, cache_dir: Path | None,
                   splits=SPLITS) -> dict[str, Split]:
    ds = load_dataset(manifest)
    out = {}
    for s in splits:
        es = EvalSet.from_records(ds.subset(s, "user"), ds.subset(s, "shop"))
        if not es.query_paths or not es.gallery_paths:
            continue
        path = cache_dir / f"{_cache_key(onnx_bundle, bundle, manifest, s)}.npz" if cache_dir else None
        if path is not None and path.is_file():
            z = np.load(path)
            out[s] = Split(es, z["maps"], z["user"], z["shop"])
            log.info("%s %s: %d queries, %d gallery images (cached)", manifest.parent.name, s,
                     len(es.query_paths), len(es.gallery_paths))
            continue
        t0 = time.time()
        out[s] = embed_split(onnx_bundle, es)
        log.info("%s %s: %d queries, %d gallery images embedded in %.0f s", manifest.parent.name, s,
                 len(es.query_paths), len(es.gallery_paths), time.time() - t0)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, maps=out[s].maps, user=out[s].user, shop=out[s].shop)
            tmp.replace(path)
    return out


# ------------------------------------------------------------------------------------------
# mined candidate lists


@dataclass
class Candidates:
    """The service's candidate list of every query: the top n first-pass gallery images."""

    idx: np.ndarray  # [Q, n] gallery indices, best first
    first: np.ndarray  # [Q, n] first-pass cosine
    positive: np.ndarray  # [Q, n] bool, the candidate shows the query's product


def mine(sp: Split, n: int = RERANK_CANDIDATES) -> Candidates:
    first = sp.user @ sp.shop.T
    n = min(n, first.shape[1])
    idx = np.argsort(-first, axis=1, kind="stable")[:, :n]
    return Candidates(idx, np.take_along_axis(first, idx, axis=1),
                      sp.es.gallery_products[idx] == sp.es.query_products[:, None])


# ------------------------------------------------------------------------------------------
# subnetwork V


class ContextHead(torch.nn.Module):
    """v and U of Eq. 4-6 (the only weights this stage trains) and the listwise temperature."""

    def __init__(self, locations: int, dim: int, v: np.ndarray | None = None, u: np.ndarray | None = None):
        super().__init__()
        self.v = torch.nn.Parameter(torch.zeros(dim) if v is None else torch.from_numpy(v.copy()))
        self.u = torch.nn.Parameter(torch.zeros(locations, dim) if u is None else torch.from_numpy(u.copy()))
        self.log_t = torch.nn.Parameter(torch.tensor(float(np.log(0.05))))

    def forward(self, maps: torch.Tensor, cands: torch.Tensor) -> torch.Tensor:
        """CtxYNet scores [B, K]: cosine of the attended query and each candidate."""
        attended, _ = context_attention(maps, cands, self.v, self.u)
        return (attended * cands).sum(-1)


def ctx_weights_of(ctx_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """v [C] and U [L, C] read back from an exported ctx.onnx (its two initialisers)."""
    model = onnx.load(str(ctx_path))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    v = [a for a in inits.values() if a.ndim == 1]
    u = [a for a in inits.values() if a.ndim == 2]
    if len(v) != 1 or len(u) != 1:
        raise ValueError(f"{ctx_path}: expected one vector and one matrix initialiser, found "
                         f"{ {k: a.shape for k, a in inits.items()} }")
    return v[0].astype(np.float32), u[0].astype(np.float32)


@torch.no_grad()
def ctx_scores(head: ContextHead, sp: Split, c: Candidates, batch: int = 64) -> np.ndarray:
    out = np.empty(c.idx.shape, np.float64)
    shop = torch.from_numpy(sp.shop)
    for i in range(0, len(c.idx), batch):
        sl = slice(i, i + batch)
        out[sl] = head(torch.from_numpy(sp.maps[sl]), shop[torch.from_numpy(c.idx[sl])]).double().numpy()
    return out


def keys_of(sp: Split, c: Candidates, scores: np.ndarray) -> np.ndarray:
    """[Q, G] ranking keys: `scores` on the candidates, -inf elsewhere (never returned)."""
    keys = np.full((len(c.idx), len(sp.es.gallery_paths)), -np.inf)
    np.put_along_axis(keys, c.idx, scores, axis=1)
    return keys


def pk(sp: Split, c: Candidates, scores: np.ndarray) -> dict[str, float]:
    return p_at_k(keys_of(sp, c, scores), sp.es.query_products, sp.es.gallery_products, KS)


def mean_pk(r: dict[str, float]) -> float:
    return float(np.mean([r[str(k)] for k in KS]))


@dataclass
class HeadConfig:
    loss: str = "listwise"  # or "eq7"
    epochs: int = 30
    batch: int = 32
    lr: float = 0.01
    weight_decay: float = 1e-4
    margin: float = 0.5  # Eq. 7
    seed: int = 0
    patience: int = 6


def _loss(head: ContextHead, maps, cands, positive, cfg: HeadConfig) -> torch.Tensor:
    s = head(maps, cands)  # [B, K]
    if cfg.loss == "listwise":
        logits = s / head.log_t.exp()
        # -log of the probability mass on the query's own product's images
        pos = torch.logsumexp(logits.masked_fill(~positive, float("-inf")), dim=1)
        return (torch.logsumexp(logits, dim=1) - pos).mean()
    if cfg.loss == "eq7":
        # Eq. 7 with distances between unit vectors (d^2 = 2 - 2 cos): the best-scored positive
        # against the hardest (highest-scored) negative of the mined list.
        d = (2.0 - 2.0 * s).clamp_min(1e-12).sqrt()
        dp = d.masked_fill(~positive, float("inf")).min(dim=1).values
        dn = d.masked_fill(positive, float("inf")).min(dim=1).values
        return torch.relu(dp - dn + cfg.margin).mean()
    raise ValueError(f"unknown loss {cfg.loss!r}")


def train_head(train: list[tuple[Split, Candidates]], val: list[tuple[Split, Candidates]], locations: int,
               dim: int, cfg: HeadConfig) -> tuple[ContextHead, list[dict]]:
    """Train V from zero on the mined lists; keep the epoch with the best mean validation P@K."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    head = ContextHead(locations, dim)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # only queries whose product is among their candidates can be helped by a re-rank
    pools = []
    for sp, c in train:
        usable = np.flatnonzero(c.positive.any(axis=1))
        pools.append((sp, c, usable, torch.from_numpy(sp.shop)))
        log.info("training lists: %d of %d queries have their product among the %d candidates",
                 len(usable), len(c.idx), c.idx.shape[1])
    history: list[dict] = []

    def val_score() -> tuple[float, dict]:
        res = {}
        for i, (sp, c) in enumerate(val):
            res[i] = pk(sp, c, ctx_scores(head, sp, c))
        return float(np.mean([mean_pk(r) for r in res.values()])), res

    best, _ = val_score()
    best_state, best_epoch, stale = {k: v.detach().clone() for k, v in head.state_dict().items()}, 0, 0
    history.append({"epoch": 0, "val_mean_pk": best})
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.time()
        order = [(j, q) for j, (_, _, usable, _) in enumerate(pools) for q in usable]
        rng.shuffle(order)
        losses = []
        # batches never mix benchmarks (their candidate counts may differ)
        by_pool: dict[int, list[int]] = {}
        for j, q in order:
            by_pool.setdefault(j, []).append(q)
        batches = [(j, qs[i : i + cfg.batch]) for j, qs in by_pool.items() for i in range(0, len(qs), cfg.batch)]
        rng.shuffle(batches)
        for j, qs in batches:
            sp, c, _, shop = pools[j]
            qs = np.asarray(qs)
            loss = _loss(head, torch.from_numpy(sp.maps[qs]), shop[torch.from_numpy(c.idx[qs])],
                         torch.from_numpy(c.positive[qs]), cfg)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        score, res = val_score()
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "val_mean_pk": score,
                        "temperature": float(head.log_t.detach().exp()), "seconds": round(time.time() - t0, 1)})
        log.info("epoch %d: loss %.4f, val mean P@K %.4f (best %.4f), t %.4f, %.0f s", epoch, np.mean(losses), score,
                 best, head.log_t.exp().item(), time.time() - t0)
        if score > best + 1e-9:
            best, best_epoch, stale = score, epoch, 0
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    head.load_state_dict(best_state)
    log.info("kept epoch %d (val mean P@K %.4f)", best_epoch, best)
    history.append({"kept_epoch": best_epoch, "val_mean_pk": best})
    return head, history


# ------------------------------------------------------------------------------------------
# fusion and the default


def fused(c: Candidates, ctx: np.ndarray, w: float) -> np.ndarray:
    return (1.0 - w) * c.first + w * ctx


def fit_fusion(vals: dict[str, tuple[Split, Candidates, np.ndarray]], grid=FUSION_GRID) -> tuple[float, list[dict]]:
    """The grid w = b / (a + b) with the best mean over benchmarks of mean P@{1,5,10,20} on val
    (ties go to the smaller w, i.e. towards the first pass), and the whole curve."""
    curve = []
    for w in grid:
        per = {name: pk(sp, c, fused(c, ctx, w)) for name, (sp, c, ctx) in vals.items()}
        curve.append({"w": w, "val": per, "mean": float(np.mean([mean_pk(r) for r in per.values()]))})
    best = max(curve, key=lambda e: (round(e["mean"], 12), -e["w"]))
    return best["w"], curve


def product_ranks(sp: Split, c: Candidates, scores: np.ndarray) -> np.ndarray:
    """Each query's product rank under `scores` (as p_at_k counts it); a huge number when its
    product is not among the candidates."""
    from .evaluate_real import product_ranks as ranks_of_keys  # 0 = never returned

    ranks = ranks_of_keys(keys_of(sp, c, scores), sp.es)
    return np.where(ranks > 0, ranks, np.iinfo(np.int64).max)


def sign_test(wins: int, losses: int) -> float:
    """One-sided exact sign test: P(at least `wins` of wins + losses fair coin flips)."""
    from math import comb

    n = wins + losses
    return sum(comb(n, i) for i in range(wins, n + 1)) / 2**n if n else 1.0


#: The re-rank must win significantly more top-1 hits than it loses on validation.
SIGN_TEST_ALPHA = 0.05


def rerank_is_better(curve_entry: dict, first: dict[str, dict],
                     top1_changes: tuple[int, int] | None = None) -> tuple[bool, str]:
    """The default rule. On validation, the fused re-rank must (1) be at least the first pass at
    P@1 and P@20 on every benchmark, (2) have a higher mean P@K over them, and (3) when the
    per-query top-1 changes are given as (wins, losses) pooled over the benchmarks, win
    significantly more than it loses (one-sided sign test, p < SIGN_TEST_ALPHA): a re-rank that
    costs a model call per search must be shown to help, not merely to tie within noise."""
    reasons = []
    for name, r in curve_entry["val"].items():
        for k in ("1", "20"):
            if r[k] < first[name][k] - 1e-12:
                reasons.append(f"{name} val P@{k} {r[k]:.3f} < first pass {first[name][k]:.3f}")
    fm = float(np.mean([mean_pk(r) for r in first.values()]))
    if curve_entry["mean"] <= fm + 1e-12:
        reasons.append(f"val mean P@K {curve_entry['mean']:.4f} <= first pass {fm:.4f}")
    if top1_changes is not None:
        wins, losses = top1_changes
        p = sign_test(wins, losses)
        if p >= SIGN_TEST_ALPHA:
            reasons.append(f"top-1 hits gained {wins}, lost {losses} on val: sign test p = {p:.3f} "
                           f">= {SIGN_TEST_ALPHA}")
    if reasons:
        return False, "; ".join(reasons)
    ok = "fused >= first pass at P@1 and P@20 on every val split, better mean"
    if top1_changes is not None:
        ok += f", top-1 hits gained {top1_changes[0]} vs lost {top1_changes[1]} (p = {sign_test(*top1_changes):.3f})"
    return True, ok


# ------------------------------------------------------------------------------------------
# writing the bundle


def export_ctx(head: ContextHead, locations: int, dim: int, num_tags: int, input_size: int, out: Path) -> dict:
    """Write `out/ctx.onnx` from the head (through the same CtxGraph wrapper as export.py) and
    return its torch-vs-onnxruntime differences on random inputs."""
    cfg = NetConfig(num_tags=num_tags, embed_dim=dim, input_size=input_size)
    if cfg.locations != locations:
        raise ValueError(f"bundle has {locations} locations, input {input_size} gives {cfg.locations}")
    model = YNet(cfg)
    with torch.no_grad():
        model.ctx_v.copy_(head.v)
        model.ctx_u.copy_(head.u)
    model.eval()
    feats = torch.randn(2, locations, dim)
    cands = torch.nn.functional.normalize(torch.randn(2, 3, dim), dim=-1)
    with torch.no_grad():
        _export(CtxGraph(model).eval(), (feats, cands), out / "ctx.onnx", graph_specs(cfg)["ctx"])
        g = torch.Generator().manual_seed(0)
        f = torch.randn(2, locations, dim, generator=g)
        k = torch.nn.functional.normalize(torch.randn(2, 5, dim, generator=g), dim=-1)
        s, a = session(out / "ctx.onnx").run(None, {"features": f.numpy(), "candidates": k.numpy()})
        rs, ra = model.rerank(f, k)
    return {"ctx.scores": float(np.abs(s - rs.numpy()).max()), "ctx.attention": float(np.abs(a - ra.numpy()).max())}


def rewrite_golden(bundle: Path, onnx_bundle: OnnxBundle, model_version: str) -> None:
    """Recompute the golden re-rank outputs (the other golden values do not depend on ctx.onnx)."""
    path = bundle / "golden/golden.json"
    golden = json.loads(path.read_text())
    by_file = {e["file"]: e for e in golden["images"]}
    rr = golden["rerank"]
    feats = np.asarray(by_file[rr["query"]]["features"], np.float32)
    cands = np.asarray([by_file[f]["embedding"] for f in rr["candidates"]], np.float32)
    scores, att = onnx_bundle.rerank(feats, cands)
    rr["scores"] = np.round(scores.astype(np.float64), 7).tolist()
    rr["attention"] = np.round(att.astype(np.float64), 7).tolist()
    golden["model_version"] = model_version
    path.write_text(json.dumps(golden))


def refresh_files(bundle: Path, manifest: dict) -> None:
    manifest["files"] = bundle_files(bundle)


# ------------------------------------------------------------------------------------------


def rel(p: Path, root: Path | None = None) -> str:
    """`p` relative to the repository root (as the manifest records paths), else as given."""
    try:
        return Path(p).resolve().relative_to((root or ROOT).resolve()).as_posix()
    except ValueError:
        return str(p)


def from_models(arg: str) -> str:
    """A command-line argument as typed from `models/` (the recorded command starts with
    `cd models`): paths, also in NAME=PATH, become relative to models/."""
    name, sep, value = arg.partition("=")
    target = value if sep and not arg.startswith("-") else arg
    if not Path(target).exists():
        return arg
    relative = os.path.relpath(Path(target).resolve(), HERE)
    return f"{name}={relative}" if target is value else relative


def table(rows: dict[str, dict[str, float]]) -> str:
    lines = ["| row | " + " | ".join(f"P@{k}" for k in KS) + " |", "|---" * (len(KS) + 1) + "|"]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{r[str(k)]:.3f}" for k in KS) + " |")
    return "\n".join(lines)


def run(bundle: Path, benchmarks: dict[str, Path], cfg: HeadConfig, write: bool, out_json: Path,
        cache_dir: Path | None, command: str, root: Path | None = None,
        eval_only: dict[str, Path] | None = None) -> dict:
    """The whole stage (see the module docstring); returns the report also written to `out_json`.

    `benchmarks` train V, stop it early and fit the fusion; `eval_only` benchmarks are only
    measured (for one whose train split is another's, such as the hard preset of the synthetic
    benchmark, or to keep an old setting's figures). `root` is the repository root that recorded
    paths are made relative to."""
    eval_only = dict(eval_only or {})
    fit_on = list(benchmarks)
    benchmarks = {**benchmarks, **eval_only}
    t_start = time.time()
    manifest = json.loads((bundle / "manifest.json").read_text())
    vocab, size = manifest["tags"]["vocabulary"], manifest["input"]["height"]
    locations, dim = manifest["locations"], manifest["embedding_dim"]
    onnx_bundle = OnnxBundle(bundle, vocab, size, jpeg_draft_of(manifest))
    data = {name: load_benchmark(onnx_bundle, bundle, m, cache_dir,
                                 splits=SPLITS if name in fit_on else ("val", "test"))
            for name, m in benchmarks.items()}
    cands = {name: {s: mine(sp) for s, sp in splits.items()} for name, splits in data.items()}
    train = [(data[n]["train"], cands[n]["train"]) for n in fit_on if "train" in data[n]]
    val = [(data[n]["val"], cands[n]["val"]) for n in fit_on if "val" in data[n]]
    if not train or not val:
        raise ValueError("every benchmark needs train, val and test splits with user and shop images")
    old_v, old_u = ctx_weights_of(bundle / "ctx.onnx")
    old = ContextHead(locations, dim, old_v, old_u)
    t0 = time.time()
    head, history = train_head(train, val, locations, dim, cfg)
    train_s = time.time() - t0

    report: dict = {"bundle": rel(bundle, root), "model_version": manifest["model_version"],
                    "benchmarks": {n: rel(m, root) for n, m in benchmarks.items()}, "fit_on": fit_on,
                    "head_config": asdict(cfg),
                    "command": command, "machine": machine_description(), "history": history,
                    "rows": {}, "diagnostics": {}}
    scores: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for name in data:
        for s in ("val", "test"):
            sp, c = data[name][s], cands[name][s]
            sc = {"first": c.first, "old": ctx_scores(old, sp, c), "new": ctx_scores(head, sp, c)}
            scores.setdefault(name, {})[s] = sc
            rows = report["rows"].setdefault(name, {}).setdefault(s, {})
            rows["first pass (TagYNet shop, mean-pooled query)"] = pk(sp, c, sc["first"])
            rows["shipped CtxYNet re-rank (old V)"] = pk(sp, c, sc["old"])
            rows[f"CtxYNet re-rank, V retrained on mined top-{c.idx.shape[1]} ({cfg.loss})"] = pk(sp, c, sc["new"])
            top1 = c.idx[:, 0]
            report["diagnostics"].setdefault(name, {})[s] = {
                "queries": len(c.idx), "gallery_images": len(sp.es.gallery_paths),
                "product_among_candidates": float(c.positive.any(axis=1).mean()),
                "mean_abs_ctx_minus_first": {k: float(np.abs(sc[k] - c.first).mean()) for k in ("old", "new")},
                "top1_image_changed": {k: int((c.idx[np.arange(len(c.idx)), np.argmax(sc[k], axis=1)] != top1).sum())
                                       for k in ("old", "new")},
            }
    # Which V ships, and with what fusion: for the bundle's own V and the retrained one, the best
    # w > 0 on val (a ctx weight of zero is not a re-rank); the retrained V only replaces the old
    # one when its fused val score is strictly higher.
    first_val = {n: report["rows"][n]["val"]["first pass (TagYNet shop, mean-pooled query)"] for n in fit_on}
    fits = {}
    for variant in ("old", "new"):
        w, curve = fit_fusion({n: (data[n]["val"], cands[n]["val"], scores[n]["val"][variant]) for n in fit_on},
                              grid=FUSION_GRID[1:])
        fits[variant] = (w, curve, next(e for e in curve if e["w"] == w))
    chosen = "new" if fits["new"][2]["mean"] > fits["old"][2]["mean"] + 1e-12 else "old"
    w, curve, entry = fits[chosen]
    wins = losses = 0
    for n in fit_on:
        sp, c = data[n]["val"], cands[n]["val"]
        hit_first = product_ranks(sp, c, c.first) <= 1
        hit_fused = product_ranks(sp, c, fused(c, scores[n]["val"][chosen], w)) <= 1
        wins += int((hit_fused & ~hit_first).sum())
        losses += int((hit_first & ~hit_fused).sum())
    default, why = rerank_is_better(entry, first_val, (wins, losses))
    fusion = {"first_pass": round(1.0 - w, 4), "ctx": round(w, 4)}
    for variant in ("old", "new"):
        vw = fits[variant][0]
        label = f"{'shipped' if variant == 'old' else 'retrained'} V, fused {1 - vw:.2f}·first + {vw:.2f}·ctx (w fitted on val)"
        for name in data:
            for s in ("val", "test"):
                sp, c = data[name][s], cands[name][s]
                report["rows"][name][s][label] = pk(sp, c, fused(c, scores[name][s][variant], vw))
    report["fusion"] = {"w": w, **fusion, "v": chosen, "fitted_on": "val of " + ", ".join(fit_on),
                        "curves": {v: f[1] for v, f in fits.items()}}
    report["default"] = {"rerank": default, "why": why, "val_top1_gained": wins, "val_top1_lost": losses}
    report["train_seconds"] = round(train_s, 1)

    if write:
        version = manifest["model_version"]
        if chosen == "new":
            diffs = export_ctx(head, locations, dim, len(vocab), size, bundle)
            if max(diffs.values()) > 1e-4:
                raise RuntimeError(f"ctx parity failed: {diffs}")
            version = f"{version.split('-rr')[0]}-rr{cfg.loss[0]}"  # the re-rank scores changed
            onnx_bundle = OnnxBundle(bundle, vocab, size, jpeg_draft_of(manifest))
            rewrite_golden(bundle, onnx_bundle, version)
            manifest["model_version"] = version
            manifest["parity"]["max_abs_diff"].update(diffs)
        else:
            diffs = {}
        manifest["rerank"] = {"candidates": RERANK_CANDIDATES, "default": default, "fusion": fusion}
        evaluation = json.loads((bundle / "eval.json").read_text())
        evaluation.pop("shipped", None)
        # What the service returns for each benchmark the stage saw: the first pass, and the
        # re-rank exactly as the manifest now says (fused), at every K of eval.json
        # (`snapshop eval` prints these beside its own figures).
        ks = evaluation.get("ks", list(ALL_KS))
        shipped = {}
        for name in data:
            b = shipped.setdefault(name, {"manifest": rel(benchmarks[name], root), "first_pass": {}, "rerank": {}})
            for s in ("val", "test"):
                sp, c = data[name][s], cands[name][s]
                sc = fusion["first_pass"] * c.first + fusion["ctx"] * scores[name][s][chosen]
                b["first_pass"][s] = p_at_k(keys_of(sp, c, c.first), sp.es.query_products, sp.es.gallery_products, ks)
                b["rerank"][s] = p_at_k(keys_of(sp, c, sc), sp.es.query_products, sp.es.gallery_products, ks)
        evaluation["shipped"] = {"model_version": version, "rerank": manifest["rerank"], "benchmarks": shipped}
        evaluation["rerank_stage"] = {
            "what": "subnetwork V retrained on mined first-pass candidate lists (snapshop_ml.rerank)",
            "command": command, "rows": report["rows"], "fusion": {"w": w, **fusion, "v": chosen},
            "default": report["default"], "head_config": asdict(cfg),
        }
        (bundle / "eval.json").write_text(json.dumps(evaluation, indent=2) + "\n")
        manifest["evaluation"] = evaluation
        manifest.setdefault("training", {})["rerank_stage"] = {
            "command": command, "machine": report["machine"], "train_seconds": report["train_seconds"],
            "benchmarks": report["benchmarks"]}
        refresh_files(bundle, manifest)
        (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        report["written"] = {"model_version": version, "rerank": manifest["rerank"], "parity": diffs}
        log.info("wrote %s: %s, rerank %s", bundle, version, json.dumps(manifest["rerank"]))
    report["wall_time_s"] = round(time.time() - t_start, 1)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=str(HERE / "default"))
    ap.add_argument("--data", default=str(ROOT / "data/street2shop/manifest.csv"), help="synthetic benchmark manifest")
    ap.add_argument("--name", default="synthetic", help="what to call the --data benchmark in the reports")
    ap.add_argument("--real", default=None, help="real-photo benchmark manifest (docs/realphoto.md), optional")
    ap.add_argument("--also", action="append", default=[], metavar="NAME=MANIFEST",
                    help="a benchmark only measured, never trained or fitted on (repeatable)")
    ap.add_argument("--loss", choices=("listwise", "eq7"), default="listwise")
    ap.add_argument("--epochs", type=int, default=HeadConfig.epochs)
    ap.add_argument("--lr", type=float, default=HeadConfig.lr)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--cache-dir", default=str(HERE / ".cache/rerank"))
    ap.add_argument("--out", default=str(HERE / "runs/rerank/report.json"))
    ap.add_argument("--write", action="store_true", help="rewrite the bundle's ctx.onnx, manifest, eval.json, golden")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    benchmarks = {args.name: Path(args.data)}
    if args.real:
        benchmarks["real"] = Path(args.real) / "manifest.csv" if Path(args.real).is_dir() else Path(args.real)
    also = {}
    for text in args.also:
        name, sep, path = text.partition("=")
        if not sep or not name:
            print(f"error: --also needs NAME=MANIFEST, got {text!r}", file=sys.stderr)
            return 2
        also[name] = Path(path) / "manifest.csv" if Path(path).is_dir() else Path(path)
    for name, m in {**benchmarks, **also}.items():
        if not m.is_file():
            print(f"error: {name} benchmark manifest not found: {m}", file=sys.stderr)
            return 2
    command = "cd models && ../.venv/bin/python -m snapshop_ml.rerank " + " ".join(
        from_models(a) for a in (argv if argv is not None else sys.argv[1:]))
    cfg = HeadConfig(loss=args.loss, epochs=args.epochs, lr=args.lr, seed=args.seed)
    try:
        report = run(Path(args.bundle), benchmarks, cfg, args.write, Path(args.out),
                     Path(args.cache_dir) if args.cache_dir else None, command, eval_only=also)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, splits in report["rows"].items():
        for s, rows in splits.items():
            d = report["diagnostics"][name][s]
            print(f"\n{name} {s} ({d['queries']} queries, {d['gallery_images']} gallery images; product among the "
                  f"candidates for {d['product_among_candidates']:.3f})\n")
            print(table(rows))
    f = report["fusion"]
    print(f"\nshipping the {'retrained' if f['v'] == 'new' else 'bundle' + chr(39) + 's own'} V; fusion fitted on val: "
          f"w = {f['w']} (first_pass {f['first_pass']}, ctx {f['ctx']}); "
          f"re-rank default: {report['default']['rerank']} ({report['default']['why']})")
    print(f"wrote {args.out} ({report['wall_time_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
