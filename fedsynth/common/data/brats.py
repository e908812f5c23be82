"""Cohort layouts: discovering cases, the file namings, and the label conventions.

Two layouts are recognised:

- **BraTS**: a folder of subject folders, each holding one file per contrast. Namings:
  BraTS 2017-2021 ``<id>_t1``, ``_t1ce``, ``_t2``, ``_flair``, ``_seg`` (enhancing tumour = 4)
  and BraTS 2023 ``<id>-t1n``, ``-t1c``, ``-t2w``, ``-t2f``, ``-seg`` (enhancing tumour = 3),
  ``.nii`` or ``.nii.gz``.
- **Medical Segmentation Decathlon** (Task01_BrainTumour): ``dataset.json``,
  ``imagesTr/<id>.nii.gz`` 4-D (FLAIR, T1w, T1gd, T2w, in the order ``dataset.json`` gives)
  and ``labelsTr/<id>.nii.gz`` with 1 oedema, 2 non-enhancing tumour, 3 enhancing tumour.

Internally (and in every file fedsynth writes) labels follow the BraTS 2023 convention:
0 background, 1 necrotic / non-enhancing core, 2 oedema, 3 enhancing tumour. Each naming
implies a label convention; BraTS 2012-2016 label maps ({0,1,2,3,4}, 3 = non-enhancing
tumour) cannot be told from 2017-2021 ones by their names, so that convention is chosen
explicitly (``data.labels=brats2015``), never guessed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedsynth.common.errors import DataError

MODALITIES: tuple[str, ...] = ("t1", "t1c", "t2", "flair")  # generator output channel order
SEG = "seg"

# Internal label convention.
BACKGROUND, NECROTIC, OEDEMA, ENHANCING = 0, 1, 2, 3
TUMOUR_LABELS: tuple[int, ...] = (NECROTIC, OEDEMA, ENHANCING)


@dataclass(frozen=True)
class LabelConvention:
    """How one family of label files numbers the tumour regions.

    to_internal: stored value -> internal label (0 bg, 1 necrotic/NET, 2 oedema, 3 enhancing).
    """

    name: str
    title: str
    to_internal: dict[int, int]

    @property
    def values(self) -> set[int]:
        return set(self.to_internal)

    def describe(self) -> str:
        names = {0: "background", 1: "necrotic/non-enhancing", 2: "oedema", 3: "enhancing"}
        return ", ".join(f"{v} -> {names[i]}" for v, i in sorted(self.to_internal.items()))


LABELS_2021 = LabelConvention("brats2021", "BraTS 2017-2021", {0: 0, 1: 1, 2: 2, 4: 3})
LABELS_2023 = LabelConvention("brats2023", "BraTS 2023", {0: 0, 1: 1, 2: 2, 3: 3})
# BraTS 2012-2016: 1 necrosis, 2 oedema, 3 non-enhancing tumour, 4 enhancing. Non-enhancing
# tumour belongs to the tumour core, as in 2017+ where it was merged into label 1.
LABELS_2015 = LabelConvention(
    "brats2015", "BraTS 2012-2016", {0: 0, 1: 1, 2: 2, 3: NECROTIC, 4: ENHANCING}
)
LABELS_MSD = LabelConvention(
    "msd", "Medical Segmentation Decathlon", {0: 0, 1: OEDEMA, 2: NECROTIC, 3: ENHANCING}
)
LABEL_CONVENTIONS: dict[str, LabelConvention] = {
    c.name: c for c in (LABELS_2021, LABELS_2023, LABELS_2015, LABELS_MSD)
}
AUTO = "auto"  # data.labels: the convention of each case's naming


@dataclass(frozen=True)
class Naming:
    name: str
    separator: str
    suffixes: dict[str, str]  # internal modality key -> file suffix
    labels: LabelConvention  # the convention of this naming's label files

    def filename(self, case_id: str, key: str, ext: str = ".nii.gz") -> str:
        return f"{case_id}{self.separator}{self.suffixes[key]}{ext}"


BRATS2021 = Naming(
    "brats2021",
    "_",
    {"t1": "t1", "t1c": "t1ce", "t2": "t2", "flair": "flair", SEG: "seg"},
    LABELS_2021,
)
BRATS2023 = Naming(
    "brats2023",
    "-",
    {"t1": "t1n", "t1c": "t1c", "t2": "t2w", "flair": "t2f", SEG: "seg"},
    LABELS_2023,
)
NAMINGS: tuple[Naming, ...] = (BRATS2021, BRATS2023)
MSD = Naming("msd", "", {}, LABELS_MSD)  # one 4-D image file per case, see ``msd_cases``
_NIFTI = re.compile(r"^(?P<stem>.+)\.nii(\.gz)?$")

# Medical Segmentation Decathlon, Task01_BrainTumour.
MSD_DATASET = "dataset.json"
MSD_IMAGES, MSD_LABELS = "imagesTr", "labelsTr"
_MSD_MODALITY = {"flair": "flair", "t1w": "t1", "t1": "t1", "t1gd": "t1c", "t2w": "t2", "t2": "t2"}
_MSD_LABEL_WORDS = {1: "edema", 2: "non-enhancing", 3: "enhancing"}


@dataclass
class CaseFiles:
    """The files of one subject. Missing modalities are absent from ``images``.

    channels: for 4-D image files (MSD), modality key -> index along the 4th axis; all
    modalities then share one path. None for one file per modality.
    labels: how to read the label map (the naming's convention unless chosen explicitly).
    """

    case_id: str
    folder: Path
    naming: Naming
    images: dict[str, Path] = field(default_factory=dict)  # modality key -> path
    seg: Path | None = None
    tissue: Path | None = None  # optional tissue map (``<id>_tissue`` / ``-tissue``)
    # Files that name an already-found key again (``x_t1.nii`` next to ``x_t1.nii.gz``):
    # which one is meant is ambiguous, so validation reports them instead of picking one.
    duplicates: list[Path] = field(default_factory=list)
    channels: dict[str, int] | None = None
    labels: LabelConvention | None = None

    def __post_init__(self) -> None:
        if self.labels is None:
            self.labels = self.naming.labels

    @property
    def missing_modalities(self) -> list[str]:
        return [m for m in MODALITIES if m not in self.images]

    @property
    def recognised(self) -> bool:
        """Whether any file of this folder matched the naming."""
        return bool(self.images or self.seg or self.tissue or self.duplicates)


def label_convention(name: str, naming: Naming) -> LabelConvention:
    """The convention ``data.labels=name`` means for a case of ``naming``."""
    if name == AUTO:
        return naming.labels
    if name not in LABEL_CONVENTIONS:
        known = ", ".join([AUTO, *LABEL_CONVENTIONS])
        raise DataError(Path("data.labels"), f"unknown label convention {name!r}; one of {known}")
    return LABEL_CONVENTIONS[name]


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


def find_case(folder: str | Path, labels: str = AUTO) -> CaseFiles:
    """Recognise the naming of one subject folder; the naming matching most files wins."""
    folder = Path(folder)
    candidates = [_match(folder, n) for n in NAMINGS]
    case = max(candidates, key=lambda c: len(c.images) + (c.seg is not None))
    case.labels = label_convention(labels, case.naming)
    return case


def is_msd(root: Path) -> bool:
    """Whether ``root`` is a Medical Segmentation Decathlon task folder."""
    return (root / MSD_DATASET).is_file() and (root / MSD_IMAGES).is_dir()


def _msd_channels(root: Path) -> dict[str, int]:
    """modality key -> channel of the 4-D images, from dataset.json (checked, not assumed)."""
    path = root / MSD_DATASET
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        modality = {int(k): str(v) for k, v in meta["modality"].items()}
        labels = {int(k): str(v).lower() for k, v in meta["labels"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(path, f"cannot read 'modality' and 'labels' from it: {e}") from e
    channels = {}
    for index, name in modality.items():
        key = _MSD_MODALITY.get(name.lower())
        if key is not None:
            channels[key] = index
    missing = [m for m in MODALITIES if m not in channels]
    if missing:
        raise DataError(
            path,
            f"'modality' {modality} lacks {missing}; fedsynth needs FLAIR, T1w, T1gd and T2w "
            "(Task01_BrainTumour)",
        )
    for value, word in _MSD_LABEL_WORDS.items():
        if word not in labels.get(value, ""):
            raise DataError(
                path,
                f"label {value} is {labels.get(value)!r}; fedsynth reads the Task01_BrainTumour "
                f"labels {LABELS_MSD.describe()}",
            )
    return channels


def msd_cases(root: Path, labels: str = AUTO) -> list[CaseFiles]:
    """The training cases of a Decathlon task folder (``imagesTr`` with ``labelsTr``)."""
    channels = _msd_channels(root)
    cases = []
    for f in sorted((root / MSD_IMAGES).iterdir()):
        m = _NIFTI.match(f.name)
        if not m or not f.is_file() or f.name.startswith("."):  # the tarball's ._ files
            continue
        case_id = m.group("stem")
        seg = next(
            (
                p
                for p in (root / MSD_LABELS / f"{case_id}{e}" for e in (".nii.gz", ".nii"))
                if p.is_file()
            ),
            None,
        )
        case = CaseFiles(case_id, root, MSD, {k: f for k in channels}, seg, channels=dict(channels))
        case.labels = label_convention(labels, MSD)
        cases.append(case)
    if not cases:
        raise DataError(root / MSD_IMAGES, "no .nii/.nii.gz images in this Decathlon folder")
    return cases


def _nifti_files(folder: Path, limit: int = 6) -> list[str]:
    found = []
    for f in sorted(folder.rglob("*")):
        if _NIFTI.match(f.name) and f.is_file():
            found.append(str(f.relative_to(folder)))
            if len(found) >= limit:
                break
    return found


def _known_layouts() -> str:
    return (
        "BraTS 2017-2021 <cohort>/<id>/<id>_t1.nii.gz, _t1ce, _t2, _flair, _seg; "
        "BraTS 2023 <cohort>/<id>/<id>-t1n.nii.gz, -t1c, -t2w, -t2f, -seg; "
        "Decathlon <task>/dataset.json, imagesTr/<id>.nii.gz, labelsTr/<id>.nii.gz"
    )


def is_case_folder(folder: Path) -> bool:
    """Whether ``folder`` itself holds a subject's files (someone pointed at a case)."""
    return folder.is_dir() and find_case(folder).recognised


def discover_cases(cohort_dir: str | Path, labels: str = AUTO) -> list[CaseFiles]:
    """All cases of a cohort folder, sorted by id. Folders starting with '.' are ignored.

    Raises DataError when the folder does not exist, is a single case folder (pointing at
    its parent is what was meant), or holds no recognisable case (naming the NIfTI files it
    saw and the layouts it knows).
    """
    root = Path(cohort_dir)
    if not root.is_dir():
        raise DataError(root, "cohort folder does not exist or is not a directory")
    if is_msd(root):
        return msd_cases(root, labels)
    if is_case_folder(root):
        raise DataError(
            root,
            f"this is one case's folder, not a cohort: point at its parent {root.parent} "
            "(a cohort is a folder of case folders)",
        )
    folders = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    cases = [find_case(f, labels) for f in folders]
    if not any(c.recognised for c in cases):
        seen = _nifti_files(root)
        saw = (
            f"it holds NIfTI files that match no known naming ({', '.join(seen)}"
            f"{', ...' if len(seen) >= 6 else ''})"
            if seen
            else f"{len(folders)} subfolders and no NIfTI file"
        )
        what = "no recognisable case" if folders else "no subject folders found"
        raise DataError(root, f"{what}: {saw}. Known layouts: {_known_layouts()}")
    return cases


def find_subject(cohort_dir: str | Path, subject: str, labels: str = AUTO) -> CaseFiles:
    """The case ``subject`` of a cohort (a subject folder, or an id of a Decathlon folder)."""
    root = Path(cohort_dir)
    if is_msd(root):
        for case in msd_cases(root, labels):
            if case.case_id == subject:
                return case
        raise DataError(root / MSD_IMAGES, f"subject '{subject}' is in the split but has no image")
    folder = root / subject
    if not folder.is_dir():
        raise DataError(
            folder, f"subject '{subject}' is in the split but has no folder in the cohort"
        )
    return find_case(folder, labels)


def normalise_labels(seg: np.ndarray, labels: LabelConvention | Naming) -> np.ndarray:
    """Map a label volume stored in ``labels``'s convention to the internal one, as uint8.

    Assumes the values were already checked (see ``validate``); float label files
    (BraTS 2023 ships float32) are rounded first.
    """
    convention = labels.labels if isinstance(labels, Naming) else labels
    lookup = np.zeros(256, dtype=np.uint8)
    for stored, internal in convention.to_internal.items():
        lookup[stored] = internal
    return lookup[np.rint(seg).astype(np.uint8)]


def labels_for_naming(seg: np.ndarray, naming: Naming) -> np.ndarray:
    """Inverse of ``normalise_labels``: internal labels 0..3 -> the values ``naming`` stores.

    Writers of 2021-named files use this so enhancing tumour is stored as 4 there. Returns
    uint8 of the same shape. Only for namings whose convention is one-to-one.
    """
    inverse = {internal: stored for stored, internal in naming.labels.to_internal.items()}
    if len(inverse) != len(naming.labels.to_internal):
        raise ValueError(f"{naming.name} labels cannot be written back one-to-one")
    lookup = np.arange(256, dtype=np.uint8)
    for internal, stored in inverse.items():
        lookup[internal] = stored
    return lookup[np.asarray(seg).astype(np.uint8)]


def allowed_label_values(labels: LabelConvention | Naming) -> set[int]:
    """Label values a label file of this convention (or naming) may contain."""
    return (labels.labels if isinstance(labels, Naming) else labels).values


def naming_title(naming: Naming) -> str:
    """How people call the naming's label convention, for messages."""
    return naming.labels.title


def expected_path(case: CaseFiles, key: str) -> Path:
    """Where the file of ``key`` (a modality, ``seg`` or ``tissue``) would be, as .nii.gz."""
    if case.naming is MSD:
        sub = MSD_LABELS if key == SEG else MSD_IMAGES
        return case.folder / sub / f"{case.case_id}.nii.gz"
    suffix = "tissue" if key == "tissue" else case.naming.suffixes[key]
    return case.folder / f"{case.case_id}{case.naming.separator}{suffix}.nii.gz"
