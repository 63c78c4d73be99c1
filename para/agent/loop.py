"""The sampling loop: every interval, each family samples; one record goes to the writer.

A family that raises is marked failing (said once, with the error) and the others go on;
one that may block runs in a thread of its own and gets a time budget, past which the
sample goes without it.  Ticks are scheduled on the monotonic clock, so an NTP step never
bunches or skips samples; the stamp written is the wall clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from para.agent.samplers.base import Rows, Sampler, Unavailable, event

Sink = Callable[[int, Rows], None]


@dataclass
class FamilyStatus:
    state: str = "ok"  # ok | unavailable | failing
    reason: str = ""
    errors: int = 0
    late: int = 0
    facts: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"state": self.state}
        if self.reason:
            d["reason"] = self.reason
        if self.errors:
            d["errors"] = self.errors
        if self.late:
            d["late"] = self.late
        return d


class _Worker:
    """Runs one blocking sampler in its own thread; the loop waits for it at most a budget."""

    def __init__(self, sampler: Sampler):
        self.sampler = sampler
        self._go = threading.Event()
        self._done = threading.Event()
        self._done.set()
        self._t = 0
        self._result: Rows | BaseException = {}
        self._stop = False
        self.thread = threading.Thread(target=self._run, name=f"para-{sampler.family}", daemon=True)
        self.thread.start()

    @property
    def busy(self) -> bool:
        return not self._done.is_set()

    def submit(self, t_ms: int) -> bool:
        if self.busy:
            return False
        self._t = t_ms
        self._done.clear()
        self._go.set()
        return True

    def collect(self, timeout: float) -> Rows | BaseException | None:
        """The rows, the exception raised, or None if still running after `timeout`."""
        if not self._done.wait(max(timeout, 0.0)):
            return None
        return self._result

    def _run(self) -> None:
        while True:
            self._go.wait()
            self._go.clear()
            if self._stop:
                return
            rows: Rows = {}
            try:
                self.sampler.sample(self._t, rows)
                self._result = rows
            except BaseException as e:  # isolate everything, the loop reports it
                self._result = e
            self._done.set()

    def stop(self) -> None:
        self._stop = True
        self._go.set()


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class SamplingLoop:
    def __init__(
        self,
        samplers: list[Sampler],
        sink: Sink,
        interval: float,
        budget: float | None = None,
        on_message: Callable[[str], None] | None = None,
        clock: Callable[[], int] | None = None,
        reprobe_s: float | None = None,
    ):
        """`clock()` gives the stamp of each sample in ms (default: the wall clock); every
        `reprobe_s` seconds the families found unavailable are opened again (hot-plugged
        devices, drivers loaded late, filesystems mounted later)."""
        self.samplers = samplers
        self.clock = clock or _wall_ms
        self.reprobe_s = reprobe_s
        self._next_reprobe = time.monotonic() + reprobe_s if reprobe_s else None
        self._unavailable: list[Sampler] = []
        self.sink = sink
        self.interval = interval
        # A blocking family may use at most this much of each interval.
        self.budget = budget if budget is not None else max(0.05, 0.5 * interval)
        self.say = on_message or (lambda msg: None)
        self.status: dict[str, FamilyStatus] = {}
        self._active: list[Sampler] = []
        self._workers: dict[str, _Worker] = {}
        self._pending_events: list[list[Any]] = []
        self.samples = 0
        self.missed_ticks = 0
        self.sink_errors = 0
        self.cpu_seconds = 0.0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # -- set-up ----------------------------------------------------------------------------
    def open(self) -> dict[str, FamilyStatus]:
        t_ms = self.clock()
        for s in self.samplers:
            st = self.status[s.family] = FamilyStatus()
            if not self._open_one(s, st):
                self._unavailable.append(s)
                self._pending_events.append(
                    event(t_ms, "family_unavailable", s.family, reason=st.reason)
                )
        return self.status

    def _open_one(self, s: Sampler, st: FamilyStatus) -> bool:
        try:
            st.facts = s.open() or {}
        except Unavailable as e:
            st.state, st.reason = "unavailable", str(e)
        except Exception as e:  # a broken family must not stop the run
            st.state, st.reason = "unavailable", f"{type(e).__name__}: {e}"
        if st.state != "ok":
            return False
        self._active.append(s)
        if s.may_block:
            self._workers[s.family] = _Worker(s)
        return True

    def reprobe(self) -> list[str]:
        """Open again the families that were unavailable; returns those that now are not.
        Called from the sampling thread (run) between samples."""
        found = []
        t_ms = self.clock()
        for s in list(self._unavailable):
            st = FamilyStatus()
            if self._open_one(s, st):
                self.status[s.family] = st
                self._unavailable.remove(s)
                self._pending_events.append(event(t_ms, "family_available", s.family))
                self.say(f"{s.family}: now available, sampled from here on")
                found.append(s.family)
        return found

    # -- one sample ------------------------------------------------------------------------
    def _fail(self, s: Sampler, t_ms: int, err: str, out: Rows) -> None:
        st = self.status[s.family]
        st.errors += 1
        if st.state != "failing":
            st.state, st.reason = "failing", err
            out.setdefault("events", []).append(event(t_ms, "family_failing", s.family, reason=err))
            self.say(f"{s.family} sampling failed: {err} (the other families go on)")

    def _ok(self, s: Sampler, t_ms: int, rows: Rows, out: Rows) -> None:
        st = self.status[s.family]
        if st.state == "failing":
            st.state, st.reason = "ok", ""
            out.setdefault("events", []).append(event(t_ms, "family_ok", s.family))
        for table, table_rows in rows.items():
            out.setdefault(table, []).extend(table_rows)

    def sample_once(self) -> int:
        """Take one sample of every family and hand it to the sink; returns its time (ms)."""
        t_ms = self.clock()
        started = time.monotonic()
        out: Rows = {}
        if self._pending_events:
            out["events"] = self._pending_events
            self._pending_events = []
        submitted = []
        for s in self._active:
            w = self._workers.get(s.family)
            if w is not None:
                if w.submit(t_ms):
                    submitted.append(s)
                else:
                    self.status[s.family].late += 1
                continue
            rows: Rows = {}
            try:
                s.sample(t_ms, rows)
            except Exception as e:
                # what the family said before failing stands (a job's stacks_off decided in
                # this sample is not decided again); its half-made data rows do not
                if rows.get("events"):
                    out.setdefault("events", []).extend(rows["events"])
                self._fail(s, t_ms, f"{type(e).__name__}: {e}", out)
                continue
            self._ok(s, t_ms, rows, out)
        for s in submitted:
            res = self._workers[s.family].collect(self.budget - (time.monotonic() - started))
            if res is None:
                self.status[s.family].late += 1
                self._fail(s, t_ms, f"no answer within {self.budget:.2f} s (hung?)", out)
            elif isinstance(res, BaseException):
                self._fail(s, t_ms, f"{type(res).__name__}: {res}", out)
            else:
                self._ok(s, t_ms, res, out)
        try:
            self.sink(t_ms, out)
            self.samples += 1
        except OSError as e:
            self.sink_errors += 1
            if self.sink_errors == 1:
                self.say(f"cannot store samples: {e} (sampling goes on; these samples are lost)")
        return t_ms

    # -- running ---------------------------------------------------------------------------
    def run(self) -> None:
        """Sample every interval until stop(); the first sample is taken at once."""
        cpu0 = time.thread_time()
        next_tick = time.monotonic()
        while not self._stop.is_set():
            self.sample_once()
            next_tick += self.interval
            now = time.monotonic()
            if now > next_tick:  # fell behind (suspended, overloaded): skip, don't burst
                skipped = int((now - next_tick) / self.interval) + 1
                self.missed_ticks += skipped
                next_tick += skipped * self.interval
            if self._next_reprobe is not None and now >= self._next_reprobe:
                self._next_reprobe = now + (self.reprobe_s or 0)
                if self._unavailable:
                    self.reprobe()
                    now = time.monotonic()
            self._stop.wait(next_tick - now)
        self.cpu_seconds += time.thread_time() - cpu0

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="para-sampler", daemon=True)
        self._thread.start()

    def stop(self, final_sample: bool = True) -> None:
        """Stop the thread; then take one last sample so the end of the run is recorded."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for s in self._active:
            try:
                s.stop()
            except Exception as e:
                self.say(f"{s.family}: error while stopping: {e}")
        if final_sample:
            cpu0 = time.thread_time()
            self.sample_once()
            self.cpu_seconds += time.thread_time() - cpu0

    def close(self) -> None:
        for w in self._workers.values():
            w.stop()
        for s in self._active:
            try:
                s.close()
            except Exception as e:
                self.say(f"{s.family}: error on close: {e}")

    def families(self) -> dict[str, dict[str, Any]]:
        return {f: st.as_dict() for f, st in self.status.items()}
