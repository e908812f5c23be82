"""``fedsynth simulate``: federated training of K simulated sites with Flower's simulation engine.

    fedsynth simulate configs/demo.yaml --out runs/fed [key=value ...]
    fedsynth simulate --resume runs/fed [federation.rounds=12]

One SuperNode per site (``split.sites``), each with ``federation.client_cpus`` CPUs and
``federation.client_gpus`` GPUs. The ServerApp and ClientApp are the same objects
``flwr run .`` and a real deployment use (fedsynth.server.app, fedsynth.client.app).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from fedsynth.cli._common import Summary, add_config_args, announce_tensorboard
from fedsynth.common.config import Config, load_config
from fedsynth.common.errors import ConfigError
from fedsynth.common.rundir import RunDir, clear_for_new_output

log = logging.getLogger(__name__)

RESUMABLE_PREFIX = "federation."  # a resumed run may change only how the federation runs
# Exit status of a run that completed its rounds but some of them released no generator
# (fewer than federation.min_sites accepted updates): 1 is "stopped early", 2 an error.
EXIT_ROUNDS_FAILED = 3


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="federated GAN training of simulated hospital sites (Flower simulation engine)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(p, config_required=False)
    p.add_argument("--out", type=Path, help="run directory to create")
    p.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue a run after its last completed round",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=run)


def resolve_run(args: argparse.Namespace) -> tuple[Config, Path]:
    """(config, run dir) of a new run (CONFIG --out) or a resumed one (--resume)."""
    overrides = list(args.overrides)
    if args.config and "=" in args.config:  # `--resume DIR key=value`: argparse took it as CONFIG
        overrides.insert(0, args.config)
        args.config = None
    if args.resume:
        run_dir = args.resume.expanduser().resolve()
        saved = RunDir(run_dir).config
        if not saved.is_file():
            raise ConfigError(
                "--resume", f"{run_dir} is not a fedsynth run directory (no {saved.name})"
            )
        bad = [o for o in overrides if not o.startswith(RESUMABLE_PREFIX)]
        if bad or args.config:
            raise ConfigError(
                bad[0] if bad else "CONFIG",
                "a resumed run keeps its config; only federation.* keys may change (e.g. federation.rounds=12)",
            )
        return load_config(saved, overrides), run_dir
    if not args.config or not args.out:
        raise ConfigError("CONFIG", "give CONFIG and --out RUN_DIR, or --resume RUN_DIR")
    from fedsynth.server.strategy import check_aggregation  # imports Flower: not at --help

    run_dir = args.out.expanduser().resolve()
    cfg = load_config(args.config, overrides)  # first: a bad config must not cost the folder
    check_aggregation(cfg, cfg.split.sites)
    clear_for_new_output(run_dir, args.overwrite)
    return cfg, run_dir


def run(args: argparse.Namespace) -> Summary:
    from fedsynth.simulation import simulate

    cfg, run_dir = resolve_run(args)
    run = RunDir(run_dir)
    announce_tensorboard(run.tensorboard)
    done = simulate(cfg, run_dir)
    outputs = {"run directory": run.root, "generator": run.generator, "metrics": run.metrics,
               "privacy": run.privacy, "samples": run.samples, "tensorboard": run.tensorboard}  # fmt: skip
    facts: dict = {"rounds": done, "rounds_planned": cfg.federation.rounds}
    if run.privacy.is_file():
        privacy = json.loads(run.privacy.read_text())
        facts.update(epsilon=privacy["worst_epsilon"], delta=privacy["delta"],
                     privacy_statement=privacy["statement"])  # fmt: skip
    if done < cfg.federation.rounds:
        headline = (f"stopped after round {done} of {cfg.federation.rounds}; resume with "
                    f"'fedsynth simulate --resume {run_dir}'")  # fmt: skip
        return Summary("simulate", headline, outputs, facts, exit_code=1)
    unreleased = (run.read_server_state() or {}).get("unreleased") or []
    if unreleased:
        facts["unreleased_rounds"] = unreleased
        return Summary("simulate", unreleased_headline(done, unreleased), outputs, facts,
                       exit_code=EXIT_ROUNDS_FAILED)  # fmt: skip
    return Summary("simulate", f"{done} federated rounds", outputs, facts)


def unreleased_headline(done: int, unreleased: list[dict]) -> str:
    """What a finished run with failed rounds says: which rounds, why, who was charged."""
    first = unreleased[0]
    charged = sorted({site for u in unreleased for site in u["charged"]})
    return (
        f"{done} federated rounds, but {len(unreleased)} released no generator (round(s) "
        f"{', '.join(str(u['round']) for u in unreleased)}; round {first['round']}: "
        f"{first['reason']}); sites charged for them: {', '.join(charged) or 'none'} "
        "(privacy.json: unreleased_rounds)"
    )
