"""Tissue labels (CSF / grey matter / white matter): the anatomy the generator is conditioned on.

Shin et al. condition pix2pix on brain anatomy as well as the tumour. A case's tissue map is
taken from its ``<id>_tissue`` file when it has one (phantoms do); otherwise it is computed
here, as the standard tool (ANTs Atropos, 3 classes on T1) does it:

1. **fit on healthy brain only**: the tumour and a margin around it (where oedema fades into
   tissue) are left out of the fit, so abnormal intensities do not claim a class;
2. **on the contrast where the classes separate**: T1 (CSF < GM < WM), standardised robustly
   (median and inter-quartile range of the healthy brain). A 3-class Gaussian mixture (EM
   started from the terciles, like Atropos's k-means start) gives each voxel a likelihood per
   class. Adding T2 and FLAIR, as the previous method did, made the mixture class most of the
   cortex as white matter on the real BraTS case (WM 70 % of the healthy brain): clinical T2
   and FLAIR separate grey from white matter far less than T1 does;
3. **optional spatial smoothing**: a mean-field Potts prior (``mrf_beta`` per neighbour over
   the 26-neighbourhood, like Atropos's ``-m [beta, 1x1x1]``). It is off by default: measured
   against Atropos on the real case and against the phantoms' true tissue, every beta > 0
   lowered the agreement (``benchmarks/bench_tissue.py``, figures in docs/data.md).

Classes are ordered by their mean T1: CSF lowest, WM highest.

Convention (uint8): 0 background (outside the brain), 1 CSF, 2 GM, 3 WM. Every brain voxel
gets a tissue class, tumour voxels included (an intensity guess there): the tumour label
overrides tissue only later, when the conditioning channels are built
(``datasets.condition_channels``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from fedsynth.common.errors import DataError

BACKGROUND, CSF, GM, WM = 0, 1, 2, 3
TISSUE_CLASSES: tuple[int, ...] = (CSF, GM, WM)
TISSUE_NAMES: dict[int, str] = {BACKGROUND: "background", CSF: "CSF", GM: "GM", WM: "WM"}

FEATURES: tuple[str, ...] = ("t1",)
# How each contrast orders the classes: +1 brighter from CSF to WM (T1), -1 darker (T2).
ORDER_SIGN: dict[str, float] = {"t1": 1.0, "t1c": 1.0, "t2": -1.0}
FIT_VOXELS = 50_000  # voxels subsampled to fit the mixture: enough for 3 classes, fast
MIN_FIT_VOXELS = 30  # below this a 3-class fit is meaningless
TUMOUR_MARGIN_VOXELS = 2  # left out of the fit around the tumour label (oedema's fringe)
EM_ITERATIONS = 50  # at most; stops earlier when the mean log-likelihood gains < EM_TOLERANCE
EM_TOLERANCE = 1e-5
MRF_BETA = 0.0  # Potts weight per neighbour; 0 = no smoothing (measured best, see docstring)
MRF_ITERATIONS = 6


def _standardise(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(values - median) / IQR of ``reference``: robust to the tails of tumour and vessels."""
    q1, median, q3 = np.percentile(reference, [25, 50, 75])
    return (values - median) / max(q3 - q1, 1e-6)


def _log_likelihood(x: np.ndarray, means: np.ndarray, var: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(N, K) log of w_k N(x | mean_k, diag var_k) for x (N, D)."""
    out = np.empty((len(x), len(w)), np.float64)
    for k in range(len(w)):
        d = (x - means[k]) ** 2 / var[k]
        out[:, k] = np.log(w[k]) - 0.5 * (d.sum(axis=1) + np.log(2 * np.pi * var[k]).sum())
    return out


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=-1, keepdims=True)


def _order_score(x: np.ndarray, features: tuple[str, ...]) -> np.ndarray:
    """(..., D) -> (...,): sum of the signed features; grows from CSF to WM (T1 - T2)."""
    return x @ np.array([ORDER_SIGN[m] for m in features])


def fit_mixture(
    x: np.ndarray, features: tuple[str, ...] = FEATURES
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EM for a 3-class diagonal Gaussian mixture on x (N, D), the standardised ``features``.

    Starts from the terciles of the order score (T1 - T2: CSF, GM, WM). Returns (means
    (3, D), variances (3, D), weights (3,)), classes in that start order.
    """
    score = _order_score(x, features)
    edges = np.percentile(score, [100 / 3, 200 / 3])
    start = np.digitize(score, edges)
    resp = np.eye(3)[start]
    previous = -np.inf
    for _ in range(EM_ITERATIONS):
        n = resp.sum(axis=0) + 1e-9
        means = (resp.T @ x) / n[:, None]
        var = (resp.T @ x**2) / n[:, None] - means**2 + 1e-4
        weights = n / n.sum()
        ll = _log_likelihood(x, means, var, weights)
        top = ll.max(axis=1, keepdims=True)
        total = float(np.mean(top[:, 0] + np.log(np.exp(ll - top).sum(axis=1))))
        if total - previous < EM_TOLERANCE:  # converged: the fit no longer improves
            break
        previous, resp = total, _softmax(ll)
    return means, var, weights


def _mean_field(loglik: np.ndarray, brain: np.ndarray, beta: float) -> np.ndarray:
    """Potts-smoothed class probabilities: q <- softmax(loglik + beta * sum of neighbours' q).

    loglik: (N, 3) for the N brain voxels (in ``brain``'s C order); returns (N, 3).
    """
    q = _softmax(loglik)
    volume = np.zeros((3, *brain.shape), np.float32)
    for _ in range(MRF_ITERATIONS):
        volume[:, brain] = q.T
        # 27 * mean over the 3x3x3 box, minus the voxel itself: the sum over 26 neighbours.
        neighbours = np.stack(
            [ndimage.uniform_filter(volume[k], size=3, mode="constant")[brain] * 27 - q[:, k]
             for k in range(3)],
            axis=1,
        )  # fmt: skip
        q = _softmax(loglik + beta * neighbours)
    return q


def compute_tissue(
    images: dict[str, np.ndarray],
    brain: np.ndarray,
    tumour: np.ndarray | None,
    seed: int,
    case_id: str = "<case>",
    mrf_beta: float = MRF_BETA,
) -> np.ndarray:
    """Tissue map of one volume (see the module docstring for the method).

    Args:
        images: modality key -> float32 (X, Y, Z) intensities (any monotone scaling, e.g.
            normalised to [-1, 1]); needs the keys in FEATURES.
        brain: bool (X, Y, Z) brain mask.
        tumour: bool (X, Y, Z) tumour voxels, left out of the fit with a margin, or None.
        seed: seeds the voxel subsample; same inputs and seed -> same map.
        mrf_beta: weight of the spatial (Potts) prior per neighbour; 0 turns it off.

    Returns uint8 (X, Y, Z): 0 outside the brain; 1 CSF, 2 GM, 3 WM inside.
    Raises DataError if the brain has too few healthy voxels to fit.
    """
    healthy = brain
    if tumour is not None and tumour.any():
        grown = ndimage.binary_dilation(tumour, iterations=TUMOUR_MARGIN_VOXELS)
        healthy = brain & ~grown
    healthy_in_brain = healthy[brain]
    if int(healthy_in_brain.sum()) < MIN_FIT_VOXELS:
        raise DataError(
            case_id,
            f"only {int(healthy_in_brain.sum())} healthy brain voxels; cannot compute a tissue "
            "map (provide a <id>_tissue file or check the brain mask)",
        )
    raw = [images[m][brain].astype(np.float64) for m in FEATURES]
    x = np.stack([_standardise(v, v[healthy_in_brain]) for v in raw], axis=1)
    fit = x[healthy_in_brain]
    rng = np.random.default_rng(seed)
    if len(fit) > FIT_VOXELS:
        fit = fit[rng.choice(len(fit), FIT_VOXELS, replace=False)]
    means, var, weights = fit_mixture(fit, FEATURES)
    loglik = _log_likelihood(x, means, var, weights)
    q = _mean_field(loglik, brain, mrf_beta) if mrf_beta > 0 else loglik
    order = np.argsort(np.argsort(_order_score(means, FEATURES)))  # component -> rank (0 = CSF)
    out = np.zeros(brain.shape, dtype=np.uint8)
    out[brain] = (order[q.argmax(axis=1)] + 1).astype(np.uint8)
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
