"""A sampler that fails or hangs never stops the others."""

from __future__ import annotations

import json
import threading
import time

import pytest

from para.agent.loop import SamplingLoop
from para.agent.samplers.base import Sampler, Unavailable

pytestmark = pytest.mark.no_kernel


class Counting(Sampler):
    family = "count"
    tables = ("node",)

    def __init__(self):
        self.n = 0

    def sample(self, t_ms, out):
        self.n += 1
        out["node"] = [[self.n]]


class Failing(Sampler):
    family = "broken"
    tables = ("disk",)

    def __init__(self, fail_times=3):
        self.calls = 0
        self.fail_times = fail_times

    def sample(self, t_ms, out):
        self.calls += 1
        if self.calls <= self.fail_times:
            raise OSError("device vanished")
        out["disk"] = [["vda", self.calls]]


class Hanging(Sampler):
    family = "nfs"
    tables = ("fs",)
    may_block = True

    def __init__(self):
        self.release = threading.Event()

    def sample(self, t_ms, out):
        self.release.wait()
        out["fs"] = [["/home", 1]]


class Absent(Sampler):
    family = "gpu"
    tables = ("gpu",)

    def open(self):
        raise Unavailable("NVML library not found")

    def sample(self, t_ms, out):  # never called
        raise AssertionError


def collect():
    records = []
    return records, lambda t, rows: records.append((t, rows))


def events(records, kind):
    return [e for _, rows in records for e in rows.get("events", []) if e[1] == kind]


def test_failing_family_is_said_once_and_others_go_on():
    records, sink = collect()
    messages = []
    good, bad = Counting(), Failing(fail_times=3)
    loop = SamplingLoop([good, bad, Absent()], sink, 0.01, on_message=messages.append)
    status = loop.open()
    assert status["gpu"].state == "unavailable" and "NVML" in status["gpu"].reason
    for _ in range(6):
        loop.sample_once()
    loop.close()
    assert [r["node"][0][0] for _, r in records] == [1, 2, 3, 4, 5, 6]
    assert len(events(records, "family_failing")) == 1
    assert len(events(records, "family_ok")) == 1
    assert len(events(records, "family_unavailable")) == 1
    assert json.loads(events(records, "family_failing")[0][4]) == {
        "reason": "OSError: device vanished"
    }
    assert sum(1 for _, r in records if "disk" in r) == 3
    assert messages == [
        "broken sampling failed: OSError: device vanished (the other families go on)"
    ]
    assert loop.families()["broken"] == {"state": "ok", "errors": 3}


def test_hanging_family_gets_a_budget():
    records, sink = collect()
    hang = Hanging()
    loop = SamplingLoop([Counting(), hang], sink, interval=1.0, budget=1.0)
    loop.open()
    t0 = time.monotonic()
    for _ in range(5):
        loop.sample_once()
    spent = time.monotonic() - t0
    hang.release.set()
    worker = loop._workers["nfs"]
    deadline = time.monotonic() + 60
    while worker.busy:  # the stuck sample ends once released
        assert time.monotonic() < deadline
        time.sleep(0.01)
    loop.sample_once()
    loop.close()
    # five samples while stuck: only the first waited for the budget (1 s), the others
    # skipped it; had each waited, they would have taken 5 s
    assert 1.0 <= spent < 3.0
    assert [len(r.get("fs", [])) for _, r in records] == [0, 0, 0, 0, 0, 1]
    assert all("node" in r for _, r in records)
    assert loop.status["nfs"].late >= 5
    assert events(records, "family_failing")[0][3] == "nfs"


class _Clock:
    """Time for the loop's thread as a test sets it: a sample costs `cost` seconds; waits end
    at once (the loop's Event) and move the time to their end."""

    def __init__(self, costs: list[float]):
        self.now = 1000.0
        self.costs = costs
        self.loop: SamplingLoop | None = None
        self.taken: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def thread_time(self) -> float:
        return 0.0

    def sample(self, t_ms, out):  # type: ignore[no-untyped-def]
        self.taken.append(self.now)
        self.now += self.costs[len(self.taken) - 1]
        if len(self.taken) == len(self.costs):
            assert self.loop is not None
            self.loop._stop.set()

    def wait(self, timeout: float) -> bool:
        self.now += max(timeout, 0.0)
        assert self.loop is not None
        return self.loop._stop.is_set()


def test_run_keeps_its_rhythm_and_skips_what_it_missed(monkeypatch):
    """Samples on a fixed grid of the monotonic clock; one that overran the interval makes
    the loop skip the ticks it missed (counted) instead of sampling in a burst to catch up."""
    records, sink = collect()
    s = Counting()
    clock = _Clock([0.01, 0.01, 0.12, 0.01, 0.049, 0.01, 0.01])  # the third overran 2 ticks
    loop = clock.loop = SamplingLoop([s], sink, interval=0.05, clock=lambda: int(clock.now * 1e3))
    monkeypatch.setattr(s, "sample", clock.sample)
    monkeypatch.setattr("para.agent.loop.time", clock)
    monkeypatch.setattr(loop._stop, "wait", clock.wait)
    loop.open()
    loop.run()
    loop.close()
    ticks = [round((t - 1000.0) / 0.05, 6) for t in clock.taken]
    assert ticks == [0, 1, 2, 5, 6, 7, 8]  # 3 and 4 were missed while sample 2 ran
    assert loop.missed_ticks == 2 and loop.samples == len(records) == 7


def test_run_in_its_thread_never_samples_ahead_of_time():
    """On the real clock, however loaded the machine: no more samples than ticks went by, the
    missed ones counted, and stop() takes one final sample."""
    records, sink = collect()
    loop = SamplingLoop([Counting()], sink, interval=0.05)
    loop.open()
    t0 = time.monotonic()
    loop.start()
    deadline = t0 + 60
    while len(records) < 8:
        assert time.monotonic() < deadline, "the loop took no 8 samples in 60 s"
        time.sleep(0.01)
    loop.stop(final_sample=True)
    elapsed = time.monotonic() - t0
    loop.close()
    in_run = len(records) - 1
    assert in_run >= 8 and loop.samples == len(records)
    # each tick is either sampled or counted as missed, and none lies in the future
    assert in_run + loop.missed_ticks <= elapsed / 0.05 + 1
    times = [t for t, _ in records]
    assert times == sorted(times)
    assert [r["node"][0][0] for _, r in records] == list(range(1, len(records) + 1))


def test_a_store_that_fails_loses_samples_but_not_the_run():
    calls = []

    def sink(t, rows):
        calls.append(t)
        if len(calls) in (2, 3):
            raise OSError(28, "No space left on device")

    messages = []
    loop = SamplingLoop([Counting()], sink, 0.01, on_message=messages.append)
    loop.open()
    for _ in range(5):
        loop.sample_once()
    assert loop.samples == 3 and loop.sink_errors == 2
    assert len(messages) == 1 and "No space left" in messages[0]
