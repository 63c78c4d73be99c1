"""The job's time grid (sql/job.sql): nodes sampled at the step and a node sampled faster,
summed per step, against sums made here from the values written."""

from __future__ import annotations

from pathlib import Path

import pytest

from para.analyzer.job import Job
from para.formats import ParaWriter
from para.formats.schema import catalogue

T0 = 1_800_000_000_000
GIB = 2**30


def _node(path: Path, host: str, interval: float, used: list[int]) -> Path:
    """A node's memory in use at each sample (`used` bytes, one per interval)."""
    w = ParaWriter(path, {"source": "para record", "interval": interval, "start": T0 / 1000,
                          "catalogue": catalogue(),
                          "host": {"hostname": host, "clock_ticks": 100}})  # fmt: skip
    step = int(interval * 1000)
    for i, u in enumerate(used):
        # mem_total, mem_free, mem_available, then the rest unknown (the time is the sample's)
        row = [64 * GIB, 0, 64 * GIB - u] + [None] * 14
        w.append(T0 + i * step, {"memory": [row]})
    w.close()
    return path


@pytest.mark.parametrize("fast", [False, True], ids=["all-at-the-step", "one-node-faster"])
def test_each_step_sums_the_nodes_and_averages_a_faster_node_within_it(tmp_path, fast):
    a = [1, 2, 3, 4, 5, 6]
    b = [10, 20, 30, 40, 50, 60]
    c = [100, 300, 500, 700, 900, 1100, 1300, 1500, 1700, 1900, 2100, 2300] if fast else [
        100, 200, 300, 400, 500, 600]  # fmt: skip
    files = [
        _node(tmp_path / "a.para", "a", 1.0, [x * GIB for x in a]),
        _node(tmp_path / "b.para", "b", 1.0, [x * GIB for x in b]),
        _node(tmp_path / "c.para", "c", 0.5 if fast else 1.0, [x * GIB for x in c]),
    ]
    # each sample on the step nearest its time (half a step rounds up, as SQL's round()),
    # a node's samples in one step averaged, the nodes summed
    per: dict[int, dict[str, list[int]]] = {}
    for host, interval, used in (("a", 1.0, a), ("b", 1.0, b), ("c", 0.5 if fast else 1.0, c)):
        for i, u in enumerate(used):
            sec = int(i * interval + 0.5)
            per.setdefault(sec, {}).setdefault(host, []).append(u)
    want = [(sec, len(hosts), sum(sum(v) / len(v) for v in hosts.values()) * GIB)
            for sec, hosts in sorted(per.items())]  # fmt: skip
    with Job(files) as job:
        got = job.query("SELECT sec, nodes, mem_used FROM job_sec ORDER BY sec")
        on_grid = dict(job.query("SELECT node, bool_and(on_grid) FROM node_sec GROUP BY node"))
    assert [r[:2] for r in got] == [w[:2] for w in want]
    assert [r[2] for r in got] == pytest.approx([w[2] for w in want], rel=1e-12)
    # the faster node's steps hold two samples each (its first and last, one)
    assert len(per) == (7 if fast else 6)
    assert on_grid == {0: True, 1: True, 2: not fast}


def test_a_file_rewritten_in_place_is_read_again(tmp_path):
    # a report reads each file's header once (file_facts); a file replaced since is new
    from para.analyzer.reduce import file_facts

    path = _node(tmp_path / "n.para", "first", 1.0, [GIB])
    assert file_facts(path).host == "first" and not file_facts(path).agent
    _node(tmp_path / "new.para", "second", 1.0, [GIB, GIB]).replace(path)
    assert file_facts(path).host == "second"
