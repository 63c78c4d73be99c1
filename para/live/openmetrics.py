"""Prometheus / OpenMetrics exposition of the live values, and a small HTTP server for it.

`/metrics` answers in the Prometheus text format 0.0.4, or in OpenMetrics 1.0 when the
scraper asks for it (Accept: application/openmetrics-text).  Series carry `host`, and per-job
series `job_id`, `user` and `job_name`; `para_node_job_info` (value 1) says which jobs run on
which host, to join node series with jobs (`* on (host) group_left (job_id) ...`).  The label
is `job_id`, not `job`: Prometheus reserves `job` for the scrape job.

Off unless configured, and on loopback unless another address is given.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from para.errors import ParaError
from para.live.metrics import HOST_METRICS, Snapshot

TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
DEFAULT_AGENT_LISTEN = "127.0.0.1:9466"
DEFAULT_COLLECTOR_LISTEN = "127.0.0.1:9467"

# Unit words for names: Prometheus wants the unit as the name's suffix.
_UNIT_SUFFIX = {
    "%": "percent",
    "bytes": "bytes",
    "bytes/s": "bytes_per_second",
    "W": "watts",
    "degC": "celsius",
}

JOB_METRICS = {
    # job row column: (family, unit, help)
    "cpu_cores": ("para_job_cpu_cores", "", "cores busy with the job's processes on the host"),
    "cpu_util_pct": ("para_job_cpu_util_percent", "percent", "of the CPUs the job has on the host"),
    "rss_bytes": ("para_job_resident_memory_bytes", "bytes", "resident memory of its processes"),
    "io_bps": ("para_job_io_bytes_per_second", "", "storage bytes read and written per second"),
    "procs": ("para_job_processes", "", "live processes of the job on the host"),
    "gpu_mem_bytes": ("para_job_gpu_memory_bytes", "bytes", "GPU memory held by its processes"),
    "gpu_sm_pct": ("para_job_gpu_sm_percent", "percent", "SM utilisation of its processes"),
    "cg_mem_bytes": ("para_job_cgroup_memory_bytes", "bytes", "memory charged to its cgroup"),
}
GPU_METRICS = {
    "util_gpu": ("para_gpu_utilization_percent", "percent", "kernel-busy share of time"),
    "mem_used": ("para_gpu_memory_used_bytes", "bytes", "device memory used"),
    "mem_total": ("para_gpu_memory_total_bytes", "bytes", "device memory"),
    "power_w": ("para_gpu_power_watts", "watts", "board power"),
    "temp_c": ("para_gpu_temperature_celsius", "celsius", "temperature"),
}


def node_family(name: str) -> tuple[str, str]:
    """Prometheus name and unit of a host value: cpu_busy_pct -> para_node_cpu_busy_percent."""
    unit = HOST_METRICS[name][0]
    base = name
    for short in ("_pct", "_bps", "_bytes", "_w", "_c"):
        if base.endswith(short):
            base = base[: -len(short)]
            break
    suffix = _UNIT_SUFFIX.get(unit, "")
    full = f"para_node_{base}" + (f"_{suffix}" if suffix else "")
    om_unit = suffix if suffix in ("percent", "bytes", "watts", "celsius") else ""
    return full, om_unit


@dataclass
class Family:
    name: str
    type: str  # gauge | counter
    help: str
    unit: str = ""
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(v: float) -> str:
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else f"{v:.1f}"


def render(families: Iterable[Family], openmetrics: bool = False) -> str:
    out: list[str] = []
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
            lab = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
            out.append(f"{sample}{{{lab}}} {_num(value)}" if lab else f"{sample} {_num(value)}")
    if openmetrics:
        out.append("# EOF")
    return "\n".join(out) + "\n"


def node_families(snaps: Iterable[Snapshot], cluster: str | None = None) -> list[Family]:
    """The families of hosts' latest snapshots (host values, jobs, GPUs)."""
    fams: dict[str, Family] = {}

    def fam(name: str, help_: str, unit: str = "") -> Family:
        f = fams.get(name)
        if f is None:
            f = fams[name] = Family(name, "gauge", help_, unit)
        return f

    for snap in snaps:
        base = {"host": snap.host}
        if cluster:
            base["cluster"] = cluster
        for name, (unit, help_) in HOST_METRICS.items():
            v = snap.host_values.get(name)
            if v is None:
                continue
            fname, om_unit = node_family(name)
            fam(fname, f"{help_} ({unit})", om_unit).samples.append((base, float(v)))
        gpu_jobs = snap.gpu_jobs
        for job, row in snap.tables.get("job", {}).items():
            info = snap.jobs.get(str(job))
            labels = {**base, "job_id": str(job)}
            if info is not None:
                if info.user:
                    labels["user"] = info.user
                if info.name:
                    labels["job_name"] = info.name
            fam("para_node_job_info", "jobs running on the host (1 per job)").samples.append(
                (dict(labels), 1.0)
            )
            for col, (fname, unit, help_) in JOB_METRICS.items():
                v = row.get(col)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    fam(fname, help_, unit).samples.append((dict(labels), float(v)))
        for gpu, row in snap.tables.get("gpu", {}).items():
            labels = {**base, "gpu": str(gpu)}
            if gpu_jobs.get(str(gpu)):
                labels["job_id"] = ",".join(sorted(gpu_jobs[str(gpu)]))
            for col, (fname, unit, help_) in GPU_METRICS.items():
                v = row.get(col)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    fam(fname, help_, unit).samples.append((labels, float(v)))
    return list(fams.values())


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
