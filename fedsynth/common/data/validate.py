"""Checking real cohorts before anything trains on them: one clear line per problem.

Every file of every case is read completely (see ``fedsynth.common.io.nifti``), so a bad
file fails here, with its name, and not halfway through a run. A case is valid when:

- every modality (t1, t1c, t2, flair) and, unless labels are optional, the label map exist,
  each exactly once (not both ``.nii`` and ``.nii.gz``);
- each file is a readable, complete, 3-D NIfTI volume with a usable affine;
- all files share one grid: equal shapes and affines equal within ``AFFINE_TOLERANCE_MM``
  (compared after RAS reorientation, so differently stored but co-registered files agree);
- images are finite and not constant (an all-zero image has no brain in it);
- label values are finite integers of the naming's convention ({0, 1, 2, 4} for BraTS
  2017-2021, {0, 1, 2, 3} for BraTS 2023); an optional tissue map holds {0, 1, 2, 3}.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedsynth.common.data import brats
from fedsynth.common.data.brats import MODALITIES, SEG, CaseFiles
from fedsynth.common.errors import DataError
from fedsynth.common.io.nifti import LoadedCase, load_volume

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
    naming: str  # "brats2021" or "brats2023"
    problems: list[Problem] = field(default_factory=list)

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
    """Non-finite voxels and constant (e.g. all-zero) images."""
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
    return problems


def _label_problems(
    path: Path, data: np.ndarray, allowed: Iterable[int], convention: str
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
        problems.append(
            Problem(
                path,
                f"label values {{{shown}}} are outside the {convention} convention "
                f"{allowed_text}{_label_hint(outside, allowed)}",
            )
        )
    return problems


def _label_hint(outside: np.ndarray, allowed: list[int]) -> str:
    """Suggest the likely mix-up between the two BraTS numberings of enhancing tumour."""
    if 4 in allowed and 3 in outside:
        return "; 3 is enhancing tumour in BraTS 2023 numbering: relabel 3 -> 4 or use the 2023 file naming"
    if 3 in allowed and 4 in outside:
        return "; 4 is enhancing tumour in BraTS 2017-2021 numbering: relabel 4 -> 3 or use the 2021 file naming"
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


def _case_files(case: CaseFiles) -> list[tuple[str, Path]]:
    files = [(m, case.images[m]) for m in MODALITIES if m in case.images]
    files += [(SEG, case.seg)] if case.seg is not None else []
    files += [("tissue", case.tissue)] if case.tissue is not None else []
    return files


def _content_problems(
    key: str, path: Path, data: np.ndarray, naming: brats.Naming
) -> list[Problem]:
    if key == SEG:
        return _label_problems(
            path, data, brats.allowed_label_values(naming), f"{brats.naming_title(naming)} label"
        )
    if key == "tissue":
        return _label_problems(path, data, TISSUE_VALUES, "tissue map (0 bg, 1 CSF, 2 GM, 3 WM)")
    return _image_problems(path, data)


def inspect_case(
    case: CaseFiles, labels_optional: bool = False
) -> tuple[LoadedCase | None, list[Problem]]:
    """Read and check every file of ``case``; return (the loaded case or None, problems).

    The loaded case is returned only when there are no problems; its images are float32,
    its label map is uint8 in the internal convention 0..3 (see ``LoadedCase``).
    """
    problems = _file_problems(case, labels_optional)
    volumes: dict[str, np.ndarray] = {}
    ref: _Grid | None = None
    for key, path in _case_files(case):
        try:
            data, affine = load_volume(path)
        except DataError as e:
            problems.append(Problem(e.path, e.problem))
            continue
        if key in MODALITIES:
            data = data.astype(np.float32, copy=False)  # overflow to inf is caught just below
        problems += _content_problems(key, path, data, case.naming)
        grid = _Grid(path, data.shape, affine)
        if ref is None:
            ref = grid
        else:
            problems += _geometry_problems(ref, grid)
        volumes[key] = data
    if problems or ref is None:
        return None, problems
    return _loaded(case, volumes, ref.affine), problems


def _loaded(case: CaseFiles, volumes: dict[str, np.ndarray], affine: np.ndarray) -> LoadedCase:
    seg = volumes.get(SEG)
    tissue = volumes.get("tissue")
    return LoadedCase(
        case_id=case.case_id,
        images={m: volumes[m] for m in MODALITIES},
        seg=None if seg is None else brats.normalise_labels(seg, case.naming),
        tissue=None if tissue is None else np.rint(tissue).astype(np.uint8),
        affine=affine,
    )


def validate_case(case: CaseFiles, labels_optional: bool = False) -> list[Problem]:
    """Every problem of one case (empty if the case is valid). Reads every file fully."""
    return inspect_case(case, labels_optional)[1]


def iter_case_reports(
    cases: Iterable[CaseFiles], labels_optional: bool = False
) -> Iterator[tuple[CaseFiles, CaseReport]]:
    """Validate cases one at a time (memory holds one case), yielding each with its report."""
    for case in cases:
        problems = validate_case(case, labels_optional)
        yield case, CaseReport(case.case_id, case.folder, case.naming.name, problems)


def validate_cohort(cohort_dir: str | Path, labels_optional: bool = False) -> CohortReport:
    """Validate every subject folder of a BraTS-layout cohort.

    Raises DataError if ``cohort_dir`` is not a folder or holds no subject folders; problems
    inside cases are reported, not raised.
    """
    cohort_dir = Path(cohort_dir)
    reports, valid = [], []
    for case, report in iter_case_reports(brats.discover_cases(cohort_dir), labels_optional):
        reports.append(report)
        if report.ok:
            valid.append(case)
    return CohortReport(cohort_dir, reports, valid)


def check_cohort(cohort_dir: str | Path, strict: bool, labels_optional: bool) -> list[CaseFiles]:
    """The cases training may use: all of them, checked, or only the valid ones.

    strict: any invalid case raises DataError listing every problem of the cohort.
    not strict: each invalid case is skipped with one logged warning; DataError if none is
    valid. Nothing is written either way.
    """
    report = validate_cohort(cohort_dir, labels_optional)
    bad = [c for c in report.cases if not c.ok]
    if strict and bad:
        lines = "\n  ".join(str(p) for p in report.problems)
        raise DataError(
            report.cohort_dir,
            f"{len(bad)} of {len(report.cases)} cases failed validation:\n  {lines}\n"
            "Fix these files, or set data.strict=false to skip invalid cases "
            "(run 'fedsynth validate-data DIR' for a full report).",
        )
    for c in bad:
        log.warning(
            "skipping invalid case %s: %s", c.case_id, "; ".join(str(p) for p in c.problems)
        )
    if not report.valid_cases:
        raise DataError(
            report.cohort_dir,
            f"none of the {len(report.cases)} cases is valid; run 'fedsynth validate-data {report.cohort_dir}' for the problems",
        )
    return report.valid_cases
