"""``fedsynth report RUN_DIR [--out FILE]``: one self-contained HTML page for a run.

Configuration, sites, privacy statement, training curves, samples, and (when present) the
segmentation benchmark and the privacy audit. Images are inlined, so the page is one file
to send around. Writes RUN_DIR/report.html (or --out) atomically and prints its path.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedsynth.cli._common import Summary
from fedsynth.common.errors import DataError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report of a run directory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="training run directory (train/simulate)")
    p.add_argument("--out", help="HTML file to write (default RUN_DIR/report.html)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> Summary:

    from fedsynth.report.html import write_report

    if not Path(args.run_dir).is_dir():
        raise DataError(args.run_dir, "run directory does not exist")
    path = write_report(args.run_dir, args.out)
    return Summary("report", "wrote the HTML report", {"report": path})
