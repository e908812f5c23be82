"""The ClientApp: one hospital site training the pix2pix GAN for one round.

Per train request (``fedsynth.common.wire``: global generator, the run's config as plain
YAML, the server round, the run directory and the planned rounds) the site:

1. checks the request against its own policy (node config: privacy ceiling, DP required,
   budget fixed at its first round; ``fedsynth.client.site``) and its state dir
   (``fedsynth.client.state``: refuses to train from scratch after a lost state);
2. resends its stored reply if it already answered this very request (same round, same
   global weights: a resumed server asking again), so a server restart costs no privacy;
3. otherwise restores its trainer (discriminator, Adam states, privacy accountant, RNG
   states and the secret its DP noise comes from), declines if ``local_steps`` more steps
   would exceed its privacy budget, trains ``federation.local_steps`` steps from the global
   generator with the same ``LocalTrainer`` as central training, and saves its state;
4. replies with the noised generator (only its trainable parameters when the request says
   ``exchange`` = ``trainable``; the frozen ones are the public init the server holds) and
   the data-independent counters of
   ``wire.REPLY_METRICS``. Losses, the number of patients sampled and the wall time are
   data-dependent and unaccounted: they go to the site's own ``log.jsonl`` in its state dir.

Any error becomes ``SiteError("[site <name>] ...")``, which Flower turns into an error reply the
server logs; the federation carries on with the other sites.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedsynth.client import state as site_state
from fedsynth.client.site import SiteIdentity, check_site_policy, identify_site, load_site_data
from fedsynth.common import wire
from fedsynth.common.config import Config, config_to_yaml
from fedsynth.common.errors import ConfigError, FedsynthError, PrivacyBudgetError
from fedsynth.common.gan.trainer import LocalTrainer, StepReport
from fedsynth.common.io.atomic import append_jsonl
from fedsynth.common.io.checkpoints import load_checkpoint, save_checkpoint, saved_step
from fedsynth.common.wire import TrainRequest, reply_content, weights_digest

log = logging.getLogger(__name__)

STATE_FILE = site_state.STATE_FILE
REPLY_FILE = site_state.REPLY_FILE
LOG_FILE = site_state.LOG_FILE
__all__ = ["TrainRequest", "app", "train_round", "weights_digest"]


class SiteError(FedsynthError):
    """A site could not train this round; the message names the site and the cause."""


def public_site_seed(cfg: Config, site: SiteIdentity) -> int:
    """A site's PUBLIC seed, from the config seed and the site name: used only without DP or
    with ``privacy.insecure_reproducible_noise`` (anyone who knows the config can replay it).
    With DP the trainer draws a secret instead (fedsynth.common.privacy.randomness)."""
    return (cfg.seed * 1_000_003 + zlib.crc32(site.name.encode())) % 2**31


# Trainers kept per process. Flower hands each message to whichever Ray worker is idle, so
# sites move between workers from round to round; rebuilding a site's trainer (networks, DP
# wrappers, data) on a worker cost 0.1-0.25 s of a ~3 s round (demo networks, measured with
# timestamps in a 2-site simulation). A kept trainer is used as it is while its state file
# is the one it last wrote or read, and otherwise reloads that file (what a rebuilt trainer
# would load: the same state). Each kept trainer costs ~80 MB (demo networks and site
# data); two cover two sites per worker.
TRAINERS_KEPT = 2
_SESSIONS: OrderedDict[str, tuple[tuple[int, int, int] | None, LocalTrainer]] = OrderedDict()


def open_trainer(site: SiteIdentity, req: TrainRequest) -> LocalTrainer:
    """The site's trainer, restored from its state dir when it has trained before."""
    state = site.state_dir / STATE_FILE
    # Keyed by the received text: re-serialising the parsed config cost ~0.1 s per site-round.
    key = f"{site.state_dir}|{req.rounds}|{req.config_text or config_to_yaml(req.cfg)}"
    stamp = _stamp(state)
    kept = _SESSIONS.pop(key, None)
    if kept is not None and stamp is not None:
        trainer = kept[1]
        # Another worker trained the site since: continue from its state. The file's inode,
        # mtime and size can repeat (inode reuse, coarse clocks), so the step count saved in
        # the file, which grows with every training save, must match too; a stale trainer
        # would replay noise and samples another worker already used in a released update.
        if kept[0] != stamp or saved_step(state) != trainer.steps_done:
            trainer.load(state)
    else:  # first time here, or the state is gone (check_state let it start afresh)
        trainer = LocalTrainer(
            req.cfg,
            load_site_data(req.cfg, site),
            planned_steps=req.rounds * req.cfg.federation.local_steps,
            site=site.name,
            seed=public_site_seed(req.cfg, site),
        )
        if stamp is not None:
            trainer.load(state)
    _SESSIONS[key] = (stamp, trainer)
    while len(_SESSIONS) > TRAINERS_KEPT:
        _SESSIONS.popitem(last=False)
    return trainer


def forget_trainer(trainer: LocalTrainer) -> None:
    """Drop ``trainer`` from the kept ones (the next round rebuilds it from its state file)."""
    for key in [k for k, (_, kept) in _SESSIONS.items() if kept is trainer]:
        del _SESSIONS[key]


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """Identity of a state file's version: every save renames a new file into place (a new
    inode), so another process's save changes it even within the clock's resolution."""
    if not path.is_file():
        return None
    st = path.stat()
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def save_trainer(site: SiteIdentity, trainer: LocalTrainer) -> None:
    state = site.state_dir / STATE_FILE
    trainer.save(state)
    site_state.mark_trained(site)
    for key, (_, kept) in _SESSIONS.items():
        if kept is trainer:
            _SESSIONS[key] = (_stamp(state), trainer)


def reply_metrics(
    trainer: LocalTrainer, site: SiteIdentity, report: StepReport | None, resent: bool = False
) -> dict[str, Any]:
    """The MetricRecord of a reply (``report`` None: the site declined): exactly
    ``wire.REPLY_METRICS``, each DP-accounted or independent of patient data."""
    privacy = trainer.privacy()
    history = privacy.history
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
        "history-noise-multiplier": [float(h["noise_multiplier"]) for h in history],
        "history-sample-rate": [float(h["sample_rate"]) for h in history],
        "history-steps": [int(h["steps"]) for h in history],
    }


def log_locally(site: SiteIdentity, server_round: int, report: StepReport) -> None:
    """The round's losses, patients sampled and time: data-dependent, unaccounted, so they
    stay in the site's own log (``<state dir>/log.jsonl``) and never enter a reply. Not
    fsynced: nothing resumes from it, and it is on the round's critical path."""
    row = {"round": server_round, **report.to_dict()}
    append_jsonl(site.state_dir / LOG_FILE, row, sync=False)


def store_reply(
    site: SiteIdentity, req: TrainRequest, weights: dict[str, np.ndarray], metrics: dict[str, Any]
) -> None:
    """Keep the reply to resend it on a repeated request. Not durable (no directory fsync,
    unlike the trainer state): after a power loss the site may find the previous reply,
    which does not match the repeated request, and then trains the round again; its
    accountant (saved durably first) counts that round too."""
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
        durable=False,
    )


def stored_reply(site: SiteIdentity, req: TrainRequest) -> RecordDict | None:
    """The reply already sent for this exact request (round and global weights), if any."""
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


def load_global(trainer: LocalTrainer, req: TrainRequest) -> None:
    """Put the request's generator into ``trainer``: the whole generator, or (``exchange`` =
    ``trainable``) exactly the trainable set, laid over frozen parameters that must equal
    the server's (``frozen-digest``). ConfigError naming ``privacy.trainable`` otherwise:
    training trainable parameters over someone else's frozen ones would be silently wrong."""
    source = f"global generator of round {req.server_round}"
    trainable = trainer.trainable if req.exchange == wire.EXCHANGE_TRAINABLE else None
    held = trainer.get_generator_weights()
    problems = wire.received_problems(req.weights, held, trainable)
    if problems:
        raise ConfigError(
            "privacy.trainable",
            f"the {source} does not fit this site's generator "
            f"(privacy.trainable={req.cfg.privacy.trainable}): {problems[0]}",
        )
    if set(req.weights) == set(held):
        trainer.set_generator_weights(req.weights, source=source)
        return
    mine = wire.frozen_digest(held, trainer.trainable)
    if mine != req.frozen_digest:
        raise ConfigError(
            "privacy.trainable",
            f"the {source} carries only the trainable parameters, but this site's frozen "
            f"parameters differ from the server's (digest {mine[:12]} vs "
            f"{req.frozen_digest[:12] or 'none sent'}): the site did not keep the round-1 "
            "generator, or starts from another model.init",
        )
    trainer.set_generator_weights({**held, **req.weights}, source=source)


def train_round(site: SiteIdentity, req: TrainRequest) -> RecordDict:
    """One round at ``site`` (see the module docstring)."""
    check_site_policy(req.cfg, site)
    site_state.check_state(site, req.server_round, req.cfg)
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
    try:
        load_global(trainer, req)
        report = trainer.train_steps(steps)
        save_trainer(site, trainer)
    except BaseException:  # a half-trained trainer is not what its file says: never reuse it
        forget_trainer(trainer)
        raise
    log_locally(site, req.server_round, report)
    weights = trainer.get_generator_weights()
    if req.exchange == wire.EXCHANGE_TRAINABLE:  # the frozen rest is the server's already
        weights = wire.trainable_part(weights, trainer.trainable)
    metrics = reply_metrics(trainer, site, report)
    store_reply(site, req, weights, metrics)
    return reply_content(weights, metrics)


app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Flower entry point: parse, train one round, reply; errors name the site."""
    req = wire.parse_request(msg.content)
    site = identify_site(dict(context.node_config), req.run_dir)
    try:
        content = train_round(site, req)
    except Exception as e:  # any failure: one clear line in the server log, not a traceback
        raise SiteError(f"[site {site.name}] {type(e).__name__}: {e}") from e
    return Message(content, reply_to=msg)
