"""Who is calling: a node (writes its own host's data) or an analyst (reads).

Two ways to know, chosen by `para collector serve --auth`:
- `mtls` (default): the client certificate, signed by the site CA, names the caller by the
  rule of `certificate_identity` (see tls.py); the TLS layer has already refused anyone else.
- `token`: a bearer token in the `authorization` header, looked up by its SHA-256 in the
  collector's tokens file (`para collector add-token`), which the collector re-reads when it
  changes.  Tokens can expire.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from para.errors import ParaError
from para.formats import wire

TOKEN_PREFIX = "para_"


@dataclass(frozen=True)
class Identity:
    role: str  # wire.ROLE_AGENT | wire.ROLE_READER
    name: str  # the host of an agent, the name of a reader
    via: str  # certificate | token

    def describe(self) -> str:
        return f"{self.role} {self.name!r} ({self.via})"


class AuthError(Exception):
    """The caller is not who it must be; the message is safe to send back."""


@dataclass(frozen=True)
class CertificateInfo:
    """A verified client certificate, as the collector's gate read it."""

    identity: Identity
    serial: str  # lowercase hex, no leading zeros
    subject: str  # RFC 4514
    issuer: str


def certificate_identity(der: bytes) -> CertificateInfo:
    """The caller a verified client certificate names (docs/collector.md, "Identity"):

    - its subject has exactly one common name (CN);
    - a node: the CN is its host name; the certificate has no subject alternative name, or
      exactly one, a DNS name equal to the CN;
    - a reader: the CN is `para-reader:NAME`, and there is no subject alternative name.

    Anything else (two CNs, a SAN naming another host, an IP or e-mail SAN...) is refused:
    whoever signed it, the certificate does not say one thing."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        raise AuthError("no client certificate (mutual TLS is required)") from None
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    subject = cert.subject.rfc4514_string()
    if len(cns) != 1:
        raise AuthError(
            f"client certificate {subject!r} has {len(cns)} common names: it must have one"
        )
    cn = cns[0].value
    cn = cn.decode("utf-8", "replace") if isinstance(cn, bytes) else cn
    try:
        sans = list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        sans = []
    said = ", ".join(f"{type(n).__name__}:{n.value}" for n in sans)
    if cn.startswith(wire.READER_CN_PREFIX):
        if sans:
            raise AuthError(
                f"client certificate CN {cn!r} names a reader but also {said}: a reader's "
                "certificate has no subject alternative name"
            )
    elif sans and (len(sans) != 1 or sans[0] != x509.DNSName(cn)):
        raise AuthError(
            f"client certificate CN {cn!r} and its subject alternative names ({said}) "
            "disagree: a node's certificate has one DNS name, equal to its CN"
        )
    ident = identity_from_certificate(cn)
    return CertificateInfo(
        ident, format(cert.serial_number, "x"), subject, cert.issuer.rfc4514_string()
    )


def identity_from_certificate(peer_identity: bytes | str) -> Identity:
    name = peer_identity.decode() if isinstance(peer_identity, bytes) else peer_identity
    if not name:
        raise AuthError("no client certificate identity (mutual TLS is required)")
    if name.startswith(wire.READER_CN_PREFIX):
        reader = name[len(wire.READER_CN_PREFIX) :]
        try:
            wire.check_reader_name(reader)
        except wire.WireError as e:
            raise AuthError(f"client certificate names an invalid reader: {e.message}") from None
        return Identity(wire.ROLE_READER, reader, "certificate")
    try:
        wire.check_host(name)
    except wire.WireError as e:
        raise AuthError(f"client certificate names an invalid host: {e.message}") from None
    return Identity(wire.ROLE_AGENT, name, "certificate")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """The tokens file: {"tokens": [{"sha256", "role", "name", "expires", "created"}]}."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._by_digest: dict[str, dict[str, Any]] = {}

    def stamp(self) -> tuple[int, int] | None:
        """The file's version (it is read again if it changed)."""
        with self._lock:
            self._load()
            return self._stamp

    def _load(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._by_digest, self._stamp = {}, None
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        try:
            doc = json.loads(self.path.read_text())
            entries = doc["tokens"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ParaError(f"tokens file {self.path} is not readable: {e}") from e
        self._by_digest = {e["sha256"]: e for e in entries if isinstance(e, dict)}
        self._stamp = stamp

    def identify(self, header: str | None, now: float | None = None) -> Identity:
        if not header:
            raise AuthError("no token: send `authorization: Bearer <token>` (collector.token_file)")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("the authorization header is not `Bearer <token>`")
        with self._lock:
            self._load()
            entry = self._by_digest.get(_digest(token.strip()))
        if entry is None:
            raise AuthError("unknown token (revoked, or for another collector)")
        expires = entry.get("expires")
        now = time.time() if now is None else now
        if isinstance(expires, (int, float)) and expires < now:
            when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(expires))
            raise AuthError(
                f"token of {entry.get('role')} {entry.get('name')!r} expired on {when}; "
                f"issue a new one with `para collector add-token {entry.get('name')}`"
            )
        role = entry.get("role")
        name = entry.get("name")
        try:
            if role == wire.ROLE_AGENT:
                wire.check_host(name)
            elif role == wire.ROLE_READER:
                wire.check_reader_name(name)
            else:
                raise AuthError(f"token has an unknown role {role!r}")
        except wire.WireError as e:
            raise AuthError(f"token entry is invalid: {e.message}") from None
        return Identity(str(role), str(name), "token")

    def add(self, name: str, *, reader: bool = False, days: float | None = None) -> str:
        """Create a token; returns it (shown once: only its digest is kept)."""
        role = wire.ROLE_READER if reader else wire.ROLE_AGENT
        (wire.check_reader_name if reader else wire.check_host)(name)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = time.time()
        with self._lock:
            try:
                doc = json.loads(self.path.read_text())
            except FileNotFoundError:
                doc = {"tokens": []}
            except ValueError as e:
                raise ParaError(f"tokens file {self.path} is not valid JSON: {e}") from e
            doc["tokens"].append(
                {
                    "sha256": _digest(token),
                    "role": role,
                    "name": name,
                    "created": now,
                    "expires": now + days * 86400 if days else None,
                }
            )
            from para.collector.tls import write_private

            write_private(self.path, json.dumps(doc, indent=1).encode())
        return token


REVOKED_FILE = "revoked.json"


class Revoked:
    """The collector's deny list, `<db>/revoked.json` (`para collector revoke HOST`): names
    (a node's host, `reader:NAME` for an analyst) refused whatever credential they present,
    certificate or token, and certificates (`serial:HEX`, `para collector revoke --cert FILE`)
    refused whoever they name.  Re-read when it changes: a revocation takes effect at the next
    call, and the gate drops the connections a revoked caller holds, without a restart."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._names: dict[str, dict[str, Any]] = {}

    @staticmethod
    def key(ident: Identity) -> str:
        return ident.name if ident.role == wire.ROLE_AGENT else f"reader:{ident.name}"

    def check(self, ident: Identity, serial: str | None = None) -> None:
        """AuthError if the caller's name, or the serial of its certificate, is revoked."""
        with self._lock:
            self._load()
            entry = self._names.get(self.key(ident))
            what = ident.describe()
            if entry is None and serial is not None:
                entry = self._names.get(f"serial:{serial}")
                what = f"the certificate of {what} (serial {serial})"
        if entry is not None:
            when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(entry.get("at") or 0))
            why = f": {entry['reason']}" if entry.get("reason") else ""
            raise AuthError(f"{what} was revoked on {when}{why}")

    def stamp(self) -> tuple[int, int] | None:
        """The list's version (it is read again if it changed)."""
        with self._lock:
            self._load()
            return self._stamp

    def _load(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._names, self._stamp = {}, None
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        try:
            doc = json.loads(self.path.read_text())
            self._names = {str(e["name"]): e for e in doc["revoked"] if isinstance(e, dict)}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ParaError(f"revocation list {self.path} is not readable: {e}") from e
        self._stamp = stamp

    def change(self, name: str, *, reader: bool, revoke: bool, reason: str = "") -> bool:
        """Add (or remove) a name; False if it was already so."""
        (wire.check_reader_name if reader else wire.check_host)(name)
        return self._change(f"reader:{name}" if reader else name, revoke, reason, {})

    def change_certificate(
        self, pem: bytes, *, revoke: bool, reason: str = ""
    ) -> tuple[str, str, bool]:
        """Add (or remove) one certificate by its serial: (serial, subject, changed)."""
        from cryptography import x509

        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError as e:
            raise ParaError(f"not a PEM certificate: {e}") from None
        serial = format(cert.serial_number, "x")
        subject = cert.subject.rfc4514_string()
        changed = self._change(f"serial:{serial}", revoke, reason, {"subject": subject})
        return serial, subject, changed

    def _change(self, key: str, revoke: bool, reason: str, extra: dict[str, Any]) -> bool:
        from para.collector.tls import write_private

        with self._lock:
            try:
                doc = json.loads(self.path.read_text())
            except FileNotFoundError:
                doc = {"revoked": []}
            except ValueError as e:
                raise ParaError(f"revocation list {self.path} is not valid JSON: {e}") from e
            entries = [e for e in doc["revoked"] if e.get("name") != key]
            changed = (len(entries) != len(doc["revoked"])) != revoke
            if revoke:
                entries.append({"name": key, "at": time.time(), "reason": reason, **extra})
            write_private(self.path, json.dumps({"revoked": entries}, indent=1).encode(), 0o644)
            self._stamp = None
        return changed
