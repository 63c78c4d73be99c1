"""The ledger: the feature database's transactional memory (SQLite, beside the Parquet data).

It records every segment ever accepted (its id is the idempotency key), the merges and
compactions in flight (so a collector killed at any moment finishes or undoes them at the next
start), and the hosts, jobs and job features that the catalogue exports as Parquet.

SQLite rather than the DuckDB catalogue: an acknowledgement must be durable at once, and
DuckDB lets no other process read a database file while one holds it for writing, so analysts'
queries would stall the collector's acks.  SQLite in WAL mode takes writers from several
processes (the collector, `para collect`, the analyzer's job features) and never blocks readers.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    cluster TEXT NOT NULL,
    name TEXT,
    source TEXT,
    state TEXT NOT NULL,           -- received | merged | quarantined
    received REAL NOT NULL,
    merged REAL,
    bytes INTEGER,
    samples INTEGER,
    "values" INTEGER,
    rows INTEGER,
    start REAL,
    "end" REAL,
    batch TEXT,
    path TEXT,                     -- the copy waiting in incoming/ while state = received
    reason TEXT
);
CREATE INDEX IF NOT EXISTS segments_state ON segments(state);
CREATE INDEX IF NOT EXISTS segments_end ON segments("end");

CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,            -- merge | compact
    state TEXT NOT NULL,           -- committed (moves pending) | done
    created REAL NOT NULL,
    moves TEXT NOT NULL,           -- JSON [[staging path, final path], ...]
    deletes TEXT NOT NULL          -- JSON [path, ...] removed once the moves are done
);

CREATE TABLE IF NOT EXISTS hosts (
    host TEXT PRIMARY KEY,
    cluster TEXT NOT NULL,
    first_seen REAL,
    last_seen REAL,
    last_received REAL,
    segments INTEGER NOT NULL DEFAULT 0,
    "values" INTEGER NOT NULL DEFAULT 0,
    facts TEXT                     -- JSON: meta.json "host" of the latest segment
);

CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    cluster TEXT,
    scheduler TEXT,
    user TEXT,
    name TEXT,
    start REAL,
    "end" REAL,
    info TEXT                      -- JSON: everything else known about the job
);

CREATE TABLE IF NOT EXISTS job_hosts (
    job_id TEXT NOT NULL,
    host TEXT NOT NULL,
    start REAL,
    "end" REAL,
    claims TEXT,                   -- JSON: what this host said of the job (user, name...)
    PRIMARY KEY (job_id, host)
);

CREATE TABLE IF NOT EXISTS job_features (
    job_id TEXT PRIMARY KEY,
    features TEXT NOT NULL,        -- JSON object, the analyzer's columns
    updated REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS tables (
    name TEXT PRIMARY KEY,
    columns TEXT NOT NULL,         -- JSON: the union of the catalogue entries seen
    updated REAL NOT NULL
);
"""


@dataclass
class SegmentRow:
    id: str
    host: str
    cluster: str
    state: str
    path: str | None
    name: str | None = None


class Ledger:
    """One SQLite connection shared by the threads of a process (calls are serialised)."""

    def __init__(self, path: str | Path, timeout: float = 60.0):
        self.path = Path(path)
        self._lock = threading.RLock()
        self._con = sqlite3.connect(
            self.path, timeout=timeout, isolation_level=None, check_same_thread=False
        )
        self._con.execute("PRAGMA journal_mode=WAL")
        # An acknowledgement promises the data survives a power cut: fsync each commit.
        self._con.execute("PRAGMA synchronous=FULL")
        self._con.executescript(SCHEMA)
        cols = {r[1] for r in self._con.execute("PRAGMA table_info(job_hosts)")}
        if "claims" not in cols:  # a database of an earlier para: each host's word on a job
            self._con.execute("ALTER TABLE job_hosts ADD COLUMN claims TEXT")

    def close(self) -> None:
        with self._lock:
            self._con.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        """BEGIN IMMEDIATE ... COMMIT: writers from other processes wait, never interleave."""
        with self._lock:
            cur = self._con.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._con.execute(sql, tuple(params)).fetchall()

    # -- segments --------------------------------------------------------------------------
    def segment(self, seg_id: str) -> SegmentRow | None:
        rows = self.query(
            "SELECT id, host, cluster, state, path, name FROM segments WHERE id = ?", (seg_id,)
        )
        return SegmentRow(*rows[0]) if rows else None

    def add_received(
        self,
        seg_id: str,
        host: str,
        cluster: str,
        name: str,
        path: str,
        nbytes: int,
        source: str,
    ) -> bool:
        """Record a segment stored in incoming/; False when its id was already there."""
        with self.transaction() as cur:
            cur.execute(
                "INSERT OR IGNORE INTO segments (id, host, cluster, name, source, state, received,"
                " bytes, path) VALUES (?, ?, ?, ?, ?, 'received', ?, ?, ?)",
                (seg_id, host, cluster, name, source, time.time(), nbytes, path),
            )
            return cur.rowcount == 1

    def received(self, limit: int) -> list[SegmentRow]:
        # first come, first merged: no host waits behind another's flood
        rows = self.query(
            "SELECT id, host, cluster, state, path, name FROM segments WHERE state = 'received'"
            " ORDER BY received, host LIMIT ?",
            (limit,),
        )
        return [SegmentRow(*r) for r in rows]

    def quarantine(self, seg_id: str, path: str, reason: str) -> None:
        with self.transaction() as cur:
            cur.execute(
                "UPDATE segments SET state = 'quarantined', path = ?, reason = ? WHERE id = ?",
                (path, reason, seg_id),
            )

    # -- batches ---------------------------------------------------------------------------
    def pending_batches(self) -> list[tuple[str, list[list[str]], list[str]]]:
        rows = self.query(
            "SELECT id, moves, deletes FROM batches WHERE state = 'committed' ORDER BY created"
        )
        return [(r[0], json.loads(r[1]), json.loads(r[2])) for r in rows]

    def batch_done(self, batch_id: str) -> None:
        with self.transaction() as cur:
            cur.execute("DELETE FROM batches WHERE id = ?", (batch_id,))

    # -- tables ----------------------------------------------------------------------------
    def table_columns(self) -> dict[str, list[dict[str, str]]]:
        return {
            name: json.loads(cols) for name, cols in self.query("SELECT name, columns FROM tables")
        }


def merge_columns(
    known: list[dict[str, str]], new: list[dict[str, str]]
) -> tuple[list[dict[str, str]], bool]:
    """The union of two catalogues of one table, known columns first; True if it grew."""
    names = {c["name"] for c in known}
    added = [c for c in new if c["name"] not in names]
    return known + added, bool(added)
