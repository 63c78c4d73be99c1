"""Node-wide samplers read from /proc and /sys: CPU, memory, network, disks."""

from __future__ import annotations

import os
from typing import Any

from para.agent.samplers.base import ProcFiles, Rows, Sampler, Unavailable
from para.cython_ext import load
from para.formats.schema import MEMINFO_FIELDS, VMSTAT_FIELDS

procparse = load("procparse")

# Without cpufreq the only frequency source is /proc/cpuinfo, which costs ~25 us per CPU to
# generate: read it every FREQ_FALLBACK_EVERY samples and leave the seconds between null.
FREQ_FALLBACK_EVERY = 10


class CpuSampler(Sampler):
    family = "cpu"
    tables = ("node", "cpu")

    def __init__(self, files: ProcFiles):
        self.files = files
        self._freq_paths: dict[int, str] = {}
        self._fallback_tick = 0
        self.freq_source = "none"

    def open(self) -> dict[str, Any]:
        try:
            _, per_cpu, *_ = procparse.parse_stat(self.files.read("proc/stat"))
        except OSError as e:
            raise Unavailable(f"cannot read /proc/stat: {e.strerror}") from e
        for cpu, _ in per_cpu:
            # scaling_cur_freq is what the governor set; cpuinfo_cur_freq (hardware-read,
            # often root-only) is the fallback some drivers offer instead.
            for name in ("scaling_cur_freq", "cpuinfo_cur_freq"):
                rel = f"sys/devices/system/cpu/cpu{cpu}/cpufreq/{name}"
                if self.files.exists(rel) and os.access(self.files.path(rel), os.R_OK):
                    self._freq_paths[cpu] = rel
                    break
        if self._freq_paths:
            self.freq_source = "cpufreq"
        elif self.files.exists("proc/cpuinfo"):
            self.freq_source = f"/proc/cpuinfo every {FREQ_FALLBACK_EVERY} samples"
        return {"cpus_online": len(per_cpu), "frequency_source": self.freq_source}

    def _frequencies(self) -> dict[int, int]:
        if self._freq_paths:
            out = {}
            for cpu, rel in self._freq_paths.items():
                try:
                    out[cpu] = int(self.files.read(rel))
                except (OSError, ValueError):
                    continue
            return out
        if self.freq_source == "none":
            return {}
        self._fallback_tick += 1
        if self._fallback_tick % FREQ_FALLBACK_EVERY != 1:
            return {}
        return cpuinfo_khz(self.files.read("proc/cpuinfo"))

    def sample(self, t_ms: int, out: Rows) -> None:
        total, per_cpu, ctxt, intr, forks, running, blocked = procparse.parse_stat(
            self.files.read("proc/stat")
        )
        load1, load5, load15 = procparse.parse_loadavg(self.files.read("proc/loadavg"))
        out["node"] = [[*total, ctxt, intr, forks, running, blocked, load1, load5, load15]]
        freq = self._frequencies()
        out["cpu"] = [[cpu, *times, freq.get(cpu)] for cpu, times in per_cpu]


def cpuinfo_khz(data: bytes) -> dict[int, int]:
    """'cpu MHz' of each processor in /proc/cpuinfo, in kHz."""
    out: dict[int, int] = {}
    cpu = -1
    for line in data.split(b"\n"):
        if line.startswith(b"processor"):
            cpu = int(line.partition(b":")[2])
        elif line.startswith(b"cpu MHz") and cpu >= 0:
            out[cpu] = round(float(line.partition(b":")[2]) * 1000)
    return out


class MemorySampler(Sampler):
    family = "memory"
    tables = ("memory",)
    _MEMINFO = tuple(k.encode() for _, k, _ in MEMINFO_FIELDS)
    _VMSTAT = tuple(k.encode() for _, k, _ in VMSTAT_FIELDS)

    def __init__(self, files: ProcFiles):
        self.files = files
        self._vmstat = True

    def open(self) -> dict[str, Any]:
        try:
            self.files.read("proc/meminfo")
        except OSError as e:
            raise Unavailable(f"cannot read /proc/meminfo: {e.strerror}") from e
        self._vmstat = self.files.exists("proc/vmstat")
        return {} if self._vmstat else {"vmstat": "absent: paging counters are null"}

    def sample(self, t_ms: int, out: Rows) -> None:
        mem = procparse.parse_keyed(self.files.read("proc/meminfo"), self._MEMINFO, True)
        if self._vmstat:
            vm = procparse.parse_keyed(self.files.read("proc/vmstat"), self._VMSTAT, False)
        else:
            vm = [None] * len(self._VMSTAT)
        out["memory"] = [mem + vm]


class NetSampler(Sampler):
    family = "net"
    tables = ("net",)

    def __init__(self, files: ProcFiles):
        self.files = files

    def open(self) -> dict[str, Any]:
        try:
            ifaces = procparse.parse_net_dev(self.files.read("proc/net/dev"))
        except OSError as e:
            raise Unavailable(f"cannot read /proc/net/dev: {e.strerror}") from e
        return {"interfaces": [name for name, _ in ifaces]}

    def sample(self, t_ms: int, out: Rows) -> None:
        rows = []
        for name, v in procparse.parse_net_dev(self.files.read("proc/net/dev")):
            # receive: bytes packets errs drop ...; transmit starts at column 8
            rows.append([name, v[0], v[1], v[2], v[3], v[8], v[9], v[10], v[11]])
        out["net"] = rows


class DiskSampler(Sampler):
    family = "disk"
    tables = ("disk",)

    def __init__(self, files: ProcFiles):
        self.files = files

    def open(self) -> dict[str, Any]:
        try:
            disks = procparse.parse_diskstats(self.files.read("proc/diskstats"))
        except OSError as e:
            raise Unavailable(f"cannot read /proc/diskstats: {e.strerror}") from e
        # /proc/diskstats lists partitions beside their disks; /sys/block has whole disks
        # only, so totals can be summed without counting a byte twice.
        try:
            whole = sorted(os.listdir(self.files.path("sys/block")))
        except OSError:
            whole = []
        return {"devices": [name for name, _ in disks], "whole_disks": whole}

    def sample(self, t_ms: int, out: Rows) -> None:
        out["disk"] = [
            [name, *v] for name, v in procparse.parse_diskstats(self.files.read("proc/diskstats"))
        ]


def clock_ticks() -> int:
    """USER_HZ: the unit of every 'ticks' column."""
    return os.sysconf("SC_CLK_TCK")
