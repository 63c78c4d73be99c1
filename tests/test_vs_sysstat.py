"""para's counters against sysstat's, on the live machine (as psutil's tests compare with
free and vmstat): para samples, sadc takes its two samples, para samples again, and every
raw counter sadc stored must lie between para's two readings."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from para.agent.samplers.base import ProcFiles
from para.agent.samplers.process import ProcessSampler
from para.agent.samplers.system import CpuSampler, DiskSampler, NetSampler
from para.formats.schema import TABLES

from .conftest import cannot_run, need_tool

SYSSTAT = "apt install sysstat (make test installs it)"

SADC = next(
    (p for p in ("/usr/lib/sysstat/sadc", "/usr/lib64/sa/sadc") if os.access(p, os.X_OK)), None
)


def cols(table: str) -> list[str]:
    return [c.name for c in TABLES[table].columns if c.name != "t"]


def para_sample() -> dict[str, list[list]]:
    files = ProcFiles("/")
    out: dict[str, list[list]] = {}
    for s in (CpuSampler(files), DiskSampler(files), NetSampler(files)):
        s.open()
        s.sample(0, out)
    files.close()
    return out


def sadf_raw(path, *args: str) -> list[list[str]]:
    text = subprocess.run(
        ["sadf", "-r", str(path), "--", *args], capture_output=True, text=True, check=True
    ).stdout
    return [[f.strip() for f in line.split(";")] for line in text.splitlines() if line.strip()]


def pairs(fields: list[str], start: int) -> dict[str, tuple[int, int]]:
    """sadf -r prints `name; previous; current;` for each counter."""
    out = {}
    i = start
    while i + 2 < len(fields):
        try:
            out[fields[i]] = (int(fields[i + 1]), int(fields[i + 2]))
            i += 3
        except ValueError:
            i += 1
    return out


@pytest.fixture(scope="module")
def bracket(tmp_path_factory):
    need_tool("sadf", SYSSTAT)
    if SADC is None:
        cannot_run("sysstat's sadc is not in /usr/lib/sysstat or /usr/lib64/sa", SYSSTAT)
    sa = tmp_path_factory.mktemp("sa") / "sa"
    before = para_sample()
    subprocess.run([SADC, "-S", "XALL", "1", "2", str(sa)], check=True)
    after = para_sample()
    return before, after, sa


def between(before: int, value: int, after: int) -> bool:
    return before <= value <= after


def test_cpu_times_bracket_sadc(bracket):
    before, after, sa = bracket
    row = next(r for r in sadf_raw(sa, "-u") if r[1:3] == ["CPU", "-1"])
    raw = pairs(row, 3)
    names = cols("node")
    b = dict(zip(names, before["node"][0]))
    a = dict(zip(names, after["node"][0]))
    for sar_name, ours in (
        ("%user", "cpu_user"),
        ("%nice", "cpu_nice"),
        ("%iowait", "cpu_iowait"),
        ("%steal", "cpu_steal"),
        ("%idle", "cpu_idle"),
    ):
        prev, cur = raw[sar_name]
        assert between(b[ours], prev, a[ours]) and between(b[ours], cur, a[ours]), sar_name
    # sar's %system is the kernel's system + irq + softirq time
    system = ("cpu_system", "cpu_irq", "cpu_softirq")
    for v in raw["%system"]:
        assert between(sum(b[x] for x in system), v, sum(a[x] for x in system)), "%system"


def test_cpu_time_kinds_bracket_sadc(bracket):
    """sadf -u ALL gives each kind of CPU time apart: user and nice less their guest shares."""
    before, after, sa = bracket
    row = next(r for r in sadf_raw(sa, "-u", "ALL") if r[1:3] == ["CPU", "-1"])
    raw = pairs(row, 3)
    names = cols("node")
    b = dict(zip(names, before["node"][0]))
    a = dict(zip(names, after["node"][0]))
    for sar_name, ours, less in (
        ("%usr", "cpu_user", "cpu_guest"),
        ("%nice", "cpu_nice", "cpu_guest_nice"),
        ("%sys", "cpu_system", None),
        ("%irq", "cpu_irq", None),
        ("%soft", "cpu_softirq", None),
        ("%guest", "cpu_guest", None),
        ("%gnice", "cpu_guest_nice", None),
        ("%steal", "cpu_steal", None),
    ):
        lo = b[ours] - (b[less] if less else 0)
        hi = a[ours] - (a[less] if less else 0)
        for v in raw[sar_name]:
            assert between(lo, v, hi), (sar_name, lo, v, hi)


# A process that spends user time (arithmetic) and system time (copying from /dev/zero), waits
# for a child that does both too, then stops itself: its counters no longer move.
CPU_KINDS = """
import os, signal
def work(n):
    x = 0
    for i in range(n):
        x = (x * 31 + i) % 1000003
    f = os.open("/dev/zero", os.O_RDONLY)
    for _ in range(n // 2000):
        os.read(f, 1 << 20)
    os.close(f)
pid = os.fork()
if pid == 0:
    work(1_500_000)
    os._exit(0)
os.waitpid(pid, 0)
work(3_000_000)
os.kill(os.getpid(), signal.SIGSTOP)
"""


def test_process_user_and_system_time_match_pidstat():
    """The process sampler's utime, stime and its waited-for children's cutime, cstime are
    exactly what pidstat -T CHILD reports (usr-ms, system-ms: the task's plus its children's)."""
    pidstat = need_tool("pidstat", SYSSTAT)
    p = subprocess.Popen([sys.executable, "-c", CPU_KINDS])
    files = ProcFiles("/")
    try:
        deadline = time.monotonic() + 120
        while Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
            assert time.monotonic() < deadline and p.poll() is None, "the workload did not stop"
            time.sleep(0.02)
        s = ProcessSampler(files, roots=lambda: {p.pid})
        s.open()
        out: dict[str, list[list]] = {}
        s.sample(0, out)
        row = dict(zip(cols("proc"), next(r for r in out["proc"] if r[0] == p.pid)))
        text = subprocess.run([pidstat, "-h", "-T", "CHILD", "-p", str(p.pid)],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
    finally:
        files.close()
        p.kill()
        p.wait()
    head = next(ln.split() for ln in text.splitlines() if ln.startswith("#"))
    line = next(ln.split() for ln in text.splitlines() if ln.split()[2:3] == [str(p.pid)])
    got = dict(zip(head[1:], line))
    tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
    assert row["state"] == "T"
    assert all(row[k] > 0 for k in ("utime", "stime", "cutime", "cstime")), row
    assert int(got["usr-ms"]) == round((row["utime"] + row["cutime"]) * tick_ms), (got, row)
    assert int(got["system-ms"]) == round((row["stime"] + row["cstime"]) * tick_ms), (got, row)


def test_disk_counters_bracket_sadc(bracket):
    before, after, sa = bracket
    names = cols("disk")
    b = {r[0]: dict(zip(names, r)) for r in before["disk"]}
    a = {r[0]: dict(zip(names, r)) for r in after["disk"]}
    checked = 0
    for row in sadf_raw(sa, "-d"):
        dev = row[row.index("DEV") + 1]
        if dev not in b:
            continue
        raw = pairs(row, row.index("DEV") + 2)
        for sar_name, ours, scale in (
            ("rkB/s", "read_bytes", 512),
            ("wkB/s", "write_bytes", 512),
            ("rd_ticks", "read_ms", 1),
            ("tot_ticks", "io_ms", 1),
        ):
            for v in raw[sar_name]:
                assert between(b[dev][ours], v * scale, a[dev][ours]), (dev, sar_name)
        checked += 1
    assert checked


def test_network_counters_bracket_sadc(bracket):
    before, after, sa = bracket
    names = cols("net")
    b = {r[0]: dict(zip(names, r)) for r in before["net"]}
    a = {r[0]: dict(zip(names, r)) for r in after["net"]}
    checked = 0
    for row in sadf_raw(sa, "-n", "DEV"):
        iface = row[row.index("IFACE") + 1]
        raw = pairs(row, row.index("IFACE") + 2)
        for sar_name, ours in (
            ("rxkB/s", "rx_bytes"),
            ("txkB/s", "tx_bytes"),
            ("rxpck/s", "rx_packets"),
            ("txpck/s", "tx_packets"),
        ):
            for v in raw[sar_name]:
                assert between(b[iface][ours], v, a[iface][ours]), (iface, sar_name)
        checked += 1
    assert checked >= 2
