"""Bottleneck rules on a live window (para/analyzer/window.py) are `para report`'s rules: fed
the same samples as live messages, they give the same outcomes as the analysis of the files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from para.analyzer import analysis, window
from para.analyzer.job import Job
from para.errors import ParaError
from para.formats import ParaFile
from para.live.metrics import LAYOUTS
from tests.live_support import VM_RECORDING, samples_from_para

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import gen_job  # noqa: E402

_JOB = LAYOUTS["proc"].index["job"]


def live_samples(path: Path, job: str) -> tuple[str, list]:
    """A file's samples as the agent sends them live, its processes in job `job`."""
    samples = samples_from_para(path)
    for _, rows in samples:
        for r in rows.get("proc") or ():
            r[_JOB] = job
    with ParaFile(path) as pf:
        return str(pf.meta["host"]["hostname"]), samples


def compare(files: list[Path]) -> tuple[dict, dict]:
    nodes = dict(live_samples(f, "42") for f in files)
    live = window.evaluate({"job_id": "42"}, nodes)
    with Job(files) as j:
        ref = {o.id: o for o in analysis.analyse(j).outcomes}
    return live, ref


def test_one_idle_node_same_outcomes_as_the_report():
    live, ref = compare([VM_RECORDING])
    assert set(live) == set(ref)
    for rid, o in live.items():
        assert (o.status, o.value) == (ref[rid].status, ref[rid].value), rid
    assert {r for r, o in live.items() if o.status == "fired"} == {
        "idle_nodes",
        "low_cpu_utilization",
    }
    assert live["idle_nodes"].evidence == ref["idle_nodes"].evidence


@pytest.fixture(scope="module")
def job_files(tmp_path_factory):
    """benchmarks/gen_job.py's job (straggler, idle node, serial end, scalar FP) at a small
    size: 4 nodes, 4 minutes."""
    return gen_job.make_job(tmp_path_factory.mktemp("job"), nodes=4, seconds=240, cpus=8, ranks=4)


def test_a_four_node_job_same_outcomes_as_the_report(job_files):
    live, ref = compare(job_files)
    fired = {r for r, o in live.items() if o.status == "fired"}
    assert fired == {"idle_nodes", "low_cpu_utilization", "serial_bottleneck", "poor_vectorization"}
    # call stacks are recorded by `para profile --functions`, not sent live: what the report
    # judges from them is not evaluated on a window
    from_stacks = {"network_bound", "metadata_storm"}
    for rid in from_stacks:
        assert live[rid].status == "not_evaluated" and "call stacks" in (live[rid].reason or "")
    for rid, o in live.items():
        if rid not in from_stacks:
            assert o.status == ref[rid].status, rid
            assert o.value == pytest.approx(ref[rid].value), rid
    assert live["serial_bottleneck"].evidence == ref["serial_bottleneck"].evidence


def test_a_window_keeps_only_the_jobs_own_processes():
    host, samples = live_samples(VM_RECORDING, "other")
    mine = window.LiveSource(host, {"job_id": "42"}, samples)
    theirs = window.LiveSource(host, {"job_id": "other"}, samples)
    assert mine.read("proc", ["pid", "utime"]) is None
    got = theirs.read("proc", ["pid", "utime", "no_such_column"])
    assert got is not None and len(got) == sum(len(r.get("proc") or ()) for _, r in samples)
    assert got["no_such_column"].null_count == len(got)
    assert mine.read("node", ["cpu_user"]) is not None  # node-wide rows describe its node
    assert mine.meta["host"]["clock_ticks"] == 100 and mine.meta["allowed_cpus"] == 2


def test_the_collector_is_handed_the_analyzers_judgement(tmp_path: Path):
    """The collector does not import the analyzer: para/cli.py hands it a Judge, whose
    outcomes are the analyzer's; without one, bottleneck rules are refused, in words."""
    from para.cli import PARTS
    from para.collector.alerts import AlertService, severity_at_least

    judge = PARTS["bottleneck_judge"]()
    live, ref = compare([VM_RECORDING])
    found = judge.judge({"job_id": "42"}, dict([live_samples(VM_RECORDING, "42")]))
    assert {rid: o["status"] for rid, o in found.items()} == {
        rid: o.status for rid, o in live.items()
    }
    assert found["idle_nodes"]["severity"] == live["idle_nodes"].severity
    assert "too_short" not in judge.rule_ids() and "io_wait_bound" in judge.rule_ids()
    assert severity_at_least("high", "medium") and not severity_at_least("low", "medium")

    rules_file = tmp_path / "alerts.toml"
    rules_file.write_text('[[rule]]\nname = "io"\ntype = "bottleneck"\nbottleneck = "stalled"\n')
    with pytest.raises(ParaError, match=r"bottleneck rules \(io\) need the analyzer"):
        AlertService(rules_file, None, "c", lambda _: None, store=False)
    svc = AlertService(rules_file, None, "c", lambda _: None, store=False, judge=judge)
    try:
        assert [r.name for r in svc.window_rules] == ["io"]
    finally:
        svc.stop()
