"""Image quality inside the brain: MAE, PSNR and SSIM per contrast.

Images are in [-1, 1] (data range 2) and -1 outside the brain, so whole-image scores would be
inflated by the empty background: every metric here is restricted to the brain mask. SSIM
comes from MONAI's ``compute_ssim_and_cs`` (Gaussian window), whose local SSIM map is then
averaged over brain pixels only. Empty masks give nan (no brain, no score).
"""

from __future__ import annotations

import math

import torch
from monai.metrics.regression import compute_ssim_and_cs

from fedsynth.common.data.brats import MODALITIES

DATA_RANGE = 2.0  # images in [-1, 1]
SSIM_WINDOW = 7  # small window: slices may be only 32 px wide
SSIM_SIGMA = 1.5


def brain_mask(real: torch.Tensor) -> torch.Tensor:
    """bool (B, S, S): pixels where any ground-truth contrast is above the -1 background."""
    return (real > -1 + 1e-6).any(dim=1)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    n = mask.sum()
    return float((values * mask).sum() / n) if n > 0 else math.nan


def ssim_in_mask(fake: torch.Tensor, real: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean local SSIM over mask pixels; fake, real (B, 1, S, S), mask (B, S, S)."""
    k = SSIM_WINDOW
    if min(fake.shape[-2:]) < k:
        return math.nan
    ssim_map, _ = compute_ssim_and_cs(
        fake.float(),
        real.float(),
        spatial_dims=2,
        kernel_size=(k, k),
        kernel_sigma=(SSIM_SIGMA, SSIM_SIGMA),
        data_range=DATA_RANGE,
    )
    h = k // 2  # the "valid" convolution drops h pixels on each side
    inner = mask[:, h : mask.shape[1] - h, h : mask.shape[2] - h]
    return _masked_mean(ssim_map[:, 0], inner)


def image_quality(
    fake: torch.Tensor, real: torch.Tensor, mask: torch.Tensor | None = None
) -> dict[str, dict[str, float]]:
    """{contrast: {"mae", "psnr", "ssim"}} over all brain pixels of the batch.

    fake, real: float (B, 4, S, S) in [-1, 1], channels t1, t1c, t2, flair. mask: bool
    (B, S, S), default ``brain_mask(real)``. MAE is in image units (range 2); PSNR in dB with
    peak = data range 2; SSIM in [-1, 1].
    """
    if fake.shape != real.shape or fake.dim() != 4 or fake.shape[1] != len(MODALITIES):
        raise ValueError(
            f"need two (B, 4, S, S) tensors, got {tuple(fake.shape)}, {tuple(real.shape)}"
        )
    mask = brain_mask(real) if mask is None else mask.bool()
    out: dict[str, dict[str, float]] = {}
    for c, name in enumerate(MODALITIES):
        f, r = fake[:, c].float(), real[:, c].float()
        mae = _masked_mean((f - r).abs(), mask)
        mse = _masked_mean((f - r) ** 2, mask)
        psnr = 10 * math.log10(DATA_RANGE**2 / mse) if mse > 0 else math.inf
        if math.isnan(mse):
            psnr = math.nan
        ssim = ssim_in_mask(f[:, None], r[:, None], mask)
        out[name] = {"mae": mae, "psnr": psnr, "ssim": ssim}
    return out


def mean_over_contrasts(quality: dict[str, dict[str, float]]) -> dict[str, float]:
    """{"mae", "psnr", "ssim"} averaged over the contrasts."""
    keys = ("mae", "psnr", "ssim")
    return {k: float(sum(q[k] for q in quality.values()) / len(quality)) for k in keys}
