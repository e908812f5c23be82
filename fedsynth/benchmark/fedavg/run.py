"""Run the fedavg arm in Flower's simulation engine and return the trained segmenter."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from fedsynth.benchmark.segmenter import segmenter_for
from fedsynth.benchmark.training import LearningCurve, Subset, validation_dice
from fedsynth.common.config import Config
from fedsynth.common.errors import FedsynthError


def train_fedavg(
    cfg: Config,
    seed: int,
    sites: int,
    work_dir: Path,
    val: Sequence[Subset] = (),
    device: torch.device | None = None,
) -> tuple[nn.Module, LearningCurve]:
    """FedAvg-trained segmenter over ``sites`` simulated sites and its learning curve (mean
    validation Dice on ``val`` after every round; the best round's weights are kept, under
    ``work_dir/fedavg-seed<seed>.safetensors``). Raises FedsynthError if the run produced none."""
    from flwr.simulation import run_simulation

    from fedsynth.benchmark.fedavg.client import app as client_app
    from fedsynth.benchmark.fedavg.server import ARCHITECTURE, make_server_app
    from fedsynth.common.io.checkpoints import load_checkpoint, load_module_state
    from fedsynth.simulation import backend_config, flower_environment

    work_dir.mkdir(parents=True, exist_ok=True)
    out = work_dir / f"fedavg-seed{seed}.safetensors"
    out.unlink(missing_ok=True)
    b = cfg.benchmark
    curve = LearningCurve(patience=b.patience, min_delta=b.min_delta)
    device = device or torch.device("cpu")

    def score(state: dict) -> float:
        model = segmenter_for(b)
        model.load_state_dict(state)
        return validation_dice(model, val, device)

    with flower_environment(work_dir) as ray_tmp:
        run_simulation(
            server_app=make_server_app(cfg, seed, sites, out, score if val else None, curve),
            client_app=client_app,
            num_supernodes=sites,
            backend_config=backend_config(cfg, ray_tmp),  # type: ignore[arg-type]
        )
    if not out.is_file():
        raise FedsynthError(
            f"fedavg arm (seed {seed}): the Flower run ended without weights; see the log above"
        )
    ckpt = load_checkpoint(out, architecture=ARCHITECTURE)
    model = segmenter_for(cfg.benchmark)
    load_module_state(model, ckpt.tensors, out)
    return model, curve
