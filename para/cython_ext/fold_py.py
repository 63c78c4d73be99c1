"""Pure-Python twin of `_fold.pyx` (API in `_fold.pyi`): perf script text -> folded stacks.

The rules are those of stackcollapse-perf.pl (FlameGraph), written here as a reading of its
behaviour rather than a copy: the same regular expressions on the same bytes give the same
answers, quirks included, because a folded file is only useful when it matches what every
flame-graph tool expects. Python's `re` on bytes has Perl's ASCII meaning of \\s \\w \\d.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from typing import NamedTuple

# A sample header: "comm [ ...]  PID[/TID] ..."; the name is as short as can be followed by
# the id, so "V8 WorkerThread 25607 ..." names "V8 WorkerThread".
HEADER = re.compile(rb"(\S.+?)\s+(\d+)/*(\d+)*\s+")
# The period and event that end a header: "...: 235 cpu-clock:" (period optional).
EVENT = re.compile(rb":\s*(\d+)*\s+(\S+):\s*$")
# A stack line: "  ADDR symbol+0x1f (dso)"; the dso is inside the last "( ... )".
FRAME = re.compile(rb"\s*(\w+)\s*(.+) \((.*)\)")
OFFSET = re.compile(rb"\+0x[\da-f]+$")
# Go methods ("net/http.(*Client).Do") keep their parentheses; elsewhere a "(" starts noise.
GO_METHOD = re.compile(rb"\.\(.*\)\.")
ARGUMENTS = re.compile(rb"\((?!anonymous namespace\)).*")
JIT_MAP = re.compile(rb"/tmp/perf-\d+\.map")
TIMESTAMP = re.compile(rb"(\d+(?:\.\d+)?):")
MAX_ID_DIGITS = 18  # longer "ids" are not pids; they also would not fit the kernel's int64


class Header(NamedTuple):
    """The sample header in force: the fields the reference keeps, plus numbers for para."""

    comm: bytes  # spaces already '_'
    pid: bytes  # as the reference names it: b"?" when perf printed one id (or TID "0")
    tid: bytes
    pid_num: int  # as perf printed it: -1 when it printed one id (the TID)
    tid_num: int
    time: float | None
    period: int


class Sample(NamedTuple):
    """One emitted sample: its header and its frames, root first."""

    header: Header
    frames: list[bytes]


def as_bytes(data: object) -> bytes:
    """The perf script text as one bytes object (see `_fold.pyi` for what `data` may be)."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode("utf-8", "surrogateescape")
    try:
        return memoryview(data).tobytes()  # type: ignore[arg-type]  # bytearray, mmap, ...
    except TypeError:
        pass
    if not isinstance(data, Iterable):
        raise TypeError(f"fold: expected bytes, str or an iterable of lines, not {type(data)}")
    lines = []
    for line in data:
        if isinstance(line, str):
            line = line.encode("utf-8", "surrogateescape")
        elif not isinstance(line, (bytes, bytearray)):
            raise TypeError(f"fold: a line must be bytes or str, not {type(line)}")
        lines.append(bytes(line[:-1] if line.endswith(b"\n") else line))
    return b"\n".join(lines) + b"\n" if lines else b""


def split_lines(text: bytes) -> list[bytes]:
    """Lines as Perl's `<>` + chomp sees them: a final newline does not start another line."""
    lines = text.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines


def match_frame(line: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(address, raw symbol, dso) of a stack line, or None when it is not one."""
    m = FRAME.match(line)
    return None if m is None else (m.group(1), m.group(2), m.group(3))


def _tidy(func: bytes, java: bool) -> bytes:
    func = func.replace(b";", b":")
    if not GO_METHOD.search(func):
        func = ARGUMENTS.sub(b"", func, count=1)
    func = func.replace(b'"', b"").replace(b"'", b"")
    if java and b"/" in func and func.startswith(b"L"):
        func = func[1:]  # "Ljava/lang/Thread;::run" -> "java/lang/Thread:::run"
    return func


def frame_funcs(
    pc: bytes, rawfunc: bytes, mod: bytes, *, java: bool, kernel: bool, jit: bool, addrs: bool
) -> list[bytes] | None:
    """The frames one stack line contributes, in order (several when perf shows inlining
    as "a->b"), or None when the line names a process rather than a function."""
    rawfunc = OFFSET.sub(b"", rawfunc, count=1)
    if rawfunc.startswith(b"("):
        return None
    pieces = rawfunc.split(b"->")
    while pieces and pieces[-1] == b"":  # Perl's split drops trailing empty fields
        pieces.pop()
    is_kernel = (mod.startswith(b"[") or mod.endswith(b"vmlinux")) and b"unknown" not in mod
    is_jit = JIT_MAP.search(mod) is not None
    funcs: list[bytes] = []
    for piece in pieces:
        func = piece
        if func == b"[unknown]":
            name = mod.rsplit(b"/", 1)[-1] if mod != b"[unknown]" else b"unknown"
            func = b"[" + name + (b" <" + pc + b">" if addrs else b"") + b"]"
        func = _tidy(func, java)
        if funcs:
            if b"_[i]" not in func:
                func += b"_[i]"
        elif kernel and is_kernel:
            func += b"_[k]"
        elif jit and is_jit and b"_[j]" not in func:
            func += b"_[j]"
        funcs.append(func)
    return funcs


def parse_id(digits: bytes) -> int:
    """A pid or tid as a number; -1 for a run of digits too long to be one."""
    return int(digits) if len(digits) <= MAX_ID_DIGITS else -1


def event_key(name: bytes) -> bytes:
    """An event's name without its PMU: a hybrid CPU's `perf record -e cycles` samples as
    `cpu_core/cycles/` on its performance cores and `cpu_atom/cycles/` on its efficiency
    cores, one event in two PMUs (`cpu_core/cycles/u` is `cycles:u`)."""
    first = name.find(b"/")
    last = name.rfind(b"/")
    if first <= 0 or last <= first + 1:
        return name
    mods = name[last + 1 :]
    return name[first + 1 : last] + (b":" + mods if mods else b"")


def _header(
    m: re.Match[bytes], line: bytes, wanted: bytes, every_pmu: bool = False
) -> tuple[Header | None, bytes]:
    """The header that `line` (matched by HEADER as `m`) starts, or None when its event is
    filtered out; and the event filter, which the first event seen sets (`every_pmu`:
    compared without the PMU, see event_key)."""
    comm, first_id, second_id = m.groups()
    period = 1
    event = EVENT.search(line)
    if event is not None:
        name = event_key(event.group(2)) if every_pmu else event.group(2)
        if not wanted:
            wanted = name  # the first event seen is the one kept
        elif name != wanted:
            return None, wanted
        # Perl truth: a period of "0" (or none) counts as 1; "00" counts 0.
        if event.group(1) is not None and event.group(1) != b"0":
            period = int(event.group(1))
    if second_id is None or second_id == b"0":
        pid, tid = b"?", first_id
    else:
        pid, tid = first_id, second_id
    if second_id is None:
        pid_num, tid_num = -1, parse_id(first_id)
    else:  # "0/0" (the idle task) is pid 0 here, though the reference names it "?"
        pid_num, tid_num = parse_id(first_id), parse_id(second_id)
    time = None
    for token in line[m.end() :].split():
        stamp = TIMESTAMP.fullmatch(token)
        if stamp is not None:
            time = float(stamp.group(1))
            break
    return Header(comm.replace(b" ", b"_"), pid, tid, pid_num, tid_num, time, period), wanted


def samples(
    text: bytes,
    *,
    kernel: bool,
    jit: bool,
    addrs: bool,
    event_filter: str | None,
    every_pmu: bool = False,
) -> Iterator[Sample]:
    """The samples of `text` in the order the reference emits them (at each blank line)."""
    wanted = (event_filter or "").encode("utf-8", "surrogateescape")
    if every_pmu:
        wanted = event_key(wanted)
    current: Header | None = None  # None: skip stack lines until the next header
    stack: list[bytes] = []  # root first: each line's frames go in front
    for line in split_lines(text):
        if line.startswith(b"#"):
            continue
        if not line:
            if current is not None:
                yield Sample(current, stack)
                current, stack = None, []
            continue
        m = HEADER.match(line)
        if m is not None:
            header, wanted = _header(m, line, wanted, every_pmu)
            if header is not None:
                current = header  # a header without a blank line before keeps the stack
            continue  # a filtered one leaves the header in force, as the reference does
        if current is None:
            continue
        parts = match_frame(line)
        if parts is None:
            continue  # the reference warns "Unrecognized line" and goes on
        funcs = frame_funcs(
            *parts, java=current.comm.startswith(b"java"), kernel=kernel, jit=jit, addrs=addrs
        )
        if funcs is not None:
            stack[:0] = funcs


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
    """Folded stack -> count (see `_fold.pyi`)."""
    counts: dict[bytes, int] = {}
    for s in samples(
        as_bytes(data), kernel=kernel, jit=jit, addrs=addrs, event_filter=event_filter
    ):
        h = s.header
        if tid:
            name = h.comm + b"-" + h.pid + b"/" + h.tid
        elif pid:
            name = h.comm + b"-" + h.pid
        else:
            name = h.comm
        key = b";".join([name, *s.frames])
        counts[key] = counts.get(key, 0) + h.period
    return {k.decode("utf-8", "surrogateescape"): v for k, v in counts.items()}


def first_event(data: object) -> str | None:
    """The event `fold` keeps when no event_filter is given (see `_fold.pyi`)."""
    for line in split_lines(as_bytes(data)):
        if line.startswith(b"#") or HEADER.match(line) is None:
            continue
        event = EVENT.search(line)
        if event is not None:
            return event.group(2).decode("utf-8", "surrogateescape")
    return None


def fold_timed(
    data: object,
    *,
    kernel: bool = False,
    jit: bool = False,
    addrs: bool = False,
    event_filter: str | None = None,
    bucket: float = 1.0,
) -> list[tuple[float, int, int, str, str, int]]:
    """(bucket start, pid, tid, comm, stack, count) rows, sorted (see `_fold.pyi`)."""
    if not (isinstance(bucket, (int, float)) and math.isfinite(bucket) and bucket > 0):
        raise ValueError(f"fold_timed: bucket must be a positive number of seconds, not {bucket}")
    bucket = float(bucket)
    counts: dict[tuple[float, int, int, bytes, bytes], int] = {}
    for s in samples(
        as_bytes(data),
        kernel=kernel,
        jit=jit,
        addrs=addrs,
        event_filter=event_filter,
        every_pmu=True,
    ):
        h = s.header
        start = 0.0  # no timestamp, or one too large to be a time
        if h.time is not None and math.isfinite(h.time / bucket):
            start = math.floor(h.time / bucket) * bucket
        key = (start, h.pid_num, h.tid_num, h.comm, b";".join(s.frames))
        counts[key] = counts.get(key, 0) + h.period
    rows = [
        (
            start,
            p,
            t,
            comm.decode("utf-8", "surrogateescape"),
            stack.decode("utf-8", "surrogateescape"),
            n,
        )
        for (start, p, t, comm, stack), n in counts.items()
    ]
    rows.sort()
    return rows
