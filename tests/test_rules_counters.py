"""memory_bandwidth_bound and poor_vectorization on the events the agent collects
(para/agent/samplers/perfsets.py), read from recorded `perf stat` output of machines that
have them (tests/fixtures/perf-stat/SOURCES.md): each capture's counts are written into a
.para file as the agent stores them (a count per interval, the event's unit from perf in the
file's metadata) and the analysis is compared with what perf printed.  A capture of one
`perf stat ... sleep 1` run is one interval: it is written after a row of 0 at perf's start,
as the first row of `perf stat -I` has no interval length before it.

The node's peak comes from a real machine's DMI memory table (tests/fixtures/dmi)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from para.agent.memspeed import parse_memory_devices, peak_bandwidth
from para.agent.samplers.perfsets import EVENT_GROUPS
from para.analyzer.analysis import analyse
from para.analyzer.job import Job
from para.analyzer.rules import default_config, load_config
from para.formats import ParaWriter

from .conftest import FIXTURES

PERF = FIXTURES / "perf-stat"
CLX = PERF / "perf-stat-std-dram-bw-use-cascadelakex-lkml-jinyao.txt"
SKX = PERF / "perf-stat-std-interval-per-socket-imc-skylakex-lkml-irogers.txt"
FREE = PERF / "perf-stat-std-imc-free-running-lkml-irogers.txt"
UMC = PERF / "perf-stat-std-amd-umc-genoa-lkml-sandipan.txt"
DMI = FIXTURES / "dmi" / "dmidecode-memory-devices-asrockrack-e3c252d4u-xeon-e2386g-linuxhw.txt"
T0 = 1_800_000_000_000
ROW = re.compile(r"^\s*(?:(?P<t>\d+\.\d+)\s+)?(?:S\d+\s+\d+\s+)?(?P<v>[\d,]+(?:\.\d+)?)\s+"
                 r"(?:(?P<unit>MiB|ns)\s+)?(?P<ev>[a-z]\S*)")  # fmt: skip
ELAPSED = re.compile(r"^\s*([\d.]+) seconds time elapsed")


def _runs(path: Path) -> list[tuple[float, dict[str, tuple[float, str]]]]:
    """The captures' runs: (seconds, {event: (count, unit)}); an interval capture gives one
    run per interval (its length: the time since the previous one), summed over sockets."""
    runs: list[tuple[float, dict[str, tuple[float, str]]]] = []
    stamps: dict[float, dict[str, tuple[float, str]]] = {}
    counts: dict[str, tuple[float, str]] = {}
    for line in path.read_text().splitlines():
        m = None if ELAPSED.match(line) else ROW.match(line)
        if m and m.group("ev") != "duration_time":
            ev, v, unit = m.group("ev"), float(m.group("v").replace(",", "")), m.group("unit")
            into = stamps.setdefault(float(m.group("t")), {}) if m.group("t") else counts
            old = into.get(ev, (0.0, ""))
            into[ev] = (old[0] + v, unit or "")
        e = ELAPSED.match(line)
        if e and counts:
            runs.append((float(e.group(1)), counts))
            counts = {}
    prev = 0.0
    for t in sorted(stamps):
        runs.append((t - prev, stamps[t]))
        prev = t
    return runs


def _para(tmp: Path, seconds_counts: list[tuple[float, dict[str, tuple[float, str]]]],
          units: bool = True, peak: dict[str, Any] | None = None) -> Path:  # fmt: skip
    """The runs as the agent records them: a row per event and interval."""
    path = tmp / "node.para"
    host: dict[str, Any] = {"hostname": "n1", "clock_ticks": 100, "threads": 64}
    if peak:
        host["memory_peak"] = peak
    w = ParaWriter(path, {"host": host, "interval": 1.0, "allowed_cpus": 64})
    t = float(T0)
    first = seconds_counts[0][1]
    w.append(T0, {"counters": [[T0, ev, 0.0, 100.0] for ev in sorted(first)]})
    all_units: dict[str, str] = {}
    for secs, counts in seconds_counts:
        t += secs * 1000
        rows = [[int(t), ev, v, 100.0] for ev, (v, _) in sorted(counts.items())]
        w.append(int(t), {"counters": rows})
        all_units.update({ev: u for ev, (_, u) in counts.items()})
    facts = {"counters": {"units": all_units}} if units else {}
    w.close({"families": {"counters": {"state": "ok"}}, "family_facts": facts})
    return path


def _rule(path: Path, rid: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    with Job([path]) as job:
        a = analyse(job, config or default_config())
    rule = next(r for r in a.doc["rules"] if r["id"] == rid)
    for b in a.bottlenecks:
        if b["id"] == rid:
            rule["evidence"] = b["evidence"]
    return rule


def _peak_near(tmp: Path, bps: float) -> dict[str, Any]:
    """A rules file whose peak puts `bps` at 90 % of it."""
    f = tmp / "peak.toml"
    f.write_text(f"[memory_bandwidth_bound]\npeak_bytes_per_s = {bps / 0.9:.1f}\n")
    return load_config(f)


@pytest.mark.parametrize("units", [True, False], ids=["unit-recorded", "older-file"])
def test_cascade_lake_cas_counts_in_mib_match_perfs_own_metric(tmp_path, units):
    runs = _runs(CLX)
    ((secs, counts),) = runs
    assert counts["uncore_imc/cas_count_read/"] == (767.95, "MiB")
    rec = _para(tmp_path, runs, units=units)
    # perf's DRAM_BW_Use of the same run: 0.80 GB/s (two decimals)
    perf_gbps = 0.80
    rule = _rule(rec, "memory_bandwidth_bound", _peak_near(tmp_path, perf_gbps * 1e9))
    assert rule["status"] == "fired", rule
    measured = rule["value"] / 100 * perf_gbps * 1e9 / 0.9
    assert measured == pytest.approx(perf_gbps * 1e9, abs=0.01e9), rule
    assert "Intel IMC CAS events" in rule["evidence"], rule


def test_skylake_per_socket_intervals_in_mib(tmp_path):
    runs = _runs(SKX)
    assert len(runs) == 2
    rec = _para(tmp_path, runs[1:])  # the first interval's length is not known
    secs, counts = runs[1]
    want = sum(v for v, _ in counts.values()) * 2**20 / secs
    rule = _rule(rec, "memory_bandwidth_bound", _peak_near(tmp_path, want))
    assert rule["value"] == pytest.approx(90.0, rel=1e-3), rule


def test_free_running_imc_counters_in_mib(tmp_path):
    runs = _runs(FREE)
    ((secs, counts),) = runs
    assert counts == {"uncore_imc_free_running/data_read/": (6969.93, "MiB")}
    want = 6969.93 * 2**20 / secs
    rule = _rule(_para(tmp_path, runs), "memory_bandwidth_bound", _peak_near(tmp_path, want))
    assert rule["value"] == pytest.approx(90.0, rel=1e-3), rule
    assert "Intel IMC free-running events" in rule["evidence"], rule


@pytest.mark.parametrize("run", [0, 1], ids=["all-umcs", "two-umcs"])
def test_amd_umc_cas_commands_are_64_byte_lines(tmp_path, run):
    secs, counts = _runs(UMC)[run]
    assert all(u == "" for _, u in counts.values())  # perf printed no unit: counts
    want = 64 * sum(v for v, _ in counts.values()) / secs
    rule = _rule(_para(tmp_path, [(secs, counts)]), "memory_bandwidth_bound",
                 _peak_near(tmp_path, want))  # fmt: skip
    assert rule["value"] == pytest.approx(90.0, rel=1e-3), rule
    assert "AMD UMC CAS events" in rule["evidence"], rule


def test_the_peak_comes_from_the_machines_dmi_table(tmp_path):
    peak = peak_bandwidth(parse_memory_devices(DMI.read_text()))
    # two DDR4-3200 channels (ChannelA-DIMM1, ChannelB-DIMM1) of 8 bytes
    assert peak == {"bytes_per_s": 2 * 3200e6 * 8,
                    "how": "DMI: 2 memory channels x 3200 MT/s x 8 bytes"}  # fmt: skip
    rec = _para(tmp_path, _runs(CLX), peak=peak)
    rule = _rule(rec, "memory_bandwidth_bound")
    assert rule["status"] == "passed", rule
    assert "DMI: 2 memory channels" in rule["reason"], rule
    ((secs, counts),) = _runs(CLX)
    bw = sum(v for v, _ in counts.values()) * 2**20 / secs
    assert rule["value"] == pytest.approx(100 * bw / peak["bytes_per_s"], rel=1e-3), rule
    # a node near its peak fires and names where the peak came from
    near = {"bytes_per_s": bw / 0.85, "how": peak["how"]}
    rule = _rule(_para(tmp_path, _runs(CLX), peak=near), "memory_bandwidth_bound")
    assert rule["status"] == "fired" and "DMI: 2 memory channels" in rule["evidence"], rule


def test_without_a_peak_the_rule_says_what_it_measured(tmp_path):
    rule = _rule(_para(tmp_path, _runs(FREE)), "memory_bandwidth_bound")
    assert rule["status"] == "not_evaluated", rule
    assert "peak is not known" in rule["reason"] and "free-running" in rule["reason"], rule


# -- the floating-point events of AMD Zen -------------------------------------------------


def test_the_agents_amd_fp_events_are_read(tmp_path):
    """Which events the rule reads: the names perfsets.py collects on AMD Zen (the counts are
    arbitrary here: no citable AMD capture of them was found)."""
    zen = EVENT_GROUPS["amd-zen"]["flops"]
    assert "fp_ops_retired_by_type.scalar_all" in zen and "fp_ret_sse_avx_ops.all" in zen
    counts = {"instructions": (1e9, ""), "cycles": (1e9, ""),
              "fp_ops_retired_by_type.scalar_all": (3e8, ""),
              "fp_ops_retired_by_type.vector_all": (1e8, "")}  # fmt: skip
    rule = _rule(_para(tmp_path, [(1.0, counts)]), "poor_vectorization")
    assert rule["status"] == "fired" and rule["value"] == pytest.approx(25.0), rule
    old = {"instructions": (1e9, ""), "cycles": (1e9, ""), "fp_ret_sse_avx_ops.all": (4e8, "")}
    rule = _rule(_para(tmp_path, [(1.0, old)]), "poor_vectorization")
    assert rule["status"] == "not_evaluated" and "Zen 1 to 3" in rule["reason"], rule
