"""Alerts in the feature database: the `alerts` table, one row per notification document
(firing, resolved, flapping, reminder), with its evidence.

Rows are written in small batches as Parquet files of the table `alerts`
(`data/alerts/cluster=C/date=D/a-BATCH.parquet`, the layout of every table, so the same
views, compaction and retention apply), and the columns are entered in the catalogue.  At
start the collector reads back the alerts still firing, so that a restart neither forgets
nor notifies them again.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import duckdb
import pyarrow as pa

from para.collector import catalog
from para.collector.db import FeatureDB
from para.collector.layout import fsync_dir, locked
from para.collector.ledger import merge_columns
from para.collector.merge import write_parquet
from para.formats.journal import TIME_TYPE

TABLE = "alerts"
# name, arrow type, catalogue type, unit, description
COLUMNS: list[tuple[str, pa.DataType, str, str, str]] = [
    ("t", TIME_TYPE, "int", "ms since epoch", "when this happened (the samples' time)"),
    ("host", pa.string(), "str", "name", "the node (null: a job's alert)"),
    ("job_id", pa.string(), "str", "id", "the (first) job concerned"),
    ("alert_id", pa.string(), "str", "id", "one alert from firing to resolved"),
    ("event", pa.string(), "str", "name", "firing, resolved, flapping or reminder"),
    ("state", pa.string(), "str", "name", "firing or resolved"),
    ("rule", pa.string(), "str", "name", "the rule (alert rules file)"),
    ("type", pa.string(), "str", "name", "threshold, anomaly, bottleneck or absent"),
    ("severity", pa.string(), "str", "name", "critical, warning or info"),
    ("source", pa.string(), "str", "name", "who evaluated it: collector, or agent:HOST"),
    ("metric", pa.string(), "str", "expression", "the rule's metric or bottleneck id"),
    ("value", pa.float64(), "float", "unit", "the metric's value"),
    ("unit", pa.string(), "str", "name", "its unit"),
    ("threshold", pa.string(), "str", "json", "the rule's limits"),
    ("started", TIME_TYPE, "int", "ms since epoch", "when the condition began"),
    ("ended", TIME_TYPE, "int", "ms since epoch", "when it resolved"),
    ("labels", pa.string(), "str", "json", "device or job of the series"),
    ("jobs", pa.string(), "str", "json", "jobs running on the node, or the job"),
    ("flapping", pa.int64(), "int", "bool", "1 while the alert flaps"),
    ("notified", pa.int64(), "int", "bool", "1 if sent to the sinks"),
    ("sinks", pa.string(), "str", "json", "the sinks it was sent to"),
    ("summary", pa.string(), "str", "text", "what happened, in words"),
    (
        "evidence",
        pa.string(),
        "str",
        "json",
        "the values that made it fire, baselines, the analyzer's finding",
    ),
]
SCHEMA = pa.schema([(n, t) for n, t, *_ in COLUMNS])


def _ms(epoch: Any) -> int | None:
    return int(round(epoch * 1000)) if isinstance(epoch, (int, float)) else None


def _row(note: dict[str, Any], notified: bool, sinks: list[str]) -> dict[str, Any]:
    jobs = note.get("jobs") or []
    value = note.get("value")
    return {
        "t": _ms(note.get("at")),
        "host": note.get("host"),
        "job_id": jobs[0] if jobs else None,
        "alert_id": note["id"],
        "event": note["event"],
        "state": note["state"],
        "rule": note["rule"],
        "type": note.get("type"),
        "severity": note.get("severity"),
        "source": note.get("source"),
        "metric": note.get("metric"),
        "value": float(value) if isinstance(value, (int, float)) else None,
        "unit": note.get("unit"),
        "threshold": json.dumps(note.get("threshold") or {}),
        "started": _ms(note.get("started")),
        "ended": _ms(note.get("ended")),
        "labels": json.dumps(note.get("labels") or {}),
        "jobs": json.dumps(jobs),
        "flapping": int(bool(note.get("flapping"))),
        "notified": int(notified),
        "sinks": json.dumps(sinks if notified else []),
        "summary": note.get("summary"),
        "evidence": json.dumps(note.get("evidence") or {}, default=str),
    }


class AlertStore:
    def __init__(self, db: FeatureDB, cluster: str, log: Callable[[str], None]):
        self.db = db
        self.cluster = cluster
        self.log = log
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._registered = False
        self.written = 0
        self.failed = 0
        self.on_new_table: Callable[[], None] | None = None

    def add(self, note: dict[str, Any], notified: bool, sinks: list[str]) -> None:
        with self._lock:
            self._rows.append(_row(note, notified, sinks))

    def pending(self) -> int:
        with self._lock:
            return len(self._rows)

    def flush(self) -> int:
        """Write what waits (one file per date); on failure the rows wait for the next try."""
        with self._lock:
            rows, self._rows = self._rows, []
        if not rows:
            return 0
        try:
            self._write(rows)
        except Exception as e:
            with self._lock:
                self._rows = rows + self._rows
                self.failed += 1
            self.log(f"could not store {len(rows)} alert record(s) (will retry): {e}")
            return 0
        self.written += len(rows)
        return len(rows)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        layout = self.db.layout
        by_date: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            date = time.strftime("%Y-%m-%d", time.gmtime((r["t"] or 0) / 1000))
            by_date.setdefault(date, []).append(r)
        batch = uuid.uuid4().hex
        staged: list[tuple[Any, Any]] = []
        for date, part in sorted(by_date.items()):
            table = pa.Table.from_pylist(part, schema=SCHEMA)
            final = layout.partition(TABLE, self.cluster, date) / f"a-{batch}.parquet"
            tmp = layout.staging / f"alerts-{batch}" / final.name.replace(".parquet", f"-{date}")
            write_parquet(table, tmp, ["host", "t"], sort=True)
            staged.append((tmp, final))
        new_table = not (layout.data / TABLE).is_dir()
        with locked(layout):
            for tmp, final in staged:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, final)
                fsync_dir(final.parent)
            (layout.staging / f"alerts-{batch}").rmdir()
            # in the table's log (a crash before this leaves files the next start adopts)
            self.db.commit_tables([["", str(f.relative_to(self.db.root))] for _, f in staged], [])
        if not self._registered:
            self._register()
        if new_table and self.on_new_table is not None:
            self.on_new_table()

    def _register(self) -> None:
        """The table's columns in the catalogue (units and meaning, as every table's)."""
        cols = [
            {
                "table": TABLE,
                "name": n,
                "unit": u,
                "kind": "info" if n == "t" else "gauge",
                "type": ct,
                "source": "para collector alerts",
                "description": d,
            }
            for n, _, ct, u, d in COLUMNS
        ]
        ledger = self.db.ledger
        known = ledger.table_columns().get(TABLE, [])
        merged, grew = merge_columns(known, cols)
        if grew or not known:
            with ledger.transaction() as cur:
                cur.execute(
                    "INSERT INTO tables (name, columns, updated) VALUES (?, ?, ?)"
                    " ON CONFLICT(name) DO UPDATE SET columns = excluded.columns,"
                    " updated = excluded.updated",
                    (TABLE, json.dumps(merged), time.time()),
                )
        self._registered = True

    def open_alerts(self) -> list[dict[str, Any]]:
        """The alerts whose last record says firing (to carry them over a restart)."""
        if not (self.db.layout.data / TABLE).is_dir():
            return []
        con = duckdb.connect()
        try:
            source = catalog.source_sql(con, self.db.layout.data / TABLE)
            if source is None:
                return []
            rows = con.execute(
                "SELECT alert_id, rule, host, labels, jobs, epoch_ms(started) / 1000.0, "
                "epoch_ms(t) / 1000.0, value, state FROM (SELECT *, row_number() OVER "
                "(PARTITION BY alert_id ORDER BY t DESC, event = 'resolved' DESC) AS rn "
                f"FROM ({source}) WHERE cluster = ?) WHERE rn = 1 AND state = 'firing'",
                [self.cluster],
            ).fetchall()
        except duckdb.Error as e:
            self.log(f"could not read the open alerts back: {e}")
            return []
        finally:
            con.close()
        return [
            {
                "id": r[0],
                "rule": r[1],
                "host": r[2],
                "labels": json.loads(r[3] or "{}"),
                "jobs": json.loads(r[4] or "[]"),
                "started": r[5],
                "at": r[6],
                "value": r[7],
                "state": r[8],
            }
            for r in rows
        ]
