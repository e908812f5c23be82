"""Tissue labels (CSF / grey matter / white matter): the anatomy the generator is conditioned on.

Shin et al. condition pix2pix on brain anatomy as well as the tumour. A case's tissue map is
taken from its ``<id>_tissue`` file when it has one (phantoms do); otherwise it is computed
here with a 3-class Gaussian mixture on the normalised T1, T2 and FLAIR intensities of the
brain. T1 alone separates grey from white matter poorly on clinical (BraTS) T1 scans, and T1 +
T2 lumps the ventricles with grey matter; FLAIR (CSF suppressed) separates CSF from grey
matter, which on the real BraTS case gives the expected cortical ribbon, deep grey nuclei and
ventricles (checked by eye against the images).

Convention (uint8): 0 background (outside the brain), 1 CSF, 2 GM, 3 WM. Every brain voxel
gets a tissue class, tumour voxels included: the tumour label overrides tissue only later,
when the conditioning channels are built (``datasets.condition_channels``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from fedsynth.common.errors import DataError

BACKGROUND, CSF, GM, WM = 0, 1, 2, 3
TISSUE_CLASSES: tuple[int, ...] = (CSF, GM, WM)
TISSUE_NAMES: dict[int, str] = {BACKGROUND: "background", CSF: "CSF", GM: "GM", WM: "WM"}

FEATURES: tuple[str, ...] = ("t1", "t2", "flair")
FIT_VOXELS = 20_000  # voxels subsampled to fit the mixture: enough for 3 classes, fast
MIN_FIT_VOXELS = 30  # below this a 3-class fit is meaningless


def compute_tissue(
    images: dict[str, np.ndarray],
    brain: np.ndarray,
    tumour: np.ndarray | None,
    seed: int,
    case_id: str = "<case>",
) -> np.ndarray:
    """3-class Gaussian mixture tissue map of one volume.

    Args:
        images: modality key -> float32 (X, Y, Z) intensities normalised within the brain
            (e.g. to [-1, 1]); needs the keys in FEATURES.
        brain: bool (X, Y, Z) brain mask.
        tumour: bool (X, Y, Z) tumour voxels, excluded from the fit (their intensities are not
            healthy tissue), or None.
        seed: seeds the voxel subsample and the mixture's initialisation; same inputs and
            seed -> same map.

    Returns uint8 (X, Y, Z): 0 outside the brain; 1 CSF, 2 GM, 3 WM inside. The mixture's
    components are ordered by mean T1 minus mean T2: CSF is darkest on T1 and brightest on T2,
    WM the reverse, GM between. Both contrasts order the classes the same way, so using their
    difference widens the CSF / GM gap, which on T1 alone is small on clinical scans.
    Raises DataError if the brain has too few healthy voxels to fit.
    """
    from sklearn.mixture import GaussianMixture  # heavy import, only when computing
    from threadpoolctl import threadpool_limits  # installed with scikit-learn

    healthy = brain if tumour is None else brain & ~tumour
    features_all = np.stack([images[m][brain] for m in FEATURES], axis=1).astype(np.float64)
    healthy_in_brain = healthy[brain]
    fit_pool = features_all[healthy_in_brain]
    if len(fit_pool) < MIN_FIT_VOXELS:
        raise DataError(
            case_id,
            f"only {len(fit_pool)} healthy brain voxels; cannot compute a tissue map "
            "(provide a <id>_tissue file or check the brain mask)",
        )
    rng = np.random.default_rng(seed)
    if len(fit_pool) > FIT_VOXELS:
        fit_pool = fit_pool[rng.choice(len(fit_pool), FIT_VOXELS, replace=False)]
    gmm = GaussianMixture(n_components=3, covariance_type="full", random_state=seed, reg_covar=1e-4)
    # One BLAS thread: these small (n x 3) products gain nothing from threads, and with several
    # preprocessing or training processes on a machine, threaded BLAS made predict 4-8x slower.
    with threadpool_limits(limits=1):
        gmm.fit(fit_pool)
        components = gmm.predict(features_all)
    t1_minus_t2 = gmm.means_[:, FEATURES.index("t1")] - gmm.means_[:, FEATURES.index("t2")]
    rank = np.argsort(np.argsort(t1_minus_t2))  # component k -> tissue class rank[k] + 1
    classes = (rank[components] + 1).astype(np.uint8)
    out = np.zeros(brain.shape, dtype=np.uint8)
    out[brain] = classes
    return out


def use_tissue_file(tissue: np.ndarray, brain: np.ndarray, case_id: str = "<case>") -> np.ndarray:
    """Fit a stored tissue map to the brain mask so that tissue > 0 exactly on the brain.

    Stored maps (e.g. a phantom's) may leave brain voxels at 0 (inside the tumour, or where
    the mask from the images is a little wider); those take the class of the nearest labelled
    voxel. Voxels outside the brain are set to 0.

    Args: tissue uint8 (X, Y, Z) with values in {0, 1, 2, 3}; brain bool (X, Y, Z).
    Returns uint8 (X, Y, Z).
    """
    if tissue.shape != brain.shape:
        raise DataError(case_id, f"tissue map shape {tissue.shape} != image shape {brain.shape}")
    values = np.unique(tissue)
    if values.size and (values.min() < 0 or values.max() > WM):
        raise DataError(case_id, f"tissue map values must be in 0..3, found {values.tolist()}")
    tissue = tissue.astype(np.uint8)
    labelled = tissue > 0
    if not (labelled & brain).any():
        raise DataError(case_id, "tissue map has no labelled voxel inside the brain")
    out = np.where(brain, tissue, 0).astype(np.uint8)
    holes = brain & ~labelled
    if holes.any():
        # Index of the nearest labelled voxel for every voxel (labelled ones map to themselves).
        _, nearest = ndimage.distance_transform_edt(~labelled, return_indices=True)
        out[holes] = tissue[tuple(idx[holes] for idx in nearest)]
    return out
