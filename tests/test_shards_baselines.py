"""Anomaly baselines across collector shards (issue 14): every shard judges an application's
run against the runs any shard saw, and a restarted collector goes on from the history of
the one before it.  Each shard learned its own, and all of them wrote the same
`DB/alerting/baselines.json`, the last writer's overwriting the others'."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from para.collector.alerts import AlertService
from para.collector.db import FeatureDB
from para.live.metrics import LAYOUTS

RULES = """
[[rule]]
name = "app-mem"
type = "anomaly"
baseline = "app"
metric = "job.rss_bytes"
deviation = 4
min_change = 1e8
warmup = "5m"
for = 0
"""
T0 = 1_800_000_000_000


class Shard:
    def __init__(self, db: Path, rules_path: Path, now: float = T0 / 1000):
        self.now = [now]
        self.svc = AlertService(rules_path, FeatureDB(db), "t", lambda m: None, store=False,
                                clock=lambda: self.now[0])  # fmt: skip

    def run(self, job: str, app: str, rss: float, seconds: int, t0_ms: int) -> None:
        """A job of `app` on node node-JOB holding about `rss` bytes for `seconds` seconds."""
        lay = LAYOUTS["job"]
        start = [t0_ms, "job_start", None, job, json.dumps({"job_name": app})]
        for k in range(seconds):
            r: list[Any] = [None] * len(lay.cols)
            r[lay.index["job"]], r[lay.index["rss_bytes"]] = job, rss + (k % 7) * 1e6
            r[lay.index["utime"]], r[lay.index["stime"]] = 100 * k, 0
            t_ms = t0_ms + 1000 * k
            rows = {"job": [r], "events": [start] if k == 0 else []}
            with self.svc._lock:
                self.now[0] = t_ms / 1000
                self.svc.process([(f"node-{job}", [(t_ms, rows)], t_ms / 1000)])

    def firing(self) -> list[dict[str, Any]]:
        with self.svc._lock:
            return [n for n in self.svc.recent if n["event"] == "firing"]


@pytest.fixture
def rules_path(tmp_path: Path) -> Path:
    p = tmp_path / "rules.toml"
    p.write_text(RULES)
    return p


def test_a_shard_judges_a_run_on_the_runs_another_shard_saw(tmp_path, rules_path):
    a, b = Shard(tmp_path / "db", rules_path), Shard(tmp_path / "db", rules_path)
    try:
        a.run("1", "lammps", 2e9, 400, T0)  # two runs of lammps on a: about 2 GB
        a.run("2", "lammps", 2e9, 400, T0 + 400_000)
        b.run("3", "gromacs", 1e9, 100, T0)  # b saw gromacs only
        for s in (a, b):  # what each does once a minute (their clocks in step)
            s.now[0] = (T0 + 800_000) / 1000
            s.svc._save_baselines()
        for s in (a, b):
            s.svc._read_baselines()
        files = sorted(p.name for p in (tmp_path / "db/alerting/baselines").glob("*.json"))
        assert files == sorted(f"{s.svc.baseline_files.shard}.json" for s in (a, b))
        b.run("4", "lammps", 6e9, 5, T0 + 800_000)  # three times as much, on b
        [note] = b.firing()
        base = note["evidence"]["baseline"]
        assert note["labels"] == {"job": "4"} and base["baseline"] == "app:lammps"
        assert base["mean"] == pytest.approx(2e9, rel=0.01)
        assert base["history_s"] == pytest.approx(800, rel=0.02)  # a's two runs, counted once
        b.run("5", "gromacs", 6e9, 5, T0 + 900_000)  # b's own gromacs: warming up still
        assert len(b.firing()) == 1
        a.run("6", "gromacs", 6e9, 5, T0 + 900_000)  # nor on a, with b's 100 s
        assert a.firing() == []
    finally:
        a.svc.stop()
        b.svc.stop()


def test_a_restarted_collector_goes_on_from_its_predecessors_history(tmp_path, rules_path):
    a = Shard(tmp_path / "db", rules_path)
    a.run("1", "lammps", 2e9, 400, T0)
    a.svc.stop()  # saves, saying it stopped
    c = Shard(tmp_path / "db", rules_path, now=T0 / 1000 + 460)
    try:
        # the predecessor's file is taken into the new process's own, not left to pile up
        names = [p.name for p in (tmp_path / "db/alerting/baselines").iterdir()]
        assert names == [f"{c.svc.baseline_files.shard}.json"]
        c.run("2", "lammps", 6e9, 5, T0 + 460_000)
        [note] = c.firing()
        assert note["evidence"]["baseline"]["history_s"] == pytest.approx(400, rel=0.02)
    finally:
        c.svc.stop()


def test_the_single_file_of_earlier_versions_is_taken_over(tmp_path, rules_path):
    a = Shard(tmp_path / "a", rules_path)
    a.run("1", "lammps", 2e9, 400, T0)
    legacy = tmp_path / "db/alerting/baselines.json"
    legacy.parent.mkdir(parents=True)
    with a.svc._lock:
        legacy.write_text(json.dumps(a.svc.engine.export_baselines()))
    os.utime(legacy, (T0 / 1000 + 400, T0 / 1000 + 400))
    a.svc.stop()
    c = Shard(tmp_path / "db", rules_path, now=T0 / 1000 + 460)
    try:
        assert not legacy.exists()
        c.run("2", "lammps", 6e9, 5, T0 + 460_000)
        assert len(c.firing()) == 1
    finally:
        c.svc.stop()


def test_a_broken_file_of_another_shard_is_left_out(tmp_path, rules_path):
    d = tmp_path / "db/alerting/baselines"
    d.mkdir(parents=True)
    (d / "other.json").write_text('{"t": 1, "baselines": {"[\\"app-mem\\"": [1, 2]}}')
    (d / "junk.json").write_bytes(b"\xff\x00 not json")
    a = Shard(tmp_path / "db", rules_path)
    try:
        a.run("1", "lammps", 2e9, 400, T0)
        a.run("2", "lammps", 6e9, 5, T0 + 400_000)
        assert len(a.firing()) == 1  # its own history, the broken files ignored
    finally:
        a.svc.stop()
