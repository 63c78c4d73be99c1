"""The feature database: every node's segments merged into Hive-partitioned Parquet, a DuckDB
catalogue over it, and the ledger that makes imports exactly-once (docs/database.md).

`FeatureDB` is what `para collect`, `para query`, the collector and the analyzer use.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from para.collector import catalog, dataset
from para.collector.layout import DATA, Layout, fsync_dir, locked
from para.collector.ledger import Ledger, SegmentRow, merge_columns
from para.collector.merge import (
    SegmentRows,
    check_contents,
    concat,
    segment_rows,
    sort_keys,
    split_by_date,
    write_parquet,
)
from para.collector.segment import Rejected, Segment, open_segment
from para.errors import FormatError, ParaError
from para.formats import wire

DEFAULT_CLUSTER = "default"
# A merge batch holds at most this many segments and this many bytes of .para files (about
# 25x as much in memory once decoded); one bigger segment makes a batch of its own.
BATCH_SEGMENTS = 16
BATCH_BYTES = 8 << 20


class StoreFull(ParaError):
    """The database's disk is full (or below its reserve): nothing was written; retry later."""


def is_disk_full(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(e, sqlite3.OperationalError) and "full" in str(e)


@dataclass
class MergeReport:
    merged: int = 0
    quarantined: int = 0
    values: int = 0
    rows: int = 0
    new_tables: bool = False
    problems: list[tuple[str, str]] = field(default_factory=list)  # (host, why) quarantined


class FeatureDB:
    """A feature database directory.  Cheap to construct; nothing is created until written."""

    def __init__(self, path: str | Path, *, cluster: str = DEFAULT_CLUSTER) -> None:
        self.root = Path(path).expanduser()
        self.layout = Layout(self.root)
        self.cluster = wire.check_cluster(cluster)
        self._ledger: Ledger | None = None

    # -- opening ---------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.layout.exists()

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._create()
        assert self._ledger is not None
        return self._ledger

    def _create(self) -> None:
        fresh = not self.layout.exists()
        try:
            self.layout.create()
            self._ledger = Ledger(self.layout.ledger)
        except (OSError, sqlite3.Error) as e:
            raise ParaError(
                f"cannot open the feature database at {self.root} for writing: "
                f"{getattr(e, 'strerror', None) or e}",
                hint="choose a writable directory with --db (or PARA_DB)",
            ) from e
        if fresh or not (self.layout.meta / catalog.JOBS_FILE).exists():
            with locked(self.layout):
                catalog.empty_meta(self.layout)
        if fresh or not self.layout.catalog.exists():
            catalog.refresh(self.layout, timeout=30)

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None

    def __enter__(self) -> FeatureDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require(self) -> None:
        if not self.exists():
            raise ParaError(
                f"no feature database at {self.root}",
                hint=f"import files with `para collect --db {self.root} FILE.para...` "
                f"or run `para collector serve --db {self.root}`",
            )

    # -- reading ---------------------------------------------------------------------------
    def connect(self, read_only: bool = True) -> duckdb.DuckDBPyConnection:
        """DuckDB over the database: a view per table (node, memory, cpu, ... and any table a
        newer agent adds), each with `host` and `job_id` columns and the partition columns
        `cluster` and `date`; `jobs`, `hosts` and `catalogue`.  Hold read-only connections as
        long as needed; a read-write one (your own tables beside the views) locks out readers
        while open."""
        if read_only:
            self._require()
            if not self.layout.catalog.exists():
                self.ledger  # noqa: B018 - creates the catalogue
        else:
            self.ledger  # noqa: B018 - creates the database if needed
            catalog.refresh(self.layout, timeout=5)
        return catalog.connect(self.layout, read_only, self._table_columns_readonly())

    def connect_locked(self) -> duckdb.DuckDBPyConnection:
        """The views of connect(), for untrusted SQL (see catalog.connect_locked)."""
        self._require()
        return catalog.connect_locked(self.layout, self._table_columns_readonly())

    def _read_ledger(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """A query of the ledger that writes nothing: analysts may have read access only."""
        if self._ledger is not None:
            return self._ledger.query(sql, params)
        for uri in (f"file:{self.layout.ledger}?mode=ro", f"file:{self.layout.ledger}?immutable=1"):
            try:
                con = sqlite3.connect(uri, uri=True, timeout=10)
                try:
                    return con.execute(sql, params).fetchall()
                finally:
                    con.close()
            except sqlite3.OperationalError:
                continue  # no write access for WAL's shared memory file: read it as it is
        raise ParaError(f"cannot read the ledger of {self.root}")

    def _table_columns_readonly(self) -> dict[str, list[dict[str, str]]]:
        try:
            rows = self._read_ledger("SELECT name, columns FROM tables")
        except ParaError:
            return {}
        return {name: json.loads(cols) for name, cols in rows}

    def tables(self) -> list[str]:
        return self.layout.tables()

    def job_hosts(self, job_id: str) -> list[str]:
        """The hosts a job ran on, as far as the database has seen it."""
        self._require()
        rows = self._read_ledger(
            "SELECT host FROM job_hosts WHERE job_id = ? ORDER BY host", (str(job_id),)
        )
        return [r[0] for r in rows]

    def status(self) -> dict[str, Any]:
        """Segments merged and waiting, values, rows, hosts, jobs, tables."""
        self._require()
        by_state = {
            state: (n, values, rows)
            for state, n, values, rows in self._read_ledger(
                'SELECT state, count(*), coalesce(sum("values"), 0), coalesce(sum(rows), 0)'
                " FROM segments GROUP BY state"
            )
        }
        # a merged segment whose batch is not in its tables' logs yet is still waiting: once
        # status says merged, every reader sees the rows
        unseen = self._read_ledger(
            'SELECT count(*), coalesce(sum(s."values"), 0), coalesce(sum(s.rows), 0),'
            " coalesce(sum(s.bytes), 0) FROM segments s JOIN batches b ON s.batch = b.id"
            " WHERE s.state = 'merged'"
        )[0]
        m = by_state.get("merged", (0, 0, 0))
        merged = (m[0] - unseen[0], m[1] - unseen[1], m[2] - unseen[2])
        w = self._read_ledger(
            "SELECT count(*), coalesce(sum(bytes), 0) FROM segments WHERE state = 'received'"
        )[0]
        waiting = (w[0] + unseen[0], w[1] + unseen[3])
        return {
            "path": str(self.root),
            "segments": merged[0],
            "values": merged[1],
            "rows": merged[2],
            "waiting": waiting[0],
            "waiting_bytes": waiting[1],
            "quarantined": by_state.get("quarantined", (0, 0, 0))[0],
            "hosts": self._read_ledger("SELECT count(*) FROM hosts")[0][0],
            "jobs": self._read_ledger("SELECT count(*) FROM jobs")[0][0],
            "tables": self.tables(),
        }

    # -- the analyzer's columns ------------------------------------------------------------
    def write_job_features(self, job_id: str, features: dict[str, Any]) -> None:
        """Merge `features` into the job's row of `jobs` (new keys become new columns)."""
        job_id = str(job_id)
        self._require()
        try:
            self._write_job_features(job_id, features)
        except sqlite3.Error as e:
            raise ParaError(
                f"cannot store the features of job {job_id} in {self.root}: {e}",
                hint="the database needs write access (the collector's user)",
            ) from e
        self.export_meta()

    def _write_job_features(self, job_id: str, features: dict[str, Any]) -> None:
        if not self.ledger.query("SELECT 1 FROM jobs WHERE job_id = ?", (job_id,)):
            raise ParaError(
                f"no job {job_id!r} in the feature database at {self.root}",
                hint="`para jobs` lists the jobs it holds",
            )
        doc = json.loads(json.dumps(features, default=_plain))
        with self.ledger.transaction() as cur:
            row = cur.execute(
                "SELECT features FROM job_features WHERE job_id = ?", (job_id,)
            ).fetchone()
            merged = {**(json.loads(row[0]) if row else {}), **doc}
            cur.execute(
                "INSERT INTO job_features (job_id, features, updated) VALUES (?, ?, ?)"
                " ON CONFLICT(job_id) DO UPDATE SET features = excluded.features,"
                " updated = excluded.updated",
                (job_id, json.dumps(merged), time.time()),
            )

    def export_meta(self) -> None:
        self.ledger  # noqa: B018 - creates the database if needed
        with locked(self.layout):
            catalog.export_meta(self.layout, self.ledger)

    def refresh_catalog(self, timeout: float = 5.0) -> bool:
        return catalog.refresh(self.layout, timeout=timeout)

    # -- importing files -------------------------------------------------------------------
    def import_para(self, path: str | Path) -> dict[str, Any]:
        """Import one complete .para file (a profile output or an agent segment).

        Returns what happened: `status` is `imported` or `duplicate` (the same recording was
        imported before: nothing changes).  A file that cannot be imported raises FormatError.
        """
        result = self.import_paths([path])[0]
        if result["status"] == "rejected":
            raise FormatError(result["reason"], hint="para show FILE says what the file holds")
        return result

    def import_paths(
        self,
        paths: Iterable[str | Path],
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Import many files, in batches; one result per file, in order."""
        paths = list(paths)
        results: list[dict[str, Any] | None] = [None] * len(paths)
        pending: list[tuple[Segment, str]] = []
        slots: list[int] = []
        pending_bytes = 0
        seen: set[str] = set()

        def done(i: int, r: dict[str, Any]) -> None:
            results[i] = r
            if progress:
                progress(r)

        def flush() -> None:
            nonlocal pending, slots, pending_bytes
            if pending:
                by_id = {r["id"]: r for r in self._merge_locked(pending, incoming=False)}
                for i, (seg, _) in zip(slots, pending):
                    done(i, by_id[seg.id])
                pending, slots, pending_bytes = [], [], 0

        ledger = self.ledger
        with locked(self.layout):
            self.recover_locked()
            for i, p in enumerate(paths):
                try:
                    seg = open_segment(p)
                except Rejected as e:
                    done(i, {"path": str(p), "status": "rejected", "reason": str(e)})
                    continue
                if seg.id in seen or ledger.segment(seg.id) is not None:
                    seg.close()
                    done(i, _result(seg, "duplicate"))
                    continue
                seen.add(seg.id)
                pending.append((seg, self.cluster))
                slots.append(i)
                pending_bytes += seg.size
                if len(pending) >= BATCH_SEGMENTS or pending_bytes >= BATCH_BYTES:
                    flush()
            flush()
            catalog.export_meta(self.layout, ledger)
        catalog.refresh(self.layout, timeout=1.0)  # best effort: readers never depend on it
        return [r for r in results if r is not None]

    # -- merging what the collector received -----------------------------------------------
    def merge_received(
        self, max_segments: int = BATCH_SEGMENTS, max_bytes: int = BATCH_BYTES
    ) -> MergeReport:
        """Merge segments waiting in incoming/ (one batch).  Raises StoreFull when the disk is
        full: nothing is lost (the segments stay waiting)."""
        report = MergeReport()
        self.ledger  # noqa: B018 - creates the database if needed
        with locked(self.layout):
            rows = self.ledger.received(max_segments)
            batch: list[tuple[Segment, str]] = []
            size = 0
            for row in rows:
                seg = self._open_received(row, report)
                if seg is None:
                    continue
                if batch and size + seg.size > max_bytes:
                    seg.close()
                    break
                batch.append((seg, row.cluster))
                size += seg.size
            if not batch:
                return report
            before = set(self.layout.tables())
            try:
                results = self._merge_locked(batch, incoming=True)
            except StoreFull:
                raise
            except Exception as e:
                if is_disk_full(e):
                    raise
                # Something no check foresaw: never retry the same batch forever.  Merged one
                # by one, the files that fail alone are quarantined and the others go in.
                results = self._merge_one_by_one(batch, e)
            for r in results:
                if r["status"] == "imported":
                    report.merged += 1
                    report.values += r["values"]
                    report.rows += r["rows"]
                else:
                    report.quarantined += 1
                    report.problems.append((str(r.get("host") or "?"), str(r.get("reason"))))
            report.new_tables = bool(set(self.layout.tables()) - before)
        return report

    def _merge_one_by_one(
        self, batch: list[tuple[Segment, str]], first: BaseException
    ) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        for seg, cluster in batch:
            row = self.ledger.segment(seg.id)
            if row is None or row.state != "received":
                continue  # quarantined before the failure
            again = self._open_received(row, MergeReport())
            if again is None:
                results.append(_result(seg, "rejected"))
                continue
            try:
                results.extend(self._merge_locked([(again, cluster)], incoming=True))
            except StoreFull:
                raise
            except Exception as e:
                if is_disk_full(e):
                    raise
                reason = f"{seg.path}: merge failed: {type(e).__name__}: {e}"
                self._quarantine(seg.id, seg.host, seg.path, reason)
                results.append({**_result(seg, "rejected"), "reason": reason})
        return results

    def _open_received(self, row: SegmentRow, report: MergeReport) -> Segment | None:
        path = self.root / (row.path or "")
        try:
            # verified (size, digest, CRCs) when it was received; its id is the ledger's
            seg = open_segment(path, verify=False, sha256="0" * 64)
            seg.id = row.id
            return seg
        except Rejected as e:
            self._quarantine(row.id, row.host, path, str(e))
            report.quarantined += 1
            report.problems.append((row.host, str(e)))
            return None

    def _quarantine(self, seg_id: str, host: str, path: Path, reason: str) -> None:
        dest = self.layout.quarantine / host / f"{seg_id}.para"
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, dest)
        except FileNotFoundError:
            reason = f"{reason} (file missing)"
        self.ledger.quarantine(seg_id, str(dest.relative_to(self.root)), reason)

    def _merge_locked(
        self, items: list[tuple[Segment, str]], incoming: bool
    ) -> list[dict[str, Any]]:
        """Write one batch: Parquet files in staging/, then one ledger transaction, then the
        renames into data/.  The caller holds the lock."""
        batch_id = uuid.uuid4().hex
        results: list[dict[str, Any]] = []
        prepared: list[tuple[SegmentRows, str]] = []
        known = self.ledger.table_columns()
        groups: dict[tuple[str, str, str], list[Any]] = {}
        try:
            for seg, cluster in items:
                try:
                    # what the ack checked, again: files imported by `para collect`, and two
                    # files of one batch that bring the same new table with other types
                    check_contents(seg, known)
                    sr = segment_rows(seg)
                    parts = [
                        ((table, cluster, date), part)
                        for table, data in sr.tables.items()
                        for date, part in split_by_date(data).items()
                    ]
                except (Rejected, pa.ArrowException, ValueError, TypeError, OverflowError) as e:
                    reason = str(e) if isinstance(e, Rejected) else f"{seg.path}: cannot merge: {e}"
                    if incoming:
                        self._quarantine(seg.id, seg.host, seg.path, reason)
                    results.append(
                        {
                            "path": str(seg.path),
                            "id": seg.id,
                            "host": seg.host,
                            "status": "rejected",
                            "reason": reason,
                        }
                    )
                    continue
                for table, cols in sr.columns.items():
                    known[table] = merge_columns(known.get(table, []), cols)[0]
                prepared.append((sr, cluster))
                for key, part in parts:
                    groups.setdefault(key, []).append(part)
            staging = self.layout.staging / batch_id
            moves: list[list[str]] = []
            try:
                for (table, cluster, date), parts in sorted(groups.items()):
                    final = self.layout.partition(table, cluster, date) / f"m-{batch_id}.parquet"
                    rel = final.relative_to(self.root)
                    tmp = staging / rel
                    data = concat(parts)
                    write_parquet(data, tmp, sort_keys(table, data.schema.names))
                    moves.append([str(tmp.relative_to(self.root)), str(rel)])
                # the files' names too are on disk before the commit that points at them
                synced: set[Path] = set()
                for d in sorted({(self.root / src).parent for src, _ in moves}):
                    while d != self.layout.staging.parent and d not in synced:
                        fsync_dir(d)
                        synced.add(d)
                        d = d.parent
            except BaseException as e:
                shutil.rmtree(staging, ignore_errors=True)
                if is_disk_full(e):
                    raise StoreFull(f"disk full under {self.root}: merge postponed ({e})") from e
                raise
            deletes = (
                [str(sr.segment.path.relative_to(self.root)) for sr, _ in prepared]
                if (incoming)
                else []
            )
            try:
                self._commit(batch_id, prepared, moves, deletes, incoming)
            except BaseException as e:
                shutil.rmtree(staging, ignore_errors=True)
                if is_disk_full(e):
                    raise StoreFull(f"disk full under {self.root}: merge postponed ({e})") from e
                raise
        finally:
            for seg, _ in items:
                seg.close()
        self.finish_batch(batch_id, moves, deletes)
        for sr, _ in prepared:
            r = _result(sr.segment, "imported")
            r.update(
                values=sr.values, rows=sr.rows, tables={t: len(d) for t, d in sr.tables.items()}
            )
            r["jobs"] = sorted(sr.jobs)
            results.append(r)
        return results

    def _commit(
        self,
        batch_id: str,
        prepared: list[tuple[SegmentRows, str]],
        moves: list[list[str]],
        deletes: list[str],
        incoming: bool,
    ) -> None:
        now = time.time()
        known = self.ledger.table_columns()
        with self.ledger.transaction() as cur:
            cur.execute(
                "INSERT INTO batches (id, kind, state, created, moves, deletes)"
                " VALUES (?, 'merge', 'committed', ?, ?, ?)",
                (batch_id, now, json.dumps(moves), json.dumps(deletes)),
            )
            for sr, cluster in prepared:
                seg = sr.segment
                start, end = _num(seg.meta.get("start")), _num(seg.meta.get("end"))
                samples = seg.meta.get("samples")
                cur.execute(
                    "INSERT INTO segments (id, host, cluster, name, source, state, received,"
                    ' merged, bytes, samples, "values", rows, start, "end", batch, path)'
                    " VALUES (?, ?, ?, ?, ?, 'merged', ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)"
                    " ON CONFLICT(id) DO UPDATE SET state = 'merged', merged = excluded.merged,"
                    ' samples = excluded.samples, "values" = excluded."values",'
                    ' rows = excluded.rows, start = excluded.start, "end" = excluded."end",'
                    " batch = excluded.batch, path = NULL",
                    (
                        seg.id,
                        seg.host,
                        cluster,
                        seg.path.name if not incoming else None,
                        seg.source,
                        now,
                        now,
                        seg.size,
                        samples if isinstance(samples, int) else None,
                        sr.values,
                        sr.rows,
                        start,
                        end,
                        batch_id,
                    ),
                )
                facts = host_facts(seg.meta.get("host"))
                cur.execute(
                    "INSERT INTO hosts (host, cluster, first_seen, last_seen, last_received,"
                    ' segments, "values", facts) VALUES (?, ?, ?, ?, ?, 1, ?, ?)'
                    " ON CONFLICT(host) DO UPDATE SET"
                    " first_seen = min(coalesce(first_seen, excluded.first_seen),"
                    "                  coalesce(excluded.first_seen, first_seen)),"
                    " facts = CASE WHEN coalesce(excluded.last_seen, 0) >= coalesce(last_seen, 0)"
                    "         THEN excluded.facts ELSE facts END,"
                    " last_seen = max(coalesce(last_seen, excluded.last_seen),"
                    "                 coalesce(excluded.last_seen, last_seen)),"
                    " last_received = excluded.last_received, cluster = excluded.cluster,"
                    ' segments = segments + 1, "values" = "values" + excluded."values"',
                    (seg.host, cluster, start, end, now, sr.values, json.dumps(facts, default=str)),
                )
                for job in sr.jobs.values():
                    cur.execute(
                        'INSERT INTO jobs (job_id, cluster, scheduler, user, name, start, "end",'
                        " info) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                        " ON CONFLICT(job_id) DO UPDATE SET"
                        " start = min(coalesce(start, excluded.start),"
                        "             coalesce(excluded.start, start)),"
                        ' "end" = max(coalesce("end", excluded."end"),'
                        '             coalesce(excluded."end", "end")),'
                        " info = json_patch(coalesce(info, '{}'), excluded.info)",
                        (
                            job.job_id,
                            cluster,
                            job.scheduler,
                            job.user,
                            job.name,
                            job.start,
                            job.end,
                            json.dumps(job.info, default=str),
                        ),
                    )
                    claim = {k: v for k in CLAIMED if (v := getattr(job, k)) is not None}
                    cur.execute(
                        'INSERT INTO job_hosts (job_id, host, start, "end", claims)'
                        " VALUES (?, ?, ?, ?, ?)"
                        " ON CONFLICT(job_id, host) DO UPDATE SET"
                        " start = min(coalesce(start, excluded.start),"
                        "             coalesce(excluded.start, start)),"
                        ' "end" = max(coalesce("end", excluded."end"),'
                        '             coalesce(excluded."end", "end")),'
                        " claims = json_patch(coalesce(claims, '{}'), excluded.claims)",
                        (job.job_id, seg.host, job.start, job.end, json.dumps(claim)),
                    )
                    _settle_job(cur, job.job_id)
                for table, cols in sr.columns.items():
                    merged, grew = merge_columns(known.get(table, []), cols)
                    if grew or table not in known:
                        known[table] = merged
                        cur.execute(
                            "INSERT INTO tables (name, columns, updated) VALUES (?, ?, ?)"
                            " ON CONFLICT(name) DO UPDATE SET columns = excluded.columns,"
                            " updated = excluded.updated",
                            (table, json.dumps(merged), now),
                        )

    def finish_batch(self, batch_id: str, moves: list[list[str]], deletes: list[str]) -> list[str]:
        """Move a committed batch's files into place (again, after a crash: idempotent).
        Returns the files that are neither in staging/ nor in place (lost: said loudly)."""
        dirs: set[Path] = set()
        lost: list[str] = []
        for src, dst in moves:
            s, d = self.root / src, self.root / dst
            if s.exists():
                d.parent.mkdir(parents=True, exist_ok=True)
                os.replace(s, d)
                dirs.add(d.parent)
            elif not d.exists():
                lost.append(dst)
        for d in dirs:
            fsync_dir(d)
        self.commit_tables(moves, deletes)
        for rel in deletes:
            if not rel.startswith(f"{DATA}/"):  # data files go when expired (dataset.expire)
                (self.root / rel).unlink(missing_ok=True)
        shutil.rmtree(self.layout.staging / batch_id, ignore_errors=True)
        self.ledger.batch_done(batch_id)
        return lost

    def commit_tables(self, moves: list[list[str]], deletes: list[str]) -> None:
        """Commit a batch's data files to their tables' logs: the moved files added, the
        deleted ones removed (one transaction per table, so a compaction swaps its files
        atomically).  Idempotent: a batch redone after a crash commits nothing twice."""
        per_table: dict[str, tuple[list[str], list[str]]] = {}
        for rel in [d for _, d in moves] + [d for d in deletes]:
            parts = Path(rel).parts
            if len(parts) >= 3 and parts[0] == DATA:
                adds, removes = per_table.setdefault(parts[1], ([], []))
                (removes if rel in deletes else adds).append("/".join(parts[2:]))
        for table, (adds, removes) in sorted(per_table.items()):
            table_dir = self.layout.data / table
            files = [table_dir / a for a in adds if (table_dir / a).exists()]
            schema = pa.unify_schemas([pq.read_schema(f) for f in files]) if files else None
            if schema is None:
                snap = dataset.snapshot(table_dir)
                if snap is None:
                    continue
                schema = snap.data_schema
            dataset.commit(
                table_dir,
                schema,
                add=[(a, dataset.partition_values(a)) for a in adds if (table_dir / a).exists()],
                remove=[(r, dataset.partition_values(r)) for r in removes],
            )

    def recover(self) -> list[str]:
        """Finish the batches a killed writer committed, drop what it left uncommitted.
        Returns the data files of committed batches that were lost (see finish_batch)."""
        self.ledger  # noqa: B018 - creates the database if needed
        with locked(self.layout):
            return self.recover_locked()

    def recover_locked(self) -> list[str]:
        lost: list[str] = []
        for batch_id, moves, deletes in self.ledger.pending_batches():
            lost += self.finish_batch(batch_id, moves, deletes)
        if self.layout.staging.is_dir():
            for leftover in self.layout.staging.iterdir():
                shutil.rmtree(leftover, ignore_errors=True)
        self._adopt_plain_tables()
        return lost

    def _adopt_plain_tables(self) -> None:
        """A database written before the tables had logs: every file on disk is the table."""
        for table in self.layout.tables():
            table_dir = self.layout.data / table
            if dataset.is_table(table_dir):
                continue
            files = [str(f.relative_to(self.root)) for f in self.layout.data_files(table)]
            self.commit_tables([["", f] for f in files], [])


# What a node says of a job that decides who may see it: no single node's word sets it.
CLAIMED = ("user", "name", "scheduler")


def _settle_job(cur: sqlite3.Cursor, job_id: str) -> None:
    """A job's user, name and scheduler from what its hosts said: a value every host that
    said one agrees on; where they disagree, none (NULL) and the claims under info.disputed.
    One node claiming a job id, first or not, can never make the job its user's (or take
    it from its user): the job's real nodes contradict it."""
    said: dict[str, dict[str, str]] = {k: {} for k in CLAIMED}
    for host, claims in cur.execute(
        "SELECT host, claims FROM job_hosts WHERE job_id = ? ORDER BY host", (job_id,)
    ).fetchall():
        doc = json.loads(claims) if claims else {}
        for k in CLAIMED:
            if doc.get(k) is not None:
                said[k][host] = str(doc[k])
    settled = {k: (next(iter(set(v.values()))) if len(set(v.values())) == 1 else None)
               for k, v in said.items()}  # fmt: skip
    disputed = {k: v for k, v in said.items() if len(set(v.values())) > 1}
    cur.execute(
        "UPDATE jobs SET user = ?, name = ?, scheduler = ?,"
        " info = CASE WHEN ? IS NULL THEN json_remove(coalesce(info, '{}'), '$.disputed')"
        " ELSE json_set(coalesce(info, '{}'), '$.disputed', json(?)) END WHERE job_id = ?",
        (
            settled["user"],
            settled["name"],
            settled["scheduler"],
            json.dumps(disputed) if disputed else None,
            json.dumps(disputed) if disputed else None,
            job_id,
        ),
    )


# A host's facts become columns of `hosts` (docs/collector.md, "Bounds"): names as columns
# can be, so many of them, so long each (what is past these is left out).
_FACT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
MAX_FACTS = 200
MAX_FACT_BYTES = 4096


def host_facts(doc: object) -> dict[str, Any]:
    if not isinstance(doc, dict):
        return {}
    out: dict[str, Any] = {}
    for k, v in doc.items():
        if len(out) >= MAX_FACTS:
            break
        if not isinstance(k, str) or not _FACT_NAME.fullmatch(k):
            continue
        if len(json.dumps(v, default=str)) <= MAX_FACT_BYTES:
            out[k] = v
    return out


def _plain(v: Any) -> Any:
    """JSON for numpy scalars and the like (the analyzer's features)."""
    if hasattr(v, "item"):
        return v.item()
    if hasattr(v, "tolist"):
        return v.tolist()
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return str(v)


def _num(v: object) -> float | None:
    return float(v) if isinstance(v, (int, float)) else None


def _result(seg: Segment, status: str) -> dict[str, Any]:
    return {
        "path": str(seg.path),
        "id": seg.id,
        "host": seg.host,
        "status": status,
        "values": 0,
        "rows": 0,
        "start": _num(seg.meta.get("start")),
        "end": _num(seg.meta.get("end")),
    }
