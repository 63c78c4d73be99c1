"""Bottleneck rules of a job whose nodes report to two collector shards: judged once, by the
evaluating shard, on the windows of all four nodes, so that the alert says what the report
of the job's files says, not what each shard's half of the nodes would."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest

from para.analyzer import analysis
from para.analyzer.job import Job
from para.cli import PARTS
from para.collector.alerts import AlertService
from para.collector.db import FeatureDB
from tests.shard_support import job_sample
from tests.test_live_window import live_samples

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import gen_job  # noqa: E402

RULES = """
[[rule]]
name = "low-cpu"
type = "bottleneck"
bottleneck = "low_cpu_utilization"
window = "10m"
every = "30s"

[[rule]]
name = "idle"
type = "bottleneck"
bottleneck = "idle_nodes"
window = "10m"
every = "30s"
"""


class Shard:
    def __init__(self, db: Path, rules_path: Path):
        judge = PARTS["bottleneck_judge"]()
        # the service's own loop runs its once-a-second upkeep on this clock too: it moves
        # only with the samples of that second (under the lock), or the loop could publish
        # or export a second without them
        self.now = [0.0]
        self.svc = AlertService(rules_path, FeatureDB(db), "t", lambda m: None, store=False,
                                clock=lambda: self.now[0], judge=judge)  # fmt: skip

    def feed(self, samples: dict[str, tuple[int, dict[str, Any]]], now: float) -> None:
        with self.svc._lock:
            self.now[0] = now
            self.svc.process([(h, [s], now) for h, s in samples.items()])
            self.svc.shard_round(now)
            self.svc._schedule_windows(now)

    def settle(self) -> None:
        """Until the windows queued are judged (or handed over) and their outcomes taken."""
        end = time.monotonic() + 120
        while time.monotonic() < end:
            with self.svc._lock:
                self.svc._take_results()
                if not self.svc._window_busy:
                    return
            time.sleep(0.02)
        raise AssertionError("windows not judged within 120 s")

    def notes(self, rule: str) -> list[dict[str, Any]]:
        with self.svc._lock:
            return [n for n in self.svc.recent if n["rule"] == rule]


@pytest.fixture(scope="module")
def job_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """gen_job's 4-node job (cn0003 idle, a serial end), 4 minutes."""
    return gen_job.make_job(tmp_path_factory.mktemp("job"), nodes=4, seconds=240, cpus=8, ranks=4)


def test_a_job_over_two_shards_is_judged_once_on_all_its_nodes(
    tmp_path: Path, job_files: list[Path]
) -> None:
    with Job(job_files) as j:
        ref = {o.id: o for o in analysis.analyse(j).outcomes}
    nodes = dict(live_samples(f, "42") for f in job_files)
    for samples in nodes.values():  # the agent's job table, as a node running job 42 sends
        for k, (_, rows) in enumerate(samples):
            rows["job"] = [job_sample("42", 400 * k, 1 << 30, cpus=8)]
    on = {"a": ["cn0001", "cn0002"], "b": ["cn0003", "cn0004"]}  # b: the idle node
    rules_path = tmp_path / "rules.toml"
    rules_path.write_text(RULES)
    a = Shard(tmp_path / "db", rules_path)
    b = Shard(tmp_path / "db", rules_path)
    try:
        times = [t for t, _ in nodes["cn0001"]]
        for i, t in enumerate(times):
            for shard, name in ((a, "a"), (b, "b")):
                shard.feed({h: nodes[h][i] for h in on[name]}, t / 1000 + 0.1)
            b.settle()  # b's half is on disk before a judges
            a.settle()
        for extra in (1.0, 2.0, 2.5):  # past the last period's grace
            for shard in (b, a):
                shard.feed({}, times[-1] / 1000 + extra)
                shard.settle()
        for rule, rid in (("low-cpu", "low_cpu_utilization"), ("idle", "idle_nodes")):
            # once, by the evaluating shard; the other never judged its half
            assert [n["event"] for n in a.notes(rule)] == ["firing"], rid
            assert b.notes(rule) == [], rid
            [alert] = [x for x in a.svc.active() if x["rule"] == rule]
            assert alert["value"] == pytest.approx(ref[rid].value, rel=1e-3, abs=1e-4), rid
        assert a.svc.leading and not b.svc.leading
        assert set(a.svc.spanning) == {"42"} and set(b.svc.spanning) == {"42"}
        [idle] = [x for x in a.svc.active() if x["rule"] == "idle"]
        assert "1 of 4 nodes did no work: cn0003" in idle["evidence"]["analyzer"]["evidence"]
    finally:
        a.svc.stop()
        b.svc.stop()


@pytest.mark.parametrize("comes_back", [False, True])
def test_a_job_that_spreads_to_a_second_shard_and_back_keeps_its_alerts_once(
    tmp_path: Path, job_files: list[Path], comes_back: bool
) -> None:
    """A job on one shard (not the evaluating one) fires there; two of its nodes then fail
    over to the evaluating shard, and later come back.  Its bottleneck alerts move with the
    judging: the shard that judges the job now carries them on (same id, no second
    `firing`), the one that judged it before lets go of them without a `resolved`, so the
    sinks hear of each once.  Before, the first shard kept its alert open until the job
    ended there and the evaluating shard fired it again.  While the job spans both, the
    alert says what the report of the whole job says: each moved node's window is its
    samples on both shards."""
    with Job(job_files) as j:
        ref = {o.id: o for o in analysis.analyse(j).outcomes}
    nodes = dict(live_samples(f, "43") for f in job_files)
    for samples in nodes.values():
        for k, (_, rows) in enumerate(samples):
            rows["job"] = [job_sample("43", 400 * k, 1 << 30, cpus=8)]
    rules_path = tmp_path / "rules.toml"
    rules_path.write_text(RULES)
    a = Shard(tmp_path / "db", rules_path)
    b = Shard(tmp_path / "db", rules_path)
    rules = (("low-cpu", "low_cpu_utilization"), ("idle", "idle_nodes"))
    try:
        a.feed({}, 1.0)  # a evaluates: it takes the lock first
        times = [t for t, _ in nodes["cn0001"]]
        moved, back = len(times) // 3, len(times) - 25 if comes_back else len(times)
        for i, t in enumerate(times):
            on_a = ["cn0001", "cn0002"] if moved <= i < back else []
            for shard, hosts in ((a, on_a), (b, [h for h in nodes if h not in on_a])):
                shard.feed({h: nodes[h][i] for h in hosts}, t / 1000 + 0.1)
            b.settle()
            a.settle()
            if i == moved - 1:  # fired on b, judged there alone
                for rule, _ in rules:
                    assert [n["event"] for n in b.notes(rule)] == ["firing"], rule
                    assert a.notes(rule) == [], rule
                opened = {x["rule"]: x["id"] for x in b.svc.active()}
            if i == back - 1 and comes_back:  # on a
                assert a.svc.leading and set(a.svc.spanning) == {"43"}
                for rule, _ in rules:
                    assert a.notes(rule) == [] and len(b.notes(rule)) == 1, rule
                    assert [x for x in b.svc.active() if x["rule"] == rule] == [], rule
                    [alert] = [x for x in a.svc.active() if x["rule"] == rule]
                    assert alert["id"] == opened[rule], rule
        for extra in (1.0, 2.0, 2.5):
            for shard in (b, a):
                shard.feed({}, times[-1] / 1000 + extra)
                shard.settle()
        if not comes_back:  # judged on a to the end, on every node's whole window
            for rule, rid in rules:
                assert a.notes(rule) == [] and len(b.notes(rule)) == 1, rule
                assert [x for x in b.svc.active() if x["rule"] == rule] == [], rule
                [alert] = [x for x in a.svc.active() if x["rule"] == rule]
                assert alert["id"] == opened[rule], rule
                assert alert["value"] == pytest.approx(ref[rid].value, rel=1e-3, abs=1e-4), rid
            [idle] = [x for x in a.svc.active() if x["rule"] == "idle"]
            assert "1 of 4 nodes did no work: cn0003" in idle["evidence"]["analyzer"]["evidence"]
            return
        assert a.svc.spanning == {} and b.svc.spanning == {}
        for rule, _ in rules:  # back on b, whole again
            assert [n["event"] for n in b.notes(rule)] == ["firing"], rule  # no resolved
            assert a.notes(rule) == [], rule  # no second firing
            assert [x for x in a.svc.active() if x["rule"] == rule] == [], rule
            [alert] = [x for x in b.svc.active() if x["rule"] == rule]
            assert alert["id"] == opened[rule], rule
    finally:
        a.svc.stop()
        b.svc.stop()
