"""Tumour edits of Shin et al. 2018 on 3-D label cases: translate, scale, rotate, transplant, remove.

Every edit takes a ``LabelCase`` and returns an ``Edited`` (the new case, the record of what was
done); the input is never modified. Edited cases stay valid label cases:

- values: tissue in 0..3, tumour labels in 0..3 (internal convention);
- the tumour stays inside the brain mask (voxels that would leave it are clipped and counted);
- nesting: the BraTS regions stay nested, enhancing (3) inside the tumour core (1 | 3) inside
  the whole tumour (1 | 2 | 3), because the three region masks are transformed *separately* and
  intersected; and a core that the oedema enclosed in the source (touching no healthy brain)
  still does after the edit;
- brain voxels a tumour leaves get plausible tissue: the label of the nearest healthy voxel.

Geometry is in millimetres (voxel sizes from the affine), so anisotropic volumes rotate and
scale correctly. Tumour masks are resampled with trilinear interpolation thresholded at 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage

from fedsynth.common.config import SynthesisConfig
from fedsynth.common.data.brats import ENHANCING, NECROTIC, OEDEMA
from fedsynth.synthesis.case import CasePool, LabelCase

_FILL_MARGIN = 8  # voxels around a hole searched for its nearest healthy tissue first
_TRANSLATE_TRIES = 32  # random shifts tried before settling for the one that clips least


@dataclass(frozen=True)
class EditRecord:
    """What one edit did, for provenance and the datasheet.

    kind: "translate" | "scale" | "rotate" | "transplant" | "remove". params: the edit's
    arguments and outcome (e.g. voxels clipped at the brain boundary, volumes before/after in ml).
    """

    kind: str
    params: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"edit": self.kind, **self.params}


class Edited(NamedTuple):
    case: LabelCase
    record: EditRecord


# --------------------------------------------------------------------------- region helpers


def tumour_regions(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The nested BraTS regions of a uint8 label map: bool (whole tumour, core, enhancing)."""
    whole = labels > 0
    core = (labels == NECROTIC) | (labels == ENHANCING)
    return whole, core, labels == ENHANCING


def regions_to_labels(whole: np.ndarray, core: np.ndarray, enhancing: np.ndarray) -> np.ndarray:
    """Inverse of ``tumour_regions`` after enforcing enhancing <= core <= whole. uint8 0..3."""
    core = core & whole
    enhancing = enhancing & core
    out = np.zeros(whole.shape, dtype=np.uint8)
    out[whole] = OEDEMA
    out[core] = NECROTIC
    out[enhancing] = ENHANCING
    return out


def core_enclosed(labels: np.ndarray, brain: np.ndarray) -> bool:
    """True if no tumour-core voxel touches healthy brain (oedema surrounds the core)."""
    whole, core, _ = tumour_regions(labels)
    if not core.any():
        return False
    box = _box(core, margin=1)  # a one-voxel dilation reaches no further
    healthy = brain[box] & ~whole[box]
    return not np.any(ndimage.binary_dilation(core[box]) & healthy)


def fill_tissue(tissue: np.ndarray, brain: np.ndarray, holes: np.ndarray) -> np.ndarray:
    """Give brain voxels in ``holes`` the tissue class of their nearest healthy brain voxel.

    tissue: uint8 (X, Y, Z) 0..3; brain, holes: bool (X, Y, Z). Returns a new uint8 map equal to
    ``tissue`` outside ``holes & brain``. Searches a margin around the holes first (fast on
    1 mm volumes) and the whole volume only if that margin holds no healthy tissue.
    """
    holes = holes & brain
    out = tissue.copy()
    if not holes.any():
        return out
    donors = brain & ~holes & (tissue > 0)
    if not donors.any():
        return out  # nothing to copy from: leave as is (the caller's brain is all hole)
    box = _box(holes, margin=_FILL_MARGIN)
    if not donors[box].any():
        box = tuple(slice(0, n) for n in holes.shape)
    _, idx = ndimage.distance_transform_edt(~donors[box], return_indices=True)
    sub = out[box]
    nearest = tissue[box][tuple(idx)]
    sub[holes[box]] = nearest[holes[box]]
    return out


# --------------------------------------------------------------------------- geometry core


def _centroid(mask: np.ndarray) -> np.ndarray:
    """Mean voxel index (float64 (3,)) of a non-empty mask, from its axis projections (the
    same value as argwhere(mask).mean(0) without listing every voxel)."""
    total = np.count_nonzero(mask)
    return np.array([
        np.dot(np.count_nonzero(mask, axis=tuple(a for a in range(3) if a != k)),
               np.arange(mask.shape[k])) / total
        for k in range(3)
    ])  # fmt: skip


def _bounds(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lowest, highest) voxel index (int (3,) each, inclusive) of a non-empty mask."""
    lo, hi = [], []
    for k in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != k)))
        lo.append(hit[0])
        hi.append(hit[-1])
    return np.array(lo), np.array(hi)


def _box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The bounding box of a non-empty mask grown by ``margin`` voxels, clipped to the volume.
    Edits work inside such boxes: the operations are local, the volumes mostly empty."""
    lo, hi = _bounds(mask)
    lo, hi = np.maximum(lo - margin, 0), np.minimum(hi + margin + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def _rotation_matrix(angles_deg: Sequence[float]) -> np.ndarray:
    """3x3 rotation about axes 0, 1, 2 (applied in that order), angles in degrees."""
    mats = []
    for axis, deg in enumerate(angles_deg):
        c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
        i, j = [a for a in range(3) if a != axis]
        m = np.eye(3)
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        mats.append(m)
    return mats[2] @ mats[1] @ mats[0]


def _resample_regions(
    src_labels: np.ndarray,
    src_voxel: np.ndarray,
    src_centre: np.ndarray,
    out_shape: tuple[int, int, int],
    out_voxel: np.ndarray,
    out_centre: np.ndarray,
    linear: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map the tumour regions of ``src_labels`` onto an output grid.

    A source point at ``src_centre`` lands on ``out_centre``; offsets from it (in mm) are
    multiplied by ``linear`` (3x3: rotation x scale). Only the output box that can receive
    tumour is computed. Returns bool (whole, core, enhancing) of ``out_shape``.
    """
    whole, core, enh = tumour_regions(src_labels)
    # Output voxel p -> source voxel q = c_src + Vs^-1 L^-1 Vo (p - c_out).
    m = np.diag(1.0 / src_voxel) @ np.linalg.inv(linear) @ np.diag(out_voxel)
    lo_idx, hi_idx = _bounds(whole)
    corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=float)
    lo_src, hi_src = lo_idx - 1.0, hi_idx + 1.0
    src_corners = lo_src + corners * (hi_src - lo_src)
    fwd = np.linalg.inv(m)
    out_corners = out_centre + (src_corners - src_centre) @ fwd.T
    lo = np.clip(np.floor(out_corners.min(axis=0)).astype(int) - 1, 0, out_shape)
    hi = np.clip(np.ceil(out_corners.max(axis=0)).astype(int) + 2, 0, out_shape)
    outs = [np.zeros(out_shape, dtype=bool) for _ in range(3)]
    if np.any(hi <= lo):
        return outs[0], outs[1], outs[2]
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    offset = src_centre + m @ (lo - out_centre)
    for mask, out in zip((whole, core, enh), outs, strict=True):
        if mask.any():
            moved = ndimage.affine_transform(
                mask.astype(np.float32), m, offset=offset, output_shape=tuple(hi - lo),
                order=1, mode="constant", cval=0.0,
            )  # fmt: skip
            out[box] = moved >= 0.5
    return outs[0], outs[1], outs[2]


def _place_tumour(
    target: LabelCase,
    regions: tuple[np.ndarray, np.ndarray, np.ndarray],
    keep_enclosed: bool,
    vacated: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Clip regions to the target brain, restore nesting, refill vacated tissue.

    Returns (labels uint8, tissue uint8, voxels clipped at the brain boundary).
    """
    whole, core, enh = regions
    clipped = int(np.count_nonzero(whole & ~target.brain))
    whole = whole & target.brain
    core = core & whole
    if keep_enclosed and core.any():
        # The core may reach the brain's edge but not healthy brain: erode the tumour-or-outside.
        # Only core voxels are read: erode the core's box grown by the structure's reach (the
        # box's edges inside the volume are never read; at the volume's edge border_value holds).
        box = _box(core, margin=1)
        core[box] &= ndimage.binary_erosion(whole[box] | ~target.brain[box], border_value=1)
    labels = regions_to_labels(whole, core, enh)
    tissue = fill_tissue(target.tissue, target.brain, vacated)
    return labels, tissue, clipped


def _volumes(case: LabelCase, labels: np.ndarray) -> dict[str, float]:
    ml = float(np.prod(case.voxel_size)) / 1000.0
    whole, core, enh = tumour_regions(labels)
    return {
        "whole_ml": round(np.count_nonzero(whole) * ml, 3),
        "core_ml": round(np.count_nonzero(core) * ml, 3),
        "enhancing_ml": round(np.count_nonzero(enh) * ml, 3),
    }


def _transform(
    case: LabelCase, kind: str, linear: np.ndarray, shift_vox: np.ndarray, params: dict[str, Any]
) -> Edited:
    """Move/scale/rotate the tumour of ``case`` in place on its own anatomy."""
    if not case.has_tumour:
        record = EditRecord(kind, {**params, "skipped": "no tumour"})
        return Edited(case.with_changes(record.to_dict()), record)
    whole = case.labels > 0
    centre = _centroid(whole)
    vox = case.voxel_size
    regions = _resample_regions(
        case.labels, vox, centre, case.shape, vox, centre + shift_vox, linear
    )
    enclosed = core_enclosed(case.labels, case.brain)
    labels, tissue, clipped = _place_tumour(case, regions, enclosed, vacated=whole)
    record = EditRecord(
        kind,
        {
            **params,
            "before": _volumes(case, case.labels),
            "after": _volumes(case, labels),
            "voxels_clipped_at_brain": clipped,
        },
    )
    return Edited(case.with_changes(record.to_dict(), labels=labels, tissue=tissue), record)


# --------------------------------------------------------------------------- the edits


def translate_tumour(case: LabelCase, shift_mm: Sequence[float]) -> Edited:
    """Move the tumour by ``shift_mm`` (3 floats, mm along axes 0, 1, 2; rounded to whole voxels).

    Voxels that would leave the brain are clipped (see ``random_translation`` to pick a shift
    that keeps the whole tumour inside).
    """
    shift_vox = np.rint(np.asarray(shift_mm, dtype=float) / case.voxel_size)
    params = {"shift_mm": [round(float(s), 2) for s in shift_vox * case.voxel_size]}
    return _transform(case, "translate", np.eye(3), shift_vox, params)


def scale_tumour(case: LabelCase, factor: float) -> Edited:
    """Grow (factor > 1) or shrink (factor < 1) the tumour about its centroid.

    ``factor`` is linear: the volume changes by about factor**3 (less when growth is clipped at
    the brain boundary). Raises ValueError for factor <= 0.
    """
    if not factor > 0:
        raise ValueError(f"scale factor must be > 0, got {factor}")
    return _transform(
        case, "scale", np.eye(3) * factor, np.zeros(3), {"factor": round(float(factor), 4)}
    )


def rotate_tumour(case: LabelCase, angles_deg: Sequence[float]) -> Edited:
    """Rotate the tumour about its centroid by ``angles_deg`` (3 floats, about axes 0, 1, 2)."""
    angles = [round(float(a), 2) for a in angles_deg]
    return _transform(case, "rotate", _rotation_matrix(angles), np.zeros(3), {"angles_deg": angles})


def remove_tumour(case: LabelCase) -> Edited:
    """A healthy case: tumour labels cleared, tumour voxels given the nearest healthy tissue."""
    whole = case.labels > 0
    tissue = fill_tissue(case.tissue, case.brain, whole)
    record = EditRecord("remove", {"before": _volumes(case, case.labels)})
    labels = np.zeros_like(case.labels)
    return Edited(case.with_changes(record.to_dict(), labels=labels, tissue=tissue), record)


def _relative_target(donor: LabelCase, recipient: LabelCase) -> np.ndarray:
    """Where the donor's tumour centroid lands in the recipient: same place relative to the brain."""
    d_lo, d_hi = _bounds(donor.brain)
    r_lo, r_hi = _bounds(recipient.brain)
    rel = (_centroid(donor.labels > 0) - d_lo) / np.maximum(d_hi - d_lo, 1)
    return r_lo + rel * (r_hi - r_lo)


def transplant_tumour(donor: LabelCase, recipient: LabelCase) -> Edited:
    """Put the donor's tumour on the recipient's anatomy (Shin et al.'s "tumour on another brain").

    The recipient's own tumour, if any, is removed first (its voxels get nearest healthy tissue).
    The donor's tumour keeps its size in mm and its position relative to the brain's bounding
    box, and is clipped to the recipient's brain mask. The result keeps the donor's provenance
    (its label map is the donor's) and records the recipient as ``anatomy_subject``.
    """
    if not donor.has_tumour:
        raise ValueError(f"transplant donor {donor.case_id} has no tumour")
    target = _relative_target(donor, recipient)
    centre = _centroid(donor.labels > 0)
    regions = _resample_regions(
        donor.labels,
        donor.voxel_size,
        centre,
        recipient.shape,
        recipient.voxel_size,
        target,
        np.eye(3),
    )
    vacated = recipient.labels > 0
    enclosed = core_enclosed(donor.labels, donor.brain)
    labels, tissue, clipped = _place_tumour(recipient, regions, enclosed, vacated)
    record = EditRecord(
        "transplant",
        {
            "recipient_case": recipient.case_id,
            "recipient_subject": recipient.anatomy_subject,
            "recipient_had_tumour": bool(vacated.any()),
            "before": _volumes(donor, donor.labels),
            "after": _volumes(recipient, labels),
            "voxels_clipped_at_brain": clipped,
        },
    )
    case = donor.with_changes(
        record.to_dict(),
        tissue=tissue,
        labels=labels,
        brain=recipient.brain.copy(),
        affine=recipient.affine.copy(),
        anatomy_subject=recipient.anatomy_subject,
    )
    return Edited(case, record)


def random_translation(
    case: LabelCase, max_shift_mm: float, rng: np.random.Generator
) -> np.ndarray:
    """A shift (mm, float64 (3,)) that keeps every tumour voxel inside the brain.

    Draws uniformly in [-m, m] per axis, shrinking m from ``max_shift_mm`` towards 0 over 32
    tries (a tumour near the brain's edge has less room); returns zeros if nothing fits.
    """
    idx = np.argwhere(case.labels > 0)
    vox = case.voxel_size
    for t in range(_TRANSLATE_TRIES):
        reach = max_shift_mm * (1.0 - t / _TRANSLATE_TRIES)
        shift_mm = rng.uniform(-reach, reach, size=3)
        moved = idx + np.rint(shift_mm / vox).astype(int)
        if np.all((moved >= 0) & (moved < case.shape)) and case.brain[tuple(moved.T)].all():
            return shift_mm
    return np.zeros(3)


def _pick(pool: CasePool, indices: list[int], rng: np.random.Generator) -> LabelCase | None:
    return pool.load(indices[int(rng.integers(len(indices)))]) if indices else None


def _transplant_step(
    case: LabelCase, pool: CasePool, cfg: SynthesisConfig, rng: np.random.Generator
) -> LabelCase:
    """Transplant: a tumour case moves onto another brain; a healthy case receives a tumour."""
    others = [i for i in range(len(pool)) if pool.ids[i] != case.case_id]
    if case.has_tumour:
        healthy = [i for i in others if not pool.tumour[i]]
        prefer_healthy = rng.random() < cfg.p_healthy_recipient
        recipient = _pick(pool, healthy if healthy and prefer_healthy else others, rng)
        return case if recipient is None else transplant_tumour(case, recipient).case
    donor = _pick(pool, [i for i in others if pool.tumour[i]], rng)
    return case if donor is None else transplant_tumour(donor, case).case


def apply_random_edits(
    case: LabelCase, pool: CasePool, cfg: SynthesisConfig, rng: np.random.Generator
) -> LabelCase:
    """Apply the edits of ``cfg`` (``synthesis`` section), each with its probability, in order:
    remove (then stop: a healthy case) | transplant, scale, rotate, translate.

    ``pool`` (usually the label bank) supplies transplant partners. Every random draw comes from ``rng``, so the same
    generator state gives the same case. Each applied edit is appended to ``case.edits``.
    """
    draws = rng.random(5)  # one uniform per edit, drawn up front so the stream never shifts
    if case.has_tumour and draws[0] < cfg.p_remove:
        return remove_tumour(case).case
    if draws[1] < cfg.p_transplant:
        case = _transplant_step(case, pool, cfg, rng)
    if case.has_tumour and draws[2] < cfg.p_scale:
        case = scale_tumour(case, float(rng.uniform(cfg.scale_min, cfg.scale_max))).case
    if case.has_tumour and draws[3] < cfg.p_rotate:
        angles = rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg, size=3)
        case = rotate_tumour(case, angles).case
    if case.has_tumour and draws[4] < cfg.p_translate:
        case = translate_tumour(case, random_translation(case, cfg.max_shift_mm, rng)).case
    return case
