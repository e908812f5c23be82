"""The sweep's table and plots: utility, image quality and measured leakage per budget.

``sweep.csv`` has one row per budget: target and spent epsilon, delta, Dice per region of the
``synthetic`` and ``local+synthetic`` arms (mean over seeds; per-site arms averaged over
sites first), held-out MAE/SSIM of the final global generator, membership-inference AUC.
``local`` and ``pooled`` (real data, run once) are the reference lines of the Dice plot.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from fedsynth.benchmark.metrics import REGIONS
from fedsynth.common.io.atomic import atomic_write_text, save_figure
from fedsynth.common.rundir import RunDir, SweepDir
from fedsynth.sweep.budgets import SYNTHETIC_ARMS, label

COLUMNS = (
    "epsilon", "worst_epsilon", "delta",
    *[f"{arm}_dice_{r}" for arm in SYNTHETIC_ARMS for r in REGIONS],
    "mae", "ssim", "membership_auc",
)  # fmt: skip


def arm_dice(results_csv: Path) -> dict[str, dict[str, float]]:
    """{arm: {region: mean Dice over seeds}} using each arm's summary site ('mean' or 'all')."""
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    with open(results_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row["metric"] == "dice" and row["site"] in ("mean", "all"):
                values[(row["arm"], row["region"])].append(float(row["value"]))
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for (arm, region), v in values.items():
        out[arm][region] = sum(v) / len(v)
    return dict(out)


def final_quality(run_dir: Path) -> dict[str, float]:
    """Held-out mean MAE/PSNR/SSIM of the last round that measured it."""
    quality: dict[str, float] = {}
    for rec in RunDir(run_dir).read_metrics():
        if rec.get("kind") == "round" and rec.get("mean"):
            quality = rec["mean"]
    return quality


def budget_row(out: Path, epsilon: float) -> dict[str, Any]:
    run = SweepDir(out).budget(label(epsilon))
    done = json.loads(SweepDir.done(run.root).read_text())
    dice = arm_dice(run.benchmark / "results.csv")
    quality = final_quality(run.root)
    row: dict[str, Any] = {
        "epsilon": label(epsilon),
        "worst_epsilon": done["worst_epsilon"] if done["dp_enabled"] else math.inf,
        "delta": done["delta"] if done["dp_enabled"] else None,
        "mae": quality.get("mae"),
        "ssim": quality.get("ssim"),
        "membership_auc": done["membership_auc"],
    }
    for arm in SYNTHETIC_ARMS:
        for region in REGIONS:
            row[f"{arm}_dice_{region}"] = dice.get(arm, {}).get(region)
    return row


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "infinity (no DP)" if math.isinf(v) else f"{v:.3g}"
    return str(v)


def markdown(rows: list[dict[str, Any]], baselines: dict[str, dict[str, float]]) -> str:
    lines = [
        "# Privacy sweep",
        "",
        "Epsilon is per patient (the protected unit), spent by the worst site, at the delta "
        "shown; both GAN steps of every round were accounted (see each run's privacy.json). "
        "Dice: mean over seeds (and sites for per-site arms) on the held-out patients. "
        "Membership AUC 0.5 = the attack does no better than chance.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    lines += ["", "Real-data references (no synthetic data, no generator):", ""]
    for arm, regions in sorted(baselines.items()):
        lines.append(f"- {arm}: " + ", ".join(f"Dice {r} {v:.3f}" for r, v in regions.items()))
    return "\n".join(lines) + "\n"


def _x(rows: list[dict[str, Any]]) -> tuple[list[float], list[str]]:
    """Plot positions: budgets in the order given, evenly spaced, labelled."""
    return list(range(len(rows))), [r["epsilon"] for r in rows]


def plot_dice(rows, baselines, path: Path) -> None:

    xs, labels = _x(rows)
    fig = Figure(figsize=(4.2 * len(REGIONS), 3.4))
    axes = fig.subplots(1, len(REGIONS), sharey=True)
    for ax, region in zip(axes, REGIONS, strict=True):
        for arm in SYNTHETIC_ARMS:
            ys = [r[f"{arm}_dice_{region}"] for r in rows]
            ax.plot(xs, [math.nan if y is None else y for y in ys], "o-", label=arm)
        for arm, style in (("local", "--"), ("pooled", ":")):
            if region in baselines.get(arm, {}):
                ax.axhline(baselines[arm][region], color="k", ls=style, lw=1, label=f"{arm} (real)")
        ax.set_xticks(xs, labels)
        ax.set_xlabel("epsilon per patient")
        ax.set_title(f"Dice {region}")
    axes[0].set_ylabel("Dice (held-out)")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def plot_quality_and_leakage(rows, path: Path) -> None:

    xs, labels = _x(rows)
    fig = Figure(figsize=(12, 3.4))
    axes = fig.subplots(1, 3)
    for ax, key, title in zip(
        axes, ("mae", "ssim", "membership_auc"),
        ("held-out MAE (lower is better)", "held-out SSIM", "membership-inference AUC"),
        strict=True,
    ):  # fmt: skip
        ax.plot(xs, [math.nan if r[key] is None else r[key] for r in rows], "o-")
        ax.set_xticks(xs, labels)
        ax.set_xlabel("epsilon per patient")
        ax.set_title(title)
    axes[2].axhline(0.5, color="k", ls="--", lw=1)
    axes[2].set_ylim(0.0, 1.0)  # the full range: small differences around 0.5 are noise here
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def write_summary(out: Path, epsilons: list[float]) -> Path:
    sweep = SweepDir(out)
    rows = [budget_row(out, e) for e in epsilons]
    baselines = arm_dice(RunDir(sweep.baselines).benchmark / "results.csv")
    body = [",".join(COLUMNS)] + [",".join(_csv(r.get(c)) for c in COLUMNS) for r in rows]
    atomic_write_text(sweep.table, "\n".join(body) + "\n")
    atomic_write_text(sweep.markdown, markdown(rows, baselines))
    plot_dice(rows, baselines, sweep.plots / "dice_vs_epsilon.png")
    plot_quality_and_leakage(rows, sweep.plots / "quality_and_leakage_vs_epsilon.png")
    return sweep.markdown


def _csv(v: Any) -> str:
    if v is None:
        return ""
    return "inf" if isinstance(v, float) and math.isinf(v) else str(v)
