"""The tables of a .para file and the metric catalogue that describes their columns.

Every table is tidy: one row per (sampling instant, device).  A sampler fills rows in the
column order declared here; the writer stores them; readers find units and kinds in the
catalogue that the file carries (so a reader never needs this module to understand a file,
and a newer writer can add columns or tables without breaking older readers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["counter", "gauge", "info"]
ColType = Literal["int", "float", "str"]


@dataclass(frozen=True)
class Column:
    name: str
    unit: str
    kind: Kind
    source: str
    description: str
    type: ColType = "int"

    def as_dict(self, table: str) -> dict[str, str]:
        return {
            "table": table,
            "name": self.name,
            "unit": self.unit,
            "kind": self.kind,
            "type": self.type,
            "source": self.source,
            "description": self.description,
        }


@dataclass(frozen=True)
class Table:
    name: str
    description: str
    keys: tuple[Column, ...]
    metrics: tuple[Column, ...]
    # Rows of these tables carry their own time (first element) instead of the sample's.
    timed_rows: bool = False
    # Columns whose cells are payload but not numeric series (text of events, stacks).
    payload: tuple[Column, ...] = field(default_factory=tuple)

    @property
    def columns(self) -> tuple[Column, ...]:
        return self.keys + self.metrics + self.payload

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


def _counter(name: str, unit: str, source: str, description: str) -> Column:
    return Column(name, unit, "counter", source, description)


def _gauge(name: str, unit: str, source: str, description: str, type: ColType = "int") -> Column:
    return Column(name, unit, "gauge", source, description, type)


CPU_FIELDS = (
    ("user", "time in user mode"),
    ("nice", "time in user mode at low priority"),
    ("system", "time in kernel mode"),
    ("idle", "idle time"),
    ("iowait", "idle time with I/O outstanding"),
    ("irq", "time servicing hardware interrupts"),
    ("softirq", "time servicing soft interrupts"),
    ("steal", "time stolen by the hypervisor"),
    ("guest", "time running a guest (included in user)"),
    ("guest_nice", "time running a niced guest (included in nice)"),
)

MEMINFO_FIELDS = (
    ("mem_total", "MemTotal", "total usable RAM"),
    ("mem_free", "MemFree", "unused RAM"),
    ("mem_available", "MemAvailable", "RAM available for new work without swapping"),
    ("mem_buffers", "Buffers", "block device buffers"),
    ("mem_cached", "Cached", "page cache"),
    ("mem_dirty", "Dirty", "memory waiting to be written back"),
    ("mem_writeback", "Writeback", "memory being written back"),
    ("mem_shmem", "Shmem", "shared memory and tmpfs"),
    ("mem_slab_reclaimable", "SReclaimable", "reclaimable kernel slab"),
    ("swap_total", "SwapTotal", "total swap"),
    ("swap_free", "SwapFree", "unused swap"),
)

VMSTAT_FIELDS = (
    ("pgfault", "pgfault", "page faults (minor and major)"),
    ("pgmajfault", "pgmajfault", "major page faults (needed I/O)"),
    ("pswpin", "pswpin", "pages swapped in"),
    ("pswpout", "pswpout", "pages swapped out"),
    ("pgpgin", "pgpgin", "KiB paged in from block devices"),
    ("pgpgout", "pgpgout", "KiB paged out to block devices"),
)

T = Column("t", "ms since epoch", "info", "para", "sampling instant (UTC)")

NODE = Table(
    "node",
    "node-wide CPU time, scheduler activity and load",
    keys=(T,),
    metrics=tuple(
        _counter(f"cpu_{n}", "ticks", "/proc/stat cpu", f"all CPUs: {d}") for n, d in CPU_FIELDS
    )
    + (
        _counter("ctxt", "switches", "/proc/stat ctxt", "context switches"),
        _counter("intr", "interrupts", "/proc/stat intr", "interrupts serviced"),
        _counter("forks", "processes", "/proc/stat processes", "processes and threads created"),
        _gauge("procs_running", "tasks", "/proc/stat procs_running", "runnable tasks"),
        _gauge("procs_blocked", "tasks", "/proc/stat procs_blocked", "tasks blocked on I/O"),
        _gauge("load1", "load", "/proc/loadavg", "1-minute load average", "float"),
        _gauge("load5", "load", "/proc/loadavg", "5-minute load average", "float"),
        _gauge("load15", "load", "/proc/loadavg", "15-minute load average", "float"),
    ),
)

MEMORY = Table(
    "memory",
    "node memory, swap and paging (used = mem_total - mem_available, as free(1) reports it)",
    keys=(T,),
    metrics=tuple(_gauge(n, "bytes", f"/proc/meminfo {k}", d) for n, k, d in MEMINFO_FIELDS)
    + tuple(
        _counter(n, "KiB" if n.startswith("pgpg") else "events", f"/proc/vmstat {k}", d)
        for n, k, d in VMSTAT_FIELDS
    ),
)

CPU = Table(
    "cpu",
    "per logical CPU: time by kind and clock frequency",
    keys=(T, Column("cpu", "index", "info", "/proc/stat cpuN", "logical CPU number")),
    metrics=tuple(_counter(n, "ticks", "/proc/stat cpuN", d) for n, d in CPU_FIELDS)
    + (
        _gauge(
            "freq_khz",
            "kHz",
            "cpufreq scaling_cur_freq, else /proc/cpuinfo every 10 samples",
            "current clock frequency",
        ),
    ),
)

NET_FIELDS = (
    ("rx_bytes", "bytes", "bytes received"),
    ("rx_packets", "packets", "packets received"),
    ("rx_errs", "errors", "receive errors"),
    ("rx_drop", "packets", "received packets dropped"),
    ("tx_bytes", "bytes", "bytes sent"),
    ("tx_packets", "packets", "packets sent"),
    ("tx_errs", "errors", "transmit errors"),
    ("tx_drop", "packets", "packets dropped on transmit"),
)

NET = Table(
    "net",
    "per network interface",
    keys=(T, Column("iface", "name", "info", "/proc/net/dev", "interface name", "str")),
    metrics=tuple(_counter(n, u, "/proc/net/dev", d) for n, u, d in NET_FIELDS),
)

DISK_FIELDS = (
    ("reads", "counter", "ops", "reads completed"),
    ("reads_merged", "counter", "ops", "adjacent reads merged"),
    ("read_bytes", "counter", "bytes", "bytes read"),
    ("read_ms", "counter", "ms", "time spent reading"),
    ("writes", "counter", "ops", "writes completed"),
    ("writes_merged", "counter", "ops", "adjacent writes merged"),
    ("write_bytes", "counter", "bytes", "bytes written"),
    ("write_ms", "counter", "ms", "time spent writing"),
    ("in_flight", "gauge", "requests", "I/Os in progress"),
    ("io_ms", "counter", "ms", "time with I/O in progress (utilisation)"),
    ("weighted_io_ms", "counter", "ms", "time-weighted I/O (queue length x time)"),
    ("discards", "counter", "ops", "discards completed"),
    ("discards_merged", "counter", "ops", "adjacent discards merged"),
    ("discard_bytes", "counter", "bytes", "bytes discarded"),
    ("discard_ms", "counter", "ms", "time spent discarding"),
    ("flushes", "counter", "ops", "flush requests completed"),
    ("flush_ms", "counter", "ms", "time spent flushing"),
)

DISK = Table(
    "disk",
    "per block device (util = d io_ms / d t; await = d(read_ms+write_ms) / d(reads+writes))",
    keys=(T, Column("device", "name", "info", "/proc/diskstats", "block device", "str")),
    metrics=tuple(
        Column(n, u, k, "/proc/diskstats", d)  # type: ignore[arg-type]
        for n, k, u, d in DISK_FIELDS
    ),
)

FS = Table(
    "fs",
    "per mounted filesystem (local and network; pseudo filesystems left out)",
    keys=(T, Column("mount", "path", "info", "/proc/self/mountinfo", "mount point", "str")),
    metrics=(
        _gauge("size_bytes", "bytes", "statvfs", "filesystem size"),
        _gauge("used_bytes", "bytes", "statvfs", "space used"),
        _gauge("avail_bytes", "bytes", "statvfs", "space available to unprivileged users"),
        _gauge("files", "inodes", "statvfs", "inodes in total"),
        _gauge("files_free", "inodes", "statvfs", "inodes free"),
    ),
)

PROC = Table(
    "proc",
    "per process of the profiled job (the whole tree, re-parented children included)",
    keys=(T, Column("pid", "pid", "info", "/proc/PID", "process id")),
    metrics=(
        _gauge("ppid", "pid", "/proc/PID/stat", "parent process id"),
        Column(
            "state", "code", "gauge", "/proc/PID/stat", "scheduler state (R S D Z T ...)", "str"
        ),
        _counter("utime", "ticks", "/proc/PID/stat", "user CPU time"),
        _counter("stime", "ticks", "/proc/PID/stat", "system CPU time"),
        _gauge("rss_bytes", "bytes", "/proc/PID/stat", "resident set size"),
        _gauge("vsize_bytes", "bytes", "/proc/PID/stat", "virtual memory size"),
        _gauge("threads", "threads", "/proc/PID/stat", "threads"),
        _gauge("processor", "index", "/proc/PID/stat", "CPU it last ran on"),
        _counter("minflt", "faults", "/proc/PID/stat", "minor page faults"),
        _counter("majflt", "faults", "/proc/PID/stat", "major page faults"),
        _counter("vol_ctxt", "switches", "/proc/PID/status", "voluntary context switches"),
        _counter("invol_ctxt", "switches", "/proc/PID/status", "involuntary context switches"),
        _counter("rchar", "bytes", "/proc/PID/io", "bytes read (any source)"),
        _counter("wchar", "bytes", "/proc/PID/io", "bytes written (any target)"),
        _counter("read_bytes", "bytes", "/proc/PID/io", "bytes read from storage"),
        _counter("write_bytes", "bytes", "/proc/PID/io", "bytes written to storage"),
    ),
)

GPU = Table(
    "gpu",
    "per GPU (NVML)",
    keys=(T, Column("gpu", "index", "info", "NVML", "GPU index (MIG instances as gpu.N)", "str")),
    metrics=(
        _gauge("util_gpu", "%", "nvmlDeviceGetUtilizationRates", "kernel-busy share of time"),
        _gauge("util_mem", "%", "nvmlDeviceGetUtilizationRates", "memory-controller busy share"),
        _gauge("mem_used", "bytes", "nvmlDeviceGetMemoryInfo", "device memory used"),
        _gauge("mem_total", "bytes", "nvmlDeviceGetMemoryInfo", "device memory in total"),
        _gauge("power_mw", "mW", "nvmlDeviceGetPowerUsage", "board power draw"),
        _counter("energy_mj", "mJ", "nvmlDeviceGetTotalEnergyConsumption", "energy since load"),
        _gauge("temp_c", "degC", "nvmlDeviceGetTemperature", "GPU temperature"),
        _gauge("sm_clock_mhz", "MHz", "nvmlDeviceGetClockInfo", "SM clock"),
        _gauge("mem_clock_mhz", "MHz", "nvmlDeviceGetClockInfo", "memory clock"),
        _gauge("pcie_tx_kbs", "KB/s", "nvmlDeviceGetPcieThroughput", "PCIe transmit"),
        _gauge("pcie_rx_kbs", "KB/s", "nvmlDeviceGetPcieThroughput", "PCIe receive"),
        _counter("ecc_corrected", "errors", "nvmlDeviceGetTotalEccErrors", "corrected ECC errors"),
        _counter(
            "ecc_uncorrected", "errors", "nvmlDeviceGetTotalEccErrors", "uncorrected ECC errors"
        ),
        _gauge(
            "throttle_reasons",
            "bitmask",
            "nvmlDeviceGetCurrentClocksEventReasons",
            "clock throttle reasons (NVML bitmask)",
        ),
    ),
)

GPU_PROC = Table(
    "gpu_proc",
    "GPU memory per process",
    keys=(
        T,
        Column("gpu", "index", "info", "NVML", "GPU index", "str"),
        Column("pid", "pid", "info", "NVML", "process id"),
    ),
    metrics=(_gauge("mem_used", "bytes", "nvmlDeviceGetComputeRunningProcesses", "GPU memory"),),
)

COUNTERS = Table(
    "counters",
    "hardware and software performance counters (perf stat -I), one row per event and interval",
    keys=(
        T,
        Column("event", "name", "info", "perf stat", "perf event name", "str"),
    ),
    metrics=(
        Column("value", "event unit", "counter", "perf stat", "count in the interval", "float"),
        _gauge("running_pct", "%", "perf stat", "share of the interval the event was counted"),
    ),
    timed_rows=True,
)

EVENTS = Table(
    "events",
    "things that happened: job and process start and end, sampler trouble, notes",
    keys=(T,),
    metrics=(),
    payload=(
        Column("kind", "name", "info", "para", "event kind", "str"),
        Column("pid", "pid", "info", "para", "process concerned, if any"),
        Column("name", "text", "info", "para", "short subject (command, family, ...)", "str"),
        Column("detail", "json", "info", "para", "details as a JSON object", "str"),
    ),
    timed_rows=True,
)

STACKS = Table(
    "stacks",
    "sampled call stacks (perf record), folded root-first and counted per second",
    keys=(
        T,
        Column("pid", "pid", "info", "perf record", "process id"),
        Column("tid", "tid", "info", "perf record", "thread id"),
        Column("comm", "name", "info", "perf record", "command name", "str"),
        Column("stack", "frames", "info", "perf record", "frames root-first, joined by ;", "str"),
    ),
    metrics=(_counter("samples", "samples", "perf record", "samples with this stack"),),
    timed_rows=True,
)

TABLES: dict[str, Table] = {
    t.name: t
    for t in (NODE, MEMORY, CPU, NET, DISK, FS, PROC, GPU, GPU_PROC, COUNTERS, EVENTS, STACKS)
}


def catalogue(tables: list[str] | None = None) -> list[dict[str, str]]:
    """The metric catalogue entries of the given tables (all by default)."""
    names = tables if tables is not None else list(TABLES)
    return [c.as_dict(n) for n in names for c in TABLES[n].columns]
