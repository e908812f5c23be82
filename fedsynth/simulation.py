"""Flower's simulation engine for fedsynth: K simulated sites on one machine.

Used by ``fedsynth simulate``, the demo, the privacy sweep and the FedAvg segmentation arm.
It runs the same ServerApp and ClientApp objects as ``flwr run .`` and a real deployment
(fedsynth.server.app, fedsynth.client.app); it lives outside both packages because it is the
one place that starts both sides.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from flwr.simulation import run_simulation

from fedsynth.client.app import app as client_app
from fedsynth.common.config import Config
from fedsynth.common.data.cohort import resolve_cohort
from fedsynth.server import checkpointing
from fedsynth.server.app import ServerSettings, make_server_app, write_run_config
from fedsynth.server.strategy import strategy_class


@contextlib.contextmanager
def flower_environment(run_dir: Path) -> Iterator[Path]:
    """No telemetry, Flower's files in the run dir, Ray's in a short temporary dir.

    Ray's temp dir holds Unix sockets whose paths must stay under ~107 characters, so it
    cannot live in an arbitrary (deep) run directory.
    """
    saved = {k: os.environ.get(k) for k in ("FLWR_TELEMETRY_ENABLED", "FLWR_HOME")}
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    os.environ["FLWR_HOME"] = str(run_dir / ".flwr")
    ray_tmp = Path(tempfile.mkdtemp(prefix="fedsynth-ray-"))
    try:
        yield ray_tmp
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def backend_config(cfg: Config, ray_tmp: Path) -> dict:
    """Flower's Ray backend settings; ``init_args`` go to ``ray.init``.

    With ``federation.ray_address`` the sites run on that Ray cluster's nodes (each node
    needs fedsynth installed and, for simulated sites, the cohort cache at the same path);
    a temp dir is only for a private instance.
    """
    fed = cfg.federation
    init_args: dict = {"include_dashboard": False}
    if fed.ray_address:
        init_args["address"] = fed.ray_address
    else:
        init_args["_temp_dir"] = str(ray_tmp)
    return {
        "client_resources": {"num_cpus": fed.client_cpus, "num_gpus": fed.client_gpus},
        "init_args": init_args,
    }


def simulate(cfg: Config, run_dir: Path) -> int:
    """Run the federation; returns the last completed round."""

    strategy_class(cfg.federation.aggregation)  # refuse an unknown name before any file is written
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_config(run_dir, cfg)
    resolve_cohort(cfg)  # generate a phantom cohort once, here, not in K racing workers
    settings = ServerSettings(cfg, run_dir, expected_sites=cfg.split.sites)
    with flower_environment(run_dir) as ray_tmp:
        run_simulation(
            server_app=make_server_app(settings),
            client_app=client_app,
            num_supernodes=cfg.split.sites,
            backend_config=backend_config(cfg, ray_tmp),  # type: ignore[arg-type]
        )
    state = checkpointing.load_state(run_dir)
    return 0 if state is None else state.round
