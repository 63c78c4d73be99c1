"""The `rates` kernel against its pure-Python twin and against SQL, on one node of the
benchmark job (gen_job.py: 64 CPUs and 32 ranks for an hour).

- counter_rates: per-CPU `user` ticks (230,400 rows, 64 series) to rates, resets nulled;
  the SQL anchor is DuckDB's window function doing the same (lag per CPU, a negative
  difference nulled), on the same Arrow table, one thread;
- slot_sums: the job's CPU per second, summed over its 33 processes (118,800 rows) into the
  node's 3,600 instants; the anchors are Arrow's hash group-by and DuckDB's GROUP BY.
- instants: the node's 3,600 instants among the 118,800 process rows (stored by process,
  then time); the anchor is what reduce.py did before it (Arrow: unique, sort, index_in).
- stack_sums: the node's call stacks (304,128 rows of perf's stacks folded per second)
  summed per second and stack and per process and stack, in one call; the anchors are
  what reduce.py did before it (instants by index_in, pairs by arithmetic, slot_sums, and
  Arrow's group-by per process), Arrow's group-by for both, and DuckDB's GROUP BY for both.

Medians of 7 repeats (the twin: of 3).

    .venv/bin/python benchmarks/bench_rates.py
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import duckdb  # noqa: E402
import gen_job  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

from para.analyzer.reduce import Source, _data, _flat, _slots, _stack_sums, _t_ms  # noqa: E402
from para.cython_ext import load  # noqa: E402


def median_time(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    files = gen_job.make_job(Path("/tmp/para-bench-job") / "8x3600", 8, 3600)
    src = Source(files[4])
    cpu = src.read("cpu", ["t", "cpu", "user"])
    proc = src.read("proc", ["t", "pid", "utime", "stime"])
    assert cpu is not None and proc is not None
    keys = _flat(cpu["cpu"], pa.int64())
    t = _flat(cpu["t"], pa.timestamp("ms", tz="UTC")).cast(pa.int64())
    v = _flat(cpu["user"], pa.float64())
    bufs = (_data(keys), _data(t), _data(v))
    cy, py = load("rates", pure=False), load("rates", pure=True)
    print(f"counter_rates: {len(cpu):,} rows of per-CPU user ticks, 64 series")
    res = {}
    res["Cython kernel"] = median_time(lambda: cy.counter_rates(*bufs, min_dt_s=0.25), 7)
    res["pure-Python twin"] = median_time(lambda: py.counter_rates(*bufs, min_dt_s=0.25), 3)
    con = duckdb.connect()
    con.execute("SET threads TO 1")
    arrow = pa.table({"cpu": keys, "t": t, "v": v})
    con.register("cpu", arrow)
    sql = (
        "SELECT CASE WHEN d >= 0 AND dt >= 250 THEN d / (dt / 1000.0) END FROM ("
        "SELECT v - lag(v) OVER w AS d, t - lag(t) OVER w AS dt FROM cpu "
        "WINDOW w AS (PARTITION BY cpu ORDER BY t))"
    )
    res["DuckDB window (lag), 1 thread"] = median_time(lambda: con.sql(sql).to_arrow_table(), 7)
    _table(res, "Cython kernel")

    tp = _flat(proc["t"], pa.timestamp("ms", tz="UTC")).cast(pa.int64())
    values = _flat(pc.add(proc["utime"], proc["stime"]), pa.float64())
    cols = {f"v{i}": pc.multiply(values, pa.scalar(float(i + 1))) for i in range(5)}
    print(
        f"\nslot_sums: {len(proc):,} process rows, 5 columns (as reduce.py sums CPU, memory,"
        " reads, writes, D state) summed into the node's 3,600 instants"
    )

    def kernel() -> Any:
        spine, slots = _slots(tp)
        return [cy.slot_sums(_data(slots), len(spine), _data(c)) for c in cols.values()]

    def twin() -> Any:
        spine, slots = py.instants(_data(tp))
        return [py.slot_sums(slots, len(spine) // 8, _data(c)) for c in cols.values()]

    tab = pa.table({"t": tp, **cols})
    con.register("proc", tab)
    sums = ", ".join(f"sum({c})" for c in cols)
    res = {
        "instants + Cython slot_sums": median_time(kernel, 7),
        "instants + pure-Python twin": median_time(twin, 3),
        "Arrow group_by (1 thread)": median_time(
            lambda: tab.group_by("t", use_threads=False).aggregate([(c, "sum") for c in cols]), 7
        ),
        "DuckDB GROUP BY, 1 thread": median_time(
            lambda: con.sql(f"SELECT t, {sums} FROM proc GROUP BY t").to_arrow_table(), 7
        ),
    }
    _table(res, "instants + Cython slot_sums")
    _instants(cy, py, tp)
    _stacks(cy, py, src, con)
    _on_steps(cy, py, tp, values)


def _instants(cy: Any, py: Any, tp: pa.Array) -> None:
    print(f"\ninstants: {len(tp):,} process rows (by process, then time) into their instants")

    def arrow() -> Any:
        spine = pc.unique(tp)
        spine = spine.take(pc.sort_indices(spine))
        return spine, pc.index_in(tp, value_set=spine)

    res = {
        "Cython instants": median_time(lambda: cy.instants(_data(tp)), 7),
        "pure-Python twin": median_time(lambda: py.instants(_data(tp)), 3),
        "before: Arrow unique, sort, index_in": median_time(arrow, 7),
    }
    _table(res, "Cython instants")


def _stacks(cy: Any, py: Any, src: Source, con: duckdb.DuckDBPyConnection) -> None:
    tab = src.read("stacks", ["t", "pid", "stack", "samples"], ("stack",))
    assert tab is not None
    stack = tab["stack"].combine_chunks()
    t, pid, samples = _t_ms(tab), tab["pid"].combine_chunks(), tab["samples"].combine_chunks()
    print(f"\nstack_sums: {len(tab):,} rows of call stacks ({len(stack.dictionary)} distinct)"
          " per second and stack, and per process and stack")  # fmt: skip
    idx = _flat(stack.indices, pa.int32())
    bufs = (_data(t), _data(idx), _data(_flat(pid, pa.int64())), _data(samples))

    def before() -> Any:  # reduce.py's two steps before the kernel
        spine, tslot = _slots_by_index_in(t)
        n = len(stack.dictionary)
        slot = pc.add(pc.multiply(tslot.cast(pa.int64()), pa.scalar(n, pa.int64())),
                      idx.cast(pa.int64())).cast(pa.int32())  # fmt: skip
        v = _flat(samples, pa.float64())
        sums, _ = cy.slot_sums(_data(slot), len(spine) * n, _data(v))
        per_pid = tab.group_by(["pid", "stack"], use_threads=False).aggregate([("samples", "sum")])
        return sums, per_pid

    plain = pa.table({"t": t, "pid": pid, "stack": stack.cast(pa.string()), "samples": samples})
    con.register("stacks", plain)
    res = {
        "Cython stack_sums": median_time(
            lambda: cy.stack_sums(*bufs, n_stacks=len(stack.dictionary)), 7
        ),
        "reduce.py's step (Arrow in and out)": median_time(
            lambda: _stack_sums(t, stack, pid, samples), 7
        ),
        "pure-Python twin": median_time(
            lambda: py.stack_sums(*bufs, n_stacks=len(stack.dictionary)), 1
        ),
        "before: index_in + slot_sums, group-by": median_time(before, 7),
        "Arrow group_by x 2 (1 thread)": median_time(
            lambda: [
                tab.group_by([k, "stack"], use_threads=False).aggregate([("samples", "sum")])
                for k in ("t", "pid")
            ],
            7,
        ),  # fmt: skip
        "DuckDB GROUP BY x 2, 1 thread": median_time(
            lambda: [
                con.sql(
                    f"SELECT {k}, stack, sum(samples) FROM stacks GROUP BY ALL"
                ).to_arrow_table()
                for k in ("t", "pid")
            ],
            7,
        ),  # fmt: skip
    }
    _table(res, "Cython stack_sums")


def _on_steps(cy: Any, py: Any, tp: pa.Array, cpu: pa.Array) -> None:
    spine, slots = _slots(tp)
    sums, counts = cy.slot_sums(_data(slots), len(spine), _data(cpu))
    ticks = pa.Array.from_buffers(pa.float64(), len(spine), [None, pa.py_buffer(sums)])
    rng = random.Random(10)
    t = pa.array([x + rng.randint(0, 14) for x in spine.to_pylist()], pa.int64())
    rate, _, _, _, _ = cy.counter_rates(None, _data(t), _data(ticks), scale=0.01)
    r = pa.Array.from_buffers(pa.float64(), len(t), [None, pa.py_buffer(rate)])
    valid = _data(_flat(pc.greater(pa.array(range(len(t))), 0), pa.uint8()))
    print(f"\non_steps: the job's CPU at {len(t):,} looks, each 0-14 ms late, onto the steps")
    res = {
        "Cython on_steps": median_time(lambda: cy.on_steps(_data(t), _data(r), valid, 1000.0), 7),
        "pure-Python twin": median_time(lambda: py.on_steps(_data(t), _data(r), valid, 1000.0), 3),
        "Arrow compute (its first version)": median_time(lambda: _on_steps_arrow(t, r, 1000.0), 7),
    }
    _table(res, "Cython on_steps")


def _shift(arr: pa.Array, by: int, fill: float) -> pa.Array:
    pad = pa.array([fill] * abs(by), arr.type)
    if by > 0:
        return pa.concat_arrays([pad, arr.slice(0, len(arr) - by)])
    return pa.concat_arrays([arr.slice(-by), pad])


def _on_steps_arrow(t_ms: pa.Array, rate: pa.Array, step_ms: float) -> pa.Array:
    n, z = len(t_ms), pa.scalar(0.0)
    t = pc.cast(t_ms, pa.float64())
    t0 = t[0].as_py()
    grid = pc.add(pc.multiply(pc.round(pc.divide(pc.subtract(t, t0), step_ms)), step_ms), t0)
    dt = pc.divide(pc.subtract(t, _shift(t, 1, t0)), 1000.0)
    r = pc.fill_null(rate, z)
    used = pc.cumulative_sum(pc.multiply(r, dt))
    late = pc.divide(pc.subtract(t, grid), 1000.0)
    late = pa.concat_arrays([pa.array([0.0]), late.slice(1, n - 2), pa.array([0.0])])
    back = pc.multiply(pc.min_element_wise(pc.max_element_wise(late, z), dt), r)
    ahead = pc.multiply(
        pc.min_element_wise(pc.max_element_wise(pc.negate(late), z), _shift(dt, -1, 0.0)),
        _shift(r, -1, 0.0),
    )
    at_grid = pc.add(pc.subtract(used, back), ahead)
    span = pc.divide(pc.subtract(grid, _shift(grid, 1, t0)), 1000.0)
    out = pc.divide(pc.subtract(at_grid, _shift(at_grid, 1, 0.0)), span)
    keep = pc.and_(pc.is_valid(rate), pc.greater(span, z))
    return pc.if_else(keep, out, pa.scalar(None, pa.float64()))


def _slots_by_index_in(t: pa.Array) -> tuple[pa.Array, pa.Array]:
    spine = pc.unique(t)
    spine = spine.take(pc.sort_indices(spine))
    return spine, _flat(pc.index_in(t, value_set=spine), pa.int32())


def _table(res: dict[str, float], base: str) -> None:
    print(f"  {'':36} {'median ms':>10} {'vs kernel':>10}")
    for name, s in res.items():
        print(f"  {name:36} {1000 * s:10.2f} {s / res[base]:9.1f}x")


if __name__ == "__main__":
    main()
