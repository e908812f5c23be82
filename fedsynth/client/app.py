"""The ClientApp: one hospital site training the pix2pix GAN for one round.

Per train message (global generator + ConfigRecord with the resolved config as YAML, the
server round, the run directory and the planned rounds) the site:

1. resends its stored reply if it already answered this very request (same round, same
   global weights: a resumed server asking again), so a server restart costs no privacy;
2. otherwise restores its trainer (discriminator, Adam states, privacy accountant, RNG
   states) from its state dir, declines if ``local_steps`` more steps would exceed its
   privacy budget, trains ``federation.local_steps`` steps from the global generator with
   the same ``LocalTrainer`` as central training, and saves its state;
3. replies with exactly one ArrayRecord (the generator's weights, nothing else) and one
   MetricRecord (see ``fedsynth.server.strategy.REQUIRED_METRICS``).

Any error becomes ``SiteError("[site <name>] ...")``, which Flower turns into an error reply the
server logs; the federation carries on with the other sites.
"""

from __future__ import annotations

import hashlib
import logging
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsynth.client.site import SiteIdentity, check_site_policy, identify_site, load_site_data
from fedsynth.common.config import Config, config_from_dict, config_to_yaml
from fedsynth.common.errors import ConfigError, FedsynthError, PrivacyBudgetError
from fedsynth.common.rundir import SITE_LAST_REPLY as REPLY_FILE
from fedsynth.common.rundir import SITE_TRAINER_STATE as STATE_FILE

if TYPE_CHECKING:
    from fedsynth.common.gan.trainer import LocalTrainer, StepReport

log = logging.getLogger(__name__)


class SiteError(FedsynthError):
    """A site could not train this round; the message names the site and the cause."""


@dataclass(frozen=True)
class TrainRequest:
    """One train message, parsed. ``weights``: generator state, name -> float32 array."""

    cfg: Config
    server_round: int
    rounds: int
    run_dir: str
    weights: dict[str, np.ndarray]
    digest: str  # sha256 of the global weights: identifies a repeated request

    @classmethod
    def from_message(cls, msg: Message) -> TrainRequest:
        from omegaconf import OmegaConf

        content = msg.content
        config: ConfigRecord = next(iter(content.config_records.values()), ConfigRecord())
        if "config-yaml" not in config or len(content.array_records) != 1:
            raise ConfigError("config-yaml", "the train message lacks the config or the generator")
        cfg = config_from_dict(OmegaConf.to_container(OmegaConf.create(str(config["config-yaml"]))))  # type: ignore[arg-type]
        arrays = next(iter(content.array_records.values()))
        weights = {k: a.numpy() for k, a in arrays.items()}
        return cls(
            cfg=cfg,
            server_round=int(config["server-round"]),
            rounds=int(config.get("rounds", cfg.federation.rounds)),
            run_dir=str(config.get("run-dir", "")),
            weights=weights,
            digest=weights_digest(weights),
        )


def weights_digest(weights: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(weights):
        h.update(k.encode())
        h.update(np.ascontiguousarray(weights[k]).tobytes())
    return h.hexdigest()


def site_seed(cfg: Config, site: SiteIdentity) -> int:
    """Each site its own sampling and noise seed, fixed by the config seed and the site name."""
    return (cfg.seed * 1_000_003 + zlib.crc32(site.name.encode())) % 2**31


# One trainer per process, reused while its state file is the one it last wrote: a Ray
# worker serving the same site again skips rebuilding networks and recalibrating noise.
_SESSION: dict[str, Any] = {}


def open_trainer(site: SiteIdentity, req: TrainRequest) -> LocalTrainer:
    """The site's trainer, restored from its state dir when it has trained before."""
    from fedsynth.common.gan.trainer import LocalTrainer

    state = site.state_dir / STATE_FILE
    key = f"{site.state_dir}|{req.rounds}|{config_to_yaml(req.cfg)}"
    if _SESSION.get("key") == key and _SESSION.get("stamp") == _stamp(state):
        return _SESSION["trainer"]
    cache = load_site_data(req.cfg, site)
    trainer = LocalTrainer(
        req.cfg,
        cache,
        planned_steps=req.rounds * req.cfg.federation.local_steps,
        site=site.name,
        seed=site_seed(req.cfg, site),
    )
    if state.is_file():
        trainer.load(state)
    _SESSION.update(key=key, stamp=_stamp(state), trainer=trainer)
    return trainer


def _stamp(path: Path) -> tuple[int, int] | None:
    return (path.stat().st_mtime_ns, path.stat().st_size) if path.is_file() else None


def save_trainer(site: SiteIdentity, trainer: LocalTrainer) -> None:
    state = site.state_dir / STATE_FILE
    trainer.save(state)
    if _SESSION.get("trainer") is trainer:
        _SESSION["stamp"] = _stamp(state)


def reply_metrics(
    trainer: LocalTrainer, site: SiteIdentity, report: StepReport | None, resent: bool = False
) -> dict[str, Any]:
    """The MetricRecord content of a reply (``report`` None: the site declined)."""
    privacy = trainer.privacy()
    history = privacy.history
    nan = math.nan
    return {
        "num-examples": trainer.patients,
        "site-index": site.index,
        "declined": int(report is None),
        "resent": int(resent),
        "steps": report.steps if report else 0,
        "steps-total": trainer.steps_done,
        "epsilon": trainer.epsilon,
        "delta": trainer.cfg.privacy.delta,
        "noise-multiplier": privacy.noise_multiplier or 0.0,
        "step-noise-multiplier": privacy.step_noise_multiplier or 0.0,
        "max-grad-norm": privacy.max_grad_norm or 0.0,
        "sample-rate": privacy.sample_rate,
        "seconds": report.seconds if report else 0.0,
        "slices": report.slices if report else 0,
        "loss-d": report.loss_d if report else nan,
        "loss-g-adv": report.loss_g_adv if report else nan,
        "loss-g-l1": report.loss_g_l1 if report else nan,
        "history-noise-multiplier": [float(h["noise_multiplier"]) for h in history],
        "history-sample-rate": [float(h["sample_rate"]) for h in history],
        "history-steps": [int(h["steps"]) for h in history],
    }


def reply_content(weights: dict[str, np.ndarray] | None, metrics: dict[str, Any]) -> RecordDict:
    """Exactly one ArrayRecord (the generator; empty when declined) and one MetricRecord."""
    arrays = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in (weights or {}).items()})
    return RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)})


def store_reply(
    site: SiteIdentity, req: TrainRequest, weights: dict[str, np.ndarray], metrics: dict[str, Any]
) -> None:
    import torch

    from fedsynth.common.io.checkpoints import save_checkpoint

    save_checkpoint(
        site.state_dir / REPLY_FILE,
        {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()},
        architecture="generator-reply",
        config_hash=req.digest,
        step=req.server_round,
        extra={
            "metrics": {
                k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in metrics.items()
            }
        },
    )


def stored_reply(site: SiteIdentity, req: TrainRequest) -> RecordDict | None:
    """The reply already sent for this exact request (round and global weights), if any."""
    from fedsynth.common.io.checkpoints import load_checkpoint

    path = site.state_dir / REPLY_FILE
    if not path.is_file():
        return None
    c = load_checkpoint(path, architecture="generator-reply")
    if c.step != req.server_round or c.config_hash != req.digest:
        return None
    metrics = {k: (math.nan if v is None else v) for k, v in c.extra["metrics"].items()}
    metrics["resent"] = 1
    log.info(
        "%s: resending its reply to round %d (no new privacy spent)", site.name, req.server_round
    )
    return reply_content({k: v.numpy() for k, v in c.tensors.items()}, metrics)


def train_round(site: SiteIdentity, req: TrainRequest) -> RecordDict:
    """One round at ``site`` (see the module docstring)."""
    check_site_policy(req.cfg, site)
    site.state_dir.mkdir(parents=True, exist_ok=True)
    again = stored_reply(site, req)
    if again is not None:
        return again
    trainer = open_trainer(site, req)
    steps = req.cfg.federation.local_steps
    try:
        trainer.check_budget(steps)
    except PrivacyBudgetError as e:
        log.warning("%s declines round %d: %s", site.name, req.server_round, e)
        return reply_content(None, reply_metrics(trainer, site, None))
    trainer.set_generator_weights(
        req.weights, source=f"global generator of round {req.server_round}"
    )
    report = trainer.train_steps(steps)
    save_trainer(site, trainer)
    weights = trainer.get_generator_weights()
    metrics = reply_metrics(trainer, site, report)
    store_reply(site, req, weights, metrics)
    return reply_content(weights, metrics)


app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Flower entry point: parse, train one round, reply; errors name the site."""
    req = TrainRequest.from_message(msg)
    site = identify_site(dict(context.node_config), req.run_dir)
    try:
        content = train_round(site, req)
    except Exception as e:  # any failure: one clear line in the server log, not a traceback
        raise SiteError(f"[site {site.name}] {type(e).__name__}: {e}") from e
    return Message(content, reply_to=msg)
