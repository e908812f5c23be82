"""The segmentation benchmark end to end on the smoke phantoms with a tiny synthetic cohort."""

from __future__ import annotations

import csv
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from fedsynth.common.config import load_config

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
REGIONS = ("WT", "TC", "ET")
ARMS = ["local", "pooled", "synthetic", "local+synthetic", "synthetic->finetune"]

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _config(cache: Path, *extra: str):
    over = [
        f"data.cache_dir={cache}",
        "synthesis.atlas_voxel_size=6",
        "synthesis.atlas_anatomies=2",
        "synthesis.device=cpu",
        "benchmark.seeds=2",
        "benchmark.steps=4",
        "benchmark.finetune_steps=2",
        "benchmark.batch_size=4",
        "benchmark.channels=[4,8]",
    ]
    return load_config(SMOKE, [*over, *extra])


def _tiny_synthetic_cohort(cfg, folder: Path) -> Path:
    """Two synthetic cases from an untrained generator saved with the checkpoints module."""
    from fedsynth.common.io.checkpoints import save_checkpoint
    from fedsynth.common.models.registry import architecture_hash, build_generator
    from fedsynth.synthesis.generate import synthesize

    ckpt = save_checkpoint(
        folder / "gen.safetensors",
        build_generator(cfg.model).state_dict(),
        architecture=cfg.model.generator,
        config_hash=architecture_hash(cfg.model),
        step=0,
        extra={"model": asdict(cfg.model), "image_size": cfg.preprocess.image_size},
    )
    return synthesize(cfg, ckpt, folder / "synthetic", cases=2, progress=False).out


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench-cache")


@pytest.fixture(scope="module")
def synthetic(cache, tmp_path_factory) -> Path:
    return _tiny_synthetic_cohort(_config(cache), tmp_path_factory.mktemp("bench-synth"))


@pytest.fixture(scope="module")
def result(cache, synthetic, tmp_path_factory):
    from fedsynth.benchmark.runner import run_benchmark

    cfg = _config(cache, f"benchmark.arms=[{','.join(ARMS)}]")
    return run_benchmark(
        cfg, tmp_path_factory.mktemp("bench-run"), synthetic=synthetic, progress=False
    )


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_results_have_every_arm_site_seed_region_metric(result):
    rows = _read_csv(result.out / "results.csv")
    keys = {(r["arm"], r["site"], r["seed"], r["region"], r["metric"]) for r in rows}
    assert len(keys) == len(rows)  # one row per combination
    sites = ["site-0", "site-1", "site-2"]
    for arm in ARMS:
        arm_sites = ["all"] if arm in ("pooled", "synthetic") else [*sites, "mean"]
        for site in arm_sites:
            for seed in ("0", "1"):
                for region in REGIONS:
                    for metric in ("dice", "hd95"):
                        assert (arm, site, seed, region, metric) in keys
    dice = [float(r["value"]) for r in rows if r["metric"] == "dice"]
    hd = [float(r["value"]) for r in rows if r["metric"] == "hd95"]
    assert all(0.0 <= d <= 1.0 for d in dice) and all(h >= 0.0 for h in hd)


def test_paired_differences_match_results(result):
    value = {
        (r["arm"], r["site"], r["seed"], r["region"], r["metric"]): float(r["value"])
        for r in result.rows
    }
    diffs = {(d["arm"], d["site"], d["region"], d["metric"]): d for d in result.differences}
    assert {d["arm"] for d in result.differences} == set(ARMS) - {"local"}
    for arm, own_site in (("local+synthetic", "site-1"), ("pooled", "all")):
        expect = [
            value[(arm, own_site, s, "WT", "dice")] - value[("local", "site-1", s, "WT", "dice")]
            for s in (0, 1)
        ]
        d = diffs[(arm, "site-1", "WT", "dice")]
        assert d["n"] == 2
        assert d["mean_diff"] == pytest.approx(np.mean(expect))
        assert d["std_diff"] == pytest.approx(np.std(expect, ddof=1))
    assert ("synthetic", "mean", "ET", "hd95") in diffs
    assert len(_read_csv(result.out / "differences.csv")) == len(result.differences)


def test_reports_plots_and_overlays_written(result):
    md = (result.out / "results.md").read_text()
    for arm in ARMS:
        assert f"| {arm} |" in md
    assert "Paired differences against local" in md
    for name in ("dice_by_region.png", "hd95_by_region.png", "gains_dice_WT.png"):
        assert (result.out / name).stat().st_size > 1000
    assert len(list((result.out / "overlays").glob("overlay_*.png"))) == 1  # smoke: 1 patient
    patients = _read_csv(result.out / "per_patient.csv")
    assert {p["region"] for p in patients} == set(REGIONS)
    assert not list(result.out.rglob(".*.tmp*"))  # no leftovers of atomic writes


def test_synthetic_arms_need_a_synthetic_cohort(cache, tmp_path):
    from fedsynth.benchmark.runner import run_benchmark
    from fedsynth.common.errors import ConfigError

    cfg = _config(cache, "benchmark.arms=[local,synthetic]")
    with pytest.raises(ConfigError, match="--synthetic"):
        run_benchmark(cfg, tmp_path, progress=False)


def test_bad_benchmark_config_names_the_key():
    from fedsynth.common.errors import ConfigError

    with pytest.raises(ConfigError, match="benchmark.arms"):
        load_config(SMOKE, ["benchmark.arms=[local,central]"])
    with pytest.raises(ConfigError, match="benchmark.fedavg_rounds"):
        load_config(SMOKE, ["benchmark.fedavg_rounds=100", "benchmark.steps=10"])


def test_cli_refuses_to_overwrite(result, tmp_path, capsys):
    from fedsynth.cli import main

    run_dir = result.out.parent
    code = main(
        ["benchmark", str(SMOKE), "benchmark.arms=[local]", "--out", str(run_dir), "--no-progress"]
    )
    assert code == 2 and "already exists" in capsys.readouterr().err


@pytest.mark.slow
def test_fedavg_arm_with_flower_simulation(cache, tmp_path):
    """The fedavg arm through Flower's simulation engine (Ray start-up costs ~15 s)."""
    from fedsynth.benchmark.runner import run_benchmark

    cfg = _config(
        cache, "benchmark.arms=[local,fedavg]", "benchmark.seeds=1", "benchmark.fedavg_rounds=2"
    )
    res = run_benchmark(cfg, tmp_path, progress=False)
    assert (res.out / "work" / "fedavg" / "fedavg-seed0.safetensors").is_file()
    sites = {(r["arm"], r["site"]) for r in res.rows}
    assert ("fedavg", "all") in sites
    assert {d["arm"] for d in res.differences} == {"fedavg"}
