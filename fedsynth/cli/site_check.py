"""``fedsynth site-check``: a site's dry run of its SuperNode node config before joining."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedsynth.cli._common import Summary
from fedsynth.common.config import load_config

DESCRIPTION = """\
Check that this site can join a federation, without contacting anyone (except a TLS
handshake with --superlink): the node config parses, the state dir is writable, the
stored trainer state and privacy spend (if any) are summarised, every case in --data-path
is read, validated and cached as the first round will, and the certificates are usable.

  fedsynth site-check --data-path /data/brats-site --state-dir /var/lib/fedsynth \\
      --site-name site-2 --root-certificates ca.crt --auth-key auth.key [CONFIG]

CONFIG (default: fedsynth's built-in defaults) should be the consortium's config: its
preprocess.* and data.* settings decide how the cache is built. Exit status 0 when every
check passes, 1 otherwise; the flower-supernode --node-config line is printed."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "site-check",
        help="dry run of a site's node config: data, state dir, privacy state, certificates",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", help="the consortium's YAML config (optional)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--data-path", type=Path, required=True, help="this site's BraTS folder")
    p.add_argument("--state-dir", type=Path, required=True, help="this site's private state")
    p.add_argument("--site-name", required=True, help="e.g. site-2 (how the server reports it)")
    p.add_argument("--root-certificates", type=Path, help="CA bundle of the SuperLink")
    p.add_argument("--auth-key", type=Path, help="SuperNode authentication private key")
    p.add_argument("--superlink", metavar="HOST:PORT", help="also try a TLS handshake")
    p.add_argument(
        "--max-epsilon",
        type=float,
        help="this site's own privacy ceiling (node config max-epsilon): check the config against it",
    )
    p.add_argument(
        "--max-delta",
        type=float,
        help="this site's own delta ceiling (node config max-delta); both are required to train",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> Summary:
    from fedsynth.deploy.site_check import check_site

    overrides = list(args.overrides)
    if args.config and "=" in args.config:  # only overrides given: argparse took one as CONFIG
        overrides.insert(0, args.config)
        args.config = None
    cfg = load_config(args.config, overrides)
    report = check_site(
        cfg,
        data_path=args.data_path,
        state_dir=args.state_dir,
        site_name=args.site_name,
        root_certificates=args.root_certificates,
        auth_key=args.auth_key,
        superlink=args.superlink,
        max_epsilon=args.max_epsilon,
        max_delta=args.max_delta,
    )
    return Summary(
        "site-check",
        "all checks passed" if report.ok else "some checks FAILED",
        facts={c.name: f"{'OK  ' if c.ok else 'FAIL'}  {c.detail}" for c in report.checks},
        exit_code=0 if report.ok else 1,
    )
