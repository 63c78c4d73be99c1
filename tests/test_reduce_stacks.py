"""What the analyzer keeps of a node's call stacks, against the rows as written.

The reducer reads the `stacks` table once for four series (per second, per process, the
Python threads' and their waits); each is checked here against sums made in plain Python
from the rows the test wrote, for perf's stacks and py-spy's, in one file and across an
agent's consecutive segments.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from para.analyzer import reduce
from para.analyzer.reduce import reduce_node
from para.formats import ParaWriter
from para.formats.schema import catalogue

T0 = 1_800_000_000_000
WAITING = ("wait", "ready")


def _rows(seed: int, python: bool) -> list[tuple[int, list[Any]]]:
    """Per second, rows of [t, pid, tid, comm, stack, samples, source, state]."""
    rnd = random.Random(seed)
    perf = ["main;solve;step", "main;solve;MPI_Waitall;progress", "main;io;__pread64"]
    py = ["app.<module> (app.py:1);app.f (app.py:3)", "app.<module> (app.py:1);app.g (app.py:9)"]
    out = []
    for s in range(120):
        t = T0 + 1000 * s
        rows: list[Any] = []
        for pid in (101, 102, 103):
            for stack in rnd.sample(perf, rnd.randint(1, len(perf))):
                rows.append([t, pid, pid, "solver", stack, rnd.randint(1, 50), "perf", "cpu"])
        if python:
            for tid in (201, 202):
                for stack in rnd.sample(py, rnd.randint(1, 2)):
                    state = rnd.choice(["cpu", "cpu", "wait", "ready"])
                    rows.append([t, 200, tid, "python3", stack, rnd.randint(1, 30), "py-spy",
                                 state])  # fmt: skip
        out.append((t, rows))
    return out


def _write(path: Path, seconds: list[tuple[int, list[Any]]]) -> Path:
    w = ParaWriter(path, {"source": "para agent", "interval": 1.0, "catalogue": catalogue(),
                          "host": {"hostname": "n1", "clock_ticks": 100}})  # fmt: skip
    for t, rows in seconds:
        w.append(t, {"stacks": rows}, sample=False)
    w.close()
    return path


def _expected(seconds: list[tuple[int, list[Any]]]) -> dict[str, Counter[Any]]:
    want: dict[str, Counter[Any]] = {k: Counter() for k in ("stacks", "pstacks", "pystacks",
                                                            "waits")}  # fmt: skip
    for _, rows in seconds:
        for t, pid, tid, _comm, stack, n, source, state in rows:
            if source == "py-spy":
                want["pystacks"][(pid, tid, stack, state)] += n
            if state in WAITING:
                want["waits"][(t, stack, state)] += n
                continue
            want["stacks"][(t, stack)] += n
            want["pstacks"][(pid, stack)] += n
    return want


def _got(series: dict[str, Any]) -> dict[str, Counter[Any]]:
    cols = {
        "stacks": ("t", "stack"),
        "pstacks": ("pid", "stack"),
        "pystacks": ("pid", "tid", "stack", "state"),
        "waits": ("t", "stack", "state"),
    }
    got: dict[str, Counter[Any]] = {}
    for name, keys in cols.items():
        c: Counter[Any] = Counter()
        if name in series:
            for r in series[name].to_pylist():
                c[tuple(r[k] for k in keys)] += r["samples"]
        got[name] = c
    return got


@pytest.mark.parametrize("python", [False, True], ids=["perf", "perf+py-spy"])
@pytest.mark.parametrize("segments", [1, 3])
@pytest.mark.parametrize("cells", [reduce.MAX_CELLS, 0], ids=["array", "hashed"])
def test_the_stacks_series_hold_the_samples_written(tmp_path, monkeypatch, python, segments,
                                                    cells):  # fmt: skip
    # past MAX_CELLS keys x stacks the pairs are hashed instead of summed in an array
    monkeypatch.setattr(reduce, "MAX_CELLS", cells)
    seconds = _rows(segments * 10 + python, python)
    cut = len(seconds) // segments
    parts = [seconds[i * cut: (i + 1) * cut if i < segments - 1 else None]
             for i in range(segments)]  # fmt: skip
    paths = [_write(tmp_path / f"seg{i}.para", p) for i, p in enumerate(parts)]
    nd = reduce_node("n1", paths)
    got, want = _got(nd.series), _expected(seconds)
    assert sum(want["stacks"].values()) > 0
    assert bool(want["pystacks"]) == python and bool(want["waits"]) == python
    for name in want:
        assert got[name] == want[name], name
    # each series has one row per key: what the job's SQL sums is already summed here
    for name, keys in (("stacks", ("t", "stack")), ("pstacks", ("pid", "stack"))):
        rows = nd.series[name].to_pylist()
        assert len(rows) == len({tuple(r[k] for k in keys) for r in rows}), name


def test_names_match_the_same_plain_or_dictionary_encoded():
    # a .para file's names come dictionary-encoded; the database's (DBSource) plain
    from para.analyzer.reduce import _matches

    names = ["R", "D", None, "S", "D"]
    plain = pa.chunked_array([pa.array(names[:2]), pa.array(names[2:])])
    encoded = pa.chunked_array([pa.array(names[:2]).dictionary_encode(),
                                pa.array(names[2:]).dictionary_encode()])  # fmt: skip
    for col in (plain, encoded):
        got = _matches(col, pa.array(["D", "Z"]))
        assert got is not None and got.to_pylist() == [False, True, None, False, True]
    # a file without the column reads it as nulls of another type: no names to match
    assert _matches(pa.chunked_array([pa.nulls(3, pa.int64())]), pa.array(["D"])) is None


def test_a_program_always_waiting_has_no_hotspots(tmp_path):
    # py-spy saw its one thread waiting every second: the waits are kept, no CPU stacks
    seconds = [(T0 + 1000 * s, [[T0 + 1000 * s, 200, 201, "python3",
                                 "app.<module> (app.py:1);time.sleep", 40, "py-spy", "wait"]])
               for s in range(5)]  # fmt: skip
    nd = reduce_node("n1", [_write(tmp_path / "w.para", seconds)])
    assert sum(r["samples"] for r in nd.series["waits"].to_pylist()) == 200
    assert "stacks" not in nd.series and len(nd.series["pstacks"]) == 0
    assert _got(nd.series)["pystacks"] == _expected(seconds)["pystacks"]
