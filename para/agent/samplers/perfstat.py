"""Hardware and software performance counters, read from a `perf stat -I` subprocess.

perf prints one line per event and interval.  A reader thread parses the lines as they come
and queues them; `sample` only drains the queue, so the sampling path costs a few list
appends however slowly perf writes.

perf writes its counts to its own stderr: that stream is unbuffered, so each interval arrives
when perf prints it (`--log-fd` and `-o` go through a fully buffered stdio stream and arrive in
4 KiB lumps).  perf runs no command of ours (it attaches with -p or counts system-wide with
-a), so nothing else ever writes to that stream but perf's own warnings, which the parser
rejects and which are kept for error messages.

Counts are stored as perf reports them for the interval, in the event's own unit (task-clock
in msec); derived figures such as IPC are left to the analyzer.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, NamedTuple

from para.agent.samplers.base import Rows, Sampler, Unavailable, event
from para.errors import UsageError

DEFAULT_EVENTS = (
    "cycles",
    "instructions",
    "cache-references",
    "cache-misses",
    "branches",
    "branch-misses",
    # Software events: counted by the kernel, so they work without a PMU (VMs, containers).
    "task-clock",
    "context-switches",
    "cpu-migrations",
    "page-faults",
)

COUNTED = "counted"
NOT_SUPPORTED = "not supported"
NOT_COUNTED = "not counted"

# A tab never occurs in an event name; a comma does (`cpu/event=0x3c,umask=0x0/`).
SEP = "\t"
# perf fails on a bad event or pid within ~20 ms; wait this long in open() to report it.
STARTUP_CHECK_S = 0.2
STOP_TIMEOUT_S = 3.0
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38

INSTALL_HINT = (
    "install it: Debian `apt install linux-perf`, Ubuntu `apt install linux-tools-$(uname -r)`, "
    "RHEL/Fedora `dnf install perf`"
)


class CounterRow(NamedTuple):
    """One line of `perf stat -x SEP` output that carries a count."""

    time: float | None  # seconds since perf started counting (-I); None without a time column
    summary: bool  # a `--summary` row (time column 'summary')
    aggr: str | None  # aggregation id: CPU3 (-A), S0 (--per-socket), S0-D0-C5, N0, comm-pid
    aggr_cpus: int | None  # CPUs behind an aggregated row (the number after S0, ...)
    value: float | None  # None unless status is COUNTED
    status: str  # COUNTED | NOT_SUPPORTED | NOT_COUNTED
    unit: str  # 'msec', 'ns', '' ...
    event: str
    run_ns: int | None  # time the counter ran in the interval
    running_pct: float | None  # share of the time enabled that it ran (multiplexing)
    cgroup: str | None = None  # the cgroup column of `-G` / `--for-each-cgroup` output


_NUM = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\Z")
_INT = re.compile(r"\d+\Z")
_AGGR = re.compile(
    r"(?:CPU\d+"  # -A / --no-aggr
    r"|S\d+(?:-D\d+(?:-C\d+|-CLS\d+|-L\d+-ID\d+)?)?"  # socket, die, core, cluster, cache
    r"|N\d+"  # --per-node
    r"|\S.*-\d+)\Z"  # --per-thread: comm-pid
)
_STATUS = {"<not supported>": NOT_SUPPORTED, "<not counted>": NOT_COUNTED}


def _is_num(s: str) -> bool:
    return _NUM.match(s) is not None


def _prefix(tokens: list[str]) -> tuple[float | None, bool, str | None, int | None] | None:
    """The columns before the value: [time | 'summary'] [aggregation id [CPU count]]."""
    t: float | None = None
    summary = False
    aggr: str | None = None
    n: int | None = None
    i = 0
    if i < len(tokens):
        if tokens[i] == "summary":
            summary, i = True, i + 1
        elif _is_num(tokens[i]):
            t, i = float(tokens[i]), i + 1
    if i < len(tokens) and _AGGR.match(tokens[i]):
        aggr, i = tokens[i], i + 1
        if i < len(tokens) and _INT.match(tokens[i]):
            n, i = int(tokens[i]), i + 1
    if i != len(tokens):
        return None
    return t, summary, aggr, n


def parse_line(line: str, sep: str = ",", cgroups: bool = False) -> CounterRow | None:
    """Parse one line of `perf stat -x SEP` output; None for anything that is not a count
    (metric-only rows, headers, blank lines, perf's warnings, garbage).

    With `cgroups` (perf ran with -G or --for-each-cgroup) the column after the event name
    is the cgroup the count belongs to.

    The columns before the value vary (time, 'summary', an aggregation id and its CPU count),
    so the value is found from the shape of what follows it: a unit that is empty or a word,
    then an event name that is not a number.  Event names may contain the separator
    (`cpu/event=0x3c,umask=0x0/` with -x,); those pieces are joined again.
    """
    line = line.rstrip("\r\n")
    if not line or line.lstrip().startswith("#"):
        return None
    tokens = [tok.strip() for tok in line.split(sep)]
    for p in range(min(4, len(tokens) - 2)):
        value_tok, unit, ev = tokens[p], tokens[p + 1], tokens[p + 2]
        status = _STATUS.get(value_tok, COUNTED)
        if status == COUNTED and not _is_num(value_tok):
            continue
        if _is_num(unit) or any(c.isspace() for c in unit):
            continue
        rest = p + 3
        # Re-join a PMU event spec `pmu/a=1,b=2/` that the separator cut apart.
        while ev.count("/") % 2 == 1 and "/" in ev and rest < len(tokens):
            ev, rest = ev + sep + tokens[rest], rest + 1
        if not ev or _is_num(ev) or any(c.isspace() for c in ev):
            continue
        cgroup: str | None = None
        if cgroups:
            if rest >= len(tokens) or not tokens[rest] or _INT.match(tokens[rest]):
                continue
            cgroup, rest = tokens[rest], rest + 1
        run_ns: int | None = None
        pct: float | None = None
        if rest < len(tokens):
            if tokens[rest] and not _INT.match(tokens[rest]):
                continue
            run_ns = int(tokens[rest]) if tokens[rest] else None
        if rest + 1 < len(tokens):
            if tokens[rest + 1] and not _is_num(tokens[rest + 1]):
                continue
            pct = float(tokens[rest + 1]) if tokens[rest + 1] else None
        prefix = _prefix(tokens[:p])
        if prefix is None:
            continue
        t, summary, aggr, n = prefix
        value = float(value_tok) if status == COUNTED else None
        if value is not None and not math.isfinite(value):
            continue
        if t is not None and not math.isfinite(t):
            continue
        if pct is not None and not math.isfinite(pct):
            pct = None
        return CounterRow(t, summary, aggr, n, value, status, unit, ev, run_ns, pct, cgroup)
    return None


def parse_stream(lines: Iterable[str], sep: str = ",") -> Iterator[CounterRow]:
    """The counts in `perf stat -x SEP` output, in order; other lines are skipped."""
    for line in lines:
        row = parse_line(line, sep)
        if row is not None:
            yield row


def paranoid_refusal(level: int | None, privileged: bool, system_wide: bool) -> str | None:
    """Why perf_event_paranoid keeps an unprivileged user from counting; None if it does not."""
    if privileged:
        return None
    if level is None:
        return (
            "this kernel has no perf events (/proc/sys/kernel/perf_event_paranoid is missing): "
            "counters need a kernel built with CONFIG_PERF_EVENTS"
        )
    if level >= 3:
        return (
            f"kernel.perf_event_paranoid is {level}: the kernel forbids perf events to "
            "unprivileged users; run as root (or with CAP_PERFMON), or allow it with "
            "`sudo sysctl kernel.perf_event_paranoid=2` (enough to count your own processes; "
            "0 for system-wide counting)"
        )
    if system_wide and level >= 1:
        return (
            f"kernel.perf_event_paranoid is {level}: system-wide counting (-a) needs 0 or "
            "less, or root/CAP_PERFMON; run `sudo sysctl kernel.perf_event_paranoid=0`, or "
            "count only the job's processes"
        )
    return None


def _read_paranoid(path: str = "/proc/sys/kernel/perf_event_paranoid") -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _privileged() -> bool:
    if os.geteuid() == 0:
        return True
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    caps = int(line.split()[1], 16)
                    return bool(caps & (1 << CAP_PERFMON | 1 << CAP_SYS_ADMIN))
    except (OSError, ValueError, IndexError):
        pass
    return False


def _dedupe(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(n.strip() for n in names if n.strip()))


class PerfStatSampler(Sampler):
    """Counters from `perf stat -I interval_ms`, of one process tree (pid) or the whole node.

    For the file's metadata read `event_state` (event -> 'supported' | 'not supported' |
    'not counted') and `event_units`; `notes` holds what to tell the user (also handed to
    `on_message` as it happens); `perf_pid` is perf's own pid, a helper to leave out of the
    job's process tree.
    """

    family = "counters"
    tables = ("counters", "events")

    def __init__(
        self,
        events: list[str] | None = None,
        pid: int | None = None,
        interval_ms: int = 1000,
        perf: str = "perf",
        *,
        on_message: Callable[[str], None] | None = None,
    ):
        if interval_ms < 10:
            raise UsageError(
                f"perf counter interval of {interval_ms} ms is too short",
                hint="perf stat -I accepts 10 ms or more; 1000 ms matches the sampling rate",
            )
        self.events = _dedupe([*DEFAULT_EVENTS, *(events or [])])
        self.pid = pid
        self.interval_ms = interval_ms
        self.perf = perf
        self.on_message = on_message
        self.notes: list[str] = []
        self.event_state: dict[str, str] = {}
        self.event_units: dict[str, str] = {}
        self._said: set[tuple[str, str]] = set()
        # (t_ms, row, read after stop() began)
        self._queue: deque[tuple[int, CounterRow, bool]] = deque()
        self._stderr_tail: deque[str] = deque(maxlen=20)
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._anchor_ms = 0.0
        self._stopping = False
        self._exit_reported = False

    @property
    def perf_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def command(self, perf: str | None = None) -> list[str]:
        cmd = [perf or self.perf, "stat", "-x", SEP, "-I", str(self.interval_ms)]
        for ev in self.events:
            cmd += ["-e", ev]
        cmd += ["-p", str(self.pid)] if self.pid is not None else ["-a"]
        return cmd

    def _note(self, msg: str) -> None:
        self.notes.append(msg)
        if self.on_message is not None:
            self.on_message(msg)

    # -- set-up ----------------------------------------------------------------------------
    def open(self) -> dict[str, Any]:
        exe = shutil.which(self.perf)
        if exe is None:
            raise Unavailable(
                f"perf is not installed ('{self.perf}' is not on PATH): {INSTALL_HINT}"
            )
        try:
            ver = subprocess.run(
                [exe, "--version"], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise Unavailable(f"cannot run {exe}: {e}") from e
        if ver.returncode != 0:
            # Debian's /usr/bin/perf is a wrapper that fails when no perf matches the kernel.
            why = (ver.stderr or ver.stdout).strip().splitlines()
            raise Unavailable(
                f"{exe} does not run ({why[0] if why else f'exit status {ver.returncode}'}): "
                + INSTALL_HINT
            )
        version = ver.stdout.strip().removeprefix("perf version ").strip()
        level = _read_paranoid()
        refusal = paranoid_refusal(level, _privileged(), self.pid is None)
        if refusal:
            raise Unavailable(refusal)
        self._start(exe)
        facts: dict[str, Any] = {
            "perf_version": version,
            "events": list(self.events),
            "interval_ms": self.interval_ms,
            "target": f"pid {self.pid}" if self.pid is not None else "system-wide",
            "perf_event_paranoid": level,
        }
        if level == 2 and not _privileged():
            self._note("perf: kernel.perf_event_paranoid is 2, so only user-space work is counted")
        return facts

    def _start(self, exe: str) -> None:
        self._anchor_ms = time.time_ns() / 1e6
        proc = subprocess.Popen(
            self.command(exe),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # Its own session: a Ctrl-C meant for the job must not end the counting early;
            # stop() ends it, after which perf prints its last partial interval.
            start_new_session=True,
        )
        try:
            rc = proc.wait(timeout=STARTUP_CHECK_S)
        except subprocess.TimeoutExpired:
            self._proc = proc
            assert proc.stderr is not None
            self._reader = threading.Thread(
                target=self._read, args=(proc.stderr,), name="para-perf-stat", daemon=True
            )
            self._reader.start()
            return
        assert proc.stderr is not None
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        raise Unavailable(f"perf stat stopped at once (exit status {rc}): {_first_error(err)}")

    def _read(self, stream: IO[bytes]) -> None:
        anchor = self._anchor_ms
        for raw in stream:
            line = raw.decode(errors="replace")
            row = parse_line(line, SEP)
            if row is None:
                text = line.strip()
                if text:
                    self._stderr_tail.append(text)
                continue
            if row.summary or row.time is None:
                continue
            # perf's times count from when it started counting, on the monotonic clock; the
            # anchor is the wall clock just before perf started (early by perf's start-up).
            self._queue.append((round(anchor + row.time * 1000.0), row, self._stopping))

    # -- sampling --------------------------------------------------------------------------
    def sample(self, t_ms: int, out: Rows) -> None:
        q = self._queue
        counters: list[list[Any]] = []
        events: list[list[Any]] = []
        state = self.event_state
        fresh: dict[str, list[str]] = {}
        while q:
            t, row, late = q.popleft()
            ev = row.event
            if row.status == COUNTED:
                pct = row.running_pct
                counters.append([t, ev, row.value, None if pct is None else round(pct)])
                if state.get(ev) != "supported":
                    state[ev] = "supported"
                    self.event_units[ev] = row.unit
            elif self._first_time(row, late):
                kind = (
                    "counter_unsupported" if row.status == NOT_SUPPORTED else "counter_not_counted"
                )
                events.append(event(t, kind, ev))
                fresh.setdefault(row.status, []).append(ev)
        for status, names in fresh.items():
            self._note(_absent_note(status, names))
        proc = self._proc
        if proc is not None and not self._stopping and not self._exit_reported:
            rc = proc.poll()
            if rc is not None and (self._reader is None or not self._reader.is_alive()):
                self._exit_reported = True
                self._exited(t_ms, rc, events)
        if counters:
            out.setdefault("counters", []).extend(counters)
        if events:
            out.setdefault("events", []).extend(events)

    def _first_time(self, row: CounterRow, late: bool) -> bool:
        """Whether this event is absent for the first time with this status (said once)."""
        ev = row.event
        counted_before = self.event_state.get(ev) == "supported"
        if not counted_before:
            self.event_state[ev] = row.status
        elif late:
            # The partial interval perf prints on SIGINT, after the process ended: nothing
            # the user needs to hear about.
            return False
        key = (ev, row.status)
        if key in self._said:
            return False
        self._said.add(key)
        return True

    def _exited(self, t_ms: int, rc: int, events: list[list[Any]]) -> None:
        tail = list(self._stderr_tail)
        events.append(
            event(t_ms, "perf_exited", "perf stat", self.perf_pid, status=rc, stderr=tail)
        )
        if rc == 0 and self.pid is not None:
            return  # the counted process ended, and perf with it
        why = _first_error("\n".join(tail)) if tail else "no message"
        self._note(f"perf stat ended by itself (exit status {rc}): {why}; counters stop here")

    # -- winding down ----------------------------------------------------------------------
    def stop(self) -> None:
        """SIGINT makes perf print the partial interval in progress; the final sample takes it."""
        self._stopping = True
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            except ProcessLookupError:
                pass
        if self._reader is not None:
            self._reader.join(timeout=STOP_TIMEOUT_S)

    def close(self) -> None:
        proc = self._proc
        if proc is None:
            return
        self._stopping = True
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=STOP_TIMEOUT_S)
        if proc.stderr is not None:
            proc.stderr.close()

    def metadata(self) -> dict[str, Any]:
        """What the file's metadata should say about the counters once the run is over."""
        return {
            "requested": list(self.events),
            "state": dict(self.event_state),
            "units": dict(self.event_units),
        }


def _absent_note(status: str, names: list[str]) -> str:
    what = ", ".join(names)
    if status == NOT_SUPPORTED:
        verb = "is" if len(names) == 1 else "are"
        return (
            f"perf: {what} {verb} not supported on this machine (no hardware counter, as in a "
            "VM without a virtual PMU); left out"
        )
    return (
        f"perf: {what} not counted in some intervals (the process did not run then, or the "
        "counter was never scheduled); those intervals have no row"
    )


def _first_error(text: str) -> str:
    """The line of perf's stderr that says what went wrong (not its usage text)."""
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("Usage:", "-", "\\", "Run 'perf list'")):
            return line
    return "no message"
