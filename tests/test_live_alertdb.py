"""Alert records in the feature database (para/collector/alertdb.py): a table like the others
(views, catalogue), and the open alerts read back at a restart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from para.collector.alertdb import AlertStore
from para.collector.db import FeatureDB

pytestmark = pytest.mark.no_kernel


def _note(aid: str, event: str, at: float, **kw: object) -> dict:
    doc = {
        "id": aid,
        "event": event,
        "state": "resolved" if event == "resolved" else "firing",
        "rule": "busy",
        "type": "threshold",
        "severity": "warning",
        "source": "collector",
        "host": "cn1",
        "labels": {"gpu": "0"},
        "jobs": ["4711"],
        "metric": "gpu.util_gpu",
        "value": 3.5,
        "unit": "%",
        "threshold": {"below": 10},
        "started": at - 300,
        "ended": at if event == "resolved" else None,
        "at": at,
        "flapping": False,
        "summary": f"{aid} {event}",
        "evidence": {"text": "300 samples", "points": [[at, 3.5]]},
    }
    doc.update(kw)
    return doc


def test_alerts_are_a_table_of_the_database_and_open_ones_come_back(tmp_path: Path):
    db = FeatureDB(tmp_path / "db")
    log: list[str] = []
    store = AlertStore(db, "default", log.append)
    day = 1795305600.0  # 2026-11-22 00:00 UTC
    store.add(_note("a" * 32, "firing", day + 10), True, ["log", "hook"])
    store.add(_note("a" * 32, "resolved", day + 70), True, ["log", "hook"])
    store.add(_note("b" * 32, "firing", day + 80, host="cn2"), True, ["log"])
    store.add(_note("c" * 32, "firing", day - 3600, host=None, labels={"job": "9"}), False, ["log"])
    assert store.flush() == 4 and store.pending() == 0
    assert log == []
    # two dates: two partitions of the table `alerts`
    parts = sorted(p.parent.name for p in (tmp_path / "db/data/alerts").rglob("*.parquet"))
    assert parts == ["date=2026-11-21", "date=2026-11-22"]
    db.export_meta()  # the catalogue snapshot (the collector's upkeep writes it)
    con = db.connect()
    rows = con.execute(
        "SELECT alert_id, event, host, job_id, notified, sinks, evidence FROM alerts ORDER BY t"
    ).fetchall()
    assert [(r[0][0], r[1], r[2], r[3], r[4]) for r in rows] == [
        ("c", "firing", None, "4711", 0),
        ("a", "firing", "cn1", "4711", 1),
        ("a", "resolved", "cn1", "4711", 1),
        ("b", "firing", "cn2", "4711", 1),
    ]
    assert json.loads(rows[1][5]) == ["log", "hook"] and json.loads(rows[3][6])["text"]
    units = dict(
        con.execute("SELECT name, unit FROM catalogue WHERE \"table\" = 'alerts'").fetchall()
    )
    con.close()
    assert units["started"] == "ms since epoch" and units["evidence"] == "json"
    assert {c["name"] for c in db.ledger.table_columns()["alerts"]} >= {"alert_id", "evidence"}
    open_ = {a["id"]: a for a in AlertStore(db, "default", log.append).open_alerts()}
    assert set(open_) == {"b" * 32, "c" * 32}
    assert open_["b" * 32]["host"] == "cn2" and open_["b" * 32]["labels"] == {"gpu": "0"}
    assert open_["b" * 32]["started"] == day + 80 - 300
    db.close()
