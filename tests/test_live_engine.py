"""The evaluation of alert rules (para.live.engine) on sequences of samples whose times and
values are set by the test: when an alert fires and resolves, once; what stops it flapping;
baselines; silent hosts; alerts notified elsewhere or before a restart; job windows."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from para.live import rules
from para.live.engine import Engine
from para.live.metrics import LAYOUTS, HostState, Snapshot

pytestmark = pytest.mark.no_kernel

S = 1000  # ms


class Feed:
    """A host whose CPU busy share and GPUs' utilisation the test sets, second by second."""

    def __init__(self, host: str = "cn1", rules_text: str = "", **engine: Any):
        self.rs = rules.parse(rules_text)
        self.notes: list[tuple[dict[str, Any], bool]] = []
        self.engine = Engine(self.rs, lambda n, notify: self.notes.append((n, notify)), **engine)
        self.host = HostState(host, self.rs.wanted())
        self.ticks = [0, 0]  # busy, idle
        self.t = 0

    def sample(
        self,
        busy_pct: float | None = 50.0,
        gpus: dict[str, float] | None = None,
        jobs: dict[str, str] | None = None,
        dt: int = S,
    ) -> Snapshot:
        self.t += dt
        rows: dict[str, Any] = {}
        if busy_pct is not None:
            self.ticks[0] += int(busy_pct * dt / S)
            self.ticks[1] += int((100 - busy_pct) * dt / S)
            node = [0] * len(LAYOUTS["node"].cols)
            node[LAYOUTS["node"].index["cpu_user"]] = self.ticks[0]
            node[LAYOUTS["node"].index["cpu_idle"]] = self.ticks[1]
            rows["node"] = [node]
        if gpus:
            lay = LAYOUTS["gpu"]
            rows["gpu"] = []
            for g, util in gpus.items():
                r: list[Any] = [None] * len(lay.cols)
                r[lay.index["gpu"]], r[lay.index["util_gpu"]] = g, util
                rows["gpu"].append(r)
        if jobs:
            lay = LAYOUTS["job"]
            rows["job"] = []
            for job in jobs:
                r = [None] * len(lay.cols)
                r[lay.index["job"]], r[lay.index["procs"]] = job, 1
                rows["job"].append(r)
        snap = self.host.update(self.t, rows)
        self.engine.observe(snap, received=self.t / 1000)
        return snap

    def events(self, notified_only: bool = True) -> list[str]:
        return [n["event"] for n, notify in self.notes if notify or not notified_only]


BUSY = """
[[rule]]
name = "busy"
metric = "cpu_busy_pct"
above = 80
for = "10s"
clear_for = "5s"
"""


def test_fires_once_after_its_duration_and_resolves_once_after_clear_for():
    f = Feed(rules_text=BUSY)
    f.sample(50)
    for _ in range(10):  # above from t = 2 s: not yet at 11 s
        f.sample(95)
    assert f.notes == []
    f.sample(95)  # t = 12 s: above for 10 s
    assert f.events() == ["firing"]
    fired = f.notes[0][0]
    assert fired["started"] == pytest.approx(2.0) and fired["at"] == pytest.approx(12.0)
    assert fired["value"] == pytest.approx(95) and fired["threshold"] == {"above": 80}
    assert "above 80 % for 10 s" in fired["summary"] and "cn1" in fired["summary"]
    assert len(fired["evidence"]["points"]) == 11
    for _ in range(30):  # still above: no second notification (deduplicated)
        f.sample(97)
    f.sample(40)  # one sample below: hysteresis holds the alert
    f.sample(99)
    for _ in range(5):  # below from the first of these: 4 s so far
        f.sample(40)
    assert f.events() == ["firing"]
    f.sample(40)  # below for 5 s
    assert f.events() == ["firing", "resolved"]
    resolved = f.notes[-1][0]
    assert resolved["id"] == fired["id"] and resolved["ended"] is not None
    assert f.engine.active() == []


def test_a_short_spike_never_fires():
    f = Feed(rules_text=BUSY)
    for busy in [50, 95, 95, 95, 50, 95, 95, 50] * 5:
        f.sample(busy)
    assert f.notes == []
    assert f.engine.tracks == {}  # nothing kept for what never fired


def test_unknown_values_move_nothing():
    f = Feed(rules_text=BUSY)
    for _ in range(6):
        f.sample(95)
    for _ in range(20):
        f.sample(None)  # no node row: CPU unknown
    assert f.notes == []
    for _ in range(5):
        f.sample(95)
    assert f.events() == ["firing"]  # 6 s + 5 s above, the unknown gap not counted as below


def test_per_device_series_with_a_condition_on_the_host():
    f = Feed(
        rules_text="""
[[rule]]
name = "gpu-idle-in-job"
metric = "gpu.util_gpu"
below = 10
for = "3s"
when = "host.jobs > 0"
"""
    )
    for _ in range(5):  # idle GPUs, no job: nothing
        f.sample(gpus={"0": 2, "1": 90})
    for _ in range(4):
        f.sample(gpus={"0": 2, "1": 90}, jobs={"4711": "x"})
    assert f.events() == ["firing"]
    note = f.notes[0][0]
    assert note["labels"] == {"gpu": "0"} and note["jobs"] == ["4711"]
    assert "gpu 0" in note["summary"] and "job 4711 running" in note["summary"]


FLAPPY = """
[[rule]]
name = "flappy"
metric = "cpu_busy_pct"
above = 80
for = 0
clear_for = 0
flap_changes = 4
flap_window = "1m"
"""


def test_flapping_is_said_once_then_quiet_until_stable():
    f = Feed(rules_text=FLAPPY)
    for _ in range(10):  # up and down every 2 s
        f.sample(95)
        f.sample(95)
        f.sample(20)
        f.sample(20)
    told = f.events()
    # the 4th change within the minute makes it flapping: that one is not notified
    assert told == ["firing", "resolved", "firing", "flapping"], told
    stored = f.events(notified_only=False)
    assert len(stored) > 10  # every change is kept (the database has them all)
    for _ in range(70):  # stable (firing) for more than the window
        f.sample(95)
    assert f.events()[-1] == "firing" and f.events().count("firing") == 3
    assert f.notes[-1][0]["evidence"]["remark"] == "stable again after flapping"


def test_reminders_while_firing():
    f = Feed(rules_text=BUSY.replace('clear_for = "5s"', 'repeat = "1m"'))
    for _ in range(135):
        f.sample(95)
    assert f.events() == ["firing", "reminder", "reminder"]


def test_a_series_no_longer_reported_resolves_as_stale():
    f = Feed(
        rules_text=BUSY.replace('metric = "cpu_busy_pct"', 'metric = "gpu.util_gpu"').replace(
            "above = 80", "below = 10"
        )
    )
    for _ in range(12):
        f.sample(gpus={"0": 1})
    assert f.events() == ["firing"]
    for _ in range(70):  # the GPU is gone (the host still reports)
        f.sample(50)
    f.engine.tick(f.t / 1000)
    assert f.events() == ["firing", "resolved"]
    assert "no longer reported" in f.notes[-1][0]["evidence"]["resolved_because"]


ANOMALY = """
[[rule]]
name = "gpu-unusual"
type = "anomaly"
metric = "gpu.util_gpu"
deviation = 4
min_change = 15
history = "1h"
warmup = "10m"
for = "3s"
clear_for = "3s"
"""


def test_anomaly_against_the_nodes_own_history():
    rng = random.Random(7)
    f = Feed(rules_text=ANOMALY)
    for _ in range(1800):  # half an hour of 50 +- 3 %: its normal
        f.sample(gpus={"0": 50 + rng.uniform(-3, 3)})
    assert f.notes == []
    for _ in range(5):
        f.sample(gpus={"0": 92})
    assert f.events() == ["firing"]
    note = f.notes[0][0]
    base = note["evidence"]["baseline"]
    assert base["mean"] == pytest.approx(50, abs=2) and base["z"] > 4
    assert "standard deviations above its usual" in note["summary"]
    for _ in range(4):
        f.sample(gpus={"0": 50})
    assert f.events() == ["firing", "resolved"]


def test_anomaly_against_the_applications_runs():
    """Jobs of the same application share one baseline across their runs: a run far from
    the others is unusual; an application never seen before has nothing to compare with."""
    rs = rules.parse("""
[[rule]]
name = "app-mem"
type = "anomaly"
baseline = "app"
metric = "job.rss_bytes"
deviation = 4
min_change = 1e8
warmup = "5m"
for = 0
""")
    notes: list[dict[str, Any]] = []
    eng = Engine(rs, lambda n, notify: notes.append(n))
    lay = LAYOUTS["job"]

    def run(job: str, app: str, rss: float, seconds: int, t0: int) -> None:
        hs = HostState(f"node-{job}", rs.wanted())
        start = [t0, "job_start", None, job, json.dumps({"job_name": app})]
        for k in range(seconds):
            r: list[Any] = [None] * len(lay.cols)
            r[lay.index["job"]], r[lay.index["rss_bytes"]] = job, rss + (k % 7) * 1e6
            rows = {"job": [r], "events": [start] if k == 0 else []}
            eng.observe(hs.update(t0 + k * S, rows))

    run("1", "lammps", 2e9, 400, 0)  # two earlier runs of lammps: about 2 GB
    run("2", "lammps", 2e9, 400, 400 * S)
    assert notes == []
    run("3", "lammps", 6e9, 5, 800 * S)  # this run holds three times as much
    assert [n["event"] for n in notes] == ["firing"]
    assert (
        notes[0]["labels"] == {"job": "3"}
        and notes[0]["evidence"]["baseline"]["baseline"] == "app:lammps"
    )
    run("4", "gromacs", 6e9, 5, 900 * S)  # no history of gromacs: not judged
    assert len(notes) == 1


def test_a_silent_host_is_absent_until_it_sends_again():
    clock = [0.0]
    f = Feed(
        rules_text='[[rule]]\nname = "silent"\ntype = "absent"\nfor = "2m"\n',
        clock=lambda: clock[0],
    )
    f.sample(50)
    clock[0] = f.t / 1000 + 100
    f.engine.tick()
    assert f.notes == []
    clock[0] = f.t / 1000 + 125
    f.engine.tick()
    assert f.events() == ["firing"] and "has sent no sample for" in f.notes[0][0]["summary"]
    f.engine.tick()
    assert f.events() == ["firing"]
    f.sample(50)
    assert f.events() == ["firing", "resolved"]


def test_an_alert_the_agent_notified_is_not_notified_again():
    f = Feed(rules_text=BUSY)
    agent_note = {
        "id": "a" * 32,
        "rule": "busy",
        "host": "cn1",
        "labels": {},
        "state": "firing",
        "started": 1.0,
        "source": "agent:cn1",
    }
    f.engine.adopt(agent_note)
    for _ in range(20):
        f.sample(95)
    for _ in range(10):
        f.sample(10)
    assert f.events() == []  # the agent told, and the agent closes it
    stored = [n for n, _ in f.notes]
    assert [n["event"] for n in stored] == ["firing", "resolved"]
    assert {n["id"] for n in stored} == {"a" * 32}


def test_alerts_open_at_a_restart_stay_open_without_a_second_notification():
    f = Feed(rules_text=BUSY)
    f.engine.restore(
        [
            {
                "id": "b" * 32,
                "rule": "busy",
                "host": "cn1",
                "labels": {},
                "jobs": [],
                "started": 0.5,
                "at": 0.0,
                "value": 97.0,
            }
        ]
    )
    assert [a["id"] for a in f.engine.active()] == ["b" * 32]
    for _ in range(20):
        f.sample(95)
    assert f.events() == []
    for _ in range(6):
        f.sample(10)
    assert f.events() == ["resolved"] and f.notes[-1][0]["id"] == "b" * 32


def test_job_windows_fire_and_resolve_and_end_with_the_job():
    rs = rules.parse(
        '[[rule]]\nname = "io"\ntype = "bottleneck"\nbottleneck = "io_wait_bound"\nclear_for = 0\n'
    )
    notes: list[tuple[dict[str, Any], bool]] = []
    eng = Engine(rs, lambda n, notify: notes.append((n, notify)))
    rule = rs.rules[0]
    finding = {
        "title": "The job waits for storage",
        "severity": "high",
        "evidence": "blocked on I/O in 64 % of their samples",
    }
    eng.report(rule, "42", False, 10 * S)
    eng.report(rule, "42", None, 20 * S)
    assert notes == []
    eng.report(rule, "42", True, 30 * S, 64.0, finding)
    eng.report(rule, "42", True, 40 * S, 66.0, finding)
    assert [n["event"] for n, _ in notes] == ["firing"]
    assert notes[0][0]["jobs"] == ["42"] and "waits for storage" in notes[0][0]["summary"]
    eng.report(rule, "42", False, 50 * S)
    eng.report(rule, "42", True, 60 * S, 70.0, finding)
    eng.end_job("42", 70 * S)
    assert [n["event"] for n, _ in notes] == ["firing", "resolved", "firing", "resolved"]
    assert notes[-1][0]["evidence"]["resolved_because"] == "the job ended"
