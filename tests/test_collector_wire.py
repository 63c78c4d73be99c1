"""The wire protocol's checks: nothing a peer sends can name a path outside the database."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from para.collector.layout import Layout
from para.formats import wire

pytestmark = pytest.mark.no_kernel

GOOD_HOSTS = ["node001", "n1.cluster.example.org", "gpu_node-3", "A100-x8", "c1"]
BAD_HOSTS = [
    "",
    ".",
    "..",
    "../etc",
    "a/b",
    "/abs",
    "a\\b",
    ".hidden",
    "a..b",
    "trailing.",
    "-dash",
    "has space",
    "nul\x00",
    "x" * 254,
    "nœud",
    "a:b",
]


@pytest.mark.parametrize("host", GOOD_HOSTS)
def test_real_host_names_pass(host: str) -> None:
    assert wire.check_host(host) == host


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_unsafe_host_names_are_refused_with_the_name(host: str) -> None:
    with pytest.raises(wire.WireError) as e:
        wire.check_host(host)
    assert repr(host)[:40] in e.value.message


@given(st.text(min_size=1, max_size=80))
def test_any_accepted_name_stays_inside_its_directory(name: str) -> None:
    root = Path("/srv/db/incoming")
    for check in (wire.check_host, wire.check_cluster, wire.check_table_name):
        try:
            ok = check(name)
        except wire.WireError:
            continue
        assert "/" not in ok and "\\" not in ok and "\x00" not in ok
        assert ok not in (".", "..") and not ok.startswith(".")
        assert (root / ok).resolve().parent == root.resolve()


@pytest.mark.parametrize(
    "bad", ["", "0" * 31, "0" * 33, "G" * 32, "../" + "0" * 29, "ABCDEF" + "0" * 26]
)
def test_segment_ids_are_32_lowercase_hex(bad: str) -> None:
    with pytest.raises(wire.WireError):
        wire.check_segment_id(bad)
    assert wire.check_segment_id("0123456789abcdef" * 2)


@pytest.mark.parametrize("bad", ["Node", "1node", "a-b", "../x", "x/y", "", "a" * 64])
def test_table_names_are_plain_identifiers(bad: str) -> None:
    with pytest.raises(wire.WireError):
        wire.check_table_name(bad)


def test_partition_paths_check_every_component(tmp_path: Path) -> None:
    lay = Layout(tmp_path)
    p = lay.partition("node", "c1", "2026-01-02")
    assert p == tmp_path / "data" / "node" / "cluster=c1" / "date=2026-01-02"
    with pytest.raises(wire.WireError):
        lay.partition("../node", "c1", "2026-01-02")
    with pytest.raises(wire.WireError):
        lay.partition("node", "..", "2026-01-02")
    with pytest.raises(ValueError):
        lay.partition("node", "c1", "../../x")
    with pytest.raises(wire.WireError):
        lay.incoming_file("../x", "0" * 32)


def _header(**over: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "v": 1,
        "op": "segment",
        "host": "node1",
        "id": "ab" * 16,
        "name": "node1-20260101T000000Z-000001.para",
        "size": 10,
        "sha256": "0" * 64,
    }
    doc.update(over)
    return doc


def test_put_header_round_trip() -> None:
    h = wire.PutHeader("node1", "ab" * 16, "node1-20260101T000000Z-000001.para", 10, "0" * 64)
    assert wire.PutHeader.decode(h.encode()) == h


@pytest.mark.parametrize(
    ("over", "words"),
    [
        ({"v": 2}, "protocol version 2"),
        ({"op": "delete"}, "unknown upload operation"),
        ({"host": "../../etc"}, "invalid host name"),
        ({"id": "../x"}, "invalid segment id"),
        ({"name": "../x.para"}, "invalid segment file name"),
        ({"size": -1}, "invalid segment size"),
        ({"sha256": "xyz"}, "invalid sha256"),
    ],
)
def test_put_header_refuses_what_it_cannot_trust(over: dict[str, object], words: str) -> None:
    import json

    with pytest.raises(wire.WireError) as e:
        wire.PutHeader.decode(json.dumps(_header(**over)).encode())
    assert words in e.value.message


def test_put_header_refuses_non_json() -> None:
    with pytest.raises(wire.WireError, match="not JSON"):
        wire.PutHeader.decode(b"\xff\x00garbage")


def test_ack_round_trip_and_garbage() -> None:
    a = wire.Ack(wire.REJECTED, "ab" * 16, "damaged")
    assert wire.Ack.decode(a.encode()) == a
    with pytest.raises(wire.WireError):
        wire.Ack.decode(b'{"status": "maybe", "id": "x"}')
    with pytest.raises(wire.WireError):
        wire.Ack.decode(b"[]")


def test_live_round_trip_and_limits() -> None:
    samples = [(1000, {"node": [[1, 2, 3]]}), (2000, {"node": [[4, 5, 6]]})]
    host, got = wire.decode_live(wire.encode_live("node1", samples))
    assert host == "node1"
    assert got == [(1000, {"node": [[1, 2, 3]]}), (2000, {"node": [[4, 5, 6]]})]
    with pytest.raises(wire.WireError, match="not readable"):
        wire.decode_live(b"garbage")
    # a compressed bomb is cut at the limit, not inflated into memory
    bomb = zlib.compress(b'{"v":1,"host":"n","samples":[' + b"0," * 5_000_000 + b"0]}")
    with pytest.raises(wire.WireError):
        wire.decode_live(bomb, max_bytes=1 << 20)
    with pytest.raises(wire.WireError, match="invalid host"):
        wire.decode_live(wire.encode_live("../x", samples))


def test_segment_identity() -> None:
    meta = {"segment": {"id": "cd" * 16, "host": "n7"}, "host": {"hostname": "other"}}
    assert wire.segment_id_for(meta, "f" * 64) == "cd" * 16
    assert wire.host_of(meta) == "n7"
    profile = {"host": {"hostname": "laptop"}}
    assert wire.segment_id_for(profile, "0123" * 16) == ("0123" * 16)[:32]
    assert wire.host_of(profile) == "laptop"
    with pytest.raises(wire.WireError):
        wire.host_of({"host": {"hostname": "../x"}})
