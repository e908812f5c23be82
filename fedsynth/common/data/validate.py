"""Checking real cohorts before anything trains on them: one clear line per problem.

Every file of every case is read completely (see ``fedsynth.common.io.nifti``), so a bad
file fails here, with its name, and not halfway through a run. ``load_case`` hands a valid
case on as a ``LoadedCase``. A case is valid when:

- every modality (t1, t1c, t2, flair) and, unless labels are optional, the label map exist,
  each exactly once (not both ``.nii`` and ``.nii.gz``);
- each file is a readable, complete, 3-D NIfTI volume with a usable affine;
- all files share one grid: equal shapes and affines equal within ``AFFINE_TOLERANCE_MM``
  (compared after RAS reorientation, so differently stored but co-registered files agree);
- images are finite, not constant (an all-zero image has no brain in it) and have a
  constant background (``background.find_background``: skull-stripped, 0 in BraTS, another
  constant in normalised copies);
- label values are finite integers of the case's label convention ({0, 1, 2, 4} for BraTS
  2017-2021 names, {0, 1, 2, 3} for BraTS 2023 names and the Decathlon, {0, 1, 2, 3, 4} with
  ``data.labels=brats2015``); an optional tissue map holds {0, 1, 2, 3}.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedsynth.common.data import brats
from fedsynth.common.data.background import describe_missing, find_background
from fedsynth.common.data.brats import MODALITIES, SEG, CaseFiles, LabelConvention
from fedsynth.common.data.loaded import LoadedCase
from fedsynth.common.errors import DataError
from fedsynth.common.io.nifti import Volume, read_volume

log = logging.getLogger(__name__)

AFFINE_TOLERANCE_MM = 1e-3  # float32 headers and qform quaternions round to ~1e-6
TISSUE_VALUES = (0, 1, 2, 3)  # bg, CSF, GM, WM
_TITLES = {
    "t1": "T1",
    "t1c": "T1c",
    "t2": "T2",
    "flair": "FLAIR",
    SEG: "label map",
    "tissue": "tissue map",
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file (or with the file that should be there)."""

    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class CaseReport:
    case_id: str
    folder: Path
    naming: str  # "brats2021", "brats2023" or "msd"
    problems: list[Problem] = field(default_factory=list)
    has_tumour: bool | None = None  # any tumour label (None: invalid case or no label map)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class CohortReport:
    """The outcome of validating every case of a cohort folder."""

    cohort_dir: Path
    cases: list[CaseReport]
    valid_cases: list[CaseFiles]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.cases)

    @property
    def problems(self) -> list[Problem]:
        return [p for c in self.cases for p in c.problems]

    def summary(self) -> str:
        bad = sum(not c.ok for c in self.cases)
        return (
            f"{len(self.cases) - bad} of {len(self.cases)} cases valid, {bad} invalid "
            f"({len(self.problems)} problems)"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form: cohort, ok, summary counts and every case with its problems."""
        return {
            "cohort": str(self.cohort_dir),
            "ok": self.ok,
            "cases_total": len(self.cases),
            "cases_valid": len(self.valid_cases),
            "problems_total": len(self.problems),
            "cases": [
                {
                    "case_id": c.case_id,
                    "folder": str(c.folder),
                    "naming": c.naming,
                    "ok": c.ok,
                    "problems": [{"path": str(p.path), "message": p.message} for p in c.problems],
                }
                for c in self.cases
            ],
        }


def _file_problems(case: CaseFiles, labels_optional: bool) -> list[Problem]:
    """Files that are missing or present twice."""
    problems = []
    for key in case.missing_modalities:
        problems.append(
            Problem(
                brats.expected_path(case, key),
                f"missing {_TITLES[key]} image (no .nii or .nii.gz file of this name)",
            )
        )
    if case.seg is None and not labels_optional:
        problems.append(
            Problem(
                brats.expected_path(case, SEG),
                "missing label map (required for training; pass --labels-optional / "
                "data.labels_optional=true only for synthesis inputs)",
            )
        )
    for dup in case.duplicates:
        problems.append(
            Problem(dup, "duplicate file: another .nii/.nii.gz of the same name exists; keep one")
        )
    return problems


def _image_problems(path: Path, data: np.ndarray) -> list[Problem]:
    """Non-finite voxels, constant (e.g. all-zero) images and images without a background."""
    problems = []
    finite = np.isfinite(data)
    bad = int(data.size - np.count_nonzero(finite))
    if bad:
        problems.append(Problem(path, f"{bad} of {data.size} voxels are NaN or infinite"))
    values = data[finite] if bad else data
    if values.size and values.min() == values.max():
        problems.append(
            Problem(path, f"image is constant (every voxel is {values.min():g}): no brain in it")
        )
    elif not bad and find_background(data) is None:
        problems.append(Problem(path, describe_missing(data)))
    return problems


def _label_problems(
    path: Path, data: np.ndarray, allowed: Iterable[int], convention: str, hint: bool = True
) -> list[Problem]:
    """Non-finite, non-integer and out-of-convention label values."""
    allowed = sorted(allowed)
    allowed_text = "{" + ", ".join(map(str, allowed)) + "}"
    finite = np.isfinite(data)
    bad = int(data.size - np.count_nonzero(finite))
    if bad:
        return [
            Problem(
                path, f"{bad} label voxels are NaN or infinite; expected integers {allowed_text}"
            )
        ]
    problems = []
    rounded = np.rint(data) if np.issubdtype(data.dtype, np.floating) else data
    fractional = data != rounded
    if np.any(fractional):
        example = data[fractional].flat[0]
        problems.append(
            Problem(
                path,
                f"label map has non-integer values (e.g. {example:g}); expected integers "
                f"{allowed_text} ({convention} convention)",
            )
        )
    outside = np.unique(rounded[~np.isin(rounded, allowed)])
    if outside.size:
        shown = ", ".join(f"{v:g}" for v in outside[:8]) + (", ..." if outside.size > 8 else "")
        present = {int(v) for v in np.unique(rounded) if 0 <= v < 256}
        problems.append(
            Problem(
                path,
                f"label values {{{shown}}} are outside the {convention} convention "
                f"{allowed_text}{_label_hint(present) if hint else ''}",
            )
        )
    return problems


def _label_hint(present: set[int]) -> str:
    """What the values found suggest: which BraTS convention the file really follows.

    3 means enhancing tumour in BraTS 2023 but non-enhancing tumour in BraTS 2012-2016, so
    a file holding both 3 and 4 is 2012-2016 (merge 3 into 1), never "relabel 3 -> 4".
    """
    if {3, 4} <= present:
        return (
            "; a map holding both 3 and 4 follows BraTS 2012-2016 (3 = non-enhancing tumour, "
            "4 = enhancing): set data.labels=brats2015 (or --labels brats2015), which merges "
            "3 into the tumour core 1"
        )
    if 4 in present:
        return (
            "; 4 is enhancing tumour in BraTS 2012-2021: name the files in the 2017-2021 naming "
            "(<id>_t1.nii.gz ...), or set data.labels=brats2021"
        )
    if 3 in present:
        return (
            "; 3 without 4 looks like BraTS 2023 numbering (3 = enhancing): name the files in "
            "the 2023 naming (<id>-t1n.nii.gz ...), or set data.labels=brats2023"
        )
    return ""


@dataclass(frozen=True)
class _Grid:
    """Where one file's voxels sit: its (RAS-reoriented) shape and voxel-to-world affine."""

    path: Path
    shape: tuple[int, ...]
    affine: np.ndarray


def _geometry_problems(ref: _Grid, grid: _Grid) -> list[Problem]:
    """Shape and affine of ``grid`` against the case's first file ``ref``."""
    problems = []
    if grid.shape != ref.shape:
        problems.append(
            Problem(
                grid.path,
                f"shape {grid.shape} differs from {ref.path.name} {ref.shape} (after RAS "
                "reorientation); all files of a case must share one grid",
            )
        )
    worst = float(np.max(np.abs(grid.affine - ref.affine)))
    if worst > AFFINE_TOLERANCE_MM:
        problems.append(
            Problem(
                grid.path,
                f"voxel-to-world affine differs from {ref.path.name} by up to {worst:.4g} mm "
                f"(tolerance {AFFINE_TOLERANCE_MM:g}); the files must be co-registered",
            )
        )
    return problems


STACK = "stack"  # key of a 4-D file holding every modality (Decathlon layout)


def _case_files(case: CaseFiles) -> list[tuple[str, Path]]:
    if case.channels is not None:
        files = [(STACK, case.images[m]) for m in MODALITIES[:1] if m in case.images]
    else:
        files = [(m, case.images[m]) for m in MODALITIES if m in case.images]
    files += [(SEG, case.seg)] if case.seg is not None else []
    files += [("tissue", case.tissue)] if case.tissue is not None else []
    return files


def _content_problems(
    key: str, path: Path, data: np.ndarray, labels: LabelConvention
) -> list[Problem]:
    if key == SEG:
        return _label_problems(path, data, labels.values, f"{labels.title} label")
    if key == "tissue":
        return _label_problems(
            path, data, TISSUE_VALUES, "tissue map (0 bg, 1 CSF, 2 GM, 3 WM)", hint=False
        )
    return _image_problems(path, data)


def _split_stack(case: CaseFiles, path: Path, data: np.ndarray) -> tuple[dict, list[Problem]]:
    """A 4-D (X, Y, Z, C) file -> modality -> float32 (X, Y, Z), checked channel by channel."""
    channels = case.channels or {}
    need = max(channels.values()) + 1
    if data.shape[3] < need:
        return {}, [Problem(path, f"{data.shape[3]} channels; dataset.json names {need}")]
    volumes, problems = {}, []
    for m in MODALITIES:
        volume = np.ascontiguousarray(data[..., channels[m]], dtype=np.float32)
        for p in _image_problems(path, volume):
            problems.append(Problem(path, f"channel {channels[m]} ({_TITLES[m]}): {p.message}"))
        volumes[m] = volume
    return volumes, problems


def _read(key: str, path: Path) -> Volume:
    return read_volume(path, ndim=4 if key == STACK else 3)


def inspect_case(
    case: CaseFiles, labels_optional: bool = False
) -> tuple[LoadedCase | None, list[Problem]]:
    """Read and check every file of ``case``; return (the loaded case or None, problems).

    The loaded case is returned only when there are no problems; its images are float32,
    its label map is uint8 in the internal convention 0..3 (see ``LoadedCase``).
    """
    problems = _file_problems(case, labels_optional)
    volumes: dict[str, np.ndarray] = {}
    stored: dict[str, np.ndarray] = {}
    ref: _Grid | None = None
    for key, path in _case_files(case):
        try:
            volume = _read(key, path)
        except DataError as e:
            problems.append(Problem(e.path, e.problem))
            continue
        data = volume.data
        if key == STACK:
            split, found = _split_stack(case, path, data)
            problems += found
            volumes.update(split)
            data = data[..., 0]
        else:
            if key in MODALITIES:
                data = data.astype(np.float32, copy=False)  # overflow to inf is caught below
            problems += _content_problems(key, path, data, case.labels)
            volumes[key] = data
        stored[key] = volume.stored_affine
        grid = _Grid(path, data.shape[:3], volume.affine)
        if ref is None:
            ref = grid
        else:
            problems += _geometry_problems(ref, grid)
    if problems or ref is None:
        return None, problems
    return _loaded(
        case, volumes, ref.affine, stored.get(SEG, next(iter(stored.values())))
    ), problems


def _loaded(
    case: CaseFiles, volumes: dict[str, np.ndarray], affine: np.ndarray, stored: np.ndarray
) -> LoadedCase:
    seg = volumes.get(SEG)
    tissue = volumes.get("tissue")
    images = {m: volumes[m] for m in MODALITIES}
    return LoadedCase(
        case_id=case.case_id,
        images=images,
        seg=None if seg is None else brats.normalise_labels(seg, case.labels),
        tissue=None if tissue is None else np.rint(tissue).astype(np.uint8),
        affine=affine,
        stored_affine=stored,
        background={m: find_background(v) or 0.0 for m, v in images.items()},
    )


def load_case(case: CaseFiles, labels_optional: bool = False) -> LoadedCase:
    """Load and check every file of ``case``.

    Raises DataError naming the first bad file (and how many other problems there are) if the
    case does not pass validation; otherwise returns the case as a LoadedCase.
    """
    loaded, problems = inspect_case(case, labels_optional=labels_optional)
    if problems:
        more = (
            f" (and {len(problems) - 1} more problems in case {case.case_id})"
            if len(problems) > 1
            else ""
        )
        raise DataError(problems[0].path, problems[0].message + more)
    assert loaded is not None  # inspect_case returns a case whenever there are no problems
    return loaded


def validate_case(case: CaseFiles, labels_optional: bool = False) -> list[Problem]:
    """Every problem of one case (empty if the case is valid). Reads every file fully."""
    return inspect_case(case, labels_optional)[1]


def iter_case_reports(
    cases: Iterable[CaseFiles], labels_optional: bool = False
) -> Iterator[tuple[CaseFiles, CaseReport]]:
    """Validate cases one at a time (memory holds one case), yielding each with its report."""
    for case in cases:
        loaded, problems = inspect_case(case, labels_optional)
        report = CaseReport(case.case_id, case.folder, case.naming.name, problems)
        if loaded is not None and loaded.seg is not None:
            report.has_tumour = bool(np.any(loaded.seg > 0))
        yield case, report


def validate_cohort(
    cohort_dir: str | Path, labels_optional: bool = False, labels: str = brats.AUTO
) -> CohortReport:
    """Validate every case of a cohort folder (BraTS or Decathlon layout).

    Raises DataError if ``cohort_dir`` is not a folder or holds no subject folders; problems
    inside cases are reported, not raised.
    """
    cohort_dir = Path(cohort_dir)
    reports, valid = [], []
    for case, report in iter_case_reports(
        brats.discover_cases(cohort_dir, labels), labels_optional
    ):
        reports.append(report)
        if report.ok:
            valid.append(case)
    return CohortReport(cohort_dir, reports, valid)


def strict_error(report: CohortReport) -> DataError:
    """The error of a strict run: every problem of every invalid case, one per line."""
    bad = [c for c in report.cases if not c.ok]
    lines = "\n  ".join(str(p) for p in report.problems)
    return DataError(
        report.cohort_dir,
        f"{len(bad)} of {len(report.cases)} cases failed validation:\n  {lines}\n"
        "Fix these files, or set data.strict=false to skip invalid cases "
        f"(run 'fedsynth validate-data {report.cohort_dir}' for a full report).",
    )


def check_cohort(
    cohort_dir: str | Path, strict: bool, labels_optional: bool, labels: str = brats.AUTO
) -> CohortReport:
    """Validate a cohort for training: every case checked before anything is split.

    strict: any invalid case raises DataError listing every problem of every case.
    not strict: each invalid case is logged once as skipped (the caller records them with the
    split); DataError if none is valid. Nothing is written either way.
    """
    report = validate_cohort(cohort_dir, labels_optional, labels)
    if strict and not report.ok:
        raise strict_error(report)
    for c in report.cases:
        if not c.ok:
            log.warning(
                "skipping invalid case %s: %s", c.case_id, "; ".join(str(p) for p in c.problems)
            )
    if not report.valid_cases:
        raise DataError(
            report.cohort_dir,
            f"none of the {len(report.cases)} cases is valid; run "
            f"'fedsynth validate-data {report.cohort_dir}' for the problems",
        )
    return report
