"""`perf record` as `para profile --functions` drives it: the recording is whole however soon
after its command ends it is finished (a rank's para finishes it the moment its command is
reaped), and whatever the command left running."""

from __future__ import annotations

import sys
import tempfile

import pytest

from para.agent.child import Child
from para.agent.perfrecord import FunctionRecorder
from para.agent.samplers.base import Unavailable
from para.agent.unwind import Choice

from .conftest import need_tool

# Busy for 0.3 s of CPU, then leaves a process behind that outlives it by a second (as an MPI
# rank's runtime helpers or a shell's background job may).
BUSY = """
import os, time
t = time.process_time()
while time.process_time() - t < 0.3:
    pass
if os.fork() == 0:
    time.sleep(1)
"""


def test_finished_the_moment_its_command_ends():
    """perf 6.1 ended with "Thread and evlist pollfd index mismatch" and a perf.data holding no
    samples (its data size never written) when para hung up its control pipe while perf still
    ran: a rank's recording was empty whenever its perf had not seen the command's end yet
    (one run of two ranks in three), and always when the command left a process behind.
    Every recording holds the command's CPU time, as the kernel's rusage counts it, in
    samples at 499 Hz."""
    need_tool("perf", "apt install linux-perf")
    for _ in range(3):
        child = Child([sys.executable, "-c", BUSY], gated=True)
        rec = FunctionRecorder(child.pid, freq=499)
        try:
            rec.start()
        finally:
            child.release()
        status = child.wait()
        rows = rec.finish()  # at once, as a rank's para does
        cpu_s = status.utime + status.stime
        assert "error" not in rec.info, rec.info
        samples = sum(r[5] for r in rows if r[1] == child.pid)
        expected = cpu_s * 499
        assert 0.5 * expected <= samples <= 1.5 * expected + 10, (rec.info, cpu_s, samples)


OLD_PERF = """#!/bin/sh
# a perf before 5.12: no --synth
for a in "$@"; do
    case "$a" in --synth=*) echo "  Error: unknown option \\`${a#--}'"; echo; \
        echo " Usage: perf record [<options>] [<command>]"; echo "    -a, --all-cpus"; exit 129;;
    esac
done
exec perf "$@"
"""


def test_a_perf_without_synth_still_records(tmp_path):
    """`--synth=no` (perf 5.12 on) keeps perf from reading the gated process's pre-exec maps;
    a perf that does not know it records all the same."""
    need_tool("perf", "apt install linux-perf")
    old = tmp_path / "perf"
    old.write_text(OLD_PERF)
    old.chmod(0o755)
    child = Child([sys.executable, "-c", BUSY], gated=True)
    rec = FunctionRecorder(child.pid, freq=499, perf=str(old))
    try:
        rec.start()
    finally:
        child.release()
    status = child.wait()
    rows = rec.finish()
    assert rec.synth == [] and "error" not in rec.info, rec.info
    samples = sum(r[5] for r in rows if r[1] == child.pid)
    assert samples >= 0.5 * (status.utime + status.stime) * 499, rec.info


def test_a_refused_start_leaves_no_directory(tmp_path, monkeypatch):
    """perf missing, or refusing every unwinding mode: `para profile --functions` goes on
    without stacks, and the recorder's directory (perf.data, perf.log) is not left behind
    (one in the temporary directory per refused run, for ever)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    refusing = tmp_path / "perf"
    refusing.write_text("#!/bin/sh\necho 'perf_event_paranoid setting is 4' >&2\nexit 255\n")
    refusing.chmod(0o755)
    for perf in (str(tmp_path / "no-such-perf"), str(refusing)):
        child = Child([sys.executable, "-c", "pass"], gated=True)
        rec = FunctionRecorder(child.pid, freq=499, perf=perf, unwind=Choice("dwarf", "test"))
        try:
            with pytest.raises(Unavailable) as why:
                rec.start()
        finally:
            child.release()
            child.wait()
        assert list(tmp.iterdir()) == [], why.value
    assert "paranoid" in str(why.value)
