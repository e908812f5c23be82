"""ClientApp of the fedavg arm: one site trains the global segmenter on its own slices.

Each train message carries the global weights (one ArrayRecord) and a ConfigRecord with the
resolved config as YAML (``config-yaml``), the arm's ``seed``, ``local-steps`` and
``server-round``. The site is ``site-<partition-id>`` of the config's split (simulation). The
reply holds the updated weights and a MetricRecord with only ``num-examples`` (the site's
patients, FedAvg's weight). Images never leave the site. Not DP: a non-private baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsynth.common import wire
from fedsynth.common.config import Config
from fedsynth.common.errors import ConfigError

app = ClientApp()


@dataclass(frozen=True)
class SegTrainRequest:
    cfg: Config
    seed: int
    local_steps: int
    server_round: int

    @classmethod
    def from_config_record(cls, config: ConfigRecord) -> SegTrainRequest:
        missing = [
            k for k in ("config-yaml", "seed", "local-steps", "server-round") if k not in config
        ]
        if missing:
            raise ConfigError(missing[0], "missing from the fedavg train message")
        return cls(
            cfg=wire.parse_config_yaml(str(config["config-yaml"])),
            seed=int(config["seed"]),  # type: ignore[arg-type]
            local_steps=int(config["local-steps"]),  # type: ignore[arg-type]
            server_round=int(config["server-round"]),  # type: ignore[arg-type]
        )


def site_of(node_config: dict[str, Any], sites: list[str]) -> tuple[int, str]:
    """(index, name) of this SuperNode's site from its ``partition-id``."""
    if "partition-id" not in node_config:
        raise ConfigError(
            "partition-id", "the fedavg arm runs in simulation: node_config needs partition-id"
        )
    index = int(node_config["partition-id"])
    if not 0 <= index < len(sites):
        raise ConfigError(
            "partition-id", f"{index} is not a site index (sites: {', '.join(sites)})"
        )
    return index, sites[index]


@app.train()
def train(msg: Message, context: Context) -> Message:
    import numpy as np

    from fedsynth.benchmark.segmenter import segmenter_for
    from fedsynth.benchmark.training import TrainSettings, split_validation, train_segmenter
    from fedsynth.common.data.cache import site_slices
    from fedsynth.common.data.cohort import load_split, resolve_cohort
    from fedsynth.common.gan.trainer import resolve_device

    req = SegTrainRequest.from_config_record(next(iter(msg.content.config_records.values())))
    b = req.cfg.benchmark
    split = load_split(resolve_cohort(req.cfg))
    index, site = site_of(dict(context.node_config), list(split.sites))
    cache = site_slices(req.cfg, split.sites[site], site)
    model = segmenter_for(b)
    model.load_state_dict(next(iter(msg.content.array_records.values())).to_torch_state_dict())
    # A distinct, reproducible sampling stream per (arm seed, round, site).
    seed = int(np.random.SeedSequence([req.seed, req.server_round, index]).generate_state(1)[0])
    settings = TrainSettings.from_config(b, seed, steps=req.local_steps)
    # The validation patients this seed holds out (the same as in the other arms) are scored
    # centrally by the server's evaluate step, never trained on.
    train_part, _ = split_validation([cache], b.val_fraction, req.seed)
    train_segmenter(model, train_part, [], settings, resolve_device(b.device), progress=False)
    # The loss is data-dependent: it stays here. The patient count is the public FedAvg weight.
    metrics = MetricRecord({"num-examples": len(cache.patients)})
    arrays = ArrayRecord(model.state_dict())
    return Message(content=RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)
