"""``fedsynth config show [CONFIG] [key=value ...]``: print the resolved configuration.

Every key of the schema (fedsynth/common/config.py) with the value a command given the same
CONFIG and overrides would use: defaults, then the YAML file, then the overrides. The output
is YAML that ``load_config`` reads back to the same configuration. Without CONFIG: the
defaults. See docs/configuration.md for where each kind of setting lives.
"""

from __future__ import annotations

import argparse

from fedsynth.cli._common import add_config_args
from fedsynth.common.config import config_to_yaml, load_config


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "config",
        help="show the resolved configuration (defaults < CONFIG < key=value overrides)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser(
        "show", help="print every key with its resolved value, as YAML", description=__doc__
    )
    add_config_args(show, config_required=False)
    show.set_defaults(func=run_show)


def run_show(args: argparse.Namespace) -> int:
    print(config_to_yaml(load_config(args.config, args.overrides)), end="")
    return 0
