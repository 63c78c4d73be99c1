"""Job awareness: cgroup layouts of real sites, the environment fallback, per-job sums.

The fake roots in tests/fixtures/cgroup come from a real Slurm/Torque node's cgroup trees
(v1 and v2), with /proc files written to match (see SOURCES.md there).
"""

from __future__ import annotations

import json
import pwd
import shutil
from pathlib import Path

import pytest

from para.agent.jobs import (
    CgroupLayout,
    JobRef,
    classify_path,
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
from para.agent.samplers.base import ProcFiles
from para.agent.samplers.jobs import JOB_WIDTH, JobSampler
from para.formats.schema import TABLES

from .conftest import FIXTURES

CG = FIXTURES / "cgroup"


def tree(tmp_path: Path, name: str) -> Path:
    """A writable copy of a fake root (tests remove processes from it)."""
    root = tmp_path / name
    shutil.copytree(CG / name, root)
    return root


def exit_process(root: Path, pid: int) -> None:
    """As a real exit looks through the descriptors the sampler keeps: its stat reads empty
    (the same file, truncated), then /proc has no such pid."""
    (root / f"proc/{pid}/stat").write_bytes(b"")
    shutil.rmtree(root / f"proc/{pid}")


def sampler(root: Path, **kw) -> JobSampler:
    s = JobSampler(ProcFiles(root), root / "sys/fs/cgroup", **kw)
    s.open()
    return s


def events(out: dict, kind: str) -> list[tuple[str, dict]]:
    return [(e[3], json.loads(e[4] or "{}")) for e in out.get("events", []) if e[1] == kind]


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def job_rows(out: dict) -> dict[str, dict]:
    names = [c.name for c in TABLES["job"].columns][1:]
    return {r[0]: dict(zip(names, r)) for r in out.get("job", [])}


# -- cgroup paths of every scheduler -------------------------------------------------------


@pytest.mark.parametrize(
    "path, want",
    [
        # the captured v2 node: a task, and slurmstepd's own cgroup (not a job)
        (
            "/system.slice/slurmstepd.scope/job_4/step_0/user/task_0",
            ("slurm", "4", "0", "/system.slice/slurmstepd.scope/job_4"),
        ),
        ("/system.slice/slurmstepd.scope/system", None),
        ("/system.slice/slurmstepd.scope/job_4/step_extern/slurm", ("slurm", "4", "extern", None)),
        # v1, and the multiple-slurmd layout
        ("/slurm/uid_20821/job_11/step_batch/task_0", ("slurm", "11", "batch", None)),
        ("/slurm_node17/uid_5/job_7/step_0", ("slurm", "7", "0", "/slurm_node17/uid_5/job_7")),
        ("/pbs_jobs.service/jobid/12345.gadi-pbs", ("pbs", "12345.gadi-pbs", None, None)),
        ("/pbs_jobs.service/jobs/12.srv", ("pbs", "12.srv", None, None)),
        ("/pbspro/33.server", ("pbs", "33.server", None, None)),
        ("/torque/1182724.batch", ("torque", "1182724.batch", None, None)),
        ("/lsf/cluster1/job.1234.0.1600000000", ("lsf", "1234", None, None)),
        ("/lsf/cluster1/job.1234.5.1600000000/task", ("lsf", "1234[5]", None, None)),
        (
            "/kubepods/burstable/pod6a5e5ff3-0b7d-4b7b-9a6d-0c0c0c0c0c0c/"
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            ("k8s", "6a5e5ff3-0b7d-4b7b-9a6d-0c0c0c0c0c0c", "0123456789ab", None),
        ),
        (
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6a5e5ff3_0b7d_4b7b_"
            "9a6d_0c0c0c0c0c0c.slice/cri-containerd-0123456789abcdef0123456789abcdef.scope",
            ("k8s", "6a5e5ff3-0b7d-4b7b-9a6d-0c0c0c0c0c0c", "0123456789ab", None),
        ),
        ("/docker/0123456789abcdef0123", ("container", "0123456789ab", None, None)),
        (
            "/system.slice/docker-0123456789abcdef0123456789abcdef.scope",
            ("container", "0123456789ab", None, None),
        ),
        (
            "/machine.slice/libpod-fedcba9876543210fedc.scope",
            ("container", "fedcba987654", None, None),
        ),
        ("/system.slice/docker.service", None),
        ("/user.slice/user-20821.slice/session-157.scope", None),
        ("/", None),
    ],
)
def test_cgroup_paths_name_their_jobs(path, want):
    got = classify_path(path)
    if want is None:
        assert got is None
        return
    assert got is not None
    assert got[:3] == want[:3]
    if want[3] is not None:
        assert got[3] == want[3]


def test_captured_proc_cgroup_files():
    v2 = CG / "slurm-v2/proc"
    task = job_from_cgroup(parse_proc_cgroup((v2 / "49276/cgroup").read_bytes()))
    assert task == JobRef(
        "slurm", "4", "0", (("", "/system.slice/slurmstepd.scope/job_4"),), "cgroup"
    )
    assert job_from_cgroup(parse_proc_cgroup((v2 / "43310/cgroup").read_bytes())) is None
    assert job_from_cgroup(parse_proc_cgroup((v2 / "67998/cgroup").read_bytes())) is None
    v1 = job_from_cgroup(parse_proc_cgroup((CG / "slurm-v1/proc/177837/cgroup").read_bytes()))
    assert v1 is not None and (v1.scheduler, v1.job_id, v1.step) == ("slurm", "11", "0")
    assert ("cpu,cpuacct", "/slurm/uid_20821/job_11") in v1.cgroups


def test_malformed_proc_cgroup_names_the_line():
    with pytest.raises(ValueError, match="line 2"):
        parse_proc_cgroup(b"0::/ok\nnot a cgroup line\n")


def test_environment_names_the_job():
    env = parse_environ((CG / "environ/proc/5001/environ").read_bytes())
    found = job_from_environ(env)
    assert found is not None
    ref, facts = found
    assert (ref.scheduler, ref.job_id, ref.source) == ("slurm", "5561", "environ")
    # not the user: SLURM_JOB_USER is whatever the process set (the uid tells instead)
    assert facts == {"job_name": "md-run", "cpus_on_node": 4, "gpus": "0,1"}
    pbs = job_from_environ(parse_environ((CG / "slurm-v1/proc/280687/environ").read_bytes()))
    assert pbs is not None and pbs[0].job_id == "1182724.batch" and pbs[0].scheduler == "pbs"
    assert job_facts({"LSB_JOBID": "7", "LSB_JOBNAME": "x", "LSB_QUEUE": "normal"})["queue"] == (
        "normal"
    )
    assert job_from_environ({"HOME": "/root"}) is None


def test_small_parsers():
    assert cpulist_count("0-3,8,10-11") == 7
    assert cpulist_count("0\n") == 1
    with pytest.raises(ValueError):
        cpulist_count("0-x")
    assert parse_limit(b"max\n") is None and parse_limit(b"1835008000\n") == 1835008000
    assert parse_limit(b"9223372036854771712\n") is None  # v1's "no limit"
    io = (CG / "slurm-v2/sys/fs/cgroup/system.slice/slurmstepd.scope/io.stat").read_bytes()
    assert parse_io_stat(io) == (45056 * 2, 24576 + 12288)
    assert parse_blkio(b"8:0 Read 100\n8:0 Write 7\n8:0 Sync 1\n8:16 Read 5\nTotal 113\n") == (
        105,
        7,
    )
    with pytest.raises(ValueError, match="io.stat line 1"):
        parse_io_stat(b"8:0 rbytes\n")


def test_layout_finds_both_versions():
    v2 = CgroupLayout(CG / "slurm-v2/sys/fs/cgroup")
    assert v2.unified == ""
    ref = JobRef("slurm", "4", None, (("", "/system.slice/slurmstepd.scope/job_4"),))
    f = v2.files(ref)
    assert f is not None and f.version == 2
    assert f.mem == "system.slice/slurmstepd.scope/job_4/memory.current"
    v1 = CgroupLayout(CG / "slurm-v1/sys/fs/cgroup")
    assert v1.unified is None and v1.v1_dir("memory") == "memory"
    f1 = v1.files(JobRef("torque", "1182724.batch", None, (("memory", "/torque/1182724.batch"),)))
    # a job whose processes are in no cpuacct cgroup: no path is guessed, and the reason said
    assert (
        f1 is not None
        and f1.cpu is None
        and f1.mem == "memory/torque/1182724.batch/" + ("memory.usage_in_bytes")
    )
    assert f1.missing["cpu"] == "the job has no cpuacct cgroup (its processes are in memory only)"
    assert v1.files(JobRef("slurm", "1", None, ())) is None


# -- the sampler on whole fake nodes -------------------------------------------------------


def test_slurm_cgroup_v2_node(tmp_path):
    root = tree(tmp_path, "slurm-v2")
    s = sampler(root)
    out: dict = {}
    s.sample(1000, out)
    (start,) = events(out, "job_start")
    assert start[0] == "4"
    assert start[1] == {
        "scheduler": "slurm",
        "found_by": "cgroup",
        "job_name": "interactive",
        "user": user_name(20821),  # the task's real uid (no such user on this machine)
        "cpus_on_node": 1,
        "partition": "debug",
        "cpus": 1,  # cpuset.cpus.effective of job_4 is "0"
        "cgroup": "/system.slice/slurmstepd.scope/job_4",
        "already_running": True,  # there at the sampler's first look
        "unavailable": {
            "io": f"{root}/sys/fs/cgroup/system.slice/slurmstepd.scope/job_4/io.stat does not exist"
        },
    }
    # only the job's task has a proc row; slurmstepd and the login shell are not the job's
    assert [(r[0], r[-2], r[-1]) for r in out["proc"]] == [(49276, "4", "0")]
    job = job_rows(out)["4"]
    assert job["procs"] == 1 and job["utime"] == 3 and job["stime"] == 1
    assert job["rss_bytes"] == 1181 * s.page_size
    assert job["cg_cpu_ns"] == 126686 * 1000
    assert job["cg_mem_bytes"] == 5660672 and job["cg_mem_peak_bytes"] == 7229440
    assert job["cg_mem_limit_bytes"] == 1835008000
    assert job["cg_throttled_us"] == 0 and job["cg_oom_kills"] == 0
    assert job["cg_read_bytes"] is None  # job_4 has no io.stat in the capture
    assert job["scheduler"] == "slurm" and job["cpus"] == 1
    assert all(len(r) == JOB_WIDTH for r in out["job"])
    assert len(out["proc"][0]) == len(TABLES["proc"].columns) - 1


def test_slurm_and_torque_on_cgroup_v1(tmp_path):
    root = tree(tmp_path, "slurm-v1")
    s = sampler(root)
    out: dict = {}
    s.sample(1000, out)
    starts = dict(events(out, "job_start"))
    assert set(starts) == {"11", "1182724.batch"}
    assert starts["11"]["scheduler"] == "slurm" and starts["11"]["cpus"] == 40
    assert starts["11"]["job_name"] == "vasp-relax"
    assert starts["1182724.batch"]["scheduler"] == "torque"
    # the owner's uid, never PBS_O_LOGNAME (user30001) that any process can set
    assert starts["1182724.batch"]["user"] == user_name(30001)
    assert starts["11"]["user"] == user_name(20821)  # uid_20821 in its cgroup path
    rows = job_rows(out)
    assert rows["11"]["cg_cpu_ns"] == 33146523011972
    assert rows["11"]["cg_mem_bytes"] == 6126714880
    assert rows["11"]["cg_mem_peak_bytes"] == 8346267648
    assert rows["11"]["cg_mem_limit_bytes"] == 191092490240
    assert rows["11"]["cg_throttled_us"] == 0
    assert rows["11"]["cg_oom_kills"] is None  # that kernel's oom_control has no oom_kill
    assert rows["11"]["utime"] == 331356 and rows["11"]["threads"] == 40
    assert rows["1182724.batch"]["cg_cpu_ns"] == 152995785583781
    assert rows["1182724.batch"]["cg_mem_bytes"] == 82553999360
    # systemd (pid 1) is in no job
    assert {r[0] for r in out["proc"]} == {177837, 280687}


def test_environment_fallback_and_children(tmp_path):
    root = tree(tmp_path, "environ")
    s = sampler(root)
    out: dict = {}
    s.sample(1000, out)
    (start,) = events(out, "job_start")
    assert start[0] == "5561" and start[1]["found_by"] == "environ"
    assert start[1]["gpus"] == "0,1" and start[1]["cpus"] == 4  # Cpus_allowed_list 0-3
    members = {r[0]: r[-2] for r in out["proc"]}
    assert members == {5001: "5561", 5002: "5561"}  # the `env -i` child by its parent
    row = job_rows(out)["5561"]
    assert row["procs"] == 2 and row["threads"] == 5
    assert row["cg_cpu_ns"] is None  # no job cgroup to read
    s.close()
    s2 = sampler(root, environ=False)
    out2: dict = {}
    s2.sample(1000, out2)
    assert not out2.get("job") and not out2.get("proc")


def test_job_counters_stay_monotonic_and_the_job_ends(tmp_path):
    root = tree(tmp_path, "environ")
    s = sampler(root, end_after_s=2.0)
    out: dict = {}
    s.sample(1000, out)
    before = job_rows(out)["5561"]
    # the child exits: its last counts stay in the job's sums
    exit_process(root, 5002)
    (root / "proc/loadavg").write_text("2.00 2.00 2.00 3/200 5101\n")
    out = {}
    s.sample(2000, out)
    after = job_rows(out)["5561"]
    assert [e[2] for e in out["events"] if e[1] == "process_end"] == [5002]
    assert after["procs"] == 1
    for col in ("utime", "stime", "rchar", "wchar", "write_bytes"):
        assert after[col] >= before[col], col
    # the last process exits: the job ends once end_after_s has passed with none left
    exit_process(root, 5001)
    out = {}
    s.sample(3000, out)
    # no more rows once nothing of it is left (they would stretch the job to the detection)
    assert "5561" not in job_rows(out) and not events(out, "job_end")
    out = {}
    s.sample(5000, out)
    (end,) = events(out, "job_end")
    assert end[0] == "5561" and end[1]["processes"] == 2
    # it ran until the last sample that saw a process of it (2000), not until the end was
    # known (5000); from when its first process started (no btime in this tree: when found)
    assert end[1]["end"] == 2.0 and end[1]["duration_s"] == 1.0
    assert end[1]["cpu_from"] == "processes"
    assert end[1]["cpu_s"] == pytest.approx((1 + 1 + 700 + 20) / s.clk_tck)
    assert "5561" not in job_rows(out)


def add_ticks(root: Path, pid: int, **ticks: int) -> None:
    """Add CPU ticks to fields of /proc/PID/stat: utime, stime, cutime, cstime."""
    stat = root / f"proc/{pid}/stat"
    fields = stat.read_text().split(" ")
    for name, n in ticks.items():
        i = {"utime": 13, "stime": 14, "cutime": 15, "cstime": 16}[name]
        fields[i] = str(int(fields[i]) + n)
    stat.write_text(" ".join(fields))


def test_the_children_a_member_waited_for_count_once(tmp_path):
    """A command too short to be sampled shows only in its parent's children time; a child that
    was sampled shows there too once its parent waits for it, and must not count twice."""
    root = tree(tmp_path, "environ")
    s = sampler(root)
    out: dict = {}
    s.sample(1000, out)
    first = job_rows(out)["5561"]
    assert (first["utime"], first["stime"]) == (1 + 700, 1 + 20)
    exit_process(root, 5002)  # gmx ends; job.sh has not waited for it yet
    out = {}
    s.sample(2000, out)
    assert (job_rows(out)["5561"]["utime"], job_rows(out)["5561"]["stime"]) == (701, 21)
    # job.sh waits: gmx's 700 + 20 ticks, 30 + 5 more it used after its last sample, and a
    # command never sampled (50 + 4)
    add_ticks(root, 5001, cutime=700 + 30 + 50, cstime=20 + 5 + 4)
    out = {}
    s.sample(3000, out)
    row = job_rows(out)["5561"]
    assert (row["utime"], row["stime"]) == (701 + 30 + 50, 21 + 5 + 4)
    # later children of job.sh count in full
    add_ticks(root, 5001, cutime=40)
    out = {}
    s.sample(4000, out)
    assert job_rows(out)["5561"]["utime"] == 781 + 40


def test_pid_reuse_is_not_taken_for_the_same_process(tmp_path):
    root = tree(tmp_path, "environ")
    s = sampler(root)
    s.sample(1000, {})
    stat = root / "proc/5002/stat"
    fields = stat.read_text().split(" ")
    fields[21] = str(int(fields[21]) + 500)  # another process got pid 5002
    stat.write_text(" ".join(fields))
    out: dict = {}
    s.sample(2000, out)
    assert 5002 in [e[2] for e in out["events"] if e[1] == "process_end"]


@pytest.mark.parametrize("mode", ["none", "all"])
def test_process_modes(tmp_path, mode):
    root = tree(tmp_path, "environ")
    s = sampler(root, processes=mode)
    out: dict = {}
    s.sample(1000, out)
    row = job_rows(out)["5561"]
    assert row["procs"] == 2
    if mode == "none":
        assert not out.get("proc") and row["utime"] is None
    else:  # every process, the login shell too, with no job
        assert {r[0]: r[-2] for r in out["proc"]} == {5001: "5561", 5002: "5561", 5100: None}


def test_gpu_use_is_summed_per_job(tmp_path):
    root = tree(tmp_path, "environ")
    s = sampler(root)
    out: dict = {}
    s.sample(1000, out)
    out["gpu_proc"] = [["0", 5002, 4 << 30], ["1", 5002, 2 << 30], ["0", 9999, 1 << 30]]
    out["gpu_proc_util"] = [["0", 5002, 80, 30, 0, 0], ["1", 5002, 60, 10, 0, 0]]
    s.add_gpu(out)
    row = job_rows(out)["5561"]
    assert row["gpu_mem_bytes"] == 6 << 30 and row["gpu_sm_pct"] == 140


def test_young_processes_are_classified_again(tmp_path):
    """A task seen just after fork(), before the scheduler moved it into the job's cgroup."""
    root = tree(tmp_path, "slurm-v2")
    s = sampler(root, environ=False)
    task = root / "proc/49276/cgroup"
    captured = task.read_bytes()
    task.write_text("0::/system.slice/slurmstepd.scope/system\n")
    (root / "proc/uptime").write_text("81234.60 0.00\n")  # the task started 0.04 s ago
    out: dict = {}
    s.sample(1000, out)
    assert not events(out, "job_start")
    task.write_bytes(captured)
    out = {}
    s.sample(2000, out)  # nothing new in /proc/loadavg, but the young pid is looked at again
    assert [e[0] for e in events(out, "job_start")] == ["4"]


@pytest.mark.parametrize("moved", [False, True], ids=["in-stepd-cgroup", "in-job-cgroup"])
def test_a_task_seen_before_its_exec_from_slurmstepd_is_classified_again(tmp_path, moved):
    """Slurm forks the batch script from slurmstepd: a task seen in that instant still has
    slurmstepd's name and cgroup.  It was taken for the scheduler's own process for good, and
    the job never seen (CI: of two jobs started together, the C one of test_agent_stacks)."""
    root = tree(tmp_path, "slurm-v2")
    s = sampler(root, environ=False)
    task = root / "proc/49276"
    captured = {n: (task / n).read_bytes() for n in ("cgroup", "stat")}
    if not moved:
        (task / "cgroup").write_text("0::/system.slice/slurmstepd.scope/system\n")
    name = captured["stat"].split(b"(", 1)[1].split(b")", 1)[0]
    (task / "stat").write_bytes(captured["stat"].replace(b"(" + name + b")", b"(slurmstepd)", 1))
    (root / "proc/uptime").write_text("81234.60 0.00\n")  # the task started 0.04 s ago
    out: dict = {}
    s.sample(1000, out)
    assert not events(out, "job_start")
    for n, raw in captured.items():
        (task / n).write_bytes(raw)  # exec'd into the job's cgroup
    out = {}
    s.sample(2000, out)
    assert [e[0] for e in events(out, "job_start")] == ["4"]
    assert 49276 in {r[0] for r in out.get("proc", [])}
    assert 49276 not in s.reapers  # a job process, not the scheduler's


def test_jobs_already_announced_are_not_started_again(tmp_path):
    """After a reload the new sampler follows the running jobs without a second job_start."""
    root = tree(tmp_path, "environ")
    s = sampler(root, known_jobs={"5561"})
    out: dict = {}
    s.sample(1000, out)
    assert not events(out, "job_start") and job_rows(out)["5561"]["procs"] == 2


def test_a_job_start_says_when_its_process_started(tmp_path):
    root = tree(tmp_path, "environ")
    (root / "proc/stat").write_text("cpu  1 2 3 4 5 6 7 0 0 0\nbtime 1700000000\n")
    s = sampler(root)
    s.sample(1000, {})  # the first look: jobs found there were already running
    (root / "proc/5003").mkdir()
    for name in ("cgroup", "status", "io", "cmdline"):
        (root / f"proc/5003/{name}").write_bytes((root / f"proc/5100/{name}").read_bytes())
    (root / "proc/5003/environ").write_bytes(b"SLURM_JOB_ID=5562\0")
    stat = (root / "proc/5100/stat").read_text().replace("5100 (bash)", "5003 (bash)", 1)
    (root / "proc/5003/stat").write_text(stat)
    (root / "proc/loadavg").write_text("2.00 2.00 2.00 3/200 5003\n")
    out: dict = {}
    s.sample(2000, out)
    ((job, detail),) = events(out, "job_start")
    assert job == "5562" and "already_running" not in detail
    assert detail["started"] == 1700000000 + 60000 / s.clk_tck  # start ticks of its stat


@pytest.mark.parametrize(
    "environ",
    [
        b"SLURM_JOBID=77\0HOME=/root\0",  # the older variable name
        b"PBS_JOBID=12.pbs01\0PBS_JOBNAME=sim\0",
        b"HOME=/root\0LSB_JOBID=903\0",
        b"FLUX_JOB_ID=f2bX9\0",
        b"SLURM_JOB_ID=\0HOME=/root\0",  # set but empty: no job
        b"XSLURM_JOB_ID_OLD=4\0MY_PBS_JOBID=1\0",  # names that merely contain one
        b"HOME=/root\0PATH=/usr/bin\0",
    ],
)
def test_new_processes_are_classified_as_their_whole_environment_says(tmp_path, environ):
    """The sampler parses a new process's environment only when it holds a scheduler's job
    variable: what it finds is what the whole environment, parsed, says."""
    root = tree(tmp_path, "environ")
    s = sampler(root)
    s.sample(1000, {})
    (root / "proc/5003").mkdir()
    for name in ("cgroup", "status", "io", "cmdline"):
        (root / f"proc/5003/{name}").write_bytes((root / f"proc/5100/{name}").read_bytes())
    (root / "proc/5003/environ").write_bytes(environ)
    stat = (root / "proc/5100/stat").read_text().replace("5100 (bash)", "5003 (bash)", 1)
    (root / "proc/5003/stat").write_text(stat)
    (root / "proc/loadavg").write_text("2.00 2.00 2.00 3/200 5003\n")
    out: dict = {}
    s.sample(2000, out)
    whole = job_from_environ(parse_environ(environ))
    want = whole[0].job_id if whole else None
    found = {r[0]: r[-2] for r in out.get("proc", [])}
    assert found.get(5003) == want


def test_processes_sharing_a_cgroup_get_its_job(tmp_path):
    """The answer for a /proc/PID/cgroup content already seen is reused: every process of the
    captured Slurm v2 node gets the job its own cgroup file names, as parsed afresh."""
    root = tree(tmp_path, "slurm-v2")
    s = sampler(root, environ=False)
    for pid_dir in sorted((root / "proc").iterdir()):
        if not pid_dir.name.isdigit() or not (pid_dir / "cgroup").exists():
            continue
        pid = int(pid_dir.name)
        raw = (pid_dir / "cgroup").read_bytes()
        for _ in range(2):  # the second time from what was kept
            assert s.classify(pid, 1) == job_from_cgroup(parse_proc_cgroup(raw))
