# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Cython kernel: cumulative counters to per-second rates, with wraps and resets.

Same function, signature and results as rates_py (the twin, see _rates.pyi); this one makes
one pass over typed buffers without the GIL, so a per-core table of a 64-CPU node for an hour
(230,000 rows) takes about a millisecond.
"""

from libc.math cimport INFINITY, rint
from libc.stdlib cimport calloc, free, malloc, qsort, realloc

cdef double TWO31 = 2147483648.0
cdef double TWO32 = 4294967296.0
_ONE = b"\x01"  # a `valid` buffer for calls without one (never read then)
_D1 = b"\x00" * 8  # the view of the kind of values not given (never read)
_Q1 = b"\x00" * 8


cdef const unsigned char[:] _bytes(object buf, str name):
    try:
        return memoryview(buf).cast("B")
    except TypeError as e:
        raise ValueError(f"counter_rates: {name} is not a buffer: {e}") from None


cdef const unsigned char[:] _valid(object valid, Py_ssize_t n, str fn, str against):
    cdef const unsigned char[:] ok = _bytes(valid, "valid")
    if ok.shape[0] != n:
        raise ValueError(f"{fn}: valid has {ok.shape[0]} items, {against} has {n}")
    return ok


def counter_rates(
    keys,
    t_ms,
    values,
    valid=None,
    *,
    double min_dt_s=0.0,
    double modulus=0.0,
    moduli=None,
    double max_rate=INFINITY,
    double scale=1.0,
    bint ints=False,
):
    cdef const long long[:] t = memoryview(t_ms).cast("B").cast("q")
    # one of the two views is the values (64-bit integers with `ints`), the other unused
    cdef const double[:] v = memoryview(_D1 if ints else values).cast("B").cast("d")
    cdef const long long[:] vi = memoryview(values if ints else _Q1).cast("B").cast("q")
    cdef Py_ssize_t n = t.shape[0]
    cdef Py_ssize_t n_values = vi.shape[0] if ints else v.shape[0]
    cdef const long long[:] k
    cdef const unsigned char[:] ok
    cdef const double[:] mods
    cdef bint has_k = keys is not None
    cdef bint has_ok = valid is not None
    cdef bint has_mods = moduli is not None
    if n_values != n:
        raise ValueError(f"counter_rates: values has {n_values} items, t_ms has {n}")
    if has_k:
        k = memoryview(keys).cast("B").cast("q")
        if k.shape[0] != n:
            raise ValueError(f"counter_rates: keys has {k.shape[0]} items, t_ms has {n}")
    if has_ok:
        ok = _valid(valid, n, "counter_rates", "t_ms")
    if has_mods:
        mods = memoryview(moduli).cast("B").cast("d")
        if mods.shape[0] != n:
            raise ValueError(f"counter_rates: moduli has {mods.shape[0]} items, t_ms has {n}")
    data = bytearray(8 * n)
    bitmap = bytearray((n + 7) // 8)
    cdef double[:] out = memoryview(data).cast("d")
    cdef unsigned char[:] bits = bitmap
    cdef Py_ssize_t i
    cdef long long nulls = 0, wraps = 0, resets = 0
    cdef double dt, prev, cur, delta, width, wrapped, r
    cdef bint good, ok_wrap
    with nogil:
        for i in range(n):
            good = False
            if i > 0 and not (has_k and k[i] != k[i - 1]) and not (
                has_ok and (ok[i] == 0 or ok[i - 1] == 0)
            ):
                dt = (t[i] - t[i - 1]) / 1000.0
                if dt > 0 and dt >= min_dt_s:
                    prev = <double>vi[i - 1] if ints else v[i - 1]
                    cur = <double>vi[i] if ints else v[i]
                    delta = cur - prev
                    if delta < 0:
                        width = mods[i] if has_mods and mods[i] > 0 else modulus
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
                            out[i] = r
                            good = True
            if good:
                bits[i >> 3] |= <unsigned char>(1 << (i & 7))
            else:
                nulls += 1
    return data, bitmap, nulls, wraps, resets


cdef inline double _late(const long long[:] t, Py_ssize_t i, Py_ssize_t n,
                          double step_ms) noexcept nogil:
    # how late look i is after the grid instant it stands for (the first and the last
    # stand where they are), in seconds
    if i == 0 or i == n - 1:
        return 0.0
    return (t[i] - t[0] - rint((t[i] - t[0]) / step_ms) * step_ms) / 1000.0


def on_steps(t_ms, rates, valid=None, double step_ms=1000.0):
    cdef const long long[:] t = memoryview(t_ms).cast("B").cast("q")
    cdef const double[:] r = memoryview(rates).cast("B").cast("d")
    cdef Py_ssize_t n = t.shape[0]
    cdef const unsigned char[:] ok
    cdef bint has_ok = valid is not None
    if r.shape[0] != n:
        raise ValueError(f"on_steps: rates has {r.shape[0]} items, t_ms has {n}")
    if has_ok:
        ok = _valid(valid, n, "on_steps", "t_ms")
    if not step_ms > 0:
        raise ValueError(f"on_steps: step_ms must be above 0, not {step_ms}")
    data = bytearray(8 * n)
    bitmap = bytearray((n + 7) // 8)
    cdef double[:] out = memoryview(data).cast("d")
    cdef unsigned char[:] bits = bitmap
    cdef Py_ssize_t i
    cdef long long nulls = 0
    cdef double r_prev, r_cur, r_next, dt, dt_prev, dt_next, late_prev, late, span, x
    cdef double late_prev_pos, late_prev_neg
    cdef bint good
    with nogil:
        for i in range(n):
            good = not has_ok or ok[i] != 0
            if good and n >= 3 and i > 0:
                span = rint((t[i] - t[0]) / step_ms) - rint((t[i - 1] - t[0]) / step_ms)
                span = span * step_ms / 1000.0
                good = span > 0
                if good:
                    # an unknown rate lends nothing (the first look's is never lent)
                    r_cur = r[i]
                    r_prev = r[i - 1] if i > 1 and (not has_ok or ok[i - 1]) else 0.0
                    r_next = r[i + 1] if i + 1 < n and (not has_ok or ok[i + 1]) else 0.0
                    dt = (t[i] - t[i - 1]) / 1000.0
                    dt_next = (t[i + 1] - t[i]) / 1000.0 if i + 1 < n else 0.0
                    late = _late(t, i, n, step_ms)
                    late_prev = _late(t, i - 1, n, step_ms)
                    x = r_cur * dt
                    # this look late: its interval's last part is the next step's
                    if late > 0:
                        x -= r_cur * (late if late < dt else dt)
                    # early: the next interval's first part is this step's
                    elif late < 0:
                        x += r_next * (-late if -late < dt_next else dt_next)
                    # the look before late: its interval's last part is this step's
                    late_prev_pos = late_prev if late_prev > 0 else 0.0
                    dt_prev = (t[i - 1] - t[i - 2]) / 1000.0 if i > 1 else 0.0
                    x += r_prev * (late_prev_pos if late_prev_pos < dt_prev else dt_prev)
                    # the look before early: this interval's first part was its step's
                    late_prev_neg = -late_prev if late_prev < 0 else 0.0
                    x -= r_cur * (late_prev_neg if late_prev_neg < dt else dt)
                    out[i] = x / span
            elif good:
                out[i] = r[i]
            if good:
                bits[i >> 3] |= <unsigned char>(1 << (i & 7))
            else:
                nulls += 1
    return data, bitmap, nulls


def slot_sums(slots, Py_ssize_t n_slots, values, valid=None, bint maximum=False,
              bint ints=False):
    cdef const int[:] sl = memoryview(slots).cast("B").cast("i")
    cdef const double[:] v = memoryview(_D1 if ints else values).cast("B").cast("d")
    cdef const long long[:] vi = memoryview(values if ints else _Q1).cast("B").cast("q")
    cdef Py_ssize_t n = sl.shape[0]
    cdef Py_ssize_t n_values = vi.shape[0] if ints else v.shape[0]
    cdef double x
    cdef const unsigned char[:] ok
    cdef bint has_ok = valid is not None
    if n_values != n:
        raise ValueError(f"slot_sums: values has {n_values} items, slots has {n}")
    if has_ok:
        ok = _valid(valid, n, "slot_sums", "slots")
    out = bytearray(8 * n_slots)
    counts = bytearray(8 * n_slots)
    cdef double[:] s = memoryview(out).cast("d")
    cdef long long[:] c = memoryview(counts).cast("q")
    cdef Py_ssize_t i, bad = -1
    cdef int k
    with nogil:
        for i in range(n):
            k = sl[i]
            if k < 0 or (has_ok and ok[i] == 0):
                continue
            if k >= n_slots:
                bad = i
                break
            x = <double>vi[i] if ints else v[i]
            if not maximum:
                s[k] += x
            elif c[k] == 0 or x > s[k]:
                s[k] = x
            c[k] += 1
    if bad >= 0:
        raise ValueError(f"slot_sums: slot {sl[bad]} at row {bad} is not below n_slots {n_slots}")
    return out, counts


cdef struct KeyIndex:
    # open addressing: a 64-bit key -> its position in order of first appearance
    long long* keys
    int* slots
    long long* order
    Py_ssize_t cap
    Py_ssize_t n


cdef int _index_init(KeyIndex* h) noexcept nogil:
    cdef Py_ssize_t i
    h.cap = 64
    h.n = 0
    h.keys = <long long*>malloc(h.cap * sizeof(long long))
    h.slots = <int*>malloc(h.cap * sizeof(int))
    h.order = <long long*>malloc(h.cap * sizeof(long long))
    if h.keys == NULL or h.slots == NULL or h.order == NULL:
        return -1
    for i in range(h.cap):
        h.slots[i] = -1
    return 0


cdef void _index_free(KeyIndex* h) noexcept nogil:
    free(h.keys)
    free(h.slots)
    free(h.order)
    h.keys = NULL
    h.slots = NULL
    h.order = NULL


cdef inline Py_ssize_t _hash(long long key, Py_ssize_t cap) noexcept nogil:
    return <Py_ssize_t>((<unsigned long long>key * 0x9E3779B97F4A7C15ULL) >> 20) & (cap - 1)


cdef int _index_grow(KeyIndex* h) noexcept nogil:
    cdef Py_ssize_t cap = h.cap * 2, i, j
    cdef long long* keys = <long long*>malloc(cap * sizeof(long long))
    cdef int* slots = <int*>malloc(cap * sizeof(int))
    cdef long long* order = <long long*>realloc(h.order, cap * sizeof(long long))
    if order != NULL:
        h.order = order
    if keys == NULL or slots == NULL or order == NULL:
        free(keys)
        free(slots)
        return -1
    for i in range(cap):
        slots[i] = -1
    for i in range(h.n):
        j = _hash(h.order[i], cap)
        while slots[j] != -1:
            j = (j + 1) & (cap - 1)
        keys[j] = h.order[i]
        slots[j] = <int>i
    free(h.keys)
    free(h.slots)
    h.keys = keys
    h.slots = slots
    h.cap = cap
    return 0


cdef int _index_of(KeyIndex* h, long long key) noexcept nogil:
    """The key's position (a new key takes the next), or -1 when memory ran out."""
    cdef Py_ssize_t j = _hash(key, h.cap)
    while h.slots[j] != -1:
        if h.keys[j] == key:
            return h.slots[j]
        j = (j + 1) & (h.cap - 1)
    if 2 * (h.n + 1) > h.cap:
        if _index_grow(h) != 0:
            return -1
        return _index_of(h, key)
    h.keys[j] = key
    h.slots[j] = <int>h.n
    h.order[h.n] = key
    h.n += 1
    return h.slots[j]


cdef struct Ranked:
    long long key
    int first


cdef int _cmp_ranked(const void* a, const void* b) noexcept nogil:
    cdef long long x = (<const Ranked*>a).key
    cdef long long y = (<const Ranked*>b).key
    return (x > y) - (x < y)


cdef int _index_rows(const long long[:] keys, const unsigned char[:] ok, bint has_ok,
                     KeyIndex* h, int* row) noexcept nogil:
    """Each row's key position (-1 for a row left out); -1 when memory ran out."""
    cdef Py_ssize_t i, n = keys.shape[0]
    for i in range(n):
        if has_ok and ok[i] == 0:
            row[i] = -1
        elif i > 0 and row[i - 1] >= 0 and keys[i] == keys[i - 1]:
            row[i] = row[i - 1]
        elif i > 0 and 0 <= row[i - 1] < h.n - 1 and keys[i] == h.order[row[i - 1] + 1]:
            # the key that came after the last one before: the instants of a process's
            # rows repeat those of the process stored before it
            row[i] = row[i - 1] + 1
        else:
            row[i] = _index_of(h, keys[i])
            if row[i] < 0:
                return -1
    return 0


cdef int* _sorted_ranks(KeyIndex* h) noexcept nogil:
    """For each key position, its rank among the keys in ascending order (NULL: no memory)."""
    cdef Ranked* r = <Ranked*>malloc((h.n + 1) * sizeof(Ranked))
    cdef int* rank = <int*>malloc((h.n + 1) * sizeof(int))
    cdef Py_ssize_t i
    if r == NULL or rank == NULL:
        free(r)
        free(rank)
        return NULL
    for i in range(h.n):
        r[i].key = h.order[i]
        r[i].first = <int>i
    qsort(r, h.n, sizeof(Ranked), _cmp_ranked)
    for i in range(h.n):
        rank[r[i].first] = <int>i
        h.order[i] = r[i].key  # the keys now in ascending order
    free(r)
    return rank


def instants(t_ms):
    cdef const long long[:] t = memoryview(t_ms).cast("B").cast("q")
    cdef const unsigned char[:] ok = _ONE
    cdef Py_ssize_t n = t.shape[0], i
    cdef KeyIndex h
    cdef int failed = 0
    cdef int* rank = NULL
    h.keys = h.slots = NULL
    h.order = NULL
    slots = bytearray(4 * n)
    cdef int[:] sl = memoryview(slots).cast("i")
    with nogil:
        if _index_init(&h) != 0 or _index_rows(t, ok, False, &h, &sl[0] if n else NULL) != 0:
            failed = 1
        else:
            rank = _sorted_ranks(&h)
            if rank == NULL:
                failed = 1
            else:
                for i in range(n):
                    sl[i] = rank[sl[i]]
    free(rank)
    if failed:
        _index_free(&h)
        raise MemoryError("instants: no memory for the index of instants")
    spine = bytearray(8 * h.n)
    cdef long long[:] sp = memoryview(spine).cast("q")
    for i in range(h.n):
        sp[i] = h.order[i]
    _index_free(&h)
    return spine, slots



def stack_sums(t_ms, stacks, pids, samples, valid=None, Py_ssize_t n_stacks=0,
               Py_ssize_t max_cells=20_000_000):
    cdef const long long[:] t = memoryview(t_ms).cast("B").cast("q")
    cdef const int[:] st = memoryview(stacks).cast("B").cast("i")
    cdef const long long[:] pd = memoryview(pids).cast("B").cast("q")
    cdef const long long[:] v = memoryview(samples).cast("B").cast("q")
    cdef Py_ssize_t n = t.shape[0], i, bad = -1
    cdef const unsigned char[:] ok = _ONE  # read only where valid is given
    cdef bint has_ok = valid is not None
    for name, length in (("stacks", st.shape[0]), ("pids", pd.shape[0]),
                         ("samples", v.shape[0])):
        if length != n:
            raise ValueError(f"stack_sums: {name} has {length} items, t_ms has {n}")
    if has_ok:
        ok = _valid(valid, n, "stack_sums", "t_ms")
    with nogil:
        for i in range(n):
            if (not has_ok or ok[i] != 0) and (st[i] < 0 or st[i] >= n_stacks):
                bad = i
                break
    if bad >= 0:
        raise ValueError(f"stack_sums: stack {st[bad]} at row {bad} is not below n_stacks "
                         f"{n_stacks}")
    return (_pair_sums(t, st, v, ok, has_ok, n_stacks, max_cells, True),
            _pair_sums(pd, st, v, ok, has_ok, n_stacks, max_cells, False))


cdef object _pair_sums(const long long[:] keys, const int[:] st, const long long[:] v,
                       const unsigned char[:] ok, bint has_ok, Py_ssize_t n_stacks,
                       Py_ssize_t max_cells, bint ascending):
    """Samples per key and stack in a dense array of keys x stacks: the pairs above 0, by
    key (ascending, or in order of first appearance) then stack; None past max_cells."""
    cdef Py_ssize_t n = keys.shape[0], i, p, k, m = 0, cells
    cdef KeyIndex h
    cdef int failed = 0
    h.keys = h.order = NULL
    h.slots = NULL
    cdef int* row = <int*>malloc((n + 1) * sizeof(int))
    cdef int* rank = NULL
    cdef long long* acc = NULL
    with nogil:
        if row == NULL or _index_init(&h) != 0 or _index_rows(keys, ok, has_ok, &h, row) != 0:
            failed = 1
        elif ascending:
            rank = _sorted_ranks(&h)
            if rank == NULL:
                failed = 1
            else:
                for i in range(n):
                    if row[i] >= 0:
                        row[i] = rank[row[i]]
    free(rank)
    cells = h.n * n_stacks
    if not failed and cells <= max_cells:
        acc = <long long*>calloc(cells + 1, sizeof(long long))
        failed = acc == NULL
    if failed or cells > max_cells:
        _index_free(&h)
        free(row)
        if failed:
            raise MemoryError("stack_sums: no memory for the sums of stacks")
        return None
    with nogil:
        for i in range(n):
            if row[i] >= 0:
                acc[row[i] * n_stacks + st[i]] += v[i]
        for i in range(cells):
            if acc[i] > 0:
                m += 1
    ks = bytearray(8 * m)
    ss = bytearray(4 * m)
    ns = bytearray(8 * m)
    cdef long long[:] out_k = memoryview(ks).cast("q")
    cdef int[:] out_s = memoryview(ss).cast("i")
    cdef long long[:] out_n = memoryview(ns).cast("q")
    m = 0
    with nogil:
        for p in range(h.n):
            for k in range(n_stacks):
                if acc[p * n_stacks + k] > 0:
                    out_k[m] = h.order[p]
                    out_s[m] = <int>k
                    out_n[m] = acc[p * n_stacks + k]
                    m += 1
    _index_free(&h)
    free(row)
    free(acc)
    return ks, ss, ns
