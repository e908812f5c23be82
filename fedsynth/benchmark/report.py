"""``results.md``: the benchmark's tables in Markdown, from result rows and paired differences."""

from __future__ import annotations

from collections.abc import Sequence

from fedsynth.benchmark.arms import ALL_SITES
from fedsynth.benchmark.metrics import REGIONS
from fedsynth.benchmark.results import MEAN_SITE, Row, summary

_METRIC_NAMES = {"dice": "Dice (higher is better)", "hd95": "HD95 in grid units (lower is better)"}


def headline_site(arm: str, sites_of: dict[str, set[str]]) -> str:
    """The row that represents an arm overall: its one model, or its mean over sites."""
    return ALL_SITES if ALL_SITES in sites_of[arm] else MEAN_SITE


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _pm(mean: float, std: float, signed: bool = False) -> str:
    return f"{mean:+.3f} ± {std:.3f}" if signed else f"{mean:.3f} ± {std:.3f}"


def markdown(rows: Sequence[Row], diffs: Sequence[Row], context: dict[str, object]) -> str:
    """The whole report; ``context`` lines (config, sites, test patients...) go first."""
    stats = summary(rows)
    arms = list(dict.fromkeys(str(r["arm"]) for r in rows))
    sites_of: dict[str, set[str]] = {
        a: {str(r["site"]) for r in rows if r["arm"] == a} for a in arms
    }
    sites = sorted({s for a in arms for s in sites_of[a]} - {ALL_SITES, MEAN_SITE})
    out = ["# Segmentation benchmark", ""]
    out += [f"- {k}: {v}" for k, v in context.items()] + [""]
    for metric, title in _METRIC_NAMES.items():
        out += [f"## {title}, mean ± std over seeds", "", "Per-site arms: mean over sites.", ""]
        body = []
        for arm in arms:
            key = headline_site(arm, sites_of)
            body.append([arm, *(_pm(*stats[(arm, key, reg, metric)][:2]) for reg in REGIONS)])
        out += _table(["arm", *REGIONS], body) + [""]
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


def _differences(diffs: Sequence[Row], sites: list[str]) -> list[str]:
    if not diffs:
        return ["(no paired differences: the local arm did not run)", ""]
    out = [
        "## Paired differences against local (arm - local, same site and seed), mean ± std over seeds",
        "",
    ]
    value = {(d["arm"], d["site"], d["region"], d["metric"]): d for d in diffs}
    arms = list(dict.fromkeys(str(d["arm"]) for d in diffs))
    for metric in ("dice", "hd95"):
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
