"""Figures of the benchmark: bars per region, per-site gains over local, prediction overlays.

All figures are written atomically as PNG with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedsynth.benchmark.arms import ALL_SITES, ArmOutcome
from fedsynth.benchmark.metrics import REGIONS
from fedsynth.benchmark.report import headline_site
from fedsynth.benchmark.results import MEAN_SITE, Row, summary
from fedsynth.common.data.cache import SliceCache
from fedsynth.common.io.atomic import save_figure

# Label colours for overlays: necrotic/core, oedema, enhancing (RGBA).
_LABEL_RGBA = np.array(
    [[0, 0, 0, 0], [1.0, 0.2, 0.2, 0.6], [0.2, 0.9, 0.2, 0.45], [1.0, 0.9, 0.1, 0.7]]
)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def region_bars(rows: Sequence[Row], metric: str, path: Path) -> None:
    """One panel per region: each arm's headline score, error bars = std over seeds."""
    plt = _pyplot()
    stats = summary(rows)
    arms = list(dict.fromkeys(str(r["arm"]) for r in rows))
    sites_of = {a: {str(r["site"]) for r in rows if r["arm"] == a} for a in arms}
    fig, axes = plt.subplots(1, len(REGIONS), figsize=(4 * len(REGIONS), 3.6), sharey=True)
    for ax, region in zip(axes, REGIONS, strict=True):
        means, stds = zip(
            *(stats[(a, headline_site(a, sites_of), region, metric)][:2] for a in arms), strict=True
        )
        ax.bar(
            range(len(arms)), means, yerr=stds, color=[f"C{i}" for i in range(len(arms))], capsize=3
        )
        ax.set_xticks(range(len(arms)), arms, rotation=35, ha="right", fontsize=8)
        ax.set_title(region)
    axes[0].set_ylabel(metric)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def site_gains(diffs: Sequence[Row], metric: str, region: str, path: Path) -> None:
    """Grouped bars: per site (and the mean), each arm's paired gain over local."""
    plt = _pyplot()
    chosen = [d for d in diffs if d["metric"] == metric and d["region"] == region]
    arms = list(dict.fromkeys(str(d["arm"]) for d in chosen))
    sites = sorted({str(d["site"]) for d in chosen} - {MEAN_SITE}) + [MEAN_SITE]
    value = {(d["arm"], d["site"]): (float(d["mean_diff"]), float(d["std_diff"])) for d in chosen}  # type: ignore[arg-type]
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(sites) * max(1, len(arms)) / 3, 3.6))
    width = 0.8 / max(1, len(arms))
    for i, arm in enumerate(arms):
        m, s = zip(*(value.get((arm, site), (np.nan, 0.0)) for site in sites), strict=True)
        ax.bar(
            np.arange(len(sites)) + i * width,
            m,
            width,
            yerr=s,
            label=arm,
            color=f"C{i + 1}",
            capsize=2,
        )
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(sites)) + width * (len(arms) - 1) / 2, sites)
    ax.set_ylabel(f"{metric} {region}: arm - local")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def overlays(test: SliceCache, outcomes: Sequence[ArmOutcome], out_dir: Path) -> list[Path]:
    """Per kept patient: FLAIR with the true labels, then each arm's prediction (first seed;
    first site for per-site arms), on the slice with the most true tumour."""
    plt = _pyplot()
    seed = min(o.seed for o in outcomes)
    shown: dict[str, ArmOutcome] = {}
    for o in outcomes:
        if o.seed == seed and o.arm not in shown:
            shown[o.arm] = o
    paths = []
    for subject in next(iter(shown.values())).predictions if shown else []:
        p = test.patients.index(subject)
        start, stop = (int(v) for v in test.ranges[p])
        truth = np.asarray(test.labels[start:stop])
        k = int((truth > 0).sum(axis=(1, 2)).argmax())
        flair = np.asarray(test.images[start + k, 3])
        panels = [("truth", truth[k])] + [
            (f"{a}" + ("" if o.site == ALL_SITES else f" ({o.site})"), o.predictions[subject][k])
            for a, o in shown.items()
        ]
        fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.5))
        for ax, (title, labels) in zip(np.atleast_1d(axes), panels, strict=True):
            ax.imshow(flair.T, cmap="gray", origin="lower", vmin=-1, vmax=1)
            ax.imshow(_LABEL_RGBA[labels.T.astype(int)], origin="lower")
            ax.set_title(title, fontsize=7)
            ax.axis("off")
        fig.suptitle(f"{subject}, slice z={int(test.z[start + k])}", fontsize=8)
        fig.tight_layout()
        path = out_dir / f"overlay_{subject}.png"
        save_figure(fig, path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def learning_curves(curves: Sequence[Row], arm: str, path: Path) -> None:
    """Two panels for ``arm``: training loss and validation Dice against step, one line per
    model (colour: site, line style: seed), a dot at the step whose weights were kept."""
    plt = _pyplot()
    mine = [r for r in curves if r["arm"] == arm]
    models = list(dict.fromkeys((str(r["site"]), int(r["seed"])) for r in mine))  # type: ignore[call-overload]
    sites = list(dict.fromkeys(s for s, _ in models))
    seeds = sorted({sd for _, sd in models})
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(9, 3.4))
    for site, seed in models:
        rs = [r for r in mine if str(r["site"]) == site and int(r["seed"]) == seed]  # type: ignore[call-overload]
        steps = [int(r["step"]) for r in rs]  # type: ignore[call-overload]
        style = {
            "color": f"C{sites.index(site)}",
            "ls": ("-", "--", ":", "-.")[seeds.index(seed) % 4],
            "lw": 1.0,
        }
        ax_loss.plot(steps, [float(r["train_loss"]) for r in rs], **style)  # type: ignore[arg-type]
        ax_val.plot(steps, [float(r["val_dice"]) for r in rs], label=f"{site} s{seed}", **style)  # type: ignore[arg-type]
        best = int(rs[-1]["best_step"])  # type: ignore[call-overload]
        if best in steps:
            ax_val.plot(
                best, float(rs[steps.index(best)]["val_dice"]), "o", color=style["color"], ms=3
            )  # type: ignore[arg-type]
    rising = sum(
        1
        for s, sd in models
        if any(
            r["status"] == "still rising" and str(r["site"]) == s and int(r["seed"]) == sd
            for r in mine
        )
    )  # type: ignore[call-overload]
    ax_loss.set(xlabel="step", ylabel="training loss (Dice + CE)", title=f"{arm}: training loss")
    ax_val.set(
        xlabel="step",
        ylabel="validation Dice (mean WT/TC/ET)",
        title=f"{arm}: validation Dice" + (f" ({rising} still rising)" if rising else ""),
    )
    if len(models) <= 12:
        ax_val.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
