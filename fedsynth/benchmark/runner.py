"""Run every configured arm for every seed and write ``RUN_DIR/benchmark/``.

Outputs (all written atomically): ``results.csv``, ``per_patient.csv``, ``differences.csv``,
``intervals.csv``, ``comparisons.csv``, ``curves.csv``, ``results.md``, ``config.yaml``,
``dice_by_region.png``, ``hd95_by_region.png``, ``gains_dice_<region>.png``,
``curves_<arm>.png`` and ``overlays/overlay_<subject>.png``.

With ``benchmark.workers`` > 1 the (seed, arm) jobs run in that many processes, one torch
thread each (small 2-D networks use several CPU cores poorly, so processes beat threads);
``synthetic`` and ``synthetic->finetune`` of a seed share one job (the fine-tuned model starts
from the synthetic one), and ``fedavg`` runs in the main process (Flower starts its own Ray
workers).
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from fedsynth.benchmark.arms import ARMS, NEEDS_SYNTHETIC, ArmContext, ArmOutcome
from fedsynth.benchmark.data import (
    PUBLIC_SYNTHETIC_DIR,
    BenchmarkData,
    load_benchmark_data,
    synthetic_cohort,
)
from fedsynth.benchmark.metrics import REGIONS
from fedsynth.benchmark.results import (
    COMPARISON_COLUMNS,
    CURVE_COLUMNS,
    DIFF_COLUMNS,
    INTERVAL_COLUMNS,
    PATIENT_COLUMNS,
    RESULT_COLUMNS,
    Row,
    comparison_rows,
    curve_rows,
    interval_rows,
    paired_differences,
    patient_rows,
    result_rows,
    write_csv,
)
from fedsynth.common.config import Config, config_to_yaml
from fedsynth.common.io.atomic import atomic_write_text, mark_output
from fedsynth.common.rundir import CONFIG_FILE, RunDir
from fedsynth.common.tracking import Tracker, tensorboard_dir

log = logging.getLogger(__name__)


@dataclass
class BenchmarkResult:
    out: Path  # RUN_DIR/benchmark
    rows: list[Row]  # results.csv
    differences: list[Row]  # differences.csv
    seconds: float


def run_benchmark(
    cfg: Config,
    run_dir: str | Path,
    synthetic: str | Path | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = True,
) -> BenchmarkResult:
    """Train and score every arm of ``cfg.benchmark`` for seeds cfg.seed + 0..seeds-1.

    ``synthetic``: a synthetic cohort folder; or ``checkpoint``: a generator checkpoint from
    which ``benchmark.synthetic_cases`` cases are synthesised into RUN_DIR/benchmark/synthetic.
    One of them is required when an arm uses synthetic data (ConfigError otherwise).
    """
    start = time.perf_counter()
    b = cfg.benchmark
    out = RunDir(run_dir).benchmark
    mark_output(out)  # `fedsynth benchmark --overwrite` deletes only a folder so marked
    atomic_write_text(out / CONFIG_FILE, config_to_yaml(cfg))
    need_syn = any(a in NEEDS_SYNTHETIC for a in b.arms)
    syn_dir = synthetic_cohort(cfg, out, _path(synthetic), _path(checkpoint)) if need_syn else None
    public_dir = None
    if "public-only" in b.arms:
        public_ckpt = _path(b.public_checkpoint)
        public_dir = synthetic_cohort(cfg, out, None, public_ckpt, folder=PUBLIC_SYNTHETIC_DIR)
    data = load_benchmark_data(cfg, syn_dir, need_syn, public_dir)
    outcomes = _run_jobs(cfg, data, out / "work", progress, syn_dir, public_dir)
    seconds = time.perf_counter() - start
    rows, diffs = write_outputs(out, cfg, data, outcomes, syn_dir, seconds)
    return BenchmarkResult(out, rows, diffs, seconds)


def track_curves(curves: list[Row], logdir: Path) -> None:
    """Learning curves in TensorBoard: one run per model (``<arm>/<site>/seed<k>``, so that
    ``tensorboard --logdir RUN_DIR/benchmark`` overlays every arm), tags ``seg/train_loss``
    and ``seg/val_dice`` against the training step. Same numbers as curves.csv."""
    models: dict[tuple[str, str, str], list[Row]] = {}
    for r in curves:
        models.setdefault((str(r["arm"]), str(r["site"]), str(r["seed"])), []).append(r)
    for (arm, site, seed), rows in models.items():
        with Tracker(logdir / _file_name(arm) / site / f"seed{seed}") as tb:
            for r in rows:
                tb.scalars({k: r[k] for k in ("train_loss", "val_dice")}, int(r["step"]), "seg")


def _jobs(cfg: Config) -> list[tuple[int, list[str]]]:
    """(seed, arms run together) in the order they run; see the module docstring."""
    jobs = []
    for i in range(cfg.benchmark.seeds):
        arms = [a for a in cfg.benchmark.arms if a != "synthetic->finetune"]
        for arm in arms:
            group = [arm]
            if arm == "synthetic" and "synthetic->finetune" in cfg.benchmark.arms:
                group.append("synthetic->finetune")
            jobs.append((cfg.seed + i, group))
        if "synthetic->finetune" in cfg.benchmark.arms and "synthetic" not in arms:
            jobs.append((cfg.seed + i, ["synthetic->finetune"]))
    return jobs


def _run_group(ctx: ArmContext, seed: int, arms: list[str]) -> list[ArmOutcome]:
    out: list[ArmOutcome] = []
    for arm in arms:
        t0 = time.perf_counter()
        out += ARMS[arm](ctx, seed)
        log.info("arm %s seed %d: %.1f s", arm, seed, time.perf_counter() - t0)
    return out


def _run_jobs(cfg, data: BenchmarkData, work: Path, progress: bool, syn_dir, public_dir):
    from tqdm import tqdm

    from fedsynth.common.gan.trainer import resolve_device

    ctx = ArmContext(cfg, data, resolve_device(cfg.benchmark.device), work, progress)
    jobs = _jobs(cfg)
    if cfg.benchmark.workers == 1:
        outcomes: list[ArmOutcome] = []
        for seed, arms in tqdm(jobs, desc="benchmark", unit="job", disable=not progress):
            outcomes += _run_group(ctx, seed, arms)
        return outcomes
    results: dict[int, list[ArmOutcome]] = {}
    spawn = multiprocessing.get_context("spawn")  # fork + torch's thread pools can deadlock
    with ProcessPoolExecutor(
        cfg.benchmark.workers,
        spawn,
        _worker_init,
        (cfg, work, syn_dir, public_dir, data.test_spacings),
    ) as pool:
        futures = {
            i: pool.submit(_worker_run, seed, arms)
            for i, (seed, arms) in enumerate(jobs)
            if arms != ["fedavg"]
        }
        for i, (seed, arms) in enumerate(jobs):  # fedavg here, while the pool works
            if arms == ["fedavg"]:
                results[i] = _run_group(ctx, seed, arms)
        for i, f in tqdm(futures.items(), desc="benchmark", unit="job", disable=not progress):
            results[i] = f.result()
    return [o for i in sorted(results) for o in results[i]]


_WORKER: dict[str, ArmContext] = {}


def _worker_init(cfg: Config, work: Path, syn_dir, public_dir, spacings) -> None:
    from fedsynth.common.gan.trainer import resolve_device

    torch.set_num_threads(1)
    need_syn = syn_dir is not None
    data = load_benchmark_data(cfg, syn_dir, need_syn, public_dir, spacings)
    _WORKER["ctx"] = ArmContext(cfg, data, resolve_device(cfg.benchmark.device), work, False)


def _worker_run(seed: int, arms: list[str]) -> list[ArmOutcome]:
    return _run_group(_WORKER["ctx"], seed, arms)


def _file_name(arm: str) -> str:
    """``synthetic->finetune`` -> ``synthetic-finetune``: arm names as file-name parts."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in arm).replace("--", "-")


def _path(p: str | Path | None) -> Path | None:
    return None if p is None else Path(p).expanduser().resolve()


def write_outputs(out, cfg, data, outcomes, syn_dir, seconds) -> tuple[list[Row], list[Row]]:
    from fedsynth.benchmark import plots
    from fedsynth.benchmark.report import markdown

    rows = result_rows(outcomes)
    diffs = paired_differences(rows)
    patients = patient_rows(outcomes)
    intervals, comparisons = interval_rows(patients), comparison_rows(patients)
    curves = curve_rows(outcomes)
    write_csv(out / "results.csv", rows, RESULT_COLUMNS)
    write_csv(out / "per_patient.csv", patients, PATIENT_COLUMNS)
    write_csv(out / "differences.csv", diffs, DIFF_COLUMNS)
    write_csv(out / "intervals.csv", intervals, INTERVAL_COLUMNS)
    write_csv(out / "comparisons.csv", comparisons, COMPARISON_COLUMNS)
    write_csv(out / "curves.csv", curves, CURVE_COLUMNS)
    track_curves(curves, tensorboard_dir(out))
    context = {
        "config": f"{cfg.name} (seeds {cfg.seed}..{cfg.seed + cfg.benchmark.seeds - 1}, "
        f"at most {cfg.benchmark.steps} steps, batch {cfg.benchmark.batch_size}, "
        f"{cfg.preprocess.image_size} px, U-Net {cfg.benchmark.channels} x "
        f"{cfg.benchmark.res_units} residual units, augmentation "
        f"{'on' if cfg.benchmark.augment else 'off'}, acquisition augmentation "
        f"{'on' if cfg.benchmark.acquisition_augment else 'off'}"
        f"{' + bias field' if cfg.benchmark.bias_field_augment else ''}"
        f"{' + texture' if cfg.benchmark.texture_augment else ''})",
        "sites (training patients)": ", ".join(
            f"{s} ({len(c.patients)})" for s, c in data.sites.items()
        ),
        "held-out test patients": len(data.test.patients),
        "synthetic cohort": f"{syn_dir} ({len(data.synthetic.patients)} cases)"
        if data.synthetic
        else "none",
        "public-only cohort": f"{cfg.benchmark.public_checkpoint}" if data.public else "none",
        "wall time": f"{seconds:.0f} s ({cfg.benchmark.workers} worker process(es))",
    }
    md = markdown(rows, diffs, context, intervals, comparisons, curves)
    atomic_write_text(out / "results.md", md)
    for arm in dict.fromkeys(str(c["arm"]) for c in curves):
        plots.learning_curves(curves, arm, out / f"curves_{_file_name(arm)}.png")
    plots.region_bars(rows, "dice", out / "dice_by_region.png")
    plots.region_bars(rows, "hd95", out / "hd95_by_region.png")
    if diffs:
        for region in REGIONS:
            plots.site_gains(diffs, "dice", region, out / f"gains_dice_{region}.png")
    plots.overlays(data.test, outcomes, out / "overlays")
    return rows, diffs
