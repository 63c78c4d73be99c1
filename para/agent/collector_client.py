"""Talking to a collector: what the agent's shipper and an analyst's tools use.

Errors are sorted by what the caller should do: `Transient` (retry later: the collector is
down, busy, out of disk), `Denied` (the credential is refused: fix the configuration; the data
waits), and a `wire.Ack` with status `rejected` for a segment that can never be accepted.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as fl
from cryptography import x509
from cryptography.x509.oid import NameOID

from para.agent.sender import Denied, Transient
from para.errors import ParaError
from para.formats import wire

__all__ = ["CollectorClient", "Denied", "Endpoint", "Transient", "cert_problem", "reader_endpoint"]

# gRPC's own log lines (handshake failures...) repeat what our errors say, in its words.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

CHUNK_BYTES = 1 << 20


@dataclass
class Endpoint:
    url: str
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    token: str | None = None
    insecure: bool = False
    server_name: str | None = None
    timeout: float = 60.0


def reader_endpoint(
    url: str,
    ca: str | None,
    cert: str | None,
    key: str | None,
    token_file: str | None,
    insecure: bool,
    timeout: float,
) -> Endpoint:
    """An analyst's endpoint from command-line options (para top, para collector status)."""
    token = None
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as e:
            raise ParaError(f"cannot read the token file {token_file}: {e.strerror}") from e
    return Endpoint(
        url,
        ca_file=Path(ca) if ca else None,
        cert_file=Path(cert) if cert else None,
        key_file=Path(key) if key else None,
        token=token,
        insecure=insecure,
        timeout=timeout,
    )


def check_url(url: str, insecure: bool) -> str:
    if url.startswith("grpc+tls://"):
        return url
    if url.startswith(("grpc+tcp://", "grpc://")):
        if not insecure:
            raise ParaError(
                f"collector url {url} is plaintext",
                hint="use grpc+tls://HOST:PORT, or set insecure = true to send unencrypted",
            )
        return url
    raise ParaError(f"collector url {url!r} must start with grpc+tls:// (or grpc+tcp://)")


class CollectorClient:
    def __init__(self, ep: Endpoint):
        self.ep = ep
        url = check_url(ep.url, ep.insecure)
        kwargs: dict[str, Any] = {}
        if url.startswith("grpc+tls://"):
            if ep.ca_file:
                kwargs["tls_root_certs"] = _read(ep.ca_file)
            if ep.cert_file or ep.key_file:
                if not (ep.cert_file and ep.key_file):
                    raise ParaError("a client certificate needs both cert_file and key_file")
                kwargs["cert_chain"] = _read(ep.cert_file)
                kwargs["private_key"] = _read(ep.key_file)
            if ep.server_name:
                kwargs["override_hostname"] = ep.server_name
        self._client = fl.FlightClient(url, **kwargs)
        headers = []
        if ep.token:
            headers.append((b"authorization", b"Bearer " + ep.token.encode()))
        self._options = fl.FlightCallOptions(timeout=ep.timeout, headers=headers)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> CollectorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- agents ----------------------------------------------------------------------------
    def send_segment(self, data: bytes, header: wire.PutHeader) -> wire.Ack:
        schema = pa.schema([(wire.CHUNK_COLUMN, pa.binary())])
        descriptor = fl.FlightDescriptor.for_command(header.encode())
        try:
            writer, meta_reader = self._client.do_put(descriptor, schema, options=self._options)
            try:
                for batch in _batches(data, schema):
                    writer.write_batch(batch)
                writer.done_writing()
                buf = meta_reader.read()
            finally:
                writer.close()
        except fl.FlightError as e:
            raise _classify(e) from None
        except pa.ArrowException as e:
            raise Transient(f"transfer failed: {e}") from None
        if buf is None:
            raise Transient("the collector closed the upload without an acknowledgement")
        return wire.Ack.decode(buf.to_pybytes())

    def push_live(self, host: str, samples: list[tuple[int, dict[str, Any]]]) -> None:
        self.push_live_body(wire.encode_live(host, samples))

    def push_live_body(self, body: bytes) -> None:
        """Live samples already encoded by wire.encode_live (the shipper's sender child)."""
        self._action(wire.ACTION_LIVE, body)

    # -- readers ---------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return json.loads(self._action(wire.ACTION_STATUS, b""))

    def live_snapshot(self, host: str | None = None) -> dict[str, Any]:
        body = json.dumps({"host": host}).encode() if host else b""
        return json.loads(self._action(wire.ACTION_LIVE_SNAPSHOT, body))

    def top(self, request: dict[str, Any] | None = None) -> dict[str, Any]:
        """The cluster as `para top` shows it (see para.collector.alerts.AlertService.summary)."""
        return json.loads(self._action(wire.ACTION_TOP, json.dumps(request or {}).encode()))

    def alerts(self) -> dict[str, Any]:
        """The alerts firing now and the latest alert records."""
        return json.loads(self._action(wire.ACTION_ALERTS, b""))

    def _action(self, kind: str, body: bytes) -> bytes:
        try:
            results = list(self._client.do_action(fl.Action(kind, body), options=self._options))
        except fl.FlightError as e:
            raise _classify(e) from None
        except pa.ArrowException as e:
            raise Transient(f"{kind} failed: {e}") from None
        return results[0].body.to_pybytes() if results else b""


def _batches(data: bytes, schema: pa.Schema, per_batch: int = 4) -> list[pa.RecordBatch]:
    """The bytes as record batches of `per_batch` chunks of CHUNK_BYTES, without copying."""
    buf = pa.py_buffer(data)
    out = []
    step = CHUNK_BYTES * per_batch
    for start in range(0, max(len(data), 1), step):
        sub = buf.slice(start, min(step, len(data) - start))
        n = max(1, -(-sub.size // CHUNK_BYTES))
        offsets = pa.array([min(i * CHUNK_BYTES, sub.size) for i in range(n + 1)], pa.int32())
        arr = pa.Array.from_buffers(pa.binary(), n, [None, offsets.buffers()[1], sub])
        out.append(pa.record_batch([arr], schema=schema))
    return out


def _classify(e: fl.FlightError) -> Exception:
    msg = _clean(str(e))
    if isinstance(e, (fl.FlightUnauthenticatedError, fl.FlightUnauthorizedError)):
        return Denied(msg)
    return Transient(msg)


def _clean(msg: str) -> str:
    """The collector's own words, without gRPC's wrapping and debug context."""
    for marker in (". Detail:", ". gRPC client debug context:", " gRPC client debug context:"):
        msg = msg.split(marker)[0]
    return msg.replace("Flight returned ", "").strip()


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ParaError(f"cannot read {path}: {e.strerror}") from e


def credential_problem(ep: Endpoint) -> str | None:
    """A problem with our own credential that the TLS handshake would only report as a
    closed connection: an expired or not-yet-valid client certificate."""
    if ep.cert_file:
        return cert_problem(ep.cert_file)
    return None


def cert_problem(cert_file: str | Path, now: dt.datetime | None = None) -> str | None:
    """Why a certificate will not be accepted (expired, not yet valid, unreadable), or None."""
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    except OSError as e:
        return f"cannot read certificate {cert_file}: {e.strerror}"
    except ValueError as e:
        return f"certificate {cert_file} is not PEM: {e}"
    now = now or dt.datetime.now(dt.timezone.utc)
    if cert.not_valid_after_utc < now:
        return (
            f"certificate {cert_file} ({_cn(cert)}) expired on "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        )
    if cert.not_valid_before_utc > now:
        return (
            f"certificate {cert_file} ({_cn(cert)}) is not valid before "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (check the clock)"
        )
    return None


def _cn(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else "no CN"
