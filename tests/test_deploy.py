"""Deployment: certificates, site checks, and Flower's real deployment engine on loopback.

The integration test starts one ``flower-superlink`` (TLS, SuperNode authentication, SQLite
state), registers two phantom sites with ``flwr supernode register``, starts their
``flower-supernode`` processes with per-site data folders and state dirs, runs one round
with ``flwr run <app> <connection>`` and checks the global generator checkpoint and the
sites' private state. Unregistered SuperNodes, and SuperNodes without the CA, must be refused.
Every process is started in its own session and killed (with its descendants) in ``finally``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsynth.common.config import load_config
from fedsynth.common.errors import ConfigError, OutputExistsError
from fedsynth.deploy.certs import (
    check_auth_key,
    check_root_certificate,
    make_dev_certificates,
    parse_sites,
)
from fedsynth.deploy.site_check import check_site, node_config_string

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"
BIN = Path(sys.executable).parent  # the venv's flower-superlink, flower-supernode, flwr
SITES = ("site-0", "site-1")
OVERRIDES = (
    "split.sites=2",
    "phantom.sites=2",
    "phantom.subjects=10",
    "federation.rounds=1",
    "federation.min_sites=2",
)


# --------------------------------------------------------------------------- unit checks


def test_dev_certificates_layout_permissions_and_chain(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    made = make_dev_certificates(tmp_path / "c", ["site-a", "site-b"], server_host="fl.example.org")
    for key in (made.ca_key, made.server_key, *(s.private_key for s in made.sites)):
        assert key.stat().st_mode & 0o777 == 0o600, key
    server = x509.load_pem_x509_certificate(made.server_cert.read_bytes())
    ca = x509.load_pem_x509_certificate(made.ca_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "fl.example.org"} <= set(sans.get_values_for_type(x509.DNSName))
    assert "127.0.0.1" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    public = check_auth_key(made.sites[0].private_key)
    assert public.startswith("ecdsa-sha2-nistp384 ")
    assert made.sites[0].public_key.read_text().split()[:2] == public.split()[:2]
    assert "valid until" in check_root_certificate(made.ca_cert)
    key = ec.EllipticCurvePublicKey  # the type flwr supernode register insists on
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    assert isinstance(load_ssh_public_key(made.sites[1].public_key.read_bytes()), key)
    with pytest.raises(OutputExistsError):
        make_dev_certificates(tmp_path / "c", [])


def test_bad_site_names_loose_keys_and_garbage_certificates_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="--sites"):
        parse_sites("site-0,../etc")
    with pytest.raises(ConfigError, match="duplicate"):
        parse_sites("a,a")
    made = make_dev_certificates(tmp_path, ["s"])
    made.sites[0].private_key.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        check_auth_key(made.sites[0].private_key)
    with pytest.raises(ConfigError, match="OpenSSH"):
        check_auth_key(made.server_key)  # PEM PKCS8, not what flower-supernode reads
    junk = tmp_path / "junk.crt"
    junk.write_text("not a certificate")
    with pytest.raises(ConfigError, match="junk.crt"):
        check_root_certificate(junk)


def test_node_config_string_is_what_flower_parses():
    from flwr.common.config import parse_config_args

    text = node_config_string(Path('/data/we"ird'), Path("/var/o'brien"), "site-2")
    parsed = parse_config_args([text])
    assert parsed == {
        "data-path": '/data/we"ird',
        "state-dir": "/var/o'brien",
        "site-name": "site-2",
    }
    with pytest.raises(ConfigError, match="node-config"):
        node_config_string(Path("/a'b\"c"), Path("/s"), "x")
    ceiling = node_config_string(Path("/d"), Path("/s"), "site-1", max_epsilon=8.0, max_delta=1e-5)
    assert parse_config_args([ceiling])["max-epsilon"] == 8.0
    assert parse_config_args([ceiling])["max-delta"] == 1e-5


def test_site_check_compares_the_config_with_the_site_ceiling(tmp_path):
    from fedsynth.deploy.site_check import check_privacy_ceiling

    cfg = load_config(SMOKE, ["privacy.target_epsilon=10"])
    ok = check_privacy_ceiling(cfg, "s", tmp_path, 10.0, 1e-4)
    assert "within this site's max-epsilon=10" in ok
    with pytest.raises(ConfigError, match="privacy.target_epsilon"):
        check_privacy_ceiling(cfg, "s", tmp_path, 5.0, 1e-4)
    with pytest.raises(ConfigError, match="max-delta"):  # the ClientApp needs both ceilings
        check_privacy_ceiling(cfg, "s", tmp_path, 10.0, None)


# --------------------------------------------------------------------------- phantom sites


@pytest.fixture(scope="module")
def phantom_sites(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """(cache dir with the phantom cohort, site name -> folder holding only its patients)."""
    from fedsynth.common.data.cohort import load_split, resolve_cohort

    root = tmp_path_factory.mktemp("deploy-data")
    cfg = load_config(SMOKE, [f"data.cache_dir={root / 'cache'}", *OVERRIDES])
    cohort = resolve_cohort(cfg)
    split = load_split(cohort)
    folders = {}
    for name in SITES:
        folders[name] = root / "sites" / name
        for subject in split.sites[name]:
            shutil.copytree(cohort / subject, folders[name] / subject)
    return root / "cache", folders


def test_site_check_passes_then_reports_spent_budget_and_bad_data(tmp_path, phantom_sites):
    cache, folders = phantom_sites
    cfg = load_config(SMOKE, [f"data.cache_dir={cache}", *OVERRIDES])
    made = make_dev_certificates(tmp_path / "certs", ["site-0"])
    state = tmp_path / "state"
    report = check_site(
        cfg,
        data_path=folders["site-0"],
        state_dir=state,
        site_name="site-0",
        root_certificates=made.ca_cert,
        auth_key=made.sites[0].private_key,
        max_epsilon=10.0,
        max_delta=1e-4,
    )
    assert report.ok, report.checks
    details = {c.name: c.detail for c in report.checks}
    assert "starts fresh" in details["site state"]
    assert "patients" in details["data"] and (state / "cache").is_dir()

    # A site that has trained: its spent epsilon is summarised from its own state file.
    from fedsynth.client.site import identify_site, load_site_data
    from fedsynth.common.gan.trainer import LocalTrainer

    site = identify_site({"data-path": str(folders["site-0"]), "state-dir": str(state)}, None)
    trainer = LocalTrainer(cfg, load_site_data(cfg, site), planned_steps=3, site="site-0", seed=0)
    trainer.train_steps(2)
    trainer.save(state / "trainer.safetensors")
    details = {c.name: c.detail for c in check_site(cfg, data_path=folders["site-0"],
                                                   state_dir=state, site_name="site-0").checks}  # fmt: skip
    assert f"epsilon spent {trainer.epsilon:.3f}" in details["site state"]

    broken = tmp_path / "broken"
    shutil.copytree(folders["site-0"], broken)
    victim = next(broken.rglob("*_t1.nii.gz"))
    victim.write_bytes(victim.read_bytes()[:200])  # truncated
    bad = check_site(cfg, data_path=broken, state_dir=tmp_path / "s2", site_name="site-0")
    failed = {c.name: c.detail for c in bad.checks if not c.ok}
    assert not bad.ok and victim.name in failed["data"]


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (Flower's SuperExec starts its own session)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group and every descendant, SIGKILL what is left after ``grace``."""
    family = [proc.pid, *_descendants(proc.pid)]
    for pid in family:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    for pid in family:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


class Launcher:
    """Starts processes with logs under ``logs``; ``close()`` stops every one of them."""

    def __init__(self, logs: Path, env: dict[str, str]):
        self.logs, self.env, self.procs = logs, env, []
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, cmd: list[str], cwd: Path, **env: str) -> subprocess.Popen:
        cwd.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(
            cmd, cwd=cwd, env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        proc.log_file = log  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def close(self) -> None:
        for proc in reversed(self.procs):
            stop(proc)
            proc.log_file.close()  # type: ignore[attr-defined]


def wait_for(predicate, timeout: float, what: str, launcher: Launcher, log: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}; {log} log:\n{launcher.log(log)[-3000:]}")


def flwr(env: dict[str, str], cwd: Path, *args: str, timeout: float = 60) -> str:
    """Run the ``flwr`` CLI; its output, or an AssertionError with it on failure."""
    try:
        done = subprocess.run(
            [str(BIN / "flwr"), *args], cwd=cwd, env=env, capture_output=True, text=True,
            timeout=timeout, start_new_session=True,
        )  # fmt: skip
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"flwr {' '.join(args)} timed out: {e.stdout}\n{e.stderr}") from e
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"flwr {' '.join(args)} failed:\n{out[-4000:]}"
    return out


@pytest.fixture
def deployment(tmp_path, phantom_sites) -> Iterator[dict]:
    """A TLS SuperLink with SuperNode authentication and two registered sites' keys."""
    certs = make_dev_certificates(tmp_path / "certs", [*SITES, "rogue"])
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # SuperExec is found by name
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_HOME": str(tmp_path / "operator" / ".flwr"),
        "PYTHONUNBUFFERED": "1",
    }
    connection = Path(env["FLWR_HOME"]) / "config.toml"
    connection.parent.mkdir(parents=True)
    connection.write_text(
        '[superlink]\ndefault = "fedsynth"\n\n[superlink.fedsynth]\n'
        f'address = "127.0.0.1:{port}"\nroot-certificates = "{certs.ca_cert}"\n'
    )
    launcher = Launcher(tmp_path / "logs", env)
    server = tmp_path / "server"
    try:
        launcher.start(
            "superlink",
            [str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(certs.ca_cert),
             "--ssl-certfile", str(certs.server_cert), "--ssl-keyfile", str(certs.server_key),
             "--enable-supernode-auth", "--database", str(server / "state.db"),
             "--port", str(port), "--disable-runtime-dependency-installation"],
            cwd=server, FLWR_HOME=str(server / ".flwr"),
        )  # fmt: skip
        wait_for(
            lambda: "Uvicorn running on https" in launcher.log("superlink"),
            60, "the SuperLink", launcher, "superlink",
        )  # fmt: skip
        for site in certs.sites[:2]:
            flwr(env, tmp_path, "supernode", "register", str(site.public_key), "fedsynth")
        yield {"tmp": tmp_path, "port": port, "certs": certs, "env": env, "launcher": launcher,
               "server": server, "sites": phantom_sites}  # fmt: skip
    finally:
        launcher.close()


def start_supernode(d: dict, name: str, key: Path | None, data: Path, *extra: str):
    home = d["tmp"] / "sites" / name
    node_config = node_config_string(data, home / "state", name, max_epsilon=10, max_delta=1e-4)
    cmd = [str(BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{d['port']}",
           "--port", str(free_port()), "--node-config", node_config, *extra]  # fmt: skip
    if key is not None:
        cmd += ["--auth-supernode-private-key", str(key)]
    return d["launcher"].start(f"supernode-{name}", cmd, cwd=home, FLWR_HOME=str(home / ".flwr"))


def test_deployment_over_tls_with_authenticated_sites(deployment):
    d = deployment
    cache, folders = d["sites"]
    ca = ["--root-certificates", str(d["certs"].ca_cert)]

    # Refused: a SuperNode whose key the operator never registered, and one without the CA.
    rogue = start_supernode(d, "rogue", d["certs"].sites[2].private_key, folders["site-0"],
                            *ca, "--max-retries", "2", "--max-wait-time", "15")  # fmt: skip
    no_ca = start_supernode(d, "no-ca", d["certs"].sites[0].private_key, folders["site-0"],
                            "--max-retries", "2", "--max-wait-time", "15")  # fmt: skip
    for proc, name in ((rogue, "rogue"), (no_ca, "no-ca")):
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"{name} SuperNode was not refused:\n{d['launcher'].log('supernode-' + name)}"
            )
        assert code != 0, d["launcher"].log(f"supernode-{name}")
    assert "Failed to activate SuperNode" in d["launcher"].log("supernode-rogue")

    for i, name in enumerate(SITES):
        start_supernode(d, name, d["certs"].sites[i].private_key, folders[name], *ca)
    wait_for(
        lambda: flwr(d["env"], d["tmp"], "supernode", "ls", "fedsynth").count("online") == 2,
        60, "two online SuperNodes", d["launcher"], "superlink",
    )  # fmt: skip

    run_dir = d["tmp"] / "run"
    overrides = " ".join([f"data.cache_dir={cache}", *OVERRIDES])
    out = flwr(
        d["env"], d["tmp"], "run", str(REPO), "fedsynth", "--stream",
        "--run-config", f'overrides="{overrides}" run-dir="{run_dir}"', timeout=300,
    )  # fmt: skip
    assert (run_dir / "checkpoints" / "generator.safetensors").is_file(), out[-4000:]
    state = json.loads((run_dir / "server_state.json").read_text())
    assert state["round"] == 1
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    site_rows = [r for r in rows if r.get("kind") == "site"]
    assert sorted(r["site"] for r in site_rows) == list(SITES), site_rows
    assert all(r["status"] == "ok" for r in site_rows), site_rows
    for name in SITES:
        site_state = d["tmp"] / "sites" / name / "state"
        assert (site_state / "trainer.safetensors").is_file()  # accountant stays at the site
        assert (site_state / "cache").is_dir()  # so do the preprocessed slices
    assert (d["server"] / "state.db").is_file()
