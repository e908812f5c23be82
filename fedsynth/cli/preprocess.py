"""``fedsynth preprocess CONFIG [key=value ...]``: build the slice caches of a config.

Resolves the config's cohort and split (generating the phantom cohort on first use; a real
cohort is validated first, and with data.strict=false its invalid cases are skipped and
listed), then builds, or reuses when current, the slice cache of the held-out test patients
and of every training site, and prints where each lives and how many patients and slices it
holds. Nothing is written into the data folder: the split and the caches go to
data.cache_dir.
Training builds the same caches on first use; running this first moves that wait out of
training and surfaces data problems early.
"""

from __future__ import annotations

import argparse

from fedsynth.cli._common import add_config_args, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "preprocess",
        help="build the per-site slice caches of a config",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Deferred: the data layer pulls in nibabel and scipy, which `fedsynth --help` does not need.
    from fedsynth.common.data.cache import site_slices
    from fedsynth.common.data.cohort import (
        SKIPPED_RECORD,
        load_split,
        resolve_cohort,
        skipped_cases,
    )
    from fedsynth.common.data.splits import natural_key

    cfg = config_from_args(args)
    cohort = resolve_cohort(cfg)
    split = load_split(cohort)
    print(f"cohort: {cohort}")
    skipped = skipped_cases(cohort)
    if skipped:
        print(f"skipped {len(skipped)} invalid case(s) (reasons in {cohort / SKIPPED_RECORD}):")
        for case_id, problems in sorted(skipped.items()):
            print(
                f"  {case_id}: {problems[0]}{f' (+{len(problems) - 1} more)' if len(problems) > 1 else ''}"
            )
    groups = [("test", split.test)]
    groups += [(site, split.sites[site]) for site in sorted(split.sites, key=natural_key)]
    for name, subjects in groups:
        cache = site_slices(cfg, list(subjects), name)
        state = "built" if cache.built else "reused"
        tumour = int(cache.has_tumour.sum())
        skipped = len(cache.manifest.get("skipped", {}))
        print(
            f"{name:>8}: {len(cache.patients):4d} patients {len(cache):6d} slices "
            f"({tumour} with tumour, {cache.image_size}x{cache.image_size})"
            f"{f', {skipped} cases skipped' if skipped else ''} [{state}] {cache.path}"
        )
    return 0
