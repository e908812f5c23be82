"""``fedsynth study CONFIG --out DIR [--arms A,B,...] [key=value ...]``: the generator study.

Pre-trains on the public cohort once, then trains every arm of ``study.arms`` (public-only,
federated fine-tuning of a parameter subset at several epsilons, DP from scratch) and
scores each on the same held-out test patients: MAE/PSNR/SSIM per contrast, a sample grid,
and (study.segmentation, study.audit) synthetic-only Dice and membership AUC. Resumable:
finished arms are kept. configs/study.yaml is the study of docs/generator.md.
"""

from __future__ import annotations

import argparse

from fedsynth.cli._common import add_config_args, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "study",
        help="public-only vs DP fine-tuning vs DP from scratch, on the same held-out patients",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(p)
    p.add_argument("--out", required=True, help="study directory (resumed if it exists)")
    p.add_argument("--arms", help="comma-separated subset of study.arms to run now")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fedsynth.central import set_determinism
    from fedsynth.study import run_study

    set_determinism()
    cfg = config_from_args(args)
    arms = [a.strip() for a in args.arms.split(",")] if args.arms else None
    table = run_study(cfg, Path(args.out), arms)
    print(table.read_text())
    print(f"study: {table}")
    return 0
