"""Hostile segments and a site to aim them at, for the attack tests (issue 16) and
benchmarks/bench_attacks.py.

Every file here is what an attacker holding one node's credential (or a buggy agent) can send:
built from the real recording of tests/fixtures/collector, then broken in one way.  `Site` is a
real `para collector serve` process on 127.0.0.1 with an agent client per host, a reader, and
the collector's resident memory read from /proc.
"""

from __future__ import annotations

import io
import json
import socket
import sqlite3
import ssl
import time
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from para.agent.collector_client import CollectorClient, Endpoint
from para.formats import journal, wire
from tests.collector_support import (
    FIXTURE,
    CollectorProcess,
    Template,
    load_template,
    segment_bytes,
    shifted_parts,
    wait_for,
)

TPL = load_template()
TPL_PATH = FIXTURE
MIB = 1 << 20


def memory(pid: int) -> tuple[int, int]:
    """(resident now, resident peak) of a process, in bytes (the kernel's VmRSS, VmHWM)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


# -- hostile files ---------------------------------------------------------------------------


def _with_table(
    tpl: Template, table: str, change: Callable[[pa.Table], pa.Table]
) -> dict[str, bytes]:
    parts = dict(tpl.parts)
    name = f"{table}/part-00000.parquet"
    data = change(pq.read_table(pa.BufferReader(parts[name])))
    keys = [c["name"] for c in journal.table_layout(tpl.meta["catalogue"])[table][:1]]
    parts[name] = journal.parquet_bytes(data, keys)
    return parts


def null_times(tpl: Template = TPL) -> dict[str, bytes]:
    """The `node` table with every `t` null."""
    return _with_table(
        tpl, "node", lambda t: t.set_column(0, "t", pa.nulls(len(t), journal.TIME_TYPE))
    )


def far_times(tpl: Template = TPL) -> dict[str, bytes]:
    """The `node` table dated in the year 33658 (past any date a partition can take)."""
    return _with_table(
        tpl,
        "node",
        lambda t: t.set_column(
            0,
            "t",
            pa.array([10**15 + i for i in range(len(t))], pa.int64()).cast(journal.TIME_TYPE),
        ),
    )


def retyped_catalogue(tpl: Template = TPL) -> tuple[dict[str, bytes], dict[str, Any]]:
    """`node.load1` declared and written as text (the database holds it as float)."""
    cat = [
        {**c, "type": "str"} if (c["table"], c["name"]) == ("node", "load1") else c
        for c in tpl.meta["catalogue"]
    ]
    parts = _with_table(
        tpl,
        "node",
        lambda t: t.set_column(
            t.schema.get_field_index("load1"), "load1", t.column("load1").cast(pa.string())
        ),
    )
    return parts, {"catalogue": cat}


def rezip(data: bytes, change: Callable[[str, bytes], tuple[bytes, int]]) -> bytes:
    """The same members, each through `change(name, bytes) -> (bytes, compression)`."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as zin, zipfile.ZipFile(out, "w") as zout:
        for name in zin.namelist():
            body, how = change(name, zin.read(name))
            zout.writestr(name, body, how, compresslevel=9 if how else None)
    return out.getvalue()


def meta_bomb(data: bytes, size: int = 512 * MIB) -> bytes:
    """meta.json padded with `size` bytes of blanks, deflated (about 1/1000 of it on the wire)."""

    def change(name: str, body: bytes) -> tuple[bytes, int]:
        if name == "meta.json":
            return body + b" " * size, zipfile.ZIP_DEFLATED
        return body, zipfile.ZIP_STORED if name.endswith(".parquet") else zipfile.ZIP_DEFLATED

    return rezip(data, change)


def parquet_bomb(tpl: Template = TPL, rows: int = 200_000, width: int = 4096) -> dict[str, bytes]:
    """A `node` part whose `events`-like text column repeats one `width`-byte string on every
    row: dictionary-encoded and compressed it is a few KiB, decoded rows x width bytes."""
    parts = dict(tpl.parts)
    t0 = pq.read_table(pa.BufferReader(parts["node/part-00000.parquet"])).column("t")[0].as_py()
    times = pa.array([t0] * rows, journal.TIME_TYPE)
    text = pa.array(["x" * width] * rows, pa.string())
    table = pa.table({"t": times, "kind": text, "name": text, "detail": text})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", use_dictionary=True)
    parts["events/part-00000.parquet"] = buf.getvalue()
    return parts


# -- a site ----------------------------------------------------------------------------------


class Site:
    """A collector process, its agents (one client each) and a reader.  With `tokens`
    (name -> bearer token; the reader is "alice"), the collector runs `--auth token` and the
    clients send those tokens instead of their certificates."""

    def __init__(
        self, tmp_path: Path, pki: Path, *args: str, tokens: dict[str, str] | None = None
    ) -> None:
        self.tmp, self.pki = tmp_path, pki
        self.db = tmp_path / "db"
        self.tokens = tokens
        if tokens is not None:
            from para.collector.auth import TokenStore

            store = TokenStore(tmp_path / "tokens.json")
            for who in list(tokens):
                tokens[who] = store.add(who, reader=who == "alice")
            args = (*args, "--auth", "token", "--tokens", str(tmp_path / "tokens.json"))
        self.col = CollectorProcess(self.db, pki, *args).start()
        self.seq: dict[str, int] = {}

    def reset_peak(self) -> None:
        """Start the kernel's peak resident size (VmHWM) afresh, from the size now."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    @property
    def pid(self) -> int:
        assert self.col.proc is not None
        return self.col.proc.pid

    def memory(self) -> tuple[int, int]:
        return memory(self.pid)

    def endpoint(self, who: str, timeout: float = 60.0) -> Endpoint:
        stem = f"reader-{who}" if who == "alice" else who
        if self.tokens is not None:
            return Endpoint(
                f"grpc+tls://127.0.0.1:{self.col.port}",
                ca_file=self.pki / "ca.crt",
                token=self.tokens[who],
                timeout=timeout,
            )
        return Endpoint(
            f"grpc+tls://127.0.0.1:{self.col.port}",
            ca_file=self.pki / "ca.crt",
            cert_file=self.pki / "issued" / f"{stem}.crt",
            key_file=self.pki / "issued" / f"{stem}.key",
            timeout=timeout,
        )

    def client(self, who: str, timeout: float = 60.0) -> CollectorClient:
        return CollectorClient(self.endpoint(who, timeout))

    def segment(
        self,
        host: str,
        parts: dict[str, bytes] | None = None,
        extra_meta: dict[str, Any] | None = None,
    ) -> tuple[wire.PutHeader, bytes]:
        seq = self.seq.get(host, 0)
        self.seq[host] = seq + 1
        shift = seq * TPL.duration_ms
        parts = parts if parts is not None else shifted_parts(TPL, shift)
        name, seg_id, data = segment_bytes(TPL, parts, host, seq, shift, extra_meta=extra_meta)
        return self.header(host, name, seg_id, data), data

    @staticmethod
    def header(host: str, name: str, seg_id: str, data: bytes) -> wire.PutHeader:
        return wire.PutHeader(host, seg_id, name, len(data), wire.sha256_hex(data))

    def send(self, host: str, header: wire.PutHeader, data: bytes) -> wire.Ack:
        with self.client(host) as c:
            return c.send_segment(data, header)

    def send_good(self, host: str) -> wire.Ack:
        header, data = self.segment(host)
        ack = self.send(host, header, data)
        assert ack.status == wire.STORED, ack
        return ack

    def merged(self, host: str) -> int:
        con = sqlite3.connect(f"file:{self.db / 'ledger.sqlite3'}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute(
                # merged and in the tables' logs (a batch still in `batches` is not yet)
                "SELECT count(*) FROM segments WHERE host = ? AND state = 'merged'"
                " AND (batch IS NULL OR batch NOT IN (SELECT id FROM batches))",
                (host,),
            ).fetchone()[0]
        finally:
            con.close()

    def wait_merged(self, host: str, n: int, timeout: float = 90.0) -> float:
        """Seconds until `n` segments of `host` are merged."""
        t0 = time.monotonic()
        wait_for(lambda: self.merged(host) >= n, timeout=timeout, what=f"{n} merged of {host}")
        return time.monotonic() - t0

    def status(self) -> dict[str, Any]:
        with self.client("alice") as c:
            return c.status()

    def log(self) -> str:
        return self.col.output()

    def stop(self) -> None:
        self.col.stop()


# -- a hand-made HTTP/2 client: what a gRPC library would never send --------------------------


class RawH2:
    """gRPC over TLS with the frames written by hand (preface, SETTINGS, HEADERS, DATA),
    with node/reader `who`'s certificate, or a bearer `token`, or neither."""

    FLIGHT = "/arrow.flight.protocol.FlightService/"

    def __init__(
        self, port: int, pki: Path, who: str | None = None, token: str | None = None,
        cert: tuple[Path, Path] | None = None, timeout: float = 60.0,
    ) -> None:  # fmt: skip
        import hpack

        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.set_alpn_protocols(["h2"])
        if who is not None:
            stem = f"reader-{who}" if who == "alice" else who
            cert = (pki / "issued" / f"{stem}.crt", pki / "issued" / f"{stem}.key")
        if cert is not None:
            ctx.load_cert_chain(*cert)
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        self.token = token
        self.enc = hpack.Encoder()
        self.dec = hpack.Decoder()
        self.sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + self.frame(4, 0, 0))
        self._buf = b""

    @staticmethod
    def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
        head = len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big")
        return head + payload

    def request_block(self, method: str, extra: list[tuple[str, str]] = ()) -> bytes:  # type: ignore[assignment]
        headers = [
            (":method", "POST"), (":scheme", "https"), (":path", self.FLIGHT + method),
            (":authority", "localhost"), ("content-type", "application/grpc"), ("te", "trailers"),
        ]  # fmt: skip
        if self.token is not None:
            headers.append(("authorization", f"Bearer {self.token}"))
        return self.enc.encode(headers + list(extra))

    def open(self, stream: int, method: str, end_stream: bool = False) -> None:
        """HEADERS opening `stream` for `method` (END_HEADERS; END_STREAM if asked)."""
        flags = 0x4 | (0x1 if end_stream else 0)
        self.sock.sendall(self.frame(1, flags, stream, self.request_block(method)))

    def send(self, stream: int, data: bytes, end_stream: bool = False) -> None:
        """DATA frames of at most 16 KiB, ignoring flow control."""
        step = 16384
        for i in range(0, max(len(data), 1), step):
            last = i + step >= len(data)
            flags = 0x1 if end_stream and last else 0
            self.sock.sendall(self.frame(0, flags, stream, data[i : i + step]))

    def stream_message(self, stream: int, size: int, chunk: int = 1 << 20) -> int:
        """A gRPC message declaring `size` bytes, then that many bytes (until the collector
        closes the connection): returns the bytes sent."""
        sent = 0
        try:
            self.send(stream, b"\x00" + size.to_bytes(4, "big"))
            block = b"\x00" * chunk
            while sent < size:
                self.send(stream, block[: min(chunk, size - sent)])
                sent += min(chunk, size - sent)
        except OSError:
            pass
        return sent

    def frames(self, timeout: float = 30.0) -> list[tuple[int, int, int, Any]]:
        """Every frame the collector sends until it closes the connection (HEADERS decoded)."""
        self.sock.settimeout(timeout)
        out = []
        try:
            while True:
                data = self.sock.recv(1 << 16)
                if not data:
                    break
                self._buf += data
                while len(self._buf) >= 9:
                    n = int.from_bytes(self._buf[:3], "big")
                    if len(self._buf) < 9 + n:
                        break
                    kind, flags = self._buf[3], self._buf[4]
                    sid = int.from_bytes(self._buf[5:9], "big")
                    payload: Any = self._buf[9 : 9 + n]
                    if kind == 1:
                        payload = dict(self.dec.decode(payload))
                    out.append((kind, flags, sid, payload))
                    self._buf = self._buf[9 + n :]
        except (OSError, ssl.SSLError):
            pass
        return out

    def close(self) -> None:
        self.sock.close()


def streams_flood(raw: RawH2) -> int:
    """40 requests opened at once on one connection (their bodies never sent).  Each flood
    returns the stream the collector should answer (0: whichever went too far)."""
    for i in range(40):  # 32 at once are allowed
        raw.open(1 + 2 * i, "DoAction")
    return 1 + 2 * 32


def continuation_flood(raw: RawH2) -> int:
    """A header block that never ends: CONTINUATION frames of 16 KiB, on and on."""
    block = raw.request_block("DoAction")
    raw.sock.sendall(raw.frame(1, 0, 1, block))
    for _ in range(64):
        raw.sock.sendall(raw.frame(9, 0, 1, b"\x00" * 16384))
    return 1


def hpack_bomb(raw: RawH2) -> int:
    """4 KB of header stored in the decoder's table, then named a thousand times, a byte
    each: a 5 KB block that decodes to 4 MB."""
    big = ("x-big", "a" * 4000)
    block = raw.request_block("DoAction", [big] * 1000)
    assert len(block) < 16384
    raw.sock.sendall(raw.frame(1, 0x4, 1, block))
    return 1


def rapid_reset(raw: RawH2) -> int:
    """Open a request and cancel it at once (RST_STREAM), a thousand times."""
    for i in range(1000):
        sid = 1 + 2 * i
        raw.open(sid, "DoAction")
        raw.sock.sendall(raw.frame(3, 0, sid, (8).to_bytes(4, "big")))
    return 0


def grpc_status(frames: list[tuple[int, int, int, Any]], stream: int) -> tuple[str, str]:
    """(grpc-status, grpc-message) the collector ended `stream` with."""
    for kind, _, sid, payload in frames:
        if kind == 1 and sid == stream and "grpc-status" in payload:
            return payload["grpc-status"], payload.get("grpc-message", "")
    raise AssertionError(f"stream {stream} was not ended with a gRPC status: {frames}")


def goaway(frames: list[tuple[int, int, int, Any]]) -> str:
    """The debug text of the collector's GOAWAY."""
    for kind, _, _, payload in frames:
        if kind == 7:
            return bytes(payload[8:]).decode()
    raise AssertionError(f"no GOAWAY: {frames}")


def foreign_certificate(
    directory: Path, cn: str, sans: list[str], ca_name: str = "a site CA"
) -> tuple[Path, Path, Path]:
    """A CA that is not para's, and a client certificate it signs with common name `cn` and
    DNS names `sans`: (ca.crt, client.crt, client.key)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from para.collector import tls

    tls.init_ca(directory, name=ca_name, server_names=["localhost"])
    ca_cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in sans]), critical=False
        )
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    crt, pem_key = directory / "client.crt", directory / "client.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return directory / "ca.crt", crt, pem_key


def new_id() -> str:
    return uuid.uuid4().hex


def extra(name: str, body: bytes) -> tuple[bytes, int]:
    return body, zipfile.ZIP_STORED if name.endswith(".parquet") else zipfile.ZIP_DEFLATED


def describe(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1, default=str)
