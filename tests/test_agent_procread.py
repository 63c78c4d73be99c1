"""The per-process reader kernel (_procread) against its pure-Python twin (procread_py)."""

from __future__ import annotations

import inspect
import os
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from para.cython_ext import load

from .conftest import FIXTURES, PROCFS, compiled_kernel

IMPLS = [pytest.param(False, id="cython"), pytest.param(True, id="python")]
PAGE = 4096


@pytest.fixture(params=IMPLS)
def pr(request):
    return load("procread", pure=True) if request.param else compiled_kernel("procread")


def test_same_signature():
    cy, py = compiled_kernel("procread"), load("procread", pure=True)
    assert list(inspect.signature(cy.read_pids).parameters) == list(
        inspect.signature(py.read_pids).parameters
    )


def opened(paths: list[Path | None]) -> tuple[int, ...]:
    return tuple(os.open(p, os.O_RDONLY) if p is not None else -1 for p in paths)


def close(fds) -> None:  # type: ignore[no-untyped-def]
    for t in fds:
        for fd in t:
            if fd >= 0:
                os.close(fd)


def test_captured_processes(pr):
    """/proc files of real machines (prometheus procfs 26231: stat, status and io)."""
    base = PROCFS / "prometheus-procfs/proc/26231"
    fds = [opened([base / "stat", base / "status", base / "io"])]
    try:
        (row,) = pr.read_pids(fds, PAGE)
    finally:
        close(fds)
    # `26231 (vim) R 5392 7446 5392 34835 7446 4218880 32533 309516 26 82 1677 44 ...`
    ppid, state, utime, stime, rss, vsize, threads, cpu, minflt, majflt, vol, invol = row[:12]
    assert (ppid, state, utime, stime, threads, cpu) == (5392, "R", 1677, 44, 1, 0)
    assert rss == 1981 * PAGE and vsize == 56274944 and (minflt, majflt) == (32533, 26)
    assert (vol, invol) == (4742839, 1727500)
    assert row[12:16] == (750339, 818609, 1024, 2048)  # rchar wchar read_bytes write_bytes
    assert row[16:18] == (158, 99)  # cutime, cstime: the children vim waited for
    assert row[18] == 82375  # start time


def test_live_children_agree_and_missing_files_are_null():
    cy, py = compiled_kernel("procread"), load("procread", pure=True)
    kids = [subprocess.Popen(["sleep", "30"]) for _ in range(4)]
    deadline = time.monotonic() + 60
    try:
        for k in kids:  # wait until each has exec'd and sleeps: its numbers stop changing
            while Path(f"/proc/{k.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "S":
                assert time.monotonic() < deadline, "sleep(1) did not start within 60 s"
                time.sleep(0.01)
        fds = [
            opened([Path(f"/proc/{k.pid}/stat"), Path(f"/proc/{k.pid}/status"), None]) for k in kids
        ]
        a, b = cy.read_pids(fds, PAGE), py.read_pids(fds, PAGE)
        assert a == b
        assert all(r is not None and r[1] == "S" and r[12] is None for r in a)
        kids[0].kill()
        kids[0].wait()
        a, b = cy.read_pids(fds, PAGE), py.read_pids(fds, PAGE)
        assert a[0] is None and b[0] is None  # an exited process's descriptor reads nothing
        close(fds)
    finally:
        for k in kids:
            k.kill()
            k.wait()


def stat_text(pid: int, comm: str, state: str, nums: list[int]) -> bytes:
    return (f"{pid} ({comm}) {state} " + " ".join(str(n) for n in nums) + "\n").encode()


@settings(max_examples=150, deadline=None)
@given(
    pid=st.integers(1, 4_000_000),
    comm=st.text(
        st.characters(blacklist_characters="\n\x00", blacklist_categories=("Cs",)), max_size=16
    ),  # fmt: skip
    state=st.sampled_from(list("RSDZTtXIW")),
    nums=st.lists(st.integers(-(2**40), 2**40), min_size=30, max_size=55),
    vol=st.one_of(st.none(), st.integers(0, 2**40)),
    io=st.one_of(st.none(), st.lists(st.integers(0, 2**50), min_size=4, max_size=4)),
)
def test_twins_agree_on_generated_files(tmp_path_factory, pid, comm, state, nums, vol, io):
    d = tmp_path_factory.mktemp("p")
    (d / "stat").write_bytes(stat_text(pid, comm, state, nums))
    status = "Name:\tx\nState:\tS\n"
    if vol is not None:
        status += f"voluntary_ctxt_switches:\t{vol}\nnonvoluntary_ctxt_switches:\t{vol // 3}\n"
    (d / "status").write_text(status)
    if io is not None:
        (d / "io").write_text(
            f"rchar: {io[0]}\nwchar: {io[1]}\nsyscr: 1\nsyscw: 2\nread_bytes: {io[2]}\n"
            f"write_bytes: {io[3]}\ncancelled_write_bytes: 0\n"
        )
    else:
        (d / "io").write_text("")
    fds = [opened([d / "stat", d / "status", d / "io"])]
    try:
        a = compiled_kernel("procread").read_pids(fds, PAGE)
        b = load("procread", pure=True).read_pids(fds, PAGE)
    finally:
        close(fds)
    assert a == b


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=500), st.binary(max_size=300))
def test_garbage_gives_none_or_a_row(tmp_path_factory, stat, status):
    d = tmp_path_factory.mktemp("g")
    (d / "stat").write_bytes(stat)
    (d / "status").write_bytes(status)
    fds = [opened([d / "stat", d / "status", None])]
    try:
        for mod in (compiled_kernel("procread"), load("procread", pure=True)):
            (r,) = mod.read_pids(fds, PAGE)
            assert r is None or (len(r) == 19 and isinstance(r[1], str))
    finally:
        close(fds)


def test_fixture_stat_of_the_agent_trees(pr):
    """The hand-written stat lines of tests/fixtures/cgroup parse as real ones do."""
    base = FIXTURES / "cgroup/slurm-v1/proc/177837"
    fds = [opened([base / "stat", base / "status", base / "io"])]
    try:
        (row,) = pr.read_pids(fds, PAGE)
    finally:
        close(fds)
    assert row[:4] == (177820, "R", 331356, 957) and row[6] == 40 and row[7] == 3
    assert row[10:12] == (5000, 123456) and row[16:] == (0, 0, 9000000, "vasp_std")
