"""The job's time grid (sql/job.sql): nodes sampled at the step and a node sampled faster,
summed per step, against sums made here from the values written."""

from __future__ import annotations

from pathlib import Path

import pytest

from para.analyzer.job import Job
from para.errors import ParaError
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
    # a file that is not there says so, as the reader does
    with pytest.raises(ParaError, match="no such file"):
        file_facts(tmp_path / "gone.para")


# `para profile` of a command that burns a core, then sleeps: the utime+stime of its one
# process at each look, as loaded run 10 recorded it (tests/test_analyzer_rules.py's `stall`
# beside a CPU hog on each core, with a real-time priority: it ran 0.18 s before para's first
# look), and its rusage at exit
LOOKS = [18, 66, 115, 161, 207, 231, 232, 232, 232, 232, 232, 232]
RUSAGE_S = 2.337


def _profile(path: Path) -> Path:
    start = T0 / 1000
    w = ParaWriter(path, {"source": "para profile", "interval": 0.5, "start": start,
                          "catalogue": catalogue(), "command": ["./stall"],
                          "host": {"hostname": "h", "clock_ticks": 100}})  # fmt: skip
    for i, ticks in enumerate(LOOKS):
        # pid, ppid, state, utime, stime, then what this test does not need
        row = [4242, 1, "R" if i < 6 else "S", ticks - 1, 1] + [None] * 17
        w.append(T0 + 500 * i, {"proc": [row]})
    w.close({"elapsed_s": 6.039, "exit": {"exit_code": 0, "cpu_user_s": RUSAGE_S - 0.012,
                                          "cpu_system_s": 0.012}})  # fmt: skip
    return path


def test_cpu_before_the_first_look_is_at_the_start_not_at_the_end(tmp_path):
    with Job([_profile(tmp_path / "stall.para")]) as job:
        steps = job.query("SELECT sec, work_cores FROM node_sec ORDER BY sec")
    cores = {sec: c or 0.0 for sec, c in steps}
    # all of the command's CPU, once
    assert sum(cores.values()) * 0.5 == pytest.approx(RUSAGE_S, abs=1e-6)
    # what it used before the first look is at the start, in the first step the looks
    # measure (the step of the first look itself is mostly before the start) ...
    assert cores[0] == 0.0
    assert cores[1] * 0.5 == pytest.approx(LOOKS[1] / 100, abs=1e-6)
    # ... and after the last look that saw it run, only what the looks did not see (0.017 s)
    after = [c for sec, c in cores.items() if sec > 6]
    assert sum(after) * 0.5 == pytest.approx(RUSAGE_S - LOOKS[-1] / 100, abs=1e-6)
