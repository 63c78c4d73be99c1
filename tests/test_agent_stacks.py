"""The agent's call stacks of every job (issue 13), on the real single-node Slurm.

One `para agent` follows three batch jobs: a C program whose five functions take known
shares of its CPU time (tests/fixtures/stacks/hot.c), a Python program (hot.py) and the C
program again with stacks turned off for it (`sbatch --export=ALL,PARA_STACKS=0`).  The
segments go into a feature database, and the job's report from the database alone is
compared with a `para profile --functions` of the same program: the top 5 functions agree
within 5 points.  The agent samples faster than its default here (199 Hz instead of 19), so
that the comparison is not at the mercy of sampling noise on a short job.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from para.formats import ParaFile

from .conftest import cannot_run, need_tool, run_para
from .slurm_support import Slurm
from .test_agent_e2e import AgentRun

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).parent / "fixtures" / "stacks"
FREQ = 199
CPU_S = 8.0  # CPU seconds each job runs (its own clock)
C_FUNCS = ("alpha", "bravo", "charlie", "delta", "echo_")


def build_hot(tmp: Path) -> Path:
    need_tool("gcc", "apt install gcc")
    exe = tmp / "hot"
    subprocess.run(
        ["gcc", "-O1", "-fno-omit-frame-pointer", "-fno-inline", "-o", str(exe),
         str(FIXTURES / "hot.c")],
        check=True,
    )  # fmt: skip
    exe.chmod(0o755)
    return exe


def stacks_config(freq: int = FREQ, window_s: float = 4.0) -> str:
    return (
        "[jobs]\nend_after_s = 1.0\n"
        f"[stacks]\nfrequency_hz = {freq}\nwindow_s = {window_s}\nmax_backoff_s = 2.0\n"
    )


@dataclass
class Recorded:
    ids: dict[str, str]
    segments: list[Path]
    db: Path
    exe: Path
    pyprog: Path
    status: dict
    tmp: Path


def _wait(pred, timeout: float, what: str):  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout} s")


@pytest.fixture(scope="module")
def recorded(slurm: Slurm, tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    need_tool("perf", "apt install linux-perf")
    tmp = tmp_path_factory.mktemp("agent-stacks")
    os.chmod(tmp, 0o755)
    exe = build_hot(tmp)
    pyprog = tmp / "hot.py"
    shutil.copy(FIXTURES / "hot.py", pyprog)
    agent = AgentRun(tmp, extra=stacks_config(), interval=0.5)
    try:
        agent.wait_samples(2)
        ids = {
            "c": slurm.sbatch(f"#!/bin/bash\nexec {exe} {CPU_S}\n", "-n1", name="stk-c"),
            "py": slurm.sbatch(
                f"#!/bin/bash\nexec /usr/bin/python3 {pyprog} {CPU_S}\n", "-n1", name="stk-py"
            ),  # fmt: skip
            "off": slurm.sbatch(
                f"#!/bin/bash\nexec {exe} 3\n", "-n1", "--export=ALL,PARA_STACKS=0", name="stk-off"
            ),  # fmt: skip
        }
        slurm.wait_done(list(ids.values()))
        mine = set(ids.values())
        _wait(lambda: not {j.get("job") for j in agent.status().get("jobs") or []} & mine,
              60, "the agent still follows the jobs")  # fmt: skip
        status = agent.status()
        assert agent.stop() == 0, agent.log.read_text()
    finally:
        agent.kill()
    segs = agent.ready()
    db = tmp / "db"
    r = run_para("collect", "--db", str(db), "-q", *map(str, segs))
    assert r.returncode == 0, r.stderr
    return Recorded(ids, segs, db, exe, pyprog, status, tmp)


def _stacks(rec: Recorded) -> list[dict]:
    rows = []
    for seg in rec.segments:
        with ParaFile(seg) as pf:
            if "stacks" in pf.tables:
                rows += pf.read_table("stacks").to_pylist()
    return rows


def test_the_agent_samples_every_job_at_its_rate(recorded):
    """The C job's samples: its CPU time (its own clock) at the configured frequency; each
    row names the job, and the samples fall in the job's own functions."""
    # perf script read the agent's copy of the kernel's symbols, not /proc/kallsyms each time
    assert (recorded.tmp / "spool" / "work" / "kallsyms").is_file()
    rows = [r for r in _stacks(recorded) if r["job"] == recorded.ids["c"] and r["state"] == "cpu"]
    assert rows, f"no stacks for the job; agent said: {recorded.status.get('stacks')}"
    n = sum(r["samples"] for r in rows)
    # cpu-clock samples the job's thread while it runs: CPU_S seconds of it, plus its start
    assert 0.6 * FREQ * CPU_S <= n <= 1.4 * FREQ * CPU_S, n
    leaves = {r["stack"].rsplit(";", 1)[-1] for r in rows}
    assert set(C_FUNCS) <= leaves
    assert all(r["sample_s"] == pytest.approx(1 / FREQ, rel=1e-3) for r in rows)
    # windows overlap a moment (the next perf starts before the last one stops) and are cut
    # where they meet: no second of the job's one thread holds more than its rate
    per_second: dict = {}
    for r in rows:
        per_second[r["t"]] = per_second.get(r["t"], 0) + r["samples"]
    assert max(per_second.values()) <= 1.3 * FREQ, per_second


def test_a_job_that_says_no_is_not_sampled(recorded):
    off = recorded.ids["off"]
    assert not [r for r in _stacks(recorded) if r["job"] == off]
    said = []
    for seg in recorded.segments:
        with ParaFile(seg) as pf:
            said += [e for e in pf.read_table("events").to_pylist()
                     if e["kind"] == "stacks_off" and e["name"] == off]  # fmt: skip
    assert said


def test_a_job_is_asked_again_until_its_environment_can_be_read(tmp_path):
    """A job first seen while none of its processes' environments can be read (gone, or
    empty: a zombie's) is not sampled and not taken as allowing stacks: asked again, its
    PARA_STACKS=0 is honoured and said (the 3 s job above was once never said off, under
    load)."""
    from para.agent.samplers.stacks import UNDECIDED_LOOKS, StackSampler

    proc = tmp_path / "proc"
    (proc / "500").mkdir(parents=True)
    (proc / "500" / "environ").write_bytes(b"")  # a zombie's; 501 is gone
    stk = StackSampler(lambda: {"9": {500, 501}}, proc=str(proc))
    out: dict = {}
    stk.sample(1000, out)
    assert not out.get("events") and "9" not in stk._live
    (proc / "501").mkdir()
    (proc / "501" / "environ").write_bytes(b"HOME=/\0PARA_STACKS=0\0")
    stk.sample(2000, out)
    assert [r for r in out["events"] if "stacks_off" in r and "9" in r]
    assert "9" not in stk._live
    (proc / "502").mkdir()
    (proc / "502" / "environ").write_bytes(b"HOME=/\0")
    stk2 = StackSampler(lambda: {"10": {502}}, proc=str(proc))
    stk2.sample(3000, out)
    assert stk2._live == {"10": {502}}  # readable and silent: sampled
    # a job run with an empty environment (env -i) is sampled after a few looks, not never
    (proc / "503").mkdir()
    (proc / "503" / "environ").write_bytes(b"")
    stk3 = StackSampler(lambda: {"11": {503}}, proc=str(proc))
    for k in range(1, UNDECIDED_LOOKS):
        stk3.sample(4000 + k, out)
        assert "11" not in stk3._live
    stk3.sample(5000, out)
    assert stk3._live == {"11": {503}}


def test_a_job_is_said_off_while_perf_keeps_failing(tmp_path):
    """CI once saw perf fail window after window (10 errors) while the 3 s PARA_STACKS=0 job
    ran: the family raised to be marked failing, and the job's stacks_off, decided in that
    same sample, went with the discarded rows and was never said again."""
    from para.agent.loop import SamplingLoop
    from para.agent.samplers.stacks import StackSampler

    class PerfFailing(StackSampler):
        def open(self) -> dict:  # no recording thread: the failure is set below
            self._failing = "perf record exited with 255: [ perf record: failed ]"
            return {}

    proc = tmp_path / "proc"
    (proc / "600").mkdir(parents=True)
    (proc / "600" / "environ").write_bytes(b"HOME=/\0PARA_STACKS=0\0")
    got: list = []
    loop = SamplingLoop(
        [PerfFailing(lambda: {"12": {600}}, proc=str(proc))],
        sink=lambda t, rows: got.append(rows),
        interval=1.0,
    )
    loop.open()
    for _ in range(3):
        loop.sample_once()
    events = [e for rows in got for e in rows.get("events", [])]
    assert [e for e in events if "stacks_off" in e and "12" in e], events
    assert loop.status["stacks"].state == "failing"  # and the failure is still said


def test_instructions_carry_the_build_id(recorded):
    from para.agent import binaries

    rows = []
    for seg in recorded.segments:
        with ParaFile(seg) as pf:
            if "instr_samples" in pf.tables:
                rows += pf.read_table("instr_samples").to_pylist()
    mine = [r for r in rows if r["job"] == recorded.ids["c"] and r["dso"] == str(recorded.exe)]
    assert mine
    truth = subprocess.run(["readelf", "-n", str(recorded.exe)], capture_output=True, text=True)
    assert binaries.build_id(recorded.exe) in truth.stdout
    assert {r["build_id"] for r in mine} == {binaries.build_id(recorded.exe)}


def _hotspots(doc: dict) -> dict[str, float]:
    return {h["function"]: h["self_pct"] for h in doc["job"]["functions"]["hotspots"]}


def test_job_report_from_the_database_agrees_with_para_profile(recorded, tmp_path):
    """Issue 13: `para report --job ID` from the database alone shows the job's hotspots,
    flame graph and hottest instructions; its top 5 agree with `para profile --functions`
    of the same program within 5 points."""
    job = recorded.ids["c"]
    r = run_para("report", "--job", job, "--db", str(recorded.db), "--json")
    assert r.returncode == 0, r.stderr
    db_doc = json.loads(r.stdout)
    db_hot = _hotspots(db_doc)
    assert db_doc["job"]["functions"]["flamegraph"]["value"] > 0
    out = tmp_path / "prof.para"
    r = run_para("profile", "--functions", "-q", "-o", str(out), "--", str(recorded.exe),
                 str(CPU_S), timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = run_para("report", str(out), "--json")
    assert r.returncode == 0, r.stderr
    prof_hot = _hotspots(json.loads(r.stdout))
    top5 = sorted(prof_hot, key=lambda f: -prof_hot[f])[:5]
    assert set(top5) == set(C_FUNCS), prof_hot
    for fn in top5:
        assert db_hot.get(fn, 0.0) == pytest.approx(prof_hot[fn], abs=5.0), (fn, db_hot, prof_hot)
    ins = db_doc["job"]["instructions"]
    assert ins["functions"], ins
    assert ins["functions"][0]["function"] in C_FUNCS
    # the terminal report says it too
    r = run_para("report", "--job", job, "--db", str(recorded.db))
    assert r.returncode == 0, r.stderr
    assert "alpha" in r.stdout


def test_python_job_has_its_python_functions(recorded):
    r = run_para("report", "--job", recorded.ids["py"], "--db", str(recorded.db), "--json")
    assert r.returncode == 0, r.stderr
    hot = _hotspots(json.loads(r.stdout))
    top = max(hot, key=lambda f: hot[f])
    # crunch() does most of the work (hot.py); py-spy named it, perf alone cannot
    assert top.startswith("hot.crunch ("), hot


def test_para_jobs_and_query_rank_functions(recorded):
    job = recorded.ids["c"]
    r = run_para("jobs", "--db", str(recorded.db), "--analyze", "--json")
    assert r.returncode == 0, r.stderr
    jobs = {j["job_id"]: j for j in json.loads(r.stdout)["jobs"]}
    c = jobs[job]
    top = c["top_functions"]
    top = json.loads(top) if isinstance(top, str) else top
    assert [t["function"] for t in top[:2]] == ["alpha", "bravo"], c
    assert c["interpreter_pct"] == 0 and c["comm_pct"] == 0 and c["io_pct"] < 2, c
    py = jobs[recorded.ids["py"]]
    # hot.py spends its time running Python code in the interpreter
    assert py["interpreter_pct"] > 50, py
    r = run_para("jobs", "--db", str(recorded.db))
    assert r.returncode == 0, r.stderr
    assert "alpha" in r.stdout and "comm/IO/interp" in r.stdout, r.stdout
    r = run_para("query", "--db", str(recorded.db), "--functions", "--json")
    assert r.returncode == 0, r.stderr
    ranked = json.loads(r.stdout)
    hours = [x["core_hours"] for x in ranked]
    assert hours == sorted(hours, reverse=True)
    by_fn = {x["function"]: x for x in ranked}
    # the C job's share of it: alpha's samples' CPU seconds against the program's own CPU
    # time (other jobs of the machine may be in the database too: the agent sees every job)
    r = run_para("query", "--db", str(recorded.db), "--json",
                 "SELECT sum(samples * sample_s) AS s FROM stacks WHERE state = 'cpu' AND "
                 f"job_id = '{job}' AND string_split(stack, ';')[-1] = 'alpha'")  # fmt: skip
    assert r.returncode == 0, r.stderr
    alpha_s = json.loads(r.stdout)[0]["s"]
    assert alpha_s == pytest.approx(0.4 * CPU_S, rel=0.35)
    assert by_fn["alpha"]["core_hours"] * 3600 >= 0.99 * alpha_s
    assert by_fn["alpha"]["jobs"] >= 1


@contextmanager
def _recording(
    tmp: Path, job_id: str, window_s: float, job_s: int, command: list[str] | None = None
) -> Iterator[tuple]:
    """An agent following a job (SLURM_JOB_ID in its environment) of the hot C program, or
    of `command`, until its perf records: (agent, status then); the job and the agent are
    killed after."""
    need_tool("perf", "apt install linux-perf")
    command = command or [str(build_hot(tmp)), str(job_s)]
    agent = AgentRun(tmp, extra=stacks_config(freq=49, window_s=window_s), interval=0.5)
    job = None
    try:
        agent.wait_samples(2)
        env = dict(os.environ, SLURM_JOB_ID=job_id, SLURM_JOB_NAME="stk-" + job_id)
        job = subprocess.Popen(command, env=env)
        st = _wait(lambda: (agent.status().get("stacks") or {}).get("state") == "recording"
                   and agent.status(), 60, "no perf recording")  # fmt: skip
        yield agent, st
    finally:
        if job is not None:
            job.kill()
            job.wait()
        agent.kill()


def test_a_killed_perf_is_restarted_and_said(tmp_path):
    """perf killed under the agent: the family says why, perf runs again after its backoff,
    and the other families never stop."""
    with _recording(tmp_path, "913013", window_s=30.0, job_s=60) as (agent, st):
        perf_pid = st["stacks"]["perf_pid"]
        before = st["samples"]
        os.kill(perf_pid, signal.SIGKILL)
        st = _wait(lambda: (agent.status().get("stacks") or {}).get("failures", 0) >= 1
                   and agent.status(), 60, "the kill was not noticed")  # fmt: skip
        assert "status -9" in st["stacks"]["last_error"]
        r = run_para("agent", "status", "--spool", str(agent.spool))
        assert "stacks" in r.stdout and "last error" in r.stdout, r.stdout
        st = _wait(lambda: (s := agent.status().get("stacks") or {}).get("restarts", 0) >= 1
                   and s.get("state") == "recording" and s.get("perf_pid") != perf_pid
                   and agent.status(), 60, "perf was not started again")  # fmt: skip
        assert st["samples"] > before  # the other families went on


def test_a_window_without_samples_of_the_jobs_is_no_failure(tmp_path):
    """A job that sleeps leaves perf's windows without a sample of it, and perf, stopped with
    SIGINT, ends with that signal (status -2): each such window was taken for a failure, perf
    restarted after a backoff and the family said failing (the 10 errors of a CI run)."""
    with _recording(tmp_path, "913017", window_s=2.0, job_s=60, command=["sleep", "60"]) as (
        agent,
        _,
    ):
        _wait(lambda: (agent.status().get("stacks") or {}).get("windows", 0) >= 3, 60,
              f"three windows: {agent.status().get('stacks')}")  # fmt: skip
        st = agent.status()["stacks"]
        assert st["failures"] == 0 and st["last_error"] is None, st


def _running(pid: int) -> bool:
    """Whether `pid` runs (a zombie left to a pid 1 that does not reap has ended)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def test_perf_ends_with_an_agent_killed_outright(tmp_path, monkeypatch):
    """SIGKILL leaves the agent no time to stop its system-wide perf record: perf ends by
    itself (its parent-death signal), rather than recording into a growing file for ever.
    Its perf.data was left in /tmp, one per killed agent, for ever (180 of them on the CI
    machine after a day): it is in the spool, and the next agent's start removes it."""
    need_tool("setpriv", "apt install util-linux")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))  # the agents' (clean_env keeps it)
    perf_pid = None
    try:
        with _recording(tmp_path, "913016", window_s=30.0, job_s=60) as (agent, st):
            perf_pid = st["stacks"]["perf_pid"]
            cmdline = Path(f"/proc/{perf_pid}/cmdline").read_bytes().split(b"\0")
            assert Path(cmdline[0].decode()).name == "perf" and b"record" in cmdline, cmdline
            os.kill(agent.proc.pid, signal.SIGKILL)
            agent.proc.wait()
            _wait(lambda: not _running(perf_pid), 30, f"perf {perf_pid} still records")
    finally:
        if perf_pid is not None and _running(perf_pid):
            os.kill(perf_pid, signal.SIGKILL)  # the agent this test started left it
    spool = tmp_path / "spool"
    left = [p.name for d in (spool / "work").glob("para-perf-*") for p in d.iterdir()]
    assert "perf.data" in left, list((spool / "work").rglob("*"))
    assert list(tmp.iterdir()) == []
    killed = {p.name for p in (spool / "work").iterdir()}
    again = AgentRun(tmp_path, name="again", spool=spool)
    try:
        again.wait_samples(1)
        # the killed agent's scratch is gone (the new one's own may be there already: the
        # job still runs, and its perf and py-spy start with the new agent's first sample)
        assert not killed & {p.name for p in (spool / "work").iterdir()}
        assert again.stop() == 0, again.log.read_text()
    finally:
        again.kill()


def test_a_hung_perf_is_killed_restarted_and_said(tmp_path):
    """perf stopped (SIGSTOP: it neither samples nor answers SIGINT) under the agent: at the
    window's end it is killed, the family says it hung, and a new perf records."""
    with _recording(tmp_path, "913014", window_s=2.0, job_s=120) as (agent, st):
        perf_pid = st["stacks"]["perf_pid"]
        os.kill(perf_pid, signal.SIGSTOP)
        st = _wait(lambda: "hung" in str((agent.status().get("stacks") or {}).get("last_error"))
                   and agent.status(), 120, "the hang was not said")  # fmt: skip
        assert st["stacks"]["failures"] >= 1
        _wait(lambda: (s := agent.status().get("stacks") or {}).get("state") == "recording"
              and s.get("perf_pid") not in (None, perf_pid), 60, "no new perf")  # fmt: skip
        with pytest.raises(ProcessLookupError):
            os.kill(perf_pid, 0)  # the hung one is gone


def _samples_written(agent: AgentRun) -> int:
    return int(agent.status().get("samples") or 0)


def test_a_hung_perf_script_is_killed_restarted_and_said(tmp_path):
    """`perf script` that never finishes (a fake perf whose `script` sleeps; record is the real
    perf): after `script_timeout_s` it is killed, only it, the family says it hung, perf
    records again after its backoff, and the other families write samples all along."""
    real = need_tool("perf", "apt install linux-perf")
    exe = build_hot(tmp_path)
    pids = tmp_path / "script.pids"
    fake = tmp_path / "fakeperf"
    fake.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = script ]; then echo $$ >> {pids}; exec sleep 3600; fi\n'
        f'exec {real} "$@"\n'
    )
    fake.chmod(0o755)
    extra = stacks_config(freq=49, window_s=2.0) + f'command = "{fake}"\nscript_timeout_s = 3.0\n'
    agent = AgentRun(tmp_path, extra=extra, interval=0.5)
    job = None
    try:
        agent.wait_samples(2)
        env = dict(os.environ, SLURM_JOB_ID="913015", SLURM_JOB_NAME="stk-script")
        job = subprocess.Popen([str(exe), "300"], env=env)
        st = _wait(lambda: "perf script" in str((agent.status().get("stacks") or {})
                                                .get("last_error")) and agent.status(),
                   120, "the hung perf script was not said")  # fmt: skip
        assert "hung" in st["stacks"]["last_error"] and "killed" in st["stacks"]["last_error"]
        assert st["stacks"]["failures"] >= 1
        hung = int(pids.read_text().split()[0])
        with pytest.raises(ProcessLookupError):
            os.kill(hung, 0)  # killed and reaped by the agent
        r = run_para("agent", "status", "--spool", str(agent.spool))
        assert "perf script did not finish" in r.stdout, r.stdout
        # restarted after its backoff: a new perf record, and a second hang said again
        _wait(lambda: (agent.status().get("stacks") or {}).get("failures", 0) >= 2,
              120, "perf was not started again after the hang")  # fmt: skip
        assert (agent.status().get("stacks") or {}).get("restarts", 0) >= 1
        # the other families never waited for it: the loop wrote a sample each interval
        before = _samples_written(agent)
        _wait(lambda: _samples_written(agent) >= before + 4, 60, "no samples meanwhile")
        fams = agent.status().get("families") or {}
        assert fams["cpu"]["state"] == "ok" and fams["memory"]["state"] == "ok", fams
        assert agent.stop() == 0, agent.log.read_text()
    finally:
        if job is not None:
            job.kill()
            job.wait()
        agent.kill()
    # every perf script the agent started is gone once it stopped (none left running)
    for pid in map(int, pids.read_text().split()):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# -- per-cgroup filtering ------------------------------------------------------------------


def test_perf_follows_the_jobs_cgroups_of_a_recorded_slurm_v2_node(tmp_path):
    """The Slurm cgroup v2 node of tests/fixtures/cgroup: perf records job_4's cgroup only
    (one event per cgroup, then -G); the v1 node has no cgroup v2 of its jobs: the whole
    node, jobs picked out by pid."""
    from para.agent.samplers.stacks import StackSampler, WindowRecorder

    from .test_agent_jobs import sampler, tree

    for name, want in (("slurm-v2", ("system.slice/slurmstepd.scope/job_4",)), ("slurm-v1", ())):
        js = sampler(tree(tmp_path, name))
        js.sample(1000, {})
        assert js.job_pids(), name
        stk = StackSampler(js.job_pids, cgroups=js.job_cgroups, proc=str(tmp_path / name / "proc"))
        stk.sample(1000, {})
        assert stk._want_cg == want, name
        argv = WindowRecorder(19, "cycles", "perf", stk._want_cg, tmp_path).argv("perf")
        if want:
            g = argv.index("-G")
            assert argv[g + 1] == want[0]
            assert argv[:g].count("-e") == 1 and "-a" in argv
        else:
            assert "-G" not in argv and "-a" in argv


def _v2_root() -> Path:
    for p in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
        if (p / "cgroup.controllers").exists():
            return p
    cannot_run("no cgroup v2 hierarchy on this machine", "run on a node with cgroup v2")


def test_perf_records_only_the_jobs_cgroup(tmp_path):
    """The real perf with -G on a real cgroup v2: of two busy processes that both belong to
    the job by pid, only the one in the job's cgroup is sampled (the kernel's filter)."""
    from para.agent.samplers.stacks import StackSampler

    need_tool("perf", "apt install linux-perf")
    exe = build_hot(tmp_path)
    root = _v2_root()
    cg = root / f"para-test-stacks-{os.getpid()}-{tmp_path.name}"
    try:
        cg.mkdir()
    except OSError as e:
        cannot_run(f"cannot make a cgroup under {root}: {e}", "run as root on cgroup v2")
    inside = outside = None
    stk = None
    try:
        inside = subprocess.Popen([str(exe), "60"])
        (cg / "cgroup.procs").write_text(str(inside.pid))
        outside = subprocess.Popen([str(exe), "60"])
        rel = "/" + str(cg.relative_to(root))
        pids = {inside.pid, outside.pid}
        stk = StackSampler(lambda: {"77": pids}, cgroups=lambda: {"77": rel}, freq=49,
                           window_s=4.0, python=False, event_name="cpu-clock")  # fmt: skip
        stk.open()
        out: dict = {}
        end = time.monotonic() + 90
        while time.monotonic() < end and not out.get("stacks"):
            stk.sample(0, out)
            time.sleep(0.2)
        assert out.get("stacks"), stk.status()
        assert stk.status()["filter"] == f"cgroups: {rel.lstrip('/')}"
        got = {r[1] for r in out["stacks"]}
        assert got == {inside.pid}, (got, inside.pid, outside.pid)
    finally:
        if stk is not None:
            stk.stop()
        for p in (inside, outside):
            if p is not None:
                p.kill()
                p.wait()
        cg.rmdir()


def test_frames_decoded_without_demangling_read_as_perf_prints_them(tmp_path):
    """The agent's perf script runs with --no-demangle (perf demangles every symbol of every
    binary it loads: a third of its CPU); the mangled frames kept are demangled afterwards.
    Against perf's own demangling of the same recording, frame by frame."""
    from para.agent.samplers.stacks import MANGLED, demangle

    perf = need_tool("perf", "apt install linux-perf")
    need_tool("c++filt", "apt install binutils")
    gxx = need_tool("g++", "apt install g++")
    exe = tmp_path / "hotcc"
    subprocess.run([gxx, "-O0", "-fno-omit-frame-pointer", "-o", str(exe),
                    str(FIXTURES / "hot.cc")], check=True)  # fmt: skip
    data = tmp_path / "perf.data"
    subprocess.run([perf, "record", "-g", "-e", "cpu-clock", "-F", "499", "-o", str(data), "--",
                    str(exe), "60000"], check=True, capture_output=True)  # fmt: skip

    def frames(*opts: str) -> list[str]:
        out = subprocess.run([perf, "script", "-i", str(data), "-F", "ip,sym", "--no-inline",
                              *opts], capture_output=True, text=True, check=True)  # fmt: skip
        return [ln.split(None, 1)[1] for ln in out.stdout.splitlines() if len(ln.split()) > 1]

    mangled, theirs = frames("--no-demangle"), frames()
    assert len(mangled) == len(theirs) and mangled != theirs
    plain = demangle({f for f in mangled if f.startswith(MANGLED)})
    ours = [plain.get(f, f) for f in mangled]
    assert ours == theirs
    assert {"ns::Worker::spin", "work<long>"} <= set(theirs)


def test_pyspy_reads_a_python_process_only_once_it_is_busy(tmp_path):
    """The agent's py-spy: a job's CPython process that sleeps is not read (py-spy would read
    its threads 20 times a second for no CPU sample to place); once it computes (its CPU time
    in /proc grows), it gets its py-spy."""
    from para.agent import pystacks

    try:
        pystacks.pyspy_binary()
    except Exception as e:
        cannot_run(str(e), "pip install py-spy (a dependency of para: make venv)")
    go = tmp_path / "go"
    prog = (
        "import os, time\n"
        f"while not os.path.exists({str(go)!r}):\n    time.sleep(0.05)\n"
        "x = 0\nwhile True:\n    x += 1\n"
    )
    job = subprocess.Popen([sys.executable, "-c", prog])
    rec = None
    try:
        rec = pystacks.PySpyRecorder(lambda: {job.pid}, rate=20, poll_s=0.2, cwd="",
                                     min_cpu=0.05)  # fmt: skip
        rec.start()
        _wait(lambda: rec.info["idle"] == 1, 30, "the idle process was not seen")
        t_end = time.monotonic() + 2.0
        while time.monotonic() < t_end:  # idle for 2 s more: still no py-spy
            assert not rec.helper_pids() and rec.info["processes"] == 0
            time.sleep(0.1)
        go.touch()
        _wait(lambda: rec.helper_pids() and rec.info["processes"] == 1, 30, "no py-spy")
        assert rec.info["idle"] == 0
        stat = Path(f"/proc/{job.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
        assert int(stat[11]) + int(stat[12]) > 0  # the kernel saw it compute
    finally:
        if rec is not None:
            rec.stop()
            rec.close()
        job.kill()
        job.wait()


def test_a_cgroup_perf_refuses_falls_back_to_pids(tmp_path):
    """perf refuses -G (here: a job cgroup that does not exist, as when the job's cgroup is
    gone or perf finds no perf_event hierarchy): the family says so, and the job is still
    sampled, by pid."""
    from para.agent.samplers.stacks import StackSampler

    need_tool("perf", "apt install linux-perf")
    exe = build_hot(tmp_path)
    job = subprocess.Popen([str(exe), "60"])
    stk = None
    try:
        missing = f"/para-no-such-cgroup-{os.getpid()}"
        stk = StackSampler(lambda: {"78": {job.pid}}, cgroups=lambda: {"78": missing}, freq=49,
                           window_s=3.0, python=False, event_name="cpu-clock",
                           max_backoff_s=1.0)  # fmt: skip
        stk.open()
        out: dict = {}
        end = time.monotonic() + 90
        while time.monotonic() < end and not out.get("stacks"):
            try:
                stk.sample(0, out)
            except RuntimeError:
                pass  # the family failing for a moment: the loop says it
            time.sleep(0.2)
        st = stk.status()
        assert out.get("stacks"), st
        assert "status 129" in str(st["last_error"]) or "cgroup" in str(st["last_error"]), st
        assert st["filter"].startswith("pids") and "-G failed" in st["filter"], st
        assert {r[1] for r in out["stacks"]} == {job.pid}
    finally:
        if stk is not None:
            stk.stop()
        job.kill()
        job.wait()
