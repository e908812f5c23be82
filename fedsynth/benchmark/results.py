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
from fedsynth.common.io.atomic import atomic_write_text

MEAN_SITE = "mean"
RESULT_COLUMNS = ("arm", "site", "seed", "region", "metric", "value")
DIFF_COLUMNS = ("arm", "site", "region", "metric", "mean_diff", "std_diff", "n")
PATIENT_COLUMNS = ("arm", "site", "seed", "patient", "region", "dice", "hd95")

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
