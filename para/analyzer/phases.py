"""The phases of a job: stretches of time in which it did the same kind of thing.

The job's per-step signals (cores busy as a share of what it had, storage bytes, network bytes,
GPU busy) are scaled by their noise and cut where their means change (PELT, the
`changepoint` kernel).  Neighbouring pieces that ended up alike are merged, and each phase is
named by what dominates it.  Long jobs are first averaged into at most MAX_POINTS steps, so
phases are found in the same time whatever the length of the run and whichever kernel runs.
"""

from __future__ import annotations

import array
import math
from dataclasses import dataclass, field
from typing import Any

from para.analyzer.job import Job
from para.cython_ext import load

_cp = load("changepoint")

MAX_POINTS = 1200
# A change smaller than this (in the signal's own unit: share of cores, of peak I/O or
# network, of GPU time) does not make a new phase, however clean the signal is.
RELEVANT = 0.08
PENALTY_PER_DIM = 3.0
IO_FLOOR = 1e6  # bytes/s


@dataclass
class Phase:
    index: int
    start_sec: int  # first step (inclusive)
    end_sec: int  # last step (exclusive)
    label: str = ""
    means: dict[str, float] = field(default_factory=dict)

    def as_dict(self, step_s: float) -> dict[str, Any]:
        return {
            "index": self.index,
            "label": self.label,
            "start_s": round(self.start_sec * step_s, 3),
            "end_s": round(self.end_sec * step_s, 3),
            "duration_s": round((self.end_sec - self.start_sec) * step_s, 3),
        }


def _noise(xs: list[float]) -> float:
    """Robust noise level: the median absolute first difference, as a standard deviation."""
    diffs = sorted(abs(b - a) for a, b in zip(xs, xs[1:], strict=False))
    if not diffs:
        return 0.0
    mid = diffs[len(diffs) // 2]
    return mid / (0.6745 * math.sqrt(2))


def signals(job: Job) -> tuple[list[int], dict[str, list[float]]]:
    """Steps and the job's signals on them, each in [0, ~1]: cores busy / cores it had, storage
    and network bytes / their peak, GPU busy / 100."""
    rows = job.query(
        "SELECT sec, work_cores / nullif(allowed, 0), io_bps, nw_bps, gpu_util "
        "FROM job_sec WHERE live AND work_cores IS NOT NULL ORDER BY sec"
    )
    if not rows:
        return [], {}
    secs = [int(r[0]) for r in rows]
    cpu = [float(r[1] or 0.0) for r in rows]
    io = [float(r[2] or 0.0) for r in rows]
    nw = [float(r[3] or 0.0) for r in rows]
    gpu = [float(r[4]) / 100.0 if r[4] is not None else None for r in rows]
    out: dict[str, list[float]] = {"cpu": cpu}
    for name, xs in (("io", io), ("net", nw)):
        # a job that never moved a megabyte per second has no I/O or network phases
        peak = max(max(xs), IO_FLOOR)
        if max(xs) > 0:
            out[name] = [x / peak for x in xs]
    if any(g is not None for g in gpu):
        out["gpu"] = [g or 0.0 for g in gpu]
    return secs, out


def _bin(xs: list[float], size: int) -> list[float]:
    return [sum(xs[i : i + size]) / len(xs[i : i + size]) for i in range(0, len(xs), size)]


def detect(job: Job) -> list[Phase]:
    secs, sig = signals(job)
    if not secs:
        return []
    # the job ended within its last step, which holds what it did in part of it (the CPU
    # after the last sample, reduce.py): it ends the last phase and never makes one
    last = secs[-1]
    if len(secs) >= 4:
        secs = secs[:-1]
        sig = {k: v[:-1] for k, v in sig.items()}
    n_all = len(secs)
    size = max(1, math.ceil(n_all / MAX_POINTS))
    binned = {k: _bin(v, size) for k, v in sig.items()}
    names = sorted(binned)
    n = len(binned[names[0]])
    # each dimension in units of its noise, the noise never below the relevant change
    scaled = []
    for k in names:
        xs = binned[k]
        sd = max(_noise(xs), RELEVANT / 2)
        scaled.append([x / sd for x in xs])
    data = array.array("d", [scaled[j][i] for i in range(n) for j in range(len(names))])
    min_size = max(2, n // 200)
    penalty = PENALTY_PER_DIM * (len(names) + 1) * math.log(max(n, 2))
    ends = _cp.segment(data, n, len(names), penalty=penalty, min_size=min_size)
    bounds = [0, *ends]
    pieces = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        lo, hi = a * size, min(b * size, n_all)
        means = {k: sum(sig[k][lo:hi]) / (hi - lo) for k in names}
        pieces.append([lo, hi, means])
    # merge neighbours that differ by less than a relevant change in every signal
    merged: list[list[Any]] = []
    for p in pieces:
        if merged and all(abs(p[2][k] - merged[-1][2][k]) < RELEVANT for k in names):
            lo, hi = merged[-1][0], p[1]
            merged[-1] = [lo, hi, {k: sum(sig[k][lo:hi]) / (hi - lo) for k in names}]
        else:
            merged.append(p)
    phases = []
    for i, (lo, hi, means) in enumerate(merged):
        start = secs[lo]
        end = secs[hi - 1] + 1 if i < len(merged) - 1 else last + 1
        phases.append(Phase(i, start, end, means=means))
    return phases


def name_phases(phases: list[Phase], rows: dict[int, dict[str, Any]]) -> None:
    """Label each phase by what dominates it (rows: per phase index, the job's mean cores,
    allowed cores, read and write bytes/s, network bytes/s and GPU busy in it)."""
    peak_io = max((r["read_bps"] + r["write_bps"] for r in rows.values()), default=0.0)
    peak_nw = max((r["nw_bps"] for r in rows.values()), default=0.0)
    for p in phases:
        r = rows.get(p.index)
        if r is None:
            p.label = "no data"
            continue
        cores, allowed = r["cores"], max(r["allowed"], 1.0)
        active = r.get("active_cores") or 0.0
        io = r["read_bps"] + r["write_bps"]
        labels = []
        if r.get("gpu_util") is not None and r["gpu_util"] >= 30:
            labels.append("GPU compute")
        if peak_io > 0 and io >= 0.3 * peak_io and io >= 1e6:
            labels.append("write" if r["write_bps"] >= r["read_bps"] else "read")
        if peak_nw > 0 and r["nw_bps"] >= 0.3 * peak_nw and r["nw_bps"] >= 1e6:
            labels.append("communication")
        serial = allowed >= 2 and 0.8 <= active <= 1.2
        if serial and not labels:
            labels.append("serial compute")
        elif cores >= max(0.1, 0.05 * allowed) and "GPU compute" not in labels:
            labels.append("compute")
        p.label = " + ".join(labels) if labels else "idle"
