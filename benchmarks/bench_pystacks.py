"""Issue 12: what Python stacks cost `para profile --functions`, and what `-X perf` would give.

1. Slowdown: a CPU-bound pure-Python program (it times itself) under `para profile
   --functions` (perf record + py-spy on each CPython process) against the anchor
   `--functions --no-python-stacks` (perf record alone), in pairs run back to back in
   alternating order; the median of the pairs' ratios, at the default py-spy rate and at
   perf's own (499 Hz).  py-spy's own CPU time is printed beside it.
   The same pairs run side by side, both programs at once on the node's CPUs: the host's
   drift (the program's own CPU time for the same work moves by 20 % here between runs)
   falls on both halves of a pair alike, and py-spy's CPU comes out of a node whose cores
   the job fills (the worst case); the median with its 95 % bootstrap interval.
2. Samples lost: py-spy's reads against its rate times its time, its errors; perf samples of
   the Python threads that got no Python stack (before py-spy attached) against all.
   The same on one running program, py-spy switched on and off every 2 s (robust to the
   load of a shared machine, which drifts more slowly).
3. Stitching (the step at the end of a profile): a generated `perf script` of a 4-thread
   Python process and its py-spy timelines through `pystacks.stitch`, beside the anchor the
   same text folded by the Cython `fold_timed` kernel.
4. Python 3.12+ perf maps (`-X perf`) as the alternative: the share of perf samples with a
   Python frame, and with the caller's Python frame too, under frame-pointer (`-g`) and DWARF
   (`--call-graph dwarf`) unwinding, the perf.data size, and the slowdown against the same
   program without perf; needs a python3.12 (pyenv's is found, or --py312).

    .venv/bin/python benchmarks/bench_pystacks.py [--pairs 5] [--seconds 4]
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from para.agent import pystacks  # noqa: E402
from para.cython_ext import load  # noqa: E402
from para.formats import ParaFile  # noqa: E402

PROGRAM = """
import sys, time
def inner(n):
    s = 0
    for i in range(n): s += i * i % 7
    return s
def outer(n):
    return sum(inner(2000) for _ in range(n))
t, c = time.perf_counter(), time.process_time()
outer(int(sys.argv[1]))
open(sys.argv[2], "w").write(f"{time.perf_counter() - t} {time.process_time() - c}")
"""


def calibrate(python: str, prog: Path, seconds: float, d: Path) -> int:
    """Iterations that take about `seconds` here."""
    out = d / "cal.txt"
    subprocess.run([python, str(prog), "200", str(out)], check=True)
    per = float(out.read_text().split()[1]) / 200
    return max(200, int(seconds / per))


def profiled(
    python: str, prog: Path, n: int, d: Path, extra: list[str]
) -> tuple[tuple[float, float], dict]:
    """The program's own (wall, CPU) seconds under `para profile --functions` + `extra`."""
    return finished(start_profiled(python, prog, n, d, extra, "p"))


def start_profiled(
    python: str, prog: Path, n: int, d: Path, extra: list[str], name: str
) -> tuple[subprocess.Popen, Path, Path]:
    out, para = d / f"{name}.txt", d / f"{name}.para"
    para.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "para", "profile", "-q", "--functions", *extra, "-o",
           str(para), "--", python, str(prog), str(n), str(out)]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, out, para


def finished(run: tuple[subprocess.Popen, Path, Path]) -> tuple[tuple[float, float], dict]:
    proc, out, para = run
    if proc.wait() != 0:
        raise SystemExit(f"para profile failed ({proc.returncode}): {proc.args}")
    with ParaFile(para) as pf:
        info = pf.meta.get("functions") or {}
    wall, cpu = out.read_text().split()
    return (float(wall), float(cpu)), info


def median_ci(xs: list[float], draws: int = 2000) -> tuple[float, float]:
    """95 % bootstrap interval of the median (fixed seed: the same figures print the same)."""
    rnd = random.Random(12)
    meds = sorted(statistics.median(rnd.choices(xs, k=len(xs))) for _ in range(draws))
    return meds[int(0.025 * draws)], meds[int(0.975 * draws) - 1]


def side_by_side(python: str, prog: Path, n: int, pairs: int, d: Path, rate: int) -> None:
    """Both halves of each pair at once: perf alone and perf + py-spy, started together
    (which starts first alternates), each program timing itself."""
    walls, cpus = [], []
    for i in range(pairs):
        order = [("perf", ["--no-python-stacks"]), ("py", ["--py-spy-rate", str(rate)])]
        if i % 2:
            order.reverse()
        runs = {name: start_profiled(python, prog, n, d, extra, name) for name, extra in order}
        got = {name: finished(run)[0] for name, run in runs.items()}
        (a, ca), (b, cb) = got["perf"], got["py"]
        walls.append(b / a)
        cpus.append(cb / ca)
        print(
            f"  side by side {i + 1}: perf alone {a:.3f} s ({ca:.3f} s CPU), perf + py-spy "
            f"{b:.3f} s ({cb:.3f} s CPU): wall {100 * (b / a - 1):+.1f} %",
            flush=True,
        )
    lo, hi = median_ci(walls)
    clo, chi = median_ci(cpus)
    print(f"py-spy at {rate} Hz, side by side: wall-clock slowdown "
          f"{100 * (statistics.median(walls) - 1):+.2f} % (median of {pairs}; 95 % interval "
          f"{100 * (lo - 1):+.2f} to {100 * (hi - 1):+.2f} %; range {100 * (min(walls) - 1):+.1f} "
          f"to {100 * (max(walls) - 1):+.1f} %); the program's CPU time "
          f"{100 * (statistics.median(cpus) - 1):+.2f} % ({100 * (clo - 1):+.2f} to "
          f"{100 * (chi - 1):+.2f} %); load {os.getloadavg()[0]:.1f}")  # fmt: skip


def slowdown(python: str, prog: Path, n: int, pairs: int, d: Path, rate: int) -> None:
    """Wall-clock slowdown is what a user sees; on a shared, oversubscribed machine it
    mostly measures the others, so the program's CPU time (what py-spy's reads of its
    memory could cost it: caches, memory bandwidth) and py-spy's own CPU time (what it
    takes from a node whose cores the job fills) are printed beside it."""
    ratios, cpu_ratios, spy_cpu, prog_s, losses = [], [], [], [], []
    for i in range(pairs):
        order = [("perf", ["--no-python-stacks"]), ("py", ["--py-spy-rate", str(rate)])]
        if i % 2:
            order.reverse()
        got = {}
        for name, extra in order:
            got[name] = profiled(python, prog, n, d, extra)
        (a, ca), (b, cb) = got["perf"][0], got["py"][0]
        ratios.append(b / a)
        cpu_ratios.append(cb / ca)
        info = got["py"][1].get("python") or {}
        spy_cpu.append(info.get("pyspy_cpu_s") or 0.0)
        prog_s.append(b)
        stitched = info.get("stitched_samples") or 0
        alone = info.get("perf_only_samples") or 0
        expected = rate * b
        losses.append((info.get("pyspy_samples") or 0, expected, info.get("pyspy_errors") or 0,
                       alone, stitched + alone))  # fmt: skip
        print(f"  pair {i + 1}: perf alone {a:.3f} s ({ca:.3f} s CPU), perf + py-spy {b:.3f} s "
              f"({cb:.3f} s CPU): wall {100 * (b / a - 1):+.1f} %, CPU "
              f"{100 * (cb / ca - 1):+.1f} %", flush=True)  # fmt: skip
    med = statistics.median(ratios)
    cpu = statistics.median(c / s for c, s in zip(spy_cpu, prog_s))
    cmed = statistics.median(cpu_ratios)
    print(f"py-spy at {rate} Hz: wall-clock slowdown {100 * (med - 1):+.2f} % (median of {pairs} "
          f"pairs; range {100 * (min(ratios) - 1):+.1f} to {100 * (max(ratios) - 1):+.1f} %); "
          f"the program's CPU time {100 * (cmed - 1):+.2f} % (range "
          f"{100 * (min(cpu_ratios) - 1):+.1f} to {100 * (max(cpu_ratios) - 1):+.1f} %); py-spy "
          f"used {100 * cpu:.2f} % of a core per Python process; load "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    reads = sum(x[0] for x in losses)
    want = sum(x[1] for x in losses)
    errs = sum(x[2] for x in losses)
    alone = sum(x[3] for x in losses)
    allp = sum(x[4] for x in losses)
    print(f"  samples: py-spy read {reads:,} stacks of {want:,.0f} expected at {rate} Hz over "
          f"the programs' time ({100 * (1 - reads / want):.1f} % fewer: its start, and lateness "
          f"under load), {errs} errors; {alone:,} of {allp:,} perf samples of the Python "
          f"threads ({100 * alone / max(allp, 1):.2f} %) got no Python stack (before py-spy "
          "attached) and kept perf's frames")  # fmt: skip


WINDOWED = """
import sys, time
def inner(n):
    s = 0
    for i in range(n): s += i * i % 7
    return s
marks = []
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    inner(3000)
    marks.append(time.monotonic())
open(sys.argv[2], "w").write("\\n".join(map(repr, marks)))
"""


def windowed(python: str, d: Path, rate: int, windows: int, width: float) -> None:
    """py-spy switched on and off in turns on one running program that perf record follows
    throughout: the program's progress (chunks of work per second) in each window with
    py-spy against the mean of the two windows around it without.  A shared machine's load
    drifts over seconds, not within three windows, so this sees what pairs of whole runs
    cannot (a py-spy starting in each window adds its start to the figure)."""
    prog, marks, data = d / "win.py", d / "marks.txt", d / "win.data"
    prog.write_text(WINDOWED)
    length = windows * width + 1.0
    target = subprocess.Popen([python, str(prog), str(length), str(marks)])
    perf = subprocess.Popen(["perf", "record", "-q", "-F", "499", "-g", "-e", "cpu-clock", "-p",
                             str(target.pid), "-o", str(data)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(0.5)
    bounds, spy_cpu = [], 0.0
    for w in range(windows):
        t0 = time.monotonic()
        spy = None
        if w % 2:
            spy = subprocess.Popen([pystacks.pyspy_binary(), "record", "-p", str(target.pid),
                                    "-r", str(rate), "--nonblocking", "--idle", "--threads",
                                    "--function", "--format", "chrometrace", "-o",
                                    str(d / "w.json")], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(max(0.0, t0 + width - time.monotonic()))
        if spy is not None:
            spy.send_signal(2)
            _, _, ru = os.wait4(spy.pid, 0)
            spy.returncode = 0
            spy_cpu += ru.ru_utime + ru.ru_stime
        bounds.append((t0, time.monotonic(), spy is not None))
    target.wait()
    perf.wait()
    ts = [float(x) for x in marks.read_text().split()]

    def speed(a: float, b: float) -> float:
        n = sum(1 for t in ts if a <= t < b)
        return n / (b - a)

    rates = [speed(a + 0.1, b) for a, b, _ in bounds]  # the first 0.1 s: py-spy starting
    ratios = [rates[i] / ((rates[i - 1] + rates[i + 1]) / 2) for i in range(1, windows - 1)
              if bounds[i][2]]  # fmt: skip
    med = statistics.median(ratios)
    on = sum(b - a for a, b, py in bounds if py)
    print(f"py-spy at {rate} Hz switched on and off every {width:g} s ({len(ratios)} windows "
          f"with it): the program ran {100 * (1 - med):+.2f} % slower with it (median; range "
          f"{100 * (1 - max(ratios)):+.1f} to {100 * (1 - min(ratios)):+.1f} %); py-spy used "
          f"{100 * spy_cpu / on:.2f} % of a core while on, its start included; load "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip


def synthetic_script(samples: int, threads: int = 4, seed: int = 1) -> tuple[bytes, dict]:
    """perf script text of one CPython process (pid 1000) and its threads' timelines."""
    rnd = random.Random(seed)
    lib = "/usr/lib/libpython3.11.so.1.0"
    native = [("dgemm_kernel", "/v/libopenblas.so"), ("cblas_dgemm", "/v/libopenblas.so"),
              ("array_matmul", "/v/_multiarray_umath.so")]  # fmt: skip
    interp = [
        ("_PyEval_EvalFrameDefault", lib),
        ("_PyFunction_Vectorcall", lib),
        ("PyObject_Call", lib),
    ] * 8 + [("Py_BytesMain", lib), ("main", "/usr/bin/python3")]
    lines = []
    t0 = 5000.0
    for k in range(samples):
        tid = 1000 + k % threads
        t = t0 + (k // threads) / 499  # each thread on a CPU throughout, at 499 Hz
        lines.append(f"python3 1000/{tid} {t:.6f}: cpu-clock:")
        frames = (native if rnd.random() < 0.5 else []) + interp
        for f, dso in frames:
            lines.append(f"\t    7f00 {f}+0x10 ({dso})")
        lines.append("")
    text = ("\n".join(lines) + "\n").encode()
    stacks = pystacks.Stacks()
    ids = [stacks.intern(tuple(f"m.f{j} (m.py:{j})" for j in range(d)))
           for d in range(8, 40)]  # fmt: skip
    timelines = {}
    end = t0 + samples / threads / 499 + 1
    for tid in range(1000, 1000 + threads):
        tl = pystacks.Timeline()
        t = t0 - 0.01
        while t < end:
            tl.add(t, rnd.choice(ids))
            t += rnd.uniform(0.005, 0.03)
        tl.add(end, 0)
        timelines[(1000, tid)] = tl
    return text, {"stacks": stacks, "timelines": timelines}


def stitching(samples: int, repeats: int) -> None:
    text, syn = synthetic_script(samples)
    interp = pystacks.Interpreter("/usr/bin/python3", "/usr/lib/libpython3.11.so.1.0", "3.11")
    fold = load("fold")
    with tempfile.NamedTemporaryFile(suffix=".script") as f:
        f.write(text)
        f.flush()
        t_fold, t_stitch = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            folded = fold.fold_timed(text)
            t_fold.append(time.perf_counter() - t)
            t = time.perf_counter()
            pystacks.stitch(Path(f.name), folded, 499.0, {1000: interp}, syn["timelines"],
                            syn["stacks"])  # fmt: skip
            t_stitch.append(time.perf_counter() - t)
    mb = len(text) / 2**20
    a, b = statistics.median(t_fold), statistics.median(t_stitch)
    print(f"stitching {samples:,} samples ({mb:.0f} MiB of perf script, 4 threads): "
          f"{samples / b / 1e3:,.0f} k samples/s ({b:.2f} s); anchor fold_timed "
          f"(Cython) {samples / a / 1e3:,.0f} k samples/s ({a:.2f} s); stitch/fold "
          f"{b / a:.1f}x")  # fmt: skip


def perf_maps(py312: str, prog: Path, d: Path, n: int) -> None:
    """-X perf under perf record: how many samples name a Python function at all."""
    out = d / "t12.txt"
    data = d / "p12.data"
    base = []
    for _ in range(3):
        subprocess.run([py312, str(prog), str(n), str(out)], check=True)
        base.append(float(out.read_text().split()[0]))
    b = statistics.median(base)
    print(f"{py312} ({subprocess.run([py312, '-V'], capture_output=True, text=True).stdout.strip()}"
          f"): {b:.3f} s without perf")  # fmt: skip
    for name, unwind in (("-g (frame pointers)", ["-g"]),
                         ("--call-graph dwarf", ["--call-graph", "dwarf"])):  # fmt: skip
        walls = []
        for _ in range(3):
            subprocess.run(["perf", "record", "-q", "-F", "499", "-e", "cpu-clock", *unwind, "-o",
                            str(data), "--", py312, "-X", "perf", str(prog), str(n), str(out)],
                           check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)  # fmt: skip
            walls.append(float(out.read_text().split()[0]))
        script = subprocess.run(["perf", "script", "-i", str(data), "-F", "ip,sym"],
                                capture_output=True, text=True).stdout  # fmt: skip
        total = any_py = caller = 0
        for sample in script.split("\n\n"):
            if not sample.strip():
                continue
            total += 1
            named = sample.count("py::")
            any_py += named >= 1
            caller += "py::outer" in sample and "py::inner" in sample
        size = data.stat().st_size / 2**20
        w = statistics.median(walls)
        print(f"  perf record {name} + -X perf: {100 * (w / b - 1):+.1f} % slower; "
              f"{100 * any_py / max(total, 1):.1f} % of {total} samples name a Python "
              f"function, {100 * caller / max(total, 1):.1f} % the caller too "
              f"(outer -> inner); perf.data {size:.2f} MiB")  # fmt: skip
    (t, _), info = profiled(py312, prog, n, d, [])
    py = info.get("python") or {}
    st, alone = py.get("stitched_samples") or 0, py.get("perf_only_samples") or 0
    rows = []
    with ParaFile(d / "p.para") as pf:
        rows = pf.read_table("stacks").to_pylist()
    both = sum(r["samples"] for r in rows if r["state"] == "cpu" and "bench.outer (" in r["stack"]
               and "bench.inner (" in r["stack"])  # fmt: skip
    cpu = sum(r["samples"] for r in rows if r["state"] == "cpu")
    print(f"  para profile --functions (perf -g + py-spy): {100 * (t / b - 1):+.1f} % slower; "
          f"{100 * st / max(st + alone, 1):.1f} % of {st + alone} samples name a Python "
          f"function, {100 * both / max(cpu, 1):.1f} % the caller too")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=4.0, help="length of the program's run")
    ap.add_argument("--python", default=sys.executable, help="the interpreter profiled")
    ap.add_argument("--py312", default=None, help="a Python 3.12+ for the -X perf figures")
    ap.add_argument("--stitch-samples", type=int, default=200_000)
    ap.add_argument("--windows", type=int, default=21, help="on/off windows of 2 s")
    ap.add_argument("--side-by-side", type=int, default=11, help="pairs run at once")
    parts = ["slowdown", "sidebyside", "windowed", "stitch", "perfmaps"]
    ap.add_argument("--skip", nargs="*", default=[], choices=parts)
    ap.add_argument("--rates", type=int, nargs="+", default=[100, 499],
                    help="py-spy rates measured (100: para's default)")  # fmt: skip
    args = ap.parse_args()
    print(f"py-spy {pystacks._version(pystacks.pyspy_binary())}, {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        prog = d / "bench.py"
        prog.write_text(PROGRAM)
        n = calibrate(args.python, prog, args.seconds, d)
        if "slowdown" not in args.skip:
            print(f"slowdown of a CPU-bound Python program ({args.seconds:g} s, {args.python}), "
                  "against perf record alone:")  # fmt: skip
            for rate in args.rates:
                slowdown(args.python, prog, n, args.pairs, d, rate)
        if "sidebyside" not in args.skip:
            for rate in args.rates:
                side_by_side(args.python, prog, n, args.side_by_side, d, rate)
        if "windowed" not in args.skip:
            for rate in args.rates:
                windowed(args.python, d, rate, args.windows, 2.0)
        if "stitch" not in args.skip:
            stitching(args.stitch_samples, 3)
        if "perfmaps" not in args.skip:
            found = args.py312 or next(
                iter(
                    sorted(
                        glob.glob(
                            os.path.expanduser("~/.pyenv/versions/3.1[2-9]*/bin/python3.1[2-9]")
                        )
                    )
                ),
                None,
            )
            if found is None:
                print("-X perf: no Python 3.12+ found (give --py312)")
            else:
                perf_maps(found, prog, d, calibrate(found, prog, args.seconds / 2, d))


if __name__ == "__main__":
    main()
