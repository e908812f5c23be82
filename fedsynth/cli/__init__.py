"""The ``fedsynth`` command: one module per subcommand, each a thin call into the packages.

A command module exposes ``register(subparsers)`` which adds its parser and sets
``func(args) -> Summary | int``. Every command also takes ``--quiet``, ``--json`` and
``--no-progress`` (cli/_common.py); ``main`` applies them and prints the returned Summary.

Imports: the one place in fedsynth where a module imports inside a function. ``--help``
imports every command module, so each imports at its top only the light layer (the standard
library, ``fedsynth.common.config`` / ``errors`` / ``rundir`` / ``io.atomic``), and imports
the package it runs (which pulls in torch, flwr, ray, monai, matplotlib) inside ``func``.
Every other module imports at its top. ``tests/test_cli.py`` checks that ``--help`` loads
none of those libraries.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence

from fedsynth import __version__
from fedsynth.cli._common import Summary, add_output_args, stdout_to
from fedsynth.common.errors import FedsynthError
from fedsynth.common.progress import bars_and_logs, progress_hidden

# Subcommand modules in the order --help lists them.
COMMANDS: tuple[str, ...] = (
    "phantoms",
    "validate_data",
    "preprocess",
    "simulate",
    "train",
    "pretrain",
    "synthesize",
    "benchmark",
    "audit",
    "report",
    "privacy_sweep",
    "study",
    "demo",
    "certs",
    "site_check",
    "config",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedsynth",
        description=(
            "Federated, differentially private synthesis of brain-tumour MRI: "
            "pix2pix (label map -> T1, T1c, T2, FLAIR) trained across hospital sites with "
            "Flower and Opacus. Run 'fedsynth COMMAND --help' for each command."
        ),
    )
    parser.add_argument("--version", action="version", version=f"fedsynth {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"fedsynth.cli.{name}").register(sub)
    for command_parser in sub.choices.values():
        add_output_args(command_parser)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse a command line; ``key=value`` overrides may come before or after options."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse binds `key=value ...` to the positional before options only; overrides given
    # after --out etc. (the documented form: CONFIG --out DIR key=value) arrive here.
    if extra:
        if not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    return args


def describe_os_error(e: OSError) -> str:
    """One line for an OSError: the path(s) it names and the system's reason."""
    reason = e.strerror or str(e) or type(e).__name__
    paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
    if e.errno in (errno.EEXIST, errno.ENOTDIR):
        reason += " (a file stands where a folder is needed)"
    elif e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        reason += " (disk full, quota or file size limit: free space or choose another --out)"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason += " (no write permission there: choose another --out)"
    return f"{' -> '.join(paths)}: {reason}" if paths else reason


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    quiet, as_json = getattr(args, "quiet", False), getattr(args, "json_summary", False)
    if quiet and hasattr(args, "no_progress"):
        args.no_progress = True  # commands pass it on as progress=False explicitly
    level = logging.DEBUG if args.verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)  # Flower's database migrations
    flwr_log = logging.getLogger("flwr")
    flwr_log.propagate = False  # Flower logs through its own handler already
    if quiet:
        flwr_log.setLevel(logging.WARNING)
    stdout = sys.stdout  # the JSON summary's only writer once the command has run
    with contextlib.ExitStack() as stack:
        if quiet or getattr(args, "no_progress", False):
            stack.enter_context(progress_hidden())  # also Ray's workers (environment variable)
        if quiet:  # what commands print for people goes nowhere; warnings stay on stderr
            devnull = stack.enter_context(open(os.devnull, "w"))
            stack.enter_context(stdout_to(devnull, devnull.fileno()))
        elif as_json:  # stdout carries exactly one JSON document
            stack.enter_context(stdout_to(sys.stderr, 2))
        stack.enter_context(bars_and_logs(flwr_log))
        result = _run_command(args)
    if as_json:
        print(json.dumps(result.to_json(), indent=2, default=_plain), file=stdout, flush=True)
    elif not quiet and result.headline:
        print(result.to_text(), file=stdout, flush=True)
    return result.exit_code


def _plain(value: object) -> object:
    """JSON for what commands put in a summary besides str/int/float: numpy scalars, paths."""
    item = getattr(value, "item", None)  # numpy and torch scalars
    return item() if callable(item) else str(value)


def _run_command(args: argparse.Namespace) -> Summary:
    """Run the command; errors become a Summary with exit status 2 (130 if interrupted)."""
    try:
        result = args.func(args)
    except FedsynthError as e:
        print(f"fedsynth {args.command}: error: {e}", file=sys.stderr)
        return Summary(args.command, "", exit_code=2, error=str(e))
    except OSError as e:  # output is a file, read-only folder, disk full: one line, the path
        print(f"fedsynth {args.command}: error: {describe_os_error(e)}", file=sys.stderr)
        return Summary(args.command, "", exit_code=2, error=describe_os_error(e))
    except KeyboardInterrupt:
        print(f"fedsynth {args.command}: interrupted", file=sys.stderr)
        return Summary(args.command, "", exit_code=130, error="interrupted")
    if isinstance(result, Summary):
        return result
    return Summary(args.command, "", exit_code=int(result or 0))  # a command not yet ported


if __name__ == "__main__":
    sys.exit(main())
