"""Call stacks of every job, always on (issue 13): the function and instruction dimensions of
the jobs nobody profiled by hand.

A thread of its own records windows: `perf record -a -g` at a low rate (19 Hz per busy CPU
by default) of the jobs' cgroups (`-G`, where every job has a cgroup v2; a new window when
jobs come or go) or else of the whole node, for `window_s` seconds, or until the segment
closes, the last job ends or the agent stops; then `perf script` is folded (the Cython
kernel `para profile --functions` uses, through perfrecord.FunctionRecorder) and only the
samples of job processes are kept, each row naming its job. The CPython processes of the
jobs also get a py-spy for the window (pystacks.PySpyRecorder), whose Python stacks are
stitched onto perf's samples as in `para profile --functions`. Rows go to `stacks` (per
job, process, thread and second, root-first) and `instr_samples` (the leaf instruction of
each sample, with the GNU build id of its binary) of the sample taken after the window:
the next segment's Parquet holds each distinct stack once (its column's dictionary).

A perf that fails, is killed or hangs (perf record not stopping within STOP_TIMEOUT of
SIGINT, perf script not done within `script_timeout_s`: each killed, only it and what it
started) is started again after a wait that doubles up to `max_backoff_s`; meanwhile the
family says why (family_failing, `para agent status`) and the other families go on. No
perf runs while no job runs. A job whose environment says PARA_STACKS=0 (or off/no/false)
is not sampled.
"""

from __future__ import annotations

import functools
import resource
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from para.agent import binaries
from para.agent.jobs import parse_environ
from para.agent.kallsyms import KallsymsCopy
from para.agent.perfrecord import FunctionRecorder, perf_binary
from para.agent.samplers.base import Rows, Sampler, Unavailable, event

OFF_VALUES = {"0", "off", "no", "false"}
# looks (samples) at a job whose processes' environments cannot be read before it is taken as
# not saying PARA_STACKS: a process mid-exec or exiting is readable a sample later
UNDECIDED_LOOKS = 5
MAX_CGROUPS = 16  # more jobs than this: one event per cgroup and CPU costs more than -a
CGROUP_RETRY_S = 600.0  # perf refused -G: per pid, and -G tried again after this
STOP_TIMEOUT = 20.0  # perf record writes its file within this after SIGINT, or is killed
POLL_S = 0.25
HANDOVER_S = 1.0  # the next window's perf is sampling by then (it starts in ~0.1 s)


class WindowRecorder(FunctionRecorder):
    """`perf record -a` of the whole node until stopped (FunctionRecorder's folding and
    instruction rows, without its command-attached start)."""

    def __init__(
        self,
        freq: int,
        event: str,
        perf: str,
        cgroups: tuple[str, ...] = (),
        workdir: Path | None = None,
    ):
        super().__init__(0, freq=freq, event=event, perf=perf, workdir=workdir)
        # stopped with SIGINT, perf writes its file and raises the signal again on itself: a
        # window with no sample of the jobs (they slept) is no failure
        self.stopped_statuses = {0, -signal.SIGINT}
        self.hung = False
        self.cgroups = cgroups

    def argv(self, perf: str) -> list[str]:
        """`perf record -a`: of the jobs' cgroups only (-G) where they are given, else of
        the whole node (the jobs' pids are picked out at `perf script`)."""
        events = ["-e", self.event]
        if self.cgroups:
            # perf gives the cgroups of -G to the events before it, in order: one each
            events = events * len(self.cgroups) + ["-G", ",".join(self.cgroups)]
        return [
            perf, "record", "-a", "-g", *events, "-F", str(self.freq),
            "-k", "CLOCK_MONOTONIC", "-o", str(self.data),
            # no build-id cache (copies of every binary in ~/.debug) nor build-id header:
            # half of perf's CPU, and para reads the build ids of the jobs' binaries itself
            "--no-buildid-cache", "--no-buildid",
        ]  # fmt: skip

    def finish(self) -> list[list[Any]]:
        """perf script decodes without demangling nor inline frames (half its CPU: it
        demangles every symbol of every binary it loads, and looks inline frames up in the
        debug info): the names that are mangled among the few distinct frames kept are
        demangled afterwards, as perf would have printed them."""
        self.script_args += ["--no-demangle", "--no-inline"]
        rows = super().finish()
        names = {f for r in rows for f in r[4].split(";") if f.startswith(MANGLED)}
        names |= {r[2] for r in self.instructions if r[2].startswith(MANGLED)}
        if names:
            plain = demangle(names)
            for r in rows:
                if any(f in plain for f in r[4].split(";")):
                    r[4] = ";".join(plain.get(f, f) for f in r[4].split(";"))
            for r in self.instructions:
                r[2] = plain.get(r[2], r[2])
        return rows

    def start(self) -> None:
        argv = ends_with_agent(self.argv(perf_binary(self.perf)))
        with open(self.log, "wb") as log:
            # its own session: a terminal's ^C goes to the agent, which stops it in order
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
            )

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:  # hung: what it wrote may still be read
            self.hung = True
            self.proc.kill()
            self.proc.wait()


def ends_with_agent(argv: list[str]) -> list[str]:
    """`argv` run so that it gets SIGINT (perf writes its file and ends) when the thread
    that starts it ends, the agent SIGKILLed included: a system-wide perf record left
    behind would record into a growing file for ever.  The unit's KillMode does this under
    systemd; this does it everywhere else.  As given where setpriv (util-linux) cannot."""
    setpriv = _setpriv()
    return [setpriv, "--pdeathsig", "INT", "--", *argv] if setpriv else argv


@functools.lru_cache(maxsize=1)
def _setpriv() -> str | None:
    path = shutil.which("setpriv")
    if path is None:
        return None
    try:  # util-linux before 2.33 has no --pdeathsig
        done = subprocess.run([path, "--pdeathsig", "INT", "--", "true"], capture_output=True,
                              timeout=10)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return path if done.returncode == 0 else None


@dataclass
class _Window:
    rec: WindowRecorder
    py: Any
    end: float  # monotonic
    lo: str = ""  # perf's samples kept: from lo to hi (perf's clock, CLOCK_MONOTONIC)
    hi: str = ""


class StackSampler(Sampler):
    family = "stacks"
    tables = ("stacks", "instr_samples", "events")

    def __init__(
        self,
        jobs: Callable[[], dict[str, set[int]]],
        *,
        cgroups: Callable[[], dict[str, str]] | None = None,
        script_timeout_s: float = 120.0,
        freq: int = 19,
        event_name: str = "cycles",
        perf: str = "perf",
        window_s: float = 300.0,
        python: bool = True,
        pyspy_rate: int = 20,
        pyspy_min_cpu: float = 0.05,
        max_backoff_s: float = 300.0,
        exclude: Callable[[], set[int]] | None = None,
        on_message: Callable[[str], None] | None = None,
        proc: str = "/proc",
        workdir: Path | None = None,
    ):
        self.jobs = jobs
        self.workdir = workdir
        self._kallsyms = KallsymsCopy(workdir, proc) if workdir is not None else None
        self.cgroups = cgroups or (lambda: {})
        self.script_timeout_s = script_timeout_s
        self._want_cg: tuple[str, ...] = ()  # the live jobs' cgroups (v2), when all have one
        self._cgroup_error: str | None = None  # perf refused -G here: per pid for a while
        self._cgroup_retry = 0.0  # monotonic
        self._finishing: WindowRecorder | None = None
        self.freq = freq
        self.event_name = event_name
        self.perf = perf
        self.window_s = window_s
        self.python = python
        self.pyspy_rate = pyspy_rate
        self.pyspy_min_cpu = pyspy_min_cpu
        self.max_backoff_s = max_backoff_s
        self.exclude = exclude or (lambda: set())
        self.say = on_message or (lambda m: None)
        self.proc = proc
        self._lock = threading.Lock()
        self._pid_job: dict[int, str] = {}  # the job pids seen lately, for the fold
        self._pid_seen: dict[int, float] = {}  # pid -> when last seen (monotonic)
        self._next_forget = 0.0
        self._live: dict[str, set[int]] = {}  # the jobs sampled now -> their pids
        self._off: dict[str, bool] = {}  # job -> its environment turned stacks off
        self._undecided: dict[str, int] = {}  # job -> looks without a readable environment
        self._out: deque[tuple[str, list[list[Any]]]] = deque()
        self._stop = threading.Event()
        self._rotate = threading.Event()
        self._thread: threading.Thread | None = None
        self._rec: WindowRecorder | None = None
        self._pyspy_ok: bool | None = None
        self._py: Any = None
        # what `para agent status` shows (state, restarts, last error, volumes)
        self.state: dict[str, Any] = {
            "state": "idle",
            "windows": 0,
            "samples": 0,
            "rows": 0,
            "restarts": 0,
            "failures": 0,
            "last_error": None,
            "retry_at": None,
            "python": None,
            "filter": None,
            "cost_cpu_s": {"perf": 0.0, "fold": 0.0, "pyspy": 0.0},
        }
        self._failing: str | None = None
        self._said_failing: str | None = None

    # -- the loop's side -------------------------------------------------------------------
    def open(self) -> dict[str, Any]:
        try:
            perf_binary(self.perf)
        except Unavailable as e:
            raise Unavailable(f"{e}; call stacks are not sampled") from None
        if self.python:
            try:
                from para.agent.pystacks import pyspy_binary

                pyspy_binary()
                self._pyspy_ok = True
            except Unavailable as e:
                self._pyspy_ok = False
                self.state["python"] = f"no Python stacks: {e}"
        self._thread = threading.Thread(target=self._run, name="para-stacks", daemon=True)
        self._thread.start()
        return {
            "frequency_hz": self.freq,
            "event": self.event_name,
            "window_s": self.window_s,
            "python": bool(self.python and self._pyspy_ok),
            "target": "the jobs' cgroups (perf record -a -G) where each job has a cgroup v2, "
            "else system-wide (perf record -a) with the job processes kept",
        }

    def sample(self, t_ms: int, out: Rows) -> None:
        live: dict[str, set[int]] = {}
        jobs = self.jobs()
        for job, pids in jobs.items():
            off = self._off.get(job)
            if off is None and pids:
                off = self._job_says_off(pids)
                if off is None:  # no environment readable yet: not sampled until known,
                    tries = self._undecided[job] = self._undecided.get(job, 0) + 1
                    if tries < UNDECIDED_LOOKS:
                        continue
                    off = False  # a job run with an empty environment (env -i) says nothing
                self._undecided.pop(job, None)
                self._off[job] = off
                if off:
                    out.setdefault("events", []).append(
                        event(t_ms, "stacks_off", job, reason="PARA_STACKS in its environment")
                    )
            if off:
                continue
            live[job] = set(pids)
        want = self._cgroups_of(live)
        now = time.monotonic()
        with self._lock:
            self._live = live
            self._want_cg = want
            for job, pids in live.items():
                for pid in pids:
                    self._pid_job[pid] = job
                    self._pid_seen[pid] = now
            # a pid not seen for longer than a window can hold is forgotten: the kernel may
            # give it to a process of no job
            if now >= self._next_forget:
                self._next_forget = now + 1.0
                keep_s = 2 * self.window_s + 2 * HANDOVER_S + 10
                for pid in [p for p, seen in self._pid_seen.items() if now - seen > keep_s]:
                    del self._pid_seen[pid]
                    self._pid_job.pop(pid, None)
            for job in [j for j in self._off if j not in jobs]:
                del self._off[job]
            for job in [j for j in self._undecided if j not in jobs]:
                del self._undecided[job]
            pending = list(self._out)
            self._out.clear()
            failing = self._failing
        for table, rows in pending:
            out.setdefault(table, []).extend(rows)
        if failing != self._said_failing:
            self._said_failing = failing
            if failing is not None:
                out.setdefault("events", []).append(
                    event(t_ms, "stacks_failing", "perf", reason=failing)
                )
        if failing is not None and not pending:
            # the loop marks the family failing and says why; the others go on
            raise RuntimeError(failing)

    @property
    def helper_pids(self) -> set[int]:
        """perf and the py-spies: the agent's helpers, never counted into a job."""
        out: set[int] = set()
        rec, py = self._rec, self._py
        if rec is not None and rec.proc is not None:
            out.add(rec.proc.pid)
        if py is not None:
            out |= py.helper_pids()
        return out

    def _cgroups_of(self, live: dict[str, set[int]]) -> tuple[str, ...]:
        """The live jobs' cgroup v2 paths as perf names them (from the hierarchy's root),
        or () when one job has none (or perf refused -G here): perf then records the whole
        node and the jobs' samples are picked out by pid."""
        if not live or len(live) > MAX_CGROUPS:
            return ()
        if self._cgroup_error is not None and time.monotonic() < self._cgroup_retry:
            return ()
        try:
            paths = self.cgroups()
        except Exception:  # the jobs family's trouble: the pids still do
            return ()
        out = set()
        for job in live:
            path = (paths.get(job) or "").strip("/")
            if not path:
                return ()
            out.add(path)
        return tuple(sorted(out))

    def segment_closed(self) -> None:
        """The segment closes: end the window so its stacks land in the next segment."""
        self._rotate.set()

    def stop(self) -> None:
        """Before the agent's last sample: end the window, so its stacks are in it."""
        self._stop.set()
        self._rotate.set()
        fin = self._finishing
        if fin is not None:
            fin.hurry()
        if self._thread is not None:
            self._thread.join(timeout=3 * STOP_TIMEOUT)
            self._thread = None

    def close(self) -> None:
        self.stop()

    def metadata(self) -> dict[str, Any]:
        return {k: self.state[k] for k in ("windows", "samples", "restarts", "failures")}

    def status(self) -> dict[str, Any]:
        return dict(self.state)

    # -- the recording thread ----------------------------------------------------------------
    def _job_says_off(self, pids: set[int]) -> bool | None:
        """Whether the job's environment turns stacks off; None while none of its processes'
        environments could be read (gone, or empty: a zombie's, or one mid-exec), so that a
        job first seen at such a moment is asked again rather than sampled against its will."""
        known = False
        for pid in sorted(pids)[:4]:
            try:
                with open(f"{self.proc}/{pid}/environ", "rb") as f:
                    env = parse_environ(f.read())
            except OSError:
                continue
            known = known or bool(env)
            v = env.get("PARA_STACKS")
            if v is not None:
                return v.strip().lower() in OFF_VALUES
        return False if known else None

    def _job_pids(self) -> set[int]:
        with self._lock:
            return {p for pids in self._live.values() for p in pids}

    def _run(self) -> None:
        """Windows back to back: the next perf starts before the last one's output is
        folded, so no second of a job goes unsampled while para works."""
        backoff = 1.0
        cur: _Window | str | None = None
        while True:
            if isinstance(cur, str):  # perf did not start: wait, then try again
                if self._failed(cur, backoff):
                    return
                backoff = min(backoff * 2, self.max_backoff_s)
                self.state["restarts"] += 1
                cur = None
            if cur is None:
                if self._stop.is_set():
                    return
                if not self._job_pids():
                    self.state["state"] = "idle"
                    self._stop.wait(POLL_S)
                    continue
                cur = self._begin()
                continue
            died = self._wait_window(cur)
            nxt: _Window | str | None = None
            if died is None and not self._stop.is_set() and self._job_pids():
                nxt = self._begin()
                if isinstance(nxt, _Window):
                    # both perfs run a moment: each window keeps its side of the cut
                    self._stop.wait(HANDOVER_S)
                    cur.hi = nxt.lo = f"{time.monotonic():.6f}"
            try:
                error = self._end(cur, died)
            except Exception as e:  # a bug here must not stop the agent
                error = f"{type(e).__name__}: {e}"
            if error is None:
                if self._failing is not None:
                    self.say(f"stacks: perf records again ({self.state['restarts']} restarts)")
                    with self._lock:
                        self._failing = None
                backoff = 1.0
                cur = nxt
                continue
            if isinstance(nxt, _Window):
                self._end(nxt, None)  # started before the failure was known: keep its rows
            if self._failed(error, backoff):
                return
            backoff = min(backoff * 2, self.max_backoff_s)
            self.state["restarts"] += 1
            cur = None

    def _failed(self, error: str, backoff: float) -> bool:
        """Say it, wait the backoff; True when the agent stops meanwhile."""
        self.state["failures"] += 1
        self.state["last_error"] = error
        self.state["state"] = "restarting"
        self.state["retry_at"] = time.time() + backoff
        msg = f"{error}; perf is started again in {backoff:g} s"
        with self._lock:
            self._failing = msg
        self.say(f"stacks: {msg} (the other families go on)")
        return self._stop.wait(backoff)

    def _begin(self) -> _Window | str:
        """Start perf (and py-spy) for a window; why not, as a string."""
        self._rotate.clear()
        with self._lock:
            cgroups = self._want_cg
        rec = WindowRecorder(self.freq, self.event_name, self.perf, cgroups, self.workdir)
        rec.script_timeout_s = self.script_timeout_s
        try:
            rec.start()
        except OSError as e:
            rec.finish()
            return f"perf record did not start: {e}"
        assert rec.proc is not None
        py = self._python_recorder()
        rec.python = py
        if py is not None:
            py.start()
        self._rec, self._py = rec, py
        filt = f"cgroups: {', '.join(cgroups)}" if cgroups else "pids (perf record -a)"
        if self._cgroup_error and not cgroups:
            filt += f"; perf record -G failed here: {self._cgroup_error}"
        self.state.update(state="recording", perf_pid=rec.proc.pid, retry_at=None, filter=filt)
        return _Window(rec, py, time.monotonic() + self.window_s)

    def _wait_window(self, w: _Window) -> int | None:
        """Until the window's end, the segment's, the agent's or the last job's; perf's exit
        status if it ended by itself."""
        assert w.rec.proc is not None
        while time.monotonic() < w.end and not self._rotate.is_set():
            if w.rec.proc.poll() is not None:
                return w.rec.proc.returncode
            if not self._job_pids():
                break  # the last job ended: its stacks go out now
            with self._lock:
                if self._want_cg != w.rec.cgroups:
                    break  # jobs came or went: the next perf follows their cgroups
            self._rotate.wait(POLL_S)
        return w.rec.proc.poll()

    def _end(self, w: _Window, died: int | None) -> str | None:
        """Stop and fold a window; None when perf ran until para stopped it, else why not."""
        rec, py = w.rec, w.py
        if w.lo or w.hi:
            rec.script_args = ["--time", f"{w.lo},{w.hi}"]
        with self._lock:
            pids = sorted(self._pid_job)
        if pids:
            # perf script names the frames of the jobs' samples only (symbols are what it
            # spends its time on); the rest of the node was sampled but is not kept
            rec.script_args += ["--pid", ",".join(map(str, pids))]
        kallsyms = self._kallsyms.path() if self._kallsyms is not None else None
        if kallsyms is not None:
            rec.script_args += ["--kallsyms", kallsyms]
        if py is not None:
            py.stop()
            keep = ("processes", "idle", "stitched_samples", "unreadable", "pyspy_cpu_s")
            self.state["python"] = {k: py.info.get(k) for k in keep}
        kids0, own0 = _children_cpu_s(), time.thread_time()
        self._finishing = rec
        if self._stop.is_set():
            rec.hurry()
        try:
            rows = rec.finish()
        finally:
            # what the window cost: perf record and perf script (the children reaped
            # meanwhile), para's folding and stitching (this thread), py-spy
            cost = self.state["cost_cpu_s"]
            cost["perf"] = round(cost["perf"] + _children_cpu_s() - kids0, 3)
            cost["fold"] = round(cost["fold"] + time.thread_time() - own0, 3)
            if py is not None:
                cost["pyspy"] = round(cost["pyspy"] + (py.info.get("pyspy_cpu_s") or 0.0), 3)
            if py is not None:
                py.close()
            if self._rec is rec:
                self._rec = self._py = None
            self._finishing = None
        self._keep(rows, rec)
        if died is not None:
            tail = rec.info.get("error") or rec._log_tail()
            if rec.cgroups and died > 0 and not rows:
                # perf refused the cgroups (no perf_event controller on the hierarchy it
                # finds, a job's cgroup gone meanwhile): per pid, -G again in a while
                self._cgroup_error = tail
                self._cgroup_retry = time.monotonic() + CGROUP_RETRY_S
                with self._lock:
                    self._want_cg = ()
            return f"perf record exited by itself with status {died} ({tail})"
        if rec.script_hung:
            return str(rec.info["error"])
        if rec.hung:
            return f"perf record did not stop within {STOP_TIMEOUT:g} s of SIGINT (hung): killed"
        if not rows and rec.info.get("error"):
            return str(rec.info["error"])
        self.state["windows"] += 1
        return None

    def _python_recorder(self) -> Any:
        if not (self.python and self._pyspy_ok):
            return None
        from para.agent.pystacks import PySpyRecorder

        try:
            return PySpyRecorder(
                self._job_pids,
                exclude=self.exclude,
                rate=self.pyspy_rate,
                rotate_s=self.window_s + 2 * STOP_TIMEOUT,
                poll_s=1.0,
                scan_s=1.0,  # a job's new process within the second: always-on, at low cost
                cwd="",  # frames keep their files' full paths: jobs have their own cwd
                on_message=self.say,
                min_cpu=self.pyspy_min_cpu,
                workdir=self.workdir,
            )
        except Unavailable as e:
            self._pyspy_ok = False
            self.state["python"] = f"no Python stacks: {e}"
            return None

    def _keep(self, rows: list[list[Any]], rec: WindowRecorder) -> None:
        """The rows of job processes, each with its job; the instructions with build ids."""
        with self._lock:
            pid_job = dict(self._pid_job)
        stacks = []
        samples = 0
        weight = round(1.0 / self.freq, 6)
        for r in rows:
            job = pid_job.get(int(r[1]))
            if job is None:
                continue
            stacks.append([*r, job, weight])
            if r[7] == "cpu":
                samples += int(r[5])
        ids: dict[str, str | None] = {
            d: (i or {}).get("build_id") for d, i in (rec.info.get("binaries") or {}).items()
        }
        instr = []
        for pid, dso, sym, off, n in rec.instructions:
            job = pid_job.get(int(pid))
            if job is None:
                continue
            if dso not in ids:
                ids[dso] = binaries.build_id(dso) if dso.startswith("/") else None
            instr.append([pid, dso, sym, off, n, job, ids[dso]])
        self.state["samples"] += samples
        self.state["rows"] += len(stacks)
        with self._lock:
            if stacks:
                self._out.append(("stacks", stacks))
            if instr:
                self._out.append(("instr_samples", instr))


MANGLED = ("_Z", "_R")  # Itanium C++ (and Rust legacy), Rust v0


def demangle(names: set[str]) -> dict[str, str]:
    """Mangled name -> as perf prints it (no parameter list), through binutils' c++filt in
    one call; names it cannot demangle, or no c++filt, stay as they are."""
    order = sorted(names)
    try:
        out = subprocess.run(
            ["c++filt", "-p"], input="\n".join(order) + "\n", capture_output=True,
            text=True, timeout=60, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return {}
    plain = out.stdout.split("\n")
    if out.returncode != 0 or len(plain) < len(order):
        return {}
    return {m: p for m, p in zip(order, plain) if p and p != m}


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime
