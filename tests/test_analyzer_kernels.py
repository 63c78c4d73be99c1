"""The analyzer's kernels, Cython and pure Python: counters to rates (wraps, resets, gaps),
per-slot sums and maxima, and change points of phases.  Expected values are worked out by
hand in each test, and hypothesis checks that both implementations agree exactly."""

from __future__ import annotations

import array
import inspect
import math
import random

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from para.cython_ext import load

from .conftest import compiled_kernel

IMPLS = [pytest.param(False, id="cython"), pytest.param(True, id="python")]


def _mod(name: str, pure: bool):  # type: ignore[no-untyped-def]
    return load(name, pure=True) if pure else compiled_kernel(name)


@pytest.fixture(params=IMPLS)
def rates(request):  # type: ignore[no-untyped-def]
    return _mod("rates", request.param)


@pytest.fixture(params=IMPLS)
def cp(request):  # type: ignore[no-untyped-def]
    return _mod("changepoint", request.param)


def _q(xs: list[int]) -> bytes:
    return array.array("q", xs).tobytes()


def _d(xs: list[float]) -> bytes:
    return array.array("d", xs).tobytes()


def _out(res: tuple[bytearray, bytearray, int, int, int]) -> tuple[list[float | None], int, int]:
    data, bitmap, nulls, wraps, resets = res
    n = len(data) // 8
    arr = pa.Array.from_buffers(pa.float64(), n, [pa.py_buffer(bitmap), pa.py_buffer(data)],
                                null_count=nulls)  # fmt: skip
    return arr.to_pylist(), wraps, resets


def test_twins_have_the_same_functions_and_signatures():
    for name, funcs in (("rates", ("counter_rates", "slot_sums", "instants", "stack_sums",
                                   "on_steps")),
                        ("changepoint", ("segment",))):  # fmt: skip
        cy, py = compiled_kernel(name), load(name, pure=True)
        for f in funcs:
            sig_py = inspect.signature(getattr(py, f))
            assert list(sig_py.parameters) == list(inspect.signature(getattr(cy, f)).parameters)


def test_rates_per_series_first_row_null_and_scaled(rates):
    keys = _q([7, 7, 7, 9, 9])
    t = _q([0, 1000, 3000, 0, 500])
    v = _d([100, 300, 500, 10, 20])
    got, wraps, resets = _out(rates.counter_rates(keys, t, v, scale=0.5))
    # 200 over 1 s, 200 over 2 s, halved; the second series starts again
    assert got == [None, 100.0, 50.0, None, 10.0]
    assert (wraps, resets) == (0, 0)


def test_rates_reset_is_null_and_counted_never_a_negative_rate(rates):
    t = _q([0, 1000, 2000, 3000])
    v = _d([5000, 6000, 40, 140])  # the counter restarted between 1 s and 2 s
    got, wraps, resets = _out(rates.counter_rates(None, t, v))
    assert got == [None, 1000.0, None, 100.0]
    assert (wraps, resets) == (0, 1)


def test_rates_32_bit_wrap_is_recovered(rates):
    t = _q([0, 1000, 2000])
    v = _d([2**32 - 100, 50, 250])  # a legacy 32-bit NIC counter wrapped
    got, wraps, resets = _out(rates.counter_rates(None, t, v))
    assert got == [None, 150.0, 200.0]
    assert (wraps, resets) == (1, 0)


def test_small_counter_going_back_is_a_reset_not_a_wrap(rates):
    # below 2**31 a drop is a restart: a wrap would invent 4 GiB of traffic
    got, wraps, resets = _out(rates.counter_rates(None, _q([0, 1000]), _d([1000.0, 10.0])))
    assert got == [None, None] and (wraps, resets) == (0, 1)


def test_rates_with_a_known_width_per_row_rapl(rates):
    # RAPL energy_uj wraps at max_energy_range_uj (here 262143328850 uJ)
    width = 262143328850.0
    t = _q([0, 1000, 2000])
    v = _d([width - 1e6, 2e6, 5e6])
    got, wraps, _ = _out(rates.counter_rates(None, t, v, moduli=_d([width] * 3), scale=1e-6))
    assert got == [None, pytest.approx(3.0), pytest.approx(3.0)]
    assert wraps == 1


def test_rates_short_windows_missing_values_and_glitches_are_null(rates):
    t = _q([0, 6, 1000, 2000, 3000, 3000])
    v = _d([0, 1, 100, 200, 5e12, 5e12])
    valid = bytes([1, 1, 1, 0, 1, 1])
    got, _, _ = _out(rates.counter_rates(None, t, v, valid, min_dt_s=0.25, max_rate=1e9))
    # 6 ms window too short; a missing value breaks both its intervals; the 5e12 jump is a
    # glitch; the same time twice has no rate
    assert got == [None, None, pytest.approx(99 / 0.994), None, None, None]


def test_rates_reject_buffers_of_different_lengths(rates):
    with pytest.raises(ValueError, match="values has 2 items"):
        rates.counter_rates(None, _q([0, 1, 2]), _d([1.0, 2.0]))


def test_integer_values_give_what_their_floats_give(rates):
    # a counter as stored (int64) against the same counter cast to float64 first
    keys, t, v = _q([1, 1, 1, 2, 2]), _q([0, 1000, 2000, 0, 500]), [5, 9, 2**40, 7, 8]
    valid = bytes([1, 1, 1, 0, 1])
    as_ints = rates.counter_rates(keys, t, _q(v), valid, scale=0.5, ints=True)
    assert as_ints == rates.counter_rates(keys, t, _d([float(x) for x in v]), valid, scale=0.5)
    assert _out(as_ints)[0] == [None, 2.0, (2**40 - 9) / 2, None, None]
    slots = array.array("i", [0, 1, 0, 1, 0]).tobytes()
    for maximum in (False, True):
        assert rates.slot_sums(slots, 2, _q(v), valid, maximum, ints=True) == rates.slot_sums(
            slots, 2, _d([float(x) for x in v]), valid, maximum
        )


def test_slot_sums_and_max(rates):
    slots = array.array("i", [2, 0, 2, -1, 0, 2]).tobytes()
    vals = _d([1.0, 10.0, 3.0, 99.0, 20.0, 2.0])
    valid = bytes([1, 1, 1, 1, 1, 0])
    s, c = rates.slot_sums(slots, 3, vals, valid)
    assert list(memoryview(s).cast("d")) == [30.0, 0.0, 4.0]
    assert list(memoryview(c).cast("q")) == [2, 0, 2]
    m, c = rates.slot_sums(slots, 3, vals, valid, maximum=True)
    assert list(memoryview(m).cast("d")) == [20.0, 0.0, 3.0]
    with pytest.raises(ValueError, match="slot 3"):
        rates.slot_sums(array.array("i", [3]).tobytes(), 3, _d([1.0]))


def test_segment_finds_the_steps_of_a_step_signal(cp):
    rnd = random.Random(7)
    levels = [(0.0, 120), (4.0, 80), (1.0, 200), (6.0, 60)]
    xs = [mu + rnd.gauss(0, 1) for mu, n in levels for _ in range(n)]
    ends = cp.segment(_d(xs), len(xs), 1, penalty=3 * 2 * math.log(len(xs)), min_size=5)
    # each change found, to within two samples of noise
    assert len(ends) == 4 and ends[-1] == 460
    assert all(abs(a - b) <= 2 for a, b in zip(ends, [120, 200, 400, 460], strict=True))


def test_segment_two_dimensions_and_min_size(cp):
    # the first dimension changes at 30, the second at 60; a 2-row blip is shorter than
    # min_size and is not a segment of its own
    rows = []
    for i in range(100):
        a = 5.0 if i >= 30 else 0.0
        b = 5.0 if i >= 60 else 0.0
        if i in (80, 81):
            a += 50.0
        rows.extend([a, b])
    ends = cp.segment(_d(rows), 100, 2, penalty=20.0, min_size=5)
    assert (
        ends[:2] == [30, 60]
        and ends[-1] == 100
        and all(b - a >= 5 for a, b in zip([0, *ends], ends, strict=False))
    )


def test_segment_flat_series_and_bad_input(cp):
    assert cp.segment(_d([1.0] * 50), 50, 1, penalty=10.0) == [50]
    assert cp.segment(_d([]), 0, 1, penalty=1.0) == []
    assert cp.segment(_d([1.0, 2.0]), 2, 1, penalty=1.0, min_size=2) == [2]
    with pytest.raises(ValueError, match="n \\* d"):
        cp.segment(_d([1.0] * 5), 3, 2, penalty=1.0)
    with pytest.raises(ValueError, match="penalty"):
        cp.segment(_d([1.0] * 4), 4, 1, penalty=math.nan)


finite = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1500), finite,
                          st.booleans()), max_size=60))  # fmt: skip
def test_rate_twins_agree(rows):
    rows.sort(key=lambda r: r[0])  # grouped by key; times need not grow (dt <= 0 is null)
    t, acc = [], 0
    for r in rows:
        acc += r[1]
        t.append(acc)
    args = (_q([r[0] for r in rows]), _q(t), _d([r[2] for r in rows]),
            bytes(int(r[3]) for r in rows))  # fmt: skip
    cy = compiled_kernel("rates").counter_rates(*args, min_dt_s=0.1, scale=0.01)
    py = load("rates", pure=True).counter_rates(*args, min_dt_s=0.1, scale=0.01)
    assert cy == py


def _on_steps(rates, t: list[int], r: list[float | None], step_ms: float) -> list[float | None]:
    valid = bytes(x is not None for x in r)
    data, bitmap, nulls = rates.on_steps(_q(t), _d([x or 0.0 for x in r]), valid, step_ms)
    return _out((data, bitmap, nulls, 0, 0))[0]


def test_on_steps_moves_what_late_and_early_looks_measured(rates):
    # looks due every 0.5 s: the second 10 ms late, the fourth 10 ms early
    got = _on_steps(rates, [0, 510, 1000, 1490, 2000], [None, 1.0, 3.0, 2.0, 4.0], 500.0)
    # step 1: 0.51 s at 1 less the 0.01 s past its end; step 2 takes that 0.01 s, and 0.49
    # at 3; step 3: 0.49 s at 2 and the next interval's first 0.01 s at 4; step 4 the rest
    assert got == pytest.approx([None, 1.0, (0.01 + 1.47) / 0.5, (0.98 + 0.04) / 0.5, 4.0])
    assert sum(got[1:]) * 0.5 == pytest.approx(0.51 + 1.47 + 0.98 + 2.04)
    # a look on the step of the look before has no step of its own; unknown rates stay so;
    # the first look, and a series of two, as they were
    got = _on_steps(rates, [0, 500, 700, 1000, 1500], [2.0, 1.0, 1.0, None, 1.0], 500.0)
    assert got[0] == 2.0 and got[2] is None and got[3] is None
    assert _on_steps(rates, [0, 730], [None, 5.0], 500.0) == [None, 5.0]
    with pytest.raises(ValueError, match="rates has 1 items"):
        rates.on_steps(_q([0, 1]), _d([1.0]), None, 500.0)
    with pytest.raises(ValueError, match="step_ms"):
        rates.on_steps(_q([0, 1]), _d([1.0, 1.0]), None, 0.0)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(-400, 1400), st.floats(0, 1e6), st.booleans()), max_size=40),
    st.sampled_from([100.0, 500.0, 1000.0, 333.0]),
)
def test_on_steps_twins_agree(rows, step_ms):
    t, acc = [], 2**40
    for dt, _, _ in rows:  # any gaps, a few going back (never in a recording)
        acc += dt
        t.append(acc)
    r = [x if known else None for _, x, known in rows]
    cy = compiled_kernel("rates").on_steps(_q(t), _d([x or 0.0 for x in r]),
                                           bytes(x is not None for x in r), step_ms)  # fmt: skip
    py = load("rates", pure=True).on_steps(_q(t), _d([x or 0.0 for x in r]),
                                           bytes(x is not None for x in r), step_ms)  # fmt: skip
    assert cy == py


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(min_value=-100, max_value=100), min_size=0, max_size=80),
       st.integers(1, 3), st.integers(1, 6), st.floats(0, 200))  # fmt: skip
def test_segment_twins_agree(xs, d, min_size, penalty):
    n = len(xs) // d
    data = _d(xs[: n * d])
    cy = compiled_kernel("changepoint").segment(data, n, d, penalty=penalty, min_size=min_size)
    py = load("changepoint", pure=True).segment(data, n, d, penalty=penalty, min_size=min_size)
    assert cy == py


# Every option of counter_rates, and slot_sums, on generated rows: counters that wrap at 32 bits
# or at a known width (per row, as RAPL's, or one for all), resets, glitches above max_rate,
# missing values, windows shorter than min_dt_s, times that do not advance.
COUNTER = st.one_of(
    st.integers(0, 2**12).map(float),
    st.floats(2**31, 2**32 - 1),  # a 32-bit counter about to wrap
    st.floats(0, 2**40, allow_nan=False),
    st.sampled_from([math.inf, -math.inf, math.nan, -0.0, -1.0]),
)
INT_COUNTER = st.one_of(
    st.integers(0, 2**12),
    st.integers(2**31, 2**32 - 1),
    st.integers(-(2**63), 2**63 - 1),  # past 2**53: read as the nearest float
)
WIDTH = st.one_of(st.just(0.0), st.just(-1.0), st.floats(1, 2**33), st.just(math.nan))


def _outcome(fn, *args, **kw):  # type: ignore[no-untyped-def]
    try:
        return ("ok", tuple(bytes(x) if isinstance(x, bytearray) else x for x in fn(*args, **kw)))
    except ValueError as e:
        return ("error", str(e))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_rate_twins_agree_on_every_option(data):
    n = data.draw(st.integers(0, 50))
    rows = st.lists
    keys = data.draw(st.one_of(st.none(), rows(st.integers(0, 3), min_size=n, max_size=n)))
    steps = data.draw(rows(st.integers(-200, 1500), min_size=n, max_size=n))
    t0 = data.draw(st.integers(0, 2**50))
    t = [t0 + sum(steps[: i + 1]) for i in range(n)]
    values = data.draw(rows(COUNTER, min_size=n, max_size=n))
    valid = data.draw(st.one_of(st.none(), rows(st.booleans(), min_size=n, max_size=n)))
    moduli = data.draw(st.one_of(st.none(), rows(WIDTH, min_size=n, max_size=n)))
    kw = {
        "min_dt_s": data.draw(st.sampled_from([0.0, 0.1, 1.0])),
        "modulus": data.draw(WIDTH),
        "moduli": None if moduli is None else _d(moduli),
        "max_rate": data.draw(st.one_of(st.just(math.inf), st.floats(0, 1e12), st.just(math.nan))),
        "scale": data.draw(st.sampled_from([1.0, 0.01, 8.0, -1.0, 0.0])),
    }
    ints = data.draw(st.booleans())  # counters as stored: 64-bit integers
    if ints:
        values = data.draw(rows(INT_COUNTER, min_size=n, max_size=n))
    args = (None if keys is None else _q(sorted(keys)), _q(t), _q(values) if ints else
            _d(values), None if valid is None else bytes(valid))  # fmt: skip
    kw["ints"] = ints
    got = _outcome(compiled_kernel("rates").counter_rates, *args, **kw)
    assert got == _outcome(load("rates", pure=True).counter_rates, *args, **kw)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_slot_sums_twins_agree(data):
    n_slots = data.draw(st.integers(0, 6))
    n = data.draw(st.integers(0, 50))
    slots = data.draw(st.lists(st.integers(-2, n_slots), min_size=n, max_size=n))
    ints = data.draw(st.booleans())
    numbers = INT_COUNTER if ints else st.floats(width=64)
    values = data.draw(st.lists(numbers, min_size=n, max_size=n))
    valid = data.draw(st.one_of(st.none(), st.lists(st.booleans(), min_size=n, max_size=n)))
    args = (array.array("i", slots).tobytes(), n_slots, _q(values) if ints else _d(values),
            None if valid is None else bytes(valid))  # fmt: skip
    for maximum in (False, True):
        got = _outcome(compiled_kernel("rates").slot_sums, *args, maximum=maximum, ints=ints)
        assert got == _outcome(load("rates", pure=True).slot_sums, *args, maximum=maximum,
                               ints=ints)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-5, 40), max_size=60), st.booleans())
def test_slots_in_time_order_agree_with_hashing(ts, ordered):
    """reduce._slots takes a shortcut for rows in time order (call stacks): the same
    instants and positions as looking every row up among the sorted distinct instants."""
    import pyarrow.compute as pc

    from para.analyzer.reduce import _slots

    t = pa.array(sorted(ts) if ordered else ts, pa.int64())
    spine, slots = _slots(t)
    want = sorted(set(t.to_pylist()))
    assert spine.to_pylist() == want
    assert slots.type == pa.int32()
    assert slots.to_pylist() == [want.index(v) for v in t.to_pylist()]
    assert pc.sum(pc.is_null(slots)).as_py() in (0, None)


def _i(xs: list[int]) -> bytes:
    return array.array("i", xs).tobytes()


def _sums(res):  # type: ignore[no-untyped-def]
    """stack_sums' two results as lists of (key, stack, samples) rows (None stays None)."""
    out = []
    for bufs in res:
        if bufs is None:
            out.append(None)
            continue
        keys, stacks, n = (array.array(c, bytes(b)).tolist() for c, b in zip("qiq", bufs))
        out.append(list(zip(keys, stacks, n, strict=True)))
    return out


def test_stack_sums_per_instant_and_per_process(rates):
    # t, stack, pid, samples: two instants, three processes, stacks 0-2; a row left out
    rows = [(1000, 2, 7, 5), (1000, 0, 9, 1), (1000, 2, 9, 4), (2000, 1, 9, 3),
            (2000, 0, 7, 0), (2000, 1, 8, 2), (2000, 2, 8, 99)]  # fmt: skip
    t, stack, pid, n = (list(c) for c in zip(*rows, strict=True))
    valid = bytes([1, 1, 1, 1, 1, 1, 0])
    per_t, per_pid = _sums(rates.stack_sums(_q(t), _i(stack), _q(pid), _q(n), valid,
                                            n_stacks=3))  # fmt: skip
    # per instant in stack order; stack 0 at 2000 had no samples: no row
    assert per_t == [(1000, 0, 1), (1000, 2, 9), (2000, 1, 5)]
    # processes in order of their first row, then stack order
    assert per_pid == [(7, 2, 5), (9, 0, 1), (9, 1, 3), (9, 2, 4), (8, 1, 2)]
    # rows in any order (a part stores them by process and stack, then time): the same
    order = [6, 3, 0, 5, 1, 4, 2]
    again = rates.stack_sums(*(_q([c[i] for i in order]) if f == "q" else
                               _i([c[i] for i in order]) for c, f in
                               ((t, "q"), (stack, "i"), (pid, "q"), (n, "q"))),
                             bytes(valid[i] for i in order), n_stacks=3)  # fmt: skip
    assert _sums(again)[0] == per_t
    assert sorted(_sums(again)[1]) == sorted(per_pid)
    # more instants or processes x stacks than max_cells: none (the caller hashes)
    per_t, per_pid = _sums(rates.stack_sums(_q(t), _i(stack), _q(pid), _q(n), valid,
                                            n_stacks=3, max_cells=8))  # fmt: skip
    assert per_t == [(1000, 0, 1), (1000, 2, 9), (2000, 1, 5)] and per_pid is None
    with pytest.raises(ValueError, match="stack 3 at row 0"):
        rates.stack_sums(_q([0]), _i([3]), _q([1]), _q([1]), n_stacks=3)


def test_instants_are_the_runs_of_equal_times(rates):
    spine, slots = rates.instants(_q([9, 5, 5, 7, 9, -3]))
    assert array.array("q", bytes(spine)).tolist() == [-3, 5, 7, 9]
    assert array.array("i", bytes(slots)).tolist() == [3, 1, 1, 2, 3, 0]
    assert [bytes(x) for x in rates.instants(_q([]))] == [b"", b""]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_stack_sums_twins_agree(data):
    n = data.draw(st.integers(0, 60))
    n_stacks = data.draw(st.integers(0, 5))
    rows = st.lists
    t = data.draw(rows(st.sampled_from([-2**62, -5, 0, 1000, 2000, 2**40]), min_size=n,
                       max_size=n))  # fmt: skip
    stacks = data.draw(rows(st.integers(-1, n_stacks), min_size=n, max_size=n))
    pids = data.draw(rows(st.sampled_from([-1, 0, 7, 2**40, 9, 9]), min_size=n, max_size=n))
    samples = data.draw(rows(st.integers(-3, 2**20), min_size=n, max_size=n))
    valid = data.draw(st.one_of(st.none(), rows(st.booleans(), min_size=n, max_size=n)))
    args = (_q(t), _i(stacks), _q(pids), _q(samples), None if valid is None else bytes(valid))
    kw = {"n_stacks": n_stacks, "max_cells": data.draw(st.sampled_from([0, 4, 20_000_000]))}

    def outcome(mod):  # type: ignore[no-untyped-def]
        try:
            return "ok", _sums(mod.stack_sums(*args, **kw)), mod.instants(_q(t))
        except ValueError as e:
            return "error", str(e), mod.instants(_q(t))

    cy, py = outcome(compiled_kernel("rates")), outcome(load("rates", pure=True))
    assert cy[:2] == py[:2]
    assert [bytes(x) for x in cy[2] or ()] == [bytes(x) for x in py[2] or ()]
