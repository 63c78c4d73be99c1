"""Pure-Python twin of _rates: cumulative counters to per-second rates (see _rates.pyi)."""

from __future__ import annotations

import math
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
) -> tuple[bytearray, bytearray, int, int, int]:
    t = _view(t_ms, "q", "t_ms")
    v = _view(values, "d", "values")
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


def slot_sums(
    slots: object, n_slots: int, values: object, valid: object | None = None, maximum: bool = False
) -> tuple[bytearray, bytearray]:
    sl = _view(slots, "i", "slots")
    v = _view(values, "d", "values")
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
        if not maximum:
            s[k] += v[i]
        elif c[k] == 0 or v[i] > s[k]:
            s[k] = v[i]
        c[k] += 1
    return out, counts
