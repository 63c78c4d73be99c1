"""Per-second values of a host from its live samples (the rows an agent takes each second).

A live sample is `rows`: table -> list of rows in the journal's layout (the columns of
para.formats.schema after `t`; timed tables such as `events` carry their own `t` first).
`HostState.update` turns each sample into a `Snapshot`:

- every table's rows by device key, counters as per-second rates over the time since the
  host's previous sample (a counter that went backwards, a reset, is unknown: None), gauges
  as they are, plus a few derived columns per device (`disk.util_pct`, `gpu.mem_used_pct`,
  `job.cpu_cores`, ... see VIRTUAL);
- the `host` values: what a sysadmin looks at first (CPU busy, memory used, storage and
  network traffic, GPU busy ... see HOST_METRICS), one number each;
- the jobs on the host with what the events said about them (user, name, application).

Rates need two samples: a host's first sample has no rates and no CPU figures.  The snapshot
also keeps the sample's own rows of the tables whose cumulative counters /metrics serves
(RAW_TABLES, by reference: nothing is copied), and the node's USER_HZ, the unit of its
`ticks` columns (told by the agent, else read from the node's own counters).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from para.formats.schema import TABLES

# CPU time kinds that add up to the whole (guest time is already inside user and nice)
CPU_KINDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
# Partitions, device-mapper, RAID, loop and RAM devices: their traffic is also their disks'.
NOT_WHOLE_DISK = re.compile(
    r"^(loop|ram|dm-|md|zram|sr)|^(sd[a-z]+|vd[a-z]+|xvd[a-z]+|hd[a-z]+)\d+$|"
    r"^nvme\d+n\d+p\d+$|^mmcblk\d+p\d+$"
)
NOT_NETWORK = ("lo",)
# Clock ticks per second (USER_HZ) that Linux has used: 100 nearly everywhere.
USER_HZ = (100, 250, 300, 1000)
# Tables whose rows the snapshot keeps as sampled, for the counters of /metrics.
RAW_TABLES = ("node", "memory", "net", "disk", "ib", "gpu", "job")

# name: (unit, description).  The `host` values of every snapshot; rules name them as
# `host.NAME` or just `NAME`.
HOST_METRICS: dict[str, tuple[str, str]] = {
    "cpu_busy_pct": ("%", "CPU time not idle and not waiting for I/O, of all CPUs"),
    "cpu_user_pct": ("%", "CPU time in user mode (nice included)"),
    "cpu_system_pct": ("%", "CPU time in the kernel (interrupts included)"),
    "cpu_iowait_pct": ("%", "CPU time idle while I/O was outstanding"),
    "cpu_steal_pct": ("%", "CPU time taken by the hypervisor"),
    "cpus": ("CPUs", "logical CPUs"),
    "busy_cores": ("cores", "cores busy (cpu_busy_pct x cpus / 100)"),
    "load1": ("load", "1-minute load average"),
    "load_per_cpu": ("load", "1-minute load average per CPU"),
    "procs_running": ("tasks", "runnable tasks"),
    "procs_blocked": ("tasks", "tasks blocked on I/O"),
    "mem_total_bytes": ("bytes", "memory"),
    "mem_used_bytes": ("bytes", "memory used (total - available, as free(1))"),
    "mem_available_bytes": ("bytes", "memory available without swapping"),
    "mem_used_pct": ("%", "memory used, of the total"),
    "swap_used_pct": ("%", "swap used, of the total (none: no swap)"),
    "swap_pages_per_s": ("pages/s", "pages swapped in and out"),
    "major_faults_per_s": ("faults/s", "major page faults (pages read back from storage)"),
    "net_rx_bps": ("bytes/s", "bytes received, all interfaces but loopback"),
    "net_tx_bps": ("bytes/s", "bytes sent, all interfaces but loopback"),
    "net_bps": ("bytes/s", "bytes received and sent"),
    "net_errors_per_s": ("packets/s", "receive and transmit errors and drops"),
    "disk_read_bps": ("bytes/s", "bytes read from whole disks"),
    "disk_write_bps": ("bytes/s", "bytes written to whole disks"),
    "io_bps": ("bytes/s", "bytes read and written, whole disks"),
    "disk_iops": ("ops/s", "reads and writes completed, whole disks"),
    "disk_util_pct": ("%", "busiest disk: time with I/O in progress"),
    "fs_used_pct": ("%", "fullest filesystem: space used"),
    "gpus": ("GPUs", "GPUs"),
    "gpu_util_pct": ("%", "GPUs busy (kernels running), mean of the GPUs"),
    "gpu_util_min_pct": ("%", "least busy GPU"),
    "gpu_mem_used_pct": ("%", "GPU memory used, fullest GPU"),
    "gpu_power_w": ("W", "GPU board power, all GPUs"),
    "gpu_temp_c": ("degC", "hottest GPU"),
    "ib_bps": ("bytes/s", "InfiniBand / RoCE bytes received and sent, all ports"),
    "ib_link_pct": ("%", "busiest port: traffic of its link rate"),
    "jobs": ("jobs", "batch jobs running on the node"),
    "job_procs": ("processes", "processes of those jobs"),
}

# Columns computed per device beside the sampled ones: table -> name -> (unit, description).
VIRTUAL: dict[str, dict[str, tuple[str, str]]] = {
    "cpu": {"busy_pct": ("%", "the CPU's time not idle and not waiting for I/O")},
    "disk": {
        "util_pct": ("%", "time with I/O in progress"),
        "await_ms": ("ms", "mean time per read or write"),
    },
    "fs": {"used_pct": ("%", "space used")},
    "gpu": {
        "mem_used_pct": ("%", "device memory used"),
        "power_w": ("W", "board power"),
    },
    "job": {
        "cpu_cores": ("cores", "cores busy with the job's processes"),
        "cpu_util_pct": ("%", "cores busy with the job, of the CPUs it has on the node"),
        "io_bps": ("bytes/s", "bytes its processes read from and wrote to storage"),
        "mem_pct": ("%", "its processes' resident memory, of the node's memory"),
        "mem_limit_pct": ("%", "memory charged to its cgroup, of the cgroup's limit"),
    },
    "ib": {"link_pct": ("%", "traffic (both ways) of the link rate")},
}


@dataclass(frozen=True)
class Layout:
    """Where each column of a table sits in a live row."""

    name: str
    timed: bool
    cols: tuple[str, ...]
    index: dict[str, int]
    keys: tuple[str, ...]
    key_idx: tuple[int, ...]
    counters: frozenset[str]
    units: dict[str, str]


def _layout(name: str) -> Layout:
    t = TABLES[name]
    cols = tuple(c.name for c in t.columns if t.timed_rows or c.name != "t")
    keys = tuple(c.name for c in t.keys if c.name != "t")
    return Layout(
        name=name,
        timed=t.timed_rows,
        cols=cols,
        index={c: i for i, c in enumerate(cols)},
        keys=keys,
        key_idx=tuple(cols.index(k) for k in keys),
        counters=frozenset(c.name for c in t.metrics if c.kind == "counter" and not t.timed_rows),
        units={c.name: c.unit for c in t.columns},
    )


LAYOUTS: dict[str, Layout] = {name: _layout(name) for name in TABLES}
# tables whose rows are events or intervals, not states of a device at the sampling instant
NOT_SERIES = frozenset(n for n, lay in LAYOUTS.items() if lay.timed or n == "instr_samples")
SERIES_TABLES = tuple(n for n in LAYOUTS if n not in NOT_SERIES)


def columns(table: str) -> dict[str, str]:
    """Every column a rule may name in `table`, with its unit (virtual ones included)."""
    if table == "host":
        return {k: u for k, (u, _) in HOST_METRICS.items()}
    lay = LAYOUTS[table]
    out = {c: lay.units.get(c, "") for c in lay.cols if c != "t"}
    for c, (unit, _) in VIRTUAL.get(table, {}).items():
        out[c] = unit
    return out


def unit_of(table: str, column: str) -> str:
    """The unit of a column as a rule sees it (counters become per second)."""
    if table == "host":
        return HOST_METRICS.get(column, ("", ""))[0]
    virt = VIRTUAL.get(table, {}).get(column)
    if virt:
        return virt[0]
    lay = LAYOUTS.get(table)
    if lay is None:
        return ""
    unit = lay.units.get(column, "")
    return f"{unit}/s" if column in lay.counters else unit


@dataclass
class JobInfo:
    """What the events said about a job on this host."""

    job: str
    user: str | None = None
    name: str | None = None
    scheduler: str | None = None
    command: str | None = None  # the executable of its first process seen
    start_ms: int | None = None
    ended_ms: int | None = None
    cpus: int | None = None

    @property
    def app(self) -> str | None:
        """The application: the job's name, else the executable of its first process."""
        return self.name or self.command

    def as_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "user": self.user,
            "name": self.name,
            "app": self.app,
            "scheduler": self.scheduler,
            "start": None if self.start_ms is None else self.start_ms / 1000,
        }


Row = dict[str, Any]


@dataclass
class Snapshot:
    """One sample of a host, as per-second values (see the module's doc)."""

    host: str
    t_ms: int
    dt_s: float | None
    host_values: dict[str, float | None]
    tables: dict[str, dict[Any, Row]]
    jobs: dict[str, JobInfo]
    events: list[list[Any]] = field(default_factory=list)
    gpu_jobs: dict[str, list[str]] = field(default_factory=dict)  # GPU -> jobs using it
    raw: dict[str, list[list[Any]]] = field(default_factory=dict)  # RAW_TABLES as sampled
    user_hz: float | None = None  # clock ticks per second of the node (None: not known yet)

    def job_ids(self) -> list[str]:
        return sorted(self.tables.get("job", {}))


def snap_user_hz(ticks_per_cpu_s: float) -> int:
    """USER_HZ from a node's measured ticks per second of one CPU (the nearest known value:
    a second's jitter is a few ticks, the values are far apart)."""
    return min(USER_HZ, key=lambda hz: abs(hz - ticks_per_cpu_s))


def _f(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _sum(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return sum(got) if got else None


def _pct(part: float | None, whole: float | None) -> float | None:
    if part is None or not whole:
        return None
    return 100.0 * part / whole


# The columns the host values, the derived columns and the exposition read, per table; a
# table is converted only for these and the columns rules name (what is not read is not
# computed: a 1,000-node collector converts a million values a second).
ALWAYS: dict[str, frozenset[str]] = {
    "node": frozenset(
        [*(f"cpu_{k}" for k in CPU_KINDS), "load1", "procs_running", "procs_blocked"]
    ),
    "memory": frozenset(
        ["mem_total", "mem_available", "swap_total", "swap_free", "pswpin", "pswpout", "pgmajfault"]
    ),
    "net": frozenset(["rx_bytes", "tx_bytes", "rx_errs", "rx_drop", "tx_errs", "tx_drop"]),
    "disk": frozenset(
        ["read_bytes", "write_bytes", "reads", "writes", "io_ms", "read_ms", "write_ms"]
    ),
    "fs": frozenset(["used_bytes", "size_bytes"]),
    "gpu": frozenset(["util_gpu", "mem_used", "mem_total", "power_mw", "temp_c"]),
    "ib": frozenset(["rcv_bytes", "xmit_bytes", "rate_gbps"]),
    "job": frozenset(
        [
            "procs",
            "threads",
            "utime",
            "stime",
            "rss_bytes",
            "read_bytes",
            "write_bytes",
            "gpu_mem_bytes",
            "gpu_sm_pct",
            "cg_cpu_ns",
            "cg_mem_bytes",
            "cg_mem_limit_bytes",
            "cpus",
            "scheduler",
        ]
    ),
}
# what the derived columns of VIRTUAL read
VIRTUAL_NEEDS: dict[str, frozenset[str]] = {
    "cpu": frozenset(CPU_KINDS),
    "disk": ALWAYS["disk"],
    "fs": ALWAYS["fs"],
    "gpu": ALWAYS["gpu"],
    "job": ALWAYS["job"],
    "ib": ALWAYS["ib"],
}


class HostState:
    """A host's live samples, one after the other (keeps the previous rows for rates)."""

    def __init__(
        self,
        host: str,
        wanted: dict[str, frozenset[str]] | None = None,
        user_hz: float | None = None,
    ):
        self.host = host
        self.wanted = wanted or {}
        # told by the agent (sysconf); at the collector, read once from the node's counters
        self.user_hz = user_hz
        self._fields: dict[str, list[tuple[str, int, bool]]] = {}
        self._prev: dict[str, dict[Any, list[Any]]] = {}
        self._prev_t: int | None = None
        self.jobs: dict[str, JobInfo] = {}
        self.last: Snapshot | None = None
        self.samples = 0

    def update(self, t_ms: int, rows: dict[str, list[list[Any]]]) -> Snapshot:
        dt = None
        if self._prev_t is not None and t_ms > self._prev_t:
            dt = (t_ms - self._prev_t) / 1000.0
        self.note_events(rows.get("events") or ())
        tables: dict[str, dict[Any, Row]] = {}
        for name, table_rows in rows.items():
            lay = LAYOUTS.get(name)
            if lay is None or lay.timed or not isinstance(table_rows, list):
                continue
            if name in ALWAYS or name in self.wanted:
                tables[name] = self._convert(lay, table_rows, dt)
            else:
                # what is not asked for only keeps its rows for the next sample's rates
                self._remember(lay, table_rows)
        if "cpu" in rows and "cpu" not in tables:
            tables["cpu"] = {}
        hz_ncpu = self._virtual(tables, rows)
        if self.user_hz is None and hz_ncpu and dt is not None and dt >= 0.5:
            self.user_hz = snap_user_hz(hz_ncpu)
        values = self._host_values(tables, hz_ncpu, rows)
        ended = [j for j in self.jobs if self.jobs[j].ended_ms is not None]
        for j in ended:
            if j not in tables.get("job", {}):
                del self.jobs[j]
        for j in tables.get("job", {}):
            self.jobs.setdefault(j, JobInfo(j))
        snap = Snapshot(
            self.host,
            t_ms,
            dt,
            values,
            tables,
            self.jobs,
            list(rows.get("events") or ()),
            _gpu_jobs(rows),
            {n: r for n in RAW_TABLES if isinstance(r := rows.get(n), list)},
            self.user_hz,
        )
        self._prev_t = t_ms
        self.last = snap
        self.samples += 1
        return snap

    def _remember(self, lay: Layout, table_rows: list[list[Any]]) -> None:
        if not lay.counters:
            return
        ki = lay.key_idx
        if len(ki) == 1:
            i = ki[0]
            self._prev[lay.name] = {r[i]: r for r in table_rows}
        else:
            self._prev[lay.name] = {tuple(r[j] for j in ki): r for r in table_rows}

    def _convert(
        self, lay: Layout, table_rows: list[list[Any]], dt: float | None
    ) -> dict[Any, Row]:
        prev = self._prev.get(lay.name, {})
        now: dict[Any, list[Any]] = {}
        out: dict[Any, Row] = {}
        ki = lay.key_idx
        fields = self._fields.get(lay.name)
        if fields is None:
            fields = self._fields[lay.name] = self._fields_of(lay)
        width = len(lay.cols)
        for r in table_rows:
            if len(r) != width:
                continue  # a row of another para version: not ours to guess
            key: Any = () if not ki else r[ki[0]] if len(ki) == 1 else tuple(r[j] for j in ki)
            now[key] = r
            p = prev.get(key)
            d: Row = {}
            for c, i, counter in fields:
                v = r[i]
                if counter:
                    if p is None or dt is None or v is None or p[i] is None:
                        d[c] = None
                    else:
                        dv = v - p[i]
                        d[c] = dv / dt if dv >= 0 else None
                else:
                    d[c] = v
            out[key] = d
        if lay.counters:
            self._prev[lay.name] = now
        return out

    def _fields_of(self, lay: Layout) -> list[tuple[str, int, bool]]:
        """(column, index, is a counter) of what this table must be converted for."""
        want = set(ALWAYS.get(lay.name, ())) | set(self.wanted.get(lay.name, ()))
        if lay.name in self.wanted and set(self.wanted[lay.name]) & set(VIRTUAL.get(lay.name, {})):
            want |= VIRTUAL_NEEDS.get(lay.name, frozenset())
        want |= set(lay.keys)
        return [(c, i, c in lay.counters) for i, c in enumerate(lay.cols) if c in want]

    def _virtual(self, tables: dict[str, dict[Any, Row]], rows: dict[str, Any]) -> float | None:
        """Add the derived per-device columns; returns ticks per second of one CPU (USER_HZ)
        as the node's own counters measure it (None before two samples)."""
        node = tables.get("node", {}).get(())
        ncpu = len(rows.get("cpu") or ()) or None
        hz = None
        if node is not None and ncpu:
            total = _sum([node.get(f"cpu_{k}") for k in CPU_KINDS])
            if total:
                hz = total / ncpu
        for d in tables.get("cpu", {}).values():
            total = _sum([d.get(k) for k in CPU_KINDS])
            idle = _sum([d.get("idle"), d.get("iowait")])
            d["busy_pct"] = None if not total or idle is None else 100.0 * (total - idle) / total
        for d in tables.get("disk", {}).values():
            io = d.get("io_ms")
            d["util_pct"] = None if io is None else min(100.0, io / 10.0)
            ops = _sum([d.get("reads"), d.get("writes")])
            ms = _sum([d.get("read_ms"), d.get("write_ms")])
            d["await_ms"] = ms / ops if ops and ms is not None else None
        for d in tables.get("fs", {}).values():
            d["used_pct"] = _pct(_f(d.get("used_bytes")), _f(d.get("size_bytes")))
        for d in tables.get("gpu", {}).values():
            d["mem_used_pct"] = _pct(_f(d.get("mem_used")), _f(d.get("mem_total")))
            mw = _f(d.get("power_mw"))
            d["power_w"] = None if mw is None else mw / 1000.0
        mem = tables.get("memory", {}).get(())
        mem_total = _f(mem.get("mem_total")) if mem else None
        for d in tables.get("job", {}).values():
            ticks = _sum([d.get("utime"), d.get("stime")])
            cores = None
            if ticks is not None:
                cores = ticks / (hz or 100.0)
            elif d.get("cg_cpu_ns") is not None:
                cores = d["cg_cpu_ns"] / 1e9
            d["cpu_cores"] = cores
            d["cpu_util_pct"] = _pct(cores, _f(d.get("cpus")) or ncpu)
            d["io_bps"] = _sum([d.get("read_bytes"), d.get("write_bytes")])
            d["mem_pct"] = _pct(_f(d.get("rss_bytes")), mem_total)
            d["mem_limit_pct"] = _pct(_f(d.get("cg_mem_bytes")), _f(d.get("cg_mem_limit_bytes")))
        for d in tables.get("ib", {}).values():
            rate = _f(d.get("rate_gbps"))
            both = _sum([d.get("rcv_bytes"), d.get("xmit_bytes")])
            d["link_pct"] = _pct(both, 2 * rate * 1e9 / 8) if rate and both is not None else None
        return hz

    def _host_values(
        self, tables: dict[str, dict[Any, Row]], hz: float | None, rows: dict[str, Any]
    ) -> dict[str, float | None]:
        v: dict[str, float | None] = dict.fromkeys(HOST_METRICS)
        ncpu = len(rows.get("cpu") or ()) or None
        v["cpus"] = float(ncpu) if ncpu else None
        node = tables.get("node", {}).get(())
        if node is not None:
            ticks = {k: node.get(f"cpu_{k}") for k in CPU_KINDS}
            total = _sum(list(ticks.values()))
            if total:
                idle = (ticks["idle"] or 0.0) + (ticks["iowait"] or 0.0)
                busy = 100.0 * (total - idle) / total
                v["cpu_busy_pct"] = busy
                v["cpu_user_pct"] = 100.0 * ((ticks["user"] or 0) + (ticks["nice"] or 0)) / total
                v["cpu_system_pct"] = (
                    100.0
                    * ((ticks["system"] or 0) + (ticks["irq"] or 0) + (ticks["softirq"] or 0))
                    / total
                )
                v["cpu_iowait_pct"] = 100.0 * (ticks["iowait"] or 0.0) / total
                v["cpu_steal_pct"] = 100.0 * (ticks["steal"] or 0.0) / total
                if ncpu:
                    v["busy_cores"] = busy * ncpu / 100.0
            v["load1"] = _f(node.get("load1"))
            if v["load1"] is not None and ncpu:
                v["load_per_cpu"] = v["load1"] / ncpu
            v["procs_running"] = _f(node.get("procs_running"))
            v["procs_blocked"] = _f(node.get("procs_blocked"))
        mem = tables.get("memory", {}).get(())
        if mem is not None:
            total_b, avail = _f(mem.get("mem_total")), _f(mem.get("mem_available"))
            v["mem_total_bytes"] = total_b
            v["mem_available_bytes"] = avail
            if total_b is not None and avail is not None:
                v["mem_used_bytes"] = total_b - avail
                v["mem_used_pct"] = _pct(total_b - avail, total_b)
            st, sf = _f(mem.get("swap_total")), _f(mem.get("swap_free"))
            if st and sf is not None:
                v["swap_used_pct"] = _pct(st - sf, st)
            v["swap_pages_per_s"] = _sum([mem.get("pswpin"), mem.get("pswpout")])
            v["major_faults_per_s"] = mem.get("pgmajfault")
        net = [d for k, d in tables.get("net", {}).items() if k not in NOT_NETWORK]
        if net:
            v["net_rx_bps"] = _sum([d.get("rx_bytes") for d in net])
            v["net_tx_bps"] = _sum([d.get("tx_bytes") for d in net])
            v["net_bps"] = _sum([v["net_rx_bps"], v["net_tx_bps"]])
            v["net_errors_per_s"] = _sum(
                [d.get(c) for d in net for c in ("rx_errs", "rx_drop", "tx_errs", "tx_drop")]
            )
        disks = [d for k, d in tables.get("disk", {}).items() if not NOT_WHOLE_DISK.search(str(k))]
        if disks:
            v["disk_read_bps"] = _sum([d.get("read_bytes") for d in disks])
            v["disk_write_bps"] = _sum([d.get("write_bytes") for d in disks])
            v["io_bps"] = _sum([v["disk_read_bps"], v["disk_write_bps"]])
            v["disk_iops"] = _sum([d.get(c) for d in disks for c in ("reads", "writes")])
            utils = [d["util_pct"] for d in disks if d.get("util_pct") is not None]
            v["disk_util_pct"] = max(utils) if utils else None
        fs = [d["used_pct"] for d in tables.get("fs", {}).values() if d.get("used_pct") is not None]
        v["fs_used_pct"] = max(fs) if fs else None
        gpus = list(tables.get("gpu", {}).values())
        v["gpus"] = len(gpus) if "gpu" in rows else None
        if gpus:
            util = [_f(d.get("util_gpu")) for d in gpus]
            util_known = [u for u in util if u is not None]
            if util_known:
                v["gpu_util_pct"] = sum(util_known) / len(util_known)
                v["gpu_util_min_pct"] = min(util_known)
            mem_pcts = [d["mem_used_pct"] for d in gpus if d.get("mem_used_pct") is not None]
            v["gpu_mem_used_pct"] = max(mem_pcts) if mem_pcts else None
            v["gpu_power_w"] = _sum([d.get("power_w") for d in gpus])
            temps = [t for d in gpus if (t := _f(d.get("temp_c"))) is not None]
            v["gpu_temp_c"] = max(temps) if temps else None
        ib = list(tables.get("ib", {}).values())
        if ib:
            v["ib_bps"] = _sum([d.get(c) for d in ib for c in ("rcv_bytes", "xmit_bytes")])
            links = [d["link_pct"] for d in ib if d.get("link_pct") is not None]
            v["ib_link_pct"] = max(links) if links else None
        # an agent sends no job rows when no job runs: none is 0, not unknown
        jobs = tables.get("job") or {}
        v["jobs"] = float(len(jobs))
        v["job_procs"] = _sum([_f(d.get("procs")) for d in jobs.values()]) or 0.0
        return v

    def note_events(self, events: Any) -> None:
        for e in events:
            if not isinstance(e, list) or len(e) < 5:
                continue
            t, kind, pid, name, detail = e[:5]
            if kind not in ("job_start", "job_running", "job_end", "process_start"):
                continue
            try:
                d = json.loads(detail) if detail else {}
            except (TypeError, ValueError):
                d = {}
            if not isinstance(d, dict):
                d = {}
            if kind == "process_start":
                job = d.get("job")
                if job is None:
                    continue
                info = self.jobs.setdefault(str(job), JobInfo(str(job)))
                if info.command is None:
                    cmd = d.get("cmdline")
                    exe = cmd[0] if isinstance(cmd, list) and cmd else name
                    info.command = str(exe).rsplit("/", 1)[-1] or None
                continue
            info = self.jobs.setdefault(str(name), JobInfo(str(name)))
            if kind == "job_end":
                info.ended_ms = int(t) if isinstance(t, (int, float)) else 0
                continue
            info.user = d.get("user") or info.user
            info.name = d.get("job_name") or info.name
            info.scheduler = d.get("scheduler") or info.scheduler
            if isinstance(d.get("cpus"), int):
                info.cpus = d["cpus"]
            since = d.get("since") if kind == "job_running" else None
            if isinstance(since, (int, float)):
                info.start_ms = int(since * 1000)
            elif info.start_ms is None and isinstance(t, (int, float)):
                info.start_ms = int(t)


_PROC = LAYOUTS["proc"]
_GPU_PROC = LAYOUTS["gpu_proc"]


def _gpu_jobs(rows: dict[str, Any]) -> dict[str, list[str]]:
    """GPU -> the jobs whose processes hold memory on it (gpu_proc's pids in proc's jobs)."""
    gp = rows.get("gpu_proc")
    if not gp:
        return {}
    pid_i, job_i = _PROC.index["pid"], _PROC.index["job"]
    jobs = {r[pid_i]: r[job_i] for r in rows.get("proc") or () if len(r) > job_i and r[job_i]}
    gi, pi = _GPU_PROC.index["gpu"], _GPU_PROC.index["pid"]
    out: dict[str, set[str]] = {}
    for r in gp:
        job = jobs.get(r[pi]) if len(r) > pi else None
        if job:
            out.setdefault(str(r[gi]), set()).add(str(job))
    return {g: sorted(js) for g, js in out.items()}
