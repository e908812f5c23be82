"""A site's dry run before it joins a federation: the checks its SuperNode's ClientApp will need.

``check_site(...)`` runs, in order, each check independent of the others' outcome:

- node config: the values ``flower-supernode --node-config`` will pass, parsed by the same
  ``identify_site`` as the ClientApp;
- privacy ceiling: ``max-epsilon`` and ``max-delta`` are given (the ClientApp refuses to train
  without them) and the consortium's config stays within them (and uses DP);
- state dir: created if missing, writable (a temporary file is written and removed);
- existing state: ``trainer.safetensors`` summarised (steps taken, epsilon spent at delta,
  target, planned steps) and ``last_reply.safetensors`` (round of the last reply);
- data: the site's slice cache built exactly as in its first round (every case read and
  validated; with ``data.strict`` any invalid case fails the check), number of patients and
  slices;
- certificates: the CA bundle (``--root-certificates``) parses and has not expired; the auth
  key (``--auth-supernode-private-key``) is an unencrypted OpenSSH EC key, mode 0600; its
  public key is printed for the server operator to register;
- optionally the SuperLink: a TLS handshake verified against the CA (hostname included).

Nothing leaves the machine except that TLS handshake, which sends no data.
"""

from __future__ import annotations

import os
import socket
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fedsynth.client.site import check_site_policy, identify_site, load_site_data
from fedsynth.common.config import Config
from fedsynth.common.errors import ConfigError, FedsynthError
from fedsynth.common.io.checkpoints import load_checkpoint
from fedsynth.common.privacy.accountant import PrivacyAccountant
from fedsynth.common.rundir import SITE_LAST_REPLY as REPLY_FILE
from fedsynth.common.rundir import SITE_TRAINER_STATE as STATE_FILE
from fedsynth.deploy.certs import check_auth_key, check_root_certificate


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class SiteReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, fn, *args) -> None:
        """Run ``fn(*args) -> str``; a FedsynthError/OSError becomes a failed check."""
        try:
            self.checks.append(Check(name, True, fn(*args)))
        except (FedsynthError, OSError, ssl.SSLError) as e:
            self.checks.append(Check(name, False, str(e)))


def node_config_string(
    data_path: Path,
    state_dir: Path,
    site_name: str,
    max_epsilon: float | None = None,
    max_delta: float | None = None,
) -> str:
    """The ``--node-config`` value for flower-supernode.

    Flower splits the value with a regex that allows no escaped quotes, so each value is a
    TOML literal string ('...', backslashes kept) or, if it holds a ', a basic "..." one.
    """

    def q(v: object) -> str:
        text = str(v)
        if "'" not in text:
            return f"'{text}'"
        if '"' not in text and "\\" not in text:
            return f'"{text}"'
        raise ConfigError("node-config", f"{text!r}: a value cannot hold both ' and \" (or \\)")

    text = f"data-path={q(data_path)} state-dir={q(state_dir)} site-name={q(site_name)}"
    if max_epsilon is not None:
        text += f" max-epsilon={max_epsilon:g}"
    if max_delta is not None:
        text += f" max-delta={max_delta:g}"
    return text


def check_privacy_ceiling(
    cfg: Config,
    site_name: str,
    data_path: Path,
    max_epsilon: float | None,
    max_delta: float | None,
) -> str:
    """Would this site, with its own ``max-epsilon`` / ``max-delta``, accept the consortium's
    privacy settings? (A deployed ClientApp refuses to train without both.)"""
    node: dict[str, object] = {"data-path": str(data_path), "site-name": site_name}
    for key, value in (("max-epsilon", max_epsilon), ("max-delta", max_delta)):
        if value is not None:
            node[key] = value
    check_site_policy(cfg, identify_site(node, None))
    return (
        f"the config asks for epsilon {cfg.privacy.target_epsilon:g} per patient at delta "
        f"{cfg.privacy.delta:g}, within this site's max-epsilon={max_epsilon:g}, "
        f"max-delta={max_delta:g}"
    )


def check_state_dir(state_dir: Path) -> str:
    state_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".site-check-", dir=state_dir)
    try:
        os.write(fd, b"ok")
        os.fsync(fd)
    finally:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
    return f"{state_dir} is writable"


def summarise_state(state_dir: Path) -> str:
    """One line on the site's stored trainer state and privacy spend (or that it has none)."""
    path = state_dir / STATE_FILE
    if not path.is_file():
        return "no trainer state yet: the site starts fresh (no privacy budget spent)"
    c = load_checkpoint(path)
    meta = c.extra
    text = f"{path.name}: {meta.get('steps_done', c.step)} local steps taken"
    acc = meta.get("accountant")
    if meta.get("dp_enabled") and acc:
        accountant = PrivacyAccountant(
            kind=acc["accountant"], delta=acc["delta"], target_epsilon=acc.get("target_epsilon")
        )
        accountant.load_state_dict(acc)
        text += (
            f"; epsilon spent {accountant.epsilon():.3f} at delta {accountant.delta:g} "
            f"(target {acc.get('target_epsilon')}, planned {meta.get('planned_steps')} steps)"
        )
    else:
        text += "; trained WITHOUT differential privacy"
    reply = state_dir / REPLY_FILE
    if reply.is_file():
        text += f"; last reply sent for round {load_checkpoint(reply).step}"
    return text


def check_data(cfg: Config, data_path: Path, state_dir: Path, site_name: str) -> str:
    """Build (or reuse) the slice cache exactly as the ClientApp's first round will."""
    if not data_path.is_dir():
        raise ConfigError("data-path", f"{data_path} is not a folder")
    site = identify_site(
        {"data-path": str(data_path), "state-dir": str(state_dir), "site-name": site_name}, None
    )
    cache = load_site_data(cfg, site)
    return (
        f"{data_path}: {len(cache.patients)} patients, {len(cache)} slices "
        f"(cached in {state_dir / 'cache'})"
    )


def check_superlink(address: str, root_certificates: Path, timeout: float = 10.0) -> str:
    """TLS handshake with the SuperLink, verified against ``root_certificates``."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise ConfigError("--superlink", f"{address!r} is not HOST:PORT")
    context = ssl.create_default_context(cafile=str(root_certificates))
    with (
        socket.create_connection((host, int(port)), timeout=timeout) as sock,
        context.wrap_socket(sock, server_hostname=host) as tls,
    ):
        subject = dict(x[0] for x in tls.getpeercert()["subject"])
        return (
            f"{address}: TLS {tls.version()} OK, server certificate CN={subject.get('commonName')}"
        )


def check_site(
    cfg: Config,
    *,
    data_path: Path,
    state_dir: Path,
    site_name: str,
    root_certificates: Path | None = None,
    auth_key: Path | None = None,
    superlink: str | None = None,
    max_epsilon: float | None = None,
    max_delta: float | None = None,
) -> SiteReport:
    """Every check of the module docstring; the report says which failed and why."""
    data_path, state_dir = data_path.expanduser().resolve(), state_dir.expanduser().resolve()
    report = SiteReport()
    report.add(
        "node config",
        lambda: node_config_string(data_path, state_dir, site_name, max_epsilon, max_delta),
    )
    report.add(
        "privacy ceiling", check_privacy_ceiling, cfg, site_name, data_path, max_epsilon, max_delta
    )
    report.add("state dir", check_state_dir, state_dir)
    report.add("site state", summarise_state, state_dir)
    report.add("data", check_data, cfg, data_path, state_dir, site_name)
    if root_certificates is not None:
        report.add("root certificates", check_root_certificate, root_certificates)
    if auth_key is not None:
        report.add("auth key", lambda: "public key to register: " + check_auth_key(auth_key))
    if superlink is not None:
        if root_certificates is None:
            report.checks.append(Check("superlink", False, "--superlink needs --root-certificates"))
        else:
            report.add("superlink", check_superlink, superlink, root_certificates)
    return report
