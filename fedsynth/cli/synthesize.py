"""``fedsynth synthesize``: a trained generator + label bank -> synthetic BraTS cohort + datasheet."""

from __future__ import annotations

import argparse

from fedsynth.cli._common import Summary, add_config_args, config_from_args
from fedsynth.common.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "synthesize",
        help="write a synthetic BraTS-layout cohort with a datasheet",
        description=(
            "Generate N synthetic cases: label maps from the label bank (synthesis.label_source: "
            "atlas or cohort) with the tumour edits of the synthesis section, images from the "
            "generator checkpoint. Writes OUT/<id>/ in BraTS 2021 naming, manifest.csv, "
            "datasheet.json (checkpoint hash, run, rounds, sites, epsilon/delta, provenance) and "
            "contact_sheet.png."
        ),
    )
    p.add_argument("--checkpoint", required=True, help="generator checkpoint (.safetensors)")
    p.add_argument("--out", required=True, help="output cohort folder (must not exist)")
    p.add_argument(
        "--cases", type=int, default=None, help="number of cases (default synthesis.cases)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_args(p, config_required=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> Summary:
    from fedsynth.synthesis.generate import synthesize

    if args.config is not None and "=" in args.config:  # only overrides were given
        args.overrides = [args.config, *args.overrides]
        args.config = None
    if args.cases is not None and args.cases < 1:
        raise ConfigError("--cases", f"must be >= 1, got {args.cases}")
    cfg = config_from_args(args)
    result = synthesize(
        cfg, args.checkpoint, args.out, cases=args.cases, overwrite=args.overwrite,
        progress=not args.no_progress,
    )  # fmt: skip
    rate = result.slices / max(result.seconds, 1e-9)
    return Summary(
        "synthesize",
        f"wrote {result.cases} synthetic cases ({result.slices} slices, {rate:.1f} slices/s)",
        {"cohort": result.out, "datasheet": result.out / "datasheet.json"},
        {"cases": result.cases, "slices": result.slices, "slices_per_s": round(rate, 2)},
    )
