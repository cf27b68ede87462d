"""Retrieval evaluation: the paper's P@K (Eq. 8), computed the way the service answers.

A query is a street photo; the gallery is every shop image of the split (distractor products
included). Results are products: a product ranks at its best image, as the service groups them.
hit(q, K) = 1 when the query's product is among the top K products; P@K = mean hit.

Rows:
1. pretrained MobileNetV2, mean-pooled on both sides (the paper's "NIN" row);
2. YNet, 3. TagYNet (first pass only);
4. CtxYNet: TagYNet first pass, then the top 256 images re-ranked by subnetwork V, exactly as the
   service does (candidates outside the top 256 are never returned).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .features import ActivationCache
from .network import FROZEN_STEM_BLOCKS, YNet, l2n

KS = (1, 5, 10, 20, 50, 100)
RERANK_CANDIDATES = 256


@dataclass
class EvalSet:
    """Queries and gallery of one split, with product ids mapped to integers."""

    query_paths: list[str]
    query_products: np.ndarray
    gallery_paths: list[str]
    gallery_products: np.ndarray
    gallery_tags: list[tuple[str, ...]]

    @classmethod
    def from_records(cls, queries: Sequence, gallery: Sequence) -> "EvalSet":
        ids: dict[str, int] = {}
        def pid(r):
            return ids.setdefault(r.product_id, len(ids))
        return cls(
            query_paths=[str(r.path) for r in queries],
            query_products=np.array([pid(r) for r in queries], dtype=np.int64),
            gallery_paths=[str(r.path) for r in gallery],
            gallery_products=np.array([pid(r) for r in gallery], dtype=np.int64),
            gallery_tags=[tuple(r.tags) for r in gallery],
        )


def tag_matrix(tags: Sequence[Sequence[str]], vocab: Sequence[str]) -> torch.Tensor:
    """Multi-hot [N, T] over the vocabulary; unknown tags are ignored (as the service does)."""
    index = {t: i for i, t in enumerate(vocab)}
    m = torch.zeros(len(tags), len(vocab))
    for row, ts in enumerate(tags):
        for t in ts:
            if t in index:
                m[row, index[t]] = 1.0
    return m


def p_at_k(keys: np.ndarray, query_products: np.ndarray, gallery_products: np.ndarray, ks=KS) -> dict[str, float]:
    """P@K from a [Q, G] matrix of ranking keys (higher first; -inf = never returned).

    Each product takes its best image's key; a query's product rank is one plus the number of
    products with a strictly higher key.
    """
    num_products = int(max(query_products.max(initial=0), gallery_products.max(initial=0))) + 1
    prod_keys = np.full((keys.shape[0], num_products), -np.inf, dtype=np.float64)
    for g, p in enumerate(gallery_products):
        np.maximum(prod_keys[:, p], keys[:, g], out=prod_keys[:, p])
    own = prod_keys[np.arange(len(query_products)), query_products]
    rank = 1 + (prod_keys > own[:, None]).sum(axis=1)
    rank = np.where(np.isfinite(own), rank, np.iinfo(np.int64).max)
    return {str(k): float((rank <= k).mean()) for k in ks}


@torch.no_grad()
def _batched(fn, inputs: Sequence[str], cache: ActivationCache, batch: int = 128):
    outs = []
    for i in range(0, len(inputs), batch):
        outs.append(fn(cache.get(inputs[i : i + batch]), slice(i, i + batch)))
    return outs


@torch.no_grad()
def pretrained_embeddings(top: torch.nn.Module, paths: Sequence[str], stem: ActivationCache) -> torch.Tensor:
    """Row 1: pretrained blocks on top of the stem, mean-pooled 1280-d, normalised."""
    top = top.eval()
    return torch.cat(_batched(lambda x, _: l2n(top(x).mean(dim=(2, 3))), paths, stem))


@torch.no_grad()
def model_embeddings(
    model: YNet, es: EvalSet, cache: ActivationCache, cache_is_shared: bool, vocab: Sequence[str] | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(user maps [Q,L,C], user embeddings [Q,C], shop embeddings [G,C]) for a split.

    `cache_is_shared` says whether the cache already holds subnetwork I's output (the stem
    otherwise); `vocab` None means mean-pooled shop embeddings (YNet), else tag attention.
    """
    model = model.eval()
    rest = (lambda x: x) if cache_is_shared else model.shared[FROZEN_STEM_BLOCKS:]
    tags = tag_matrix(es.gallery_tags, vocab) if vocab is not None else None
    maps, embs = zip(*_batched(lambda x, _: model.user_features(rest(x)), es.query_paths, cache))
    shop = _batched(
        lambda x, sl: model.shop_embedding(rest(x), None if tags is None else tags[sl].to(x.device)),
        es.gallery_paths,
        cache,
    )
    return torch.cat(maps), torch.cat(embs), torch.cat(shop)


@torch.no_grad()
def rerank_keys(
    model: YNet, maps: torch.Tensor, first: np.ndarray, shop: torch.Tensor, n: int = RERANK_CANDIDATES, batch: int = 32
) -> np.ndarray:
    """Ranking keys after CtxYNet re-ranks the top `n` first-pass images of every query.

    Candidates get their re-rank score; every other image -inf, since the service never
    returns an image outside its candidate list.
    """
    n = min(n, first.shape[1])
    top = np.argsort(-first, axis=1, kind="stable")[:, :n]
    keys = np.full(first.shape, -np.inf, dtype=np.float64)
    for i in range(0, len(maps), batch):
        idx = torch.from_numpy(top[i : i + batch]).to(shop.device)
        scores, _ = model.rerank(maps[i : i + batch], shop[idx])
        np.put_along_axis(keys[i : i + batch], top[i : i + batch], scores.double().cpu().numpy(), axis=1)
    return keys


def evaluate_model(
    model: YNet, es: EvalSet, cache: ActivationCache, cache_is_shared: bool, vocab: Sequence[str] | None, rerank: bool
) -> dict[str, dict[str, float]]:
    """P@K of one trained model on one split: {"first_pass": ..., and "rerank": ... if asked}."""
    maps, user, shop = model_embeddings(model, es, cache, cache_is_shared, vocab)
    first = (user @ shop.T).double().cpu().numpy()
    out = {"first_pass": p_at_k(first, es.query_products, es.gallery_products)}
    if rerank:
        out["rerank"] = p_at_k(rerank_keys(model, maps, first, shop), es.query_products, es.gallery_products)
    return out
