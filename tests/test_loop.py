"""A sampler that fails or hangs never stops the others."""

from __future__ import annotations

import json
import threading
import time

from para.agent.loop import SamplingLoop
from para.agent.samplers.base import Sampler, Unavailable


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
    loop = SamplingLoop([Counting(), hang], sink, interval=0.05, budget=0.05)
    loop.open()
    t0 = time.monotonic()
    for _ in range(5):
        loop.sample_once()
    spent = time.monotonic() - t0
    hang.release.set()
    time.sleep(0.05)
    loop.sample_once()
    loop.close()
    # five samples while stuck: only the first waited for the budget, the others skipped it
    assert spent < 1.0
    assert [len(r.get("fs", [])) for _, r in records] == [0, 0, 0, 0, 0, 1]
    assert all("node" in r for _, r in records)
    assert loop.status["nfs"].late >= 5
    assert events(records, "family_failing")[0][3] == "nfs"


def test_run_keeps_its_rhythm_and_stops_with_a_final_sample():
    records, sink = collect()
    loop = SamplingLoop([Counting()], sink, interval=0.05)
    loop.open()
    loop.start()
    time.sleep(0.5)
    loop.stop(final_sample=True)
    loop.close()
    times = [t for t, _ in records]
    gaps = [b - a for a, b in zip(times, times[1:-1])]
    assert 8 <= len(records) <= 13
    assert all(30 <= g <= 120 for g in gaps), gaps


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
