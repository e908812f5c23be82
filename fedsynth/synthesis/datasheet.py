"""The datasheet of a synthetic cohort (``datasheet.json``) and its contact sheet (PNG).

The datasheet says what a synthetic cohort is made of and what it may reveal: which
generator (file hash, training run, rounds or steps, sites), under which privacy guarantee
(epsilon and delta per site and the worst case, or in words that there was none), from which label maps (source and every edit, per case) and with which
seed and fedsynth version, on which date.

The privacy section describes the checkpoint, not the folder it lies in: the checkpoint's
metadata carries a summary of its privacy record and the record's digest
(``fedsynth.common.privacy.binding``). The run's ``privacy.json`` gives the per-site detail
only when its digest matches; a checkpoint whose summary contradicts the ``privacy.json``
beside it (e.g. a non-DP generator copied into a DP run's folder) is refused; a checkpoint
without a summary is described as of unknown privacy (treat as none).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fedsynth import __version__
from fedsynth.common.config import Config
from fedsynth.common.data.brats import MODALITIES
from fedsynth.common.data.preprocess import display_view
from fedsynth.common.errors import CheckpointError
from fedsynth.common.gan.init import public_pretraining
from fedsynth.common.io.atomic import save_figure
from fedsynth.common.privacy.binding import PRIVACY_KEY, contradictions, record_digest
from fedsynth.common.privacy.report import REPRODUCIBLE_NOISE
from fedsynth.common.rundir import PRIVACY_FILE, RunDir

DATASHEET_VERSION = 1
NO_DP_WORDS = "no differential privacy: epsilon is infinite; the generator may memorise patients"
# synthesis.label_source=cohort: the label maps are real patients', outside DP (issue 11).
COHORT_LABELS_WORDS = (
    "the label maps are REAL patients' label maps from {cohort} (edited), released with their "
    "subject ids OUTSIDE differential privacy: the epsilon above covers the generator only"
)
UNKNOWN_PRIVACY = (
    "unknown: the checkpoint carries no privacy record (made by an older fedsynth or "
    "elsewhere); treat as no differential privacy"
)


def privacy_section(gen: Any) -> dict[str, Any]:
    """What the checkpoint ``gen`` (a LoadedGenerator) is bound to, in the format below.

    Returns {"dp_enabled", "delta", "unit", "sites": {site: {"epsilon", "delta"}},
    "worst_epsilon", "statement", "source"}; epsilon None means infinite (no DP); "source"
    is the record file name (digest matched), "checkpoint" (its own summary) or None (unknown).
    CheckpointError if the run's privacy.json contradicts the checkpoint's summary.
    """
    summary = gen.extra.get(PRIVACY_KEY)
    if not isinstance(summary, dict):
        return {
            "dp_enabled": None,
            "sites": {},
            "worst_epsilon": None,
            "statement": UNKNOWN_PRIVACY,
            "source": None,
        }
    report = RunDir(gen.run_dir).read_privacy() if gen.run_dir is not None else None
    if report is not None and record_digest(report) == summary.get("record_sha256"):
        return {**_from_report(report), "source": PRIVACY_FILE}
    problems = contradictions(summary, report) if report is not None else []
    if problems:
        raise CheckpointError(
            gen.path,
            f"the {PRIVACY_FILE} beside it describes another generator ({'; '.join(problems)}): "
            "was it copied from another run? Synthesise from the run folder that trained it",
        )
    return {**_from_summary(summary), "source": "checkpoint"}


def _from_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The section from a checkpoint's own summary (privacy.json absent or of a later step)."""
    report = {**summary, "sites": dict.fromkeys(summary.get("sites", []), {"epsilon": None})}
    section = _from_report(report)
    section["sites"] = {
        name: {"epsilon": None, "delta": section["delta"]} for name in report["sites"]
    }
    section["statement"] += " (per-site values: see the run that trained it)"
    return section


def _from_report(report: dict[str, Any]) -> dict[str, Any]:
    """The section from a privacy record (privacy.json's format)."""
    dp = bool(report.get("dp_enabled"))
    delta = report.get("delta")
    sites = {
        name: {"epsilon": entry.get("epsilon") if dp else None, "delta": delta if dp else None}
        for name, entry in sorted(report.get("sites", {}).items())
    }
    worst = report.get("worst_epsilon") if dp else None
    if dp:
        statement = (
            f"patient-level differential privacy: worst epsilon = {worst:.3g} at delta = {delta:g} "
            f"over {len(sites)} site(s)"
            if worst is not None
            else "differential privacy enabled but no finite epsilon was recorded"
        )
    else:
        statement = NO_DP_WORDS
    if dp and report.get("reproducible_noise"):
        statement = f"{statement}. {REPRODUCIBLE_NOISE}"
    return {
        "dp_enabled": dp,
        "unit": report.get("unit", "patient"),
        "accountant": report.get("accountant"),
        "delta": delta if dp else None,
        "sites": sites,
        "worst_epsilon": worst,
        "statement": statement,
        "training_statement": report.get("statement"),
    }


def training_section(gen: Any) -> dict[str, Any]:
    """Checkpoint hash, run directory, rounds (federated) or steps, sites."""
    run_dir = gen.run_dir
    run = RunDir(run_dir) if run_dir is not None else None
    state = run.read_server_state() if run is not None else None
    privacy = run.read_privacy() if run is not None else None
    rounds = gen.extra.get("round", (state or {}).get("round"))
    mode = "unknown" if run_dir is None else "federated" if state is not None else "central"
    sites = sorted((privacy or {}).get("sites", {})) or sorted((state or {}).get("sites", {}))
    return {
        "checkpoint": str(gen.path.resolve()),
        "checkpoint_sha256": gen.sha256,
        "run_dir": str(run_dir) if run_dir is not None else None,
        "run_name": gen.run_config.name if gen.run_config is not None else None,
        "mode": mode,
        "rounds": rounds,
        "steps": gen.step,
        "sites": sites,
        "generator": asdict(gen.model),
        "image_size": gen.image_size,
        "checkpoint_epsilon": gen.extra.get("epsilon"),
        # The public data the generator started from (fedsynth pretrain), or None.
        "pretrained_on": public_pretraining(
            gen.run_config.model.init if gen.run_config is not None else None, gen.extra
        ),
    }


def _edit_counts(provenance: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in provenance:
        for e in p["edits"]:
            counts[e["edit"]] = counts.get(e["edit"], 0) + 1
    return dict(sorted(counts.items()))


def build_datasheet(
    cfg: Config,
    gen: Any,
    bank: Any,
    provenance: list[dict[str, Any]],
    *,
    n_slices: int,
    device: str,
) -> dict[str, Any]:
    """The datasheet as a JSON-ready dict (see docs/synthesis.md for every field)."""
    syn = asdict(cfg.synthesis)
    volumes = [p["tumour_volume_ml"] for p in provenance]
    return {
        "datasheet_version": DATASHEET_VERSION,
        "fedsynth_version": __version__,
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cases": len(provenance),
        "slices_generated": n_slices,
        "device": device,
        "seed": cfg.synthesis.seed,
        "layout": {
            "naming": "BraTS 2017-2021 (<id>/<id>_t1, _t1ce, _t2, _flair, _seg, _tissue)",
            "labels_on_disk": {
                "0": "background",
                "1": "necrotic / non-enhancing core",
                "2": "oedema",
                "4": "enhancing",
            },
            "tissue": {"0": "background", "1": "CSF", "2": "GM", "3": "WM"},
            "intensity": "int16, generator output [-1, 1] -> [0, 1000]; 0 outside the brain",
            "modalities": list(MODALITIES),
        },
        "generator": training_section(gen),
        "privacy": privacy_section(gen),
        "label_source": {
            **bank.description,
            **(
                {"privacy": COHORT_LABELS_WORDS.format(cohort=bank.description.get("cohort_dir"))}
                if bank.description.get("source") == "cohort"
                else {}
            ),
            "edits": {k: v for k, v in syn.items() if k.startswith(("p_", "scale_", "max_"))},
            "edit_counts": _edit_counts(provenance),
            "healthy_cases": sum(v == 0 for v in volumes),
            "tumour_volume_ml": _summary(volumes),
        },
        "synthesis_config": syn,
        "case_provenance": provenance,
    }


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values, float)
    return {
        k: round(float(f(a)), 3)
        for k, f in (("min", np.min), ("median", np.median), ("max", np.max))
    }


# Condition map colours: bg, CSF, GM, WM, necrotic, oedema, enhancing (RGB, 0-255).
LABEL_COLOURS = np.array(
    [[0, 0, 0], [43, 76, 126], [122, 122, 122], [217, 217, 217], [214, 39, 40], [44, 160, 44],
     [255, 221, 0]], np.uint8,
)  # fmt: skip
_GAP = 2  # pixels between tiles


def contact_mosaic(samples: list[Any]) -> np.ndarray:
    """The contact sheet's pixels: uint8 RGB (rows x (S + gap), 5 x (S + gap), 3), one row per
    sample (condition map, then T1, T1c, T2, FLAIR in grey, [-1, 1] -> [0, 255]), each tile
    in ``display_view``. Gaps are white."""
    size = samples[0].tissue.shape[0] if samples else 1
    step = size + _GAP
    out = np.full((max(len(samples), 1) * step, 5 * step, 3), 255, np.uint8)
    for r, s in enumerate(samples):
        cond = np.where(s.labels > 0, s.labels.astype(np.intp) + 3, s.tissue.astype(np.intp))
        tiles = [LABEL_COLOURS[display_view(np.clip(cond, 0, 6))]]
        for c in range(4):
            grey = np.rint((np.clip(display_view(s.images[c]), -1, 1) + 1) * 127.5)
            tiles.append(np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2))
        for c, tile in enumerate(tiles):
            out[r * step : r * step + size, c * step : c * step + size] = tile
    return out


def write_contact_sheet(samples: list[Any], path: Path) -> None:
    """PNG: one row per sample case (largest-tumour slice): condition map, then T1, T1c, T2,
    FLAIR, with the case ids and column titles.

    Drawn as ONE image (``contact_mosaic``) in one axes: 30 matplotlib axes and
    ``tight_layout`` cost ~0.4-0.6 s per cohort, more than writing 8 cases at 64 px.
    """
    rows = max(len(samples), 1)
    fig = Figure(figsize=(10, 0.4 + 1.9 * rows))
    top = 1 - 0.4 / (0.4 + 1.9 * rows)  # room for the column titles
    ax = fig.add_axes((0.1, 0.0, 0.9, top))
    ax.imshow(contact_mosaic(samples), interpolation="nearest", aspect="equal")
    ax.set_axis_off()
    for c, title in enumerate(["label map", *MODALITIES]):
        fig.text(0.1 + 0.9 * (c + 0.5) / 5, top + 0.1 * (1 - top), title, ha="center", fontsize=9)
    for r, s in enumerate(samples):
        y = top * (1 - (r + 0.5) / rows)
        fig.text(0.095, y, s.case_id, ha="right", va="center", fontsize=8)
    save_figure(fig, path, dpi=80, pil_kwargs={"compress_level": 1})
