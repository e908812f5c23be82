"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse

from fedsynth.common.config import Config, load_config


def add_config_args(parser: argparse.ArgumentParser, config_required: bool = True) -> None:
    parser.add_argument(
        "config",
        nargs=None if config_required else "?",
        help="YAML config (e.g. configs/smoke.yaml, configs/demo.yaml)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. train.steps=20 privacy.target_epsilon=5",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)
