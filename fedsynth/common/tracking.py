"""Experiment tracking: TensorBoard event files beside a run's own files.

One ``Tracker`` per run folder writes ``<folder>/tensorboard/`` (``tensorboard_dir``; the
name is ``fedsynth.common.rundir.TENSORBOARD_DIR``).
Callers pass what they already computed (a metrics row, a sample PNG); the tracker keeps
every finite number and drops the rest, so a hook is one line. ``tensorboard --logdir
<folder>`` shows one run; pointed at a parent folder (a sweep, a benchmark) it shows every
run below it side by side, because runs that log the same tags share one chart.

Privacy: a tracker writes on the machine that calls it. The server logs only what reached
it (the round rows it writes to metrics.jsonl anyway); a site's losses stay on the site.

Event files are append-only (TensorBoard's format, written by its own writer, not through
``common.io.atomic``); a resumed run passes ``purge_step`` so that TensorBoard hides the
points after the checkpoint that the first attempt had already logged.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fedsynth.common.rundir import TENSORBOARD_DIR

FLUSH_SECS = 10  # TensorBoard's default (120 s) hides a short run's points until it ends


def tensorboard_dir(run_root: str | Path) -> Path:
    """Where a run folder's event files go."""
    return Path(run_root) / TENSORBOARD_DIR


def tensorboard_command(logdir: str | Path) -> str:
    """The shell line that shows ``logdir`` (printed by the CLI when a run starts)."""
    return f"tensorboard --logdir {shlex.quote(str(logdir))}"


def finite_scalars(values: Mapping[str, Any]) -> dict[str, float]:
    """The entries that are real finite numbers (bools, strings, None, NaN, inf dropped)."""
    kept = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            continue
        if math.isfinite(float(value)):
            kept[key] = float(value)
    return kept


def training_scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """TensorBoard tags for one metrics.jsonl row of a GAN run (central step or federated round).

    Central and federated runs share tags, so both (and every budget of a sweep) overlay in
    one chart: ``loss/<d|g_adv|g_l1>``, ``privacy/epsilon``, ``heldout/<metric>`` (mean over
    contrasts) and ``heldout/<metric>/<contrast>``; other numbers go under ``run/``. The x axis
    is the training step (a federated round: round x local_steps).
    """
    tags: dict[str, Any] = {}
    for key, value in row.items():
        if key in ("step", "round", "kind", "epsilon_max"):  # axis / duplicates of epsilon
            continue
        if key == "mean" and isinstance(value, Mapping):
            tags.update({f"heldout/{m}": v for m, v in value.items()})
        elif key == "quality" and isinstance(value, Mapping):
            for contrast, metrics in value.items():
                tags.update({f"heldout/{m}/{contrast}": v for m, v in metrics.items()})
        elif key.startswith("loss_"):
            tags[f"loss/{key.removeprefix('loss_')}"] = value
        elif key == "epsilon":
            tags["privacy/epsilon"] = value
        else:
            tags[f"run/{key}"] = value
    return finite_scalars(tags)


def site_epsilons(site_rows: list[Mapping[str, Any]]) -> dict[str, float]:
    """``privacy/epsilon/<site>`` from a round's site rows: the epsilon each site reported
    (accounted, allowed to leave the site). Per-site losses are left out on purpose."""
    return finite_scalars(
        {f"privacy/epsilon/{r['site']}": r.get("epsilon") for r in site_rows if "site" in r}
    )


class Tracker:
    """TensorBoard writer of one run; ``Tracker(None)`` does nothing (tracking switched off).

    Args:
        logdir: folder for the event files (created), or None for a no-op tracker.
        purge_step: on resume, the step of the checkpoint resumed from; TensorBoard then
            discards points at or after it that an earlier attempt wrote.
    """

    def __init__(self, logdir: str | Path | None, *, purge_step: int | None = None):
        self.logdir = None if logdir is None else Path(logdir)
        self._writer = None
        if self.logdir is not None:
            # Lazy: TensorBoard's writer imports torch (and TensorFlow's protos); --help
            # and commands that do not train must not pay for it.
            from torch.utils.tensorboard import SummaryWriter

            self.logdir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(
                str(self.logdir), purge_step=purge_step, flush_secs=FLUSH_SECS
            )

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def scalars(self, values: Mapping[str, Any], step: int, prefix: str = "") -> list[str]:
        """Log every finite number of ``values`` as ``<prefix>/<key>``; returns the tags."""
        tags = []
        for key, value in finite_scalars(values).items():
            tag = f"{prefix}/{key}" if prefix else key
            if self._writer is not None:
                self._writer.add_scalar(tag, value, global_step=step)
            tags.append(tag)
        return tags

    def hparams(self, params: Mapping[str, Any], metrics: Mapping[str, Any]) -> None:
        """One row of TensorBoard's HParams table (e.g. a sweep's budget and its results),
        written into this run's own folder so the runs of a sweep line up in one table."""
        if self._writer is not None:
            kept = {k: v for k, v in params.items() if isinstance(v, int | float | str | bool)}
            self._writer.add_hparams(kept, finite_scalars(metrics), run_name=".")

    def image(self, tag: str, picture: str | Path | np.ndarray, step: int) -> None:
        """Log a picture: a PNG file, or an H x W x 3 uint8 array (values 0-255)."""
        if self._writer is None:
            return
        if isinstance(picture, str | Path):
            with Image.open(picture) as im:
                picture = np.asarray(im.convert("RGB"))
        if picture.ndim != 3 or picture.shape[2] != 3 or picture.dtype != np.uint8:
            raise ValueError(f"image {tag!r}: expected H x W x 3 uint8, got {picture.shape}")
        self._writer.add_image(tag, picture, global_step=step, dataformats="HWC")

    def text(self, tag: str, text: str, step: int = 0) -> None:
        """Log a short text (rendered as Markdown by TensorBoard), e.g. the privacy statement."""
        if self._writer is not None:
            self._writer.add_text(tag, text, global_step=step)

    def flush(self) -> None:
        """Write buffered events now (after a round, so a live TensorBoard sees it)."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
