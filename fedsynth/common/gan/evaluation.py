"""Held-out evaluation of a generator: image quality and the sample grid.

Both use FIXED held-out slices (same cache and seed -> same slices), so numbers and pictures
from different steps, runs and sites are comparable.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsynth.common.data.brats import MODALITIES
from fedsynth.common.data.datasets import condition_channels
from fedsynth.common.io.atomic import save_figure
from fedsynth.common.metrics.image_quality import image_quality, mean_over_contrasts

Generate = Callable[[torch.Tensor], torch.Tensor]  # cond (B, 7, S, S) -> images (B, 4, S, S)
LABEL_COLOURS = np.array(  # background, CSF, GM, WM, necrotic, oedema, enhancing
    [[0, 0, 0], [0.2, 0.2, 0.6], [0.5, 0.5, 0.5], [0.85, 0.85, 0.85], [0.9, 0.1, 0.1],
     [0.1, 0.8, 0.2], [1.0, 0.9, 0.1]]
)  # fmt: skip


def eval_indices(cache: Any, n: int, seed: int) -> np.ndarray:
    """int64 (<= n,) held-out slice indices for image quality: a seeded, sorted subset,
    half of it (where available) from slices with tumour, where synthesis is hardest."""
    rng = np.random.default_rng(seed)
    tumour = np.flatnonzero(cache.has_tumour)
    other = np.flatnonzero(~np.asarray(cache.has_tumour))
    k = min(len(tumour), n // 2)
    picked = list(rng.choice(tumour, k, replace=False)) if k else []
    rest = min(len(other), n - k)
    picked += list(rng.choice(other, rest, replace=False)) if rest else []
    return np.sort(np.asarray(picked, dtype=np.int64))


def _batch(cache: Any, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    cond = condition_channels(cache.tissue[indices], cache.labels[indices])
    real = np.ascontiguousarray(cache.images[indices], dtype=np.float32)
    return torch.from_numpy(cond), torch.from_numpy(real)


def evaluate_quality(generate: Generate, cache: Any, indices: np.ndarray) -> dict[str, Any]:
    """{"quality": {contrast: {mae, psnr, ssim}}, "mean": {mae, psnr, ssim}, "slices": n}."""
    if len(indices) == 0:
        return {"quality": {}, "mean": {}, "slices": 0}
    cond, real = _batch(cache, indices)
    quality = image_quality(generate(cond), real)
    return {"quality": quality, "mean": mean_over_contrasts(quality), "slices": int(len(indices))}


def label_map_rgb(cond: np.ndarray) -> np.ndarray:
    """(7, S, S) one-hot condition -> (S, S, 3) float RGB for display."""
    return LABEL_COLOURS[cond.argmax(0)]


def save_sample_grid(
    generate: Generate, cache: Any, indices: np.ndarray, path: str | Path, title: str = ""
) -> Path:
    """PNG, one row per slice: label map | real and fake for each contrast."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cond, real = _batch(cache, indices)
    fake = generate(cond)
    cols = 1 + 2 * len(MODALITIES)
    rows = max(1, len(indices))
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.3 * rows + 0.4), squeeze=False)
    titles = ["label map"] + [f"{k} {m}" for m in MODALITIES for k in ("real", "fake")]
    for r in range(len(indices)):
        panels = [label_map_rgb(cond[r].numpy())]
        for c in range(len(MODALITIES)):
            panels += [real[r, c].numpy(), fake[r, c].numpy()]
        for ax, img in zip(axes[r], panels, strict=True):
            ax.imshow(img.transpose(1, 0, *range(2, img.ndim))[::-1], cmap="gray", vmin=-1, vmax=1)
    for ax, t in zip(axes[0], titles, strict=True):
        ax.set_title(t, fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return Path(path)
