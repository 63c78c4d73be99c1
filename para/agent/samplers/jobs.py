"""The jobs on a node: their processes (proc rows with job and step), their start and end
(events), and each second one `job` row per job summing its processes and reading its cgroup.

Discovery costs nothing while no process is created (the last pid in /proc/loadavg is
unchanged, as in the process sampler); otherwise /proc is listed and each new pid is
classified once: its stat (kernel threads are skipped), its cgroup, and, when the cgroup names
no job, its environment.  A pid that belongs to no job is not looked at again, except while
it is young: a scheduler moves a new task into the job's cgroup just after fork(), so a pid
less than YOUNG_S old is classified again at the next sample.

Job counters stay monotonic when processes end: a process's last values move into the job's
account of ended processes (the CPU it used between its last sample and its exit is the
only part missing, which the cgroup's own cg_cpu_ns does include).
"""

from __future__ import annotations

import errno
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
    job_facts,
    job_from_cgroup,
    job_from_environ,
    parse_blkio,
    parse_environ,
    parse_io_stat,
    parse_limit,
    parse_proc_cgroup,
)
from para.agent.samplers.base import ProcFiles, Rows, Unavailable, event
from para.agent.samplers.process import ProcessSampler
from para.cython_ext import load

procparse = load("procparse")
procread = load("procread")

YOUNG_S = 2.0
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
        self._owed: dict[int, list[Any]] = {}  # parent pid -> [job id, utime, stime]
        self._ending: list[int] = []
        self.rows_by_job: dict[str, list[Any]] = {}
        self.clk_tck = os.sysconf("SC_CLK_TCK")
        self._known = set(known_jobs or ())
        self._first_sample = True
        self._btime: float | None = None
        self._fds: dict[int, tuple[int, int, int]] = {}  # member pid -> stat, status, io
        self._proc = str(files.path("proc")) + "/"
        self.classified = 0
        self.environ_reads = 0

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
            ref = job_from_cgroup(parse_proc_cgroup(self.files.read_once(f"proc/{pid}/cgroup")))
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
            env = parse_environ(self.files.read_once(f"proc/{pid}/environ"))
        except OSError:
            return None
        found = job_from_environ(env)
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
            if ref is None and self.mode != "all":
                self.outsiders.add(pid)
                if start > young_limit:
                    self._young[pid] = start
                continue
            self.outsiders.discard(pid)
            self.members[pid] = start
            self.refs[pid] = ref
            self.seen_total += 1
            if ref is not None:
                self._joined(t_ms, ref, pid, start, out)
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

    def _joined(self, t_ms: int, ref: JobRef, pid: int, start_ticks: int, out: Rows) -> None:
        job = self.jobs.get(ref.job_id)
        if job is not None:
            job.pids.add(pid)
            job.empty_since_ms = None
            if ref.step:
                job.steps.add(ref.step)
            return
        facts: dict[str, Any] = {}
        try:
            facts = job_facts(parse_environ(self.files.read_once(f"proc/{pid}/environ")))
        except OSError:
            pass
        if "user" not in facts:
            user = _owner(self.files, pid)
            if user:
                facts["user"] = user
        job = Job(ref, t_ms, facts, {pid})
        if ref.step:
            job.steps.add(ref.step)
        job.files = self.layout.files(ref)
        job.cpus = self._cpus(job, pid)
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
        out.setdefault("events", []).append(event(t_ms, "job_start", ref.job_id, **detail))

    def _cpus(self, job: Job, pid: int) -> int | None:
        if job.files is not None and job.files.cpuset:
            try:
                return cpulist_count(self.cg.read_once(job.files.cpuset).decode())
            except (OSError, ValueError, UnicodeDecodeError):
                pass
        try:
            status = self.files.read_once(f"proc/{pid}/status")
        except OSError:
            return None
        for line in status.split(b"\n"):
            if line.startswith(b"Cpus_allowed_list:"):
                try:
                    return cpulist_count(line.split(b":", 1)[1].decode())
                except ValueError:
                    return None
        return None

    # -- each sample -----------------------------------------------------------------------
    def sample(self, t_ms: int, out: Rows) -> None:
        self._discover(t_ms, out)
        self._first_sample = False
        proc_rows: list[list[Any]] = []
        if self.mode == "none":
            self._check_members(t_ms, out)
        else:
            proc_rows = self._read_members(t_ms, out)
        self._account(t_ms, proc_rows, out)

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

    def _read_members(self, t_ms: int, out: Rows) -> list[list[Any]]:
        pids = list(self.members)
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
            # rank (None): `para profile` tells ranks apart; the agent does not yet
            job, step = (ref.job_id, ref.step) if ref else (None, None)
            rows.append([pid, *r[:18], None, job, step])
            if r[1] == "Z":
                self._ended(t_ms, pid, out)
        return rows

    def _check_members(self, t_ms: int, out: Rows) -> None:
        """processes = "none": only whether each member still lives (one stat read)."""
        pids = list(self.members)
        results = procread.read_pids([(self._open_fds(p)[0], -1, -1) for p in pids], 1)
        for pid, r in zip(pids, results):
            if r is None or r[18] != self.members[pid] or r[1] in ("X", "Z"):
                self._ended(t_ms, pid, out)

    def _close_fds(self, pid: int) -> None:
        for fd in self._fds.pop(pid, ()):
            if fd >= 0:
                os.close(fd)

    def _ended(self, t_ms: int, pid: int, out: Rows) -> None:
        super()._ended(t_ms, pid, out)
        self._close_fds(pid)
        self._ending.append(pid)

    def _account(self, t_ms: int, proc_rows: list[list[Any]], out: Rows) -> None:
        """Per job: its live processes summed, CPU with the children each waited for (the
        commands too short to be sampled), plus what ended members counted when last seen."""
        live: dict[str, list[Any]] = {}
        for prow in proc_rows:
            pid = prow[0]
            cu, cs = prow[_CUTIME] or 0, prow[_CSTIME] or 0
            counts = [prow[i] or 0 for i in _COUNTERS]
            counts[0] += cu
            counts[1] += cs
            self._last[pid] = tuple(counts)
            self._ppid[pid] = prow[_PPID]
            self._repay(pid, cu, cs)
            job_id = prow[-2]
            if job_id is None:
                continue
            acc = live.get(job_id)
            if acc is None:
                acc = live[job_id] = [0, 0, 0, [0] * len(_COUNTERS)]
            if prow[2] != "Z":  # a zombie holds no memory or threads, only its final counts
                acc[0] += 1
                acc[1] += prow[_THREADS] or 0
                acc[2] += prow[_RSS] or 0
            sums = acc[3]
            for k in range(len(_COUNTERS)):
                sums[k] += counts[k]
        sampled = {r[0] for r in proc_rows} if self._ending else set()
        for pid in self._ending:
            ref = self.refs.pop(pid, None)
            last = self._last.pop(pid, None)
            parent = self._ppid.pop(pid, None)
            self._kids.pop(pid, None)
            self._owed.pop(pid, None)
            if ref is None:
                continue
            job = self.jobs.get(ref.job_id)
            if job is None:
                continue
            job.pids.discard(pid)
            job.ended_procs += 1
            if last is not None:
                # the zombie's final row was summed as live above: count it once, as ended
                acc = live.get(ref.job_id)
                if acc is not None and pid in sampled:
                    for k in range(len(_COUNTERS)):
                        acc[3][k] -= last[k]
                for k in range(len(_COUNTERS)):
                    job.ended[k] += last[k]
                if parent in job.pids and parent not in self._ending:
                    # its parent will wait for it: then the parent's children time holds it
                    owed = self._owed.setdefault(parent, [ref.job_id, 0, 0])
                    owed[1] += last[0]
                    owed[2] += last[1]
        self._ending = []
        rows = out.setdefault("job", [])
        self.rows_by_job = {}
        for job_id, job in list(self.jobs.items()):
            acc = live.get(job_id)
            if not job.pids:
                if job.empty_since_ms is None:
                    job.empty_since_ms = t_ms
                if t_ms - job.empty_since_ms >= self.end_after_ms:
                    self._job_ended(t_ms, job, out)
                    continue
            row: list[Any] = [job_id] + [None] * (JOB_WIDTH - 1)
            row[J_SCHEDULER] = job.ref.scheduler
            row[J_CPUS] = job.cpus
            if self.mode == "none":
                row[J_PROCS] = len(job.pids)
            else:
                procs, threads, rss, sums = acc if acc is not None else (0, 0, 0, None)
                row[J_PROCS] = procs
                row[J_THREADS] = threads
                row[J_RSS] = rss
                job.max_rss = max(job.max_rss, rss)
                for k, col in enumerate((J_UTIME, J_STIME, J_RCHAR, J_WCHAR, J_RBYTES, J_WBYTES)):
                    row[col] = job.ended[k] + (sums[k] if sums is not None else 0)
            if job.files is not None:
                row[J_CG : J_CG + 8] = self._cgroup_values(job.files)
            rows.append(row)
            self.rows_by_job[job_id] = row

    def _repay(self, pid: int, cu: int, cs: int) -> None:
        """The children time `pid` gained since the last sample holds, first, what its ended
        children counted in their own rows: take that back from the job's ended sums."""
        prev = self._kids.get(pid)
        self._kids[pid] = (cu, cs)
        owed = self._owed.get(pid)
        if owed is None or prev is None:
            return
        job = self.jobs.get(owed[0])
        for k, gained in ((0, cu - prev[0]), (1, cs - prev[1])):
            took = max(0, min(owed[1 + k], gained))
            owed[1 + k] -= took
            if job is not None:
                job.ended[k] -= took
        if owed[1] <= 0 and owed[2] <= 0:
            del self._owed[pid]

    def _job_ended(self, t_ms: int, job: Job, out: Rows) -> None:
        del self.jobs[job.ref.job_id]
        if job.files is not None:
            for rel in job.files.all():
                self.cg.forget(rel)
        detail: dict[str, Any] = {
            "scheduler": job.ref.scheduler,
            "duration_s": round((t_ms - job.started_ms) / 1000, 3),
            "processes": job.ended_procs,
            "cpu_s": round((job.ended[0] + job.ended[1]) / self.clk_tck, 2),
            "max_rss_bytes": job.max_rss,
        }
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


def _owner(files: ProcFiles, pid: int) -> str | None:
    try:
        status = files.read_once(f"proc/{pid}/status")
    except OSError:
        return None
    for line in status.split(b"\n"):
        if line.startswith(b"Uid:"):
            try:
                uid = int(line.split()[1])
            except (IndexError, ValueError):
                return None
            try:
                return pwd.getpwuid(uid).pw_name
            except KeyError:
                return str(uid)
    return None
