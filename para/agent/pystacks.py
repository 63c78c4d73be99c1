"""Python call stacks for `para profile --functions` (py-spy stitched onto perf's samples).

perf samples a CPython process inside the interpreter's own C functions
(`_PyEval_EvalFrameDefault`, `_PyObject_Malloc` ...), which name no function of the user's
program.  So every process of the job that runs CPython also gets a py-spy, which reads the
Python stack of each of its threads from the process's memory a hundred times a second
(`--nonblocking`: the process is never stopped, so it costs the job next to nothing) and
writes when each thread's stack changed (`--format chrometrace`, `--idle`: sleeping and
blocked threads too).  At the end, each perf sample of such a thread takes the Python stack
the thread had at that instant, and keeps the native frames perf saw below the interpreter
(numpy, BLAS, a C extension, the kernel) under its Python caller.

perf's cpu-clock samples a thread only while it runs on a CPU, py-spy sees it all the time:
the time py-spy saw a thread in a stack, less the samples perf took of it there, is the time
it spent off-CPU in that stack: runnable but waiting for a CPU (state "ready", the kernel's
run-queue time of the thread, /proc/PID/task/TID/schedstat), or waiting for something
(state "wait": sleep, I/O, a lock, the GIL).  Those rows are in perf-sample units
(1/frequency seconds), so a thread waiting for the GIL is never a hotspot of its function
and "where the time goes" separates CPU from waiting.

Where py-spy is missing or cannot read a process (no ptrace permission, a container, an
interpreter it does not know), that is said once and the process keeps perf's own stacks.

Python 3.12+ can instead give perf the Python functions itself (`-X perf`, perf maps); it is
not used: with an interpreter built without frame pointers (pyenv's, python.org's) perf's
frame-pointer unwinding finds no Python frame at all and `--call-graph dwarf` only the leaf
one, at a hundred times the data (docs/benchmarks.md, issue 12).
"""

from __future__ import annotations

import array
import bisect
import datetime
import json
import math
import mmap
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from para.agent.samplers.base import Unavailable
from para.cython_ext import fold_py

DEFAULT_RATE = 100  # py-spy samples per second (it only places perf's samples in time)
ROTATE_S = 60.0  # a py-spy keeps its whole trace in memory: a fresh one every minute
POLL_S = 0.1  # how often py-spys are checked on and the threads of each process listed
# How often the job's tree is looked at for new processes: cheap while the kernel hands out
# no pid (/proc/loadavg), and each moment a new process goes without a py-spy its perf
# samples have no Python stack (a pool worker's first tens of milliseconds, issue 12).
SCAN_S = 0.05  # 0.6 % of a core in all for the follower, 0.4 % at 0.1 s (issue 12)
SCHEDSTAT_EVERY = 5  # polls between reads of the threads' run-queue time
MIN_AGE_S = 0.05  # a process this old has exec'd what it runs (fork + exec take far less)
STOP_TIMEOUT = 20.0
INSTALL_HINT = "pip install py-spy (it is a dependency of para: reinstall para)"

# The interpreter itself: its executable, or libpython beside it.
_PYTHON_EXE = re.compile(r"python(\d+(\.\d+)?)?[dmu]*$")
_LIBPYTHON = re.compile(r"/libpython(\d+\.\d+)[dmu]*\.so")
_THREAD = re.compile(r"^thread \((\d+|0[xX][0-9a-fA-F]+)\)(?::\s?(.*))?$")
_CONFIG_LOG = re.compile(
    rb"\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z\s+INFO\s+py_spy::config\]"
)
_SAMPLES = re.compile(rb"Samples: (\d+) Errors: (\d+)")
_STDLIB = re.compile(r"/lib/python\d+\.\d+/(.+)$")
_PY_FRAME = re.compile(r" \([^()]*:\d+\)$")
# In place of the interpreter's frames of a sample py-spy had no Python stack for (before its
# first look at a fresh process, a thread it does not see): the interpreter's functions
# (`_PyEval_EvalFrameDefault`, `_PyObject_Free` ...) are not the program's, and would be
# read as hot functions of it.
NO_PY_STACK = "[Python: no py-spy stack]"


def pyspy_binary(name: str | None = None) -> str:
    """py-spy: the one given (or $PARA_PYSPY), else the one installed beside this
    interpreter (para's dependency, in its virtual environment), else the first on PATH."""
    name = name or os.environ.get("PARA_PYSPY") or None
    if name:
        path = shutil.which(name)
        if path is None:
            raise Unavailable(f"py-spy not found at {name!r} ({INSTALL_HINT})")
        return path
    beside = Path(sys.executable).parent / "py-spy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    path = shutil.which("py-spy")
    if path is None:
        raise Unavailable(f"py-spy is not installed ({INSTALL_HINT})")
    return path


@dataclass(frozen=True)
class Interpreter:
    exe: str  # the process's executable
    lib: str | None  # libpython, when the interpreter is a shared library
    version: str  # "3.11" when it shows in a name, else ""

    def paths(self) -> set[str]:
        return {p for p in (self.exe, self.lib) if p}


def cpython_of(pid: int, proc: str = "/proc") -> Interpreter | None:
    """The CPython interpreter process `pid` runs (its executable is python*, or libpython is
    mapped), or None: another program, or gone."""
    try:
        exe = os.readlink(f"{proc}/{pid}/exe")
    except OSError:
        return None
    exe = exe.removesuffix(" (deleted)")
    lib = None
    version = ""
    try:
        with open(f"{proc}/{pid}/maps", "rb") as f:
            for raw in f:
                if b"libpython" not in raw:
                    continue
                line = raw.decode(errors="replace").rstrip("\n")
                m = _LIBPYTHON.search(line)
                if m:
                    lib = line[line.index("/") :].removesuffix(" (deleted)")
                    version = m.group(1)
                    break
    except OSError:
        return None
    name = os.path.basename(exe)
    m = _PYTHON_EXE.fullmatch(name)
    if lib is None and m is None:
        return None
    if not version and m and m.group(1) and "." in m.group(1):
        version = m.group(1)
    return Interpreter(exe, lib, version)


# -- py-spy's output -------------------------------------------------------------------------


def _log_origin(log: bytes, real_minus_mono: float) -> float | None:
    """py-spy logs its configuration (RUST_LOG=py_spy::config=info) a few microseconds before
    it starts the clock of its trace: that log line's wall-clock stamp, on the monotonic
    clock perf uses."""
    m = _CONFIG_LOG.search(log)
    if m is None:
        return None
    day = datetime.datetime.fromisoformat(m.group(1).decode()).replace(tzinfo=datetime.timezone.utc)
    frac = m.group(2) or b"0"
    return day.timestamp() + int(frac) / 10 ** len(frac) - real_minus_mono


def short_path(filename: str, cwd: str) -> str:
    """A Python file as a reader knows it: inside its package (site-packages), the standard
    library, or the job's working directory; else the full path."""
    if filename.startswith("<"):
        return filename
    for marker in ("/site-packages/", "/dist-packages/"):
        i = filename.rfind(marker)
        if i >= 0:
            return filename[i + len(marker) :]
    m = _STDLIB.search(filename)
    if m:
        return m.group(1)
    if cwd and filename.startswith(cwd.rstrip("/") + "/"):
        return filename[len(cwd.rstrip("/")) + 1 :]
    return filename


def module_of(short: str) -> str:
    """numpy/linalg/_linalg.py -> numpy.linalg._linalg; <frozen importlib._bootstrap> ->
    importlib._bootstrap; /opt/app/run.py -> run."""
    if short.startswith("<frozen ") and short.endswith(">"):
        return short[8:-1]
    if short.startswith("<"):
        return short.strip("<>")
    if short.startswith("/"):
        short = os.path.basename(short)
    mod = short.removesuffix(".py").removesuffix(".pyx").replace("/", ".")
    return mod.removesuffix(".__init__")


def frame_label(name: str, filename: str, line: int, cwd: str) -> str:
    """`module.function (file.py:line)`, line being where the function starts."""
    short = short_path(filename, cwd)
    where = f"{short}:{line}" if line else short
    label = f"{module_of(short)}.{name} ({where})" if short else name
    return label.replace(";", ":")


def is_python_frame(frame: str) -> bool:
    """A frame that py-spy named (`... (file.py:line)`), not a native one from perf."""
    return _PY_FRAME.search(frame) is not None


@dataclass
class Timeline:
    """One thread's Python stacks over time: stack ids[i] from starts[i] to starts[i+1];
    id 0 (the empty stack) where py-spy did not see the thread."""

    starts: list[float] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    last_seen: float | None = None  # the thread was last listed in /proc then
    # the kernel's count of the time it waited, runnable, for a CPU (schedstat), over time
    rq_t: array.array[float] = field(default_factory=lambda: array.array("d"))
    rq_s: array.array[float] = field(default_factory=lambda: array.array("d"))

    def add(self, t: float, sid: int) -> None:
        if self.starts and t <= self.starts[-1]:
            # placed early (half a period) up to or before the last change, e.g. the first
            # stack of the next py-spy: the change before it had no length
            self.ids[-1] = sid
            if len(self.ids) > 1 and self.ids[-2] == sid:
                self.starts.pop()
                self.ids.pop()
            return
        if self.ids and self.ids[-1] == sid:
            return
        self.starts.append(t)
        self.ids.append(sid)

    def at(self, t: float) -> int:
        i = bisect.bisect_right(self.starts, t) - 1
        return self.ids[i] if i >= 0 else 0

    def index(self, t: float) -> int:
        return bisect.bisect_right(self.starts, t) - 1

    def runnable(self, s: float, e: float) -> float:
        """Seconds the thread waited for a CPU between s and e (0 where not measured)."""
        return max(0.0, self._rq(e) - self._rq(s))

    def _rq(self, t: float) -> float:
        ts, vs = self.rq_t, self.rq_s
        if len(ts) < 2:
            return 0.0
        i = bisect.bisect_right(ts, t)
        if i == 0:
            return vs[0]
        if i == len(ts):
            return vs[-1]
        f = (t - ts[i - 1]) / (ts[i] - ts[i - 1])
        return vs[i - 1] + f * (vs[i] - vs[i - 1])


class Stacks:
    """Python stacks interned: id -> frames root-first (id 0: no stack)."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, ...]] = [()]
        self._ids: dict[tuple[str, ...], int] = {(): 0}

    def intern(self, frames: tuple[str, ...]) -> int:
        sid = self._ids.get(frames)
        if sid is None:
            sid = self._ids[frames] = len(self.frames)
            self.frames.append(frames)
        return sid


def parse_trace(
    events: list[dict[str, Any]],
    origin: float,
    rate: float,
    cwd: str,
    stacks: Stacks,
    timelines: dict[tuple[int, int], Timeline],
) -> int:
    """Fold one py-spy chrometrace (B/E events, `ts` in microseconds from `origin`) into the
    threads' timelines; returns the number of stack changes read.  Each change is placed
    half a sampling period early: the stack changed somewhere between the sample before
    and this one."""
    open_frames: dict[tuple[int, int], list[str]] = {}
    os_tid: dict[tuple[int, int], int] = {}
    half = 0.5 / rate
    labels: dict[tuple[str, str, int], str] = {}
    changes = 0
    cur: tuple[tuple[int, int], int] | None = None

    def close(key: tuple[int, int], ts: int) -> None:
        nonlocal changes
        frames = open_frames[key]
        tid = os_tid.get(key)
        if tid is None:
            return
        tl = timelines.setdefault((key[0], tid), Timeline())
        t = origin + ts / 1e6
        tl.add(t - half if frames[1:] else t, stacks.intern(tuple(frames[1:])))
        changes += 1

    for e in events:
        try:
            key = (int(e["pid"]), int(e["tid"]))
            ts = int(e["ts"])
            ph = e["ph"]
            name = str(e["name"])
        except (KeyError, TypeError, ValueError):
            continue
        if cur is not None and cur != (key, ts):
            close(*cur)
        cur = (key, ts)
        frames = open_frames.setdefault(key, [])
        if ph == "B":
            if not frames:
                m = _THREAD.match(name)
                if m and m.group(1).isdigit():
                    os_tid[key] = int(m.group(1))
                elif m and key[0] not in {k[0] for k in os_tid}:
                    # no native thread id (older CPython): the main thread is the process
                    os_tid[key] = key[0]
                frames.append(name)
                continue
            args = e.get("args") or {}
            fn = str(args.get("filename") or "")
            line = int(args.get("line") or 0)
            k = (name, fn, line)
            label = labels.get(k)
            if label is None:
                label = labels[k] = frame_label(name, fn, line, cwd)
            frames.append(label)
        elif ph == "E" and frames:
            frames.pop()
    if cur is not None:
        close(*cur)
    return changes


# -- following the job's Python processes ----------------------------------------------------


@dataclass
class _Spy:
    pid: int
    interp: Interpreter
    proc: subprocess.Popen[bytes]
    out: Path
    log: Path
    real_minus_mono: float
    started: float
    cpu_s: float = 0.0  # its CPU time, last read


@dataclass
class _Target:
    pid: int
    interp: Interpreter
    comm: str
    spies: int = 0
    failed: str | None = None
    ended: bool = False


class PySpyRecorder:
    """Finds the CPython processes of the job as they start and keeps a py-spy on each."""

    def __init__(
        self,
        roots: Callable[[], set[int]],
        *,
        adopter: int | None = None,
        exclude: Callable[[], set[int]] | None = None,
        rate: int = DEFAULT_RATE,
        pyspy: str | None = None,
        rotate_s: float = ROTATE_S,
        poll_s: float = POLL_S,
        scan_s: float = SCAN_S,
        cwd: str | None = None,
        on_message: Callable[[str], None] | None = None,
        min_cpu: float = 0.0,
        workdir: Path | None = None,
    ):
        self.roots = roots
        # a CPython process gets its py-spy once it uses this share of a core (the agent's
        # always-on stacks: py-spy reads every thread of an idle process as often as a busy
        # one's, for no CPU sample of perf to place); 0: at once (para profile)
        self.min_cpu = min_cpu
        self._idle: dict[int, tuple[Interpreter, float, float]] = {}  # pid -> since, CPU s
        self.adopter = adopter
        self.exclude = exclude or (lambda: set())
        self.rate = rate
        self.binary = pyspy_binary(pyspy)
        self.rotate_s = rotate_s
        self.poll_s = poll_s
        self.scan_s = min(scan_s, poll_s)
        self.cwd = cwd or os.getcwd()
        self.say = on_message or (lambda m: None)
        self.lock = threading.Lock()  # held while a py-spy starts (see helper_pids)
        self.stacks = Stacks()
        self.timelines: dict[tuple[int, int], Timeline] = {}
        self.targets: dict[int, _Target] = {}
        self._spies: dict[int, _Spy] = {}
        self._pids: set[int] = set()  # every py-spy started (para's helpers, not the job's)
        self._seen: dict[int, float] = {}  # job pid -> when first seen (not yet classified)
        self._due: float | None = None  # when the youngest of them is old enough
        self._others: dict[int, str] = {}  # job pids that are not CPython -> their program
        self._members: set[int] = set()
        self._last_pid = b""
        self._polls = 0
        self._said: set[str] = set()
        self._dir = tempfile.mkdtemp(prefix="para-pyspy-", dir=workdir)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.info: dict[str, Any] = {
            "tool": "py-spy",
            "binary": self.binary,
            "version": _version(self.binary),
            "rate_hz": rate,
            "processes": 0,
            "unreadable": [],
            "pyspy_samples": 0,
            "pyspy_errors": 0,
            "pyspy_cpu_s": 0.0,
            "idle": 0,  # CPython processes not read by py-spy (below min_cpu) now
        }

    # -- the thread ----------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="para-pyspy", daemon=True)
        self._thread.start()

    def helper_pids(self) -> set[int]:
        """py-spy processes, which are para's children but not the job's.  A py-spy being
        started is waited for, so that the process sampler never counts one into the job."""
        with self.lock:
            return set(self._pids)

    def _run(self) -> None:
        next_poll = 0.0
        while True:
            try:
                now = time.monotonic()
                poll = now >= next_poll
                if poll:
                    next_poll = now + self.poll_s
                    self._execs()
                self._scan()
                if poll:
                    self._reap()
                    self._polls += 1
                    self._threads(schedstat=self._polls % SCHEDSTAT_EVERY == 1)
            except Exception as e:  # a bug here must not stop the profile
                self._say_once("error", f"python stacks: {type(e).__name__}: {e}")
            if self._stop.wait(self.next_wait(time.monotonic(), next_poll)):
                return

    def next_wait(self, now: float, next_poll: float) -> float:
        """Seconds until the next look: the next scan for new processes, sooner when a
        process seen too young to classify becomes old enough (a pool worker is not made
        to wait a whole scan more for its py-spy), never past the next poll."""
        at = min(now + self.scan_s, next_poll)
        if self._due is not None:
            at = min(at, self._due)
        return max(0.002, at - now)

    def _say_once(self, key: str, msg: str) -> None:
        if key not in self._said:
            self._said.add(key)
            self.say(msg)

    def _children(self, pid: int) -> set[int]:
        out: set[int] = set()
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return out
        for t in tasks:
            try:
                with open(f"/proc/{pid}/task/{t}/children", "rb") as f:
                    out.update(int(x) for x in f.read().split())
            except (OSError, ValueError):
                continue
        return out

    def _no_new_process(self) -> bool:
        """The last pid the kernel handed out (/proc/loadavg) is unchanged, and no process
        waits to be classified: the tree cannot have grown since the last walk."""
        try:
            with open("/proc/loadavg", "rb") as f:
                last = f.read().rsplit(b" ", 1)[-1]
        except OSError:
            return False
        same = last == self._last_pid and not self._seen
        self._last_pid = last
        return same

    def _execs(self) -> None:
        """A process that was not Python may exec it (a shell's `exec python ...`)."""
        for pid, exe in list(self._others.items()):
            if pid in self._members and _exe(pid) not in (exe, None):
                del self._others[pid]
                self._last_pid = b""

    def _scan(self) -> None:
        """Walk the job's tree from its roots (and what re-parented to para), classify each
        process once it is old enough to have exec'd what it runs (a fork about to exec
        still looks like its parent)."""
        self._wake()
        if self._no_new_process():
            return
        excluded = self.exclude() | self.helper_pids()
        frontier = set(self.roots())
        if self.adopter is not None:
            frontier |= self._children(self.adopter) - excluded
        seen: set[int] = set()
        while frontier:
            pid = frontier.pop()
            if pid in seen or pid in excluded:
                continue
            seen.add(pid)
            frontier |= self._children(pid)
        self._members = seen
        now = time.monotonic()
        roots = self.roots()
        self._due = None
        for pid in seen - self._others.keys() - self.targets.keys() - self._idle.keys():
            first = self._seen.setdefault(pid, now)
            if pid not in roots:
                # the roots have exec'd what they run; a fresh fork may not have: it is
                # classified once it is MIN_AGE_S old (or seen that long, its age unread)
                age = _age(pid)
                due = min(first + MIN_AGE_S, now + MIN_AGE_S - age)
                if due > now:
                    self._due = due if self._due is None else min(self._due, due)
                    continue
            del self._seen[pid]
            interp = cpython_of(pid)
            if interp is None:
                self._others[pid] = _exe(pid) or ""
                continue
            if self.min_cpu > 0:
                self._idle[pid] = (interp, now, _cpu_s(pid, 0.0))
                continue
            self._target(pid, interp)
        self.info["idle"] = len(self._idle)
        for pid in list(self._seen):
            if pid not in seen:
                del self._seen[pid]

    def _target(self, pid: int, interp: Interpreter) -> None:
        self.targets[pid] = _Target(pid, interp, _comm(pid))
        self.info["processes"] += 1
        self._spawn(self.targets[pid])

    def _wake(self) -> None:
        """The CPython processes kept waiting while idle: py-spy for those that used at
        least min_cpu of a core over the last second or more; the gone ones forgotten."""
        now = time.monotonic()
        for pid, (interp, since, cpu0) in list(self._idle.items()):
            if not _alive(pid) or pid not in self._members:
                del self._idle[pid]
                continue
            if now - since < 1.0:
                continue
            cpu = _cpu_s(pid, cpu0)
            if cpu - cpu0 >= self.min_cpu * (now - since):
                del self._idle[pid]
                self._target(pid, interp)
            else:
                self._idle[pid] = (interp, now, cpu)
        self.info["idle"] = len(self._idle)

    def _spawn(self, target: _Target) -> None:
        n = target.spies
        out = Path(self._dir) / f"{target.pid}.{n}.json"
        log = Path(self._dir) / f"{target.pid}.{n}.log"
        argv = [
            self.binary, "record", "-p", str(target.pid), "-r", str(self.rate),
            "--format", "chrometrace", "-o", str(out), "--nonblocking", "--idle",
            "--threads", "--function", "--duration", str(max(1, int(self.rotate_s))),
        ]  # fmt: skip
        env = dict(os.environ, RUST_LOG="warn,py_spy::config=info")
        with self.lock, open(log, "wb") as lf:
            offset = time.time() - time.monotonic()
            try:
                proc = subprocess.Popen(
                    argv, stdout=lf, stderr=lf, stdin=subprocess.DEVNULL, env=env,
                    start_new_session=True,
                )  # fmt: skip
            except OSError as e:
                target.failed = f"py-spy did not start: {e}"
                self._unreadable(target)
                return
            self._pids.add(proc.pid)
        target.spies += 1
        self._spies[target.pid] = _Spy(target.pid, target.interp, proc, out, log, offset,
                                       time.monotonic())  # fmt: skip

    def _reap(self, final: bool = False) -> None:
        for pid, spy in list(self._spies.items()):
            spy.cpu_s = _cpu_s(spy.proc.pid, spy.cpu_s)  # a zombie still has its times
            if spy.proc.poll() is None:
                continue
            del self._spies[pid]
            self.info["pyspy_cpu_s"] = round(self.info["pyspy_cpu_s"] + spy.cpu_s, 3)
            target = self.targets[pid]
            ok = self._read(spy, target)
            alive = _alive(pid) and cpython_of(pid) is not None
            if not ok and target.failed is None and alive:
                target.failed = _reason(spy.log)
            if target.failed is not None:
                self._unreadable(target)
            elif alive and not final:
                self._spawn(target)  # this py-spy ran its time: the next one goes on
            else:
                target.ended = True

    def _read(self, spy: _Spy, target: _Target) -> bool:
        """Fold one finished py-spy's trace into the timelines; False when it wrote none."""
        try:
            log = spy.log.read_bytes()
        except OSError:
            log = b""
        m = _SAMPLES.search(log)
        if m:
            self.info["pyspy_samples"] += int(m.group(1))
            self.info["pyspy_errors"] += int(m.group(2))
        try:
            data = spy.out.read_bytes()
        except OSError:
            return False
        finally:
            spy.out.unlink(missing_ok=True)
        origin = _log_origin(log, spy.real_minus_mono)
        if origin is None:
            origin = spy.started  # within a few milliseconds of it
        try:
            events = json.loads(data)
        except ValueError:
            return False
        if not isinstance(events, list):
            return False
        parse_trace(events, origin, self.rate, self.cwd, self.stacks, self.timelines)
        spy.log.unlink(missing_ok=True)
        return True

    def _unreadable(self, target: _Target) -> None:
        reason = target.failed or "unknown"
        self.info["unreadable"].append(
            {"pid": target.pid, "exe": target.interp.exe, "reason": reason}
        )
        self._say_once(
            f"fail:{reason}",
            f"--functions: py-spy cannot read the Python stacks of pid {target.pid} "
            f"({os.path.basename(target.interp.exe)}): {reason}; its perf stacks are kept "
            "(said once for all processes that fail alike)",
        )

    def _threads(self, schedstat: bool = False) -> None:
        """When each thread of a sampled process was last there (py-spy's trace keeps a
        thread that ended in its last stack until py-spy stops), and with `schedstat` how
        long it has waited for a CPU: off-CPU is not all waiting for something."""
        now = time.monotonic()
        for pid in self._spies:
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for t in tids:
                tl = self.timelines.get((pid, int(t)))
                if tl is None:
                    tl = self.timelines[(pid, int(t))] = Timeline()
                tl.last_seen = now
                if schedstat:
                    try:
                        with open(f"/proc/{pid}/task/{t}/schedstat", "rb") as f:
                            rq = int(f.read().split()[1]) / 1e9
                    except (OSError, IndexError, ValueError):
                        continue
                    tl.rq_t.append(now)
                    tl.rq_s.append(rq)

    # -- the end -----------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop following, let every py-spy write its trace (SIGINT), and read them all."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=STOP_TIMEOUT)
            self._thread = None
        self._threads(schedstat=True)
        for spy in self._spies.values():
            if spy.proc.poll() is None:
                try:
                    spy.proc.send_signal(signal.SIGINT)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + STOP_TIMEOUT
        for spy in self._spies.values():
            try:
                spy.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                spy.proc.kill()
                spy.proc.wait()
        self._reap(final=True)

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    # -- stitching -------------------------------------------------------------------------
    def stitch(
        self, script: Path, folded: list[tuple[float, int, int, str, str, int]], freq: float
    ) -> list[tuple[float, int, int, str, str, int, str, str]]:
        """perf's folded rows with the CPython processes' own replaced (see `stitch`)."""
        targets = {pid: t.interp for pid, t in self.targets.items() if t.failed is None}
        comms = {pid: t.comm for pid, t in self.targets.items()}
        rows, counts = stitch(script, folded, freq, targets, self.timelines, self.stacks,
                              comms, self.poll_s)  # fmt: skip
        self.info.update(counts)
        return rows


Row = tuple[float, int, int, str, str, int, str, str]


def stitch(
    script: Path,
    folded: list[tuple[float, int, int, str, str, int]],
    freq: float,
    targets: dict[int, Interpreter],
    timelines: dict[tuple[int, int], Timeline],
    stacks: Stacks,
    comms: dict[int, str] | None = None,
    poll_s: float = POLL_S,
) -> tuple[list[Row], dict[str, int]]:
    """perf's folded rows (`fold_timed` of `script`, the `perf script` text) with those of
    the CPython processes `targets` replaced: each sample of a thread py-spy saw gets its
    Python stack, the native frames below the interpreter kept under it; samples py-spy has
    no stack for keep perf's, the interpreter's frames in them made one NO_PY_STACK.  Plus
    the rows of waiting: the time py-spy saw a thread in a stack less the samples perf took
    of it there, times perf's frequency `freq`.  Rows are
    (second, pid, tid, comm, stack, samples, source, state); and the counts of each kind."""
    comms = comms or {}
    out: list[Row] = [(*r, "perf", "cpu") for r in folded if r[1] not in targets]
    if not targets:
        return out, {}
    interp = {pid: {x.encode() for x in i.paths()} for pid, i in targets.items()}
    cpu: dict[tuple[int, int, int, str, str, str], int] = {}
    on_cpu: dict[tuple[int, int, int], int] = {}  # (pid, tid, segment) -> samples
    thread_comm: dict[tuple[int, int], str] = {}
    joined: dict[int, str] = {}
    names = FrameNames()
    stitched = unplaced = 0
    for pid, tid, comm, t, block in perf_samples(script, set(targets)):
        thread_comm[(pid, tid)] = comm
        bucket = math.floor(t)
        tl = timelines.get((pid, tid))
        i = tl.index(t) if tl is not None else -1
        sid = tl.ids[i] if tl is not None and i >= 0 else 0
        if sid and tl is not None and tl.last_seen is not None and t > tl.last_seen + 1:
            sid = 0
        if not sid:
            unplaced += 1
            native, in_python = names.below_interpreter(block, interp[pid])
            stack = ";".join([NO_PY_STACK, *native]) if in_python else names.stack(block)
            key = (bucket, pid, tid, comm, stack, "perf")
        else:
            stitched += 1
            on_cpu[(pid, tid, i)] = on_cpu.get((pid, tid, i), 0) + 1
            py = joined.get(sid)
            if py is None:
                py = joined[sid] = ";".join(stacks.frames[sid])
            native = names.native_below(block, interp[pid])
            key = (bucket, pid, tid, comm, ";".join([py, *native]) if native else py, "py-spy")
        cpu[key] = cpu.get(key, 0) + 1
    for (b, pid, tid, comm, stack, src), n in cpu.items():
        out.append((b, pid, tid, comm, stack, n, src, "cpu"))
    totals = {"wait": 0, "ready": 0}
    waits = _waits(targets, timelines, on_cpu, freq, poll_s)
    for (b, pid, tid, sid, state), amount in sorted(waits.items()):
        k = round(amount)
        if k > 0:
            comm = thread_comm.get((pid, tid)) or comms.get(pid, "")
            py = joined.get(sid)
            if py is None:
                py = joined[sid] = ";".join(stacks.frames[sid])
            out.append((b, pid, tid, comm, py, k, "py-spy", state))
            totals[state] += k
    out.sort()
    threads = len({k for k, tl in timelines.items() if k[0] in targets and any(tl.ids)})
    return out, {"stitched_samples": stitched, "perf_only_samples": unplaced,
                 "wait_samples": totals["wait"], "ready_samples": totals["ready"],
                 "threads": threads}  # fmt: skip


def _waits(
    targets: dict[int, Interpreter],
    timelines: dict[tuple[int, int], Timeline],
    on_cpu: dict[tuple[int, int, int], int],
    freq: float,
    poll_s: float,
) -> dict[tuple[int, int, int, int, str], float]:
    """Off-CPU samples of each stack segment: its length times perf's frequency, less the
    samples perf took in it; of them, those the thread spent runnable, waiting for a CPU
    (the kernel's run-queue time), are "ready", the rest "wait"; spread over the seconds
    the segment covers.  Keys (second, pid, tid, stack id, state)."""
    out: dict[tuple[int, int, int, int, str], float] = {}
    for (pid, tid), tl in timelines.items():
        if pid not in targets:
            continue
        for i in range(len(tl.starts) - 1):
            sid = tl.ids[i]
            if not sid:
                continue
            s, e = tl.starts[i], tl.starts[i + 1]
            if tl.last_seen is not None:
                e = min(e, tl.last_seen + poll_s)
            if e <= s:
                continue
            off = (e - s) * freq - on_cpu.get((pid, tid, i), 0)
            if off <= 0:
                continue
            ready = min(off, tl.runnable(s, e) * freq)
            b = math.floor(s)
            while b < e:
                part = (min(e, b + 1) - max(s, b)) / (e - s)
                if part > 0:
                    for state, n in (("ready", ready), ("wait", off - ready)):
                        if n > 0:
                            k = (b, pid, tid, sid, state)
                            out[k] = out.get(k, 0.0) + n * part
                b += 1
    return out


class FrameNames:
    """Stack lines of `perf script` named as `para fold` names them, each distinct line
    (address left out) tidied once."""

    def __init__(self) -> None:
        self._seen: dict[bytes, list[str]] = {}

    def names(self, line: bytes) -> list[str]:
        """The frames of one stack line, in perf's order (an inlined chain is several)."""
        rest = line.lstrip()
        sp = rest.find(b" ")
        key = rest[sp + 1 :] if sp >= 0 else rest
        got = self._seen.get(key)
        if got is None:
            parts = fold_py.match_frame(line)
            funcs = (fold_py.frame_funcs(*parts, java=False, kernel=False, jit=False,
                                         addrs=False) if parts else None)  # fmt: skip
            got = [f.decode("utf-8", "surrogateescape") for f in funcs or ()]
            if len(self._seen) < 1_000_000:
                self._seen[key] = got
        return got

    def native_below(self, block: bytes, interp: set[bytes]) -> list[str]:
        """The native frames under the Python code, root-first: the stack lines of one
        sample (leaf first, as perf prints them) up to the first frame of the interpreter
        (or one perf could not place): what a C extension, a library it calls or the
        kernel ran.  Only these lines are read."""
        return self.below_interpreter(block, interp)[0]

    def below_interpreter(self, block: bytes, interp: set[bytes]) -> tuple[list[str], bool]:
        """`native_below`, and whether a frame of the interpreter was reached (the thread
        was running Python code, not only native code)."""
        out: list[str] = []
        hit = False
        pos, size = 0, len(block)
        while pos < size:
            nl = block.find(b"\n", pos)
            if nl < 0:
                nl = size
            line = block[pos:nl]
            pos = nl + 1
            i = line.rfind(b" (")
            if i < 0 or not line.endswith(b")"):
                continue
            dso = line[i + 2 : -1]
            if dso in interp or b"/libpython" in dso:
                hit = True
                break
            if dso == b"[unknown]":
                break
            out.extend(reversed(self.names(line)))
        out.reverse()
        return out, hit

    def stack(self, block: bytes) -> str:
        """The whole stack of one sample, root-first, as `para fold` joins it."""
        out: list[str] = []
        for line in block.split(b"\n"):
            out[:0] = self.names(line)
        return ";".join(out)


def perf_samples(script: Path, pids: set[int]) -> Iterator[tuple[int, int, str, float, bytes]]:
    """(pid, tid, comm, time, stack lines) of each sample of `pids` in `perf script -F
    comm,pid,tid,time,event,ip,sym,symoff,dso` output, the first event seen being the one
    kept, as `para fold` does.  Samples are cut at blank lines in place (a memory map): the
    samples of other processes are skipped without being read line by line."""
    if not script.exists() or script.stat().st_size == 0:
        return
    wanted = b""
    with open(script, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        pos, size = 0, len(m)
        while pos < size:
            end = m.find(b"\n\n", pos)
            if end < 0:
                return  # like `para fold`, a last sample without its blank line is dropped
            nl = m.find(b"\n", pos, end)
            head_end = end if nl < 0 else nl
            header = m[pos:head_end]
            block_start = head_end + 1
            pos = end + 2
            while pos < size and m[pos : pos + 1] == b"\n":
                pos += 1
            if not header or header[:1].isspace() or header.startswith(b"#"):
                continue
            # "comm pid/tid time: event:" (the comm may hold spaces)
            toks = header.rsplit(None, 3)
            if len(toks) != 4 or not toks[2].endswith(b":") or not toks[3].endswith(b":"):
                continue
            ids = toks[1].split(b"/")
            if len(ids) != 2 or not ids[0].isdigit() or not ids[1].isdigit():
                continue
            event = toks[3]
            if not wanted:
                wanted = event
            elif event != wanted:
                continue
            pid = fold_py.parse_id(ids[0])
            if pid not in pids:
                continue
            try:
                stamp = float(toks[2][:-1])
            except ValueError:
                continue
            comm = toks[0].replace(b" ", b"_").decode("utf-8", "surrogateescape")
            yield pid, fold_py.parse_id(ids[1]), comm, stamp, m[block_start:end]


def _version(binary: str) -> str | None:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().removeprefix("py-spy ").strip() or None


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip().replace(" ", "_")
    except OSError:
        return ""


def _exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def _age(pid: int) -> float:
    """Seconds since process `pid` started (0 when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            start = int(f.read().rsplit(b")", 1)[1].split()[19])
        with open("/proc/uptime", "rb") as f:
            up = float(f.read().split()[0])
    except (OSError, IndexError, ValueError):
        return 0.0
    return up - start / _TICKS


_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int, last: float) -> float:
    """User + system CPU seconds of process `pid` (`last` when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, IndexError, ValueError):
        return last


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def _reason(log: Path) -> str:
    """What py-spy said when it could not read a process, in one line."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "py-spy wrote nothing"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith((" ", "["))]
    errs = [ln for ln in lines if "rror" in ln or "ermission" in ln or "denied" in ln]
    pick = errs or lines
    why = pick[0] if pick else "py-spy exited without a trace"
    if "ermission" in why or "EPERM" in why or "Operation not permitted" in why:
        why += " (ptrace is not allowed here: run as the job's user, or allow it with "
        why += "kernel.yama.ptrace_scope=0 or CAP_SYS_PTRACE in a container)"
    return why[:300]
