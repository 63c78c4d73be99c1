"""The CPUs a job has on a node: the union of its ranks' CPU affinities (under mpirun or srun
with core binding each rank is bound to its own cores; one rank's affinity is not the job's),
within the cgroup's cpuset, capped by the cgroup's CPU quota and by the scheduler's allocation
on the node (SLURM_CPUS_ON_NODE).  `para profile` reads its own cgroup here; the agent's job
sampler reads each job's (samplers/jobs.py) with the same parsers (jobs.py)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from para.agent.jobs import cpulist_set, parse_quota

CGROUP_ROOT = "/sys/fs/cgroup"


def parse_cpu_list(text: str) -> set[int] | None:
    """'0-3,8,10-11' -> {0, 1, 2, 3, 8, 10, 11} (the kernel's cpulist format); None if not one."""
    try:
        return cpulist_set(text.strip())
    except ValueError:
        return None


def format_cpu_list(cpus: Iterable[int]) -> str:
    """The inverse of parse_cpu_list: runs of consecutive CPUs as ranges."""
    xs = sorted(set(cpus))
    runs: list[str] = []
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        runs.append(str(xs[i]) if i == j else f"{xs[i]}-{xs[j]}")
        i = j + 1
    return ",".join(runs)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_limits(
    proc_cgroup: str, root: str | os.PathLike[str] = CGROUP_ROOT
) -> tuple[set[int] | None, float | None, str | None]:
    """(cpuset, quota in CPUs, cgroup path) of the cgroup described by /proc/PID/cgroup text,
    cgroup v2 or v1; a quota is the tightest of the cgroup and its ancestors."""
    root = Path(root)
    v1: dict[str, str] = {}
    v2: str | None = None
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if controllers == "":
            v2 = rel
        for c in controllers.split(","):
            if c:
                v1[c] = rel
    cpuset: set[int] | None = None
    quota: float | None = None
    where: str | None = None
    if "cpuset" in v1:
        text = _nearest(root / "cpuset", v1["cpuset"], ("cpuset.effective_cpus", "cpuset.cpus"))
        if text and (found := parse_cpu_list(text)) is not None:
            cpuset, where = found, v1["cpuset"]
    if "cpu" in v1:
        for mount in ("cpu,cpuacct", "cpu"):
            base = root / mount
            if base.is_dir():
                quota = _tightest(base, v1["cpu"], _v1_quota)
                where = where or v1["cpu"]
                break
    if v2 is not None and (root / "cgroup.controllers").exists():
        text = _nearest(root, v2, ("cpuset.cpus.effective",))
        if text and cpuset is None:
            cpuset = parse_cpu_list(text)
        q = _tightest(root, v2, _v2_quota)
        if q is not None:
            quota = q if quota is None else min(quota, q)
        where = where or v2
    return cpuset, quota, where


def _nearest(base: Path, rel: str, names: tuple[str, ...]) -> str | None:
    """The first of `names` in the cgroup or, where it has none, its nearest ancestor."""
    d = base / rel.lstrip("/")
    while True:
        for n in names:
            text = _read(d / n)
            if text:
                return text
        if d == base or base not in d.parents:
            return None
        d = d.parent


def _tightest(base: Path, rel: str, read: Any) -> float | None:
    best: float | None = None
    d = base / rel.lstrip("/")
    while True:
        q = read(d)
        if q is not None:
            best = q if best is None else min(best, q)
        if d == base or base not in d.parents:
            return best
        d = d.parent


def _v1_quota(d: Path) -> float | None:
    q, p = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
    try:
        return None if q is None or p is None else parse_quota(q.encode(), p.encode())
    except ValueError:
        return None


def _v2_quota(d: Path) -> float | None:
    text = _read(d / "cpu.max")
    try:
        return parse_quota(text.encode()) if text else None
    except ValueError:
        return None


def job_cpus(
    affinities: Iterable[Iterable[int]],
    scheduler_cpus: int | None = None,
    proc_cgroup: str | None = None,
    root: str | os.PathLike[str] = CGROUP_ROOT,
) -> dict[str, Any]:
    """How many CPUs the job may use on this node, and what decided it."""
    union: set[int] = set()
    n_ranks = 0
    for a in affinities:
        union |= set(a)
        n_ranks += 1
    if proc_cgroup is None:
        try:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            proc_cgroup = ""
    cpuset, quota, where = cgroup_limits(proc_cgroup, root)
    cpus = union & cpuset if cpuset else union
    n = len(cpus) or len(union) or (os.cpu_count() or 1)
    limit = "affinity" if n_ranks <= 1 else f"affinity of {n_ranks} ranks"
    if quota is not None:
        q = max(1, math.ceil(quota - 1e-9))  # 1.5 CPUs of quota keep 2 CPUs busy part-time
        if q < n:
            n, limit = q, "cgroup CPU quota"
    if scheduler_cpus is not None and 0 < scheduler_cpus < n:
        n, limit = scheduler_cpus, "scheduler allocation"
    doc: dict[str, Any] = {"cpus": n, "limited_by": limit, "affinity": format_cpu_list(union)}
    if n_ranks > 1:
        doc["ranks"] = n_ranks
    if cpuset is not None:
        doc["cpuset"] = format_cpu_list(cpuset)
    if quota is not None:
        doc["quota_cpus"] = round(quota, 3)
    if where:
        doc["cgroup"] = where
    if scheduler_cpus is not None:
        doc["scheduler_cpus"] = scheduler_cpus
    return doc
