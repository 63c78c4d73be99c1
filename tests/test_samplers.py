"""The node samplers against /proc and /sys trees captured from real machines, and the live
machine compared with procps' own tools."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from para.agent.samplers.base import ProcFiles, Unavailable
from para.agent.samplers.fs import FsSampler, parse_mountinfo
from para.agent.samplers.system import (
    CpuSampler,
    DiskSampler,
    MemorySampler,
    NetSampler,
    cpuinfo_khz,
)
from para.formats.schema import TABLES

from .conftest import PROCFS, need_tool


def sample(sampler, tree=None):
    out: dict = {}
    sampler.open()
    sampler.sample(0, out)
    sampler.close()
    return out


def width(table):
    return len(TABLES[table].columns) - 1  # rows carry no t


@pytest.mark.parametrize("tree", ["prometheus-procfs", "node_exporter", "vm-amd-epyc-2cpu"])
def test_every_family_fits_its_table(tree):
    files = ProcFiles(PROCFS / tree)
    for cls in (CpuSampler, MemorySampler, DiskSampler):
        out = sample(cls(files))
        for table, rows in out.items():
            assert rows, (cls.__name__, table)
            assert all(len(r) == width(table) for r in rows), (cls.__name__, table)


def test_cpu_laptop_with_cpufreq():
    files = ProcFiles(PROCFS / "prometheus-procfs")
    s = CpuSampler(files)
    facts = s.open()
    assert facts == {"cpus_online": 8, "frequency_source": "cpufreq"}
    out: dict = {}
    s.sample(0, out)
    (node,) = out["node"]
    assert node[:3] == [301854, 612, 111922]
    assert node[10:15] == [38014093, 73777505, 26442, 2, 1]  # ctxt intr forks running blocked
    freqs = {row[0]: row[-1] for row in out["cpu"]}
    assert freqs[1] == 1200195  # cpu1/cpufreq has only cpuinfo_cur_freq, in kHz
    assert freqs[0] is None  # no cpufreq directory captured for cpu0


def test_cpu_scaling_cur_freq():
    out = sample(CpuSampler(ProcFiles(PROCFS / "node_exporter")))
    freqs = {row[0]: row[-1] for row in out["cpu"]}
    assert [freqs[c] for c in range(4)] == [1699981, 1699981, 8000, 8000]


def test_cpu_vm_falls_back_to_cpuinfo_every_ten_samples():
    s = CpuSampler(ProcFiles(PROCFS / "vm-amd-epyc-2cpu"))
    assert s.open()["frequency_source"] == "/proc/cpuinfo every 10 samples"
    seen = []
    for i in range(12):
        out: dict = {}
        s.sample(i, out)
        seen.append([r[-1] for r in out["cpu"]])
    assert seen[0] == [2596120, 2596120] and seen[10] == [2596120, 2596120]
    assert all(v == [None, None] for v in seen[1:10])


def test_cpuinfo_khz():
    assert cpuinfo_khz(b"processor\t: 3\ncpu MHz\t\t: 1999.999\n") == {3: 1999999}


def test_memory_laptop():
    out = sample(MemorySampler(ProcFiles(PROCFS / "node_exporter")))
    (row,) = out["memory"]
    cols = [c.name for c in TABLES["memory"].metrics]
    mem = dict(zip(cols, row))
    assert mem["mem_total"] == 3742148 * 1024 and mem["mem_available"] is None
    assert mem["pgmajfault"] == 507162


def test_memory_without_vmstat_says_so():
    s = MemorySampler(ProcFiles(PROCFS / "prometheus-procfs"))
    assert s.open() == {"vmstat": "absent: paging counters are null"}
    out: dict = {}
    s.sample(0, out)
    assert out["memory"][0][-6:] == [None] * 6


def test_net_rx_tx_columns():
    out = sample(NetSampler(ProcFiles(PROCFS / "prometheus-procfs")))
    eth0 = next(r for r in out["net"] if r[0] == "eth0")
    assert eth0 == ["eth0", 874354587, 1036395, 0, 0, 563352563, 732147, 0, 0]


def test_disk_whole_disks_listed_for_totals():
    s = DiskSampler(ProcFiles(PROCFS / "vm-amd-epyc-2cpu"))
    facts = s.open()
    assert "vda" in facts["whole_disks"] and "loop0" in facts["devices"]


def test_missing_proc_is_unavailable_not_a_crash(tmp_path):
    for cls in (CpuSampler, MemorySampler, NetSampler, DiskSampler, FsSampler):
        with pytest.raises(Unavailable, match="cannot read"):
            cls(ProcFiles(tmp_path)).open()


def test_mountinfo_keeps_real_filesystems():
    mounts = parse_mountinfo((PROCFS / "vm-amd-epyc-2cpu/proc/self/mountinfo").read_bytes())
    points = [m for m, _, _ in mounts]
    assert "/" in points and "/dev/shm" in points
    assert not {"/proc", "/sys", "/dev/pts", "/sys/fs/cgroup/cpu"} & set(points)
    assert points.count("/dev/shm") == 1  # mounted twice; the visible one is kept


def test_mountinfo_unescapes_and_keeps_network():
    data = (
        b"36 35 98:0 / /mnt/my\\040disk rw - ext4 /dev/sdb1 rw\n"
        b"37 35 0:50 / /home rw - nfs4 srv:/home rw\n"
        b"38 35 0:51 / /run/user/1 rw - tmpfs tmpfs rw\n"
    )
    assert parse_mountinfo(data) == [
        ("/mnt/my disk", "ext4", "/dev/sdb1"),
        ("/home", "nfs4", "srv:/home"),
    ]


def test_fs_live_root_matches_df():
    out = sample(FsSampler(ProcFiles("/")))
    root = next(r for r in out["fs"] if r[0] == "/")
    df = subprocess.run(["df", "-B1", "--output=size,avail", "/"], capture_output=True, text=True)
    size, avail = (int(x) for x in df.stdout.split()[2:4])
    assert root[1] == size
    assert abs(root[3] - avail) < 64 << 20  # avail moves as other processes write


def test_memory_live_matches_free():
    """Used memory as para derives it equals free(1)'s "used" (procps 4: total - available)."""
    need_tool("free", "apt install procps")
    out = sample(MemorySampler(ProcFiles("/")))
    mem = dict(zip([c.name for c in TABLES["memory"].metrics], out["memory"][0]))
    free = subprocess.run(["free", "-b"], capture_output=True, text=True).stdout
    total, used = (int(x) for x in re.search(r"Mem:\s+(\d+)\s+(\d+)", free).groups())
    assert mem["mem_total"] == total
    assert abs((mem["mem_total"] - mem["mem_available"]) - used) < 32 << 20


def test_cpu_live_counts_forward():
    s = CpuSampler(ProcFiles("/"))
    s.open()
    a: dict = {}
    b: dict = {}
    s.sample(0, a)
    sum(i * i for i in range(300000))
    s.sample(1, b)
    assert sum(b["node"][0][:8]) > sum(a["node"][0][:8])
    assert len(a["cpu"]) == len(os.sched_getaffinity(0)) or len(a["cpu"]) == os.cpu_count()
