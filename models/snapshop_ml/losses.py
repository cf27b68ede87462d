"""Metric-learning losses: the standard triplet loss (YNet, TagYNet), the adapted four-input
triplet loss of Eq. 7 (CtxYNet), and batch-hard negative mining (Hermans et al., 2017) as the
improvement from later work.

All distances are Euclidean between L2-normalised embeddings, as in §4.4.
"""

from __future__ import annotations

import torch


def euclidean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Euclidean distance, with a floor so the gradient at 0 stays finite."""
    return ((a - b).pow(2).sum(dim=-1) + 1e-12).sqrt()


def pairwise_euclidean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[P, C] x [Q, C] -> [P, Q] distances."""
    return (torch.cdist(a, b).pow(2) + 1e-12).sqrt()


def triplet_loss(o: torch.Tensor, p: torch.Tensor, q: torch.Tensor, margin: float) -> torch.Tensor:
    """Standard triplet loss, mean over the batch: max(0, d(o,p) - d(o,q) + margin)."""
    return torch.relu(euclidean(o, p) - euclidean(o, q) + margin).mean()


def adapted_triplet_loss(
    o_p: torch.Tensor, p: torch.Tensor, o_q: torch.Tensor, q: torch.Tensor, margin: float
) -> torch.Tensor:
    """Eq. 7: the anchor has one representation per context, o_p (attended w.r.t. p) and o_q."""
    return torch.relu(euclidean(o_p, p) - euclidean(o_q, q) + margin).mean()


def choose_negatives(
    dist: torch.Tensor,
    anchor_products: torch.Tensor,
    shop_products: torch.Tensor,
    mode: str,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Index (column of `dist`) of one negative per anchor (row).

    dist: [P, Q] anchor-to-shop distances. Mode "random" picks a uniformly random shop image of
    another product in the batch (the paper's sampling); mode "hard" picks the closest one
    (batch-hard mining). Every anchor needs a shop image of another product in its batch.
    """
    different = anchor_products[:, None] != shop_products[None, :]
    if not bool(different.any(dim=1).all()):
        raise ValueError("every anchor needs a negative of another product in its batch")
    if mode == "hard":
        return dist.detach().masked_fill(~different, float("inf")).argmin(dim=1)
    if mode == "random":
        noise = torch.rand(different.shape, generator=generator).to(different.device)
        return noise.masked_fill(~different, -1.0).argmax(dim=1)
    raise ValueError(f"unknown negative mining mode {mode!r}")
