"""Atomic writes: write to a temporary file in the same directory, fsync, then rename.

A reader sees either the old file or the complete new one, never a partial write, even if
the process is killed mid-way.

Output folders fedsynth makes carry a marker file (``OUTPUT_MARKER``); ``remove_output`` —
what every ``--overwrite`` does — deletes a non-empty folder only if it carries one, so a
mistyped ``--out`` cannot delete a user's folder. The marker is defined here, below the run
folder module (``fedsynth.common.rundir``), because ``atomic_directory`` needs it too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fedsynth.common.errors import ForeignFolderError, OutputExistsError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _default_mode(is_dir: bool) -> int:
    """Permissions an ordinary open()/mkdir() would give (mkstemp/mkdtemp use 0600/0700)."""
    return (0o777 if is_dir else 0o666) & ~_umask()


def fsync_directory(folder: str | Path) -> None:
    """Flush a directory's entries to disk: after a rename, the new name survives a crash
    (power loss, kernel panic) only once its directory is synced (POSIX; a no-op elsewhere)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(
    path: str | Path, suffix: str | None = None, *, durable: bool = False
) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds.

    ``suffix`` keeps a file extension on the temporary name for writers that infer the
    format from it (nibabel, matplotlib). On error the temporary file is removed.
    ``durable``: also sync the directory after the rename, for files a resume must find
    after a crash (checkpoints, site and server state, latest.json). Others (metrics,
    plots, reports) skip it: the rename alone is atomic, and each sync costs milliseconds.
    """
    path = Path(path)
    suffix = suffix if suffix is not None else "".join(path.suffixes)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    except OSError as e:  # name the output asked for, not the temporary file
        raise OSError(e.errno, e.strerror, str(path)) from e
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, _default_mode(is_dir=False))
        os.replace(tmp_path, path)
        if durable:
            fsync_directory(path.parent)
    except OSError as e:
        if e.filename is None:  # a failed write (disk full) names no file: name the output
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


OUTPUT_MARKER = ".fedsynth-output"  # in every output folder fedsynth makes
_MARKER_TEXT = "Made by fedsynth. `--overwrite` may delete this folder and everything in it.\n"


def mark_output(folder: str | Path) -> None:
    """Mark ``folder`` (created if needed) as an output folder fedsynth may overwrite."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / OUTPUT_MARKER
    if not marker.is_file():
        atomic_write_text(marker, _MARKER_TEXT)


def remove_output(folder: str | Path) -> None:
    """Delete ``folder`` for ``--overwrite``: only if absent, empty or marked as fedsynth's.

    Raises ForeignFolderError naming the folder otherwise (nothing is deleted).
    """

    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_symlink() or not folder.is_dir():
        raise ForeignFolderError(folder, OUTPUT_MARKER)
    if not any(folder.iterdir()):
        folder.rmdir()
        return
    if not (folder / OUTPUT_MARKER).is_file():
        raise ForeignFolderError(folder, OUTPUT_MARKER)
    shutil.rmtree(folder)


def atomic_write_bytes(path: str | Path, data: bytes, *, durable: bool = False) -> None:
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str, *, durable: bool = False) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


def atomic_write_json(path: str | Path, obj: Any, *, durable: bool = False) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", durable=durable)


def append_jsonl(path: str | Path, record: dict[str, Any], *, sync: bool = True) -> None:
    """Append one JSON line and flush it to disk (a killed run loses at most that line).

    ``sync=False``: flushed to the OS but not fsynced; a killed process still loses nothing
    (the kernel holds the line), a power loss may lose the last lines. For logs nothing is
    resumed from, written on a critical path (a site's own training log).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        if sync:
            os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_directory(
    path: str | Path, overwrite: bool = False, *, mark: bool = True
) -> Iterator[Path]:
    """Build a directory under a temporary name and move it into place when complete.

    Used for outputs made of many files (a cohort, a cache) so that an interrupted build
    leaves nothing that looks finished. The folder is marked as fedsynth's
    (``OUTPUT_MARKER``); ``overwrite`` replaces only a folder so marked (or an empty one).
    ``mark=False`` is for folders that must hold exactly their data files (a committed test
    fixture case): unmarked, and replaced by ``overwrite`` without the check.
    """

    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(path)
    marked = (path / OUTPUT_MARKER).is_file()
    if mark and path.exists() and any(path.iterdir()) and not marked:
        raise ForeignFolderError(path, OUTPUT_MARKER)  # refuse before the work, not after
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as e:  # name the output asked for, not the temporary folder
        raise OSError(e.errno, e.strerror, str(path)) from e
    try:
        yield tmp
        if mark:
            mark_output(tmp)
        os.chmod(tmp, _default_mode(is_dir=True))
        if path.exists():
            if not overwrite:  # another process finished first: keep its output, not ours
                raise OutputExistsError(path)
            if mark:
                remove_output(path)
            else:
                shutil.rmtree(path)
        os.replace(tmp, path)
    except OSError as e:
        if e.filename is None:  # a failed write (disk full) names no file: name the output
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_figure(fig: Callable[..., Any] | Any, path: str | Path, **savefig_kwargs: Any) -> None:
    """Save a matplotlib figure atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", **savefig_kwargs)
