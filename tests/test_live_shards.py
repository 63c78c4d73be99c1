"""The live view across collector shards (issue 14), in one process: a job whose nodes report
to two shards has the totals one collector seeing every node would give (a node that failed
over counted once), `para top`'s documents of the shards merge into that collector's, and
`job` rules over the shards fire once, from one shard, and go on when that shard stops."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from para.collector.alerts import AlertService
from para.collector.db import FeatureDB
from para.errors import ParaError
from para.live import rules
from para.live.shards import job_partial, job_totals, merge_summaries
from para.live.view import LiveView
from tests.shard_support import T0, node_rows

pytestmark = pytest.mark.no_kernel

# cores each node gives job 7: n1, n2 on shard a; n3, n4 on shard b; n2 fails over to b
CORES = {"n1": 0.3, "n2": 0.2, "n3": 0.4, "n4": 0.35}


def _feed(views: dict[str, LiveView], seconds: int, failover_at: int | None) -> None:
    for k in range(seconds):
        for host, cores in CORES.items():
            shard = "a" if host in ("n1", "n2") else "b"
            if host == "n2" and failover_at is not None and k >= failover_at:
                shard = "b"
            rows = node_rows("7", k, int(cores * 100))
            t = T0 + k * 1000
            views["one"].add(host, t, rows, float(k))
            views[shard].add(host, t, rows, float(k))


@pytest.mark.parametrize("failover_at", [None, 5])
def test_a_job_over_two_shards_has_the_totals_of_one_collector(failover_at: int | None) -> None:
    views = {k: LiveView(clock=lambda: 12.0) for k in ("one", "a", "b")}
    _feed(views, 12, failover_at)
    one = views["one"].job_now(views["one"].jobs["7"])
    tot = job_totals([job_partial(views[s], s, 12.0) for s in ("a", "b")])["7"]
    assert tot["hosts"] == one["hosts"] == sorted(CORES)
    assert tot["cpu_cores"] == pytest.approx(one["cpu_cores"]) == pytest.approx(1.25)
    assert (tot["rss_bytes"], tot["cpus"]) == (one["rss_bytes"], one["cpus"])
    assert tot["cpu_util_pct"] == pytest.approx(100 * 1.25 / 8)
    # where n2 counts from: its newest sample
    assert tot["shards"] == (["a", "b"])

    whole = views["one"].summary({}, [])
    merged = merge_summaries([(s, views[s].summary({}, []), None) for s in ("a", "b")])
    assert [(n["host"], n["t"]) for n in merged["nodes"]] == [
        (n["host"], n["t"]) for n in whole["nodes"]
    ]
    [job] = merged["jobs"]
    assert job["hosts"] == whole["jobs"][0]["hosts"]
    assert job["cpu_cores"] == pytest.approx(whole["jobs"][0]["cpu_cores"])
    assert job["cpus"] == whole["jobs"][0]["cpus"]
    if failover_at is not None:
        # shard a alone still counts n2 in the job (its last sample there had the job):
        # adding the shards' own job totals would count it twice
        alone = views["a"].job_now(views["a"].jobs["7"])
        assert "n2" in alone["hosts"]


def test_a_shard_that_does_not_answer_is_named_and_the_others_shown() -> None:
    views = {k: LiveView(clock=lambda: 12.0) for k in ("one", "a", "b")}
    _feed(views, 3, None)
    merged = merge_summaries(
        [("a:1", None, "connection refused"), ("b:2", views["b"].summary({}, []), None)]
    )
    assert [n["host"] for n in merged["nodes"]] == ["n3", "n4"]
    assert merged["shards"] == [
        {"shard": "a:1", "ok": False, "error": "connection refused", "nodes": 0},
        {"shard": "b:2", "ok": True, "error": None, "nodes": 2},
    ]


RULES = """
[[rule]]
name = "job-too-busy"
type = "job"
metric = "cpu_cores"
above = 1.0
for = "2s"
clear_for = "0s"

[[rule]]
name = "node-share"
metric = "job.cpu_cores"
above = 0.25
for = "0s"
"""


def test_job_rules_parse_with_a_clear_error() -> None:
    rs = rules.parse(RULES)
    assert rs.rules[0].aggregate == "cpu_cores"
    with pytest.raises(ParaError) as e:
        rules.parse('[[rule]]\nname = "x"\ntype = "job"\nmetric = "job.cpu_cores"\nabove = 1\n')
    assert "<rules>:4: [[rule]] x" in e.value.message
    assert "cpu_cores, cpu_util_pct" in e.value.message


class Shard:
    def __init__(self, db: Path, rules_path: Path):
        # the service's own loop runs its once-a-second upkeep (shard_round included) on this
        # clock too: it moves only with the samples of that second, under the lock; else the
        # loop could judge second k on the samples of k - 1 (seen in a loaded run: the shard
        # that took over resolved the open alert before the failed-over nodes were fed)
        self.now = [0.0]
        self.svc = AlertService(
            rules_path, FeatureDB(db), "t", lambda m: None, store=False, clock=lambda: self.now[0]
        )

    def feed(self, k: int, hosts: dict[str, float]) -> None:
        msgs: list[tuple[str, list[tuple[int, Any]], float]] = [
            (h, [(T0 + k * 1000, node_rows("7", k, int(c * 100)))], float(k))
            for h, c in hosts.items()
        ]
        with self.svc._lock:
            self.now[0] = float(k)
            self.svc.process(msgs)
            self.svc.shard_round(float(k))

    def notes(self, rule: str) -> list[tuple[str, str | None]]:
        with self.svc._lock:
            return [(n["event"], n["host"]) for n in self.svc.recent if n["rule"] == rule]


def test_a_job_rule_over_two_shards_fires_once_and_survives_the_evaluating_shard(
    tmp_path: Path,
) -> None:
    rules_path = tmp_path / "rules.toml"
    rules_path.write_text(RULES)
    a, b = Shard(tmp_path / "db", rules_path), Shard(tmp_path / "db", rules_path)
    on_a = {h: CORES[h] for h in ("n1", "n2")}
    on_b = {h: CORES[h] for h in ("n3", "n4")}
    try:
        for k in range(6):
            a.feed(k, on_a)
            b.feed(k, on_b)
        # neither shard's own nodes pass 1 core (0.5, 0.75): the job's 1.25 does, once
        assert sorted(a.notes("job-too-busy") + b.notes("job-too-busy")) == [("firing", None)]
        lead, other = (a, b) if a.svc.leading else (b, a)
        assert not other.svc.leading
        assert lead.notes("job-too-busy") == [("firing", None)]
        [alert] = [x for x in lead.svc.active() if x["rule"] == "job-too-busy"]
        assert alert["evidence"]["job"]["hosts"] == sorted(CORES)
        assert "job 7 (4 nodes): its total cpu_cores is 1.25 cores" in alert["summary"]
        # node-local rules stay on each shard: the nodes above 0.25 core, each from its own
        assert sorted(a.notes("node-share") + b.notes("node-share")) == [
            ("firing", "n1"),
            ("firing", "n3"),
            ("firing", "n4"),
        ]
        # the evaluating shard stops; the other takes the job rules over with the alert
        # still open, and the stopped shard's nodes fail over to it a few seconds later:
        # meanwhile their last seconds still count (the stopped shard's part ages out as a
        # crashed one's does), so no resolution and no second notification
        lead.svc.stop()
        mine = on_a if other is a else on_b
        for k in range(6, 8):
            other.feed(k, mine)
            assert other.svc.leading
        for k in range(8, 11):
            other.feed(k, CORES)
        assert other.notes("job-too-busy") == []
        assert [x["id"] for x in other.svc.active() if x["rule"] == "job-too-busy"] == [alert["id"]]
        # the job calms down: resolved once, by the shard that evaluates now
        for k in range(11, 14):
            other.feed(k, {h: 0.1 for h in CORES})
        assert other.notes("job-too-busy") == [("resolved", None)]
    finally:
        a.svc.stop()
        b.svc.stop()
