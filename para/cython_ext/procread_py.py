"""Pure-Python twin of _procread: read and parse the /proc files of many processes at once.

The agent keeps /proc/PID/{stat,status,io} open for every process it follows and, each
sample, reads them all with one call: (ppid, state, utime, stime, rss_bytes, vsize_bytes,
threads, processor, minflt, majflt, vol_ctxt, invol_ctxt, rchar, wchar, read_bytes,
write_bytes, cutime, cstime) per process, in the order of the `proc` table after its pid, plus
the start time (ticks since boot) that tells a reused pid from the process it followed, and
the comm (which an exec changes).
A process whose stat cannot be read (it has exited) or parsed gives None; a status or io
descriptor of -1 (io needs ptrace rights) or a file that cannot be read gives nulls there.
"""

from __future__ import annotations

import os

from para.cython_ext.procparse_py import parse_pid_io, parse_pid_stat, parse_pid_status_ctxt

ProcRow = tuple[
    int, str, int, int, int, int, int, int, int, int, int | None, int | None,
    int | None, int | None, int | None, int | None, int, int, int, str,
]  # fmt: skip


def _pread(fd: int) -> bytes:
    size = 65536
    while True:
        data = os.pread(fd, size, 0)
        if len(data) < size:
            return data
        size *= 4


def read_pids(fds: list[tuple[int, int, int]], page_size: int) -> list[ProcRow | None]:
    out: list[ProcRow | None] = []
    for stat_fd, status_fd, io_fd in fds:
        try:
            st = parse_pid_stat(_pread(stat_fd))
        except (OSError, ValueError):
            out.append(None)
            continue
        vol = invol = None
        if status_fd >= 0:
            try:
                vol, invol = parse_pid_status_ctxt(_pread(status_fd))
            except (OSError, ValueError):
                pass
        rchar = wchar = rbytes = wbytes = None
        if io_fd >= 0:
            try:
                rchar, wchar, rbytes, wbytes = parse_pid_io(_pread(io_fd))
            except (OSError, ValueError):
                pass
        comm, state, ppid, minflt, majflt, utime, stime, threads, start, vsize, rss, cpu = st[1:13]
        cu, cs = st[13:15]
        out.append(
            (
                ppid,
                state,
                utime,
                stime,
                rss * page_size,
                vsize,
                threads,
                cpu,
                minflt,
                majflt,
                vol,
                invol,
                rchar,
                wchar,
                rbytes,
                wbytes,
                cu,
                cs,
                start,
                comm,
            )
        )
    return out
