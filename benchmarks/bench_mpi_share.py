"""The MPI time of each rank as para measures it (share of the rank's call-stack samples in
communication libraries) against the program's own accounting (MPI_Wtime around each MPI
call), on real Open MPI jobs: 2 ranks, each bound to a core, rank 0 doing 1x, 2x, 4x and 8x
the work of rank 1 between barriers, and an allreduce-heavy loop.

    .venv/bin/python benchmarks/bench_mpi_share.py [--steps 25] [--unit 10000000] [--rounds 5]

Each case runs --rounds times (cases interleaved); the table shows, per rank, the median of
the program's share, of para's and of their difference, and the largest difference seen.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from para.analyzer.analysis import analyse  # noqa: E402
from para.analyzer.job import Job  # noqa: E402

PROGRAM = REPO / "tests" / "fixtures" / "mpi" / "ranks.c"


def run(tmp: Path, exe: Path, args: list[str]) -> tuple[dict[int, float], dict[int, float]]:
    for p in tmp.glob("*.para"):
        p.unlink()
    e = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
             PYTHONPATH=str(REPO))  # fmt: skip
    r = subprocess.run(
        ["mpirun", "--bind-to", "core", "-np", "2", sys.executable, "-m", "para", "profile",
         "-q", "--no-counters", "--functions", "-o", "run.para", "--", str(exe), *args],
        cwd=tmp, env=e, capture_output=True, text=True, check=True,
    )  # fmt: skip
    own = {}
    for line in r.stdout.splitlines():
        w = line.split()
        if w and w[0] == "rank":
            own[int(w[1])] = 100 * float(w[5]) / float(w[3])
    (path,) = tmp.glob("*.para")
    with Job([path]) as job:
        doc = analyse(job).doc
    para = {r["rank"]: r["mpi_pct"] for r in doc["ranks"]}
    return own, para


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--unit", type=int, default=10_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    for tool in ("mpirun", "mpicc", "perf"):
        if not shutil.which(tool):
            sys.exit(f"needs {tool} (apt install openmpi-bin libopenmpi-dev linux-perf)")
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(f"{'case':<16}{'rank':>5}{'MPI_Wtime':>11}{'para':>8}{'diff':>8}{'worst':>8}  (medians)")
    seen: dict[tuple[str, int], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-mpi-") as d:
        tmp = Path(d)
        exe = tmp / "ranks"
        subprocess.run(["mpicc", "-O2", "-g", "-o", str(exe), str(PROGRAM)], check=True)
        cases = [(f"barrier {h}x", ["barrier", str(args.unit), str(args.steps), str(h)])
                 for h in (1, 2, 4, 8)]  # fmt: skip
        cases.append(("allreduce", ["allreduce", str(args.unit // 5), str(args.steps)]))
        for _ in range(args.rounds):
            for name, cargs in cases:
                own, para = run(tmp, exe, cargs)
                for rank in sorted(own):
                    seen.setdefault((name, rank), []).append((own[rank], para.get(rank) or 0.0))
    worst = 0.0
    for (name, rank), pairs in seen.items():
        diffs = [p - o for o, p in pairs]
        far = max(diffs, key=abs)
        worst = max(worst, abs(far))
        own_m = statistics.median(o for o, _ in pairs)
        para_m = statistics.median(p for _, p in pairs)
        print(f"{name:<16}{rank:>5}{own_m:>10.1f}%{para_m:>7.1f}%"
              f"{statistics.median(diffs):>+8.1f}{far:>+8.1f}")  # fmt: skip
    print(f"load at the end {os.getloadavg()[0]:.1f}; largest difference: {worst:.1f} points")


if __name__ == "__main__":
    main()
