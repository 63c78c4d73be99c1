"""The .para format: round trips, crashes, truncation, bad input, standard readers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from para.errors import FormatError, ParaError
from para.formats import ParaFile, ParaWriter
from para.formats.container import scan
from para.formats.schema import TABLES

from .conftest import REPO

T0 = 1_790_000_000_000


def node_row(i: int) -> list:
    n = len(TABLES["node"].metrics)
    return [i * 7 + k if TABLES["node"].metrics[k].type == "int" else 0.5 * k for k in range(n)]


def disk_rows(i: int) -> list[list]:
    width = len(TABLES["disk"].metrics)
    return [["vda", *[i * 100 + k for k in range(width)]], ["loop0", *[0] * width]]


def write_run(path: Path, n: int, close: bool = True) -> ParaWriter:
    w = ParaWriter(path, {"host": {"hostname": "h1"}, "interval": 1.0})
    for i in range(n):
        t = T0 + i * 1000
        rows = {"node": [node_row(i)], "disk": disk_rows(i)}
        if i == 2:
            rows["events"] = [[t + 5, "note", None, "hello", json.dumps({"x": 1})]]
        w.append(t, rows)
    if close:
        w.close({"exit": {"exit_code": 0}})
    else:
        w.abandon()
    return w


def test_round_trip(tmp_path):
    p = tmp_path / "r.para"
    write_run(p, 10)
    with ParaFile(p) as pf:
        assert pf.complete and pf.recovery is None
        assert pf.tables == ["node", "disk", "events"]
        node = pf.read_table("node")
        assert node.num_rows == 10
        assert node.column("cpu_user").to_pylist() == [i * 7 for i in range(10)]
        disk = pf.read_table("disk").to_pylist()
        vda = [r for r in disk if r["device"] == "vda"]
        assert [r["reads"] for r in vda] == [i * 100 for i in range(10)]
        ev = pf.read_table("events").to_pylist()
        assert ev[0]["name"] == "hello" and json.loads(ev[0]["detail"]) == {"x": 1}
        st_ = pf.stats()
        assert st_["samples"] == 10 and st_["start"] == T0 / 1000 and st_["end"] == T0 / 1000 + 9
        metrics = len(TABLES["node"].metrics) + 2 * len(TABLES["disk"].metrics)
        assert st_["values"] == 10 * metrics
        assert pf.meta["exit"] == {"exit_code": 0}


def test_readable_without_para(tmp_path):
    """A user with unzip, pyarrow or DuckDB reads the data with the standard readers."""
    p = tmp_path / "r.para"
    write_run(p, 5)
    with zipfile.ZipFile(p) as zf:
        assert zf.testzip() is None
        names = zf.namelist()
        assert names[0] == "meta.json" and names[-1] == "end.json"
        assert "disk/part-00000.parquet" in names
        meta = json.loads(zf.read("meta.json"))
        assert meta["format_version"] == 1
        assert any(c["name"] == "read_bytes" and c["unit"] == "bytes" for c in meta["catalogue"])
        table = pq.read_table(zf.open("disk/part-00000.parquet"))
        assert table.num_rows == 10
        zf.extractall(tmp_path / "x")
    n = (
        duckdb.connect()
        .execute(
            f"SELECT count(*), max(reads) FROM read_parquet('{tmp_path}/x/disk/*.parquet') "
            "WHERE device = 'vda'"
        )
        .fetchone()
    )
    assert n == (5, 400)


def test_unfinished_file_is_recovered(tmp_path):
    p = tmp_path / "u.para"
    write_run(p, 7, close=False)
    with ParaFile(p) as pf:
        assert not pf.complete
        assert pf.recovery.journal_samples == 7
        assert "was not closed" in pf.recovery.message and "7 samples" in pf.recovery.message
        assert pf.read_table("node").num_rows == 7
        assert pf.stats()["samples"] == 7
        fin = pf.recover()
    assert fin.samples == 7
    with ParaFile(p) as pf:
        assert pf.complete and pf.read_table("disk").num_rows == 14


@pytest.mark.parametrize("where", [0.0, 0.5, 0.99])
def test_torn_last_record(tmp_path, where):
    """A write cut anywhere inside the last record (header or data) loses that record only."""
    p = tmp_path / "t.para"
    write_run(p, 6, close=False)
    last = scan(p).members[-1]
    header_start = last.offset - len(last.name) - 30
    os.truncate(p, header_start + 1 + int(where * (p.stat().st_size - header_start - 2)))
    with ParaFile(p) as pf:
        assert pf.recovery is not None
        assert pf.recovery.journal_samples == 5
        assert f"offset {scan(p).end}" in pf.recovery.message
        assert pf.read_table("node").column("cpu_user").to_pylist() == [i * 7 for i in range(5)]


def test_flipped_byte_stops_at_that_record(tmp_path):
    p = tmp_path / "c.para"
    write_run(p, 6, close=False)
    members = scan(p).members
    victim = members[4]  # journal record of sample 3
    with open(p, "r+b") as f:
        f.seek(victim.offset + 3)
        b = f.read(1)
        f.seek(victim.offset + 3)
        f.write(bytes([b[0] ^ 0xFF]))
    with ParaFile(p) as pf:
        assert pf.recovery.journal_samples == 3
        assert "fails its checksum" in pf.recovery.message


def test_truncated_complete_file_yields_what_it_holds(tmp_path):
    p = tmp_path / "big.para"
    write_run(p, 20)
    with zipfile.ZipFile(p) as zf:
        disk_end = zf.getinfo("disk/part-00000.parquet").header_offset + 200
    os.truncate(p, disk_end)
    with ParaFile(p) as pf:
        assert not pf.complete
        assert "cut short" in pf.recovery.message
        assert pf.read_table("node").num_rows == 20  # the node part came before the cut
        assert "disk" not in pf.tables
        with pytest.raises(FormatError, match="cut short after its Parquet parts"):
            pf.recover()


def test_not_a_para_file(tmp_path):
    p = tmp_path / "x.para"
    p.write_text("hello, world\n")
    with pytest.raises(FormatError, match=r"not a \.para file \(offset 0 holds"):
        ParaFile(p)
    with pytest.raises(FormatError, match="no such file"):
        ParaFile(tmp_path / "missing.para")


def test_newer_format_is_refused_with_a_hint(tmp_path):
    p = tmp_path / "new.para"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("meta.json", json.dumps({"format": "para", "format_version": 99}))
    with pytest.raises(FormatError) as e:
        ParaFile(p)
    assert "version 99" in str(e.value) and "upgrade para" in str(e.value)


def test_new_columns_and_tables_do_not_break_readers(tmp_path):
    """A file from a newer para (an extra column, an extra table) reads; an older part that
    lacks a column reads with nulls there."""
    from para.formats.schema import catalogue

    cat = catalogue(["node", "disk"])
    cat.insert(
        len(TABLES["node"].columns),
        {
            "table": "node",
            "name": "future_metric",
            "unit": "x",
            "kind": "gauge",
            "type": "int",
            "source": "new",
            "description": "",
        },
    )
    cat.append(
        {
            "table": "future",
            "name": "t",
            "unit": "ms",
            "kind": "info",
            "type": "int",
            "source": "new",
            "description": "",
        }
    )
    cat.append(
        {
            "table": "future",
            "name": "v",
            "unit": "x",
            "kind": "gauge",
            "type": "float",
            "source": "new",
            "description": "",
        }
    )
    p = tmp_path / "future.para"
    w = ParaWriter(p, {"catalogue": cat})
    for i in range(3):
        w.append(T0 + i * 1000, {"node": [[*node_row(i), 42]], "future": [[1.5]]})
    w.close()
    with ParaFile(p) as pf:
        assert pf.read_table("node").column("future_metric").to_pylist() == [42] * 3
        assert pf.read_table("future").column("v").to_pylist() == [1.5] * 3
        assert pf.read_table("node", ["t", "cpu_user"]).num_rows == 3


def test_unwritable_output_is_refused_up_front(tmp_path):
    with pytest.raises(ParaError, match="does not exist"):
        ParaWriter(tmp_path / "nope" / "x.para", {})
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.geteuid() != 0:  # root writes anyway
        with pytest.raises(ParaError, match="no permission"):
            ParaWriter(ro / "x.para", {})
    with pytest.raises(ParaError, match="is a directory"):
        ParaWriter(tmp_path, {})


cells = st.one_of(st.none(), st.integers(-(2**62), 2**62))
names = st.text(min_size=1, max_size=12)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    samples=st.lists(
        st.tuples(
            st.lists(
                cells, min_size=len(TABLES["net"].metrics), max_size=len(TABLES["net"].metrics)
            ),
            names,
            st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=3),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_round_trip_property(tmp_path_factory, samples):
    """Whatever values the samplers produce come back exactly, in both closed and
    recovered files."""
    d = tmp_path_factory.mktemp("prop")
    for close in (True, False):
        p = d / f"p{close}.para"
        w = ParaWriter(p, {})
        for i, (vals, iface, floats) in enumerate(samples):
            t = T0 + i * 100
            w.append(
                t,
                {
                    "net": [[iface, *vals]],
                    "counters": [[t + j, f"e{j}", f, 100] for j, f in enumerate(floats)],
                },
            )
        if close:
            w.close()
        else:
            w.abandon()
        with ParaFile(p) as pf:
            got = pf.read_table("net").to_pylist()
            want = sorted(
                ((iface, T0 + i * 100, vals) for i, (vals, iface, _) in enumerate(samples)),
                key=lambda r: (r[0], r[1]),
            )
            got_sorted = sorted(
                (
                    (
                        r["iface"],
                        int(r["t"].timestamp() * 1000 + 0.5),
                        [r[c] for c in pf.metric_columns("net")],
                    )
                    for r in got
                ),
                key=lambda r: (r[0], r[1]),
            )
            assert got_sorted == want
            cnt = pf.read_table("counters").column("value").to_pylist()
            assert sorted(cnt) == sorted(f for _, _, fl in samples for f in fl)


WRITER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, sys.argv[2])
    from para.formats import ParaWriter
    w = ParaWriter(sys.argv[1], {})
    i = 0
    while True:
        w.append(int(time.time() * 1000), {"node": [[i] * %d]})
        print(i, flush=True)
        i += 1
        time.sleep(0.1)
    """
)


@pytest.mark.slow
def test_sigkill_loses_at_most_the_sample_in_flight(tmp_path):
    p = tmp_path / "k.para"
    script = WRITER % len(TABLES["node"].metrics)
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(p), str(REPO)], stdout=subprocess.PIPE, text=True
    )
    try:
        for _ in range(15):
            proc.stdout.readline()
    finally:
        killed_at = time.time()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    with ParaFile(p) as pf:
        stats = pf.stats()
        assert stats["samples"] >= 15
        assert killed_at - stats["end"] < 2.0
        assert pf.read_table("node").column("cpu_user").to_pylist() == list(range(stats["samples"]))


def test_short_recording_parts_are_deflated_and_read_by_standard_readers(tmp_path):
    """A recording of seconds stores its small parts as uncompressed Parquet in deflated ZIP
    members (smaller than zstd page by page); Python's zipfile, Info-ZIP's unzip and DuckDB
    read them as para does, and so do the analyzer's column reader and the collector."""
    from para.analyzer.reduce import Source
    from para.collector.segment import open_segment

    from .conftest import need_tool

    p = tmp_path / "short.para"
    write_run(p, 5)
    with zipfile.ZipFile(p) as zf:
        kinds = {i.filename: i.compress_type for i in zf.infolist()}
        assert kinds["disk/part-00000.parquet"] == zipfile.ZIP_DEFLATED
        assert zf.testzip() is None  # every member's CRC-32, as any unzip checks it
        std = pq.read_table(zf.open("disk/part-00000.parquet"))
    with ParaFile(p) as pf:
        ours = pf.read_table("disk")
    assert std.to_pylist() == ours.to_pylist()
    unzip = need_tool("unzip", "apt install unzip")
    subprocess.run([unzip, "-q", "-d", str(tmp_path / "x"), str(p)], check=True)
    got = (
        duckdb.connect()
        .execute(
            f"SELECT count(*), max(reads) FROM read_parquet('{tmp_path}/x/disk/*.parquet') "
            "WHERE device = 'vda'"
        )
        .fetchone()
    )
    assert got == (5, 400)
    src = Source(p)
    try:
        assert (
            src.read("disk", ["device", "reads"]).to_pylist()
            == ours.select(["device", "reads"]).to_pylist()
        )
    finally:
        src.close()
    with open_segment(p) as seg:
        assert (
            seg.read_table("disk").column("reads").to_pylist() == ours.column("reads").to_pylist()
        )


def test_a_cut_deflated_part_is_not_trusted(tmp_path):
    """A complete file cut inside a deflated part yields the parts before it (walking the
    local headers, inflating each whole member)."""
    p = tmp_path / "cut.para"
    write_run(p, 5)
    with zipfile.ZipFile(p) as zf:
        info = zf.getinfo("disk/part-00000.parquet")
        assert info.compress_type == zipfile.ZIP_DEFLATED
        cut = info.header_offset + 40 + info.compress_size // 2
    os.truncate(p, cut)
    with ParaFile(p) as pf:
        assert not pf.complete and "cut short" in pf.recovery.message
        assert pf.read_table("node").column("cpu_user").to_pylist() == [i * 7 for i in range(5)]
        assert "disk" not in pf.tables


def _rezip_disk(src: Path, dst: Path, body: bytes) -> None:
    """`src` with its disk part replaced by `body`, deflated."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = body if info.filename == "disk/part-00000.parquet" else zin.read(info)
            zout.writestr(info, data, zipfile.ZIP_DEFLATED if data is body else info.compress_type)


def test_a_deflated_part_is_inflated_within_bounds_at_the_collector(tmp_path, monkeypatch):
    """A node's deflated part is inflated at most to the size it declares, and a declared
    size past the bounds is refused before any byte is inflated."""
    from para.collector import segment as seg_mod

    p = tmp_path / "short.para"
    write_run(p, 5)
    big = tmp_path / "big.para"
    _rezip_disk(p, big, b"\0" * (2 << 20))  # 2 MiB of zeros: a few KiB deflated
    monkeypatch.setattr(seg_mod, "MAX_PART_BYTES", 1 << 20)
    with pytest.raises(seg_mod.Rejected, match="declares 2097152 bytes inflated"):
        seg_mod.open_segment(big)
    monkeypatch.undo()
    # a member whose central directory understates what it inflates to
    liar = tmp_path / "liar.para"
    _rezip_disk(p, liar, b"\0" * (2 << 20))
    raw = bytearray(liar.read_bytes())
    name = b"disk/part-00000.parquet"
    at = raw.index(b"PK\x01\x02")  # the central directory's entries
    while raw[at + 46 : at + 46 + len(name)] != name:
        at = raw.index(b"PK\x01\x02", at + 4)
    raw[at + 24 : at + 28] = (1000).to_bytes(4, "little")  # uncompressed size: 1000
    liar.write_bytes(bytes(raw))
    with pytest.raises(seg_mod.Rejected, match="more than 1000 bytes"):
        seg_mod.open_segment(liar)
