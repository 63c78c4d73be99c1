"""Folding perf script text: FlameGraph's stackcollapse-perf.pl vs para's Cython kernel vs its
pure-Python twin, on the same large input, with the outputs checked identical.

The input is real: the 13 `perf script` outputs of FlameGraph's own suite (Java, node,
Rust, iperf, dd, NUMA, MirageOS...) from tests/fixtures/flamegraph, each with its event
renamed to cpu-clock (the reference keeps only the first event type it sees, and we want
every sample counted), concatenated and repeated to --size-mb. A long capture repeats its
stack lines much like this; the one-copy ("distinct lines") figure shows the kernel when
nothing repeats.

    .venv/bin/python benchmarks/bench_fold.py --reference /tmp/FlameGraph/stackcollapse-perf.pl

The reference is found with --reference or $PARA_STACKCOLLAPSE; without it, only Cython vs
Python run, and how to get it is printed.

Repeated copies are what a line cache likes best.  The headline is the distinct input: a real
system-wide capture (`--input FILE`, a `perf script` output), or one recorded here first with
`--record SECONDS` (`perf record -a -g -F 999` while a C compiler, checksums over /usr and a
Python json/sqlite/zlib loop run, then `perf script`).  Then the commands themselves run as a
user runs them, `para fold FILE > out` (on every CPU), `para fold --jobs 1 FILE > out` and
`perl stackcollapse-perf.pl FILE > out`, in alternating rounds on the same warm file
(medians; start-up, reading and printing included), and the kernel alone in process:

    .venv/bin/python benchmarks/bench_fold.py --record 90 \
        --reference /tmp/FlameGraph/stackcollapse-perf.pl
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from para.analyzer.fold import opened_input, render  # noqa: E402
from para.cython_ext import load  # noqa: E402

SUITE = REPO / "tests" / "fixtures" / "flamegraph"
HOW_TO_GET_REFERENCE = """\
No reference given: comparing Cython with pure Python only. To include perl:
    git clone https://github.com/brendangregg/FlameGraph /tmp/FlameGraph
    .venv/bin/python benchmarks/bench_fold.py --reference /tmp/FlameGraph/stackcollapse-perf.pl
(or set PARA_STACKCOLLAPSE). Keep the clone out of this repository."""
# A sample header's last token is its event ("cycles:", "cpu-clock:"); stack lines end in ")".
EVENT = re.compile(rb"(?m)^([^#\s][^\n]*\s)\S+:([ \t]*)$")
OPTIONS = ("pid", "tid", "kernel", "jit", "all", "addrs")


def one_copy() -> bytes:
    parts = []
    for path in sorted(SUITE.glob("*.txt")):
        text = EVENT.sub(rb"\1cpu-clock:\2", path.read_bytes())
        parts.append(text if text.endswith(b"\n\n") else text.rstrip(b"\n") + b"\n\n")
    return b"".join(parts)


def median_time(run: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


WORKLOAD_PY = """
import json, random, re, sqlite3, sys, time, zlib
end = time.time() + float(sys.argv[1])
d = [{"k": random.random(), "s": str(random.random()) * 5} for _ in range(20000)]
db = sqlite3.connect(":memory:")
db.execute("create table t(a, b)")
while time.time() < end:
    s = json.dumps(d); json.loads(s); sorted(d, key=lambda x: x["k"])
    re.findall(r"[0-9]+[.][0-9]+", s[:200000])
    db.executemany("insert into t values(?, ?)", [(random.random(), "x") for _ in range(5000)])
    db.execute("select avg(a) from t group by substr(b, 1, 3)").fetchall()
    zlib.compress(s.encode()[:500000], 6)
"""


def record_system(seconds: float, tmp: Path) -> Path:
    """A system-wide perf script of `seconds` under varied work (see the module's doc)."""
    import sysconfig

    inc = sysconfig.get_paths()["include"]
    src = REPO / "para" / "cython_ext" / "_fold.c"
    loops = [
        f"while :; do cc -O2 -c {src} -I{inc} -o {tmp}/x.o 2>/dev/null || gcc --version; done",
        "while :; do find /usr/lib /usr/share -type f -size -200k 2>/dev/null | head -5000 "
        "| xargs sha1sum >/dev/null 2>&1; done",
    ]
    procs = [subprocess.Popen(["bash", "-c", c], start_new_session=True) for c in loops]
    procs.append(subprocess.Popen([sys.executable, "-c", WORKLOAD_PY, str(seconds + 2)]))
    data = tmp / "perf.data"
    try:
        time.sleep(1)
        subprocess.run(["perf", "record", "-a", "-g", "-F", "999", "-o", str(data), "--",
                        "sleep", str(seconds)], check=True, capture_output=True)  # fmt: skip
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, 15) if p.args[0] == "bash" else p.terminate()
            except ProcessLookupError:
                pass
            p.wait()
    out = tmp / "system.perf"
    with open(out, "wb") as f:
        subprocess.run(["perf", "script", "-i", str(data)], stdout=f, stderr=subprocess.DEVNULL,
                       check=True)  # fmt: skip
    return out


def distinct(path: Path, reference: str | None, rounds: int) -> int:
    """The commands on one real input, in alternating rounds; medians and the ratio."""
    para = [str(REPO / ".venv" / "bin" / "para")]
    if not Path(para[0]).exists():
        para = [sys.executable, "-m", "para.cli"]
    raw = path.read_bytes()
    lines = [ln.strip() for ln in raw.split(b"\n") if ln[:1] in (b"\t", b" ")]
    samples = raw.count(b"\n\n")
    cy = load("fold", pure=False)
    folded = cy.fold(raw)
    print(f"input: {path} ({len(raw) / 1e6:.1f} MB): {samples:,} samples, {len(folded):,} "
          f"distinct stacks, {len(lines):,} stack lines of which {len(set(lines)):,} "
          "distinct")  # fmt: skip
    del lines
    cmds = {
        "para fold FILE": [*para, "fold", str(path)],
        "para fold --jobs 1 FILE": [*para, "fold", "--jobs", "1", str(path)],
    }
    if reference:
        cmds["perl stackcollapse-perf.pl FILE"] = ["perl", reference, str(path)]
    times: dict[str, list[float]] = {k: [] for k in cmds}
    cpus: dict[str, list[float]] = {k: [] for k in cmds}  # user + system, children included
    outs: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="bench-fold-") as tmp:
        for _ in range(rounds):
            for name, argv in cmds.items():
                out = Path(tmp) / "out"
                with open(out, "wb") as f:
                    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                    t0 = time.perf_counter()
                    subprocess.run(argv, stdout=f, check=True)
                    times[name].append(time.perf_counter() - t0)
                    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                    cpus[name].append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
                outs[name] = out.read_bytes()
    t_kernel, _ = median_time(lambda: cy.fold(raw), rounds)
    t_timed, _ = median_time(lambda: cy.fold_timed(raw), rounds)
    mb = len(raw) / 1e6
    print(f"on {len(os.sched_getaffinity(0))} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"\n{'':36s} {'median s':>9s} {'MB/s':>8s} {'CPU s':>7s} {'runs':>5s}")
    for name, ts in times.items():
        t = statistics.median(ts)
        c = statistics.median(cpus[name])
        print(f"{name:36s} {t:9.3f} {mb / t:8.1f} {c:7.3f} {len(ts):5d}")
    print(f"{'  kernel alone, fold (in process)':36s} {t_kernel:9.3f} {mb / t_kernel:8.1f}")
    print(f"{'  kernel alone, fold_timed':36s} {t_timed:9.3f} {mb / t_timed:8.1f}")
    same = len(set(outs.values())) == 1
    if reference:
        t_para = statistics.median(times["para fold FILE"])
        t_one = statistics.median(times["para fold --jobs 1 FILE"])
        t_perl = statistics.median(times["perl stackcollapse-perf.pl FILE"])
        print(f"\nperl / para fold: {t_perl / t_para:.1f}x (--jobs 1: {t_perl / t_one:.1f}x, "
              f"kernel alone: {t_perl / t_kernel:.1f}x)")  # fmt: skip
    print(f"outputs identical ({', '.join(outs)}): {'yes' if same else 'NO'}")
    return 0 if same else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--reference",
        default=os.environ.get("PARA_STACKCOLLAPSE"),
        help="path of stackcollapse-perf.pl (default: $PARA_STACKCOLLAPSE)",
    )
    ap.add_argument("--size-mb", type=float, default=500.0, help="input size (default 500)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each fast one (median)")
    ap.add_argument("--perl-repeats", type=int, default=3, help="runs of the reference (median)")
    ap.add_argument(
        "--option",
        action="append",
        choices=OPTIONS,
        default=[],
        help="a fold option, for all three (repeatable)",
    )
    ap.add_argument("--skip-python", action="store_true", help="leave the pure-Python twin out")
    ap.add_argument("--input", help="a real perf script output: the distinct-input benchmark")
    ap.add_argument("--record", type=float, metavar="SECONDS",
                    help="record a system-wide perf script first, then --input it")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=7, help="alternating rounds (distinct input)")
    args = ap.parse_args()
    if args.record or args.input:
        if args.reference and not (Path(args.reference).is_file() and shutil.which("perl")):
            print(f"reference {args.reference} not found (or no perl)")
            return 2
        if not args.reference:
            print(HOW_TO_GET_REFERENCE)
        if args.input:
            return distinct(Path(args.input), args.reference, args.rounds)
        with tempfile.TemporaryDirectory(prefix="bench-fold-rec-") as tmp:
            path = record_system(args.record, Path(tmp))
            return distinct(path, args.reference, args.rounds)

    cy, py = load("fold", pure=False), load("fold", pure=True)
    if cy is py or cy.__name__.endswith("_py"):
        print("the Cython kernel is not built: run `make venv` (setup.py build_ext --inplace)")
        return 2
    kw = {o: True for o in args.option if o != "all"}
    if "all" in args.option:
        kw.update(kernel=True, jit=True)
    flags = [f"--{o}" for o in args.option]
    reference = args.reference
    if reference and not (Path(reference).is_file() and shutil.which("perl")):
        print(f"reference {reference} not found (or no perl)")
        return 2
    if not reference:
        print(HOW_TO_GET_REFERENCE)

    copy = one_copy()
    copies = max(1, round(args.size_mb * 1e6 / len(copy)))
    with tempfile.TemporaryDirectory(prefix="bench-fold-") as tmp:
        path = Path(tmp) / "perf-script.txt"
        with open(path, "wb") as f:
            for _ in range(copies):
                f.write(copy)
        size = path.stat().st_size
        mb = size / 1e6
        print(
            f"input: {mb:.1f} MB, {copies} copies of the 13 suite inputs ({len(copy) / 1e6:.2f}"
            f" MB each), options: {' '.join(flags) or '(none)'}"
        )

        def para_fold(impl) -> Callable[[], bytes]:
            def run() -> bytes:  # what `para fold FILE` does, in process
                with opened_input(str(path)) as data:
                    return render(impl.fold(data, **kw))

            return run

        rows: list[tuple[str, float, int]] = []
        outputs: dict[str, bytes] = {}
        t_cy, outputs["cython"] = median_time(para_fold(cy), args.repeats)
        rows.append(("para fold, Cython (map+fold+print)", t_cy, args.repeats))
        data = path.read_bytes()
        t_kernel, _ = median_time(lambda: cy.fold(data, **kw), args.repeats)
        rows.append(("  Cython kernel alone (fold)", t_kernel, args.repeats))
        t_cold, _ = median_time(lambda: cy.fold(copy, **kw), max(args.repeats, 15))
        data = b""  # let the twin's run have the memory
        if not args.skip_python:
            t_py, outputs["python"] = median_time(para_fold(py), args.repeats)
            rows.append(("para fold, pure Python", t_py, args.repeats))
        if reference:

            def perl() -> bytes:
                done = subprocess.run(
                    ["perl", reference, *flags, str(path)], capture_output=True, check=True
                )
                return done.stdout

            t_perl, outputs["perl"] = median_time(perl, args.perl_repeats)
            rows.append(("perl stackcollapse-perf.pl", t_perl, args.perl_repeats))

    print(f"\n{'':40s} {'median s':>9s} {'MB/s':>8s} {'runs':>5s}")
    for name, t, runs in rows:
        print(f"{name:40s} {t:9.3f} {mb / t:8.1f} {runs:5d}")
    print(
        f"{'  Cython kernel, one copy (distinct lines)':40s} {t_cold:9.4f} "
        f"{len(copy) / 1e6 / t_cold:8.1f} {max(args.repeats, 15):5d}"
    )
    print()
    if reference:
        print(f"perl / Cython:   {t_perl / t_cy:6.1f}x   (kernel alone: {t_perl / t_kernel:.1f}x)")
    if not args.skip_python:
        print(f"Python / Cython: {t_py / t_cy:6.1f}x")
    first = next(iter(outputs.values()))
    same = all(out == first for out in outputs.values())
    stacks = first.count(b"\n")
    print(f"outputs identical ({', '.join(outputs)}): {'yes' if same else 'NO'}, {stacks} stacks")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
