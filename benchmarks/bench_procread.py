"""The per-process reader of the agent: Cython kernel (_procread) against its Python twin.

Each sample the agent reads /proc/PID/stat, status and io of every process it follows, from
descriptors it keeps open.  Measured on live processes (children of this benchmark, `sleep`),
for 8, 64 and 256 of them: microseconds per process, median of 7 repeats, both back to back
(caches warm) and once a tenth of a second (closer to a sample a second).  With and without
status: the agent reads it every jobs.ctxt_every samples only.

    .venv/bin/python benchmarks/bench_procread.py
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from para.cython_ext import load  # noqa: E402


def fds_of(pids: list[int], status: bool) -> list[tuple[int, int, int]]:
    out = []
    for p in pids:
        st = os.open(f"/proc/{p}/stat", os.O_RDONLY)
        su = os.open(f"/proc/{p}/status", os.O_RDONLY) if status else -1
        io = os.open(f"/proc/{p}/io", os.O_RDONLY)
        out.append((st, su, io))
    return out


def per_process_us(mod, fds: list[tuple[int, int, int]], gap: float) -> float:  # type: ignore[no-untyped-def]
    page = os.sysconf("SC_PAGE_SIZE")
    reps = 20 if gap else 200
    runs = []
    for _ in range(7):
        total = 0
        for _ in range(reps):
            if gap:
                time.sleep(gap)
            t0 = time.thread_time_ns()
            mod.read_pids(fds, page)
            total += time.thread_time_ns() - t0
        runs.append(total / reps / len(fds) / 1000)
    return statistics.median(runs)


def main() -> None:
    cy, py = load("procread", pure=False), load("procread", pure=True)
    if cy.__name__.endswith("_py"):
        sys.exit("the Cython kernel is not built: .venv/bin/python setup.py build_ext --inplace")
    kids = [subprocess.Popen(["sleep", "600"]) for _ in range(256)]
    try:
        print(f"{'processes':>9} {'status':>7} {'timing':>13} {'Cython us':>10} {'Python us':>10} "
              f"{'gain':>6}")  # fmt: skip
        for n in (8, 64, 256):
            for status in (True, False):
                fds = fds_of([k.pid for k in kids[:n]], status)
                assert cy.read_pids(fds, 4096) == py.read_pids(fds, 4096)
                for gap, label in ((0.0, "back-to-back"), (0.1, "every 0.1 s")):
                    c = per_process_us(cy, fds, gap)
                    p = per_process_us(py, fds, gap)
                    print(f"{n:>9} {'yes' if status else 'no':>7} {label:>13} {c:>10.2f} "
                          f"{p:>10.2f} {p / c:>5.2f}x")  # fmt: skip
                for t in fds:
                    for fd in t:
                        if fd >= 0:
                            os.close(fd)
    finally:
        for k in kids:
            k.kill()
            k.wait()


if __name__ == "__main__":
    main()
