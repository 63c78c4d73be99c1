"""The /proc parsers: Cython kernel against its pure-Python twin, file by file.

Inputs are this machine's live files and the captured trees in tests/fixtures/procfs, plus
a /proc/stat of a 128-CPU node built by repeating the laptop capture's CPU lines (a big node's
file has the same shape, only longer; the per-IRQ tail of its `intr` line is what the twin
pays most for).  Median of 7 repeats of a timed loop each.

    .venv/bin/python benchmarks/bench_procparse.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from para.cython_ext import load  # noqa: E402
from para.formats.schema import MEMINFO_FIELDS  # noqa: E402

PROCFS = REPO / "tests/fixtures/procfs"


def big_stat(cpus: int = 128) -> bytes:
    lines = (PROCFS / "prometheus-procfs/proc/stat").read_bytes().split(b"\n")
    cpu_lines = [ln for ln in lines if ln.startswith(b"cpu") and not ln.startswith(b"cpu ")]
    out = [lines[0]]
    for i in range(cpus):
        out.append(b"cpu%d" % i + cpu_lines[i % len(cpu_lines)].split(b" ", 1)[1])
    out.append(b"intr 73777505 " + b" ".join(b"%d" % (i % 97) for i in range(4000)))
    out += [ln for ln in lines if ln.startswith((b"ctxt", b"btime", b"processes", b"procs"))]
    return b"\n".join(out) + b"\n"


def timeit(fn, arg, *rest) -> float:  # type: ignore[no-untyped-def]
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn(arg, *rest)
        if time.perf_counter() - t0 > 0.05:
            break
        n *= 2
    runs = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(n):
            fn(arg, *rest)
        runs.append((time.perf_counter() - t0) / n)
    return statistics.median(runs)


def main() -> None:
    cy, py = load("procparse", pure=False), load("procparse", pure=True)
    if cy.__name__.endswith("_py"):
        sys.exit("the Cython kernel is not built: run `make venv`")
    keys = tuple(k.encode() for _, k, _ in MEMINFO_FIELDS)
    cases = [
        ("stat (this VM, 2 CPUs)", "parse_stat", Path("/proc/stat").read_bytes(), ()),
        ("stat (laptop, 8 CPUs)", "parse_stat",
         (PROCFS / "prometheus-procfs/proc/stat").read_bytes(), ()),
        ("stat (128 CPUs, 4000 IRQs)", "parse_stat", big_stat(), ()),
        ("meminfo (this VM)", "parse_keyed", Path("/proc/meminfo").read_bytes(), (keys, True)),
        ("diskstats (52 devices)", "parse_diskstats",
         (PROCFS / "prometheus-procfs/proc/diskstats").read_bytes(), ()),
        ("net/dev (this VM)", "parse_net_dev", Path("/proc/net/dev").read_bytes(), ()),
        ("PID/stat", "parse_pid_stat", Path("/proc/self/stat").read_bytes(), ()),
        ("PID/status", "parse_pid_status_ctxt", Path("/proc/self/status").read_bytes(), ()),
        ("PID/io", "parse_pid_io", Path("/proc/self/io").read_bytes(), ()),
    ]  # fmt: skip
    print(f"{'input':<30}{'cython us':>11}{'python us':>11}{'gain':>8}")
    gains = []
    for name, fn, data, rest in cases:
        assert getattr(cy, fn)(data, *rest) == getattr(py, fn)(data, *rest)
        c = timeit(getattr(cy, fn), data, *rest) * 1e6
        p = timeit(getattr(py, fn), data, *rest) * 1e6
        gains.append(p / c)
        print(f"{name:<30}{c:>11.2f}{p:>11.2f}{p / c:>7.1f}x")
    print(f"\nmedian gain over these inputs: {statistics.median(gains):.1f}x")


if __name__ == "__main__":
    main()
