"""The collector's front gate: TLS, who is calling, and what a caller's bytes may cost, before
any of them reaches the Arrow Flight server (issue 16, items 3 and 8; docs/collector.md,
"The gate").

Arrow Flight lifts gRPC's message size limit and checks a token only once gRPC has read the
whole request, and it shows the collector nothing of a client certificate but its first name.
So the collector's Flight server listens on a Unix socket in a private (0700) directory, and
this gate, an asyncio loop on a thread of the collector, listens on the public address:

- it terminates TLS itself (Python's ssl, OpenSSL): under mutual TLS it reads the verified
  client certificate and names the caller by a defined rule (auth.certificate_identity),
  refusing revoked certificates by serial as well as by name;
- it forwards each connection byte for byte, reading the client's HTTP/2 frames only as far as
  it must: every header block is decoded (HPACK) and, before any byte of a new stream goes
  on, the caller is authenticated (token or certificate) and checked against the deny list;
  the gate then writes the block again for the server without the client's `authorization`
  and `x-para-identity`, and with its own `x-para-identity` (the server believes no other);
- it follows the gRPC messages in each stream's DATA (a 5-byte prefix: flag, length) and
  refuses a declared length past the bound of its method before a byte of it is forwarded;
- it bounds connections (in all, not yet authenticated, per caller), streams per connection
  (advertised to the client in the server's SETTINGS, then enforced), new streams per second,
  header blocks, and the bytes of messages under way per caller.

A refused caller gets a gRPC error on its stream when there is one (UNAUTHENTICATED with the
reason for a bad credential, so the agent logs it and does not retry in vain), then GOAWAY, and
the connection is closed; nothing of its request was forwarded, nothing of it is kept.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hpack

from para.collector.auth import (
    AuthError,
    CertificateInfo,
    Identity,
    Revoked,
    TokenStore,
    certificate_identity,
)
from para.errors import ParaError
from para.formats import wire

IDENTITY_HEADER = b"x-para-identity"
_STRIPPED = (IDENTITY_HEADER, b"authorization")
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# HTTP/2 (RFC 9113) frame types, flags, settings and error codes used here.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE = 0, 1, 2, 3, 4, 5
PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
SET_HEADER_TABLE_SIZE, SET_MAX_CONCURRENT_STREAMS, SET_MAX_FRAME_SIZE = 1, 3, 5
H2_NO_ERROR, H2_PROTOCOL_ERROR, H2_FRAME_SIZE_ERROR = 0x0, 0x1, 0x6
H2_COMPRESSION_ERROR, H2_ENHANCE_YOUR_CALM = 0x9, 0xB
MIN_FRAME = 16384

# gRPC status codes.
GRPC_INVALID_ARGUMENT, GRPC_PERMISSION_DENIED, GRPC_RESOURCE_EXHAUSTED = 3, 7, 8
GRPC_UNAVAILABLE, GRPC_UNAUTHENTICATED = 14, 16

_FLIGHT = "/arrow.flight.protocol.FlightService/"
_FLIGHT_DETAIL = {GRPC_UNAUTHENTICATED: "Unauthenticated", GRPC_PERMISSION_DENIED: "Unauthorized",
                  GRPC_UNAVAILABLE: "Unavailable"}  # fmt: skip
READ_BYTES = 64 << 10
KIB, MIB = 1 << 10, 1 << 20


@dataclass(frozen=True)
class Bounds:
    """What one caller can cost the collector (docs/collector.md, "Bounds")."""

    connections: int = 65536  # in all (each takes three file descriptors of the collector)
    unauthenticated: int = 256  # connections whose caller is not known yet...
    unauthenticated_per_address: int = 32  # ...and of those, from one address
    per_caller: int = 64  # connections of one node or reader
    auth_seconds: float = 10.0  # TLS handshake, then the first request, each
    streams: int = 32  # requests at once on one connection
    stream_rate: float = 100.0  # new requests a second on one connection...
    stream_burst: int = 400  # ...after a burst of this many
    header_block: int = 64 * KIB  # one request's headers, compressed and decoded
    put_message: int = wire.PUT_MESSAGE_MAX  # one DoPut message (a batch of a segment)
    action_message: int = wire.LIVE_MESSAGE_MAX + 64 * KIB  # one DoAction request
    other_message: int = 64 * KIB  # any other method's message
    pending_per_caller: int = 64 * MIB  # declared bytes of messages under way, one caller
    linger_seconds: float = 10.0  # reading (and dropping) what a refused client still
    linger_bytes: int = 64 * MIB  # sends, until it reads our answer and goes

    def message_bound(self, path: str) -> tuple[str, int]:
        method = path[len(_FLIGHT) :] if path.startswith(_FLIGHT) else path
        if method == "DoPut":
            return method, self.put_message
        if method == "DoAction":
            return method, self.action_message
        return method[:64], self.other_message


def _listen(host: str | None, port: int) -> socket.socket:
    family, kind, proto, _, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Refuse(Exception):
    """Stop this connection: answer `stream` (if any) with gRPC `code` and `message`, then
    GOAWAY.  `kind` is how it is counted; `who` names the offender."""

    def __init__(
        self,
        message: str,
        *,
        code: int = GRPC_RESOURCE_EXHAUSTED,
        stream: int = 0,
        h2: int = H2_ENHANCE_YOUR_CALM,
        kind: str = "bounds",
    ) -> None:
        super().__init__(message)
        self.message, self.code, self.stream, self.h2, self.kind = message, code, stream, h2, kind
        self.who = ""


def server_ssl_context(cert: Path, key: Path, ca: Path | None) -> ssl.SSLContext:
    """TLS 1.2+ for gRPC (ALPN h2); with `ca`, a client certificate it signed is required
    (and, OpenSSL's default for a server, one fit for client authentication)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"])
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise ParaError(f"cannot use the server certificate {cert} and key {key}: {e}") from e
    if ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(ca))
        except (OSError, ssl.SSLError) as e:
            raise ParaError(f"cannot read the CA of the client certificates {ca}: {e}") from e
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


# -- HTTP/2 and HPACK, as far as the gate needs them -----------------------------------------


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload
    )


def _hpack_int(value: int, bits: int, first: int) -> bytes:
    top = (1 << bits) - 1
    if value < top:
        return bytes((first | value,))
    out = [first | top]
    value -= top
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_literal(headers: list[tuple[bytes, bytes]]) -> bytes:
    """A header block of literals "never indexed" with literal names: it reads the same
    whatever the decoder's dynamic table holds, and leaves that table as it was.  So the gate
    can write blocks to the server (whose table it never fills) and into the server's stream to
    the client, with no state to keep in step."""
    out = bytearray()
    for name, value in headers:
        out += b"\x10"
        out += _hpack_int(len(name), 7, 0) + name
        out += _hpack_int(len(value), 7, 0) + value
    return bytes(out)


def header_frames(stream: int, block: bytes, end_stream: bool) -> bytes:
    """HEADERS (+ CONTINUATION) frames carrying `block`, each within the smallest frame size
    every HTTP/2 peer accepts."""
    chunks = [block[i : i + MIN_FRAME] for i in range(0, len(block), MIN_FRAME)] or [b""]
    out = []
    for i, chunk in enumerate(chunks):
        flags = END_HEADERS if i == len(chunks) - 1 else 0
        if i == 0:
            out.append(frame(HEADERS, flags | (END_STREAM if end_stream else 0), stream, chunk))
        else:
            out.append(frame(CONTINUATION, flags, stream, chunk))
    return b"".join(out)


def goaway(last_stream: int, code: int, debug: str = "") -> bytes:
    payload = last_stream.to_bytes(4, "big") + code.to_bytes(4, "big") + debug.encode()[:256]
    return frame(GOAWAY, 0, 0, payload)


def grpc_message(text: str) -> bytes:
    """gRPC's percent-encoding of grpc-message (printable ASCII but `%` as is)."""
    out = bytearray()
    for b in text.encode():
        out += bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b
    return bytes(out)


@dataclass(slots=True)
class _Stream:
    method: str
    bound: int
    prefix: bytes = b""  # bytes of the 5-byte message prefix seen so far
    remaining: int = 0  # bytes of the current message still to come
    declared: int = 0  # size of the current message (counted against its caller)
    client_done: bool = False
    server_done: bool = False
    answered: bool = False  # the server sent its response headers


class Inbound:
    """The client's half of one connection: frames in, the bytes to forward out, or Refuse.

    Bounds what it holds: a partial frame header, one control frame, one header block; DATA
    goes through as it comes.  `caller(stream, headers)` authenticates a new stream and
    returns the identity header's value; `pending(delta)` counts message bytes under way."""

    def __init__(
        self,
        bounds: Bounds,
        caller: Callable[[int, dict[bytes, bytes]], bytes],
        pending: Callable[[int], None],
    ) -> None:
        self.bounds = bounds
        self._caller, self._pending = caller, pending
        self.decoder = hpack.Decoder(max_header_list_size=bounds.header_block)
        self.max_frame = MIN_FRAME  # the server's SETTINGS_MAX_FRAME_SIZE (Outbound sets it)
        self.streams: dict[int, _Stream] = {}
        self.last_stream = 0  # the highest stream the client opened
        self.forwarded = 0  # the highest stream forwarded to the server
        self._rest = b""
        self._preface = False
        self._data: tuple[int, int, int, int, int] | None = None  # stream, length, at, d0, d1
        self._block: tuple[int, int, bytearray] | None = None  # stream, flags, fragments
        self._tokens = float(bounds.stream_burst)
        self._refilled = time.monotonic()

    def feed(self, data: bytes) -> bytes:
        buf = self._rest + data if self._rest else data
        out: list[Any] = []  # bytes and memoryviews
        pos = 0
        if not self._preface:
            if len(buf) < len(PREFACE):
                if not PREFACE.startswith(buf):
                    raise Refuse("not HTTP/2 (gRPC)", h2=H2_PROTOCOL_ERROR, kind="protocol")
                self._rest = buf
                return b""
            if not buf.startswith(PREFACE):
                raise Refuse("not HTTP/2 (gRPC)", h2=H2_PROTOCOL_ERROR, kind="protocol")
            out.append(PREFACE)
            pos = len(PREFACE)
            self._preface = True
        end = len(buf)
        view = memoryview(buf)  # what is forwarded as is, without a copy
        while pos < end:
            if self._data is not None:
                pos = self._data_piece(buf, view, pos, out)
                continue
            if end - pos < 9:
                break
            length = int.from_bytes(buf[pos : pos + 3], "big")
            kind, flags = buf[pos + 3], buf[pos + 4]
            sid = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            if length > self.max_frame:
                raise Refuse(
                    f"a frame of {length} bytes: more than the {self.max_frame} agreed",
                    h2=H2_FRAME_SIZE_ERROR,
                    kind="protocol",
                )
            if kind != DATA and length > self.bounds.header_block:  # held whole: bounded
                raise Refuse(
                    f"a header block of more than {self.bounds.header_block} bytes"
                    if kind in (HEADERS, CONTINUATION)
                    else f"a control frame (type {kind}) of {length} bytes",
                    stream=sid if kind == HEADERS and sid > self.last_stream and sid % 2 else 0,
                )
            if self._block is not None and (kind != CONTINUATION or sid != self._block[0]):
                raise Refuse("a header block interrupted", h2=H2_PROTOCOL_ERROR, kind="protocol")
            if kind == DATA:
                self._data_start(view, pos, length, flags, sid, out)
                pos += 9
                continue
            if end - pos < 9 + length:
                break
            payload = buf[pos + 9 : pos + 9 + length]
            if kind in (HEADERS, CONTINUATION):
                out.append(self._header_frame(kind, flags, sid, payload))
            elif kind == PUSH_PROMISE or (kind in (RST_STREAM, PRIORITY) and sid == 0):
                raise Refuse(f"frame type {kind} here", h2=H2_PROTOCOL_ERROR, kind="protocol")
            else:
                if kind == RST_STREAM:
                    self.close_stream(sid)
                out.append(view[pos : pos + 9 + length])
            pos += 9 + length
        self._rest = bytes(buf[pos:])
        return b"".join(out)

    # -- DATA: followed piece by piece, never held ----------------------------------------
    def _data_start(
        self, view: memoryview, pos: int, length: int, flags: int, sid: int, out: list[Any]
    ) -> None:
        if sid == 0 or sid > self.last_stream:
            raise Refuse("DATA on a stream never opened", h2=H2_PROTOCOL_ERROR, kind="protocol")
        if flags & PADDED and length == 0:
            raise Refuse("DATA padding too long", h2=H2_PROTOCOL_ERROR, kind="protocol")
        out.append(view[pos : pos + 9])
        if flags & END_STREAM:
            st = self.streams.get(sid)
            if st is not None:
                st.client_done = True
        if length == 0:
            self._data_end(sid)
            return
        # d0, d1: where the data lies in the payload (a PADDED frame's first byte is the pad
        # length; -1 until it is known)
        d0, d1 = (1, -1) if flags & PADDED else (0, length)
        self._data = (sid, length, 0, d0, d1)

    def _data_piece(self, buf: bytes, view: memoryview, pos: int, out: list[Any]) -> int:
        assert self._data is not None
        sid, length, at, d0, d1 = self._data
        take = min(length - at, len(buf) - pos)
        if d1 < 0:  # the pad length byte first
            pad = buf[pos]
            if pad >= length:
                raise Refuse("DATA padding too long", h2=H2_PROTOCOL_ERROR, kind="protocol")
            d1 = length - pad
        st = self.streams.get(sid)
        if st is not None:
            lo, hi = max(at, d0), min(at + take, d1)
            if hi > lo:
                self._messages(sid, st, view[pos + lo - at : pos + hi - at])
        out.append(view[pos : pos + take])
        at += take
        if at == length:
            self._data = None
            self._data_end(sid)
        else:
            self._data = (sid, length, at, d0, d1)
        return pos + take

    def _data_end(self, sid: int) -> None:
        st = self.streams.get(sid)
        if st is not None and st.client_done and st.server_done:
            self.close_stream(sid)

    def _messages(self, sid: int, st: _Stream, data: memoryview) -> None:
        i, n = 0, len(data)
        while i < n:
            if st.remaining:
                take = min(st.remaining, n - i)
                st.remaining -= take
                i += take
                if not st.remaining:
                    self._pending(-st.declared)
                    st.declared = 0
                continue
            need = 5 - len(st.prefix)
            st.prefix += bytes(data[i : i + need])
            i += need
            if len(st.prefix) < 5:
                return
            flag, size = st.prefix[0], int.from_bytes(st.prefix[1:5], "big")
            st.prefix = b""
            if flag:
                raise Refuse(
                    f"a compressed gRPC message on {st.method}: para's clients never compress",
                    code=GRPC_INVALID_ARGUMENT,
                    stream=sid,
                )
            if size > st.bound:
                raise Refuse(
                    f"a {st.method} message of {size} bytes: more than the {st.bound} allowed",
                    stream=sid,
                )
            if size:
                try:
                    self._pending(size)  # the caller's bytes under way
                except Refuse as r:
                    r.stream = sid
                    raise
                st.declared = st.remaining = size

    # -- header blocks: decoded, checked, written again -----------------------------------
    def _header_frame(self, kind: int, flags: int, sid: int, payload: bytes) -> bytes:
        if kind == HEADERS:
            if sid == 0 or sid % 2 == 0:
                raise Refuse("HEADERS on a stream a client may not open", h2=H2_PROTOCOL_ERROR,
                             kind="protocol")  # fmt: skip
            start, stop = 0, len(payload)
            if flags & PADDED:
                if not payload or payload[0] >= len(payload):
                    raise Refuse("bad HEADERS padding", h2=H2_PROTOCOL_ERROR, kind="protocol")
                start, stop = 1, len(payload) - payload[0]
            if flags & PRIORITY_FLAG:
                start += 5
            if start > stop:
                raise Refuse("a HEADERS frame too short", h2=H2_PROTOCOL_ERROR, kind="protocol")
            self._block = (sid, flags, bytearray(payload[start:stop]))
        else:
            if self._block is None:
                raise Refuse("CONTINUATION out of place", h2=H2_PROTOCOL_ERROR, kind="protocol")
            self._block[2].extend(payload)
        block = self._block[2]
        if len(block) > self.bounds.header_block:
            raise Refuse(
                f"a header block of more than {self.bounds.header_block} bytes",
                stream=sid if sid > self.last_stream or sid in self.streams else 0,
            )
        if not flags & END_HEADERS:
            return b""
        sid, first_flags, _ = self._block
        self._block = None
        return self._headers(sid, first_flags & END_STREAM != 0, bytes(block))

    def _headers(self, sid: int, end_stream: bool, block: bytes) -> bytes:
        try:
            decoded = self.decoder.decode(block, raw=True)
        except hpack.OversizedHeaderListError:
            raise Refuse(
                f"headers decoding to more than {self.bounds.header_block} bytes",
                stream=sid if sid > self.last_stream else 0,
            ) from None
        except hpack.HPACKError as e:
            raise Refuse(f"bad header compression: {e}", h2=H2_COMPRESSION_ERROR,
                         kind="protocol") from None  # fmt: skip
        headers = [(bytes(n), bytes(v)) for n, v in decoded]
        kept = [(n, v) for n, v in headers if n.lower() not in _STRIPPED]
        st = self.streams.get(sid)
        if st is not None:  # trailers of an open stream
            if end_stream:
                st.client_done = True
                self._data_end(sid)
            return header_frames(sid, encode_literal(kept), end_stream)
        if sid <= self.last_stream:
            raise Refuse("HEADERS on a closed stream", h2=H2_PROTOCOL_ERROR, kind="protocol")
        self.last_stream = sid
        named: dict[bytes, bytes] = {}
        for n, v in headers:
            if n.startswith(b":") and n in named:  # malformed (RFC 9113 8.3): which to believe?
                raise Refuse(f"pseudo-header {n.decode('latin-1')} twice", stream=sid,
                             code=GRPC_INVALID_ARGUMENT, kind="protocol")  # fmt: skip
            named.setdefault(n.lower(), v)
        ident = self._caller(sid, named)  # may refuse: credential, deny list, connections
        if len(self.streams) >= self.bounds.streams:
            raise Refuse(f"more than {self.bounds.streams} requests at once on one connection",
                         stream=sid)  # fmt: skip
        now = time.monotonic()
        self._tokens = min(
            float(self.bounds.stream_burst),
            self._tokens + (now - self._refilled) * self.bounds.stream_rate,
        )
        self._refilled = now
        if self._tokens < 1:
            raise Refuse(
                f"more than {self.bounds.stream_rate:.0f} new requests a second on one connection",
                stream=sid,
            )
        self._tokens -= 1
        method, bound = self.bounds.message_bound(named.get(b":path", b"").decode("latin-1"))
        self.streams[sid] = _Stream(method, bound, client_done=end_stream)
        self.forwarded = sid
        return header_frames(sid, encode_literal([*kept, (IDENTITY_HEADER, ident)]), end_stream)

    def close_stream(self, sid: int) -> None:
        st = self.streams.pop(sid, None)
        if st is not None and st.remaining:
            self._pending(-st.declared)

    def close(self) -> None:
        for sid in list(self.streams):
            self.close_stream(sid)


class Outbound:
    """The server's half: forwarded whole frames at a time (so the gate can put its own
    between them), its first SETTINGS telling the client the gate's stream limit."""

    def __init__(self, inbound: Inbound) -> None:
        self.inbound = inbound
        self._rest = b""
        self._settings_seen = False

    def feed(self, data: bytes) -> bytes:
        buf = self._rest + data if self._rest else data
        out: list[bytes] = []
        pos, start, end = 0, 0, len(buf)
        streams = self.inbound.streams
        while end - pos >= 9:
            length = int.from_bytes(buf[pos : pos + 3], "big")
            if end - pos < 9 + length:
                break
            kind, flags = buf[pos + 3], buf[pos + 4]
            sid = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            if kind == SETTINGS and not flags & ACK:
                out.append(buf[start:pos])
                out.append(self._settings(buf[pos + 9 : pos + 9 + length]))
                start = pos + 9 + length
            elif kind in (HEADERS, DATA):
                st = streams.get(sid)
                if st is not None:
                    st.answered = st.answered or kind == HEADERS
                    if flags & END_STREAM:
                        st.server_done = True
                        if st.client_done:
                            self.inbound.close_stream(sid)
            elif kind == RST_STREAM:
                self.inbound.close_stream(sid)
            pos += 9 + length
        out.append(buf[start:pos])
        self._rest = bytes(buf[pos:])
        return b"".join(out)

    def _settings(self, payload: bytes) -> bytes:
        items = []
        limit = self.inbound.bounds.streams
        for i in range(0, len(payload) - len(payload) % 6, 6):
            key = int.from_bytes(payload[i : i + 2], "big")
            value = int.from_bytes(payload[i + 2 : i + 6], "big")
            if key == SET_HEADER_TABLE_SIZE:
                self.inbound.decoder.max_allowed_table_size = value
            elif key == SET_MAX_FRAME_SIZE:
                self.inbound.max_frame = max(MIN_FRAME, value)
            elif key == SET_MAX_CONCURRENT_STREAMS:
                value = min(value, limit)
                limit = -1
            items.append((key, value))
        if limit >= 0 and not self._settings_seen:
            items.append((SET_MAX_CONCURRENT_STREAMS, limit))
        self._settings_seen = True
        body = b"".join(k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in items)
        return frame(SETTINGS, 0, 0, body)

    def error(self, sid: int, code: int, message: str) -> bytes:
        """Frames ending stream `sid` with a gRPC error: trailers-only if the server has not
        answered it, else trailers; nothing if the server has ended it."""
        st = self.inbound.streams.get(sid)
        if st is not None and st.server_done:
            return b""
        status = [(b"grpc-status", str(code).encode()), (b"grpc-message", grpc_message(message))]
        if code in _FLIGHT_DETAIL:
            # and Arrow Flight's own status (what a Flight server adds): the client raises
            # the error Flight would have, with the same words (a Flight error where Flight
            # has one: ArrowInvalid for RESOURCE_EXHAUSTED)
            status += [
                (b"x-arrow-status", b"5"),  # arrow::StatusCode::IOError, as Flight's are
                (b"x-arrow-status-message-bin", base64.b64encode(message.encode())),
                (b"x-arrow-status-detail-bin", base64.b64encode(_FLIGHT_DETAIL[code].encode())),
            ]
        if st is None or not st.answered:
            status = [(b":status", b"200"), (b"content-type", b"application/grpc"), *status]
        # then RST_STREAM(NO_ERROR): "stop sending, the answer is complete" (RFC 9113 8.1)
        return header_frames(sid, encode_literal(status), True) + frame(
            RST_STREAM, 0, sid, H2_NO_ERROR.to_bytes(4, "big")
        )


# -- connections --------------------------------------------------------------------------


@dataclass
class _Caller:
    connections: int = 0
    pending: int = 0


class _Conn:
    def __init__(self, gate: Gate, peer: str) -> None:
        self.gate = gate
        self.peer = peer  # address:port
        self.address = peer.rpartition(":")[0] or peer
        self.identity: Identity | None = None
        self.cert: CertificateInfo | None = None
        self.cert_error: str | None = None
        self.token: str | None = None
        self.closing = False
        self.writer: asyncio.StreamWriter | None = None
        self.upstream: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None
        self.inbound = Inbound(gate.bounds, self.caller, self.pending)
        self.outbound = Outbound(self.inbound)

    @property
    def who(self) -> str:
        """The offender's name: the caller, else its certificate's, else its address."""
        if self.identity is not None:
            return self.identity.name
        return self.cert.identity.name if self.cert is not None else self.address

    def caller(self, sid: int, headers: dict[bytes, bytes]) -> bytes:
        """Who opens stream `sid`: its identity header's value, or Refuse."""
        g = self.gate
        try:
            ident = self._authenticate(sid, headers)
        except AuthError as e:
            r = Refuse(str(e), code=GRPC_UNAUTHENTICATED, stream=sid, h2=H2_NO_ERROR,
                       kind="unauthenticated")  # fmt: skip
            r.who = self.address
            raise r from None
        try:
            g.revoked.check(ident, self.cert.serial if self.cert is not None else None)
        except AuthError as e:
            r = Refuse(str(e), code=GRPC_UNAUTHENTICATED, stream=sid, h2=H2_NO_ERROR,
                       kind="denied")  # fmt: skip
            r.who = ident.name
            raise r from None
        except ParaError as e:
            raise Refuse(f"the collector cannot read its deny list: {e.message}",
                         code=GRPC_UNAVAILABLE, stream=sid, h2=H2_NO_ERROR,
                         kind="error") from None  # fmt: skip
        if self.identity is None:
            g.admit(self, ident, sid)  # may refuse: too many connections of this caller
        return f"{ident.role} {ident.name} {ident.via}".encode()

    def _authenticate(self, sid: int, headers: dict[bytes, bytes]) -> Identity:
        tokens = self.gate.tokens
        if tokens is None:  # mutual TLS: the certificate, read once per connection
            if self.cert is None:
                raise AuthError(self.cert_error or "no client certificate")
            return self.cert.identity
        value = headers.get(b"authorization", b"").decode("latin-1") or None
        if self.identity is not None and value == self.token:
            return self.identity
        try:
            ident = tokens.identify(value)
        except ParaError as e:
            raise Refuse(f"the collector cannot read its tokens: {e.message}",
                         code=GRPC_UNAVAILABLE, stream=sid, h2=H2_NO_ERROR,
                         kind="error") from None  # fmt: skip
        if self.identity is not None and ident != self.identity:
            r = Refuse(
                f"{ident.describe()} on a connection of {self.identity.describe()}: one "
                "connection speaks for one caller",
                code=GRPC_PERMISSION_DENIED,
                stream=sid,
                kind="denied",
            )
            r.who = self.identity.name
            raise r
        self.token = value
        return ident

    def pending(self, delta: int) -> None:
        assert self.identity is not None
        c = self.gate.callers[self.gate.key(self.identity)]
        c.pending += delta
        if delta > 0 and c.pending > self.gate.bounds.pending_per_caller:
            raise Refuse(
                f"{c.pending} bytes of messages under way for {self.identity.describe()}: more "
                f"than the {self.gate.bounds.pending_per_caller} allowed"
            )

    def recheck(self) -> None:
        """After the deny list or the tokens changed: still the caller it was?"""
        assert self.identity is not None
        g = self.gate
        try:
            if g.tokens is not None and g.tokens.identify(self.token) != self.identity:
                raise AuthError(f"{self.identity.describe()}: its token changed")
            g.revoked.check(self.identity, self.cert.serial if self.cert is not None else None)
        except AuthError as e:
            r = Refuse(str(e), code=GRPC_UNAUTHENTICATED, h2=H2_NO_ERROR, kind="denied")
            r.who = self.identity.name
            raise r from None


# -- the gate -----------------------------------------------------------------------------


@dataclass
class GateCounters:
    connections: int = 0  # accepted, in all
    refused: dict[str, int] = field(default_factory=dict)  # by kind


class Gate:
    """Listens on `host:port` and forwards to the Flight server on the Unix socket
    `upstream`.  `ssl_context` None: plaintext (`--insecure`).  `tokens` None: callers are
    named by their client certificate (mutual TLS)."""

    def __init__(
        self,
        host: str,
        port: int,
        upstream: str,
        *,
        ssl_context: ssl.SSLContext | None,
        tokens: TokenStore | None,
        revoked: Revoked,
        report: Callable[[str, str, str], None],
        log: Callable[[str], None],
        bounds: Bounds | None = None,
    ) -> None:
        self.host, self.port, self.upstream = host, port, upstream
        self.ssl, self.tokens, self.revoked = ssl_context, tokens, revoked
        self.report, self.log = report, log
        self.bounds = bounds or Bounds()
        self.callers: dict[str, _Caller] = {}
        self.counters = GateCounters()
        self._conns: set[_Conn] = set()
        self._unauth = 0
        self._strangers: dict[str, int] = {}  # address -> connections not authenticated yet
        self._logged: dict[tuple[str, str], tuple[float, int]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: socket.socket
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> Gate:
        self._file_limit()
        # asyncio (3.11+) gives every TLS connection a 256 KiB read buffer, zeroed, so resident:
        # a TLS record is at most 16 KiB, and 64 KiB keeps idle connections cheap (by
        # thousands of nodes); this process has no other use for asyncio's TLS
        import asyncio.sslproto as sslproto

        if getattr(sslproto.SSLProtocol, "max_size", 0) > READ_BYTES:
            sslproto.SSLProtocol.max_size = READ_BYTES  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._run, name="para-collector-gate", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failed is not None:
            raise self._failed
        return self

    def _file_limit(self) -> None:
        """Each connection takes three descriptors (the client's, ours to Flight, Flight's):
        raise the soft limit to the hard one, and take no more connections than it allows."""
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY:
            hard = max(soft, 1 << 20)
        if soft != resource.RLIM_INFINITY and soft < hard:
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
                soft = hard
        room = max(16, (soft - 256) // 3) if soft != resource.RLIM_INFINITY else 1 << 30
        if room < self.bounds.connections:
            self.bounds = dataclasses.replace(self.bounds, connections=room)
            self.log(
                f"at most {room} connections: the collector may open {soft} files "
                "(raise LimitNOFILE / ulimit -n for more nodes)"
            )

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._listener = _listen(self.host.strip("[]") or None, self.port)
        except OSError as e:
            self._failed = e
            self._ready.set()
            loop.close()
            return
        self.port = self._listener.getsockname()[1]
        tasks = [loop.create_task(self._accept_loop()), loop.create_task(self._sweep())]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            for t in tasks:
                t.cancel()
            self._listener.close()
            for conn in list(self._conns):
                conn.closing = True
                for w in (conn.writer, conn.upstream):
                    if w is not None:
                        w.transport.abort()
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "connections": len(self._conns),
                "unauthenticated": self._unauth,
                "accepted": self.counters.connections,
                "refused": dict(self.counters.refused),
            }

    @staticmethod
    def key(ident: Identity) -> str:
        return Revoked.key(ident)

    # -- one connection ---------------------------------------------------------------------
    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, peer = await loop.sock_accept(self._listener)
            except OSError as e:  # out of descriptors, of buffers: let some come back
                self._refused("collector", "error", f"cannot accept: {e}", quiet=True)
                await asyncio.sleep(0.1)
                continue
            addr = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
            conn = self._take(addr)
            if conn is None:
                sock.close()
            else:
                conn.task = loop.create_task(self._connection(conn, sock))

    def _take(self, addr: str) -> _Conn | None:
        """A new connection from `addr`, unless it is one too many."""
        b = self.bounds
        address = addr.rpartition(":")[0]
        what = (
            f"{len(self._conns)} connections" if len(self._conns) >= b.connections
            else f"{self._unauth} connections not authenticated yet"
            if self._unauth >= b.unauthenticated
            else f"{b.unauthenticated_per_address} connections not authenticated yet from "
            f"{address}" if self._strangers.get(address, 0) >= b.unauthenticated_per_address
            else ""
        )  # fmt: skip
        if what:
            self._refused(address, "bounds", f"{what}: no more taken ({addr})")
            return None
        conn = _Conn(self, addr)
        with self._lock:
            self._conns.add(conn)
            self._unauth += 1
            self._strangers[address] = self._strangers.get(address, 0) + 1
            self.counters.connections += 1
        return conn

    async def _connection(self, conn: _Conn, sock: socket.socket) -> None:
        try:
            await self._serve(conn, sock)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # the client went away
        except asyncio.CancelledError:
            pass  # the gate stops
        finally:
            conn.closing = True
            conn.inbound.close()
            with self._lock:
                self._conns.discard(conn)
                if conn.identity is None:
                    self._stranger_gone(conn)
                else:
                    c = self.callers[self.key(conn.identity)]
                    c.connections -= 1
                    if c.connections == 0:
                        del self.callers[self.key(conn.identity)]
            for w in (conn.upstream, conn.writer):
                if w is not None:
                    w.transport.abort()
            if conn.writer is None:
                sock.close()

    async def _serve(self, conn: _Conn, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.bounds.auth_seconds
        reader = asyncio.StreamReader(limit=READ_BYTES)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:  # the TLS handshake, within the time a caller has to say who it is
            transport, _ = await asyncio.wait_for(
                loop.connect_accepted_socket(
                    lambda: protocol, sock, ssl=self.ssl,
                    ssl_handshake_timeout=self.bounds.auth_seconds if self.ssl else None,
                ),
                self.bounds.auth_seconds,
            )  # fmt: skip
        except (asyncio.TimeoutError, ssl.SSLError, OSError) as e:
            late = isinstance(e, (asyncio.TimeoutError, ConnectionAbortedError))
            why = "no TLS handshake" if late else f"TLS: {e}"
            self._refused(conn.address, "handshake", f"{why} from {conn.peer}", quiet=True)
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        conn.writer = writer
        if self.ssl is not None and self.tokens is None:
            sslobj = writer.get_extra_info("ssl_object")
            der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
            try:
                conn.cert = certificate_identity(der or b"")
            except AuthError as e:
                conn.cert_error = str(e)  # said at its first request
            else:  # known from the handshake on: it counts as its caller's
                try:
                    self.admit(conn, conn.cert.identity, 0)
                except Refuse as r:
                    self._refused(r.who, r.kind, f"{r.message} ({conn.peer})")
                    return
        up_reader, conn.upstream = await asyncio.open_unix_connection(self.upstream)
        inward = asyncio.create_task(self._inward(conn, reader, writer))
        outward = asyncio.create_task(self._outward(conn, up_reader, writer))
        timer = asyncio.get_running_loop().call_at(deadline, self._too_slow, conn)
        try:
            await asyncio.wait((inward, outward), return_when=asyncio.FIRST_COMPLETED)
            if conn.closing and not inward.done():
                await inward  # refusing: it lingers until the client has our answer (bounded)
            elif not inward.done():  # the server ended: let the client read what it sent
                with contextlib.suppress(OSError, asyncio.TimeoutError):
                    await asyncio.wait_for(writer.drain(), self.bounds.linger_seconds)
        finally:
            timer.cancel()
            for t in (inward, outward):
                t.cancel()
            await asyncio.gather(inward, outward, return_exceptions=True)

    async def _inward(
        self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        up = conn.upstream
        assert up is not None
        try:
            while not conn.closing:
                data = await reader.read(READ_BYTES)
                if not data:
                    return
                out = conn.inbound.feed(data)
                if out and not conn.closing:
                    up.write(out)
                    await up.drain()
        except Refuse as r:
            await self._refuse(conn, reader, writer, r)

    async def _outward(
        self, conn: _Conn, up: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            data = await up.read(READ_BYTES)
            if not data or conn.closing:
                return
            out = conn.outbound.feed(data)
            if out:
                writer.write(out)
                await writer.drain()

    async def _refuse(
        self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, r: Refuse
    ) -> None:
        """Say why, close: nothing more goes to the server; what the client still sends is
        read and dropped until it goes (a gRPC client does once it has our answer), for
        10 s or 64 MiB at most, so that it reads our answer rather than a reset."""
        self._stop(conn, r)

        async def linger() -> None:
            await writer.drain()
            dropped = 0
            while dropped < self.bounds.linger_bytes:
                data = await reader.read(READ_BYTES)
                if not data:
                    return
                dropped += len(data)

        with contextlib.suppress(OSError, asyncio.TimeoutError, ssl.SSLError):
            await asyncio.wait_for(linger(), self.bounds.linger_seconds)

    def _stop(self, conn: _Conn, r: Refuse) -> None:
        conn.closing = True
        if conn.upstream is not None:
            conn.upstream.transport.abort()  # the server drops what it held of this caller
        out = conn.outbound.error(r.stream, r.code, r.message) if r.stream else b""
        out += goaway(max(conn.inbound.forwarded, r.stream), r.h2, r.message)
        if conn.writer is not None and not conn.writer.is_closing():
            conn.writer.write(out)
        who = r.who or conn.who
        self._refused(who, r.kind, f"{r.message} ({conn.peer})")

    def _too_slow(self, conn: _Conn) -> None:
        if conn.identity is None and not conn.closing:
            self._stop(conn, Refuse(f"no request within {self.bounds.auth_seconds:g} s",
                                    h2=H2_NO_ERROR, kind="timeout"))  # fmt: skip
            if conn.writer is not None:
                conn.writer.close()

    def admit(self, conn: _Conn, ident: Identity, sid: int) -> None:
        with self._lock:
            c = self.callers.setdefault(self.key(ident), _Caller())
            if c.connections >= self.bounds.per_caller:
                if c.connections == 0:
                    del self.callers[self.key(ident)]
                r = Refuse(
                    f"{ident.describe()} has {c.connections} connections open: no more allowed",
                    stream=sid,
                )
                r.who = ident.name
                raise r
            c.connections += 1
            self._stranger_gone(conn)
            conn.identity = ident

    def _stranger_gone(self, conn: _Conn) -> None:
        self._unauth -= 1
        left = self._strangers.pop(conn.address, 1) - 1
        if left:
            self._strangers[conn.address] = left

    async def _sweep(self) -> None:
        """Once a second: if the deny list or the tokens changed, every connection is checked
        again (a revoked caller loses the connections it holds, not only the next ones)."""
        stamp = self._versions(None)
        while True:
            await asyncio.sleep(1.0)
            now = self._versions(stamp)
            if now == stamp:
                continue
            stamp = now
            for conn in list(self._conns):
                if conn.identity is None or conn.closing:
                    continue
                try:
                    conn.recheck()
                except Refuse as r:
                    self._stop(conn, r)
                    if conn.writer is not None:
                        conn.writer.close()
                except ParaError:
                    pass

    def _versions(self, before: Any) -> Any:
        try:
            return (self.revoked.stamp(), self.tokens.stamp() if self.tokens else None)
        except ParaError as e:
            self._refused("collector", "error", e.message, quiet=True)
            return before

    def _refused(self, who: str, kind: str, why: str, quiet: bool = False) -> None:
        """Count, name the offender (status), log once a minute per offender and kind."""
        with self._lock:
            self.counters.refused[kind] = self.counters.refused.get(kind, 0) + 1
            now = time.monotonic()
            last, skipped = self._logged.get((who, kind), (-1e9, 0))
            say = now - last >= 60
            self._logged[(who, kind)] = (now, 0) if say else (last, skipped + 1)
            while len(self._logged) > 10_000:
                del self._logged[next(iter(self._logged))]
        if not quiet:
            self.report(who, kind, why)
        if say:
            more = f" (and {skipped} more like it)" if skipped else ""
            self.log(f"gate refused {who}: {why}{more}")
