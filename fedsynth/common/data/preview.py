"""A preview image of a BraTS-layout cohort: one axial slice per subject, every contrast.

Works on any cohort fedsynth can read (phantom, real, synthetic). The slice shown is the
one with the largest tumour area (the brain's middle slice for healthy subjects); the last
column overlays the label map on FLAIR.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from fedsynth.common.data.brats import MODALITIES, discover_cases
from fedsynth.common.data.validate import load_case
from fedsynth.common.io.atomic import save_figure

_TITLES = {"t1": "T1", "t1c": "T1c", "t2": "T2", "flair": "FLAIR"}
# RGBA per internal label: necrotic red, oedema green, enhancing yellow (the usual BraTS look).
_LABEL_COLOURS = {1: (1.0, 0.1, 0.1, 0.8), 2: (0.1, 0.9, 0.1, 0.6), 3: (1.0, 0.9, 0.0, 0.8)}
_LABEL_NAMES = {1: "necrotic / non-enh.", 2: "oedema", 3: "enhancing"}


def _pick_slice(seg: np.ndarray | None, brain: np.ndarray) -> int:
    if seg is not None and seg.any():
        return int(np.argmax((seg > 0).sum(axis=(0, 1))))
    zs = np.nonzero(brain.any(axis=(0, 1)))[0]
    return int(zs[len(zs) * 3 // 5]) if zs.size else brain.shape[2] // 2


def _window(image: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] between the 1st and 99.5th percentile of the brain (image > 0)."""
    inside = image[image > 0]
    if inside.size == 0:
        return np.zeros_like(image)
    lo, hi = np.percentile(inside, [1.0, 99.5])
    return np.clip((image - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def _scanner_sites(cohort_dir: Path) -> dict[str, str]:
    manifest = cohort_dir / "manifest.csv"
    if not manifest.is_file():
        return {}
    with open(manifest, newline="", encoding="utf-8") as f:
        return {r["subject"]: r.get("scanner_site") or "" for r in csv.DictReader(f)}


def preview_cohort(cohort_dir: str | Path, out_png: str | Path, n_subjects: int = 4) -> Path:
    """Render ``n_subjects`` (spread over the cohort) as rows of T1/T1c/T2/FLAIR/labels.

    Writes ``out_png`` atomically and returns it. Raises DataError for unreadable files.
    """
    cohort_dir = Path(cohort_dir)
    cases = discover_cases(cohort_dir)
    picks = np.unique(np.linspace(0, len(cases) - 1, min(n_subjects, len(cases))).astype(int))
    sites = _scanner_sites(cohort_dir)
    ncols = len(MODALITIES) + 1
    fig = Figure(figsize=(1.6 * ncols, 1.9 * len(picks)))
    axes = fig.subplots(len(picks), ncols, squeeze=False)
    for row, idx in zip(axes, picks, strict=True):
        case = load_case(cases[idx], labels_optional=True)
        z = _pick_slice(case.seg, case.images["flair"] > 0)
        for ax, modality in zip(row, MODALITIES, strict=False):
            ax.imshow(_window(case.images[modality][:, :, z]).T, cmap="gray", origin="lower")
            ax.set_title(_TITLES[modality], fontsize=7)
        row[-1].imshow(_window(case.images["flair"][:, :, z]).T, cmap="gray", origin="lower")
        if case.seg is not None:
            overlay = np.zeros((*case.seg.shape[:2], 4))
            for label, colour in _LABEL_COLOURS.items():
                overlay[case.seg[:, :, z] == label] = colour
            row[-1].imshow(overlay.transpose(1, 0, 2), origin="lower")
        row[-1].set_title("labels", fontsize=7)
        site = sites.get(case.case_id, "")
        row[0].set_ylabel(f"{case.case_id}\n{site} z={z}", fontsize=6)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    handles = [Patch(color=_LABEL_COLOURS[k], label=_LABEL_NAMES[k]) for k in _LABEL_COLOURS]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    out_png = Path(out_png)
    save_figure(fig, out_png, dpi=80)
    return out_png
