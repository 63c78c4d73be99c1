"""A small certificate authority for a para site: `para collector init-ca` and `issue-cert`.

ECDSA P-256 keys, SHA-256 signatures.  The CA signs:
- the collector's server certificate (SANs: the names and addresses agents dial);
- one client certificate per node (CN and DNS SAN = the host name): under mutual TLS the
  collector takes the node's identity from it, and lets it write that host's data only;
- analysts' client certificates (CN `para-reader:NAME`, no SAN): read-only access.
Keys are written 0600, never printed.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from para.errors import ParaError
from para.formats import wire

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"
# Short by default (docs/collector.md, "Identity"): a stolen node key stops working within a
# month even if nobody revokes it; `para collector renew` re-issues what is about to expire.
CLIENT_DAYS = 30
SERVER_DAYS = 397


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path
    ca: Path
    subject: str
    not_after: dt.datetime


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, private: bool) -> None:
    write_private(path, data, 0o600 if private else 0o644)


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write `path` atomically through a temporary file that nobody else can have planted:
    a fresh random name, created exclusively (O_EXCL, never following a link), its mode set
    before any byte is written.  Keys and tokens go through here."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def init_ca(
    directory: str | Path,
    *,
    name: str = "para collector CA",
    days: int = 3650,
    server_names: list[str] | None = None,
    server_days: int = SERVER_DAYS,
    force: bool = False,
) -> tuple[Issued, Issued]:
    """Create the CA and the collector's server certificate in `directory`."""
    d = Path(directory)
    if (d / CA_KEY).exists() and not force:
        raise ParaError(
            f"a CA already exists in {d} ({CA_KEY})",
            hint="use it with `para collector issue-cert`, or pass --force to replace it "
            "(every certificate it issued stops working)",
        )
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(d / CA_KEY, _pem_key(key), private=True)
    _write(d / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), private=False)
    ca = Issued(d / CA_CERT, d / CA_KEY, d / CA_CERT, name, cert.not_valid_after_utc)
    names = server_names or default_server_names()
    server = issue(d, names[0], out=d, server=True, extra_names=names[1:], days=server_days)
    os.replace(server.cert, d / SERVER_CERT)
    os.replace(server.key, d / SERVER_KEY)
    server = Issued(d / SERVER_CERT, d / SERVER_KEY, d / CA_CERT, server.subject, server.not_after)
    return ca, server


def default_server_names() -> list[str]:
    names = []
    for n in (socket.getfqdn(), socket.gethostname(), "localhost", "127.0.0.1"):
        if n and n not in names:
            names.append(n)
    return names


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), None)
    except FileNotFoundError as e:
        raise ParaError(
            f"no CA in {directory} ({e.filename} missing)",
            hint=f"create one with `para collector init-ca --dir {directory}`",
        ) from e
    except (ValueError, TypeError) as e:
        raise ParaError(f"the CA in {directory} is not readable: {e}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ParaError(f"{directory / CA_KEY}: not an EC key made by para collector init-ca")
    return cert, key


def issue(
    ca_dir: str | Path,
    name: str,
    *,
    out: str | Path | None = None,
    days: int = CLIENT_DAYS,
    reader: bool = False,
    server: bool = False,
    extra_names: list[str] | None = None,
    not_before: dt.datetime | None = None,
) -> Issued:
    """Sign a certificate for a node (`name` = its host name), an analyst (`reader`) or a
    collector (`server`); writes NAME.crt and NAME.key into `out` (default CA_DIR/issued)."""
    ca_dir = Path(ca_dir)
    ca_cert, ca_key = _load_ca(ca_dir)
    if reader:
        wire.check_reader_name(name)
        subject = wire.READER_CN_PREFIX + name
        sans: list[x509.GeneralName] = []
        file_stem = f"reader-{name}"
    elif server:
        subject = name
        sans = [_san(n) for n in [name, *(extra_names or [])]]
        file_stem = "server"
    else:
        wire.check_host(name)
        subject = name
        sans = [x509.DNSName(name)]
        file_stem = name
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or (_now() - dt.timedelta(minutes=5))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    out_dir = Path(out) if out is not None else ca_dir / "issued"
    cert_path, key_path = out_dir / f"{file_stem}.crt", out_dir / f"{file_stem}.key"
    _write(key_path, _pem_key(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return Issued(cert_path, key_path, ca_dir / CA_CERT, subject, cert.not_valid_after_utc)


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def renew(
    ca_dir: str | Path, *, within_days: float = 10, days: int = CLIENT_DAYS,
    out: str | Path | None = None, now: dt.datetime | None = None,
) -> list[Issued]:  # fmt: skip
    """Re-issue (new key, same name) every client certificate in `out` (default CA_DIR/issued)
    that this CA signed and that expires within `within_days`; returns what was renewed."""
    ca_dir = Path(ca_dir)
    ca_cert, _ = _load_ca(ca_dir)
    out_dir = Path(out) if out is not None else ca_dir / "issued"
    now = now or _now()
    renewed = []
    for crt in sorted(out_dir.glob("*.crt")):
        try:
            cert = x509.load_pem_x509_certificate(crt.read_bytes())
        except ValueError:
            continue
        if cert.issuer != ca_cert.subject:
            continue
        if cert.not_valid_after_utc - now > dt.timedelta(days=within_days):
            continue
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        cn = cn.decode() if isinstance(cn, bytes) else cn
        if cn.startswith(wire.READER_CN_PREFIX):
            name, reader = cn[len(wire.READER_CN_PREFIX) :], True
        else:
            name, reader = cn, False
        renewed.append(issue(ca_dir, name, out=out_dir, days=days, reader=reader))
    return renewed
