"""``fedsynth benchmark``: segmentation arms (local, pooled, synthetic, local+synthetic,
synthetic->finetune, fedavg) scored with Dice/HD95 per region on the held-out patients.

    fedsynth benchmark configs/demo.yaml --out runs/demo --checkpoint runs/demo/checkpoints/generator.safetensors
    fedsynth benchmark configs/smoke.yaml --out runs/bench --synthetic runs/synth benchmark.arms=[local,pooled]

Writes RUN_DIR/benchmark/: results.csv, differences.csv, per_patient.csv, results.md, plots.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedsynth.cli._common import Summary, add_config_args, announce_tensorboard, config_from_args
from fedsynth.common.errors import OutputExistsError
from fedsynth.common.io.atomic import remove_output
from fedsynth.common.rundir import RunDir
from fedsynth.common.tracking import tensorboard_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "benchmark",
        help="segmentation benchmark: synthetic vs real data, federated vs local",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(p)
    p.add_argument(
        "--out", type=Path, required=True, help="run directory (results go to RUN_DIR/benchmark)"
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--synthetic", type=Path, help="synthetic cohort folder (fedsynth synthesize)")
    src.add_argument("--checkpoint", type=Path, help="generator checkpoint to synthesise from")
    p.add_argument("--overwrite", action="store_true", help="replace an existing RUN_DIR/benchmark")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> Summary:

    from fedsynth.benchmark.runner import run_benchmark

    cfg = config_from_args(args)
    out = RunDir(args.out.expanduser().resolve()).benchmark
    if (out / "results.csv").exists():
        if not args.overwrite:
            raise OutputExistsError(out)
        remove_output(out)  # only a folder fedsynth marked as its own (ForeignFolderError)
    announce_tensorboard(tensorboard_dir(out))
    result = run_benchmark(
        cfg,
        args.out,
        synthetic=args.synthetic,
        checkpoint=args.checkpoint,
        progress=not args.no_progress,
    )
    print((result.out / "results.md").read_text())
    outputs = {"benchmark": result.out, "results": result.out / "results.csv",
               "table": result.out / "results.md"}  # fmt: skip
    return Summary("benchmark", f"benchmark finished in {result.seconds:.0f} s", outputs,
                   {"rows": len(result.rows)})  # fmt: skip
