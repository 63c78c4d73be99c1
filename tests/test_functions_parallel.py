"""`para profile --functions` on a multi-threaded and on a multi-process program: every thread
and every process is sampled, and each one's share of the samples is the share of the CPU
time the program measured for it itself (CLOCK_THREAD_CPUTIME_ID, CLOCK_PROCESS_CPUTIME_ID)."""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from para.formats import ParaFile

from .conftest import need_tool, run_para

pytestmark = pytest.mark.slow

# Two kernels of distinct work, one three times longer than the other; each worker reports its
# own id and the CPU time it used, measured by the kernel for it alone.
COMMON = r"""
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
double __attribute__((noinline)) spin_a(long n) { double s = 0;
    for (long i = 0; i < n; i++) s += i * 0.5 / (i + 1); return s; }
double __attribute__((noinline)) spin_b(long n) { double s = 1;
    for (long i = 0; i < n; i++) s = s * 1.0000001 + 1.0 / (i + 2); return s; }
static double cpu_s(clockid_t c) { struct timespec ts; clock_gettime(c, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9; }
"""

THREADS = r"""
struct arg { long n; int which; long tid; double cpu, r; };
static void *run(void *p) {
    struct arg *a = p;
    a->tid = syscall(SYS_gettid);
    a->r = a->which ? spin_b(a->n) : spin_a(a->n);
    a->cpu = cpu_s(CLOCK_THREAD_CPUTIME_ID);
    return NULL;
}
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    struct arg a[2] = {{3 * n, 0, 0, 0, 0}, {n, 1, 0, 0, 0}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, run, &a[i]);
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < 2; i++)
        printf("worker %ld %s %.6f %g\n", a[i].tid, i ? "spin_b" : "spin_a", a[i].cpu, a[i].r);
    return 0;
}
"""

PROCESSES = r"""
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    for (int i = 0; i < 2; i++) {
        if (fork() == 0) {
            double r = i ? spin_b(n) : spin_a(3 * n);
            printf("worker %d %s %.6f %g\n", getpid(), i ? "spin_b" : "spin_a",
                   cpu_s(CLOCK_PROCESS_CPUTIME_ID), r);
            fflush(stdout);
            _exit(0);
        }
    }
    while (wait(NULL) > 0) {}
    return 0;
}
"""

N = "150000000"  # here about 0.6 s of CPU for spin_a's 3 N iterations, 0.35 s for spin_b's N


def _build(tmp_path: Path, name: str, source: str) -> Path:
    gcc = need_tool("gcc", "apt install gcc")
    src, exe = tmp_path / f"{name}.c", tmp_path / name
    src.write_text(COMMON + source)
    subprocess.run([gcc, "-O1", "-g", "-fno-omit-frame-pointer", "-pthread", "-o", str(exe),
                    str(src)], check=True, timeout=120)  # fmt: skip
    return exe


def _profile(tmp_path: Path, exe: Path) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """The workers as the program reported them, the recorded stacks, perf's rate."""
    need_tool("perf", "apt install linux-perf (make test installs it)")
    out = tmp_path / f"{exe.name}.para"
    r = run_para("profile", "-q", "--functions", "-o", str(out), "--", str(exe), N)
    assert r.returncode == 0, r.stderr
    workers = {}
    for line in r.stdout.splitlines():
        if line.startswith("worker "):
            _, wid, fn, cpu, _ = line.split()
            workers[fn] = {"id": int(wid), "cpu_s": float(cpu)}
    assert set(workers) == {"spin_a", "spin_b"}, r.stdout
    with ParaFile(out) as pf:
        assert "stacks" in pf.tables, pf.meta.get("functions")
        rows = pf.read_table("stacks").to_pylist()
        hz = pf.meta["functions"]["frequency_hz"]
    return workers, rows, hz


def _check(workers: dict[str, Any], rows: list[dict[str, Any]], hz: int, key: str) -> None:
    """Each worker (a thread: key "tid"; a process: "pid") is sampled in its own function, and
    its samples over perf's rate are the CPU time it measured for itself."""
    by_worker: Counter[int] = Counter()
    leaf: Counter[tuple[int, str]] = Counter()
    for r in rows:
        by_worker[r[key]] += r["samples"]
        leaf[(r[key], r["stack"].rsplit(";", 1)[-1])] += r["samples"]
    for fn, w in workers.items():
        n = by_worker[w["id"]]
        assert n > 0, (fn, w, dict(by_worker))
        assert leaf[(w["id"], fn)] >= 0.9 * n, (fn, w, leaf)  # its time is in its function
        assert n / hz == pytest.approx(w["cpu_s"], rel=0.2, abs=0.05), (fn, n / hz, w)
    a, b = workers["spin_a"], workers["spin_b"]
    share = by_worker[a["id"]] / (by_worker[a["id"]] + by_worker[b["id"]])
    assert share == pytest.approx(a["cpu_s"] / (a["cpu_s"] + b["cpu_s"]), abs=0.08)


def test_functions_of_a_multi_threaded_program(tmp_path):
    exe = _build(tmp_path, "threads", THREADS)
    workers, rows, hz = _profile(tmp_path, exe)
    _check(workers, rows, hz, "tid")
    pids = {r["pid"] for r in rows}
    assert len(pids) == 1 and {r["comm"] for r in rows} == {"threads"}  # one process
    assert {w["id"] for w in workers.values()} <= {r["tid"] for r in rows}


def test_functions_of_a_multi_process_program(tmp_path):
    exe = _build(tmp_path, "procs", PROCESSES)
    workers, rows, hz = _profile(tmp_path, exe)
    _check(workers, rows, hz, "pid")
    assert {w["id"] for w in workers.values()} <= {r["pid"] for r in rows}
    assert os.getpid() not in {r["pid"] for r in rows}
