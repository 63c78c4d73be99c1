"""The CPUs of a job on a node (issue 10 item 5): the union of its ranks' affinities, within
the cgroup's cpuset, capped by its CPU quota and the scheduler's allocation.  Cgroup trees are
faked per test (v1 as Slurm 22.05 makes them, v2 unified) and the live machine is compared
with nproc."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from para.agent.jobcpus import cgroup_limits, format_cpu_list, job_cpus, parse_cpu_list

from .conftest import FIXTURES, need_tool

pytestmark = pytest.mark.no_kernel

CGROUPS = FIXTURES / "cgroup"  # real Slurm cgroup trees (tests/fixtures/cgroup/SOURCES.md)

V1_SELF = """12:cpuset:/slurm/uid_2001/job_77/step_0
11:cpu,cpuacct:/slurm/uid_2001/job_77/step_0
10:memory:/slurm/uid_2001/job_77/step_0
0::/
"""


def write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text + "\n")


@pytest.mark.parametrize(
    "text, cpus",
    [("0-3,8,10-11", {0, 1, 2, 3, 8, 10, 11}), ("5", {5}), ("", set()), ("0-1\n", {0, 1})],
)
def test_cpu_lists_both_ways(text, cpus):
    assert parse_cpu_list(text) == cpus
    assert parse_cpu_list(format_cpu_list(cpus)) == cpus


def test_union_of_ranks_bound_to_one_core_each():
    """mpirun --bind-to core: each rank has one core; the job has them all."""
    doc = job_cpus([{0}, {1}, {2}, {3}], proc_cgroup="")
    assert doc["cpus"] == 4 and doc["affinity"] == "0-3" and doc["ranks"] == 4


def test_v1_cpuset_and_quota_of_a_slurm_step(tmp_path):
    step = "slurm/uid_2001/job_77/step_0"
    write(tmp_path, f"cpuset/{step}/cpuset.effective_cpus", "2-5")
    write(tmp_path, f"cpu,cpuacct/{step}/cpu.cfs_quota_us", "-1")
    write(tmp_path, f"cpu,cpuacct/{step}/cpu.cfs_period_us", "100000")
    # the job's cgroup above the step holds the quota: 3 CPUs
    write(tmp_path, "cpu,cpuacct/slurm/uid_2001/job_77/cpu.cfs_quota_us", "300000")
    write(tmp_path, "cpu,cpuacct/slurm/uid_2001/job_77/cpu.cfs_period_us", "100000")
    cpuset, quota, where = cgroup_limits(V1_SELF, tmp_path)
    assert cpuset == {2, 3, 4, 5} and quota == 3.0 and where == "/" + step
    # ranks bound to 0-7 by a launcher that ignores the cgroup: the cpuset holds 4, quota 3
    doc = job_cpus([set(range(8))], proc_cgroup=V1_SELF, root=tmp_path)
    assert doc["cpus"] == 3 and doc["limited_by"] == "cgroup CPU quota"
    assert doc["cpuset"] == "2-5" and doc["quota_cpus"] == 3.0


def test_scheduler_allocation_caps_the_affinity(tmp_path):
    """proctrack/linuxproc without task/affinity: the affinity is the whole node, the job
    has SLURM_CPUS_ON_NODE of it."""
    doc = job_cpus([set(range(16))], scheduler_cpus=2, proc_cgroup="", root=tmp_path)
    assert doc["cpus"] == 2 and doc["limited_by"] == "scheduler allocation"
    # an allocation larger than what the ranks may run on does not add CPUs
    assert job_cpus([{0, 1}], scheduler_cpus=8, proc_cgroup="", root=tmp_path)["cpus"] == 2


def test_v2_unified_cpuset_and_cpu_max(tmp_path):
    write(tmp_path, "cgroup.controllers", "cpuset cpu io memory pids")
    write(tmp_path, "system.slice/slurmstepd.scope/job_9/cpuset.cpus.effective", "0-1")
    write(tmp_path, "system.slice/slurmstepd.scope/job_9/cpu.max", "150000 100000")
    write(tmp_path, "system.slice/cpu.max", "max 100000")
    proc = "0::/system.slice/slurmstepd.scope/job_9\n"
    cpuset, quota, _ = cgroup_limits(proc, tmp_path)
    assert cpuset == {0, 1} and quota == 1.5
    doc = job_cpus([{0, 1, 2, 3}], proc_cgroup=proc, root=tmp_path)
    assert doc["cpus"] == 2 and doc["cpuset"] == "0-1"


@pytest.mark.parametrize(
    "tree, pid, cpus",
    [("slurm-v2", 49276, {0}), ("slurm-v1", 177837, set(range(40)))],
)
def test_recorded_slurm_cgroups(tree, pid, cpus):
    """A task of a real Slurm job (cgroup v2: job_4 has CPU 0; v1: job_11 has 0-39), its
    cpuset read where Slurm set it, above the task's own cgroup."""
    root = CGROUPS / tree
    proc = (root / f"proc/{pid}/cgroup").read_text()
    cpuset, quota, _ = cgroup_limits(proc, root / "sys/fs/cgroup")
    assert cpuset == cpus and quota is None
    doc = job_cpus([set(range(64))], proc_cgroup=proc, root=root / "sys/fs/cgroup")
    assert doc["cpus"] == len(cpus)


def test_this_machine_agrees_with_nproc():
    """nproc counts the CPUs this process may run on (its affinity): with no CPU quota on
    this machine's cgroup, the job's CPUs are those."""
    need_tool("nproc", "apt install coreutils")
    n = int(subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout)
    doc = job_cpus([os.sched_getaffinity(0)])
    if "quota_cpus" in doc:
        assert doc["cpus"] <= n
    else:
        assert doc["cpus"] == n
