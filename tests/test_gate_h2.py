"""The gate's reading of HTTP/2 (para/collector/gate.py), on byte streams made here with the
`hpack` encoder a client would use (dynamic table, Huffman) and frames laid out by RFC 9113:
whatever way the bytes are cut into reads, the gate forwards the same bytes, rewrites every
header block the same way, and follows every gRPC message."""

from __future__ import annotations

import random

import hpack
import pytest

from para.collector import gate as g

pytestmark = pytest.mark.no_kernel

PATH = "/arrow.flight.protocol.FlightService/"
IDENT = b"agent node01 token"


def _frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return g.frame(kind, flags, sid, payload)


def _request(enc: hpack.Encoder, method: str, forged: bool = True) -> bytes:
    headers = [
        (":method", "POST"), (":scheme", "https"), (":path", PATH + method),
        (":authority", "collector"), ("content-type", "application/grpc"), ("te", "trailers"),
        ("authorization", "Bearer para_secret"), ("user-agent", "grpc-c++/1.x"),
    ]  # fmt: skip
    if forged:
        headers.append(("X-Para-Identity", "agent node02 certificate"))
    return enc.encode(headers)


def _msg(size: int, fill: int) -> bytes:
    return b"\x00" + size.to_bytes(4, "big") + bytes([fill]) * size


def client_stream() -> tuple[bytes, bytes]:
    """(the bytes a client sends, the gRPC payload bytes in its DATA frames)."""
    enc = hpack.Encoder()
    out = [
        g.PREFACE,
        _frame(g.SETTINGS, 0, 0, (4).to_bytes(2, "big") + (1 << 20).to_bytes(4, "big")),
    ]
    # stream 1: DoPut, two messages cut across frames, one frame padded
    out.append(_frame(g.HEADERS, g.END_HEADERS, 1, _request(enc, "DoPut")))
    body1 = _msg(10, 1) + _msg(40000, 2)
    pieces = [body1[:3], body1[3:16000], body1[16000:30000], body1[30000:]]
    for i, p in enumerate(pieces):
        last = i == len(pieces) - 1
        if i == 2:  # PADDED: pad length, data, padding
            out.append(_frame(g.DATA, g.PADDED, 1, bytes([7]) + p + b"\x00" * 7))
        else:
            out.append(_frame(g.DATA, g.END_STREAM if last else 0, 1, p))
    out.append(_frame(g.WINDOW_UPDATE, 0, 0, (1000).to_bytes(4, "big")))
    # stream 3: DoAction, its headers (from the encoder's dynamic table now) in HEADERS +
    # CONTINUATION, with a PRIORITY block
    block = _request(enc, "DoAction")
    out.append(_frame(g.HEADERS, g.PRIORITY_FLAG, 3, b"\x00\x00\x00\x00\x10" + block[:5]))
    out.append(_frame(g.CONTINUATION, g.END_HEADERS, 3, block[5:]))
    body3 = _msg(300, 3)
    out.append(_frame(g.DATA, g.END_STREAM, 3, body3))
    out.append(_frame(g.PING, 0, 0, b"12345678"))
    return b"".join(out), body1 + body3


class Recorder:
    def __init__(self, bounds: g.Bounds | None = None) -> None:
        self.pending = 0
        self.peak = 0
        self.seen: list[dict[bytes, bytes]] = []
        self.inbound = g.Inbound(bounds or g.Bounds(), self.caller, self.count)

    def caller(self, sid: int, headers: dict[bytes, bytes]) -> bytes:
        assert headers[b"authorization"] == b"Bearer para_secret"
        self.seen.append(headers)
        return IDENT

    def count(self, delta: int) -> None:
        self.pending += delta
        self.peak = max(self.peak, self.pending)


def parse(data: bytes) -> list[tuple[int, int, int, bytes]]:
    assert data.startswith(g.PREFACE)
    pos, out = len(g.PREFACE), []
    while pos < len(data):
        n = int.from_bytes(data[pos : pos + 3], "big")
        out.append((data[pos + 3], data[pos + 4], int.from_bytes(data[pos + 5 : pos + 9], "big"),
                    data[pos + 9 : pos + 9 + n]))  # fmt: skip
        pos += 9 + n
    assert pos == len(data)
    return out


def test_forwarded_bytes_do_not_depend_on_how_reads_cut_them() -> None:
    stream, _ = client_stream()
    whole = Recorder()
    expected = whole.inbound.feed(stream)
    rng = random.Random(16)
    for _ in range(30):
        r = Recorder()
        got, pos = [], 0
        while pos < len(stream):
            n = rng.choice([1, 2, 5, 9, 10, 100, 4096, 20000])
            got.append(r.inbound.feed(stream[pos : pos + n]))
            pos += n
        assert b"".join(got) == expected
        assert r.pending == 0 and r.peak == 40000


def test_header_blocks_are_rewritten_and_data_goes_through_untouched() -> None:
    stream, body = client_stream()
    r = Recorder()
    out = parse(r.inbound.feed(stream))
    dec = hpack.Decoder()
    blocks = [(sid, dict(dec.decode(p, raw=True))) for kind, _, sid, p in out if kind == g.HEADERS]
    assert [sid for sid, _ in blocks] == [1, 3]
    for sid, headers in blocks:
        assert headers[b"x-para-identity"] == IDENT
        assert b"authorization" not in headers and b"X-Para-Identity" not in headers
        assert headers[b":path"].endswith(b"DoPut" if sid == 1 else b"DoAction")
    assert not dec.header_table.dynamic_entries  # literals only: no state to keep in step
    data = b""
    for kind, flags, _, p in out:
        if kind == g.DATA:
            data += p[1 : len(p) - p[0]] if flags & g.PADDED else p
    assert data == body
    assert [k for k, *_ in out].count(g.PING) == 1 and not r.inbound.streams.get(3).server_done


@pytest.mark.parametrize(
    "body, words",
    [
        (b"\x00" + (g.Bounds().put_message + 1).to_bytes(4, "big"), "DoPut message of 16777217"),
        (b"\x01" + (10).to_bytes(4, "big"), "compressed gRPC message"),
    ],
)
def test_a_message_past_its_bound_is_refused_at_its_prefix(body: bytes, words: str) -> None:
    enc = hpack.Encoder()
    r = Recorder()
    r.inbound.feed(g.PREFACE + _frame(g.HEADERS, g.END_HEADERS, 1, _request(enc, "DoPut")))
    with pytest.raises(g.Refuse, match=words) as e:
        r.inbound.feed(_frame(g.DATA, 0, 1, body))
    assert e.value.stream == 1 and r.pending == 0


def test_the_caller_bytes_under_way_are_bounded() -> None:
    enc = hpack.Encoder()
    r = Recorder(g.Bounds(pending_per_caller=20 << 20))

    def count(delta: int) -> None:
        Recorder.count(r, delta)
        if r.pending > 20 << 20:
            raise g.Refuse("too much under way")

    r.inbound._pending = count
    head = g.PREFACE
    for sid in (1, 3):
        head += _frame(g.HEADERS, g.END_HEADERS, sid, _request(enc, "DoPut"))
    r.inbound.feed(head + _frame(g.DATA, 0, 1, b"\x00" + (12 << 20).to_bytes(4, "big")))
    with pytest.raises(g.Refuse, match="under way") as e:
        r.inbound.feed(_frame(g.DATA, 0, 3, b"\x00" + (12 << 20).to_bytes(4, "big")))
    assert e.value.stream == 3


def test_the_servers_settings_tell_the_client_the_gates_stream_limit() -> None:
    r = Recorder()
    out = g.Outbound(r.inbound)
    settings = b"".join(
        k.to_bytes(2, "big") + v.to_bytes(4, "big")
        for k, v in [(g.SET_HEADER_TABLE_SIZE, 8192), (g.SET_MAX_FRAME_SIZE, 1 << 20)]
    )
    data = _frame(g.SETTINGS, 0, 0, settings) + _frame(g.PING, g.ACK, 0, b"87654321")
    got = out.feed(data[:20]) + out.feed(data[20:])
    frames = parse(g.PREFACE + got)
    kind, _, _, payload = frames[0]
    items = {
        int.from_bytes(payload[i : i + 2], "big"): int.from_bytes(payload[i + 2 : i + 6], "big")
        for i in range(0, len(payload), 6)
    }
    assert items == {g.SET_HEADER_TABLE_SIZE: 8192, g.SET_MAX_FRAME_SIZE: 1 << 20,
                     g.SET_MAX_CONCURRENT_STREAMS: 32}  # fmt: skip
    assert frames[1] == (g.PING, g.ACK, 0, b"87654321")
    assert r.inbound.max_frame == 1 << 20 and r.inbound.decoder.max_allowed_table_size == 8192
    clamp = g.SET_MAX_CONCURRENT_STREAMS.to_bytes(2, "big") + (1000).to_bytes(4, "big")
    again = parse(g.PREFACE + out.feed(_frame(g.SETTINGS, 0, 0, clamp)))[0][3]
    assert int.from_bytes(again[2:6], "big") == 32


def test_a_refused_stream_reads_as_a_grpc_error() -> None:
    r = Recorder()
    frames = parse(
        g.PREFACE + g.Outbound(r.inbound).error(5, g.GRPC_UNAUTHENTICATED, "no token: 100%")
    )
    assert [(k, f, s) for k, f, s, _ in frames] == [
        (g.HEADERS, g.END_STREAM | g.END_HEADERS, 5), (g.RST_STREAM, 0, 5)
    ]  # fmt: skip
    headers = dict(hpack.Decoder().decode(frames[0][3]))
    assert headers[":status"] == "200" and headers["grpc-status"] == "16"
    assert headers["grpc-message"] == "no token: 100%25"


def _two_paths() -> bytes:
    headers = [(":method", "POST"), (":path", PATH + "ListActions"), (":path", PATH + "DoPut")]
    block = hpack.Encoder().encode([*headers, ("authorization", "Bearer para_secret")])
    return g.PREFACE + _frame(g.HEADERS, g.END_HEADERS, 1, block)


@pytest.mark.parametrize(
    "data, words",
    [
        (b"GET / HTTP/1.1\r\nHost: collector\r\n\r\n", "not HTTP/2"),
        (g.PREFACE + _frame(g.DATA, 0, 1, b"\x00" * 5), "DATA on a stream never opened"),
        (g.PREFACE + _frame(g.HEADERS, g.END_HEADERS, 2, b""), "a client may not open"),
        (g.PREFACE + _frame(g.PING, 0, 0, b"\x00" * 20000), "more than the 16384 agreed"),
        (g.PREFACE + _frame(g.PUSH_PROMISE, 0, 1, b"\x00" * 4), "frame type 5"),
        (_two_paths(), "pseudo-header :path twice"),
    ],
    ids=["http1", "data-unopened", "even-stream", "big-frame", "push", "two-paths"],
)
def test_what_breaks_the_protocol_is_refused(data: bytes, words: str) -> None:
    with pytest.raises(g.Refuse, match=words):
        Recorder().inbound.feed(data)
