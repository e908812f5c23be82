"""``fedsynth certs --out DIR``: development TLS certificates and SuperNode keys."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedsynth.cli._common import Summary

DESCRIPTION = """\
Create a development CA, the SuperLink's TLS certificate and one SuperNode authentication
key pair per site (docs/deploy.md):

  DIR/ca.crt                 give to every site and every flwr user (--root-certificates)
  DIR/ca.key                 the CA's key (0600): keep it away from the SuperLink
  DIR/server.crt, server.key flower-superlink --ssl-certfile / --ssl-keyfile (0600 key);
                             valid for localhost, 127.0.0.1, ::1 and --server-host
  DIR/sites/<site>/auth.key  flower-supernode --auth-supernode-private-key (0600)
  DIR/sites/<site>/auth.pub  flwr supernode register <auth.pub> <superlink>

For production, use the hospital's PKI for the server certificate and let each site make
its own key pair (ssh-keygen -t ecdsa -b 384 -N '' -f auth.key): private keys never travel."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "certs",
        help="development CA, SuperLink TLS certificate and per-site SuperNode keys",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write")
    p.add_argument(
        "--sites", default="", help="comma-separated site names, e.g. site-0,site-1 (keys)"
    )
    p.add_argument(
        "--server-host",
        default="localhost",
        help="DNS name or IP the sites use to reach the SuperLink (added to the certificate)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing CA in DIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> Summary:
    from fedsynth.deploy.certs import make_dev_certificates, parse_sites

    made = make_dev_certificates(
        args.out, parse_sites(args.sites), args.server_host, overwrite=args.overwrite
    )
    outputs = {"CA certificate": made.ca_cert, "CA key (keep private)": made.ca_key,
               "SuperLink certificate": made.server_cert, "SuperLink key": made.server_key}  # fmt: skip
    for site in made.sites:
        outputs[f"{site.name} key (private)"] = site.private_key
        outputs[f"{site.name} public key (register)"] = site.public_key
    return Summary("certs", f"development certificates for {len(made.sites)} sites", outputs)
