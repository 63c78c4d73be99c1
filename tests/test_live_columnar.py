"""The collector's columnar evaluation (Engine.observe_many: a second of many hosts at once)
against the rule-by-rule evaluation of each sample (Engine.observe), on the same samples:
the same notes in the same order, the same alerts and series, the same baselines and the
same count of evaluations, whatever the values (unknown, not numbers, on the line), the
hosts (several samples of one host in a batch, rules for some hosts only) and the rules."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from para.live import rules
from para.live.engine import Engine
from para.live.metrics import Snapshot

pytestmark = pytest.mark.no_kernel

HOSTS = ["cn1", "cn2", "cn3", "gpu1"]
GPUS = ["0", "1", "2"]

RULES = """
[[rule]]
name = "busy"
metric = "cpu_busy_pct"
above = 80
for = "2s"
clear_for = "1s"

[[rule]]
name = "busy-in-job"
metric = "host.cpu_busy_pct"
above = 50
for = "0s"
when = "host.jobs > 0"

[[rule]]
name = "mem-low"
metric = "mem_used_pct"
below = 10
for = "1s"
clear_for = "0s"

[[rule]]
name = "mem-band"
metric = "mem_used_pct"
above = 90
below = 5
for = "1s"

[[rule]]
name = "gpu-hot"
metric = "gpu.util_gpu"
above = 95
for = "1s"
clear_for = "1s"

[[rule]]
name = "gpu-idle-gpu-nodes"
metric = "gpu.util_gpu"
below = 5
for = "2s"
hosts = ["gpu*"]

[[rule]]
name = "busy-anomaly"
type = "anomaly"
metric = "cpu_busy_pct"
deviation = 2
min_change = 5
warmup = "3s"
history = "1m"
for = "1s"

[[rule]]
name = "gpu-sum"
metric = "sum(gpu.util_gpu) / 3"
above = 60
for = "1s"

[[rule]]
name = "flappy"
metric = "cpu_busy_pct"
above = 40
for = "0s"
clear_for = "0s"
flap_changes = 3
flap_window = "10s"

[[rule]]
name = "gone"
type = "absent"
for = "3s"

[[rule]]
name = "site-metric"
metric = "host.busy_twice"
above = 150
for = "1s"

[metrics]
busy_twice = "cpu_busy_pct * 2"
"""

VALUES = st.one_of(
    st.sampled_from([None, True, False, "x", math.nan, 0, 5, 10, 40, 50, 80, 90, 95]),
    st.integers(-5, 110),
    st.floats(-5, 110, allow_nan=False),
)


@st.composite
def batches(draw: Any) -> list[list[tuple[str, int, dict[str, Any], dict[str, Any] | None]]]:
    """Batches of samples: (host, seconds since the last of that host, host values, GPUs)."""
    out = []
    for _ in range(draw(st.integers(1, 12))):
        batch = []
        for _ in range(draw(st.integers(0, 6))):
            host = draw(st.sampled_from(HOSTS))
            hv = {
                "cpu_busy_pct": draw(VALUES),
                "mem_used_pct": draw(VALUES),
                "jobs": draw(st.sampled_from([0, 1, None])),
            }
            gpus = None
            if draw(st.booleans()):
                gpus = {g: draw(VALUES) for g in draw(st.lists(st.sampled_from(GPUS), unique=True))}
            batch.append((host, draw(st.integers(1, 3)), hv, gpus))
        out.append(batch)
    return out


def _snap(host: str, t_ms: int, hv: dict[str, Any], gpus: dict[str, Any] | None) -> Snapshot:
    tables: dict[str, dict[Any, dict[str, Any]]] = {}
    if gpus is not None:
        tables["gpu"] = {g: {"gpu": g, "util_gpu": v} for g, v in gpus.items()}
    return Snapshot(host, t_ms, 1.0, dict(hv), tables, {})


def _run(plan: list[list[Any]], many: bool) -> tuple[list[Any], dict[Any, Any], int, Any]:
    rs = rules.parse(RULES)
    notes: list[tuple[dict[str, Any], bool]] = []
    now = [1_000.0]
    eng = Engine(rs, lambda n, notify: notes.append((n, notify)), clock=lambda: now[0])
    t: dict[str, int] = {}
    for batch in plan:
        now[0] += 1.0
        snaps, rx = [], []
        for host, dt, hv, gpus in batch:
            t[host] = t.get(host, 0) + dt * 1000
            snaps.append(_snap(host, 1_800_000_000_000 + t[host], hv, gpus))
            rx.append(now[0])
        if many:
            eng.observe_many(snaps, rx)
        else:
            for s, r in zip(snaps, rx, strict=True):
                eng.observe(s, r)
        eng.tick(now[0])
    # alert ids are random: name them by their order of appearance
    ids: dict[str, str] = {}
    seen = []
    for note, notify in notes:
        n = dict(note)
        n["id"] = ids.setdefault(note["id"], f"alert-{len(ids)}")
        seen.append(repr((n, notify)))  # NaN as text
    tracks = {
        k: repr((tr.state, tr.value, tr.true_ms, tr.false_ms, tr.seen_ms, tr.flapping,
                 list(tr.changes), list(tr.points), tr.told))
        for k, tr in eng.tracks.items()
    }  # fmt: skip
    base = {k: repr((b.mean, b.seconds)) for k, b in eng.baselines.items()}  # NaN as text
    return seen, tracks, eng.evaluations, base


@settings(max_examples=60, deadline=None)
@given(batches())
def test_columnar_evaluation_is_the_row_evaluation(plan):
    rows = _run(plan, many=False)
    cols = _run(plan, many=True)
    assert cols[0] == rows[0]  # the notes, in order
    assert cols[1] == rows[1]  # every series' state
    assert cols[2] == rows[2]  # evaluations counted
    assert cols[3] == rows[3]  # baselines


def test_a_burst_over_many_hosts_fires_the_same_alerts():
    """100 hosts, one in ten over the line for 5 s: both ways fire the same 10 alerts (and
    the fixed case guards the property test's own machinery)."""
    plan = []
    for _ in range(6):
        second = []
        for i in range(100):
            hv = {"cpu_busy_pct": 99 if i % 10 == 0 else 20, "mem_used_pct": 50, "jobs": 1}
            second.append((f"cn{i:03d}", 1, hv, None))
        plan.append(second)
    rows, cols = _run(plan, many=False), _run(plan, many=True)
    fired = [t for t, tr in cols[1].items() if t[0] == "busy" and "'firing'" in tr]
    assert sorted(t[1] for t in fired) == [f"cn{i:03d}" for i in range(0, 100, 10)]
    # a site's own metric named as host.NAME (issue 17's review: the column pass read it as
    # a value of the node, found none, and never ran the rule)
    site = [t for t, tr in cols[1].items() if t[0] == "site-metric" and "'firing'" in tr]
    assert sorted(t[1] for t in site) == [f"cn{i:03d}" for i in range(0, 100, 10)]
    assert sum("'event': 'firing'" in n for n in cols[0]) >= 10
    assert cols == rows
