"""Sections of a run's report, each built from the files of the run directory.

Every function takes the run directory and returns a Section whose ``body`` is HTML with all
text escaped. A section whose files are absent says so in one line instead of vanishing.
"""

from __future__ import annotations

import base64
import csv
import html
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedsynth.audit.inputs import is_federated, read_privacy, read_run_config, trained_sites
from fedsynth.common.config import expand_path
from fedsynth.common.data.cohort import load_split, resolve_cohort
from fedsynth.common.data.phantom import METADATA, phantom_settings_hash
from fedsynth.common.errors import FedsynthError
from fedsynth.common.gan.plots import plot_metrics
from fedsynth.common.privacy.report import NO_DP
from fedsynth.common.rundir import SKIPPED_CASES_FILE, RunDir, read_json
from fedsynth.report.markdown import to_html

log = logging.getLogger(__name__)

SECTION_IDS = ("config", "sites", "privacy", "training", "samples", "benchmark", "audit")


@dataclass
class Section:
    id: str
    title: str
    body: str  # HTML, escaped
    present: bool = True


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def absent(section_id: str, title: str, what: str) -> Section:
    return Section(section_id, title, f'<p class="absent">{esc(what)}</p>', present=False)


def img(path: Path, alt: str) -> str:
    """An <img> with the PNG inlined as a base64 data URI (the page needs no other file)."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{data}"><figcaption>{esc(alt)}</figcaption></figure>'


def table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def config_section(run: Path) -> Section:
    path = RunDir(run).config
    if not path.is_file():
        return absent("config", "Configuration", f"No {path.name} in this run directory.")
    body = (
        f"<details><summary>{path.name} ({len(path.read_text().splitlines())} lines)</summary>"
        f"<pre>{esc(path.read_text())}</pre></details>"
    )
    return Section("config", "Configuration", body)


def _split_if_available(run: Path) -> tuple[Any, Any]:
    """(Split, members) of the run's cohort when it is on this machine, else (None, reason).

    Never generates a phantom cohort: a report only reads."""
    try:
        cfg = read_run_config(run)
        if cfg.data.source == "phantom":
            phantom = (
                expand_path(cfg.data.cache_dir) / "phantoms" / phantom_settings_hash(cfg.phantom)
            )
            if not (phantom / METADATA).is_file():
                return None, f"the phantom cohort is not on this machine ({phantom})"
        elif not expand_path(cfg.data.cohort_dir).is_dir():  # type: ignore[arg-type]
            return None, f"the cohort {cfg.data.cohort_dir} is not on this machine"
        split = load_split(resolve_cohort(cfg))
        members = trained_sites(cfg, split.sites, is_federated(run), read_privacy(run))
        return split, members
    except FedsynthError as e:
        return None, str(e)


def sites_section(run: Path) -> Section:
    split, members = _split_if_available(run)
    if split is None:
        return absent("sites", "Sites", f"Sites unknown: {members}.")
    rows = [
        [site, len(ids), "yes" if site in members else "no", ", ".join(ids)]
        for site, ids in sorted(split.sites.items())
    ]
    rows.append(["test (held out)", len(split.test), "no", ", ".join(split.test)])
    body = table(["site", "patients", "trained the generator", "subjects"], rows)
    return Section("sites", "Sites", body + _skipped_cases(run))


def _skipped_cases(run: Path) -> str:
    """The cases validation left out of the split (data.strict=false), with their reasons."""
    record = read_json(run / SKIPPED_CASES_FILE)
    if not record or not record.get("skipped"):
        return ""
    skipped = record["skipped"]
    rows = [[case, "; ".join(problems)] for case, problems in sorted(skipped.items())]
    intro = f"<p>{len(skipped)} invalid case(s) skipped (data.strict=false), not in any split:</p>"
    return intro + table(["case", "problems"], rows)


def _num(x: Any) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def privacy_section(run: Path) -> Section:
    p = RunDir(run).read_privacy()
    if p is None:
        return absent("privacy", "Privacy", "No privacy.json: what was accounted is unknown.")
    dp = bool(p.get("dp_enabled"))
    eps = p.get("worst_epsilon")
    headline = (
        NO_DP if not dp or eps is None else f"epsilon = {eps:.3g}, delta = {p.get('delta'):g}"
    )
    rows = [
        [site, "infinity" if s.get("epsilon") is None else f"{s['epsilon']:.3g}",
         _num(s.get("noise_multiplier")), _num(s.get("sample_rate")), s.get("steps"),
         _num(s.get("max_grad_norm"))]
        for site, s in sorted(p.get("sites", {}).items())
    ]  # fmt: skip
    body = (
        f'<p class="headline">{esc(headline)}</p>'
        f"<p>Unit of privacy: {esc(p.get('unit', 'unknown'))}; accountant: "
        f"{esc(p.get('accountant', 'unknown'))}. {esc(p.get('statement', ''))}</p>"
        "<p>Accounted: every DP-SGD step of the discriminator and the generator (one joint "
        "mechanism per step), per site; noise multiplier as the accountant saw it.</p>"
        + _cohort_labels_note(run)
        + _pretraining_note(p.get("pretrained_on"))
        + table(["site", "epsilon", "noise multiplier", "sample rate", "steps", "clip norm"], rows)
    )
    return Section("privacy", "Privacy", body)


def _pretraining_note(pretrained_on: dict[str, Any] | None) -> str:
    """The public data the generator was pre-trained on (privacy.json), as a small table."""
    if not pretrained_on:
        return "<p>Public pre-training: none recorded (the generator was trained from scratch).</p>"
    if "error" in pretrained_on:
        return (
            f"<p>Public pre-training: {esc(pretrained_on.get('init'))}, provenance "
            f"unreadable: {esc(pretrained_on['error'])}</p>"
        )
    rows = [[k.replace("_", " "), pretrained_on.get(k)]
            for k in ("public_data", "folder", "manifest_sha256", "training_subjects", "steps",
                      "dp", "init")]  # fmt: skip
    return (
        "<p>Public pre-training (without DP, on data declared public and checked to share no "
        "subject with the sites; not covered by the guarantee above):</p>" + table(["", ""], rows)
    )


def _cohort_labels_note(run: Path) -> str:
    # synthesis.label_source=cohort releases real (edited) label maps outside DP.
    try:
        cfg = yaml.safe_load(RunDir(run).config.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return ""
    if (cfg.get("synthesis") or {}).get("label_source") != "cohort":
        return ""
    return (
        "<p><strong>synthesis.label_source = cohort:</strong> synthetic cohorts of this run are "
        "drawn from REAL patients' label maps (edited), released with their subject ids "
        "outside differential privacy; the epsilon above covers the generator only.</p>"
    )


def _metrics(run: Path) -> list[dict[str, Any]]:
    rows = RunDir(run).read_metrics()  # a line cut by a crash is skipped
    # Federated runs add per-site rows; the curves use the aggregate rows.
    return [r for r in rows if r.get("kind", "round") != "site" and "step" in r]


def training_section(run: Path) -> Section:
    folder = RunDir(run).plots
    plots = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if plots:
        return Section("training", "Training curves", "".join(img(p, p.stem) for p in plots))
    records = _metrics(run)
    if not records:
        return absent("training", "Training curves", "No plots/ and no metrics.jsonl rows.")
    with tempfile.TemporaryDirectory() as tmp:
        plot_metrics(records, Path(tmp))
        figs = "".join(img(p, p.stem) for p in sorted(Path(tmp).glob("*.png")))
    return Section("training", "Training curves", "<p>Drawn from metrics.jsonl.</p>" + figs)


def samples_section(run: Path) -> Section:
    folder = RunDir(run).samples
    samples = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if not samples:
        return absent("samples", "Samples", "No sample grids in samples/.")
    latest = samples[-1]
    return Section("samples", "Samples", f"<p>Latest of {len(samples)}: {esc(latest.name)} "
                   "(label map | real | fake per contrast, held-out patients).</p>" + img(latest, latest.stem))  # fmt: skip


def csv_table(path: Path, limit: int = 200) -> str:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return "<p>(empty table)</p>"
    extra = f"<p>First {limit} of {len(rows) - 1} rows.</p>" if len(rows) - 1 > limit else ""
    return table(rows[0], rows[1 : limit + 1]) + extra


def benchmark_section(run: Path) -> Section:
    folder = RunDir(run).benchmark
    if not folder.is_dir():
        return absent(
            "benchmark",
            "Segmentation benchmark",
            "No benchmark/ in this run (run `fedsynth benchmark`).",
        )
    parts = []
    if (folder / "results.md").is_file():
        parts.append(to_html((folder / "results.md").read_text()))
    if (folder / "results.csv").is_file():
        parts.append(
            "<details><summary>results.csv</summary>"
            + csv_table(folder / "results.csv")
            + "</details>"
        )
    parts += [img(p, p.relative_to(folder).as_posix()) for p in sorted(folder.rglob("*.png"))]
    if not parts:
        return absent("benchmark", "Segmentation benchmark", "benchmark/ holds no results yet.")
    return Section("benchmark", "Segmentation benchmark", "".join(parts))


def _list(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{esc(t)}</li>" for t in items) + "</ul>"


def _tpr_cell(t: dict[str, Any]) -> str:
    return f"{t['tpr']:.3f}" if t.get("measurable") else "not measurable"


def audit_section(run: Path) -> Section:
    folder = RunDir(run).audit
    report = read_json(folder / "audit.json")
    if report is None:
        return absent("audit", "Privacy audit", "No audit/ in this run (run `fedsynth audit`).")
    mem, mo = report["membership"], report["memorisation"]
    rows = []
    for name, a in [("all sites", mem["overall"]), *mem["per_site"].items()]:
        ci = a.get("auc_ci95")
        rows.append([name, a["members"], a["nonmembers"], f"{a['auc']:.3f}",
                     f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "n/a",
                     *[_tpr_cell(t) for t in a["tpr_at_fpr"]]])  # fmt: skip
    levels = [f"TPR @ FPR {t['fpr']:g}" for t in mem["overall"]["tpr_at_fpr"]]
    flagged = mo.get("flagged_fraction")
    flagged_txt = "n/a" if flagged is None else f"{100 * flagged:.1f}%"
    pct = mo["reference_percentile"]
    memorisation = (
        f"{mo['synthetic_source']}: {flagged_txt} flagged (d_train / d_heldout below "
        f"{mo['threshold_ratio']:.3f}, the {pct:g}th percentile over real held-out slices; "
        f"about {pct:g}% expected without memorisation); exact copies of a training slice: "
        f"{mo['exact_copies']}."
    )
    notes = [f"TPR @ FPR {t['fpr']:g}: {t['note']}" for t in mem["overall"]["tpr_at_fpr"]]
    body = (
        "<h3>Threat model</h3>" + _list(report["threat_model"])
        + "<h3>Membership inference (reconstruction error, per patient)</h3>"
        + table(["", "members", "non-members", "AUC", "95% CI", *levels], rows)
        + _list(notes)
        + f"<h3>Memorisation</h3><p>{esc(memorisation)}</p>"
        + "<h3>Limits</h3>" + _list(report["limits"])
    )  # fmt: skip
    body += "".join(img(folder / f, f) for f in ("roc.png", "memorisation.png", "closest_pairs.png")
                    if (folder / f).is_file())  # fmt: skip
    return Section("audit", "Privacy audit", body)


BUILDERS = (config_section, sites_section, privacy_section, training_section,
            samples_section, benchmark_section, audit_section)  # fmt: skip


def run_sections(run: Path) -> list[Section]:
    """Every section of one run, in SECTION_IDS order."""
    return [build(Path(run)) for build in BUILDERS]
