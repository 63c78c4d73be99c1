"""Keeping the database fast and bounded: compaction of small files, retention by age.

Compaction: every merge writes one file per (table, date) and batch, so a busy day makes many
small files.  Partitions holding at least `min_files` files under `small_bytes` have them
rewritten into few files sorted by host, device and time (what makes range pruning and delta
encoding work), compressed harder.  The rewrite goes through staging/ and the ledger like a
merge: a collector killed in the middle leaves either the old files or the new ones.

Retention: whole date partitions older than a table's limit are removed.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from para.collector import catalog, dataset
from para.collector.db import FeatureDB, StoreFull, is_disk_full
from para.collector.layout import locked
from para.collector.merge import concat, sort_keys, write_parquet

SMALL_BYTES = 32 << 20
MIN_FILES = 4
# Input of one compacted file: bounds memory (Parquet decodes to 10-25x its size in Arrow).
CHUNK_BYTES = 48 << 20


@dataclass
class CompactReport:
    partitions: int = 0
    files_in: int = 0
    files_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    rows: int = 0


@dataclass
class ExpireReport:
    files: int = 0
    tables: set[str] = field(default_factory=set)


@dataclass
class RetentionReport:
    partitions: int = 0
    bytes: int = 0
    segments_forgotten: int = 0
    jobs_forgotten: int = 0


def compact(
    db: FeatureDB,
    *,
    min_files: int = MIN_FILES,
    small_bytes: int = SMALL_BYTES,
    chunk_bytes: int = CHUNK_BYTES,
    level: int = 9,
) -> CompactReport:
    report = CompactReport()
    layout = db.layout
    for table in layout.tables():
        for part in list(layout.partitions(table)):
            with locked(layout):
                db.recover_locked()
                # the files of the current snapshot: those compaction removed before stay on
                # disk for readers until they expire
                live = set(_live_files(db, table))
                files = sorted(
                    (
                        f
                        for f in part.glob("*.parquet")
                        if f in live and f.stat().st_size < small_bytes
                    ),
                    key=lambda f: f.name,
                )
                if len(files) < min_files:
                    continue
                report.partitions += 1
                chunk: list[Path] = []
                size = 0
                for f in files:
                    chunk.append(f)
                    size += f.stat().st_size
                    if size >= chunk_bytes:
                        _compact_chunk(db, table, part, chunk, level, report)
                        chunk, size = [], 0
                if len(chunk) > 1:
                    _compact_chunk(db, table, part, chunk, level, report)
    return report


def _live_files(db: FeatureDB, table: str) -> list[Path]:
    snap = dataset.snapshot(db.layout.data / table)
    return [] if snap is None else [Path(f) for f in snap.files]


def expire(db: FeatureDB, grace_hours: float = dataset.DEFAULT_GRACE_HOURS) -> ExpireReport:
    """Delete the data files no snapshot younger than `grace_hours` reads (compaction's and
    retention's removed files, old versions of meta tables), and partition directories left
    empty.  Readers that planned a query less than `grace_hours` ago keep every file."""
    report = ExpireReport()
    layout = db.layout
    with locked(layout):
        db.recover_locked()
        dirs = [layout.data / t for t in layout.tables()]
        dirs += [layout.meta / n for n in (catalog.HOSTS_FILE, catalog.JOBS_FILE,
                                           catalog.CATALOGUE_FILE)]  # fmt: skip
        for table_dir in dirs:
            for rel in dataset.expire(table_dir, grace_hours):
                report.files += 1
                report.tables.add(table_dir.name)
                del rel
        for table in layout.tables():
            for part in list(layout.partitions(table)):
                if not any(part.iterdir()):
                    part.rmdir()
                    if not any(part.parent.iterdir()):
                        part.parent.rmdir()
    return report


def _compact_chunk(
    db: FeatureDB, table: str, part: Path, files: list[Path], level: int, report: CompactReport
) -> None:
    batch_id = uuid.uuid4().hex
    data = concat([pq.ParquetFile(f).read() for f in files])
    final = part / f"c-{batch_id}.parquet"
    rel = final.relative_to(db.root)
    tmp = db.layout.staging / batch_id / rel
    try:
        size = write_parquet(
            data,
            tmp,
            sort_keys(table, data.schema.names),
            level=level,
            row_group_rows=1 << 19,
            sort=True,
        )
        moves = [[str(tmp.relative_to(db.root)), str(rel)]]
        deletes = [str(f.relative_to(db.root)) for f in files]
        with db.ledger.transaction() as cur:
            cur.execute(
                "INSERT INTO batches (id, kind, state, created, moves, deletes)"
                " VALUES (?, 'compact', 'committed', ?, ?, ?)",
                (batch_id, time.time(), json.dumps(moves), json.dumps(deletes)),
            )
    except BaseException as e:
        shutil.rmtree(db.layout.staging / batch_id, ignore_errors=True)
        if is_disk_full(e):
            raise StoreFull(f"disk full under {db.root}: compaction postponed ({e})") from e
        raise
    report.files_in += len(files)
    report.bytes_in += sum(f.stat().st_size for f in files)
    report.files_out += 1
    report.bytes_out += size
    report.rows += len(data)
    db.finish_batch(batch_id, moves, deletes)


def parse_age(text: str) -> float:
    """'30d', '12h', '2w', '90' (days) -> days."""
    text = text.strip().lower()
    units = {"d": 1.0, "h": 1 / 24, "w": 7.0, "y": 365.0}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise ValueError(f"not an age: {text!r} (use e.g. 30d, 12h, 2w, 1y)") from None


def apply_retention(
    db: FeatureDB, days: dict[str, float], now: float | None = None
) -> RetentionReport:
    """Remove date partitions older than each table's limit (`default` for the others; a
    table with neither is kept).  `jobs` limits the jobs table (by end time)."""
    report = RetentionReport()
    now = time.time() if now is None else now
    today = dt.datetime.fromtimestamp(now, dt.timezone.utc).date()
    layout = db.layout
    with locked(layout):
        for table in sorted(p.name for p in layout.data.iterdir() if p.is_dir()):
            limit = days.get(table, days.get("default"))
            if limit is None:
                continue
            cutoff = today - dt.timedelta(days=limit)
            for part in list(layout.partitions(table)):
                name = part.name.removeprefix("date=")
                try:
                    day = dt.date.fromisoformat(name)
                except ValueError:
                    continue
                if day < cutoff:
                    # out of the snapshot at once; the files go when they expire (readers
                    # that planned them keep them for the grace period)
                    live = set(_live_files(db, table))
                    files = [f for f in part.glob("*.parquet") if f in live]
                    if not files:
                        continue
                    report.bytes += sum(f.stat().st_size for f in files)
                    db.commit_tables([], [str(f.relative_to(db.root)) for f in files])
                    report.partitions += 1
        if "default" in days:
            # every table has a limit: segment ids older than the longest one (plus a week for
            # late retries) can be forgotten
            longest = max(days.values())
            horizon = now - (longest + 7) * 86400
            with db.ledger.transaction() as cur:
                cur.execute(
                    "DELETE FROM segments WHERE state = 'merged' AND \"end\" < ?", (horizon,)
                )
                report.segments_forgotten = cur.rowcount
        if "jobs" in days:
            horizon = now - days["jobs"] * 86400
            with db.ledger.transaction() as cur:
                gone = [
                    r[0] for r in cur.execute('SELECT job_id FROM jobs WHERE "end" < ?', (horizon,))
                ]
                for table in ("job_hosts", "job_features", "jobs"):
                    cur.executemany(f"DELETE FROM {table} WHERE job_id = ?", [(j,) for j in gone])
                report.jobs_forgotten = len(gone)
    if report.partitions or report.jobs_forgotten:
        db.export_meta()
    return report
