"""Membership inference against a conditional generator, by reconstruction error.

The attacker holds the released generator G (white box) and, for a candidate patient, the
label maps and real images. pix2pix trains G to reproduce a training patient's images from
that patient's label maps (its L1 term), so a memorising G reconstructs members better than
patients it never saw. Score of a patient = minus its mean reconstruction error: the mean,
over its slices, of the mean absolute difference |G(label map) - real| inside the brain
(images in [-1, 1], so errors lie in [0, 2]). Members are labelled 1, non-members 0.

Low-FPR resolution: with n non-members the ROC's false-positive rates are multiples of 1/n,
so a TPR at FPR alpha is measurable only when 1/n <= alpha (n >= 1/alpha); otherwise it is
reported as not measurable rather than as the TPR at FPR 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from fedsynth.common.data.datasets import condition_channels

FPR_LEVELS = (0.01, 0.001)  # TPR is reported at these false-positive rates
Generate = Callable[[np.ndarray, np.ndarray], np.ndarray]


def generator_fn(module: Any, device: str | None = None, batch_size: int = 64) -> Generate:
    """(tissue, labels) uint8 (B, S, S) -> generated images float32 (B, 4, S, S) in [-1, 1]."""

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    module = module.to(dev).eval()

    def generate(tissue: np.ndarray, labels: np.ndarray) -> np.ndarray:
        out = []
        with torch.no_grad():
            for s in range(0, len(tissue), batch_size):
                cond = condition_channels(np.asarray(tissue[s : s + batch_size]),
                                          np.asarray(labels[s : s + batch_size]))  # fmt: skip
                out.append(module(torch.from_numpy(cond).to(dev)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 4, *tissue.shape[1:]), np.float32)

    return generate


def slice_errors(generate: Generate, cache: Any, batch_size: int = 64) -> np.ndarray:
    """float64 (N,): per slice, mean |G(label map) - real| over the brain's voxels and the
    4 contrasts, in [0, 2]. The brain is where tissue or tumour label is non-zero."""
    n = len(cache)
    errors = np.zeros(n, np.float64)
    for s in range(0, n, batch_size):
        sl = slice(s, min(n, s + batch_size))
        fake = generate(cache.tissue[sl], cache.labels[sl])
        real = np.asarray(cache.images[sl], np.float32)
        brain = (np.asarray(cache.tissue[sl]) > 0) | (np.asarray(cache.labels[sl]) > 0)
        diff = np.abs(fake - real).mean(axis=1)  # (B, S, S), mean over contrasts
        voxels = np.maximum(brain.sum(axis=(1, 2)), 1)
        errors[sl] = (diff * brain).sum(axis=(1, 2)) / voxels
    return errors


def patient_errors(errors: np.ndarray, patient: np.ndarray, patients: int) -> np.ndarray:
    """float64 (P,): mean of the slice errors of each patient (NaN for a patient without
    slices). ``patient``: int64 (N,) index of each slice's patient."""
    sums = np.bincount(patient, weights=errors, minlength=patients)
    counts = np.bincount(patient, minlength=patients)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def pairwise_auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """P(member score > non-member score) + 0.5 P(tie): the ROC AUC (Mann-Whitney U)."""
    m = np.asarray(member_scores, np.float64)[:, None]
    n = np.asarray(nonmember_scores, np.float64)[None, :]
    return float(((m > n) + 0.5 * (m == n)).mean())


def bootstrap_auc_ci(
    member_scores: np.ndarray,
    nonmember_scores: np.ndarray,
    *,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap CI of the AUC, members and non-members resampled separately
    (with replacement, each group at its own size). None with fewer than 2 in a group."""
    m = np.asarray(member_scores, np.float64)
    n = np.asarray(nonmember_scores, np.float64)
    if len(m) < 2 or len(n) < 2 or resamples < 1:
        return None
    wins = (m[:, None] > n[None, :]) + 0.5 * (m[:, None] == n[None, :])  # (M, N)
    rng = np.random.default_rng(seed)
    aucs = np.empty(resamples)
    for b in range(resamples):
        im = rng.integers(0, len(m), len(m))
        jn = rng.integers(0, len(n), len(n))
        aucs[b] = wins[np.ix_(im, jn)].mean()
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(aucs, [tail, 100 - tail])
    return float(lo), float(hi)


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, alpha: float, nonmembers: int) -> dict[str, Any]:
    """Highest TPR among ROC points with FPR <= alpha, if measurable with ``nonmembers``.

    Returns {"fpr": alpha, "tpr": float | None, "measurable": bool, "note": str}.
    """
    if nonmembers < 1 or 1.0 / nonmembers > alpha:
        smallest = f"1/{nonmembers} = {1.0 / nonmembers:.3g}" if nonmembers else "undefined"
        return {
            "fpr": alpha,
            "tpr": None,
            "measurable": False,
            "note": (
                f"not measurable: with {nonmembers} non-members the smallest non-zero FPR is "
                f"{smallest} > {alpha:g}; needs >= {int(np.ceil(1 / alpha))} non-members"
            ),
        }
    ok = fpr <= alpha + 1e-12
    return {
        "fpr": alpha,
        "tpr": float(tpr[ok].max()),
        "measurable": True,
        "note": f"resolution 1/{nonmembers} = {1.0 / nonmembers:.3g}",
    }


@dataclass
class AttackResult:
    """One membership-inference evaluation: a ROC over member vs non-member scores."""

    auc: float
    auc_ci: tuple[float, float] | None
    members: int
    nonmembers: int
    tpr_at: list[dict[str, Any]]
    fpr: np.ndarray  # ROC points (sklearn.metrics.roc_curve)
    tpr: np.ndarray

    def to_json(self) -> dict[str, Any]:
        return {
            "auc": self.auc,
            "auc_ci95": list(self.auc_ci) if self.auc_ci else None,
            "members": self.members,
            "nonmembers": self.nonmembers,
            "fpr_resolution": 1.0 / self.nonmembers if self.nonmembers else None,
            "tpr_at_fpr": self.tpr_at,
        }


def evaluate_attack(
    member_scores: np.ndarray,
    nonmember_scores: np.ndarray,
    *,
    resamples: int = 2000,
    seed: int = 0,
    fpr_levels: tuple[float, ...] = FPR_LEVELS,
) -> AttackResult:
    """ROC AUC (sklearn), its bootstrap CI and TPR at each FPR level. Higher score = more
    likely a member. ValueError if either group is empty or a score is not finite."""
    m = np.asarray(member_scores, np.float64)
    n = np.asarray(nonmember_scores, np.float64)
    if len(m) == 0 or len(n) == 0:
        raise ValueError(f"need members and non-members, got {len(m)} and {len(n)}")
    if not (np.isfinite(m).all() and np.isfinite(n).all()):
        raise ValueError("membership scores must be finite")
    y = np.r_[np.ones(len(m)), np.zeros(len(n))]
    s = np.r_[m, n]
    fpr, tpr, _ = roc_curve(y, s)
    return AttackResult(
        auc=float(roc_auc_score(y, s)),
        auc_ci=bootstrap_auc_ci(m, n, resamples=resamples, seed=seed),
        members=len(m),
        nonmembers=len(n),
        tpr_at=[tpr_at_fpr(fpr, tpr, a, len(n)) for a in fpr_levels],
        fpr=fpr,
        tpr=tpr,
    )


@dataclass
class MembershipAudit:
    """overall: every member vs every non-member (patients). per_site: that site's members vs
    every non-member. per_slice: slices as samples (not independent: no CI meaning per
    patient; shown as a secondary, finer-grained view). errors: patient id -> mean error."""

    overall: AttackResult
    per_site: dict[str, AttackResult]
    per_slice: AttackResult
    member_errors: dict[str, dict[str, float]]  # site -> patient -> error
    nonmember_errors: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {
            "score": "minus mean L1 reconstruction error inside the brain, per patient",
            "overall": self.overall.to_json(),
            "per_site": {k: v.to_json() for k, v in sorted(self.per_site.items())},
            "per_slice": self.per_slice.to_json(),
            "member_errors": self.member_errors,
            "nonmember_errors": self.nonmember_errors,
        }


def _patient_map(cache: Any, errors: np.ndarray) -> dict[str, float]:
    per = patient_errors(errors, np.asarray(cache.patient), len(cache.patients))
    return {p: float(e) for p, e in zip(cache.patients, per, strict=True) if np.isfinite(e)}


def membership_audit(
    generate: Generate,
    members: dict[str, Any],
    heldout: Any,
    *,
    resamples: int = 2000,
    seed: int = 0,
) -> MembershipAudit:
    """Reconstruction-error attack on every member site's patients vs the held-out ones.

    members: site -> SliceCache-like (images, tissue, labels, patient, patients); heldout:
    the same for non-members.
    """
    slice_err = {site: slice_errors(generate, c) for site, c in members.items()}
    held_slices = slice_errors(generate, heldout)
    member_err = {site: _patient_map(members[site], e) for site, e in slice_err.items()}
    held_err = _patient_map(heldout, held_slices)
    held_scores = -np.array(list(held_err.values()))
    per_site = {
        site: evaluate_attack(
            -np.array(list(errs.values())), held_scores, resamples=resamples, seed=seed
        )  # fmt: skip
        for site, errs in member_err.items()
        if errs
    }
    all_members = -np.array([e for errs in member_err.values() for e in errs.values()])
    overall = evaluate_attack(all_members, held_scores, resamples=resamples, seed=seed)
    per_slice = evaluate_attack(
        -np.concatenate(list(slice_err.values())), -held_slices, resamples=0, seed=seed
    )
    return MembershipAudit(overall, per_site, per_slice, member_err, held_err)
