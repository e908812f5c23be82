"""BraTS-layout cohorts: discovering cases, the two file namings, and one label convention.

A cohort is a folder of subject folders. Two namings are recognised:

- BraTS 2017-2021: ``<id>_t1``, ``_t1ce``, ``_t2``, ``_flair``, ``_seg``; enhancing tumour = 4.
- BraTS 2023:      ``<id>-t1n``, ``-t1c``, ``-t2w``, ``-t2f``, ``-seg``; enhancing tumour = 3.

Both ``.nii`` and ``.nii.gz``. Internally (and in every file fedsynth writes) labels follow
the BraTS 2023 convention: 0 background, 1 necrotic / non-enhancing core, 2 oedema,
3 enhancing tumour.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MODALITIES: tuple[str, ...] = ("t1", "t1c", "t2", "flair")  # generator output channel order
SEG = "seg"

# Internal label convention.
BACKGROUND, NECROTIC, OEDEMA, ENHANCING = 0, 1, 2, 3
TUMOUR_LABELS: tuple[int, ...] = (NECROTIC, OEDEMA, ENHANCING)


@dataclass(frozen=True)
class Naming:
    name: str
    separator: str
    suffixes: dict[str, str]  # internal modality key -> file suffix
    enhancing_label: int  # value of enhancing tumour in this naming's label files

    def filename(self, case_id: str, key: str, ext: str = ".nii.gz") -> str:
        return f"{case_id}{self.separator}{self.suffixes[key]}{ext}"


BRATS2021 = Naming(
    "brats2021", "_", {"t1": "t1", "t1c": "t1ce", "t2": "t2", "flair": "flair", SEG: "seg"}, 4
)
BRATS2023 = Naming(
    "brats2023", "-", {"t1": "t1n", "t1c": "t1c", "t2": "t2w", "flair": "t2f", SEG: "seg"}, 3
)
NAMINGS: tuple[Naming, ...] = (BRATS2021, BRATS2023)
_NIFTI = re.compile(r"^(?P<stem>.+)\.nii(\.gz)?$")


@dataclass
class CaseFiles:
    """The files of one subject. Missing modalities are absent from ``images``."""

    case_id: str
    folder: Path
    naming: Naming
    images: dict[str, Path] = field(default_factory=dict)  # modality key -> path
    seg: Path | None = None
    tissue: Path | None = None  # optional tissue map (``<id>_tissue`` / ``-tissue``)
    # Files that name an already-found key again (``x_t1.nii`` next to ``x_t1.nii.gz``):
    # which one is meant is ambiguous, so validation reports them instead of picking one.
    duplicates: list[Path] = field(default_factory=list)

    @property
    def missing_modalities(self) -> list[str]:
        return [m for m in MODALITIES if m not in self.images]


def _match(folder: Path, naming: Naming) -> CaseFiles:
    case = CaseFiles(case_id=folder.name, folder=folder, naming=naming)
    by_suffix = {v: k for k, v in naming.suffixes.items()}
    for f in sorted(folder.iterdir()):
        m = _NIFTI.match(f.name)
        if not m or not f.is_file():
            continue
        stem = m.group("stem")
        prefix = folder.name + naming.separator
        if not stem.startswith(prefix):
            continue
        suffix = stem[len(prefix) :]
        if suffix == "tissue":
            _assign(case, "tissue", f)
        elif suffix in by_suffix:
            _assign(case, by_suffix[suffix], f)
    return case


def _assign(case: CaseFiles, key: str, path: Path) -> None:
    """Record ``path`` as the file of ``key``; a second file for the same key is a duplicate.

    Folder entries arrive sorted, so ``.nii`` comes before ``.nii.gz`` and is the one kept.
    """
    current = case.tissue if key == "tissue" else case.seg if key == SEG else case.images.get(key)
    if current is not None:
        case.duplicates.append(path)
    elif key == "tissue":
        case.tissue = path
    elif key == SEG:
        case.seg = path
    else:
        case.images[key] = path


def find_case(folder: str | Path) -> CaseFiles:
    """Recognise the naming of one subject folder; the naming matching most files wins."""
    folder = Path(folder)
    candidates = [_match(folder, n) for n in NAMINGS]
    return max(candidates, key=lambda c: len(c.images) + (c.seg is not None))


def discover_cases(cohort_dir: str | Path) -> list[CaseFiles]:
    """All subject folders of a cohort, sorted by id. Folders starting with '.' are ignored."""
    from fedsynth.common.errors import DataError

    root = Path(cohort_dir)
    if not root.is_dir():
        raise DataError(root, "cohort folder does not exist or is not a directory")
    folders = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    if not folders:
        raise DataError(
            root,
            "no subject folders found (expected BraTS layout: <cohort>/<id>/<id>_t1.nii.gz ...)",
        )
    return [find_case(f) for f in folders]


def normalise_labels(seg: np.ndarray, naming: Naming) -> np.ndarray:
    """Map a label volume of ``naming`` to the internal convention, as uint8.

    Assumes the values were already checked (see ``validate``); float label files
    (BraTS 2023 ships float32) are rounded first.
    """
    out = np.rint(seg).astype(np.uint8)
    if naming.enhancing_label != ENHANCING:
        out[out == naming.enhancing_label] = ENHANCING
    return out


def labels_for_naming(seg: np.ndarray, naming: Naming) -> np.ndarray:
    """Inverse of ``normalise_labels``: internal labels 0..3 -> the values ``naming`` stores.

    Writers of 2021-named files use this so enhancing tumour is stored as 4 there. Returns
    uint8 of the same shape.
    """
    out = np.asarray(seg).astype(np.uint8, copy=True)
    if naming.enhancing_label != ENHANCING:
        out[out == ENHANCING] = naming.enhancing_label
    return out


def allowed_label_values(naming: Naming) -> set[int]:
    """Label values a label file of ``naming`` may contain."""
    return {BACKGROUND, NECROTIC, OEDEMA, naming.enhancing_label}


def naming_title(naming: Naming) -> str:
    """How people call the naming, for messages: 'BraTS 2017-2021' or 'BraTS 2023'."""
    return "BraTS 2017-2021" if naming.enhancing_label == 4 else "BraTS 2023"


def expected_path(case: CaseFiles, key: str) -> Path:
    """Where the file of ``key`` (a modality, ``seg`` or ``tissue``) would be, as .nii.gz."""
    suffix = "tissue" if key == "tissue" else case.naming.suffixes[key]
    return case.folder / f"{case.case_id}{case.naming.separator}{suffix}.nii.gz"
