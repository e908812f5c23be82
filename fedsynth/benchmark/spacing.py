"""Millimetres per voxel of the evaluation grid, per patient, from the original NIfTI geometry.

The benchmark scores a patient on the (Z, S, S) stack of its preprocessed slices. Preprocessing
(``fedsynth.common.data.preprocess``) crops the RAS volume to the brain's bounding box
(X_b, Y_b voxels in plane), pads the slice to a square of side L = max(X_b, Y_b) and resizes it
to S x S; axial slices keep their thickness. One grid step is therefore, in millimetres:

    z: sz,    row (x): sx * L / S,    column (y): sy * L / S

where (sx, sy, sz) are the case's voxel sizes (column norms of its RAS affine). Slices the
preprocessing skipped (thin brain caps) sit at the ends of the stack, so neighbouring rows of
the stack are neighbouring slices of the volume.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedsynth.common.data.brats import find_case
from fedsynth.common.data.preprocess import bounding_box, brain_mask
from fedsynth.common.data.validate import load_case

Spacing = tuple[float, float, float]  # mm per step along (z, x, y) of a (Z, S, S) stack


def grid_spacing(case_dir: str | Path, image_size: int) -> Spacing:
    """(z, x, y) millimetres per grid step of the case in ``case_dir`` resized to ``image_size``."""
    case = load_case(find_case(case_dir))
    sx, sy, sz = (float(v) for v in np.linalg.norm(case.affine[:3, :3], axis=0))
    x0, x1, y0, y1, _, _ = bounding_box(brain_mask(case.images, case.seg))
    side = max(x1 - x0, y1 - y0)
    return (sz, sx * side / image_size, sy * side / image_size)


def cohort_spacings(
    cohort_dir: str | Path, subjects: list[str], image_size: int
) -> dict[str, Spacing]:
    """subject -> grid spacing for every subject folder of ``cohort_dir`` (see ``grid_spacing``)."""
    return {s: grid_spacing(Path(cohort_dir) / s, image_size) for s in subjects}
