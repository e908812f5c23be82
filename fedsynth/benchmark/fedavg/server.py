"""ServerApp of the fedavg arm: Flower's FedAvg over the segmenter, final weights to a file.

The server starts from a segmenter initialised with the arm's seed, runs
``benchmark.fedavg_rounds`` rounds of FedAvg (weighted by each site's patients, every site
every round, no federated evaluation: scoring happens centrally on the held-out split), and
saves the global weights with the best validation Dice as a checkpoint at ``out``. The
validation score (``score``: weights -> mean Dice on the patients the sites hold out of
training) runs centrally after every round through FedAvg's ``evaluate_fn``: the simulated
consortium's experimenter holds every site's data, a real deployment would not (this arm is
a non-private baseline).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedsynth.benchmark.training import LearningCurve
from fedsynth.common.config import Config, config_to_yaml

ARCHITECTURE = "segmenter"
Score = Callable[[dict], float]  # torch state dict -> validation Dice


def train_config(cfg: Config, seed: int) -> ConfigRecord:
    """What every site needs each round (Flower adds ``server-round``)."""
    local = local_steps(cfg)
    return ConfigRecord({"config-yaml": config_to_yaml(cfg), "seed": seed, "local-steps": local})


def local_steps(cfg: Config) -> int:
    return max(1, cfg.benchmark.steps // cfg.benchmark.fedavg_rounds)


def run_fedavg_server(
    grid: Grid,
    cfg: Config,
    seed: int,
    sites: int,
    out: Path,
    score: Score | None = None,
    curve: LearningCurve | None = None,
) -> Path:
    """Run the rounds and save the global segmenter to ``out``: the round with the best
    ``score`` (filling ``curve``, one point per round), or the last round without one."""
    import torch

    from fedsynth.benchmark.segmenter import segmenter_for
    from fedsynth.common.io.checkpoints import save_checkpoint

    torch.manual_seed(seed)
    model = segmenter_for(cfg.benchmark)
    best: dict = {}
    curve = curve if curve is not None else LearningCurve()

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        state = arrays.to_torch_state_dict()
        val = score(state)  # type: ignore[misc]
        if server_round > 0 and curve.add(server_round * local_steps(cfg), math.nan, val):
            best["arrays"] = state
        return MetricRecord({"val-dice": val})

    strategy = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=sites,
        min_available_nodes=sites,
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=cfg.benchmark.fedavg_rounds,
        train_config=train_config(cfg, seed),
        evaluate_fn=None if score is None else evaluate,
    )
    return save_checkpoint(
        out,
        best["arrays"] if best else result.arrays.to_torch_state_dict(),
        architecture=ARCHITECTURE,
        config_hash=cfg.benchmark.segmenter,
        step=cfg.benchmark.fedavg_rounds,
        extra={"seed": seed, "sites": sites},
    )


def make_server_app(
    cfg: Config,
    seed: int,
    sites: int,
    out: Path,
    score: Score | None = None,
    curve: LearningCurve | None = None,
) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_fedavg_server(grid, cfg, seed, sites, out, score, curve)

    return app
