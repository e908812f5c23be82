"""The ``fedsynth`` command: one module per subcommand, each a thin call into the packages.

A command module exposes ``register(subparsers)`` which adds its parser and sets
``func(args) -> int``.

Imports: the one place in fedsynth where a module imports inside a function. ``--help``
imports every command module, so each imports at its top only the light layer (the standard
library, ``fedsynth.common.config`` / ``errors`` / ``rundir`` / ``io.atomic``), and imports
the package it runs (which pulls in torch, flwr, ray, monai, matplotlib) inside ``func``.
Every other module imports at its top. ``tests/test_cli.py`` checks that ``--help`` loads
none of those libraries.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys
from collections.abc import Sequence

from fedsynth import __version__
from fedsynth.common.errors import FedsynthError

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
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("flwr").propagate = False  # Flower logs through its own handler already
    try:
        return int(args.func(args) or 0)
    except FedsynthError as e:
        print(f"fedsynth {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # output is a file, read-only folder, disk full: one line, the path
        print(f"fedsynth {args.command}: error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fedsynth {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
