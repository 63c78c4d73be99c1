# cython: language_level=3, boundscheck=False, wraparound=False
"""Cython kernel: parsers for the /proc files sampled every second.

Same functions, signatures and results as procparse_py (the twin); this one walks the bytes
once at C level instead of splitting them into Python objects.
"""

from libc.string cimport memcmp, memchr

DEF CPU_FIELDS = 10
DEF DISK_FIELDS = 17
DEF SECTOR = 512


cdef inline bint _isspace(char c) nogil:
    return c == b' ' or c == b'\t'


cdef inline Py_ssize_t _skip_spaces(const char* s, Py_ssize_t i, Py_ssize_t n) nogil:
    while i < n and _isspace(s[i]):
        i += 1
    return i


cdef inline Py_ssize_t _line_end(const char* s, Py_ssize_t i, Py_ssize_t n) nogil:
    cdef const char* p = <const char*>memchr(s + i, b'\n', n - i)
    return n if p == NULL else p - s


cdef inline Py_ssize_t _read_int(const char* s, Py_ssize_t i, Py_ssize_t end, long long* out):
    """Parse one unsigned or negative integer at i; returns the index after it, or -1."""
    cdef long long v = 0
    cdef bint neg = False
    cdef Py_ssize_t start
    if i < end and s[i] == b'-':
        neg = True
        i += 1
    start = i
    while i < end and b'0' <= s[i] <= b'9':
        v = v * 10 + (s[i] - 48)
        i += 1
    if i == start or (i < end and not _isspace(s[i])):
        return -1
    out[0] = -v if neg else v
    return i


cdef list _ints(const char* s, Py_ssize_t i, Py_ssize_t end, int n, str where):
    cdef list out = []
    cdef long long v
    cdef int k = 0
    cdef Py_ssize_t j
    while k < n:
        i = _skip_spaces(s, i, end)
        if i >= end:
            break
        j = _read_int(s, i, end, &v)
        if j < 0:
            tok_end = i
            while tok_end < end and not _isspace(s[tok_end]):
                tok_end += 1
            raise ValueError(f"{where}: not a number: {s[i:tok_end]!r}")
        out.append(v)
        i = j
        k += 1
    while k < n:
        out.append(None)
        k += 1
    return out


cdef inline bint _starts(const char* s, Py_ssize_t i, Py_ssize_t end, bytes prefix):
    cdef Py_ssize_t m = len(prefix)
    return end - i >= m and memcmp(s + i, <const char*>prefix, m) == 0


cdef long long _int_after(const char* s, Py_ssize_t i, Py_ssize_t end, str where) except? -1:
    cdef long long v
    i = _skip_spaces(s, i, end)
    if _read_int(s, i, end, &v) < 0:
        raise ValueError(f"{where}: not a number")
    return v


def parse_stat(bytes data):
    cdef const char* s = data
    cdef Py_ssize_t n = len(data), i = 0, end, j, lineno = 0
    cdef object total = None
    cdef list per_cpu = []
    cdef long long ctxt = 0, intr = 0, processes = 0, running = 0, blocked = 0
    cdef long long cpu
    while i < n:
        end = _line_end(s, i, n)
        lineno += 1
        if _starts(s, i, end, b"cpu"):
            j = i + 3
            if j == end or s[j] == b' ':  # "cpu" alone: the total, every field missing
                total = _ints(s, j, end, CPU_FIELDS, f"/proc/stat line {lineno}")
            else:
                j = _read_int(s, j, end, &cpu)
                if j < 0:
                    raise ValueError(f"/proc/stat line {lineno}: bad CPU name")
                per_cpu.append((cpu, _ints(s, j, end, CPU_FIELDS, f"/proc/stat line {lineno}")))
        elif _starts(s, i, end, b"intr "):
            intr = _int_after(s, i + 5, end, "/proc/stat intr")
        elif _starts(s, i, end, b"ctxt "):
            ctxt = _int_after(s, i + 5, end, "/proc/stat ctxt")
        elif _starts(s, i, end, b"processes "):
            processes = _int_after(s, i + 10, end, "/proc/stat processes")
        elif _starts(s, i, end, b"procs_running "):
            running = _int_after(s, i + 14, end, "/proc/stat procs_running")
        elif _starts(s, i, end, b"procs_blocked "):
            blocked = _int_after(s, i + 14, end, "/proc/stat procs_blocked")
        i = end + 1
    if total is None:
        raise ValueError("/proc/stat: no 'cpu' line")
    return total, per_cpu, ctxt, intr, processes, running, blocked


def parse_keyed(bytes data, tuple keys, bint scale_kb):
    cdef const char* s = data
    cdef Py_ssize_t n = len(data), i = 0, end, k0, k1, j
    cdef list out = [None] * len(keys)
    cdef dict want = {k: idx for idx, k in enumerate(keys)}
    cdef long long v
    cdef int found = 0, nkeys = len(keys)
    cdef object idx
    while i < n and found < nkeys:
        end = _line_end(s, i, n)
        k0 = _skip_spaces(s, i, end)
        k1 = k0
        while k1 < end and not _isspace(s[k1]) and s[k1] != b':':
            k1 += 1
        idx = want.get(data[k0:k1])
        if idx is not None:
            j = k1 + 1 if k1 < end and s[k1] == b':' else k1
            j = _skip_spaces(s, j, end)
            j = _read_int(s, j, end, &v)
            if j < 0:
                raise ValueError(f"{data[k0:k1].decode()}: not a number")
            if scale_kb:
                j = _skip_spaces(s, j, end)
                if end - j >= 2 and s[j] == b'k' and s[j + 1] == b'B':
                    v *= 1024
            if out[idx] is None:
                found += 1
            out[idx] = v
        i = end + 1
    return out


def parse_net_dev(bytes data):
    cdef const char* s = data
    cdef Py_ssize_t n = len(data), i = 0, end, colon, k0, k1, lineno = 0
    cdef const char* p
    cdef list out = []
    while i < n:
        end = _line_end(s, i, n)
        lineno += 1
        colon = -1
        if memchr(s + i, b'|', end - i) == NULL:
            p = <const char*>memchr(s + i, b':', end - i)
            if p != NULL:
                colon = p - s
        if colon >= 0:
            k0 = _skip_spaces(s, i, colon)
            k1 = colon
            while k1 > k0 and _isspace(s[k1 - 1]):
                k1 -= 1
            out.append((data[k0:k1].decode(),
                        _ints(s, colon + 1, end, 16, f"/proc/net/dev line {lineno}")))
        i = end + 1
    return out


def parse_diskstats(bytes data):
    cdef const char* s = data
    cdef Py_ssize_t n = len(data), i = 0, end, j, k0, lineno = 0
    cdef list out = [], vals
    cdef long long v
    cdef int f
    while i < n:
        end = _line_end(s, i, n)
        lineno += 1
        j = i
        # major and minor numbers, then the name
        for f in range(2):
            j = _skip_spaces(s, j, end)
            while j < end and not _isspace(s[j]):
                j += 1
        k0 = _skip_spaces(s, j, end)
        j = k0
        while j < end and not _isspace(s[j]):
            j += 1
        if j > k0 and j < end:
            vals = _ints(s, j, end, DISK_FIELDS, f"/proc/diskstats line {lineno}")
            for f in (2, 6, 13):
                if vals[f] is not None:
                    vals[f] = vals[f] * SECTOR
            out.append((data[k0:j].decode(), vals))
        i = end + 1
    return out


def parse_pid_stat(bytes data):
    cdef const char* s = data
    cdef Py_ssize_t n = len(data), open_ = -1, close = -1, i, j, f = 0
    cdef long long v
    cdef bint neg
    cdef long long fields[40]
    cdef str state = ""
    for i in range(n):
        if s[i] == b'(':
            open_ = i
            break
    i = n - 1
    while i > open_:
        if s[i] == b')':
            close = i
            break
        i -= 1
    if open_ < 0 or close < 0:
        raise ValueError(f"/proc/PID/stat: no (comm) in {data[:40]!r}")
    pid = int(data[:open_])
    comm = data[open_ + 1:close].decode(errors="replace")
    i = close + 1
    # field index f counts from 0 = state, as in the twin's f[] list
    while i < n and f < 37:
        i = _skip_spaces(s, i, n)
        if i >= n or s[i] == b'\n':
            break
        if f == 0:
            j = i
            while j < n and not _isspace(s[j]) and s[j] != b'\n':
                j += 1
            state = data[i:j].decode()
            i = j
        else:
            j = i
            v = 0
            neg = False
            if s[j] == b'-':
                neg = True
                j += 1
            while j < n and b'0' <= s[j] <= b'9':
                v = v * 10 + (s[j] - 48)
                j += 1
            if j == i + neg or (j < n and not _isspace(s[j]) and s[j] != b'\n'):  # a lone "-" too
                raise ValueError(f"/proc/PID/stat of {pid}: field {f + 3} is not a number")
            fields[f] = -v if neg else v
            i = j
        f += 1
    if f < 37:
        raise ValueError(f"/proc/PID/stat of {pid}: {f + 2} fields, expected at least 39")
    return (pid, comm, state, fields[1], fields[7], fields[9], fields[11], fields[12],
            fields[17], fields[19], fields[20], fields[21], fields[36], fields[13], fields[14])


cdef long long _status_field(bytes data, bytes key) except? -1:
    cdef Py_ssize_t i = data.find(key)
    cdef const char* s = data
    if i < 0:
        return 0
    i += len(key)
    return _int_after(s, i, _line_end(s, i, len(data)), key.decode().strip())


def parse_pid_status_ctxt(bytes data):
    return (_status_field(data, b"\nvoluntary_ctxt_switches:"),
            _status_field(data, b"\nnonvoluntary_ctxt_switches:"))


def parse_pid_io(bytes data):
    vals = parse_keyed(data, (b"rchar", b"wchar", b"read_bytes", b"write_bytes"), False)
    return (vals[0] or 0, vals[1] or 0, vals[2] or 0, vals[3] or 0)


def parse_loadavg(bytes data):
    f = data.split()
    if len(f) < 3:
        raise ValueError(f"/proc/loadavg: {data[:40]!r}")
    return float(f[0]), float(f[1]), float(f[2])
