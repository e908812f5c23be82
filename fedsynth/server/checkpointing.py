"""Server checkpoints: the global generator after every round, and the state to resume from.

The run directory has the central trainer's layout (``fedsynth.common.rundir``)::

    checkpoints/generator_<step>.safetensors   global generator after a round (step = round x
                                               local_steps), same format as central training
    checkpoints/latest.json                    names the newest one
    checkpoints/release_<step>.safetensors     with federation.release_ema > 0: the EMA of the
                                               aggregates (fedsynth.server.release), released
    checkpoints/generator.safetensors          a copy of the newest release (what synthesis
                                               loads): the EMA if on, else the aggregate
    server_state.json                          last completed round, history, sites, the EMA's
                                               file and rounds (resume)

Write order per round: generator checkpoint, then metrics rows, then ``server_state.json``
(atomically). ``server_state.json`` is the commit point: a server killed before it is
written resumes from the previous round, and ``truncate_metrics`` drops the rows the killed
round had already appended, so a resumed run's files equal an uninterrupted run's.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsynth.common.config import Config
from fedsynth.common.errors import CheckpointError
from fedsynth.common.io import checkpoints as checkpoint_files
from fedsynth.common.io.atomic import atomic_write_json, atomic_write_text
from fedsynth.common.models.registry import architecture_hash
from fedsynth.common.rundir import RunDir

KEEP_ROUNDS = 3  # round checkpoints kept (older ones are deleted; latest.json names the newest)


@dataclass
class ServerState:
    """What the server needs to resume; JSON-serialisable."""

    round: int = 0  # last completed round (0: none yet)
    rounds: int = 0  # rounds planned for the run
    checkpoint: str = ""  # file name (in checkpoints/) of the generator after ``round``
    history: list[dict[str, Any]] = field(default_factory=list)  # one summary per round
    sites: dict[str, dict[str, Any]] = field(default_factory=dict)  # latest privacy per site
    seconds: float = 0.0  # wall time of completed rounds
    declared: dict[str, float] = field(default_factory=dict)  # site -> first num-examples
    site_nodes: dict[str, int] = field(default_factory=dict)  # site -> node id that was it
    release: str = ""  # file name (in checkpoints/) of the EMA release after ``round``; "": off
    release_rounds: int = 0  # aggregates the EMA release averages
    # Rounds that released no generator (fewer than federation.min_sites accepted updates, or
    # a non-finite aggregate): {"round", "reason", "charged": sites whose accepted reply of
    # that round the server received, so their reported epsilon includes it}.
    unreleased: list[dict[str, Any]] = field(default_factory=list)


def save_generator(
    path: Path, weights: dict[str, np.ndarray], cfg: Config, *, step: int, extra: dict[str, Any]
) -> Path:
    """The global generator in the central trainer's checkpoint format (synthesis loads it)."""

    return checkpoint_files.save_checkpoint(
        path,
        {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()},
        architecture=cfg.model.generator,
        config_hash=architecture_hash(cfg.model),
        step=step,
        extra={"model": asdict(cfg.model), "image_size": cfg.preprocess.image_size, **extra},
    )


def load_generator(path: Path) -> dict[str, np.ndarray]:
    """Generator weights (name -> float32 array) of a checkpoint; CheckpointError if unfit."""
    return {k: v.numpy() for k, v in checkpoint_files.load_checkpoint(path).tensors.items()}


def save_checkpoint(
    run_dir: Path, cfg: Config, round_: int, weights: dict[str, np.ndarray], extra: dict[str, Any]
) -> Path:
    """Write the global generator after ``round_`` (first write of a round).

    Named like the central trainer's, by local step: ``checkpoints/generator_<round x
    local_steps>.safetensors``.
    """
    step = round_ * cfg.federation.local_steps
    path = RunDir(run_dir).generator_checkpoint(step)
    return save_generator(path, weights, cfg, step=step, extra={"round": round_, **extra})


def save_release(
    run_dir: Path, cfg: Config, round_: int, weights: dict[str, np.ndarray], extra: dict[str, Any]
) -> Path:
    """Write the EMA release after ``round_`` (``checkpoints/release_<step>.safetensors``)."""
    step = round_ * cfg.federation.local_steps
    path = RunDir(run_dir).release_checkpoint(step)
    return save_generator(path, weights, cfg, step=step, extra={"round": round_, **extra})


def commit_round(run_dir: Path, state: ServerState) -> None:
    """Make ``state.round`` the round a resume starts after (last write of a round).

    Also points ``checkpoints/latest.json`` at its generator and deletes old checkpoints.
    """
    run = RunDir(run_dir)
    ckpt = run.checkpoints / state.checkpoint
    if not state.checkpoint or not ckpt.is_file():
        raise CheckpointError(ckpt, "missing; save_checkpoint must run before commit_round")
    release = run.checkpoints / state.release if state.release else ckpt
    if not release.is_file():
        raise CheckpointError(release, "missing; save_release must run before commit_round")
    atomic_write_json(run.server_state, asdict(state), durable=True)  # the commit point
    atomic_write_json(
        run.latest,
        {
            "step": int(ckpt.stem.split("_")[-1]),
            "round": state.round,
            "generator": ckpt.name,
            "state": run.server_state.name,
            "release": release.name,
        },
        durable=True,
    )
    run.publish_generator(release)
    for pattern in ("generator_*.safetensors", "release_*.safetensors"):
        for old in sorted(run.checkpoints.glob(pattern))[:-KEEP_ROUNDS]:
            old.unlink(missing_ok=True)


def load_state(run_dir: Path) -> ServerState | None:
    """The committed state of ``run_dir``, or None when no round has completed."""
    path = RunDir(run_dir).server_state
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ServerState(**data)
    except (json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(path, f"not a fedsynth server state ({e})") from e


def load_resume_point(run_dir: Path) -> tuple[ServerState, dict[str, np.ndarray]] | None:
    """(state, global generator weights) of the last completed round, or None to start fresh."""
    state = load_state(run_dir)
    if state is None or state.round == 0:
        return None
    return state, load_generator(RunDir(run_dir).checkpoints / state.checkpoint)


def load_release(run_dir: Path, state: ServerState) -> tuple[dict[str, np.ndarray], int] | None:
    """(EMA release weights, aggregates it averages) committed with ``state``; None if none."""
    if not state.release:
        return None
    return load_generator(RunDir(run_dir).checkpoints / state.release), state.release_rounds


def truncate_metrics(path: Path, last_round: int) -> int:
    """Drop rows of ``path`` (JSON lines with a "round" key) past ``last_round``; return how many."""
    if not path.is_file():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines()
    keep = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
        if int(row.get("round", 0)) <= last_round:
            keep.append(line)
    if len(keep) != len(lines):
        atomic_write_text(path, "".join(f"{line}\n" for line in keep))
    return len(lines) - len(keep)
