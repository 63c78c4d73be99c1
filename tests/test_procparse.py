"""The /proc parsers: Cython kernel and pure-Python twin, on files captured from real machines."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from para.cython_ext import load
from para.formats.schema import MEMINFO_FIELDS

from .conftest import PROCFS, compiled_kernel

IMPLS = [pytest.param(False, id="cython"), pytest.param(True, id="python")]
TREES = ["prometheus-procfs", "node_exporter", "vm-amd-epyc-2cpu"]


@pytest.fixture(params=IMPLS)
def pp(request):
    return load("procparse", pure=True) if request.param else compiled_kernel("procparse")


def read(tree: str, rel: str) -> bytes:
    return (PROCFS / tree / rel).read_bytes()


def test_twin_has_the_kernels_signatures():
    cy, py = compiled_kernel("procparse"), load("procparse", pure=True)
    for name in (
        "parse_stat",
        "parse_keyed",
        "parse_net_dev",
        "parse_diskstats",
        "parse_pid_stat",
        "parse_pid_status_ctxt",
        "parse_pid_io",
        "parse_loadavg",
    ):
        assert callable(getattr(cy, name)) and callable(getattr(py, name))
        params = list(inspect.signature(getattr(py, name)).parameters)
        assert params == list(inspect.signature(getattr(cy, name)).parameters), name


def test_stat_laptop(pp):
    total, per_cpu, ctxt, intr, forks, running, blocked = pp.parse_stat(
        read("prometheus-procfs", "proc/stat")
    )
    assert total == [301854, 612, 111922, 8979004, 3552, 2, 3944, 0, 0, 0]
    assert [c for c, _ in per_cpu] == list(range(8))
    assert per_cpu[1][1][:4] == [47869, 23, 16474, 1110787]
    assert ctxt == 38014093 and intr == 73777505 and forks == 26442
    assert (running, blocked) == (2, 1)


def test_stat_needs_a_cpu_line(pp):
    with pytest.raises(ValueError, match="no 'cpu' line"):
        pp.parse_stat(b"ctxt 5\n")


def test_stat_garbage_names_the_line(pp):
    with pytest.raises(ValueError, match="line 2"):
        pp.parse_stat(b"cpu  1 2 3 4\ncpu0 1 x 3\n")


def test_meminfo_in_bytes(pp):
    keys = tuple(k.encode() for _, k, _ in MEMINFO_FIELDS)
    vals = dict(zip(keys, pp.parse_keyed(read("node_exporter", "proc/meminfo"), keys, True)))
    assert vals[b"MemTotal"] == 3742148 * 1024
    assert vals[b"MemAvailable"] is None  # this capture predates MemAvailable: None, not 0
    assert vals[b"Cached"] == 930888 * 1024


def test_vmstat_keys(pp):
    data = read("node_exporter", "proc/vmstat")
    pgfault, majfault, missing = pp.parse_keyed(data, (b"pgfault", b"pgmajfault", b"nope"), False)
    assert (pgfault, majfault, missing) == (2320168809, 507162, None)


def test_net_dev(pp):
    rows = dict(pp.parse_net_dev(read("prometheus-procfs", "proc/net/dev")))
    assert set(rows) >= {"lo", "eth0", "docker0"}
    assert rows["eth0"][0] == 874354587 and rows["eth0"][8] == 563352563  # rx, tx bytes


@pytest.mark.parametrize("tree", TREES)
def test_diskstats_all_kernel_layouts(pp, tree):
    rows = pp.parse_diskstats(read(tree, "proc/diskstats"))
    assert rows
    for name, vals in rows:
        assert len(vals) == 17 and name
        assert all(v is None or v >= 0 for v in vals)


def test_diskstats_sectors_become_bytes_and_old_kernels_give_none(pp):
    rows = dict(pp.parse_diskstats(read("prometheus-procfs", "proc/diskstats")))
    sda = rows["sda"]
    assert sda[0] == 25354637 and sda[2] == 1003346126 * 512 and sda[9] == 9653880
    # 14-column lines (kernels before 4.18) have no discard or flush fields
    short = [v for n, v in rows.items() if v[11] is None]
    assert short and all(v[15] is None for v in short)


def test_pid_stat_with_spaces_and_parens_in_comm(pp):
    pid, comm, state, ppid, *_ = pp.parse_pid_stat(read("prometheus-procfs", "proc/584/stat"))
    assert (pid, comm, state, ppid) == (1020, "(a b ) ( c d) ", "R", 28378)


def test_pid_stat_fields(pp):
    st = pp.parse_pid_stat(read("prometheus-procfs", "proc/26231/stat"))
    pid, comm, state, ppid, minflt, majflt, utime, stime, threads, start, vsize, rss, cpu = st[:13]
    kids = list(st[13:])
    assert (pid, comm, state, ppid, threads) == (26231, "vim", "R", 5392, 1)
    assert (minflt, majflt, utime, stime) == (32533, 26, 1677, 44)
    assert (start, vsize, rss, cpu) == (82375, 56274944, 1981, 0)
    assert kids == [158, 99]  # cutime, cstime: the children vim waited for


def test_pid_stat_a_lone_minus_is_not_a_number(pp):
    with pytest.raises(ValueError, match="field 4 is not a number"):
        pp.parse_pid_stat(b"1 (x) R -" + b" 0" * 36 + b"\n")


def test_pid_stat_truncated(pp):
    with pytest.raises(ValueError):
        pp.parse_pid_stat(b"12 (x) R 1 2 3")


def test_pid_status_and_io(pp):
    assert pp.parse_pid_status_ctxt(read("prometheus-procfs", "proc/26231/status")) == (
        4742839,
        1727500,
    )
    assert pp.parse_pid_io(read("prometheus-procfs", "proc/26231/io")) == (
        750339,
        818609,
        1024,
        2048,
    )


def test_live_files_agree():
    """The running kernel's own files parse, and both implementations agree on them."""
    cy, twin = compiled_kernel("procparse"), load("procparse", pure=True)
    for rel, fn in (
        ("stat", "parse_stat"),
        ("diskstats", "parse_diskstats"),
        ("net/dev", "parse_net_dev"),
        ("self/stat", "parse_pid_stat"),
        ("self/status", "parse_pid_status_ctxt"),
        ("self/io", "parse_pid_io"),
        ("loadavg", "parse_loadavg"),
    ):
        data = Path("/proc", rel).read_bytes()
        assert getattr(cy, fn)(data) == getattr(twin, fn)(data), rel
    keys = tuple(k.encode() for _, k, _ in MEMINFO_FIELDS)
    data = Path("/proc/meminfo").read_bytes()
    got = cy.parse_keyed(data, keys, True)
    assert got == twin.parse_keyed(data, keys, True) and got[0] is not None
    data = Path("/proc/vmstat").read_bytes()
    assert cy.parse_keyed(data, (b"pgfault", b"pgmajfault"), False) == twin.parse_keyed(
        data, (b"pgfault", b"pgmajfault"), False
    )


lines = st.lists(
    st.one_of(
        st.from_regex(r"cpu[0-9]{0,2} ( [0-9]{1,12}){0,12}", fullmatch=True),
        st.from_regex(
            r"(intr|ctxt|processes|procs_running) [0-9]{1,9}( [0-9]{1,3}){0,3}", fullmatch=True
        ),
        st.binary(max_size=40).filter(lambda b: b"\n" not in b),
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(lines.map(lambda ls: b"\n".join(x if isinstance(x, bytes) else x.encode() for x in ls)))
@example(b"cpu")  # a bare "cpu" line (the Cython kernel once called it a bad CPU name)
@example(b"cpu\ncpu0")
def test_fuzz_stat_twins_agree(data):
    results = []
    for mod in (compiled_kernel("procparse"), load("procparse", pure=True)):
        try:
            results.append(("ok", mod.parse_stat(data)))
        except ValueError:
            results.append(("error", None))
    assert results[0] == results[1]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_every_parser_fails_cleanly(data):
    for mod in (compiled_kernel("procparse"), load("procparse", pure=True)):
        for fn in (
            mod.parse_net_dev,
            mod.parse_diskstats,
            mod.parse_pid_stat,
            mod.parse_pid_status_ctxt,
            mod.parse_pid_io,
            mod.parse_loadavg,
        ):
            try:
                fn(data)
            except (ValueError, UnicodeDecodeError):
                pass


# -- every parser, both implementations, on generated files of the kernel's own layouts ---------
# The kernel prints space- or tab-separated decimal numbers (u64 counters stay below 2**63 in
# practice; a few /proc/PID/stat fields are negative); a field may be cut short (an older
# kernel), or corrupted (one token that is not a number).  Both implementations must return the
# same values, or both refuse the file.

SEP = st.sampled_from([" ", "  ", "\t", " \t "])
NUM = st.integers(0, 2**63 - 1).map(str)
BAD = st.sampled_from(["x", "1x", "-", "--1", "0x1f", "1.5", "", "+", "+5", "1_0", "\x0b7"])
NAME = st.from_regex(r"[a-z][a-z0-9_.-]{0,11}", fullmatch=True)


def outcome(fn, *args):  # type: ignore[no-untyped-def]
    try:
        return ("ok", repr(fn(*args)))  # repr: a NaN load equals itself
    except ValueError:  # UnicodeDecodeError is one
        return ("error", None)


def agree(fn: str, data: bytes, *args) -> None:  # type: ignore[no-untyped-def]
    cy, py = compiled_kernel("procparse"), load("procparse", pure=True)
    got = outcome(getattr(cy, fn), data, *args)
    assert got == outcome(getattr(py, fn), data, *args), (fn, data)


@st.composite
def fields(draw, n_min: int, n_max: int, number=NUM) -> str:  # type: ignore[no-untyped-def]
    vals = draw(st.lists(number, min_size=n_min, max_size=n_max))
    if vals and draw(st.integers(0, 4)) == 0:  # now and then one corrupted field
        vals[draw(st.integers(0, len(vals) - 1))] = draw(BAD)
    sep = draw(SEP)
    return sep + sep.join(vals)


def text(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


MEM_KEYS = [k for _, k, _ in MEMINFO_FIELDS]
KB = st.integers(0, 2**53 - 1).map(str)  # memory sizes in kB: in bytes they stay below 2**63


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([*MEM_KEYS, "Bogus", "pgfault", "HugePages_Total"]),
                  st.one_of(KB, BAD), st.sampled_from([" kB", "", " pages"]), SEP),
        max_size=len(MEM_KEYS) + 4, unique_by=lambda t: t[0],
    ),
    st.booleans(),
)  # fmt: skip
def test_keyed_twins_agree(lines, scale_kb):
    data = text([f"{k}:{sep}{v}{unit}" for k, v, unit, sep in lines])
    agree("parse_keyed", data, tuple(k.encode() for k in MEM_KEYS), scale_kb)
    vm = text([f"{k} {v}" for k, v, _, _ in lines])
    agree("parse_keyed", vm, (b"pgfault", b"Bogus", b"nope"), False)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(NAME, fields(0, 16)), max_size=6), st.booleans())
def test_net_dev_twins_agree(rows, header):
    head = ["Inter-|   Receive", " face |bytes    packets"] if header else []
    agree("parse_net_dev", text(head + [f"{name.rjust(6)}:{vals}" for name, vals in rows]))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 259), st.integers(0, 255), NAME,
                  st.sampled_from([11, 15, 17, 20]).flatmap(lambda n: fields(n, n))),
        max_size=6,
    )
)  # fmt: skip
def test_diskstats_twins_agree(rows):
    agree("parse_diskstats", text([f"{ma:4d}{mi:8d} {name}{vals}" for ma, mi, name, vals in rows]))


COMM = st.text(
    st.characters(blacklist_characters="\n\x00", blacklist_categories=("Cs",)), max_size=16
)


@settings(max_examples=300, deadline=None)
@example(1, "", "R", " -" + " 0" * 36)  # a lone "-" was a 0 to the kernel (hypothesis found it)
@given(st.integers(1, 4_194_304), COMM, st.sampled_from(list("RSDZTtXIW")),
       fields(30, 52, st.integers(-(2**40), 2**62).map(str)))  # fmt: skip
def test_pid_stat_twins_agree(pid, comm, state, rest):
    agree("parse_pid_stat", f"{pid} ({comm}) {state}{rest}\n".encode())


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), NUM, BAD), st.one_of(st.none(), NUM, BAD), SEP)
def test_pid_status_and_io_twins_agree(vol, invol, sep):
    status = "Name:\tpython3\nState:\tS (sleeping)\nThreads:\t1\n"
    if vol is not None:
        status += f"voluntary_ctxt_switches:{sep}{vol}\n"
    if invol is not None:
        status += f"nonvoluntary_ctxt_switches:{sep}{invol}\n"
    agree("parse_pid_status_ctxt", status.encode())
    io = f"rchar: {vol or 0}\nwchar: {invol or 0}\nsyscr: 1\nread_bytes: 4096\nwrite_bytes: 0\n"
    agree("parse_pid_io", io.encode())


LOAD = st.one_of(st.floats(0, 1e4, allow_nan=False).map(lambda x: f"{x:.2f}"), BAD, st.just("nan"))


@settings(max_examples=300, deadline=None)
@given(st.lists(LOAD, min_size=0, max_size=5), SEP)
def test_loadavg_twins_agree(loads, sep):
    agree("parse_loadavg", (sep.join(loads) + " 1/123 4567\n").encode())
    agree("parse_loadavg", sep.join(loads).encode())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_every_parser_twins_agree_on_any_bytes(data):
    for fn in ("parse_stat", "parse_net_dev", "parse_diskstats", "parse_pid_stat",
               "parse_pid_status_ctxt", "parse_pid_io", "parse_loadavg"):  # fmt: skip
        agree(fn, data)
    agree("parse_keyed", data, (b"MemTotal", b"a"), True)
