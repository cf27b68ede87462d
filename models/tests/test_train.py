"""The tools against forgetting in `train.py` (issue 7 part 2): real photos as extra products,
the distillation term, the backbone learning rate; and that all of them are off by default."""

import csv
import json

import pytest
import torch

from snapshop_ml import ablate, train
from snapshop_ml.data import synth
from snapshop_ml.data.records import ImageRecord

from realstub import real_like


def records(prefix, n, domain, split="train"):
    return [ImageRecord(path=f"/x/{prefix}{i}_{domain}.jpg", product_id=f"{prefix}{i}", domain=domain, split=split,
                        tags=()) for i in range(n)]


def test_sampler_draws_its_fraction_of_extra_products():
    s = train.Sampler(records("p", 20, "user"), records("p", 20, "shop"), 0, torch.device("cpu"),
                      records("rp", 6, "user"), records("rp", 6, "shop"), 0.25)
    for _ in range(20):
        _, anchors, positives = s.batch(8)
        ids = [r.product_id for r in positives]
        assert len(set(ids)) == 8
        assert sum(i.startswith("rp") for i in ids) == 2
        assert all(a.split("/")[-1].split("_")[0] == p for a, p in zip(anchors, ids))  # same product


def test_sampler_without_extra_products_draws_as_before():
    users, shops = records("p", 20, "user"), records("p", 20, "shop")
    a = train.Sampler(users, shops, 3, torch.device("cpu"))
    b = train.Sampler(users, shops, 3, torch.device("cpu"), [], [], 0.25)
    for _ in range(5):
        assert a.batch(8)[1] == b.batch(8)[1]


def test_sampler_refuses_real_products_that_share_ids():
    with pytest.raises(train.TrainingError, match="share ids"):
        train.Sampler(records("p", 4, "user"), records("p", 4, "shop"), 0, torch.device("cpu"),
                      records("p", 2, "user"), records("p", 2, "shop"), 0.5)


def test_distillation_is_zero_when_the_branch_keeps_the_teachers_similarities():
    teacher = torch.nn.functional.normalize(torch.randn(10, 1280), dim=-1)
    paths = [f"/x/{i}.jpg" for i in range(10)]
    d = train.Distiller(paths, teacher, 10.0, 6, 0)
    index = {p: i for i, p in enumerate(paths)}
    same = d.term([lambda ps: teacher[[index[p] for p in ps]]])
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    student = torch.nn.Parameter(torch.randn(10, 256))
    loss = d.term([lambda ps: torch.nn.functional.normalize(student[[index[p] for p in ps]], dim=-1)])
    assert loss.item() > 0
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_real_train_records_never_read_val_or_test(tmp_path):
    m = tmp_path / "manifest.csv"
    with m.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "product_id", "domain", "split", "tags"])
        for split in ("train", "val", "test"):
            for domain in ("shop", "user"):
                (tmp_path / f"{split}_{domain}.jpg").write_bytes(b"")
                w.writerow([f"{split}_{domain}.jpg", f"rp-{split}", domain, split, ""])
    users, shops = train.real_train_records(str(m))
    assert [r.split for r in users + shops] == ["train", "train"]
    assert train.real_train_records("") == ([], [])


def test_the_tools_are_off_by_default():
    cfg = train.TrainConfig(data="", out="")
    assert (cfg.distill, cfg.distill_data, cfg.real_data, cfg.backbone_lr_scale) == (0.0, "", "", 1.0)


def test_training_with_every_tool_on_runs_and_logs_them(tmp_path):
    synth.generate(tmp_path / "a", seed=3, scale=0.01, quiet=True)
    synth.generate(tmp_path / "b", seed=4, scale=0.01, quiet=True)
    real_like(tmp_path / "b" / "manifest.csv", tmp_path / "real.csv")
    cfg = train.TrainConfig(data=str(tmp_path / "a" / "manifest.csv"), out=str(tmp_path / "run"),
                            cache_dir=str(tmp_path / "cache"), steps_ynet=2, steps_tag=1, steps_ctx=1, batch=8,
                            distill=10.0, distill_data=str(tmp_path / "real.csv"), real_data=str(tmp_path / "real.csv"),
                            real_fraction=0.25, backbone_lr_scale=0.1)
    train.setup_logging(tmp_path / "run")
    summary = train.train(cfg)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "distillation on" in log and "real photos in training" in log and " lwf " in log
    assert summary["train_config"]["distill"] == 10.0
    assert json.loads((tmp_path / "run" / "results.json").read_text())["shipped_chain"] in ("random", "hard")


def test_ablation_refuses_unknown_variants(capsys):
    assert ablate.main(["--variants", "baseline,nope"]) == 2
    assert "unknown variant(s) nope" in capsys.readouterr().err


def test_a_warm_stem_cache_trains_the_same_network_as_a_cold_one(tmp_path):
    # Building the stem draws from torch's global generator, and only when the cache is cold:
    # training re-seeds before YNet is initialised, so the seed alone decides the network.
    synth.generate(tmp_path / "a", seed=3, scale=0.01, quiet=True)
    results = []
    for run in ("cold", "warm"):
        cfg = train.TrainConfig(data=str(tmp_path / "a" / "manifest.csv"), out=str(tmp_path / run),
                                cache_dir=str(tmp_path / "cache"), steps_ynet=3, steps_tag=1, steps_ctx=1, batch=8)
        (tmp_path / run).mkdir()
        results.append(train.train(cfg)["results"])
    assert (tmp_path / "cache").is_dir() and any((tmp_path / "cache").iterdir())
    assert results[0] == results[1]


def test_ablation_report_needs_runs(tmp_path, capsys):
    assert ablate.main(["--report", str(tmp_path), "--doc", str(tmp_path / "f.md")]) == 2
    assert "no ablation runs in" in capsys.readouterr().err and not (tmp_path / "f.md").exists()


def test_ablation_report_has_one_table_per_run_directory(tmp_path):
    pk = {k: 0.5 for k in ("1", "5", "10", "20")}
    for seed in (0, 1):
        run = tmp_path / f"seed{seed}" / "baseline"
        run.mkdir(parents=True)
        (run / "ablation.json").write_text(json.dumps({
            "variant": "baseline", "tries": "ignored", "chain": "hard", "seed": seed, "input_size": 192, "train_s": 1.0,
            "synthetic": {"val": pk, "test": pk}, "real": {"val": pk, "test": pk},
            "real_pretrained": {"val": pk, "test": pk}}))
    doc = tmp_path / "f.md"
    assert ablate.main(["--report", str(tmp_path / "seed0"), str(tmp_path / "seed1"), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert "## Seed 0" in text and "## Seed 1" in text and text.count("| baseline | none: train.py") == 2
    assert "--seed 1 --variants baseline" in text
