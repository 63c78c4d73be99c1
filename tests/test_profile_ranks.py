"""`para profile` as one rank of many (issue 10 items 5, 6, 8): the ranks of a launch told
apart, the node's file named by its lowest rank, and a rank that cannot sample still running
its command and leaving nothing behind.  These run real `para profile` processes with the
environment srun gives its tasks (SLURM_JOB_ID, SLURM_PROCID ...); no Slurm fixture is on
this branch, so srun itself is not run here (tests/test_mpi.py runs real mpirun)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from para.agent import jobenv
from para.agent.nodelocal import NodeLocal
from para.formats import ParaFile

from .conftest import REPO, para_cmd
from .test_profile import env

# A rank: says its pid and rank, waits until every rank has started (as MPI_Init would),
# then computes for a while.
RANK = """
import os, pathlib, sys, time
rank = os.environ["SLURM_PROCID"]
print(os.getpid(), rank, flush=True)
pathlib.Path(f"started.{rank}").touch()
while len(list(pathlib.Path().glob("started.*"))) < int(sys.argv[1]):
    time.sleep(0.02)
t = time.monotonic()
while time.monotonic() - t < float(sys.argv[2]):
    pass
"""


def test_the_mpi_launchers_rank_wins_over_the_batch_steps():
    """mpirun inside a Slurm allocation: SLURM_PROCID is the batch script's (0) or the
    launcher daemon's, the same for every rank it starts."""
    env_ = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
            "OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}  # fmt: skip
    info = jobenv.detect(env_, ppid=1)
    assert (info.rank, info.local_rank) == (5, 1)
    assert jobenv.detect({"SLURM_JOB_ID": "7", "SLURM_PROCID": "3"}, ppid=1).rank == 3
    assert jobenv.detect({"PMIX_RANK": "2", "PMIX_NAMESPACE": "ns"}, ppid=1).rank == 2
    assert jobenv.detect({"PMI_RANK": "4"}, ppid=1).rank == 4
    raw = b"PATH=/bin\0SLURM_PROCID=0\0OMPI_COMM_WORLD_RANK=9\0X=OMPI_COMM_WORLD_RANK=1\0"
    assert jobenv.rank_from_environ(raw) == 9
    assert jobenv.rank_from_environ(b"PATH=/bin\0HOME=/root\0") is None


def test_node_local_registrations_and_clean_up(tmp_path):
    sampler = NodeLocal("slurm-1-0", str(tmp_path))
    assert sampler.claim()
    other = NodeLocal("slurm-1-0", str(tmp_path))
    assert not other.claim() and other.sampler_pid() == os.getpid()
    other.register(999999, 3, {2, 3})
    assert sampler.registrations()[999999] == {"para": os.getpid(), "rank": 3, "cpus": [2, 3]}
    assert sampler.passengers() == set()  # no such process
    assert sampler.pending() == {999999}  # its para (this process) is alive, not done
    other.hand_over(999999, {"rank": 3, "stacks": [[1, 2, 3, "x", "a;b", 4]]})
    other.finished(999999)  # the sampler holds the lock: it reads and removes
    assert sampler.pending() == set()
    assert sampler.collect() == {999999: {"rank": 3, "stacks": [[1, 2, 3, "x", "a;b", 4]]}}
    sampler.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_rank_whose_sampler_is_gone_removes_what_it_wrote(tmp_path):
    sampler = NodeLocal("slurm-2-0", str(tmp_path))
    assert sampler.claim()
    rank = NodeLocal("slurm-2-0", str(tmp_path))
    rank.register(999998, 1, {0})
    sampler.release()  # the rank is still at work: its entry stays
    assert (tmp_path / sampler.pid_dir.name / "999998.reg").exists()
    rank.hand_over(999998, {"rank": 1})
    rank.finished(999998)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def launch(tmp_path: Path, rank: int, args: list[str], tasks: int) -> subprocess.Popen[str]:
    """One task of a `srun -n TASKS` step on this node, as srun's environment says."""
    e = dict(env(), SLURM_JOB_ID="4343", SLURM_STEP_ID="0", SLURM_PROCID=str(rank),
             SLURM_LOCALID=str(rank), SLURM_NNODES="1", SLURM_NODEID="0",
             SLURM_STEP_TASKS_PER_NODE=str(tasks), SLURM_JOB_NAME="ranks",
             TMPDIR=str(tmp_path / "tmp"))  # fmt: skip
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return subprocess.Popen([*para_cmd(), "profile", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=e, cwd=tmp_path)  # fmt: skip


def finish(procs: list[subprocess.Popen[str]], timeout: float = 120) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        out.append((p.returncode, err))
    return out


def wait_for(cond, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def lock_of(tmp_path: Path) -> Path:
    return tmp_path / "tmp" / f"para-{os.getuid()}-slurm-4343-0.lock"


@pytest.mark.slow
def test_file_named_by_the_lowest_rank_and_ranks_told_apart(tmp_path):
    """Rank 2 starts first and samples the node; `{rank}` still names the file by rank 0, and
    every rank's processes carry their rank (issue 10 items 6 and 8)."""
    cmd = [sys.executable, "-c", RANK, "3", "1.0"]
    args = ["-q", "--no-counters", "-o", "job-{rank}.para", "--", *cmd]
    first = launch(tmp_path, 2, args, 3)
    wait_for(lambda: lock_of(tmp_path).exists(), "rank 2 to take the node")
    procs = [first] + [launch(tmp_path, r, args, 3) for r in (1, 0)]
    said = {}
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        pid, rank = out.split()
        said[int(pid)] = int(rank)
    assert sorted(said.values()) == [0, 1, 2]
    files = sorted(p.name for p in tmp_path.glob("*.para"))
    assert files == [f"job-0.{socket.gethostname()}.para"]
    with ParaFile(tmp_path / files[0]) as pf:
        assert pf.meta["job"]["rank"] == 2  # the sampler's own
        assert pf.meta["ranks"] == [0, 1, 2] and pf.meta["ranks_on_node"] == 3
        rows = pf.read_table("proc").to_pylist()
    # the rank on each command's rows is the one that command printed
    assert {r["pid"]: r["rank"] for r in rows if r["pid"] in said} == said
    assert not list((tmp_path / "tmp").iterdir())


@pytest.mark.slow
def test_every_rank_records_its_own_call_stacks(tmp_path):
    """--functions under a launcher: each rank's para records its command, the node's file
    holds them all, each under its own pid."""
    cmd = [sys.executable, "-c", RANK, "2", "1.0"]
    args = ["-q", "--no-counters", "--functions", "--call-graph", "fp", "-o", "f.para", "--"]
    first = launch(tmp_path, 0, [*args, *cmd], 2)
    wait_for(lambda: lock_of(tmp_path).exists(), "rank 0 to take the node")
    second = launch(tmp_path, 1, [*args, *cmd], 2)
    results = finish([first, second])
    assert [c for c, _ in results] == [0, 0], results
    (path,) = tmp_path.glob("*.para")
    with ParaFile(path) as pf:
        ranks = {r["pid"]: r["rank"] for r in pf.read_table("proc").to_pylist()}
        stacks = pf.read_table("stacks").to_pylist()
        info = pf.meta["functions"]
    per_rank: dict[int, int] = {}
    for s in stacks:  # CPU samples (py-spy's Python threads seen off-CPU are apart)
        if s["state"] in (None, "cpu"):
            per_rank[ranks[s["pid"]]] = per_rank.get(ranks[s["pid"]], 0) + s["samples"]
    assert set(per_rank) == {0, 1} and min(per_rank.values()) >= 50, (per_rank, info, results)
    assert [i["rank"] for i in info["ranks"]] == [0, 1]
    assert info["samples"] == sum(per_rank.values())
    assert not list((tmp_path / "tmp").iterdir())


@pytest.mark.slow
def test_unwritable_output_never_stops_a_rank(tmp_path):
    """Issue 10 item 8: the sampler could not write, one rank's command never ran, the others
    said "the node's sampler is pid N", a pids directory stayed in /tmp."""
    args = ["-q", "-o", str(tmp_path / "no-such-dir" / "run.para"), "--", "sh", "-c",
            'echo ran > "done.$SLURM_PROCID"']  # fmt: skip
    procs = [launch(tmp_path, r, args, 3) for r in range(3)]
    results = finish(procs)
    assert [c for c, _ in results] == [0, 0, 0], results
    assert sorted(p.name for p in tmp_path.glob("done.*")) == ["done.0", "done.1", "done.2"]
    for _, err in results:
        assert "does not exist" in err and "running the command without profiling" in err
        assert "the node's sampler is" not in err
    assert not list((tmp_path / "tmp").iterdir())
    assert not list(tmp_path.glob("**/*.para"))


@pytest.mark.slow
def test_a_killed_sampler_orphans_no_rank(tmp_path):
    """The node's sampler dies (SIGKILL): the other ranks' commands run to their end, and
    what they registered is gone afterwards; the sampler's journal stays recoverable."""
    marker = tmp_path / "go"
    wait_cmd = ["sh", "-c", f'while [ ! -e {marker} ]; do sleep 0.05; done; echo "$SLURM_PROCID"']
    first = launch(tmp_path, 0, ["-q", "--no-counters", "-o", "k.para", "--", *wait_cmd], 2)
    wait_for(lambda: lock_of(tmp_path).exists(), "rank 0 to take the node")
    rank1 = launch(tmp_path, 1, ["-q", "--no-counters", "-o", "k.para", "--", *wait_cmd], 2)
    pid_dir = tmp_path / "tmp" / f"para-{os.getuid()}-slurm-4343-0.pids"
    wait_for(lambda: any(p.suffix == ".reg" for p in pid_dir.glob("*")), "rank 1 to register")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    marker.touch()
    out, err = rank1.communicate(timeout=60)
    assert rank1.returncode == 0, err
    assert out.strip() == "1"
    first.communicate(timeout=30)
    # rank 0's command (its child) was left to run; it ends once the marker exists
    assert not list((tmp_path / "tmp").iterdir())
    assert list(tmp_path.glob("k.*.para"))  # the journal of what was sampled


SRUN_RANK = """
import os, pathlib, sys, time
rank = os.environ["SLURM_PROCID"]
cpus = ",".join(map(str, sorted(os.sched_getaffinity(0))))
print("task", os.getpid(), rank, cpus, flush=True)
pathlib.Path(f"started.{rank}").touch()
while len(list(pathlib.Path().glob("started.*"))) < 2:
    time.sleep(0.02)
t = time.monotonic()
while time.monotonic() - t < 1.0:
    pass
"""


@pytest.mark.slow
def test_under_real_srun(slurm, tmp_path):
    """`srun -n 2 para profile` on the real single-node Slurm (tests/slurm_support.py): the
    tasks told apart by SLURM_PROCID, the file named by the lowest rank, and the job's CPUs
    those scontrol says the job has (task/affinity binds each task to its own)."""
    work = tmp_path / "srun"
    work.mkdir()
    work.chmod(0o755)
    e = dict(slurm.env, PYTHONPATH=str(REPO), TMPDIR=str(work))
    r = subprocess.run(
        ["srun", "-n", "2", "-J", "para-srun", *para_cmd(), "profile", "-q", "--no-counters",
         "-o", "srun-{rank}.para", "--", sys.executable, "-c", SRUN_RANK],
        cwd=work, env=e, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr + slurm.logs()
    tasks = {}
    for line in r.stdout.splitlines():
        w = line.split()
        if w and w[0] == "task":
            tasks[int(w[1])] = (int(w[2]), {int(c) for c in w[3].split(",")})
    assert sorted(rank for rank, _ in tasks.values()) == [0, 1]
    (path,) = work.glob("srun-*.para")
    assert path.name.startswith("srun-0.")
    with ParaFile(path) as pf:
        meta = pf.meta
        ranks = {row["pid"]: row["rank"] for row in pf.read_table("proc").to_pylist()}
    job = slurm.job(meta["job"]["job_id"])
    assert {pid: ranks.get(pid) for pid in tasks} == {p: t[0] for p, t in tasks.items()}
    union = set().union(*(cpus for _, cpus in tasks.values()))
    assert meta["allowed_cpus"] == min(len(union), int(job["NumCPUs"]))
    assert not [p for p in work.iterdir() if p.name.startswith("para-")]


@pytest.mark.slow
def test_a_rank_held_for_the_others_runs_if_its_sampler_dies(tmp_path):
    """The sampler holds its own rank's command until the node's other ranks are there (2
    tasks here, one never comes); killed meanwhile, the command still runs (it is not left
    stopped), and what it wrote shows it."""
    out = tmp_path / "ran"
    first = launch(tmp_path, 0, ["-q", "--no-counters", "-o", "h.para", "--", "sh", "-c",
                                 f"echo yes > {out}"], 2)  # fmt: skip
    wait_for(lambda: lock_of(tmp_path).exists(), "rank 0 to take the node")
    para = first.pid

    def held() -> bool:
        try:
            kids = Path(f"/proc/{para}/task/{para}/children").read_text().split()
            return any(Path(f"/proc/{k}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
                       for k in kids)  # fmt: skip
        except OSError:
            return False

    wait_for(held, "rank 0's command to be held")
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)  # its stdout closes once the command has run and ended
    wait_for(out.exists, "the command to run")
    assert out.read_text() == "yes\n"


# A rank: waits for the other, computes, and says at its very end how much CPU it used.
CPU_RANK = """
import os, pathlib, resource, time
rank = os.environ["SLURM_PROCID"]
pathlib.Path(f"started.{rank}").touch()
while len(list(pathlib.Path().glob("started.*"))) < 2:
    time.sleep(0.02)
t = time.process_time()
while time.process_time() - t < 0.6 * (1 + int(rank)):
    pass
ru = resource.getrusage(resource.RUSAGE_SELF)
print(os.getpid(), ru.ru_utime + ru.ru_stime, flush=True)
"""


@pytest.mark.slow
def test_each_ranks_cpu_time_to_its_end(tmp_path):
    """Each rank's CPU time in the node's file is what the kernel counted for it to its
    end: a rank's para reaped its command at once, so the last second of every rank (and
    of the sampler's own command) went unsampled (0.4 s of 1.4 s, say)."""
    cmd = [sys.executable, "-c", CPU_RANK]
    args = ["-q", "--no-counters", "-o", "c.para", "--", *cmd]
    first = launch(tmp_path, 0, args, 2)
    wait_for(lambda: lock_of(tmp_path).exists(), "rank 0 to take the node")
    second = launch(tmp_path, 1, args, 2)
    own = {}
    for p in (first, second):
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        pid, cpu = out.split()
        own[int(pid)] = float(cpu)
    (path,) = tmp_path.glob("*.para")
    tick = os.sysconf("SC_CLK_TCK")
    with ParaFile(path) as pf:
        rows = pf.read_table("proc").to_pylist()
    seen = {pid: max((r["utime"] + r["stime"]) / tick for r in rows if r["pid"] == pid)
            for pid in own}  # fmt: skip
    for pid, cpu in own.items():
        # the rank printed its figure just before it exited: a little more CPU, never less
        assert cpu - 0.02 <= seen[pid] <= cpu + 0.1, (pid, seen, own)
    # sampled once more as it ended (unreaped): still the same process, with its rank
    assert {r["rank"] for r in rows if r["pid"] in own} == {0, 1}
    assert not list((tmp_path / "tmp").iterdir())
