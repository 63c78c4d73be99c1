"""Issue 14, Prometheus: what `/metrics` serves passes Prometheus' own linter (`promtool check
metrics`), and its counters are the node's cumulative counters in base units, read from the
real recording of tests/fixtures/collector (the agent's and the collector's exposition, built
by their own code).  The real Prometheus server scraping a real agent and collector is
tests/test_prometheus_e2e.py."""

from __future__ import annotations

import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families as parse_text

from para.formats import ParaFile
from para.live import openmetrics
from para.live.metrics import HOST_METRICS, LAYOUTS, NOT_WHOLE_DISK, HostState
from para.live.view import LiveView
from tests.conftest import REPO, need_tool
from tests.live_support import VM_RECORDING, samples_from_para

pytestmark = pytest.mark.no_kernel

PROMTOOL_HINT = "apt install prometheus (Debian's package ships promtool; make system-deps)"


def _clock_ticks() -> int:
    with ParaFile(VM_RECORDING) as pf:
        return int(pf.meta["host"]["clock_ticks"])


HZ = _clock_ticks()  # USER_HZ of the recording's node, as its agent wrote it in the file


def _job_rows(job: str, utime: int) -> list:
    lay = LAYOUTS["job"]
    row: list = [None] * len(lay.cols)
    row[lay.index["job"]], row[lay.index["procs"]] = job, 3
    row[lay.index["utime"]], row[lay.index["stime"]] = utime, utime // 4
    row[lay.index["rss_bytes"]], row[lay.index["cpus"]] = 123456789, 2
    row[lay.index["read_bytes"]], row[lay.index["write_bytes"]] = 4096 * utime, 512 * utime
    return [row]


@pytest.fixture(scope="module")
def recording():
    samples = samples_from_para()[300:304]
    out = []
    for i, (t, rows) in enumerate(samples):
        ev = []
        if i == 0:
            ev = [[t, "job_start", None, "4711", '{"user": "alice", "job_name": "train"}']]
        out.append((t, dict(rows, job=_job_rows("4711", 1000 + 150 * i), events=ev)))
    return out


@pytest.fixture(scope="module")
def agent_snapshot(recording):
    hs = HostState("cn01", user_hz=HZ)
    snap = None
    for t, rows in recording:
        snap = hs.update(t, rows)
    return snap


def _promtool(text: str) -> subprocess.CompletedProcess[str]:
    tool = need_tool("promtool", PROMTOOL_HINT)
    return subprocess.run(
        [tool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )


def _values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in parse_text(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_promtool_accepts_the_agents_metrics(agent_snapshot):
    fams = openmetrics.node_families([agent_snapshot])
    fams.append(openmetrics.alert_family([{"rule": "busy", "severity": "warning"}]))
    fams += openmetrics.agent_families("cn01", {"samples": 42, "missed_ticks": 0})
    text = openmetrics.render(fams)
    r = _promtool(text)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout + r.stderr == ""  # no lint warning either


def test_promtool_accepts_the_collectors_metrics(recording):
    view = LiveView(clock=lambda: recording[-1][0] / 1000)
    for host in ("cn01", "cn02"):
        for t, rows in recording:
            view.add(host, t, rows, t / 1000)
    fams = view.families("hpc")
    fams.append(openmetrics.Family("para_collector_live_samples_total", "counter", "samples",
                                   samples=[({}, 8.0)]))  # fmt: skip
    text = openmetrics.render(fams)
    r = _promtool(text)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout + r.stderr == ""
    got = _values(text)
    cn02 = (("cluster", "hpc"), ("host", "cn02"))
    assert ("para_node_cpu_seconds_total", (*cn02, ("mode", "user"))) in got
    assert ("para_node_last_sample_age_seconds", cn02) in got


def test_counters_are_the_recordings_in_base_units(recording, agent_snapshot):
    """Every node counter served equals the last sample's cumulative counter (ticks / USER_HZ
    in seconds, ms in seconds, bytes as bytes), read here from the recording's rows."""
    text = openmetrics.render(openmetrics.node_families([agent_snapshot]))
    got = _values(text)
    t, rows = recording[-1]
    node = dict(zip(LAYOUTS["node"].cols, rows["node"][0]))
    mem = dict(zip(LAYOUTS["memory"].cols, rows["memory"][0]))
    h = (("host", "cn01"),)
    for mode in ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"):
        key = ("para_node_cpu_seconds_total", (*h, ("mode", mode)))
        assert got[key] == pytest.approx(node[f"cpu_{mode}"] / HZ, rel=1e-12)
    assert got[("para_node_memory_major_faults_total", h)] == mem["pgmajfault"]
    assert got[("para_node_swap_pages_total", (("direction", "in"), *h))] == mem["pswpin"]
    assert got[("para_node_swap_pages_total", (("direction", "out"), *h))] == mem["pswpout"]
    assert got[("para_node_swap_size_bytes", h)] == mem["swap_total"]
    assert got[("para_node_mem_used_bytes", h)] == mem["mem_total"] - mem["mem_available"]
    net = LAYOUTS["net"]
    ifaces = [dict(zip(net.cols, r)) for r in rows["net"]]
    assert ifaces and any(i["iface"] != "lo" for i in ifaces)
    for i in ifaces:
        d = (("device", i["iface"]), *h)
        if i["iface"] == "lo":
            assert ("para_node_network_receive_bytes_total", d) not in got
            continue
        assert got[("para_node_network_receive_bytes_total", d)] == i["rx_bytes"]
        assert got[("para_node_network_transmit_bytes_total", d)] == i["tx_bytes"]
        assert got[("para_node_network_errors_total", d)] == i["rx_errs"] + i["tx_errs"]
        assert got[("para_node_network_drops_total", d)] == i["rx_drop"] + i["tx_drop"]
    disk = LAYOUTS["disk"]
    disks = [dict(zip(disk.cols, r)) for r in rows["disk"]]
    whole = [d for d in disks if not NOT_WHOLE_DISK.search(d["device"])]
    assert whole
    for d in disks:
        k = (("device", d["device"]), *h)
        if d not in whole:
            assert ("para_node_disk_read_bytes_total", k) not in got
            continue
        assert got[("para_node_disk_read_bytes_total", k)] == d["read_bytes"]
        assert got[("para_node_disk_written_bytes_total", k)] == d["write_bytes"]
        assert got[("para_node_disk_reads_completed_total", k)] == d["reads"]
        assert got[("para_node_disk_io_time_seconds_total", k)] == pytest.approx(d["io_ms"] / 1000)
    job = dict(zip(LAYOUTS["job"].cols, rows["job"][0]))
    j = (("host", "cn01"), ("job_id", "4711"))
    assert got[("para_job_cpu_seconds_total", j)] == pytest.approx(
        (job["utime"] + job["stime"]) / HZ
    )
    assert got[("para_job_read_bytes_total", j)] == job["read_bytes"]
    assert got[("para_node_job_info", (*j, ("job_name", "train"), ("user", "alice")))] == 1


def test_no_one_second_rates_are_served(agent_snapshot):
    """A rate or a share of the last second, scraped every 15 s, is one second in fifteen:
    what is served is counters (rate() in PromQL) and states."""
    text = openmetrics.render(openmetrics.node_families([agent_snapshot]))
    names = {k[0] for k in _values(text)}
    assert not [n for n in names if n.endswith(("_per_second", "_percent", "_per_s"))]
    assert "para_node_cpu_busy_percent" not in names and "para_job_cpu_cores" not in names


def test_every_host_value_is_served_or_derived_in_promql():
    """A host value is either served (a state, a gauge) or computed in PromQL from what is
    served (openmetrics.FROM_COUNTERS; tests/test_prometheus_e2e.py runs each on Prometheus)."""
    served = set(openmetrics.NODE_GAUGES)
    derived = set(openmetrics.FROM_COUNTERS)
    assert not served & derived
    missing = set(HOST_METRICS) - served - derived
    assert not missing, f"host values neither served nor derived: {sorted(missing)}"


def test_user_hz_from_counters(recording):
    """Where the node's USER_HZ is not told (the collector), its counters say it."""
    hs = HostState("cn01")
    for t, rows in recording:
        hs.update(t, rows)
    assert hs.user_hz == HZ


def test_gpu_families_from_recorded_nvml_answers(recording):
    """An H100 under load as nvidia-smi recorded it (tests/fixtures/nvidia-smi), sampled by the
    agent's GPU sampler through the NVML stand-in: the per-GPU gauges in base units, and
    which job uses the GPU (its processes are the job's), past promtool."""
    from para.agent.samplers.gpu import GpuSampler
    from tests.nvml_replay import MiB, from_capture
    from tests.test_gpu import H100

    sampler = GpuSampler(from_capture(H100, "load"))
    sampler.open()
    hs = HostState("gpu01", user_hz=HZ)
    proc = LAYOUTS["proc"]
    snap = None
    for t, rows in recording:
        gpu_rows: dict = {}
        sampler.sample(t, gpu_rows)
        procs = []
        for _, pid, _ in gpu_rows["gpu_proc"][:2]:  # two of its processes belong to job 4711
            r: list = [None] * len(proc.cols)
            r[proc.index["pid"]], r[proc.index["job"]] = pid, "4711"
            procs.append(r)
        snap = hs.update(t, dict(rows, **gpu_rows, proc=procs))
    text = openmetrics.render(openmetrics.node_families([snap]))
    r = _promtool(text)
    assert r.returncode == 0 and not (r.stdout + r.stderr), r.stdout + r.stderr
    got = _values(text)
    g = (("gpu", "0"), ("host", "gpu01"))
    assert got[("para_gpu_utilization_ratio", g)] == 1.0  # nvidia-smi: 100 %
    assert got[("para_gpu_memory_used_bytes", g)] == 19818 * MiB
    assert got[("para_gpu_power_watts", g)] == pytest.approx(631.95)
    assert ("para_gpu_temperature_celsius", g) in got
    assert got[("para_gpu_job_info", (*g, ("job_id", "4711")))] == 1
    assert got[("para_node_gpus", (("host", "gpu01"),))] == 1
    # NVML's energy counter is in no capture: no energy series rather than a wrong one
    assert not [k for k in got if k[0] == "para_gpu_energy_joules_total"]


def test_the_promql_of_every_host_value_is_documented():
    doc = (REPO / "docs" / "prometheus.md").read_text()
    missing = [k for k, expr in openmetrics.FROM_COUNTERS.items() if f"`{expr}`" not in doc]
    assert not missing, f"docs/prometheus.md lacks the PromQL of {missing}"
