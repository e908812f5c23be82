"""Training-batch augmentation of the benchmark's segmenters, vectorised in torch.

Two families, each on by its own switch:

- geometry and scanner gain (``benchmark.augment``): random flips along each in-plane axis,
  per-slice, per-contrast gain 1 +- 0.1 and offset +- 0.1 inside the brain (what MONAI's BraTS
  tutorials use: RandScaleIntensity / RandShiftIntensity 0.1);
- acquisition (``benchmark.acquisition_augment``): Gaussian blur, gamma and Gaussian noise
  with nnU-Net's kinds of ranges (blur sigma 0.5-1 px, gamma 0.7-1.5, noise sigma up to 0.1
  of the [-1, 1] intensity range), noise on half the slices rather than nnU-Net's tenth;
  and (``benchmark.bias_field_augment``) a smooth multiplicative bias field per contrast,
  MONAI's ``RandBiasField`` with its default degree and coefficient range; and
  (``benchmark.texture_augment``) spatially correlated multiplicative noise (white noise
  smoothed over ~1 px): resampled MRI noise and tissue texture are correlated between
  neighbouring pixels, and a segmenter that only met white noise reads such blobs as lesions.
  Why: a pix2pix generator renders the conditional mean of an image, so synthetic slices
  carry no acquisition noise, bias or blur (see any sample grid), and a segmenter trained on
  them alone meets all of them for the first time on the test patients. The ranges were set
  once (nnU-Net's and MONAI's defaults; texture: our choice of gain <= 0.1 over 1 px) and not
  tuned; whether bias field and texture are on was decided on public data only
  (docs/benchmark.md, "Choosing the augmentation on a public consortium").

Everything happens inside the brain; the background stays exactly -1, as the cache stores it.
Parameters come from the caller's numpy generator, so a seed reproduces the batch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import RandBiasField

JITTER_SCALE = 0.1  # gain 1 +- this
JITTER_SHIFT = 0.1  # offset +- this
BLUR_PROB, BLUR_SIGMA = 0.2, (0.5, 1.0)  # per slice; sigma in pixels
GAMMA_PROB, GAMMA_RANGE = 0.3, (0.7, 1.5)  # per slice and contrast
NOISE_PROB, NOISE_SIGMA = 0.5, (0.0, 0.1)  # per slice; sigma in [-1, 1] intensity units
BIAS_PROB = 0.3  # per slice and contrast; field: MONAI RandBiasField defaults (degree 3)
TEXTURE_PROB, TEXTURE_GAIN, TEXTURE_SIGMA = 0.5, (0.0, 0.1), 1.0  # per slice; sd; pixels


def flips_and_gain(
    x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """x float32 (B, 4, S, S), y int64 (B, 1, S, S) -> flipped and gain/offset-jittered
    copies (labels flipped with their images)."""
    b = x.shape[0]
    for axis in (2, 3):
        flip = torch.from_numpy(rng.random(b) < 0.5)
        if flip.any():
            x, y = x.clone(), y.clone()
            x[flip] = x[flip].flip(axis)
            y[flip] = y[flip].flip(axis)
    scale = torch.from_numpy(rng.uniform(1 - JITTER_SCALE, 1 + JITTER_SCALE, (b, 4, 1, 1)))
    shift = torch.from_numpy(rng.uniform(-JITTER_SHIFT, JITTER_SHIFT, (b, 4, 1, 1)))
    return _in_brain(x, x * scale.float() + shift.float()), y


def acquisition(
    x: torch.Tensor, rng: np.random.Generator, bias_field: bool = False, texture: bool = False
) -> torch.Tensor:
    """x float32 (B, 4, S, S) -> a copy with random blur, gamma and noise (and, with
    ``bias_field``, a smooth bias field; with ``texture``, correlated noise) inside the brain."""
    b = x.shape[0]
    out = bias_fields(x, rng) if bias_field else x.clone()
    if texture:
        out = correlated_noise(out, rng)
    for i in np.flatnonzero(rng.random(b) < BLUR_PROB):
        out[i] = _blur(out[i], float(rng.uniform(*BLUR_SIGMA)))
    gamma = np.where(rng.random((b, 4)) < GAMMA_PROB, rng.uniform(*GAMMA_RANGE, (b, 4)), 1.0)
    g = torch.from_numpy(gamma).float()[..., None, None]
    out = ((out.clamp(-1, 1) + 1) / 2) ** g * 2 - 1
    sigma = np.where(rng.random(b) < NOISE_PROB, rng.uniform(*NOISE_SIGMA, b), 0.0)
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    noise = (
        torch.randn(out.shape, generator=gen) * torch.from_numpy(sigma).float()[:, None, None, None]
    )
    return _in_brain(x, out + noise)


def bias_fields(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """x float32 (B, 4, S, S) in [-1, 1] -> a copy where each (slice, contrast) is, with
    probability BIAS_PROB, multiplied (on the [0, 1] intensity scale) by its own random
    smooth field exp(Legendre polynomial of degree 3) from MONAI's RandBiasField."""
    out = x.clone()
    field = RandBiasField(prob=1.0)
    field.set_random_state(seed=int(rng.integers(2**31)))
    for i, c in np.argwhere(rng.random(x.shape[:2]) < BIAS_PROB):
        unit = (out[i, c : c + 1] + 1) / 2
        out[i, c] = torch.as_tensor(field(unit)).float()[0] * 2 - 1
    return out


def correlated_noise(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """x float32 (B, 4, S, S) in [-1, 1] -> a copy where each slice is, with probability
    TEXTURE_PROB, multiplied (on the [0, 1] scale) by 1 + g * n, n unit-sd white noise smoothed
    by a Gaussian of TEXTURE_SIGMA pixels (one field per contrast), g ~ U(TEXTURE_GAIN)."""
    out = x.clone()
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    for i in np.flatnonzero(rng.random(x.shape[0]) < TEXTURE_PROB):
        n = _blur(torch.randn(x.shape[1:], generator=gen), TEXTURE_SIGMA)
        n = n / n.std(dim=(1, 2), keepdim=True).clamp_min(1e-6)
        gain = float(rng.uniform(*TEXTURE_GAIN))
        out[i] = ((out[i] + 1) / 2 * (1 + gain * n)) * 2 - 1
    return out


def _blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """img (C, S, S) blurred by a separable Gaussian of ``sigma`` pixels (reflect padding)."""
    radius = max(1, int(round(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = img.shape[0]
    z = F.pad(img[None], (radius, radius, radius, radius), mode="reflect")
    z = F.conv2d(z, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    z = F.conv2d(z, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return z[0]


def _in_brain(original: torch.Tensor, changed: torch.Tensor) -> torch.Tensor:
    """``changed`` clamped to [-1, 1] inside the brain of ``original``; -1 outside it."""
    brain = (original > -1.0).any(dim=1, keepdim=True)
    return torch.where(brain, changed.clamp(-1.0, 1.0), original)
