"""Benchmark results as tables: per-model rows, mean/std over seeds, paired differences vs local.

``results.csv`` columns: arm, site, seed, region, metric, value. ``value`` is the mean over the
held-out patients of Dice (0..1, higher is better) or HD95 (grid units, lower is better). For
arms that train one model per site there is also a row with site ``"mean"``: the mean over
sites of that seed. Arms that train one model for everyone have site ``"all"``.

Paired differences (``differences.csv``): for every arm other than ``local``, seed and site k,
arm score minus the ``local`` score of site k with the same seed (for a site-``all`` arm, its
one model against each site's local model); then mean and standard deviation over seeds, per
site and for the mean over sites.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from fedsynth.benchmark.arms import ALL_SITES, ArmOutcome
from fedsynth.benchmark.metrics import METRICS, REGIONS
from fedsynth.benchmark.stats import bootstrap_ci, paired_comparison, patient_matrix
from fedsynth.common.io.atomic import atomic_write_text

MEAN_SITE = "mean"
RESULT_COLUMNS = ("arm", "site", "seed", "region", "metric", "value")
DIFF_COLUMNS = ("arm", "site", "region", "metric", "mean_diff", "std_diff", "n")
PATIENT_COLUMNS = ("arm", "site", "seed", "patient", "region", "dice", "hd95", "hd95_grid")
INTERVAL_COLUMNS = ("arm", "region", "metric", "mean", "ci_low", "ci_high", "patients", "seeds")
COMPARISON_COLUMNS = (
    "arm", "reference", "region", "metric", "mean_diff", "ci_low", "ci_high", "p_value",
    "patients", "seeds",
)  # fmt: skip
CURVE_COLUMNS = (
    "arm", "site", "seed", "step", "train_loss", "val_dice", "best_step", "status",
    "min_tumour_voxels",
)  # fmt: skip
# (arm, reference) pairs compared patient by patient, when both arms ran
REFERENCES = (("*", "local"), ("synthetic", "pooled"), ("public-only", "synthetic"))
STILL_RISING = "still rising"  # status of a model whose validation Dice had not plateaued

Row = dict[str, object]


def result_rows(outcomes: Sequence[ArmOutcome]) -> list[Row]:
    """One row per (arm, site, seed, region, metric), plus site-mean rows for per-site arms."""
    rows: list[Row] = []
    for o in outcomes:
        for region, scores in o.scores.mean().items():
            for metric in METRICS:
                rows.append(
                    {
                        "arm": o.arm,
                        "site": o.site,
                        "seed": o.seed,
                        "region": region,
                        "metric": metric,
                        "value": scores[metric],
                    }
                )
    by_key: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        if r["site"] != ALL_SITES:
            by_key[(r["arm"], r["seed"], r["region"], r["metric"])].append(float(r["value"]))  # type: ignore[arg-type]
    for (arm, seed, region, metric), values in by_key.items():
        rows.append(
            {
                "arm": arm,
                "site": MEAN_SITE,
                "seed": seed,
                "region": region,
                "metric": metric,
                "value": float(np.mean(values)),
            }
        )
    return rows


def patient_rows(outcomes: Sequence[ArmOutcome]) -> list[Row]:
    return [
        {"arm": o.arm, "site": o.site, "seed": o.seed, **r}
        for o in outcomes
        for r in o.scores.records
    ]


def _std(values: Sequence[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summary(rows: Iterable[Row]) -> dict[tuple[str, str, str, str], tuple[float, float, int]]:
    """(arm, site, region, metric) -> (mean over seeds, sample std over seeds, seeds)."""
    groups: dict[tuple[str, str, str, str], list[float]] = defaultdict(list)
    for r in rows:
        groups[(str(r["arm"]), str(r["site"]), str(r["region"]), str(r["metric"]))].append(
            float(r["value"])
        )  # type: ignore[arg-type]
    return {k: (float(np.mean(v)), _std(v), len(v)) for k, v in groups.items()}


def paired_differences(rows: Sequence[Row]) -> list[Row]:
    """Arm minus local, paired by site and seed (see module docstring); [] without local."""
    value = {
        (r["arm"], r["site"], r["seed"], r["region"], r["metric"]): float(r["value"]) for r in rows
    }  # type: ignore[arg-type]
    local_sites = sorted(
        {str(r["site"]) for r in rows if r["arm"] == "local" and r["site"] != MEAN_SITE}
    )
    seeds = sorted({int(r["seed"]) for r in rows if r["arm"] == "local"})  # type: ignore[call-overload]
    arms = [a for a in dict.fromkeys(str(r["arm"]) for r in rows) if a != "local"]
    out: list[Row] = []
    for arm in arms:
        for region in REGIONS:
            for metric in METRICS:
                per_site: dict[str, list[float]] = defaultdict(list)
                for seed in seeds:
                    diffs = []
                    for site in local_sites:
                        mine = value.get(
                            (arm, site, seed, region, metric),
                            value.get((arm, ALL_SITES, seed, region, metric)),
                        )
                        if mine is None:
                            continue
                        diffs.append(mine - value[("local", site, seed, region, metric)])
                        per_site[site].append(diffs[-1])
                    if diffs:
                        per_site[MEAN_SITE].append(float(np.mean(diffs)))
                for site, d in per_site.items():
                    out.append(
                        {
                            "arm": arm,
                            "site": site,
                            "region": region,
                            "metric": metric,
                            "mean_diff": float(np.mean(d)),
                            "std_diff": _std(d),
                            "n": len(d),
                        }
                    )
    return out


def csv_text(rows: Sequence[Row], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def write_csv(path: Path, rows: Sequence[Row], columns: Sequence[str]) -> None:
    atomic_write_text(path, csv_text(rows, columns))


def _arms(rows: Iterable[Row]) -> list[str]:
    return list(dict.fromkeys(str(r["arm"]) for r in rows))


def interval_rows(patient_rows_: Sequence[Row]) -> list[Row]:
    """Per arm, region and metric: mean over seeds and patients with its bootstrap interval."""
    out: list[Row] = []
    for arm in _arms(patient_rows_):
        for region in REGIONS:
            for metric in METRICS:
                seeds, patients, m = patient_matrix(patient_rows_, arm, region, metric)
                mean, lo, hi = bootstrap_ci(m)
                out.append(
                    {"arm": arm, "region": region, "metric": metric, "mean": mean,
                     "ci_low": lo, "ci_high": hi, "patients": len(patients), "seeds": len(seeds)}
                )  # fmt: skip
    return out


def comparison_rows(patient_rows_: Sequence[Row]) -> list[Row]:
    """The paired comparisons of ``REFERENCES`` (``*``: every other arm) that can be made."""
    arms = _arms(patient_rows_)
    pairs = []
    for arm, ref in REFERENCES:
        if ref in arms:
            pairs += [(a, ref) for a in arms if a != ref and (arm == "*" or a == arm)]
    out: list[Row] = []
    for arm, ref in pairs:
        for region in REGIONS:
            for metric in METRICS:
                c = paired_comparison(patient_rows_, arm, ref, region, metric)
                if c is not None:
                    out.append(
                        {"arm": c.arm, "reference": c.reference, "region": c.region,
                         "metric": c.metric, "mean_diff": c.mean_diff, "ci_low": c.ci_low,
                         "ci_high": c.ci_high, "p_value": c.p_value, "patients": c.patients,
                         "seeds": c.seeds}
                    )  # fmt: skip
    return out


def curve_status(o: ArmOutcome) -> str:
    """ "plateaued", "stopped early" (patience ran out) or STILL_RISING."""
    if o.curve.still_rising:
        return STILL_RISING
    return "stopped early" if o.curve.stopped_early else "plateaued"


def curve_rows(outcomes: Sequence[ArmOutcome]) -> list[Row]:
    """One row per evaluation of every model's learning curve."""
    out: list[Row] = []
    for o in outcomes:
        c, status = o.curve, curve_status(o)
        for step, loss, val in zip(
            c.steps, c.train_loss, c.val_dice or [np.nan] * len(c.steps), strict=True
        ):
            out.append(
                {"arm": o.arm, "site": o.site, "seed": o.seed, "step": step, "train_loss": loss,
                 "val_dice": val, "best_step": c.best_step, "status": status,
                 "min_tumour_voxels": c.min_tumour_voxels}
            )  # fmt: skip
    return out
