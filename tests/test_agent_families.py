"""The agent's node families on captured /sys and /proc trees and real tool outputs:
InfiniBand, RAPL, NFS, Lustre, IPMI, FlexLM licenses, perf event sets, GPU per process."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from para.agent.loop import SamplingLoop
from para.agent.samplers.base import ProcFiles, Unavailable
from para.agent.samplers.command import PeriodicCommand
from para.agent.samplers.gpuproc import GpuProcessSampler
from para.agent.samplers.infiniband import InfinibandSampler, parse_counter, parse_rate
from para.agent.samplers.ipmi import IpmiSampler, parse_dcmi_power, parse_sdr_watts
from para.agent.samplers.licenses import LicenseSampler, parse_lmstat
from para.agent.samplers.lustre import LustreSampler, fs_name, parse_llite_stats
from para.agent.samplers.nfs import NfsSampler, parse_mountstats
from para.agent.samplers.perfsets import JobPerfSampler, choose_events, cpu_id
from para.agent.samplers.perfstat import SEP, parse_line
from para.agent.samplers.rapl import RaplSampler
from para.formats.schema import TABLES

from .conftest import FIXTURES, PROCFS
from .nvml_replay import _sections, from_capture

AGENT = FIXTURES / "agent"
LMSTAT = FIXTURES / "lmstat"
IPMI = FIXTURES / "ipmitool"


def width(table: str) -> int:
    return len(TABLES[table].columns) - 1


def one_sample(sampler, t_ms: int = 1000) -> dict:
    out: dict = {}
    sampler.sample(t_ms, out)
    return out


def named(table: str, row: list) -> dict:
    return dict(zip([c.name for c in TABLES[table].columns][1:], row, strict=True))


# -- InfiniBand ----------------------------------------------------------------------------


def test_infiniband_ports_of_three_hcas():
    s = InfinibandSampler(ProcFiles(AGENT / "prometheus-procfs"))
    facts = s.open()
    ports = {p["port"]: p for p in facts["ports"]}
    assert set(ports) == {"hfi1_0:1", "mlx4_0:1", "mlx4_0:2", "mlx5_0:1"}
    assert ports["mlx5_0:1"]["rate"] == "25 Gb/sec (1X EDR)"
    out = one_sample(s)
    rows = {r[0]: named("ib", r) for r in out["ib"]}
    assert all(len(r) == width("ib") for r in out["ib"])
    mlx5 = rows["mlx5_0:1"]
    # port_rcv_data counts 4-byte words
    raw = int((AGENT / "prometheus-procfs/sys/class/infiniband/mlx5_0/ports/1/counters/"
               "port_rcv_data").read_text())  # fmt: skip
    assert mlx5["rcv_bytes"] == 4 * raw
    assert mlx5["state"] == 4 and mlx5["rate_gbps"] == 25.0
    assert mlx5["out_of_buffer"] is not None  # hw_counters of an RDMA NIC
    assert rows["hfi1_0:1"]["out_of_buffer"] is None  # Omni-Path has none


def test_infiniband_prefers_64_bit_counters_and_skips_na():
    s = InfinibandSampler(ProcFiles(AGENT / "node_exporter"))
    s.open()
    rows = {r[0]: named("ib", r) for r in one_sample(s)["ib"]}
    base = AGENT / "node_exporter/sys/class/infiniband/mlx4_0/ports/1"
    assert rows["mlx4_0:1"]["rcv_bytes"] == 4 * int(
        (base / "counters_ext/port_rcv_data_64").read_text()
    )
    # iWARP: every counter reads "N/A (no PMA)"
    iw = rows["i40iw0:1"]
    assert all(iw[c] is None for c in ("rcv_bytes", "xmit_bytes", "symbol_errors"))
    assert parse_counter(b"N/A (no PMA)\n") is None
    assert parse_counter(b"9223372036854775807\n") == (1 << 63) - 1
    assert parse_counter(b"18446744073709551615") is None  # past int64: not stored
    assert parse_rate(b"100 Gb/sec (4X EDR)\n") == 100.0


def test_absent_family_is_unavailable_once_and_not_retried(tmp_path):
    s = InfinibandSampler(ProcFiles(tmp_path))
    calls = []
    s.sample = lambda t, out: calls.append(t)  # type: ignore[method-assign]
    loop = SamplingLoop([s], lambda t, rows: None, 0.01)
    status = loop.open()
    assert status["infiniband"].state == "unavailable"
    assert "no InfiniBand" in status["infiniband"].reason
    for _ in range(5):
        loop.sample_once()
    assert calls == []  # never asked again while running
    # ... until the reprobe finds it (a driver loaded later)
    (tmp_path / "sys/class").mkdir(parents=True)
    os.symlink(AGENT / "prometheus-procfs/sys/class/infiniband", tmp_path / "sys/class/infiniband")
    assert loop.reprobe() == ["infiniband"]
    loop.sample_once()
    assert calls and loop.status["infiniband"].state == "ok"
    loop.close()


# -- RAPL ----------------------------------------------------------------------------------


def test_rapl_zones_and_names():
    s = RaplSampler(ProcFiles(AGENT / "prometheus-procfs"))
    facts = s.open()
    assert [z["zone"] for z in facts["zones"]] == ["package-0", "package-0/core", "package-10"]
    rows = {r[0]: r for r in one_sample(s)["energy"]}
    assert rows["package-0"] == ["package-0", 240422366267, 262143328850]
    assert rows["package-0/core"][1] == 118821284256


class _Denied(ProcFiles):
    """/sys as an unprivileged user sees it since Linux 5.10: energy_uj mode 0400."""

    def read(self, rel: str) -> bytes:
        if rel.endswith("energy_uj"):
            raise PermissionError(13, "Permission denied", rel)
        return super().read(rel)


def test_rapl_readable_by_root_only():
    with pytest.raises(Unavailable, match="root only"):
        RaplSampler(_Denied(AGENT / "prometheus-procfs")).open()


def test_no_rapl_is_unavailable(tmp_path):
    with pytest.raises(Unavailable, match="no RAPL"):
        RaplSampler(ProcFiles(tmp_path)).open()


# -- NFS -----------------------------------------------------------------------------------


def test_nfs_mountstats_of_three_mounts():
    data = (AGENT / "node_exporter/proc/10/mountstats").read_bytes()
    mounts = {m.mount: m for m in parse_mountstats(data)}
    assert set(mounts) == {"/mnt/nfs/test", "/mnt/nfs/test-dupe"}  # the later mount is visible
    tcp = mounts["/mnt/nfs/test"]
    assert tcp.bytes[0] == 1207640230 and tcp.bytes[4] == 1210214218
    assert tcp.proto == "tcp" and tcp.xprt == [6428, 6428, 0, 12154, 0]
    assert tcp.ops["READ"] == [1298, 1298, 0, 207680, 1210292152, 6, 79386, 79407, None]
    udp = mounts["/mnt/nfs/test-dupe"]
    assert udp.fstype == "nfs" and udp.proto == "udp" and udp.xprt == [6428, 6428, 0, 12154, 0]
    # a value past 2^63 (in the upstream capture) is not stored rather than overflowing
    assert udp.ops["ACCESS"][5] is None and udp.ops["ACCESS"][0] == 2927395007


def test_nfs_sampler_rows():
    # the capture is proc/26231/mountstats; the sampler reads proc/self/mountstats
    files = ProcFiles(AGENT / "prometheus-procfs")
    s = NfsSampler(files)
    s.files = _Redirect(files, {"proc/self/mountstats": "proc/26231/mountstats"})  # type: ignore[assignment]
    facts = s.open()
    assert facts["mounts"][0]["type"] == "nfs4"
    out = one_sample(s)
    assert all(len(r) == width("nfs") for r in out["nfs"])
    assert all(len(r) == width("nfs_ops") for r in out["nfs_ops"])
    ops = {r[1] for r in out["nfs_ops"]}
    assert "READ" in ops and "NULL" not in ops  # operations never called are left out


def test_no_nfs_mount_is_unavailable(tmp_path):
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/mountstats").write_text(
        "device /dev/sda1 mounted on / with fstype ext4\n"
    )
    with pytest.raises(Unavailable, match="no NFS"):
        NfsSampler(ProcFiles(tmp_path)).open()


class _Redirect:
    """ProcFiles reading one path from another (a capture of another pid's file)."""

    def __init__(self, files: ProcFiles, alias: dict[str, str]):
        self.files, self.alias = files, alias

    def read(self, rel: str) -> bytes:
        return self.files.read(self.alias.get(rel, rel))

    def read_once(self, rel: str) -> bytes:
        return self.files.read_once(self.alias.get(rel, rel))


# -- Lustre (written from the manual: see tests/fixtures/lustre/SOURCES.md) ------------------


def test_lustre_old_and_new_formats():
    old = parse_llite_stats(
        (FIXTURES / "lustre/old/proc/fs/lustre/llite/scratch-ffff88103a0a5000/stats").read_bytes()
    )
    assert old["read_bytes"] == (36502963, 55488794)
    assert old["open"] == (3304805, None)
    s = LustreSampler(ProcFiles(FIXTURES / "lustre/old"))
    assert s.open()["filesystems"][0]["fs"] == "scratch"
    row = named("lustre", one_sample(s)["lustre"][0])
    assert row["read_bytes"] == 55488794 and row["writes"] == 22985001 and row["fsync"] == 963
    assert row["getattr"] is None  # that version does not count it
    new = LustreSampler(ProcFiles(FIXTURES / "lustre/new"))
    assert [f["fs"] for f in new.open()["filesystems"]] == ["home", "work"]
    rows = {r[0]: named("lustre", r) for r in one_sample(new)["lustre"]}
    assert rows["home"]["read_bytes"] == 629145600 and rows["home"]["reads"] == 1200
    assert rows["home"]["getattr"] == 5120 and rows["work"]["read_bytes"] is None
    assert fs_name("scratch-ffff88103a0a5000", ["scratch-ffff88103a0a5000", "scratch-ffff8810"
                   "3a0a6000"]) == "scratch-ffff88103a0a5000"  # fmt: skip
    with pytest.raises(ValueError, match="line 2"):
        parse_llite_stats(b"snapshot_time 1.0 secs.usecs\nopen lots samples [regs]\n")


def test_no_lustre_is_unavailable(tmp_path):
    with pytest.raises(Unavailable, match="no Lustre"):
        LustreSampler(ProcFiles(tmp_path)).open()


# -- IPMI ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, watts, state",
    [
        ("activated-2017-issue-lovoo-ipmi_exporter-18", (215, 162, 276, 176), "activated"),
        ("activated-2022-issue-radiorabe-rabe-zabbix-101", (197, 175, 242, 190), "activated"),
        ("deactivated-360w-openbmc-ampere-issue-phosphor-host-ipmid-167", (360,) * 4,
         "deactivated"),
        ("deactivated-zero-openbmc-ampere-issue-phosphor-host-ipmid-167", (0,) * 4,
         "deactivated"),
        ("missing-newline-after-timestamp-windows-issue-home-assistant-addons-38",
         (186, 129, 386, 198), "activated"),
        ("unindented-2016-telegraf-test", (167, 124, 422, 156), "activated"),
    ],
)  # fmt: skip
def test_dcmi_power_readings(name, watts, state):
    r = parse_dcmi_power((IPMI / f"ipmitool-dcmi-power-reading-{name}.txt").read_text())
    assert (r["watts"], r["min_watts"], r["max_watts"], r["avg_watts"]) == watts
    assert r["state"] == state


def test_sdr_watts():
    assert parse_sdr_watts((IPMI / "ipmitool-sdr-r740v1-datakit.txt").read_text()) == [
        ("Pwr Consumption", 208.0)
    ]
    assert parse_sdr_watts((IPMI / "ipmitool-sdr-elist-r740v2-datakit.txt").read_text()) == [
        ("Pwr Consumption", 208.0)
    ]
    with pytest.raises(ValueError, match="Instantaneous"):
        parse_dcmi_power("Error: no response from BMC\n")


def fake_tool(tmp_path: Path, name: str, body: str) -> str:
    p = tmp_path / name
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(p.stat().st_mode | stat.S_IEXEC)
    return str(p)


def wait_rows(sampler, table: str, timeout: float = 10.0) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        out = one_sample(sampler)
        if out.get(table):
            return out
        time.sleep(0.02)
    raise AssertionError(f"no {table} rows within {timeout} s")


def test_ipmi_sampler_runs_ipmitool(tmp_path):
    tool = fake_tool(
        tmp_path, "ipmitool", f'cat "{IPMI}/ipmitool-dcmi-power-reading-activated-2022-issue-'
        'radiorabe-rabe-zabbix-101.txt"\n'
    )  # fmt: skip
    s = IpmiSampler(tool, ["dcmi", "power", "reading"], every_s=60, timeout_s=5)
    assert s.open()["command"][1:] == ["dcmi", "power", "reading"]
    out = wait_rows(s, "ipmi_power")
    assert out["ipmi_power"] == [["dcmi", 197.0, 175.0, 242.0, 190.0]]
    assert one_sample(s) == {}  # the next reading is due in 60 s, nothing runs meanwhile
    s.close()


def test_a_hung_tool_is_killed_and_the_family_fails(tmp_path):
    tool = fake_tool(tmp_path, "ipmitool", "sleep 30\n")
    s = IpmiSampler(tool, ["dcmi", "power", "reading"], every_s=60, timeout_s=0.3)
    s.open()
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="did not finish within"):
        while time.monotonic() - t0 < 10:
            one_sample(s)  # never blocks: the command runs on its own
            time.sleep(0.05)
    assert s.runner is not None and s.runner.timeouts == 1 and s.runner.proc is None
    s.close()


def test_missing_tool_is_unavailable():
    with pytest.raises(Unavailable, match="ipmitool"):
        IpmiSampler("no-such-ipmitool-here", ["dcmi"], 10, 5).open()


def test_periodic_command_never_waits(tmp_path):
    """poll() starts the command and returns: the command here cannot end before the test
    opens its gate, so a poll() that waited for it would get its exit status 3, not None."""
    gate = tmp_path / "gate"
    code = (
        "import os, sys, time\nend = time.monotonic() + 60\n"
        f"while not os.path.exists({str(gate)!r}):\n"
        "    if time.monotonic() > end: sys.exit(3)\n"
        "    time.sleep(0.01)\n"
        "print(42)"
    )
    cmd = PeriodicCommand([sys.executable, "-c", code], 60, 120)
    try:
        assert cmd.poll() is None  # started, not waited for
        assert cmd.pid is not None and Path(f"/proc/{cmd.pid}").exists()
        gate.touch()
        deadline = time.monotonic() + 60
        while (run := cmd.poll()) is None:
            assert time.monotonic() < deadline, "the command did not end within 60 s"
            time.sleep(0.02)
        assert run.returncode == 0 and run.stdout.strip() == "42" and not run.timed_out
    finally:
        cmd.close()


# -- FlexLM licenses -----------------------------------------------------------------------


def test_lmstat_three_server_quorum():
    st = parse_lmstat((LMSTAT / "flexlm_exporter-lmstat_app1.txt").read_text())
    assert st.servers_up == ["host-1.domain.net", "host2.domain.net", "host3.domain.net"]
    assert st.vendors == {"VENDOR1": "UP"}
    f = {x.name: x for x in st.features}
    assert (f["feature1"].issued, f["feature1"].in_use) == (1814, 1206)
    assert f["feature1"].reserved == 1 + 10 + 48 + 8 + 8 + 7 + 8 + 10 + 8 + 8 + 16
    assert f["feature1"].users[("user2", "server0161")] == 16
    assert f["feature5"].queued == 2  # two `queued for 1 license` lines
    assert f["feature100"].users[("user13", "server0356")] == 1  # no count: one license


def test_lmstat_variants():
    down = parse_lmstat((LMSTAT / "flexlm_exporter-lmstat_server_down.txt").read_text())
    assert down.servers_down[0][0] == "host3" and "Cannot connect" in down.servers_down[0][1]
    comsol = parse_lmstat((LMSTAT / "flexlm_exporter-lmstat_app4.txt").read_text())
    serial = next(x for x in comsol.features if x.name == "SERIAL")
    assert serial.issued is None and serial.in_use == 1  # uncounted, node-locked
    assert any("unsupported by licensed server" in e for e in comsol.errors)
    synopsys = parse_lmstat((LMSTAT / "flexlm_exporter-lmstat_app7.txt").read_text())
    apex = next(x for x in synopsys.features if x.name == "TCM-1-Apex-Pkg")
    assert apex.vendor == "snpslmd" and apex.users == {("user2", "host-01"): 2}
    bad = parse_lmstat((LMSTAT / "license-manager-flexlm-output-bad-fragment.txt").read_text())
    assert not bad.features and "Connection refused" in bad.errors[0]
    for name in ("flexlm_exporter-lmstat_i_app1.txt", "flexlm_exporter-lmstat_new.txt"):
        assert parse_lmstat((LMSTAT / name).read_text()).features == []


def test_license_sampler_polls_each_server(tmp_path):
    body = (
        'case "$4" in\n'
        f'  27002@up) cat "{LMSTAT}/flexlm_exporter-lmstat_app7.txt" ;;\n'
        f'  *) cat "{LMSTAT}/license-manager-flexlm-output-bad-fragment.txt"; exit 1 ;;\n'
        "esac\n"
    )
    tool = fake_tool(tmp_path, "lmutil", body)
    s = LicenseSampler(["27002@up", "27003@down"], tool, every_s=60, timeout_s=10, users=True)
    s.open()
    out: dict = {}
    end = time.monotonic() + 10
    while time.monotonic() < end and len({e[3] for e in out.get("events", [])}) < 1:
        s.sample(1000, out)
        time.sleep(0.02)
    while time.monotonic() < end and not out.get("license"):
        s.sample(1000, out)
        time.sleep(0.02)
    lic = {(r[0], r[1]): r for r in out["license"]}
    assert lic[("27002@up", "DC-Expert")][2:] == [5, 1, 0, 0, "snpslmd"]
    assert ["27002@up", "TCM-1-Apex-Pkg", "user2", "host-01", 2] in out["license_use"]
    downs = [e for e in out.get("events", []) if e[1] == "license_server_down"]
    assert [e[3] for e in downs] == ["27003@down"]
    assert "Connection refused" in json.loads(downs[0][4])["reason"]
    assert s.metadata()["servers"]["27002@up"] == "ok"
    s.close()


# -- perf: event sets per CPU family, counting per job cgroup --------------------------------

ICELAKE = b"vendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 106\nmodel name\t: Xeon 6326\n\n"
EPYC = (PROCFS / "vm-amd-epyc-2cpu/proc/cpuinfo").read_bytes()


def test_event_sets_follow_the_cpu_and_what_perf_lists(tmp_path):
    assert cpu_id(ICELAKE).kind == "intel" and cpu_id(EPYC).kind == "amd-zen"
    listed = {
        "cycles",
        "instructions",
        "ref-cycles",
        "fp_arith_inst_retired.scalar_double",
        "fp_arith_inst_retired.256b_packed_double",
    }
    pmus = tmp_path / "devices"
    (pmus / "uncore_imc_0/events").mkdir(parents=True)
    (pmus / "uncore_imc_0/events/cas_count_read").write_text("event=0x04,umask=0x03\n")
    (pmus / "uncore_imc_0/events/cas_count_write").write_text("event=0x04,umask=0x0c\n")
    intel = choose_events(ICELAKE, listed, pmus, extra=["L1-dcache-load-misses"])
    assert intel.events == [
        "cycles",
        "instructions",
        "ref-cycles",
        "fp_arith_inst_retired.scalar_double",
        "fp_arith_inst_retired.256b_packed_double",
        "uncore_imc/cas_count_read/",
        "uncore_imc/cas_count_write/",
        "L1-dcache-load-misses",
    ]
    per_job = choose_events(ICELAKE, listed, pmus, per_cgroup=True)
    assert "uncore_imc/cas_count_read/" not in per_job.events  # uncore is node-wide only
    # this VM: an EPYC whose perf lists no FP event and no data-fabric PMU
    amd = choose_events(EPYC, {"cycles", "instructions"}, tmp_path / "none")
    assert amd.events == ["cycles", "instructions"]
    assert set(amd.missing) == {"flops", "memory_bandwidth"}
    zen = choose_events(EPYC, {"cycles", "instructions", "fp_ret_sse_avx_ops.all"}, None)
    assert zen.groups["flops"] == ["fp_ret_sse_avx_ops.all"]


def test_per_job_counters_command_and_rows():
    jobs = {"4": "/system.slice/slurmstepd.scope/job_4"}
    s = JobPerfSampler(["cycles", "instructions"], lambda: jobs, 1000, "perf")
    s.cgroups = {"system.slice/slurmstepd.scope/job_4": "4"}
    cmd = s.command("perf")
    assert cmd[cmd.index("--for-each-cgroup") + 1] == "system.slice/slurmstepd.scope/job_4"
    assert "-a" in cmd and cmd[cmd.index("-x") + 1] == SEP
    line = SEP.join(
        ["     1.000187561", "1234567", "", "cycles", "system.slice/slurmstepd.scope/job_4",
         "1000156000", "100.00", "", ""]
    )  # fmt: skip
    row = parse_line(line, SEP, cgroups=True)
    assert row is not None and row.cgroup == "system.slice/slurmstepd.scope/job_4"
    assert row.value == 1234567 and row.event == "cycles" and row.running_pct == 100.0
    assert parse_line(line, SEP) is None  # without -G the cgroup column is not a count line
    s._anchor_ms = 1_000_000.0
    s._queue.append((1_001_000, row, False))
    s._exe = None  # no perf here: sample() must not start one
    out: dict = {}
    s.sample(1_001_000, out)
    assert out["job_counters"] == [[1_001_000, "4", "cycles", 1234567.0, 100]]


# -- GPU per process -----------------------------------------------------------------------

H100 = FIXTURES / "nvidia-smi" / (
    "nvidia-smi-capture-linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01-nvidia_gpu_exporter.txt"
)  # fmt: skip


def pmon_samples(phase: str) -> list[SimpleNamespace]:
    """The `nvidia-smi pmon` lines of the capture as NVML per-process samples."""
    out = []
    for k, line in enumerate(_sections(H100)[f"{phase} :: pmon (per-process monitor)"]):
        f = line.split()
        if not f or f[0].startswith("#") or f[1] == "-" or f[3] == "-":
            continue
        out.append(
            SimpleNamespace(
                pid=int(f[1]),
                timeStamp=1_000_000 + k,
                smUtil=int(f[3]),
                memUtil=int(f[4]),
                encUtil=0 if f[5] == "-" else int(f[5]),
                decUtil=0 if f[6] == "-" else int(f[6]),
            )
        )
    return out


def test_gpu_utilisation_per_process():
    replay = from_capture(H100, "load")
    samples = pmon_samples("load")
    seen = []

    def utilization(handle, since):
        seen.append(since)
        return [s for s in samples if s.timeStamp > since]

    replay.nvmlDeviceGetProcessUtilization = utilization
    s = GpuProcessSampler(replay)
    facts = s.open()
    assert facts["process_utilization"] == "nvmlDeviceGetProcessUtilization"
    out = one_sample(s)
    assert out["gpu_proc_util"] == [["0", 11345, 99, 10, 0, 0]]  # gpu_burn; memhog has no SM use
    assert {r[1] for r in out["gpu_proc"]} == {11327, 11328, 11345}
    out2 = one_sample(s, 2000)
    assert "gpu_proc_util" not in out2  # no new samples since the newest one seen
    assert seen[1] == max(x.timeStamp for x in samples)
    s.close()


def test_gpu_utilisation_unsupported_is_said_once():
    import pynvml

    replay = from_capture(H100, "idle")

    def unsupported(handle, since):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    replay.nvmlDeviceGetProcessUtilization = unsupported
    notes: list[str] = []
    s = GpuProcessSampler(replay, on_message=notes.append)
    s.open()
    one_sample(s)
    one_sample(s)
    assert len([n for n in notes if "per-process utilisation" in n]) == 1
    s.close()


def test_a_hung_network_filesystem_never_stops_the_others(monkeypatch, tmp_path):
    """statvfs of a dead NFS server never returns: its family answers late, is marked failing,
    and the local filesystems and every other family keep their rhythm."""
    import threading

    from para.agent.samplers import fs as fsmod
    from para.agent.samplers.fsremote import LocalFsSampler, RemoteFsSampler

    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/mountinfo").write_text(
        "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n"
        "40 22 0:50 / /home rw,relatime - nfs4 srv:/home rw,vers=4.2\n"
    )
    (tmp_path / "home").mkdir()
    release = threading.Event()
    watchdog = threading.Timer(30, release.set)  # a regression fails the test, not hangs it
    watchdog.start()
    real = os.statvfs

    def statvfs(path):  # type: ignore[no-untyped-def]
        if str(path).endswith("/home"):
            release.wait()  # the server does not answer
        return real(path)

    monkeypatch.setattr(fsmod.os, "statvfs", statvfs)
    files = ProcFiles(tmp_path)
    local, remote = LocalFsSampler(files), RemoteFsSampler(files)
    records: list[dict] = []
    loop = SamplingLoop([local, remote], lambda t, rows: records.append(rows), 0.05)
    status = loop.open()
    assert status["fs"].state == "ok" and status["fs_remote"].state == "ok"
    for _ in range(4):
        loop.sample_once()
    hung = not release.is_set()  # the samples were taken while the server still hung
    release.set()
    watchdog.cancel()
    assert hung
    assert all(r["fs"] and r["fs"][0][0] == "/" for r in records)  # local: every sample
    assert loop.status["fs_remote"].state == "failing"
    assert "no answer" in loop.status["fs_remote"].reason
    assert loop.status["fs_remote"].late >= 3  # its worker was still busy at later samples
    loop.close()
