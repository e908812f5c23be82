"""``results.md``: the benchmark's tables in Markdown: convergence of every model, each arm's
mean with its per-patient bootstrap 95 % interval, paired comparisons with Wilcoxon p-values,
per-site scores and per-site paired differences against local."""

from __future__ import annotations

from collections.abc import Sequence

from fedsynth.benchmark.arms import ALL_SITES
from fedsynth.benchmark.metrics import REGIONS
from fedsynth.benchmark.results import MEAN_SITE, STILL_RISING, Row, summary

_METRIC_NAMES = {"dice": "Dice (higher is better)", "hd95": "HD95 in mm (lower is better)"}


def headline_site(arm: str, sites_of: dict[str, set[str]]) -> str:
    """The row that represents an arm overall: its one model, or its mean over sites."""
    return ALL_SITES if ALL_SITES in sites_of[arm] else MEAN_SITE


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _pm(mean: float, std: float, signed: bool = False) -> str:
    return f"{mean:+.3f} ± {std:.3f}" if signed else f"{mean:.3f} ± {std:.3f}"


def markdown(
    rows: Sequence[Row],
    diffs: Sequence[Row],
    context: dict[str, object],
    intervals: Sequence[Row] = (),
    comparisons: Sequence[Row] = (),
    curves: Sequence[Row] = (),
) -> str:
    """The whole report; ``context`` lines (config, sites, test patients...) go first."""
    stats = summary(rows)
    arms = list(dict.fromkeys(str(r["arm"]) for r in rows))
    sites_of: dict[str, set[str]] = {
        a: {str(r["site"]) for r in rows if r["arm"] == a} for a in arms
    }
    sites = sorted({s for a in arms for s in sites_of[a]} - {ALL_SITES, MEAN_SITE})
    out = ["# Segmentation benchmark", ""]
    out += [f"- {k}: {v}" for k, v in context.items()] + [""]
    out += _convergence(curves)
    out += _intervals(intervals, arms)
    out += _comparisons(comparisons)
    out += ["## Dice per site (WT / TC / ET), mean over seeds", ""]
    body = []
    for arm in arms:
        cells = []
        for site in sites:
            key = site if site in sites_of[arm] else ALL_SITES
            cells.append(" / ".join(f"{stats[(arm, key, reg, 'dice')][0]:.3f}" for reg in REGIONS))
        body.append([arm, *cells])
    out += _table(["arm", *sites], body) + [""]
    out += _differences(diffs, sites)
    return "\n".join(out) + "\n"


def _convergence(curves: Sequence[Row]) -> list[str]:
    """Per model: steps trained, best step, status; models still rising are named in bold."""
    models: dict[tuple[str, str, int], list[Row]] = {}
    for r in curves:
        models.setdefault((str(r["arm"]), str(r["site"]), int(r["seed"])), []).append(r)  # type: ignore[call-overload]
    if not models:
        return []
    out = [
        "## Convergence",
        "",
        "Each model trains until its validation Dice (mean of WT, TC, ET on validation patients "
        "held out of its own training patients) has not improved for `benchmark.patience` "
        "evaluations, and keeps its best weights (learning rate halved after two evaluations "
        "without a gain); learning curves in `curves.csv` and `curves_<arm>.png`. Predicted "
        "tumour components smaller than a threshold chosen on the same validation patients "
        "are dropped (column *small-tumour threshold*, grid voxels; 0: none).",
        "",
    ]
    rising = [k for k, rs in models.items() if rs[-1]["status"] == STILL_RISING]
    if rising:
        names = ", ".join(f"{a} {s} seed {sd}" for a, s, sd in rising)
        out += [
            f"**NOT CONVERGED: {len(rising)} of {len(models)} models ended with their validation "
            f"Dice still rising** ({names}): their scores understate what the arm can reach; "
            "raise `benchmark.steps`.",
            "",
        ]
    else:
        out += [f"All {len(models)} models plateaued.", ""]
    body = []
    for arm in dict.fromkeys(a for a, _, _ in models):
        mine = [rs for (a, _, _), rs in models.items() if a == arm]
        last = [int(rs[-1]["step"]) for rs in mine]  # type: ignore[call-overload]
        best = [int(rs[-1]["best_step"]) for rs in mine]  # type: ignore[call-overload]
        n_rising = sum(rs[-1]["status"] == STILL_RISING for rs in mine)
        small = sorted({int(rs[-1].get("min_tumour_voxels", 0)) for rs in mine})  # type: ignore[call-overload]
        body.append(
            [arm, str(len(mine)), f"{min(last)}-{max(last)}", f"{min(best)}-{max(best)}",
             str(n_rising), ", ".join(map(str, small))]
        )  # fmt: skip
    header = ["arm", "models", "steps trained", "best step", "still rising",
              "small-tumour threshold"]  # fmt: skip
    return out + _table(header, body) + [""]


def _ci(mean: float, lo: float, hi: float, signed: bool = False) -> str:
    f = "+.3f" if signed else ".3f"
    return f"{mean:{f}} [{lo:{f}}, {hi:{f}}]"


def _intervals(intervals: Sequence[Row], arms: list[str]) -> list[str]:
    value = {(r["arm"], r["region"], r["metric"]): r for r in intervals}
    out: list[str] = []
    for metric, title in _METRIC_NAMES.items():
        out += [
            f"## {title}: mean [95 % bootstrap interval over test patients]",
            "",
            "Mean over seeds and test patients (per-site arms: mean over sites first).",
            "",
        ]
        body = []
        for arm in arms:
            cells = []
            for reg in REGIONS:
                r = value.get((arm, reg, metric))
                cells.append(
                    "" if r is None else _ci(*(float(r[k]) for k in ("mean", "ci_low", "ci_high")))
                )  # type: ignore[arg-type]
            body.append([arm, *cells])
        out += _table(["arm", *REGIONS], body) + [""]
    return out


def _comparisons(comparisons: Sequence[Row]) -> list[str]:
    if not comparisons:
        return []
    n = max(int(c["patients"]) for c in comparisons)  # type: ignore[call-overload]
    out = [
        "## Paired comparisons (arm - reference, same test patients and seeds)",
        "",
        f"Mean difference [95 % bootstrap interval over patients]; p: two-sided Wilcoxon "
        f"signed-rank test across the {n} test patients (per patient, the mean over seeds).",
        "",
    ]
    value = {(c["arm"], c["reference"], c["region"], c["metric"]): c for c in comparisons}
    pairs = list(dict.fromkeys((str(c["arm"]), str(c["reference"])) for c in comparisons))
    for metric, title in _METRIC_NAMES.items():
        out += [f"### {title}", ""]
        body = []
        for arm, ref in pairs:
            cells = []
            for reg in REGIONS:
                c = value.get((arm, ref, reg, metric))
                if c is None:
                    cells.append("")
                    continue
                ci = _ci(*(float(c[k]) for k in ("mean_diff", "ci_low", "ci_high")), signed=True)  # type: ignore[arg-type]
                cells.append(f"{ci} p={float(c['p_value']):.2g}")  # type: ignore[arg-type]
            body.append([f"{arm} - {ref}", *cells])
        out += _table(["comparison", *REGIONS], body) + [""]
    return out


def _differences(diffs: Sequence[Row], sites: list[str]) -> list[str]:
    if not diffs:
        return ["(no paired differences: the local arm did not run)", ""]
    out = [
        "## Per-site paired differences against local (arm - local, same site and seed), "
        "mean ± std over seeds",
        "",
    ]
    value = {(d["arm"], d["site"], d["region"], d["metric"]): d for d in diffs}
    arms = list(dict.fromkeys(str(d["arm"]) for d in diffs))
    for metric in ("dice",):
        for region in REGIONS:
            out += [f"### {metric} {region}", ""]
            body = []
            for arm in arms:
                cells = []
                for site in [*sites, MEAN_SITE]:
                    d = value.get((arm, site, region, metric))
                    cells.append(
                        ""
                        if d is None
                        else _pm(float(d["mean_diff"]), float(d["std_diff"]), signed=True)
                    )  # type: ignore[arg-type]
                body.append([arm, *cells])
            out += _table(["arm", *sites, "mean over sites"], body) + [""]
    return out
