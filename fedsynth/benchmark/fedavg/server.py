"""ServerApp of the fedavg arm: Flower's FedAvg over the segmenter, final weights to a file.

The server starts from a segmenter initialised with the arm's seed, runs
``benchmark.fedavg_rounds`` rounds of FedAvg (weighted by each site's patients, every site
every round, no federated evaluation: scoring happens centrally on the held-out split), and
saves the final global weights as a checkpoint at ``out``.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedsynth.common.config import Config, config_to_yaml

ARCHITECTURE = "segmenter"


def train_config(cfg: Config, seed: int) -> ConfigRecord:
    """What every site needs each round (Flower adds ``server-round``)."""
    local = max(1, cfg.benchmark.steps // cfg.benchmark.fedavg_rounds)
    return ConfigRecord({"config-yaml": config_to_yaml(cfg), "seed": seed, "local-steps": local})


def run_fedavg_server(grid: Grid, cfg: Config, seed: int, sites: int, out: Path) -> Path:
    """Run the rounds and save the final global segmenter to ``out``."""
    import torch

    from fedsynth.benchmark.segmenter import build_segmenter
    from fedsynth.common.io.checkpoints import save_checkpoint

    torch.manual_seed(seed)
    model = build_segmenter(cfg.benchmark.segmenter, cfg.benchmark.channels)
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
    )
    return save_checkpoint(
        out,
        result.arrays.to_torch_state_dict(),
        architecture=ARCHITECTURE,
        config_hash=cfg.benchmark.segmenter,
        step=cfg.benchmark.fedavg_rounds,
        extra={"seed": seed, "sites": sites},
    )


def make_server_app(cfg: Config, seed: int, sites: int, out: Path) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_fedavg_server(grid, cfg, seed, sites, out)

    return app
