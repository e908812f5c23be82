"""Per-site slice caches: preprocessed axial slices as memory-mapped arrays plus a manifest.

A cache lives in ``<data.cache_dir>/slices/<name>-<key>/`` where ``key`` hashes everything
that decides its content: the preprocessing settings, ``CACHE_VERSION`` (bump it whenever
preprocessing code changes its output), the cohort folder, the subject list and the
validation mode. Including the cohort and subjects in the key lets two configs with the same
site name (e.g. smoke and demo, both with a "site-0") keep separate caches instead of
rebuilding each other's. Inside, ``manifest.json`` records the source files (path, size,
mtime): if any of them changed, the cache is rebuilt in place, never silently reused.

Files: images.npy float32 (N, 4, S, S), labels.npy uint8 (N, S, S), tissue.npy uint8
(N, S, S), patient.npy int64 (N,), z.npy int64 (N,), has_tumour.npy bool (N,), manifest.json.
A build happens in a temporary folder that is renamed into place when complete, under a
file lock so two processes asking for the same cache build it once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import re
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedsynth.common.config import Config, PreprocessConfig, expand_path
from fedsynth.common.data import brats
from fedsynth.common.data.cohort import resolve_cohort
from fedsynth.common.data.preprocess import preprocess_case
from fedsynth.common.data.validate import inspect_case
from fedsynth.common.errors import DataError
from fedsynth.common.io.atomic import atomic_directory, atomic_write_json
from fedsynth.common.progress import progress_bar

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when preprocessing changes its output for the same settings
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_COPY_CHUNK = 16 << 20


@dataclass
class SliceCache:
    """The slices of one group of patients (a site, or the test split).

    images: float32 (N, 4, S, S) in [-1, 1], channels t1, t1c, t2, flair; -1 outside brain.
    labels: uint8 (N, S, S) tumour labels 0..3 (internal convention).
    tissue: uint8 (N, S, S) 0 bg, 1 CSF, 2 GM, 3 WM.
    patient: int64 (N,) index into ``patients``; z: int64 (N,) axial index in the RAS volume.
    patients: subject ids; has_tumour: bool (N,) slice shows any tumour label.
    ranges: int64 (P, 2) half-open slice range [start, stop) of each patient (slices of a
        patient are contiguous and in z order).
    images, labels and tissue are read-only memory maps; the rest is in memory.
    built: True when this call built the cache, False when it reused one.
    """

    name: str
    path: Path
    images: np.ndarray
    labels: np.ndarray
    tissue: np.ndarray
    patient: np.ndarray
    z: np.ndarray
    patients: list[str]
    has_tumour: np.ndarray
    ranges: np.ndarray
    built: bool = False
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])


def site_slices(cfg: Config, subjects: list[str], name: str) -> SliceCache:
    """The slice cache of ``subjects`` of the config's cohort, built if missing or stale.

    ``name`` labels the cache folder ("site-0", "test"). Cases are validated as they are
    read: with ``data.strict`` an invalid case is a DataError listing every problem of these
    subjects; otherwise it is skipped with a warning (and recorded in the manifest).
    """
    return build_slices(
        cohort_dir=resolve_cohort(cfg),
        subjects=subjects,
        name=name,
        preprocess=cfg.preprocess,
        cache_root=expand_path(cfg.data.cache_dir) / "slices",
        strict=cfg.data.strict,
        labels_optional=cfg.data.labels_optional,
        labels=cfg.data.labels,
    )


def build_slices(
    cohort_dir: Path,
    subjects: list[str],
    name: str,
    preprocess: PreprocessConfig,
    cache_root: Path,
    strict: bool = True,
    labels_optional: bool = False,
    labels: str = brats.AUTO,
) -> SliceCache:
    """``site_slices`` without the config: reuse the cache under ``cache_root`` or build it."""
    if not _NAME.match(name):
        raise ValueError(f"cache name {name!r} must match {_NAME.pattern}")
    if not subjects:
        raise DataError(cohort_dir, f"no subjects given for slice cache '{name}'")
    cohort_dir = Path(cohort_dir).resolve()
    settings = _settings(cohort_dir, subjects, preprocess, strict, labels_optional, labels)
    key = _hash(settings)
    path = Path(cache_root) / f"{name}-{key[:12]}"
    cases = [brats.find_subject(cohort_dir, s, labels) for s in subjects]
    with _lock(path):
        sources = _fingerprint(cases)
        cache = _reuse(path, name, key, sources)
        if cache is not None:
            return cache
        _build(path, cases, name, settings, key, sources, preprocess, strict, labels_optional)
        cache = _open(path, name)
    cache.built = True
    return cache


def _settings(cohort_dir, subjects, preprocess, strict, labels_optional, labels) -> dict[str, Any]:
    return {
        "labels": labels,
        "cache_version": CACHE_VERSION,
        "preprocess": asdict(preprocess),
        "cohort_dir": str(cohort_dir),
        "subjects": list(subjects),
        "strict": bool(strict),
        "labels_optional": bool(labels_optional),
    }


def _hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _case_paths(case: brats.CaseFiles) -> list[Path]:
    paths = [case.images[m] for m in brats.MODALITIES if m in case.images]
    paths += [p for p in (case.seg, case.tissue) if p is not None]
    return list(dict.fromkeys(paths + list(case.duplicates)))  # a 4-D file once


def _fingerprint(cases: list[brats.CaseFiles]) -> list[dict[str, Any]]:
    """path, size and mtime of every source file: a change in any of them makes a cache stale."""
    out = []
    for case in cases:
        for p in _case_paths(case):
            st = p.stat()
            out.append({"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _reuse(path: Path, name: str, key: str, sources: list[dict]) -> SliceCache | None:
    """The cache at ``path`` if it is complete and current; None (with the reason logged) if not."""
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("key") != key:
            reason = "preprocessing settings changed"
        elif manifest.get("sources") != sources:
            reason = "source files changed since it was built"
        else:
            return _open(path, name)
    except (OSError, ValueError, KeyError) as e:
        reason = f"unreadable ({e})"
    log.info("rebuilding slice cache %s: %s", path, reason)
    return None


def _open(path: Path, name: str) -> SliceCache:
    manifest = json.loads((path / "manifest.json").read_text())

    def load(stem: str, mmap: bool) -> np.ndarray:
        return np.load(path / f"{stem}.npy", mmap_mode="r" if mmap else None)

    cache = SliceCache(
        name=name,
        path=path,
        images=load("images", True),
        labels=load("labels", True),
        tissue=load("tissue", True),
        patient=load("patient", False),
        z=load("z", False),
        patients=list(manifest["patients"]),
        has_tumour=load("has_tumour", False),
        ranges=np.asarray(manifest["ranges"], dtype=np.int64).reshape(-1, 2),
        manifest=manifest,
    )
    n = len(cache)
    if not (
        n == manifest["n_slices"]
        and all(len(a) == n for a in (cache.labels, cache.tissue, cache.patient, cache.z))
        and len(cache.has_tumour) == n
        and len(cache.ranges) == len(cache.patients)
    ):
        raise ValueError(f"arrays in {path} disagree with its manifest")
    return cache


class _Appender:
    """Appends per-case arrays to raw files, then writes them out as .npy of the final length."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.meta: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
        self.n = 0
        self.files: dict[str, Any] = {}

    def add(self, **arrays: np.ndarray) -> None:
        for stem, a in arrays.items():
            a = np.ascontiguousarray(a)
            self.meta.setdefault(stem, (a.dtype, a.shape[1:]))
            if stem not in self.files:
                self.files[stem] = open(self.folder / f"{stem}.raw", "wb")  # noqa: SIM115
            self.files[stem].write(a.tobytes())
        self.n += len(next(iter(arrays.values())))

    def finish(self) -> None:
        for stem, f in self.files.items():
            f.close()
            dtype, tail = self.meta[stem]
            header = {
                "descr": np.lib.format.dtype_to_descr(dtype),
                "fortran_order": False,
                "shape": (self.n, *tail),
            }
            raw = self.folder / f"{stem}.raw"
            with open(self.folder / f"{stem}.npy", "wb") as out, open(raw, "rb") as src:
                np.lib.format.write_array_header_1_0(out, header)
                shutil.copyfileobj(src, out, _COPY_CHUNK)
            raw.unlink()


def _build(path, cases, name, settings, key, sources, preprocess, strict, labels_optional):
    problems: dict[str, list[str]] = {}
    patients: list[str] = []
    ranges: list[list[int]] = []

    def reject(case_id: str, found: list) -> None:
        problems[case_id] = [str(p) for p in found]
        if not strict:
            log.warning("skipping case %s: %s", case_id, "; ".join(problems[case_id]))

    with atomic_directory(path, overwrite=True) as tmp:
        out = _Appender(tmp)
        for case in progress_bar(cases, desc=f"preprocess {name}", unit="case"):
            loaded, found = inspect_case(case, labels_optional=labels_optional)
            if found:
                reject(case.case_id, found)
                continue
            if strict and problems:  # the build has failed: only validate the remaining cases
                continue
            try:
                pre = preprocess_case(loaded, preprocess)
            except DataError as e:
                reject(case.case_id, [e])
                continue
            patient = len(patients)
            patients.append(case.case_id)
            ranges.append([out.n, out.n + len(pre.z)])
            out.add(
                images=pre.images,
                labels=pre.labels,
                tissue=pre.tissue,
                patient=np.full(len(pre.z), patient, dtype=np.int64),
                z=pre.z,
                has_tumour=(pre.labels > 0).any(axis=(1, 2)),
            )
        _fail_if_unusable(
            Path(settings["cohort_dir"]), name, problems, patients, strict, len(cases)
        )
        out.finish()
        manifest = {
            "name": name,
            "key": key,
            "settings": settings,
            "sources": sources,
            "patients": patients,
            "ranges": ranges,
            "skipped": problems,
            "n_slices": out.n,
            "image_size": preprocess.image_size,
        }
        atomic_write_json(tmp / "manifest.json", manifest)


def _fail_if_unusable(cohort_dir, name, problems, patients, strict, n_cases) -> None:
    if strict and problems:
        lines = "\n  ".join(p for ps in problems.values() for p in ps)
        raise DataError(
            cohort_dir,
            f"cache '{name}': {len(problems)} of {n_cases} cases failed validation or "
            f"preprocessing:\n  {lines}\nFix these files, or set data.strict=false to skip "
            "invalid cases (run 'fedsynth validate-data DIR' for a full report).",
        )
    if not patients:
        raise DataError(cohort_dir, f"cache '{name}': none of the {n_cases} cases is usable")
