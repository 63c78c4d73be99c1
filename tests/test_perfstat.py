"""perf stat: the CSV/TSV parser on real captures, and the sampler through perf itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from para.agent.loop import SamplingLoop
from para.agent.samplers.base import Rows, Unavailable
from para.agent.samplers.perfstat import (
    COUNTED,
    DEFAULT_EVENTS,
    NOT_COUNTED,
    NOT_SUPPORTED,
    CounterRow,
    PerfStatSampler,
    paranoid_refusal,
    parse_line,
    parse_stream,
)
from para.errors import UsageError
from para.formats.schema import COUNTERS, EVENTS

from .conftest import need_tool

pytestmark = pytest.mark.no_kernel

FIX = Path(__file__).parent / "fixtures" / "perf-stat"
PERF = shutil.which("perf")


def rows_of(name: str, sep: str = ",") -> list[CounterRow]:
    with open(FIX / name) as f:
        return list(parse_stream(f, sep))


def one(rows: list[CounterRow], event: str, **where: object) -> CounterRow:
    found = [
        r for r in rows if r.event == event and all(getattr(r, k) == v for k, v in where.items())
    ]
    assert len(found) == 1, found
    return found[0]


# -- the parser on recorded outputs ---------------------------------------------------------


def test_interval_rows_with_summary_column_new_format():
    rows = rows_of("perf-stat-csv-interval-summary-newformat-intel-lkml-jinyao.csv")
    assert len(rows) == 16
    interval = [r for r in rows if not r.summary]
    summary = [r for r in rows if r.summary]
    assert len(interval) == len(summary) == 8
    assert {r.time for r in interval} == {1.001196053}
    assert all(r.time is None for r in summary)
    clock = one(interval, "cpu-clock")
    assert (clock.value, clock.unit, clock.run_ns, clock.running_pct) == (
        8012.72,
        "msec",
        8012722903,
        100.0,
    )
    assert one(summary, "cycles").value == 15004518
    assert one(interval, "branch-misses").value == 82601


def test_summary_rows_without_time_column_old_format():
    rows = rows_of("perf-stat-csv-interval-summary-oldformat-intel-lkml-jinyao.csv")
    assert len(rows) == 16
    timed = [r for r in rows if r.time is not None]
    untimed = [r for r in rows if r.time is None]
    assert len(timed) == len(untimed) == 8
    assert not any(r.summary for r in rows)
    # the same counts with and without the time column
    assert one(timed, "page-faults").value == one(untimed, "page-faults").value == 184
    assert one(untimed, "cpu-clock").value == 8013.48
    assert one(timed, "cycles").value == 20574191


def test_per_socket_prefix_and_the_buggy_metric_row():
    name = "perf-stat-csv-per-socket-powerpc-buggy-metric-line-lkml-atrajeev.csv"
    lines = (FIX / name).read_text().splitlines()
    assert parse_line(lines[-1]) is None  # S0,1,,,,,,,1.34,stalled cycles per insn
    rows = rows_of(name)
    assert len(rows) == len(lines) - 1 == 8
    assert {(r.aggr, r.aggr_cpus) for r in rows} == {("S0", 1)}
    cycles = one(rows, "cycles")
    assert (cycles.value, cycles.run_ns, cycles.running_pct) == (189544, 1263158, 67.0)
    clock = one(rows, "cpu-clock")
    assert (clock.value, clock.unit) == (1.89, "msec")
    assert one(rows, "stalled-cycles-backend").value == 128241


def test_metric_only_rows_are_not_counts():
    rows = rows_of("perf-stat-csv-sapphirerapids-default-topdown-lkml-kanliang.csv")
    assert [r.event for r in rows] == [
        "cpu-clock",
        "context-switches",
        "cpu-migrations",
        "page-faults",
        "cycles",
        "instructions",
        "branches",
        "branch-misses",
    ]
    assert rows[0].value == 225851.20
    assert parse_line(",225849327050,100.00,,,,TopdownL2") is None
    assert parse_line(",,,,,70.1,%  tma_backend_bound") is None


def test_hybrid_pmu_event_names_and_multiplexing():
    rows = rows_of("perf-stat-csv-alderlake-hybrid-default-topdown-lkml-kanliang.csv")
    assert len(rows) == 12
    atom_cycles = one(rows, "cpu_atom/cycles/")
    assert (atom_cycles.value, atom_cycles.running_pct) == (256500230, 54.0)
    assert one(rows, "cpu_core/cycles/").value == 6766433
    assert one(rows, "cpu_atom/instructions/").running_pct == 63.0
    assert one(rows, "cpu_core/branch-misses/").running_pct == 100.0


TSV = "perf-stat-interval-percpu-tsv-icelakesp-xeon6326-hperf.tsv"


def test_per_cpu_tab_separated_intervals():
    rows = rows_of(TSV, "\t")
    assert len(rows) == 2066  # every line is a count
    assert {r.time for r in rows} == {1.001047559, 2.011262328}
    assert {r.aggr for r in rows} == {f"CPU{i}" for i in range(64)}
    assert all(r.aggr_cpus is None for r in rows)
    first = rows[0]
    assert (first.aggr, first.event, first.value, first.unit) == (
        "CPU0",
        "cpu-clock",
        1023.54,
        "msec",
    )
    duration = [r for r in rows if r.event == "duration_time"]
    assert [(r.aggr, r.value, r.unit) for r in duration] == [
        ("CPU0", 1001047559, "ns"),
        ("CPU0", 1010214769, "ns"),
    ]
    # uncore events only on the first CPU of each socket
    cha = [r for r in rows if r.event == "cha/event=0x34,umask=0x1fe001/"]
    assert {r.aggr for r in cha} == {"CPU0", "CPU16"}
    assert len(cha) == 4
    raw = one(rows, "r08d1", aggr="CPU0", time=1.001047559)
    assert (raw.value, raw.running_pct) == (130992, 50.03)
    multiplexed = [r.running_pct for r in rows if r.running_pct is not None and r.running_pct < 100]
    assert (len(multiplexed), min(multiplexed), max(multiplexed)) == (1280, 49.78, 50.22)


def test_comma_inside_a_pmu_event_spec_is_rejoined():
    with open(FIX / TSV) as f:
        lines = f.read().splitlines()
    tab = list(parse_stream(lines, "\t"))
    comma = list(parse_stream((line.replace("\t", ",") for line in lines), ","))
    assert comma == tab
    assert "imc/event=0x04,umask=0x30/" in {r.event for r in comma}


def test_not_supported_rows_recorded_on_this_vm():
    rows = rows_of("perf-stat-csv-interval-vm-no-pmu-workload.csv")
    assert len(rows) == 30
    assert len({r.time for r in rows}) == 6
    for event in ("cycles", "instructions"):
        absent = [r for r in rows if r.event == event]
        assert len(absent) == 6
        assert all(r.status == NOT_SUPPORTED and r.value is None for r in absent)
    clock = [r for r in rows if r.event == "task-clock"]
    assert all(r.status == COUNTED for r in clock)
    assert clock[0].value == 192.21
    assert clock[-1].time == 1.115332452
    assert one(rows, "page-faults", time=0.200322549).value == 9411


def test_not_counted_rows_while_the_process_sleeps():
    rows = rows_of("perf-stat-csv-interval-vm-no-pmu-attach-pid.csv")
    assert len(rows) == 27
    absent = [r for r in rows if r.status == NOT_COUNTED]
    assert {r.time for r in absent} == {0.801490082, 1.001884713, 1.202238714}
    assert {r.event for r in absent} == {"task-clock", "context-switches"}
    clock = one(rows, "task-clock", time=0.801490082)
    assert (clock.value, clock.unit) == (None, "msec")
    assert one(rows, "task-clock", time=1.403109455).value == 197.50


# -- the parser never crashes -----------------------------------------------------------------

TOKENS = st.sampled_from(
    [
        "",
        "   1.001196053",
        "summary",
        "CPU3",
        "S0",
        "S0-D0-C5",
        "1",
        "8012.72",
        "msec",
        "cycles",
        "cpu/event=0x3c",
        "umask=0x0/",
        "<not supported>",
        "<not counted>",
        "100.00",
        "nan",
        "inf",
        "1e400",
        "-",
        "/",
    ]
) | st.text(max_size=10)


def check_row(row: CounterRow | None) -> None:
    if row is None:
        return
    assert isinstance(row, CounterRow)
    assert row.event
    assert (row.status == COUNTED) == (row.value is not None)
    assert row.status in (COUNTED, NOT_SUPPORTED, NOT_COUNTED)


@given(st.text())
def test_parse_line_on_any_text(line):
    check_row(parse_line(line))


@given(st.lists(TOKENS, max_size=12), st.sampled_from([",", "\t", ";"]))
def test_parse_line_on_token_soup(tokens, sep):
    check_row(parse_line(sep.join(tokens), sep))


# -- the sampler ----------------------------------------------------------------------------


def test_events_default_and_named_deduplicated():
    s = PerfStatSampler(events=["cycles", "cpu/event=0x3c,umask=0x0/", "cycles"])
    assert s.events == [*DEFAULT_EVENTS, "cpu/event=0x3c,umask=0x0/"]
    cmd = s.command()
    assert cmd[:6] == ["perf", "stat", "-x", "\t", "-I", "1000"]
    assert cmd[-1] == "-a"
    assert PerfStatSampler(pid=42).command()[-2:] == ["-p", "42"]
    with pytest.raises(UsageError):
        PerfStatSampler(interval_ms=5)


def test_missing_perf_is_unavailable_with_the_package_to_install():
    with pytest.raises(Unavailable) as e:
        PerfStatSampler(perf="/nonexistent/perf").open()
    assert "perf is not installed" in str(e.value)
    assert "linux-perf" in str(e.value) and "dnf install perf" in str(e.value)


def test_paranoid_refusals():
    assert paranoid_refusal(3, privileged=True, system_wide=True) is None
    assert paranoid_refusal(2, privileged=False, system_wide=False) is None
    assert paranoid_refusal(0, privileged=False, system_wide=True) is None
    four = paranoid_refusal(4, privileged=False, system_wide=False)
    assert four is not None and "perf_event_paranoid is 4" in four and "sysctl" in four
    wide = paranoid_refusal(2, privileged=False, system_wide=True)
    assert wide is not None and "system-wide" in wide and "perf_event_paranoid=0" in wide
    missing = paranoid_refusal(None, privileged=False, system_wide=False)
    assert missing is not None and "CONFIG_PERF_EVENTS" in missing


def fake_perf(tmp_path: Path, fixture: str, then: str) -> str:
    """A stand-in for perf that prints a recorded capture, tab-separated, to stderr."""
    script = tmp_path / "perf"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/sh
            if [ "$1" = --version ]; then echo "perf version 6.1.187"; exit 0; fi
            trap 'exit 130' INT
            tr ',' '\\t' < {FIX / fixture} >&2
            {then}
            """
        )
    )
    script.chmod(0o755)
    return str(script)


def test_sampler_turns_a_capture_into_rows_and_says_absences_once(tmp_path):
    messages: list[str] = []
    perf = fake_perf(
        tmp_path, "perf-stat-csv-interval-vm-no-pmu-attach-pid.csv", "while :; do sleep 0.05; done"
    )
    s = PerfStatSampler(pid=os.getpid(), interval_ms=200, perf=perf, on_message=messages.append)
    before = time.time_ns() // 1_000_000
    out: Rows = {}
    try:
        facts = s.open()
        after = time.time_ns() // 1_000_000
        deadline = time.monotonic() + 10
        while len(out.get("counters", [])) < 12:  # the capture's counted rows, as they come
            assert time.monotonic() < deadline
            time.sleep(0.01)
            s.sample(time.time_ns() // 1_000_000, out)
        s.stop()
        s.sample(time.time_ns() // 1_000_000, out)
    finally:
        s.close()
    assert facts["perf_version"] == "6.1.187"
    counters = out["counters"]
    assert all(len(r) == len(COUNTERS.columns) for r in counters)
    clock = [r for r in counters if r[1] == "task-clock"]
    assert [r[2] for r in clock] == [199.98, 198.72, 103.38, 197.50, 194.66, 117.75]
    assert {r[3] for r in clock} == {100}
    # perf's relative times become wall-clock ms, anchored when perf started
    assert before + 200 <= clock[0][0] <= after + 200
    assert abs(clock[1][0] - clock[0][0] - 200.437) <= 1  # 0.400683014 - 0.200246340 s
    events = out["events"]
    assert all(len(r) == len(EVENTS.columns) for r in events)
    assert sorted((r[1], r[3]) for r in events) == [
        ("counter_not_counted", "context-switches"),
        ("counter_not_counted", "task-clock"),
        ("counter_unsupported", "cycles"),
    ]
    assert not any(r[1] == "cycles" for r in counters)
    assert s.event_state == {
        "task-clock": "supported",
        "context-switches": "supported",
        "cycles": "not supported",
    }
    assert s.event_units["task-clock"] == "msec"
    assert len(messages) == 2 and messages == s.notes
    assert "cycles is not supported" in messages[0]


def test_perf_ending_by_itself_is_recorded_once(tmp_path):
    perf = fake_perf(
        tmp_path,
        "perf-stat-csv-interval-vm-no-pmu-workload.csv",
        "sleep 0.4; echo 'Error: the target went away' >&2; exit 1",
    )
    s = PerfStatSampler(interval_ms=200, perf=perf)
    out: Rows = {}
    try:
        s.open()
        deadline = time.monotonic() + 10
        while not any(r[1] == "perf_exited" for r in out.get("events", [])):
            assert time.monotonic() < deadline
            s.sample(time.time_ns() // 1_000_000, out)
            time.sleep(0.01)
        s.sample(time.time_ns() // 1_000_000, out)
    finally:
        s.close()
    exits = [r for r in out["events"] if r[1] == "perf_exited"]
    assert len(exits) == 1
    assert '"status": 1' in exits[0][4]
    assert len([r for r in out["counters"] if r[1] == "task-clock"]) == 6
    assert any("exit status 1" in n and "the target went away" in n for n in s.notes)


@pytest.fixture
def real_perf() -> str:
    return need_tool("perf", "apt install linux-perf (make test installs it)")


needs_perf = pytest.mark.usefixtures("real_perf")


@needs_perf
def test_real_perf_refuses_a_bad_event_with_its_own_message():
    with pytest.raises(Unavailable) as e:
        PerfStatSampler(events=["no-such-event-here"]).open()
    assert "perf stat stopped at once" in str(e.value)
    assert "no-such-event-here" in str(e.value)


def cycles_supported() -> bool:
    assert PERF is not None
    res = subprocess.run(
        [PERF, "stat", "-x,", "-e", "cycles", "true"], capture_output=True, text=True, check=False
    )
    return "<not supported>" not in res.stderr


@needs_perf
@pytest.mark.slow
def test_live_sampler_on_a_busy_child():
    """Real perf, real child: task-clock rows, cycles said once if this machine lacks a PMU,
    and no perf left behind."""
    # The child waits for 'go' so that perf is attached before it starts burning CPU, then
    # burns 1 s of CPU time (not wall time: the machine may be busy).
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nsys.stdin.readline()\nt = time.process_time()\n"
            "while time.process_time() - t < 1.0: pass\n",
        ],
        stdin=subprocess.PIPE,
    )
    s = PerfStatSampler(pid=child.pid, interval_ms=200)
    out: Rows = {}

    def sink(t_ms: int, rows: Rows) -> None:
        for table, table_rows in rows.items():
            out.setdefault(table, []).extend(table_rows)

    loop = SamplingLoop([s], sink, interval=0.25)
    try:
        assert loop.open()["counters"].state == "ok"
        perf_pid = s.perf_pid
        assert perf_pid is not None and psutil.pid_exists(perf_pid)
        assert child.stdin is not None
        child.stdin.write(b"go\n")
        child.stdin.flush()
        loop.start()
        child.wait()  # reaped: perf -p waits for a zombie to go
        loop.stop()  # stops perf, then takes the final sample
    finally:
        child.kill()
        child.wait()
        loop.close()
    clock = [r for r in out["counters"] if r[1] == "task-clock"]
    assert len(clock) >= 3
    assert all(0 <= r[2] <= 2 * 200 for r in clock)  # one thread: at most the interval, in msec
    assert 900 <= sum(r[2] for r in clock) <= 5000  # the 1 s of CPU the child burnt
    assert s.event_state["task-clock"] == "supported"
    unsupported = [r for r in out.get("events", []) if r[1] == "counter_unsupported"]
    cycles_rows = [r for r in out["counters"] if r[1] == "cycles"]
    if cycles_supported():
        assert cycles_rows and s.event_state["cycles"] == "supported"
    else:
        assert [r[3] for r in unsupported].count("cycles") == 1
        assert not cycles_rows
        assert s.event_state["cycles"] == "not supported"
        assert sum("cycles" in n for n in s.notes) == 1
    assert not psutil.pid_exists(perf_pid)
    assert not [p for p in psutil.Process().children(recursive=True) if p.pid == perf_pid]
