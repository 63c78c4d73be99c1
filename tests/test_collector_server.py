"""The collector over real TLS on 127.0.0.1, with real shippers: delivery, identity, bad input."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from para.agent.collector_client import CollectorClient, Denied, Endpoint, Transient
from para.agent.shipper import Shipper
from para.collector import tls
from para.collector.auth import TokenStore
from para.collector.db import FeatureDB
from para.collector.server import CollectorService, ServeOptions
from para.formats import wire
from tests.collector_support import (
    agent_config,
    load_template,
    make_pki,
    segment_bytes,
    template_rows,
    wait_for,
    write_segments,
)

pytestmark = pytest.mark.no_kernel

TPL = load_template()
ROWS = template_rows(TPL)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"), ["node1", "node2", "node3"], ["alice"])


class Running:
    def __init__(self, opts: ServeOptions):
        self.opts = opts
        self.log: list[str] = []
        self.svc: CollectorService | None = None

    def start(self) -> Running:
        self.svc = CollectorService(self.opts, self.log.append)
        self.opts.listen = f"127.0.0.1:{self.svc.port}"  # a restart comes back on this port
        return self

    def stop(self) -> None:
        if self.svc is not None:
            self.svc.stop()
            self.svc = None

    @property
    def port(self) -> int:
        return int(self.opts.listen.rpartition(":")[2])

    def wait_merged(self, n: int) -> None:
        assert self.svc is not None
        db = self.svc.db
        wait_for(
            lambda: db.status()["segments"] >= n and db.status()["waiting"] == 0, what=f"{n} merged"
        )


def _opts(tmp_path: Path, pki: Path, **over: Any) -> ServeOptions:
    opts = ServeOptions(
        db=tmp_path / "db",
        listen="127.0.0.1:0",
        cert_file=pki / "server.crt",
        key_file=pki / "server.key",
        ca_file=pki / "ca.crt",
        min_free_bytes=0,
        export_every=0.1,
        compact_every=0,
    )
    for k, v in over.items():
        setattr(opts, k, v)
    return opts


@pytest.fixture
def server(tmp_path: Path, pki: Path) -> Iterator[Running]:
    run = Running(_opts(tmp_path, pki)).start()
    yield run
    run.stop()


def _client(pki: Path, port: int, who: str, **kw: Any) -> CollectorClient:
    stem = f"reader-{who}" if who == "alice" else who
    return CollectorClient(
        Endpoint(
            f"grpc+tls://127.0.0.1:{port}",
            ca_file=pki / "ca.crt",
            cert_file=pki / "issued" / f"{stem}.crt",
            key_file=pki / "issued" / f"{stem}.key",
            timeout=20,
            **kw,
        )
    )


def _header(
    name: str, seg_id: str, data: bytes, host: str = "node1", **over: Any
) -> wire.PutHeader:
    doc = {
        "host": host,
        "id": seg_id,
        "name": name,
        "size": len(data),
        "sha256": wire.sha256_hex(data),
    }
    doc.update(over)
    return wire.PutHeader(**doc)


def _count(db_path: Path, table: str = "node") -> tuple[int, int]:
    con = FeatureDB(db_path).connect()
    try:
        row = con.execute(f"SELECT count(*), count(DISTINCT (host, t)) FROM {table}").fetchone()
    finally:
        con.close()
    assert row is not None
    return int(row[0]), int(row[1])


def _shipper(
    tmp_path: Path, pki: Path, port: int, host: str, **cfg: Any
) -> tuple[Shipper, list[str]]:
    msgs: list[str] = []
    sh = Shipper(
        agent_config(pki, port, host, **cfg), tmp_path / f"spool-{host}", host, msgs.append
    )
    return sh, msgs


def test_a_killed_sender_child_loses_nothing(tmp_path: Path, pki: Path, server: Running) -> None:
    """The Flight client runs in a child of the shipper (para/agent/sender.py): one killed
    while it starts or sends costs a retry with a new child, never a segment."""
    write_segments(TPL, tmp_path / "spool-node1" / "ready", "node1", 4)
    sh, msgs = _shipper(tmp_path, pki, server.port, "node1")
    sh.start()
    try:
        pid = wait_for(lambda: sh.status()["sender"]["pids"], step=0.005, what="a child")[0]
        os.kill(pid, signal.SIGKILL)
        sent = tmp_path / "spool-node1" / "sent"
        wait_for(lambda: len(list(sent.glob("*.para"))) == 4, timeout=60, what="acks")
        st = sh.status()
    finally:
        sh.stop()
    assert list((tmp_path / "spool-node1" / "ready").glob("*.para")) == []
    assert st["sender"]["died"] >= 1 and st["sender"]["started"] >= 2, st
    assert any(f"sender process (pid {pid})" in m and "SIGKILL" in m for m in msgs), msgs
    assert st["sent"] + st["duplicates"] == 4
    server.wait_merged(4)
    assert _count(tmp_path / "db") == (4 * ROWS["node"], 4 * ROWS["node"])
    # the session over, its child is gone
    assert sh.status()["sender"]["pids"] == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_shippers_deliver_everything_once_over_mutual_tls(
    tmp_path: Path, pki: Path, server: Running
) -> None:
    shippers = []
    for host in ("node1", "node2"):
        write_segments(TPL, tmp_path / f"spool-{host}" / "ready", host, 3)
        sh, _ = _shipper(tmp_path, pki, server.port, host)
        sh.start()
        shippers.append(sh)
    for host in ("node1", "node2"):
        sent = tmp_path / f"spool-{host}" / "sent"
        wait_for(lambda s=sent: len(list(s.glob("*.para"))) == 3, what="acks")  # type: ignore[misc]
        assert list((tmp_path / f"spool-{host}" / "ready").glob("*.para")) == []
    st = shippers[0].status()
    assert st["sent"] == 3 and st["waiting_segments"] == 0 and st["last_error"] is None
    for sh in shippers:
        sh.stop()
    server.wait_merged(6)
    assert _count(tmp_path / "db") == (6 * ROWS["node"], 6 * ROWS["node"])
    status = server.svc.status()  # type: ignore[union-attr]
    assert status["received"]["stored"] == 6 and status["received"]["duplicates"] == 0


def test_a_retry_after_a_lost_ack_never_duplicates(
    tmp_path: Path, pki: Path, server: Running
) -> None:
    name, seg_id, data = segment_bytes(TPL, TPL.parts, "node1", 0, 0)
    with _client(pki, server.port, "node1") as c:
        first = c.send_segment(data, _header(name, seg_id, data))
        again = c.send_segment(data, _header(name, seg_id, data))
    assert (first.status, again.status) == (wire.STORED, wire.DUPLICATE)
    # the agent died after the ack but before moving the file: it sends it again on restart
    ready = tmp_path / "spool-node1" / "ready"
    ready.mkdir(parents=True)
    (ready / name).write_bytes(data)
    sh, _ = _shipper(tmp_path, pki, server.port, "node1")
    sh.start()
    wait_for(lambda: (tmp_path / "spool-node1" / "sent" / name).exists(), what="re-ack")
    assert sh.status()["duplicates"] == 1
    sh.stop()
    server.wait_merged(1)
    assert _count(tmp_path / "db") == (ROWS["node"], ROWS["node"])


def test_a_node_may_write_only_its_own_host(tmp_path: Path, pki: Path, server: Running) -> None:
    name, seg_id, data = segment_bytes(TPL, TPL.parts, "node2", 0, 0)
    with _client(pki, server.port, "node1") as c:
        with pytest.raises(Denied, match="may not write data of host 'node2'"):
            c.send_segment(data, _header(name, seg_id, data, host="node2"))
        # claiming its own host for another host's file does not work either
        ack = c.send_segment(data, _header(name, seg_id, data, host="node1"))
        assert ack.status == wire.REJECTED and "holds data of host 'node2'" in ack.reason
        with pytest.raises(Denied, match="may not read"):
            c.status()
    assert FeatureDB(tmp_path / "db").status()["segments"] == 0
    assert any("denied" in m for m in server.log)


def test_readers_read_and_never_write(tmp_path: Path, pki: Path, server: Running) -> None:
    name, seg_id, data = segment_bytes(TPL, TPL.parts, "node1", 0, 0)
    with _client(pki, server.port, "node1") as agent:
        agent.push_live("node1", [(1000, {"node": [[1]]})])
    with _client(pki, server.port, "alice") as reader:
        with pytest.raises(Denied, match="reader 'alice'.*may not write"):
            reader.send_segment(data, _header(name, seg_id, data))
        with pytest.raises(Denied):
            reader.push_live("node1", [(1, {})])
        assert reader.status()["received"]["stored"] == 0
        assert reader.live_snapshot("node1") == {"node1": [[1000, {"node": [[1]]}]]}


def test_clients_without_a_valid_certificate_cannot_connect(
    tmp_path: Path, pki: Path, server: Running
) -> None:
    name, seg_id, data = segment_bytes(TPL, TPL.parts, "node1", 0, 0)
    anonymous = CollectorClient(
        Endpoint(f"grpc+tls://127.0.0.1:{server.port}", ca_file=pki / "ca.crt", timeout=10)
    )
    with pytest.raises(Transient):
        anonymous.send_segment(data, _header(name, seg_id, data))
    anonymous.close()
    other = make_pki(tmp_path / "rogue", ["node1"])
    rogue = CollectorClient(
        Endpoint(
            f"grpc+tls://127.0.0.1:{server.port}",
            ca_file=pki / "ca.crt",
            cert_file=other / "issued" / "node1.crt",
            key_file=other / "issued" / "node1.key",
            timeout=10,
        )
    )
    with pytest.raises(Transient):
        rogue.send_segment(data, _header(name, seg_id, data))
    rogue.close()
    assert FeatureDB(tmp_path / "db").status()["segments"] == 0


def test_an_expired_certificate_is_reported_and_the_data_waits(
    tmp_path: Path, pki: Path, server: Running
) -> None:
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)
    tls.issue(pki, "node3", out=tmp_path / "old", days=1, not_before=old)
    write_segments(TPL, tmp_path / "spool-node3" / "ready", "node3", 1)
    sh, msgs = _shipper(
        tmp_path,
        pki,
        server.port,
        "node3",
        cert_file=str(tmp_path / "old" / "node3.crt"),
        key_file=str(tmp_path / "old" / "node3.key"),
    )
    sh.start()
    wait_for(lambda: sh.status()["failed_attempts"] >= 1, what="a refused attempt")
    sh.stop()
    st = sh.status()
    assert "expired" in st["last_error"] and "issue-cert node3" in st["last_error"]
    assert any("refused" in m and "expired" in m for m in msgs)
    # the sender child said so and ended (reaped, not counted as a death)
    assert st["sender"]["pids"] == [] and st["sender"]["died"] == 0, st["sender"]
    assert st["sender"]["last_exit"] == "exit status 1"
    assert len(list((tmp_path / "spool-node3" / "ready").glob("*.para"))) == 1


def test_garbage_truncated_and_forged_segments_are_rejected_and_service_goes_on(
    tmp_path: Path, pki: Path, server: Running
) -> None:
    name, seg_id, data = segment_bytes(TPL, TPL.parts, "node1", 0, 0)
    garbage = b"\x00\x01garbage" * 1000
    cut = data[: len(data) - 100]
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0x40
    cases = [
        (garbage, _header(name, seg_id, garbage), "not a .para file"),
        (cut, _header(name, seg_id, cut, size=len(data)), "truncated"),
        (cut, _header(name, seg_id, cut), "not a complete .para file"),
        (data, _header(name, seg_id, data, sha256="0" * 64), "SHA-256"),
        (bytes(flipped), _header(name, seg_id, bytes(flipped)), "damaged"),
        (data, _header(name, "0" * 32, data), "is not " + "0" * 32),
    ]
    with _client(pki, server.port, "node1") as c:
        for payload, header, words in cases:
            ack = c.send_segment(payload, header)
            assert ack.status == wire.REJECTED, words
            assert words in ack.reason, (words, ack.reason)
        assert c.send_segment(data, _header(name, seg_id, data)).status == wire.STORED
    server.wait_merged(1)
    assert _count(tmp_path / "db") == (ROWS["node"], ROWS["node"])
    assert not list((tmp_path / "db" / "incoming").rglob("*.part"))


def test_a_peer_cannot_reach_outside_the_database(
    tmp_path: Path, pki: Path, server: Running
) -> None:
    """Table names in a hostile catalogue and host names are checked before any path use."""
    import io
    import zipfile

    name, seg_id, data = segment_bytes(TPL, TPL.parts, "node1", 0, 0)
    src = zipfile.ZipFile(io.BytesIO(data))
    meta = json.loads(src.read("meta.json"))
    for c in meta["catalogue"]:
        if c["table"] == "node":
            c["table"] = "../../../tmp/evil"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("meta.json", json.dumps(meta))
        for n in src.namelist():
            if n != "meta.json":
                z.writestr(n.replace("node/", "../../../tmp/evil/"), src.read(n))
    evil = buf.getvalue()
    with _client(pki, server.port, "node1") as c:
        ack = c.send_segment(evil, _header(name, seg_id, evil))
    assert ack.status == wire.REJECTED and "invalid table name" in ack.reason
    assert not (tmp_path / "tmp").exists() and not Path("/tmp/evil").exists()


def test_the_shipper_sets_bad_segments_aside_and_ships_the_rest(
    tmp_path: Path, pki: Path, server: Running
) -> None:
    ready = tmp_path / "spool-node2" / "ready"
    write_segments(TPL, ready, "node2", 2)
    (ready / "node2-20200101T000000Z-000000.para").write_bytes(b"not a segment")
    name, _, data = segment_bytes(TPL, TPL.parts, "node1", 9, 0)
    (ready / "node2-20200101T000000Z-000001.para").write_bytes(data)  # another host's
    sh, msgs = _shipper(tmp_path, pki, server.port, "node2")
    sh.start()
    sent = tmp_path / "spool-node2" / "sent"
    wait_for(lambda: len(list(sent.glob("*.para"))) == 2, what="good ones sent")
    wait_for(lambda: sh.status()["rejected"] == 2, what="bad ones set aside")
    sh.stop()
    rejected = sorted(p.name for p in (tmp_path / "spool-node2" / "rejected").iterdir())
    assert rejected == [
        "node2-20200101T000000Z-000000.para",
        "node2-20200101T000000Z-000000.para.reason",
        "node2-20200101T000000Z-000001.para",
        "node2-20200101T000000Z-000001.para.reason",
    ]
    assert sum("set aside" in m for m in msgs) == 2


def test_an_outage_is_ridden_out_and_nothing_is_lost(
    tmp_path: Path, pki: Path, server: Running
) -> None:
    write_segments(TPL, tmp_path / "spool-node1" / "ready", "node1", 2)
    sh, msgs = _shipper(tmp_path, pki, server.port, "node1")
    sh.start()
    sent = tmp_path / "spool-node1" / "sent"
    wait_for(lambda: len(list(sent.glob("*.para"))) == 2, what="first two")
    server.stop()  # the collector goes away
    write_segments(TPL, tmp_path / "spool-node1" / "ready", "node1", 3, first_seq=2)
    wait_for(lambda: sh.status()["failed_attempts"] >= 3, what="retries")
    st = sh.status()
    assert st["state"] == "backing off" and st["waiting_segments"] == 3
    server.start()  # back, on the same port
    wait_for(lambda: len(list(sent.glob("*.para"))) == 5, what="all five")
    sh.stop()
    assert any("cannot reach the collector" in m for m in msgs)
    assert any("reachable again" in m for m in msgs)
    server.wait_merged(5)
    assert _count(tmp_path / "db") == (5 * ROWS["node"], 5 * ROWS["node"])


def test_a_full_disk_refuses_with_a_clear_error_and_keeps_serving(
    tmp_path: Path, pki: Path
) -> None:
    run = Running(_opts(tmp_path, pki, min_free_bytes=1 << 60)).start()
    try:
        name, seg_id, data = segment_bytes(TPL, TPL.parts, "node1", 0, 0)
        with _client(pki, run.port, "node1") as c:
            with pytest.raises(Transient, match="collector disk full: .* in reserve"):
                c.send_segment(data, _header(name, seg_id, data))
            c.push_live("node1", [(1, {"node": [[1]]})])  # other work goes on
        with _client(pki, run.port, "alice") as reader:
            assert reader.status()["received"]["unavailable"] == 1
    finally:
        run.stop()
    assert FeatureDB(tmp_path / "db").status()["segments"] == 0


def test_token_auth_accepts_good_tokens_only(tmp_path: Path, pki: Path) -> None:
    tokens = TokenStore(tmp_path / "tokens.json")
    good = tokens.add("node1")
    expired = tokens.add("node2", days=-1)
    reader = tokens.add("bob", reader=True)
    run = Running(_opts(tmp_path, pki, auth="token", tokens_file=tmp_path / "tokens.json")).start()

    def client(token: str | None) -> CollectorClient:
        return CollectorClient(
            Endpoint(
                f"grpc+tls://127.0.0.1:{run.port}", ca_file=pki / "ca.crt", token=token, timeout=10
            )
        )

    try:
        name, seg_id, data = segment_bytes(TPL, TPL.parts, "node1", 0, 0)
        with client(good) as c:
            assert c.send_segment(data, _header(name, seg_id, data)).status == wire.STORED
        with client(good + "x") as c, pytest.raises(Denied, match="unknown token"):
            c.send_segment(data, _header(name, seg_id, data))
        with client(None) as c, pytest.raises(Denied, match="no token"):
            c.send_segment(data, _header(name, seg_id, data))
        n2, id2, d2 = segment_bytes(TPL, TPL.parts, "node2", 0, 0)
        with client(expired) as c, pytest.raises(Denied, match="expired on .*add-token node2"):
            c.send_segment(d2, _header(n2, id2, d2, host="node2"))
        with client(reader) as c:
            assert c.status()["received"]["stored"] == 1
        later = tokens.add("node2")  # added while running: picked up without a restart
        with client(later) as c:
            assert c.send_segment(d2, _header(n2, id2, d2, host="node2")).status == wire.STORED
    finally:
        run.stop()


def test_plaintext_needs_to_be_asked_for(tmp_path: Path, pki: Path) -> None:
    from para.agent.shipper import validate_config
    from para.errors import ParaError

    problems = validate_config({"url": "grpc+tcp://127.0.0.1:1", "token_file": __file__})
    assert any("plaintext" in p for p in problems)
    with pytest.raises(ParaError, match="--insecure has no TLS"):
        CollectorService(_opts(tmp_path, pki, insecure=True, auth="mtls"), print)
    tokens = TokenStore(tmp_path / "t.json")
    tok = tokens.add("node1")
    run = Running(
        _opts(tmp_path, pki, insecure=True, auth="token", tokens_file=tmp_path / "t.json")
    ).start()
    try:
        assert run.svc is not None and run.svc.location.startswith("grpc+tcp://")
        name, seg_id, data = segment_bytes(TPL, TPL.parts, "node1", 0, 0)
        ep = Endpoint(f"grpc+tcp://127.0.0.1:{run.port}", token=tok, insecure=True, timeout=10)
        with CollectorClient(ep) as c:
            assert c.send_segment(data, _header(name, seg_id, data)).status == wire.STORED
        with pytest.raises(ParaError, match="plaintext"):
            CollectorClient(Endpoint(f"grpc+tcp://127.0.0.1:{run.port}", token=tok))
    finally:
        run.stop()


def test_live_samples_reach_readers(tmp_path: Path, pki: Path, server: Running) -> None:
    sh, _ = _shipper(tmp_path, pki, server.port, "node1", live=True, live_interval=0.05)
    sh.start()
    for i in range(5):
        sh.push_live(1000 * i, {"node": [[i]]})
    with _client(pki, server.port, "alice") as reader:
        wait_for(lambda: len(reader.live_snapshot().get("node1", [])) == 5, what="live samples")
        assert [s[0] for s in reader.live_snapshot()["node1"]] == [0, 1000, 2000, 3000, 4000]
    sh.stop()
    assert sh.status()["live"]["sent"] == 5


def test_a_write_that_hits_a_full_disk_keeps_nothing_and_asks_for_a_retry(
    tmp_path: Path, pki: Path, server: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC in the middle of storing (two uploads racing for the last bytes)."""
    import errno

    from para.collector.store import IncomingStore

    real = IncomingStore._write

    def write_then_fill(self: IncomingStore, tmp: Path, header: wire.PutHeader, chunks: Any) -> str:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(b"PK\x03\x04 half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(IncomingStore, "_write", write_then_fill)
    name, seg_id, data = segment_bytes(TPL, TPL.parts, "node1", 0, 0)
    with _client(pki, server.port, "node1") as c:
        with pytest.raises(Transient, match="collector disk full.*stays in the agent's spool"):
            c.send_segment(data, _header(name, seg_id, data))
        assert not list((tmp_path / "db" / "incoming").rglob("*.part"))
        monkeypatch.setattr(IncomingStore, "_write", real)
        assert c.send_segment(data, _header(name, seg_id, data)).status == wire.STORED
    server.wait_merged(1)
    assert _count(tmp_path / "db") == (ROWS["node"], ROWS["node"])


def test_a_ledger_that_hits_a_full_disk_says_disk_full_and_asks_for_a_retry(
    tmp_path: Path, pki: Path, server: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The segment written, then its ledger row refused by SQLite ("database or disk is
    full"): the node and the collector's status said "collector ledger cannot be written:
    database or disk is full", unlike every other full disk (what operators and the loaded
    CI run's test_a_full_disk_delays_but_loses_nothing look for); nothing is kept."""
    import sqlite3

    from para.collector.ledger import Ledger

    real = Ledger.add_received

    def full(self: Ledger, *args: Any, **kwargs: Any) -> bool:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Ledger, "add_received", full)
    name, seg_id, data = segment_bytes(TPL, TPL.parts, "node1", 0, 0)
    with _client(pki, server.port, "node1") as c:
        with pytest.raises(Transient, match="collector disk full.*ledger.*stays in the agent's"):
            c.send_segment(data, _header(name, seg_id, data))
        assert not [p for p in (tmp_path / "db" / "incoming").rglob("*") if p.is_file()]
        monkeypatch.setattr(Ledger, "add_received", real)
        assert c.send_segment(data, _header(name, seg_id, data)).status == wire.STORED
    server.wait_merged(1)
    assert _count(tmp_path / "db") == (ROWS["node"], ROWS["node"])


@pytest.mark.parametrize("err", ["EMFILE", "EIO", "ENOMEM"])
def test_a_passing_error_reading_an_upload_asks_for_a_retry_not_a_rejection(
    tmp_path: Path, pki: Path, server: Running, monkeypatch: pytest.MonkeyPatch, err: str
) -> None:
    """Issue 16 item 9: the collector ran out of file descriptors (or memory, or its disk
    hiccuped) while reading what arrived: the agent is asked to retry and keeps its segment,
    which then goes in."""
    import errno

    from para.collector import store

    real = store.open_segment

    def failing(path: Any, **kw: Any) -> Any:
        raise OSError(getattr(errno, err), os.strerror(getattr(errno, err)), str(path))

    monkeypatch.setattr(store, "open_segment", failing)
    name, seg_id, data = segment_bytes(TPL, TPL.parts, "node1", 0, 0)
    with _client(pki, server.port, "node1") as c:
        with pytest.raises(Transient, match="could not store the segment"):
            c.send_segment(data, _header(name, seg_id, data))
        assert server.svc is not None and server.svc.counters.rejected == 0
        monkeypatch.setattr(store, "open_segment", real)
        assert c.send_segment(data, _header(name, seg_id, data)).status == wire.STORED
    server.wait_merged(1)
