"""Remove small predicted tumours, with the size threshold chosen on validation patients.

A segmenter trained on tumour-rich slices marks a few voxels of oedema in some tumour-free
brains; BraTS scores every region of such a patient Dice 0, so a handful of stray voxels
costs as much as missing a whole tumour. The usual cure (nnU-Net's post-processing) is to
drop connected components below a size, with the size chosen on held-out training patients.
Here each model picks ``min_voxels`` from ``CANDIDATE_MIN_VOXELS`` by its own validation
patients' mean Dice (ties: the smallest threshold), never by the test patients.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from fedsynth.benchmark.metrics import REGIONS, dice, region_mask

# Component sizes in grid voxels (a 64 px grid voxel of a BraTS brain is ~3.4 x 3.4 x 1 mm^3).
CANDIDATE_MIN_VOXELS: tuple[int, ...] = (0, 10, 30, 100, 300)
_CONNECTIVITY = ndimage.generate_binary_structure(3, 3)  # 26-neighbourhood


def remove_small_tumours(labels: np.ndarray, min_voxels: int) -> np.ndarray:
    """labels uint8 (Z, S, S) 0..3 with every whole-tumour component (26-connected) of fewer
    than ``min_voxels`` voxels set to background; a new array (the input is not changed)."""
    if min_voxels <= 0:
        return labels
    components, n = ndimage.label(labels > 0, structure=_CONNECTIVITY)
    if n == 0:
        return labels
    sizes = np.bincount(components.ravel())
    small = sizes < min_voxels
    small[0] = False  # component 0 is the background
    return np.where(small[components], 0, labels).astype(labels.dtype)


def mean_dice(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    """Mean over patients and the regions WT, TC, ET of the 3-D Dice of (pred, truth) pairs."""
    scores = [dice(region_mask(p, r), region_mask(t, r)) for p, t in pairs for r in REGIONS]
    return float(np.mean(scores))


def choose_min_voxels(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> int:
    """The candidate threshold with the best validation mean Dice (smallest among ties);
    0 (no post-processing) without validation patients."""
    if not pairs:
        return 0
    best, best_score = 0, -1.0
    for k in CANDIDATE_MIN_VOXELS:
        score = mean_dice([(remove_small_tumours(p, k), t) for p, t in pairs])
        if score > best_score + 1e-12:
            best, best_score = k, score
    return best
