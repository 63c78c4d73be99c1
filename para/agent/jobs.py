"""Which batch job (or pod, or container) a process belongs to, and what its cgroup says.

A process's job is read from its cgroup path (/proc/PID/cgroup), where every scheduler that
contains jobs puts it (layouts below, each from the scheduler's documentation or a real
node's tree, see tests/fixtures/cgroup/SOURCES.md):

    Slurm, cgroup v2   /system.slice/slurmstepd.scope/job_4/step_0/user/task_0
    Slurm, cgroup v1   /slurm/uid_20821/job_11/step_0/task_0    (also /slurm_<node>/...)
    PBS Pro/OpenPBS    /pbs_jobs.service/jobid/1234.server (v1), .../jobs/1234.server (v2),
                       older hooks /pbspro/1234.server
    Torque             /torque/1182724.server
    LSF                /lsf/<cluster>/job.<id>.<array index>.<submit time>
    Kubernetes         /kubepods/burstable/pod<uid>/<container>                   (v1)
                       /kubepods.slice/kubepods-burstable.slice/
                         kubepods-burstable-pod<uid_with_underscores>.slice/
                         cri-containerd-<container>.scope                          (v2)
    containers         /docker/<id>, /system.slice/docker-<id>.scope, libpod-<id>.scope,
                       crio-<id>.scope, /lxc.payload.<name>

Sites whose cgroups do not name the job (Slurm with proctrack/linuxproc, cgroups keyed by
user, or no cgroups at all) still put the job id in every job process's environment
(SLURM_JOB_ID, PBS_JOBID, LSB_JOBID, FLUX_JOB_ID): /proc/PID/environ is read then, once
per process (root only, like every other process's environment).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from para.agent import jobenv


@dataclass(frozen=True)
class JobRef:
    scheduler: str  # slurm pbs torque lsf flux k8s container
    job_id: str
    step: str | None = None  # Slurm step, or the container inside a pod
    # (controllers, path of the job's cgroup in that hierarchy); controllers '' is cgroup v2
    cgroups: tuple[tuple[str, str], ...] = ()
    source: str = "cgroup"  # cgroup | environ | parent


_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "slurm",
        re.compile(
            r"^(?P<cg>.*?/(?:slurm[^/]*|slurmstepd\.scope)(?:/uid_\d+)?/job_(?P<job>\d+))"
            r"(?:/step_(?P<step>[^/]+))?"
        ),
    ),
    (
        "pbs",
        re.compile(
            r"^(?P<cg>.*?/(?:pbs_jobs\.service/(?:jobid|jobs)|pbspro\.service/jobid|pbspro)"
            r"/(?P<job>[^/]+))"
        ),
    ),
    ("torque", re.compile(r"^(?P<cg>.*?/torque/(?P<job>[^/]+))")),
    (
        "lsf",
        re.compile(r"^(?P<cg>.*?/lsf/[^/]+/job\.(?P<job>\d+)\.(?P<index>\d+)\.\d+)"),
    ),
    (
        "container",
        re.compile(
            r"^(?P<cg>.*?/(?:docker/|docker-|libpod-|cri-containerd-|crio-)"
            r"(?P<job>[0-9a-f]{12,64})(?:\.scope)?)(?:/|$)"
        ),
    ),
    ("container", re.compile(r"^(?P<cg>.*?/lxc(?:\.payload)?[./](?P<job>[^/]+))")),
)


def parse_proc_cgroup(data: bytes) -> list[tuple[str, str]]:
    """/proc/PID/cgroup -> [(controllers, path)]; controllers '' is the v2 hierarchy.

    Raises ValueError naming the line for anything that is not `ID:CONTROLLERS:PATH`.
    """
    out: list[tuple[str, str]] = []
    for n, raw in enumerate(data.split(b"\n"), 1):
        if not raw:
            continue
        line = raw.decode(errors="replace")
        hid, sep1, rest = line.partition(":")
        controllers, sep2, path = rest.partition(":")
        if not sep1 or not sep2 or not hid.isdigit() or not path.startswith("/"):
            raise ValueError(f"/proc/PID/cgroup line {n}: not ID:CONTROLLERS:/PATH: {line[:80]!r}")
        if controllers.startswith("name="):
            continue  # named hierarchies (name=systemd) say nothing about jobs
        out.append((controllers, path))
    return out


_UUID = r"[0-9a-fA-F]{8}(?:[-_][0-9a-fA-F]{4}){3}[-_][0-9a-fA-F]{12}"
_POD = re.compile(r"/(?:kubepods-(?:[a-z]+-)?)?pod(?P<uid>" + _UUID + r")(?:\.slice)?(?=/|$)")
_CONTAINER = re.compile(r"/(?:(?:cri-containerd|crio|docker)-)?(?P<id>[0-9a-f]{12,64})(?:\.scope)?")


def _kubernetes(path: str) -> tuple[str, str, str | None, str] | None:
    if "/kubepods" not in path:
        return None
    m = _POD.search(path, path.index("/kubepods"))
    if m is None:
        return None
    c = _CONTAINER.match(path, m.end())
    container = c.group("id")[:12] if c else None
    return "k8s", m.group("uid").replace("_", "-"), container, path[: m.end()]


def classify_path(path: str) -> tuple[str, str, str | None, str] | None:
    """(scheduler, job id, step, the job's cgroup path) that a cgroup path names, if any."""
    pod = _kubernetes(path)
    if pod is not None:
        return pod
    for scheduler, pattern in _PATTERNS:
        m = pattern.match(path)
        if not m:
            continue
        job = m.group("job")
        groups = m.groupdict()
        step = groups.get("step")
        if scheduler == "container":
            job = job[:12]
        elif scheduler == "lsf" and groups.get("index") not in (None, "0"):
            job = f"{job}[{groups['index']}]"
        return scheduler, job, step, m.group("cg")
    return None


def job_from_cgroup(lines: list[tuple[str, str]]) -> JobRef | None:
    """The job a process's cgroup membership names; v2's line wins over v1's."""
    found: tuple[str, str, str | None] | None = None
    dirs: list[tuple[str, str]] = []
    for controllers, path in sorted(lines, key=lambda cp: cp[0] != ""):
        hit = classify_path(path)
        if hit is None:
            continue
        scheduler, job, step, cg = hit
        if found is None:
            found = (scheduler, job, step)
        elif (scheduler, job) != found[:2]:
            continue  # a v1 controller left elsewhere: trust the first (v2) answer
        dirs.append((controllers, cg))
    if found is None:
        return None
    return JobRef(found[0], found[1], found[2], tuple(dirs), "cgroup")


def parse_environ(data: bytes) -> dict[str, str]:
    """/proc/PID/environ (NUL-separated NAME=value) -> dict; entries without '=' skipped."""
    env: dict[str, str] = {}
    for item in data.split(b"\0"):
        name, sep, value = item.partition(b"=")
        if sep and name:
            env[name.decode(errors="replace")] = value.decode(errors="replace")
    return env


def job_from_environ(env: dict[str, str]) -> tuple[JobRef, dict[str, Any]] | None:
    """The job named by a process's environment, and what else it says (name, cpus, gpus)."""
    info = jobenv.detect(env, ppid=0)
    if not info.job_id or not info.scheduler:
        return None
    ref = JobRef(info.scheduler, info.job_id, info.step_id, (), "environ")
    return ref, job_facts(env)


def job_facts(env: dict[str, str]) -> dict[str, Any]:
    """What a job process's environment says about its job, for the job_start event.

    Not the user: a process can set SLURM_JOB_USER to anything, so the user comes from the
    job's cgroup path or its processes' real uid (samplers/jobs.py)."""
    info = jobenv.detect(env, ppid=0)
    facts: dict[str, Any] = {}
    if info.name:
        facts["job_name"] = info.name
    if info.cpus_on_node is not None:
        facts["cpus_on_node"] = info.cpus_on_node
    gpus = next(
        (
            env[k]
            for k in ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES")
            if env.get(k)
        ),
        None,
    )
    if gpus:
        facts["gpus"] = gpus
    for key, name in (
        ("SLURM_JOB_PARTITION", "partition"),
        ("SLURM_JOB_ACCOUNT", "account"),
        ("SLURM_JOB_NODELIST", "node_list"),
        ("SLURM_JOB_NUM_NODES", "nodes"),
        ("SLURM_NNODES", "nodes"),
        ("PBS_QUEUE", "queue"),
        ("LSB_QUEUE", "queue"),
        ("LSB_DJOB_NUMPROC", "cpus_on_node"),
        ("PBS_NCPUS", "cpus_on_node"),
    ):
        if env.get(key) and name not in facts:
            facts[name] = env[key]
    for name in ("nodes", "cpus_on_node"):  # numbers, not the environment's strings
        if isinstance(facts.get(name), str):
            v = facts[name].strip()
            if v.isdigit():
                facts[name] = int(v)
            else:
                del facts[name]
    return facts


_UID = re.compile(r"/uid_(\d+)(?:/|$)")


def uid_from_cgroup(ref: JobRef) -> int | None:
    """The job owner's uid where the scheduler puts it in the cgroup path (Slurm on v1:
    /slurm/uid_2001/job_7): set by the scheduler, unlike the job's environment."""
    for _, path in ref.cgroups:
        m = _UID.search(path)
        if m:
            return int(m.group(1))
    return None


def cpulist_set(text: str) -> set[int]:
    """The CPUs of a list such as '0-3,8,10-11' (cpuset, Cpus_allowed_list)."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"not a CPU list: {text[:60]!r}")
        cpus.update(range(int(lo), int(hi) + 1) if sep else (int(lo),))
    return cpus


def cpulist_count(text: str) -> int:
    """Number of CPUs in a list such as '0-3,8,10-11' (cpuset, Cpus_allowed_list)."""
    return len(cpulist_set(text))


# -- the job's own cgroup --------------------------------------------------------------------

UNLIMITED = 1 << 62  # v1 prints "no limit" as the largest page-aligned 64-bit value


def parse_limit(data: bytes) -> int | None:
    """memory.max / memory.limit_in_bytes -> bytes, None for no limit."""
    s = data.strip()
    if s == b"max":
        return None
    try:
        v = int(s)
    except ValueError:
        raise ValueError(f"not a memory limit: {s[:40]!r}") from None
    return None if v >= UNLIMITED else v


def parse_quota(data: bytes, period: bytes | None = None) -> float | None:
    """CPUs a CFS quota allows: v2 cpu.max ('200000 100000', 'max 100000'), or v1
    cpu.cfs_quota_us (-1 for none) with cpu.cfs_period_us; None for no quota."""
    fields = data.split()
    try:
        if period is None:  # v2
            if len(fields) != 2:
                raise ValueError
            if fields[0] == b"max":
                return None
            quota, per = int(fields[0]), int(fields[1])
        else:
            quota, per = int(data), int(period)
            if quota < 0:
                return None
    except ValueError:
        raise ValueError(f"not a CPU quota: {data[:40]!r}") from None
    return quota / per if per > 0 else None


def parse_io_stat(data: bytes) -> tuple[int, int]:
    """cgroup v2 io.stat ('MAJ:MIN rbytes=N wbytes=N ...' per device) -> (read, written)."""
    r = w = 0
    for n, line in enumerate(data.split(b"\n"), 1):
        fields = line.split()
        if not fields:
            continue
        for f in fields[1:]:
            k, sep, v = f.partition(b"=")
            if not sep:
                raise ValueError(f"io.stat line {n}: not key=value: {f[:40]!r}")
            if k in (b"rbytes", b"wbytes"):
                if not v.isdigit():
                    raise ValueError(f"io.stat line {n}: {k.decode()} is not a count: {v[:40]!r}")
                if k == b"rbytes":
                    r += int(v)
                else:
                    w += int(v)
    return r, w


def parse_blkio(data: bytes) -> tuple[int, int]:
    """cgroup v1 blkio.throttle.io_service_bytes ('MAJ:MIN Read N' lines) -> (read, written)."""
    r = w = 0
    for n, line in enumerate(data.split(b"\n"), 1):
        fields = line.split()
        if len(fields) != 3:
            if len(fields) in (0, 2) and (not fields or fields[0] == b"Total"):
                continue
            raise ValueError(f"blkio line {n}: expected 'MAJ:MIN Op N': {line[:60]!r}")
        if fields[1] in (b"Read", b"Write"):
            if not fields[2].isdigit():
                raise ValueError(f"blkio line {n}: not a count: {fields[2][:40]!r}")
            if fields[1] == b"Read":
                r += int(fields[2])
            else:
                w += int(fields[2])
    return r, w


@dataclass
class CgroupFiles:
    """The files (relative to the cgroup root) that hold one job's accounting."""

    version: int  # 1 or 2
    cpu: str | None = None  # v2 cpu.stat; v1 cpuacct.usage
    cpu_stat: str | None = None  # v1 cpu.stat (throttling)
    mem: str | None = None
    mem_peak: str | None = None
    mem_limit: str | None = None
    io: str | None = None
    oom: str | None = None
    cpuset: str | None = None
    quota: str | None = None  # v2 cpu.max; v1 cpu.cfs_quota_us (cpu.cfs_period_us beside it)
    # why a kind of accounting has no file: kind (cpu, memory, io, throttling) -> reason
    missing: dict[str, str] = field(default_factory=dict)

    def all(self) -> list[str]:
        return [
            p
            for p in (
                self.cpu,
                self.cpu_stat,
                self.mem,
                self.mem_peak,
                self.mem_limit,
                self.io,
                self.oom,
                self.cpuset,
                self.quota,
            )
            if p
        ]


_CO_MOUNTED = {
    "cpu": ("cpu", "cpu,cpuacct", "cpuacct,cpu", "cpuacct"),
    "cpuacct": ("cpuacct", "cpu,cpuacct", "cpuacct,cpu", "cpu"),
}


class CgroupLayout:
    """Where the cgroup hierarchies are: v2 at the root (or root/unified in hybrid mode),
    v1 controllers in root/<controller> (what systemd and every distribution mount)."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.unified: str | None = None
        for rel in ("", "unified"):
            if (self.root / rel / "cgroup.controllers").exists():
                self.unified = rel
                break
        self._v1: dict[str, str | None] = {}

    def v1_dir(self, controller: str) -> str | None:
        """The directory of a v1 controller's hierarchy (cpu and cpuacct are mounted together,
        as `cpu,cpuacct`, with both names as links to it on most systems)."""
        if controller not in self._v1:
            names = _CO_MOUNTED.get(controller, (controller,))
            self._v1[controller] = next((n for n in names if (self.root / n).is_dir()), None)
        return self._v1[controller]

    def describe(self) -> str:
        v1 = [c for c in ("cpuacct", "memory", "cpuset", "blkio") if self.v1_dir(c)]
        parts = []
        if self.unified is not None:
            parts.append(f"v2 at {self.root / self.unified}")
        if v1:
            parts.append(f"v1 ({', '.join(v1)}) under {self.root}")
        return "; ".join(parts) or f"no cgroup hierarchy under {self.root}"

    def files(self, ref: JobRef) -> CgroupFiles | None:
        """The accounting files of the job's cgroup, or None when it has none to read.
        Only the hierarchies that the job's processes are in are read: a v1 controller that
        holds no cgroup of the job (Slurm 22.05's cgroup/v1 plugin makes freezer, memory and
        cpuset ones, and cpuacct only with jobacct_gather/cgroup) is said `missing`."""
        if not ref.cgroups:
            return None
        by_ctrl: dict[str, str] = {}
        for controllers, path in ref.cgroups:
            for c in controllers.split(",") if controllers else [""]:
                by_ctrl.setdefault(c, path)
        if "" in by_ctrl and self.unified is not None:
            base = _join(self.unified, by_ctrl[""])
            return CgroupFiles(
                2,
                cpu=f"{base}/cpu.stat",
                mem=f"{base}/memory.current",
                mem_peak=f"{base}/memory.peak",
                mem_limit=f"{base}/memory.max",
                io=f"{base}/io.stat",
                oom=f"{base}/memory.events",
                cpuset=f"{base}/cpuset.cpus.effective",
                quota=f"{base}/cpu.max",
            )
        missing: dict[str, str] = {}

        def where(ctrl: str, name: str, kind: str) -> str | None:
            d = self.v1_dir(ctrl)
            if d is None:
                missing.setdefault(kind, f"no {ctrl} cgroup hierarchy under {self.root}")
                return None
            if ctrl not in by_ctrl:
                missing.setdefault(
                    kind,
                    f"the job has no {ctrl} cgroup (its processes are in "
                    f"{', '.join(sorted(c for c in by_ctrl if c))} only)",
                )
                return None
            return f"{_join(d, by_ctrl[ctrl])}/{name}"

        out = CgroupFiles(
            1,
            cpu=where("cpuacct", "cpuacct.usage", "cpu"),
            cpu_stat=where("cpu", "cpu.stat", "throttling"),
            mem=where("memory", "memory.usage_in_bytes", "memory"),
            mem_peak=where("memory", "memory.max_usage_in_bytes", "memory"),
            mem_limit=where("memory", "memory.limit_in_bytes", "memory"),
            io=where("blkio", "blkio.throttle.io_service_bytes", "io"),
            oom=where("memory", "memory.oom_control", "memory"),
            cpuset=where("cpuset", "cpuset.cpus", "cpuset"),
            quota=where("cpu", "cpu.cfs_quota_us", "throttling"),
            missing=missing,
        )
        if not out.all():
            return None
        return out


def _join(base: str, path: str) -> str:
    return "/".join(p for p in (base.strip("/"), path.strip("/")) if p)
