"""How `para profile --functions` unwinds (issue 10 item 7): frame pointers where the code
keeps them, else dwarf (or LBR where the CPU has it), told from the binaries themselves and
checked against what the compiler was asked for and what perf then shows."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from para.agent import unwind
from para.analyzer.analysis import analyse
from para.analyzer.job import Job
from para.formats import ParaFile

from .conftest import cannot_run, need_tool, run_para
from .test_profile import env

PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
double __attribute__((noipa)) leaf(long n, long k) { double s = 0;
    for (long i = 0; i < n; i++) s += (double)(i + k) * 0.5 / (double)(i + k + 1); return s; }
double __attribute__((noipa)) mid(long n, long k) { return leaf(n, k) + leaf(n / 2, k); }
int main(int argc, char **argv) { long n = atol(argv[1]); double s = 0;
    for (long k = 0; k < n; k++) s += mid(2000000, k); printf("%g\n", s); return 0; }
"""


def build(tmp_path: Path, name: str, *flags: str) -> Path:
    if os.uname().machine != "x86_64":
        cannot_run("frame pointers are told from x86-64 code only", "run on x86-64")
    need_tool("gcc", "apt install gcc")
    src = tmp_path / "prog.c"
    src.write_text(PROGRAM)
    exe = tmp_path / name
    subprocess.run(["gcc", "-O2", "-g", *flags, "-o", str(exe), str(src)], check=True)
    return exe


def test_frame_pointers_told_from_the_code(tmp_path):
    without = build(tmp_path, "nofp", "-fomit-frame-pointer")
    with_fp = build(tmp_path, "fp", "-fno-omit-frame-pointer")
    assert unwind.frame_pointer_share(without) < unwind.FP_SHARE
    assert unwind.frame_pointer_share(with_fp) >= unwind.FP_SHARE
    assert unwind.choose(str(without)).mode in ("dwarf", "lbr")
    assert unwind.choose(str(with_fp)).mode == "fp"
    assert unwind.choose(str(without), lbr=False).mode == "dwarf"
    assert unwind.choose(str(without), lbr=True).mode == "lbr"
    assert "nofp" in unwind.choose(str(without), lbr=False).why
    # what the user asks for wins
    assert unwind.choose(str(without), "fp").mode == "fp"
    assert unwind.choose(str(with_fp), "dwarf").perf_args() == ["--call-graph", "dwarf,8192"]


def test_not_an_elf_file_cannot_be_told(tmp_path):
    f = tmp_path / "data.bin"
    f.write_bytes(b"\x7fELF" + b"\0" * 100)
    assert unwind.frame_pointer_share(f) is None
    assert unwind.frame_pointer_share(tmp_path / "missing") is None
    # nothing to tell from: dwarf, which unwinds with or without frame pointers
    choice = unwind.choose(str(f), lbr=False)
    assert choice.mode == "dwarf" and "cannot tell" in choice.why


def test_a_script_is_judged_by_its_interpreter(tmp_path):
    exe = build(tmp_path, "interp", "-fno-omit-frame-pointer")
    script = tmp_path / "run.sh"
    script.write_text(f"#!{exe} -x\nwhatever\n")
    assert unwind.program_of(str(script)) == str(exe)
    env_script = tmp_path / "run.py"
    env_script.write_text("#!/usr/bin/env python3\n")
    assert Path(unwind.program_of(str(env_script))).name.startswith("python3")
    assert unwind.choose(str(script)).mode == "fp"


def test_libraries_it_links_count_with_rpath_origin(tmp_path):
    """A program that keeps frame pointers but spends its time in a library that does not
    (an MPI library from the distribution) needs dwarf; the library is found where the
    loader would find it ($ORIGIN)."""
    need_tool("gcc", "apt install gcc")
    lib_dir = tmp_path / "lib"
    lib_dir.mkdir()
    (tmp_path / "hot.c").write_text(PROGRAM.split("int main")[0])
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-fomit-frame-pointer", "-o",
                    str(lib_dir / "libhot.so"), str(tmp_path / "hot.c")], check=True)  # fmt: skip
    (tmp_path / "main.c").write_text(
        "double mid(long, long);\nint main(void) { return mid(10, 1) > 0 ? 0 : 1; }\n"
    )
    exe = tmp_path / "app"
    subprocess.run(["gcc", "-O2", "-fno-omit-frame-pointer", "-o", str(exe),
                    str(tmp_path / "main.c"), f"-L{lib_dir}", "-lhot",
                    "-Wl,-rpath,$ORIGIN/lib"], check=True)  # fmt: skip
    assert lib_dir / "libhot.so" in unwind.needed_libraries(exe)
    choice = unwind.choose(str(exe), lbr=False)
    assert choice.mode == "dwarf" and "libhot.so" in choice.why


def test_lbr_is_where_the_cpu_says(tmp_path):
    caps = tmp_path / "caps"
    caps.mkdir()
    assert not unwind.cpu_has_lbr(str(tmp_path))
    (caps / "branches").write_text("32\n")
    assert unwind.cpu_has_lbr(str(tmp_path))
    lbr = unwind.Choice("lbr", "x")
    after = unwind.fallback(lbr)
    assert after is not None and after.mode == "dwarf" and unwind.fallback(after).mode == "fp"
    assert unwind.fallback(unwind.Choice("fp", "x")) is None


def _stacks(path: Path) -> tuple[list[dict], dict]:
    with ParaFile(path) as pf:
        return pf.read_table("stacks").to_pylist(), pf.meta["functions"]


@pytest.mark.slow
def test_dwarf_knows_the_callers_that_frame_pointers_lose(tmp_path):
    """The same program without frame pointers, recorded both ways: perf's own stacks show
    main above the hot leaf with dwarf, not with frame pointers; auto chooses dwarf."""
    need_tool("perf", "apt install linux-perf")
    exe = build(tmp_path, "nofp", "-fomit-frame-pointer")
    share, whole, said, noted, shown = {}, {}, {}, {}, {}
    for mode in ("fp", "auto"):
        out = tmp_path / f"{mode}.para"
        r = run_para("profile", "-q", "--no-counters", "--functions", "--call-graph", mode,
                     "-o", str(out), "--", str(exe), "60", env=env())  # fmt: skip
        assert r.returncode == 0, r.stderr
        rows, info = _stacks(out)
        total = sum(x["samples"] for x in rows)
        in_leaf = [x for x in rows if x["stack"].endswith("leaf")]
        assert total >= 50 and sum(x["samples"] for x in in_leaf) > 0.5 * total
        known = sum(x["samples"] for x in in_leaf if ";main;mid;leaf" in x["stack"])
        share[mode] = known / sum(x["samples"] for x in in_leaf)
        assert info["call_graph"] == ("fp" if mode == "fp" else "dwarf")
        assert info["perf_data_bytes"] > 0
        whole[mode] = info["unwound_samples"] / info["samples"]
        r = run_para("report", str(out))
        assert r.returncode == 0, r.stderr
        said[mode] = " ".join(r.stdout.split())
        page = tmp_path / f"{mode}.html"
        assert run_para("report", str(out), "--html", str(page)).returncode == 0
        shown[mode] = "lost their callers" in page.read_text()
        with Job([out]) as job:
            noted[mode] = analyse(job).doc["functions"]["callers_lost"]
    assert share["fp"] < 0.1
    assert share["auto"] > 0.9
    # what the report says of it: the samples unwound to _start, as the stacks show them
    assert whole["fp"] < 0.1 and whole["auto"] > 0.9
    assert "lost their callers (code without frame pointers" in said["fp"]
    assert "lost their callers" not in said["auto"]
    assert noted["fp"] and noted["fp"] in said["fp"] and noted["auto"] is None  # a job's report
    assert shown == {"fp": True, "auto": False}


YIELDER = r"""
#include <sched.h>
#include <time.h>
static double now(clockid_t c) { struct timespec t; clock_gettime(c, &t);
    return t.tv_sec + t.tv_nsec * 1e-9; }
void __attribute__((noipa)) waiter(void) { for (int i = 0; i < 1000; i++) sched_yield(); }
int main(void) {
    /* 1.5 s of its own CPU: beside a busy process on each core, a yielding one gets a small
       share of a core, and 1.5 s of wall clock held only ~30 samples */
    double cpu = now(CLOCK_PROCESS_CPUTIME_ID) + 1.5, wall = now(CLOCK_MONOTONIC) + 60;
    while (now(CLOCK_PROCESS_CPUTIME_ID) < cpu && now(CLOCK_MONOTONIC) < wall) waiter();
    return 0; }
"""


@pytest.mark.slow
def test_dwarf_knows_the_callers_of_a_libc_function(tmp_path):
    """A program that spends its time in libc's sched_yield, called from one function (as an
    MPI rank waiting on an oversubscribed node does): every such sample has its callers up to
    `_start`.  perf attached to the command before its exec kept the pre-exec process's maps
    and lost the callers of libc's frames in most runs (the straggler test of issue 11)."""
    need_tool("perf", "apt install linux-perf")
    need_tool("gcc", "apt install gcc")
    src = tmp_path / "yielder.c"
    src.write_text(YIELDER)
    exe = tmp_path / "yielder"
    subprocess.run(["gcc", "-O2", "-g", "-fomit-frame-pointer", "-o", str(exe), str(src)],
                   check=True)  # fmt: skip
    out = tmp_path / "y.para"
    r = run_para("profile", "-q", "--no-counters", "--functions", "--call-graph", "dwarf",
                 "-o", str(out), "--", str(exe), env=env())  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows, info = _stacks(out)
    assert info["call_graph"] == "dwarf"
    yielding = [x for x in rows if "sched_yield" in x["stack"]]
    total = sum(x["samples"] for x in yielding)
    assert total >= 100, rows  # the program yields all the time
    whole = sum(x["samples"] for x in yielding
                if x["stack"].startswith("_start;") and ";main;waiter;" in x["stack"])  # fmt: skip
    assert whole >= 0.95 * total, sorted(yielding, key=lambda x: -x["samples"])[:5]
    assert info["unwound_samples"] >= 0.95 * info["samples"], info
