"""`para profile` end to end: real commands, real signals, the real /proc."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from para.errors import ParaError
from para.formats import ParaFile

from .conftest import REPO, kill_tree, need_tool, para_cmd, run_para

BUSY = "import time\nt=time.monotonic()\nwhile time.monotonic()-t<{s}: pass\n"
# ... and then says how much CPU it used, as it measures it itself
BUSY_TIMED = BUSY + "import sys\nprint('cpu_s', time.process_time(), file=sys.stderr)\n"


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    for k in list(e):
        if k.startswith(("SLURM_", "OMPI_", "PMI", "PBS_", "LSB_")):
            del e[k]
    return e


def events(pf: ParaFile, kind: str) -> list[dict]:
    return [e for e in pf.read_table("events").to_pylist() if e["kind"] == kind]


@pytest.mark.slow
def test_profile_a_busy_program(tmp_path):
    out = tmp_path / "busy.para"
    r = run_para(
        "profile", "-o", str(out), "--", sys.executable, "-c", BUSY_TIMED.format(s=1.5), env=env()
    )
    assert r.returncode == 0, r.stderr
    assert "profiling" in r.stderr and "every 1 s" in r.stderr and "Ctrl-C" in r.stderr
    assert f"Next: para report {out}" in r.stderr
    with ParaFile(out) as pf:
        assert pf.complete
        assert pf.meta["exit"]["exit_code"] == 0
        # the kernel's account of the command is the CPU the program measured (however little a
        # loaded machine gave it)
        own = float(re.findall(r"^cpu_s (\S+)$", r.stderr, re.M)[-1])
        cpu = pf.meta["exit"]["cpu_user_s"] + pf.meta["exit"]["cpu_system_s"]
        assert cpu == pytest.approx(own, abs=0.05) and cpu > 0
        proc = pf.read_table("proc").to_pylist()
        assert proc, "the command's process was sampled"
        start = events(pf, "process_start")
        assert start[0]["name"] == Path(sys.executable).name[:15]
        assert json.loads(start[0]["detail"])["cmdline"][:2] == [sys.executable, "-c"]
        stats = pf.stats()
        assert 3 <= stats["samples"] <= 5
        assert {"node", "memory", "cpu", "disk", "net", "proc"} <= set(pf.tables)


@pytest.mark.parametrize(
    "script, code",
    [("exit 3", 3), ("kill -TERM $$", 128 + signal.SIGTERM), ("true", 0)],
)
def test_exit_code_is_the_commands(tmp_path, script, code):
    out = tmp_path / "x.para"
    r = run_para("profile", "-q", "-o", str(out), "--", "sh", "-c", script, env=env())
    assert r.returncode == code, r.stderr
    with ParaFile(out) as pf:
        assert pf.complete and pf.meta["exit"]["exit_code"] == code


def test_missing_command_exits_127(tmp_path):
    r = run_para("profile", "-o", str(tmp_path / "m.para"), "--", "no-such-command-xyz", env=env())
    assert r.returncode == 127
    assert "command not found: no-such-command-xyz" in r.stderr
    assert not (tmp_path / "m.para").exists()


def test_non_executable_exits_126(tmp_path):
    f = tmp_path / "script.sh"
    f.write_text("echo hi\n")
    r = run_para("profile", "-o", str(tmp_path / "m.para"), "--", str(f), env=env())
    assert r.returncode == 126 and "not executable" in r.stderr


def test_unwritable_output_is_reported_before_the_command_starts(tmp_path):
    marker = tmp_path / "ran"
    r = run_para(
        "profile",
        "-o",
        str(tmp_path / "no" / "dir" / "x.para"),
        "--",
        "touch",
        str(marker),
        env=env(),
    )
    assert r.returncode == 1
    assert "directory" in r.stderr and "does not exist" in r.stderr
    assert not marker.exists()


def test_no_command_is_a_usage_error():
    r = run_para("profile", env=env())
    assert r.returncode == 2


TRAP = """
import signal, sys, time
def bye(sig, frame):
    open(sys.argv[1], "w").write(signal.Signals(sig).name)
    sys.exit(42)
signal.signal(signal.SIGINT, bye)
signal.signal(signal.SIGTERM, bye)
print("ready", flush=True)
time.sleep(300)
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_reach_the_command_and_the_file_is_written(tmp_path, sig):
    out = tmp_path / "s.para"
    marker = tmp_path / "got"
    p = subprocess.Popen(
        [*para_cmd(), "profile", "-o", str(out), "--", sys.executable, "-c", TRAP, str(marker)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
    )
    try:
        assert p.stdout.readline().strip() == "ready"  # para forwards signals from before it starts
        p.send_signal(sig)
        # a loaded machine may take long to finish the file; a lost signal never ends
        _, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        kill_tree(p)
        _, err = p.communicate()
        raise AssertionError(f"para did not end 120 s after {sig!r}; it said:\n{err}") from None
    finally:
        if p.poll() is None:
            kill_tree(p)
            p.communicate()
    assert marker.exists(), f"{sig!r} never reached the command; para said:\n{err}"
    assert marker.read_text() == signal.Signals(sig).name
    assert p.returncode == 42, err
    assert f"passed it on to {sys.executable}" in err
    with ParaFile(out) as pf:
        assert pf.complete and pf.meta["signals"] == [signal.Signals(sig).name]


@pytest.mark.slow
def test_reparented_children_stay_in_the_tree(tmp_path):
    """A grandchild whose parent exits re-parents to para (child subreaper) and is still
    sampled: the tree is the whole job, not just the first process."""
    out = tmp_path / "tree.para"
    script = "(sleep 2.5 & echo $! > {pidfile}); sleep 0.2; exec sleep 1.5"
    pidfile = tmp_path / "orphan.pid"
    r = run_para(
        "profile",
        "-q",
        "-i",
        "0.2",
        "-o",
        str(out),
        "--",
        "sh",
        "-c",
        script.format(pidfile=pidfile),
        env=env(),
    )
    assert r.returncode == 0, r.stderr
    orphan = int(pidfile.read_text())
    with ParaFile(out) as pf:
        rows = [r for r in pf.read_table("proc").to_pylist() if r["pid"] == orphan]
        assert rows, "the orphaned sleep was never sampled"
        assert rows[-1]["ppid"] != rows[0]["ppid"] or rows[0]["ppid"] != orphan
        started = {e["pid"] for e in events(pf, "process_start")}
        assert orphan in started


@pytest.mark.slow
def test_tenth_of_a_second_interval(tmp_path):
    out = tmp_path / "fast.para"
    r = run_para("profile", "-q", "-i", "0.1", "-o", str(out), "--", "sleep", "2", env=env())
    assert r.returncode == 0, r.stderr
    with ParaFile(out) as pf:
        assert 18 <= pf.stats()["samples"] <= 24
        assert pf.meta["sampler"]["missed_ticks"] <= 2


def _wait_samples(path: Path, n: int, p: subprocess.Popen, timeout: float = 60) -> int:
    """Wait until the .para file being written holds `n` samples; returns how many it held."""
    deadline = time.monotonic() + timeout
    while True:
        assert p.poll() is None, "para ended early"
        try:
            with ParaFile(path) as pf:
                seen = pf.stats()["samples"]
        except (OSError, ParaError):  # not created yet, or caught mid-write
            seen = 0
        if seen >= n:
            return seen
        assert time.monotonic() < deadline, f"{path} held {seen} of {n} samples after {timeout} s"
        time.sleep(0.05)


def _start_time(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


def _descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of every process below `pid`."""
    out, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
                out += [(k, _start_time(k)) for k in kids]
            except OSError:  # gone meanwhile
                continue
            todo += kids
    return out


def _kill_if_same(pid: int, start: str) -> None:
    """SIGKILL `pid` if it is still the process that started at `start` (not a reused pid)."""
    try:
        if _start_time(pid) == start:
            os.kill(pid, signal.SIGKILL)
    except (OSError, IndexError):
        pass


@pytest.mark.slow
def test_sigkill_of_para_loses_at_most_two_seconds(tmp_path):
    out = tmp_path / "k.para"
    p = subprocess.Popen(
        [*para_cmd(), "profile", "-q", "-o", str(out), "--", "sleep", "30"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env(),
    )
    left: list[tuple[int, str]] = []
    try:
        seen = _wait_samples(out, 4, p)  # as a reader sees the file while para writes it
        left = _descendants(p.pid)  # the command: para's SIGKILL leaves it running
        assert left, "the command is not below para"
        killed = time.time()
    finally:
        p.kill()
        p.wait()
        p.stderr.close()
        for pid, start in left:  # only the processes this test started, never by name
            _kill_if_same(pid, start)
    with ParaFile(out) as pf:
        assert pf.recovery is not None and "was not closed" in pf.recovery.message
        stats = pf.stats()
        assert stats["samples"] >= seen >= 4  # nothing a reader saw before the kill is lost
        assert killed - stats["end"] <= 2.0
    r = run_para("recover", str(out), env=env())
    assert r.returncode == 0 and "Wrote" in r.stderr
    with ParaFile(out) as pf:
        assert pf.complete


@pytest.mark.slow
def test_one_sampler_per_node_under_a_launcher(tmp_path):
    """Three ranks of one Slurm step on this node: one para samples, all ranks are in it."""
    base = env()
    procs = []
    for rank in range(3):
        e = dict(
            base,
            SLURM_JOB_ID="4242",
            SLURM_STEP_ID="0",
            SLURM_PROCID=str(rank),
            SLURM_LOCALID=str(rank),
            SLURM_JOB_NAME="ranks",
            SLURM_NNODES="1",
            # as srun says it: the sampler waits for the node's three ranks (without it, a
            # rank whose para started after the first one's command ended went unsampled:
            # loaded run 5, pure-Python pass)
            SLURM_STEP_TASKS_PER_NODE="3",
            SLURM_NODEID="0",
            TMPDIR=str(tmp_path),
        )
        procs.append(
            subprocess.Popen(
                [
                    *para_cmd(),
                    "profile",
                    "-q",
                    "-o",
                    str(tmp_path / "job.para"),
                    "--",
                    "sleep",
                    f"2.{rank}",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=e,
                cwd=tmp_path,
            )
        )
        time.sleep(0.1)
    codes = [p.wait(timeout=60) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert codes == [0, 0, 0]
    files = sorted(tmp_path.glob("*.para"))
    host = socket.gethostname()
    assert [f.name for f in files] == [f"job.{host}.para"]
    with ParaFile(files[0]) as pf:
        assert pf.meta["job"]["job_id"] == "4242" and pf.meta["job"]["scheduler"] == "slurm"
        # a rank first seen before it exec'd its command says it with process_exec
        cmdlines = {
            tuple(json.loads(e["detail"])["cmdline"])
            for e in events(pf, "process_start") + events(pf, "process_exec")
        }
        assert {("sleep", "2.0"), ("sleep", "2.1"), ("sleep", "2.2")} <= cmdlines


def test_default_name_carries_command_and_host(tmp_path):
    r = run_para("profile", "-q", "--", "true", cwd=tmp_path, env=env())
    assert r.returncode == 0, r.stderr
    files = list(tmp_path.glob("*.para"))
    assert len(files) == 1
    assert files[0].name.startswith(f"para-true-{socket.gethostname()}-")


def test_show_json_keys(tmp_path):
    out = tmp_path / "s.para"
    run_para("profile", "-q", "-o", str(out), "--", "sleep", "0.5", env=env())
    r = run_para("show", "--json", str(out), env=env())
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert {"start", "end", "samples", "values", "catalogue", "host", "families"} <= set(d)
    assert d["samples"] >= 2 and d["values"] > 100
    assert d["end"] >= d["start"]
    assert abs(d["bytes"] / d["values"] - d["bytes_per_value"]) < 1e-3
    text = run_para("show", str(out), env=env()).stdout
    assert "metric catalogue" in text and "read_bytes" in text


HOT_C = r"""
#include <stdio.h>
double __attribute__((noinline)) hot_loop(long n) { double s = 0;
    for (long i = 0; i < n; i++) s += i * 0.5 / (i + 1); return s; }
double __attribute__((noinline)) cold_loop(long n) { double s = 0;
    for (long i = 0; i < n; i++) s += i * 0.25; return s; }
int main(void) { printf("%f %f\n", hot_loop(400000000), cold_loop(40000000)); return 0; }
"""


@pytest.mark.slow
def test_functions_records_call_stacks(tmp_path):
    need_tool("perf", "apt install linux-perf (make test installs it)")
    need_tool("gcc", "apt install gcc")
    src, exe = tmp_path / "hot.c", tmp_path / "hot"
    src.write_text(HOT_C)
    subprocess.run(
        ["gcc", "-O1", "-g", "-fno-omit-frame-pointer", "-o", str(exe), str(src)], check=True
    )
    out = tmp_path / "f.para"
    r = run_para("profile", "--functions", "-o", str(out), "--", str(exe), env=env())
    assert r.returncode == 0, r.stderr
    with ParaFile(out) as pf:
        assert "stacks" in pf.tables
        rows = pf.read_table("stacks").to_pylist()
        total = sum(r["samples"] for r in rows)
        hot = sum(r["samples"] for r in rows if r["stack"].endswith("hot_loop"))
        assert total >= 100  # 499 Hz for about a second
        assert hot / total > 0.6
        assert all(r["comm"] == "hot" for r in rows)
        instr = pf.read_table("instr_samples").to_pylist()
        assert sum(r["samples"] for r in instr) == total  # one leaf per sample
        assert sum(r["samples"] for r in instr if r["symbol"] == "hot_loop") == hot
        info = pf.meta["functions"]
        assert info["samples"] == total
        # no PMU here: perf falls back to cpu-clock and the file says so
        assert info["event"] in ("cycles", "cpu-clock")


@pytest.mark.slow
def test_under_real_mpirun(tmp_path):
    """Open MPI's mpirun starts three ranks on this node: one para samples them all."""
    need_tool("mpirun", "apt install openmpi-bin (make test installs it)")
    e = env()
    e.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", TMPDIR=str(tmp_path))
    r = subprocess.run(
        ["mpirun", "--oversubscribe", "-np", "3", *para_cmd(), "profile", "-q", "-o", "run.para",
         "--", "sh", "-c", 'sleep 1.$OMPI_COMM_WORLD_RANK'],
        cwd=tmp_path, env=e, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    files = sorted(p.name for p in tmp_path.glob("*.para"))
    assert files == [f"run.{socket.gethostname()}.para"]
    with ParaFile(tmp_path / files[0]) as pf:
        assert pf.meta["ranks_on_node"] == 3
        # a rank's sleep first seen before its shell exec'd it says so with process_exec
        sleeps = {
            tuple(json.loads(ev["detail"])["cmdline"])
            for ev in events(pf, "process_start") + events(pf, "process_exec")
            if ev["name"] == "sleep"
        }
        assert sleeps == {("sleep", "1.0"), ("sleep", "1.1"), ("sleep", "1.2")}
