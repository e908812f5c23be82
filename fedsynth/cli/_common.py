"""Arguments shared by several subcommands, and how a command reports what it did."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from fedsynth.common.config import Config, load_config


def add_config_args(parser: argparse.ArgumentParser, config_required: bool = True) -> None:
    parser.add_argument(
        "config",
        nargs=None if config_required else "?",
        help="YAML config (e.g. configs/smoke.yaml, configs/demo.yaml)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. train.steps=20 privacy.target_epsilon=5",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


# --------------------------------------------------------------------------- output modes


def add_output_args(parser: argparse.ArgumentParser) -> None:
    """--quiet, --json, --no-progress: added to every subcommand by ``build_parser``.

    An option a command already defines keeps the command's meaning (``validate-data
    --json OUT`` writes its report to a file).
    """
    known = set(parser._option_string_actions)  # argparse has no public lookup
    group = parser.add_argument_group("output")
    if not {"-q", "--quiet"} & known:
        group.add_argument(
            "-q", "--quiet", action="store_true",
            help="print only warnings and errors (no progress bars, no summary)",
        )  # fmt: skip
    if "--json" not in known:
        group.add_argument(
            "--json", dest="json_summary", action="store_true",
            help="print one JSON summary on stdout (outputs, key figures); everything else "
            "goes to stderr",
        )  # fmt: skip
    if "--no-progress" not in known:
        group.add_argument("--no-progress", action="store_true", help="hide every progress bar")


@dataclass
class Summary:
    """What a command did, printed once at its end: a headline, every output path, figures.

    Commands return one instead of printing; ``fedsynth`` prints it as text, or as JSON
    with ``--json`` (``{"command", "ok", "exit_code", "error", "headline", "outputs",
    "facts"}``; paths as strings, ``error`` null unless the command failed).
    """

    command: str
    headline: str
    outputs: dict[str, Path] = field(default_factory=dict)  # label -> file or folder
    facts: dict[str, Any] = field(default_factory=dict)  # JSON-able figures (epsilon, Dice)
    exit_code: int = 0
    error: str | None = None  # the message printed on stderr when the command failed

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "ok": self.exit_code == 0,
            "exit_code": self.exit_code,
            "error": self.error,
            "headline": self.headline,
            "outputs": {k: str(v) for k, v in self.outputs.items()},
            "facts": self.facts,
        }

    def to_text(self) -> str:
        width = max((len(k) for k in [*self.outputs, *self.facts]), default=0)
        lines = [self.headline]
        lines += [f"  {k:<{width}}  {v}" for k, v in self.outputs.items()]
        lines += [f"  {k:<{width}}  {_readable(v)}" for k, v in self.facts.items()]
        return "\n".join(lines)


def _readable(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    return str(value)


def announce_tensorboard(logdir: Path) -> None:
    """The line that shows a run in TensorBoard, printed when the run starts."""
    from fedsynth.common.tracking import tensorboard_command

    print(f"TensorBoard: {tensorboard_command(logdir)}", flush=True)


@contextlib.contextmanager
def stdout_to(stream: TextIO, fd: int) -> Iterator[None]:
    """Send what the command prints to ``stream`` (Python level) and file descriptor 1 to
    ``fd``: Flower, Ray's forwarded worker output and C libraries write to fd 1 directly."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(fd, 1)
    try:
        with contextlib.redirect_stdout(stream):
            yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
