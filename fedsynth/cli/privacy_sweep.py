"""``fedsynth privacy-sweep``: compare privacy budgets side by side.

    fedsynth privacy-sweep configs/demo.yaml --out runs/sweep --epsilons inf,50,10,5,2

For each budget (``inf`` = no differential privacy): federated training, synthesis, the
segmentation arms that use synthetic data (synthetic, local+synthetic), image quality and the
privacy audit; the real-data baselines (local, pooled) run once. Writes sweep.csv, sweep.md,
plots and report.html. Resumable: rerun the same command and finished budgets are kept.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedsynth.cli._common import Summary, add_config_args, announce_tensorboard, config_from_args
from fedsynth.common.rundir import SweepDir
from fedsynth.sweep.budgets import parse_epsilons


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "privacy-sweep",
        help="utility, image quality and measured leakage per privacy budget",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(p)
    p.add_argument("--out", type=Path, required=True, help="sweep directory (resumable)")
    p.add_argument(
        "--epsilons",
        default="inf,50,10,5,2",
        help="comma-separated per-patient budgets; inf = no DP (default: %(default)s)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> Summary:
    from fedsynth.sweep.run import run_sweep

    epsilons = parse_epsilons(args.epsilons)
    cfg = config_from_args(args)
    out = args.out.expanduser().resolve()
    announce_tensorboard(out)  # one TensorBoard run per budget (eps-*/tensorboard), one view
    table = run_sweep(cfg, epsilons, out)
    print(table.read_text())
    sweep = SweepDir(table.parent)
    outputs = {"sweep": sweep.root, "table": table, "markdown": sweep.markdown,
               "plots": sweep.plots, "report": sweep.report, "tensorboard": sweep.root}  # fmt: skip
    return Summary("privacy-sweep", f"privacy sweep over {len(epsilons)} budgets", outputs,
                   {"budgets": args.epsilons})  # fmt: skip
