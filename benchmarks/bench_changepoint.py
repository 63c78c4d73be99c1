"""The `changepoint` kernel (PELT) against its pure-Python twin, on what phases.py gives it:
the job's signals (cores, storage, network) of the benchmark job (gen_job.py, 8 nodes for an
hour: 1,200 steps of 3 s after binning, 11 phases), and a noisier single signal of 3,600
points whose level changes every 90 points.  Medians of 5 repeats (the twin: of 3).

    .venv/bin/python benchmarks/bench_changepoint.py
"""

from __future__ import annotations

import array
import math
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import gen_job  # noqa: E402

from para.analyzer import phases  # noqa: E402
from para.analyzer.job import Job  # noqa: E402
from para.cython_ext import load  # noqa: E402


def timed(fn, repeat: int) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    files = gen_job.make_job(Path("/tmp/para-bench-job") / "8x3600", 8, 3600)
    with Job(files) as job:
        secs, sig = phases.signals(job)
    names = sorted(sig)
    size = math.ceil(len(secs) / phases.MAX_POINTS)
    binned = {k: phases._bin(v, size) for k, v in sig.items()}
    n = len(binned[names[0]])
    scaled = []
    for k in names:
        sd = max(phases._noise(binned[k]), phases.RELEVANT / 2)
        scaled.append([x / sd for x in binned[k]])
    data = array.array("d", [scaled[j][i] for i in range(n) for j in range(len(names))])
    pen = phases.PENALTY_PER_DIM * (len(names) + 1) * math.log(n)
    rnd = random.Random(1)
    noisy = array.array("d", [(i // 90) % 5 + rnd.gauss(0, 1) for i in range(3600)])
    cases = [
        (f"job signals: {n} steps x {len(names)} ({', '.join(names)})", data, n, len(names),
         pen, max(2, n // 200)),
        ("one noisy signal, 3600 points, its level changing every 90", noisy, 3600, 1,
         3 * 2 * math.log(3600), 5),
    ]  # fmt: skip
    cy, py = load("changepoint", pure=False), load("changepoint", pure=True)
    for title, d, rows, dims, penalty, m in cases:
        args = (d, rows, dims)
        kw = {"penalty": penalty, "min_size": m}
        tc, ends_c = timed(lambda a=args, k=kw: cy.segment(*a, **k), 5)
        tp, ends_p = timed(lambda a=args, k=kw: py.segment(*a, **k), 3)
        assert ends_c == ends_p
        print(f"{title}: {len(ends_c)} segments")  # type: ignore[arg-type]
        print(f"  Cython kernel     {1000 * tc:9.2f} ms")
        print(f"  pure-Python twin  {1000 * tp:9.2f} ms   ({tp / tc:.0f}x the kernel)")


if __name__ == "__main__":
    main()
