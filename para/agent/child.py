"""The profiled command: started stopped (so samplers attach before it runs a single
instruction), signals forwarded, exit status and resource usage collected."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

FORWARDED = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
# si_code of a signal the kernel generated itself: a terminal's Ctrl-C, Ctrl-\ or hang-up,
# which the kernel sends to the whole foreground process group, the command included.
SI_KERNEL = 0x80
# The command stops itself before exec; para attaches, then sends SIGCONT.
_GATE = 'kill -STOP "$$" && exec "$@"'


@dataclass
class Exit:
    code: int  # what para exits with: the command's code, or 128 + signal
    signal: int | None
    utime: float
    stime: float
    maxrss_kb: int

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "exit_code": self.code,
            "cpu_user_s": round(self.utime, 3),
            "cpu_system_s": round(self.stime, 3),
            "max_rss_bytes": self.maxrss_kb * 1024,
        }
        if self.signal is not None:
            d["signal"] = signal.Signals(self.signal).name
        return d


class Child:
    """Runs CMD; `gated=True` holds it stopped until `release()`."""

    def __init__(
        self, cmd: list[str], gated: bool = True, on_signal: Callable[[str], None] | None = None
    ):
        argv = ["/bin/sh", "-c", _GATE, "para", *cmd] if gated else cmd
        self.cmd = cmd
        self.proc = subprocess.Popen(argv, preexec_fn=_unblock_forwarded)
        self.pid = self.proc.pid
        self.say = on_signal or (lambda msg: None)
        self.signals_seen: list[str] = []
        self._waiter: threading.Thread | None = None
        if gated:
            _, status = os.waitpid(self.pid, os.WUNTRACED)
            if not os.WIFSTOPPED(status):
                raise OSError(f"could not start {cmd[0]} (status {status})")

    def release(self, timeout: float = 2.0) -> None:
        """Let the command run; return once it has exec'd (so what is sampled is the command,
        not the gate)."""
        gate = f"/proc/{self.pid}/cmdline"
        try:
            with open(gate, "rb") as f:
                before = f.read()
        except OSError:
            before = b""
        os.kill(self.pid, signal.SIGCONT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with open(gate, "rb") as f:
                    if f.read() != before:
                        return
            except OSError:
                return  # already gone
            time.sleep(0.0005)

    def forward_signals(self) -> None:
        """Take over the signals para receives (call before any other thread starts, so every
        thread inherits the blocked mask) and hand them to the command."""
        signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
        self._waiter = threading.Thread(target=self._signals, name="para-signals", daemon=True)
        self._waiter.start()

    def _signals(self) -> None:
        while True:
            info = signal.sigwaitinfo(FORWARDED)
            name = signal.Signals(info.si_signo).name
            self.signals_seen.append(name)
            if info.si_code == SI_KERNEL:
                self.say(
                    f"{name} from the terminal reached {self.cmd[0]} too; waiting for it to end"
                )
                continue
            try:
                os.kill(self.pid, info.si_signo)
                self.say(f"got {name}; passed it on to {self.cmd[0]} (pid {self.pid})")
            except ProcessLookupError:
                self.say(f"got {name}; {self.cmd[0]} has already ended")

    def wait(self) -> Exit:
        """Reap the command: exit code (128 + N when killed by signal N) and its CPU usage,
        children it waited for included."""
        while True:
            try:
                _, status, ru = os.wait4(self.pid, 0)
                break
            except InterruptedError:
                continue
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        code = 128 + sig if sig is not None else os.WEXITSTATUS(status)
        return Exit(code, sig, ru.ru_utime, ru.ru_stime, ru.ru_maxrss)

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.kill(self.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def block_forwarded() -> None:
    """Hold the signals para forwards from the start, before libraries start threads of their
    own at import (pyarrow does): every thread inherits the mask, so each signal reaches the
    waiter of forward_signals rather than a thread that lets it kill para."""
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)


def _unblock_forwarded() -> None:
    """In the command's process before exec: it gets the signals as it would without para."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)


def make_subreaper() -> bool:
    """Orphaned descendants re-parent to para rather than init: the job's tree stays whole."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False
