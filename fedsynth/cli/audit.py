"""``fedsynth audit RUN_DIR [--out DIR] [--synthetic COHORT]``: empirical privacy audit.

Membership inference against the run's released generator (reconstruction error of member
vs held-out patients: ROC AUC with a bootstrap CI, TPR at 1% and 0.1% FPR, per site and
overall) and memorisation (synthetic slices' nearest training vs held-out slices). Writes
audit.json, audit.md, roc.png, memorisation.png and closest_pairs.png into RUN_DIR/audit
(or --out). An empirical audit is a lower bound on leakage, not a proof of privacy.
"""

from __future__ import annotations

import argparse

from fedsynth.cli._common import Summary
from fedsynth.common.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "audit",
        help="membership-inference and memorisation audit of a run's generator",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="training run directory (train/simulate)")
    p.add_argument("--out", help="output folder (default RUN_DIR/audit)")
    p.add_argument(
        "--synthetic",
        metavar="COHORT",
        help="synthetic BraTS cohort to test for memorisation (default: the generator applied "
        "to the held-out label maps)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the AUC CI")
    p.add_argument("--max-synthetic", type=int, default=2000, help="synthetic slices compared")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> Summary:
    from fedsynth.audit.writer import run_audit

    if args.bootstrap < 0:
        raise ConfigError("--bootstrap", f"must be >= 0, got {args.bootstrap}")
    if args.max_synthetic < 1:
        raise ConfigError("--max-synthetic", f"must be >= 1, got {args.max_synthetic}")
    result = run_audit(
        args.run_dir, args.out, synthetic_dir=args.synthetic, overwrite=args.overwrite,
        resamples=args.bootstrap, max_synthetic=args.max_synthetic, seed=args.seed,
        device=args.device,
    )  # fmt: skip
    overall = result.report["membership"]["overall"]
    flagged = result.report["memorisation"]["flagged_fraction"]
    headline = (f"membership AUC {overall['auc']:.3f} ({overall['members']} members vs "
                f"{overall['nonmembers']} non-members); memorisation: "
                f"{100 * (flagged or 0):.1f}% of synthetic slices flagged (about 5% by chance)")  # fmt: skip
    facts = {"membership_auc": overall["auc"], "memorisation_flagged_fraction": flagged}
    return Summary("audit", headline, {"audit": result.out}, facts)
