"""Commands shorter than the sampling interval (a shell script's, make's compilers) are never
sampled: their CPU shows only in their parent's children time (cutime, cstime of
/proc/PID/stat) once the parent has waited for them.  The analyzer counts it, less what the
children it did see already counted, so the job's CPU agrees with what the kernel says the
command used (its rusage, recorded by `para profile`), and commands that ran one after
another are not called imbalanced."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pytest

from para.analyzer import analysis
from para.analyzer.job import Job
from para.formats import ParaFile

from .conftest import REPO, para_cmd

WORKLOADS = Path(__file__).parent / "analyzer_workloads.py"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def script_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("script")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = d / "script.para"
    r = subprocess.run(
        [*para_cmd(), "profile", "-q", "-i", "0.5", "-o", str(out), "--",
         sys.executable, str(WORKLOADS), "script", "8"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return out


def test_the_cpu_of_unsampled_commands_is_counted_once(script_run: Path):
    with ParaFile(script_run) as pf:
        ex = pf.meta["exit"]
        exact = float(ex["cpu_user_s"]) + float(ex["cpu_system_s"])
        seen = pf.read_table("proc", columns=["pid"]).column("pid").unique()
    with Job([script_run]) as j:
        a = analysis.analyse(j)
    sampled = a.doc["summary"]["cores_mean"] * a.doc["duration_s"]
    # about 20 commands, most of them never in a sample
    assert len(seen) < 20
    # every command's CPU is in the job's series, and none twice (the long ones were seen)
    assert 0.8 * exact <= sampled <= 1.1 * exact, (sampled, exact)
    fired = {b["id"] for b in a.bottlenecks}
    assert "idle_nodes" not in fired and "load_imbalance" not in fired


BUSY_TO_END = """import os, time
while time.process_time() < 2.3:
    pass
t = os.times()
print("CPU", t.user + t.system)
"""


# another program writing to the disk all along (not the job's: its writes are the node's)
DISK_WRITER = """import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DSYNC, 0o600)
block = os.urandom(1 << 20)
while True:
    os.pwrite(fd, block, 0)
"""


def test_a_commands_cpu_is_counted_to_its_end(tmp_path: Path):
    """A command's CPU after the last sample that saw it running is in the job's series
    (the step of its end), so the report's CPU is what the program measures of itself: at a
    1 s interval it lost up to a second (1.69 s of a 2.29 s busy loop).  That step says
    nothing of the job's I/O, and the node's is not taken for it (the first try did: a
    sleeping job beside a disk writer was found io_wait_bound in a CI run)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path / "busy.para"
    writer = subprocess.Popen([sys.executable, "-c", DISK_WRITER, str(tmp_path / "w")])
    try:
        r = subprocess.run(
            [*para_cmd(), "profile", "-q", "-i", "1", "-o", str(out), "--",
             sys.executable, "-c", BUSY_TO_END],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        writer.kill()
        writer.wait()
    assert r.returncode == 0, r.stderr
    own = float(r.stdout.split("CPU", 1)[1])
    with Job([out]) as j:
        a = analysis.analyse(j)
    sampled = a.doc["summary"]["cores_mean"] * a.doc["duration_s"]
    assert sampled == pytest.approx(own, rel=0.03, abs=0.05)
    # the busy loop stays within one core in every step, the step of its end included (what
    # it used before the first sample, a few ms, is counted there too)
    assert a.doc["summary"]["cores_peak"] <= 1.15
    with ParaFile(out) as pf:  # the writer's traffic is in the recording, as the node's
        disk = pf.read_table("disk", columns=["write_bytes"]).column("write_bytes")
    assert (pc.max(disk).as_py() or 0) - (pc.min(disk).as_py() or 0) > 1e6
    assert a.doc["summary"]["write_bps"] == 0, a.doc["summary"]
