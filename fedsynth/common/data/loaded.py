"""One subject's volumes in memory, as validation hands them on (``validate.load_case``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LoadedCase:
    """One subject in memory, RAS canonical, all volumes on the same (X, Y, Z) grid.

    images: modality key (t1, t1c, t2, flair) -> float32 (X, Y, Z), scanner intensities.
    seg: uint8 (X, Y, Z) tumour labels in the internal convention 0..3, or None when the case
        has no label map (only where labels are optional).
    tissue: uint8 (X, Y, Z) 0 bg, 1 CSF, 2 GM, 3 WM, or None when the case has no tissue map.
    affine: float64 (4, 4) voxel -> world (mm) of every volume above.
    stored_affine: float64 (4, 4) the affine of the label map as stored on disk (of the first
        image when there is no label map): its axis directions are the orientation the case
        came in, which writers restore (``io.nifti.to_stored_orientation``).
    background: modality key -> the value of the image outside the brain (0 for BraTS; the
        constant a normalised copy gave its background), see ``validate``.
    """

    case_id: str
    images: dict[str, np.ndarray]
    seg: np.ndarray | None
    tissue: np.ndarray | None
    affine: np.ndarray
    stored_affine: np.ndarray | None = None
    background: dict[str, float] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return next(iter(self.images.values())).shape  # type: ignore[return-value]
