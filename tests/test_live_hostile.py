"""A node's malformed live samples never stop the live path of the others (issue 16's rule:
at the collector every node's bytes are hostile; found by issue 17's review: one bad value in
a batch stopped the rules of every node in it, and a job's bad total raised at every tick).

The samples are the real recording of tests/fixtures/collector, as the agent sends them; the
attacks are what JSON can carry in their place."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from para.collector.alerts import AlertService
from para.live.metrics import LAYOUTS
from para.live.wellformed import well_formed
from tests.live_support import samples_from_para

pytestmark = pytest.mark.no_kernel

RULES = """
[[rule]]
name = "busy"
metric = "cpu_busy_pct"
above = 80
for = "1s"

[[rule]]
name = "big_job"
metric = "job.rss_bytes"
above = 1e6
for = "1s"
"""

REC = samples_from_para()


def _busy(ticks: list[int], busy: int) -> dict[str, Any]:
    ticks[0] += busy
    ticks[1] += 100 - busy
    node: list[Any] = [0] * len(LAYOUTS["node"].cols)
    node[LAYOUTS["node"].index["cpu_user"]] = ticks[0]
    node[LAYOUTS["node"].index["cpu_idle"]] = ticks[1]
    job: list[Any] = [None] * len(LAYOUTS["job"].cols)
    job[LAYOUTS["job"].index["job"]] = "77"
    job[LAYOUTS["job"].index["rss_bytes"]] = 5e6
    return {"node": [node], "job": [job]}


def _service(tmp_path: Path) -> tuple[AlertService, list[tuple[str, str, str]], list[float]]:
    rules = tmp_path / "alerts.toml"
    rules.write_text(RULES)
    now = [1000.0]
    svc = AlertService(rules, None, "c", lambda m: None, store=False, clock=lambda: now[0])
    offences: list[tuple[str, str, str]] = []
    svc.offend = lambda host, kind, why: offences.append((host, kind, why))
    return svc, offences, now


def _run(svc: AlertService, now: list[float], attack: list[tuple[int, Any]]) -> set[str]:
    """node01 sends `attack` in the same batches as node03's busy seconds with its job;
    the rules that fired on node03, with the view's once-a-second upkeep run throughout."""
    ticks = [0, 0]
    fired: set[str] = set()
    with svc._lock:
        for k in range(4):
            t = 1_000_000 + k * 1000
            now[0] = t / 1000
            bad = [(t, rows) for _, rows in attack]
            svc.process([("node01", bad, now[0]), ("node03", [(t, _busy(ticks, 95))], now[0])])
            svc.engine.tick(now[0])
            svc._jobs_tick(now[0])
            svc.summary()
        fired = {a["rule"] for a in svc.active() if a.get("host") == "node03"}
    return fired


ATTACKS: dict[str, Any] = {
    "not a dict": [1, 2],
    "a table that is a number": {"cpu": 5},
    "a string in a counter": {"node": [["x"] * len(LAYOUTS["node"].cols)]},
    "a row that is a string": {"disk": ["sda"]},
    "a list in a key": {"fs": [[[1]] * len(LAYOUTS["fs"].cols)]},
    "a short row": {"proc": [[None]]},
    "events that are a number": {"events": 7},
    "an event of objects": {"events": [[1, "alert", {}, [], {"a": 1}]]},
    "a job's total that is a string": {
        "job": [["88" if c == "job" else "lots" for c in LAYOUTS["job"].cols]]
    },
}


@pytest.mark.parametrize("attack", list(ATTACKS), ids=list(ATTACKS))
def test_a_malformed_sample_stops_no_other_nodes_rules(tmp_path: Path, attack: str) -> None:
    svc, offences, now = _service(tmp_path)
    try:
        fired = _run(svc, now, [(0, ATTACKS[attack])])
        assert fired == {"busy", "big_job"}, (attack, svc.counts)
        assert svc.counts["malformed"] >= 1, svc.counts
        assert offences and {o[0] for o in offences} == {"node01"}, offences
        assert all(o[1] == "live_malformed" for o in offences), offences
    finally:
        svc.stop()


def test_the_usable_part_of_a_malformed_sample_is_kept(tmp_path: Path) -> None:
    """node01's CPU table is garbage but its node counters are fine: its own `busy` fires."""
    svc, offences, now = _service(tmp_path)
    try:
        ticks = [0, 0]
        with svc._lock:
            for k in range(3):
                t = 2_000_000 + k * 1000
                rows = _busy(ticks, 99)
                rows["cpu"] = [[{"x": 1}] * len(LAYOUTS["cpu"].cols)]
                svc.process([("node01", [(t, rows)], t / 1000)])
        assert "busy" in {a["rule"] for a in svc.active() if a.get("host") == "node01"}
        assert offences and "table 'cpu' row 0" in offences[0][2], offences
    finally:
        svc.stop()


def test_what_the_agent_sends_is_passed_as_is():
    """No sample of the real recording is touched (nor copied): the check has no false
    alarm on what para itself sends."""
    for _, rows in REC:
        got, problem = well_formed(rows)
        assert problem is None and got is rows


_JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(),
                                                          max_size=1),
)  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), junk=st.lists(_JUNK, min_size=1, max_size=4))
def test_any_mutation_of_a_real_sample_stops_nothing(seed: int, junk: list[Any]) -> None:
    """A real sample with values, rows or tables replaced by anything JSON can carry: the
    batch never raises, and node03's alerts fire beside it."""
    import tempfile

    rng = random.Random(seed)
    rows = copy.deepcopy(REC[rng.randrange(len(REC))][1])
    for v in junk:
        name = rng.choice(sorted(rows))
        table = rows[name]
        where = rng.randrange(3)
        if where == 0 or not isinstance(table, list) or not table:
            rows[name] = v
        elif where == 1 or not isinstance(table[0], list) or not table[0]:
            table[rng.randrange(len(table))] = v
        else:
            row = table[rng.randrange(len(table))]
            if isinstance(row, list) and row:
                row[rng.randrange(len(row))] = v
    with tempfile.TemporaryDirectory() as d:
        svc, _, now = _service(Path(d))
        try:
            assert _run(svc, now, [(0, rows)]) == {"busy", "big_job"}, svc.counts
        finally:
            svc.stop()
