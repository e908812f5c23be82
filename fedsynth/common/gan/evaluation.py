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
from matplotlib.figure import Figure

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


def slice_batch(cache: Any, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond float32 (n, 7, S, S) one-hot, real float32 (n, 4, S, S) in [-1, 1]) of slices."""
    cond = condition_channels(cache.tissue[indices], cache.labels[indices])
    real = np.ascontiguousarray(cache.images[indices], dtype=np.float32)
    return torch.from_numpy(cond), torch.from_numpy(real)


def evaluate_quality(generate: Generate, cache: Any, indices: np.ndarray) -> dict[str, Any]:
    """{"quality": {contrast: {mae, psnr, ssim}}, "mean": {mae, psnr, ssim}, "slices": n}."""
    if len(indices) == 0:
        return {"quality": {}, "mean": {}, "slices": 0}
    cond, real = slice_batch(cache, indices)
    quality = image_quality(generate(cond), real)
    return {"quality": quality, "mean": mean_over_contrasts(quality), "slices": int(len(indices))}


def label_map_rgb(cond: np.ndarray) -> np.ndarray:
    """(7, S, S) one-hot condition -> (S, S, 3) float RGB for display."""
    return LABEL_COLOURS[cond.argmax(0)]


def sample_mosaic(cond: torch.Tensor, real: torch.Tensor, fake: torch.Tensor) -> np.ndarray:
    """(rows*S, 9*S, 3) RGB in [0, 1]: per slice, label map | real, fake for each contrast.

    Slices are shown radiologically upright: anterior at the top (RAS arrays are indexed x, y).
    """
    rows = []
    for r in range(cond.shape[0]):
        panels = [label_map_rgb(cond[r].numpy())]
        for c in range(len(MODALITIES)):
            for img in (real[r, c], fake[r, c]):
                grey = (img.numpy().clip(-1, 1) + 1) / 2
                panels.append(np.repeat(grey[..., None], 3, axis=2))
        rows.append(np.concatenate([p.transpose(1, 0, 2)[::-1] for p in panels], axis=1))
    return np.concatenate(rows, axis=0)


def save_sample_grid(
    generate: Generate, cache: Any, indices: np.ndarray, path: str | Path, title: str = ""
) -> Path:
    """PNG, one row per slice: label map | real and fake for each contrast."""
    if len(indices) == 0:
        raise ValueError("no held-out slices to show")
    cond, real = slice_batch(cache, indices)
    mosaic = sample_mosaic(cond, real, generate(cond))
    size = cond.shape[-1]
    cols = 1 + 2 * len(MODALITIES)
    # One axes with one image: far cheaper than a subplot per panel.
    fig = Figure(figsize=(1.2 * cols, 1.2 * len(indices) + 0.5))
    ax = fig.subplots()
    ax.imshow(mosaic, interpolation="nearest")
    labels = ["label map"] + [f"{k} {m}" for m in MODALITIES for k in ("real", "fake")]
    ax.set_xticks([size * (i + 0.5) for i in range(cols)], labels, fontsize=7, rotation=30)
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    return Path(path)
