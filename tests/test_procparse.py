"""The /proc parsers: Cython kernel and pure-Python twin, on files captured from real machines."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from para.cython_ext import load
from para.formats.schema import MEMINFO_FIELDS

from .conftest import PROCFS

IMPLS = [pytest.param(False, id="cython"), pytest.param(True, id="python")]
TREES = ["prometheus-procfs", "node_exporter", "vm-amd-epyc-2cpu"]


@pytest.fixture(params=IMPLS)
def pp(request):
    mod = load("procparse", pure=request.param)
    if not request.param and mod.__name__.endswith("_py"):
        pytest.fail("the Cython kernel is not built (run `make venv`)")
    return mod


def read(tree: str, rel: str) -> bytes:
    return (PROCFS / tree / rel).read_bytes()


def test_twin_has_the_kernels_signatures():
    cy, py = load("procparse", pure=False), load("procparse", pure=True)
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


def test_live_files_agree(pp):
    """The running kernel's own files parse, and both implementations agree on them."""
    twin = load("procparse", pure=True)
    for rel, fn in (
        ("stat", "parse_stat"),
        ("diskstats", "parse_diskstats"),
        ("net/dev", "parse_net_dev"),
        ("self/stat", "parse_pid_stat"),
    ):
        data = Path("/proc", rel).read_bytes()
        assert getattr(pp, fn)(data) == getattr(twin, fn)(data)


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
    for pure in (False, True):
        try:
            results.append(("ok", load("procparse", pure=pure).parse_stat(data)))
        except ValueError:
            results.append(("error", None))
    assert results[0] == results[1]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_every_parser_fails_cleanly(data):
    for pure in (False, True):
        mod = load("procparse", pure=pure)
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
