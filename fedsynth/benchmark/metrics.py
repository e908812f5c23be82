"""Dice and HD95 per BraTS region, with the BraTS convention for empty regions.

Regions from internal labels (0 bg, 1 necrotic/non-enhancing core, 2 oedema, 3 enhancing):
whole tumour WT = {1, 2, 3}, tumour core TC = {1, 3}, enhancing tumour ET = {3}.

Empty regions (as the BraTS challenge scores them): truth and prediction both empty ->
Dice 1, HD95 0; exactly one of them empty -> Dice 0, HD95 = the volume's diagonal (the
largest distance possible on the grid). HD95 is the symmetric 95th-percentile Hausdorff
distance as MONAI computes it (``compute_hausdorff_distance(percentile=95)``): the larger of
the two directed 95th percentiles of surface-to-surface distances, a surface voxel being a
mask voxel with a 6-connected (3-D) neighbour outside the mask or outside the volume. Units
are those of ``spacing`` (voxels by default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
METRICS: tuple[str, ...] = ("dice", "hd95", "hd95_grid")


def region_mask(labels: np.ndarray, region: str) -> np.ndarray:
    """bool mask of ``region`` (a key of REGIONS) in an integer label volume 0..3."""
    if region not in REGIONS:
        raise ValueError(f"unknown region {region!r}; valid: {', '.join(REGIONS)}")
    return np.isin(labels, REGIONS[region])


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two bool masks of equal shape, in [0, 1]; 1.0 when both are empty."""
    _check_pair(pred, truth)
    total = int(pred.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, truth).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    # Pad with background so voxels on the volume border count as surface (MONAI does the
    # same by cropping with a margin before eroding).
    padded = np.pad(mask, 1)
    eroded = ndimage.binary_erosion(padded)
    return (padded & ~eroded)[tuple(slice(1, -1) for _ in mask.shape)]


def _directed(a_surf: np.ndarray, b_surf: np.ndarray, spacing: Sequence[float], q: float) -> float:
    dist = ndimage.distance_transform_edt(~b_surf, sampling=spacing)
    return float(np.percentile(dist[a_surf], q))


def hd95(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None, q: float = 95.0
) -> float:
    """Symmetric q-th percentile Hausdorff distance of two bool masks (see module docstring).

    ``spacing``: voxel size per axis (default 1). Returns 0.0 when both masks are empty and
    the volume diagonal when exactly one is.
    """
    _check_pair(pred, truth)
    spacing = tuple(float(s) for s in (spacing or (1.0,) * pred.ndim))
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {spacing} must have one value per axis of {pred.shape}")
    has_p, has_t = bool(pred.any()), bool(truth.any())
    if not has_p and not has_t:
        return 0.0
    if not (has_p and has_t):
        return diagonal(pred.shape, spacing)
    box = _union_box(pred | truth)
    sp, st = _surface(pred[box]), _surface(truth[box])
    return max(_directed(sp, st, spacing, q), _directed(st, sp, spacing, q))


def _union_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of a non-empty mask, one voxel wider on each side where the volume allows
    (so a voxel on the box's edge is surface only if it is on the volume's border)."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(int(idx[0]) - 1, 0), min(int(idx[-1]) + 2, mask.shape[axis])))
    return tuple(box)


def diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length of the volume's diagonal, in the units of ``spacing``."""
    return float(np.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=True))))


def _check_pair(pred: np.ndarray, truth: np.ndarray) -> None:
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    if pred.dtype != bool or truth.dtype != bool:
        raise ValueError("masks must be bool arrays (use region_mask on label volumes)")


def region_scores(
    pred_labels: np.ndarray, true_labels: np.ndarray, spacing: Sequence[float] | None = None
) -> dict[str, dict[str, float]]:
    """{region: {"dice", "hd95", "hd95_grid"}} for WT, TC, ET of two label volumes 0..3.

    ``hd95`` is in the units of ``spacing`` (mm per step of each axis; grid steps if None),
    ``hd95_grid`` always in grid steps.
    """
    if pred_labels.shape != true_labels.shape:
        raise ValueError(f"prediction {pred_labels.shape} and truth {true_labels.shape} differ")
    out = {}
    for region in REGIONS:
        p, t = region_mask(pred_labels, region), region_mask(true_labels, region)
        grid = hd95(p, t)
        scaled = grid if spacing is None else hd95(p, t, spacing)
        out[region] = {"dice": dice(p, t), "hd95": scaled, "hd95_grid": grid}
    return out


@dataclass
class SegmentationScores:
    """Accumulates per-patient region scores; ``mean()`` averages them over patients.

    ``records``: one dict per patient and region: {"patient", "region", "dice", "hd95",
    "hd95_grid"}.
    """

    records: list[dict[str, float | str]] = field(default_factory=list)

    def add(
        self,
        patient: str,
        pred_labels: np.ndarray,
        true_labels: np.ndarray,
        spacing: Sequence[float] | None = None,
    ) -> None:
        """Score one patient; ``spacing``: mm per grid step along each axis (None: grid units)."""
        for region, scores in region_scores(pred_labels, true_labels, spacing).items():
            self.records.append({"patient": patient, "region": region, **scores})

    def mean(self) -> dict[str, dict[str, float]]:
        """{region: {metric: mean over patients}}; raises ValueError when nothing was added."""
        if not self.records:
            raise ValueError("no patients were scored")
        return {
            region: {
                m: float(np.mean([r[m] for r in self.records if r["region"] == region]))
                for m in METRICS
            }
            for region in REGIONS
        }
