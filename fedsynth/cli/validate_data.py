"""``fedsynth validate-data DIR``: check a cohort (or one case) and report every problem."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedsynth.common.io.atomic import atomic_write_json

DESCRIPTION = """\
Check every case of a cohort before training on it.

DIR is a cohort folder: a folder of subject folders in BraTS 2017-2021 naming
(<id>/<id>_t1.nii.gz, _t1ce, _t2, _flair, _seg; enhancing tumour = 4) or BraTS 2023 naming
(<id>/<id>-t1n.nii.gz, -t1c, -t2w, -t2f, -seg; enhancing tumour = 3), .nii or .nii.gz; or a
Medical Segmentation Decathlon task folder (dataset.json, imagesTr/, labelsTr/; labels
1 oedema, 2 non-enhancing, 3 enhancing). DIR may also be one subject's folder.

Every file is read completely. Checked: missing or duplicated files, unreadable, truncated,
oversized or padded files, volumes that are not 3-D, shapes or affines that differ between
the files of a case, NaN/inf voxels, constant (e.g. all-zero) images, images without a
constant (skull-stripped) background, and label values outside the label convention
(non-integers included). BraTS 2012-2016 label maps (0/1/2/3/4, 3 = non-enhancing) need
--labels brats2015.

Prints one line per case (OK or FAIL), one indented line per problem naming the file,
then a summary. Exit status: 0 all cases valid, 1 some case invalid, 2 DIR unusable."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate-data",
        help="check a cohort folder (BraTS or Decathlon layout), one line per problem",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dir", metavar="DIR", help="cohort folder, or one subject's folder")
    parser.add_argument(
        "--labels-optional",
        action="store_true",
        help="accept cases without a label map (inputs for synthesis only, never for training)",
    )
    parser.add_argument(
        "--labels",
        default="auto",
        choices=["auto", "brats2021", "brats2023", "brats2015", "msd"],
        help="label convention (as data.labels): auto = by file naming; brats2015 for BraTS "
        "2012-2016 maps (3 = non-enhancing tumour, merged into 1)",
    )
    parser.add_argument(
        "--json", metavar="OUT", help="also write the report as JSON to OUT (written atomically)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    from fedsynth.common.data import brats
    from fedsynth.common.data.validate import CohortReport, iter_case_reports

    root = Path(args.dir)
    if brats.is_case_folder(root) and not brats.is_msd(root):
        cases = [brats.find_case(root, args.labels)]
        print(f"{root} is one case's folder: validating that case (its cohort is {root.parent})")
    else:
        cases = brats.discover_cases(root, args.labels)
        print(f"Validating {len(cases)} case{'' if len(cases) == 1 else 's'} in {root}", flush=True)
    reports, valid = [], []
    for case, report in iter_case_reports(cases, labels_optional=args.labels_optional):
        print(f"{'OK  ' if report.ok else 'FAIL'}  {report.case_id}  ({report.naming})", flush=True)
        for problem in report.problems:
            print(f"      {problem}", flush=True)
        reports.append(report)
        valid += [case] if report.ok else []
    full = CohortReport(root, reports, valid)
    print(f"Summary: {full.summary()}")
    if args.json:
        atomic_write_json(args.json, full.to_dict())
        print(f"Report written to {args.json}")
    sys.stdout.flush()
    return 0 if full.ok else 1
