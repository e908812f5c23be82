"""Uncertainty of the benchmark's scores: per-patient bootstrap intervals and paired tests.

The unit of sampling is the held-out **patient**: every arm is scored on the same test
patients, and the seeds are repeated trainings scored on those same patients, so they are not
independent samples of the population. Hence:

- an arm's score per (seed, patient) is its model's score on that patient; for arms with one
  model per site it is the mean over the sites' models (the headline "mean over sites");
- interval of an arm's mean: percentile bootstrap over patients (patients drawn with
  replacement, all seeds of a drawn patient kept), mean over seeds and drawn patients;
- paired comparison of arm A with reference B: per patient, the mean over seeds of
  A - B (same seed, same patient); the mean difference with a bootstrap interval over
  patients, and the Wilcoxon signed-rank test (scipy, two-sided) across patients. Averaging
  the seeds first keeps the test's n at the number of patients: treating seed x patient
  pairs as independent would overstate the evidence.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

N_BOOTSTRAP = 2000
BOOTSTRAP_SEED = 0  # intervals are reproducible run to run
CONFIDENCE = 0.95

Row = dict[str, object]


def patient_matrix(patient_rows: Sequence[Row], arm: str, region: str, metric: str):
    """(seeds, patients, matrix float (n_seeds, n_patients)) of ``arm``'s per-patient scores;
    per-site models of a seed are averaged per patient. Missing cells are NaN."""
    cells: dict[tuple[int, str], list[float]] = defaultdict(list)
    for r in patient_rows:
        if r["arm"] == arm and r["region"] == region:
            cells[(int(r["seed"]), str(r["patient"]))].append(float(r[metric]))  # type: ignore[arg-type]
    seeds = sorted({s for s, _ in cells})
    patients = sorted({p for _, p in cells})
    m = np.full((len(seeds), len(patients)), np.nan)
    for (s, p), v in cells.items():
        m[seeds.index(s), patients.index(p)] = float(np.mean(v))
    return seeds, patients, m


def bootstrap_ci(
    matrix: np.ndarray, n: int = N_BOOTSTRAP, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float, float]:
    """(mean, low, high) of the mean of ``matrix`` (seeds x patients), interval by resampling
    patients (columns) with replacement; ``CONFIDENCE`` percentile interval."""
    per_patient = np.nanmean(matrix, axis=0)
    rng = np.random.default_rng(seed)
    draws = rng.integers(len(per_patient), size=(n, len(per_patient)))
    means = per_patient[draws].mean(axis=1)
    tail = 100 * (1 - CONFIDENCE) / 2
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(per_patient.mean()), float(lo), float(hi)


@dataclass(frozen=True)
class Comparison:
    """arm - reference on one region and metric: mean over patients of the seed-mean paired
    difference, its bootstrap interval, the Wilcoxon signed-rank p-value, patients, seeds."""

    arm: str
    reference: str
    region: str
    metric: str
    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float
    patients: int
    seeds: int


def paired_comparison(
    patient_rows: Sequence[Row], arm: str, reference: str, region: str, metric: str
) -> Comparison | None:
    """``arm`` against ``reference`` on the seeds and patients both have; None if none."""
    sa, pa, ma = patient_matrix(patient_rows, arm, region, metric)
    sb, pb, mb = patient_matrix(patient_rows, reference, region, metric)
    seeds = [s for s in sa if s in sb]
    patients = [p for p in pa if p in pb]
    if not seeds or not patients:
        return None
    pick = np.ix_([sa.index(s) for s in seeds], [pa.index(p) for p in patients])
    ref = np.ix_([sb.index(s) for s in seeds], [pb.index(p) for p in patients])
    diff = ma[pick] - mb[ref]
    mean, lo, hi = bootstrap_ci(diff)
    per_patient = np.nanmean(diff, axis=0)
    p = wilcoxon_p(per_patient)
    return Comparison(arm, reference, region, metric, mean, lo, hi, p, len(patients), len(seeds))


def wilcoxon_p(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences; 1.0 when all are zero
    (no evidence of any difference) and NaN with fewer than two patients."""
    d = np.asarray(differences, float)
    d = d[np.isfinite(d)]
    if len(d) < 2:
        return float("nan")
    if not np.any(d != 0):
        return 1.0
    return float(scipy_stats.wilcoxon(d, zero_method="wilcox").pvalue)
