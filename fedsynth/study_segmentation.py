"""The segmentation half of ``fedsynth study``: real-data arms once, synthetic arms per generator.

Every generator arm's synthetic cohort feeds two benchmark arms (``synthetic``: trained on the
synthetic cases alone; ``local+synthetic``: a site's real patients plus them), and the real
arms (``local``, ``pooled``) run once for the whole study, all on the same held-out test
patients with the same seeds. ``benchmark.sites: smallest`` keeps the per-site arms to the
site with the fewest patients, the one synthetic data should help most.

The study's Dice table combines the benchmarks' ``per_patient.csv``: per generator arm the
synthetic-only Dice with a per-patient bootstrap interval, its ratio to pooled real data, and
local+synthetic minus local for the per-site arms' site(s) (paired per patient and seed,
Wilcoxon signed-rank across patients, and the per-seed mean differences to show the spread).
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from fedsynth.benchmark.metrics import REGIONS
from fedsynth.benchmark.runner import run_benchmark
from fedsynth.benchmark.stats import bootstrap_ci, paired_comparison, patient_matrix
from fedsynth.common.config import Config

REAL_ARMS = ("local", "pooled")
SYNTHETIC_ARMS = ("synthetic", "local+synthetic")
PER_PATIENT = "per_patient.csv"
BASELINE_ARM = "public-only"  # the generator that never saw site data


def with_arms(cfg: Config, arms: tuple[str, ...]) -> Config:
    return dataclasses.replace(cfg, benchmark=dataclasses.replace(cfg.benchmark, arms=list(arms)))


def real_benchmark(cfg: Config, out: Path) -> Path:
    """``OUT/real/benchmark/per_patient.csv`` of the real arms (run once, then reused)."""
    done = out / "real" / "benchmark" / PER_PATIENT
    if not done.is_file():
        print("[real] segmentation on real patients: local, pooled ...", flush=True)
        run_benchmark(with_arms(cfg, REAL_ARMS), out / "real")
    return done


def synthetic_benchmark(acfg: Config, synthetic: Path, folder: Path) -> Path:
    """The synthetic arms on ``synthetic``; returns the run's per_patient.csv."""
    return (
        run_benchmark(with_arms(acfg, SYNTHETIC_ARMS), folder, synthetic=synthetic).out
        / PER_PATIENT
    )


def read_rows(path: Path, prefix: str = "") -> list[dict[str, Any]]:
    """per_patient.csv rows; arm names prefixed ``<prefix>|`` (a generator arm's own)."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["arm"] = f"{prefix}|{r['arm']}" if prefix else r["arm"]
    return rows


def _ci(rows, arm: str, region: str) -> tuple[float, float, float] | None:
    _, _, m = patient_matrix(rows, arm, region, "dice")
    return bootstrap_ci(m) if m.size else None


def _fmt(ci: tuple[float, float, float] | None, signed: bool = False) -> str:
    if ci is None:
        return "n/a"
    f = "+.3f" if signed else ".3f"
    return f"{ci[0]:{f}} [{ci[1]:{f}}, {ci[2]:{f}}]"


def seed_differences(rows, arm: str, reference: str, region: str) -> list[float]:
    """Per seed: mean over the test patients of ``arm`` - ``reference`` (Dice)."""
    sa, pa, ma = patient_matrix(rows, arm, region, "dice")
    sb, pb, mb = patient_matrix(rows, reference, region, "dice")
    both = [p for p in pa if p in pb]
    out = []
    for s in (s for s in sa if s in sb):
        a = ma[sa.index(s), [pa.index(p) for p in both]]
        b = mb[sb.index(s), [pb.index(p) for p in both]]
        out.append(float(np.nanmean(a - b)))
    return out


def dice_summary(rows: list[dict[str, Any]], arms: list[str]) -> dict[str, Any]:
    """Per generator arm: synthetic-only Dice per region (mean, low, high), ratio of its WT to
    pooled WT, and local+synthetic - local on WT (paired, with per-seed means)."""
    pooled = {r: _ci(rows, "pooled", r) for r in REGIONS}
    out: dict[str, Any] = {"pooled": pooled, "local": {r: _ci(rows, "local", r) for r in REGIONS},
                           "arms": {}}  # fmt: skip
    for arm in arms:
        syn = {r: _ci(rows, f"{arm}|synthetic", r) for r in REGIONS}
        if syn["WT"] is None:
            continue
        gain = paired_comparison(rows, f"{arm}|local+synthetic", "local", "WT", "dice")
        vs_public = None
        if arm != BASELINE_ARM:
            vs_public = paired_comparison(
                rows, f"{arm}|synthetic", f"{BASELINE_ARM}|synthetic", "WT", "dice"
            )
        out["arms"][arm] = {
            "synthetic": syn,
            "ratio_to_pooled_wt": syn["WT"][0] / pooled["WT"][0] if pooled["WT"] else None,
            "local_synthetic_minus_local_wt": dataclasses.asdict(gain) if gain else None,
            "seed_differences_wt": seed_differences(rows, f"{arm}|local+synthetic", "local", "WT"),
            "synthetic_minus_public_only_wt": dataclasses.asdict(vs_public) if vs_public else None,
        }
    return out


def dice_table(summary: dict[str, Any], eps_of: dict[str, str]) -> str:
    """Markdown: pooled/local real reference lines, then one row per generator arm."""
    p, lo = summary["pooled"], summary["local"]
    lines = [
        "Segmentation (3-D Dice on the held-out test patients, mean [95 % per-patient bootstrap "
        "interval] over patients and seeds):", "",
        f"- pooled real patients: WT {_fmt(p['WT'])}, TC {_fmt(p['TC'])}, ET {_fmt(p['ET'])}",
        f"- local (per-site arm sites, real patients only): WT {_fmt(lo['WT'])}, "
        f"TC {_fmt(lo['TC'])}, ET {_fmt(lo['ET'])}", "",
        "| arm | epsilon (delta) | synthetic-only WT | TC | ET | WT / pooled | "
        "synthetic WT - public-only's (p) | local+synthetic - local, WT (p) | per seed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for arm, a in summary["arms"].items():
        s = a["synthetic"]
        gain, vs_public = _paired(a["local_synthetic_minus_local_wt"]), _paired(
            a["synthetic_minus_public_only_wt"])  # fmt: skip
        ratio = "n/a" if a["ratio_to_pooled_wt"] is None else f"{a['ratio_to_pooled_wt']:.2f}"
        seeds = ", ".join(f"{d:+.3f}" for d in a["seed_differences_wt"])
        lines.append(f"| {arm} | {eps_of.get(arm, '')} | {_fmt(s['WT'])} | {_fmt(s['TC'])} | "
                     f"{_fmt(s['ET'])} | {ratio} | {vs_public} | {gain} | {seeds} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _paired(c: dict[str, Any] | None) -> str:
    """A paired comparison as 'mean [low, high] (p value)'; n/a when it was not possible."""
    if c is None:
        return "n/a"
    return (
        f"{_fmt((c['mean_diff'], c['ci_low'], c['ci_high']), signed=True)} (p {c['p_value']:.2g})"
    )
