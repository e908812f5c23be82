"""``fedsynth privacy-sweep``: for each privacy budget, train, synthesise, benchmark, audit.

Layout of the sweep directory (``fedsynth.common.rundir.SweepDir``)::

    <out>/config.yaml            the base config (epsilon is the only thing that varies)
    <out>/baselines/benchmark/   the real-data arms (local, pooled), run once
    <out>/eps-<label>/           one federated run per budget (label: inf, 50, 10, ...), with
                                 synthetic/, benchmark/ (synthetic arms), audit/, done.json
    <out>/sweep.csv, sweep.md, plots/*.png, report.html

Resumable: a budget whose ``done.json`` exists is not recomputed, and an interrupted
federated run resumes from its last completed round.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from fedsynth.audit.writer import run_audit
from fedsynth.benchmark.runner import run_benchmark
from fedsynth.common.config import Config, config_to_yaml
from fedsynth.common.errors import IncompleteRunError
from fedsynth.common.io.atomic import atomic_write_json, atomic_write_text
from fedsynth.common.rundir import RunDir, SweepDir
from fedsynth.common.tracking import Tracker
from fedsynth.report.html import write_sweep_report
from fedsynth.simulation import simulate
from fedsynth.sweep.budgets import REAL_ARMS, SYNTHETIC_ARMS, budget_config, label
from fedsynth.sweep.summary import write_summary
from fedsynth.synthesis.generate import synthesize

log = logging.getLogger(__name__)


def _with_arms(cfg: Config, arms: tuple[str, ...]) -> Config:
    return replace(cfg, benchmark=replace(cfg.benchmark, arms=list(arms)))


def run_baselines(cfg: Config, out: Path) -> dict[str, Any]:
    """The real-data arms, once: the reference lines of every plot."""
    run_dir = SweepDir(out).baselines
    marker = SweepDir.done(run_dir)
    if marker.is_file():
        return json.loads(marker.read_text())
    arms = tuple(a for a in REAL_ARMS if a in cfg.benchmark.arms) or REAL_ARMS
    result = run_benchmark(_with_arms(cfg, arms), run_dir)
    summary = {"results": str(result.out / "results.csv"), "seconds": round(result.seconds, 1)}
    atomic_write_json(marker, summary)
    return summary


def run_budget(cfg: Config, epsilon: float, out: Path) -> dict[str, Any]:
    """Federated training, synthesis, synthetic arms and audit at one budget."""
    run = SweepDir(out).budget(label(epsilon))
    run_dir = run.root
    marker = SweepDir.done(run_dir)
    if marker.is_file():
        return json.loads(marker.read_text())
    bcfg = budget_config(cfg, epsilon)
    rounds = simulate(bcfg, run_dir)
    if rounds < bcfg.federation.rounds:
        raise IncompleteRunError(run_dir, f"federated training stopped after round {rounds}")
    checkpoint = run.generator
    synthetic = run.synthetic
    if synthetic.exists():  # a half-finished earlier attempt: atomic, so complete or absent
        shutil.rmtree(synthetic)
    synthesize(bcfg, checkpoint, synthetic, cases=bcfg.benchmark.synthetic_cases)
    run_benchmark(_with_arms(bcfg, SYNTHETIC_ARMS), run_dir, synthetic=synthetic)
    audit = run_audit(run_dir, synthetic_dir=synthetic, overwrite=True)
    privacy = json.loads(run.privacy.read_text())
    summary = {
        "epsilon_target": None if math.isinf(epsilon) else epsilon,
        "worst_epsilon": privacy["worst_epsilon"],
        "delta": privacy["delta"],
        "dp_enabled": privacy["dp_enabled"],
        "statement": privacy["statement"],
        "run_dir": str(run_dir),
        "membership_auc": audit.report["membership"]["overall"]["auc"],
        "memorised_fraction": audit.report["memorisation"].get("flagged_fraction"),
    }
    _track_budget(run, epsilon, summary)
    atomic_write_json(marker, summary)
    return summary


def _track_budget(run: RunDir, epsilon: float, summary: dict[str, Any]) -> None:
    """One row of TensorBoard's HParams table per budget (``tensorboard --logdir SWEEP``):
    the budget beside its measured epsilon, held-out quality and leakage."""
    rounds = [r for r in run.read_metrics() if r.get("kind") == "round" and r.get("mean")]
    quality = {f"sweep/heldout_{k}": v for k, v in (rounds[-1]["mean"] if rounds else {}).items()}
    with Tracker(run.tensorboard) as tb:
        tb.hparams(
            {"budget": label(epsilon), "target_epsilon": epsilon if math.isfinite(epsilon) else -1},
            {"sweep/worst_epsilon": summary["worst_epsilon"],
             "sweep/membership_auc": summary["membership_auc"],
             "sweep/memorised_fraction": summary["memorised_fraction"], **quality},
        )  # fmt: skip


def run_sweep(cfg: Config, epsilons: list[float], out: Path) -> Path:
    """Every budget, the baselines once, then the table, plots and one HTML page."""
    sweep = SweepDir(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(sweep.config, config_to_yaml(cfg))
    print(f"[baselines] real-data arms {', '.join(REAL_ARMS)} ...", flush=True)
    run_baselines(cfg, out)
    for i, eps in enumerate(epsilons, 1):
        print(f"[{i}/{len(epsilons)}] epsilon = {label(eps)} ...", flush=True)
        run_budget(cfg, eps, out)
    table = write_summary(out, epsilons)
    runs = [sweep.budget(label(e)).root for e in epsilons]
    write_sweep_report(runs, sweep.report, title="fedsynth privacy sweep")
    return table
