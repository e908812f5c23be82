"""fedsynth study: arms parsed and configured, the public-only arm scored, the table written."""

from __future__ import annotations

import json
import math

import pytest

from fedsynth.common.config import check_study_arm, load_config
from fedsynth.common.errors import ConfigError
from fedsynth.study import arm_config, run_study


def test_arms_parse_and_configure_their_federated_run(tmp_path):
    cfg = load_config("configs/study.yaml")
    assert check_study_arm("finetune:norm+bias:inf") == ("finetune", "norm+bias", math.inf)
    ft = arm_config(cfg, "finetune:decoder:4", tmp_path / "init.safetensors")
    assert ft.model.init == str(tmp_path / "init.safetensors")
    assert ft.privacy.trainable == "decoder" and ft.privacy.target_epsilon == 4.0
    assert ft.privacy.enabled
    scratch = arm_config(cfg, "scratch:all:8", tmp_path / "init.safetensors")
    assert scratch.model.init is None and scratch.privacy.trainable == "all"
    assert not arm_config(cfg, "finetune:head:inf", tmp_path).privacy.enabled
    for bad in ("finetune:everything:8", "scratch:all", "finetune:all:-1", "public"):
        with pytest.raises(ConfigError, match="study.arms"):
            check_study_arm(bad)
    with pytest.raises(ConfigError, match="study.arms"):
        load_config("configs/study.yaml", ["study.segmentation_arms=[public_only]"])


def test_public_only_arm_is_scored_on_the_held_out_patients(tmp_path):
    cfg = load_config("configs/smoke.yaml", [
        f"data.cache_dir={tmp_path / 'cache'}", "study.segmentation=false", "study.audit=false",
        "train.eval_slices=4", "train.sample_slices=2",
    ])  # fmt: skip
    table = run_study(cfg, tmp_path / "study", ["public-only"])
    study = json.loads((tmp_path / "study" / "study.json").read_text())
    (row,) = study["arms"]
    assert row["arm"] == "public-only" and row["epsilon"] == 0.0
    assert set(row["quality"]) == {"t1", "t1c", "t2", "flair"} and row["slices"] == 4
    assert (tmp_path / "study" / "arms" / "public-only" / "samples.png").is_file()
    assert (tmp_path / "study" / "samples.png").stat().st_size > 0
    assert "| public-only | 0 (no site data) |" in table.read_text()


def test_segmentation_table_compares_synthetic_arms_with_real_ones(tmp_path):
    """The real arms run once, each generator arm's synthetic arms on its own cohort, and
    study.md gets the Dice table with pooled, synthetic-only and the smallest site's gain."""
    cfg = load_config("configs/smoke.yaml", [
        f"data.cache_dir={tmp_path / 'cache'}", "study.audit=false", "train.eval_slices=4",
        "train.sample_slices=2", "benchmark.seeds=2", "benchmark.steps=4",
        "benchmark.eval_every=2", "benchmark.sites=smallest", "benchmark.synthetic_cases=3",
        "benchmark.workers=1",
    ])  # fmt: skip
    table = run_study(cfg, tmp_path / "study", ["public-only"]).read_text()
    study = json.loads((tmp_path / "study" / "study.json").read_text())
    seg = study["segmentation"]
    syn = seg["arms"]["public-only"]
    assert set(syn["synthetic"]) == {"WT", "TC", "ET"}
    assert len(syn["seed_differences_wt"]) == 2  # one mean difference per seed
    assert syn["synthetic_minus_public_only_wt"] is None  # the baseline is not compared to itself
    assert syn["local_synthetic_minus_local_wt"]["patients"] == study["test_patients"]
    lo, mean, hi = seg["pooled"]["WT"][1], seg["pooled"]["WT"][0], seg["pooled"]["WT"][2]
    assert lo <= mean <= hi
    real = tmp_path / "study" / "real" / "benchmark" / "per_patient.csv"
    sites = {line.split(",")[1] for line in real.read_text().splitlines()[1:]
             if line.startswith("local,")}  # fmt: skip
    assert len(sites) == 1  # benchmark.sites=smallest: one local model per seed
    assert "- pooled real patients: WT" in table and "| public-only | 0 (no site data) |" in table
