"""CPU time per sample of para's samplers, Cython kernels against their pure-Python twins,
next to sysstat's sadc collecting every activity (-S XALL) over the same seconds.

Two measures for each implementation, each in a fresh process:
  * back-to-back: 500 samples of every node family plus a job of 8 processes, as fast as
    they go (the cost of one sample, caches warm);
  * at 1 Hz: the sampling thread's CPU over --seconds at one sample a second (caches cold,
    what a node pays), beside `sadc -S XALL 1` running for the same seconds.

    .venv/bin/python benchmarks/bench_sampler.py [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, os, subprocess, sys, tempfile, time
sys.path.insert(0, sys.argv[1])
from para.agent.loop import SamplingLoop
from para.agent.samplers.base import ProcFiles
from para.agent.samplers.fs import FsSampler
from para.agent.samplers.process import ProcessSampler
from para.agent.samplers.system import CpuSampler, DiskSampler, MemorySampler, NetSampler
from para.cython_ext import load
from para.formats import ParaWriter

mode, seconds = sys.argv[2], float(sys.argv[3])
kids = [subprocess.Popen(["sleep", "600"]) for _ in range(8)]
files = ProcFiles()
samplers = [CpuSampler(files), MemorySampler(files), NetSampler(files), DiskSampler(files),
            FsSampler(files), ProcessSampler(files, lambda: {k.pid for k in kids})]
with tempfile.TemporaryDirectory() as d:
    w = ParaWriter(os.path.join(d, "b.para"), {})
    loop = SamplingLoop(samplers, w.append, 1.0)
    loop.open()
    out = {"impl": load("procparse").__name__}
    if mode == "burst":
        for _ in range(20):
            loop.sample_once()
        n, per = 500, []
        for rep in range(5):
            c0 = time.process_time()
            for _ in range(n // 5):
                loop.sample_once()
            per.append((time.process_time() - c0) / (n // 5))
        out["ms_per_sample"] = sorted(per)[2] * 1000
        out["runs_ms"] = [p * 1000 for p in per]
    else:
        loop.start()
        time.sleep(seconds)
        loop.stop(final_sample=False)
        out["ms_per_sample"] = 1000 * loop.cpu_seconds / max(1, loop.samples)
        out["samples"] = loop.samples
    loop.close()
    w.abandon()
for k in kids:
    k.kill(); k.wait()
print(json.dumps(out))
"""


def measure(mode: str, pure: bool, seconds: float) -> dict:
    env = dict(os.environ, PARA_PURE_PYTHON="1" if pure else "0")
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(REPO), mode, str(seconds)],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def sadc_cpu(seconds: int) -> tuple[float, int]:
    sadc = next(
        (p for p in ("/usr/lib/sysstat/sadc", "/usr/lib64/sa/sadc") if os.access(p, os.X_OK)),
        None,
    )
    if sadc is None:
        sys.exit("sadc not found: install sysstat")
    with tempfile.TemporaryDirectory() as d:
        p = subprocess.Popen([sadc, "-S", "XALL", "1", str(seconds + 1), f"{d}/sa"])
        _, _, ru = os.wait4(p.pid, 0)
    return 1000 * (ru.ru_utime + ru.ru_stime) / (seconds + 1), seconds + 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=int, default=30)
    args = ap.parse_args()
    print("back-to-back (500 samples, median of 5 runs of 100):", flush=True)
    burst = {pure: measure("burst", pure, 0) for pure in (False, True)}
    for pure, r in burst.items():
        name = "python twins" if pure else "cython kernels"
        print(
            f"  {name:<16} {r['ms_per_sample']:.3f} ms CPU per sample "
            f"(runs: {', '.join(f'{x:.3f}' for x in r['runs_ms'])})"
        )
    print(f"  kernel gain: {burst[True]['ms_per_sample'] / burst[False]['ms_per_sample']:.2f}x")
    print(f"\nat 1 Hz for {args.seconds} s, beside sadc -S XALL 1 (same seconds):", flush=True)
    t0 = time.monotonic()
    anchor: list[tuple[float, int]] = []
    sadc = threading.Thread(target=lambda: anchor.append(sadc_cpu(args.seconds)))
    sadc.start()
    slow = {False: measure("hz", False, args.seconds)}
    sadc.join()
    slow[True] = measure("hz", True, args.seconds)
    sadc_ms, sadc_n = anchor[0]
    for pure, r in slow.items():
        name = "python twins" if pure else "cython kernels"
        print(
            f"  para {name:<16} {r['ms_per_sample']:.3f} ms CPU per sample ({r['samples']} samples)"
        )
    print(f"  sadc -S XALL        {sadc_ms:.3f} ms CPU per sample ({sadc_n} samples)")
    print(f"  para (cython) / sadc: {slow[False]['ms_per_sample'] / sadc_ms:.2f}")
    print(
        f"  (elapsed {time.monotonic() - t0:.0f} s; sadc ran beside the Cython run; one run "
        "each at 1 Hz, so read these as indications, the back-to-back medians as the figure)"
    )


if __name__ == "__main__":
    main()
