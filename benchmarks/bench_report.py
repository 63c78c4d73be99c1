"""The full report of a 128-node, 1-hour, 1 Hz job: `para report cn*.para` as a user runs it.

The job comes from gen_job.py (128 nodes of 64 CPUs and 32 ranks, every table a real node
writes, call stacks and hardware counters; made once and cached in $PARA_BENCH_DIR, default
/tmp/para-bench-job).  Timed, each as a new process (Python start and imports included):

- `para report FILES`       the terminal report: every rule, phases, balance, functions
- `para report FILES --json` (once; with the 128 per-run documents)
- `para report FILES --html` (once; job page with heatmaps, no per-run sections)

Anchors measured in the same run:
- decode only: reading the columns the analysis needs from all 128 files with pyarrow, in
  two threads (the floor for any analysis that reads every sample);
- the issue-2 report path (one DuckDB connection per file, report.build): timed on 8 files
  and multiplied by 16.

    .venv/bin/python benchmarks/bench_report.py [--repeat 5] [--nodes 128] [--seconds 3600]
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

NEEDED = {  # what reduce.py reads of each table
    "node": ["t", "cpu_user", "cpu_nice", "cpu_system", "cpu_idle", "cpu_iowait", "cpu_irq",
             "cpu_softirq", "cpu_steal", "procs_blocked", "load1"],
    "cpu": ["t", "cpu", "idle", "iowait"],
    "memory": ["t", "mem_total", "mem_available", "mem_cached", "mem_buffers", "swap_total",
               "swap_free", "pgmajfault", "pswpin", "pswpout"],
    "proc": ["t", "pid", "ppid", "state", "utime", "stime", "rss_bytes", "threads",
             "read_bytes", "write_bytes"],
    "disk": ["t", "device", "reads", "writes", "read_bytes", "write_bytes", "read_ms",
             "write_ms", "io_ms"],
    "net": ["t", "iface", "rx_bytes", "tx_bytes", "rx_packets", "tx_packets"],
    "counters": ["t", "event", "value", "running_pct"],
    "stacks": ["t", "stack", "samples"],
}  # fmt: skip


def para(*args: str) -> float:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "para", *args], capture_output=True, env=env)
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
            tab = s.read(table, cols, ("stack",) if table == "stacks" else ())
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
    a = ap.parse_args()
    where = Path(os.environ.get("PARA_BENCH_DIR", "/tmp/para-bench-job"))
    files = gen_job.make_job(where / f"{a.nodes}x{a.seconds}", a.nodes, a.seconds)
    size = sum(f.stat().st_size for f in files)
    print(f"job: {len(files)} nodes x {a.seconds} s, {size / 2**20:.0f} MiB of .para files "
          f"in {files[0].parent}")  # fmt: skip
    names = [str(f) for f in files]
    para("report", names[0])  # warm the page cache and the imports once
    terminal = [para("report", *names) for _ in range(a.repeat)]
    decode = [decode_only(files) for _ in range(a.repeat)]
    print(f"\n{'':44} {'median s':>9} {'min':>7} {'max':>7}")
    print(f"{'para report FILES (terminal)':44} {statistics.median(terminal):9.2f} "
          f"{min(terminal):7.2f} {max(terminal):7.2f}")  # fmt: skip
    print(f"{'anchor: decode the needed columns only':44} {statistics.median(decode):9.2f} "
          f"{min(decode):7.2f} {max(decode):7.2f}")  # fmt: skip
    js = para("report", *names, "--json")
    out = where / "report.html"
    html = para("report", *names, "--html", str(out))
    print(f"{'para report FILES --json (once)':44} {js:9.2f}")
    print(f"{'para report FILES --html (once)':44} {html:9.2f}   "
          f"({out.stat().st_size / 2**20:.1f} MiB page)")  # fmt: skip
    sub = files[:8]
    old = issue2_path(sub) * len(files) / len(sub)
    print(f"{'anchor: issue-2 path, 8 files x ' + str(len(files) // 8):44} {old:9.2f}")
    med = statistics.median(terminal)
    print(f"\nfull report: {med:.2f} s (goal: at most 5 s); "
          f"{med / statistics.median(decode):.1f}x the decode-only floor; "
          f"{old / med:.1f}x faster than the issue-2 path would be")  # fmt: skip


if __name__ == "__main__":
    main()
