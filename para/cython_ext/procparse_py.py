"""Pure-Python twin of _procparse: parsers for the /proc files sampled every second.

Each function takes the raw bytes of one file and returns plain ints (bytes, not kB or
sectors) in the order of the matching table in para.formats.schema.  Malformed input raises
ValueError naming the line; fields a kernel does not have come back as None.
"""

from __future__ import annotations

import re
from collections.abc import Callable

CPU_FIELDS = 10
DISK_FIELDS = 17
SECTOR = 512

# The kernel's grammar, as the Cython kernel reads it: fields are separated by spaces or tabs
# only, and a number is decimal digits after an optional minus (int() alone would also take
# "+5", "1_0" and other whitespace around it, which the kernel does not).
_SEP = re.compile(rb"[ \t]+")
_NUMS = re.compile(rb"-?[0-9]+(?: -?[0-9]+)*")  # fields joined by single spaces
_FIRST = re.compile(rb"[ \t]*+([^ \t]*)")


def _split_kernel(s: bytes) -> list[bytes]:
    return [f for f in _SEP.split(s) if f]


def _splitter(data: bytes) -> Callable[[bytes], list[bytes]]:
    """How to split the lines of `data` into fields: bytes.split() (faster) gives the same
    fields unless `data` holds a byte it splits on and the kernel does not."""
    if b"\r" in data or b"\x0b" in data or b"\x0c" in data:
        return _split_kernel
    return bytes.split


def _split(s: bytes) -> list[bytes]:
    return _splitter(s)(s)


def _first(s: bytes) -> bytes:
    """The first field of `s` (b"" if none), without splitting the rest (an intr line holds
    thousands of numbers)."""
    return _FIRST.match(s).group(1)  # type: ignore[union-attr]


def _int(tok: bytes) -> int:
    if tok.isdigit():  # ASCII digits only, for bytes
        return int(tok)
    if tok[:1] == b"-" and tok[1:].isdigit():
        return -int(tok[1:])
    raise ValueError(tok)


def _ints(parts: list[bytes], n: int, where: str) -> list[int | None]:
    head = parts[:n]
    if b"".join(head).replace(b"-", b"").isdigit():  # the usual case, at once
        try:
            return [int(p) for p in head] + [None] * (n - len(head))
        except ValueError:  # a misplaced minus: found and named below
            pass
    out: list[int | None] = []
    try:
        for p in parts[:n]:
            out.append(_int(p))
    except ValueError:
        raise ValueError(f"{where}: not a number: {p!r}") from None
    out.extend([None] * (n - len(out)))
    return out


def _first_int(rest: bytes, lineno: int) -> int:
    head = _first(rest)
    try:
        return _int(head)
    except ValueError:
        raise ValueError(f"/proc/stat line {lineno}: not a number: {head!r}") from None


def parse_stat(
    data: bytes,
) -> tuple[list[int | None], list[tuple[int, list[int | None]]], int, int, int, int, int]:
    """/proc/stat -> (all-CPU times, [(cpu, times)], ctxt, intr, processes, running, blocked)."""
    total: list[int | None] | None = None
    per_cpu: list[tuple[int, list[int | None]]] = []
    ctxt = intr = processes = running = blocked = 0
    split = _splitter(data)
    for lineno, line in enumerate(data.split(b"\n"), 1):
        if line.startswith(b"cpu"):
            parts = split(line)
            if line[3:4] in (b"", b" "):  # "cpu" alone: the total
                total = _ints(parts[1:], CPU_FIELDS, f"/proc/stat line {lineno}")
            else:
                name = parts[0][3:]
                try:
                    cpu = _int(name)
                except ValueError:
                    raise ValueError(f"/proc/stat line {lineno}: bad CPU name {name!r}") from None
                per_cpu.append((cpu, _ints(parts[1:], CPU_FIELDS, f"/proc/stat line {lineno}")))
        elif line.startswith(b"intr "):
            # Only the total: the per-IRQ list that follows can be thousands of numbers long.
            intr = _first_int(line[5:], lineno)
        elif line.startswith(b"ctxt "):
            ctxt = _first_int(line[5:], lineno)
        elif line.startswith(b"processes "):
            processes = _first_int(line[10:], lineno)
        elif line.startswith(b"procs_running "):
            running = _first_int(line[14:], lineno)
        elif line.startswith(b"procs_blocked "):
            blocked = _first_int(line[14:], lineno)
    if total is None:
        raise ValueError("/proc/stat: no 'cpu' line")
    return total, per_cpu, ctxt, intr, processes, running, blocked


def parse_keyed(data: bytes, keys: tuple[bytes, ...], scale_kb: bool) -> list[int | None]:
    """/proc/meminfo ('Key:  123 kB') or /proc/vmstat ('key 123'): values of `keys`, in order.

    With scale_kb, values given in kB are returned in bytes.
    """
    want = {k: i for i, k in enumerate(keys)}
    out: list[int | None] = [None] * len(keys)
    found = 0
    split = _splitter(data)
    for line in data.split(b"\n"):
        if found >= len(keys):  # every key seen: the rest of the file is not read
            break
        parts = split(line)
        key, _, after = (parts[0] if parts else b"").partition(b":")
        i = want.get(key)
        if i is None:
            continue
        if after:  # "Key:123"
            tok, unit = after, parts[1:2]
        else:
            tok, unit = (parts[1] if len(parts) > 1 else b""), parts[2:3]
        try:
            v = _int(tok)
        except ValueError:
            raise ValueError(f"{key.decode()}: not a number: {tok!r}") from None
        if scale_kb and unit and unit[0].startswith(b"kB"):
            v *= 1024
        if out[i] is None:
            found += 1
        out[i] = v
    return out


def parse_net_dev(data: bytes) -> list[tuple[str, list[int | None]]]:
    """/proc/net/dev -> [(iface, 16 counters: 8 receive then 8 transmit)]."""
    out: list[tuple[str, list[int | None]]] = []
    split = _splitter(data)
    for lineno, line in enumerate(data.split(b"\n"), 1):
        name, sep, rest = line.partition(b":")
        if not sep or b"|" in line:
            continue
        where = f"/proc/net/dev line {lineno}"
        out.append((name.strip(b" \t").decode(), _ints(split(rest), 16, where)))
    return out


def parse_diskstats(data: bytes) -> list[tuple[str, list[int | None]]]:
    """/proc/diskstats -> [(device, 17 fields)], sectors turned into bytes.

    Kernels print 14 (before 4.18), 18 (4.18+) or 20 (5.5+) columns; missing ones are None.
    """
    out: list[tuple[str, list[int | None]]] = []
    split = _splitter(data)
    for lineno, line in enumerate(data.split(b"\n"), 1):
        parts = split(line)  # major, minor, the name, then the fields
        if len(parts) < 3 or (len(parts) == 3 and line[-1:] not in (b" ", b"\t")):
            continue  # no name, or nothing after it
        vals = _ints(parts[3:], DISK_FIELDS, f"/proc/diskstats line {lineno}")
        for i in (2, 6, 13):  # read, write and discard sectors
            v = vals[i]
            if v is not None:
                vals[i] = v * SECTOR
        out.append((parts[2].decode(), vals))
    return out


def parse_pid_stat(
    data: bytes,
) -> tuple[int, str, str, int, int, int, int, int, int, int, int, int, int, int, int]:
    """/proc/PID/stat -> (pid, comm, state, ppid, minflt, majflt, utime, stime, threads,
    starttime, vsize, rss_pages, processor, cutime, cstime).  comm may hold spaces and
    parentheses."""
    open_ = data.find(b"(")
    close = data.rfind(b")")
    if open_ < 0 or close < open_:
        raise ValueError(f"/proc/PID/stat: no (comm) in {data[:40]!r}")
    pid = int(data[:open_])
    comm = data[open_ + 1 : close].decode(errors="replace")
    f = _split(data[close + 1 :].split(b"\n", 1)[0])[:37]
    where = f"/proc/PID/stat of {pid}"
    # every field a number, as the kernel reads them (not only the ones returned)
    if len(f) > 1 and _NUMS.fullmatch(b" ".join(f[1:])) is None:
        k, tok = next((k, t) for k, t in enumerate(f[1:], 1) if _NUMS.fullmatch(t) is None)
        raise ValueError(f"{where}: field {k + 3} is not a number: {tok!r}")
    if len(f) < 37:
        raise ValueError(f"{where}: {len(f) + 2} fields, expected at least 39")
    return (
        pid,
        comm,
        f[0].decode(),
        int(f[1]),
        int(f[7]),
        int(f[9]),
        int(f[11]),
        int(f[12]),
        int(f[17]),
        int(f[19]),
        int(f[20]),
        int(f[21]),
        int(f[36]),
        int(f[13]),
        int(f[14]),
    )


def parse_pid_status_ctxt(data: bytes) -> tuple[int, int]:
    """/proc/PID/status -> (voluntary, nonvoluntary context switches)."""
    return _status_field(data, b"\nvoluntary_ctxt_switches:"), _status_field(
        data, b"\nnonvoluntary_ctxt_switches:"
    )


def _status_field(data: bytes, key: bytes) -> int:
    i = data.find(key)
    if i < 0:
        return 0
    end = data.find(b"\n", i + 1)
    tok = _first(data[i + len(key) : end if end >= 0 else None])
    try:
        return _int(tok)
    except ValueError:
        raise ValueError(f"{key.decode().strip()}: not a number: {tok!r}") from None


def parse_pid_io(data: bytes) -> tuple[int, int, int, int]:
    """/proc/PID/io -> (rchar, wchar, read_bytes, write_bytes)."""
    vals = parse_keyed(data, (b"rchar", b"wchar", b"read_bytes", b"write_bytes"), False)
    return (vals[0] or 0, vals[1] or 0, vals[2] or 0, vals[3] or 0)


def parse_loadavg(data: bytes) -> tuple[float, float, float]:
    """/proc/loadavg -> (1, 5, 15 minute load)."""
    f = data.split()
    if len(f) < 3:
        raise ValueError(f"/proc/loadavg: {data[:40]!r}")
    return float(f[0]), float(f[1]), float(f[2])
