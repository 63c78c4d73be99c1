"""A job's CPU, user, name and CPUs on fake /proc trees shaped like the real Slurm jobs of issue 10
(psutil-style: each test writes the /proc and /sys/fs/cgroup files it needs).

The shapes are those seen on a real single-node Slurm 22.05 (slurm-wlm, cgroup v1): under
proctrack/cgroup slurmstepd (root) is in the job's freezer, memory and cpuset cgroups and is the
parent of the batch script; there is no cpuacct cgroup unless jobacct_gather/cgroup; a child
leaves /proc only once its parent reaped it, and then the parent's cutime already holds it.
tests/test_slurm.py checks the same on real jobs.
"""

from __future__ import annotations

import json
import pwd
import shutil
from pathlib import Path

import pytest

from para.agent.samplers.base import ProcFiles
from para.agent.samplers.jobs import JobSampler
from para.formats.schema import TABLES

# the 28 fields of /proc/PID/stat after rss, as a real line has them (processor is field 39)
_TAIL = (
    "18446744073709551615 1 1 0 0 0 0 65536 3686404 1266761467 0 0 0 17 {cpu} "
    "0 0 0 0 0 0 0 0 0 0 0 0 0"
)
BTIME = 1_700_000_000


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class FakeNode:
    """A fake root with proc/ and sys/fs/cgroup/ that tests add processes to and change."""

    def __init__(self, root: Path):
        self.root = root
        self.proc = root / "proc"
        self.cg = root / "sys/fs/cgroup"
        self.proc.mkdir(parents=True)
        self.cg.mkdir(parents=True)
        (self.proc / "self").mkdir()
        (self.proc / "self/cgroup").write_text("0::/\n")
        (self.proc / "self/stat").write_text("1 (init) S 0 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1")
        (self.proc / "stat").write_text(f"cpu  1 2 3 4 5 6 7 0 0 0\nbtime {BTIME}\n")
        (self.proc / "uptime").write_text("90000.00 100000.00\n")
        self.last_pid = 1
        self._loadavg()
        self.procs: dict[int, dict] = {}

    def _loadavg(self) -> None:
        (self.proc / "loadavg").write_text(f"1.00 1.00 1.00 2/100 {self.last_pid}\n")

    def add(
        self,
        pid: int,
        comm: str,
        ppid: int,
        *,
        uid: int = 0,
        utime: int = 0,
        stime: int = 0,
        cutime: int = 0,
        cstime: int = 0,
        start: int = 8_000_000,
        rss: int = 1000,
        threads: int = 1,
        cpus: str = "0-1",
        cgroup: str = "0::/\n",
        env: dict[str, str] | None = None,
        cmdline: list[str] | None = None,
    ) -> None:
        d = self.proc / str(pid)
        d.mkdir()
        self.procs[pid] = dict(
            comm=comm,
            ppid=ppid,
            utime=utime,
            stime=stime,
            cutime=cutime,
            cstime=cstime,
            start=start,
            rss=rss,
            threads=threads,
            state="S",
        )
        self._stat(pid)
        (d / "status").write_text(
            f"Name:\t{comm}\nState:\tS (sleeping)\nPid:\t{pid}\nPPid:\t{ppid}\n"
            f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}\nCpus_allowed_list:\t{cpus}\n"
            "voluntary_ctxt_switches:\t10\nnonvoluntary_ctxt_switches:\t2\n"
        )
        (d / "io").write_text(
            "rchar: 100\nwchar: 10\nsyscr: 1\nsyscw: 1\nread_bytes: 0\nwrite_bytes: 0\n"
            "cancelled_write_bytes: 0\n"
        )
        (d / "cgroup").write_text(cgroup)
        (d / "environ").write_bytes(b"".join(f"{k}={v}\0".encode() for k, v in (env or {}).items()))
        (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in (cmdline or [comm])) + b"\0")
        self.last_pid = max(self.last_pid, pid)
        self._loadavg()

    def _stat(self, pid: int) -> None:
        p = self.procs[pid]
        (self.proc / f"{pid}/stat").write_text(
            f"{pid} ({p['comm']}) {p['state']} {p['ppid']} {pid} {pid} 0 -1 4194560 100 0 0 0 "
            f"{p['utime']} {p['stime']} {p['cutime']} {p['cstime']} 20 0 {p['threads']} 0 "
            f"{p['start']} 12000000 {p['rss']} " + _TAIL.format(cpu=0)
        )

    def set(self, pid: int, **fields) -> None:  # type: ignore[no-untyped-def]
        """Change stat fields of a live process (the same file, as the kernel's is)."""
        self.procs[pid].update(fields)
        self._stat(pid)

    def exec(self, pid: int, comm: str, cmdline: list[str]) -> None:
        self.set(pid, comm=comm)
        (self.proc / f"{pid}/cmdline").write_bytes(b"\0".join(a.encode() for a in cmdline) + b"\0")

    def reap(self, pid: int) -> None:
        """The process is gone from /proc: its kept descriptors read nothing, then no pid."""
        (self.proc / f"{pid}/stat").write_bytes(b"")
        shutil.rmtree(self.proc / str(pid))
        del self.procs[pid]

    def cgfile(self, rel: str, text: str) -> None:
        f = self.cg / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)


@pytest.fixture
def node(tmp_path: Path) -> FakeNode:
    return FakeNode(tmp_path / "node")


def sampler(node: FakeNode, **kw) -> JobSampler:  # type: ignore[no-untyped-def]
    s = JobSampler(ProcFiles(node.root), node.cg, **kw)
    s.open()
    return s


def events(out: dict, kind: str) -> list[tuple[str, int | None, dict]]:
    return [(e[3], e[2], json.loads(e[4] or "{}")) for e in out.get("events", []) if e[1] == kind]


def job_row(out: dict, job: str) -> dict | None:
    names = [c.name for c in TABLES["job"].columns][1:]
    rows = {r[0]: dict(zip(names, r)) for r in out.get("job", [])}
    return rows.get(job)


def cpu(out: dict, job: str) -> int:
    row = job_row(out, job)
    assert row is not None, f"no row of job {job}"
    return row["utime"] + row["stime"]


# -- Slurm 22.05, cgroup v1, proctrack/cgroup: what the real node had --------------------------

V1_JOB = "/slurm_node1/uid_2001/job_7"


def slurm_v1_job(node: FakeNode, *, cpuacct: bool = False) -> None:
    """slurmstepd (root) and a batch script of uid 2001 in job 7's cgroups, as Slurm 22.05's
    cgroup/v1 plugin makes them: freezer, memory and cpuset (and cpuacct only when asked)."""
    for ctrl in ("freezer", "memory", "cpuset") + (("cpuacct",) if cpuacct else ()):
        (node.cg / ctrl / V1_JOB.lstrip("/")).mkdir(parents=True)
    node.cgfile(f"memory{V1_JOB}/memory.usage_in_bytes", "19000000\n")
    node.cgfile(f"memory{V1_JOB}/memory.max_usage_in_bytes", "19922944\n")
    node.cgfile(f"memory{V1_JOB}/memory.limit_in_bytes", "9223372036854771712\n")
    node.cgfile(f"memory{V1_JOB}/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\n")
    node.cgfile(f"cpuset{V1_JOB}/cpuset.cpus", "0\n")
    if cpuacct:
        node.cgfile(f"cpuacct{V1_JOB}/cpuacct.usage", "31000000000\n")
    stepd = (
        f"6:freezer:{V1_JOB}\n4:memory:{V1_JOB}/step_batch\n3:cpuset:{V1_JOB}/step_batch\n"
        "2:cpuacct:/\n1:cpu:/\n"
    )
    task = (
        f"6:freezer:{V1_JOB}/step_batch\n4:memory:{V1_JOB}/step_batch/task_0\n"
        f"3:cpuset:{V1_JOB}/step_batch\n"
        + (f"2:cpuacct:{V1_JOB}/step_batch/task_0\n" if cpuacct else "2:cpuacct:/\n")
        + "1:cpu:/\n"
    )
    env = {
        "SLURM_JOB_ID": "7",
        "SLURM_JOB_NAME": "busy",
        "SLURM_JOB_PARTITION": "debug",
        "SLURM_JOB_USER": "mallory",
        "SLURM_CPUS_ON_NODE": "1",
        "SLURM_JOB_NUM_NODES": "1",
    }
    node.add(
        50,
        "slurmstepd",
        1,
        uid=0,
        utime=40,
        stime=30,
        rss=10_000,
        threads=7,
        cgroup=stepd,
        start=8_000_000,
    )
    node.add(
        51,
        "slurm_script",
        50,
        uid=2001,
        utime=1,
        stime=1,
        rss=800,
        cgroup=task,
        env=env,
        start=8_000_010,
        cpus="0",
    )
    node.add(
        52,
        "python3",
        51,
        uid=2001,
        utime=3000,
        stime=10,
        rss=3000,
        cgroup=task,
        env=env,
        start=8_000_020,
        cpus="0",
    )


def test_slurmstepd_is_no_job_process_and_the_owner_comes_from_the_cgroup(node):
    """Issue 10 item 2: the job became root's (slurmstepd was its first process), had no name or
    partition, 7 processes and 43 MB of RSS against 19 MB in the cgroup."""
    slurm_v1_job(node)
    s = sampler(node)
    out: dict = {}
    s.sample(1000, out)
    ((job, _, start),) = events(out, "job_start")
    assert job == "7"
    assert start["user"] == user_name(2001) != "mallory"  # uid_2001, not SLURM_JOB_USER
    assert start["job_name"] == "busy" and start["partition"] == "debug"
    assert start["nodes"] == 1  # a number
    assert start["cpus"] == 1  # cpuset.cpus "0"
    assert 50 not in {e[1] for e in events(out, "process_start")}
    assert {r[0] for r in out["proc"]} == {51, 52}
    row = job_row(out, "7")
    assert row is not None
    assert row["procs"] == 2 and row["threads"] == 2
    assert row["rss_bytes"] == (800 + 3000) * s.page_size  # not slurmstepd's
    assert row["utime"] == 3001 and row["stime"] == 11  # not slurmstepd's own CPU


def test_the_accounting_a_v1_job_cgroup_lacks_is_said(node):
    """Issue 10 item 3: no cpuacct cgroup (Slurm 22.05 on v1 without jobacct_gather/cgroup):
    job_start says why there is no cg_cpu_ns, and what exists is read."""
    slurm_v1_job(node)
    (node.cg / "blkio").mkdir()
    s = sampler(node)
    out: dict = {}
    s.sample(1000, out)
    ((_, _, start),) = events(out, "job_start")
    assert "no cpuacct cgroup" in start["unavailable"]["cpu"]
    assert "no blkio cgroup" in start["unavailable"]["io"]
    assert "no cpu cgroup" in start["unavailable"]["throttling"]
    assert "memory" not in start["unavailable"]
    row = job_row(out, "7")
    assert row is not None
    assert row["cg_cpu_ns"] is None and row["cg_read_bytes"] is None
    assert row["cg_mem_peak_bytes"] == 19922944 and row["cg_mem_bytes"] == 19000000
    assert row["cg_mem_limit_bytes"] is None  # v1's "no limit"


def test_a_busy_job_counts_its_cpu_once_to_the_end(node):
    """Issue 10 item 1: a 1-CPU busy job's CPU doubled at its end (utime 3928 -> 7891 ticks in
    the last sample): its children's time, reaped into their parents' cutime, counted again."""
    slurm_v1_job(node)
    s = sampler(node, end_after_s=2.0)
    out: dict = {}
    s.sample(1000, out)
    assert cpu(out, "7") == 3001 + 11
    node.set(52, utime=3900)
    s.sample(2000, out := {})
    assert cpu(out, "7") == 3900 + 10 + 2
    # python ends (40 ticks after its last sample) and the script reaps it before the next one
    node.reap(52)
    node.set(51, cutime=3940, cstime=10)
    s.sample(3000, out := {})
    assert cpu(out, "7") == 2 + 3940 + 10
    # the script ends; slurmstepd reaps it (its children time now holds the whole job)
    node.reap(51)
    node.set(50, cutime=3 + 3940, cstime=1 + 10, utime=60)
    s.sample(4000, out := {})
    assert cpu(out, "7") == 3 + 1 + 3940 + 10
    assert job_row(out, "7")["procs"] == 0  # type: ignore[index]
    # slurmstepd lingers as a zombie, then is gone
    node.set(50, state="Z")
    s.sample(5000, out := {})
    assert cpu(out, "7") == 3954
    node.reap(50)
    s.sample(5500, out := {})
    assert job_row(out, "7") is None and not events(out, "job_end")
    s.sample(6000, out := {})  # end_after_s after the last process was gone
    ((job, _, end),) = events(out, "job_end")
    assert job == "7" and end["cpu_s"] == pytest.approx(3954 / s.clk_tck)
    assert end["cpu_from"] == "processes"  # no cpuacct cgroup
    # its first process started at 8_000_010 ticks; the last sample that saw one: 3000
    assert end["start"] == pytest.approx(BTIME + 8_000_010 / s.clk_tck)
    assert end["end"] == 3.0
    assert end["user"] == user_name(2001) and end["job_name"] == "busy"
    assert end["max_rss_bytes"] == 3800 * s.page_size


def test_where_the_cgroup_accounts_cpu_the_job_end_says_so(node):
    slurm_v1_job(node, cpuacct=True)
    s = sampler(node, end_after_s=0)
    out: dict = {}
    s.sample(1000, out)
    assert (
        "unavailable" not in events(out, "job_start")[0][2]
        or "cpu" not in (events(out, "job_start")[0][2]["unavailable"])
    )
    assert job_row(out, "7")["cg_cpu_ns"] == 31_000_000_000  # type: ignore[index]
    for pid in (52, 51, 50):
        node.reap(pid)
    s.sample(2000, out := {})
    ((_, _, end),) = events(out, "job_end")
    assert end["cpu_from"] == "cgroup" and end["cpu_s"] == end["cg_cpu_s"] == 31.0
    assert end["processes_cpu_s"] == pytest.approx(3012 / s.clk_tck)


def test_a_script_of_short_children_one_after_another(node):
    """Issue 10 item 1: 4 x 3 s children one after another counted 26.8 s against 12.0 s
    (bash `times`): a child leaves /proc only once reaped, so in the sample that finds it
    gone its parent's cutime already holds it."""
    env = {"SLURM_JOB_ID": "9", "SLURM_JOB_NAME": "kids"}
    node.add(100, "bash", 1, uid=2001, utime=2, stime=1, env=env, start=100)
    s = sampler(node)
    s.sample(1000, {})
    cutime = 0
    pid = 200
    for k in range(4):
        pid += 1
        node.add(pid, "work", 100, uid=2001, utime=0, env=env, start=200 + 1000 * k)
        s.sample(2000 + 3000 * k, out := {})
        node.set(pid, utime=150)
        s.sample(3000 + 3000 * k, out := {})
        node.set(pid, utime=250)
        s.sample(4000 + 3000 * k, out := {})
        assert cpu(out, "9") == 3 + cutime + 250
        node.reap(pid)  # 300 ticks in all: 50 after its last sample
        cutime += 300
        node.set(100, cutime=cutime)
    s.sample(20000, out := {})
    assert cpu(out, "9") == 3 + 4 * 300  # what bash's `times` would print, and no more


def test_two_tasks_under_a_parent_that_reaps_them_in_a_later_sample(node):
    """srun -n 2 on 1 CPU (59.5 s against about 30 s): two tasks end; their parent reaps one at
    once and the other a sample later, or leaves it a zombie for a while."""
    env = {"SLURM_JOB_ID": "11", "SLURM_STEP_ID": "0", "SLURM_CPUS_ON_NODE": "1"}
    node.add(300, "srun", 1, uid=2001, utime=5, env=env, start=100)
    node.add(301, "task", 300, uid=2001, utime=1000, env=env, start=110, cpus="0")
    node.add(302, "task", 300, uid=2001, utime=1000, env=env, start=111, cpus="0")
    s = sampler(node)
    s.sample(1000, out := {})
    assert cpu(out, "11") == 2005
    assert job_row(out, "11")["cpus"] == 1  # type: ignore[index]
    node.reap(301)
    node.set(300, cutime=1100)  # reaped before the next sample: 100 ticks more than seen
    node.set(302, utime=1100, state="Z")  # ended, not reaped yet
    s.sample(2000, out := {})
    assert cpu(out, "11") == 5 + 1100 + 1100
    node.reap(302)
    node.set(300, cutime=2200)
    s.sample(3000, out := {})
    assert cpu(out, "11") == 5 + 2200
    s.sample(4000, out := {})
    assert cpu(out, "11") == 2205


def test_proctrack_linuxproc_follows_slurmstepd_as_the_scripts_parent(node):
    """Without job cgroups the job is found by its environment; slurmstepd (no SLURM_ vars of
    its own) is the script's parent and holds its final CPU once it reaps it."""
    env = {"SLURM_JOB_ID": "13", "SLURM_JOB_NAME": "lp"}
    node.add(400, "slurmstepd", 1, uid=0, utime=20, start=100)
    node.add(401, "slurm_script", 400, uid=2001, utime=500, env=env, start=105)
    s = sampler(node)
    s.sample(1000, out := {})
    assert cpu(out, "13") == 500 and {r[0] for r in out["proc"]} == {401}
    node.reap(401)  # 80 ticks after its last sample, then reaped by slurmstepd
    node.set(400, cutime=580)
    s.sample(2000, out := {})
    assert cpu(out, "13") == 580


def test_cpus_are_the_union_of_affinities_capped_by_allocation_and_cgroup(node):
    """Issue 10 item 5: the first rank's own affinity ("1 CPUs") or the node's CPUs over
    SLURM_CPUS_ON_NODE were taken."""
    env = {"SLURM_JOB_ID": "21", "SLURM_CPUS_ON_NODE": "4"}
    node.add(500, "rank", 1, uid=2001, env=env, cpus="0", start=100)
    node.add(501, "rank", 1, uid=2001, env=env, cpus="1", start=101)
    node.add(502, "rank", 1, uid=2001, env=env, cpus="2-3", start=102)
    s = sampler(node)
    s.sample(1000, out := {})
    assert job_row(out, "21")["cpus"] == 3 + 1  # type: ignore[index]
    over = {"SLURM_JOB_ID": "22", "SLURM_CPUS_ON_NODE": "1"}
    node.add(600, "busy", 1, uid=2001, env=over, cpus="0-7", start=200)
    s.sample(2000, out := {})
    assert job_row(out, "22")["cpus"] == 1  # the allocation caps the affinity


def test_a_cgroup_quota_caps_the_cpus(node):
    job = "system.slice/slurmstepd.scope/job_31"
    (node.cg / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    node.cgfile(f"{job}/cpuset.cpus.effective", "0-7\n")
    node.cgfile(f"{job}/cpu.max", "150000 100000\n")
    node.add(
        700, "app", 1, uid=2001, cpus="0-7", cgroup=f"0::/{job}/step_0/user/task_0\n", start=100
    )
    s = sampler(node)
    s.sample(1000, out := {})
    assert job_row(out, "31")["cpus"] == 2  # type: ignore[index]


def test_the_name_follows_exec(node):
    """Issue 10 item 9: a pyenv shim (bash) that execs python stayed "bash"."""
    env = {"SLURM_JOB_ID": "41"}
    node.add(800, "bash", 1, uid=2001, env=env, start=100, cmdline=["bash", "/pyenv/shims/python"])
    s = sampler(node)
    s.sample(1000, out := {})
    assert [e[0] for e in events(out, "process_start")] == ["bash"]
    node.exec(800, "python3.11", ["python3.11", "train.py"])
    s.sample(2000, out := {})
    ((name, pid, detail),) = events(out, "process_exec")
    assert (name, pid) == ("python3.11", 800)
    assert detail["cmdline"] == ["python3.11", "train.py"] and detail["job"] == "41"
    s.sample(3000, out := {})
    assert not events(out, "process_exec")


def test_a_script_and_its_child_ending_in_one_interval(node):
    """The real busy job: python and the batch script end between two samples; slurmstepd's
    children time then holds both (the script's includes python's), and python's last row
    must not count a second time (it did: 7.96 s against 3.98 s)."""
    slurm_v1_job(node)
    s = sampler(node)
    s.sample(1000, {})
    node.reap(52)
    node.reap(51)
    node.set(50, cutime=2 + 3100, cstime=11)  # 90 more ticks of python's after its last row
    s.sample(2000, out := {})
    assert cpu(out, "7") == 3102 + 11
    s.sample(3000, out := {})
    assert cpu(out, "7") == 3113


def test_a_zombie_script_then_reaped(node):
    slurm_v1_job(node)
    s = sampler(node)
    s.sample(1000, {})
    node.reap(52)
    node.set(51, state="Z", cutime=3050, cstime=10)  # reaped python, then exited
    s.sample(2000, out := {})
    assert cpu(out, "7") == 2 + 3060
    node.reap(51)
    node.set(50, cutime=1 + 3050, cstime=1 + 10)  # the script's final own and children time
    s.sample(3000, out := {})
    assert cpu(out, "7") == 3062


def test_a_profiled_process_name_follows_exec_too(node):
    from para.agent.samplers.process import ProcessSampler

    node.add(900, "bash", 1, start=100, cmdline=["bash", "/pyenv/shims/python"])
    s = ProcessSampler(ProcFiles(node.root), roots=lambda: {900})
    s.open()
    s.sample(1000, out := {})
    node.exec(900, "python3.11", ["python3.11", "-c", "pass"])
    s.sample(2000, out := {})
    ((name, pid, detail),) = events(out, "process_exec")
    assert (name, pid, detail["cmdline"]) == ("python3.11", 900, ["python3.11", "-c", "pass"])
