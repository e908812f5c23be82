"""``fedsynth validate-data DIR``: check a BraTS-layout cohort and report every problem."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedsynth.common.io.atomic import atomic_write_json

DESCRIPTION = """\
Check every case of a BraTS-layout cohort before training on it.

DIR is a folder of subject folders, in BraTS 2017-2021 naming (<id>/<id>_t1.nii.gz,
_t1ce, _t2, _flair, _seg; enhancing tumour = 4) or BraTS 2023 naming
(<id>/<id>-t1n.nii.gz, -t1c, -t2w, -t2f, -seg; enhancing tumour = 3), .nii or .nii.gz.

Every file is read completely. Checked: missing or duplicated files, unreadable or
truncated files, volumes that are not 3-D, shapes or affines that differ between the
files of a case, NaN/inf voxels, constant (e.g. all-zero) images, and label values
outside the naming's convention (non-integers included).

Prints one line per case (OK or FAIL), one indented line per problem naming the file,
then a summary. Exit status: 0 all cases valid, 1 some case invalid, 2 DIR unusable."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate-data",
        help="check a BraTS-layout cohort folder, one line per problem",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dir", metavar="DIR", help="cohort folder (a folder of subject folders)")
    parser.add_argument(
        "--labels-optional",
        action="store_true",
        help="accept cases without a label map (inputs for synthesis only, never for training)",
    )
    parser.add_argument(
        "--json", metavar="OUT", help="also write the report as JSON to OUT (written atomically)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    from fedsynth.common.data import brats
    from fedsynth.common.data.validate import CohortReport, iter_case_reports

    cases = brats.discover_cases(args.dir)
    print(f"Validating {len(cases)} case{'' if len(cases) == 1 else 's'} in {args.dir}", flush=True)
    reports, valid = [], []
    for case, report in iter_case_reports(cases, labels_optional=args.labels_optional):
        print(f"{'OK  ' if report.ok else 'FAIL'}  {report.case_id}  ({report.naming})", flush=True)
        for problem in report.problems:
            print(f"      {problem}", flush=True)
        reports.append(report)
        valid += [case] if report.ok else []
    full = CohortReport(Path(args.dir), reports, valid)
    print(f"Summary: {full.summary()}")
    if args.json:
        atomic_write_json(args.json, full.to_dict())
        print(f"Report written to {args.json}")
    sys.stdout.flush()
    return 0 if full.ok else 1
