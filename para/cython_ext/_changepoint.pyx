# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Cython kernel: PELT segmentation with a change-in-mean cost (see _changepoint.pyi).

Same function, signature and results as changepoint_py (the twin); the same floating-point
operations in the same order, on C arrays and without the GIL.
"""

from libc.math cimport INFINITY, isfinite
from libc.stdlib cimport free, malloc


def segment(data, Py_ssize_t n, Py_ssize_t d, *, double penalty, Py_ssize_t min_size=2):
    cdef const double[:] x
    try:
        x = memoryview(data).cast("B").cast("d")
    except TypeError as e:
        raise ValueError(f"segment: data is not a buffer of float64: {e}") from None
    if n < 0 or d < 1 or x.shape[0] != n * d:
        raise ValueError(f"segment: data holds {x.shape[0]} values, not n * d = {n} * {d}")
    if not (penalty >= 0 and isfinite(penalty)):
        raise ValueError(f"segment: penalty must be a finite number >= 0, not {penalty}")
    if n == 0:
        return []
    cdef Py_ssize_t m = min_size if min_size > 1 else 1
    if n < 2 * m:
        return [n]
    cdef double* s1 = <double*>malloc((n + 1) * d * sizeof(double))
    cdef double* s2 = <double*>malloc((n + 1) * sizeof(double))
    cdef double* f = <double*>malloc((n + 1) * sizeof(double))
    cdef double* costs = <double*>malloc((n + 1) * sizeof(double))
    cdef Py_ssize_t* last = <Py_ssize_t*>malloc((n + 1) * sizeof(Py_ssize_t))
    cdef Py_ssize_t* cands = <Py_ssize_t*>malloc((n + 2) * sizeof(Py_ssize_t))
    if not (s1 and s2 and f and costs and last and cands):
        free(s1); free(s2); free(f); free(costs); free(last); free(cands)
        raise MemoryError()
    cdef Py_ssize_t t, j, tau, k, nc, keep, best_tau, length
    cdef double sq, val, best, c, s
    try:
        with nogil:
            for j in range(d):
                s1[j] = 0.0
            s2[0] = 0.0
            for t in range(n):
                sq = 0.0
                for j in range(d):
                    val = x[t * d + j]
                    s1[(t + 1) * d + j] = s1[t * d + j] + val
                    sq += val * val
                s2[t + 1] = s2[t] + sq
            for t in range(n + 1):
                f[t] = INFINITY
                last[t] = 0
            f[0] = -penalty
            cands[0] = 0
            nc = 1
            for t in range(m, n + 1):
                best = INFINITY
                best_tau = 0
                for k in range(nc):
                    tau = cands[k]
                    if t - tau >= m:
                        length = t - tau
                        c = s2[t] - s2[tau]
                        for j in range(d):
                            s = s1[t * d + j] - s1[tau * d + j]
                            c -= s * s / length
                        c = f[tau] + c
                        costs[k] = c
                        if c + penalty < best:
                            best = c + penalty
                            best_tau = tau
                    else:
                        costs[k] = -INFINITY
                f[t] = best
                last[t] = best_tau
                keep = 0
                for k in range(nc):
                    if costs[k] <= best:
                        cands[keep] = cands[k]
                        keep += 1
                nc = keep
                if t - m + 1 >= m:
                    cands[nc] = t - m + 1
                    nc += 1
        ends = []
        t = n
        while t > 0:
            ends.append(t)
            t = last[t]
        ends.reverse()
        return ends
    finally:
        free(s1); free(s2); free(f); free(costs); free(last); free(cands)
