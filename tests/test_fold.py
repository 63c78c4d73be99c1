"""Stack folding: the Cython kernel and its twin against stackcollapse-perf.pl's own suite,
inferno's cases, a live perf capture, each other, and the `para fold` command."""

from __future__ import annotations

import inspect
import math
import os
import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from para.analyzer.fold import fold_command, main, render
from para.cython_ext import load
from para.errors import ParaError

from .conftest import FIXTURES, compiled_kernel, need_tool

SUITE = FIXTURES / "flamegraph"
PERF_SCRIPT = FIXTURES / "perf-script"
SUITE_NAMES = sorted(p.stem for p in SUITE.glob("*.txt"))
OPTIONS: dict[str, dict[str, bool]] = {
    "pid": {"pid": True},
    "tid": {"tid": True},
    "kernel": {"kernel": True},
    "jit": {"jit": True},
    "all": {"kernel": True, "jit": True},
    "addrs": {"addrs": True},
}
# Results the suite keeps from before the reference began to strip the "L" of Java classes.
STALE_JAVA_L = {
    (name, option)
    for name in (
        "perf-java-faults-01",
        "perf-java-stacks-01",
        "perf-java-stacks-02",
        "perf-vertx-stacks-01",
    )
    for option in ("pid", "tid")
}
IMPLS = [pytest.param(False, id="cython"), pytest.param(True, id="python")]


@pytest.fixture(params=IMPLS)
def fk(request):
    return load("fold", pure=True) if request.param else compiled_kernel("fold")


@pytest.fixture
def both():
    return compiled_kernel("fold"), load("fold", pure=True)


def suite_input(name: str) -> bytes:
    return (SUITE / f"{name}.txt").read_bytes()


def real_inputs() -> list[Path]:
    return sorted(SUITE.glob("*.txt")) + sorted(PERF_SCRIPT.glob("*.txt"))


def test_twin_has_the_kernels_signatures(both):
    cy, py = both
    for name in ("fold", "fold_timed"):
        params = [
            [(p.name, p.kind, p.default) for p in inspect.signature(f).parameters.values()]
            for f in (getattr(cy, name), getattr(py, name))
        ]
        assert params[0] == params[1], name


# -- FlameGraph's own regression suite --------------------------------------------------------


def test_suite_is_complete():
    assert len(SUITE_NAMES) == 13
    results = sorted(p.name for p in (SUITE / "results").glob("*.txt"))
    assert results == sorted(f"{n}-collapsed-{o}.txt" for n in SUITE_NAMES for o in OPTIONS)


def strip_java_class_l(folded: bytes) -> bytes:
    """`folded` as the current reference prints it: in java processes a frame naming a class
    path ("Ljava/io/File:::x") loses its leading L; the lines then sort anew."""
    lines = []
    for line in folded.splitlines():
        stack, count = line.rsplit(b" ", 1)
        frames = stack.split(b";")
        if frames[0].startswith(b"java"):
            frames[1:] = [f[1:] if f[:1] == b"L" and b"/" in f else f for f in frames[1:]]
        lines.append(b";".join(frames) + b" " + count + b"\n")
    return b"".join(sorted(lines))


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("name", SUITE_NAMES)
def test_flamegraph_suite(fk, name, option):
    got = render(fk.fold(suite_input(name), **OPTIONS[option]))
    expected = (SUITE / "results" / f"{name}-collapsed-{option}.txt").read_bytes()
    if (name, option) in STALE_JAVA_L:
        # 8 of 78: stale in the suite itself; they differ by that L and by nothing else
        assert got != expected
        assert got == strip_java_class_l(expected)
    else:  # the other 70: byte for byte
        assert got == expected


# -- inferno's cases: stackcollapse-perf.pl's answer, and how inferno's differs -----------------


def inferno_result(name: str) -> dict[str, int]:
    text = (PERF_SCRIPT / "results" / name).read_text()
    return {k: int(v) for k, v in (line.rsplit(" ", 1) for line in text.splitlines())}


def perf_script(name: str) -> bytes:
    return (PERF_SCRIPT / f"perf-script-cycles-{name}.txt").read_bytes()


def test_inferno_cpp_argument_lists(fk):
    # inferno keeps C++ argument lists; the reference cuts every symbol at its first "(" that
    # does not open "(anonymous namespace)" (Go methods aside), leaving the space before it.
    got = fk.fold(perf_script("cpp-stacks-std-function-inferno"))
    expected: Counter[str] = Counter()
    for stack, n in inferno_result("cpp-stacks-std-function-collapsed-inferno.txt").items():
        cut = ";".join(re.sub(r"\((?!anonymous namespace\)).*", "", f) for f in stack.split(";"))
        expected[cut] += n
    assert got == dict(expected)
    assert "perf_stacks;_start;__libc_start_main;main;std::function<int ;" in "\n".join(got)


def test_inferno_single_line_stacks(fk):
    # inferno reads a frame printed on the header line. The reference does not: these headers
    # start with spaces, so they are no sample headers at all, and there is no blank line.
    data = perf_script("single-line-stacks-inferno")
    assert inferno_result("single-line-stacks-collapsed-inferno.txt") == {
        "false;[unknown]": 1,
        "false;_dl_start": 1,
    }
    assert fk.fold(data) == {}
    # As headers, each is a sample of the process alone: the frame on the line is not read.
    as_headers = b"".join(line.lstrip() + b"\n\n" for line in data.splitlines())
    assert fk.fold(as_headers) == {"false": 2}


def test_inferno_jitdump_is_not_a_perf_map(fk):
    # inferno marks /tmp/jitted-*.so (jitdump) frames as JIT; the reference only /tmp/perf-PID.map
    got = fk.fold(perf_script("sourcepawn-jitdump-inferno"), jit=True)
    inferno = inferno_result("sourcepawn-jitdump-collapsed-jit-inferno.txt")
    assert got == {k.replace("_[j]", ""): n for k, n in inferno.items()}
    assert all("_[j]" in k for k in inferno)


def test_inferno_versioned_vmlinux(fk):
    data = perf_script("versioned-vmlinux-inferno")
    # The file's only sample has no blank line after it; the reference emits at blank lines.
    assert fk.fold(data, kernel=True) == {}
    # Ended, it folds as inferno's but unmarked: the reference marks a frame kernel when its
    # dso is "[...]" or ends in "vmlinux", not "vmlinux-5.4.14-cloudflare-2020.1.11".
    inferno = inferno_result("versioned-vmlinux-collapsed-kernel-inferno.txt")
    assert fk.fold(data + b"\n", kernel=True) == {
        k.replace("_[k]", ""): n for k, n in inferno.items()
    }


def test_event_filter_on_real_capture(fk):
    data = perf_script("uppp-firefox-firefox-profiler")
    periods: dict[str, list[int]] = {"cycles:uppp": [], "cycles:ppp": []}
    for line in data.decode().splitlines():
        if line.endswith(("cycles:uppp: ", "cycles:ppp: ")):
            *_, period, event = line.split()
            periods[event.rstrip(":")].append(int(period))
    assert (len(periods["cycles:uppp"]), len(periods["cycles:ppp"])) == (72, 1)
    # the first event seen (cycles:uppp) is the one kept, unless another is asked for
    assert sum(fk.fold(data).values()) == sum(periods["cycles:uppp"])
    assert fk.fold(data, event_filter="cycles:uppp") == fk.fold(data)
    assert fk.fold(data, event_filter="instructions") == {}
    # The one cycles:ppp sample is the file's last, with no blank line after it: dropped.
    assert fk.fold(data, event_filter="cycles:ppp") == {}
    # Ended, it counts. Its thread is "FS Broker 5906" (pid/tid 7564/7598): the reference
    # takes the shortest name followed by an id, "FS Broker", and 5906 as the TID.
    only = fk.fold(data + b"\n", event_filter="cycles:ppp", tid=True)
    assert list(only.values()) == periods["cycles:ppp"]
    assert next(iter(only)).startswith("FS_Broker-?/5906;[unknown];__libc_recvmsg;")


# -- the reference's rules, one by one (each result checked against stackcollapse-perf.pl) -----

RULES = {
    "process name with spaces": (
        b"V8 WorkerThread 25607 4794564.109216: 104345 cycles:\n\t7f12 foo (/lib/x.so)\n\n",
        {},
        {"V8_WorkerThread;foo": 104345},
    ),
    "last sample needs a blank line": (
        b"a1 1 1.0: 5 cpu-clock:\n\t1 f (m)\n\na1 1 2.0: 7 cpu-clock:\n\t1 g (m)\n",
        {},
        {"a1;f": 5},
    ),
    "first event is the filter": (
        b"p1 1 1.0: 5 cycles:\n\t1 f (m)\n\np1 1 1.5: 9 instructions:\n\t1 g (m)\n\n"
        b"p1 1 2.0: 3 cycles:\n\t1 f (m)\n\n",
        {},
        {"p1;f": 8},
    ),
    "period 0 counts 1, 00 counts 0, none counts 1": (
        b"p1 1 1.0: 0 cycles:\n\t1 f (m)\n\np1 1 1.0: 00 cycles:\n\t1 g (m)\n\n"
        b"p1 1 1.0: cycles:\n\t1 h (m)\n\n",
        {},
        {"p1;f": 1, "p1;g": 0, "p1;h": 1},
    ),
    "unknown symbols": (
        b"p1 1 1.0: 1 cycles:\n\tffffffff81 [unknown] ([unknown])\n"
        b"\t7f10 [unknown] (/usr/lib/libc.so.6)\n\t400 main+0x1f (/bin/p1)\n\n",
        {"addrs": True},
        {"p1;main;[libc.so.6 <7f10>];[unknown <ffffffff81>]": 1},
    ),
    "tidy-up": (
        b"p1 1 1.0: 1 cycles:\n\t1 net/http.(*Client).Do (/bin/go)\n"
        b"\t2 std::vector<int>::push_back(int const&) (/bin/c)\n"
        b"\t3 ns::(anonymous namespace)::run(int) (/bin/c)\n\t4 (skipped) (/bin/c)\n"
        b"\t5 RegExp:[&<>\"'] (/tmp/perf-1.map)\n\t6 a;b+0x1f (/bin/c)\n\n",
        {},
        {
            "p1;a:b;RegExp:[&<>];ns::(anonymous namespace)::run;std::vector<int>::push_back;"
            "net/http.(*Client).Do": 1
        },
    ),
    "java classes lose their L in java processes only": (
        b"java 1 1.0: 1 cycles:\n\t1 Ljava/lang/Thread;::run (/tmp/perf-1.map)\n"
        b"\t2 LBusy;::main (/tmp/perf-1.map)\n\n"
        b"node 2 1.0: 1 cycles:\n\t1 Ljava/lang/Thread;::run (/tmp/perf-1.map)\n\n",
        {"jit": True},
        {
            "java;LBusy:::main_[j];java/lang/Thread:::run_[j]": 1,
            "node;Ljava/lang/Thread:::run_[j]": 1,
        },
    ),
    "inlined and kernel frames": (
        b"p1 1 1.0: 1 cycles:\n\tffffffff81 native_safe_halt ([kernel.kallsyms])\n"
        b"\t10 outer->inner (/bin/p1)\n\t20 x (/boot/vmlinux)\n\n",
        {"kernel": True},
        {"p1;x_[k];outer;inner_[i];native_safe_halt_[k]": 1},
    ),
    "a header without a blank line before keeps the stack": (
        b"p1 1 1.0: 1 cycles:\n\t1 f (m)\np2 2 1.0: 1 cycles:\n\t1 g (m)\n\n",
        {},
        {"p2;g;f": 1},
    ),
    "a filtered header leaves the one in force": (
        b"p1 1 1.0: 1 cycles:\n\t1 f (m)\np1 1 1.0: 1 instructions:\n\t1 g (m)\n\n",
        {},
        {"p1;g;f": 1},
    ),
    "PID/TID suffixes": (
        b"swapper     0 [000] 1.0: 1 cpu-clock:\n\t1 idle (m)\n\n"
        b"swapper 0/0 [000] 1.0: 1 cpu-clock:\n\t1 idle (m)\n\n"
        b"iperf 27409/28744 [000] 1.0: 1 cpu-clock:\n\t1 send (m)\n\n",
        {"tid": True},
        {"iperf-27409/28744;send": 1, "swapper-?/0;idle": 2},
    ),
    "a frame on the header line is not read": (
        b"false 39654 19115.489713:          1 cycles:u:  ffffffff9b201293 [unknown] "
        b"([unknown])\n\n",
        {},
        {"false": 1},
    ),
    "a symbol the address runs into": (
        # the regex backtracks into the address or the space after it to find a symbol
        b"p1 1 1.0: 1 cycles:\n\tab (m)\n\tffff  (m)\n\tx  y (m)\n\n",
        {},
        {"p1;y; ;b": 1},
    ),
    "comments, garbage and blank runs": (
        b"# cmdline : perf record -g ./p1\n\n\nnot a line\np1 1 1.0: 2 cycles:\n"
        b"\t1 f (m)\n   \n\t2 main (m)\n\n\n",
        {},
        {"p1;main;f": 2},
    ),
}


@pytest.mark.parametrize("rule", list(RULES))
def test_reference_rules(fk, rule):
    data, options, expected = RULES[rule]
    assert fk.fold(data, **options) == expected


def test_input_forms(fk):
    data = suite_input("perf-dd-stacks-01")
    expected = fk.fold(data, kernel=True)
    assert fk.fold(bytearray(data), kernel=True) == expected
    assert fk.fold(memoryview(data), kernel=True) == expected
    assert fk.fold(data.decode(), kernel=True) == expected
    assert fk.fold(data.splitlines(keepends=True), kernel=True) == expected
    assert fk.fold(data.decode().splitlines(), kernel=True) == expected
    assert fk.fold(b"") == {} and fk.fold([]) == {}
    with pytest.raises(TypeError):
        fk.fold(12)


def test_names_that_are_not_utf8_keep_their_bytes(fk):
    data = b"pr\xffc 1 1.0: 1 cycles:\n\t1 f\xe9 (m)\n\n"
    folded = fk.fold(data)
    assert render(folded) == b"pr\xffc;f\xe9 1\n"


def test_counts_beyond_int64(fk):
    big = 2**63 - 1
    data = b"".join(b"p1 1 1.0: %d cycles:\n\t1 f (m)\n\n" % big for _ in range(3))
    data += b"p1 1 1.0: 123456789012345678901234567890 cycles:\n\t1 f (m)\n\n"
    assert fk.fold(data) == {"p1;f": 3 * big + 123456789012345678901234567890}


# -- fold_timed --------------------------------------------------------------------------------


def collapse_timed(rows: list[tuple[float, int, int, str, str, int]]) -> dict[str, int]:
    folded: Counter[str] = Counter()
    for _start, _pid, _tid, comm, stack, n in rows:
        folded[f"{comm};{stack}" if stack else comm] += n
    return dict(folded)


@pytest.mark.parametrize("option", ["none", "kernel", "jit", "all", "addrs"])
@pytest.mark.parametrize("name", SUITE_NAMES)
def test_fold_timed_sums_to_fold(fk, name, option):
    options = OPTIONS.get(option, {})
    data = suite_input(name)
    rows = fk.fold_timed(data, **options)
    assert rows == sorted(rows)
    assert collapse_timed(rows) == fk.fold(data, **options)


def test_fold_timed_fields(fk):
    data = (
        b"iperf 27409/28744 [000] 441995.133575: cpu-clock:\n\t1 send (m)\n\n"
        b"iperf 27409/28744 [001] 441995.933575: cpu-clock:\n\t1 send (m)\n\n"
        b"iperf 27409/28745 [001] 441996.000001: 3 cpu-clock:\n\t1 recv (m)\n\n"
        b"swapper 0/0 [000] 441996.5: cpu-clock:\n\n"
        b"dd 29776 666709.771979:   10101010 cpu-clock:\n\t1 write (m)\n\n"
        b"func_ab 15294 cpu-clock:\n\t1 a (m)\n\n"
    )
    assert fk.fold_timed(data) == [
        (0.0, -1, 15294, "func_ab", "a", 1),
        (441995.0, 27409, 28744, "iperf", "send", 2),
        (441996.0, 0, 0, "swapper", "", 1),
        (441996.0, 27409, 28745, "iperf", "recv", 3),
        (666709.0, -1, 29776, "dd", "write", 10101010),
    ]
    rows = fk.fold_timed(data, bucket=0.5)
    assert [r[0] for r in rows] == [0.0, 441995.0, 441995.5, 441996.0, 441996.5, 666709.5]
    for bad in (0, -1.0, math.inf, math.nan, "1"):
        with pytest.raises(ValueError):
            fk.fold_timed(data, bucket=bad)


# -- a live capture ----------------------------------------------------------------------------

PROGRAM = r"""
#include <stdlib.h>
__attribute__((noinline)) long hot_loop(long n) {
    volatile long s = 0;
    for (long i = 0; i < n; i++) s += i;
    return s;
}
__attribute__((noinline)) long cold_loop(long n) {
    volatile long s = 0;
    for (long i = 0; i < n; i++) s ^= i;
    return s;
}
int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 200000000;
    long r = 0;
    for (int k = 0; k < 4; k++) { r += hot_loop(n); r += cold_loop(n / 10); }
    return (int)(r & 1);
}
"""


@pytest.fixture(scope="module")
def live_capture(tmp_path_factory) -> bytes:
    need_tool("perf", "apt install linux-perf (make test installs it)")
    need_tool("gcc", "apt install gcc")
    tmp = tmp_path_factory.mktemp("live")
    (tmp / "prog.c").write_text(PROGRAM)
    subprocess.run(
        ["gcc", "-O1", "-g", "-fno-omit-frame-pointer", "-o", "prog", "prog.c"],
        cwd=tmp,
        check=True,
        timeout=60,
    )
    record = subprocess.run(
        ["perf", "record", "-e", "cpu-clock", "-F", "999", "-g", "-o", "perf.data", "./prog"],
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert record.returncode == 0, f"perf record failed: {record.stderr}"
    script = subprocess.run(
        ["perf", "script", "-i", "perf.data"], cwd=tmp, capture_output=True, timeout=120
    )
    assert script.returncode == 0, f"perf script failed: {script.stderr.decode()}"
    return script.stdout


@pytest.mark.slow
def test_live_capture(fk, live_capture):
    folded = fk.fold(live_capture)
    hot = sum(n for k, n in folded.items() if k.endswith(";hot_loop"))
    cold = sum(n for k, n in folded.items() if k.endswith(";cold_loop"))
    assert hot > 3 * cold > 0, folded
    # root first: the process, then main, then the loop it calls
    assert any(k.startswith("prog;") and "main;hot_loop" in k for k in folded), folded
    assert not any("hot_loop;main" in k for k in folded)
    assert render(folded) == render(load("fold", pure=True).fold(live_capture))


@pytest.mark.slow
def test_live_capture_buckets(fk, live_capture):
    rows = fk.fold_timed(live_capture)
    assert collapse_timed(rows) == fk.fold(live_capture)
    starts = sorted({r[0] for r in rows})
    assert starts[0] > 0 and all(s == math.floor(s) for s in starts)
    assert len(starts) <= starts[-1] - starts[0] + 1 <= 60  # a run of a few seconds
    # default perf script prints one id, the TID: pid unknown (-1), one thread of "prog"
    assert {(r[1], r[3]) for r in rows if "hot_loop" in r[4]} == {(-1, "prog")}
    assert len({r[2] for r in rows if r[3] == "prog"}) == 1
    tenth = fk.fold_timed(live_capture, bucket=0.1)
    assert collapse_timed(tenth) == collapse_timed(rows)
    assert all(abs(r[0] / 0.1 - round(r[0] / 0.1)) < 1e-6 for r in tenth)
    assert len({r[0] for r in tenth}) > len(starts)


# -- the two implementations agree -------------------------------------------------------------


@pytest.mark.parametrize("path", real_inputs(), ids=lambda p: p.stem)
def test_implementations_agree_on_real_inputs(both, path):
    cy, py = both
    data = path.read_bytes()
    for options in [*OPTIONS.values(), {"pid": True, "kernel": True, "addrs": True}]:
        assert cy.fold(data, **options) == py.fold(data, **options)
    for options in ({}, {"kernel": True, "jit": True, "addrs": True}):
        assert cy.fold_timed(data, **options) == py.fold_timed(data, **options)


COMMS = st.sampled_from(
    [b"java", b"V8 WorkerThread", b"perf", b"a", b"kworker/0:1", b"x y 12 z", b"swapper",
     b"py\xc3\xa9", b"javac", b"  lead", b"n;m"]
)  # fmt: skip
IDS = st.sampled_from([b"123", b"12/34", b"0/0", b"0", b"00", b"1//2", b"1/", b"12x", b"7/0"])
SYMBOLS = st.sampled_from(
    [b"[unknown]", b"foo+0x1f", b"a->b", b"->x", b"x->", b"(anon)", b"Lfoo/Bar;::baz",
     b"net/http.(*Client).Do", b"f(anonymous namespace)::g(int)", b'say "hi"', b"a;b",
     b"g_[i]", b"sp ace", b"main", b"+0x1f", b"x.(y).", b"\xff"]
)  # fmt: skip
DSOS = st.sampled_from(
    [b"[kernel.kallsyms]", b"/tmp/perf-123.map", b"[unknown]", b"/boot/vmlinux", b"x (y) z",
     b"/lib/libc.so.6", b"", b"a)b"]
)  # fmt: skip
SPACE = st.sampled_from([b" ", b"\t", b"  ", b"", b"\r", b"\x0b"])
TEXT = st.binary(max_size=12).map(lambda b: b.replace(b"\n", b""))


@st.composite
def header_lines(draw) -> bytes:
    parts = [draw(COMMS), draw(st.sampled_from([b" ", b"    ", b"\t"])), draw(IDS)]
    if draw(st.booleans()):
        parts.append(b" [%03d]" % draw(st.integers(0, 999)))
    if draw(st.booleans()):
        parts.append(b" %d.%06d:" % (draw(st.integers(0, 10**7)), draw(st.integers(0, 999999))))
    if draw(st.booleans()):
        # a period is perf's u64; 40 lines of up to 2**58 cannot add up past it (beyond
        # 2**64 the reference counts in floats: test_counts_past_u64_stay_exact)
        parts.append(b" %d" % draw(st.integers(0, 2**58)))
    parts.append(draw(st.sampled_from([b" cycles:", b" cycles:u:", b" cpu-clock:", b"", b":"])))
    parts.append(draw(SPACE))
    return b"".join(parts)


@st.composite
def stack_lines(draw) -> bytes:
    symbol = draw(st.one_of(SYMBOLS, TEXT, st.tuples(SYMBOLS, TEXT).map(b"".join)))
    return b"%s%s %s%s(%s)%s" % (
        draw(SPACE),
        draw(st.sampled_from([b"ffffffff8103ce3b", b"7f12", b"x", b"a_b"])),
        symbol,
        draw(st.sampled_from([b" ", b"", b"  "])),
        draw(DSOS),
        draw(st.sampled_from([b"", b")", b" x", b"\r"])),
    )


perf_texts = st.lists(
    st.one_of(header_lines(), stack_lines(), stack_lines(), st.just(b""), TEXT), max_size=40
).map(lambda lines: b"\n".join(lines) + b"\n")
option_sets = st.fixed_dictionaries(
    {k: st.booleans() for k in ("pid", "tid", "kernel", "jit", "addrs")}
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=perf_texts, options=option_sets, filtered=st.booleans())
def test_implementations_agree_on_generated_text(data, options, filtered):
    cy, py = compiled_kernel("fold"), load("fold", pure=True)
    event = "cycles" if filtered else None
    assert cy.fold(data, event_filter=event, **options) == py.fold(
        data, event_filter=event, **options
    )
    timed = {k: v for k, v in options.items() if k not in ("pid", "tid")}
    assert cy.fold_timed(data, bucket=0.25, **timed) == py.fold_timed(data, bucket=0.25, **timed)


# FlameGraph's own script, vendored with its licence (tests/fixtures/flamegraph/SOURCES.md)
REFERENCE = SUITE / "reference" / "stackcollapse-perf.pl"


def reference(path: Path, flags: list[str]) -> bytes:
    perl = need_tool("perl", "apt install perl (make test installs it)")
    ref = subprocess.run([perl, str(REFERENCE), *flags, str(path)], capture_output=True,
                         timeout=60)  # fmt: skip
    assert ref.returncode == 0, ref.stderr
    return ref.stdout


def test_counts_past_u64_stay_exact(tmp_path):
    """Where a stack's count passes 2**64 the reference switches to a float (1.84467440737096e+19,
    its last digits lost); para's counts stay exact integers, in both implementations."""
    periods = [2**64 - 1, 2**64 - 1, 12345]
    data = b"".join(b"java 123 0.000000: %d cycles: \n\n" % p for p in periods)
    path = tmp_path / "big.txt"
    path.write_bytes(data)
    assert reference(path, []) != b"java %d\n" % sum(periods)  # the reference rounds
    for mod in (compiled_kernel("fold"), load("fold", pure=True)):
        assert render(mod.fold(data)) == b"java %d\n" % sum(periods)


def test_the_vendored_reference_is_the_suites_tool():
    """The script answers its own regression suite as SOURCES.md says: 70 results exactly, the
    8 stale ones but for the leading L of Java classes."""
    exact = 0
    for name in SUITE_NAMES:
        for option in OPTIONS:
            got = reference(SUITE / f"{name}.txt", [f"--{option}"])
            expected = (SUITE / "results" / f"{name}-collapsed-{option}.txt").read_bytes()
            if (name, option) in STALE_JAVA_L:
                assert got != expected and got == strip_java_class_l(expected), (name, option)
            else:
                assert got == expected, (name, option)
                exact += 1
    assert exact == 70


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=perf_texts, options=option_sets)
def test_against_the_reference(tmp_path_factory, data, options):
    path = tmp_path_factory.mktemp("ref") / "in.txt"
    path.write_bytes(data)
    expected = reference(path, [f"--{k}" for k, on in options.items() if on])
    for mod in (compiled_kernel("fold"), load("fold", pure=True)):
        assert render(mod.fold(data, **options)) == expected


# -- para fold ---------------------------------------------------------------------------------


def test_command_on_a_file():
    path = SUITE / "perf-java-stacks-01.txt"
    result = CliRunner().invoke(fold_command, ["--all", str(path)])
    assert result.exit_code == 0, result.output
    expected = (SUITE / "results" / "perf-java-stacks-01-collapsed-all.txt").read_bytes()
    assert result.stdout_bytes == expected


def test_command_on_stdin():
    data = suite_input("perf-numa-stacks-01")
    for args in (["--tid"], ["--tid", "-"]):
        result = CliRunner().invoke(fold_command, args, input=data)
        assert result.exit_code == 0, result.output
        expected = SUITE / "results" / "perf-numa-stacks-01-collapsed-tid.txt"
        assert result.stdout_bytes == expected.read_bytes()


def test_command_event_filter():
    data = perf_script("uppp-firefox-firefox-profiler")
    result = CliRunner().invoke(fold_command, ["--event-filter", "cycles:uppp"], input=data)
    assert result.exit_code == 0
    assert result.stdout_bytes == CliRunner().invoke(fold_command, input=data).stdout_bytes
    result = CliRunner().invoke(fold_command, ["--event-filter", "cycles:ppp"], input=data + b"\n")
    assert result.exit_code == 0
    assert result.stdout_bytes.startswith(b"FS_Broker;[unknown];__libc_recvmsg;")
    assert result.stdout_bytes.endswith(b";native_write_msr 1\n")


def test_command_on_empty_and_special_files(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    for path in (str(empty), os.devnull):
        result = CliRunner().invoke(fold_command, [path])
        assert (result.exit_code, result.stdout_bytes) == (0, b""), result.output


def test_command_missing_file(tmp_path):
    missing = tmp_path / "nope.perf.txt"
    result = CliRunner().invoke(fold_command, [str(missing)])
    assert isinstance(result.exception, ParaError)
    assert str(missing) in result.exception.message
    assert result.exception.hint


def test_main_reports_errors(tmp_path, capsys):
    assert main([str(tmp_path / "nope.txt")]) == 1
    assert "nope.txt: no such file" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 1
    assert f"cannot read {tmp_path}" in capsys.readouterr().err
    assert main(["--no-such-option"]) == 2


def test_main_writes_the_folded_file(tmp_path, capfdbinary):
    path = SUITE / "perf-dd-stacks-01.txt"
    assert main(["--addrs", str(path)]) == 0
    expected = (SUITE / "results" / "perf-dd-stacks-01-collapsed-addrs.txt").read_bytes()
    assert capfdbinary.readouterr().out == expected
