"""Turning segments into rows of the database: host and job columns, date partitions, Parquet.

A merge takes a batch of segments, adds `host` and `job_id` to every row of every table
(tables are whatever each file's catalogue declares, known to this version of para or not),
splits rows by UTC date, and writes one Parquet file per (table, date) for the whole batch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from para.collector.segment import RENAMED_PREFIX, RESERVED, Rejected, Segment
from para.formats.schema import TABLES

# `para agent` writes job_start/job_end when it sees a job come and go, and job_running (with
# `since`, epoch seconds) at the start of every segment for the jobs already there.
JOB_EVENT_KINDS = ("job_start", "job_end", "job_running")


# The instants a row may carry (docs/collector.md, "Bounds"): UTC dates partition the database,
# and a time outside them (or none) cannot be placed.
EARLIEST_MS = 0  # 1970-01-01
LATEST_MS = 7_258_118_400_000  # 2200-01-01


def stored_name(name: str) -> str:
    """A file column's name in the database (reserved names are renamed)."""
    return RENAMED_PREFIX + name if name in RESERVED else name


def declared_types(known: dict[str, list[dict[str, str]]], table: str) -> dict[str, str]:
    """Column -> type that a file must agree with: para's schema for its own tables, and what
    the database already holds (the first file to bring a new column sets its type)."""
    out = {c["name"]: c["type"] for c in known.get(table, [])}
    if table in TABLES:
        out.update({c.name: c.type for c in TABLES[table].columns})
    return out


def type_conflict(
    seg: Segment, known: dict[str, list[dict[str, str]]]
) -> tuple[str, str, str, str] | None:
    """(table, column, type in the file, type in the database) of the first column whose
    declared type disagrees, or None."""
    for table, cols in seg.layout.items():
        want = declared_types(known, table)
        for c in cols:
            name = stored_name(c["name"])
            have = want.get(name)
            if have is not None and have != c["type"] and name not in ("t", "job_id", "job"):
                return table, name, c["type"], have
    return None


def check_contents(seg: Segment, known: dict[str, list[dict[str, str]]]) -> None:
    """Raise Rejected for a file the merge could not place: a column whose type differs from
    the database's, a row without a time, a time outside EARLIEST_MS..LATEST_MS.  Run before
    the ack, so a bad file is refused while its sender can still be told (and never blocks
    the merge of other hosts' files)."""
    clash = type_conflict(seg, known)
    if clash is not None:
        table, col, got, have = clash
        raise Rejected(
            f"{seg.path}: column {col} of table {table} is declared {got}; the database holds "
            f"it as {have}"
        )
    seg.measure()
    for table in seg.layout:
        if not seg.parts.get(table):
            continue
        t = seg.read_column(table, "t")
        if t.null_count:
            raise Rejected(f"{seg.path}: table {table} has {t.null_count} rows without a time t")
        if len(t) == 0:
            continue
        lo, hi = (v.as_py() for v in pc.min_max(t.cast(pa.int64())).values())
        if lo < EARLIEST_MS or hi >= LATEST_MS:
            raise Rejected(
                f"{seg.path}: table {table} has times from {lo} to {hi} ms since 1970, outside "
                f"1970-01-01..2200-01-01 (is the node's clock right?)"
            )


@dataclass
class JobSeen:
    """What one segment tells about a job on its host."""

    job_id: str
    start: float | None = None
    end: float | None = None
    scheduler: str | None = None
    user: str | None = None
    name: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def widen(self, start: float | None, end: float | None) -> None:
        if start is not None:
            self.start = start if self.start is None else min(self.start, start)
        if end is not None:
            self.end = end if self.end is None else max(self.end, end)


@dataclass
class SegmentRows:
    """A segment's tables, ready to store, and what it says about jobs."""

    segment: Segment
    tables: dict[str, pa.Table]
    values: int
    rows: int
    jobs: dict[str, JobSeen]
    columns: dict[str, list[dict[str, str]]]  # the catalogue of each table, as stored


def segment_rows(seg: Segment) -> SegmentRows:
    """Read every table of `seg` and add the database's columns."""
    raw = {t: seg.read_table(t) for t in seg.layout if seg.parts.get(t)}
    jobs = _jobs_seen(seg, raw)
    exclusive = _exclusive_job_by_time(raw.get("job"))
    profile_job = _str_or_none(seg.job.get("job_id"))
    out: dict[str, pa.Table] = {}
    values = rows = 0
    columns: dict[str, list[dict[str, str]]] = {}
    for table, data in raw.items():
        cat = seg.layout[table]
        metrics = [c["name"] for c in cat if c["kind"] in ("counter", "gauge")]
        values += sum(len(data) - data.column(m).null_count for m in metrics)
        rows += len(data)
        data, cat = _rename_reserved(data, cat)
        job_col = _job_column(data, exclusive, profile_job)
        if "job_id" in data.schema.names:
            data = data.drop_columns(["job_id"])
        host = pa.repeat(pa.scalar(seg.host, pa.string()), len(data))
        data = pa.Table.from_arrays(
            [host, job_col, *data.columns],
            names=["host", "job_id", *data.schema.names],
        )
        out[table] = data
        columns[table] = cat
    return SegmentRows(seg, out, values, rows, jobs, columns)


def _str_or_none(v: object) -> str | None:
    return None if v is None or v == "" else str(v)


def _rename_reserved(
    data: pa.Table, cat: list[dict[str, str]]
) -> tuple[pa.Table, list[dict[str, str]]]:
    clash = [n for n in data.schema.names if n in RESERVED]
    if not clash:
        return data, cat
    names = [RENAMED_PREFIX + n if n in RESERVED else n for n in data.schema.names]
    cat = [{**c, "name": RENAMED_PREFIX + c["name"]} if c["name"] in RESERVED else c for c in cat]
    return data.rename_columns(names), cat


def _job_column(
    data: pa.Table, exclusive: tuple[pa.Array, pa.Array] | None, profile_job: str | None
) -> pa.Array:
    """The job each row belongs to.

    - the row's own `job_id` or `job` column (`para agent` attributes processes and per-job
      rows on shared nodes);
    - else the job of a `para profile` recording (the whole file is one job);
    - else, for node-wide rows, the one job running on the node at that second, if only one
      was (from the segment's `job` table); NULL when none or several shared the node.
    """
    n = len(data)
    if profile_job is not None:
        fallback = pa.repeat(pa.scalar(profile_job, pa.string()), n)
    elif exclusive is None or "t" not in data.schema.names or n == 0:
        fallback = pa.nulls(n, pa.string())
    else:
        times, jobs = exclusive
        idx = pc.index_in(data.column("t").cast(pa.int64()), value_set=times)
        taken = pc.take(jobs, idx)
        fallback = taken.combine_chunks() if isinstance(taken, pa.ChunkedArray) else taken
    for own in ("job_id", "job"):
        if own in data.schema.names:
            col = data.column(own).combine_chunks()
            col = col if col.type == pa.string() else col.cast(pa.string())
            # a row the agent left unattributed (or a profile, which has the column but does
            # not fill it) takes the file's or the node's job
            filled = pc.coalesce(col, fallback)
            return filled.combine_chunks() if isinstance(filled, pa.ChunkedArray) else filled
    return fallback


def _exclusive_job_by_time(job: pa.Table | None) -> tuple[pa.Array, pa.Array] | None:
    """(instants, job) for the instants when exactly one job ran on the node."""
    if job is None or len(job) == 0 or "job" not in job.schema.names:
        return None
    g = (
        pa.table(
            {"t": job.column("t").cast(pa.int64()), "job": job.column("job").cast(pa.string())}
        )
        .filter(pc.is_valid(job.column("job")))
        .group_by("t")
        .aggregate([("job", "count_distinct"), ("job", "min")])
    )
    one = g.filter(pc.equal(g.column("job_count_distinct"), 1))
    if len(one) == 0:
        return None
    return one.column("t").combine_chunks(), one.column("job_min").combine_chunks()


def _jobs_seen(seg: Segment, raw: dict[str, pa.Table]) -> dict[str, JobSeen]:
    """Jobs this segment shows on its host: the recorded job of a profile, the `job` table's
    jobs (and any table with a job column), and job start/end events."""
    jobs: dict[str, JobSeen] = {}

    def get(job_id: str) -> JobSeen:
        if job_id not in jobs:
            jobs[job_id] = JobSeen(job_id)
        return jobs[job_id]

    meta_job = seg.job
    jid = _str_or_none(meta_job.get("job_id"))
    if jid is not None:
        j = get(jid)
        j.widen(_num(seg.meta.get("start")), _num(seg.meta.get("end")))
        j.scheduler = _str_or_none(meta_job.get("scheduler"))
        j.user = _str_or_none(meta_job.get("user"))
        j.name = _str_or_none(meta_job.get("name"))
        j.info.update({k: v for k, v in meta_job.items() if k not in ("job_id", "user", "name")})
        if seg.meta.get("command"):
            j.info.setdefault("command", seg.meta["command"])
    for table, data in raw.items():
        col = (
            "job_id"
            if "job_id" in data.schema.names
            else "job"
            if "job" in data.schema.names
            else None
        )
        if col is None or "t" not in data.schema.names or len(data) == 0:
            continue
        keys = [col, "scheduler"] if table == "job" and "scheduler" in data.schema.names else [col]
        sub = data.select(["t", *keys]).filter(pc.is_valid(data.column(col)))
        if len(sub) == 0:
            continue
        sub = sub.set_column(0, "t", sub.column("t").cast(pa.int64()))
        aggs = [("t", "min"), ("t", "max")]
        if len(keys) > 1:
            aggs.append(("scheduler", "max"))
        for row in sub.group_by(col).aggregate(aggs).to_pylist():
            j = get(str(row[col]))
            j.widen(row["t_min"] / 1000, row["t_max"] / 1000)
            if row.get("scheduler_max") and not j.scheduler:
                j.scheduler = row["scheduler_max"]
    events = raw.get("events")
    if events is not None and "kind" in events.schema.names:
        mask = pc.is_in(events.column("kind"), value_set=pa.array(JOB_EVENT_KINDS))
        for ev in events.filter(mask).to_pylist():
            detail = _detail(ev.get("detail"))
            jid = _str_or_none(detail.get("job_id") or detail.get("job") or ev.get("name"))
            if jid is None:
                continue
            j = get(jid)
            t = ev["t"].timestamp() if ev.get("t") is not None else None
            if ev["kind"] == "job_end" and isinstance(detail.get("end"), (int, float)):
                # the agent knows a job has ended end_after_s after its last process: the job
                # ran from its first process's start to the last sample that saw one
                j.widen(_num(detail.get("start")), float(detail["end"]))
            else:
                j.widen(t, t)
            if isinstance(detail.get("since"), (int, float)):
                j.widen(float(detail["since"]), None)
            if j.scheduler is None:
                j.scheduler = _str_or_none(detail.get("scheduler"))
            if j.user is None:
                j.user = _str_or_none(detail.get("user"))
            if j.name is None:
                j.name = _str_or_none(detail.get("job_name") or detail.get("name"))
            info = {
                k: v
                for k, v in detail.items()
                if k not in ("job_id", "job", "scheduler", "user", "name", "job_name", "since")
            }
            j.info.update(info)
            if ev["kind"] == "job_end":
                j.info["ended"] = True
    return jobs


def _detail(text: object) -> dict[str, Any]:
    if not isinstance(text, str) or not text:
        return {}
    try:
        doc = json.loads(text)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _num(v: object) -> float | None:
    return float(v) if isinstance(v, (int, float)) else None


# -- writing -------------------------------------------------------------------------------


def split_by_date(table: pa.Table) -> dict[str, pa.Table]:
    """Rows by UTC date of `t` ("YYYY-MM-DD"); most segments fall in one day."""
    if len(table) == 0:
        return {}
    dates = pc.cast(table.column("t"), pa.date32())
    lo, hi = pc.min_max(dates).values()
    if lo == hi:
        return {lo.as_py().isoformat(): table}
    out = {}
    for d in pc.unique(dates).to_pylist():
        out[d.isoformat()] = table.filter(pc.equal(dates, pa.scalar(d, pa.date32())))
    return out


def concat(tables: list[pa.Table]) -> pa.Table:
    """Tables of one table name from several segments (older files may lack new columns)."""
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="permissive")


def sort_keys(table_name: str, columns: Iterable[str]) -> list[str]:
    """host, then the table's device keys, then t: each series contiguous."""
    names = list(columns)
    if table_name in TABLES:
        keys = [c.name for c in TABLES[table_name].keys if c.name != "t" and c.name in names]
    else:
        keys = []
    return ["host", *keys, "t"]


def write_parquet(
    table: pa.Table,
    path: Path,
    keys: list[str],
    *,
    level: int = 3,
    row_group_rows: int = 1 << 20,
    sort: bool = False,
) -> int:
    """Write one data file (fsync'd); returns its size.  Integers delta-encoded, floats
    byte-stream-split, strings dictionary-encoded: counters cost their increments."""
    if sort:
        table = table.sort_by([(k, "ascending") for k in keys if k in table.schema.names])
    encodings: dict[str, str] = {}
    dictionary: list[str] = []
    for f in table.schema:
        if pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
            dictionary.append(f.name)
        elif pa.types.is_integer(f.type) or pa.types.is_timestamp(f.type):
            encodings[f.name] = "DELTA_BINARY_PACKED"
        elif pa.types.is_floating(f.type):
            encodings[f.name] = "BYTE_STREAM_SPLIT"
    stats = [k for k in (*keys, "job_id") if k in table.schema.names]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pq.write_table(
            table,
            f,
            compression="zstd",
            compression_level=level,
            use_dictionary=dictionary or False,
            column_encoding=encodings or None,
            row_group_size=row_group_rows,
            write_statistics=stats,
        )
        f.flush()
        os.fsync(f.fileno())
        return f.tell()
