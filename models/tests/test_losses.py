"""Triplet losses and negative mining."""

import math

import pytest
import torch

from snapshop_ml.losses import adapted_triplet_loss, choose_negatives, pairwise_euclidean, triplet_loss


def test_triplet_loss_hand_values():
    o = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    q = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    # anchor 0: d(o,p)=0, d(o,q)=sqrt2 -> max(0, 0 - 1.414 + 0.3) = 0
    # anchor 1: d(o,p)=sqrt2, d(o,q)=0 -> sqrt2 + 0.3
    expected = (0.0 + math.sqrt(2) + 0.3) / 2
    assert triplet_loss(o, p, q, 0.3).item() == pytest.approx(expected, abs=1e-5)


def test_adapted_loss_uses_one_anchor_representation_per_context():
    p = torch.tensor([[1.0, 0.0]])
    q = torch.tensor([[0.0, 1.0]])
    o_p = torch.tensor([[1.0, 0.0]])  # attended w.r.t. p: matches p
    o_q = torch.tensor([[0.0, 1.0]])  # attended w.r.t. q: matches q
    # d(o_p, p) = 0, d(o_q, q) = 0 -> loss = margin
    assert adapted_triplet_loss(o_p, p, o_q, q, 0.5).item() == pytest.approx(0.5, abs=1e-5)
    # With a single shared representation it would differ: this is what Eq. 7 changes.
    assert triplet_loss(o_p, p, q, 0.5).item() == pytest.approx(0.0, abs=1e-5)


def test_loss_gradients_are_finite_at_zero_distance():
    o = torch.tensor([[1.0, 0.0]], requires_grad=True)
    triplet_loss(o, o.detach().clone(), torch.tensor([[1.0, 0.0]]), 0.3).backward()
    assert torch.isfinite(o.grad).all()


def test_batch_hard_picks_the_closest_other_product():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.866]])
    shops = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    prods = torch.tensor([0, 1, 2])
    neg = choose_negatives(pairwise_euclidean(anchors, shops), prods, prods, "hard")
    assert neg.tolist() == [2, 2, 1]


def test_random_negatives_never_pick_the_same_product():
    g = torch.Generator().manual_seed(0)
    prods = torch.tensor([0, 0, 1, 2, 3])
    for _ in range(20):
        neg = choose_negatives(torch.zeros(5, 5), prods, prods, "random", g)
        assert all(prods[i] != prods[n] for i, n in enumerate(neg.tolist()))


def test_a_batch_of_one_product_is_refused():
    with pytest.raises(ValueError, match="negative"):
        choose_negatives(torch.zeros(2, 2), torch.tensor([0, 0]), torch.tensor([0, 0]), "hard")
