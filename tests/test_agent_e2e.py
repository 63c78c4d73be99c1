"""`para agent` end to end: the real command on this machine, with a temporary configuration
and spool, short runs at a few samples a second, stopped with SIGTERM, SIGHUP and SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from para.formats import ParaFile

from .conftest import REPO, cannot_run, kill_tree, run_para

pytestmark = pytest.mark.slow


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PBS_", "LSB_"))}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


class AgentRun:
    def __init__(
        self,
        tmp: Path,
        extra: str = "",
        interval: float = 0.2,
        name: str = "agent",
        spool: Path | None = None,
    ):
        self.tmp = tmp
        self.spool = spool or tmp / "spool"
        self.config = tmp / f"{name}.toml"
        self.log = tmp / f"{name}.log"
        self.write_config(extra, interval)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "para", "agent", "run", "--config", str(self.config)],
            env=clean_env(),
            stderr=open(self.log, "w"),  # noqa: SIM115 (the child holds it)
        )

    def write_config(self, extra: str = "", interval: float = 0.2) -> None:
        self.config.write_text(
            f'[agent]\ninterval = {interval}\nspool_dir = "{self.spool}"\nstatus_every_s = 0.2\n'
            + extra
        )

    def status(self) -> dict:
        try:
            return json.loads((self.spool / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def wait_samples(self, n: int, timeout: float = 30.0) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            st = self.status()
            mine = st.get("pid") == self.proc.pid  # not a killed predecessor's status
            if mine and st.get("samples", 0) >= n and st.get("state") == "running":
                return st
            assert self.proc.poll() is None, self.log.read_text()
            time.sleep(0.05)
        raise AssertionError(f"fewer than {n} samples in {timeout} s:\n{self.log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def ready(self) -> list[Path]:
        return sorted((self.spool / "ready").glob("*.para"))

    def current(self) -> list[Path]:
        return sorted((self.spool / "current").glob("*.para"))

    def kill(self) -> None:
        if self.proc.poll() is None:
            kill_tree(self.proc)
            self.proc.wait()


@pytest.fixture
def agents():
    started: list[AgentRun] = []
    yield started
    for a in started:
        a.kill()


def start(agents, tmp: Path, **kw) -> AgentRun:  # type: ignore[no-untyped-def]
    a = AgentRun(tmp, **kw)
    agents.append(a)
    return a


def events(pf: ParaFile, kind: str) -> list[dict]:
    return [e for e in pf.read_table("events").to_pylist() if e["kind"] == kind]


def test_sigterm_closes_a_complete_segment_and_status_tells(agents, tmp_path):
    a = start(agents, tmp_path)
    st = a.wait_samples(5)
    assert st["families"]["cpu"]["state"] == "ok"
    r = run_para("agent", "status", "--config", str(a.config))
    assert r.returncode == 0, r.stderr
    assert "running" in r.stdout and "last sample" in r.stdout and "cpu" in r.stdout
    assert "NOT running" not in r.stdout
    assert a.stop() == 0
    (seg,) = a.ready()
    assert a.current() == []
    with ParaFile(seg) as pf:
        assert pf.complete
        assert pf.meta["source"] == "para agent" and pf.meta["closed_by"] == "shutdown"
        s = pf.meta["segment"]
        assert len(s["id"]) == 32 and s["seq"] == 0 and s["host"]
        assert seg.name.startswith(s["host"]) and seg.name.endswith("-000000.para")
        assert pf.stats()["samples"] >= 5
        assert {"node", "cpu", "memory", "disk"} <= set(pf.tables)
    final = a.status()
    assert final["state"] == "stopped" and final["segments"]["finalized"] == 1
    assert final["resources"]["heavy_modules"] == []  # no pyarrow in the sampling process
    r = run_para("agent", "status", "--spool", str(a.spool))
    assert r.returncode == 3 and "stopped cleanly" in r.stdout
    r = run_para("agent", "status", "--spool", str(a.spool), "--json")
    assert json.loads(r.stdout)["running"] is False


def test_sighup_reloads_and_a_bad_file_keeps_the_old_configuration(agents, tmp_path):
    a = start(agents, tmp_path)
    a.wait_samples(3)
    a.write_config(interval=0.3)
    a.proc.send_signal(signal.SIGHUP)
    end = time.monotonic() + 30
    while time.monotonic() < end and not (a.ready() and a.status().get("interval") == 0.3):
        time.sleep(0.05)
    assert a.status()["interval"] == 0.3, a.log.read_text()
    a.config.write_text("[agent]\ninterval = 0.3\nintervall = 9\n")
    a.proc.send_signal(signal.SIGHUP)
    end = time.monotonic() + 10
    while time.monotonic() < end and "not reloaded" not in a.log.read_text():
        time.sleep(0.05)
    log = a.log.read_text()
    assert "not reloaded" in log and f"{a.config}:3" in log and "intervall" in log
    assert a.proc.poll() is None
    assert a.stop() == 0
    first, second = a.ready()
    with ParaFile(first) as pf1, ParaFile(second) as pf2:
        assert pf1.meta["interval"] == 0.2 and pf1.meta["closed_by"] == "reload"
        assert pf2.meta["interval"] == 0.3 and pf2.meta["segment"]["seq"] == 1


def test_sigkill_loses_at_most_two_seconds_and_the_next_start_recovers(agents, tmp_path):
    a = start(agents, tmp_path)
    a.wait_samples(10)
    killed = time.time()
    a.kill()  # SIGKILL, and its perf with it (left alone, it would record for ever)
    (left,) = a.current()
    with ParaFile(left) as pf:
        assert not pf.complete and pf.recovery is not None
        last = pf.stats()["end"]
    assert killed - last <= 2.0
    before = {p.name for p in a.ready()} | {left.name}
    b = start(agents, tmp_path, name="again")
    b.wait_samples(3)
    assert b.stop() == 0
    assert b.current() == []
    ready = b.ready()
    (recovered,) = [p for p in ready if p.name == left.name]
    with ParaFile(recovered) as pf:
        assert pf.complete and "recovered" in pf.meta
        seq = pf.meta["segment"]["seq"]
    assert "left unfinished by an earlier agent" in b.log.read_text()
    # b's own segments: more than one where its run crossed the hour (segments end there)
    fresh = [p for p in ready if p.name not in before]
    assert fresh
    seqs = []
    for p in fresh:
        with ParaFile(p) as pf:
            seqs.append(pf.meta["segment"]["seq"])
    assert sorted(seqs) == list(range(seq + 1, seq + 1 + len(fresh)))  # the sequence goes on


def test_a_job_found_by_its_environment(agents, tmp_path):
    a = start(agents, tmp_path, extra="[jobs]\nend_after_s = 0.4\n")
    a.wait_samples(2)
    job = subprocess.Popen(
        ["sh", "-c", "sleep 1.2; true"],
        env=clean_env(SLURM_JOB_ID="4242", SLURM_JOB_NAME="e2e", SLURM_CPUS_ON_NODE="1"),
    )
    job.wait()
    end = time.monotonic() + 20
    while time.monotonic() < end and not any(
        j["job"] == "4242" for j in (a.status().get("jobs") or [])
    ):
        time.sleep(0.05)
    # the job has ended; give the agent end_after_s and a few samples to say so
    end = time.monotonic() + 20
    while time.monotonic() < end and (a.status().get("jobs") or []):
        time.sleep(0.05)
    assert a.stop() == 0
    (seg,) = a.ready()
    with ParaFile(seg) as pf:
        (start_ev,) = [e for e in events(pf, "job_start") if e["name"] == "4242"]
        detail = json.loads(start_ev["detail"])
        assert detail["job_name"] == "e2e" and detail["found_by"] == "environ"
        assert detail["scheduler"] == "slurm"
        # (other developers' tests on this machine may run fake jobs too: look at ours only)
        assert [e["name"] for e in events(pf, "job_end")].count("4242") == 1
        rows = [r for r in pf.read_table("job").to_pylist() if r["job"] == "4242"]
        assert rows and max(r["procs"] for r in rows) >= 1
        procs = {r["pid"] for r in pf.read_table("proc").to_pylist() if r["job"] == "4242"}
        assert job.pid in procs
        assert pf.meta["jobs"]["4242"]["job_name"] == "e2e"


def test_segments_rotate_at_their_size_cap(agents, tmp_path):
    a = start(agents, tmp_path, interval=0.05, extra='[segments]\nmax_bytes = "64KiB"\n')
    end = time.monotonic() + 40
    while time.monotonic() < end and len(a.ready()) < 2:
        time.sleep(0.1)
    # at 20 samples a second a loaded machine's writer falls behind the sampler; on SIGTERM the
    # agent writes every sample it holds, segment after segment, which may take a while
    assert a.stop(timeout=300) == 0
    segs = a.ready()
    assert len(segs) >= 3
    seqs = [ParaFile(p).meta["segment"]["seq"] for p in segs]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    with ParaFile(segs[0]) as pf:
        assert pf.meta["closed_by"] == "size"
    # the cap is on the samples a segment holds, not on its fixed part (the catalogue alone
    # is 50 KB in the journal: a loaded run's agent closed a segment at every sample, 20 a
    # second, and took more than 5 minutes to finalise them one by one when stopped)
    for p in segs[:-1]:
        with ParaFile(p) as pf:
            if pf.meta["closed_by"] == "size":
                assert pf.meta["samples"] >= 10, (p.name, pf.meta["samples"])


def test_status_without_an_agent(tmp_path):
    r = run_para("agent", "status", "--spool", str(tmp_path))
    assert r.returncode == 4 and "no agent status" in r.stderr


AS_ROOT = "run the tests as root (CI and `make test` do): the test mounts a small tmpfs to fill"


@pytest.fixture
def tiny_disk(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        cannot_run(f"cannot mount a tmpfs to fill ({r.stderr.strip()})", AS_ROOT)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _wait_log(a: AgentRun, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in a.log.read_text():
        assert time.monotonic() < deadline, f"the agent did not log {text!r}: {a.log.read_text()}"
        time.sleep(0.05)


def test_a_full_disk_drops_the_oldest_samples_and_says_how_many(agents, tmp_path, tiny_disk):
    a = AgentRun(
        tmp_path,
        extra="[segments]\nbuffer_samples = 5\n[retention]\nmin_free_bytes = 0\n",
        interval=0.1,
        spool=tiny_disk / "spool",
    )
    agents.append(a)
    a.wait_samples(3)
    filler = tiny_disk / "filler"
    with open(filler, "wb", buffering=0) as f:  # fill the disk
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    # the agent says so once it has dropped a sample: from then on at least one is lost
    _wait_log(a, "dropping the oldest")
    filler.unlink()
    _wait_log(a, "the spool can be written again after")
    log = a.log.read_text()
    assert log.count("cannot write to the spool") == 1, log  # said once
    assert "samples were lost" in log, (log, a.status(), os.listdir(tiny_disk / "spool/current"))
    assert a.stop() == 0
    (seg,) = a.ready()
    with ParaFile(seg) as pf:
        (lost,) = events(pf, "samples_lost")
        n = json.loads(lost["detail"])["count"]
    assert n >= 1 and a.status()["losses"]["lost_samples"] == n


def test_the_shipper_is_started_and_reported(agents, tmp_path):
    """With a [collector] table the agent runs the shipper (para/agent/shipper.py); here the
    collector is unreachable, so the segment stays in ready/ and the status says why."""
    a = start(
        agents,
        tmp_path,
        extra='[collector]\nurl = "grpc+tcp://127.0.0.1:9"\ninsecure = true\nsend_window = 0\n',
    )
    a.wait_samples(3)
    st = a.status()
    assert st["shipper"] is not None and st["shipper"]["collector"] == "grpc+tcp://127.0.0.1:9"
    assert a.stop() == 0
    assert len(a.ready()) == 1  # never acknowledged: still waiting to be shipped
    r = run_para("agent", "check-config", str(a.config))
    assert r.returncode == 0, r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[agent]\ninterval = 1\n\n[collector]\nurl = "grpc+tcp://c:1"\n')
    r = run_para("agent", "check-config", str(bad))
    assert r.returncode == 1 and f"{bad}:5: [collector]" in r.stderr and "plaintext" in r.stderr
