"""Issue 13: what the agent's copy of /proc/kallsyms saves each stacks window's `perf script`.

Records --windows windows of --seconds each, as the agent does (`perf record -a -g` at 19 Hz,
no build-id cache), while a C-like busy loop (dd) and a busy Python program run, then decodes
each window with the agent's `perf script` options, reading the kernel's /proc/kallsyms (the
anchor: what every window did before) and the agent's copy (para.agent.kallsyms), in turns,
--repeat times each.  CPU is perf script's own (user + system, from wait4), medians.

    .venv/bin/python benchmarks/bench_kallsyms.py [--windows 3] [--seconds 10] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from para.agent.kallsyms import KallsymsCopy  # noqa: E402

FIELDS = ["-F", "comm,pid,tid,time,event,ip,sym,symoff,dso", "--no-demangle", "--no-inline"]
BUSY_PY = (
    "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end: sum(range(999))\n"
)


def cpu_of(argv: list[str]) -> float:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:3]} failed ({proc.returncode})")
    return ru.ru_utime + ru.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        t = KallsymsCopy(d)
        copy = t.path()
        if copy is None:
            raise SystemExit("kernel addresses are hidden here: run as root")
        n = Path(copy).read_bytes().count(b"\n")
        print(f"{n:,} kernel symbols, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
        own, cached = [], []
        for w in range(args.windows):
            data = d / f"w{w}.data"
            busy = [
                subprocess.Popen(["dd", "if=/dev/zero", "of=/dev/null", "bs=4k"],
                                 stderr=subprocess.DEVNULL),
                subprocess.Popen([sys.executable, "-c", BUSY_PY.format(s=args.seconds + 1)]),
            ]  # fmt: skip
            subprocess.run(["perf", "record", "-q", "-a", "-g", "-F", "19", "-o", str(data),
                            "--no-buildid-cache", "--no-buildid", "--", "sleep",
                            str(args.seconds)], check=True)  # fmt: skip
            for p in busy:
                p.kill()
                p.wait()
            base = ["perf", "script", "-i", str(data), *FIELDS]
            a, b = [], []
            for r in range(args.repeat):
                pair = [(a, base), (b, [*base, "--kallsyms", copy])]
                for out, argv in pair if r % 2 == 0 else reversed(pair):
                    out.append(cpu_of(argv))
            ma, mb = statistics.median(a), statistics.median(b)
            own.append(ma)
            cached.append(mb)
            print(f"  window {w + 1} ({data.stat().st_size / 2**20:.2f} MiB): perf script "
                  f"{ma:.3f} s CPU reading /proc/kallsyms, {mb:.3f} s with the copy "
                  f"({100 * (1 - mb / ma):.0f} % less)", flush=True)  # fmt: skip
        ma, mb = statistics.median(own), statistics.median(cached)
        print(f"perf script per window: {ma:.3f} s CPU with /proc/kallsyms (anchor), {mb:.3f} s "
              f"with the copy: {ma / mb:.2f}x less; the copy itself is taken once (and again "
              f"when modules change, or after 10 min); load {os.getloadavg()[0]:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
