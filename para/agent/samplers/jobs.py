"""The jobs on a node: their processes (proc rows with job and step), their start and end
(events), and each second one `job` row per job summing its processes and reading its cgroup.

Discovery costs nothing while no process is created (the last pid in /proc/loadavg is
unchanged, as in the process sampler); otherwise /proc is listed and each new pid is
classified once: its stat (kernel threads are skipped), its cgroup, and, when the cgroup names
no job, its environment.  A pid that belongs to no job is not looked at again, except while
it is young: a scheduler moves a new task into the job's cgroup just after fork(), so a pid
less than YOUNG_S old is classified again at the next sample.

A job's CPU counts each process once.  A process's row holds its own time and the time of
the children it waited for (cutime, cstime): the commands too short to be sampled show only
there.  When a process ends, its last values move into the job's account of ended
processes; if its parent is followed, that parent's children time gains the process's final
values when it reaps it (at once, or at a later sample), and what the ended rows counted is
then taken back from the account ("owed").  Processes are read parents first (by start
time), so a parent's gain is never seen before the end of the child it reaped; the debts of
a sample are made before its gains repay them.  slurmstepd, which is in the job's cgroup
under proctrack/cgroup and is the parent of the job's first processes, is not a job
process (no row, no memory, no CPU of its own), but its children time is followed: it
reaps the batch script or the tasks and keeps their exact final CPU for a second or two
after they end.  Where the job's cgroup accounts CPU (cpuacct.usage, cpu.stat) its
cg_cpu_ns is the kernel's own figure, and job_end says which source its cpu_s is from.
"""

from __future__ import annotations

import errno
import math
import os
import pwd
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from para.agent.jobs import (
    CgroupFiles,
    CgroupLayout,
    JobRef,
    cpulist_count,
    cpulist_set,
    job_facts,
    job_from_cgroup,
    job_from_environ,
    parse_blkio,
    parse_environ,
    parse_io_stat,
    parse_limit,
    parse_proc_cgroup,
    parse_quota,
    uid_from_cgroup,
)
from para.agent.samplers.base import ProcFiles, Rows, Unavailable, event
from para.agent.samplers.process import ProcessSampler
from para.cython_ext import load

procparse = load("procparse")
procread = load("procread")

YOUNG_S = 2.0
# the variables jobenv.detect takes a job from (keep in step with it; tests compare the two):
# an environment without any of them names no job
_JOB_MARKERS = (b"SLURM_JOB_ID=", b"SLURM_JOBID=", b"PBS_JOBID=", b"LSB_JOBID=", b"FLUX_JOB_ID=")
_CGROUP_CACHE = 1024  # distinct /proc/PID/cgroup contents whose answer is kept
# the scheduler's per-job process that is in the job's cgroup but is no job process
REAPERS = frozenset({"slurmstepd"})
_END_FACTS = ("user", "job_name", "partition", "nodes")
_RDONLY = os.O_RDONLY | os.O_CLOEXEC
# proc row columns (schema PROC without t): the ones summed per job
_PPID, _UTIME, _STIME, _RSS, _THREADS = 1, 3, 4, 5, 7
_RCHAR, _WCHAR, _RBYTES, _WBYTES, _CUTIME, _CSTIME = 13, 14, 15, 16, 17, 18
_COUNTERS = (_UTIME, _STIME, _RCHAR, _WCHAR, _RBYTES, _WBYTES)
# job row layout (schema JOB without t): job, then these
J_PROCS, J_THREADS, J_UTIME, J_STIME, J_RSS = 1, 2, 3, 4, 5
J_RCHAR, J_WCHAR, J_RBYTES, J_WBYTES = 6, 7, 8, 9
J_GPU_MEM, J_GPU_SM = 10, 11
J_CG = 12  # cg_cpu_ns cg_mem cg_peak cg_limit cg_read cg_write cg_throttled cg_oom
J_CPUS = 20
J_SCHEDULER = 21
JOB_WIDTH = 22


@dataclass
class Job:
    ref: JobRef
    started_ms: int
    facts: dict[str, Any]
    pids: set[int] = field(default_factory=set)
    ended: list[int] = field(default_factory=lambda: [0] * len(_COUNTERS))
    ended_procs: int = 0
    empty_since_ms: int | None = None
    files: CgroupFiles | None = None
    cpus: int | None = None
    max_rss: int = 0
    steps: set[str] = field(default_factory=set)
    first_ticks: int | None = None  # the earliest start (ticks since boot) of its processes
    last_seen_ms: int | None = None  # the last sample that saw a process of it running
    reapers: set[int] = field(default_factory=set)
    affinity: set[int] = field(default_factory=set)  # union of its processes' CPUs
    cap: int | None = None  # CPUs its cgroup allows (cpuset, quota)
    unavailable: dict[str, str] = field(default_factory=dict)
    cg_cpu_ns: int | None = None  # the last value its cgroup gave
    cpu_ticks: int | None = None  # utime + stime of its last row


class JobSampler(ProcessSampler):
    """Processes and jobs of the whole node.  processes: "jobs" (rows for job processes),
    "all" (every process, job or not) or "none" (job rows only)."""

    family = "jobs"
    tables = ("proc", "job", "events")

    def __init__(
        self,
        files: ProcFiles,
        cgroup_root: str | os.PathLike[str],
        *,
        processes: str = "jobs",
        environ: bool = True,
        end_after_s: float = 5.0,
        ctxt_every: int = 1,
        exclude: Callable[[], set[int]] | None = None,
        cgroup_files: ProcFiles | None = None,
        known_jobs: set[str] | None = None,
    ):
        """known_jobs: jobs already announced (job_start) by an earlier sampler of this agent
        (before a reload): seen again, they are followed without a second job_start."""
        super().__init__(files, roots=set, exclude=exclude)
        self.mode = processes
        self.use_environ = environ
        self.end_after_ms = int(end_after_s * 1000)
        self.ctxt_every = max(1, ctxt_every)
        self._samples = 0
        self.layout = CgroupLayout(cgroup_root)
        self.cg = cgroup_files or ProcFiles(cgroup_root)
        self.jobs: dict[str, Job] = {}
        self.refs: dict[int, JobRef | None] = {}
        self._young: dict[int, int] = {}  # outsider pid -> start ticks
        self._last: dict[int, tuple[int, ...]] = {}  # pid -> last counter values
        self._ppid: dict[int, int] = {}
        # children time (cutime, cstime) last seen, and what an ended member's parent still
        # owes: its rows counted (utime, stime) that come again in the parent's children time
        self._kids: dict[int, tuple[int, int]] = {}
        # parent pid -> [[job id, child pid, utime, stime, zombie], ...]
        self._owed: dict[int, list[list[Any]]] = {}
        self._ending: list[int] = []
        # slurmstepd of each job: pid -> (job id, start ticks); followed for its children time
        self.reapers: dict[int, tuple[str, int]] = {}
        self._starts: dict[int, int] = {}  # start ticks of members and reapers
        self.rows_by_job: dict[str, list[Any]] = {}
        self.clk_tck = os.sysconf("SC_CLK_TCK")
        self._known = set(known_jobs or ())
        self._first_sample = True
        self._btime: float | None = None
        self._fds: dict[int, tuple[int, int, int]] = {}  # member pid -> stat, status, io
        self._proc = str(files.path("proc")) + "/"
        self.classified = 0
        self.environ_reads = 0
        self._by_cgroup: dict[bytes, JobRef | None] = {}

    # -- set-up ----------------------------------------------------------------------------
    def open(self) -> dict[str, Any]:
        try:
            self.files.read_once("proc/self/cgroup")
            self.files.read("proc/loadavg")
        except OSError as e:
            raise Unavailable(f"cannot read /proc ({e.filename}: {e.strerror})") from e
        self._btime = _boot_time(self.files)
        facts: dict[str, Any] = dict(
            page_size=self.page_size,
            processes=self.mode,
            environ=self.use_environ,
            cgroups=self.layout.describe(),
        )
        return facts

    # -- which job a process is in ---------------------------------------------------------
    def classify(self, pid: int, ppid: int) -> JobRef | None:
        self.classified += 1
        try:
            raw = self.files.read_once(f"proc/{pid}/cgroup")
            # most new processes share a few cgroups (a login session, a job step): the
            # answer for a membership already seen is kept, not parsed again
            if raw in self._by_cgroup:
                ref = self._by_cgroup[raw]
            else:
                ref = job_from_cgroup(parse_proc_cgroup(raw))
                if len(self._by_cgroup) >= _CGROUP_CACHE:
                    self._by_cgroup.clear()
                self._by_cgroup[raw] = ref
        except (OSError, ValueError):
            ref = None
        if ref is not None:
            return ref
        parent = self.refs.get(ppid)
        if parent is not None and parent.source != "cgroup":
            # environment-based jobs: children belong where their parent does (env -i, ...)
            return JobRef(parent.scheduler, parent.job_id, parent.step, (), "parent")
        if not self.use_environ:
            return None
        self.environ_reads += 1
        try:
            raw = self.files.read_once(f"proc/{pid}/environ")
        except OSError:
            return None
        if not any(m in raw for m in _JOB_MARKERS):
            return None  # names no job: not worth parsing (most processes of a node)
        found = job_from_environ(parse_environ(raw))
        return found[0] if found else None

    def job_of(self, pid: int) -> tuple[str | None, str | None]:
        ref = self.refs.get(pid)
        if ref is None:
            return (None, None)
        return (ref.job_id, ref.step)

    # -- discovery -------------------------------------------------------------------------
    def _uptime_ticks(self) -> int:
        try:
            return int(float(self.files.read("proc/uptime").split()[0]) * self.clk_tck)
        except (OSError, ValueError, IndexError):
            return 0

    def _discover(self, t_ms: int, out: Rows) -> None:
        if self._no_new_process() and not self._young:
            return
        try:
            alive = {int(n) for n in os.listdir(self.files.path("proc")) if n.isdigit()}
        except OSError:
            return
        self.outsiders &= alive
        excluded = self.exclude()
        young_limit = self._uptime_ticks() - int(YOUNG_S * self.clk_tck)
        recheck = {p for p, start in self._young.items() if p in alive}
        self._young = {}
        fresh = (alive - self.members.keys() - self.outsiders) | recheck
        for pid in sorted(fresh):
            st = self._stat(pid)
            if st is None:
                continue
            ppid, start = st[3], st[9]
            if pid == 2 or ppid == 2 or pid in excluded:
                self.outsiders.add(pid)  # kernel threads, para's own helpers
                continue
            ref = self.classify(pid, ppid)
            if st[1] in REAPERS:
                # the scheduler's own process in the job's cgroup: not a job process
                self.outsiders.add(pid)
                if ref is not None and ref.source == "cgroup":
                    self._follow_reaper(pid, ref.job_id, start)
                if start > young_limit:
                    # or the job's task forked by it and not yet exec'd: looked at again
                    self._young[pid] = start
                continue
            if pid in self.reapers:
                self._drop_reaper(pid)  # it was such a task: a job process from now on
            if ref is None and self.mode != "all":
                self.outsiders.add(pid)
                if start > young_limit:
                    self._young[pid] = start
                continue
            self.outsiders.discard(pid)
            self.members[pid] = start
            self.refs[pid] = ref
            self.names[pid] = st[1]
            self._starts[pid] = start
            self.seen_total += 1
            if ref is not None:
                self._joined(t_ms, ref, pid, start, out)
                if ppid not in self.members and ppid not in self.reapers:
                    parent = self._stat(ppid)
                    if parent is not None and parent[1] in REAPERS:
                        # found by its environment: slurmstepd, its parent, is the job's too
                        self._follow_reaper(ppid, ref.job_id, parent[9])
            out.setdefault("events", []).append(
                event(
                    t_ms,
                    "process_start",
                    st[1],
                    pid,
                    ppid=ppid,
                    job=ref.job_id if ref else None,
                    cmdline=self._cmdline(pid),
                    start_ticks=start,
                )
            )

    def _follow_reaper(self, pid: int, job_id: str, start: int) -> None:
        if pid in self.reapers:
            return
        try:
            fd = os.open(f"{self._proc}{pid}/stat", _RDONLY)
        except OSError:
            return
        self.reapers[pid] = (job_id, start)
        self._starts[pid] = start
        self._fds[pid] = (fd, -1, -1)
        job = self.jobs.get(job_id)
        if job is not None:
            job.reapers.add(pid)

    def _drop_reaper(self, pid: int) -> None:
        job_id, _ = self.reapers.pop(pid)
        self._close_fds(pid)
        self._last.pop(pid, None)
        job = self.jobs.get(job_id)
        if job is not None:
            job.reapers.discard(pid)

    def _joined(self, t_ms: int, ref: JobRef, pid: int, start_ticks: int, out: Rows) -> None:
        job = self.jobs.get(ref.job_id)
        env_facts: dict[str, Any] = {}
        if job is None or not {"job_name", "partition"} <= job.facts.keys():
            try:
                env_facts = job_facts(parse_environ(self.files.read_once(f"proc/{pid}/environ")))
            except OSError:
                pass
        status = self._status(pid)
        if job is not None:
            job.pids.add(pid)
            job.empty_since_ms = None
            if ref.step:
                job.steps.add(ref.step)
            for k, v in env_facts.items():
                job.facts.setdefault(k, v)  # what its first process did not say
            if job.first_ticks is None or start_ticks < job.first_ticks:
                job.first_ticks = start_ticks
            job.affinity |= _affinity(status)
            job.cpus = self._job_cpus(job)
            return
        facts = env_facts
        uid = uid_from_cgroup(ref)
        if uid is None:
            uid = _real_uid(status)  # the process's real uid: what the kernel says
        if uid is not None:
            facts["user"] = _user_name(uid)
        job = Job(ref, t_ms, facts, {pid})
        job.first_ticks = start_ticks
        job.reapers = {p for p, (j, _) in self.reapers.items() if j == ref.job_id}
        if ref.step:
            job.steps.add(ref.step)
        job.files = self.layout.files(ref)
        job.affinity = _affinity(status)
        job.cap = self._cgroup_cap(job.files)
        job.cpus = self._job_cpus(job)
        job.unavailable = self._unavailable(ref, job.files)
        self.jobs[ref.job_id] = job
        if ref.job_id in self._known:
            self._known.discard(ref.job_id)  # announced before a reload: followed again
            return
        detail: dict[str, Any] = {"scheduler": ref.scheduler, "found_by": ref.source, **facts}
        if self._btime is not None:
            # when its first process we saw started (the job may have started a little earlier)
            detail["started"] = round(self._btime + start_ticks / self.clk_tck, 2)
        if self._first_sample:
            detail["already_running"] = True  # it was there when the agent started
        if job.cpus is not None:
            detail["cpus"] = job.cpus
        if ref.cgroups:
            detail["cgroup"] = ref.cgroups[0][1]
        if job.unavailable:
            detail["unavailable"] = job.unavailable
        out.setdefault("events", []).append(event(t_ms, "job_start", ref.job_id, **detail))

    def _status(self, pid: int) -> bytes:
        try:
            return self.files.read_once(f"proc/{pid}/status")
        except OSError:
            return b""

    def _unavailable(self, ref: JobRef, files: CgroupFiles | None) -> dict[str, str]:
        """Which of the job's cgroup accounting cannot be read, and why (job_start says it)."""
        kinds = ("cpu", "memory", "io", "throttling")
        if not ref.cgroups:
            how = "environment" if ref.source == "environ" else "parent"
            why = f"no job cgroup (the job was found by its {how})"
            return {k: why for k in kinds}
        if files is None:
            return {k: f"no cgroup hierarchy of the job under {self.layout.root}" for k in kinds}
        out = dict(files.missing)
        throttle = files.cpu_stat if files.version == 1 else files.cpu
        for kind, rel in (("cpu", files.cpu), ("memory", files.mem), ("io", files.io),
                          ("throttling", throttle)):  # fmt: skip
            if kind not in out and rel and not self.cg.exists(rel):
                out[kind] = f"{self.layout.root / rel} does not exist"
        return out

    def _cgroup_cap(self, files: CgroupFiles | None) -> int | None:
        """CPUs the job's cgroup lets it use: its cpuset, and its CFS quota rounded up."""
        if files is None:
            return None
        caps = []
        if files.cpuset:
            try:
                caps.append(cpulist_count(self.cg.read_once(files.cpuset).decode()))
            except (OSError, ValueError, UnicodeDecodeError):
                pass
        if files.quota:
            try:
                period = None
                if files.version == 1:
                    period = self.cg.read_once(files.quota.replace("quota_us", "period_us"))
                q = parse_quota(self.cg.read_once(files.quota), period)
                if q is not None:
                    caps.append(max(1, math.ceil(q)))
            except (OSError, ValueError):
                pass
        caps = [c for c in caps if c > 0]
        return min(caps) if caps else None

    def _job_cpus(self, job: Job) -> int | None:
        """The CPUs of the job on this node: the union of its processes' affinities, capped by
        the scheduler's allocation (SLURM_CPUS_ON_NODE, ...) and the cgroup's cpuset/quota."""
        bounds = [len(job.affinity)] if job.affinity else []
        alloc = job.facts.get("cpus_on_node")
        if isinstance(alloc, int) and alloc > 0:
            bounds.append(alloc)
        if job.cap is not None:
            bounds.append(job.cap)
        return min(bounds) if bounds else None

    # -- each sample -----------------------------------------------------------------------
    def sample(self, t_ms: int, out: Rows) -> None:
        self._discover(t_ms, out)
        self._first_sample = False
        proc_rows: list[list[Any]] = []
        kids = self._read_reapers(t_ms)
        if self.mode == "none":
            self._check_members(t_ms, out)
        else:
            proc_rows = self._read_members(t_ms, out)
        self._account(t_ms, proc_rows, kids, out)

    def _open_fds(self, pid: int, keep: bool = True) -> tuple[int, int, int]:
        """The member's stat, status and io, kept open: a read on a descriptor of a process
        that has exited fails, so a reused pid is never taken for the process we followed.
        Out of descriptors (EMFILE), they are opened for this sample only (keep=False)."""
        fds = self._fds.get(pid)
        if fds is not None:
            return fds
        opened = []
        for name in ("stat", "status", "io"):
            try:
                opened.append(os.open(f"{self._proc}{pid}/{name}", _RDONLY))
            except OSError as e:
                if e.errno == errno.EMFILE and name == "stat":
                    keep = False
                opened.append(-1)  # gone (ENOENT), or io without ptrace rights (EACCES)
        fds = (opened[0], opened[1], opened[2])
        if keep:
            self._fds[pid] = fds
        return fds

    def _in_start_order(self) -> list[int]:
        """Members, parents before their children: a parent read after its child could show
        the child's CPU in its children time while the child's own row still counts it."""
        return sorted(self.members, key=lambda p: (self.members[p], p))

    def _read_reapers(self, t_ms: int) -> list[list[Any]]:
        """[pid, job, cutime, cstime] of each job's slurmstepd (read before the members)."""
        if not self.reapers:
            return []
        pids = sorted(self.reapers, key=lambda p: (self.reapers[p][1], p))
        results = procread.read_pids([self._fds[p] for p in pids], 1)
        rows = []
        for pid, r in zip(pids, results):
            job_id, start = self.reapers[pid]
            if r is None or r[18] != start or r[1] in ("X", "Z"):
                if r is not None and r[1] == "Z" and r[18] == start:
                    rows.append([pid, job_id, r[16], r[17]])  # its final children time
                self._ending.append(pid)
                continue
            rows.append([pid, job_id, r[16], r[17]])
        return rows

    def _read_members(self, t_ms: int, out: Rows) -> list[list[Any]]:
        pids = self._in_start_order()
        fds = [self._open_fds(pid) for pid in pids]
        self._samples += 1
        if self._samples % self.ctxt_every != 1 % self.ctxt_every:
            # status is read for its two context-switch counters only: not every second
            query = [(st, -1, io) for st, _, io in fds]
        else:
            query = fds
        results = procread.read_pids(query, self.page_size)
        rows = out.setdefault("proc", [])
        for pid, fd, r in zip(pids, fds, results):
            if pid not in self._fds:  # opened for this sample only
                for x in fd:
                    if x >= 0:
                        os.close(x)
                if fd[0] < 0:
                    continue  # no descriptor to read it with: it stays, read next time
            if r is None or r[18] != self.members[pid] or r[1] == "X":
                self._ended(t_ms, pid, out)
                continue
            ref = self.refs.get(pid)
            if r[19] != self.names.get(pid):
                self._exec(t_ms, pid, r[19], ref, out)
            # rank (None): `para profile` tells ranks apart; the agent does not yet
            job_id, step = (ref.job_id, ref.step) if ref else (None, None)
            rows.append([pid, *r[:18], None, job_id, step])
            if r[1] == "Z":
                self._ended(t_ms, pid, out)
            elif ref is not None:
                job = self.jobs.get(ref.job_id)
                if job is not None:
                    job.last_seen_ms = t_ms
        return rows

    def _exec(self, t_ms: int, pid: int, comm: str, ref: JobRef | None, out: Rows) -> None:
        """The process ran another program (a shell's exec, a pyenv shim's python): its name
        follows (process_exec carries the new name and command line)."""
        self.names[pid] = comm
        out.setdefault("events", []).append(
            event(
                t_ms,
                "process_exec",
                comm,
                pid,
                job=ref.job_id if ref else None,
                cmdline=self._cmdline(pid),
            )
        )

    def _check_members(self, t_ms: int, out: Rows) -> None:
        """processes = "none": only whether each member still lives (one stat read)."""
        pids = self._in_start_order()
        results = procread.read_pids([(self._open_fds(p)[0], -1, -1) for p in pids], 1)
        for pid, r in zip(pids, results):
            if r is None or r[18] != self.members[pid] or r[1] in ("X", "Z"):
                self._ended(t_ms, pid, out)
                continue
            ref = self.refs.get(pid)
            job = self.jobs.get(ref.job_id) if ref is not None else None
            if job is not None:
                job.last_seen_ms = t_ms

    def _close_fds(self, pid: int) -> None:
        for fd in self._fds.pop(pid, ()):
            if fd >= 0:
                os.close(fd)

    def _ended(self, t_ms: int, pid: int, out: Rows) -> None:
        super()._ended(t_ms, pid, out)
        self._close_fds(pid)
        self._ending.append(pid)

    def _account(
        self, t_ms: int, proc_rows: list[list[Any]], reaper_rows: list[list[Any]], out: Rows
    ) -> None:
        """Per job: its live processes summed, CPU with the children each waited for (the
        commands too short to be sampled), plus what ended members counted when last seen,
        less what their parents' children time has taken over since (module doc)."""
        live: dict[str, list[Any]] = {}
        gains: dict[int, tuple[int, int]] = {}  # pid -> children time gained this sample

        def gained(pid: int, cu: int, cs: int) -> None:
            prev = self._kids.get(pid)
            self._kids[pid] = (cu, cs)
            gains[pid] = (cu - prev[0], cs - prev[1]) if prev is not None else (0, 0)

        def acc_of(job_id: str) -> list[Any]:
            acc = live.get(job_id)
            if acc is None:
                acc = live[job_id] = [0, 0, 0, [0] * len(_COUNTERS)]
            return acc

        for pid, job_id, cu, cs in reaper_rows:
            # slurmstepd: no process of the job, but the children it reaped are
            gained(pid, cu, cs)
            self._last[pid] = (cu, cs, 0, 0, 0, 0)
            sums = acc_of(job_id)[3]
            sums[0] += cu
            sums[1] += cs
        for prow in proc_rows:
            pid = prow[0]
            cu, cs = prow[_CUTIME] or 0, prow[_CSTIME] or 0
            counts = [prow[i] or 0 for i in _COUNTERS]
            counts[0] += cu
            counts[1] += cs
            self._last[pid] = tuple(counts)
            self._ppid[pid] = prow[_PPID]
            gained(pid, cu, cs)
            job_id = prow[-2]
            if job_id is None:
                continue
            acc = acc_of(job_id)
            if prow[2] != "Z":  # a zombie holds no memory or threads, only its final counts
                acc[0] += 1
                acc[1] += prow[_THREADS] or 0
                acc[2] += prow[_RSS] or 0
            sums = acc[3]
            for k in range(len(_COUNTERS)):
                sums[k] += counts[k]
        # the processes that ended: their last values move to their job's account, and their
        # parent, read this sample, owes them back when its children time shows them
        ending = set(self._ending)

        def holder(pid: int) -> int | None:
            """Whose children time will hold the final values of `pid`: its parent if read
            this sample, else (the parent ended too, having reaped it, or it was re-parented
            to the subreaper) the nearest ancestor read this sample."""
            p = self._ppid.get(pid)
            for _ in range(64):
                if p is None or p in gains or p not in ending:
                    break
                p = self._ppid.get(p)
            return p if p is not None and p in gains else None

        holders = {pid: holder(pid) for pid in ending}
        # children first, so that what an ended parent still owes moves up once, complete
        order = sorted(ending, key=lambda p: -self._starts.get(p, 0))
        for pid in order:
            last = self._last.pop(pid, None)
            reaper = self.reapers.pop(pid, None)
            ref = self.refs.pop(pid, None)
            job_id = reaper[0] if reaper is not None else (ref.job_id if ref else None)
            job = self.jobs.get(job_id) if job_id is not None else None
            if job is None:
                continue
            if reaper is not None:
                job.reapers.discard(pid)
            else:
                job.pids.discard(pid)
                job.ended_procs += 1
            if last is None:
                continue
            ended_acc = live.get(job_id)  # type: ignore[arg-type]
            if ended_acc is not None and pid in gains:
                # its final row was summed as live above: count it once, as ended
                for k in range(len(_COUNTERS)):
                    ended_acc[3][k] -= last[k]
            for k in range(len(_COUNTERS)):
                job.ended[k] += last[k]
            to = holders[pid]
            if to is not None:
                # that process's children time gains this one's final values when it reaps
                # it; a zombie is not reaped yet
                zombie = pid in gains and self._zombie(pid)
                self._owed.setdefault(to, []).append([job_id, pid, last[0], last[1], zombie])
        # an ended zombie repays from its own final children time first; what an ended
        # process still owes then moves to whoever holds its final values (they include
        # the children it reaped after its last sample)
        for pid in order:
            if pid in gains and pid in self._owed:
                self._repay(pid, *gains[pid])
            entries = self._owed.pop(pid, None)
            to = holders[pid]
            if entries and to is not None:
                zombie = pid in gains and self._zombie(pid)
                for e in entries:
                    e[1], e[4] = pid, zombie
                self._owed.setdefault(to, []).extend(entries)
        for pid, (gu, gs) in gains.items():
            if pid in self._owed and pid not in ending:
                self._repay(pid, gu, gs)
        for pid in ending:
            self._kids.pop(pid, None)
            self._ppid.pop(pid, None)
            self._starts.pop(pid, None)
        self._ending = []
        rows = out.setdefault("job", [])
        self.rows_by_job = {}
        for job_id, job in list(self.jobs.items()):
            job_acc = live.get(job_id)
            if not job.pids:
                if job.empty_since_ms is None:
                    job.empty_since_ms = t_ms
                if t_ms - job.empty_since_ms >= self.end_after_ms:
                    self._job_ended(t_ms, job, out)
                    continue
                if job_acc is None and not job.reapers:
                    continue  # nothing of it left to read: no more rows
            row: list[Any] = [job_id] + [None] * (JOB_WIDTH - 1)
            row[J_SCHEDULER] = job.ref.scheduler
            row[J_CPUS] = job.cpus
            if self.mode == "none":
                row[J_PROCS] = len(job.pids)
            else:
                procs, threads, rss, sums = job_acc if job_acc is not None else (0, 0, 0, None)
                row[J_PROCS] = procs
                row[J_THREADS] = threads
                row[J_RSS] = rss
                job.max_rss = max(job.max_rss, rss)
                for k, col in enumerate((J_UTIME, J_STIME, J_RCHAR, J_WCHAR, J_RBYTES, J_WBYTES)):
                    row[col] = job.ended[k] + (sums[k] if sums is not None else 0)
                job.cpu_ticks = row[J_UTIME] + row[J_STIME]
            if job.files is not None:
                row[J_CG : J_CG + 8] = self._cgroup_values(job.files)
                if row[J_CG] is not None:
                    job.cg_cpu_ns = row[J_CG]
            rows.append(row)
            self.rows_by_job[job_id] = row

    def _zombie(self, pid: int) -> bool:
        return self.files.exists(f"proc/{pid}")

    def _repay(self, pid: int, gu: int, gs: int) -> None:
        """The children time `pid` gained holds the final values of the children it reaped:
        take what their own rows counted back from the job's ended sums, child by child, for
        the children gone from /proc (a zombie is repaid once its parent has reaped it)."""
        entries = self._owed[pid]
        left = [gu, gs]
        for e in entries:
            if e[4] and self._zombie(e[1]):
                continue  # not reaped yet
            e[4] = False
            job = self.jobs.get(e[0])
            for k in (0, 1):
                took = max(0, min(e[2 + k], left[k]))
                e[2 + k] -= took
                left[k] -= took
                if job is not None:
                    job.ended[k] -= took
        entries[:] = [e for e in entries if e[2] > 0 or e[3] > 0]
        if not entries:
            del self._owed[pid]

    def _job_ended(self, t_ms: int, job: Job, out: Rows) -> None:
        del self.jobs[job.ref.job_id]
        for pid in job.reapers:
            self.reapers.pop(pid, None)
            self._kids.pop(pid, None)
            self._last.pop(pid, None)
            self._owed.pop(pid, None)
            self._close_fds(pid)
        if job.files is not None:
            for rel in job.files.all():
                self.cg.forget(rel)
        # the job ran from its first process's start to the last sample that saw one running
        # (not to now: ending is known only end_after_s later)
        start = (
            self._btime + job.first_ticks / self.clk_tck
            if self._btime is not None and job.first_ticks is not None
            else job.started_ms / 1000
        )
        end = (job.last_seen_ms or job.started_ms) / 1000
        proc_cpu = round(job.cpu_ticks / self.clk_tck, 2) if job.cpu_ticks is not None else None
        detail: dict[str, Any] = {
            "scheduler": job.ref.scheduler,
            "start": round(start, 3),
            "end": round(end, 3),
            "duration_s": round(max(0.0, end - start), 3),
            "processes": job.ended_procs,
            "max_rss_bytes": job.max_rss,
        }
        # Both are lower bounds: slurmstepd removes the job's cgroup a moment after its last
        # task ends, so the cgroup's last reading can miss the end, while the processes'
        # figure has the tasks' final CPU through their parent's children time.
        cg_cpu = round(job.cg_cpu_ns / 1e9, 2) if job.cg_cpu_ns is not None else None
        if cg_cpu is not None:
            detail["cg_cpu_s"] = cg_cpu
        if proc_cpu is not None:
            detail["processes_cpu_s"] = proc_cpu
        best = max(
            ((v, k) for v, k in ((cg_cpu, "cgroup"), (proc_cpu, "processes")) if v is not None),
            default=None,
        )
        if best is not None:
            detail["cpu_s"], detail["cpu_from"] = best
        # who and what, again: a job's first process may not have said its name
        detail.update({k: v for k, v in job.facts.items() if k in _END_FACTS})
        if job.cpus is not None:
            detail["cpus"] = job.cpus
        if job.steps:
            detail["steps"] = sorted(job.steps)
        out.setdefault("events", []).append(event(t_ms, "job_end", job.ref.job_id, **detail))

    def _cgroup_values(self, f: CgroupFiles) -> list[Any]:
        v: list[Any] = [None] * 8
        read = self.cg.read
        try:
            if f.version == 2:
                if f.cpu:
                    usage, throttled = procparse.parse_keyed(
                        read(f.cpu), (b"usage_usec", b"throttled_usec"), False
                    )
                    v[0] = usage * 1000 if usage is not None else None
                    v[6] = throttled
            else:
                if f.cpu:
                    v[0] = int(read(f.cpu))
                if f.cpu_stat:
                    (throttled_ns,) = procparse.parse_keyed(
                        read(f.cpu_stat), (b"throttled_time",), False
                    )
                    v[6] = throttled_ns // 1000 if throttled_ns is not None else None
        except (OSError, ValueError):
            pass
        v[1] = self._int(f.mem)
        v[2] = self._int(f.mem_peak)
        if f.mem_limit:
            try:
                v[3] = parse_limit(read(f.mem_limit))
            except (OSError, ValueError):
                pass
        if f.io:
            try:
                data = read(f.io)
                v[4], v[5] = parse_io_stat(data) if f.version == 2 else parse_blkio(data)
            except (OSError, ValueError):
                pass
        if f.oom:
            try:
                (v[7],) = procparse.parse_keyed(read(f.oom), (b"oom_kill",), False)
            except (OSError, ValueError):
                pass
        return v

    def _int(self, rel: str | None) -> int | None:
        if not rel:
            return None
        try:
            return int(self.cg.read(rel))
        except (OSError, ValueError):
            return None

    # -- what other families add to the job rows -------------------------------------------
    def add_gpu(self, out: Rows) -> None:
        """Sum the GPU memory and SM use of each job's processes into its row."""
        if not self.rows_by_job:
            return
        for table, col, idx in (("gpu_proc", J_GPU_MEM, 2), ("gpu_proc_util", J_GPU_SM, 2)):
            for r in out.get(table, ()):
                ref = self.refs.get(r[1])
                if ref is None or r[idx] is None:
                    continue
                job_row = self.rows_by_job.get(ref.job_id)
                if job_row is not None:
                    job_row[col] = (job_row[col] or 0) + r[idx]

    def active_jobs(self) -> list[dict[str, Any]]:
        return [
            {
                "job": j.ref.job_id,
                "scheduler": j.ref.scheduler,
                "processes": len(j.pids),
                "since": j.started_ms / 1000,
                **{k: v for k, v in j.facts.items() if k in ("user", "job_name")},
            }
            for j in self.jobs.values()
        ]

    def job_pids(self) -> dict[str, set[int]]:
        """job id -> the pids of its processes now (for the stacks family's fold)."""
        return {j.ref.job_id: set(j.pids) for j in self.jobs.values()}

    def job_cgroups(self) -> dict[str, str]:
        """job id -> its cgroup v2 path (for per-job perf counting)."""
        out = {}
        for j in self.jobs.values():
            for controllers, path in j.ref.cgroups:
                if controllers == "":
                    out[j.ref.job_id] = path
        return out

    def close(self) -> None:
        for pid in list(self._fds):
            self._close_fds(pid)
        self.cg.close()


def _boot_time(files: ProcFiles) -> float | None:
    """btime of /proc/stat: process start times count clock ticks from it."""
    try:
        for line in files.read("proc/stat").split(b"\n"):
            if line.startswith(b"btime "):
                return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _real_uid(status: bytes) -> int | None:
    """The real uid (the first of the four on the Uid: line of /proc/PID/status)."""
    for line in status.split(b"\n"):
        if line.startswith(b"Uid:"):
            try:
                return int(line.split()[1])
            except (IndexError, ValueError):
                return None
    return None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _affinity(status: bytes) -> set[int]:
    """The CPUs a process may run on (Cpus_allowed_list of /proc/PID/status)."""
    for line in status.split(b"\n"):
        if line.startswith(b"Cpus_allowed_list:"):
            try:
                return cpulist_set(line.split(b":", 1)[1].decode())
            except (ValueError, UnicodeDecodeError):
                return set()
    return set()
