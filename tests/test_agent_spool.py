"""The spool and its segments: journal writes that a full disk cannot tear, finalisation in
a child process, crash leftovers, retention, the daemon's handling of a spool it cannot
write and of wall-clock steps."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import pytest

from para.agent import config
from para.agent.daemon import Agent, Log, SteadyClock
from para.agent.finalize import FinalizeError, finalize_segment, run_child
from para.agent.segment import SegmentWriter, encode_record
from para.agent.spool import Spool, parse_name, segment_name
from para.formats import ParaFile
from para.formats.journal import encode
from para.formats.schema import catalogue

T0 = 1_800_000_000_000


def rows(i: int) -> dict:
    return {"node": [[i] * 10 + [100 + i, 200, 3, 1, 0, 0.5, 0.4, 0.3]]}


def meta() -> dict:
    return {"source": "para agent", "interval": 1.0, "catalogue": catalogue(["node", "events"])}


def test_records_are_the_formats_own():
    assert encode_record(T0, rows(1)) == encode(T0, rows(1))


def test_names_and_sequence(tmp_path):
    name = segment_name("node/17", T0, 42)
    assert name == "node_17-20270115T080000Z-000042.para"
    assert parse_name(name) == ("node_17", "20270115T080000Z", 42)
    assert parse_name("node-17-x.para") is None
    sp = Spool(tmp_path)
    sp.ensure()
    for d, seq in ((sp.ready, 3), (sp.sent, 7), (sp.current, 5)):
        (d / segment_name("node/17", T0, seq)).write_bytes(b"")
    (sp.ready / segment_name("other", T0, 99)).write_bytes(b"")
    assert sp.next_seq("node/17") == 8


def test_a_failed_write_leaves_the_journal_readable(tmp_path):
    calls = {"n": 0}

    def flaky(fd: int, data) -> int:
        calls["n"] += 1
        if calls["n"] == 4:  # half a member, then the disk is full
            os.write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)

    path = tmp_path / "seg.para"
    w = SegmentWriter(path, meta(), flaky)
    w.append(T0, encode_record(T0, rows(0)))
    w.append(T0 + 1000, encode_record(T0 + 1000, rows(1)))
    with pytest.raises(OSError):
        w.append(T0 + 2000, encode_record(T0 + 2000, rows(2)))
    size = path.stat().st_size
    assert size == w.offset  # cut back to the last whole member
    w.append(T0 + 3000, encode_record(T0 + 3000, rows(3)))
    w.close()
    with ParaFile(path) as pf:
        assert pf.recovery is not None and pf.recovery.stopped_at is None
        t = pf.read_table("node", ["t", "ctxt"]).to_pylist()
    assert [r["ctxt"] for r in t] == [100, 101, 103]


def test_finalize_in_a_child_and_recover_leftovers(tmp_path):
    done = tmp_path / "done.para"
    w = SegmentWriter(done, meta())
    for i in range(5):
        w.append(T0 + 1000 * i, encode_record(T0 + 1000 * i, rows(i)))
    w.close()
    answer = run_child(done, {"closed_by": "test"}, timeout=120)
    assert answer["samples"] == 5 and answer["rusage"]["max_rss_bytes"] > 0
    with ParaFile(done) as pf:
        assert pf.complete and pf.meta["closed_by"] == "test"
    # again: already complete, nothing to do
    assert finalize_segment(done, None)["already_complete"]
    # a leftover of a killed agent: its last member cut short
    left = tmp_path / "left.para"
    w = SegmentWriter(left, meta())
    for i in range(3):
        w.append(T0 + 1000 * i, encode_record(T0 + 1000 * i, rows(i)))
    w.close()
    with open(left, "ab") as f:
        f.write(b"PK\x03\x04 torn")
    answer = finalize_segment(left, None)
    assert answer["samples"] == 3
    with ParaFile(left) as pf:
        assert pf.complete and "recovered" in pf.meta
    with pytest.raises(FinalizeError, match="failed"):
        run_child(tmp_path / "missing.para", None, timeout=60)


def test_retention_deletes_shipped_first_then_the_oldest(tmp_path):
    sp = Spool(tmp_path)
    sp.ensure()
    now = time.time()

    def seg(d: Path, seq: int, size: int, age_h: float) -> Path:
        p = d / segment_name("n1", T0 + seq * 3_600_000, seq)
        p.write_bytes(b"x" * size)
        os.utime(p, (now - age_h * 3600, now - age_h * 3600))
        return p

    old_sent = seg(sp.sent, 1, 1000, 200)
    sent = seg(sp.sent, 2, 1000, 5)
    ready_old = seg(sp.ready, 3, 1000, 4)
    ready_new = seg(sp.ready, 4, 1000, 1)
    seg(sp.current, 5, 1000, 0)
    dropped = sp.enforce_retention(max_bytes=2500, max_age_s=168 * 3600, min_free_bytes=0)
    assert [(d.path, d.reason, d.shipped) for d in dropped] == [
        (old_sent, "age", True),
        (sent, "size", True),
        (ready_old, "size", False),
    ]
    assert ready_new.exists() and sp.usage()["bytes"] == 2000


def agent(tmp_path: Path, extra: str = "") -> Agent:
    text = (
        f'[agent]\ninterval = 1\nspool_dir = "{tmp_path / "spool"}"\n'
        'disable = ["jobs", "gpu", "fs", "infiniband", "nfs", "lustre", "rapl"]\n' + extra
    )
    return Agent(config.parse(text, "t.toml"), Log("error"))


def node_times(path: Path) -> list[int]:
    with ParaFile(path) as pf:
        return [
            int(t.timestamp() * 1000) for t in pf.read_table("node", ["t"]).column("t").to_pylist()
        ]


def test_full_disk_keeps_samples_in_memory_and_counts_the_loss(tmp_path):
    a = agent(tmp_path, "[segments]\nbuffer_samples = 5\n")
    for i in range(3):
        a._sink(T0 + 1000 * i, rows(i))
    full = {"on": True}

    def write(fd: int, data) -> int:
        if full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)

    a.write = write
    a.writer.__dict__["_write"] = write  # the open segment writes through it too
    for i in range(3, 11):
        a._sink(T0 + 1000 * i, rows(i))
    st = a.status()
    assert st["losses"]["buffered_samples"] == 5 and st["losses"]["lost_samples"] == 3
    assert "No space left" in st["losses"]["last_error"]
    full["on"] = False
    a._sink(T0 + 11_000, rows(11))
    assert a.status()["losses"]["buffered_samples"] == 0
    path = a.writer.path
    a.rotate("test")
    a._final_queue.put(None)
    a._finalizer.join(timeout=120)
    ready = a.spool.ready / path.name
    # the three oldest of the eight taken while the disk was full were dropped
    assert node_times(ready) == [T0 + 1000 * i for i in (0, 1, 2, 6, 7, 8, 9, 10, 11)]
    with ParaFile(ready) as pf:
        lost = [e for e in pf.read_table("events").to_pylist() if e["kind"] == "samples_lost"]
    (e,) = lost
    assert json.loads(e["detail"])["count"] == 3
    assert json.loads(e["detail"])["first_ms"] == T0 + 3000
    assert json.loads(e["detail"])["last_ms"] == T0 + 5000


def test_a_clock_step_starts_a_new_segment_and_no_series_jumps(tmp_path):
    a = agent(tmp_path)
    wall = [T0 * 1_000_000]
    mono = [5_000_000_000]
    a.clock = SteadyClock(wall=lambda: wall[0], mono=lambda: mono[0])
    stamps = []
    for i in range(6):
        if i == 3:
            wall[0] -= 3600 * 10**9  # NTP steps the clock an hour back
        t = a._tick()
        stamps.append(t)
        a._sink(t, rows(i))
        wall[0] += 10**9
        mono[0] += 10**9
    first_segment = stamps[:4]
    assert first_segment == [T0 + 1000 * i for i in range(4)]  # steady through the step
    assert stamps[4] == T0 + 4000 - 3_600_000  # the next segment starts on the new time
    assert stamps[5] - stamps[4] == 1000
    assert a.segments_opened == 2 and a.clock_steps == 1
    a.rotate("test")
    a._final_queue.put(None)
    a._finalizer.join(timeout=120)
    segments = a.spool.segments(a.spool.ready)
    assert len(segments) == 2
    (seg1,) = [p for p in segments if node_times(p)[0] == T0]
    assert node_times(seg1) == first_segment
    with ParaFile(seg1) as pf:
        steps = [e for e in pf.read_table("events").to_pylist() if e["kind"] == "clock_step"]
        assert pf.meta["closed_by"] == "clock step"
    assert json.loads(steps[0]["detail"])["step_ms"] == -3_600_000


def test_rejected_segments_are_counted_and_capped_and_age_never_drops_unshipped(tmp_path):
    """Issue 16 items 9 and 12: rejected/ is part of the spool's usage and kept to a tenth of
    its cap; a clock stepped forward a year deletes shipped segments only."""
    sp = Spool(tmp_path)
    sp.ensure()
    sp.rejected.mkdir()
    now = time.time()
    rejected = []
    for seq in range(5):
        p = sp.rejected / segment_name("n1", T0 + seq * 3_600_000, seq)
        p.write_bytes(b"r" * 100)
        (sp.rejected / (p.name + ".reason")).write_text("damaged\n")
        os.utime(p, (now - 10 + seq, now - 10 + seq))
        rejected.append(p)
    ready = sp.ready / segment_name("n1", T0, 9)
    ready.write_bytes(b"x" * 100)
    sent = sp.sent / segment_name("n1", T0, 8)
    sent.write_bytes(b"x" * 100)
    assert sp.usage()["rejected"] == {"segments": 5, "bytes": 500}
    dropped = sp.enforce_retention(max_bytes=3000, max_age_s=3600, min_free_bytes=0)
    assert [(d.path, d.rejected) for d in dropped] == [(p, True) for p in rejected[:2]]
    assert not (sp.rejected / (rejected[0].name + ".reason")).exists()
    assert sp.usage()["rejected"]["bytes"] == 300
    later = now + 365 * 86400  # the clock steps forward a year
    dropped = sp.enforce_retention(max_bytes=3000, max_age_s=3600, min_free_bytes=0, now=later)
    assert {d.path for d in dropped} == {sent, *rejected[2:]}
    assert ready.exists()
