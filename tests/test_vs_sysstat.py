"""para's counters against sysstat's, on the live machine (as psutil's tests compare with
free and vmstat): para samples, sadc takes its two samples, para samples again, and every
raw counter sadc stored must lie between para's two readings."""

from __future__ import annotations

import os
import subprocess

import pytest

from para.agent.samplers.base import ProcFiles
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
        ("%nice", "cpu_nice"),
        ("%iowait", "cpu_iowait"),
        ("%steal", "cpu_steal"),
        ("%idle", "cpu_idle"),
    ):
        prev, cur = raw[sar_name]
        assert between(b[ours], prev, a[ours]) and between(b[ours], cur, a[ours]), sar_name


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
