"""Per-second values from live samples (para.live.metrics) and the rules' expressions
(para.live.expr): checked against the analyzer's own reduction of the same real recording,
and against values worked out by hand."""

from __future__ import annotations

import json

import pyarrow.compute as pc
import pytest

from para.analyzer.reduce import reduce_node
from para.live.expr import ExprError, compile_expr
from para.live.metrics import LAYOUTS, HostState
from tests.live_support import VM_RECORDING, samples_from_para


@pytest.fixture(scope="module")
def vm_samples():
    return samples_from_para(VM_RECORDING)


def test_cpu_and_network_agree_with_the_analyzers_reduction(vm_samples):
    """The same 10-minute recording, two implementations: the live derivation sample by
    sample, and para report's reduction (Arrow, the rates kernel)."""
    hs = HostState("vm")
    live = {t: hs.update(t, rows) for t, rows in vm_samples}
    nd = reduce_node("vm", [VM_RECORDING])
    cpu = nd.series["cpu"]
    compared = 0
    for t, busy, total in zip(
        cpu["t"].to_pylist(), cpu["busy"].to_pylist(), cpu["total"].to_pylist()
    ):
        mine = live[t].host_values["cpu_busy_pct"]
        if busy is None or not total or mine is None:
            continue
        assert mine == pytest.approx(100 * busy / total, abs=1e-9)
        compared += 1
    assert compared > 550  # all but the first sample and the short windows the analyzer drops
    net = nd.series["net"]
    rx = dict(zip(net["t"].to_pylist(), pc.add(net["rx_bps"], net["tx_bps"]).to_pylist()))
    same = [(live[t].host_values["net_bps"], v) for t, v in rx.items() if v is not None]
    assert len(same) > 550
    for mine, theirs in same:
        assert mine == pytest.approx(theirs, rel=1e-9, abs=1e-6)


def test_counters_become_rates_and_resets_are_unknown():
    lay = LAYOUTS["disk"]
    width = len(lay.cols)

    def disk(io_ms: int, read_bytes: int) -> list:
        row = [0] * width
        row[lay.index["device"]] = "sda"
        row[lay.index["io_ms"]] = io_ms
        row[lay.index["read_bytes"]] = read_bytes
        return row

    hs = HostState("n1")
    first = hs.update(1000, {"disk": [disk(100, 4096)]})
    assert first.tables["disk"]["sda"]["read_bytes"] is None  # no rate from one sample
    second = hs.update(3000, {"disk": [disk(1100, 4096 + 2 * 1_000_000)]})
    row = second.tables["disk"]["sda"]
    assert row["read_bytes"] == 1_000_000  # bytes per second over the 2 s
    assert row["util_pct"] == pytest.approx(50.0)  # 1000 ms busy in 2000 ms
    assert second.host_values["disk_read_bps"] == 1_000_000
    third = hs.update(4000, {"disk": [disk(50, 0)]})  # the device was reset
    assert third.tables["disk"]["sda"]["read_bytes"] is None
    assert third.tables["disk"]["sda"]["util_pct"] is None


def _job_row(job: str, utime: int, rss: int, cpus: int) -> list:
    lay = LAYOUTS["job"]
    row: list = [None] * len(lay.cols)
    row[lay.index["job"]] = job
    row[lay.index["procs"]] = 2
    row[lay.index["utime"]] = utime
    row[lay.index["stime"]] = 0
    row[lay.index["rss_bytes"]] = rss
    row[lay.index["cpus"]] = cpus
    row[lay.index["scheduler"]] = "slurm"
    return row


def _node_row(busy: int, idle: int) -> list:
    row: list = [0] * len(LAYOUTS["node"].cols)
    row[LAYOUTS["node"].index["cpu_user"]] = busy
    row[LAYOUTS["node"].index["cpu_idle"]] = idle
    return row


def test_job_values_and_what_the_events_say():
    """Job cores from its processes' ticks, with the node's own tick rate as the clock; the
    job's name and application from the agent's events."""
    hs = HostState("n1")
    start = {"job_name": "train", "user": "alice", "scheduler": "slurm", "cpus": 4}
    events = [
        [1000, "job_start", None, "77", json.dumps(start)],
        [
            1000,
            "process_start",
            9,
            "python3",
            json.dumps({"job": "88", "cmdline": ["/usr/bin/lmp_mpi", "-in", "x"]}),
        ],
    ]
    mem = [0] * len(LAYOUTS["memory"].cols)
    mem[LAYOUTS["memory"].index["mem_total"]] = 1000
    cpu_rows = [[i, *([0] * (len(LAYOUTS["cpu"].cols) - 1))] for i in range(4)]
    hs.update(
        1000,
        {
            "node": [_node_row(0, 0)],
            "cpu": cpu_rows,
            "memory": [mem],
            "job": [_job_row("77", 0, 100, 4), _job_row("88", 0, 50, 4)],
            "events": events,
        },
    )
    # 4 CPUs x 100 ticks/s = 400 ticks a second; the job used 300 of them
    snap = hs.update(
        2000,
        {
            "node": [_node_row(300, 100)],
            "cpu": cpu_rows,
            "memory": [mem],
            "job": [_job_row("77", 300, 250, 4), _job_row("88", 0, 50, 4)],
        },
    )
    job = snap.tables["job"]["77"]
    assert job["cpu_cores"] == pytest.approx(3.0)
    assert job["cpu_util_pct"] == pytest.approx(75.0)
    assert job["mem_pct"] == pytest.approx(25.0)
    assert snap.host_values["cpu_busy_pct"] == pytest.approx(75.0)
    assert snap.host_values["jobs"] == 2
    assert snap.jobs["77"].user == "alice" and snap.jobs["77"].app == "train"
    assert snap.jobs["88"].app == "lmp_mpi"  # no job name: its first executable


def test_expressions_evaluate_per_device_per_host_and_aggregate(vm_samples):
    hs = HostState("vm", {"disk": frozenset({"util_pct"}), "fs": frozenset({"used_pct"})})
    for t, rows in vm_samples[:120]:
        snap = hs.update(t, rows)
    per_disk = compile_expr("disk.util_pct")
    assert per_disk.table == "disk" and per_disk.unit == "%"
    values = {k: v for k, _, v in per_disk.series(snap)}
    assert set(values) == set(snap.tables["disk"])
    busiest = compile_expr("max(disk.util_pct)")
    assert busiest.table is None
    assert busiest.value(snap) == max(v for v in values.values() if v is not None)
    mixed = compile_expr("100 * fs.used_bytes / memory.mem_total")
    for _key, row, v in mixed.series(snap):
        expected = 100 * row["used_bytes"] / snap.tables["memory"][()]["mem_total"]
        assert v == pytest.approx(expected)
    cond = compile_expr("cpu_busy_pct >= 0 and host.mem_used_pct < 100")
    assert cond.value(snap) is True
    user = compile_expr("free_gib > 1", {"free_gib": "memory.mem_available / 2**30"})
    assert user.value(snap) is True


def test_unknown_values_propagate():
    hs = HostState("n1")
    snap = hs.update(1000, {"node": [_node_row(0, 0)]})  # one sample: no CPU figure
    assert compile_expr("cpu_busy_pct > 50").value(snap) is None
    assert compile_expr("cpu_busy_pct > 50 or 1 > 0").value(snap) is True
    assert compile_expr("cpu_busy_pct > 50 and 1 > 2").value(snap) is False
    assert compile_expr("load1 / 0").value(snap) is None


@pytest.mark.parametrize(
    "text, words",
    [
        ("gpu.utilisation", "no column 'utilisation'"),
        ("disk.util_pct + net.rx_bytes", "several tables"),
        ("__import__('os').system('true')", "not allowed"),
        ("cpu_bussy_pct", "did you mean 'cpu_busy_pct'"),
        ("max(max(disk.util_pct))", "inside another aggregate"),
        ("events.kind", "no table 'events'"),
        ("1 +", "not an expression"),
    ],
)
def test_bad_expressions_are_explained(text, words):
    with pytest.raises(ExprError) as e:
        compile_expr(text)
    assert words in e.value.message
