"""Slowdown of a CPU-bound program under `para profile` (1 s interval) against running alone.

The program (C, compiled here) times its own compute loop, so para's start-up and the
writing of the file after the program ends are not counted as slowdown; they are printed
apart.  Runs alternate (alone, profiled / profiled, alone) to cancel drift on a shared
machine, and the median of the per-pair ratios is the figure.

    .venv/bin/python benchmarks/bench_overhead.py [--pairs 7] [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
                          return t.tv_sec + t.tv_nsec * 1e-9; }
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    volatile double s = 0;
    double t0 = now();
    for (long i = 0; i < n; i++) s += (double)(i % 7) * 0.5 / (double)(i % 13 + 1);
    printf("%.6f %f\n", now() - t0, (double)s);
    return 0;
}
"""


def build(work: Path) -> Path:
    src, exe = work / "spin.c", work / "spin"
    src.write_text(PROGRAM)
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
    return exe


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(program's own compute seconds, whole command's wall seconds)"""
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return float(out.split()[0]), time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=5.0, help="length of one program run")
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        exe = build(work)
        t, _ = run([str(exe), "100000000"], env)
        n = str(int(1e8 * args.seconds / t))
        alone_cmd = [str(exe), n]
        para_cmd = [sys.executable, "-m", "para", "profile", "-q", "-i", "1",
                    "-o", str(work / "o.para"), "--", str(exe), n]  # fmt: skip
        ratios, alone_s, prof_s, extra = [], [], [], []
        for i in range(args.pairs):
            order = [(False, alone_cmd), (True, para_cmd)]
            if i % 2:
                order.reverse()
            got = {}
            for profiled, cmd in order:
                got[profiled] = run(cmd, env)
            alone_s.append(got[False][0])
            prof_s.append(got[True][0])
            ratios.append(got[True][0] / got[False][0])
            extra.append(got[True][1] - got[True][0])
            print(
                f"pair {i + 1}: alone {got[False][0]:.3f} s, under para {got[True][0]:.3f} s "
                f"({100 * (ratios[-1] - 1):+.2f}%)",
                flush=True,
            )
    med = statistics.median(ratios)
    print(f"\nCPU-bound program, {args.pairs} pairs, median of per-pair ratios:")
    print(f"  alone        median {statistics.median(alone_s):.3f} s")
    print(f"  under para   median {statistics.median(prof_s):.3f} s")
    print(
        f"  slowdown     {100 * (med - 1):+.2f}% (goal: at most 1%); "
        f"spread {100 * (min(ratios) - 1):+.2f}% .. {100 * (max(ratios) - 1):+.2f}%"
    )
    print(
        f"  para's own start-up and file writing around the program: median "
        f"{statistics.median(extra):.2f} s (not part of the slowdown)"
    )


if __name__ == "__main__":
    main()
