"""The cost of each way `perf record` unwinds call stacks (para profile --call-graph), on
CPU-bound programs built the way distributions build them (no frame pointers): a C program
(three levels of calls) and a pure-Python loop.

Each program times its own compute (so perf's start-up and its writing of perf.data are not
counted as slowdown); runs of the modes alternate, round after round, against the program
alone in the same round (the anchor), and the figures are medians over the rounds:
- slowdown: the program's time under perf over its time alone;
- data: perf.data bytes per sample, and per second of one busy CPU at 499 Hz (what a long
  run costs on disk; per sample, it does not depend on how much CPU a loaded machine gave);
- script: seconds of `perf script` per second of run (para folds the stacks when the run
  ends: dwarf unwinds there);
- callers: share of the samples whose stack reaches the program's entry (libc's call of
  main): every caller is known.

    .venv/bin/python benchmarks/bench_unwind.py [--rounds 5] [--seconds 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from para.agent.unwind import cpu_has_lbr  # noqa: E402
from para.cython_ext import load  # noqa: E402

fold = load("fold")

C_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
                          return t.tv_sec + t.tv_nsec * 1e-9; }
static double __attribute__((noipa)) leaf(long n, long k) { double s = 0;
    for (long i = 0; i < n; i++) s += (double)(i + k) * 0.5 / (double)(i + k + 1); return s; }
static double __attribute__((noipa)) mid(long n, long k) { return leaf(n, k) + leaf(n / 2, k); }
int main(int argc, char **argv) {
    long n = atol(argv[1]); double t0 = now(), s = 0;
    for (long k = 0; k < n; k++) s += mid(2000000, k);
    printf("%.6f %g\n", now() - t0, s); return 0; }
"""
PY_PROGRAM = """
import sys, time
def leaf(n, k):
    s = 0.0
    for i in range(n):
        s += (i + k) * 0.5 / (i + k + 1)
    return s
def mid(n, k):
    return leaf(n, k) + leaf(n // 2, k)
t0 = time.monotonic()
for k in range(int(sys.argv[1])):
    mid(20000, k)
print(f"{time.monotonic() - t0:.6f}")
"""
MODES = {
    "fp": ["--call-graph", "fp"],
    "dwarf 2 KiB": ["--call-graph", "dwarf,2048"],
    "dwarf 4 KiB": ["--call-graph", "dwarf,4096"],
    "dwarf 8 KiB": ["--call-graph", "dwarf,8192"],
    "dwarf 16 KiB": ["--call-graph", "dwarf,16384"],
}


def own_time(cmd: list[str], n: int) -> float:
    """The program's own time for n rounds of its work, alone."""
    out = subprocess.run(cmd + [str(n)], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[0])


def calibrate(cmd: list[str], seconds: float) -> int:
    n = 1
    while True:
        t = own_time(cmd, n)
        if t >= 0.2:
            return max(1, round(n * seconds / t))
        n *= 4


def run_once(cmd: list[str], n: int, mode: list[str] | None, tmp: Path) -> dict[str, float]:
    if mode is None:
        return {"t": own_time(cmd, n)}
    data = tmp / "perf.data"
    argv = ["perf", "record", "-q", "-F", "499", "-e", "cpu-clock", *mode, "-o", str(data),
            "--", *cmd, str(n)]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    t = float(out.stdout.split()[0])
    size = data.stat().st_size
    text = tmp / "perf.script"
    t0 = time.perf_counter()
    with open(text, "wb") as f:
        subprocess.run(["perf", "script", "-i", str(data),
                        "-F", "comm,pid,tid,time,event,ip,sym,symoff,dso"],
                       stdout=f, stderr=subprocess.DEVNULL, check=True)  # fmt: skip
    script_s = time.perf_counter() - t0
    rows = fold.fold_timed(text.read_bytes())
    total = sum(r[5] for r in rows) or 1
    known = sum(r[5] for r in rows if "__libc_start_call_main;" in r[4])
    return {"t": t, "bytes": size, "script": script_s, "callers": known / total,
            "samples": total}  # fmt: skip


def bench(name: str, cmd: list[str], rounds: int, seconds: float, tmp: Path,
          modes: dict[str, list[str]]) -> None:  # fmt: skip
    results: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    ratios: dict[str, list[float]] = {m: [] for m in modes}
    alone: list[float] = []
    n = calibrate(cmd, seconds)
    for r in range(rounds):
        order = list(modes) if r % 2 == 0 else list(reversed(modes))
        base = run_once(cmd, n, None, tmp)["t"]
        alone.append(base)
        for m in order:
            res = run_once(cmd, n, modes[m], tmp)
            results[m].append(res)
            ratios[m].append(res["t"] / base)
    print(f"\n{name} ({rounds} rounds, {seconds:g} s each; alone: median "
          f"{statistics.median(alone):.2f} s)")  # fmt: skip
    print(f"{'mode':<14}{'slowdown':>10}{'B/sample':>10}{'MB/CPU-s':>10}{'script s/s':>12}"
          f"{'callers':>10}{'samples':>9}")  # fmt: skip
    for m in modes:
        rs = results[m]
        t = statistics.median(x["t"] for x in rs)
        per_sample = statistics.median(x["bytes"] / x["samples"] for x in rs)
        print(f"{m:<14}{statistics.median(ratios[m]):>9.3f}x{per_sample:>10.0f}"
              f"{per_sample * 499 / 1e6:>10.2f}"
              f"{statistics.median(x['script'] / x['t'] for x in rs):>12.3f}"
              f"{100 * statistics.median(x['callers'] for x in rs):>9.0f}%"
              f"{statistics.median(x['samples'] for x in rs) / t:>7.0f}/s")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    if not shutil.which("perf") or not shutil.which("gcc"):
        sys.exit("needs perf and gcc (apt install linux-perf gcc)")
    modes = dict(MODES)
    if cpu_has_lbr():
        modes["lbr"] = ["--call-graph", "lbr"]
    else:
        print("lbr: not measured (this CPU reports no LBR: /sys/bus/event_source/devices/cpu/"
              "caps/branches)")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-unwind-") as d:
        tmp = Path(d)
        (tmp / "cpu.c").write_text(C_PROGRAM)
        exe = tmp / "cpu"
        subprocess.run(["gcc", "-O2", "-g", "-o", str(exe), str(tmp / "cpu.c")], check=True)
        (tmp / "loop.py").write_text(PY_PROGRAM)
        print(f"perf record -F 499 -e cpu-clock; machine: {os.cpu_count()} CPUs, load "
              f"{os.getloadavg()[0]:.1f}")  # fmt: skip
        bench("C, -O2 without frame pointers", [str(exe)], args.rounds, args.seconds, tmp,
              modes)  # fmt: skip
        bench(f"Python {sys.version.split()[0]} loop", [sys.executable, str(tmp / "loop.py")],
              args.rounds, args.seconds, tmp, modes)  # fmt: skip


if __name__ == "__main__":
    main()
