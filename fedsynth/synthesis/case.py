"""A label case: the anatomy and tumour label maps that one synthetic case is generated from.

Label maps are patient data too, so every label case carries its provenance: which kind of
source it came from, which subject, and every edit applied since.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from fedsynth.common.data.brats import TUMOUR_LABELS

ATLAS = "atlas"  # source kind and source subject of atlas cases (no patient data)
COHORT = "cohort"
SOURCE_KINDS: tuple[str, ...] = (ATLAS, COHORT)


@dataclass
class LabelCase:
    """One label case, all volumes on the same (X, Y, Z) grid.

    tissue: uint8 (X, Y, Z) 0 bg, 1 CSF, 2 GM, 3 WM; > 0 exactly on ``brain``.
    labels: uint8 (X, Y, Z) tumour labels 0 bg, 1 necrotic core, 2 oedema, 3 enhancing
        (internal convention); > 0 only inside ``brain``.
    brain: bool (X, Y, Z) brain mask.
    affine: float64 (4, 4) voxel -> world (mm).
    source: "atlas" or "cohort". source_subject: the subject whose tumour label map this case
    started from ("atlas" for atlas cases). anatomy_subject: whose brain anatomy it shows now
    (changes on transplant). edits: one dict per edit applied (see ``edits.EditRecord``).
    """

    case_id: str
    tissue: np.ndarray
    labels: np.ndarray
    brain: np.ndarray
    affine: np.ndarray
    source: str
    source_subject: str
    anatomy_subject: str
    edits: list[dict[str, Any]] = field(default_factory=list)
    stored_affine: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.labels.shape)  # type: ignore[return-value]

    @property
    def voxel_size(self) -> np.ndarray:
        """float64 (3,) voxel edge lengths in mm, from the affine's columns."""
        return np.linalg.norm(np.asarray(self.affine, dtype=np.float64)[:3, :3], axis=0)

    @property
    def has_tumour(self) -> bool:
        return bool(np.any(self.labels > 0))

    def tumour_volume_ml(self) -> float:
        """Whole-tumour volume (labels 1, 2, 3) in millilitres."""
        return float(np.count_nonzero(self.labels) * np.prod(self.voxel_size) / 1000.0)

    def with_changes(self, record: dict[str, Any] | None = None, **changes: Any) -> LabelCase:
        """A copy with ``changes`` applied and ``record`` appended to the edit history."""
        edits = list(self.edits) + ([record] if record is not None else [])
        return replace(self, edits=edits, **changes)

    def provenance(self) -> dict[str, Any]:
        """JSON-ready description of where this case came from and what was done to it."""
        return {
            "bank_case": self.case_id,
            "source": self.source,
            "source_subject": self.source_subject,
            "anatomy_subject": self.anatomy_subject,
            "edits": list(self.edits),
            "tumour_volume_ml": round(self.tumour_volume_ml(), 3),
        }

    def problems(self) -> list[str]:
        """What makes this an invalid label case (empty list: valid)."""
        out: list[str] = []
        shapes = {a.shape for a in (self.tissue, self.labels, self.brain)}
        if len(shapes) != 1 or len(self.labels.shape) != 3:
            return [f"volumes must share one 3-D shape, got {sorted(shapes)}"]
        if self.tissue.dtype != np.uint8 or self.labels.dtype != np.uint8:
            out.append(
                f"tissue and labels must be uint8, got {self.tissue.dtype}, {self.labels.dtype}"
            )
        if self.brain.dtype != np.bool_:
            out.append(f"brain mask must be bool, got {self.brain.dtype}")
        if not set(np.unique(self.tissue).tolist()) <= {0, 1, 2, 3}:
            out.append(f"tissue values {sorted(np.unique(self.tissue).tolist())} not within 0..3")
        if not set(np.unique(self.labels).tolist()) <= {0, *TUMOUR_LABELS}:
            out.append(
                f"tumour label values {sorted(np.unique(self.labels).tolist())} not within 0..3"
            )
        if np.any((self.labels > 0) & ~self.brain):
            out.append(
                f"{int(np.count_nonzero((self.labels > 0) & ~self.brain))} tumour voxels outside the brain"
            )
        if np.any((self.tissue > 0) != self.brain):
            out.append("tissue map is not > 0 exactly on the brain mask")
        if self.source not in SOURCE_KINDS:
            out.append(f"source must be one of {SOURCE_KINDS}, got {self.source!r}")
        return out


class CasePool(Protocol):
    """Label cases addressed by index, loaded on demand (a bank can be larger than memory).

    ``ids[i]`` and ``tumour[i]`` (has case i a tumour?) are known without loading case i, so
    that picking a transplant partner loads only the partner.
    """

    ids: list[str]
    tumour: list[bool]

    def __len__(self) -> int: ...

    def load(self, index: int) -> LabelCase: ...


class InMemoryPool:
    """A CasePool over label cases already in memory."""

    def __init__(self, cases: list[LabelCase]):
        self.cases = list(cases)
        self.ids = [c.case_id for c in self.cases]
        self.tumour = [c.has_tumour for c in self.cases]

    def __len__(self) -> int:
        return len(self.cases)

    def load(self, index: int) -> LabelCase:
        return self.cases[index]
