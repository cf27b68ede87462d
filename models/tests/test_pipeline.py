"""The one training command, end to end on tiny data: generate -> train -> evaluate -> export."""

import json

import pytest

from snapshop_ml import bundle as bundle_cli
from snapshop_ml import pipeline
from snapshop_ml.data import synth

from realstub import real_like


def test_pipeline_end_to_end_on_tiny_data(tmp_path, monkeypatch):
    # Pretend tmp_path is the repository root: the manifest must then record repository-relative paths.
    monkeypatch.setattr(pipeline, "ROOT", tmp_path)
    data = tmp_path / "street2shop"
    synth.generate(data, seed=3, scale=0.01, quiet=True)
    data = data / "manifest.csv"
    # A stand-in for the real-photo benchmark (another tiny synthetic set, its products renamed):
    # the shipped recipe trains on its train split too (RECIPE).
    synth.generate(tmp_path / "other", seed=4, scale=0.01, quiet=True)
    real = tmp_path / "realphoto.csv"
    real_like(tmp_path / "other" / "manifest.csv", real)
    out = tmp_path / "bundle"
    rc = pipeline.main(["--data", str(data), "--bundle", str(out), "--run", str(tmp_path / "run"),
                        "--steps", "1", "1", "1", "--real", str(real)])
    assert rc == 0
    manifest = bundle_cli.verify(out)
    rows = json.loads((out / "eval.json").read_text())["rows"]
    assert {"pretrained", "ynet", "tagynet", "ctxynet"} <= set(rows)
    assert set(rows["ctxynet"]["test"]) == {"1", "5", "10", "20", "50", "100"}
    assert manifest["training"]["wall_time_s"] > 0
    assert manifest["training"]["data"]["source"] == "street2shop/manifest.csv"
    assert manifest["training"]["config"]["data"] == "street2shop/manifest.csv"
    assert manifest["training"]["config"]["out"] == "run"
    assert manifest["training"]["command"] == ("scripts/train.sh --data street2shop/manifest.csv --bundle bundle"
                                               " --run run --steps 1 1 1 --real realphoto.csv")
    assert manifest["training"]["config"]["real_data"] == "realphoto.csv"
    assert manifest["training"]["config"]["real_fraction"] == pipeline.RECIPE["real_fraction"] > 0
    assert str(tmp_path) not in json.dumps(manifest)
    # A non-default bundle keeps its report and parity subset in the run directory.
    results_md = (tmp_path / "run" / "docs" / "results.md").read_text()
    assert "## The re-rank stage" in results_md and "re-rank by default:" in results_md
    # and the same document comes back from the bundle alone, without retraining
    from snapshop_ml import report
    assert report.main(["--bundle", str(out), "--out", str(tmp_path / "again.md")]) == 0
    assert (tmp_path / "again.md").read_text() == results_md
    expected = json.loads((tmp_path / "run" / "subset" / "expected.json").read_text())
    assert expected["queries"] > 0 and 0.0 <= expected["rerank"]["20"] <= 1.0
    # The re-rank stage ran: the manifest says whether the re-rank is on by default and how its
    # score is fused, the parity subset was computed with that fusion, and eval.json has the
    # shipped figures of the benchmark it saw (the real-photo one is absent here).
    assert set(manifest["rerank"]) == {"candidates", "default", "fusion"}
    assert manifest["rerank"]["fusion"]["ctx"] > 0 and expected["fusion"] == manifest["rerank"]["fusion"]
    shipped = json.loads((out / "eval.json").read_text())["shipped"]["benchmarks"]
    assert list(shipped) == ["synthetic", "real"] and shipped["synthetic"]["manifest"] == "street2shop/manifest.csv"
    assert set(shipped["synthetic"]["rerank"]["test"]) == {"1", "5", "10", "20", "50", "100"}
    assert manifest["training"]["rerank_stage"]["benchmarks"] == {"synthetic": "street2shop/manifest.csv",
                                                                  "real": "realphoto.csv"}
    # Every row's checkpoint is kept, so every row can be measured on another benchmark later.
    from snapshop_ml import evaluate_rows
    again = evaluate_rows.evaluate_benchmark(tmp_path / "run", data, ("test",), None)
    assert {"pretrained", "ynet", "tagynet", "ctxynet", "ctxynet first pass", "tagynet+batch-hard",
            "ctxynet+batch-hard", "ctxynet+batch-hard first pass"} == set(again["rows"])
    assert all(0.0 <= v <= 1.0 for r in again["rows"].values() for v in r["test"].values())


def test_deepfashion_layout_reaches_training(tmp_path, capsys, request):
    # The tiny DeepFashion fixture loads, then is refused by training in one clear line: its
    # train split has a single product, and a triplet needs a negative.
    data = request.path.parent / "fixtures" / "deepfashion_tiny"
    rc = pipeline.main(["--data", str(data), "--bundle", str(tmp_path / "b"), "--run", str(tmp_path / "run")])
    assert rc == 2
    assert "at least two products with both street and shop images" in capsys.readouterr().err


def test_pipeline_reports_bad_input_in_one_line(tmp_path, capsys):
    rc = pipeline.main(["--data", str(tmp_path / "missing.csv"), "--bundle", str(tmp_path / "b"),
                        "--run", str(tmp_path / "run")])
    assert rc == 2
    assert "dataset not found" in capsys.readouterr().err


def test_paths_are_recorded_relative_to_the_repository(tmp_path, monkeypatch):
    root = pipeline.ROOT
    assert pipeline.repo_relative(root / "data/street2shop/manifest.csv") == "data/street2shop/manifest.csv"
    assert pipeline.repo_relative(root / "models" / ".." / "models/.cache") == "models/.cache"
    monkeypatch.chdir(root / "models")
    assert pipeline.repo_relative("runs/default") == "models/runs/default"  # relative to the cwd
    assert pipeline.repo_relative("../data/x.csv") == "data/x.csv"
    outside = tmp_path / "elsewhere/manifest.csv"
    assert pipeline.repo_relative(outside) == str(outside)  # outside the repository: kept as given
    cfg = {"data": str(root / "data/street2shop/manifest.csv"), "out": str(root / "models/runs/default"),
           "cache_dir": str(root / "models/.cache"), "seed": 0, "device": "auto"}
    assert pipeline.relative_command(["--data", str(root / "data/x.csv"), f"--run={root}/models/runs/r"]) == \
        "scripts/train.sh --data data/x.csv --run=models/runs/r"
    assert pipeline.relative_config(cfg) == {"data": "data/street2shop/manifest.csv", "out": "models/runs/default",
                                             "cache_dir": "models/.cache", "seed": 0, "device": "auto"}
    real = {"distill_data": str(root / "data/realphoto/manifest.csv"), "real_data": str(root / "data/realphoto/manifest.csv")}
    assert pipeline.relative_config(real) == {"distill_data": "data/realphoto/manifest.csv",
                                              "real_data": "data/realphoto/manifest.csv"}
    assert pipeline.relative_config({"distill_data": ""}) == {"distill_data": ""}  # unset stays unset


def test_a_missing_real_photo_benchmark_is_an_error_only_when_named(tmp_path):
    missing = tmp_path / "realphoto" / "manifest.csv"
    assert pipeline.ensure_real(missing, needed=False, build=False) is None  # the tools stay off, with a warning
    with pytest.raises(FileNotFoundError, match="real-photo benchmark not found"):
        pipeline.ensure_real(missing, needed=True, build=False)
