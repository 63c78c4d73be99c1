"""The full report of a 128-node, 1-hour, 1 Hz job: `para report cn*.para` as a user runs it.

The job comes from gen_job.py (128 nodes of 64 CPUs and 32 ranks, every table a real node
writes, call stacks and hardware counters; made once and cached in $PARA_BENCH_DIR, default
/tmp/para-bench-job).  Timed, each as a new process (Python start and imports included):

- `para report FILES`       the terminal report: every rule, phases, balance, functions
- `para report FILES --json` (the job, bottlenecks and hotspots; the per-run documents are
  left out past 8 files) and `--json --runs` (once: with the 128 per-run documents)
- `para report FILES --html` (once; job page with heatmaps, no per-run sections)

The terminal report, the JSON and the decode-only anchor are measured interleaved, round by
round (the machine is shared: its load moves between rounds, not within one).  With
`--before DIR` (a checkout of an earlier commit, its kernels built) the same commands run
from DIR too, in the same rounds: before and after side by side.

Anchors measured in the same run:
- decode only: reading the columns the analysis needs from all 128 files with pyarrow, in
  two threads (the floor for any analysis that reads every sample);
- the issue-2 report path (one DuckDB connection per file, report.build): timed on 8 files
  and multiplied by 16.

    .venv/bin/python benchmarks/bench_report.py [--repeat 5] [--nodes 128] [--seconds 3600]
        [--before DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import gen_job  # noqa: E402

# what reduce.py reads of each table for a job of many nodes (the per-core table is read
# only for the report of one node)
NEEDED = {
    "node": ["t", "cpu_user", "cpu_nice", "cpu_system", "cpu_idle", "cpu_iowait", "cpu_irq",
             "cpu_softirq", "cpu_steal", "procs_blocked", "load1"],
    "memory": ["t", "mem_total", "mem_available", "mem_cached", "mem_buffers", "swap_total",
               "swap_free", "pgmajfault", "pswpin", "pswpout"],
    "proc": ["t", "pid", "ppid", "state", "utime", "stime", "rss_bytes", "threads",
             "read_bytes", "write_bytes", "cutime", "cstime", "rank"],
    "disk": ["t", "device", "reads", "writes", "read_bytes", "write_bytes", "read_ms",
             "write_ms", "io_ms"],
    "net": ["t", "iface", "rx_bytes", "tx_bytes", "rx_packets", "tx_packets"],
    "counters": ["t", "event", "value", "running_pct"],
    "stacks": ["t", "pid", "stack", "samples", "source", "state"],  # tid: Python stacks only
}  # fmt: skip
# the columns reduce.py reads dictionary-encoded, as it does (names that repeat)
DICTIONARY = {"stacks": ("stack", "source", "state"), "proc": ("state",)}


def para(*args: str, repo: Path = REPO) -> float:
    env = dict(os.environ, PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t = time.perf_counter()
    # run from `repo`: `python -m` puts the working directory first on the path
    r = subprocess.run(
        [sys.executable, "-m", "para", *args], capture_output=True, env=env, cwd=repo
    )
    took = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"para {' '.join(args[:2])}... failed: {r.stderr.decode()[-500:]}")
    return took


def decode_only(files: list[Path]) -> float:
    from para.analyzer.reduce import Source

    def one(f: Path) -> int:
        s = Source(f)
        n = 0
        for table, cols in NEEDED.items():
            tab = s.read(table, cols, DICTIONARY.get(table, ()))
            n += len(tab) if tab is not None else 0
        s.close()
        return n

    t = time.perf_counter()
    with ThreadPoolExecutor(2) as ex:
        list(ex.map(one, files))
    return time.perf_counter() - t


def issue2_path(files: list[Path]) -> float:
    from para.analyzer.report import build_runs

    t = time.perf_counter()
    build_runs([str(f) for f in files])
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--nodes", type=int, default=128)
    ap.add_argument("--seconds", type=int, default=3600)
    ap.add_argument("--before", metavar="DIR", help="an earlier checkout, run side by side")
    ap.add_argument("--skip-once", action="store_true", help="no --json --runs, --html, issue 2")
    a = ap.parse_args()
    where = Path(os.environ.get("PARA_BENCH_DIR", "/tmp/para-bench-job"))
    files = gen_job.make_job(where / f"{a.nodes}x{a.seconds}", a.nodes, a.seconds)
    size = sum(f.stat().st_size for f in files)
    print(f"job: {len(files)} nodes x {a.seconds} s, {size / 2**20:.0f} MiB of .para files "
          f"in {files[0].parent}")  # fmt: skip
    names = [str(f) for f in files]
    before = Path(a.before).resolve() if a.before else None
    para("report", names[0])  # warm the page cache and the imports once
    kinds = ["terminal", "decode", "json"] + (["terminal_before", "json_before"] if before else [])
    runs: dict[str, list[float]] = {k: [] for k in kinds}
    for i in range(a.repeat):
        for k in kinds[i % len(kinds) :] + kinds[: i % len(kinds)]:  # rotate the order
            if k == "decode":
                runs[k].append(decode_only(files))
                continue
            repo = before if k.endswith("_before") else REPO
            assert repo is not None
            args = ["report", *names] + (["--json"] if k.startswith("json") else [])
            runs[k].append(para(*args, repo=repo))
    med = {k: statistics.median(v) for k, v in runs.items()}
    floor = med["decode"]
    print(f"\n{'':52} {'median s':>9} {'min':>7} {'max':>7} {'x decode':>9}")
    labels = {
        "terminal": "para report FILES (terminal)",
        "json": "para report FILES --json",
        "terminal_before": "  before: para report FILES (terminal)",
        "json_before": "  before: para report FILES --json (all runs)",
        "decode": "anchor: decode the columns read, 2 threads",
    }
    for k in kinds:
        v = runs[k]
        print(f"{labels[k]:52} {med[k]:9.2f} {min(v):7.2f} {max(v):7.2f} "
              f"{med[k] / floor:9.2f}")  # fmt: skip
    if a.skip_once:
        summary(med, floor, before is not None, None)
        return
    js = para("report", *names, "--json", "--runs")
    out = where / "report.html"
    html = para("report", *names, "--html", str(out))
    print(f"{'para report FILES --json --runs (once)':52} {js:9.2f}")
    print(f"{'para report FILES --html (once)':52} {html:9.2f}   "
          f"({out.stat().st_size / 2**20:.1f} MiB page)")  # fmt: skip
    sub = files[:8]
    old = issue2_path(sub) * len(files) / len(sub)
    print(f"{'anchor: issue-2 path, 8 files x ' + str(len(files) // 8):52} {old:9.2f}")
    summary(med, floor, before is not None, old)


def summary(med: dict[str, float], floor: float, before: bool, old: float | None) -> None:
    m = med["terminal"]
    print(f"\nfull report: {m:.2f} s (goal: at most 5 s); {m / floor:.2f}x the decode-only "
          f"floor (goal: at most 2x); --json {med['json']:.2f} s (goal: under 5 s)"
          + (f"; {old / m:.1f}x faster than the issue-2 path would be" if old else ""))  # fmt: skip
    if before:
        print(f"before -> after: terminal {med['terminal_before']:.2f} -> {m:.2f} s "
              f"({med['terminal_before'] / m:.2f}x), --json {med['json_before']:.2f} -> "
              f"{med['json']:.2f} s ({med['json_before'] / med['json']:.1f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
