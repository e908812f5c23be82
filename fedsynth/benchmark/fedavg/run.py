"""Run the fedavg arm in Flower's simulation engine and return the trained segmenter."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from fedsynth.common.config import Config
from fedsynth.common.errors import FedsynthError


def train_fedavg(cfg: Config, seed: int, sites: int, work_dir: Path) -> nn.Module:
    """FedAvg-trained segmenter over ``sites`` simulated sites; weights saved under
    ``work_dir/fedavg-seed<seed>.safetensors``. Raises FedsynthError if the run produced none."""
    from flwr.simulation import run_simulation

    from fedsynth.benchmark.fedavg.client import app as client_app
    from fedsynth.benchmark.fedavg.server import ARCHITECTURE, make_server_app
    from fedsynth.benchmark.segmenter import build_segmenter
    from fedsynth.common.io.checkpoints import load_checkpoint, load_module_state
    from fedsynth.simulation import backend_config, flower_environment

    work_dir.mkdir(parents=True, exist_ok=True)
    out = work_dir / f"fedavg-seed{seed}.safetensors"
    out.unlink(missing_ok=True)
    with flower_environment(work_dir) as ray_tmp:
        run_simulation(
            server_app=make_server_app(cfg, seed, sites, out),
            client_app=client_app,
            num_supernodes=sites,
            backend_config=backend_config(cfg, ray_tmp),  # type: ignore[arg-type]
        )
    if not out.is_file():
        raise FedsynthError(
            f"fedavg arm (seed {seed}): the Flower run ended without weights; see the log above"
        )
    ckpt = load_checkpoint(out, architecture=ARCHITECTURE)
    model = build_segmenter(cfg.benchmark.segmenter, cfg.benchmark.channels)
    load_module_state(model, ckpt.tensors, out)
    return model
