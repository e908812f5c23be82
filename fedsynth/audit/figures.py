"""The audit's figures: roc.png, memorisation.png, closest_pairs.png (written atomically)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fedsynth.common.data.brats import MODALITIES
from fedsynth.common.io.atomic import save_figure


def plot_roc(membership: Any, path: Path) -> Path:
    """ROC curves of the membership attack (overall and per site), linear and log FPR axes."""
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    curves = [("overall", membership.overall)] + sorted(membership.per_site.items())
    for ax, log in zip(axes, (False, True), strict=True):
        for name, res in curves:
            fpr = np.maximum(res.fpr, 1e-4) if log else res.fpr
            ax.step(fpr, res.tpr, where="post", lw=2.2 if name == "overall" else 1,
                    label=f"{name} AUC {res.auc:.2f} ({res.members} vs {res.nonmembers})")  # fmt: skip
        grid = np.logspace(-4, 0, 50) if log else np.linspace(0, 1, 2)
        ax.plot(grid, grid, "k--", lw=0.8, label="chance")
        ax.set_xlabel("false-positive rate" + (" (log)" if log else ""))
        ax.set_ylabel("true-positive rate")
        if log:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlim(1e-4, 1)
            ax.set_ylim(1e-4, 1.05)
            ax.axvline(1 / membership.overall.nonmembers, color="grey", lw=0.8, ls=":")
            ax.set_title("log axes; dotted: FPR resolution 1/n", fontsize=9)
        else:
            ax.set_title("membership inference by reconstruction error (patients)", fontsize=9)
            ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
    return Path(path)


def plot_memorisation(mem: Any, path: Path) -> Path:
    """Left: ratio d_train / d_heldout of held-out real vs synthetic slices, with the flag
    threshold. Right: d_train against d_heldout per slice."""
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    ref, syn = mem.reference.ratio, mem.synthetic.ratio
    both = np.r_[ref[np.isfinite(ref)], syn[np.isfinite(syn)]]
    bins = np.linspace(0, max(float(both.max()) if len(both) else 1.0, 1e-3), 30)
    axes[0].hist(ref[np.isfinite(ref)], bins, alpha=0.6, density=True, label="held-out real")
    axes[0].hist(syn[np.isfinite(syn)], bins, alpha=0.6, density=True, label="synthetic")
    axes[0].axvline(mem.threshold, color="k", ls="--",
                    label=f"5th pct of real: {mem.threshold:.3f}")  # fmt: skip
    axes[0].set_xlabel("d_train / d_heldout")
    axes[0].set_title(f"{mem.flagged.mean():.1%} of synthetic slices flagged (expect ~5%)",
                      fontsize=9)  # fmt: skip
    axes[0].legend(fontsize=7)
    for name, nb in (("held-out real", mem.reference), ("synthetic", mem.synthetic)):
        axes[1].scatter(nb.d_heldout, nb.d_train, s=6, alpha=0.6, label=name)
    hi = max(
        np.nanmax(
            np.r_[mem.reference.d_heldout, mem.synthetic.d_heldout, 1e-3][
                np.isfinite(np.r_[mem.reference.d_heldout, mem.synthetic.d_heldout, 1e-3])
            ]
        ),
        1e-3,
    )
    axes[1].plot([0, hi], [0, hi], "k:", lw=0.8)
    axes[1].set_xlabel("RMS distance to nearest held-out slice")
    axes[1].set_ylabel("RMS distance to nearest training slice")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
    return Path(path)


def _grey(img: np.ndarray) -> np.ndarray:
    """(S, S) in [-1, 1] -> (S, S) in [0, 1], radiologically upright (anterior at the top)."""
    return ((np.clip(img, -1, 1) + 1) / 2).T[::-1]


def plot_closest_pairs(
    mem: Any, synthetic_images: np.ndarray, train_images: np.ndarray, path: Path, k: int = 6
) -> Path:
    """The k synthetic slices with the lowest ratio: per row the synthetic slice and its
    nearest training slice, each contrast side by side."""
    order = np.argsort(mem.synthetic.ratio, kind="stable")[:k]
    rows = []
    for q in order:
        j = mem.synthetic.i_train[q]
        syn = [_grey(synthetic_images[q, c]) for c in range(len(MODALITIES))]
        trn = [_grey(train_images[j, c]) for c in range(len(MODALITIES))]
        rows.append(np.concatenate(syn + [np.ones_like(syn[0][:, :2])] + trn, axis=1))
    fig = Figure(figsize=(10, 1.3 * max(len(rows), 1) + 0.6))
    ax = fig.subplots()
    if rows:
        ax.imshow(np.concatenate(rows, axis=0), cmap="gray", vmin=0, vmax=1,
                  interpolation="nearest")  # fmt: skip
        size = synthetic_images.shape[-1]
        ax.set_yticks([size * (i + 0.5) for i in range(len(rows))],
                      [f"ratio {mem.synthetic.ratio[q]:.3f}\nd {mem.synthetic.d_train[q]:.3f}"
                       for q in order], fontsize=7)  # fmt: skip
        labels = [f"synthetic {m}" for m in MODALITIES] + [f"nearest train {m}" for m in MODALITIES]
        ticks = [size * (i + 0.5) for i in range(4)] + [
            size * (i + 0.5) + 2 + 4 * size for i in range(4)
        ]
        ax.set_xticks(ticks, labels, fontsize=7, rotation=30)
    else:
        ax.text(0.5, 0.5, "no synthetic slices", ha="center")
    ax.set_title("synthetic slices closest to a training slice (lowest d_train / d_heldout)",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    return Path(path)
