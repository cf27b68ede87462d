"""Attention maths of subnetworks IV and V against hand computations."""

import torch

from snapshop_ml.network import NetConfig, YNet, context_attention, l2n, tag_attention


def test_tag_attention_matches_hand_computation():
    # Two locations, C = 2, one tag embedded as W^t = [[1, 0]].
    x = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])  # [N=1, L=2, C=2]
    tags = torch.tensor([[1.0]])
    w = torch.tensor([[1.0, 0.0]])
    pooled, a = tag_attention(x, tags, w)
    # logits = x_l . (W^t x^t) = [2, 0]; softmax = [e^2, 1] / (e^2 + 1)
    e2 = torch.exp(torch.tensor(2.0))
    expected_a = torch.tensor([[e2 / (e2 + 1), 1 / (e2 + 1)]])
    torch.testing.assert_close(a, expected_a)
    torch.testing.assert_close(pooled, expected_a[0, 0] * x[:, 0] + expected_a[0, 1] * x[:, 1])
    torch.testing.assert_close(a.sum(dim=1), torch.ones(1))


def test_zero_tags_reduce_to_mean_pooling():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 36, 8, generator=g)
    w = torch.randn(5, 8, generator=g)
    pooled, a = tag_attention(x, torch.zeros(3, 5), w)
    assert torch.equal(a, torch.full((3, 36), 1 / 36))
    torch.testing.assert_close(pooled, x.mean(dim=1), atol=1e-6, rtol=0)


def test_context_attention_matches_hand_computation():
    # L = 2, C = 2, one query, one candidate.
    o = torch.tensor([[[1.0, 0.0], [0.0, 3.0]]])  # [B=1, L=2, C=2]
    cand = torch.tensor([[[0.6, 0.8]]])  # [B=1, K=1, C=2]
    v = torch.tensor([1.0, 0.0])
    u = torch.tensor([[0.0, 0.0], [1.0, 1.0]])  # U_l rows
    attended, a = context_attention(o, cand, v, u)
    # phi_l = v.o_l + U_l.x = [1 + 0, 0 + 1.4] -> softmax([1, 1.4])
    logits = torch.tensor([1.0, 1.4])
    expected = torch.softmax(logits, 0)
    torch.testing.assert_close(a[0, 0], expected)
    torch.testing.assert_close(attended[0, 0], l2n(expected[0] * o[0, 0] + expected[1] * o[0, 1]))
    torch.testing.assert_close(a.sum(-1), torch.ones(1, 1))


def test_attention_weights_sum_to_one_and_embeddings_are_unit_norm():
    torch.manual_seed(0)
    m = YNet(NetConfig(num_tags=4, embed_dim=16, input_size=64)).eval()
    with torch.no_grad():
        m.tag_embed.normal_()
        m.ctx_v.normal_()
        m.ctx_u.normal_()
        img = torch.randn(2, 3, 64, 64)
        shop = m.forward_shop(img, torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 0]]))
        feats, user = m.forward_user(img)
        scores, att = m.rerank(feats, shop.unsqueeze(0).expand(2, -1, -1))
    torch.testing.assert_close(shop.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(user.norm(dim=1), torch.ones(2))
    assert feats.shape == (2, 4, 16)  # 64 / 32 = 2x2 grid
    torch.testing.assert_close(att.sum(-1), torch.ones(2, 2))
    assert bool((scores.abs() <= 1 + 1e-6).all())


def test_fresh_tagynet_and_ctxynet_start_from_mean_pooling():
    torch.manual_seed(0)
    m = YNet(NetConfig(num_tags=4, embed_dim=16, input_size=64)).eval()
    with torch.no_grad():
        img = torch.randn(2, 3, 64, 64)
        shared = m.shared(img)
        tags = torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 0]])
        torch.testing.assert_close(m.shop_embedding(shared, tags), m.shop_embedding(shared, None))
        feats, user = m.user_features(shared)
        cand = l2n(torch.randn(2, 3, 16))
        scores, _ = m.rerank(feats, cand)
        torch.testing.assert_close(scores, torch.einsum("bc,bkc->bk", user, cand), atol=1e-6, rtol=0)
