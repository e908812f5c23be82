"""Training curves of a run: ``plots/losses.png`` and ``plots/quality.png`` from metrics rows.

Drawn by the central trainer with each checkpoint and by the report when a run has no plots.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from fedsynth.common.io.atomic import save_figure


def plot_metrics(records: list[dict[str, Any]], out: Path) -> None:
    """plots/losses.png (D, G adversarial, G L1 and epsilon vs step) and plots/quality.png
    (held-out MAE, PSNR, SSIM per contrast vs step)."""
    steps = [r["step"] for r in records]
    fig = Figure(figsize=(14, 3))
    axes = fig.subplots(1, 4)
    for ax, key, label in zip(
        axes,
        ("loss_d", "loss_g_adv", "loss_g_l1", "epsilon"),
        ("D loss", "G adversarial", "G L1 (weighted)", "epsilon spent"),
        strict=True,
    ):
        ys = [r.get(key) for r in records]
        ax.plot(steps, [math.nan if y is None else y for y in ys], marker=".")
        ax.set_title(label if key != "epsilon" or any(ys) else "epsilon = infinity (no DP)")
        ax.set_xlabel("step")
    fig.tight_layout()
    save_figure(fig, out / "losses.png", dpi=90)

    fig = Figure(figsize=(12, 3))
    axes = fig.subplots(1, 3)
    for ax, metric in zip(axes, ("mae", "psnr", "ssim"), strict=True):
        contrasts = sorted({c for r in records for c in r.get("quality", {})})
        for c in contrasts:
            ys = [r.get("quality", {}).get(c, {}).get(metric) for r in records]
            ax.plot(steps, [math.nan if y is None else y for y in ys], marker=".", label=c)
        ax.set_title(f"held-out {metric.upper()} (in brain)")
        ax.set_xlabel("step")
        if contrasts:
            ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out / "quality.png", dpi=90)
