"""Pure-Python twin of _changepoint: PELT segmentation with a change-in-mean cost
(see _changepoint.pyi).  Written to be read: the kernel does the same, in the same order of
floating-point operations, so both give the same segments."""

from __future__ import annotations

import math
from typing import Any


def _check(data: object, n: int, d: int, penalty: float) -> Any:
    try:
        x = memoryview(data).cast("B").cast("d")  # type: ignore[arg-type]
    except TypeError as e:
        raise ValueError(f"segment: data is not a buffer of float64: {e}") from None
    if n < 0 or d < 1 or len(x) != n * d:
        raise ValueError(f"segment: data holds {len(x)} values, not n * d = {n} * {d}")
    if not (penalty >= 0 and math.isfinite(penalty)):
        raise ValueError(f"segment: penalty must be a finite number >= 0, not {penalty}")
    return x


def segment(data: object, n: int, d: int, *, penalty: float, min_size: int = 2) -> list[int]:
    x = _check(data, n, d, penalty)
    if n == 0:
        return []
    m = max(1, int(min_size))
    if n < 2 * m:
        return [n]
    # prefix sums: s1[t*d + j] = sum of column j over rows < t; s2[t] = sum of all squares
    s1 = [0.0] * ((n + 1) * d)
    s2 = [0.0] * (n + 1)
    for t in range(n):
        sq = 0.0
        for j in range(d):
            val = x[t * d + j]
            s1[(t + 1) * d + j] = s1[t * d + j] + val
            sq += val * val
        s2[t + 1] = s2[t] + sq

    def cost(a: int, b: int) -> float:
        length = b - a
        c = s2[b] - s2[a]
        for j in range(d):
            s = s1[b * d + j] - s1[a * d + j]
            c -= s * s / length
        return c

    inf = math.inf
    f = [inf] * (n + 1)
    f[0] = -penalty
    last = [0] * (n + 1)
    cands = [0]
    for t in range(m, n + 1):
        best = inf
        best_tau = 0
        costs: list[float] = []
        for tau in cands:
            if t - tau >= m:
                c = f[tau] + cost(tau, t)
                costs.append(c)
                if c + penalty < best:
                    best = c + penalty
                    best_tau = tau
            else:
                costs.append(-inf)  # too recent to end a segment at t: keep it
        f[t] = best
        last[t] = best_tau
        # PELT's pruning: a start that already costs more than the best cannot win later
        cands = [tau for tau, c in zip(cands, costs, strict=True) if c <= best]
        if t - m + 1 >= m:
            cands.append(t - m + 1)
    ends = []
    t = n
    while t > 0:
        ends.append(t)
        t = last[t]
    ends.reverse()
    return ends
