"""The rules this VM cannot show (GPUs, hardware counters, a node near its memory), on .para
files built here from recorded data, each as said below (and in the SOURCES.md of the
fixtures used):

- GPU: the real GPU sampler (para.agent.samplers.gpu) reads the nvidia-smi captures of
  tests/fixtures/nvidia-smi through tests/nvml_replay.py, one sample per second, into a
  ParaWriter; a job that uses its GPU one second in ten is a sequence of the H100 capture's
  'load' and 'idle' samples, nine idle for one load.
- counters: the real perf-stat parser (para.agent.samplers.perfstat) reads the two 1-second
  intervals of tests/fixtures/perf-stat/perf-stat-interval-percpu-tsv-icelakesp-xeon6326-
  hperf.tsv (per-CPU counts of a Xeon Gold 6326 node) and the interval of the Jin Yao CSV;
  per-CPU counts are summed per interval, as perf prints them without -A.
- memory: the real memory samples of a growing-memory run recorded here with `para profile`,
  with the node's MemTotal lowered to 1.05 x the peak used (and MemAvailable = MemTotal -
  used): nothing else on a shared machine could be driven to 95 % of its memory safely.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from para.agent.samplers.gpu import GpuSampler
from para.agent.samplers.perfstat import parse_stream
from para.analyzer.analysis import analyse
from para.analyzer.job import Job
from para.analyzer.rules import default_config, load_config
from para.formats import ParaFile, ParaWriter
from para.formats.schema import TABLES

from .conftest import FIXTURES, REPO, para_cmd
from .nvml_replay import from_capture, from_xml

NV = FIXTURES / "nvidia-smi"
H100 = (
    NV / "nvidia-smi-capture-linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01-nvidia_gpu_exporter.txt"
)
V100S = NV / "nvidia-smi-q-x-8x-tesla-v100s-pcie-32gb-datakit.xml.gz"
PERF = FIXTURES / "perf-stat"
HPERF = PERF / "perf-stat-interval-percpu-tsv-icelakesp-xeon6326-hperf.tsv"
JINYAO = PERF / "perf-stat-csv-interval-summary-newformat-intel-lkml-jinyao.csv"
T0 = 1_800_000_000_000


def _writer(path: Path, host: str = "gpunode") -> ParaWriter:
    return ParaWriter(
        path,
        {
            "host": {"hostname": host, "clock_ticks": 100, "threads": 32},
            "interval": 1.0,
            "command": ["train.py"],
            "allowed_cpus": 32,
        },
    )


def _gpu_file(path: Path, phases: list[tuple[Any, int]]) -> Path:
    """Samples of the real GPU sampler over replays: (replay, seconds) in turn."""
    w = _writer(path)
    t = T0
    for replay, seconds in phases:
        s = GpuSampler(replay)
        s.open()
        for _ in range(seconds):
            out: dict[str, Any] = {}
            s.sample(t, out)
            w.append(t, {"gpu": out["gpu"]})
            t += 1000
        s.close()
    w.close({"families": {"gpu": {"state": "ok"}}})
    return path


def _analysis(path: Path, config: dict[str, Any] | None = None) -> Any:
    with Job([path]) as job:
        return analyse(job, config or default_config())


def _rules(a: Any) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in a.doc["rules"]}


def _fired(a: Any) -> dict[str, dict[str, Any]]:
    return {b["id"]: b for b in a.bottlenecks}


def test_an_idle_h100_fires_gpu_idle(tmp_path):
    a = _analysis(_gpu_file(tmp_path / "idle.para", [(from_capture(H100, "idle"), 12)]))
    b = _fired(a)["gpu_idle"]
    assert "1 of 1 GPUs were never busy" in b["evidence"] and b["value"] == 0.0
    rules = _rules(a)
    assert rules["gpu_low_utilization"]["status"] == "not_evaluated"
    assert "gpu_idle" in rules["gpu_low_utilization"]["reason"]


def test_a_gpu_busy_one_second_in_ten_has_low_utilization(tmp_path):
    phases = [(from_capture(H100, "load"), 1), (from_capture(H100, "idle"), 9)] * 2
    a = _analysis(_gpu_file(tmp_path / "low.para", phases))
    b = _fired(a)["gpu_low_utilization"]
    # 2 seconds at 100 % of 20: 10 %, under jobstats' red line of 15 %
    assert b["value"] == pytest.approx(10.0) and b["severity"] == "high"
    assert "gpu_idle" not in _fired(a)


def test_gpu_burn_on_an_h100_uses_a_quarter_of_its_memory(tmp_path):
    a = _analysis(_gpu_file(tmp_path / "burn.para", [(from_capture(H100, "load"), 12)]))
    fired = _fired(a)
    # gpu-burn: 100 % busy, 19.4 GiB of 79.6 GiB (24.3 %) at peak
    assert "gpu_low_utilization" not in fired and "gpu_idle" not in fired
    b = fired["gpu_memory_underused"]
    assert b["value"] == pytest.approx(100 * 20780679168 / 85520809984, abs=0.01)
    assert b["severity"] == "low"


def test_eight_busy_v100s_pass_the_gpu_rules(tmp_path):
    a = _analysis(_gpu_file(tmp_path / "v100.para", [(from_xml(V100S), 10)]))
    rules = _rules(a)
    for rid in ("gpu_idle", "gpu_low_utilization", "gpu_memory_underused"):
        assert rules[rid]["status"] == "passed", rules[rid]
    # mean of the eight GPUs' utilisation (97 75 80 23 98 98 91 99)
    assert rules["gpu_low_utilization"]["value"] == pytest.approx(82.625)
    assert a.doc["summary"]["gpu_util_pct"] == pytest.approx(82.6, abs=0.05)


def _counter_file(path: Path, capture: Path, sep: str) -> Path:
    rows: dict[float, dict[str, list[float]]] = {}
    for r in parse_stream(capture.read_text().splitlines(), sep):
        if r.time is None or r.value is None:
            continue
        acc = rows.setdefault(r.time, {}).setdefault(r.event, [0.0, 0.0, 0])
        acc[0] += r.value
        acc[1] += r.running_pct if r.running_pct is not None else 100.0
        acc[2] += 1
    w = _writer(path, "icx")
    cols = [c.name for c in TABLES["counters"].columns]
    assert cols == ["t", "event", "value", "running_pct"]
    for t in sorted(rows):
        t_ms = T0 + int(round(t * 1000))
        w.append(
            t_ms,
            {"counters": [[t_ms, ev, v[0], v[1] / v[2]] for ev, v in sorted(rows[t].items())]},
            sample=False,
        )
    w.close({"families": {"counters": {"state": "ok"}}})
    return path


def test_ipc_and_memory_bandwidth_from_an_ice_lake_node(tmp_path):
    f = _counter_file(tmp_path / "icx.para", HPERF, "\t")
    a = _analysis(f)
    rules = _rules(a)
    lines = [ln.split("\t") for ln in HPERF.read_text().splitlines() if ln.strip()]
    total = {}
    for ln in lines:
        if len(ln) > 4 and ln[2].strip():
            total[ln[4]] = total.get(ln[4], 0.0) + float(ln[2])
    ipc = total["instructions:D"] / total["cycles:D"]  # counted by hand from the file
    assert rules["low_ipc"]["value"] == pytest.approx(ipc, rel=1e-4)
    assert rules["low_ipc"]["status"] == ("fired" if ipc < 0.5 else "passed")
    # memory traffic: 64 bytes per CAS, read (umask 0x0f) and write (0x30), per second of
    # the second interval (the first has no interval length before it)
    bw = rules["memory_bandwidth_bound"]
    assert bw["status"] == "not_evaluated" and "peak is not known" in bw["reason"]
    cas2 = sum(float(ln[2]) for ln in lines if len(ln) > 4 and ln[4].startswith("imc/")
               and ln[0].strip().startswith("2."))  # fmt: skip
    first = float(lines[0][0])
    second = next(float(ln[0]) for ln in lines if ln[0].strip().startswith("2."))
    measured = 64 * cas2 / (second - first)
    strict = tmp_path / "peak.toml"
    strict.write_text(f"[memory_bandwidth_bound]\npeak_bytes_per_s = {measured / 0.9:.1f}\n")
    b = _fired(_analysis(f, load_config(strict)))["memory_bandwidth_bound"]
    assert b["value"] == pytest.approx(90.0, rel=1e-3)
    loose = tmp_path / "loose.toml"
    loose.write_text("[memory_bandwidth_bound]\npeak_bytes_per_s = 409.6e9\n")  # 2 x 8 DDR4-3200
    rule = _rules(_analysis(f, load_config(loose)))["memory_bandwidth_bound"]
    assert rule["status"] == ("fired" if measured / 409.6e9 >= 0.8 else "passed")
    assert rules["poor_vectorization"]["status"] == "not_evaluated"
    assert "floating-point" in rules["poor_vectorization"]["reason"]


def test_low_ipc_of_an_almost_idle_intel_box(tmp_path):
    a = _analysis(_counter_file(tmp_path / "jy.para", JINYAO, ","))
    rule = _rules(a)["low_ipc"]
    # 7954691 instructions in 15004518 cycles (the file's own "0.53 insn per cycle")
    assert rule["value"] == pytest.approx(7954691 / 15004518, rel=1e-4)
    assert rule["status"] == "passed"
    strict = tmp_path / "ipc.toml"
    strict.write_text("[low_ipc]\nalert = 0.6\n")
    b = _fired(_analysis(tmp_path / "jy.para", load_config(strict)))["low_ipc"]
    assert b["severity"] == "medium" and "IPC 0.53" in b["evidence"]


def test_a_node_at_95_percent_of_its_memory_is_near_oom(tmp_path):
    real = tmp_path / "grow.para"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run(
        [
            *para_cmd(),
            "profile",
            "-q",
            "-i",
            "0.5",
            "-o",
            str(real),
            "--",
            sys.executable,
            str(Path(__file__).parent / "analyzer_workloads.py"),
            "grow",
            "3",
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    with ParaFile(real) as pf:
        mem = pf.read_table("memory")
        meta = pf.meta
    used = [t - a for t, a in zip(mem["mem_total"].to_pylist(), mem["mem_available"].to_pylist(),
                                  strict=True)]  # fmt: skip
    total = int(max(used) * 1.05)
    cols = [c.name for c in TABLES["memory"].columns]
    w = ParaWriter(
        tmp_path / "tight.para",
        {
            "host": meta["host"],
            "interval": meta["interval"],
            "command": meta["command"],
            "allowed_cpus": 2,
        },
    )
    for row, u in zip(mem.to_pylist(), used, strict=True):
        row.update(mem_total=total, mem_available=total - u)
        t_ms = int(row["t"].timestamp() * 1000)
        w.append(t_ms, {"memory": [[row[c] for c in cols[1:]]]})
    w.close({"families": {"memory": {"state": "ok"}}})
    a = _analysis(tmp_path / "tight.para")
    b = _fired(a)["near_oom"]
    assert b["value"] == pytest.approx(100 / 1.05, abs=0.1) and b["severity"] == "medium"
    assert "memory used peaked at" in b["evidence"]
    assert _rules(_analysis(real))["near_oom"]["status"] == "passed"
