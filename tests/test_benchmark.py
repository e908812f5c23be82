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
        "benchmark.eval_every=2",
        "benchmark.finetune_steps=2",
        "benchmark.batch_size=4",
        "benchmark.channels=[4,8]",
        "benchmark.res_units=1",
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
    assert "Per-site paired differences against local" in md
    assert "synthetic - pooled" in md and "local+synthetic - local" in md
    names = ["dice_by_region.png", "hd95_by_region.png", "gains_dice_WT.png"]
    names += ["curves_local.png", "curves_synthetic-finetune.png"]
    for name in names:
        assert (result.out / name).stat().st_size > 1000
    assert len(list((result.out / "overlays").glob("overlay_*.png"))) == 1  # smoke: 1 patient
    patients = _read_csv(result.out / "per_patient.csv")
    assert {p["region"] for p in patients} == set(REGIONS)
    # phantom voxels are 4 mm and a 32 px slice covers more than 32 voxels: HD95 in mm is
    # larger than in grid steps wherever it is not zero
    for p in patients:
        assert float(p["hd95"]) >= float(p["hd95_grid"])
    assert any(float(p["hd95"]) > 3 * float(p["hd95_grid"]) > 0 for p in patients)
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


def test_overwrite_refuses_a_benchmark_folder_fedsynth_did_not_make(tmp_path, capsys):
    """A user's folder that happens to hold a results.csv survives `--overwrite`."""
    from fedsynth.cli import main

    user = tmp_path / "run" / "benchmark"
    user.mkdir(parents=True)
    (user / "results.csv").write_text("my own results\n")
    code = main(["benchmark", str(SMOKE), "benchmark.arms=[local]", "--out",
                 str(tmp_path / "run"), "--overwrite", "--no-progress"])  # fmt: skip
    assert code == 2 and str(user) in capsys.readouterr().err
    assert (user / "results.csv").read_text() == "my own results\n"


def test_learning_curves_are_in_tensorboard(result):
    """One TensorBoard run per model, read back with TensorBoard's own reader: the same
    steps and values as curves.csv."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves = _read_csv(result.out / "curves.csv")
    model = [c for c in curves if (c["arm"], c["site"], c["seed"]) == ("local", "site-2", "0")]
    acc = EventAccumulator(str(result.out / "tensorboard" / "local" / "site-2" / "seed0"))
    acc.Reload()
    assert {"seg/train_loss", "seg/val_dice"} <= set(acc.Tags()["scalars"])
    dice = acc.Scalars("seg/val_dice")
    assert [e.step for e in dice] == [int(c["step"]) for c in model]
    assert [e.value for e in dice] == pytest.approx([float(c["val_dice"]) for c in model])
    assert (result.out / ".fedsynth-output").is_file()  # marked: --overwrite may replace it


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


def test_intervals_comparisons_and_curves_written(result):
    intervals = _read_csv(result.out / "intervals.csv")
    for r in intervals:
        assert float(r["ci_low"]) <= float(r["mean"]) <= float(r["ci_high"])
        assert r["seeds"] == "2" and int(r["patients"]) >= 1
    comparisons = {(c["arm"], c["reference"]) for c in _read_csv(result.out / "comparisons.csv")}
    assert ("synthetic", "pooled") in comparisons
    assert {a for a, ref in comparisons if ref == "local"} == set(ARMS) - {"local"}
    curves = _read_csv(result.out / "curves.csv")
    # 4 steps scored every 2: two points per model, too few to call a plateau
    local2 = [c for c in curves if (c["arm"], c["site"], c["seed"]) == ("local", "site-2", "0")]
    assert [c["step"] for c in local2] == ["2", "4"]
    assert all(c["status"] == "still rising" for c in curves)


def test_model_still_rising_is_flagged_in_results_md(result):
    md = (result.out / "results.md").read_text()
    assert "NOT CONVERGED" in md and "local site-2 seed 0" in md


def test_plateaued_models_are_not_flagged():
    from fedsynth.benchmark.report import markdown
    from fedsynth.benchmark.results import STILL_RISING
    from fedsynth.benchmark.training import LearningCurve

    rising, flat = LearningCurve(patience=3), LearningCurve(patience=3)
    for step, v in enumerate([0.2, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7], 1):
        rising.add(step * 10, 1.0, v)
    for step, v in enumerate([0.2, 0.5, 0.6, 0.602, 0.598, 0.601], 1):
        flat.add(step * 10, 1.0, v)
    assert rising.still_rising and not flat.still_rising
    assert flat.best_step == 40  # the highest value's weights are the ones kept
    rows = [
        {"arm": "local", "site": "site-0", "seed": 0, "region": r, "metric": m, "value": 0.5}
        for r in REGIONS
        for m in ("dice", "hd95")
    ]
    curve = [
        {"arm": "local", "site": "site-0", "seed": 0, "step": s, "train_loss": 1.0,
         "val_dice": v, "best_step": 40, "status": "plateaued"}
        for s, v in zip(flat.steps, flat.val_dice, strict=True)
    ]  # fmt: skip
    md = markdown(rows, [], {}, curves=curve)
    assert "All 1 models plateaued" in md and "NOT CONVERGED" not in md
    curve[-1]["status"] = STILL_RISING
    assert "NOT CONVERGED: 1 of 1 models" in markdown(rows, [], {}, curves=curve)


def test_validation_patients_come_from_the_training_patients(cache):
    from fedsynth.benchmark.data import load_benchmark_data
    from fedsynth.benchmark.training import split_validation

    data = load_benchmark_data(_config(cache), None, need_synthetic=False)
    caches = list(data.sites.values())
    train, val = split_validation(caches, 0.3, seed=5)
    held = {v.cache.name: v for v in val}
    # a site of >= 3 patients holds at least one out; a smaller one trains on all of them
    assert set(held) == {c.name for c in caches if len(c.patients) >= 3} != set()
    for t, c in zip(train, caches, strict=True):
        names_t = {c.patients[i] for i in t.patients}
        names_v = {c.patients[i] for i in held[c.name].patients} if c.name in held else set()
        assert not names_t & names_v and names_t | names_v == set(c.patients)
        assert not names_v & set(data.test.patients)
    # a site holds out the same patients whichever arm (list of caches) asks
    last = caches[-1]
    _, alone = split_validation([last], 0.3, seed=5)
    assert list(alone[0].patients) == list(held[last.name].patients)


def test_public_only_arm_trains_on_the_public_generators_cohort(cache, tmp_path):
    from fedsynth.benchmark.runner import run_benchmark
    from fedsynth.common.errors import ConfigError

    with pytest.raises(ConfigError, match="benchmark.public_checkpoint"):
        _config(cache, "benchmark.arms=[local,public-only]")
    ckpt = _tiny_synthetic_cohort(_config(cache), tmp_path / "gen").parent / "gen.safetensors"
    cfg = _config(
        cache,
        "benchmark.arms=[local,public-only]",
        "benchmark.seeds=1",
        f"benchmark.public_checkpoint={ckpt}",
    )
    res = run_benchmark(cfg, tmp_path / "run", progress=False)
    assert (res.out / "public-synthetic" / "datasheet.json").is_file()
    assert {("public-only", "all")} <= {(r["arm"], r["site"]) for r in res.rows}
    comparisons = _read_csv(res.out / "comparisons.csv")
    assert {(c["arm"], c["reference"]) for c in comparisons} == {("public-only", "local")}


def test_worker_processes_give_the_same_results_as_one_process(cache, tmp_path):
    from fedsynth.benchmark.runner import run_benchmark

    over = ["benchmark.arms=[local,pooled]", "benchmark.seeds=1", "benchmark.augment=false"]
    one = run_benchmark(_config(cache, *over), tmp_path / "one", progress=False)
    two = run_benchmark(
        _config(cache, *over, "benchmark.workers=2"), tmp_path / "two", progress=False
    )
    key = lambda r: (r["arm"], r["site"], r["seed"], r["region"], r["metric"])  # noqa: E731
    a = {key(r): r["value"] for r in one.rows}
    b = {key(r): r["value"] for r in two.rows}
    assert a.keys() == b.keys()
    for k in a:
        assert b[k] == pytest.approx(a[k], abs=1e-4)
