"""Issue 14, Prometheus done the Prometheus way, end to end with the real servers: a real
`para agent run` (1 Hz, its live stream to a real `para collector serve`, /metrics on) and a
batch job burning a core, scraped every second by two real Prometheus servers started here,
one scraping the agent and one the collector (a site scrapes one or the other, never both:
docs/prometheus.md).  Through Prometheus' HTTP API:

- the counters it stored are the agent's own, value for value (its .para recording);
- `rate()` of them over 30 s is what the agent measured each second over the samples the
  window's scrapes served (its per-second host values, replayed from the recording, as rate()
  extrapolates them: within 5 % + 0.005; CI once saw a collector's disk writes 28 % under an
  estimate that assumed a scrape lags a sample by at most 3 s), the node's CPU
  seconds and the job's as /proc/stat and the job's /proc/PID/stat say, read by this test
  every 0.2 s (within 5 % + 0.02 CPUs, and 10 % + 0.05 cores).  The window those kernel rates
  are taken over is shifted by -3..+1 s, since a scrape sees a sample up to ~2 s after it was
  taken (measured: 0.03 s from the agent, 0.9 s from the collector at a 0.5 s live push);
- every PromQL expression of the Grafana dashboard (packaging/grafana/para.json) and of
  openmetrics.FROM_COUNTERS runs, with data;
- `promtool check metrics` passes on what both endpoints serve.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from para.live import openmetrics
from para.live.metrics import LAYOUTS, HostState
from tests.collector_support import REPO, CollectorProcess, make_pki, wait_for
from tests.conftest import SERVICES, _children, need_tool, stop
from tests.live_support import samples_from_para
from tests.prometheus_support import HINT, PrometheusServer

pytestmark = pytest.mark.slow

HOST = "promnode"
JOB_ID = f"14{os.getpid()}"  # other suites run real Slurm jobs on this machine: ours is unique
W = 30.0  # the window of rate() in the checks, seconds
LAG = (-3.0, -2.0, -1.0, 0.0, 1.0)  # a scrape sees a sample up to ~2 s after it was taken
DASHBOARD = REPO / "packaging" / "grafana" / "para.json"
# a rule that always fires, so that para_alerts_active has a series to query
RULES = """
[defaults]
sinks = ["log"]

[[rule]]
name = "node-seen"
metric = "host.cpus"
above = 0
for = "1s"
severity = "info"
"""


_MODULE: set[int] = set()  # the Prometheus servers: they live across the module's tests


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """conftest's guard against child processes outliving a test, but for the servers the
    `run` fixture keeps for the module (and checks are gone at its end)."""
    yield
    # the session's services (a real Slurm another module started) are not leaks either
    left = [c for c in _children(os.getpid()) if int(c.split()[0]) not in _MODULE | SERVICES]
    assert not left, f"child processes left running: {left}"


def _cpu_s(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def _kernel_cpu_s() -> dict[str, float]:
    """The node's CPU seconds by mode, /proc/stat's `cpu` line."""
    f = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    return {m: int(v) / os.sysconf("SC_CLK_TCK") for m, v in zip(MODES, f)}


MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


class KernelClock(threading.Thread):
    """The job's CPU time as its own /proc/PID/stat says, and the node's CPU time by mode as
    /proc/stat says, read by this test every 0.2 s."""

    def __init__(self, pid: int):
        super().__init__(name="test-kernel-clock", daemon=True)
        self.pid = pid
        self.job: list[tuple[float, float]] = []
        self.node: list[tuple[float, dict[str, float]]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.2):
            try:
                self.job.append((time.time(), _cpu_s(self.pid)))
                self.node.append((time.time(), _kernel_cpu_s()))
            except (OSError, IndexError, ValueError):
                return


def _scrape(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        return r.read().decode()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    need_tool("prometheus", HINT)
    tmp = tmp_path_factory.mktemp("prom")
    pki = make_pki(tmp / "pki", [HOST], [])
    (tmp / "alerts.toml").write_text(RULES)
    col = CollectorProcess(
        tmp / "db", pki, "--alerts", str(tmp / "alerts.toml"), "--metrics-listen", "127.0.0.1:0"
    ).start()
    spool = tmp / "spool"
    (tmp / "agent.toml").write_text(
        f"""
[agent]
interval = 1
spool_dir = "{spool}"
host = "{HOST}"
[collector]
url = "grpc+tls://127.0.0.1:{col.port}"
ca_file = "{pki}/ca.crt"
cert_file = "{pki}/issued/{HOST}.crt"
key_file = "{pki}/issued/{HOST}.key"
live = true
live_interval = 0.5
[alerts]
rules = "{tmp / "alerts.toml"}"
[metrics]
listen = "127.0.0.1:0"
"""
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with open(tmp / "agent.log", "wb") as log:
        agent = subprocess.Popen(
            [sys.executable, "-m", "para", "agent", "run", "--config", str(tmp / "agent.toml")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    job: subprocess.Popen[bytes] | None = None
    clock: KernelClock | None = None
    proms: dict[str, PrometheusServer] = {}
    try:
        wait_for(lambda: (spool / "status.json").exists(), timeout=120, what="the agent")
        agent_metrics = wait_for(
            lambda: json.loads((spool / "status.json").read_text())["live"].get("metrics"),
            timeout=60,
            what="the agent's /metrics",
        )
        col_port = json.loads((tmp / "db.port").read_text())["metrics_port"]
        job = subprocess.Popen(
            [sys.executable, "-c", "while True: pass"],
            env=dict(os.environ, SLURM_JOB_ID=JOB_ID, SLURM_JOB_NAME="burn"),
        )
        clock = KernelClock(job.pid)
        clock.start()
        ports = {"agent": int(agent_metrics.rsplit(":", 1)[1]), "collector": col_port}
        for name, port in ports.items():
            proms[name] = PrometheusServer(
                tmp / f"prom-{name}", {f"para-{name}": f"127.0.0.1:{port}"}
            )
            _MODULE.add(proms[name].start().proc.pid)  # type: ignore[union-attr]
        # the job's counter in both, then long enough that the checks' window holds nothing
        # but its samples (rate() extrapolates little past a series' first sample)
        sel = f'para_job_cpu_seconds_total{{job_id="{JOB_ID}"}}'
        for name, prom in proms.items():
            wait_for(
                lambda p=prom: p.query(sel),
                timeout=300,
                step=0.5,
                what=f"the job's counter in the Prometheus scraping the {name}",
            )
        first = time.time()
        while time.time() < first + W + 8:
            time.sleep(1.0)
        for name, prom in proms.items():
            wait_for(
                lambda p=prom: p.query(f"count_over_time({sel}[{W:.0f}s]) >= {W / 2:.0f}"),
                timeout=120,
                step=1.0,
                what=f"{W:.0f} s of the job's counter in the Prometheus scraping the {name}",
            )
        at = time.time() - 3.0  # the checks' instant: the agent goes on past it
        texts = {name: _scrape(port) for name, port in ports.items()}
        wait_for(
            lambda: proms["agent"].query(f"timestamp(para_node_cpus) > {at + 3:.3f}"),
            timeout=60,
            step=0.5,
            what="the agent sampling past the checks' instant",
        )
        clock.halt.set()
        clock.join()
        job.kill()
        job.wait()
        job = None
        code = stop(agent, timeout=120)
        assert code == 0, (tmp / "agent.log").read_text()[-3000:]
        col.stop()
        recording: list[tuple[int, dict[str, list[list[Any]]]]] = []
        for path in sorted(spool.glob("*/*.para")):
            recording += samples_from_para(path)
        recording.sort(key=lambda s: s[0])
        yield {
            "proms": proms,
            "at": at,
            "texts": texts,
            "recording": recording,
            "job_cpu": clock.job,
            "node_cpu": clock.node,
            "hz": os.sysconf("SC_CLK_TCK"),
            "agent_log": (tmp / "agent.log").read_text(),
        }
    finally:
        if clock is not None:
            clock.halt.set()
        if job is not None:
            job.kill()
            job.wait()
        stop(agent, timeout=120)
        col.stop()
        for prom in proms.values():
            prom.stop()
        _MODULE.clear()
    assert not [c for c in _children(os.getpid()) if int(c.split()[0]) not in SERVICES]


def test_promtool_checks_what_both_endpoints_serve(run):
    tool = need_tool("promtool", HINT)
    for name, text in run["texts"].items():
        assert "para_node_cpu_seconds_total{" in text and JOB_ID in text, name
        r = subprocess.run(
            [tool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0 and not (r.stdout + r.stderr), f"{name}: {r.stdout}{r.stderr}"


def test_the_agent_says_not_to_scrape_it_and_the_collector(run):
    """Its live samples reach the collector, which serves the same series: the agent says so."""
    assert "have Prometheus scrape the collector or the agents, not both" in run["agent_log"]


# family -> (table, columns summed, unit of one raw count in the served unit (None: ticks),
#            label of the row's key)
RAW = {
    "para_node_cpu_seconds_total": ("node", None, None, "mode"),
    "para_node_memory_major_faults_total": ("memory", ("pgmajfault",), 1.0, None),
    "para_node_network_receive_bytes_total": ("net", ("rx_bytes",), 1.0, "device"),
    "para_node_network_transmit_bytes_total": ("net", ("tx_bytes",), 1.0, "device"),
    "para_node_disk_written_bytes_total": ("disk", ("write_bytes",), 1.0, "device"),
    "para_node_disk_io_time_seconds_total": ("disk", ("io_ms",), 0.001, "device"),
    "para_job_cpu_seconds_total": ("job", ("utime", "stime"), None, "job_id"),
}


def _recorded(run: dict[str, Any], family: str) -> dict[str, set[int]]:
    """The recording's raw counts of a family's series, by its key (mode, device, job)."""
    table, cols, _, _ = RAW[family]
    lay = LAYOUTS[table]
    out: dict[str, set[int]] = {}
    for _, rows in run["recording"]:
        for row in rows.get(table) or ():
            r = dict(zip(lay.cols, row))
            if family == "para_node_cpu_seconds_total":
                for mode in ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"):
                    out.setdefault(mode, set()).add(r[f"cpu_{mode}"])
                continue
            key = "" if not lay.keys else str(r[lay.keys[0]])
            if all(r[c] is not None for c in cols):
                out.setdefault(key, set()).add(sum(r[c] for c in cols))
    return out


@pytest.mark.parametrize("endpoint", ["agent", "collector"])
def test_prometheus_stores_the_agents_own_counters(run, endpoint):
    """Every value Prometheus scraped is one the agent read from the kernel and wrote in its
    recording (in base units: ticks / USER_HZ, ms / 1000)."""
    prom, at = run["proms"][endpoint], run["at"]
    for family, (_, _, unit, key_label) in RAW.items():
        recorded = _recorded(run, family)
        series = prom.query(f'{family}{{host="{HOST}"}}[{W:.0f}s]', at)
        if family == "para_job_cpu_seconds_total":
            series = [s for s in series if s["metric"]["job_id"] == JOB_ID]
        assert series, f"{family}: no series at the {endpoint}"
        for s in series:
            key = s["metric"].get(key_label, "") if key_label else ""
            raw = [float(v) / (unit or 1.0 / run["hz"]) for _, v in s["values"]]
            assert len(raw) >= W / 2, (family, key, len(raw))
            missing = [x for x in raw if round(x) not in recorded[key] or abs(x - round(x)) > 1e-6]
            assert not missing, f"{family} {key}: {missing[:5]} never recorded by the agent"


def _host_values(run: dict[str, Any]) -> list[tuple[float, float | None, dict[str, Any]]]:
    """The agent's own per-second host values, replayed from its recording: (t, dt, values)."""
    hs = HostState(HOST, user_hz=run["hz"])
    out = []
    for t, rows in run["recording"]:
        if "node" not in rows:
            continue
        snap = hs.update(t, rows)
        out.append((t / 1000, snap.dt_s, snap.host_values))
    return out


class Served(NamedTuple):
    from_ms: int  # the agent's sample the window's first scrape served
    to_ms: int  # and its last
    scale: float  # rate() = the increase between them * scale


def _served_window(run: dict[str, Any], prom: PrometheusServer, at: float) -> Served:
    """Which of the agent's samples the scrapes of the window ending at `at` served, and how
    far Prometheus' rate() extrapolates them (its documented rule: to the window's edges where
    the first or last scrape is within 1.1 average scrape intervals of them, else half an
    interval).  Each scrape is told by the node's total CPU ticks it served, a count that grows
    every sample: the agent's sample with that total is the one served.  So the check does not
    depend on how late the collector passes a sample on, nor on scrapes a loaded machine lost."""
    hz = run["hz"]
    t_of_total: dict[int, int] = {}
    for t, rows in run["recording"]:
        for row in rows.get("node") or ():
            r = dict(zip(LAYOUTS["node"].cols, row))
            t_of_total[sum(r[f"cpu_{m}"] for m in MODES)] = t
    series = prom.query(f'para_node_cpu_seconds_total{{host="{HOST}"}}[{W:.0f}s]', at)
    totals: dict[float, float] = {}
    for s in series:
        for ts, v in s["values"]:
            totals[float(ts)] = totals.get(float(ts), 0.0) + float(v)
    scrapes = sorted(totals)
    assert len(scrapes) >= W / 2, f"{len(scrapes)} scrapes in the window"
    served = [t_of_total.get(round(totals[ts] * hz)) for ts in scrapes]
    assert None not in served, f"a scrape served CPU ticks the agent never recorded: {served}"
    first, last = scrapes[0], scrapes[-1]
    sampled = last - first
    step = sampled / (len(scrapes) - 1)
    to_start, to_end = first - (at - W), at - last
    extrapolated = sampled
    extrapolated += to_start if to_start < 1.1 * step else step / 2
    extrapolated += to_end if to_end < 1.1 * step else step / 2
    return Served(served[0], served[-1], extrapolated / sampled / W)  # type: ignore[arg-type]


def _served_mean(points: list[tuple[float, float | None, dict[str, Any]]], name: str,
                 window: Served) -> float | None:  # fmt: skip
    """The agent's per-second values over the samples the window's scrapes span, time-weighted:
    what a rate of the counters between the first and the last scrape says."""
    lo, hi = window.from_ms / 1000, window.to_ms / 1000
    got = [(v[name], dt) for t, dt, v in points if lo < t <= hi and dt and v[name] is not None]
    if not got:
        return None
    return sum(x * dt for x, dt in got) / sum(dt for _, dt in got)


@pytest.mark.parametrize("endpoint", ["agent", "collector"])
def test_rate_of_the_counters_is_what_the_agent_measured(run, endpoint):
    """Each host value the agent computes every second, as FROM_COUNTERS writes it in PromQL
    over what /metrics serves: over a 30 s window, Prometheus says what the agent's own
    per-second values say on average over the samples it scraped (as rate() extrapolates them
    to the window), gauges what they were at that instant."""
    prom, at = run["proms"][endpoint], run["at"]
    points = _host_values(run)
    window = _served_window(run, prom, at)
    checked = []
    for name, expr in openmetrics.FROM_COUNTERS.items():
        scale = 0.01 if name.endswith("_pct") else 1.0
        got = prom.query(expr.replace("[1m]", f"[{W:.0f}s]"), at)
        if "rate(" in expr:
            mean = _served_mean(points, name, window)
            expected = [] if mean is None else [mean]
            # a share of CPU time is a ratio of two rates: their extrapolation cancels
            if mean is not None and "para_node_cpu_seconds_total" not in expr:
                expected = [mean * (window.to_ms - window.from_ms) / 1000 * window.scale]
        else:
            expected = [
                v[name] for t, _, v in points if at - 4 < t <= at + 0.5 and v[name] is not None
            ]
        if not expected:
            assert not got, f"{name}: Prometheus has {got} where the agent had no value"
            continue
        assert len(got) == 1, f"{name}: {got}"
        value = float(got[0]["value"][1])
        lo, hi = min(expected) * scale, max(expected) * scale
        tol = 0.05 * max(abs(lo), abs(hi)) + 0.005
        assert lo - tol <= value <= hi + tol, (
            f"{name}: Prometheus {value}, the agent {lo}..{hi} (scrapes at {at:.3f}: {window})"
        )
        checked.append(name)
    for name in ("cpu_busy_pct", "cpu_user_pct", "busy_cores", "mem_used_pct", "net_rx_bps",
                 "io_bps", "disk_util_pct", "major_faults_per_s"):  # fmt: skip
        assert name in checked


def _kernel_rates(points: list[tuple[float, float]], at: float) -> list[float]:
    """Rates of a cumulative count the test read itself, over the window ending at `at`
    shifted by each LAG."""
    rates = []
    for lag in LAG:
        inside = [(t, c) for t, c in points if at - W + lag <= t <= at + lag]
        (t0, c0), (t1, c1) = inside[0], inside[-1]
        rates.append((c1 - c0) / (t1 - t0))
    return rates


@pytest.mark.parametrize("endpoint", ["agent", "collector"])
def test_the_cpu_seconds_rate_is_the_kernels(run, endpoint):
    """rate() of the node's CPU seconds (all modes, and the busy ones) against /proc/stat as
    this test read it: seconds per second, USER_HZ converted right."""
    at, prom = run["at"], run["proms"][endpoint]
    for modes in (MODES, ("user", "nice", "system", "irq", "softirq", "steal")):
        sel = "|".join(modes)
        got = prom.query(f'sum(rate(para_node_cpu_seconds_total{{mode=~"{sel}"}}[{W:.0f}s]))', at)
        value = float(got[0]["value"][1])
        rates = _kernel_rates([(t, sum(c[m] for m in modes)) for t, c in run["node_cpu"]], at)
        lo, hi = min(rates), max(rates)
        assert value > 0.1
        assert lo * 0.95 - 0.02 <= value <= hi * 1.05 + 0.02, f"{modes}: {value}, /proc {rates}"


@pytest.mark.parametrize("endpoint", ["agent", "collector"])
def test_the_jobs_cpu_rate_is_its_process_own(run, endpoint):
    """rate() of the job's CPU seconds against the CPU time its process' /proc/PID/stat gave
    this test (the machine is shared: the job gets what the scheduler leaves it)."""
    at = run["at"]
    got = run["proms"][endpoint].query(
        f'rate(para_job_cpu_seconds_total{{job_id="{JOB_ID}"}}[{W:.0f}s])', at
    )
    value = float(got[0]["value"][1])
    rates = _kernel_rates(run["job_cpu"], at)
    lo, hi = min(rates), max(rates)
    assert value > 0.05
    assert lo * 0.9 - 0.05 <= value <= hi * 1.1 + 0.05, f"Prometheus {value}, the process {rates}"


def _dashboard_queries() -> tuple[list[str], list[str]]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []))
            walk(p.get("panels", []))

    walk(doc["panels"])
    variables = [v["query"]["query"] for v in doc["templating"]["list"] if v["type"] == "query"]
    return exprs, variables


def _substitute(expr: str) -> str:
    return (
        expr.replace("$__rate_interval", f"{W:.0f}s")
        .replace("$host", HOST)
        .replace("$job_id", JOB_ID)
    )


# what this machine lacks (tests/fixtures' NVML outputs test those families' values)
NOT_HERE = re.compile(r"para_(gpu_|job_gpu_|node_infiniband_)")


def test_the_grafana_dashboard_queries_run_with_data(run):
    """Every query of the shipped dashboard runs on Prometheus, whichever endpoint it scrapes,
    and has data from at least one of them; only this machine's missing GPUs and InfiniBand
    leave a panel empty.  The dashboard names only families para serves."""
    exprs, variables = _dashboard_queries()
    assert len(exprs) >= 20
    served = set()
    for text in run["texts"].values():
        served |= set(re.findall(r"^(para_[a-z0-9_]+?)(?:\{| )", text, re.M))
    catalogue = {f for _, cs in openmetrics.COUNTERS.values() for f in (c.family for c in cs)}
    catalogue |= {g[1] for gs in openmetrics.GAUGES.values() for g in gs}
    catalogue |= {g[1] for g in openmetrics.JOB_GAUGES} | {"para_gpu_job_info"}
    known = served | catalogue
    for expr in exprs:
        # a name matched by a regular expression must match a family para serves
        for pattern in re.findall(r'__name__=~"([^"]+)"', expr):
            assert any(re.fullmatch(pattern, n) for n in known), f"{expr}: {pattern}"
        names = set(re.findall(r"para_[a-z0-9_]+", re.sub(r'__name__=~"[^"]+"', "", expr)))
        assert names <= known, f"{expr}: {names - known}"
        results = {
            name: prom.query(_substitute(expr), run["at"]) for name, prom in run["proms"].items()
        }
        if NOT_HERE.search(expr):
            continue
        assert any(results.values()), f"no data at either endpoint: {expr}"
    for v in variables:
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", v)
        assert m, v
        for prom in run["proms"].values():
            series = prom.api("series", **{"match[]": _substitute(m.group(1))})
            values = {s.get(m.group(2)) for s in series}
            assert (HOST if m.group(2) == "host" else JOB_ID) in values, (v, values)
