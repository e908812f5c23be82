"""Development certificates for a Flower deployment: a CA, the SuperLink's TLS pair, site keys.

Layout written by ``make_dev_certificates(out, sites, server_host)``::

    OUT/ca.crt                  self-signed development CA (PEM); every site and every
                                ``flwr`` user needs it (``--root-certificates``)
    OUT/ca.key                  the CA's private key (0600): keep it off the server
    OUT/server.crt, server.key  SuperLink TLS pair (``--ssl-certfile/--ssl-keyfile``);
                                SANs: localhost, 127.0.0.1, ::1 and ``server_host``
    OUT/sites/<site>/auth.key   the site's SuperNode authentication key (0600): ECDSA
                                SECP384R1 in OpenSSH format (``--auth-supernode-private-key``)
    OUT/sites/<site>/auth.pub   its public key, OpenSSH format: the server operator registers
                                it with ``flwr supernode register``

Flower 1.42's SuperNode authentication needs an EC key on a NIST curve in OpenSSH format
(``flwr supernode register`` rejects anything else); TLS is plain X.509 PEM.

These are for development and tests. Production sites use the hospital's own PKI for the
server certificate (docs/deploy.md) and generate their SuperNode key on the site itself.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedsynth.common.errors import ConfigError, OutputExistsError
from fedsynth.common.io.atomic import atomic_write_bytes

VALID_DAYS = 365  # development certificates: one year
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PRIVATE_MODE = 0o600


@dataclass(frozen=True)
class SiteKeys:
    name: str
    private_key: Path  # OpenSSH EC private key, mode 0600
    public_key: Path  # OpenSSH public key line ("ecdsa-sha2-nistp384 AAAA... <name>")


@dataclass(frozen=True)
class DevCertificates:
    """Paths of everything ``make_dev_certificates`` wrote."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    sites: tuple[SiteKeys, ...]


def parse_sites(text: str) -> list[str]:
    """``"site-0,site-1"`` -> ``["site-0", "site-1"]``; names must be unique and file-safe."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    for name in names:
        if not SITE_NAME.match(name):
            raise ConfigError(
                "--sites", f"{name!r} is not a valid site name (letters, digits, '.', '_', '-')"
            )
    if len(set(names)) != len(names):
        raise ConfigError("--sites", f"duplicate site names in {text!r}")
    return names


def _write_private(path: Path, data: bytes) -> None:
    """Atomic write of a private key that is 0600 from the moment it appears.

    ``atomic_write_bytes`` gives the file the umask's default mode; a umask of 077 while
    writing makes that 0600, so the key is never readable by others, not even briefly.
    """
    old = os.umask(0o077)
    try:
        atomic_write_bytes(path, data)
    finally:
        os.umask(old)
    os.chmod(path, PRIVATE_MODE)  # also when replacing a file that had looser permissions


def _name(common_name: str):
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedsynth development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _subject_alt_names(server_host: str) -> list:
    entries: list = []
    for host in dict.fromkeys(["localhost", "127.0.0.1", "::1", server_host]):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return entries


def _build_ca(now: dt.datetime):
    key = ec.generate_private_key(ec.SECP384R1())
    name = _name("fedsynth development CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def _build_server(ca_key, ca_cert, server_host: str, now: dt.datetime):
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(server_host))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(_subject_alt_names(server_host)), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def make_site_key(out_dir: Path, name: str) -> SiteKeys:
    """Write ``auth.key`` (0600) and ``auth.pub`` for one site into ``out_dir``."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),  # SuperNode reads it without a passphrase
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    keys = SiteKeys(name, out_dir / "auth.key", out_dir / "auth.pub")
    _write_private(keys.private_key, private)
    atomic_write_bytes(keys.public_key, public + f" {name}\n".encode())
    return keys


def make_dev_certificates(
    out: str | Path,
    sites: list[str],
    server_host: str = "localhost",
    overwrite: bool = False,
) -> DevCertificates:
    """Create a development CA, the SuperLink's TLS pair and one auth key pair per site.

    Raises OutputExistsError if ``out/ca.crt`` exists and not ``overwrite`` (replacing a CA
    would silently invalidate every site's ``--root-certificates``).
    """
    out = Path(out).expanduser()
    if not server_host or any(c.isspace() for c in server_host):
        raise ConfigError("--server-host", f"{server_host!r} is not a host name or IP address")
    if (out / "ca.crt").exists() and not overwrite:
        raise OutputExistsError(out / "ca.crt")
    now = dt.datetime.now(dt.UTC)
    ca_key, ca_cert = _build_ca(now)
    server_key, server_cert = _build_server(ca_key, ca_cert, server_host, now)

    def pem_key(key) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    result = DevCertificates(
        ca_cert=out / "ca.crt",
        ca_key=out / "ca.key",
        server_cert=out / "server.crt",
        server_key=out / "server.key",
        sites=tuple(make_site_key(out / "sites" / name, name) for name in sites),
    )
    _write_private(result.ca_key, pem_key(ca_key))
    _write_private(result.server_key, pem_key(server_key))
    atomic_write_bytes(result.server_cert, server_cert.public_bytes(serialization.Encoding.PEM))
    atomic_write_bytes(result.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    return result


def check_root_certificate(path: str | Path) -> str:
    """Read a PEM CA certificate (bundle); return a one-line summary or raise ConfigError."""
    path = Path(path).expanduser()
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as e:
        raise ConfigError(
            "root-certificates", f"{path}: not a readable PEM certificate ({e})"
        ) from e
    now = dt.datetime.now(dt.UTC)
    expired = [c for c in certs if c.not_valid_after_utc < now]
    if expired:
        raise ConfigError(
            "root-certificates",
            f"{path}: certificate {expired[0].subject.rfc4514_string()} expired on "
            f"{expired[0].not_valid_after_utc:%Y-%m-%d}",
        )
    first = certs[0]
    return (
        f"{len(certs)} certificate(s), first {first.subject.rfc4514_string()}, "
        f"valid until {first.not_valid_after_utc:%Y-%m-%d}"
    )


def check_auth_key(path: str | Path) -> str:
    """Check a SuperNode auth key as flower-supernode will read it; return its public key line.

    Raises ConfigError naming the file when it is unreadable, not an OpenSSH EC key on a NIST
    curve, or readable by group/others.
    """
    path = Path(path).expanduser()
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), None)
    except (OSError, ValueError) as e:
        raise ConfigError(
            "auth-supernode-private-key", f"{path}: not an unencrypted OpenSSH private key ({e})"
        ) from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(
            "auth-supernode-private-key",
            f"{path}: Flower needs an ECDSA key (e.g. ssh-keygen -t ecdsa -b 384), got {type(key).__name__}",
        )
    if path.stat().st_mode & 0o077:
        raise ConfigError(
            "auth-supernode-private-key", f"{path}: readable by others; run chmod 600 {path}"
        )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return public.decode()
