"""Hardware-counter event sets per CPU family, and per-job counting through cgroups.

What to count depends on the processor: IPC needs cycles and instructions (every PMU), the
FLOP rate needs the floating-point retirement events, whose names differ between Intel
(fp_arith_inst_retired.*, Skylake on) and AMD Zen (fp_ret_sse_avx_ops.all on Zen 1-3,
fp_ops_retired_by_type.* on Zen 4-5), and memory bandwidth needs an uncore PMU (Intel
uncore_imc CAS counts on servers, free-running IMC counters on newer parts; AMD's data-fabric
and UMC PMUs).  The candidates below are the names perf's event lists use; each is kept only
if this machine's perf lists it (`perf list --raw-dump`) or its PMU exposes it in sysfs, so a
laptop, a VM or an older kernel simply counts less, and says which groups it could not count.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from para.agent.samplers.base import Rows, Unavailable
from para.agent.samplers.perfstat import (
    COUNTED,
    SEP,
    PerfStatSampler,
    parse_line,
)

BASE = ("cycles", "instructions")

EVENT_GROUPS: dict[str, dict[str, tuple[str, ...]]] = {
    "intel": {
        "ipc": ("cycles", "instructions", "ref-cycles"),
        "flops": (
            "fp_arith_inst_retired.scalar_single",
            "fp_arith_inst_retired.scalar_double",
            "fp_arith_inst_retired.128b_packed_single",
            "fp_arith_inst_retired.128b_packed_double",
            "fp_arith_inst_retired.256b_packed_single",
            "fp_arith_inst_retired.256b_packed_double",
            "fp_arith_inst_retired.512b_packed_single",
            "fp_arith_inst_retired.512b_packed_double",
        ),
        "memory_bandwidth": (
            "uncore_imc/cas_count_read/",
            "uncore_imc/cas_count_write/",
            "uncore_imc_free_running/data_read/",
            "uncore_imc_free_running/data_write/",
        ),
    },
    "amd-zen": {
        "ipc": ("cycles", "instructions"),
        "flops": (
            "fp_ret_sse_avx_ops.all",
            "fp_ops_retired_by_type.scalar_all",
            "fp_ops_retired_by_type.vector_all",
        ),
        "memory_bandwidth": (
            "umc_cas_cmd.rd",
            "umc_cas_cmd.wr",
            "local_or_remote_socket_read_data_beats_dram_0",
            "local_or_remote_socket_write_data_beats_dram_0",
        ),
    },
    "other": {"ipc": ("cycles", "instructions")},
}
# Uncore events are system-wide: never per cgroup.
SYSTEM_ONLY = ("memory_bandwidth",)


@dataclass
class CpuId:
    vendor: str  # GenuineIntel, AuthenticAMD, ...
    family: int | None
    model: int | None
    name: str

    @property
    def kind(self) -> str:
        if self.vendor == "GenuineIntel":
            return "intel"
        if self.vendor in ("AuthenticAMD", "HygonGenuine") and (self.family or 0) >= 0x17:
            return "amd-zen"
        return "other"


def cpu_id(cpuinfo: bytes) -> CpuId:
    vendor, family, model, name = "", None, None, ""
    for line in cpuinfo.decode(errors="replace").splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "vendor_id" and not vendor:
            vendor = value
        elif key == "cpu family" and family is None and value.isdigit():
            family = int(value)
        elif key == "model" and model is None and value.isdigit():
            model = int(value)
        elif key == "model name" and not name:
            name = value
        elif not line.strip() and vendor:
            break
    return CpuId(vendor, family, model, name)


@dataclass
class EventSet:
    kind: str
    events: list[str]
    groups: dict[str, list[str]] = field(default_factory=dict)  # group -> events kept
    missing: dict[str, list[str]] = field(default_factory=dict)  # group -> candidates absent


def _pmu_event_exists(event: str, sysfs_pmus: Path | None) -> bool:
    """'uncore_imc/cas_count_read/' exists when some uncore_imc* PMU lists cas_count_read."""
    if sysfs_pmus is None or "/" not in event:
        return False
    pmu, _, rest = event.partition("/")
    name = rest.strip("/").split(",")[0]
    try:
        devices = os.listdir(sysfs_pmus)
    except OSError:
        return False
    return any(
        d == pmu or d.startswith(pmu + "_")
        for d in devices
        if (sysfs_pmus / d / "events" / name).exists()
    )


def choose_events(
    cpuinfo: bytes,
    listed: set[str] | None,
    sysfs_pmus: Path | None,
    extra: list[str] | None = None,
    per_cgroup: bool = False,
) -> EventSet:
    """The events to count on this CPU: each group's candidates that perf lists.

    `listed` is the set `perf list --raw-dump` printed (None: unknown, keep only the
    generic events every perf knows).
    """
    cid = cpu_id(cpuinfo)
    chosen: list[str] = []
    kept: dict[str, list[str]] = {}
    missing: dict[str, list[str]] = {}
    for group, candidates in EVENT_GROUPS[cid.kind].items():
        if per_cgroup and group in SYSTEM_ONLY:
            continue
        here = [
            e
            for e in candidates
            if e in BASE or (listed is not None and e in listed) or _pmu_event_exists(e, sysfs_pmus)
        ]
        if here:
            kept[group] = here
            chosen.extend(e for e in here if e not in chosen)
        else:
            missing[group] = list(candidates)
    for e in extra or []:
        if e not in chosen:
            chosen.append(e)
    return EventSet(cid.kind, chosen, kept, missing)


def perf_list(perf: str, timeout: float = 20.0) -> set[str] | None:
    """Every event name this perf knows (`perf list --raw-dump`), None if it cannot say."""
    try:
        r = subprocess.run(
            [perf, "list", "--raw-dump"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None
    return set(r.stdout.split())


class JobPerfSampler(PerfStatSampler):
    """Counters per job: `perf stat -a --for-each-cgroup JOB_CGROUPS`, restarted when the set
    of jobs changes (cgroup v2; perf names cgroups relative to the hierarchy's root).
    Rows go to `job_counters`.  It may wait for perf to start (0.2 s) when jobs change, so
    it runs in a thread of its own."""

    family = "counters"
    tables = ("job_counters", "events")
    may_block = True

    def __init__(
        self,
        events: list[str],
        jobs: Callable[[], dict[str, str]],
        interval_ms: int = 1000,
        perf: str = "perf",
        *,
        on_message: Callable[[str], None] | None = None,
    ):
        super().__init__(events, None, interval_ms, perf, on_message=on_message)
        self.events = list(dict.fromkeys(events))  # not the default generic set
        self.jobs = jobs
        self.cgroups: dict[str, str] = {}  # cgroup name (as perf prints it) -> job id
        self._exe: str | None = None
        self.restarts = 0

    def command(self, perf: str | None = None) -> list[str]:
        cmd = [perf or self.perf, "stat", "-x", SEP, "-I", str(self.interval_ms), "-a"]
        for ev in self.events:
            cmd += ["-e", ev]
        cmd += ["--for-each-cgroup", ",".join(sorted(self.cgroups))]
        return cmd

    def open(self) -> dict[str, Any]:
        self._exe = shutil.which(self.perf)
        if self._exe is None:
            raise Unavailable(f"perf is not installed ('{self.perf}' is not on PATH)")
        return {"events": list(self.events), "target": "per job cgroup (--for-each-cgroup)"}

    def _read(self, stream: Any) -> None:
        anchor = self._anchor_ms
        for raw in stream:
            line = raw.decode(errors="replace")
            row = parse_line(line, SEP, cgroups=True)
            if row is None:
                text = line.strip()
                if text:
                    self._stderr_tail.append(text)
                continue
            if row.summary or row.time is None:
                continue
            self._queue.append((round(anchor + row.time * 1000.0), row, self._stopping))

    def _restart(self, wanted: dict[str, str]) -> None:
        if self._proc is not None:
            self.close()
            self._proc = None
            self._reader = None
            self._stopping = False
        self.cgroups = wanted
        self._queue.clear()
        if wanted and self._exe is not None:
            self._start(self._exe)
            self.restarts += 1

    def sample(self, t_ms: int, out: Rows) -> None:
        wanted = {path.lstrip("/"): job for job, path in self.jobs().items()}
        if wanted != self.cgroups:
            self._restart(wanted)
        rows = []
        while self._queue:
            t, row, _ = self._queue.popleft()
            job = self.cgroups.get((row.cgroup or "").lstrip("/"))
            if job is None or row.status != COUNTED:
                if row.status != COUNTED:
                    self.event_state.setdefault(row.event, row.status)
                continue
            self.event_state[row.event] = "supported"
            pct = row.running_pct
            rows.append([t, job, row.event, row.value, None if pct is None else round(pct)])
        if rows:
            out.setdefault("job_counters", []).extend(rows)
