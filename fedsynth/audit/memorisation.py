"""Memorisation: is a synthetic slice closer to a training slice than a fresh patient's is?

Distance: root-mean-square difference over the whole 4-channel slice at the cache
resolution (images in [-1, 1], so distances lie in [0, 2]; the ordering is that of plain
L2). For a query slice q:

    d_train(q)   = distance to the nearest training (member) slice
    d_heldout(q) = distance to the nearest held-out slice of ANOTHER patient than q's source
    ratio(q)     = d_train(q) / d_heldout(q)

Reference: the same ratio for every real held-out slice (nearest held-out slice taken among
the other held-out patients, since a patient's neighbouring slices are near-copies of each
other). These patients never trained the generator, so their ratios show how close the
training set is to unseen data by chance alone (a larger training set is nearer to anything).
Threshold tau = the 5th percentile of the reference ratios. A synthetic slice is FLAGGED when
ratio < tau: it sits closer to a training slice than 95% of real unseen slices do. Without
memorisation about 5% of synthetic slices are flagged; a much larger fraction suggests the
generator reproduces training slices. A synthetic slice made from a held-out patient's label
map has that patient as its source, excluded from d_heldout like for the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

REFERENCE_PERCENTILE = 5.0
COPY_TOLERANCE = 1e-6  # RMS distance below which a slice counts as an exact copy (rounding)
_CHUNK = 256  # query slices per distance block: bounds memory to chunk x reference floats


def _flat(images: np.ndarray) -> np.ndarray:
    a = np.asarray(images, np.float64)
    return a.reshape(len(a), -1)


def nearest(
    queries: np.ndarray,
    reference: np.ndarray,
    *,
    query_group: np.ndarray | None = None,
    reference_group: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest reference slice of each query: (distance float64 (Q,), index int64 (Q,)).

    queries (Q, C, S, S), reference (R, C, S, S), same C and S. Distance: RMS difference.
    With groups (int64 (Q,), (R,); -1 = no group), a reference slice of the query's own group
    is skipped. A query with no eligible reference gets distance inf and index -1.
    """
    q, r = _flat(queries), _flat(reference)
    if len(q) and len(r) and q.shape[1] != r.shape[1]:
        raise ValueError(
            f"query slices {queries.shape[1:]} differ from reference {reference.shape[1:]}"
        )
    dist = np.full(len(q), np.inf)
    index = np.full(len(q), -1, np.int64)
    if not len(q) or not len(r):
        return dist, index
    r_sq = (r * r).sum(1)
    for s in range(0, len(q), _CHUNK):
        block = q[s : s + _CHUNK]
        d2 = (block * block).sum(1)[:, None] + r_sq[None, :] - 2.0 * block @ r.T
        if query_group is not None and reference_group is not None:
            same = query_group[s : s + _CHUNK, None] == reference_group[None, :]
            d2[same & (query_group[s : s + _CHUNK, None] >= 0)] = np.inf
        j = d2.argmin(1)
        best = d2[np.arange(len(block)), j]
        index[s : s + len(block)] = np.where(np.isfinite(best), j, -1)
        dist[s : s + len(block)] = np.sqrt(np.maximum(best, 0.0) / q.shape[1])
    return dist, index


@dataclass
class Neighbours:
    """For each query slice: nearest training and held-out slice, distances and ratio."""

    d_train: np.ndarray  # float64 (Q,)
    i_train: np.ndarray  # int64 (Q,) index into the training slices
    d_heldout: np.ndarray
    i_heldout: np.ndarray
    ratio: np.ndarray  # d_train / d_heldout; 0 for an exact copy (d_train <= COPY_TOLERANCE)


def neighbours(
    queries: np.ndarray,
    train_images: np.ndarray,
    heldout_images: np.ndarray,
    heldout_patient: np.ndarray,
    query_source: np.ndarray | None = None,
) -> Neighbours:
    """Distances of queries to the training and held-out slices (see module docstring).

    heldout_patient: int64 (H,) patient of each held-out slice; query_source: int64 (Q,) the
    held-out patient a query came from (-1 or None: none).
    """
    source = np.full(len(queries), -1, np.int64) if query_source is None else query_source
    d_t, i_t = nearest(queries, train_images)
    d_h, i_h = nearest(
        queries, heldout_images, query_group=source, reference_group=np.asarray(heldout_patient)
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(d_t <= COPY_TOLERANCE, 0.0, d_t / d_h)
    return Neighbours(d_t, i_t, d_h, i_h, ratio)


@dataclass
class MemorisationAudit:
    """reference: the held-out real slices' neighbours; synthetic: the synthetic slices'."""

    reference: Neighbours
    synthetic: Neighbours
    threshold: float
    source: str  # where the synthetic slices came from, in words

    @property
    def flagged(self) -> np.ndarray:
        return self.synthetic.ratio < self.threshold

    def to_json(self) -> dict[str, Any]:
        def summary(x: np.ndarray) -> dict[str, float | None]:
            x = x[np.isfinite(x)]
            if not len(x):
                return {"median": None, "p05": None, "p95": None, "min": None}
            p05, med, p95 = np.percentile(x, [5, 50, 95])
            return {"median": float(med), "p05": float(p05), "p95": float(p95),
                    "min": float(x.min())}  # fmt: skip

        return {
            "distance": "RMS difference over the 4-channel slice at cache resolution, in [0, 2]",
            "synthetic_source": self.source,
            "synthetic_slices": int(len(self.synthetic.ratio)),
            "reference_slices": int(len(self.reference.ratio)),
            "reference_percentile": REFERENCE_PERCENTILE,
            "threshold_ratio": self.threshold,
            "flagged_fraction": float(self.flagged.mean()) if len(self.flagged) else None,
            "expected_fraction_without_memorisation": REFERENCE_PERCENTILE / 100,
            "exact_copies": int((self.synthetic.d_train <= COPY_TOLERANCE).sum()),
            "synthetic": {
                "d_train": summary(self.synthetic.d_train),
                "d_heldout": summary(self.synthetic.d_heldout),
                "ratio": summary(self.synthetic.ratio),
            },  # fmt: skip
            "reference": {
                "d_train": summary(self.reference.d_train),
                "d_heldout": summary(self.reference.d_heldout),
                "ratio": summary(self.reference.ratio),
            },  # fmt: skip
        }


def memorisation_audit(
    synthetic_images: np.ndarray,
    train_images: np.ndarray,
    heldout_images: np.ndarray,
    heldout_patient: np.ndarray,
    *,
    synthetic_source: np.ndarray | None = None,
    source: str = "",
) -> MemorisationAudit:
    """Neighbours of the synthetic and of the held-out real slices, and the flag threshold.

    Images float (N, 4, S, S) in [-1, 1]. ValueError with fewer than 2 held-out patients
    (the reference needs another held-out patient to compare each slice with).
    """
    heldout_patient = np.asarray(heldout_patient, np.int64)
    if len(np.unique(heldout_patient)) < 2:
        raise ValueError("memorisation reference needs at least 2 held-out patients")
    ref = neighbours(heldout_images, train_images, heldout_images, heldout_patient, heldout_patient)
    syn = neighbours(synthetic_images, train_images, heldout_images, heldout_patient,
                     synthetic_source)  # fmt: skip
    finite = ref.ratio[np.isfinite(ref.ratio)]
    threshold = float(np.percentile(finite, REFERENCE_PERCENTILE)) if len(finite) else 0.0
    return MemorisationAudit(ref, syn, threshold, source)
