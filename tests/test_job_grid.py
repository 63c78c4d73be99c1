"""The job's time grid (sql/job.sql): nodes sampled at the step and a node sampled faster,
summed per step, against sums made here from the values written."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from para.analyzer.job import Job
from para.analyzer.reduce import rates_on_steps
from para.analyzer.segjobs import JobSource, segment_jobs
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


def _profile(path: Path, late: list[int] | None = None) -> Path:
    late = late or [0] * len(LOOKS)
    start = T0 / 1000
    w = ParaWriter(path, {"source": "para profile", "interval": 0.5, "start": start,
                          "catalogue": catalogue(), "command": ["./stall"],
                          "host": {"hostname": "h", "clock_ticks": 100}})  # fmt: skip
    for i, ticks in enumerate(LOOKS):
        # pid, ppid, state, utime, stime, then what this test does not need
        row = [4242, 1, "R" if i < 6 else "S", ticks - 1, 1] + [None] * 17
        w.append(T0 + 500 * i + late[i], {"proc": [row]})
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


# an agent's looks at a Slurm job beside a CPU hog on each core (loaded run 10): due every
# 0.5 s, each a few ms late (0.486-0.514 s apart), and the job's CPU by the agent's account
# (utime + stime of every process, and of the children reaped) at each look, in ticks: the
# children of `kids` show when their shell reaps them, a second at a time
LATE_MS = [2, 14, 0, 10, 1, 13, 3, 12, 0, 9, 14, 1]
ACCOUNT = [30, 30, 130, 130, 130, 230, 235, 335, 335, 435, 435, 440]
JOB_START_MS = T0 - 300


def _segment(path: Path, skipped: frozenset[int] = frozenset()) -> Path:
    w = ParaWriter(path, {"source": "para agent", "interval": 0.5, "start": T0 / 1000,
                          "segment": {"id": "s", "seq": 0, "host": "n1"},
                          "catalogue": catalogue(),
                          "host": {"hostname": "n1", "clock_ticks": 100}})  # fmt: skip
    detail = f'{{"scheduler": "slurm", "start": {JOB_START_MS / 1000}, "cpus": 1}}'
    for i, (late, ticks) in enumerate(zip(LATE_MS, ACCOUNT, strict=True)):
        if i in skipped:
            continue
        t = T0 + 500 * i + late
        rows: dict = {
            # the node: 4 CPUs, all busy (the job and the hogs)
            "node": [[100 * i, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 4.0, 4.0, 4.0]],
            # the job's shell, always there (pid, ppid, state, utime, stime, ..., job)
            "proc": [[4242, 1, "S", 1, 0] + [None] * 15 + ["77", None]],
            "job": [["77", 1, 1, ticks - 1, 1] + [None] * 15 + [1, "slurm"]],
        }
        if i == 0:
            rows["events"] = [[t, "job_start", None, "77", detail]]
        if i == len(LATE_MS) - 1:
            end = f'{{"scheduler": "slurm", "end": {t / 1000}}}'
            rows["events"] = [[t, "job_end", None, "77", end]]
        w.append(t, rows)
    w.close()
    return path


def test_the_job_cpu_on_the_grid_is_the_agents_account_when_its_looks_are_late(tmp_path):
    from para.analyzer.report import report

    seg = str(_segment(tmp_path / "n1.para"))
    doc = report([seg], job_id="77")["job"]
    used = doc["summary"]["cores_mean"] * doc["duration_s"]
    # all of the job's CPU by the agent's account, once (cores_mean has 3 decimals) ...
    assert used == pytest.approx(ACCOUNT[-1] / 100, abs=0.002 * doc["duration_s"])
    # ... and on the grid, each step no busier than the fastest interval between two looks
    # (a late look is not a step of more cores than the job has)
    opener = [(lambda: [JobSource(seg, segment_jobs([seg])["77"])])]
    with Job(sources=[("n1", opener[0])]) as job:
        cores = [c or 0.0 for (c,) in job.query("SELECT work_cores FROM node_sec ORDER BY sec")]
    assert sum(cores) * 0.5 == pytest.approx(ACCOUNT[-1] / 100, abs=1e-9)
    t = [T0 + 500 * i + late for i, late in enumerate(LATE_MS)]
    fastest = max((b - a) / (tb - ta) * 10 for a, b, ta, tb in
                  zip(ACCOUNT, ACCOUNT[1:], t, t[1:]))  # fmt: skip
    assert max(cores) <= fastest + 1e-9


def test_a_tick_the_agent_skipped_keeps_its_cpu_on_the_grid(tmp_path):
    """An agent that fell behind skips the tick (loop.py: never a burst of looks): the next
    look's rates are of two steps, and both steps hold them (a step with no row lost half
    of that CPU: 1.0 of the job's 4.40 s here)."""
    seg = str(_segment(tmp_path / "n1.para", skipped=frozenset({4, 8})))
    opener = [(lambda: [JobSource(seg, segment_jobs([seg])["77"])])]
    with Job(sources=[("n1", opener[0])]) as job:
        rows = job.query("SELECT sec, work_cores, usr FROM node_sec ORDER BY sec")
    secs = [sec for sec, _, _ in rows]
    assert secs == list(range(secs[0], secs[-1] + 1))  # a row for every step
    assert sum(c or 0.0 for _, c, _ in rows) * 0.5 == pytest.approx(ACCOUNT[-1] / 100, abs=1e-9)
    # the node: 100 ticks of user CPU a look, its rate over the time between two looks (the
    # late ones too), that of each step the interval spans
    looks = [(500 * i + late, 100 * i) for i, late in enumerate(LATE_MS) if i not in {4, 8}]
    want = sum((b - a) / 100 / ((tb - ta) / 1000) * round((tb - ta) / 500) * 0.5
               for (ta, a), (tb, b) in zip(looks, looks[1:]))  # fmt: skip
    assert sum(u or 0.0 for _, _, u in rows) * 0.5 == pytest.approx(want, rel=1e-9)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(-240, 240), st.floats(0, 64), st.booleans()), min_size=3, max_size=40
    ),
    st.sampled_from([500.0, 1000.0]),
)
def test_rates_on_steps_keep_what_the_looks_measured(looks, step_ms):
    """Any lateness under half a step, any rates, some unknown: the steps hold what the
    intervals held, each step's rate between those of the intervals it takes from."""
    t = [T0 + i * step_ms + late * step_ms / 500 for i, (late, _, _) in enumerate(looks)]
    t[0] = T0  # the grid's origin
    rate = [None] + [r if known else None for _, r, known in looks[1:]]
    got = rates_on_steps(pa.array(t, pa.int64()).cast(pa.float64()).cast(pa.int64()),
                         pa.array(rate, pa.float64()), step_ms).to_pylist()  # fmt: skip
    t = [float(int(x)) for x in t]
    assert [g is None for g in got] == [r is None for r in rate]
    if all(r is not None for r in rate[1:]):
        held = sum(r * (b - a) / 1000 for r, a, b in zip(rate[1:], t, t[1:]))
        assert sum(g * step_ms / 1000 for g in got[1:]) == pytest.approx(held, rel=1e-9, abs=1e-9)
    for i in range(1, len(t) - 1):
        if got[i] is not None:
            # (an unknown rate lends nothing)
            near = [r or 0.0 for r in rate[max(1, i - 1) : i + 2]]
            assert min(near) - 1e-9 <= got[i] <= max(near) + 1e-9


def test_a_profile_whose_looks_were_late_has_the_commands_cpu_once(tmp_path):
    # the same command, para's looks 0-14 ms late as beside a CPU hog on each core
    late = LATE_MS[: len(LOOKS)]
    with Job([_profile(tmp_path / "stall.para", late)]) as job:
        steps = job.query("SELECT sec, work_cores FROM node_sec ORDER BY sec")
    cores = {sec: c or 0.0 for sec, c in steps}
    assert sum(cores.values()) * 0.5 == pytest.approx(RUSAGE_S, abs=1e-6)
    # while it burned, no step above what it burned between two looks
    t = [T0 + 500 * i + x for i, x in enumerate(late)]
    fastest = max((b - a) / (tb - ta) * 10 for a, b, ta, tb in zip(LOOKS, LOOKS[1:], t, t[1:]))
    assert max(c for sec, c in cores.items() if 1 < sec <= 6) <= fastest + 1e-9
    # and after step 6 (the grid's instants: the first look's, every 0.5 s) what the
    # command used after 3 s, the CPU between two looks taken as even: not what the late
    # looks' rates, counted over whole steps, would have put there (0.0201 s, of 0.0170)
    g = t[0] + 3000
    i = next(i for i, x in enumerate(t) if x >= g)
    at_3s = (LOOKS[i - 1] + (LOOKS[i] - LOOKS[i - 1]) * (g - t[i - 1]) / (t[i] - t[i - 1])) / 100
    after = [c for sec, c in cores.items() if sec > 6]
    assert sum(after) * 0.5 == pytest.approx(RUSAGE_S - at_3s, abs=1e-9)
