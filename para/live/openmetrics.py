"""Prometheus / OpenMetrics exposition of the live values, and a small HTTP server for it.

`/metrics` answers in the Prometheus text format 0.0.4, or in OpenMetrics 1.0 when the
scraper asks for it (Accept: application/openmetrics-text).  The node's counters are served
cumulative, as the kernel counts them, in base units (`para_node_cpu_seconds_total{mode}`,
`para_node_network_receive_bytes_total{device}` ...): Prometheus' `rate()` makes any rate of
them over any window, whatever the scrape interval.  States are gauges.  Series carry `host`
(and `cluster` at the collector), per-device series the device, per-job series `job_id`;
`para_node_job_info` (value 1) carries the job's `user` and `job_name`, to join on `job_id`
(a counter's labels must not change while it counts).  The label is `job_id`, not `job`:
Prometheus reserves `job` for the scrape job.  docs/prometheus.md says what is served and
which endpoint to scrape.

Off unless configured, and on loopback unless another address is given.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from para.errors import ParaError
from para.live.metrics import LAYOUTS, NOT_NETWORK, NOT_WHOLE_DISK, Snapshot

TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
DEFAULT_AGENT_LISTEN = "127.0.0.1:9466"
DEFAULT_COLLECTOR_LISTEN = "127.0.0.1:9467"

# What /metrics serves (docs/prometheus.md).  Prometheus computes rates itself, over any
# window, from cumulative counters: a rate or a share of the last second, scraped every 15 s,
# would be one second in fifteen.  So the node's counters are served as the kernel counts them
# (`_total`, in base units: seconds, bytes), and only states are gauges; every host value of
# the live view is either served (NODE_GAUGES) or written in PromQL (FROM_COUNTERS).

# host value -> (family, scale to base units, help)
NODE_GAUGES: dict[str, tuple[str, float, str]] = {
    "cpus": ("para_node_cpus", 1.0, "logical CPUs"),
    "load1": ("para_node_load1", 1.0, "1-minute load average"),
    "procs_running": ("para_node_procs_running", 1.0, "runnable tasks"),
    "procs_blocked": ("para_node_procs_blocked", 1.0, "tasks blocked on I/O"),
    "mem_total_bytes": ("para_node_mem_total_bytes", 1.0, "memory"),
    "mem_used_bytes": ("para_node_mem_used_bytes", 1.0, "memory used (total - available)"),
    "mem_available_bytes": (
        "para_node_mem_available_bytes",
        1.0,
        "memory available without swapping",
    ),
    "fs_used_pct": ("para_node_fs_used_ratio", 0.01, "space used of the fullest filesystem"),
    "gpus": ("para_node_gpus", 1.0, "GPUs"),
    "jobs": ("para_node_jobs", 1.0, "batch jobs running on the node"),
    "job_procs": ("para_node_job_processes", 1.0, "processes of those jobs"),
}

# host value -> the same in PromQL over what is served (per host; `[1m]` is any window).
# Shares of CPU time are of all the CPU time counted, as the agent computes them: a ratio of
# two rates over the same samples, exact even where rate() extrapolates less than the window
# (a series that began inside it).
_CPU = "sum by (host) (rate(para_node_cpu_seconds_total{sel}[1m]))"
_ALL = _CPU.format(sel="")


def _share(modes: str) -> str:
    return f"{_CPU.format(sel='{mode' + modes + '}')} / {_ALL}"


_BUSY = _share('!~"idle|iowait"')


def _sum_rate(family: str) -> str:
    return f"sum by (host) (rate({family}[1m]))"


_RX, _TX = "para_node_network_receive_bytes_total", "para_node_network_transmit_bytes_total"
_ERRS, _DROPS = "para_node_network_errors_total", "para_node_network_drops_total"
_READ, _WRITTEN = "para_node_disk_read_bytes_total", "para_node_disk_written_bytes_total"
_READS, _WRITES = "para_node_disk_reads_completed_total", "para_node_disk_writes_completed_total"
_IB_RX = "para_node_infiniband_receive_bytes_total"
_IB_TX = "para_node_infiniband_transmit_bytes_total"


FROM_COUNTERS: dict[str, str] = {
    "cpu_busy_pct": _BUSY,
    "cpu_user_pct": _share('=~"user|nice"'),
    "cpu_system_pct": _share('=~"system|irq|softirq"'),
    "cpu_iowait_pct": _share('="iowait"'),
    "cpu_steal_pct": _share('="steal"'),
    "busy_cores": f"({_BUSY}) * on (host) para_node_cpus",
    "load_per_cpu": "para_node_load1 / on (host) para_node_cpus",
    "mem_used_pct": "para_node_mem_used_bytes / para_node_mem_total_bytes",
    "swap_used_pct": "para_node_swap_used_bytes / (para_node_swap_size_bytes > 0)",
    "swap_pages_per_s": _sum_rate("para_node_swap_pages_total"),
    "major_faults_per_s": _sum_rate("para_node_memory_major_faults_total"),
    "net_rx_bps": _sum_rate("para_node_network_receive_bytes_total"),
    "net_tx_bps": _sum_rate("para_node_network_transmit_bytes_total"),
    "net_bps": f"{_sum_rate(_RX)} + {_sum_rate(_TX)}",
    "net_errors_per_s": f"{_sum_rate(_ERRS)} + {_sum_rate(_DROPS)}",
    "disk_read_bps": _sum_rate(_READ),
    "disk_write_bps": _sum_rate(_WRITTEN),
    "io_bps": f"{_sum_rate(_READ)} + {_sum_rate(_WRITTEN)}",
    "disk_iops": f"{_sum_rate(_READS)} + {_sum_rate(_WRITES)}",
    "disk_util_pct": "max by (host) (rate(para_node_disk_io_time_seconds_total[1m]))",
    "gpu_util_pct": "avg by (host) (para_gpu_utilization_ratio)",
    "gpu_util_min_pct": "min by (host) (para_gpu_utilization_ratio)",
    "gpu_mem_used_pct": "max by (host) (para_gpu_memory_used_bytes / para_gpu_memory_total_bytes)",
    "gpu_power_w": "sum by (host) (para_gpu_power_watts)",
    "gpu_temp_c": "max by (host) (para_gpu_temperature_celsius)",
    "ib_bps": f"{_sum_rate(_IB_RX)} + {_sum_rate(_IB_TX)}",
    "ib_link_pct": f"max by (host) ((rate({_IB_RX}[1m]) + rate({_IB_TX}[1m]))"
    " / (2 * para_node_infiniband_rate_bytes_per_second))",
}


@dataclass(frozen=True)
class Counter:
    """A served cumulative counter: the sum of `columns` of a row, times `scale` (None: the
    columns count clock ticks, divided by the node's USER_HZ)."""

    family: str
    columns: tuple[str, ...]
    scale: float | None
    help: str
    labels: tuple[tuple[str, str], ...] = ()


_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
# table -> (label of the device key, the counters of each row)
COUNTERS: dict[str, tuple[str, tuple[Counter, ...]]] = {
    "node": (
        "",
        tuple(
            Counter(
                "para_node_cpu_seconds_total",
                (f"cpu_{m}",),
                None,
                "CPU time of all the node's CPUs, by mode (/proc/stat)",
                (("mode", m),),
            )
            for m in _MODES
        ),
    ),
    "memory": (
        "",
        (
            Counter(
                "para_node_memory_major_faults_total",
                ("pgmajfault",),
                1.0,
                "major page faults: pages read back from storage (/proc/vmstat)",
            ),
            Counter(
                "para_node_swap_pages_total",
                ("pswpin",),
                1.0,
                "pages swapped in and out (/proc/vmstat)",
                (("direction", "in"),),
            ),
            Counter(
                "para_node_swap_pages_total",
                ("pswpout",),
                1.0,
                "pages swapped in and out (/proc/vmstat)",
                (("direction", "out"),),
            ),
        ),
    ),
    "net": (
        "device",
        (
            Counter("para_node_network_receive_bytes_total", ("rx_bytes",), 1.0, "bytes received"),
            Counter("para_node_network_transmit_bytes_total", ("tx_bytes",), 1.0, "bytes sent"),
            Counter(
                "para_node_network_errors_total",
                ("rx_errs", "tx_errs"),
                1.0,
                "receive and transmit errors",
            ),
            Counter(
                "para_node_network_drops_total",
                ("rx_drop", "tx_drop"),
                1.0,
                "packets dropped on receive and transmit",
            ),
        ),
    ),
    "disk": (
        "device",
        (
            Counter("para_node_disk_read_bytes_total", ("read_bytes",), 1.0, "bytes read"),
            Counter("para_node_disk_written_bytes_total", ("write_bytes",), 1.0, "bytes written"),
            Counter("para_node_disk_reads_completed_total", ("reads",), 1.0, "reads completed"),
            Counter("para_node_disk_writes_completed_total", ("writes",), 1.0, "writes completed"),
            Counter(
                "para_node_disk_io_time_seconds_total",
                ("io_ms",),
                0.001,
                "time with I/O in progress (its rate is the utilisation, 0..1)",
            ),
            Counter(
                "para_node_disk_read_time_seconds_total",
                ("read_ms",),
                0.001,
                "time spent reading, summed over reads",
            ),
            Counter(
                "para_node_disk_write_time_seconds_total",
                ("write_ms",),
                0.001,
                "time spent writing, summed over writes",
            ),
        ),
    ),
    "ib": (
        "port",
        (
            Counter(
                "para_node_infiniband_receive_bytes_total",
                ("rcv_bytes",),
                1.0,
                "InfiniBand / RoCE bytes received",
            ),
            Counter(
                "para_node_infiniband_transmit_bytes_total",
                ("xmit_bytes",),
                1.0,
                "InfiniBand / RoCE bytes sent",
            ),
        ),
    ),
    "gpu": (
        "gpu",
        (
            Counter(
                "para_gpu_energy_joules_total",
                ("energy_mj",),
                0.001,
                "energy used since the driver loaded (NVML)",
            ),
        ),
    ),
}
# device gauges: table -> (column, family, scale, help)
GAUGES: dict[str, tuple[tuple[str, str, float, str], ...]] = {
    "ib": (("rate_gbps", "para_node_infiniband_rate_bytes_per_second", 1e9 / 8, "link rate"),),
    "gpu": (
        ("util_gpu", "para_gpu_utilization_ratio", 0.01, "kernel-busy share of time (NVML)"),
        ("mem_used", "para_gpu_memory_used_bytes", 1.0, "device memory used"),
        ("mem_total", "para_gpu_memory_total_bytes", 1.0, "device memory"),
        ("power_mw", "para_gpu_power_watts", 0.001, "board power"),
        ("temp_c", "para_gpu_temperature_celsius", 1.0, "temperature"),
    ),
}
# per job and host: counters (column(s), family, scale; None: ticks) and gauges
JOB_COUNTERS = (
    (("read_bytes",), "para_job_read_bytes_total", 1.0, "bytes its processes read from storage"),
    (("write_bytes",), "para_job_written_bytes_total", 1.0, "bytes its processes wrote to storage"),
)
JOB_GAUGES = (
    ("procs", "para_job_processes", 1.0, "live processes of the job on the host"),
    ("cpus", "para_job_cpus", 1.0, "CPUs the job has on the host"),
    ("rss_bytes", "para_job_resident_memory_bytes", 1.0, "resident memory of its processes"),
    ("cg_mem_bytes", "para_job_cgroup_memory_bytes", 1.0, "memory charged to its cgroup"),
    ("cg_mem_limit_bytes", "para_job_cgroup_memory_limit_bytes", 1.0, "its cgroup's memory limit"),
    ("gpu_mem_bytes", "para_job_gpu_memory_bytes", 1.0, "GPU memory held by its processes"),
    (
        "gpu_sm_pct",
        "para_job_gpu_sm_utilization_ratio",
        0.01,
        "SM utilisation of its processes, summed over its GPUs (2 = two GPUs busy)",
    ),
)
_LABEL_MAX = 200  # a device or job name longer than this is cut (a node's bytes are hostile)


@dataclass
class Family:
    name: str
    type: str  # gauge | counter
    help: str
    unit: str = ""
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)


def _unit(name: str) -> str:
    base = name.removesuffix("_total")
    for unit in ("seconds", "bytes", "ratio", "joules", "watts", "celsius"):
        if base.endswith("_" + unit):
            return unit
    return ""


def _escape(v: str) -> str:
    if "\\" not in v and "\n" not in v and '"' not in v:
        return v
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(v: float) -> str:
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else f"{v:.1f}"


def render(families: Iterable[Family], openmetrics: bool = False) -> str:
    out: list[str] = []
    # the label sets are shared between a node's (or a device's) series: each written once
    written: dict[int, str] = {}
    for f in families:
        if not f.samples and f.type != "counter":
            continue
        name = f.name
        if f.type == "counter" and name.endswith("_total"):
            name = name[: -len("_total")]
        fam = name if (openmetrics or f.type != "counter") else f"{name}_total"
        out.append(f"# HELP {fam} {f.help}")
        out.append(f"# TYPE {fam} {f.type}")
        if openmetrics and f.unit and fam.endswith(f.unit):
            out.append(f"# UNIT {fam} {f.unit}")
        sample = f"{name}_total" if f.type == "counter" else name
        for labels, value in f.samples:
            lab = written.get(id(labels))
            if lab is None:
                lab = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
                lab = written[id(labels)] = f"{{{lab}}}" if lab else ""
            out.append(f"{sample}{lab} {_num(value)}")
    if openmetrics:
        out.append("# EOF")
    return "\n".join(out) + "\n"


def _num_or_none(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _total(row: list[Any], idx: tuple[int, ...]) -> float | None:
    """The sum of a row's columns; None if one is missing (a partial sum is no counter)."""
    if len(idx) == 1:
        v = row[idx[0]]
        return float(v) if type(v) in (int, float) else None  # not bool, not None
    total = 0.0
    for i in idx:
        v = _num_or_none(row[i])
        if v is None:
            return None
        total += v
    return total


def _label(v: Any) -> str:
    return str(v)[:_LABEL_MAX]


class _Families:
    """Families by name, in the order they first appear."""

    def __init__(self) -> None:
        self.by_name: dict[str, Family] = {}

    def add(self, name: str, typ: str, help_: str, labels: dict[str, str], value: float) -> None:
        f = self.by_name.get(name)
        if f is None:
            f = self.by_name[name] = Family(name, typ, help_, _unit(name))
        f.samples.append((labels, value))


def node_families(snaps: Iterable[Snapshot], cluster: str | None = None) -> list[Family]:
    """The families of hosts' latest snapshots: the node's counters and states, its jobs'
    and its GPUs' (labels: `host`, `cluster` at the collector, the device, `job_id`)."""
    fams = _Families()
    for snap in snaps:
        base = {"host": snap.host}
        if cluster:
            base["cluster"] = cluster
        for name, (fname, scale, help_) in NODE_GAUGES.items():
            v = snap.host_values.get(name)
            if v is not None:
                fams.add(fname, "gauge", help_, base, float(v) * scale)
        _swap(fams, snap, base)
        for table, (key_label, counters) in COUNTERS.items():
            _device_counters(fams, snap, table, key_label, counters, base)
        for table, gauges in GAUGES.items():
            _device_gauges(fams, snap, table, gauges, base)
        for gpu, jobs in snap.gpu_jobs.items():
            for job in jobs:
                labels = {**base, "gpu": _label(gpu), "job_id": _label(job)}
                fams.add("para_gpu_job_info", "gauge", "jobs using the GPU (1 each)", labels, 1.0)
        _jobs(fams, snap, base)
    return list(fams.by_name.values())


def _swap(fams: _Families, snap: Snapshot, base: dict[str, str]) -> None:
    rows = snap.raw.get("memory")
    lay = LAYOUTS["memory"]
    if not rows or len(rows[0]) != len(lay.cols):
        return
    total = _num_or_none(rows[0][lay.index["swap_total"]])
    free = _num_or_none(rows[0][lay.index["swap_free"]])
    if total is None:
        return
    fams.add("para_node_swap_size_bytes", "gauge", "swap space", base, total)
    if free is not None:
        fams.add("para_node_swap_used_bytes", "gauge", "swap space used", base, total - free)


def _device_counters(
    fams: _Families,
    snap: Snapshot,
    table: str,
    key_label: str,
    counters: tuple[Counter, ...],
    base: dict[str, str],
) -> None:
    rows = snap.raw.get(table)
    if not rows:
        return
    lay = LAYOUTS[table]
    width = len(lay.cols)
    key_i = lay.key_idx[0] if key_label else None
    plan = _PLANS.get(table)
    if plan is None:
        plan = _PLANS[table] = [
            (c, tuple(lay.index[n] for n in c.columns), dict(c.labels)) for c in counters
        ]
    for row in rows:
        if len(row) != width:
            continue  # a row of another para version: not ours to guess
        labels = base
        if key_i is not None:
            dev = row[key_i]
            if not _served_device(table, dev):
                continue
            labels = {**base, key_label: _label(dev)}
        for c, idx, extra in plan:
            v = _total(row, idx)
            if v is None:
                continue
            if c.scale is None:
                if not snap.user_hz:
                    continue
                v /= snap.user_hz
            else:
                v *= c.scale
            fams.add(c.family, "counter", c.help, {**labels, **extra} if extra else labels, v)


# table -> its counters with their columns' places and constant labels
_PLANS: dict[str, list[tuple[Counter, tuple[int, ...], dict[str, str]]]] = {}


def _served_device(table: str, dev: Any) -> bool:
    if not isinstance(dev, (str, int)) or isinstance(dev, bool):
        return False
    if table == "net":
        return dev not in NOT_NETWORK
    if table == "disk":
        return not NOT_WHOLE_DISK.search(str(dev))  # partitions' traffic is their disk's
    return True


def _device_gauges(
    fams: _Families,
    snap: Snapshot,
    table: str,
    gauges: tuple[tuple[str, str, float, str], ...],
    base: dict[str, str],
) -> None:
    rows = snap.raw.get(table)
    if not rows:
        return
    lay = LAYOUTS[table]
    key_i, key_label = lay.key_idx[0], COUNTERS[table][0]
    for row in rows:
        if len(row) != len(lay.cols) or not _served_device(table, row[key_i]):
            continue
        labels = {**base, key_label: _label(row[key_i])}
        for col, fname, scale, help_ in gauges:
            v = _num_or_none(row[lay.index[col]])
            if v is not None:
                fams.add(fname, "gauge", help_, labels, v * scale)


def _jobs(fams: _Families, snap: Snapshot, base: dict[str, str]) -> None:
    rows = snap.raw.get("job")
    if not rows:
        return
    lay = LAYOUTS["job"]
    ji, ut, st, cg = (lay.index[c] for c in ("job", "utime", "stime", "cg_cpu_ns"))
    for row in rows:
        if len(row) != len(lay.cols) or row[ji] is None:
            continue
        job = str(row[ji])
        labels = {**base, "job_id": _label(job)}
        info = snap.jobs.get(job)
        described = dict(labels)
        if info is not None:
            if info.user:
                described["user"] = _label(info.user)
            if info.name:
                described["job_name"] = _label(info.name)
        fams.add(
            "para_node_job_info",
            "gauge",
            "jobs running on the host (1 each; user and job name to join on job_id)",
            described,
            1.0,
        )
        # CPU time as the node's other counters count it (ticks); the cgroup's where the
        # job's processes are not read
        ticks = _total(row, (ut, st))
        cg_ns = _num_or_none(row[cg])
        cpu_s = ticks / snap.user_hz if ticks is not None and snap.user_hz else None
        if ticks is None and cg_ns is not None:
            cpu_s = cg_ns / 1e9
        if cpu_s is not None:
            fams.add(
                "para_job_cpu_seconds_total",
                "counter",
                "CPU time of its processes on the host (user and system)",
                labels,
                cpu_s,
            )
        for cols, fname, scale, help_ in JOB_COUNTERS:
            v = _total(row, tuple(lay.index[c] for c in cols))
            if v is not None:
                fams.add(fname, "counter", help_, labels, v * scale)
        for col, fname, scale, help_ in JOB_GAUGES:
            v = _num_or_none(row[lay.index[col]])
            if v is not None:
                fams.add(fname, "gauge", help_, labels, v * scale)


def agent_families(host: str, counters: dict[str, float]) -> list[Family]:
    """The agent's own counters (samples taken, ticks missed ...)."""
    return [
        Family(
            f"para_agent_{name}_total",
            "counter",
            f"the agent's {name.replace('_', ' ')}",
            samples=[({"host": host}, float(value))],
        )
        for name, value in counters.items()
    ]


def alert_family(alerts: list[dict[str, Any]]) -> Family:
    f = Family("para_alerts_active", "gauge", "alerts firing now (1 per alert)")
    for a in alerts:
        labels = {"rule": a["rule"], "severity": a["severity"]}
        if a.get("host"):
            labels["host"] = a["host"]
        if a.get("jobs"):
            labels["job_id"] = ",".join(a["jobs"])
        for k, v in (a.get("labels") or {}).items():
            if k not in labels and k != "job":
                labels[k] = str(v)
        f.samples.append((labels, 1.0))
    return f


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ParaError(f"metrics address {text!r} is not HOST:PORT (e.g. 127.0.0.1:9466)")
    return host.strip("[]") or "127.0.0.1", int(port)


class MetricsServer:
    """GET /metrics on `listen` (port 0: any free port, see `.port`).

    One thread answers the scrapes in turn (a scraper that stalls is cut off after
    `TIMEOUT_S`), asleep between them: nothing runs on the node while nobody scrapes."""

    TIMEOUT_S = 10.0

    def __init__(self, listen: str, families: Callable[[], list[Family]]):
        from http.server import BaseHTTPRequestHandler, HTTPServer

        self.families = families
        host, port = parse_listen(listen)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            timeout = self.TIMEOUT_S

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.split("?")[0] not in ("/metrics", "/metrics/"):
                    self.send_error(404, "para serves /metrics only")
                    return
                om = "application/openmetrics-text" in (self.headers.get("Accept") or "")
                try:
                    body = render(outer.families(), openmetrics=om).encode()
                except Exception as e:  # the scrape fails, the agent or collector does not
                    self.send_error(500, f"{type(e).__name__}: {e}")
                    return
                self.send_response(200)
                self.send_header("Content-Type", OPENMETRICS_TYPE if om else TEXT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes every 15 s are not news

        try:
            self.httpd = HTTPServer((host, port), Handler)
        except OSError as e:
            raise ParaError(f"cannot serve metrics on {listen}: {e.strerror or e}") from e
        self.port = int(self.httpd.server_address[1])
        self.address = f"{host}:{self.port}"
        self._wake_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        self._thread = threading.Thread(
            target=self.httpd.serve_forever,
            kwargs={"poll_interval": 3600.0},  # woken by a connection, see stop()
            name="para-metrics-http",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        import socket

        # serve_forever sleeps in select() until a connection comes: ask it to stop, then
        # connect until it has seen the request (a connection may come before the request)
        asking = threading.Thread(target=self.httpd.shutdown, daemon=True)
        asking.start()
        deadline = time.monotonic() + 5.0
        while self._thread.is_alive() and time.monotonic() < deadline:
            try:
                socket.create_connection((self._wake_host, self.port), timeout=0.5).close()
            except OSError:
                break
            self._thread.join(0.1)
        asking.join(1.0)
        self.httpd.server_close()
        self._thread.join(1.0)
