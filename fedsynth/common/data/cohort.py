"""Which cohort a config means, and its split into test patients and training sites.

``resolve_cohort(cfg)`` returns a *split view*: a folder in the cache,
``<cache_dir>/splits/<name>-<hash>/``, with symbolic links to the cohort's entries (subject
folders, or a Decathlon task's ``imagesTr``/``labelsTr``/``dataset.json``) and the split in
``manifest.csv`` (plus ``split.json``, the settings it was made from, and ``skipped.json``,
the cases left out with their reasons). ``load_split(view)`` reads it back. The data folder
itself is read-only to fedsynth: nothing is ever written into it.

- ``data.source: phantom``: the phantom cohort is generated once into
  ``<cache_dir>/phantoms/<settings hash>`` and reused; fedsynth made it, so it is not
  validated again.
- ``data.source: cohort``: every case is validated *before* the split is drawn, so invalid
  cases never take test or site slots. With ``data.strict`` an invalid case is an error
  listing every problem of every case; otherwise each is skipped, logged once, and listed in
  ``skipped.json`` (``skipped_cases``). An existing ``manifest.csv`` in the cohort is read
  for its ``scanner_site`` column.

The view's hash covers the split settings, the validation settings and every source file's
size and modification time, so fixing a file (or changing a setting) makes a new split rather
than reusing a stale one. Folders appear atomically (built under a temporary name, then
renamed); a process that loses the race to create the same folder uses the winner's, which is
identical.
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
from fedsynth.common.data.brats import CaseFiles, discover_cases
from fedsynth.common.data.phantom import (
    MANIFEST,
    MANIFEST_COLUMNS,
    METADATA,
    generate_phantom_cohort,
    manifest_text,
    phantom_settings_hash,
)
from fedsynth.common.data.splits import TEST, Split, make_split, natural_key
from fedsynth.common.data.validate import check_cohort
from fedsynth.common.errors import DataError
from fedsynth.common.io.atomic import atomic_write_json
from fedsynth.common.rundir import SKIPPED_CASES_FILE
from fedsynth.common.sites import site_index

log = logging.getLogger(__name__)

SPLIT_RECORD = "split.json"
_SPLIT_VERSION = 1  # bump when make_split changes, so recorded splits are remade


SKIPPED_RECORD = "skipped.json"
SKIPPED = "skipped"  # manifest.csv split value of a case left out by validation


def resolve_cohort(cfg: Config) -> Path:
    """The split view of the config's cohort (see module docstring), made if missing."""
    cache = expand_path(cfg.data.cache_dir)
    if cfg.data.source == "phantom":
        return _split_view(ensure_phantom_cohort(cfg.phantom, cache), cfg, cache)
    return _split_view(expand_path(cfg.data.cohort_dir), cfg, cache)  # type: ignore[arg-type]


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


@dataclasses.dataclass
class _Validated:
    """The cases a split may use, their tumour status, and the skipped ones with reasons."""

    subjects: list[str]
    has_tumour: dict[str, bool]
    skipped: dict[str, list[str]]


def _validated(base: Path, cfg: Config) -> _Validated:
    """Validate every case (a phantom cohort is fedsynth's own: its metadata is trusted)."""
    meta = base / METADATA
    if meta.is_file():
        subjects = json.loads(meta.read_text(encoding="utf-8"))["subjects"]
        status = {s["subject"]: bool(s["has_tumour"]) for s in subjects}
        return _Validated(sorted(status, key=natural_key), status, {})
    report = check_cohort(base, cfg.data.strict, cfg.data.labels_optional, labels=cfg.data.labels)
    skipped = {c.case_id: [str(p) for p in c.problems] for c in report.cases if not c.ok}
    status = {c.case_id: bool(c.has_tumour) for c in report.cases if c.ok}
    return _Validated([c.case_id for c in report.valid_cases], status, skipped)


def _make_split(base: Path, cfg: Config, valid: _Validated) -> tuple[Split, dict[str, str]]:
    """The split of the valid cases and each subject's scanner site ('' if unknown)."""
    manifest = base / MANIFEST
    everyone = set(valid.subjects) | set(valid.skipped)
    rows = _read_manifest(manifest, everyone) if manifest.is_file() else {}
    scanner = {s: rows.get(s, {}).get("scanner_site", "") for s in valid.subjects}
    site_of = scanner
    if cfg.split.site_csv:
        site_of = _read_site_csv(expand_path(cfg.split.site_csv), valid.subjects)
    split = make_split(valid.subjects, cfg.split, has_tumour=valid.has_tumour, site_of=site_of)
    return split, scanner


def _source_files(cases: list[CaseFiles]) -> list[list[object]]:
    """[path, size, mtime] of every file of every case: a changed file remakes the split."""
    out = []
    for case in cases:
        paths = {*case.images.values(), case.seg, case.tissue, *case.duplicates} - {None}
        for p in sorted(paths):  # type: ignore[type-var]
            st = p.stat()
            out.append([str(p), st.st_size, st.st_mtime_ns])
    return out


def _split_record(base: Path, cfg: Config) -> dict[str, object]:
    """What a split depends on: settings, the cases and their files, the site CSV's content."""
    cases = [] if (base / METADATA).is_file() else discover_cases(base, cfg.data.labels)
    subjects = (
        sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not cases
        else [c.case_id for c in cases]
    )
    site_csv = None
    if cfg.split.site_csv:
        path = expand_path(cfg.split.site_csv)
        site_csv = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
    manifest = base / MANIFEST
    return {
        "version": _SPLIT_VERSION,
        "cohort": str(base),
        "split": dataclasses.asdict(cfg.split),
        "validation": {
            "strict": cfg.data.strict,
            "labels_optional": cfg.data.labels_optional,
            "labels": cfg.data.labels,
        },
        "site_csv_sha256": site_csv,
        "manifest_sha256": (
            hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else None
        ),
        "subjects": subjects,
        "files": _source_files(cases),
    }


def _manifest_for(split: Split, scanner: dict[str, str], skipped: dict[str, list[str]]) -> str:
    assignment = {**{s: SKIPPED for s in skipped}, **split.assignment()}
    rows = [(s, scanner.get(s, ""), assignment[s]) for s in sorted(assignment, key=natural_key)]
    return manifest_text(rows)


# --- the split view ------------------------------------------------------------------------


def _split_view(base: Path, cfg: Config, cache: Path) -> Path:
    """``<cache>/splits/<name>-<hash>``: links to the cohort's entries and the split."""
    if not base.is_dir():
        raise DataError(base, "cohort folder does not exist or is not a directory")
    base = base.resolve()
    record = _split_record(base, cfg)
    key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
    final = cache / "splits" / f"{base.name}-{key}"
    if (final / MANIFEST).is_file():
        return final
    valid = _validated(base, cfg)
    split, scanner = _make_split(base, cfg, valid)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        for entry in sorted(base.iterdir()):
            if entry.name not in (
                MANIFEST,
                SPLIT_RECORD,
                SKIPPED_RECORD,
            ) and not entry.name.startswith("."):
                os.symlink(entry, tmp / entry.name, target_is_directory=entry.is_dir())
        (tmp / MANIFEST).write_text(_manifest_for(split, scanner, valid.skipped), encoding="utf-8")
        (tmp / SPLIT_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        atomic_write_json(tmp / SKIPPED_RECORD, valid.skipped)
        _publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    skipped = f", {len(valid.skipped)} invalid cases skipped" if valid.skipped else ""
    log.info("split (%s) of %s written to %s%s", cfg.split.policy, base, final / MANIFEST, skipped)
    return final


def skipped_cases(cohort_dir: str | Path) -> dict[str, list[str]]:
    """Cases validation left out of the split of ``cohort_dir`` (a split view): id -> problems."""
    path = Path(cohort_dir) / SKIPPED_RECORD
    if not path.is_file():
        return {}
    try:
        return {str(k): list(v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}
    except (OSError, ValueError, AttributeError) as e:
        raise DataError(path, f"unreadable list of skipped cases: {e}") from e


def record_skipped(cohort_dir: str | Path, run_dir: str | Path) -> Path | None:
    """Copy the skipped cases of a split view into a run directory (``SKIPPED_CASES_FILE``).

    Returns the file written, or None when no case was skipped (nothing is written).
    """
    skipped = skipped_cases(cohort_dir)
    if not skipped:
        return None
    out = Path(run_dir) / SKIPPED_CASES_FILE
    atomic_write_json(out, {"cohort": str(Path(cohort_dir).resolve()), "skipped": skipped})
    return out


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
        if value == SKIPPED:
            continue
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
