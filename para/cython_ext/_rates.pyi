"""Counters to rates, with wraps and resets: one pass over rows grouped by series.

Two implementations share this description: the Cython kernel `_rates` and its pure-Python
twin `rates_py`; `para.cython_ext.load("rates")` picks one.

The kernel counts what /proc, sysfs, NVML and RAPL give: cumulative counters, stored raw.
Rows come grouped by series (all rows of one key together) and in time order inside each
series, as a .para part stores them.  Buffers are anything with the buffer protocol (bytes,
bytearray, array, memoryview, a pyarrow Buffer): `keys` and `t_ms` of 64-bit integers,
`values` and `moduli` of 64-bit floats (`values` of 64-bit integers with `ints=True`: a
counter as stored, read as a float row by row instead of cast whole first), `valid` of
bytes (0 = the value is missing, and the value is then never read).

For each row the rate is (value - previous value of the same series) * scale / seconds
between them, and missing (null) where it cannot be known:
- the first row of a series (a key differs from the row before), or a row whose value or
  previous value is missing;
- a window shorter than `min_dt_s` (the baseline sample taken a few milliseconds before the
  first regular one: ticks over 6 ms read as 0 or 100 %), or a time that did not advance;
- a counter that went backwards and did not wrap: it was reset (a driver reloaded, a pid
  reused, a device re-appeared); when it restarted between the two samples is unknown, so
  no rate is made up, and `resets` counts it;
- a rate above `max_rate` (a glitch no device can produce).

A counter that went backwards *wrapped* when it has a known width and the wrapped increase
(value + width - previous) is in [0, width): the width is `moduli[i]` when given and
positive (RAPL's max_energy_range_uj, per row), else `modulus` when positive, else a
32-bit counter is recognised when the previous value lies in [2**31, 2**32) and the wrapped
increase is below 2**31 (legacy 32-bit NIC and InfiniBand counters).  `wraps` counts them.
"""

def counter_rates(
    keys: object | None,
    t_ms: object,
    values: object,
    valid: object | None = None,
    *,
    min_dt_s: float = 0.0,
    modulus: float = 0.0,
    moduli: object | None = None,
    max_rate: float = ...,
    scale: float = 1.0,
    ints: bool = False,
) -> tuple[bytearray, bytearray, int, int, int]:
    """(rates: float64 per row, validity: an Arrow bitmap, null count, wraps, resets).

    `keys` None means one series.  The rates and bitmap make a pyarrow array with
    `pa.Array.from_buffers(pa.float64(), n, [pa.py_buffer(bitmap), pa.py_buffer(rates)],
    null_count)`.  Raises ValueError when the buffers' lengths differ.
    """

def slot_sums(
    slots: object,
    n_slots: int,
    values: object,
    valid: object | None = None,
    maximum: bool = False,
    ints: bool = False,
) -> tuple[bytearray, bytearray]:
    """Sum of `values` (float64) per slot: `slots` (int32, one per row; negative = no slot)
    says where each row goes, rows whose `valid` byte is 0 are left out.  Returns the sums
    (float64 per slot) and how many rows each slot got (int64 per slot), the same whatever
    the order of the rows of a slot when the values are whole numbers (and in the order of
    the rows otherwise).  With `maximum`, the largest value of each slot instead of the sum
    (0 where the slot got none).  Sums a node's per-process rates per sampling instant, its
    call stacks per second, without hashing: the slots come from `pyarrow.compute.index_in`.
    Raises ValueError when a slot is >= n_slots or the buffers' lengths differ.
    """

def on_steps(
    t_ms: object, rates: object, valid: object | None = None, step_ms: float = 1000.0
) -> tuple[bytearray, bytearray, int]:
    """Rates measured between looks (`rates`, float64: each row's over the time since the
    row before; `t_ms`, int64, ascending) made the rates of the steps of a grid: step k
    spans t_ms[0] + (k - 1) * step_ms to t_ms[0] + k * step_ms, and a look stands for the
    grid instant nearest it (half a step: to the even step).  A late look's interval lends
    its last part to the next step at its rate, an early look's next interval its first
    part to this step; the first and the last look stand where they are, so the steps hold
    what the intervals held between them (the last step what its look measured past the
    grid too).  Rows whose `valid` byte is 0 are unknown: null, and they lend nothing; a
    look on the step of the look before is null (no step to hold it); the first row, and
    every row of fewer than 3, is kept as it is.  Returns (float64 per row, an Arrow
    validity bitmap, null count).  Raises ValueError when the buffers' lengths differ or
    `step_ms` is not above 0.
    """

def instants(t_ms: object) -> tuple[bytearray, bytearray]:
    """The distinct instants of `t_ms` (64-bit integers, rows in any order) in ascending
    order (int64), and each row's position among them (int32): one pass with a hash table
    instead of sorting and looking up every row."""

def stack_sums(
    t_ms: object,
    stacks: object,
    pids: object,
    samples: object,
    valid: object | None = None,
    n_stacks: int = 0,
    max_cells: int = 20_000_000,
) -> tuple[
    tuple[bytearray, bytearray, bytearray] | None, tuple[bytearray, bytearray, bytearray] | None
]:
    """A node's call stacks summed two ways in one call: per instant and stack, and per
    process and stack.  Each row has its time (`t_ms`, int64), its stack as an index below
    `n_stacks` (int32: a dictionary's indices), its process (`pids`, int64) and its count
    (`samples`, int64), in any order; rows whose `valid` byte is 0 are left out.

    Returns (per_instant, per_process), each as three buffers (key: int64, stack: int32,
    samples: int64) holding the pairs with samples above 0, by key then stack: instants in
    ascending order, processes in the order of their first row; either is None when its
    keys x stacks would pass `max_cells` (the caller hashes the pairs instead).  Raises
    ValueError when a row's stack is not below `n_stacks` or the buffers' lengths differ.
    """
