"""Pure-Python twin of _rates: cumulative counters to per-second rates (see _rates.pyi)."""

from __future__ import annotations

import math
from array import array
from typing import Any

TWO31 = float(1 << 31)
TWO32 = float(1 << 32)


def _view(buf: object, fmt: str, name: str) -> Any:
    try:
        return memoryview(buf).cast("B").cast(fmt)  # type: ignore[arg-type, call-overload]
    except TypeError as e:
        raise ValueError(f"counter_rates: {name} is not a buffer of {fmt!r} items: {e}") from None


def counter_rates(
    keys: object | None,
    t_ms: object,
    values: object,
    valid: object | None = None,
    *,
    min_dt_s: float = 0.0,
    modulus: float = 0.0,
    moduli: object | None = None,
    max_rate: float = math.inf,
    scale: float = 1.0,
    ints: bool = False,
) -> tuple[bytearray, bytearray, int, int, int]:
    t = _view(t_ms, "q", "t_ms")
    v = _view(values, "q" if ints else "d", "values")
    n = len(t)
    k = _view(keys, "q", "keys") if keys is not None else None
    ok = _view(valid, "B", "valid") if valid is not None else None
    mods = _view(moduli, "d", "moduli") if moduli is not None else None
    for name, arr in (("values", v), ("keys", k), ("valid", ok), ("moduli", mods)):
        if arr is not None and len(arr) != n:
            raise ValueError(f"counter_rates: {name} has {len(arr)} items, t_ms has {n}")
    out = [0.0] * n
    bitmap = bytearray((n + 7) // 8)
    nulls = wraps = resets = 0
    for i in range(n):
        rate = None
        first = i == 0 or (k is not None and k[i] != k[i - 1])
        if not first and (ok is None or (ok[i] and ok[i - 1])):
            dt = (t[i] - t[i - 1]) / 1000.0
            if dt > 0 and dt >= min_dt_s:
                prev, cur = float(v[i - 1]), float(v[i])
                delta: float = cur - prev
                wrapped: float
                if delta < 0:
                    width = mods[i] if mods is not None and mods[i] > 0 else modulus
                    if width > 0:
                        wrapped = cur + width - prev
                        ok_wrap = 0 <= wrapped < width
                    else:
                        wrapped = cur + TWO32 - prev
                        ok_wrap = TWO31 <= prev < TWO32 and 0 <= wrapped < TWO31
                    if ok_wrap:
                        delta = wrapped
                        wraps += 1
                    else:
                        resets += 1
                        delta = -1.0
                if delta >= 0:
                    r = delta * scale / dt
                    if r <= max_rate:
                        rate = r
        if rate is None:
            nulls += 1
        else:
            out[i] = rate
            bitmap[i >> 3] |= 1 << (i & 7)
    data = bytearray(8 * n)
    mv = memoryview(data).cast("d")
    for i, x in enumerate(out):
        mv[i] = x
    return data, bitmap, nulls, wraps, resets


def on_steps(
    t_ms: object, rates: object, valid: object | None = None, step_ms: float = 1000.0
) -> tuple[bytearray, bytearray, int]:
    t = _view(t_ms, "q", "t_ms")
    r = _view(rates, "d", "rates")
    ok = _view(valid, "B", "valid") if valid is not None else None
    n = len(t)
    for name, arr in (("rates", r), ("valid", ok)):
        if arr is not None and len(arr) != n:
            raise ValueError(f"on_steps: {name} has {len(arr)} items, t_ms has {n}")
    if not step_ms > 0:
        raise ValueError(f"on_steps: step_ms must be above 0, not {step_ms}")
    known = [ok is None or ok[i] != 0 for i in range(n)]
    k = [round((t[i] - t[0]) / step_ms) for i in range(n)]
    # how late each look is after the grid instant it stands for, in seconds (the first
    # and the last stand where they are); an unknown rate lends nothing
    late = [0.0 if i in (0, n - 1) else (t[i] - t[0] - k[i] * step_ms) / 1000 for i in range(n)]
    dt = [0.0] + [(t[i] - t[i - 1]) / 1000 for i in range(1, n)]
    lent = [r[i] if known[i] and i > 0 else 0.0 for i in range(n)]
    data = bytearray(8 * n)
    bitmap = bytearray((n + 7) // 8)
    out = memoryview(data).cast("d")
    nulls = 0
    for i in range(n):
        good = known[i]
        if good and n >= 3 and i > 0:
            span = (k[i] - k[i - 1]) * step_ms / 1000
            good = span > 0
            if good:
                x = r[i] * dt[i]
                if late[i] > 0:  # this look late: its interval's last part is the next step's
                    x -= r[i] * min(late[i], dt[i])
                elif late[i] < 0:  # early: the next interval's first part is this step's
                    x += (lent[i + 1] if i + 1 < n else 0.0) * min(-late[i], dt[i + 1])
                # the look before late, or early: the part of an interval that moves
                x += lent[i - 1] * min(max(late[i - 1], 0.0), dt[i - 1])
                x -= r[i] * min(max(-late[i - 1], 0.0), dt[i])
                out[i] = x / span
        elif good:
            out[i] = r[i]
        if good:
            bitmap[i >> 3] |= 1 << (i & 7)
        else:
            nulls += 1
    return data, bitmap, nulls


def slot_sums(
    slots: object,
    n_slots: int,
    values: object,
    valid: object | None = None,
    maximum: bool = False,
    ints: bool = False,
) -> tuple[bytearray, bytearray]:
    sl = _view(slots, "i", "slots")
    v = _view(values, "q" if ints else "d", "values")
    ok = _view(valid, "B", "valid") if valid is not None else None
    n = len(sl)
    for name, arr in (("values", v), ("valid", ok)):
        if arr is not None and len(arr) != n:
            raise ValueError(f"slot_sums: {name} has {len(arr)} items, slots has {n}")
    out = bytearray(8 * n_slots)
    counts = bytearray(8 * n_slots)
    s = memoryview(out).cast("d")
    c = memoryview(counts).cast("q")
    for i in range(n):
        k = sl[i]
        if k < 0 or (ok is not None and not ok[i]):
            continue
        if k >= n_slots:
            raise ValueError(f"slot_sums: slot {k} at row {i} is not below n_slots {n_slots}")
        x = float(v[i])
        if not maximum:
            s[k] += x
        elif c[k] == 0 or x > s[k]:
            s[k] = x
        c[k] += 1
    return out, counts


def instants(t_ms: object) -> tuple[bytearray, bytearray]:
    t = _view(t_ms, "q", "t_ms")
    spine = sorted(set(t))
    at = {x: i for i, x in enumerate(spine)}
    return (bytearray(array("q", spine).tobytes()),
            bytearray(array("i", [at[x] for x in t]).tobytes()))  # fmt: skip


def stack_sums(
    t_ms: object,
    stacks: object,
    pids: object,
    samples: object,
    valid: object | None = None,
    n_stacks: int = 0,
    max_cells: int = 20_000_000,
) -> tuple[tuple[bytearray, bytearray, bytearray] | None,
           tuple[bytearray, bytearray, bytearray] | None]:  # fmt: skip
    t = _view(t_ms, "q", "t_ms")
    st = _view(stacks, "i", "stacks")
    pd = _view(pids, "q", "pids")
    v = _view(samples, "q", "samples")
    ok = _view(valid, "B", "valid") if valid is not None else None
    n = len(t)
    for name, arr in (("stacks", st), ("pids", pd), ("samples", v), ("valid", ok)):
        if arr is not None and len(arr) != n:
            raise ValueError(f"stack_sums: {name} has {len(arr)} items, t_ms has {n}")
    rows = [i for i in range(n) if ok is None or ok[i]]
    for i in rows:
        if not 0 <= st[i] < n_stacks:
            raise ValueError(f"stack_sums: stack {st[i]} at row {i} is not below n_stacks "
                             f"{n_stacks}")  # fmt: skip
    return (
        _pair_sums(t, st, v, rows, n_stacks, max_cells, True),
        _pair_sums(pd, st, v, rows, n_stacks, max_cells, False),
    )


def _pair_sums(keys: Any, st: Any, v: Any, rows: list[int], n_stacks: int, max_cells: int,
               ascending: bool) -> tuple[bytearray, bytearray, bytearray] | None:  # fmt: skip
    order: dict[int, int] = {}
    for i in rows:
        order.setdefault(keys[i], len(order))
    if len(order) * n_stacks > max_cells:
        return None
    if ascending:
        order = {k: r for r, k in enumerate(sorted(order))}
    sums: dict[tuple[int, int], int] = {}
    for i in rows:
        pair = (order[keys[i]], st[i])
        sums[pair] = sums.get(pair, 0) + v[i]
    key_of = list(order)
    out = [(key_of[p], k, n) for (p, k), n in sorted(sums.items()) if n > 0]
    return (bytearray(array("q", [r[0] for r in out]).tobytes()),
            bytearray(array("i", [r[1] for r in out]).tobytes()),
            bytearray(array("q", [r[2] for r in out]).tobytes()))  # fmt: skip
