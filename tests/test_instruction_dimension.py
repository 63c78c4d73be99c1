"""The instruction dimension on real programs profiled here (`para profile --functions`): C++
names (demangled by perf, found with `nm -C`), leaves perf could not place at an offset, a
binary rebuilt after the run (its build id, or its size without one), and the samples of a
hybrid CPU's two PMUs, on a recorded `perf script` of one."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from para.agent import binaries
from para.agent.perfrecord import instruction_rows, leaf_facts
from para.analyzer.analysis import analyse
from para.analyzer.instructions import disassemble
from para.analyzer.job import Job
from para.analyzer.rules import default_config
from para.cython_ext import load

from .conftest import FIXTURES, REPO, cannot_run, need_tool, para_cmd

HYBRID = FIXTURES / "perf-script" / "perf-script-cycles-hybrid-intel-13thgen-lkml-acme.txt"

HOT_CPP = r"""
#include <cstdlib>
#include <cstdio>
namespace hot {
struct Grid { double v; };
__attribute__((noinline)) double work(long n, const Grid& g) {
    double x = g.v;
    for (long i = 0; i < n; i++) x = x * 1.0000001 + 1.0 / (double)(i + 1);
    return x;
}
}
int main(int argc, char** argv) {
    hot::Grid g{1.0};
    std::printf("%f\n", hot::work(std::atol(argv[1]), g));
    return 0;
}
"""

HOT_C = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((noinline)) double work(long n) {
    double x = 1.0;
    for (long i = 0; i < n; i++) x = x * 1.0000001 + 1.0 / (double)(i + 1);
    return x;
}
int main(int argc, char** argv) { printf("%f\n", work(atol(argv[1]))); return 0; }
"""
# the same program with other code in `work`: a rebuild after the run
OTHER_C = HOT_C.replace("x * 1.0000001 + 1.0 / (double)(i + 1)", "x + (double)(i % 7) * 0.5")

PERF_HINT = "apt install linux-perf (and run as root or with kernel.perf_event_paranoid <= 1)"
N = "120000000"


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _profile(tmp: Path, exe: Path, *args: str) -> Path:
    need_tool("perf", PERF_HINT)
    out = tmp / f"{exe.name}.para"
    r = subprocess.run(
        [*para_cmd(), "profile", "-q", "--functions", "-o", str(out), "--", str(exe), *args],
        env=_env(), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    with Job([out]) as job:
        if not job.has("instr"):
            cannot_run(f"perf record gave no samples here: {r.stderr.strip()[-300:]}",
                       PERF_HINT)  # fmt: skip
    return out


def _build(src: str, path: Path, compiler: str, *flags: str) -> Path:
    need_tool(compiler, "apt install build-essential")
    c = path.with_suffix(".cpp" if compiler == "g++" else ".c")
    c.write_text(src)
    subprocess.run([compiler, "-O1", "-fno-omit-frame-pointer", *flags, "-o", str(path), str(c)],
                   check=True)  # fmt: skip
    return path


def _annotated(path: Path) -> dict[str, Any]:
    with Job([path]) as job:
        return analyse(job, default_config()).doc["instructions"]


def _function(ins: dict[str, Any], exe: Path) -> dict[str, Any]:
    return next(f for f in ins["functions"] if f["dso"] == str(exe))


def test_a_cpp_function_is_found_by_its_demangled_name(tmp_path):
    exe = _build(HOT_CPP, tmp_path / "hotcpp", "g++")
    f = _function(_annotated(_profile(tmp_path, exe, N)), exe)
    # perf prints the demangled name; nm's raw symbol is the mangled one
    mangled = subprocess.run(["nm", "--defined-only", str(exe)], capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
    assert "_ZN3hot4workElRKNS_4GridE" in mangled
    # perf names it without its parameters; nm -C with them: "hot::work(long, hot::Grid
    # const&)" is the one function of that name
    assert f["function"] == "hot::work", f
    assert f["disassembled"] and f["reason"] is None, f
    assert all(x["instruction"] for x in f["instructions"] if x["offset"] is not None)
    # the instructions are those objdump shows at their offsets in the function (a loop of FP
    # arithmetic); which of them the samples land on shifts with skid and load
    dis = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", str(exe)],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    head = re.search(r"^([0-9a-f]+) <hot::work\(long, hot::Grid const&\)>:\n", dis, re.M)
    assert head, dis[:2000]
    start = int(head.group(1), 16)
    body = dis[head.end() :].split("\n\n", 1)[0]
    at = {}
    for line in body.splitlines():
        m = re.match(r"\s*([0-9a-f]+):\s+(.*)", line)
        if m:
            at[int(m.group(1), 16) - start] = " ".join(m.group(2).split("#")[0].split())
    assert re.search(r"\b(div|mul|add)s?d\b", " ".join(at.values())), body
    sampled = [x for x in f["instructions"] if x["offset"] is not None]
    assert sampled
    for x in sampled:
        assert " ".join(x["instruction"].split("#")[0].split()) == at.get(x["offset"]), (x, at)


def test_a_binary_rebuilt_after_the_run_is_not_disassembled(tmp_path):
    exe = _build(HOT_C, tmp_path / "hot", "cc")
    rec = _profile(tmp_path, exe, N)
    before = binaries.build_id(exe)
    assert before and _function(_annotated(rec), exe)["disassembled"]
    _build(OTHER_C, exe, "cc")
    after = binaries.build_id(exe)
    assert after and after != before
    f = _function(_annotated(rec), exe)
    assert not f["disassembled"], f
    assert "not the binary that ran" in f["reason"] and before[:12] in f["reason"], f
    assert f["instructions"] and all(x["instruction"] is None for x in f["instructions"])


def test_without_a_build_id_size_and_mtime_tell_a_rebuild(tmp_path):
    exe = _build(HOT_C, tmp_path / "hot", "cc", "-Wl,--build-id=none")
    rec = _profile(tmp_path, exe, N)
    assert binaries.build_id(exe) is None
    assert _function(_annotated(rec), exe)["disassembled"]
    size = exe.stat().st_size
    _build(OTHER_C + "\nint unused_padding[4096] = {1};\n", exe, "cc", "-Wl,--build-id=none")
    assert exe.stat().st_size != size
    f = _function(_annotated(rec), exe)
    assert not f["disassembled"] and f"not {size} as when it ran" in f["reason"], f


def test_leaves_without_an_offset_are_counted(tmp_path):
    """A stripped binary: perf places its samples in no symbol ("[unknown]", no +0x)."""
    need_tool("perf", PERF_HINT)
    exe = _build(HOT_C, tmp_path / "stripped", "cc", "-s")
    data = tmp_path / "perf.data"
    rec = subprocess.run(["perf", "record", "-e", "cpu-clock", "-F", "999", "-g", "-o",
                          str(data), str(exe), N], capture_output=True, text=True)  # fmt: skip
    if rec.returncode != 0:
        cannot_run(f"perf record cannot run here: {rec.stderr.strip()[-200:]}", PERF_HINT)
    script = subprocess.run(["perf", "script", "-i", str(data), "-F",
                             "comm,pid,tid,time,event,ip,sym,symoff,dso"],
                            capture_output=True, check=True).stdout  # fmt: skip
    rows = instruction_rows(script)
    # perf's own count of the samples in the binary
    report = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "-n", "--sort",
                             "dso", "--no-children"], capture_output=True, text=True,
                            check=True).stdout  # fmt: skip
    m = re.search(r"^\s*[\d.]+%\s+(\d+)\s+stripped\s*$", report, re.M)
    assert m, report
    ours = [r for r in rows if r[1] == str(exe)]
    assert sum(r[4] for r in ours) == int(m.group(1))
    assert ours and all(r[2] == "[unknown]" and r[3] is None for r in ours), ours[:3]
    facts = leaf_facts(rows)
    assert facts["binaries"][str(exe)]["size"] == exe.stat().st_size


# a function inlined into the one that runs it (`mix` into `outer`: all of outer's loop is
# mix's code), built with its debug information so that perf's DWARF unwinding names it
INLINED_C = r"""
#include <stdlib.h>
static inline __attribute__((always_inline)) unsigned long mix(unsigned long n) {
    unsigned long s = 0;
    for (unsigned long i = 0; i < n; i++) {
        unsigned long x = i;
        for (int k = 0; k < 64; k++)
            x = (x * 6364136223846793005UL + 1442695040888963407UL) ^ (x >> 13);
        s += x;
    }
    return s;
}
__attribute__((noinline)) unsigned long outer(unsigned long n) { return mix(n); }
int main(int argc, char **argv) { return (int)(outer(strtoul(argv[1], 0, 10)) & 1); }
"""


def test_an_inlined_leaf_is_the_instruction_of_the_function_that_holds_it(tmp_path):
    """perf prints a sample in inlined code as `mix+0x3e (inlined)`, and on the next line,
    at the same address, the function whose code it is.  The leaf was taken as is: `make
    demo`'s report read "Instructions of pymalloc_alloc in inlined", a binary named
    "inlined", nothing to disassemble.  The samples are the holder's, as perf's own report
    without inlining counts them."""
    need_tool("perf", PERF_HINT)
    exe = _build(INLINED_C, tmp_path / "inl", "cc", "-O2", "-g")
    data = tmp_path / "perf.data"
    rec = subprocess.run(["perf", "record", "-e", "cpu-clock", "-F", "999", "--call-graph",
                          "dwarf", "-o", str(data), str(exe), "8000000"],
                         capture_output=True, text=True)  # fmt: skip
    if rec.returncode != 0:
        cannot_run(f"perf record cannot run here: {rec.stderr.strip()[-200:]}", PERF_HINT)
    script = subprocess.run(["perf", "script", "-i", str(data), "-F",
                             "comm,pid,tid,time,event,ip,sym,symoff,dso"],
                            capture_output=True, check=True).stdout  # fmt: skip
    assert re.search(rb"\smix\+0x[0-9a-f]+ \(inlined\)", script), script[:400]
    rows = instruction_rows(script)
    report = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "-n", "--sort",
                             "dso,sym", "--no-children", "--no-inline"], capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    m = re.search(r"^\s*[\d.]+%\s+(\d+)\s+inl\s+\[\.\]\s+outer\s*$", report, re.M)
    assert m, report[:2000]
    ours = [r for r in rows if r[1] == str(exe)]
    assert {r[2] for r in ours} == {"outer"}
    assert sum(r[4] for r in ours) == int(m.group(1))
    assert not [r for r in rows if r[1] == "inlined"]
    # and the offsets are outer's: each one an instruction objdump finds in it
    code, why = disassemble(str(exe), "outer")
    assert why is None and {r[3] for r in ours} <= {off for off, _ in code}
    # a leaf whose holder perf did not print is counted as printed, and said so
    sample = next(b.split(b"\n") for b in script.split(b"\n\n") if b" mix+0x" in b)
    lone = instruction_rows(b"\n".join([sample[0], next(x for x in sample if b" mix+0x" in x)]))
    assert [r[1:3] + r[4:] for r in lone] == [["inlined", "mix", 1]]
    assert disassemble("inlined", "mix")[1] == (
        "mix was inlined into a function perf did not name: offsets only"
    )


def test_the_instructions_shown_are_those_of_the_functions_whose_code_ran(tmp_path):
    """The report shows the instructions of the functions with the most instruction
    samples, as perf annotate ranks them.  Ranked by the call stacks' hottest functions, it
    looked for `mix`, inlined (no code of its own), and `make demo` showed five kernel
    functions of 18-201 samples and none of libpython's 287-591."""
    # no frame pointers: para unwinds with DWARF, which names the inlined function
    exe = _build(INLINED_C, tmp_path / "inl", "cc", "-O2", "-g", "-fomit-frame-pointer")
    path = _profile(tmp_path, exe, "8000000")
    with Job([path]) as job:
        a = analyse(job, default_config())
        ranked = job.query(
            "SELECT symbol, dso, sum(samples) AS n FROM instr GROUP BY ALL "
            "ORDER BY n DESC, symbol, dso LIMIT 5"
        )
    shown = [(f["function"], f["dso"], f["samples"]) for f in a.doc["instructions"]["functions"]]
    assert shown == [tuple(r) for r in ranked]
    hot = {h["function"]: h["self_samples"] for h in a.hotspots}
    # the stacks' hottest is the inlined one; outer, whose code it is, has none of its own
    assert hot["mix"] > 0.9 * sum(hot.values()) and hot.get("outer", 0) < 0.02 * hot["mix"]
    first = a.doc["instructions"]["functions"][0]
    assert (first["function"], first["dso"]) == ("outer", str(exe)) and first["disassembled"]


def _hybrid_script() -> tuple[bytes, dict[str, int]]:
    """The recorded hybrid samples in the layout `perf script` prints with call chains (the
    header, its frame on the next line, a blank line); and the periods per PMU, as printed."""
    out, per_pmu = [], {}
    for line in HYBRID.read_text().splitlines():
        m = re.match(r"\s*(.*?:\s+(\d+)\s+(\S+):)\s+(\S+ .*)$", line)
        assert m, line
        out.append(f"{m.group(1)}\n\t{m.group(4)}\n\n")
        per_pmu[m.group(3)] = per_pmu.get(m.group(3), 0) + int(m.group(2))
    return "".join(out).encode(), per_pmu


@pytest.mark.parametrize("pure", [False, True], ids=["cython", "python"])
def test_fold_timed_keeps_both_pmus_of_a_hybrid_cpu(pure):
    fk = load("fold", pure=pure)
    if not pure and fk.__name__.endswith("_py"):
        pytest.fail("the Cython kernel is not built (run `make venv`)")
    data, per_pmu = _hybrid_script()
    assert set(per_pmu) == {"cpu_core/cycles/", "cpu_atom/cycles/"}
    rows = fk.fold_timed(data)
    assert sum(r[5] for r in rows) == sum(per_pmu.values())
    assert {r[3] for r in rows} == {"perf", "gnome-shell", "podman", "swapper"}
    # a filter names the event, whichever PMU counted it
    assert fk.fold_timed(data, event_filter="cycles") == rows
    assert fk.fold_timed(data, event_filter="cpu_atom/cycles/") == rows
    # `fold` stays what stackcollapse-perf.pl prints: the first event seen only
    assert sum(fk.fold(data).values()) == per_pmu["cpu_core/cycles/"]


def test_the_recorder_keeps_what_the_report_checks(tmp_path):
    exe = _build(HOT_C, tmp_path / "hot", "cc")
    rec = _profile(tmp_path, exe, N)
    with Job([rec]) as job:
        meta = job.nodes[0].meta["functions"]
    ident = meta["binaries"][str(exe)]
    st = exe.stat()
    assert ident == {"build_id": binaries.build_id(exe), "size": st.st_size,
                     "mtime_ns": st.st_mtime_ns}  # fmt: skip
    # readelf's reading of the same note
    notes = subprocess.run(["readelf", "-n", str(exe)], capture_output=True, text=True,
                           check=True).stdout  # fmt: skip
    assert f"Build ID: {ident['build_id']}" in notes
    assert isinstance(meta["kernel_samples"], int)
