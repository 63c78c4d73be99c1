"""A rate measured between looks, made the rate of the report's steps.

The report puts every look on a grid of steps (sql/job.sql: the k-th look of a node on its
k-th step) and counts each step as one interval long.  A look taken late (an agent beside
a CPU hog on each core looks 0.486-0.514 s apart at 0.5 s) measured a rate over a longer or
shorter time than that: counted over the nominal step, a job whose CPU came in lumps (the
children of a script, credited when reaped) gained or lost up to 0.05 s of 4.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

_F0 = pa.scalar(0.0)


def _shift(arr: pa.Array, by: int, fill: pa.Scalar) -> pa.Array:
    """`arr` moved `by` places later (negative: earlier), the places left filled."""
    pad = pa.array([fill.as_py()] * abs(by), arr.type)
    if by > 0:
        return pa.concat_arrays([pad, arr.slice(0, len(arr) - by)])
    return pa.concat_arrays([arr.slice(-by), pad])


def rates_on_steps(t_ms: pa.Array, rate: pa.Array, step_ms: float) -> pa.Array:
    """Each look's rate over the interval since the look before, as the rate of the step
    the look stands for: step k spans the grid instants t0 + (k-1) steps to t0 + k steps,
    t0 the first look, and a look stands for the grid instant nearest it.  A late look's
    interval lends its last part to the next step; an early one's next interval lends its
    first part to this step.  What the rates held between the first and the last look is
    kept (the last step takes what its look measured past the grid), and each step's rate
    is a blend of two intervals' (never above the faster).  Nulls (no rate known: a first
    look, a counter reset) stay null and lend nothing."""
    n = len(t_ms)
    if n < 3:
        return rate
    t = pc.cast(t_ms, pa.float64())
    t0 = t[0].as_py()
    grid = pc.add(pc.multiply(pc.round(pc.divide(pc.subtract(t, t0), step_ms)), step_ms), t0)
    dt = pc.divide(pc.subtract(t, _shift(t, 1, pa.scalar(t0))), 1000.0)
    r = pc.fill_null(rate, _F0)
    used = pc.cumulative_sum(pc.multiply(r, dt))
    # how late each look is (the first and the last stand where they are); a late look's
    # own interval, or an early one's next, at its rate, to the grid instant
    late = pc.divide(pc.subtract(t, grid), 1000.0)
    late = pa.concat_arrays([pa.array([0.0]), late.slice(1, n - 2), pa.array([0.0])])
    back = pc.multiply(pc.min_element_wise(pc.max_element_wise(late, _F0), dt), r)
    ahead = pc.multiply(
        pc.min_element_wise(pc.max_element_wise(pc.negate(late), _F0), _shift(dt, -1, _F0)),
        _shift(r, -1, _F0),
    )
    at_grid = pc.add(pc.subtract(used, back), ahead)
    span = pc.divide(pc.subtract(grid, _shift(grid, 1, pa.scalar(t0))), 1000.0)
    out = pc.divide(pc.subtract(at_grid, _shift(at_grid, 1, _F0)), span)
    keep = pc.and_(pc.is_valid(rate), pc.greater(span, _F0))
    return pc.if_else(keep, out, pa.scalar(None, pa.float64()))
