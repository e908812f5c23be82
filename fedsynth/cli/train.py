"""``fedsynth train CONFIG --out RUN_DIR [key=value ...]`` and ``fedsynth train --resume RUN_DIR``.

Centralised pix2pix training on the pooled training patients (or one site's, train.site),
with patient-level DP if privacy.enabled. Writes a run directory (see
fedsynth.common.rundir) and prints what was spent in privacy and the path of the released
generator (RUN_DIR/checkpoints/generator.safetensors) at the end.
"""

from __future__ import annotations

import argparse
import json

from fedsynth.cli._common import Summary, add_config_args, announce_tensorboard
from fedsynth.common.config import load_config
from fedsynth.common.errors import ConfigError
from fedsynth.common.rundir import RunDir


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train the pix2pix generator centrally (with patient-level DP if enabled)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(p, config_required=False)
    p.add_argument("--out", help="new run directory (fresh run)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _parse_overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(item, "overrides must look like key=value (e.g. train.steps=10)")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def run(args: argparse.Namespace) -> Summary:
    from fedsynth.central import resume_central, set_determinism, train_central

    set_determinism()
    progress = not args.no_progress
    if args.resume:
        # With --resume the positional CONFIG slot holds the first override, if any.
        items = ([args.config] if args.config else []) + list(args.overrides)
        announce_tensorboard(RunDir(args.resume).tensorboard)
        run_dir = resume_central(args.resume, overrides=_parse_overrides(items), progress=progress)
    else:
        if not args.config or not args.out:
            raise ConfigError("--out", "give CONFIG and --out RUN_DIR, or --resume RUN_DIR")
        cfg = load_config(args.config, args.overrides)
        announce_tensorboard(RunDir(args.out).tensorboard)
        run_dir = train_central(cfg, args.out, overwrite=args.overwrite, progress=progress)
    privacy = json.loads(run_dir.privacy.read_text())
    latest = run_dir.latest_step()
    outputs = {"run directory": run_dir.root, "generator": run_dir.generator,
               "metrics": run_dir.metrics, "privacy": run_dir.privacy,
               "samples": run_dir.sample_png(latest), "plots": run_dir.plots,
               "tensorboard": run_dir.tensorboard}  # fmt: skip
    facts = {"steps": latest, "epsilon": privacy["worst_epsilon"], "delta": privacy["delta"],
             "privacy_statement": privacy["statement"]}  # fmt: skip
    return Summary("train", f"trained {latest} steps", outputs, facts)
