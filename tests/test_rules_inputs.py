"""The branches of the rules that read node counters this VM does not have (InfiniBand, Lustre
and NFS clients, swap), on node recordings made here by the agent's own samplers reading the
recorded /proc and /sys trees of real machines (tests/fixtures: procfs/node_exporter, the
InfiniBand ports of agent/prometheus-procfs, a Lustre client's llite stats, an NFS client's
mountstats; see their SOURCES.md).  Between samples the test advances the counters of one
kind by what the case needs (one-way traffic at the link rate, a metadata storm, swapping),
so every expected value is that advance over the sampling interval, computed here.

Also: metadata_storm on real call stacks that perf could take in user space only."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from para.agent.perfrecord import instruction_rows, leaf_facts
from para.agent.samplers.base import ProcFiles, Sampler
from para.agent.samplers.infiniband import InfinibandSampler
from para.agent.samplers.lustre import LustreSampler
from para.agent.samplers.nfs import EVENT_COLUMNS, NfsSampler
from para.agent.samplers.system import CpuSampler, DiskSampler, MemorySampler
from para.analyzer.analysis import analyse
from para.analyzer.job import Job
from para.analyzer.rules import default_config
from para.cython_ext import load
from para.formats import ParaWriter

from .conftest import FIXTURES, cannot_run, need_tool

NODE = FIXTURES / "procfs" / "node_exporter"
IB = FIXTURES / "agent" / "prometheus-procfs" / "sys" / "class" / "infiniband" / "mlx5_0"
LLITE = FIXTURES / "lustre" / "lustre_exporter" / "proc" / "fs" / "lustre" / "llite"
MOUNTSTATS = FIXTURES / "agent" / "prometheus-procfs" / "proc" / "26231" / "mountstats"
WORKLOADS = Path(__file__).parent / "analyzer_workloads.py"
T0 = 1_800_000_000_000
TICKS = 12


def _root(tmp: Path) -> Path:
    root = tmp / "root"
    shutil.copytree(NODE, root, symlinks=True)
    return root


def _add(path: Path, name: str, by: int, where: str = "words") -> None:
    """Add `by` to a counter in place (the samplers keep their files open)."""
    text = path.read_text()
    if where == "words":  # a file that holds one number
        path.write_text(f"{int(text) + by}\n")
        return
    if where == "llite":  # "NAME COUNT samples ..."
        rx = re.compile(rf"^({re.escape(name)}\s+)(\d+)", re.M)
        path.write_text(rx.sub(lambda m: f"{m.group(1)}{int(m.group(2)) + by}", text, count=1))
        return
    raise ValueError(where)


def _record(tmp: Path, root: Path, extra: list[Sampler],
            advance: Callable[[int], None]) -> Path:  # fmt: skip
    """A whole-node recording, one sample a second, of the fixture tree as it is advanced."""
    files = ProcFiles(root)
    samplers: list[Sampler] = [CpuSampler(files), MemorySampler(files), DiskSampler(files),
                               *[s(files) for s in extra]]  # type: ignore[operator]  # fmt: skip
    facts = {s.family: s.open() for s in samplers}
    path = tmp / "node.para"
    w = ParaWriter(path, {"host": {"hostname": "node1", "clock_ticks": 100, "threads": 2},
                          "interval": 1.0, "allowed_cpus": 2,
                          "family_facts": facts})  # fmt: skip
    for i in range(TICKS):
        if i:
            advance(i)
        out: dict[str, Any] = {}
        for s in samplers:
            s.sample(T0 + 1000 * i, out)
        w.append(T0 + 1000 * i, out)
    w.close({"families": {s.family: {"state": "ok"} for s in samplers}})
    files.close()
    return path


def _rules(path: Path) -> dict[str, dict[str, Any]]:
    with Job([path]) as job:
        a = analyse(job, default_config())
    rules = {r["id"]: r for r in a.doc["rules"]}
    for b in a.bottlenecks:
        rules[b["id"]]["evidence"] = b["evidence"]
    return rules


# -- InfiniBand ---------------------------------------------------------------------------


@pytest.mark.parametrize("share", [0.95, 0.5])
def test_one_way_traffic_at_the_link_rate_is_network_bound(tmp_path, share):
    root = _root(tmp_path)
    port = root / "sys/class/infiniband/mlx5_0"
    shutil.copytree(IB, port, symlinks=True)
    rate = (port / "ports/1/rate").read_text()  # "25 Gb/sec (1X EDR)"
    link = float(rate.split()[0]) * 1e9 / 8  # bytes/s
    words = int(share * link / 4)  # port_xmit_data counts 4-byte words
    xmit = port / "ports/1/counters/port_xmit_data"
    rule = _rules(_record(tmp_path, root, [InfinibandSampler],
                          lambda i: _add(xmit, "", words)))["network_bound"]  # fmt: skip
    sent = 4 * words / link
    assert rule["value"] == pytest.approx(100 * sent, rel=1e-3), rule
    if sent >= default_config()["network_bound"]["max_link_share"]:
        # (rx + tx) / (2 x link) would be half of it, and pass
        assert rule["status"] == "fired", rule
        assert "send direction" in rule["evidence"] and "25 Gb/s" in rule["evidence"], rule
    else:
        assert rule["status"] == "passed", rule


# -- file-system metadata -----------------------------------------------------------------


def _lustre(tmp: Path, root: Path, ops_per_s: dict[str, int]) -> Path:
    shutil.copytree(LLITE, root / "proc/fs/lustre/llite")
    stats = next((root / "proc/fs/lustre/llite").glob("*/stats"))

    def advance(i: int) -> None:
        for op, n in ops_per_s.items():
            _add(stats, op, n, "llite")

    return _record(tmp, root, [LustreSampler], advance)


def _nfs(tmp: Path, root: Path, ops_per_s: dict[int, int]) -> Path:
    (root / "proc/self").mkdir(parents=True, exist_ok=True)
    path = root / "proc/self/mountstats"
    shutil.copy(MOUNTSTATS, path)

    def advance(i: int) -> None:
        lines = path.read_text().split("\n")
        for k, line in enumerate(lines):
            if line.strip().startswith("events:"):
                head, nums = line.split(":", 1)
                vals = [int(x) for x in nums.split()]
                for idx, n in ops_per_s.items():
                    vals[idx] += n
                lines[k] = head + ":\t" + " ".join(map(str, vals))
        path.write_text("\n".join(lines))

    return _record(tmp, root, [NfsSampler], advance)


# nfs_iostat.h: NFSIOS_INODEREVALIDATE 0, VFSOPEN 4, VFSLOOKUP 5, VFSGETDENTS 12
@pytest.mark.parametrize(
    "fs, ops",
    [
        ("lustre", {"open": 600, "close": 600, "getattr": 300}),
        ("lustre", {"getattr": 200, "inode_permission": 200}),
        ("nfs", {0: 500, 4: 400, 5: 400}),
        ("nfs", {4: 100, 12: 50}),
    ],
)
def test_client_metadata_counters_judge_metadata_storm(tmp_path, fs, ops):
    assert set(ops) <= (set(EVENT_COLUMNS) if fs == "nfs" else set(ops))
    root = _root(tmp_path)
    rec = _lustre(tmp_path, root, ops) if fs == "lustre" else _nfs(tmp_path, root, ops)
    rule = _rules(rec)["metadata_storm"]
    per_s = sum(ops.values())  # one node, one second between samples
    assert rule["unit"] == "ops/s per node" and rule["value"] == pytest.approx(per_s), rule
    limit = default_config()["metadata_storm"]["max_ops_per_s"]
    assert rule["status"] == ("fired" if per_s >= limit else "passed"), rule
    if per_s >= limit:
        assert "Lustre/NFS client counters" in rule["evidence"]


# -- memory --------------------------------------------------------------------------------


@pytest.mark.parametrize("pages", [2000, 0])
def test_swapping_is_memory_pressure(tmp_path, pages):
    root = _root(tmp_path)
    vmstat = root / "proc/vmstat"

    def advance(i: int) -> None:
        text = vmstat.read_text()
        for key in ("pswpin", "pswpout"):
            text = re.sub(rf"^({key}) (\d+)$", lambda m: f"{m.group(1)} {int(m.group(2)) + pages}",
                          text, flags=re.M)  # fmt: skip
        vmstat.write_text(text)

    rule = _rules(_record(tmp_path, root, [], advance))["memory_pressure"]
    if pages:
        assert rule["status"] == "fired" and rule["unit"] == "pages/s", rule
        assert rule["value"] == pytest.approx(2 * pages), rule  # in and out, each second
        assert "swapping during 100 % of the run" in rule["evidence"], rule
    else:
        assert rule["status"] == "passed" and rule["unit"] == "major faults/s", rule


# -- storage -------------------------------------------------------------------------------


def test_node_iowait_without_job_data_is_not_io_wait(tmp_path):
    """The node's CPUs wait for I/O (someone else's, or a network filesystem's) while its
    disks move nothing: a whole-node recording must not call that the job's storage wait."""
    root = _root(tmp_path)
    stat = root / "proc/stat"
    ncpu = len(re.findall(r"^cpu\d+ ", stat.read_text(), re.M))

    def advance(i: int) -> None:
        # each second every CPU spends 50 ticks (of 100) in iowait, 10 in user time
        lines = []
        for line in stat.read_text().split("\n"):
            f = line.split()
            if f and re.fullmatch(r"cpu\d*", f[0]):
                k = ncpu if f[0] == "cpu" else 1
                f[1] = str(int(f[1]) + 10 * k)
                f[5] = str(int(f[5]) + 50 * k)
                f[4] = str(int(f[4]) + 40 * k)
                line = " ".join(f)
            lines.append(line)
        stat.write_text("\n".join(lines))

    rules = _rules(_record(tmp_path, root, [], advance))
    rule = rules["io_wait_bound"]
    assert rule["status"] == "passed" and rule["value"] == 0.0, rule


# -- metadata_storm on user-only call stacks ------------------------------------------------


def test_user_only_stacks_leave_metadata_storm_unjudged(tmp_path):
    """perf as a user under kernel.perf_event_paranoid 2 samples user space only, as
    `-e cpu-clock:u` does for root: the open/stat/unlink calls of a metadata storm are then
    invisible in the stacks, which is "not evaluated", not "passed at 0 %"."""
    need_tool("perf", "apt install linux-perf")
    data = tmp_path / "perf.data"
    rec = subprocess.run(
        ["perf", "record", "-e", "cpu-clock:u", "-F", "499", "-g", "-o", str(data), "--",
         sys.executable, str(WORKLOADS), "meta", "2"],
        capture_output=True, text=True, cwd=tmp_path, env={"TMPDIR": str(tmp_path),
                                                           "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    if rec.returncode != 0:
        cannot_run(f"perf record cannot run here: {rec.stderr.strip()[-200:]}",
                   "run as root or with kernel.perf_event_paranoid <= 2")  # fmt: skip
    script = subprocess.run(["perf", "script", "-i", str(data), "-F",
                             "comm,pid,tid,time,event,ip,sym,symoff,dso"],
                            capture_output=True, check=True).stdout  # fmt: skip
    stacks = load("fold").fold_timed(script)
    rows = instruction_rows(script)
    facts = leaf_facts(rows)
    assert facts["kernel_samples"] == 0
    path = tmp_path / "meta.para"
    w = ParaWriter(path, {"host": {"hostname": "h", "clock_ticks": 100}, "interval": 1.0,
                          "command": ["meta"], "allowed_cpus": 2})  # fmt: skip
    t = T0
    w.append(t, {"stacks": [[t + int(1000 * b), p, tid, c, s, n] for b, p, tid, c, s, n in
                            stacks]}, sample=False)  # fmt: skip
    w.append(t, {"instr_samples": rows}, sample=False)
    total = sum(r[5] for r in stacks)
    w.close({"functions": {"event": "cpu-clock:u", "samples": total, **facts}})
    rule = _rules(path)["metadata_storm"]
    assert rule["status"] == "not_evaluated", rule
    assert "no kernel frames" in rule["reason"], rule


def test_node_disk_rates_are_the_diskstats_deltas(tmp_path):
    """The node's disk read rate, whole-node: sectors read (512 bytes) per second."""
    root = _root(tmp_path)
    disks = root / "proc/diskstats"
    sectors = 20000  # about 10 MB/s

    def advance(i: int) -> None:
        lines = []
        for line in disks.read_text().split("\n"):
            f = line.split()
            if len(f) > 5 and f[2] == "sda":
                f[5] = str(int(f[5]) + sectors)
                line = " ".join(f)
            lines.append(line)
        disks.write_text("\n".join(lines))

    rec = _record(tmp_path, root, [], advance)
    with Job([rec]) as job:
        (read,) = job.query("SELECT avg(read_bps) FROM job_sec WHERE read_bps IS NOT NULL")[0]
    # sda's partitions do not move: only sda counts (no /sys/block here to name whole disks)
    assert read == pytest.approx(sectors * 512)
