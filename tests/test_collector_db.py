"""The feature database: imports, views, jobs, unknown tables, compaction, retention, recovery."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import duckdb
import pyarrow.dataset as ds
import pytest
from deltalake import DeltaTable

from para.collector import dataset, maintenance
from para.collector.db import FeatureDB
from para.errors import FormatError, ParaError
from tests.collector_support import (
    column,
    load_template,
    segment_bytes,
    shifted_parts,
    template_rows,
    write_para,
    write_segments,
)

pytestmark = pytest.mark.no_kernel

TPL = load_template()
ROWS = template_rows(TPL)
VALUES = TPL.end["values"]


def test_a_real_recording_imports_with_host_and_job_columns(tmp_path: Path) -> None:
    name, seg_id, data = segment_bytes(TPL, TPL.parts, "node7", 0, 0)
    f = tmp_path / name
    f.write_bytes(data)
    db = FeatureDB(tmp_path / "db")
    got = db.import_para(f)
    assert got["status"] == "imported" and got["id"] == seg_id and got["host"] == "node7"
    assert got["values"] == VALUES  # the same count the writer put in end.json
    con = db.connect()
    for table, n in ROWS.items():
        row = con.execute(
            f"SELECT count(*), count(DISTINCT host), any_value(host), count(job_id) FROM {table}"
        ).fetchone()
        assert row == (n, 1, "node7", 0), table
    cols = [r[0] for r in con.execute("DESCRIBE node").fetchall()]
    assert cols[:3] == ["host", "job_id", "t"] and cols[-2:] == ["cluster", "date"]
    hosts = con.execute('SELECT host, segments, "values", cpu_model FROM hosts').fetchall()
    assert hosts == [("node7", 1, VALUES, TPL.meta["host"]["cpu_model"])]
    units = con.execute(
        "SELECT unit FROM catalogue WHERE \"table\" = 'memory' AND name = 'mem_total'"
    ).fetchall()
    assert units == [("bytes",)]
    con.close()


def test_importing_twice_changes_nothing(tmp_path: Path) -> None:
    segs = write_segments(TPL, tmp_path / "ready", "n1", 2)
    db = FeatureDB(tmp_path / "db")
    first = db.import_paths([p for p, _ in segs])
    again = db.import_paths([p for p, _ in segs] + [segs[0][0]])
    assert [r["status"] for r in first] == ["imported", "imported"]
    assert [r["status"] for r in again] == ["duplicate"] * 3
    con = db.connect()
    assert con.execute("SELECT count(*) FROM node").fetchone() == (2 * ROWS["node"],)
    dup = con.execute("SELECT count(*) - count(DISTINCT (host, t)) FROM node").fetchone()
    assert dup == (0,)


def test_profile_outputs_are_recognised_by_content(tmp_path: Path) -> None:
    """A para profile file has no segment id: the same bytes are the same recording."""
    name, _, data = segment_bytes(TPL, TPL.parts, "laptop", 0, 0)
    meta_free = tmp_path / "run.para"
    meta_free.write_bytes(data)
    db = FeatureDB(tmp_path / "db")
    db.import_para(meta_free)
    copy = tmp_path / "copy-of-run.para"
    shutil.copy(meta_free, copy)
    assert db.import_para(copy)["status"] == "duplicate"


def test_a_table_this_para_does_not_know_gets_its_view(tmp_path: Path) -> None:
    """Tables come from each file's own catalogue (a newer agent's families)."""
    cat = [
        column("widgets", "t", "info"),
        column("widgets", "rack", "info", "str"),
        column("widgets", "watts", "gauge", "float"),
    ]
    samples = [
        (1_800_000_000_000 + i * 1000, {"widgets": [["r1", 10.0 + i], ["r2", 3.0]]})
        for i in range(5)
    ]
    f = write_para(tmp_path / "w.para", cat, samples, host="edge1")
    db = FeatureDB(tmp_path / "db")
    assert db.import_para(f)["values"] == 10
    con = db.connect()
    got = con.execute(
        "SELECT host, rack, count(*), max(watts) FROM widgets GROUP BY ALL ORDER BY rack"
    ).fetchall()
    assert got == [("edge1", "r1", 5, 14.0), ("edge1", "r2", 5, 3.0)]


def test_reserved_column_names_are_kept_aside(tmp_path: Path) -> None:
    cat = [column("lic", "t", "info"), column("lic", "host", "info", "str"), column("lic", "n")]
    f = write_para(tmp_path / "l.para", cat, [(1_800_000_000_000, {"lic": [["flexlm1", 3]]})])
    db = FeatureDB(tmp_path / "db")
    db.import_para(f)
    got = db.connect().execute("SELECT host, col_host, n FROM lic").fetchall()
    assert got == [("node1", "flexlm1", 3)]


def test_profile_job_is_attributed_to_every_row_and_listed(tmp_path: Path) -> None:
    job = {"scheduler": "slurm", "job_id": "4242", "user": "alice", "name": "lammps", "nodes": 2}
    db = FeatureDB(tmp_path / "db")
    for host in ("c1", "c2"):
        name, _, data = segment_bytes(TPL, TPL.parts, host, 0, 0, extra_meta={"job": job})
        (tmp_path / name).write_bytes(data)
        db.import_para(tmp_path / name)
    con = db.connect()
    assert con.execute("SELECT DISTINCT job_id FROM cpu").fetchall() == [("4242",)]
    row = con.execute(
        'SELECT job_id, scheduler, "user", name, hosts, nodes, start, "end" FROM jobs'
    ).fetchone()
    assert row[:6] == ("4242", "slurm", "alice", "lammps", ["c1", "c2"], 2)
    assert row[6].timestamp() == pytest.approx(TPL.end["start"])
    assert row[7].timestamp() == pytest.approx(TPL.end["end"])
    assert db.job_hosts("4242") == ["c1", "c2"]
    assert db.job_hosts("nope") == []


def _shared_node_segment(path: Path) -> Path:
    """A node shared by two jobs for part of the time: per-job rows carry their job, node-wide
    rows belong to a job only while it had the node alone."""
    cat = [
        column("node", "t", "info"),
        column("node", "procs_running"),
        column("job", "t", "info"),
        column("job", "job", "info", "str"),
        column("job", "rss_bytes"),
        column("job", "scheduler", "info", "str"),
        column("proc", "t", "info"),
        column("proc", "pid", "info"),
        column("proc", "rss_bytes"),
        column("proc", "job", "info", "str"),
        column("events", "t", "info"),
        column("events", "kind", "info", "str"),
        column("events", "pid", "info"),
        column("events", "name", "info", "str"),
        column("events", "detail", "info", "str"),
    ]
    t0 = 1_800_000_000_000
    samples = []
    for i in range(6):
        t = t0 + i * 1000
        jobs = [["101", 1 << 20, "slurm"]] + ([["102", 2 << 20, "slurm"]] if i >= 3 else [])
        procs = [[500, 1 << 20, "101"]] + ([[600, 2 << 20, "102"]] if i >= 3 else [])
        rows = {"node": [[i]], "job": jobs, "proc": procs}
        # events as `para agent` writes them (name: the job id; detail: what it knows)
        if i == 0:
            since = json.dumps({"scheduler": "slurm", "since": (t0 - 3_600_000) / 1000})
            rows["events"] = [[t, "job_running", None, "101", since]]
        if i == 3:
            detail = {
                "scheduler": "slurm",
                "found_by": "cgroup",
                "user": "bob",
                "job_name": "train",
            }
            rows["events"] = [[t, "job_start", None, "102", json.dumps(detail)]]
        samples.append((t, rows))
    return write_para(
        path, cat, samples, host="shared1", segment={"id": "ef" * 16, "host": "shared1"}
    )


def test_shared_node_rows_are_attributed_per_job(tmp_path: Path) -> None:
    db = FeatureDB(tmp_path / "db")
    db.import_para(_shared_node_segment(tmp_path / "s.para"))
    con = db.connect()
    node = con.execute("SELECT procs_running, job_id FROM node ORDER BY t").fetchall()
    assert node == [(0, "101"), (1, "101"), (2, "101"), (3, None), (4, None), (5, None)]
    proc = con.execute(
        "SELECT pid, job_id, count(*) FROM proc GROUP BY ALL ORDER BY pid"
    ).fetchall()
    assert proc == [(500, "101", 6), (600, "102", 3)]
    jobs = con.execute(
        'SELECT job_id, scheduler, "user", name, hosts FROM jobs ORDER BY 1'
    ).fetchall()
    assert jobs == [
        ("101", "slurm", None, None, ["shared1"]),
        ("102", "slurm", "bob", "train", ["shared1"]),
    ]


def test_job_features_become_columns_of_jobs(tmp_path: Path) -> None:
    db = FeatureDB(tmp_path / "db")
    db.import_para(_shared_node_segment(tmp_path / "s.para"))
    db.write_job_features("101", {"cpu_efficiency": 0.42, "bottlenecks": ["io_wait_bound"]})
    db.write_job_features("101", {"peak_rss_bytes": 123})
    db.write_job_features("102", {"cpu_efficiency": 0.9})
    con = db.connect()
    got = con.execute(
        "SELECT job_id, cpu_efficiency, bottlenecks, peak_rss_bytes FROM jobs ORDER BY 1"
    ).fetchall()
    assert got == [("101", 0.42, ["io_wait_bound"], 123), ("102", 0.9, None, None)]
    with pytest.raises(ParaError, match="no job"):
        db.write_job_features("999", {"x": 1})


def test_rows_are_partitioned_by_their_utc_date(tmp_path: Path) -> None:
    midnight = dt.datetime(2027, 3, 4, tzinfo=dt.timezone.utc).timestamp() * 1000
    cat = [column("node", "t", "info"), column("node", "procs_running")]
    samples = [(int(midnight) + s * 1000, {"node": [[s]]}) for s in range(-3, 3)]
    db = FeatureDB(tmp_path / "db")
    db.import_para(write_para(tmp_path / "m.para", cat, samples))
    got = (
        db.connect()
        .execute("SELECT date::VARCHAR, count(*) FROM node GROUP BY 1 ORDER BY 1")
        .fetchall()
    )
    assert got == [("2027-03-03", 3), ("2027-03-04", 3)]


def test_refuses_incomplete_and_foreign_files_with_reasons(tmp_path: Path) -> None:
    db = FeatureDB(tmp_path / "db")
    junk = tmp_path / "junk.para"
    junk.write_bytes(b"hello, not a para file")
    with pytest.raises(FormatError, match="not a .para file"):
        db.import_para(junk)
    from para.formats import ParaWriter

    w = ParaWriter(tmp_path / "open.para", {"host": {"hostname": "n1"}})
    w.append(1_800_000_000_000, {"node": [[0] * 18]})
    w.abandon()  # the writer was killed: a journal, not a closed file
    with pytest.raises(FormatError, match="para recover"):
        db.import_para(tmp_path / "open.para")
    name, _, data = segment_bytes(TPL, TPL.parts, "n1", 0, 0)
    cut = tmp_path / name
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError):
        db.import_para(cut)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    (tmp_path / "flip.para").write_bytes(bytes(flipped))
    with pytest.raises(FormatError):
        db.import_para(tmp_path / "flip.para")
    assert db.status()["segments"] == 0


def test_compaction_keeps_every_row_in_fewer_sorted_files(tmp_path: Path) -> None:
    db = FeatureDB(tmp_path / "db")
    paths = []
    for host in ("a", "b", "c"):
        for seq in range(2):
            shift = seq * TPL.duration_ms
            name, _, data = segment_bytes(TPL, shifted_parts(TPL, shift), host, seq, shift)
            (tmp_path / name).write_bytes(data)
            paths.append(tmp_path / name)
    for p in paths:  # one batch each: six small files per partition
        db.import_para(p)
    q = "SELECT count(*), sum(cpu_user), count(DISTINCT (host, t)) FROM node"
    before = db.connect().execute(q).fetchone()
    files_before = len(list(db.layout.data_files("node")))
    rep = maintenance.compact(db, min_files=4)
    assert rep.files_in >= files_before and rep.files_out < rep.files_in
    live = dataset.snapshot(db.layout.data / "node").files
    assert len(live) < files_before
    assert db.connect().execute(q).fetchone() == before
    # the removed files stay for readers until they expire, then go
    assert len(list(db.layout.data_files("node"))) == files_before + len(live)
    assert maintenance.expire(db, grace_hours=1).files == 0
    assert maintenance.expire(db, grace_hours=0).files >= files_before
    assert sorted(str(f) for f in db.layout.data_files("node")) == live
    assert db.connect().execute(q).fetchone() == before
    # sorted by host then time inside the compacted file
    f = next(db.layout.data_files("node"))
    t = ds.dataset(f).to_table(columns=["host", "t"]).to_pylist()
    assert t == sorted(t, key=lambda r: (r["host"], r["t"]))
    # and the ledger still knows every segment: nothing can come back twice
    assert all(r["status"] == "duplicate" for r in db.import_paths(paths))


def test_retention_drops_old_partitions_per_table(tmp_path: Path) -> None:
    db = FeatureDB(tmp_path / "db")
    cat = [column("node", "t", "info"), column("node", "procs_running")]
    cat += [column("memory", "t", "info"), column("memory", "mem_free")]
    now = dt.datetime(2030, 6, 30, 12, tzinfo=dt.timezone.utc)
    for days_ago in (1, 20, 50):
        t = int((now - dt.timedelta(days=days_ago)).timestamp() * 1000)
        samples = [(t, {"node": [[days_ago]], "memory": [[days_ago]]})]
        db.import_para(write_para(tmp_path / f"d{days_ago}.para", cat, samples))
    rep = maintenance.apply_retention(db, {"node": 30, "default": 10}, now=now.timestamp())
    assert rep.partitions == 3  # node: 50; memory: 20 and 50
    con = db.connect()
    assert con.execute("SELECT procs_running FROM node ORDER BY 1").fetchall() == [(1,), (20,)]
    assert con.execute("SELECT mem_free FROM memory").fetchall() == [(1,)]
    maintenance.apply_retention(db, {"default": 0.5}, now=now.timestamp())
    # every file of a table gone: its view still answers, empty, with its columns
    con = db.connect()
    assert con.execute("SELECT count(*), count(procs_running) FROM node").fetchone() == (0, 0)


def test_a_merge_killed_after_its_commit_is_finished_at_the_next_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    segs = write_segments(TPL, tmp_path / "ready", "n1", 2)
    db = FeatureDB(tmp_path / "db")

    def crash(*args: object) -> None:
        raise KeyboardInterrupt("killed between the commit and the renames")

    monkeypatch.setattr(FeatureDB, "finish_batch", crash)
    with pytest.raises(KeyboardInterrupt):
        db.import_para(segs[0][0])
    monkeypatch.undo()
    assert list(db.layout.data_files("node")) == []  # still in staging
    db2 = FeatureDB(tmp_path / "db")
    db2.recover()
    assert db2.connect().execute("SELECT count(*) FROM node").fetchone() == (ROWS["node"],)
    assert db2.import_para(segs[0][0])["status"] == "duplicate"


def test_a_merge_killed_before_its_commit_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    segs = write_segments(TPL, tmp_path / "ready", "n1", 1)
    db = FeatureDB(tmp_path / "db")

    def crash(*args: object) -> None:
        raise KeyboardInterrupt("killed before the commit")

    monkeypatch.setattr(FeatureDB, "_commit", crash)
    with pytest.raises(KeyboardInterrupt):
        db.import_para(segs[0][0])
    monkeypatch.undo()
    db2 = FeatureDB(tmp_path / "db")
    assert db2.import_para(segs[0][0])["status"] == "imported"
    assert db2.connect().execute("SELECT count(*) FROM node").fetchone() == (ROWS["node"],)


def test_readable_without_para(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What Spark or Trino see: Hive-partitioned Parquet, and DuckDB's own catalogue file."""
    segs = write_segments(TPL, tmp_path / "ready", "n1", 2)
    db = FeatureDB(tmp_path / "db")
    db.import_paths([p for p, _ in segs])
    data = ds.dataset(tmp_path / "db" / "data" / "disk", format="parquet", partitioning="hive")
    table = data.to_table()
    assert table.num_rows == 2 * ROWS["disk"]
    assert {"host", "job_id", "device", "cluster", "date"} <= set(table.schema.names)
    hosts = DeltaTable(str(tmp_path / "db" / "meta" / "hosts")).to_pyarrow_table()
    assert hosts.column("host").to_pylist() == ["n1"]
    monkeypatch.chdir(tmp_path / "db")
    con = duckdb.connect("catalog.duckdb", read_only=True)
    assert con.execute("SELECT count(*) FROM disk").fetchone() == (2 * ROWS["disk"],)
    con.close()


def test_connect_sees_tables_added_after_the_catalogue(tmp_path: Path) -> None:
    db = FeatureDB(tmp_path / "db")
    db.import_para(write_segments(TPL, tmp_path / "r", "n1", 1)[0][0])
    reader = db.connect()  # a reader holding the catalogue: the next refresh cannot write it
    cat = [column("gadgets", "t", "info"), column("gadgets", "v")]
    db.import_para(write_para(tmp_path / "g.para", cat, [(1_800_000_000_000, {"gadgets": [[7]]})]))
    assert db.refresh_catalog(timeout=0.2) is False
    fresh = db.connect()
    assert fresh.execute("SELECT v FROM gadgets").fetchall() == [(7,)]
    reader.close()
    fresh.close()
    assert db.refresh_catalog() is True


def test_reading_a_missing_database_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ParaError, match="no feature database") as e:
        FeatureDB(tmp_path / "none").connect()
    assert "para collect" in (e.value.hint or "")
