"""Seconds of samples lost when the recorder is killed with SIGKILL: para against sadc.

Each trial starts `para profile -i 1 -- sleep 60` (and, as the anchor, `sadc 1` writing its
binary file), kills it with SIGKILL at a random moment 3-8 s in, then reads what survived:
para through its own reader (which recovers the journal), sadc's file through sadf.  The loss
is the time from the last sample that survived to the kill.

    .venv/bin/python benchmarks/bench_crash.py [--trials 10]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from para.formats import ParaFile  # noqa: E402


def para_trial(work: Path, delay: float) -> float:
    out = work / f"k{time.monotonic_ns()}.para"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.Popen(
        [sys.executable, "-m", "para", "profile", "-q", "-i", "1", "--no-counters", "-o",
         str(out), "--", "sleep", "60"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    time.sleep(delay)
    killed = time.time()
    os.killpg(p.pid, signal.SIGKILL)  # para and its sleep
    p.wait()
    with ParaFile(out) as pf:
        end = pf.stats()["end"]
    return killed - end


def sadc_trial(work: Path, delay: float) -> float | None:
    sadc = next(
        (p for p in ("/usr/lib/sysstat/sadc", "/usr/lib64/sa/sadc") if os.access(p, 1)), None
    )
    if sadc is None:
        return None
    f = work / f"s{time.monotonic_ns()}.sa"
    p = subprocess.Popen([sadc, "1", str(f)])
    time.sleep(delay)
    killed = time.time()
    p.send_signal(signal.SIGKILL)
    p.wait()
    out = subprocess.run(
        ["sadf", "-U", "--", "-u", str(f)], capture_output=True, text=True, check=False
    ).stdout
    stamps = [
        int(line.split()[2]) for line in out.splitlines() if line and not line.startswith("#")
    ]
    return killed - max(stamps) if stamps else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trials", type=int, default=10)
    args = ap.parse_args()
    rng = random.Random(7)
    para_loss, sadc_loss = [], []
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        for i in range(args.trials):
            delay = rng.uniform(3, 8)
            para_loss.append(para_trial(work, delay))
            s = sadc_trial(work, delay)
            if s is not None:
                sadc_loss.append(s)
            print(
                f"trial {i + 1}: killed {delay:.2f} s in: para lost {para_loss[-1]:.2f} s"
                + (f", sadc lost {s:.2f} s" if s is not None else ""),
                flush=True,
            )
    print(f"\nseconds of samples lost at SIGKILL, {args.trials} trials at 1 s interval:")
    print(
        f"  para   median {statistics.median(para_loss):.2f} s, max {max(para_loss):.2f} s "
        "(goal: at most 2 s)"
    )
    if sadc_loss:
        print(f"  sadc   median {statistics.median(sadc_loss):.2f} s, max {max(sadc_loss):.2f} s")


if __name__ == "__main__":
    main()
