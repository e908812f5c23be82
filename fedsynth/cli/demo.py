"""``fedsynth demo``: the main job on the built-in phantom data (what ``make demo`` runs).

    fedsynth demo --out runs/demo [--config configs/demo.yaml] [key=value ...]

Re-running on the same --out resumes: finished stages are kept.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fedsynth.cli._common import Summary
from fedsynth.common.config import load_config

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the main job end to end on phantom data (make demo)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, required=True, help="demo output directory")
    p.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help=f"YAML config (default: {DEFAULT_CONFIG.name} of this checkout)",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> Summary:

    from fedsynth.demo import run_demo

    cfg = load_config(args.config, args.overrides)
    out = args.out.expanduser().resolve()
    start = time.perf_counter()
    summaries = run_demo(cfg, out)
    fed = summaries["federated"]
    outputs = {
        "everything": out,
        "cohort preview": summaries["cohort"]["preview"],
        "federated run": fed["run_dir"],
        "synthetic cohort": summaries["synthesis"]["cohort"],
        "contact sheet": summaries["synthesis"]["contact_sheet"],
        "benchmark": summaries["benchmark"]["results"],
        "audit": summaries["audit"]["audit_dir"],
        "report": summaries["report"]["report"],
    }
    facts = {
        "rounds": fed["rounds"],
        "privacy_statement": fed["privacy"],
        "membership_auc": round(summaries["audit"]["membership_auc"], 2),
    }
    took = time.perf_counter() - start
    return Summary("demo", f"fedsynth demo finished in {took:.0f} s", outputs, facts)
