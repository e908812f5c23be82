"""Which cohort a config means, and its split into test patients and training sites.

``resolve_cohort(cfg)`` returns a BraTS-layout folder whose ``manifest.csv`` holds the split
made from ``cfg.split``; ``load_split(folder)`` reads it back.

- ``data.source: phantom``: the phantom cohort is generated once into
  ``<cache_dir>/phantoms/<settings hash>`` and reused. Its split goes into a *split view*,
  ``<cache_dir>/splits/<name>-<hash>/``: symlinks to the subject folders plus the
  manifest. Two runs with different split settings then never overwrite each other's
  manifest, and the cohort itself is written once.
- ``data.source: cohort``: the split is written into the cohort's own ``manifest.csv``
  (plus ``split.json``, which records the settings it was made from). If the folder is not
  writable, a split view in the cache is used instead, with a log message saying so.

Folders appear atomically (built under a temporary name, then renamed); a process that
loses the race to create the same folder uses the winner's, which is identical.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from fedsynth.common.config import Config, PhantomConfig, expand_path
from fedsynth.common.data.brats import discover_cases
from fedsynth.common.data.phantom import (
    MANIFEST,
    MANIFEST_COLUMNS,
    METADATA,
    generate_phantom_cohort,
    manifest_text,
    phantom_settings_hash,
)
from fedsynth.common.data.splits import TEST, Split, make_split, natural_key
from fedsynth.common.errors import DataError
from fedsynth.common.io.atomic import atomic_write_text
from fedsynth.common.sites import site_index

log = logging.getLogger(__name__)

SPLIT_RECORD = "split.json"
_SPLIT_VERSION = 1  # bump when make_split changes, so recorded splits are remade


def resolve_cohort(cfg: Config) -> Path:
    """The cohort folder for ``cfg`` with its split in manifest.csv (see module docstring)."""
    cache = expand_path(cfg.data.cache_dir)
    if cfg.data.source == "phantom":
        base = ensure_phantom_cohort(cfg.phantom, cache)
        return _split_view(base, cfg, cache)
    base = expand_path(cfg.data.cohort_dir)  # type: ignore[arg-type]
    if not _writable(base):
        if base.is_dir():
            log.info("%s is not writable: writing its split to the cache %s", base, cache)
        return _split_view(base, cfg, cache)
    _write_split_in_place(base, cfg)
    return base


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK)


def ensure_phantom_cohort(cfg: PhantomConfig, cache_dir: Path) -> Path:
    """``<cache_dir>/phantoms/<hash>``, generated on first use; safe against concurrent use."""
    final = Path(cache_dir) / "phantoms" / phantom_settings_hash(cfg)
    if (final / METADATA).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        log.info("generating the phantom cohort (%d subjects) into %s", cfg.subjects, final)
        generate_phantom_cohort(staging / "cohort", cfg)
        _publish(staging / "cohort", final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _publish(built: Path, final: Path) -> None:
    """Rename ``built`` onto ``final``; if another process got there first, keep theirs."""
    try:
        os.rename(built, final)
    except OSError:
        if not final.is_dir():
            raise
        log.info("%s was created by another process meanwhile; using it", final)


# --- subjects, sites, tumour status of a cohort -------------------------------------------


def _read_manifest(path: Path, subjects: set[str]) -> dict[str, dict[str, str]]:
    """Rows of a manifest.csv keyed by subject; DataError naming the file when it is wrong."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(path, f"cannot read the manifest: {e}") from e
    if "subject" not in columns:
        raise DataError(path, f"needs columns {','.join(MANIFEST_COLUMNS)}; found {columns}")
    by_subject: dict[str, dict[str, str]] = {}
    for n, row in enumerate(rows, start=2):
        subject = (row.get("subject") or "").strip()
        if not subject:
            raise DataError(path, f"line {n}: empty subject")
        if subject in by_subject:
            raise DataError(path, f"line {n}: subject {subject!r} is listed twice")
        by_subject[subject] = {k: (v or "").strip() for k, v in row.items() if k}
    unknown = sorted(set(by_subject) - subjects, key=natural_key)
    if unknown:
        raise DataError(
            path,
            f"names {len(unknown)} subject(s) with no folder in {path.parent}: "
            f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}",
        )
    return by_subject


def _read_site_csv(path: Path, subjects: list[str]) -> dict[str, str]:
    """subject -> site from a user CSV with columns subject,site."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(path, f"cannot read the site CSV (split.site_csv): {e}") from e
    if not {"subject", "site"} <= set(columns):
        raise DataError(path, f"needs columns subject,site; found {columns}")
    sites = {(r["subject"] or "").strip(): (r["site"] or "").strip() for r in rows}
    missing = [s for s in subjects if not sites.get(s)]
    if missing:
        raise DataError(
            path,
            f"no site for {len(missing)} subject(s) of the cohort: {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''}",
        )
    return {s: sites[s] for s in subjects}


def _tumour_status(base: Path, cases: list) -> dict[str, bool]:
    """subject -> has tumour; from phantom.json when present, else from the label files."""
    meta = base / METADATA
    if meta.is_file():
        subjects = json.loads(meta.read_text(encoding="utf-8"))["subjects"]
        return {s["subject"]: bool(s["has_tumour"]) for s in subjects}
    import nibabel as nib
    import numpy as np

    status = {}
    for case in cases:
        if case.seg is None:
            status[case.case_id] = False
            continue
        try:
            status[case.case_id] = bool(np.any(np.asanyarray(nib.load(case.seg).dataobj) > 0))
        except Exception as e:  # nibabel raises many types for broken files
            raise DataError(case.seg, f"cannot read the label map: {e}") from e
    return status


def _make_split(base: Path, cfg: Config) -> tuple[Split, dict[str, str]]:
    """The split of the cohort in ``base`` and each subject's scanner site ('' if unknown)."""
    cases = discover_cases(base)
    subjects = [c.case_id for c in cases]
    manifest = base / MANIFEST
    rows = _read_manifest(manifest, set(subjects)) if manifest.is_file() else {}
    scanner = {s: rows.get(s, {}).get("scanner_site", "") for s in subjects}
    site_of = scanner
    if cfg.split.site_csv:
        site_of = _read_site_csv(expand_path(cfg.split.site_csv), subjects)
    split = make_split(subjects, cfg.split, has_tumour=_tumour_status(base, cases), site_of=site_of)
    return split, scanner


def _split_record(base: Path, cfg: Config) -> dict[str, object]:
    """What a split depends on: settings, subject folders and the site CSV's content."""
    subjects = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    site_csv = None
    if cfg.split.site_csv:
        path = expand_path(cfg.split.site_csv)
        site_csv = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
    return {
        "version": _SPLIT_VERSION,
        "cohort": str(base),
        "split": dataclasses.asdict(cfg.split),
        "site_csv_sha256": site_csv,
        "subjects": subjects,
    }


def _manifest_for(split: Split, scanner: dict[str, str]) -> str:
    assignment = split.assignment()
    rows = [(s, scanner.get(s, ""), assignment[s]) for s in sorted(assignment, key=natural_key)]
    return manifest_text(rows)


# --- where the split is written -----------------------------------------------------------


def _write_split_in_place(base: Path, cfg: Config) -> None:
    record = _split_record(base, cfg)
    record_path = base / SPLIT_RECORD
    if (base / MANIFEST).is_file() and record_path.is_file():
        try:
            if json.loads(record_path.read_text(encoding="utf-8")) == record:
                return  # the manifest already holds this split
        except ValueError:
            pass  # unreadable record: remake the split
    split, scanner = _make_split(base, cfg)
    _warn_if_replacing(base / MANIFEST, split)
    atomic_write_text(base / MANIFEST, _manifest_for(split, scanner))
    atomic_write_text(record_path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    log.info("split (%s) written to %s", cfg.split.policy, base / MANIFEST)


def _warn_if_replacing(manifest: Path, split: Split) -> None:
    """Say so when a different split already in the manifest (maybe made by hand) is replaced."""
    if not manifest.is_file():
        return
    with open(manifest, newline="", encoding="utf-8") as f:
        old = {r["subject"]: r.get("split") or "" for r in csv.DictReader(f)}
    if any(old.values()) and old != split.assignment():
        log.warning("replacing the split recorded in %s with the one made from split.*", manifest)


def _split_view(base: Path, cfg: Config, cache: Path) -> Path:
    """``<cache>/splits/<name>-<hash>``: symlinked subject folders and the split manifest."""
    if not base.is_dir():
        raise DataError(base, "cohort folder does not exist or is not a directory")
    record = _split_record(base, cfg)
    key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
    final = cache / "splits" / f"{base.name}-{key}"
    if (final / MANIFEST).is_file():
        return final
    split, scanner = _make_split(base, cfg)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        for subject in split.assignment():
            os.symlink(base / subject, tmp / subject, target_is_directory=True)
        (tmp / MANIFEST).write_text(_manifest_for(split, scanner), encoding="utf-8")
        (tmp / SPLIT_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        _publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("split (%s) of %s written to %s", cfg.split.policy, base, final / MANIFEST)
    return final


# --- reading a split back -----------------------------------------------------------------


def load_split(cohort_dir: str | Path) -> Split:
    """The split recorded in ``cohort_dir/manifest.csv``.

    Raises DataError naming manifest.csv when it is missing, malformed, names subjects that
    have no folder, leaves a subject folder out, or has no split yet.
    """
    cohort_dir = Path(cohort_dir)
    path = cohort_dir / MANIFEST
    if not path.is_file():
        raise DataError(path, "missing: no split has been made for this cohort yet")
    subjects = {c.case_id for c in discover_cases(cohort_dir)}
    rows = _read_manifest(path, subjects)
    absent = sorted(subjects - set(rows), key=natural_key)
    if absent:
        raise DataError(path, f"does not list subject folder(s) {', '.join(absent[:5])}")
    test: list[str] = []
    sites: dict[str, list[str]] = {}
    for subject, row in rows.items():
        value = row.get("split", "")
        if value == TEST:
            test.append(subject)
        elif site_index(value) is not None:
            sites.setdefault(value, []).append(subject)
        else:
            raise DataError(
                path,
                f"subject {subject!r} has split {value!r}; expected 'test' or 'site-<k>' "
                "(an empty split means none was made: resolve the cohort with a config)",
            )
    ordered = {k: sorted(sites[k], key=natural_key) for k in sorted(sites, key=natural_key)}
    return Split(test=sorted(test, key=natural_key), sites=ordered)
