# cython: cdivision=True, initializedcheck=False
"""Cython kernel: folds `perf script` text as stackcollapse-perf.pl does (API in _fold.pyi).

The text is scanned in place, line by line, without a Python object per line: a symbol is
tidied into a scratch buffer and interned in a C hash table, a stack is a sequence of symbol
ids interned in another, and counts live in a C array. Python objects are made once per
distinct symbol and stack, at the end. Each rule of the reference's regular expressions is
decided here by direct scanning (the reasoning is next to each); the one rare shape of stack
line that the scan cannot decide alone is handed to the twin's regular expression, so the two
implementations agree there by construction.
"""

from cpython.ref cimport PyObject
from libc.math cimport floor, isfinite
from libc.stdint cimport INT64_MAX, int32_t, int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memchr, memcmp, memcpy


cdef extern from "Python.h":
    double PyOS_string_to_double(const char *s, char **endptr,
                                 PyObject *overflow_exception) except? -1.0


# Character classes with Perl's meaning on byte strings (ASCII only).
cdef enum:
    C_WS = 1        # \s: space \t \n \v \f \r
    C_DIGIT = 2     # \d
    C_WORD = 4      # \w
    C_HEX = 8       # [\da-f], the offsets perf appends: "+0x1f"
    C_PAREN = 16    # ( )  decide argument-list cutting and Go method names
    C_SUBST = 32    # ; " '  rewritten or removed by the tidy-up

cdef uint8_t CLS[256]


cdef void _init_classes():
    cdef int c
    for c in range(256):
        CLS[c] = 0
    for c in b" \t\n\x0b\x0c\r":
        CLS[c] |= C_WS
    for c in range(ord("0"), ord("9") + 1):
        CLS[c] |= C_DIGIT | C_WORD | C_HEX
    for c in range(ord("a"), ord("z") + 1):
        CLS[c] |= C_WORD
    for c in range(ord("A"), ord("Z") + 1):
        CLS[c] |= C_WORD
    CLS[ord("_")] |= C_WORD
    for c in range(ord("a"), ord("f") + 1):
        CLS[c] |= C_HEX
    CLS[ord("(")] |= C_PAREN
    CLS[ord(")")] |= C_PAREN
    for c in b";\"'":
        CLS[c] |= C_SUBST


_init_classes()

cdef const char* ANON = b"anonymous namespace)"
cdef int64_t MAX_ID_DIGITS = 18
cdef int64_t NO_ID = -1


cdef extern from *:
    """
    /* A wyhash-style hash: 16 bytes per 128-bit multiply, for the intern tables. */
    #include <stdint.h>
    #include <string.h>
    static inline uint64_t para_fold_mum(uint64_t a, uint64_t b) {
    #ifdef __SIZEOF_INT128__
        __uint128_t r = (__uint128_t)a * b;
        return (uint64_t)r ^ (uint64_t)(r >> 64);
    #else
        uint64_t r = a * (b | 1);
        return r ^ (r >> 32) ^ (a >> 29) ^ b;
    #endif
    }
    static inline uint64_t para_fold_load(const unsigned char *p) {
        uint64_t v;
        memcpy(&v, p, 8);
        return v;
    }
    static inline uint64_t para_fold_hash(const void *data, size_t n) {
        const unsigned char *p = (const unsigned char *)data;
        const uint64_t s0 = 0xa0761d6478bd642fULL, s1 = 0xe7037ed1a0b428dbULL;
        uint64_t h = s0 ^ para_fold_mum(n, s1), a = 0, b = 0;
        while (n > 16) {
            h = para_fold_mum(para_fold_load(p) ^ s1, para_fold_load(p + 8) ^ h);
            p += 16;
            n -= 16;
        }
        if (n >= 8) {
            a = para_fold_load(p);
            b = para_fold_load(p + n - 8);
        } else if (n > 0) {
            memcpy(&a, p, n);
        }
        return para_fold_mum(s1 ^ n, para_fold_mum(a ^ s1, b ^ h));
    }
    """
    uint64_t para_fold_hash(const void* data, size_t n) nogil


cdef inline bint _contains(const uint8_t* s, Py_ssize_t n, const char* needle,
                           Py_ssize_t m) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n - m + 1):
        if s[i] == <uint8_t>needle[0] and memcmp(s + i, needle, m) == 0:
            return True
    return False


cdef void* _grow(void* p, int64_t* cap, int64_t need, size_t elem) except NULL:
    """Reallocate p (capacity *cap elements) to hold at least `need` elements."""
    cdef int64_t c = cap[0] if cap[0] > 0 else 16
    while c < need:
        c *= 2
    cdef void* q = realloc(p, <size_t>c * elem)
    if q == NULL:
        raise MemoryError()
    cap[0] = c
    return q


cdef class _Table:
    """Interns byte strings (elem 1) or sequences of int64 (elem 8) as dense ids 0, 1, ..."""

    cdef uint8_t* data  # the keys, one after another
    cdef int64_t used, cap
    cdef int64_t* off
    cdef int64_t* size  # in elements
    cdef uint64_t* hashes
    cdef int64_t n, idcap
    cdef int32_t* slots  # id + 1, 0 = empty
    cdef uint64_t mask
    cdef size_t elem

    def __cinit__(self, size_t elem):
        self.elem = elem  # bytes per element: 1 for strings, 8 for int64 sequences
        self.mask = 1023
        self.slots = <int32_t*>malloc((self.mask + 1) * sizeof(int32_t))
        if self.slots == NULL:
            raise MemoryError()
        cdef uint64_t i
        for i in range(self.mask + 1):
            self.slots[i] = 0
        self.data = <uint8_t*>_grow(NULL, &self.cap, 4096, 1)

    def __dealloc__(self):
        free(self.data)
        free(self.off)
        free(self.size)
        free(self.hashes)
        free(self.slots)

    cdef int _rehash(self) except -1:
        cdef uint64_t mask = self.mask * 2 + 1
        cdef int32_t* slots = <int32_t*>malloc((mask + 1) * sizeof(int32_t))
        if slots == NULL:
            raise MemoryError()
        cdef uint64_t i
        cdef int64_t k
        for i in range(mask + 1):
            slots[i] = 0
        for k in range(self.n):
            i = self.hashes[k] & mask
            while slots[i] != 0:
                i = (i + 1) & mask
            slots[i] = <int32_t>(k + 1)
        free(self.slots)
        self.slots = slots
        self.mask = mask
        return 0

    cdef inline int64_t find(self, const void* p, int64_t count, uint64_t h) noexcept:
        """The id of the key, or -1 - (the free slot where it would go)."""
        cdef size_t nbytes = <size_t>count * self.elem
        cdef uint64_t i = h & self.mask
        cdef int64_t k
        while self.slots[i] != 0:
            k = self.slots[i] - 1
            if (self.hashes[k] == h and self.size[k] == count
                    and memcmp(self.data + self.off[k], p, nbytes) == 0):
                return k
            i = (i + 1) & self.mask
        return -1 - <int64_t>i

    cdef int64_t insert(self, const void* p, int64_t count, uint64_t h, int64_t slot) except -1:
        """Add a key that `find` did not find (`slot` is what it returned); its new id."""
        cdef size_t nbytes = <size_t>count * self.elem
        cdef int64_t k = self.n, cap
        if k >= 0x7ffffffe:
            raise OverflowError("fold: more than 2**31 distinct symbols, stacks or lines")
        if k >= self.idcap:
            cap = self.idcap
            self.off = <int64_t*>_grow(self.off, &cap, k + 1, sizeof(int64_t))
            cap = self.idcap
            self.size = <int64_t*>_grow(self.size, &cap, k + 1, sizeof(int64_t))
            cap = self.idcap
            self.hashes = <uint64_t*>_grow(self.hashes, &cap, k + 1, sizeof(uint64_t))
            self.idcap = cap
        if self.used + <int64_t>nbytes > self.cap:
            self.data = <uint8_t*>_grow(self.data, &self.cap, self.used + nbytes, 1)
        if nbytes:
            memcpy(self.data + self.used, p, nbytes)
        self.off[k] = self.used
        self.size[k] = count
        self.hashes[k] = h
        self.used += nbytes
        self.slots[-1 - slot] = <int32_t>(k + 1)
        self.n += 1
        if <uint64_t>self.n * 2 > self.mask:
            self._rehash()
        return k

    cdef inline int64_t intern(self, const void* p, int64_t count) except -1:
        cdef uint64_t h = para_fold_hash(p, <size_t>count * self.elem)
        cdef int64_t k = self.find(p, count, h)
        return k if k >= 0 else self.insert(p, count, h, k)

    cdef bytes get_bytes(self, int64_t k):
        return (self.data + self.off[k])[:self.size[k]]


# Beyond this many bytes of distinct stack lines (per kind of process), lines are parsed anew
# each time: memory stays bounded on inputs with ever-new lines (say --addrs on JIT code).
cdef int64_t LINE_CACHE_BYTES = 64 * 1024 * 1024


ctypedef struct _LineInfo:
    int64_t start  # where its frames begin in `ids`
    int64_t count  # how many
    int64_t succ   # the line that followed it last time (-1: none yet)
    int64_t off    # the line's bytes in keys.data, and their length
    int64_t size


cdef class _LineCache:
    """Stack line (less leading space) -> the frames it pushes, leaf first.

    Each line also remembers the line that followed it last time: a call chain prints the
    same lines in the same order in sample after sample, so the next line is first compared
    with that one, without hashing it or probing the table (whose memory, hundreds of
    thousands of lines in a long system-wide capture, is far from the CPU)."""

    cdef _Table keys
    cdef _LineInfo* info
    cdef int64_t* ids
    cdef int64_t nids, ids_cap, info_cap

    def __cinit__(self):
        self.keys = _Table(1)

    def __dealloc__(self):
        free(self.info)
        free(self.ids)

    cdef int64_t add(self, const uint8_t* line, Py_ssize_t n, uint64_t h, int64_t slot,
                     const int64_t* frames, int64_t g) except -1:
        cdef int64_t k = self.keys.insert(line, n, h, slot)
        if k >= self.info_cap:
            self.info = <_LineInfo*>_grow(self.info, &self.info_cap, k + 1, sizeof(_LineInfo))
        if self.nids + g > self.ids_cap:
            self.ids = <int64_t*>_grow(self.ids, &self.ids_cap, self.nids + g, sizeof(int64_t))
        memcpy(self.ids + self.nids, frames, g * sizeof(int64_t))
        self.info[k].start = self.nids
        self.info[k].count = g
        self.info[k].succ = -1
        self.info[k].off = self.keys.off[k]
        self.info[k].size = n
        self.nids += g
        return k


cdef bytes _event_key_bytes(bytes name):
    cdef Py_ssize_t first = name.find(b"/"), last = name.rfind(b"/")
    if first <= 0 or last <= first + 1:
        return name
    mods = name[last + 1:]
    return name[first + 1:last] + (b":" + mods if mods else b"")


cdef class _Folder:
    """The reference's state machine over lines, with C-level state."""

    cdef _Table names   # process names and symbols
    cdef _Table stacks  # fold: [name, frames...]; timed: [frames...]
    cdef _Table rows    # timed: [bucket start bits, pid, tid, comm, stack]
    cdef _LineCache lines, java_lines  # the frames of stack lines seen before
    cdef int64_t* counts  # per stack (fold) or row (timed)
    cdef int64_t ncounts, ccap
    cdef dict extra  # id -> the part of its count that does not fit an int64

    cdef bint opt_pid, opt_tid, kernel, jit, addrs, timed
    cdef double bucket
    cdef bytes wanted

    # the header in force (the reference's $pname, $m_pid, $m_tid, $m_period)
    cdef bint has_header, java
    cdef int64_t name_id, period, pid_num, tid_num
    cdef object period_big
    cdef double start

    cdef int64_t* stk  # frames of the sample, leaf first (each line's frames reversed)
    cdef int64_t stk_len, stk_cap
    cdef int64_t* key
    cdef int64_t key_cap
    cdef uint8_t* out  # the symbol being tidied
    cdef int64_t out_cap
    cdef uint8_t* tmp  # "[dso <addr>]" for unknown symbols
    cdef int64_t tmp_cap
    cdef int64_t* grp  # the frames of one line
    cdef int64_t grp_cap
    cdef uint8_t* evk  # an event name without its PMU (timed)
    cdef int64_t evk_cap
    cdef int64_t prev_line  # the line-cache id of the sample's previous stack line, or -1

    def __cinit__(self, bint opt_pid, bint opt_tid, bint kernel, bint jit, bint addrs,
                  event_filter, bint timed, double bucket):
        self.names = _Table(1)
        self.stacks = _Table(sizeof(int64_t))
        self.rows = _Table(sizeof(int64_t))
        self.lines = _LineCache()
        self.java_lines = _LineCache()
        self.extra = {}
        self.opt_pid = opt_pid
        self.opt_tid = opt_tid
        self.kernel = kernel
        self.jit = jit
        self.addrs = addrs
        self.timed = timed
        self.bucket = bucket
        self.wanted = (event_filter or "").encode("utf-8", "surrogateescape")
        if timed:
            self.wanted = _event_key_bytes(self.wanted)
        self.has_header = False
        self.prev_line = -1

    def __dealloc__(self):
        free(self.counts)
        free(self.stk)
        free(self.key)
        free(self.out)
        free(self.tmp)
        free(self.grp)
        free(self.evk)

    cdef int run(self, const uint8_t* buf, Py_ssize_t n) except -1:
        cdef Py_ssize_t pos = 0, end, length
        cdef const uint8_t* line
        cdef const uint8_t* nl
        while pos < n:
            line = buf + pos
            nl = <const uint8_t*>memchr(line, b"\n", n - pos)
            end = (nl - buf) if nl != NULL else n
            length = end - pos
            if length == 0:
                self.flush()
            elif line[0] == b"#":
                pass
            elif not (CLS[line[0]] & C_WS) and self.header(line, length):
                pass
            elif self.has_header:
                self.frame(line, length)
            pos = end + 1
        return 0

    # -- a header: (\S.+?)\s+(\d+)/*(\d+)*\s+  then  :\s*(\d+)*\s+(\S+):\s*$ ----------------

    cdef int header(self, const uint8_t* line, Py_ssize_t n) except -1:
        """1 when `line` is a sample header (then the header in force unless filtered)."""
        # The name is as short as possible: try each whitespace run after the first two
        # bytes; the run must be followed by digits, then whitespace, or slashes and
        # (optionally) digits and whitespace. No backtracking into the digits can rescue a
        # failed attempt, and every start inside one whitespace run fails alike.
        cdef Py_ssize_t e = 2, a = 0, b = 0, c = 0, d = 0, t, T, j, k, ds = 0, de = 0
        cdef Py_ssize_t tid_s = -1, tid_e = -1
        cdef bint found = False
        while e < n:
            if not (CLS[line[e]] & C_WS):
                e += 1
                continue
            a = e
            while a < n and CLS[line[a]] & C_WS:
                a += 1
            b = a
            while b < n and CLS[line[b]] & C_DIGIT:
                b += 1
            if a < b < n:
                if CLS[line[b]] & C_WS:
                    found = True
                    d = b
                elif line[b] == b"/":
                    c = b
                    while c < n and line[c] == b"/":
                        c += 1
                    d = c
                    while d < n and CLS[line[d]] & C_DIGIT:
                        d += 1
                    if d < n and CLS[line[d]] & C_WS:
                        found = True
                        if d > c:
                            tid_s = c
                            tid_e = d
            if found:
                break
            e = a
        if not found:
            return 0

        # The event: the line (less trailing space) ends in a token "EVENT:"; before it only
        # whitespace and at most one run of digits (the period) back to a ':'.
        cdef bint has_event = False
        T = n
        while T > 0 and CLS[line[T - 1]] & C_WS:
            T -= 1
        if T > 0 and line[T - 1] == b":":
            t = T - 1
            while t > 0 and not (CLS[line[t - 1]] & C_WS):
                t -= 1
            if t > 0 and T - 1 > t:
                j = t
                while j > 0 and CLS[line[j - 1]] & (C_WS | C_DIGIT):
                    j -= 1
                if j > 0 and line[j - 1] == b":":
                    k = j
                    while k < t and CLS[line[k]] & C_WS:
                        k += 1
                    ds = k
                    while k < t and CLS[line[k]] & C_DIGIT:
                        k += 1
                    de = k
                    while k < t and CLS[line[k]] & C_WS:
                        k += 1
                    has_event = k == t
        cdef int64_t period = 1
        cdef object period_big = None
        cdef const uint8_t* ev
        cdef Py_ssize_t evn
        if has_event:
            ev = line + t
            evn = T - 1 - t
            if self.timed:  # one event in every PMU of a hybrid CPU (fold_py.event_key)
                evn = self.event_key(ev, evn)
                ev = self.evk
            if len(self.wanted) == 0:
                self.wanted = ev[:evn]  # the first event seen is the one kept
            elif (len(self.wanted) != evn
                    or memcmp(<const char*>self.wanted, ev, evn) != 0):
                return 1  # another event: the header in force stays, as in the reference
            # Perl truth: a period of "0" (or none) counts as 1; "00" counts 0.
            if de > ds and not (de - ds == 1 and line[ds] == b"0"):
                if de - ds <= 18:
                    period = 0
                    for k in range(ds, de):
                        period = period * 10 + (line[k] - 48)
                else:
                    period_big = int(line[ds:de])

        # The process name, then (for fold) the reference's "-PID" / "-PID/TID" suffix.
        # With one id, or a TID of "0", the reference's PID is "?" and its TID the first id.
        cdef bint one_id = tid_s < 0 or (tid_e - tid_s == 1 and line[tid_s] == b"0")
        cdef uint8_t* o
        cdef int64_t used = 0, need = e + 2 * (d - a) + 4
        if need > self.out_cap:
            self.out = <uint8_t*>_grow(self.out, &self.out_cap, need, 1)
        o = self.out
        for k in range(e):
            o[k] = b"_" if line[k] == b" " else line[k]
        used = e
        if not self.timed and (self.opt_tid or self.opt_pid):
            o[used] = b"-"
            used += 1
            if one_id:
                o[used] = b"?"
                used += 1
            else:
                memcpy(o + used, line + a, b - a)
                used += b - a
            if self.opt_tid:
                o[used] = b"/"
                used += 1
                if one_id:
                    memcpy(o + used, line + a, b - a)
                    used += b - a
                else:
                    memcpy(o + used, line + tid_s, tid_e - tid_s)
                    used += tid_e - tid_s
        self.name_id = self.names.intern(o, used)
        self.java = e >= 4 and memcmp(line, b"java", 4) == 0
        self.period = period
        self.period_big = period_big
        self.has_header = True
        self.prev_line = -1
        if self.timed:
            if tid_s < 0:
                self.pid_num = NO_ID
                self.tid_num = _parse_id(line + a, b - a)
            else:
                self.pid_num = _parse_id(line + a, b - a)
                self.tid_num = _parse_id(line + tid_s, tid_e - tid_s)
            while d < n and CLS[line[d]] & C_WS:
                d += 1
            self.start = self.bucket_start(line + d, n - d)
        return 1

    cdef Py_ssize_t event_key(self, const uint8_t* s, Py_ssize_t n) except -1:
        """The event name without its PMU into self.evk ("cpu_core/cycles/u" -> "cycles:u");
        its length."""
        cdef Py_ssize_t first = -1, last = -1, k, used
        for k in range(n):
            if s[k] == b"/":
                if first < 0:
                    first = k
                last = k
        if n + 1 > self.evk_cap:
            self.evk = <uint8_t*>_grow(self.evk, &self.evk_cap, n + 1, 1)
        if first <= 0 or last <= first + 1:
            memcpy(self.evk, s, n)
            return n
        used = last - first - 1
        memcpy(self.evk, s + first + 1, used)
        if last + 1 < n:
            self.evk[used] = b":"
            memcpy(self.evk + used + 1, s + last + 1, n - last - 1)
            used += n - last
        return used

    cdef double bucket_start(self, const uint8_t* s, Py_ssize_t n) except? -1.0:
        """Bucket of the first token "DIGITS[.DIGITS]:" after the ids; 0.0 without one."""
        cdef Py_ssize_t i = 0, ts, k
        cdef char num[64]
        cdef double t, q
        while i < n:
            while i < n and CLS[s[i]] & C_WS:
                i += 1
            ts = i
            while i < n and not (CLS[s[i]] & C_WS):
                i += 1
            if i - ts < 2 or s[i - 1] != b":":
                continue
            k = ts
            while k < i and CLS[s[k]] & C_DIGIT:
                k += 1
            if k == ts:
                continue
            if s[k] == b".":
                k += 1
                if not (CLS[s[k]] & C_DIGIT):
                    continue
                while k < i and CLS[s[k]] & C_DIGIT:
                    k += 1
            if k != i - 1:
                continue
            if k - ts < 63:
                memcpy(num, s + ts, k - ts)
                num[k - ts] = 0
                t = PyOS_string_to_double(num, NULL, NULL)
            else:
                t = float(s[ts:k])
            q = t / self.bucket
            return floor(q) * self.bucket if isfinite(q) else 0.0
        return 0.0

    # -- a stack line: \s*(\w+)\s*(.+) \((.*)\) -----------------------------------------------

    cdef int frame(self, const uint8_t* line, Py_ssize_t n) except -1:
        """Push the frames of a stack line; equal lines (less leading space) are parsed once
        per kind of process (Java or not), as long as the cache has room."""
        cdef Py_ssize_t i0 = 0
        while i0 < n and CLS[line[i0]] & C_WS:
            i0 += 1
        if i0 == n:
            return 0
        cdef _LineCache cache = self.java_lines if self.java else self.lines
        cdef Py_ssize_t m = n - i0
        cdef int64_t k = -1, pred
        cdef uint64_t h
        cdef _LineInfo* inf
        cdef const int64_t* ids
        cdef int64_t g
        if self.prev_line >= 0:  # the line that followed the previous one last time?
            pred = cache.info[self.prev_line].succ
            if pred >= 0:
                inf = &cache.info[pred]
                if inf.size == m and memcmp(cache.keys.data + inf.off, line + i0, m) == 0:
                    k = pred
        if k < 0:
            h = para_fold_hash(line + i0, m)
            k = cache.keys.find(line + i0, m, h)
            if k < 0:
                g = self.parse_frame(line, n, i0)
                if cache.keys.used < LINE_CACHE_BYTES:
                    k = cache.add(line + i0, m, h, k, self.grp, g)
                else:
                    k = -1
            if k >= 0 and self.prev_line >= 0:
                cache.info[self.prev_line].succ = k
        if k >= 0:
            ids = cache.ids + cache.info[k].start
            g = cache.info[k].count
        else:
            ids = self.grp
        self.prev_line = k
        if self.stk_len + g > self.stk_cap:
            self.stk = <int64_t*>_grow(self.stk, &self.stk_cap, self.stk_len + g,
                                       sizeof(int64_t))
        memcpy(self.stk + self.stk_len, ids, g * sizeof(int64_t))
        self.stk_len += g
        return 0

    cdef int64_t parse_frame(self, const uint8_t* line, Py_ssize_t n, Py_ssize_t i0) except -1:
        """Put the frames of a stack line in self.grp, last first; how many."""
        # The dso is between the last " (" that has a ")" after it and the last ")"; the
        # symbol starts after the address and the whitespace that follows it. That reading
        # holds when that " (" leaves the symbol at least one byte; when it does not, the
        # regex backtracks into the address or its whitespace: rare, left to the regex.
        cdef Py_ssize_t w, s, q, p
        if not (CLS[line[i0]] & C_WORD):
            return 0
        w = i0
        while w < n and CLS[line[w]] & C_WORD:
            w += 1
        s = w
        while s < n and CLS[line[s]] & C_WS:
            s += 1
        q = n - 1
        while q >= 0 and line[q] != b")":
            q -= 1
        p = q - 2
        while p >= 0 and not (line[p] == b" " and line[p + 1] == b"("):
            p -= 1
        if p >= s + 1:
            return self.frame_parts(line + i0, w - i0, line + s, p - s, line + p + 2, q - p - 2)
        if p < i0 + 2:
            return 0  # not a stack line: the reference warns and goes on
        from para.cython_ext import fold_py  # here: the twin's regexes are rarely needed

        parts = fold_py.match_frame(line[:n])
        if parts is None:
            return 0
        cdef bytes pc = parts[0], raw = parts[1], mod = parts[2]
        return self.frame_parts(<const uint8_t*><const char*>pc, len(pc),
                                <const uint8_t*><const char*>raw, len(raw),
                                <const uint8_t*><const char*>mod, len(mod))

    cdef int64_t frame_parts(self, const uint8_t* pc, Py_ssize_t pcl, const uint8_t* raw,
                             Py_ssize_t rl, const uint8_t* mod, Py_ssize_t ml) except -1:
        cdef Py_ssize_t e = rl, start, j, g = 0, k
        cdef int64_t x
        # "+0x1f" at the end goes; only the last "+0x" can be followed by hex alone.
        while e > 0 and CLS[raw[e - 1]] & C_HEX:
            e -= 1
        if e < rl and e >= 3 and raw[e - 3] == b"+" and raw[e - 2] == b"0" and raw[e - 1] == b"x":
            rl = e - 3
        if rl > 0 and raw[0] == b"(":
            return 0  # a process name, not a function
        # Perl's split drops trailing empty fields, so trailing "->" go; "->" cannot overlap
        # itself, so splitting from either end gives the same fields.
        while rl >= 2 and raw[rl - 2] == b"-" and raw[rl - 1] == b">":
            rl -= 2
        if rl == 0:
            return 0
        cdef bint is_kernel = False, is_jit = False
        if self.kernel:
            is_kernel = ((ml > 0 and mod[0] == b"[")
                         or (ml >= 7 and memcmp(mod + ml - 7, b"vmlinux", 7) == 0))
            is_kernel = is_kernel and not _contains(mod, ml, b"unknown", 7)
        if self.jit:
            is_jit = _is_jit_map(mod, ml)
        start = 0
        while True:
            j = start
            while j + 1 < rl and not (raw[j] == b"-" and raw[j + 1] == b">"):
                j += 1
            if j + 1 >= rl:
                j = rl
            if g >= self.grp_cap:
                self.grp = <int64_t*>_grow(self.grp, &self.grp_cap, g + 1, sizeof(int64_t))
            self.grp[g] = self.symbol(raw + start, j - start, g, pc, pcl, mod, ml,
                                      is_kernel, is_jit)
            g += 1
            if j >= rl:
                break
            start = j + 2
        for k in range(g // 2):  # the stack grows leaf first
            x = self.grp[k]
            self.grp[k] = self.grp[g - 1 - k]
            self.grp[g - 1 - k] = x
        return g

    cdef int64_t symbol(self, const uint8_t* src, Py_ssize_t n, Py_ssize_t index,
                        const uint8_t* pc, Py_ssize_t pcl, const uint8_t* mod, Py_ssize_t ml,
                        bint is_kernel, bint is_jit) except -1:
        """Id of one tidied, annotated symbol (`index` > 0: inlined into the one before)."""
        cdef Py_ssize_t i, m, slash
        if n == 9 and memcmp(src, b"[unknown]", 9) == 0:
            # "[dso]" (base name), "[unknown]", with " <addr>" inside for --addrs
            if ml == 9 and memcmp(mod, b"[unknown]", 9) == 0:
                mod = <const uint8_t*><const char*>b"unknown"
                ml = 7
            else:
                slash = ml
                while slash > 0 and mod[slash - 1] != b"/":
                    slash -= 1
                mod += slash
                ml -= slash
            m = ml + pcl + 5
            if m > self.tmp_cap:
                self.tmp = <uint8_t*>_grow(self.tmp, &self.tmp_cap, m, 1)
            m = 0
            self.tmp[m] = b"["
            m += 1
            memcpy(self.tmp + m, mod, ml)
            m += ml
            if self.addrs:
                self.tmp[m] = b" "
                self.tmp[m + 1] = b"<"
                m += 2
                memcpy(self.tmp + m, pc, pcl)
                m += pcl
                self.tmp[m] = b">"
                m += 1
            self.tmp[m] = b"]"
            m += 1
            src = self.tmp
            n = m

        # The argument list goes: from the first "(" that does not open
        # "(anonymous namespace)", unless the name looks like a Go method: ".(" ... ").".
        cdef Py_ssize_t cut = -1, go_open = -1, go_close = -1
        cdef bint subst = False
        cdef uint8_t c
        for i in range(n):
            c = src[i]
            if CLS[c] & (C_PAREN | C_SUBST):
                if c == b"(":
                    if go_open < 0 and i > 0 and src[i - 1] == b".":
                        go_open = i - 1
                    if cut < 0 and not (n - i - 1 >= 20 and memcmp(src + i + 1, ANON, 20) == 0):
                        cut = i
                elif c == b")":
                    if i + 1 < n and src[i + 1] == b".":
                        go_close = i
                else:
                    subst = True
        if cut < 0 or (go_open >= 0 and go_close >= go_open + 2):
            cut = n
        if cut + 4 > self.out_cap:
            self.out = <uint8_t*>_grow(self.out, &self.out_cap, cut + 4, 1)
        cdef uint8_t* o = self.out
        m = 0
        if subst:
            for i in range(cut):
                c = src[i]
                if c == b";":
                    o[m] = b":"
                    m += 1
                elif c != b'"' and c != b"'":
                    o[m] = c
                    m += 1
        else:
            memcpy(o, src, cut)
            m = cut
        # Java class names lose their "L" ("Ljava/lang/Thread;" -> "java/lang/Thread:").
        if self.java and m > 0 and o[0] == b"L" and memchr(o, b"/", m) != NULL:
            o += 1
            m -= 1
        if index > 0:
            if not _contains(o, m, b"_[i]", 4):
                memcpy(o + m, b"_[i]", 4)
                m += 4
        elif is_kernel:
            memcpy(o + m, b"_[k]", 4)
            m += 4
        elif is_jit and not _contains(o, m, b"_[j]", 4):
            memcpy(o + m, b"_[j]", 4)
            m += 4
        return self.names.intern(o, m)

    # -- a blank line: the sample is complete ---------------------------------------------

    cdef int flush(self) except -1:
        if not self.has_header:
            return 0
        cdef int64_t depth = self.stk_len, k, i
        cdef int64_t row[5]
        if depth + 1 > self.key_cap:
            self.key = <int64_t*>_grow(self.key, &self.key_cap, depth + 1, sizeof(int64_t))
        if self.timed:
            for k in range(depth):
                self.key[k] = self.stk[depth - 1 - k]
            memcpy(&row[0], &self.start, sizeof(double))
            row[1] = self.pid_num
            row[2] = self.tid_num
            row[3] = self.name_id
            row[4] = self.stacks.intern(self.key, depth)
            i = self.rows.intern(row, 5)
        else:
            self.key[0] = self.name_id
            for k in range(depth):
                self.key[k + 1] = self.stk[depth - 1 - k]
            i = self.stacks.intern(self.key, depth + 1)
        if i >= self.ncounts:
            if i >= self.ccap:
                self.counts = <int64_t*>_grow(self.counts, &self.ccap, i + 1, sizeof(int64_t))
            for k in range(self.ncounts, i + 1):
                self.counts[k] = 0
            self.ncounts = i + 1
        if self.period_big is not None:
            self.extra[i] = self.extra.get(i, 0) + self.period_big
        elif self.counts[i] > INT64_MAX - self.period:
            self.extra[i] = self.extra.get(i, 0) + self.period
        else:
            self.counts[i] += self.period
        self.stk_len = 0
        self.has_header = False
        self.prev_line = -1
        return 0

    # -- results --------------------------------------------------------------------------

    cdef list _strings(self):
        return [self.names.get_bytes(k).decode("utf-8", "surrogateescape")
                for k in range(self.names.n)]

    cdef str _joined(self, list strings, int64_t stack):
        cdef const int64_t* seq = <const int64_t*>(self.stacks.data + self.stacks.off[stack])
        cdef int64_t k, depth = self.stacks.size[stack]
        return ";".join([strings[seq[k]] for k in range(depth)])

    cdef dict folded(self):
        cdef list strings = self._strings()
        cdef dict result = {}
        cdef int64_t k
        for k in range(self.stacks.n):
            key = self._joined(strings, k)
            # a process name may hold ';', so two stacks can print alike: they add up
            result[key] = result.get(key, 0) + self._count_obj(k)
        return result

    cdef object _count_obj(self, int64_t k):
        if self.extra and k in self.extra:
            return self.counts[k] + self.extra[k]
        return self.counts[k]

    cdef list timed_rows(self):
        cdef list strings = self._strings()
        cdef dict merged = {}
        cdef int64_t k
        cdef const int64_t* row
        cdef double start
        cdef list stack_strs = [self._joined(strings, k) for k in range(self.stacks.n)]
        for k in range(self.rows.n):
            row = <const int64_t*>(self.rows.data + self.rows.off[k])
            memcpy(&start, &row[0], sizeof(double))
            key = (start, row[1], row[2], strings[row[3]], stack_strs[row[4]])
            merged[key] = merged.get(key, 0) + self._count_obj(k)
        result = [(*key, count) for key, count in merged.items()]
        result.sort()
        return result


cdef inline int64_t _parse_id(const uint8_t* s, Py_ssize_t n) noexcept:
    if n > MAX_ID_DIGITS:
        return NO_ID
    cdef int64_t v = 0
    cdef Py_ssize_t i
    for i in range(n):
        v = v * 10 + (s[i] - 48)
    return v


cdef bint _is_jit_map(const uint8_t* mod, Py_ssize_t ml) noexcept:
    """Whether `mod` contains "/tmp/perf-DIGITS.map" (a perf map of JIT-compiled code)."""
    cdef Py_ssize_t i, k
    for i in range(ml - 10):
        if mod[i] == b"/" and memcmp(mod + i, b"/tmp/perf-", 10) == 0:
            k = i + 10
            while k < ml and CLS[mod[k]] & C_DIGIT:
                k += 1
            if k > i + 10 and k + 4 <= ml and memcmp(mod + k, b".map", 4) == 0:
                return True
    return False


cdef object _view(object data):
    """`data` as an object with a contiguous byte buffer, converting what has none."""
    try:
        memoryview(data).cast("B")
        return data
    except (TypeError, ValueError):
        from para.cython_ext import fold_py

        return fold_py.as_bytes(data)


cdef _Folder _run(object data, bint opt_pid, bint opt_tid, bint kernel, bint jit, bint addrs,
                  object event_filter, bint timed, double bucket):
    cdef _Folder folder = _Folder(opt_pid, opt_tid, kernel, jit, addrs, event_filter, timed,
                                  bucket)
    cdef const uint8_t[::1] view
    buf = _view(data)
    view = memoryview(buf).cast("B")
    if view.shape[0] > 0:
        folder.run(&view[0], view.shape[0])
    return folder


def fold(data, *, pid=False, tid=False, kernel=False, jit=False, addrs=False,
         event_filter=None):
    return _run(data, pid, tid, kernel, jit, addrs, event_filter, False, 1.0).folded()


def first_event(data):
    cdef _Folder folder = _Folder(False, False, False, False, False, None, False, 1.0)
    cdef const uint8_t[::1] view
    cdef const uint8_t* buf
    cdef const uint8_t* line
    cdef const uint8_t* nl
    cdef Py_ssize_t n, pos = 0, end
    view = memoryview(_view(data)).cast("B")
    n = view.shape[0]
    if n == 0:
        return None
    buf = &view[0]
    while pos < n:  # the lines run() would take for headers, until one sets the filter
        line = buf + pos
        nl = <const uint8_t*>memchr(line, b"\n", n - pos)
        end = (nl - buf) if nl != NULL else n
        if end > pos and line[0] != b"#" and not (CLS[line[0]] & C_WS):
            folder.header(line, end - pos)
            if len(folder.wanted) > 0:
                return folder.wanted.decode("utf-8", "surrogateescape")
        pos = end + 1
    return None


def fold_timed(data, *, kernel=False, jit=False, addrs=False, event_filter=None, bucket=1.0):
    if not (isinstance(bucket, (int, float)) and isfinite(bucket) and bucket > 0):
        raise ValueError(f"fold_timed: bucket must be a positive number of seconds, not {bucket}")
    return _run(data, False, False, kernel, jit, addrs, event_filter, True,
                float(bucket)).timed_rows()
