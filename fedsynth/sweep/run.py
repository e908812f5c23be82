"""``fedsynth privacy-sweep``: for each privacy budget, train, synthesise, benchmark, audit.

Layout of the sweep directory::

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

from fedsynth.common.config import Config, config_to_yaml
from fedsynth.common.errors import ConfigError, FedsynthError
from fedsynth.common.io.atomic import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

REAL_ARMS = ("local", "pooled")  # need no generator: run once for the whole sweep
SYNTHETIC_ARMS = ("synthetic", "local+synthetic")  # rerun for every budget
DONE = "done.json"


def parse_epsilons(text: str) -> list[float]:
    """'inf,50,10' -> [inf, 50.0, 10.0]; every value > 0, no duplicates."""
    values: list[float] = []
    for item in (t.strip() for t in text.split(",")):
        try:
            value = float(item)
        except ValueError:
            value = -1.0
        if not value > 0:
            raise ConfigError("--epsilons", f"{item!r} is not a positive number or 'inf'")
        if value in values:
            raise ConfigError("--epsilons", f"{item} is listed twice")
        values.append(value)
    if not values:
        raise ConfigError("--epsilons", "give at least one budget, e.g. inf,10,2")
    return values


def label(epsilon: float) -> str:
    return "inf" if math.isinf(epsilon) else f"{epsilon:g}"


def budget_config(cfg: Config, epsilon: float) -> Config:
    """The base config at one budget: epsilon = inf means DP off."""
    if math.isinf(epsilon):
        privacy = replace(cfg.privacy, enabled=False)
    else:
        privacy = replace(cfg.privacy, enabled=True, target_epsilon=epsilon)
    return replace(cfg, privacy=privacy)


def _with_arms(cfg: Config, arms: tuple[str, ...]) -> Config:
    return replace(cfg, benchmark=replace(cfg.benchmark, arms=list(arms)))


def run_baselines(cfg: Config, out: Path) -> dict[str, Any]:
    """The real-data arms, once: the reference lines of every plot."""
    from fedsynth.benchmark.runner import run_benchmark

    run_dir = out / "baselines"
    marker = run_dir / DONE
    if marker.is_file():
        return json.loads(marker.read_text())
    arms = tuple(a for a in REAL_ARMS if a in cfg.benchmark.arms) or REAL_ARMS
    result = run_benchmark(_with_arms(cfg, arms), run_dir)
    summary = {"results": str(result.out / "results.csv"), "seconds": round(result.seconds, 1)}
    atomic_write_json(marker, summary)
    return summary


def run_budget(cfg: Config, epsilon: float, out: Path) -> dict[str, Any]:
    """Federated training, synthesis, synthetic arms and audit at one budget."""
    from fedsynth.audit.writer import run_audit
    from fedsynth.benchmark.runner import run_benchmark
    from fedsynth.simulation import simulate
    from fedsynth.synthesis.generate import synthesize

    run_dir = out / f"eps-{label(epsilon)}"
    marker = run_dir / DONE
    if marker.is_file():
        return json.loads(marker.read_text())
    bcfg = budget_config(cfg, epsilon)
    rounds = simulate(bcfg, run_dir)
    if rounds < bcfg.federation.rounds:
        raise FedsynthError(f"{run_dir}: federated training stopped after round {rounds}")
    checkpoint = run_dir / "checkpoints" / "generator.safetensors"
    synthetic = run_dir / "synthetic"
    if synthetic.exists():  # a half-finished earlier attempt: atomic, so complete or absent
        shutil.rmtree(synthetic)
    synthesize(bcfg, checkpoint, synthetic, cases=bcfg.benchmark.synthetic_cases)
    run_benchmark(_with_arms(bcfg, SYNTHETIC_ARMS), run_dir, synthetic=synthetic)
    audit = run_audit(run_dir, synthetic_dir=synthetic, overwrite=True)
    privacy = json.loads((run_dir / "privacy.json").read_text())
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
    atomic_write_json(marker, summary)
    return summary


def run_sweep(cfg: Config, epsilons: list[float], out: Path) -> Path:
    """Every budget, the baselines once, then the table, plots and one HTML page."""
    from fedsynth.report.html import write_sweep_report
    from fedsynth.sweep.summary import write_summary

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", config_to_yaml(cfg))
    print(f"[baselines] real-data arms {', '.join(REAL_ARMS)} ...", flush=True)
    run_baselines(cfg, out)
    for i, eps in enumerate(epsilons, 1):
        print(f"[{i}/{len(epsilons)}] epsilon = {label(eps)} ...", flush=True)
        run_budget(cfg, eps, out)
    table = write_summary(out, epsilons)
    runs = [out / f"eps-{label(e)}" for e in epsilons]
    write_sweep_report(runs, out / "report.html", title="fedsynth privacy sweep")
    return table
