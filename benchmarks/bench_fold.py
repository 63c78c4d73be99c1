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
"""

from __future__ import annotations

import argparse
import os
import re
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
    args = ap.parse_args()

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
