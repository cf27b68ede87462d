"""Training, as in §5.2.3: YNet, then TagYNet, then CtxYNet, each starting from the previous.

- YNet: ImageNet init, standard triplet loss, margin 0.3 (subnetwork I's top blocks, II, III).
- TagYNet: subnetwork I frozen, margin 0.3 (II, III, IV).
- CtxYNet: subnetwork I frozen, adapted four-input triplet loss (Eq. 7), margin 0.5 (III, V).
  II and IV stay fixed so the shop embeddings in the index are exactly TagYNet's; a standard
  triplet term on the mean-pooled query keeps the first pass as good as TagYNet left it.
- SGD, momentum 0.9, cosine-decaying learning rate; seeded; logs to `<out>/train.log`.
- Improvement from later work: batch-hard negative mining (Hermans et al. 2017) instead of the
  paper's random negatives, for TagYNet and CtxYNet. Both chains are trained from the same YNet;
  the one with the better validation P@20 after CtxYNet is shipped.

Usage (from models/): python -m snapshop_ml.train --data ../data/street2shop/manifest.csv --out runs/default
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .data.loaders import load_dataset
from .evaluate import EvalSet, evaluate_model, p_at_k, pretrained_embeddings, tag_matrix
from .features import ActivationCache, derived_cache, stem_cache
from .losses import adapted_triplet_loss, choose_negatives, pairwise_euclidean, triplet_loss
from .network import FROZEN_STEM_BLOCKS, NetConfig, YNet, context_attention, pretrained_mobilenet_v2, set_bn_eval
from .preprocess import DRAFT_FACTOR

log = logging.getLogger("snapshop_ml.train")


@dataclass
class TrainConfig:
    data: str
    out: str
    seed: int = 0
    input_size: int = 192
    embed_dim: int = 256
    batch: int = 32
    lr: float = 0.01
    attention_lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    steps_ynet: int = 120
    steps_tag: int = 120
    steps_ctx: int = 150
    margin_ynet: float = 0.3
    margin_tag: float = 0.3
    margin_ctx: float = 0.5
    threads: int = 0
    cache_dir: str = ".cache"
    device: str = "auto"
    # Decode JPEGs at a DCT scale before the resize (Pillow's draft() for jpeg_draft x the input
    # size; 0: a full decode), in training, evaluation and the exported manifest's
    # `preprocess.jpeg_draft(_factor)`, so the service decodes a 12 MP photo at 1/4 scale and
    # sees the pixels the model was trained on.
    jpeg_draft: int = DRAFT_FACTOR
    # Issue 7 part 2, the tools against forgetting (all off by default; docs/forgetting.md has the
    # ablation that decided which the shipped bundle uses):
    # - `distill` > 0: "learning without forgetting", a similarity-preserving distillation term
    #   (Tung & Mori 2019) on the train-split images of `distill_data` (a real-photo manifest):
    #   the cosine-similarity matrix of a batch of them under each trained branch is pulled
    #   towards the frozen ImageNet network's (mean-pooled 1280-d), weight `distill`.
    # - `real_data`: the train split of a real-photo manifest joins training as extra products,
    #   `real_fraction` of every batch (at most all of them).
    # - `backbone_lr_scale`: the learning rate of subnetwork I's fine-tuned blocks in the YNet
    #   stage, relative to `lr`.
    distill: float = 0.0
    distill_data: str = ""
    distill_batch: int = 32
    real_data: str = ""
    real_fraction: float = 0.25
    backbone_lr_scale: float = 1.0


class TrainingError(RuntimeError):
    """The data cannot be trained on (too few products, no shop images, ...)."""


class Sampler:
    """Product-balanced batches: P distinct products, one street photo and one shop image each.
    With `extra` products (real photos), `extra_fraction` of each batch is drawn from them."""

    def __init__(self, users, shops, seed: int, device: torch.device, extra_users=(), extra_shops=(),
                 extra_fraction: float = 0.0):
        self.device = device
        self.user_by_product: dict[str, list[str]] = {}
        self.shop_by_product: dict[str, list] = {}
        for r in list(users) + list(extra_users):
            self.user_by_product.setdefault(r.product_id, []).append(str(r.path))
        for r in list(shops) + list(extra_shops):
            self.shop_by_product.setdefault(r.product_id, []).append(r)
        both = set(self.user_by_product) & set(self.shop_by_product)
        extra_ids = {r.product_id for r in extra_users} | {r.product_id for r in extra_shops}
        if extra_ids & ({r.product_id for r in users} | {r.product_id for r in shops}):
            raise TrainingError("the real-photo products share ids with the training data's")
        self.products = sorted(both - extra_ids)
        self.extra = sorted(both & extra_ids)
        self.extra_fraction = extra_fraction if self.extra else 0.0
        self.rng = np.random.default_rng(seed)

    def batch(self, size: int):
        if len(self.products) < 2:
            raise TrainingError("training needs at least two products with both street and shop images")
        n_extra = min(int(round(size * self.extra_fraction)), len(self.extra))
        chosen = self.rng.choice(len(self.products), size=min(size - n_extra, len(self.products)), replace=False)
        prods = [self.products[i] for i in chosen]
        if n_extra:
            prods += [self.extra[i] for i in self.rng.choice(len(self.extra), size=n_extra, replace=False)]
        anchors = [self.user_by_product[p][self.rng.integers(len(self.user_by_product[p]))] for p in prods]
        positives = [self.shop_by_product[p][self.rng.integers(len(self.shop_by_product[p]))] for p in prods]
        return torch.arange(len(prods), device=self.device), anchors, positives


class Distiller:
    """Learning without forgetting, as a similarity-preserving term (Tung & Mori, ICCV 2019): on
    a random batch of real photographs, the cosine-similarity matrix of a trained branch's
    embeddings should equal the frozen ImageNet network's (`teacher`, mean-pooled 1280-d, unit
    norm). Comparing similarities, not features, lets a 256-d branch follow a 1280-d teacher."""

    def __init__(self, paths: list[str], teacher: torch.Tensor, weight: float, batch: int, seed: int):
        self.paths, self.teacher, self.weight, self.batch = paths, teacher, weight, batch
        self.rng = np.random.default_rng([seed, 7])

    def term(self, branches) -> torch.Tensor:
        """`branches`: functions from a list of paths to unit embeddings [N, C] (those trained)."""
        idx = self.rng.choice(len(self.paths), size=min(self.batch, len(self.paths)), replace=False)
        t = self.teacher[torch.from_numpy(idx)].to(self.teacher.device)
        target = t @ t.T
        paths = [self.paths[i] for i in idx]
        loss = sum(((e := f(paths)) @ e.T - target).pow(2).mean() for f in branches)
        return self.weight * loss


def with_distill(step_fn, distiller: "Distiller | None", branches):
    """`step_fn` plus the distillation term over `branches`, when distillation is on."""
    if distiller is None:
        return step_fn

    def step():
        loss, extra = step_fn()
        d = distiller.term(branches)
        return loss + d, f"{extra} lwf {d.item():.4f}".strip()

    return step


def make_optimizer(groups, cfg: TrainConfig, steps: int):
    opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    return opt, sched


def params_of(*modules):
    return [p for m in modules for p in (m.parameters() if isinstance(m, torch.nn.Module) else [m])]


def set_trainable(model: YNet, trainable: list) -> None:
    ids = {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad_(id(p) in ids)


def start_stage(model: YNet, backbone: list, attention: list, cfg: TrainConfig, steps: int, slow: list = ()):
    """Freeze everything but `backbone` + `attention`, and give the zero-initialised attention
    parameters their own learning rate and no weight decay; the parameters of `backbone` that
    are in `slow` train at `cfg.backbone_lr_scale` times the learning rate."""
    set_trainable(model, backbone + attention)
    model.train()
    set_bn_eval(model)
    slow_ids = {id(p) for p in slow}
    groups = [{"params": [p for p in backbone if id(p) not in slow_ids]}]
    if slow:
        groups.append({"params": list(slow), "lr": cfg.lr * cfg.backbone_lr_scale})
    if attention:
        groups.append({"params": attention, "lr": cfg.attention_lr, "weight_decay": 0.0})
    return make_optimizer(groups, cfg, steps)


def run_steps(name: str, steps: int, opt, sched, step_fn, params) -> None:
    t0 = time.time()
    running = None
    for step in range(1, steps + 1):
        opt.zero_grad(set_to_none=True)
        loss, extra = step_fn()
        if not torch.isfinite(loss):
            raise TrainingError(f"{name}: loss became {loss.item()} at step {step}")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        if step % 10 == 0 or step == steps:
            log.info("%s step %d/%d loss %.4f (avg %.4f) %s lr %.4g %.1fs", name, step, steps, loss.item(), running,
                     extra, sched.get_last_lr()[0], time.time() - t0)


def train_ynet(model: YNet, stem: ActivationCache, sampler: Sampler, cfg: TrainConfig, mode: str,
               distiller: Distiller | None = None) -> None:
    shared_top = model.shared[FROZEN_STEM_BLOCKS:]
    trainable = params_of(shared_top, model.shop_top, model.user_top, model.shop_proj, model.user_proj)
    slow = list(shared_top.parameters()) if cfg.backbone_lr_scale != 1.0 else []
    opt, sched = start_stage(model, trainable, [], cfg, cfg.steps_ynet, slow)
    gen = torch.Generator().manual_seed(cfg.seed + 1)

    def step():
        prods, anchors, positives = sampler.batch(cfg.batch)
        _, o = model.user_features(shared_top(stem.get(anchors)))
        p = model.shop_embedding(shared_top(stem.get([str(r.path) for r in positives])), None)
        neg = choose_negatives(pairwise_euclidean(o, p), prods, prods, mode, gen)
        return triplet_loss(o, p, p[neg], cfg.margin_ynet), ""

    branches = (lambda ps: model.user_features(shared_top(stem.get(ps)))[1],
                lambda ps: model.shop_embedding(shared_top(stem.get(ps)), None))
    run_steps("ynet", cfg.steps_ynet, opt, sched, with_distill(step, distiller, branches), trainable)


def train_tagynet(model: YNet, shared: ActivationCache, sampler: Sampler, vocab, cfg: TrainConfig, mode: str,
                  distiller: Distiller | None = None) -> None:
    attention = [model.tag_embed]
    backbone = params_of(model.shop_top, model.user_top, model.shop_proj, model.user_proj)
    opt, sched = start_stage(model, backbone, attention, cfg, cfg.steps_tag)
    gen = torch.Generator().manual_seed(cfg.seed + 2)

    def step():
        prods, anchors, positives = sampler.batch(cfg.batch)
        _, o = model.user_features(shared.get(anchors))
        tags = tag_matrix([r.tags for r in positives], vocab).to(sampler.device)
        p = model.shop_embedding(shared.get([str(r.path) for r in positives]), tags)
        neg = choose_negatives(pairwise_euclidean(o, p), prods, prods, mode, gen)
        return triplet_loss(o, p, p[neg], cfg.margin_tag), f"|W|={model.tag_embed.norm():.3f}"

    # Real photos carry no vocabulary tags: their shop embedding is the mean-pooled one.
    branches = (lambda ps: model.user_features(shared.get(ps))[1],
                lambda ps: model.shop_embedding(shared.get(ps), None))
    run_steps(f"tagynet[{mode}]", cfg.steps_tag, opt, sched, with_distill(step, distiller, branches),
              backbone + attention)


@torch.no_grad()
def shop_embeddings(model: YNet, shared: ActivationCache, records, vocab) -> dict[str, torch.Tensor]:
    model.eval()
    out = {}
    for i in range(0, len(records), 128):
        chunk = records[i : i + 128]
        tags = tag_matrix([r.tags for r in chunk], vocab).to(shared.device)
        emb = model.shop_embedding(shared.get([str(r.path) for r in chunk]), tags)
        out.update({str(r.path): e for r, e in zip(chunk, emb)})
    return out


def train_ctxynet(model: YNet, shared: ActivationCache, sampler: Sampler, shop_records, vocab, cfg: TrainConfig,
                  mode: str, distiller: Distiller | None = None) -> None:
    shop = shop_embeddings(model, shared, shop_records, vocab)  # II + IV are fixed in this stage
    attention = [model.ctx_v, model.ctx_u]
    backbone = params_of(model.user_top, model.user_proj)
    opt, sched = start_stage(model, backbone, attention, cfg, cfg.steps_ctx)
    gen = torch.Generator().manual_seed(cfg.seed + 3)

    def step():
        prods, anchors, positives = sampler.batch(cfg.batch)
        maps, o = model.user_features(shared.get(anchors))
        p = torch.stack([shop[str(r.path)] for r in positives])  # [P, C]
        # Every anchor attends with respect to every shop image in the batch: [P, P, C].
        attended, _ = context_attention(maps, p.unsqueeze(0).expand(len(p), -1, -1), model.ctx_v, model.ctx_u)
        dist = ((attended - p.unsqueeze(0)).pow(2).sum(-1) + 1e-12).sqrt()  # d(o_x, x) for each pair
        neg = choose_negatives(dist, prods, prods, mode, gen)
        rows = torch.arange(len(p))
        ctx_loss = adapted_triplet_loss(attended[rows, rows], p, attended[rows, neg], p[neg], cfg.margin_ctx)
        neg_fp = choose_negatives(pairwise_euclidean(o, p), prods, prods, mode, gen)
        first_pass = triplet_loss(o, p, p[neg_fp], cfg.margin_tag)
        return ctx_loss + first_pass, f"ctx {ctx_loss.item():.4f} fp {first_pass.item():.4f}"

    branches = (lambda ps: model.user_features(shared.get(ps))[1],)  # only III is trained here
    run_steps(f"ctxynet[{mode}]", cfg.steps_ctx, opt, sched, with_distill(step, distiller, branches),
              backbone + attention)


def setup_logging(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for h in (logging.FileHandler(out / "train.log", mode="w"), logging.StreamHandler(sys.stdout)):
        h.setFormatter(fmt)
        root.addHandler(h)


def machine_description() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}), torch {torch.__version__}"


def save_row(model: YNet, net_cfg: NetConfig, vocab: list[str], path: Path) -> None:
    """One row's model (YNet, each chain's TagYNet and CtxYNet), so that every row of the results
    table can be evaluated later on another benchmark (`snapshop_ml.evaluate_rows`)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "net": net_cfg.to_dict(), "vocabulary": vocab}, path)


def real_train_records(manifest: str) -> tuple[list, list]:
    """(user, shop) records of the train split of a real-photo manifest; nothing for "". Only the
    train split is ever read: the val and test photos stay out of training (docs/realphoto.md)."""
    if not manifest:
        return [], []
    ds = load_dataset(Path(manifest))
    users, shops = ds.subset("train", "user"), ds.subset("train", "shop")
    if not users and not shops:
        raise TrainingError(f"{manifest}: no train split")
    return users, shops


def train(cfg: TrainConfig) -> dict:
    """Run the three stages (two chains) and return the results table; writes <out>/final.pt."""
    out = Path(cfg.out)
    t_start = time.time()
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    want_cuda = cfg.device in ("auto", "cuda") and torch.cuda.is_available()
    if cfg.device == "cuda" and not want_cuda:
        raise TrainingError("--device cuda was asked for but torch sees no CUDA device")
    device = torch.device("cuda" if want_cuda else "cpu")
    log.info("training on %s", device)
    ds = load_dataset(Path(cfg.data))
    vocab = ds.tag_vocabulary()
    train_users, train_shops = ds.subset("train", "user"), ds.subset("train", "shop")
    if not train_users or not train_shops:
        raise TrainingError(f"{cfg.data}: the train split needs both user and shop images")
    sets = {s: EvalSet.from_records(ds.subset(s, "user"), ds.subset(s, "shop")) for s in ("val", "test")}
    for s, es in sets.items():
        if not es.query_paths or not es.gallery_paths:
            raise TrainingError(f"{cfg.data}: the {s} split needs user and shop images")
    log.info("data %s: %s", cfg.data, json.dumps(ds.stats()))
    log.info("config %s", json.dumps(asdict(cfg)))
    log.info("vocabulary (%d): %s", len(vocab), " ".join(vocab))

    real = {m: real_train_records(m) for m in {cfg.real_data, cfg.distill_data if cfg.distill else ""} if m}
    real_users, real_shops = real.get(cfg.real_data, ([], []))
    distill_paths = sorted({str(r.path) for rs in real.get(cfg.distill_data, ()) for r in rs}) if cfg.distill else []
    if cfg.distill and not distill_paths:
        raise TrainingError("--distill needs --distill-data with a train split of images")
    all_paths = [str(r.path) for r in ds.records + real_users + real_shops] + distill_paths
    t0 = time.time()
    stem = stem_cache(all_paths, cfg.input_size, Path(cfg.cache_dir), device, cfg.jpeg_draft)
    timings = {"stem_cache_s": round(time.time() - t0, 1)}

    results: dict[str, dict] = {}

    def record(row: str, split: str, pk: dict):
        results.setdefault(row, {})[split] = pk
        log.info("P@K %-28s %-4s %s", row, split, " ".join(f"@{k}={v:.3f}" for k, v in pk.items()))

    pretrained_top = pretrained_mobilenet_v2().features[FROZEN_STEM_BLOCKS:].to(device, memory_format=torch.channels_last)
    es = sets["test"]
    q = pretrained_embeddings(pretrained_top, es.query_paths, stem)
    g = pretrained_embeddings(pretrained_top, es.gallery_paths, stem)
    record("pretrained", "test", p_at_k((q @ g.T).double().cpu().numpy(), es.query_products, es.gallery_products))

    net_cfg = NetConfig(num_tags=len(vocab), embed_dim=cfg.embed_dim, input_size=cfg.input_size)
    sampler = Sampler(train_users, train_shops, cfg.seed, device, real_users, real_shops, cfg.real_fraction)
    distiller = None
    if distill_paths:
        teacher = pretrained_embeddings(pretrained_top, distill_paths, stem).to(device)
        distiller = Distiller(distill_paths, teacher, cfg.distill, cfg.distill_batch, cfg.seed)
        log.info("distillation on %d real photos, weight %g", len(distill_paths), cfg.distill)
    if real_users:
        log.info("real photos in training: %d products, %.0f%% of each batch", len(sampler.extra),
                 100 * sampler.extra_fraction)
    # Re-seed here: building the stem (only when its cache is cold) and the pretrained row draw
    # from torch's global generator, and YNet's projection is initialised from it; without this
    # a run with a warm cache trained a different network from the same seed.
    torch.manual_seed(cfg.seed)
    ynet = YNet(net_cfg).to(device, memory_format=torch.channels_last)
    t0 = time.time()
    train_ynet(ynet, stem, sampler, cfg, "random", distiller)
    timings["ynet_s"] = round(time.time() - t0, 1)
    record("ynet", "test", evaluate_model(ynet, sets["test"], stem, False, None, rerank=False)["first_pass"])
    save_row(ynet, net_cfg, vocab, out / "ynet.pt")

    shared = derived_cache(stem, ynet.shared[FROZEN_STEM_BLOCKS:])
    chains = {}
    for mode, suffix in (("random", ""), ("hard", "+batch-hard")):
        t0 = time.time()
        tag = copy.deepcopy(ynet)
        train_tagynet(tag, shared, sampler, vocab, cfg, mode, distiller)
        record(f"tagynet{suffix}", "test", evaluate_model(tag, sets["test"], shared, True, vocab, False)["first_pass"])
        ctx = copy.deepcopy(tag)
        train_ctxynet(ctx, shared, sampler, train_shops + real_shops, vocab, cfg, mode, distiller)
        for split, es in sets.items():
            pk = evaluate_model(ctx, es, shared, True, vocab, rerank=True)
            record(f"ctxynet{suffix}", split, pk["rerank"])
            record(f"ctxynet{suffix} first pass", split, pk["first_pass"])
        chains[mode] = (tag, ctx)
        save_row(tag, net_cfg, vocab, out / f"tagynet-{mode}.pt")
        save_row(ctx, net_cfg, vocab, out / f"ctxynet-{mode}.pt")
        timings[f"chain_{mode}_s"] = round(time.time() - t0, 1)

    best = max(("random", "hard"), key=lambda m: (results[f"ctxynet{'' if m == 'random' else '+batch-hard'}"]["val"]["20"], m == "random"))
    log.info("shipping the %s-negative chain (validation P@20)", best)
    final = chains[best][1]
    timings["total_s"] = round(time.time() - t_start, 1)
    summary = {
        "results": results,
        "shipped_chain": best,
        "vocabulary": vocab,
        "net": net_cfg.to_dict(),
        "train_config": asdict(cfg),
        "timings": timings,
        "machine": machine_description(),
        "dataset": {"source": cfg.data, "stats": ds.stats()},
    }
    final = final.cpu()
    torch.save({"state_dict": final.state_dict(), "net": net_cfg.to_dict(), "vocabulary": vocab}, out / "final.pt")
    torch.save({"state_dict": chains[best][0].cpu().state_dict(), "net": net_cfg.to_dict(), "vocabulary": vocab},
               out / "tagynet.pt")
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    log.info("done in %.0f s: %s", timings["total_s"], json.dumps(timings))
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = TrainConfig(data="", out="")
    ap.add_argument("--data", required=True, help="CSV manifest or DeepFashion Consumer-to-shop root")
    ap.add_argument("--out", required=True, help="run directory (checkpoints, train.log, results.json)")
    for field, value in asdict(defaults).items():
        if field in ("data", "out"):
            continue
        ap.add_argument(f"--{field.replace('_', '-')}", type=type(value), default=value)
    args = ap.parse_args(argv)
    cfg = TrainConfig(**vars(args))
    setup_logging(Path(cfg.out))
    try:
        train(cfg)
    except (TrainingError, ValueError, FileNotFoundError) as exc:
        log.error("training failed: %s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
