"""The ServerApp: reads the config once, runs the strategy's rounds, records every round.

Two ways in, one code path (``run_server``):

- ``flwr run .`` (simulation or deployment): the module-level ``app`` reads the run config of
  pyproject's ``[tool.flwr.app.config]``: ``config`` (a YAML file), ``overrides``
  (space-separated ``key=value``) and ``run-dir``.
- ``fedsynth simulate``: ``make_server_app(ServerSettings(...))`` with the parsed config,
  because Flower's ``run_simulation`` passes no run config.

The clients get the resolved config as plain YAML in every train request (with the server
round, the run directory and the planned rounds; the format is ``fedsynth.common.wire``'s),
so a site needs nothing but its data and a state dir.
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedsynth.common import wire
from fedsynth.common.config import Config, load_config
from fedsynth.common.errors import ConfigError
from fedsynth.common.gan.init import apply_init, load_init
from fedsynth.common.gan.trainable import select_trainable
from fedsynth.common.io.atomic import mark_output
from fedsynth.common.models.registry import build_generator
from fedsynth.common.rundir import RunDir
from fedsynth.server import checkpointing
from fedsynth.server.evaluation import HeldOutEvaluator
from fedsynth.server.polling import EngineSignals, ProportionalPollGrid
from fedsynth.server.rounds import RoundRecorder
from fedsynth.server.strategy import build_strategy, check_aggregation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerSettings:
    cfg: Config
    run_dir: Path
    expected_sites: int  # SuperNodes the first round waits for
    progress: bool = True  # a bar over rounds (fedsynth simulate; not under flwr run's log)
    # Wake-ups shared with an engine in this process (fedsynth.simulation); None: polling only.
    signals: EngineSignals | None = None


def settings_from_run_config(run_config: dict[str, object]) -> ServerSettings:
    """Settings from ``context.run_config`` (``flwr run``): config, overrides, run-dir."""
    if "config" not in run_config:
        raise ConfigError(
            "tool.flwr.app.config.config",
            'missing: set config = "configs/smoke.yaml" in pyproject.toml or pass '
            "--run-config 'config=\"...\"' to flwr run",
        )
    path = _find_config(str(run_config["config"]))
    overrides = shlex.split(str(run_config.get("overrides", "")))
    cfg = load_config(path, overrides)
    check_aggregation(cfg, cfg.split.sites)  # refuse a bad rule before any file is written
    run_dir = Path(str(run_config.get("run-dir") or f"runs/{cfg.name}-flwr")).expanduser().resolve()
    return ServerSettings(cfg, run_dir, expected_sites=cfg.split.sites, progress=False)


def _find_config(name: str) -> Path:
    # `flwr run` executes the app from its installed copy (the FAB), whose root holds configs/.
    path = Path(name).expanduser()
    if path.is_absolute() or path.is_file():
        return path
    app_root = Path(__file__).resolve().parents[2]
    return app_root / path if (app_root / path).is_file() else path


def initial_generator(cfg: Config) -> dict[str, np.ndarray]:
    """The round-1 generator as name -> float32 array: ``model.init``'s pre-trained weights,
    or a fresh one seeded by ``cfg.seed``."""

    torch.manual_seed(cfg.seed)
    model = build_generator(cfg.model)
    if cfg.model.init:  # pre-trained on public data: sent to every site in round 1
        apply_init(load_init(cfg.model.init, cfg.model, cfg.preprocess.image_size), model, None)
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def trainable_names(cfg: Config) -> list[str] | None:
    """The generator parameters ``privacy.trainable`` trains, as the sites select them (None
    for ``all``): the only arrays exchanged after round 1."""
    if cfg.privacy.trainable == "all":
        return None
    return select_trainable(build_generator(cfg.model), cfg.privacy.trainable)


def to_array_record(weights: dict[str, np.ndarray]) -> ArrayRecord:
    return wire.generator_record(weights)


def write_run_config(run_dir: Path, cfg: Config) -> None:
    """Write ``config.yaml`` of a new run directory (a resumed one keeps its own)."""
    run = RunDir(run_dir)
    if not run.config.exists():
        run.write_config(cfg)


def train_config(cfg: Config, run_dir: Path) -> ConfigRecord:
    """What every site receives besides the generator (see fedsynth.common.wire)."""
    return wire.request_config(cfg, str(run_dir), cfg.federation.rounds)


def run_server(grid: Grid, settings: ServerSettings) -> checkpointing.ServerState:
    """Run (or resume) the federation of ``settings.run_dir`` until ``federation.rounds``."""
    cfg, run_dir = settings.cfg, settings.run_dir
    mark_output(run_dir)  # fedsynth's run folder: --overwrite may replace it later
    write_run_config(run_dir, cfg)
    resume = checkpointing.load_resume_point(run_dir)
    if resume is None:
        state, weights = checkpointing.ServerState(), initial_generator(cfg)
    else:
        state, weights = resume
        log.info("resuming %s after round %d", run_dir, state.round)
    state.rounds = cfg.federation.rounds
    recorder = RoundRecorder(
        run_dir, cfg, state, evaluator=HeldOutEvaluator(cfg, run_dir), progress=settings.progress
    )
    recorder.drop_uncommitted()
    remaining = cfg.federation.rounds - state.round
    if remaining <= 0:
        log.info("%s already completed %d of %d rounds", run_dir, state.round, state.rounds)
        recorder.finish()
        recorder.close()
        return state
    strategy = build_strategy(
        cfg, expected_sites=settings.expected_sites, round_offset=state.round,
        declared=state.declared, trainable=trainable_names(cfg),
    )  # fmt: skip
    recorder.strategy = strategy
    try:
        strategy.start(
            ProportionalPollGrid(grid, signals=settings.signals, on_push=recorder.round_pushed),
            to_array_record(weights),
            num_rounds=remaining,
            timeout=cfg.federation.round_timeout_s,
            train_config=train_config(cfg, run_dir),
            evaluate_fn=recorder,
        )
    finally:
        recorder.wait()  # rounds completed before an error are still committed
    recorder.finish()
    recorder.close()  # the TensorBoard writer flushes every round; a crash loses nothing
    return state


def make_server_app(settings: ServerSettings | None = None) -> ServerApp:
    """A ServerApp running ``run_server`` with ``settings``, or with the run config if None."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, settings or settings_from_run_config(dict(context.run_config)))

    return server_app


app = make_server_app()
