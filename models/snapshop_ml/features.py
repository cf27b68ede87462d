"""Cached activations of the frozen bottom of the network.

Training on two CPU cores is only affordable because the lower MobileNetV2 blocks never change
after ImageNet: their output for every image is computed once (the "stem" cache, blocks
0..FROZEN_STEM_BLOCKS-1) and, once YNet has fine-tuned the rest of subnetwork I, its output too
(the "shared" cache) for the TagYNet and CtxYNet stages, where subnetwork I is frozen (§5.2.3).
The generator pre-renders every street photo's distortions, so no online augmentation is lost.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .network import FROZEN_STEM_BLOCKS, pretrained_mobilenet_v2
from .preprocess import preprocess_file

log = logging.getLogger(__name__)


class ActivationCache:
    """Row i holds the activation of image `paths[i]`, stored as float16 to halve memory."""

    def __init__(self, paths: Sequence[str], data: torch.Tensor, device: torch.device | str = "cpu"):
        self.paths = list(paths)
        self.data = data  # stays in host memory; batches move to `device`
        self.device = torch.device(device)
        self.row = {p: i for i, p in enumerate(self.paths)}

    def get(self, paths: Sequence[str]) -> torch.Tensor:
        idx = torch.tensor([self.row[p] for p in paths], dtype=torch.long)
        batch = self.data.index_select(0, idx).to(self.device, non_blocking=True).float()
        return batch.contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def run_blocks(blocks: nn.Module, inputs: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Apply `blocks` to `inputs` in batches, returning float16 results."""
    blocks = blocks.eval().to(memory_format=torch.channels_last)
    device = next(blocks.parameters()).device
    outs = []
    for i in range(0, len(inputs), batch):
        x = inputs[i : i + batch].to(device).float().contiguous(memory_format=torch.channels_last)
        outs.append(blocks(x).to(torch.float16).cpu().contiguous())
    return torch.cat(outs) if outs else torch.empty(0)


def _cache_key(paths: Sequence[str], input_size: int, jpeg_draft: int = 0) -> str:
    # Without the draft the key is as it always was, so earlier caches stay valid.
    draft = f"|draft{int(jpeg_draft)}" if jpeg_draft else ""
    h = hashlib.sha256(f"stem-v1|{input_size}|{FROZEN_STEM_BLOCKS}{draft}".encode())
    for p in paths:
        st = Path(p).stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def stem_cache(paths: Sequence[str], input_size: int, cache_dir: Path | None,
               device: torch.device | str = "cpu", jpeg_draft: int = 0) -> ActivationCache:
    """Stem activations (ImageNet blocks only) for every image, from disk when already computed.
    `jpeg_draft`: the draft factor (`preprocess.jpeg_draft_of`; 0 for a full-size decode), as the
    service decodes for a bundle that sets it."""
    paths = sorted(set(str(p) for p in paths))
    file = None
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        file = cache_dir / f"stem-{_cache_key(paths, input_size, jpeg_draft)}.pt"
        if file.is_file():
            log.info("stem cache: loading %s", file)
            return ActivationCache(paths, torch.load(file, weights_only=True), device)
    stem = pretrained_mobilenet_v2().features[:FROZEN_STEM_BLOCKS].to(device)
    t0 = time.time()
    chunks = []
    chunk = 256
    for i in range(0, len(paths), chunk):
        imgs = np.stack([preprocess_file(p, input_size, jpeg_draft) for p in paths[i : i + chunk]])
        chunks.append(run_blocks(stem, torch.from_numpy(imgs)))
        log.info("stem cache: %d/%d images (%.0f s)", min(i + chunk, len(paths)), len(paths), time.time() - t0)
    data = torch.cat(chunks)
    if file is not None:
        tmp = file.with_suffix(".tmp")
        torch.save(data, tmp)
        tmp.rename(file)
    return ActivationCache(paths, data, device)


def derived_cache(base: ActivationCache, blocks: nn.Module) -> ActivationCache:
    """Apply further (frozen) blocks to a cache: e.g. the rest of subnetwork I after YNet."""
    return ActivationCache(base.paths, run_blocks(blocks, base.data), base.device)
