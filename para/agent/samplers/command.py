"""Run an external tool every N seconds without ever waiting for it.

ipmitool talks to a BMC that can take seconds to answer, and `lmutil lmstat` to a license
server across the network that can hang for minutes: the sampler only starts the command
when it is due and, at each later sample, looks whether it has finished (poll(), no wait).
One that runs past its timeout is killed with its whole process group and reported.  Output
goes to an unlinked temporary file, so a chatty tool never blocks on a full pipe.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import IO

from para.agent.samplers.base import Unavailable


@dataclass
class Run:
    argv: list[str]
    started: float  # wall clock
    duration: float
    returncode: int | None  # None: killed at the timeout
    stdout: str
    stderr: str

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    def why(self) -> str:
        """A one-line reason this run gave nothing usable."""
        if self.timed_out:
            return f"`{' '.join(self.argv)}` did not finish within {self.duration:.0f} s (killed)"
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        first = text[0] if text else "no output"
        return f"`{' '.join(self.argv)}` exited with status {self.returncode}: {first}"


def find_program(name: str, what: str, hint: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise Unavailable(f"{what}: '{name}' is not installed or not on PATH; {hint}")
    return exe


class PeriodicCommand:
    def __init__(self, argv: list[str], every_s: float, timeout_s: float):
        self.argv = argv
        self.every_s = every_s
        self.timeout_s = timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None
        self._err: IO[bytes] | None = None
        self._started_mono = 0.0
        self._started_wall = 0.0
        self._due = 0.0  # monotonic; 0: at the first poll
        self.runs = 0
        self.timeouts = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def poll(self, now: float | None = None) -> Run | None:
        """Start the command if it is due; return the run that has just finished, if any."""
        now = time.monotonic() if now is None else now
        if self.proc is not None:
            rc = self.proc.poll()
            if rc is not None:
                return self._collect(rc, now)
            if now - self._started_mono > self.timeout_s:
                self._kill()
                self.timeouts += 1
                return self._collect(None, now)
            return None
        if now >= self._due:
            self._start(now)
        return None

    def _start(self, now: float) -> None:
        # closed in _collect() or close(), once the command has finished with them
        self._out = tempfile.TemporaryFile()  # noqa: SIM115
        self._err = tempfile.TemporaryFile()  # noqa: SIM115
        self._started_mono = now
        self._started_wall = time.time()
        self._due = now + self.every_s
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
            start_new_session=True,  # its own group: a timeout kills what it started too
            env={**os.environ, "LC_ALL": "C"},
        )
        self.runs += 1

    def _kill(self) -> None:
        proc = self.proc
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        proc.wait()

    def _collect(self, rc: int | None, now: float) -> Run:
        out = _drain(self._out)
        err = _drain(self._err)
        self._out = self._err = None
        self.proc = None
        return Run(self.argv, self._started_wall, now - self._started_mono, rc, out, err)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self._kill()
        self.proc = None
        for f in (self._out, self._err):
            if f is not None:
                f.close()
        self._out = self._err = None


def _drain(f: IO[bytes] | None) -> str:
    if f is None:
        return ""
    try:
        f.seek(0)
        return f.read(4 << 20).decode(errors="replace")
    finally:
        f.close()
