"""A real single-node Slurm for the tests: munged, slurmctld and slurmd (Debian's slurm-wlm) run
in the foreground with a throw-away configuration, and stopped by pid.

Everything is its own: a munge key and socket, a state and spool directory, ports that were
free when it started, a node name (para<pid>, so that the job cgroups Slurm makes,
/sys/fs/cgroup/<ctrl>/slurm_<node>/..., are no other Slurm's) and job ids that start at a
random number (two test sessions on one machine never share a job id).  proctrack/cgroup and
task/cgroup are used where the cgroup v1 hierarchies can be written (the job then has
freezer, memory, cpuset and, with jobacct_gather/cgroup, cpuacct cgroups), else
proctrack/linuxproc; `Slurm.proctrack` says which.  The directory lives under /tmp (not
pytest's private tmp_path) because jobs of another user must reach the munge socket.
"""

from __future__ import annotations

import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
HINT = "apt-get install slurm-wlm munge (or `make system-deps`)"
TEST_USER = "paratest"  # created by the fixture when missing (a system user, no home)
CGROUP = Path("/sys/fs/cgroup")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cgroup_v1_writable() -> bool:
    """Can Slurm's cgroup/v1 plugin make job cgroups here (freezer, memory and cpuset)?"""
    for ctrl in ("freezer", "memory", "cpuset"):
        probe = CGROUP / ctrl / f"para-probe-{os.getpid()}"
        try:
            probe.mkdir()
            probe.rmdir()
        except OSError:
            return False
    return True


def ensure_test_user() -> pwd.struct_passwd:
    """The unprivileged user that submits "a job of another user" (useradd if missing)."""
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        pass
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/bin/bash", TEST_USER],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam(TEST_USER)


class SlurmError(RuntimeError):
    pass


class Slurm:
    def __init__(self, proctrack: str | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="para-slurm-"))
        self.dir.chmod(0o755)
        self.node = f"para{os.getpid()}"
        self.cgroups = proctrack != "linuxproc" and cgroup_v1_writable()
        self.proctrack = "proctrack/cgroup" if self.cgroups else "proctrack/linuxproc"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.jobs_dir = self.dir / "jobs"
        self.jobs_dir.mkdir()
        self.jobs_dir.chmod(0o1777)  # scripts and outputs of the other user too
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PBS_", "LSB_"))
        }
        self.env["SLURM_CONF"] = str(self.dir / "slurm.conf")

    # -- life ----------------------------------------------------------------------------------
    def _write_config(self) -> None:
        d = self.dir
        (d / "munge").mkdir(mode=0o755)
        (d / "munge/munge.key").write_bytes(os.urandom(1024))
        (d / "munge/munge.key").chmod(0o600)
        for sub in ("state", "spool", "log"):
            (d / sub).mkdir()
        (d / "plugstack.conf").write_text("")
        cpus = os.cpu_count() or 1
        plugins = (
            "ProctrackType=proctrack/cgroup\nTaskPlugin=task/cgroup,task/affinity\n"
            "JobAcctGatherType=jobacct_gather/cgroup\n"
            if self.cgroups
            else "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/affinity\n"
            "JobAcctGatherType=jobacct_gather/linux\n"
        )
        (d / "slurm.conf").write_text(
            f"ClusterName=para{os.getpid()}\n"
            f"SlurmctldHost={socket.gethostname()}(127.0.0.1)\n"
            f"SlurmctldPort={_free_port()}\nSlurmdPort={_free_port()}\n"
            f"AuthType=auth/munge\nAuthInfo=socket={d}/munge/sock\nCredType=cred/munge\n"
            "SlurmUser=root\nSlurmdUser=root\n"
            f"StateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool\n"
            f"SlurmctldPidFile={d}/slurmctld.pid\nSlurmdPidFile={d}/slurmd.pid\n"
            f"SlurmctldLogFile={d}/log/slurmctld.log\nSlurmdLogFile={d}/log/slurmd.log\n"
            f"PlugStackConfig={d}/plugstack.conf\n"
            + plugins
            + "JobAcctGatherFrequency=task=1\nAccountingStorageType=accounting_storage/none\n"
            "JobCompType=jobcomp/none\nSchedulerType=sched/builtin\n"
            "SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\n"
            "ReturnToService=2\nMpiDefault=none\nMailProg=/bin/true\n"
            "SlurmctldTimeout=30\nSlurmdTimeout=30\nInactiveLimit=0\nKillWait=2\n"
            f"FirstJobId={random.randint(100_000, 9_000_000)}\n"
            f"NodeName={self.node} NodeHostname={socket.gethostname()} NodeAddr=127.0.0.1 "
            f"CPUs={cpus} RealMemory=1000 State=UNKNOWN\n"
            f"PartitionName=paratest Nodes={self.node} Default=YES MaxTime=INFINITE State=UP\n"
        )
        (d / "cgroup.conf").write_text(
            "CgroupPlugin=cgroup/v1\nCgroupMountpoint=/sys/fs/cgroup\n"
            "ConstrainCores=yes\nConstrainRAMSpace=yes\n"
            if self.cgroups
            else "CgroupPlugin=cgroup/v1\n"
        )

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.dir / "log" / f"{name}.out", "wb")  # noqa: SIM115 (the child holds it)
        self.procs[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        log.close()

    def start(self, timeout: float = 90.0) -> None:
        self._write_config()
        d = self.dir
        self._spawn(
            "munged",
            ["munged", "-F", "-f", f"--socket={d}/munge/sock", f"--key-file={d}/munge/munge.key",
             f"--pid-file={d}/munge/pid", f"--seed-file={d}/munge/seed",
             f"--log-file={d}/log/munged.log", "--num-threads=2"],
        )  # fmt: skip
        self._wait(lambda: (d / "munge/sock").exists(), timeout, "munged made no socket")
        conf = str(d / "slurm.conf")
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", conf])
        self._wait(self._ctld_up, timeout, "slurmctld does not answer `scontrol ping`")
        self._spawn("slurmd", ["slurmd", "-D", "-N", self.node, "-f", conf])
        self._wait(self._node_idle, timeout, f"node {self.node} did not become idle")

    def _wait(self, ok, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise SlurmError(f"{name} exited with {p.returncode}:\n{self.logs()}")
            if ok():
                return
            time.sleep(0.1)
        raise SlurmError(f"{what} within {timeout:.0f} s:\n{self.logs()}")

    def _ctld_up(self) -> bool:
        r = self.run("scontrol", "ping", check=False)
        return r.returncode == 0 and "UP" in r.stdout

    def _node_idle(self) -> bool:
        r = self.run("scontrol", "-o", "show", "node", self.node, check=False)
        return r.returncode == 0 and re.search(r"State=IDLE\b", r.stdout) is not None

    def logs(self, tail: int = 4000) -> str:
        out = []
        for f in sorted((self.dir / "log").glob("*")):
            text = f.read_text(errors="replace")
            out.append(f"--- {f.name}\n{text[-tail:]}")
        return "\n".join(out)

    def stop(self) -> None:
        """Stop the daemons by pid (slurmd first: it ends the jobs' steps), then remove the
        cgroups Slurm left under this node's name and the directory."""
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._remove_cgroups()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _remove_cgroups(self) -> None:
        for top in CGROUP.glob(f"*/slurm_{self.node}"):
            for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                try:
                    d.rmdir()
                except OSError:
                    pass
            try:
                top.rmdir()
            except OSError:
                pass

    # -- using it ------------------------------------------------------------------------------
    def run(self, *argv: str, user: str | None = None, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:  # fmt: skip
        cmd = list(argv) if user is None else ["runuser", "-u", user, "--", *argv]
        r = subprocess.run(
            cmd, capture_output=True, text=True, env=self.env, timeout=timeout, cwd=self.jobs_dir
        )
        if check and r.returncode != 0:
            raise SlurmError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.strip()}")
        return r

    def sbatch(self, script: str, *args: str, name: str, user: str | None = None) -> str:
        """Submit a batch script (its text); returns the job id.  Its output goes to
        jobs/<name>.out."""
        path = self.jobs_dir / f"{name}.sh"
        path.write_text(script)
        path.chmod(0o755)
        out = self.jobs_dir / f"{name}.out"
        r = self.run("sbatch", "--parsable", "-J", name, "-o", str(out), *args, str(path),
                     user=user)  # fmt: skip
        return r.stdout.strip().split(";")[0]

    def output(self, name: str) -> str:
        return (self.jobs_dir / f"{name}.out").read_text()

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol -o show job ID` as a dict (JobState, UserId, StartTime, EndTime, ...)."""
        r = self.run("scontrol", "-o", "show", "job", job_id)
        return dict(re.findall(r"(\S+?)=(\S*)", r.stdout))

    def wait_done(self, job_ids: list[str], timeout: float = 180.0) -> dict[str, dict[str, str]]:
        """Wait until every job has ended; returns what scontrol says of each."""
        end = time.monotonic() + timeout
        done: dict[str, dict[str, str]] = {}
        while time.monotonic() < end:
            for j in job_ids:
                if j not in done:
                    info = self.job(j)
                    if info.get("JobState") not in ("PENDING", "RUNNING", "CONFIGURING",
                                                     "COMPLETING"):  # fmt: skip
                        done[j] = info
            if len(done) == len(job_ids):
                return done
            time.sleep(0.2)
        raise SlurmError(f"jobs {sorted(set(job_ids) - set(done))} still running after "
                         f"{timeout:.0f} s:\n{self.logs()}")  # fmt: skip
