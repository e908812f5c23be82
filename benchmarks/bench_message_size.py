"""Bytes per federated message: the whole generator vs the trainable set (privacy.trainable).

    python benchmarks/bench_message_size.py [--config configs/demo.yaml ...]
        [--trainable all norm+bias head decoder] [--set KEY=VALUE ...]
        [--out runs/bench/message_size.json]

For each config and ``privacy.trainable`` choice: the size of a site's reply and of a train
request after round 1, serialised with Flower's own protobuf serde (what the gRPC transport
sends, before any compression), built with the same functions the apps use
(``fedsynth.common.wire``). The round-1 request always carries the whole generator (the sites
take the frozen parameters from it). Counts, not timings: safe on a busy machine.
The ratio is against ``all`` of the same config.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flwr.app import ConfigRecord, RecordDict
from flwr.common.serde import recorddict_to_proto

from fedsynth.common import wire
from fedsynth.common.config import load_config
from fedsynth.common.io.atomic import atomic_write_json
from fedsynth.server.app import initial_generator, trainable_names

CHOICES = ("all", "norm+bias", "head", "decoder")


def _metrics() -> dict:
    """A reply's MetricRecord with a 10-round accountant history (sizes as in a real run)."""
    values = {
        k: ([0.0] * 10 if m.kind is list else m.kind(1)) for k, m in wire.REPLY_METRICS.items()
    }
    values["epsilon"] = 8.0
    return values


def sizes(config: str, trainable: str, overrides: list[str]) -> dict:
    """Bytes of one reply and one later-round request for ``config`` with ``trainable``."""
    cfg = load_config(config, [*overrides, f"privacy.trainable={trainable}"])
    weights = {k: v.astype("float32") for k, v in initial_generator(cfg).items()}
    names = trainable_names(cfg)
    sent = weights if names is None else wire.trainable_part(weights, names)
    reply = wire.reply_content(sent, _metrics())
    request = RecordDict(
        {
            wire.ARRAYS: wire.generator_record(sent),
            wire.CONFIG: ConfigRecord(
                {**wire.request_config(cfg, "runs/x", cfg.federation.rounds), "server-round": 2}
            ),
        }
    )
    return {
        "config": config,
        "trainable": trainable,
        "generator": cfg.model.generator,
        "tensors": len(sent),
        "values": int(sum(v.size for v in sent.values())),
        "values_total": int(sum(v.size for v in weights.values())),
        "reply_bytes": recorddict_to_proto(reply).ByteSize(),
        "request_bytes": recorddict_to_proto(request).ByteSize(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", nargs="+", default=["configs/demo.yaml", "configs/study.yaml"])
    p.add_argument("--trainable", nargs="+", default=list(CHOICES), choices=CHOICES)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--out", type=Path, default=Path("runs/bench/message_size.json"))
    args = p.parse_args(argv)
    rows = []
    for config in args.config:
        base = None
        for choice in args.trainable:
            try:
                row = sizes(config, choice, args.set)
            except Exception as e:  # e.g. "decoder" on a generator without a decoder module
                print(f"{config} {choice}: skipped ({e})", file=sys.stderr)
                continue
            base = base or (row if choice == "all" else None)
            if base:
                row["reply_ratio_vs_all"] = row["reply_bytes"] / base["reply_bytes"]
            rows.append(row)
    print(f"{'config':<22} {'trainable':<10} {'tensors':>7} {'values':>9} {'reply B':>10} "
          f"{'request B':>10} {'vs all':>7}")  # fmt: skip
    for r in rows:
        ratio = r.get("reply_ratio_vs_all")
        print(
            f"{r['config']:<22} {r['trainable']:<10} {r['tensors']:>7} {r['values']:>9} "
            f"{r['reply_bytes']:>10} {r['request_bytes']:>10} "
            f"{'' if ratio is None else f'{ratio:.4f}':>7}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, {"rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
