# cython: language_level=3, boundscheck=False, wraparound=False
"""Cython kernel: read and parse the /proc files of many processes in one call.

Same function, arguments and results as procread_py (the twin): pread(2) into one static
buffer and parse it in place, so a process costs its three system calls and no Python
objects but its result tuple.
"""

from libc.string cimport memchr, strlen, strncmp, strstr
from posix.unistd cimport pread

DEF BUF = 65536

cdef char _buf[BUF + 1]


cdef inline bint _space(char c) nogil:
    # what bytes.split() splits on, as the twin does
    return c == b' ' or c == b'\t' or c == b'\n' or c == b'\r' or c == 11 or c == 12


cdef Py_ssize_t _fill(int fd):
    """The whole file at fd into _buf, NUL-terminated; its length, or -1."""
    cdef Py_ssize_t n = pread(fd, _buf, BUF, 0)
    if n < 0:
        return -1
    _buf[n] = 0
    return n


cdef inline bint _used(int k) nogil:
    """The stat fields the result holds (the twin converts these and only these)."""
    return (k == 1 or k == 7 or k == 9 or k == 11 or k == 12 or k == 13 or k == 14
            or k == 17 or k == 19 or k == 20 or k == 21 or k == 36)


cdef int _parse_stat(Py_ssize_t n, long long* f, Py_ssize_t* state, Py_ssize_t* comm) nogil:
    """Fields after `PID (comm)`: f[k] is field k+3 of proc(5), f[0] the state; comm[0:2] the
    bounds of the comm."""
    cdef Py_ssize_t i = n - 1, close = -1, j, open_
    cdef int k = 0
    cdef long long v
    cdef bint neg
    cdef const char* p = <const char*>memchr(_buf, b'(', n)
    if p == NULL:
        return -1
    open_ = p - _buf
    while i > open_:
        if _buf[i] == b')':
            close = i
            break
        i -= 1
    if close < 0:
        return -1
    comm[0] = open_ + 1
    comm[1] = close
    # the pid: digits, perhaps with spaces around
    i = 0
    while i < open_ and _space(_buf[i]):
        i += 1
    j = i
    while j < open_ and b'0' <= _buf[j] <= b'9':
        j += 1
    if j == i:
        return -1
    while j < open_ and _space(_buf[j]):
        j += 1
    if j != open_:
        return -1
    i = close + 2  # as the twin: the field after `) ` (a space always follows the comm)
    while k < 37:
        while i < n and _space(_buf[i]):
            i += 1
        if i >= n:
            return -1
        if k == 0:
            state[0] = i
            while i < n and not _space(_buf[i]):
                i += 1
            state[1] = i
        elif not _used(k):
            while i < n and not _space(_buf[i]):
                i += 1
        else:
            j = i
            v = 0
            neg = False
            if _buf[j] == b'-':
                neg = True
                j += 1
            while j < n and b'0' <= _buf[j] <= b'9':
                v = v * 10 + (_buf[j] - 48)
                j += 1
            if j == i + neg or (j < n and not _space(_buf[j])):
                return -1
            f[k] = -v if neg else v
            i = j
        k += 1
    return 0


cdef int _after(const char* key, long long* out) nogil:
    """The number after `key` at the start of a line of _buf (0 if the key is absent, as the
    twin says); -1 if what follows is not a number.  `key` starts with a newline."""
    cdef const char* p
    cdef long long v = 0
    cdef const char* q
    cdef size_t m = strlen(key)
    if strncmp(_buf, key + 1, m - 1) == 0:
        p = _buf + m - 1
    else:
        p = strstr(_buf, key)
        if p == NULL:
            out[0] = 0
            return 0
        p += m
    while p[0] == b' ' or p[0] == b'\t':
        p += 1
    q = p
    while b'0' <= p[0] <= b'9':
        v = v * 10 + (p[0] - 48)
        p += 1
    if p == q:
        return -1
    while p[0] == b' ' or p[0] == b'\t':
        p += 1
    if not (p[0] == 0 or p[0] == b'\n'):
        return -1
    out[0] = v
    return 0


def read_pids(list fds, long page_size):
    cdef list out = []
    cdef long long f[40]
    cdef Py_ssize_t state[2]
    cdef Py_ssize_t comm[2]
    state[0] = state[1] = 0
    comm[0] = comm[1] = 0
    cdef long long vol, invol, rchar, wchar, rb, wb
    cdef Py_ssize_t n
    cdef int stat_fd, status_fd, io_fd
    cdef bint ok
    for item in fds:
        stat_fd, status_fd, io_fd = item
        n = _fill(stat_fd)
        if n <= 0 or _parse_stat(n, f, state, comm) < 0:
            out.append(None)
            continue
        try:
            st = _buf[state[0]:state[1]].decode()
            name = _buf[comm[0]:comm[1]].decode(errors="replace")
        except UnicodeDecodeError:
            out.append(None)
            continue
        v_vol = v_invol = None
        if status_fd >= 0 and _fill(status_fd) >= 0:
            if (_after(b"\nvoluntary_ctxt_switches:", &vol) == 0
                    and _after(b"\nnonvoluntary_ctxt_switches:", &invol) == 0):
                v_vol, v_invol = vol, invol
        v_io = (None, None, None, None)
        if io_fd >= 0 and _fill(io_fd) >= 0:
            ok = (_after(b"\nrchar:", &rchar) == 0 and _after(b"\nwchar:", &wchar) == 0
                  and _after(b"\nread_bytes:", &rb) == 0 and _after(b"\nwrite_bytes:", &wb) == 0)
            if ok:
                v_io = (rchar, wchar, rb, wb)
        out.append(
            (f[1], st, f[11], f[12], f[21] * page_size, f[20], f[17], f[36],
             f[7], f[9], v_vol, v_invol, v_io[0], v_io[1], v_io[2], v_io[3], f[13], f[14],
             f[19], name)
        )
    return out
