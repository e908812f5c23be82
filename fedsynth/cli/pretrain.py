"""``fedsynth pretrain CONFIG --out RUN [key=value ...]``: pre-train on PUBLIC data, no DP.

Trains the generator (and a discriminator for the sites to start from) on the cohort in the
config's ``pretrain`` section: by default a phantom cohort of its own (other subjects, other
scanner profiles); ``pretrain.source=cohort pretrain.cohort_dir=DIR`` declares a BraTS-layout
folder public (e.g. the public BraTS training set). Refuses to start if that cohort shares a
subject id or an image with the sites or the test patients. Writes RUN/init.safetensors:
train or federate from it with ``model.init=RUN``.
"""

from __future__ import annotations

import argparse

from fedsynth.cli._common import add_config_args, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="pre-train the generator without DP on a public cohort (model.init for later runs)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(p)
    p.add_argument("--out", required=True, help="new run directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fedsynth.central import set_determinism
    from fedsynth.pretrain.run import describe_public, pretrain

    set_determinism()
    cfg = config_from_args(args)
    path = pretrain(cfg, args.out, overwrite=args.overwrite, progress=not args.no_progress)
    print(f"pre-trained on the {describe_public(cfg)}")
    print(f"init weights: {path}  (use model.init={path.parent})")
    return 0
