"""The communication pattern of the rules: what counts as time in MPI, UCX, libfabric, NCCL,
OpenSHMEM ... and what does not (the kernel's tmpfs, whose functions are shmem_* too)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import duckdb
import pytest

from para.analyzer.analysis import analyse
from para.analyzer.job import Job
from para.analyzer.rules import COMM_FRAMES, COMM_PATTERN
from para.formats import ParaFile

from .conftest import cannot_run, need_tool, run_para

# Frames as `perf script` names them in Debian's Open MPI 4.1 (stripped plugins and all),
# recorded on this machine from a rank waiting in MPI_Barrier (frame pointers, then dwarf).
OPEN_MPI_FRAMES = [
    "imb;[mca_btl_vader.so]",
    "imb;[libopen-pal.so.40.30.2]",
    "imb;opal_progress",
    "imb;[unknown];[unknown];[unknown];[unknown];opal_progress@plt",
    "imb;_start;main;MPI_Barrier;ompi_coll_base_barrier_intra_recursivedoubling;"
    "ompi_request_default_wait;opal_progress;[mca_btl_vader.so]",
]
OTHER_LIBRARIES = [
    "app;[libucp.so.0.0.0]", "app;[libuct.so.0]", "app;[libucs.so.0]", "app;[libfabric.so.1]",
    "app;[libpsm2.so.2.2]", "app;[libnccl.so.2.18.3]", "app;[libmpi.so.40.30.4]",
    "app;[libopen-rte.so.40.30.2]", "app;main;PMPI_Allreduce", "app;ncclAllReduce",
    "app;ucp_worker_progress", "app;fi_cq_read", "app;psm2_mq_ipeek",
    "app;main;shmem_barrier_all", "app;shmem_int_sum_to_all", "app;shmem_putmem",
    "app;shmem_get64", "app;shmem_init", "app;[liboshmem.so.40]",
]  # fmt: skip
NOT_COMMUNICATION = [
    "app;main;work", "app;main;memcpy", "python3;_PyEval_EvalFrameDefault",
    "cp;entry_SYSCALL_64;do_syscall_64;ksys_read;vfs_read;shmem_file_read_iter",
    "app;asm_exc_page_fault;exc_page_fault;do_user_addr_fault;handle_mm_fault;shmem_fault",
    "app;shmem_get_folio_gfp", "app;shmem_write_begin", "app;shmem_put_super",
]  # fmt: skip


def _re2(stack: str) -> bool:
    with duckdb.connect() as con:
        return bool(con.execute("SELECT regexp_matches(?, ?)", [stack, COMM_PATTERN]).fetchone()[0])


@pytest.mark.parametrize("stack", OPEN_MPI_FRAMES + OTHER_LIBRARIES)
def test_communication_frames_match_by_symbol_or_library(stack):
    assert COMM_FRAMES.search(stack), stack
    # the same pattern in DuckDB (RE2), where the rules use it
    assert _re2(stack)


@pytest.mark.parametrize("stack", NOT_COMMUNICATION)
def test_other_frames_do_not_match(stack):
    assert not COMM_FRAMES.search(stack), stack
    assert not _re2(stack)


def test_no_function_of_the_running_kernels_tmpfs_is_communication():
    """Every shmem_* function of this kernel (its symbol table) is tmpfs, not OpenSHMEM."""
    try:
        text = Path("/proc/kallsyms").read_text()
    except OSError as e:
        cannot_run(f"/proc/kallsyms cannot be read ({e})", "run the tests on Linux")
    names = {ln.split()[2] for ln in text.splitlines() if " shmem_" in ln and len(ln.split()) > 2}
    names = {n for n in names if n.startswith("shmem_") and not n.startswith("shmem_init")}
    if len(names) < 10:  # addresses hidden for non-root (kptr_restrict) leave names; few = odd
        cannot_run(f"only {len(names)} shmem_ symbols in /proc/kallsyms", "run as root")
    matched = sorted(n for n in names if COMM_FRAMES.search(n))
    # shmem_init (tmpfs's boot-time set-up, never on a running program's stack) shares its
    # name with OpenSHMEM's and is left out above
    assert matched == [], matched


SHM_IO = """
import os, sys, tempfile, time
d = tempfile.mkdtemp(dir="/dev/shm")
p = os.path.join(d, "f")
buf = b"x" * (1 << 20)
t = time.monotonic()
try:
    while time.monotonic() - t < float(sys.argv[1]):
        with open(p, "wb") as f:
            for _ in range(16):
                f.write(buf)
        with open(p, "rb") as f:
            while f.readinto(bytearray(1 << 20)):
                pass
        os.unlink(p)
finally:
    os.rmdir(d)
"""


@pytest.mark.slow
def test_io_on_dev_shm_is_not_network_bound(tmp_path):
    """Issue 11: a program reading and writing files on /dev/shm fired network_bound, its
    kernel frames (shmem_file_read_iter ...) being taken for OpenSHMEM."""
    need_tool("perf", "apt install linux-perf")
    if not os.path.isdir("/dev/shm") or not os.access("/dev/shm", os.W_OK):
        cannot_run("no writable /dev/shm", "mount a tmpfs on /dev/shm")
    script = tmp_path / "shm.py"
    script.write_text(SHM_IO)
    out = tmp_path / "shm.para"
    r = run_para("profile", "-q", "--functions", "-o", str(out), "--",
                 sys.executable, str(script), "3")  # fmt: skip
    assert r.returncode == 0, r.stderr
    with ParaFile(out) as pf:
        # on CPU: beside a CPU hog on each core half the program's rows are its Python
        # thread waiting for a CPU (state "ready"), which the rules do not count (they
        # once made the tmpfs frames 29.8 % of all rows, read as "no kernel frames")
        rows = [x for x in pf.read_table("stacks").to_pylist() if x["state"] == "cpu"]
    total = sum(x["samples"] for x in rows)
    tmpfs = sum(x["samples"] for x in rows if re.search(r"(^|;)shmem_", x["stack"]))
    if not tmpfs:  # no kernel frames: perf_event_paranoid hides them from non-root
        cannot_run(f"none of {total} samples in tmpfs frames", "run as root (kernel stacks)")
    # most of them (92-95 % quiet and beside CPU hogs): taken for communication they would
    # read far over the 5 % below
    assert tmpfs >= 0.3 * total, f"{tmpfs} of {total} samples in tmpfs frames"
    with Job([out]) as job:
        doc = analyse(job).doc
    net = next(o for o in doc["rules"] if o["id"] == "network_bound")
    assert net["status"] == "passed", net
    assert net["value"] < 5
