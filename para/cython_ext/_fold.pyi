"""Folds `perf script` text into stacks, exactly as FlameGraph's stackcollapse-perf.pl does.

Two implementations share this description: the Cython kernel `_fold` and its pure-Python
twin `fold_py`; `para.cython_ext.load("fold")` picks one.

`data` is the text `perf script` printed, as bytes (fastest: the Cython kernel scans any
object with the buffer protocol, such as bytes, bytearray, memoryview or mmap, in place), str
(encoded as UTF-8, undecodable characters kept as surrogateescape), or an iterable of lines
(bytes or str, each with or without its newline). Bytes are compared and regexes matched as
the reference does on them: ASCII classes, other bytes are never word or space characters.

What the reference does and these do too (details in fold_py, which is written to be read):
samples are emitted at a blank line only (a last sample without one is dropped); the first
event name seen is the filter unless `event_filter` is given; frames are joined root-first
with ';' after the process name (spaces in it become '_', `-PID` or `-PID/TID` appended with
`pid`/`tid`, PID '?' when perf printed one id); symbols are tidied (`+0x..` offsets, argument
lists, quotes, ';' -> ':', the `L` of Java class names in `java*` processes); `[unknown]`
becomes `[dso]` or `[unknown]` (`[... <addr>]` with `addrs`); `kernel` appends `_[k]`, `jit`
appends `_[j]`, frames inlined with `->` get `_[i]`. Unrecognised lines are ignored.

A count is the sum of the samples' periods, as the reference sums them: the number perf
prints before the event (nanoseconds for cpu-clock, events for cycles), 1 when it prints
none. Counts are exact integers at any size (the reference's Perl would turn sums beyond
2**64 into floating point).
"""

def fold(
    data: object,
    *,
    pid: bool = False,
    tid: bool = False,
    kernel: bool = False,
    jit: bool = False,
    addrs: bool = False,
    event_filter: str | None = None,
) -> dict[str, int]:
    """Folded stack (process name first, then frames root-first, ';'-joined) -> count.

    The dict's order is unspecified: sort by the UTF-8 (surrogateescape) bytes of the keys to
    print what the reference prints.
    """

def first_event(data: object) -> str | None:
    """The event `fold` keeps when no `event_filter` is given: the first one a sample header
    names (None when no header names one). Given as `event_filter`, it folds any part of
    `data` that starts after a blank line as the whole would (para.analyzer.fold_parts)."""

def fold_timed(
    data: object,
    *,
    kernel: bool = False,
    jit: bool = False,
    addrs: bool = False,
    event_filter: str | None = None,
    bucket: float = 1.0,
) -> list[tuple[float, int, int, str, str, int]]:
    """The same folding, counted per (bucket start, pid, tid, comm, stack), sorted.

    bucket start is floor(t / bucket) * bucket for the sample's perf timestamp t in seconds,
    0.0 when its header has none. pid and tid are what the header printed (`PID/TID`); with
    one id perf printed the TID, so pid is -1; ids that are not plausible (over 18 digits) are
    -1. comm is the process name as in `fold` (spaces as '_', no PID), stack the frames
    root-first joined by ';' without the process name ('' for a sample without frames), so
    summing counts per comm + ';' + stack (comm alone when stack is '') gives `fold`'s result.
    Raises ValueError unless bucket is a positive finite number.
    """
