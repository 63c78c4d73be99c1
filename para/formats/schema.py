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
        # the CPU of its children once it has waited for them: what processes too short to be
        # sampled used (the analyzer adds it, less what it saw of those children itself)
        _counter("cutime", "ticks", "/proc/PID/stat", "user CPU time of its waited-for children"),
        _counter("cstime", "ticks", "/proc/PID/stat", "system CPU time of its waited-for children"),
    ),
    # Added for `para agent` (issue 3): the job a process belongs to on a shared node.
    payload=(
        # Added for issue 10: the ranks of an MPI job, told apart (null: not launched as one);
        # before job and step, which rows end with
        Column(
            "rank",
            "rank",
            "info",
            "/proc/PID/environ",
            "MPI rank (OMPI_COMM_WORLD_RANK, PMIX_RANK, PMI_RANK or SLURM_PROCID)",
        ),
        Column(
            "job",
            "id",
            "info",
            "/proc/PID/cgroup, else /proc/PID/environ",
            "batch job or pod the process belongs to (null: none, or `para profile`)",
            "str",
        ),
        Column("step", "id", "info", "/proc/PID/cgroup", "job step (Slurm), if known", "str"),
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
    # issue 12: Python stacks (py-spy) beside perf's; absent in older files (perf, cpu)
    payload=(
        Column(
            "source",
            "name",
            "info",
            "para",
            "who named the frames: perf, or py-spy (the "
            "Python frames; the native ones below them and the sample itself from perf)",
            "str",
        ),
        Column(
            "state",
            "name",
            "info",
            "para",
            "cpu: perf sampled the thread on a CPU; wait: py-spy saw the thread in this "
            "stack while perf did not (sleep, I/O, a lock, the GIL); ready: the same time "
            "spent runnable, waiting for a CPU (schedstat); in samples of perf's period",
            "str",
        ),
        # issue 13: the agent samples every job's stacks; absent in `para profile` files
        Column("job", "id", "info", "para agent", "batch job id of the process", "str"),
        Column(
            "sample_s",
            "s",
            "info",
            "para agent",
            "CPU seconds each sample stands for (1 / perf's frequency)",
            "float",
        ),
    ),  # fmt: skip
)

INSTR_SAMPLES = Table(
    "instr_samples",
    "where inside each function the samples fell (the leaf frame of each perf record sample), "
    "for per-instruction shares; t is the end of the recording",
    keys=(
        T,
        Column("pid", "pid", "info", "perf record", "process id"),
        Column("dso", "path", "info", "perf record", "binary or library of the instruction", "str"),
        Column("symbol", "name", "info", "perf record", "function containing it", "str"),
        Column("offset", "bytes", "info", "perf record", "offset from the function's start"),
    ),
    metrics=(_counter("samples", "samples", "perf record", "samples at that instruction"),),
    # issue 13: the agent's rows name their job and the binary's GNU build id (symbols can be
    # resolved later, even once the binary is gone or rebuilt); absent in older files
    payload=(
        Column("job", "id", "info", "para agent", "batch job id of the process", "str"),
        Column("build_id", "hex", "info", "ELF note", "GNU build id of the binary", "str"),
    ),
)

# -- Added for `para agent` (issue 3): jobs on shared nodes and the families of a cluster node.

_JOB_KEY = Column("job", "id", "info", "para agent", "batch job id or pod uid", "str")
_CG = "cgroup of the job"

JOB = Table(
    "job",
    "per job on the node, each sample: its processes summed (ended ones included in the "
    "counters, as last seen) and its cgroup's own accounting where the scheduler made one",
    keys=(T, _JOB_KEY),
    metrics=(
        _gauge("procs", "processes", "/proc/PID", "live processes of the job"),
        _gauge("threads", "threads", "/proc/PID/stat", "threads of its live processes"),
        _counter(
            "utime",
            "ticks",
            "/proc/PID/stat",
            "user CPU time of its processes and the children they waited for",
        ),
        _counter(
            "stime",
            "ticks",
            "/proc/PID/stat",
            "system CPU time of its processes and the children they waited for",
        ),
        _gauge("rss_bytes", "bytes", "/proc/PID/stat", "resident memory of its live processes"),
        _counter("rchar", "bytes", "/proc/PID/io", "bytes read by its processes (any source)"),
        _counter("wchar", "bytes", "/proc/PID/io", "bytes written by its processes (any target)"),
        _counter("read_bytes", "bytes", "/proc/PID/io", "bytes its processes read from storage"),
        _counter("write_bytes", "bytes", "/proc/PID/io", "bytes its processes wrote to storage"),
        _gauge("gpu_mem_bytes", "bytes", "NVML", "GPU memory held by its processes"),
        _gauge(
            "gpu_sm_pct",
            "%",
            "nvmlDeviceGetProcessUtilization",
            "SM utilisation of its processes, summed over processes and GPUs",
        ),
        _counter("cg_cpu_ns", "ns", _CG, "CPU time (cpu.stat usage_usec, cpuacct.usage)"),
        _gauge("cg_mem_bytes", "bytes", _CG, "memory charged (memory.current, usage_in_bytes)"),
        _gauge("cg_mem_peak_bytes", "bytes", _CG, "peak memory (memory.peak, max_usage_in_bytes)"),
        _gauge("cg_mem_limit_bytes", "bytes", _CG, "memory limit (memory.max, limit_in_bytes)"),
        _counter("cg_read_bytes", "bytes", _CG, "bytes read from block devices (io.stat, blkio)"),
        _counter("cg_write_bytes", "bytes", _CG, "bytes written to block devices"),
        _counter("cg_throttled_us", "us", _CG, "time throttled by its CPU quota (cpu.stat)"),
        _counter("cg_oom_kills", "events", _CG, "processes killed by the OOM killer in it"),
        _gauge("cpus", "CPUs", _CG, "CPUs allocated (cpuset), else the processes' affinity"),
    ),
    payload=(
        Column(
            "scheduler", "name", "info", "para agent", "slurm pbs torque lsf flux k8s ...", "str"
        ),
    ),
)

JOB_COUNTERS = Table(
    "job_counters",
    "hardware counters per job cgroup (perf stat --for-each-cgroup), per event and interval",
    keys=(T, _JOB_KEY, Column("event", "name", "info", "perf stat", "perf event name", "str")),
    metrics=(
        Column("value", "event unit", "counter", "perf stat", "count in the interval", "float"),
        _gauge("running_pct", "%", "perf stat", "share of the interval the event was counted"),
    ),
    timed_rows=True,
)

_NVML_UTIL = "nvmlDeviceGetProcessUtilization"
GPU_PROC_UTIL = Table(
    "gpu_proc_util",
    "GPU utilisation per process (NVML's per-process samples, averaged over the interval)",
    keys=(
        T,
        Column("gpu", "index", "info", "NVML", "GPU index", "str"),
        Column("pid", "pid", "info", "NVML", "process id"),
    ),
    metrics=(
        _gauge("sm_pct", "%", _NVML_UTIL, "SM (kernel) utilisation"),
        _gauge("mem_pct", "%", _NVML_UTIL, "memory-controller utilisation"),
        _gauge("enc_pct", "%", _NVML_UTIL, "video encoder utilisation"),
        _gauge("dec_pct", "%", _NVML_UTIL, "video decoder utilisation"),
    ),
)

_IB = "/sys/class/infiniband/DEV/ports/N/counters"
_IB_HW = "/sys/class/infiniband/DEV/ports/N/hw_counters"
IB_FIELDS = (
    # (column, unit, where, description); the data counters count 4-byte words, stored as bytes
    ("rcv_bytes", "bytes", _IB, "bytes received (port_rcv_data x 4; 64-bit counter if offered)"),
    ("xmit_bytes", "bytes", _IB, "bytes sent (port_xmit_data x 4)"),
    ("rcv_packets", "packets", _IB, "packets received"),
    ("xmit_packets", "packets", _IB, "packets sent"),
    ("unicast_rcv_packets", "packets", _IB, "unicast packets received"),
    ("unicast_xmit_packets", "packets", _IB, "unicast packets sent"),
    ("multicast_rcv_packets", "packets", _IB, "multicast packets received"),
    ("multicast_xmit_packets", "packets", _IB, "multicast packets sent"),
    ("rcv_errors", "packets", _IB, "packets received with errors"),
    ("xmit_discards", "packets", _IB, "outbound packets discarded (port down or congested)"),
    ("xmit_wait", "ticks", _IB, "ticks with data to send but no credit (congestion)"),
    ("symbol_errors", "errors", _IB, "minor link errors"),
    ("link_downed", "events", _IB, "times the link went down"),
    ("link_error_recovery", "events", _IB, "successful link error recoveries"),
    ("local_link_integrity_errors", "errors", _IB, "local physical errors past threshold"),
    ("excessive_buffer_overrun_errors", "errors", _IB, "consecutive flow-control overruns"),
    ("rcv_remote_physical_errors", "packets", _IB, "packets with remote physical errors"),
    ("rcv_switch_relay_errors", "packets", _IB, "packets the switch could not relay"),
    ("rcv_constraint_errors", "packets", _IB, "received packets dropped by constraints"),
    ("xmit_constraint_errors", "packets", _IB, "outbound packets dropped by constraints"),
    ("vl15_dropped", "packets", _IB, "subnet management packets dropped"),
    ("out_of_buffer", "events", _IB_HW, "RoCE/RDMA: drops for lack of receive WQEs"),
    ("out_of_sequence", "packets", _IB_HW, "RoCE/RDMA: out-of-sequence packets received"),
    ("packet_seq_err", "events", _IB_HW, "RoCE/RDMA: NAK sequence errors received"),
    ("local_ack_timeout_err", "events", _IB_HW, "RoCE/RDMA: ACK timeouts (retransmissions)"),
    ("rnr_nak_retry_err", "events", _IB_HW, "RoCE/RDMA: receiver-not-ready retries exceeded"),
    ("np_cnp_sent", "packets", _IB_HW, "RoCE: congestion notifications sent (ECN seen)"),
    ("rp_cnp_handled", "packets", _IB_HW, "RoCE: congestion notifications acted upon"),
)

IB = Table(
    "ib",
    "per InfiniBand / RoCE / Omni-Path port (DEV:PORT): traffic, errors, congestion",
    keys=(T, Column("port", "name", "info", "/sys/class/infiniband", "device:port", "str")),
    metrics=tuple(_counter(n, u, w, d) for n, u, w, d in IB_FIELDS)
    + (
        _gauge("state", "code", "/sys/class/infiniband/DEV/ports/N/state", "4 = ACTIVE"),
        _gauge("rate_gbps", "Gb/s", "/sys/class/infiniband/DEV/ports/N/rate", "link rate", "float"),
    ),
)

_MS = "/proc/self/mountstats"
NFS_FIELDS = (
    ("read_bytes", "bytes", "bytes: read by applications (page cache included)"),
    ("write_bytes", "bytes", "bytes: written by applications"),
    ("direct_read_bytes", "bytes", "bytes: read with O_DIRECT"),
    ("direct_write_bytes", "bytes", "bytes: written with O_DIRECT"),
    ("server_read_bytes", "bytes", "bytes: read from the server (READ replies)"),
    ("server_write_bytes", "bytes", "bytes: written to the server (WRITE calls)"),
    ("pages_read", "pages", "bytes: pages read"),
    ("pages_written", "pages", "bytes: pages written"),
    ("rpc_sends", "calls", "xprt: RPC requests sent"),
    ("rpc_recvs", "calls", "xprt: RPC replies received"),
    ("rpc_bad_xids", "calls", "xprt: replies that matched no request"),
    ("rpc_req_u", "requests", "xprt: cumulative requests in flight (divide by sends)"),
    ("rpc_backlog_u", "requests", "xprt: cumulative backlog queue length (divide by sends)"),
    ("inode_revalidate", "events", "events: inode attribute revalidations"),
    ("dentry_revalidate", "events", "events: directory entry revalidations"),
    ("data_invalidate", "events", "events: page cache invalidations"),
    ("vfs_open", "calls", "events: opens"),
    ("vfs_lookup", "calls", "events: lookups"),
    ("vfs_getdents", "calls", "events: directory reads"),
    ("vfs_setattr", "calls", "events: attribute changes"),
    ("vfs_fsync", "calls", "events: fsyncs"),
    ("short_read", "events", "events: reads the server answered with fewer bytes"),
    ("short_write", "events", "events: writes the server took partially"),
    ("delay", "events", "events: server said try again later (EJUKEBOX)"),
)

NFS = Table(
    "nfs",
    "per NFS mount (client side): bytes, RPC transport and VFS events",
    keys=(T, Column("mount", "path", "info", _MS, "mount point", "str")),
    metrics=tuple(_counter(n, u, _MS, d) for n, u, d in NFS_FIELDS),
)

NFS_OPS = Table(
    "nfs_ops",
    "per NFS mount and RPC operation (READ, WRITE, GETATTR, ...): calls, bytes and latency",
    keys=(
        T,
        Column("mount", "path", "info", _MS, "mount point", "str"),
        Column("op", "name", "info", _MS, "NFS operation", "str"),
    ),
    metrics=(
        _counter("ops", "calls", _MS, "operations requested"),
        _counter("transmissions", "calls", _MS, "transmissions (retries included)"),
        _counter("timeouts", "events", _MS, "major timeouts"),
        _counter("bytes_sent", "bytes", _MS, "bytes sent, headers included"),
        _counter("bytes_recv", "bytes", _MS, "bytes received, headers included"),
        _counter("queue_ms", "ms", _MS, "time queued before transmission, summed"),
        _counter("rtt_ms", "ms", _MS, "round-trip time, summed (divide by ops)"),
        _counter("exe_ms", "ms", _MS, "time from queueing to completion, summed"),
        _counter("errors", "calls", _MS, "operations that ended in an error (kernel 5.3+)"),
    ),
)

_LL = "llite/FS/stats (/proc/fs/lustre or /sys/kernel/debug/lustre)"
LUSTRE_OPS = (
    "open",
    "close",
    "mmap",
    "seek",
    "fsync",
    "readdir",
    "setattr",
    "truncate",
    "getattr",
    "create",
    "unlink",
    "mkdir",
    "rmdir",
    "rename",
    "statfs",
    "getxattr",
    "setxattr",
    "inode_permission",
)

LUSTRE = Table(
    "lustre",
    "per Lustre filesystem mounted on the node (client llite statistics)",
    keys=(T, Column("fs", "name", "info", _LL, "filesystem name (llite instance)", "str")),
    metrics=(
        _counter("read_bytes", "bytes", _LL, "bytes read (read_bytes sum)"),
        _counter("write_bytes", "bytes", _LL, "bytes written (write_bytes sum)"),
        _counter("reads", "calls", _LL, "read calls (read_bytes samples)"),
        _counter("writes", "calls", _LL, "write calls (write_bytes samples)"),
    )
    + tuple(_counter(op, "calls", _LL, f"{op} operations") for op in LUSTRE_OPS),
)

_RAPL = "/sys/class/powercap/*/energy_uj"
ENERGY = Table(
    "energy",
    "RAPL energy counters per zone (package-N, package-N/core, package-N/dram, psys)",
    keys=(T, Column("zone", "name", "info", "/sys/class/powercap/*/name", "RAPL zone", "str")),
    metrics=(
        _counter("energy_uj", "uJ", _RAPL, "energy since an arbitrary start; wraps at max_range"),
        _gauge("max_range_uj", "uJ", "max_energy_range_uj", "value at which energy_uj wraps"),
    ),
)

_IPMI = "ipmitool"
IPMI_POWER = Table(
    "ipmi_power",
    "node power from the BMC (ipmitool dcmi power reading, or sdr sensors in Watts)",
    keys=(T, Column("sensor", "name", "info", _IPMI, "'dcmi' or the SDR sensor name", "str")),
    metrics=(
        _gauge("watts", "W", _IPMI, "instantaneous power", "float"),
        _gauge("min_watts", "W", _IPMI, "minimum over the BMC's sampling period (dcmi)", "float"),
        _gauge("max_watts", "W", _IPMI, "maximum over the BMC's sampling period (dcmi)", "float"),
        _gauge("avg_watts", "W", _IPMI, "average over the BMC's sampling period (dcmi)", "float"),
    ),
)

_LM = "lmutil lmstat -a"
_SERVER = Column("server", "port@host", "info", "agent config", "license server", "str")
_FEATURE = Column("feature", "name", "info", _LM, "licensed feature", "str")
LICENSE = Table(
    "license",
    "FlexLM features per license server, polled every few tens of seconds",
    keys=(T, _SERVER, _FEATURE),
    metrics=(
        _gauge("issued", "licenses", _LM, "licenses issued (null: uncounted)"),
        _gauge("in_use", "licenses", _LM, "licenses in use"),
        _gauge("reserved", "licenses", _LM, "licenses held by RESERVATION lines"),
        _gauge("queued", "requests", _LM, "requests queued for the feature"),
    ),
    payload=(Column("vendor", "name", "info", _LM, "vendor daemon", "str"),),
)

LICENSE_USE = Table(
    "license_use",
    "who holds FlexLM licenses: per server, feature, user and host, at each poll",
    keys=(
        T,
        _SERVER,
        _FEATURE,
        Column("user", "name", "info", _LM, "user holding the licenses", "str"),
        Column("host", "name", "info", _LM, "host the licenses are used on", "str"),
    ),
    metrics=(_gauge("licenses", "licenses", _LM, "licenses held"),),
)

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        NODE,
        MEMORY,
        CPU,
        NET,
        DISK,
        FS,
        PROC,
        GPU,
        GPU_PROC,
        COUNTERS,
        EVENTS,
        STACKS,
        INSTR_SAMPLES,
        JOB,
        JOB_COUNTERS,
        GPU_PROC_UTIL,
        IB,
        NFS,
        NFS_OPS,
        LUSTRE,
        ENERGY,
        IPMI_POWER,
        LICENSE,
        LICENSE_USE,
    )
}


def catalogue(tables: list[str] | None = None) -> list[dict[str, str]]:
    """The metric catalogue entries of the given tables (all by default)."""
    names = tables if tables is not None else list(TABLES)
    return [c.as_dict(n) for n in names for c in TABLES[n].columns]
