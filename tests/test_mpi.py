"""Real Open MPI jobs under `mpirun ... para profile --functions` (issue 10 items 5-7): the
ranks told apart, the job's CPUs, the MPI time of each rank against the program's own
MPI_Wtime accounting, and the rules: a barrier imbalance and a straggler are load
imbalance, an allreduce-heavy loop is communication.  Each program prints, per rank, its
own time in MPI and its CPU affinity: the independent source."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from para.analyzer.analysis import analyse
from para.analyzer.job import Job
from para.formats import ParaFile

from .conftest import FIXTURES, REPO, need_tool, para_cmd

pytestmark = pytest.mark.slow

HINT = "apt install openmpi-bin libopenmpi-dev (make test installs them)"
SAID = re.compile(
    r"rank (?P<rank>\d+) total (?P<total>[\d.]+) mpi (?P<mpi>[\d.]+) "
    r"cpus (?P<cpus>[\d,]+|-) check"
)
PROGRAM = FIXTURES / "mpi" / "ranks.c"  # prints each rank's own MPI time and affinity
MPI4PY_PROGRAM = """
import sys
from mpi4py import MPI

comm = MPI.COMM_WORLD
rank = comm.Get_rank()


def work(n):
    s = 0.0
    for i in range(n):
        s += i * 0.5 / (i + 1)
    return s


unit, steps = int(sys.argv[1]), int(sys.argv[2])
t0, mpi = MPI.Wtime(), 0.0
for k in range(steps):
    work(unit * (3 if rank == 0 else 1))
    w = MPI.Wtime()
    comm.Barrier()
    mpi += MPI.Wtime() - w
print(f"rank {rank} total {MPI.Wtime() - t0:.4f} mpi {mpi:.4f} cpus - check 0", flush=True)
"""


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_tool("mpirun", HINT)
    need_tool("mpicc", HINT)
    need_tool("perf", "apt install linux-perf")
    d = tmp_path_factory.mktemp("mpi")
    # as Debian builds: -O2, no frame pointers
    subprocess.run(["mpicc", "-O2", "-g", "-o", str(d / "ranks"), str(PROGRAM)], check=True)
    return d / "ranks"


def mpirun(tmp_path: Path, np: int, opts: list[str], cmd: list[str]
           ) -> tuple[Path, dict[int, dict[str, object]]]:  # fmt: skip
    """Run CMD as NP ranks, each under `para profile --functions`; the node's file and what
    each rank said about itself."""
    e = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
             TMPDIR=str(tmp_path))  # fmt: skip
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    for k in list(e):
        if k.startswith(("SLURM_", "OMPI_COMM", "PMI", "PBS_", "LSB_")):
            del e[k]
    r = subprocess.run(
        ["mpirun", *opts, "-np", str(np), *para_cmd(), "profile", "-q", "--no-counters",
         "--functions", "-o", "run-{rank}.para", "--", *cmd],
        cwd=tmp_path, env=e, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    said = {}
    # mpirun forwards each rank's output as it reads it: one rank's line may run into the
    # other's
    for m in SAID.finditer(r.stdout):
        cpus = {int(c) for c in m["cpus"].split(",")} if m["cpus"] != "-" else set()
        said[int(m["rank"])] = {"total": float(m["total"]), "mpi": float(m["mpi"]), "cpus": cpus}
    assert sorted(said) == list(range(np)), r.stdout
    files = list(tmp_path.glob("run-*.para"))
    assert [f.name.split(".")[0] for f in files] == ["run-0"], files  # the lowest rank
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("para-")]  # no leftovers
    return files[0], said


def report(path: Path) -> tuple[dict[str, dict[str, object]], dict[int, dict[str, object]]]:
    with Job([path]) as job:
        doc = analyse(job).doc
    rules = {o["id"]: o for o in doc["rules"]}
    ranks = {r["rank"]: r for r in doc["ranks"]}
    return rules, ranks


def bottleneck(path: Path, rid: str) -> dict[str, object] | None:
    with Job([path]) as job:
        a = analyse(job)
    return next((b for b in a.bottlenecks if b["id"] == rid), None)


def test_barrier_imbalance_is_load_imbalance_with_the_mpi_wait_as_evidence(tmp_path, program):
    """The issue's case: rank 0 does 4x the work of rank 1 between barriers (2 ranks, each
    bound to a core).  No rule fired; the first rank's affinity was the job's CPUs."""
    path, said = mpirun(tmp_path, 2, ["--bind-to", "core"], [str(program), "barrier",
                                                               "10000000", "25"])  # fmt: skip
    with ParaFile(path) as pf:
        meta = pf.meta
        proc_ranks = {r["rank"] for r in pf.read_table("proc").to_pylist()}
        stacks = pf.read_table("stacks").to_pylist()
    # item 5: the union of the ranks' affinities, as each rank printed it
    union = set().union(*(s["cpus"] for s in said.values()))
    assert meta["allowed_cpus"] == len(union) and meta["cpus"]["ranks"] == 2
    # item 6: proc rows carry the rank
    assert proc_ranks == {0, 1} and meta["ranks_on_node"] == 2
    # item 7: callers known through Open MPI's libraries (no frame pointers): dwarf
    assert meta["functions"]["call_graph"] == "dwarf"
    in_mpi = [s for s in stacks if "MPI_Barrier" in s["stack"]]
    known = sum(s["samples"] for s in in_mpi if ";main;MPI_Barrier;" in s["stack"])
    assert in_mpi and known >= 0.9 * sum(s["samples"] for s in in_mpi)
    rules, ranks = report(path)
    # the MPI share of each rank against the program's own MPI_Wtime accounting
    for r, s in said.items():
        own = 100 * float(s["mpi"]) / float(s["total"])  # type: ignore[arg-type]
        assert abs(ranks[r]["mpi_pct"] - own) < 20, (r, ranks[r], own)
    assert ranks[1]["mpi_pct"] > 50 > ranks[0]["mpi_pct"] + 30
    assert rules["load_imbalance"]["status"] == "fired"
    ev = bottleneck(path, "load_imbalance")
    assert ev is not None and "busiest rank 0" in str(ev["evidence"])
    assert "rank 1 " in str(ev["evidence"]) and "MPI" in str(ev["evidence"])
    assert rules["network_bound"]["status"] == "passed"


def test_allreduce_heavy_loop_is_communication(tmp_path, program):
    """2000 allreduces after each short compute step (0.2 M iterations: a fifth of the
    allreduces' time on an idle machine; a loaded one only makes the ranks wait longer)."""
    path, said = mpirun(tmp_path, 2, ["--bind-to", "core"], [str(program), "allreduce",
                                                               "200000", "1000"])  # fmt: skip
    own = [float(s["mpi"]) / float(s["total"]) for s in said.values()]  # type: ignore[arg-type]
    assert min(own) > 0.5  # the program itself says it communicates most of the time
    rules, ranks = report(path)
    assert rules["network_bound"]["status"] == "fired", rules["network_bound"]
    assert rules["load_imbalance"]["status"] == "passed", rules["load_imbalance"]
    assert min(r["mpi_pct"] for r in ranks.values()) >= 30


def test_a_straggler_rank_is_named(tmp_path, program):
    """Three ranks on two cores (oversubscribed: waiting ranks yield the CPU), the last one
    does 3x the work: it is the busiest rank and the straggler."""
    path, said = mpirun(tmp_path, 3, ["--oversubscribe", "--bind-to", "none"],
                        [str(program), "straggler", "10000000", "20"])  # fmt: skip
    waits = {r: float(s["mpi"]) for r, s in said.items()}  # type: ignore[arg-type]
    assert waits[2] < min(waits[0], waits[1])  # the program: the others waited for rank 2
    rules, _ = report(path)
    assert rules["load_imbalance"]["status"] == "fired"
    ev = str((bottleneck(path, "load_imbalance") or {})["evidence"])
    assert "busiest rank 2" in ev and "straggler ranks (over 1.1x the median): 2" in ev
    assert rules["network_bound"]["status"] == "passed"


def test_mpi4py_ranks(tmp_path, program):
    """An mpi4py program: rank 0 computes 3x in Python between barriers."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        from .conftest import cannot_run

        cannot_run("mpi4py is not installed", "pip install mpi4py (pyproject's test extra)")
    script = tmp_path / "imb.py"
    script.write_text(MPI4PY_PROGRAM)
    path, said = mpirun(tmp_path, 2, ["--bind-to", "core"], [sys.executable, str(script),
                                                               "200000", "10"])  # fmt: skip
    rules, ranks = report(path)
    assert set(ranks) == {0, 1}
    own = {r: 100 * float(s["mpi"]) / float(s["total"]) for r, s in said.items()}  # type: ignore[arg-type]
    for r in (0, 1):
        assert abs(ranks[r]["mpi_pct"] - own[r]) < 20, (r, ranks[r], own[r])
    assert rules["load_imbalance"]["status"] == "fired"
    assert "busiest rank 0" in str((bottleneck(path, "load_imbalance") or {})["evidence"])


def test_one_para_around_mpirun_tells_the_ranks_apart(tmp_path, program):
    """`para profile -- mpirun ...`: one para, the ranks are descendants of its command;
    their rank comes from their own environment."""
    e = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    out = tmp_path / "outer.para"
    r = subprocess.run(
        [*para_cmd(), "profile", "-q", "--no-counters", "--functions", "-o", str(out), "--",
         "mpirun", "--bind-to", "core", "-np", "2", str(program), "barrier", "10000000", "20"],
        cwd=tmp_path, env=e, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    pids = {}
    with ParaFile(out) as pf:
        for row in pf.read_table("proc").to_pylist():
            pids.setdefault(row["rank"], set()).add(row["pid"])
    assert {0, 1} <= set(pids) and len(pids[0] & pids[1]) == 0
    rules, ranks = report(out)
    assert set(ranks) == {0, 1}
    assert ranks[1]["mpi_pct"] > 50 > ranks[0]["mpi_pct"] + 30
    assert "busiest rank 0" in str((bottleneck(out, "load_imbalance") or {})["evidence"])
