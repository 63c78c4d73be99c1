"""`para profile --functions`: call-stack sampling of the command with `perf record`.

perf attaches to the command while it is still held at the gate, with its events disabled,
and is enabled through its control pipe: no instruction of the command goes unsampled and
para knows when perf is ready.  At the end, `perf script` output is folded (Cython kernel)
into per-second stacks for the .para file's `stacks` table.
"""

from __future__ import annotations

import mmap
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from para.agent import binaries
from para.agent.samplers.base import Unavailable
from para.agent.unwind import Choice, fallback
from para.cython_ext import load

fold = load("fold")

ATTACH_TIMEOUT = 10.0
SCRIPT_TIMEOUT = 600.0  # `perf script` of one recording, at most
HURRY_S = 10.0  # what `perf script` still gets once para is stopping


def perf_binary(perf: str = "perf") -> str:
    path = shutil.which(perf)
    if path is None:
        raise Unavailable(
            "perf is not installed (Debian/Ubuntu: apt install linux-perf; RHEL: dnf install perf)"
        )
    return path


class FunctionRecorder:
    def __init__(self, pid: int, freq: int = 499, event: str = "cycles", perf: str = "perf",
                 unwind: Choice | None = None, workdir: str | Path | None = None):  # fmt: skip
        self.pid = pid
        self.freq = freq
        self.event = event
        self.perf = perf
        self.unwind = unwind or Choice("fp", "frame pointers (the default)")
        # The command is held at the gate before its exec: what perf would read of it from
        # /proc is the pre-exec process (para's fork), whose maps perf 6.1 keeps across the
        # exec; its dwarf unwinder then lost the callers of every libc frame in most runs.
        # The exec'd program's own maps come as events.
        self.synth = ["--synth=no"]
        # perf.data and perf script's text: in the agent's spool (its next start removes what a
        # killed agent left), for `para profile` in TMPDIR
        self._dir = tempfile.mkdtemp(prefix="para-perf-", dir=workdir)
        self.data = Path(self._dir) / "perf.data"
        self.proc: subprocess.Popen[bytes] | None = None
        # perf's exit statuses that mean it was stopped as asked, not that it failed
        self.stopped_statuses = {0}
        self._ctl_w: int | None = None
        self._ack_r: int | None = None
        self.instructions: list[list[Any]] = []  # rows of instr_samples, after finish()
        self.log = Path(self._dir) / "perf.log"
        self.info: dict[str, Any] = {"frequency_hz": freq, "requested_event": event}
        # Python stacks of the job's CPython processes (pystacks.PySpyRecorder), stitched
        # onto perf's samples at the end
        self.python: Any = None
        # more `perf script` options (the agent's windows: --time, to cut where the next began)
        self.script_args: list[str] = []
        # longest `perf script` may take before it is killed (a hung decoder must not hold
        # the agent's window, nor run on unseen); hurry() shortens it when para stops
        self.script_timeout_s = SCRIPT_TIMEOUT
        self.script_hung = False
        self._hurry = threading.Event()

    def start(self) -> None:
        """Attach to the (stopped) command; returns once perf samples it.  An unwinding mode
        perf refuses here (LBR without the hardware event, ...) falls back to the next."""
        tried = []
        choice: Choice | None = self.unwind
        try:
            while choice is not None:
                self.unwind = choice
                try:
                    self._start()
                    break
                except Unavailable as e:
                    tried.append(f"{choice.mode}: {e}")
                    choice = fallback(choice)
            else:
                raise Unavailable("; ".join(tried))
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)  # finish() is never called then
            raise
        self.info.update(self.unwind.as_dict())

    def _start(self) -> None:
        perf = perf_binary(self.perf)
        ctl_r, ctl_w = os.pipe()
        ack_r, ack_w = os.pipe()
        argv = [
            perf, "record", "-e", self.event, "-F", str(self.freq), *self.unwind.perf_args(),
            "-k", "CLOCK_MONOTONIC", "-D", "-1", "--control", f"fd:{ctl_r},{ack_w}",
            *self.synth, "-p", str(self.pid), "-o", str(self.data),
        ]  # fmt: skip
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                argv, pass_fds=(ctl_r, ack_w), stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        os.close(ctl_r)
        os.close(ack_w)
        # Both pipes stay open while perf runs: perf quits when the control pipe hangs up
        # under it (see stop()), and dies of SIGPIPE acknowledging a command on a closed one.
        self._ctl_w, self._ack_r = ctl_w, ack_r
        try:
            os.write(ctl_w, b"enable\n")
            ack = _read_with_timeout(ack_r, ATTACH_TIMEOUT)
        except BrokenPipeError:  # perf has ended already (refused its arguments)
            ack = b""
        if not ack.startswith(b"ack"):
            self.stop()
            self.proc = None
            if self.synth and "unknown option `synth" in self._log_text():  # perf < 5.12
                self.synth = []
                return self._start()
            raise Unavailable(f"perf record did not start: {self._log_tail()}")

    def _log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def _log_tail(self) -> str:
        text = self._log_text().strip().splitlines()
        return " / ".join(text[-3:]) or "no output"

    def stop(self) -> None:
        """perf record ends by itself once the command and every process it left have
        exited; else it is told to stop through its control pipe.  The pipe is closed only
        once perf has ended: perf 6.1 quits with "Thread and evlist pollfd index mismatch",
        its file's data size never written (no samples), when the pipe hangs up under it.
        Not a signal: perf inherits para's blocked SIGINT/SIGTERM (Child.forward_signals)."""
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None and self._ctl_w is not None:
                try:
                    os.write(self._ctl_w, b"stop\n")
                except OSError:
                    pass  # perf has just ended (EPIPE)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # a perf without the "stop" command
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            for fd in (self._ctl_w, self._ack_r):
                if fd is not None:
                    os.close(fd)
            self._ctl_w = self._ack_r = None

    def finish(self) -> list[list[Any]]:
        """Stop, fold, clean up: rows for the stacks table (time of each 1-second bucket)."""
        self.stop()
        try:
            if not self.data.exists() or self.data.stat().st_size == 0:
                self.info["error"] = f"perf record wrote no data: {self._log_tail()}"
                return []
            self.info["perf_data_bytes"] = self.data.stat().st_size
            # perf's clock is CLOCK_MONOTONIC: shift its stamps onto the wall clock.
            offset = time.time() - time.monotonic()
            text = Path(self._dir) / "perf.script"
            # no period field: each sample counts 1, so counts are samples
            fields = "comm,pid,tid,time,event,ip,sym,symoff,dso"
            argv = [perf_binary(self.perf), "script", "-i", str(self.data), "-F", fields,
                    *self.script_args]  # fmt: skip
            if not self._script(argv, text):
                self.script_hung = True
                self.info["error"] = (
                    f"perf script did not finish within {self.script_timeout_s:g} s (hung): "
                    "killed, this recording's stacks are lost"
                )
                return []
            folded = _fold_file(text)
            self.instructions = instruction_rows(text.read_bytes())
            if self.python is not None:
                stitched = self.python.stitch(text, folded, self.freq)
            else:
                stitched = [(*r, "perf", "cpu") for r in folded]
            self.info.update(leaf_facts(self.instructions))
            rows = []
            total = 0
            for bucket, pid, tid, comm, stack, count, source, state in stitched:
                rows.append([int((bucket + offset) * 1000), pid, tid, comm, stack, count,
                             source, state])  # fmt: skip
                total += count if state == "cpu" else 0
            self.info.update(samples=total, stacks=len(rows), event=self._event_used())
            rc = self.proc.returncode if self.proc is not None else 0
            if not total and rc not in self.stopped_statuses:
                self.info["error"] = f"perf record failed (status {rc}): {self._log_tail()}"
            if self.python is not None:
                self.info["python"] = self.python.info
            return rows
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)

    def hurry(self) -> None:
        """para is stopping: a `perf script` still running gets HURRY_S more, then is killed."""
        self._hurry.set()

    def _script(self, argv: list[str], out_path: Path) -> bool:
        """Run `perf script` into out_path; False when it outlived its timeout and was
        killed.  It runs in a session of its own, and what is killed is that session's
        process group: perf and what it started (addr2line, objdump), nothing else."""
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.DEVNULL,
                                    stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + self.script_timeout_s
        hurried = False
        while True:
            if self._hurry.is_set() and not hurried:
                hurried = True
                deadline = min(deadline, time.monotonic() + HURRY_S)
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                proc.wait(timeout=min(left, 0.25))
                return True
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        return False

    def _event_used(self) -> str:
        """perf falls back from cycles to cpu-clock where the PMU is missing; say which ran."""
        try:
            out = subprocess.run(
                [perf_binary(self.perf), "evlist", "-i", str(self.data)],
                capture_output=True, text=True, check=False, timeout=60,
            )  # fmt: skip
        except subprocess.TimeoutExpired:  # run() has killed it
            return self.event
        names = [ln.strip() for ln in out.stdout.splitlines() if ln.strip() and "dummy" not in ln]
        return names[0] if names else self.event


_HEADER = re.compile(rb"^\S.*?\s(\d+)(?:/(\d+))?\s")
# a leaf line: "\t    55e1c2a0 func+0x1f (/usr/lib/x.so)", or without the offset where perf
# knows no symbol ("[unknown]") or prints none
_FRAME = re.compile(rb"^\s+([0-9a-f]+)\s+(.+?)(?:\+0x([0-9a-f]+))?\s+\((.*)\)\s*$")
# the binaries whose identity is kept: those with the most leaf samples
MAX_BINARIES = 64


# The outermost frame of a thread whose stack was unwound whole: the program's entry, a
# thread's start (glibc's clone3 or start_thread, musl's), the dynamic loader's entry.
ROOT_FRAMES = frozenset({
    "_start", "__libc_start_main", "_dl_start_user", "_dl_start", "clone", "clone3", "__clone",
    "__clone3", "__GI___clone", "__GI___clone3", "start_thread", "thread_start",
})  # fmt: skip


def unwound(rows: list[list[Any]]) -> dict[str, int]:
    """Of the stacks table's rows (`finish`), how many CPU samples were unwound to their
    thread's start (the rest lost their callers: code without frame pointers under fp, a
    stack deeper than dwarf's copy).  A sample py-spy gave its Python stack counts as
    whole: py-spy reads every Python frame."""
    whole = 0
    for _, _, _, _, stack, n, source, state in rows:
        if state == "cpu" and (source == "py-spy" or stack.split(";", 1)[0] in ROOT_FRAMES):
            whole += n
    return {"unwound_samples": whole}


def is_kernel_dso(dso: str) -> bool:
    return dso.startswith("[kernel") or dso.endswith("vmlinux") or "/vmlinux-" in dso


def leaf_facts(rows: list[list[Any]]) -> dict[str, Any]:
    """What the instruction rows say about the recording: how many samples were in the
    kernel (none: perf sampled user space only), and the identity of the binaries they fell
    in, taken now, right after the run (build id, size, mtime), so that the report can tell
    whether a binary it disassembles later is still the one that ran."""
    per_dso: Counter[str] = Counter()
    kernel = 0
    for _, dso, _, _, n in rows:
        per_dso[dso] += n
        if is_kernel_dso(dso):
            kernel += n
    ids: dict[str, dict[str, Any]] = {}
    for dso, _ in per_dso.most_common():
        if len(ids) >= MAX_BINARIES:
            break
        if dso.startswith("/"):
            ident = binaries.identity(dso)
            if ident is not None:
                ids[dso] = ident
    return {"kernel_samples": kernel, "binaries": ids}


def _leaf(pid: int, f: re.Match[bytes]) -> tuple[int, str, str, int | None]:
    off = int(f.group(3), 16) if f.group(3) is not None else None
    return (pid, f.group(4).decode(errors="replace"), f.group(2).decode(errors="replace"), off)


def instruction_rows(text: bytes) -> list[list[Any]]:
    """[pid, dso, symbol, offset, samples] for each sampled instruction of `perf script -F
    comm,pid,tid,time,event,ip,sym,symoff,dso` output: the first frame of each sample is
    where the CPU was (rows of the instr_samples table)."""
    counts: Counter[tuple[int, str, str, int | None]] = Counter()
    pid = -1
    want_leaf = False
    # a leaf perf printed as inlined into another function (DWARF unwinding): its code is
    # the next frame at the same address, the function a disassembly finds; where perf
    # names none, the leaf is counted as printed
    inlined: tuple[bytes, tuple[int, str, str, int | None]] | None = None
    for line in text.splitlines():
        if not (line[:1].isspace() and line.strip()):  # a sample's header, or a blank
            if inlined is not None:
                counts[inlined[1]] += 1
                inlined = None
            want_leaf = False
            if line.strip():
                m = _HEADER.match(line)
                pid = int(m.group(1)) if m else -1
                want_leaf = True
            continue
        if not want_leaf and inlined is None:
            continue  # a caller's frame: only the leaf is read
        f = _FRAME.match(line)
        if inlined is not None:
            at, leaf = inlined
            inlined = None
            if f is None or f.group(1) != at:
                counts[leaf] += 1
            elif f.group(4) == b"inlined":  # inlined in turn
                inlined = (at, leaf)
            else:
                counts[_leaf(pid, f)] += 1
            continue
        want_leaf = False
        if f is None:
            continue  # a leaf line perf printed in another form
        if f.group(4) == b"inlined":
            inlined = (f.group(1), _leaf(pid, f))
        else:
            counts[_leaf(pid, f)] += 1
    if inlined is not None:
        counts[inlined[1]] += 1
    # no offset (None) sorts before the offsets of its function
    return [[p, d, s, o, n] for (p, d, s, o), n in
            sorted(counts.items(), key=lambda kv: (*kv[0][:3], -1 if kv[0][3] is None
                                                   else kv[0][3]))]  # fmt: skip


def _fold_file(path: Path) -> list[tuple[float, int, int, str, str, int]]:
    """Fold in place from a memory map: long runs print hundreds of MB of perf script."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return []
        # pages read in at once (MAP_POPULATE): faulted in one by one they cost as much as
        # the folding
        populate = getattr(mmap, "MAP_POPULATE", 0)
        flags = (
            {"flags": mmap.MAP_SHARED | populate, "prot": mmap.PROT_READ}
            if populate
            else {"access": mmap.ACCESS_READ}
        )
        with mmap.mmap(f.fileno(), 0, **flags) as m:
            return fold.fold_timed(m)


def _read_with_timeout(fd: int, timeout: float) -> bytes:
    import select

    ready, _, _ = select.select([fd], [], [], timeout)
    return os.read(fd, 64) if ready else b""
