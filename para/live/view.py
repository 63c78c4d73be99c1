"""What a live view knows of the hosts it hears from: each host's latest per-second values,
the last minutes of the values `para top` plots, and the jobs running, across hosts.

The collector keeps one for the cluster (para/collector/alerts.py); `para top` keeps one for
its own node when it reads the local agent or samples itself.  `summary()` is the document
`para top` draws (the collector's `top` action sends it as JSON).  Not thread-safe: its owner
holds a lock.
"""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from para.live import openmetrics
from para.live.metrics import HostState, Snapshot

HISTORY_S = 600  # samples kept per node and job for sparklines (10 minutes at 1 Hz)
FRESH_S = 60.0  # a node silent for longer is left out of /metrics
JOB_GONE_S = 60.0  # a job no node reported for this long has ended
# what `para top` plots per node: name -> host value
TOP_METRICS = {
    "cpu": "cpu_busy_pct",
    "mem": "mem_used_pct",
    "io": "io_bps",
    "net": "net_bps",
    "gpu": "gpu_util_pct",
}
JOB_SERIES = ("cores", "rss", "io", "gpu")


class Ring:
    """The last `size` points of a few values, as floats in one array (NaN: unknown): a
    thousand nodes' ten minutes cost 30 MB this way, five times that as Python tuples."""

    def __init__(self, width: int, size: int = HISTORY_S):
        self.width = width
        self.size = size
        self.data = array("d", [math.nan]) * (width * size)
        self.n = 0  # points written so far

    def append(self, values: tuple[float | None, ...]) -> None:
        base = (self.n % self.size) * self.width
        for i, v in enumerate(values):
            self.data[base + i] = math.nan if v is None else float(v)
        self.n += 1

    def __len__(self) -> int:
        return min(self.n, self.size)

    def column(self, i: int, last: int) -> list[float | None]:
        """Value i of the last `last` points, oldest first."""
        k = min(last, len(self))
        out: list[float | None] = []
        for j in range(self.n - k, self.n):
            v = self.data[(j % self.size) * self.width + i]
            out.append(None if math.isnan(v) else v)
        return out


@dataclass
class JobSeen:
    job: str
    hosts: dict[str, int] = field(default_factory=dict)  # host -> its last sample with the job
    first_ms: int = 0
    last_ms: int = 0
    last_rx: float = 0.0
    history: Ring = field(default_factory=lambda: Ring(1 + len(JOB_SERIES)))


class LiveView:
    def __init__(
        self,
        wanted: dict[str, frozenset[str]] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.wanted = wanted or {}
        self.clock = clock
        self.hosts: dict[str, HostState] = {}
        self.received: dict[str, float] = {}
        self.history: dict[str, Ring] = {}
        self.jobs: dict[str, JobSeen] = {}
        self.out_of_order = 0

    def add(self, host: str, t_ms: int, rows: dict[str, Any], rx: float) -> Snapshot | None:
        """One sample of `host`; None if it is not newer than the last (a retried message)."""
        hs = self.hosts.get(host)
        if hs is None:
            hs = self.hosts[host] = HostState(host, self.wanted)
        self.received[host] = rx
        if hs.last is not None and t_ms <= hs.last.t_ms:
            self.out_of_order += 1
            return None
        snap = hs.update(t_ms, rows)
        v = snap.host_values
        hist = self.history.get(host)
        if hist is None:
            hist = self.history[host] = Ring(1 + len(TOP_METRICS))
        hist.append((t_ms / 1000, *(v.get(m) for m in TOP_METRICS.values())))
        for job in snap.tables.get("job", {}):
            js = self.jobs.get(str(job))
            if js is None:
                js = self.jobs[str(job)] = JobSeen(str(job), first_ms=t_ms)
            js.hosts[host] = t_ms
            js.last_ms = max(js.last_ms, t_ms)
            js.last_rx = rx
        return snap

    def tick(self, now: float) -> list[JobSeen]:
        """Once a second: each job's totals into its history; returns the jobs that ended."""
        ended = []
        for job, js in list(self.jobs.items()):
            if now - js.last_rx > JOB_GONE_S:
                ended.append(js)
                del self.jobs[job]
                continue
            a = self.job_now(js)
            js.history.append((now, a["cpu_cores"], a["rss_bytes"], a["io_bps"], a["gpu_util_pct"]))
        return ended

    def job_now(self, js: JobSeen) -> dict[str, Any]:
        """The job across its hosts at their latest samples."""
        cores = rss = io = 0.0
        cpus = 0
        gpu: list[float] = []
        hosts = []
        for host, last in js.hosts.items():
            hs = self.hosts.get(host)
            snap = hs.last if hs is not None else None
            if snap is None or snap.t_ms - last > 5000:
                continue  # the job no longer runs there
            row = snap.tables.get("job", {}).get(js.job)
            if row is None:
                continue
            hosts.append(host)
            cores += row.get("cpu_cores") or 0.0
            rss += row.get("rss_bytes") or 0.0
            io += row.get("io_bps") or 0.0
            cpus += int(row.get("cpus") or 0)
            for g, jobs in snap.gpu_jobs.items():
                if js.job in jobs:
                    u = snap.tables.get("gpu", {}).get(g, {}).get("util_gpu")
                    if isinstance(u, (int, float)):
                        gpu.append(float(u))
        return {
            "hosts": sorted(hosts),
            "cpu_cores": round(cores, 3),
            "cpus": cpus,
            "rss_bytes": rss,
            "io_bps": io,
            "gpu_util_pct": sum(gpu) / len(gpu) if gpu else None,
        }

    def job_info(self, job: str) -> dict[str, Any]:
        for hs in self.hosts.values():
            info = hs.jobs.get(job)
            if info is not None:
                return {
                    "job_id": job,
                    "user": info.user,
                    "name": info.name,
                    "app": info.app,
                    "scheduler": info.scheduler,
                }
        return {"job_id": job}

    def summary(
        self,
        request: dict[str, Any] | None,
        alerts: list[dict[str, Any]],
        cluster: str | None = None,
    ) -> dict[str, Any]:
        """The document `para top` draws: every node's latest values, the jobs, the active
        alerts, and the history of the nodes and jobs asked for (`history`,
        `job_history`: lists of names; `points`: how many of the last samples)."""
        req = request or {}
        want_hist = set(req.get("history") or [])
        want_jobs = set(req.get("job_history") or [])
        points = max(1, min(int(req.get("points") or 120), HISTORY_S))
        bucket = max(1, min(int(req.get("bucket") or 1), points))
        metrics = set(req.get("metrics") or TOP_METRICS)
        now = self.clock()
        nodes = []
        for host, hs in self.hosts.items():
            snap = hs.last
            if snap is None:
                continue
            v = snap.host_values
            nodes.append(
                {
                    "host": host,
                    "t": snap.t_ms / 1000,
                    "age_s": round(now - self.received.get(host, now), 1),
                    **{k: _r(v.get(m)) for k, m in TOP_METRICS.items()},
                    "cpus": v.get("cpus"),
                    "load1": v.get("load1"),
                    "mem_total": v.get("mem_total_bytes"),
                    "gpus": v.get("gpus"),
                    "jobs": snap.job_ids(),
                    "job_use": {
                        j: {
                            "cores": _r(r.get("cpu_cores")),
                            "rss": r.get("rss_bytes"),
                            "io": _r(r.get("io_bps")),
                            "procs": r.get("procs"),
                            "cpus": r.get("cpus"),
                        }
                        for j, r in snap.tables.get("job", {}).items()
                    },
                }
            )
        jobs = []
        for job, js in self.jobs.items():
            now_ = self.job_now(js)
            if not now_["hosts"]:
                continue  # ended (its alerts resolve once JOB_GONE_S have passed)
            info = self.job_info(job)
            jobs.append(
                {
                    "job": job,
                    "user": info.get("user"),
                    "name": info.get("name"),
                    "app": info.get("app"),
                    "since": js.first_ms / 1000,
                    **now_,
                }
            )
        history = {}
        for host in want_hist:
            hist = self.history.get(host)
            if hist is not None and len(hist):
                history[host] = {
                    k: _buckets(hist.column(i + 1, points), bucket)
                    for i, k in enumerate(TOP_METRICS)
                    if k in metrics
                }
        job_history = {}
        for job in want_jobs:
            seen = self.jobs.get(job)
            if seen is not None and len(seen.history):
                job_history[job] = {
                    k: _buckets(seen.history.column(i + 1, points), bucket)
                    for i, k in enumerate(JOB_SERIES)
                }
        return {
            "t": now,
            "cluster": cluster,
            "nodes": sorted(nodes, key=lambda n: n["host"]),
            "jobs": sorted(jobs, key=lambda j: j["job"]),
            "alerts": alerts,
            "history": history,
            "job_history": job_history,
        }

    def families(self, cluster: str | None = None) -> list[openmetrics.Family]:
        """The hosts' latest values for /metrics (hosts silent for FRESH_S left out)."""
        now = self.clock()
        fresh = [
            hs.last
            for h, hs in self.hosts.items()
            if hs.last is not None and now - self.received.get(h, 0) <= FRESH_S
        ]
        fams = openmetrics.node_families([s for s in fresh if s is not None], cluster)
        age = openmetrics.Family(
            "para_node_last_sample_age_seconds",
            "gauge",
            "seconds since the node's last live sample arrived",
            "seconds",
        )
        for h, rx in self.received.items():
            labels = {"host": h, "cluster": cluster} if cluster else {"host": h}
            age.samples.append((labels, round(now - rx, 3)))
        fams.append(age)
        return fams


def _buckets(values: list[Any], size: int) -> list[Any]:
    """Means of consecutive groups of `size` values (the oldest group may be short); None
    where a group has no value."""
    if size <= 1:
        return [_r(v) for v in values]
    start = len(values) % size
    groups = ([values[:start]] if start else []) + [
        values[i : i + size] for i in range(start, len(values), size)
    ]
    out = []
    for g in groups:
        nums = [v for v in g if isinstance(v, (int, float))]
        out.append(_r(sum(nums) / len(nums)) if nums else None)
    return out


def _r(v: Any) -> Any:
    return round(v, 3) if isinstance(v, float) else v
