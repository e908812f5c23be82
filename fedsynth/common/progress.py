"""Progress bars that one switch hides everywhere, and log lines that never break a bar.

Every long loop in fedsynth makes its bar with ``progress_bar(...)``. ``fedsynth
--no-progress`` (also ``--quiet``) runs the command inside ``progress_hidden()``, which
sets the environment variable ``FEDSYNTH_NO_PROGRESS=1``: processes started meanwhile (Ray's
workers running simulated sites, subprocesses) inherit it, so no bar appears anywhere. tqdm's own
``TQDM_DISABLE=1`` is set too, for libraries that draw their own tqdm bars.

``bars_and_logs()`` routes logging records and ``warnings.warn`` messages through
``tqdm.write`` while it is active, so a warning gets its own line above a bar instead of
landing in the middle of it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

ENV_NO_PROGRESS = "FEDSYNTH_NO_PROGRESS"
T = TypeVar("T")


def progress_enabled() -> bool:
    """False inside ``progress_hidden()``, here or in a parent process."""
    return os.environ.get(ENV_NO_PROGRESS, "") not in ("1", "true", "yes")


@contextlib.contextmanager
def progress_hidden() -> Iterator[None]:
    """Hide every progress bar of this process and of the processes it starts meanwhile."""
    names = (ENV_NO_PROGRESS, "TQDM_DISABLE")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(dict.fromkeys(names, "1"))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def progress_bar(
    iterable: Iterable[T] | None = None,
    *,
    desc: str,
    total: int | None = None,
    unit: str = "it",
    leave: bool = False,
    enabled: bool = True,
    **kwargs: Any,
) -> tqdm:
    """A tqdm bar, hidden when ``enabled`` is False or progress is switched off globally.

    ``leave=False`` by default: inner loops vanish when done, so the terminal keeps only
    the outer bars and the final summary.
    """
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        leave=leave,
        disable=not (enabled and progress_enabled()),
        dynamic_ncols=True,
        **kwargs,
    )


@contextlib.contextmanager
def bars_and_logs(*loggers: logging.Logger) -> Iterator[None]:
    """Print log records (root logger, ``loggers``) and Python warnings via ``tqdm.write``."""
    logging.captureWarnings(True)  # warnings.warn -> logger "py.warnings" -> root's handler
    try:
        with logging_redirect_tqdm(loggers=[logging.getLogger(), *loggers]):
            yield
    finally:
        logging.captureWarnings(False)
