"""Procedural brain tumours for the phantom cohort: shape, sub-regions and mass effect.

A tumour is grown around a centre in deep white matter (template space, world mm). Its
boundaries are spheres perturbed by smooth random fields, so every tumour has its own
irregular shape:

- core (``d < 1 + irregularity * n1``, d = distance / radius): enhancing rim around a
  necrotic centre for high-grade tumours; for low-grade tumours the whole core is
  non-enhancing (label 1);
- oedema beyond the core, reaching further along white matter (finger-like spread);
- mass effect: tissue near the tumour is pushed outwards (a monotone radial warp).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from fedsynth.common.data.brats import BACKGROUND, ENHANCING, NECROTIC, OEDEMA

_NOISE_NODES = 7  # lattice size of the boundary noise around one tumour


@dataclass(frozen=True)
class TumourSpec:
    """Parameters of one tumour (all lengths in mm, template world space)."""

    centre_mm: tuple[float, float, float]
    radius_mm: float  # mean radius of the core (enhancing + necrotic)
    necrotic_fraction: float  # necrotic radius / core radius, in [0, 0.8]; 0: solid core
    high_grade: bool  # True: enhancing rim; False: non-enhancing core (label 1)
    oedema_extent: float  # oedema reach beyond the core, in core radii (> 0)
    irregularity: float  # boundary perturbation, fraction of the radius, in [0, 0.5)
    mass_effect: float  # radial compression strength in [0, 0.8)
    shape_seed: int  # seeds the boundary noise

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def sample_tumour(
    rng: np.random.Generator,
    centres_mm: np.ndarray,
    *,
    mean_radius_mm: float,
    high_grade_prob: float,
) -> TumourSpec:
    """Draw one tumour; the centre is a random candidate (M, 3) plus a few mm of jitter."""
    centre = centres_mm[rng.integers(len(centres_mm))] + rng.normal(0.0, 3.0, 3)
    radius = float(np.clip(rng.normal(mean_radius_mm, 0.25 * mean_radius_mm), 6.0, 30.0))
    high_grade = bool(rng.random() < high_grade_prob)
    necrotic = float(rng.uniform(0.35, 0.7)) if high_grade and rng.random() < 0.85 else 0.0
    return TumourSpec(
        centre_mm=tuple(float(c) for c in centre),  # type: ignore[arg-type]
        radius_mm=radius,
        necrotic_fraction=necrotic,
        high_grade=high_grade,
        oedema_extent=float(rng.uniform(0.5, 1.4)),
        irregularity=float(rng.uniform(0.12, 0.35)),
        mass_effect=float(rng.uniform(0.3, 0.7)),
        shape_seed=int(rng.integers(2**31)),
    )


def apply_mass_effect(spec: TumourSpec, coords_mm: np.ndarray) -> np.ndarray:
    """Push tissue away from the tumour: points at distance d sample the template at g(d) < d.

    g(d) = d (1 - a exp(-d^2 / 2w^2)) with a < 1 is monotone, so the warp never folds.
    ``coords_mm`` float32 (3, X, Y, Z) -> same shape and dtype.
    """
    c = np.asarray(spec.centre_mm, np.float32).reshape(3, 1, 1, 1)
    rel = coords_mm - c
    d2 = np.einsum("k...,k...->...", rel, rel)
    width = 1.3 * spec.radius_mm
    factor = 1.0 - spec.mass_effect * np.exp(-d2 / (2 * width**2))
    return (c + rel * factor[None]).astype(np.float32)


def tumour_labels(spec: TumourSpec, coords_mm: np.ndarray, anatomy: np.ndarray) -> np.ndarray:
    """Label map of the tumour, uint8 (X, Y, Z) in the internal convention (0..3).

    coords_mm: float32 (3, X, Y, Z), template points of each voxel before the mass effect
    (the tumour moves with the subject's warp). anatomy: float32 (3, X, Y, Z) CSF / GM / WM
    probabilities after the mass effect; the tumour stays inside the brain and its oedema
    follows white matter.
    """
    c = np.asarray(spec.centre_mm, np.float32).reshape(3, 1, 1, 1)
    d = np.sqrt(np.einsum("k...,k...->...", coords_mm - c, coords_mm - c)) / spec.radius_mm
    reach = (1 + spec.oedema_extent * 1.2) * (1 + 2 * spec.irregularity)
    near = np.nonzero(d < reach)
    labels = np.zeros(d.shape, np.uint8)
    if near[0].size == 0:
        return labels
    rel = (coords_mm[(slice(None), *near)] - c[:, :, 0, 0]) / spec.radius_mm  # (3, n)
    n_core, n_necrotic, n_oedema = _boundary_noise(spec, rel, reach)
    dn = d[near]
    wm = anatomy[2][near]
    brain = anatomy.sum(0)[near] > 0.5
    irr = spec.irregularity
    core = dn < 1 + irr * n_core
    oedema = dn < 1 + spec.oedema_extent * (0.4 + 0.9 * wm) * (1 + irr * n_oedema)
    necrotic = dn < spec.necrotic_fraction * (1 + irr * n_necrotic)
    out = np.where(oedema, OEDEMA, BACKGROUND)
    out = np.where(core, ENHANCING if spec.high_grade else NECROTIC, out)
    out = np.where(core & necrotic, NECROTIC, out)
    labels[near] = np.where(brain, out, BACKGROUND)
    return labels


def _boundary_noise(spec: TumourSpec, rel: np.ndarray, reach: float) -> np.ndarray:
    """Three smooth noise fields (core, necrosis, oedema boundaries), float32 (3, n), ~unit sd.

    rel: (3, n) positions relative to the centre, in radii; the lattice spans +-reach.
    """
    rng = np.random.default_rng(spec.shape_seed)
    lattice = rng.standard_normal((3, *(_NOISE_NODES,) * 3)).astype(np.float32)
    idx = (rel + reach) / (2 * reach) * (_NOISE_NODES - 1)
    # Cubic spline interpolation keeps the boundary smooth; the lattice is tiny.
    fields = [ndimage.map_coordinates(lat, idx, order=3, mode="nearest") for lat in lattice]
    return np.stack(fields).astype(np.float32)
