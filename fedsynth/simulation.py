"""Flower's simulation engine for fedsynth: K simulated sites on one machine.

Used by ``fedsynth simulate``, the demo, the privacy sweep and the FedAvg segmentation arm.
It runs the same ServerApp and ClientApp objects as ``flwr run .`` and a real deployment
(fedsynth.server.app, fedsynth.client.app); it lives outside both packages because it is the
one place that starts both sides.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import queue
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from flwr.simulation import run_simulation

from fedsynth.client.app import app as fedsynth_client
from fedsynth.common.config import Config
from fedsynth.common.data.cohort import record_skipped, resolve_cohort
from fedsynth.common.io.atomic import mark_output
from fedsynth.server import checkpointing
from fedsynth.server.app import ServerSettings, make_server_app, write_run_config
from fedsynth.server.polling import EngineSignals
from fedsynth.server.strategy import check_aggregation

log = logging.getLogger(__name__)

# Ray's gRPC servers (GCS, raylet, every worker) listen on all interfaces unless the node's
# address is 127.0.0.1, and on Linux Ray replaces a requested 127.0.0.1 by the machine's
# routable address unless "clusters" are disabled (ray._private.services.get_node_ip_address).
# A simulation needs no other machine: this keeps every port on loopback (measured with
# /proc/net/tcp in tests/test_hostile_sites.py).
_RAY_LOCAL_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # read when ray is imported
LOOPBACK = "127.0.0.1"


@contextlib.contextmanager
def _ray_on_loopback() -> Iterator[None]:
    constants = sys.modules.get("ray._private.ray_constants")  # imported before we got here
    saved = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if constants is not None:
            constants.ENABLE_RAY_CLUSTER = saved  # type: ignore[attr-defined]


@contextlib.contextmanager
def flower_environment(run_dir: Path) -> Iterator[Path]:
    """No telemetry, Flower's files in the run dir, Ray's in a short temporary dir, Ray's
    ports on loopback only.

    Ray's temp dir holds Unix sockets whose paths must stay under ~107 characters, so it
    cannot live in an arbitrary (deep) run directory.
    """
    names = ("FLWR_TELEMETRY_ENABLED", "FLWR_HOME", _RAY_LOCAL_ONLY)
    saved = {k: os.environ.get(k) for k in names}
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    os.environ["FLWR_HOME"] = str(run_dir / ".flwr")
    os.environ[_RAY_LOCAL_ONLY] = "0"
    ray_tmp = Path(tempfile.mkdtemp(prefix="fedsynth-ray-"))
    try:
        with _ray_on_loopback():
            yield ray_tmp
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# Flower's simulation engine (flwr/server/superlink/fleet/vce/vce_api.py, 1.42) moves
# messages between the server's LinkState and the sites with two threads:
# ``add_messages_to_queue`` looks for new messages every 0.1 s (a round's messages reach the
# sites on average 50 ms after the server pushed them: ~2 % of a 2.5 s round, measured by
# benchmarks/bench_federation.py) and ``put_message_into_state`` stores replies. The loops
# below are Flower's, except that they wait on / ring ``EngineSignals``: messages leave as
# soon as the server pushed them, and the server wakes as soon as a reply is stored.
_ENGINE_IDLE_S = 0.1  # Flower's own interval: the longest wait without a signal
_EXPECTED = {
    "add_messages_to_queue": ["state", "queue", "nodes_mapping", "f_stop"],
    "put_message_into_state": ["state", "queue", "f_stop"],
}


def _signalled_loops(signals: EngineSignals) -> dict[str, Callable[..., None]]:
    """Drop-in replacements of the engine's two message movers (same arguments)."""

    def add_messages_to_queue(
        state: Any, messages: queue.Queue, nodes_mapping: dict, f_stop: threading.Event
    ) -> None:
        while not f_stop.is_set():
            signals.pushed.clear()  # before the scan: a push during it rings again
            found = False
            for node_id in nodes_mapping:
                for msg in state.get_message_ins(node_id=node_id, limit=1):
                    messages.put(msg)
                    found = True
            if not found:
                signals.pushed.wait(_ENGINE_IDLE_S)

    def put_message_into_state(state: Any, replies: queue.Queue, f_stop: threading.Event) -> None:
        while not f_stop.is_set():
            try:
                reply = replies.get(timeout=1.0)
            except queue.Empty:
                continue
            state.store_message_res(reply)
            signals.replied.set()

    return {
        "add_messages_to_queue": add_messages_to_queue,
        "put_message_into_state": put_message_into_state,
    }


@contextlib.contextmanager
def engine_signals(signals: EngineSignals) -> Iterator[bool]:
    """Run Flower's simulation engine with ``_signalled_loops`` in place of its polling
    loops; yields whether they are in place. A Flower whose loops have other arguments keeps
    its own (logged): the run is then only slower, never wrong."""
    from flwr.server.superlink.fleet.vce import vce_api

    saved = {name: getattr(vce_api, name, None) for name in _EXPECTED}
    fits = all(
        fn is not None and list(inspect.signature(fn).parameters) == _EXPECTED[name]
        for name, fn in saved.items()
    )
    if not fits:
        log.info("Flower's simulation engine changed: keeping its 0.1 s message polling")
        yield False
        return
    for name, fn in _signalled_loops(signals).items():
        setattr(vce_api, name, fn)
    try:
        yield True
    finally:
        for name, fn in saved.items():
            setattr(vce_api, name, fn)


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
    else:  # with flower_environment: every port on loopback
        init_args.update(_temp_dir=str(ray_tmp), _node_ip_address=LOOPBACK)
    return {
        "client_resources": {"num_cpus": fed.client_cpus, "num_gpus": fed.client_gpus},
        "init_args": init_args,
    }


def simulate(cfg: Config, run_dir: Path, client_app: Any = None) -> int:
    """Run the federation; returns the last completed round.

    ``client_app``: a ClientApp in place of fedsynth's (tests: a site that misbehaves).
    """

    check_aggregation(cfg, cfg.split.sites)  # refuse a bad rule before any file is written
    mark_output(run_dir)  # fedsynth's run folder: --overwrite may replace it later
    write_run_config(run_dir, cfg)
    # Generate a phantom cohort (or validate a real one) once, here, not in K racing workers.
    record_skipped(resolve_cohort(cfg), run_dir)  # invalid cases left out, listed in the run
    signals = EngineSignals()
    settings = ServerSettings(cfg, run_dir, expected_sites=cfg.split.sites, signals=signals)
    with flower_environment(run_dir) as ray_tmp, engine_signals(signals):
        run_simulation(
            server_app=make_server_app(settings),
            client_app=client_app or fedsynth_client,
            num_supernodes=cfg.split.sites,
            backend_config=backend_config(cfg, ray_tmp),  # type: ignore[arg-type]
        )
    state = checkpointing.load_state(run_dir)
    return 0 if state is None else state.round
