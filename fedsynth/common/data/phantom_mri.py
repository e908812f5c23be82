"""MRI contrasts and scanner effects of the phantom cohort.

Each voxel is a mixture of seven classes (background, CSF, GM, WM, necrotic core, oedema,
enhancing tumour); each contrast gives every class a mean intensity (relative to white matter
on T1). The table follows how tissues look on real scans and is what makes the phantom a fair
segmentation test:

- T1: WM > GM > CSF; tumour hypointense, enhancing rim barely visible.
- T1c: as T1, but the enhancing rim is the brightest thing in the brain and necrosis is dark.
- T2: CSF brightest; oedema and necrosis nearly as bright as CSF (T2 alone confuses them).
- FLAIR: CSF suppressed (dark), oedema bright, necrosis intermediate.

Scanner sites then change contrast (gamma), intensity scale, bias field, blur and noise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from fedsynth.common.data.brats import MODALITIES
from fedsynth.common.data.phantom_anatomy import smooth_field

# Mean intensity per class: background, CSF, GM, WM, necrotic, oedema, enhancing.
CLASS_MEANS: dict[str, tuple[float, ...]] = {
    "t1": (0.0, 0.30, 0.56, 0.80, 0.30, 0.46, 0.52),
    "t1c": (0.0, 0.30, 0.58, 0.80, 0.22, 0.48, 1.15),
    "t2": (0.0, 1.00, 0.62, 0.42, 0.92, 0.86, 0.62),
    "flair": (0.0, 0.12, 0.64, 0.48, 0.42, 0.92, 0.72),
}
STORAGE_SCALE = 1000.0  # stored int16 value of white matter on T1 at a neutral site


@dataclass(frozen=True)
class SiteProfile:
    """Scanner effects and tumour mix of one simulated scanner site."""

    name: str  # "scanner-0", ...
    gamma: tuple[float, ...]  # contrast change per modality (intensity ** gamma)
    scale: tuple[float, ...]  # intensity scale per modality
    noise: float  # Rician noise sd, relative to white matter on T1
    blur_vox: tuple[float, float, float]  # Gaussian blur sd in voxels (x, y, z): thick slices
    bias: float  # bias field strength (sd of the log field)
    mean_radius_mm: float  # typical tumour core radius at this site
    high_grade_prob: float  # share of enhancing (high-grade) tumours

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def site_profiles(seed: int, n_sites: int) -> list[SiteProfile]:
    """Scanner profiles; noise, blur and tumour size are spread evenly so sites always differ."""
    rng = np.random.default_rng([seed, 2])
    spread = np.linspace(0.0, 1.0, n_sites) if n_sites > 1 else np.array([0.5])
    noise_q, blur_q, size_q = (rng.permutation(spread) for _ in range(3))
    out = []
    for k in range(n_sites):
        out.append(
            SiteProfile(
                name=f"scanner-{k}",
                gamma=tuple(float(g) for g in rng.uniform(0.8, 1.25, len(MODALITIES))),
                scale=tuple(float(s) for s in rng.uniform(0.7, 1.4, len(MODALITIES))),
                noise=float(0.015 + 0.045 * noise_q[k]),
                blur_vox=(0.3 * blur_q[k], 0.3 * blur_q[k], 0.2 + 1.0 * blur_q[k]),
                bias=float(rng.uniform(0.05, 0.25)),
                mean_radius_mm=float(9.0 + 8.0 * size_q[k]),
                high_grade_prob=float(rng.uniform(0.55, 0.95)),
            )
        )
    return out


def class_fractions(anatomy: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Partial-volume fraction of each class, float32 (7, X, Y, Z), summing to 1.

    anatomy: float32 (3, X, Y, Z) CSF / GM / WM probabilities; labels: uint8 (X, Y, Z)
    tumour labels 0..3 (internal). Tumour edges are softened by half a voxel so they look
    like acquired boundaries, not staircases.
    """
    brain = np.clip(anatomy.sum(0), 0.0, 1.0)
    healthy = anatomy / np.maximum(anatomy.sum(0), 1.0)[None]
    tumour = np.zeros((3, *labels.shape), np.float32)
    if labels.any():
        box = _bounding_box(labels > 0, margin=2)
        for i in range(3):
            onehot = (labels[box] == i + 1).astype(np.float32)
            tumour[(i, *box)] = ndimage.gaussian_filter(onehot, 0.5)
        tumour *= brain[None]  # no tumour signal outside the brain
    rest = 1.0 - tumour.sum(0)
    background = (1.0 - brain)[None]
    return np.concatenate([background * rest, healthy * rest, tumour]).astype(np.float32)


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + 1 + margin, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def render_contrasts(
    rng: np.random.Generator,
    fractions: np.ndarray,
    brain_mask: np.ndarray,
    site: SiteProfile,
    voxel_size: float,
) -> dict[str, np.ndarray]:
    """The four MRI contrasts of one subject as acquired at ``site``.

    fractions: float32 (7, X, Y, Z) from ``class_fractions``; brain_mask: bool (X, Y, Z).
    Returns {modality: int16 (X, Y, Z)}, >= 0, 0 outside the brain (skull-stripped like
    BraTS), white matter around ``STORAGE_SCALE``.
    """
    shape = brain_mask.shape
    # Tissue texture shared by all contrasts (it is anatomy); tumours are more heterogeneous.
    texture = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 1.0)
    texture /= max(float(texture.std()), 1e-6)
    tumour = fractions[4:].sum(0)
    texture_gain = 1.0 + (0.03 + 0.10 * tumour) * texture
    out = {}
    for m, modality in enumerate(MODALITIES):
        means = np.asarray(CLASS_MEANS[modality], np.float32)
        image = np.tensordot(means, fractions, axes=1) * texture_gain
        image = np.clip(image, 0.0, None) ** site.gamma[m]
        image *= np.exp(site.bias * smooth_field(rng, shape, 60.0 / voxel_size))
        if any(site.blur_vox):
            image = ndimage.gaussian_filter(image, site.blur_vox)
        noise = site.noise * rng.standard_normal((2, *shape), dtype=np.float32)
        image = np.sqrt((image + noise[0]) ** 2 + noise[1] ** 2)  # Rician magnitude noise
        image = np.where(brain_mask, image * site.scale[m] * STORAGE_SCALE, 0.0)
        out[modality] = np.clip(np.rint(image), 0, np.iinfo(np.int16).max).astype(np.int16)
    return out
