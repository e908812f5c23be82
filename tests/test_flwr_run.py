"""`flwr run .` against a local simulation SuperLink, as docs/federation.md shows it.

Starts ``flower-superlink --simulation --disable-runtime-dependency-installation`` on a free
loopback port (a private FLWR_HOME, Ray's files in a short temporary dir), points a
connection at it, sets the simulation federation to 3 SuperNodes and runs ``flwr run .``
from the repository root on configs/smoke.yaml (3 sites, 2 rounds). Checks the checkpoints,
every site's rows and the server's TensorBoard events, then stops the SuperLink and
everything it started (Ray's processes included) and checks that nothing is left running.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from helpers.tb_events import read_runs
from safetensors.numpy import load_file
from test_deploy import BIN, REPO, Launcher, _descendants, flwr, free_port, wait_for

SMOKE = "configs/smoke.yaml"
SUPERLINK_FLAGS = ["--insecure", "--simulation", "--disable-runtime-dependency-installation"]


def _connection(home: Path, port: int) -> None:
    """$FLWR_HOME/config.toml with one default connection ``sim`` (Flower 1.42 keeps them here)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "sim"\n[superlink.sim]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n'
    )


def _alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie waiting for its parent's wait() counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (Ray's name their temp dir)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes() and _alive(int(cmdline.parent.name)):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def _stop_leftovers(find: Callable[[], list[int]], grace: float = 20.0) -> list[int]:
    """Ray's raylet and GCS outlive the simulation process by a few seconds (they notice the
    driver is gone); wait ``grace`` for them, then SIGKILL the rest. Returns survivors."""
    deadline = time.monotonic() + grace
    while find() and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in find():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(1.0)
    return find()


def test_docs_show_the_commands_this_test_runs():
    doc = (REPO / "docs" / "federation.md").read_text()
    superlink = re.search(r"flower-superlink ([^&]*)&", doc.replace("\\\n", " "))
    assert superlink, "docs/federation.md lost the flower-superlink command"
    assert set(SUPERLINK_FLAGS) <= set(superlink.group(1).split())
    assert "flwr federation simulation-config @none/default sim --num-supernodes 3" in doc
    assert "flwr run . sim --stream" in doc and f'config="{SMOKE}"' in doc


def test_flwr_run_on_a_local_simulation_superlink(tmp_path):
    port = free_port()
    home = tmp_path / ".flwr"
    ray_tmp = Path(tempfile.mkdtemp(prefix="fedsynth-ray-"))  # Unix socket paths stay short
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # SuperExec is found by name
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "RAY_TMPDIR": str(ray_tmp),
        "PYTHONUNBUFFERED": "1",
    }
    _connection(home, port)
    launcher = Launcher(tmp_path / "logs", env)
    run_dir = tmp_path / "run"
    try:
        launcher.start(
            "superlink",
            [str(BIN / "flower-superlink"), *SUPERLINK_FLAGS, "--host", "127.0.0.1",
             "--port", str(port), "--database", str(home / "state.db")],
            cwd=tmp_path,
        )  # fmt: skip
        wait_for(
            lambda: f"Uvicorn running on http://127.0.0.1:{port}" in launcher.log("superlink"),
            60, "the SuperLink", launcher, "superlink",
        )  # fmt: skip
        flwr(env, REPO, "federation", "simulation-config", "@none/default", "sim",
             "--num-supernodes", "3")  # fmt: skip
        run_config = f'config="{SMOKE}" overrides="data.cache_dir={tmp_path / "cache"}" '
        run_config += f'run-dir="{run_dir}"'
        out = flwr(env, REPO, "run", ".", "sim", "--stream", "--run-config", run_config,
                   timeout=400)  # fmt: skip
    finally:
        started = [pid for p in launcher.procs for pid in (p.pid, *_descendants(p.pid))]
        launcher.close()
        left = _stop_leftovers(lambda: [p for p in started if _alive(p)]
                               + _processes_mentioning(str(ray_tmp)))  # fmt: skip
        shutil.rmtree(ray_tmp, ignore_errors=True)

    assert not left, f"processes left running after stop: {left}"
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / "generator.safetensors").is_file(), out[-4000:]
    latest = json.loads((checkpoints / "latest.json").read_text())
    state = json.loads((run_dir / "server_state.json").read_text())
    assert state["round"] == 2, state
    round1, round2 = (load_file(checkpoints / f"generator_{s:07d}.safetensors") for s in (3, 6))
    assert round1.keys() == round2.keys() and latest, latest
    assert any((round1[k] != round2[k]).any() for k in round1), "round 2 changed nothing"
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    sites = {(r["round"], r["site"]): r["status"] for r in rows if r.get("kind") == "site"}
    assert sites == {(r, f"site-{i}"): "ok" for r in (1, 2) for i in range(3)}, sites

    # The server's TensorBoard events: epsilon per site per round, quality, samples; nothing
    # per site beyond the epsilon it reported (its losses stay in the site's own log).
    board = read_runs(run_dir / "tensorboard")["."]
    per_site = {t for t in board["scalars"] if t.startswith("privacy/epsilon/")}
    assert per_site == {f"privacy/epsilon/site-{i}" for i in range(3)}
    assert all([s for s, _ in board["scalars"][t]] == [3, 6] for t in per_site)
    assert "heldout/psnr" in board["scalars"] and board["images"]["samples"] == [6]
    assert not [t for t in board["scalars"] if "site-" in t and not t.startswith("privacy/")]
