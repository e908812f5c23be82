"""Run every configured arm for every seed and write ``RUN_DIR/benchmark/``.

Outputs (all written atomically): ``results.csv``, ``per_patient.csv``, ``differences.csv``,
``results.md``, ``config.yaml``, ``dice_by_region.png``, ``hd95_by_region.png``,
``gains_dice_<region>.png`` and ``overlays/overlay_<subject>.png``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from fedsynth.benchmark.arms import ARMS, NEEDS_SYNTHETIC, ArmContext, ArmOutcome
from fedsynth.benchmark.data import load_benchmark_data, synthetic_cohort
from fedsynth.benchmark.results import (
    DIFF_COLUMNS,
    PATIENT_COLUMNS,
    RESULT_COLUMNS,
    Row,
    paired_differences,
    patient_rows,
    result_rows,
    write_csv,
)
from fedsynth.common.config import Config, config_to_yaml
from fedsynth.common.io.atomic import atomic_write_text
from fedsynth.common.metrics.segmentation import REGIONS
from fedsynth.common.rundir import CONFIG_FILE, RunDir

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
    from tqdm import tqdm

    from fedsynth.common.gan.trainer import resolve_device

    start = time.perf_counter()
    b = cfg.benchmark
    out = RunDir(run_dir).benchmark
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / CONFIG_FILE, config_to_yaml(cfg))
    need_syn = any(a in NEEDS_SYNTHETIC for a in b.arms)
    syn_dir = synthetic_cohort(cfg, out, _path(synthetic), _path(checkpoint)) if need_syn else None
    data = load_benchmark_data(cfg, syn_dir, need_syn)
    ctx = ArmContext(cfg, data, resolve_device(b.device), out / "work", progress)
    outcomes: list[ArmOutcome] = []
    jobs = [(cfg.seed + i, arm) for i in range(b.seeds) for arm in b.arms]
    for seed, arm in tqdm(jobs, desc="benchmark", unit="arm", disable=not progress):
        t0 = time.perf_counter()
        outcomes += ARMS[arm](ctx, seed)
        log.info("arm %s seed %d: %.1f s", arm, seed, time.perf_counter() - t0)
    seconds = time.perf_counter() - start
    rows, diffs = write_outputs(out, cfg, data, outcomes, syn_dir, seconds)
    return BenchmarkResult(out, rows, diffs, seconds)


def _path(p: str | Path | None) -> Path | None:
    return None if p is None else Path(p).expanduser().resolve()


def write_outputs(out, cfg, data, outcomes, syn_dir, seconds) -> tuple[list[Row], list[Row]]:
    from fedsynth.benchmark import plots
    from fedsynth.benchmark.report import markdown

    rows = result_rows(outcomes)
    diffs = paired_differences(rows)
    write_csv(out / "results.csv", rows, RESULT_COLUMNS)
    write_csv(out / "per_patient.csv", patient_rows(outcomes), PATIENT_COLUMNS)
    write_csv(out / "differences.csv", diffs, DIFF_COLUMNS)
    context = {
        "config": f"{cfg.name} (seeds {cfg.seed}..{cfg.seed + cfg.benchmark.seeds - 1}, "
        f"{cfg.benchmark.steps} steps, batch {cfg.benchmark.batch_size}, {cfg.preprocess.image_size} px)",
        "sites (training patients)": ", ".join(
            f"{s} ({len(c.patients)})" for s, c in data.sites.items()
        ),
        "held-out test patients": len(data.test.patients),
        "synthetic cohort": f"{syn_dir} ({len(data.synthetic.patients)} cases)"
        if data.synthetic
        else "none",
        "wall time": f"{seconds:.0f} s",
    }
    atomic_write_text(out / "results.md", markdown(rows, diffs, context))
    plots.region_bars(rows, "dice", out / "dice_by_region.png")
    plots.region_bars(rows, "hd95", out / "hd95_by_region.png")
    if diffs:
        for region in REGIONS:
            plots.site_gains(diffs, "dice", region, out / f"gains_dice_{region}.png")
    plots.overlays(data.test, outcomes, out / "overlays")
    return rows, diffs
