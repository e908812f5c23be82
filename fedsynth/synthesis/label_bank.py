"""The label bank: where the label maps of synthetic cases come from (``synthesis.label_source``).

- ``atlas``: MNI152 anatomy (the tissue maps nilearn ships), deformed per bank case, with a
  procedurally grown tumour (mass effect included) or none. Built with the phantom
  generator's own anatomy and tumour functions; touches no patient data.
- ``cohort``: the label maps of a BraTS-layout folder that the synthesising party may use,
  with the case's ``<id>_tissue`` map or, without one, a tissue map computed from its images.

A bank is a ``CasePool``: cases are built or loaded on demand and a few are kept in memory,
so a cohort bank of full-size BraTS cases does not need them all in RAM at once. Atlas cases
are deterministic for their settings, so a bank given a cache folder (``build_label_bank``:
``<data.cache_dir>/atlas``, like the phantom cohorts) keeps each case it builds there and
later runs load it (~2 ms) instead of rebuilding it (~0.1 s at 2 mm, plus ~1 s per process
to load the template).
``synthetic_label_cases`` draws the label cases of a synthetic cohort from a bank: a source
case, then the random edits of the ``synthesis`` config section; each carries its provenance.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedsynth.common.config import Config, SynthesisConfig, expand_path
from fedsynth.common.data import phantom_anatomy as pa
from fedsynth.common.data import phantom_tumour as pt
from fedsynth.common.data import preprocess, tissue
from fedsynth.common.data.brats import discover_cases
from fedsynth.common.data.phantom import PHANTOM_VERSION
from fedsynth.common.data.validate import load_case
from fedsynth.common.errors import DataError
from fedsynth.common.io.atomic import atomic_write_bytes
from fedsynth.common.io.nifti import load_volume
from fedsynth.synthesis.case import ATLAS, COHORT, LabelCase
from fedsynth.synthesis.edits import apply_random_edits

ATLAS_MEAN_RADIUS_MM = 13.0  # mid-range of the phantom sites' typical tumour core radius
ATLAS_HIGH_GRADE_PROB = 0.75  # share of enhancing tumours in atlas cases
_KEPT_IN_MEMORY = 8  # loaded cases kept (least recently used dropped first)
# Bump when ``atlas_case`` changes what it builds: cached atlas cases are then rebuilt.
ATLAS_VERSION = 1
ATLAS_CACHE = "atlas"  # folder of cached atlas cases inside data.cache_dir
# Libraries whose numerics shape an atlas case (nilearn: the template's data).
_NUMERIC_LIBRARIES = ("numpy", "scipy", "torch", "nilearn")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BankEntry:
    case_id: str
    has_tumour: bool


class LabelBank:
    """Label cases of one source, loaded on demand (implements ``case.CasePool``).

    source: "atlas" | "cohort". description: JSON-ready facts for the datasheet (source kind,
    folder or atlas settings, number of cases).
    """

    def __init__(
        self,
        source: str,
        entries: list[BankEntry],
        loader: Callable[[int], LabelCase],
        description: dict[str, Any],
        keep: int = _KEPT_IN_MEMORY,
    ):
        if not entries:
            raise ValueError("a label bank needs at least one case")
        self.source = source
        self.ids = [e.case_id for e in entries]
        self.tumour = [e.has_tumour for e in entries]
        self.description = description
        self._loader = loader
        self._keep = keep
        self._cache: OrderedDict[int, LabelCase] = OrderedDict()

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> LabelCase:
        """Case ``index`` (0 <= index < len). Edits never modify it, so it is safe to share."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        case = self._loader(index)
        self._cache[index] = case
        if len(self._cache) > self._keep:
            self._cache.popitem(last=False)
        return case


# --------------------------------------------------------------------------- atlas


def tissue_classes(anatomy: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """``np.where(brain, anatomy.argmax(0) + 1, 0)`` as uint8, by comparisons: the same
    classes (ties go to the first map, as argmax's) in a quarter of the time.

    anatomy: float32 (3, X, Y, Z) CSF / GM / WM fractions; brain: bool (X, Y, Z).
    """
    csf, gm, wm = anatomy
    classes = np.where(gm > csf, np.uint8(2), np.uint8(1))
    classes[wm > np.maximum(csf, gm)] = 3
    classes[~brain] = 0
    return classes


def atlas_case(index: int, voxel_size: float, seed: int, with_tumour: bool) -> LabelCase:
    """One atlas label case: deformed MNI152 anatomy, a procedural tumour if ``with_tumour``.

    Deterministic for (index, voxel_size, seed). Grid: the phantom template grid at
    ``voxel_size`` mm (RAS, MNI world coordinates).
    """
    template = pa.load_template(voxel_size)
    rng = np.random.default_rng([seed, 11, index])
    coords = pa.subject_coordinates(rng, template)
    spec = None
    if with_tumour:
        spec = pt.sample_tumour(
            rng,
            template.centres_mm,
            mean_radius_mm=ATLAS_MEAN_RADIUS_MM,
            high_grade_prob=ATLAS_HIGH_GRADE_PROB,
        )
    anatomy = pa.sample_anatomy_fast(
        template, coords if spec is None else pt.apply_mass_effect(spec, coords)
    )
    # Same rule as the phantom cohort: brain where the tissue fractions sum past one half.
    brain = anatomy.sum(0) > 0.5
    tissue = tissue_classes(anatomy, brain)
    labels = (
        np.zeros(brain.shape, np.uint8) if spec is None else pt.tumour_labels(spec, coords, anatomy)
    )
    labels[~brain] = 0
    return LabelCase(
        case_id=f"atlas_{index:04d}",
        tissue=tissue,
        labels=labels,
        brain=brain,
        affine=template.grid_affine.copy(),
        source=ATLAS,
        source_subject=ATLAS,
        anatomy_subject=ATLAS,
    )


@functools.lru_cache(maxsize=1)
def _library_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in _NUMERIC_LIBRARIES}


def atlas_case_key(index: int, voxel_size: float, seed: int, with_tumour: bool) -> str:
    """Name of the cached atlas case: a hash of everything ``atlas_case`` depends on (its
    arguments, its constants, the atlas and phantom code versions, the numeric libraries)."""
    payload = {
        "atlas_version": ATLAS_VERSION, "phantom_version": PHANTOM_VERSION,
        "index": index, "voxel_size": float(voxel_size), "seed": seed,
        "with_tumour": bool(with_tumour), "mean_radius_mm": ATLAS_MEAN_RADIUS_MM,
        "high_grade_prob": ATLAS_HIGH_GRADE_PROB, "libraries": _library_versions(),
    }  # fmt: skip
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def _read_cached(path: Path, index: int) -> LabelCase | None:
    """The atlas case stored at ``path``, or None when absent or unfit (then rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            tissue, labels, affine = z["tissue"], z["labels"], z["affine"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        log.warning("rebuilding the cached atlas case %s: unreadable (%s)", path, e)
        return None
    fit = (
        tissue.dtype == labels.dtype == np.uint8 and tissue.ndim == 3
        and tissue.shape == labels.shape and affine.shape == (4, 4)
        and np.all(np.isfinite(affine)) and tissue.max(initial=0) <= 3
        and labels.max(initial=0) <= 3 and not np.any(labels[tissue == 0])
    )  # fmt: skip
    if not fit:
        log.warning("rebuilding the cached atlas case %s: not an atlas case", path)
        return None
    return LabelCase(
        case_id=f"atlas_{index:04d}", tissue=tissue, labels=labels,
        brain=tissue > 0,  # atlas_case: tissue = argmax + 1 exactly on the brain
        affine=affine, source=ATLAS, source_subject=ATLAS, anatomy_subject=ATLAS,
    )  # fmt: skip


def cached_atlas_case(
    cache_dir: Path | None, index: int, voxel_size: float, seed: int, with_tumour: bool
) -> LabelCase:
    """``atlas_case(index, voxel_size, seed, with_tumour)``, read from ``cache_dir`` when an
    earlier run stored it there (written there otherwise); ``cache_dir`` None: no cache."""
    if cache_dir is None:
        return atlas_case(index, voxel_size, seed, with_tumour)
    path = cache_dir / ATLAS_CACHE / f"{atlas_case_key(index, voxel_size, seed, with_tumour)}.npz"
    case = _read_cached(path, index)
    if case is None:
        case = atlas_case(index, voxel_size, seed, with_tumour)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, tissue=case.tissue, labels=case.labels, affine=case.affine)
        try:
            atomic_write_bytes(path, buffer.getvalue())  # concurrent runs: the same bytes
        except OSError as e:  # a read-only or full cache only costs the next run time
            log.warning("atlas case not cached in %s: %s", path, e)
    return case


def atlas_bank(
    cases: int,
    voxel_size: float,
    seed: int,
    healthy_fraction: float,
    cache_dir: Path | None = None,
) -> LabelBank:
    """``cases`` atlas label cases, ``round(healthy_fraction * cases)`` of them without tumour
    (at least one with a tumour). Cases are built on first use (or read from ``cache_dir``,
    see ``cached_atlas_case``) and all kept in memory."""
    rng = np.random.default_rng([seed, 10])
    n_healthy = min(int(round(healthy_fraction * cases)), cases - 1)
    healthy = set(rng.choice(cases, size=n_healthy, replace=False).tolist())
    entries = [BankEntry(f"atlas_{i:04d}", i not in healthy) for i in range(cases)]
    description = {
        "source": ATLAS,
        "cases": cases,
        "healthy_cases": n_healthy,
        "voxel_size_mm": voxel_size,
        "seed": seed,
        "anatomy": "MNI152 2009 tissue maps shipped by nilearn, randomly deformed per case",
        "tumours": "procedural (fedsynth.common.data.phantom_tumour), with mass effect",
    }

    def load(i: int) -> LabelCase:
        return cached_atlas_case(cache_dir, i, voxel_size, seed, entries[i].has_tumour)

    return LabelBank(ATLAS, entries, load, description, keep=cases)


# --------------------------------------------------------------------------- cohort


def cohort_case(case_files: Any, tissue_seed: int = 0) -> LabelCase:
    """Label case of one BraTS-layout subject (``brats.CaseFiles``).

    Tumour labels from its label file (none: a healthy case), brain mask from its images
    (``preprocess.brain_mask``), tissue from its ``<id>_tissue`` file or else computed
    (``tissue.compute_tissue`` on the window-normalised images). Raises DataError naming the
    file for unreadable or invalid data.
    """
    loaded = load_case(case_files, labels_optional=True)
    brain = preprocess.brain_mask(loaded.images, loaded.seg)
    if not brain.any():
        raise DataError(case_files.folder, "all images are zero: no brain for a label case")
    labels = np.zeros(brain.shape, np.uint8) if loaded.seg is None else loaded.seg.astype(np.uint8)
    if loaded.tissue is not None:
        tissue_map = tissue.use_tissue_file(loaded.tissue, brain, loaded.case_id)
    else:
        norm = {
            m: preprocess.normalise_intensity(v, brain, 0.5, 99.5, where=f"{loaded.case_id} ({m})")
            for m, v in loaded.images.items()
        }
        tissue_map = tissue.compute_tissue(norm, brain, labels > 0, tissue_seed, loaded.case_id)
    return LabelCase(
        case_id=loaded.case_id,
        tissue=tissue_map,
        labels=labels,
        brain=brain,
        affine=loaded.affine,
        source=COHORT,
        source_subject=loaded.case_id,
        anatomy_subject=loaded.case_id,
        stored_affine=loaded.stored_affine,
    )


def _has_tumour(case_files: Any) -> bool:
    if case_files.seg is None:
        return False
    seg, _ = load_volume(case_files.seg)
    return bool(np.any(seg > 0))


def cohort_bank(
    cohort_dir: str | Path, subjects: list[str] | None = None, tissue_seed: int = 0
) -> LabelBank:
    """The subjects of a BraTS-layout folder as a label bank (all of them, or ``subjects``).

    Reads every label file once to know which cases have a tumour; the rest is loaded on
    demand. Raises DataError for a missing folder, unknown subjects or no usable case.
    """
    root = expand_path(cohort_dir)
    found = {c.case_id: c for c in discover_cases(root)}
    if subjects is not None:
        unknown = sorted(set(subjects) - set(found))
        if unknown:
            raise DataError(root, f"subjects not in the cohort: {unknown[:5]}")
        found = {s: found[s] for s in sorted(subjects)}
    files = list(found.values())
    entries = [BankEntry(c.case_id, _has_tumour(c)) for c in files]
    if not any(e.has_tumour for e in entries):
        raise DataError(root, "no subject has a tumour label map: nothing to synthesise from")
    description = {
        "source": COHORT,
        "cohort_dir": str(root),
        "cases": len(entries),
        "healthy_cases": sum(not e.has_tumour for e in entries),
        "subjects": [e.case_id for e in entries],
    }
    return LabelBank(
        COHORT, entries, functools.partial(_load_cohort, files, tissue_seed), description
    )


def _load_cohort(files: list[Any], tissue_seed: int, index: int) -> LabelCase:
    return cohort_case(files[index], tissue_seed)


# --------------------------------------------------------------------------- sampling


def build_label_bank(cfg: Config) -> LabelBank:
    """The bank named by ``cfg.synthesis.label_source``."""
    syn = cfg.synthesis
    if syn.label_source == ATLAS:
        return atlas_bank(
            syn.atlas_anatomies, syn.atlas_voxel_size, syn.seed, syn.atlas_healthy_fraction,
            cache_dir=expand_path(cfg.data.cache_dir),
        )  # fmt: skip
    assert syn.cohort_dir is not None  # guaranteed by config validation
    return cohort_bank(syn.cohort_dir, tissue_seed=cfg.preprocess.tissue_seed)


def source_order(bank: LabelBank, n: int, seed: int) -> np.ndarray:
    """Index of the bank case each of ``n`` synthetic cases starts from: the tumour cases in a
    random order, cycled, so every tumour case is used about equally (healthy bank cases serve
    as transplant recipients and, through ``p_remove``, healthy cases come from edits)."""
    rng = np.random.default_rng([seed, 12])
    tumour_idx = np.flatnonzero(bank.tumour)
    passes = [rng.permutation(tumour_idx) for _ in range(-(-n // len(tumour_idx)))]
    return np.concatenate(passes)[:n]


def synthetic_label_cases(
    bank: LabelBank, n: int, cfg: SynthesisConfig
) -> Iterator[tuple[int, LabelCase]]:
    """Yield ``(i, label case)`` for i in 0..n-1: source case ``source_order[i]`` with random
    edits drawn from a generator seeded by (cfg.seed, i), so case i does not depend on how many
    cases come before it. Each case's ``provenance()`` says where it came from."""
    order = source_order(bank, n, cfg.seed)
    for i, src in enumerate(order):
        rng = np.random.default_rng([cfg.seed, 13, i])
        yield i, apply_random_edits(bank.load(int(src)), bank, cfg, rng)
