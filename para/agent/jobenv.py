"""Who runs what: the batch job and MPI rank a process belongs to, from its environment."""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

# The rank a launcher gave a process.  The MPI launcher's own variables come first: under
# mpirun (or MPICH's mpiexec) inside a Slurm job, SLURM_PROCID is that of the launcher's
# daemon on the node (or 0, the batch script's), inherited by every rank it starts.
RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID")
LOCAL_RANK_VARS = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PALS_LOCAL_RANKID",
                   "SLURM_LOCALID")  # fmt: skip


@dataclass
class JobInfo:
    scheduler: str | None = None  # slurm | pbs | lsf | flux | None
    job_id: str | None = None
    step_id: str | None = None
    name: str | None = None
    user: str | None = None
    nodes: int | None = None
    node_list: str | None = None
    rank: int | None = None  # global rank when launched by srun/mpirun
    local_rank: int | None = None
    launch_key: str | None = None  # shared by every rank of one launch on one node
    cpus_on_node: int | None = None
    gpus: str | None = None
    local_size: int | None = None  # ranks of the launch on this node, when the launcher says

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _int(env: Mapping[str, str], *names: str) -> int | None:
    for n in names:
        v = env.get(n)
        if v is not None and v.strip().lstrip("-").isdigit():
            return int(v)
    return None


def _first(env: Mapping[str, str], *names: str) -> str | None:
    for n in names:
        v = env.get(n)
        if v:
            return v
    return None


def detect(env: Mapping[str, str] | None = None, ppid: int | None = None) -> JobInfo:
    env = os.environ if env is None else env
    info = JobInfo()
    if _first(env, "SLURM_JOB_ID", "SLURM_JOBID"):
        info.scheduler = "slurm"
        info.job_id = _first(env, "SLURM_JOB_ID", "SLURM_JOBID")
        info.step_id = _first(env, "SLURM_STEP_ID", "SLURM_STEPID")
        info.name = env.get("SLURM_JOB_NAME")
        info.user = env.get("SLURM_JOB_USER")
        info.nodes = _int(env, "SLURM_JOB_NUM_NODES", "SLURM_NNODES")
        info.node_list = _first(env, "SLURM_JOB_NODELIST", "SLURM_NODELIST")
        info.cpus_on_node = _int(env, "SLURM_CPUS_ON_NODE")
        info.gpus = _first(env, "SLURM_STEP_GPUS", "SLURM_JOB_GPUS")
    elif env.get("PBS_JOBID"):
        info.scheduler = "pbs"
        info.job_id = env["PBS_JOBID"]
        info.name = env.get("PBS_JOBNAME")
        info.user = env.get("PBS_O_LOGNAME")
        info.node_list = env.get("PBS_NODEFILE")
    elif env.get("LSB_JOBID"):
        info.scheduler = "lsf"
        info.job_id = env["LSB_JOBID"]
        info.name = env.get("LSB_JOBNAME")
        info.node_list = env.get("LSB_HOSTS") or env.get("LSB_MCPU_HOSTS")
    elif env.get("FLUX_JOB_ID"):
        info.scheduler = "flux"
        info.job_id = env["FLUX_JOB_ID"]
    info.rank = _int(env, *RANK_VARS)
    info.local_rank = _int(env, *LOCAL_RANK_VARS)
    info.local_size = _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS")
    if info.local_size is None and info.scheduler == "slurm":
        info.local_size = _slurm_tasks_here(env)
    info.user = info.user or _user()
    info.gpus = info.gpus or env.get("CUDA_VISIBLE_DEVICES")
    if info.rank is not None or info.local_rank is not None:
        info.launch_key = _launch_key(info, env, os.getppid() if ppid is None else ppid)
    return info


def _slurm_tasks_here(env: Mapping[str, str]) -> int | None:
    """Tasks of the step on this node: SLURM_STEP_TASKS_PER_NODE ('2(x3),1': 2 on each of the
    first three nodes, 1 on the fourth) at SLURM_NODEID."""
    spec, node = env.get("SLURM_STEP_TASKS_PER_NODE"), _int(env, "SLURM_NODEID")
    if not spec or node is None:
        return None
    i = 0
    for part in spec.split(","):
        count, _, rep = part.partition("(x")
        try:
            n, times = int(count), int(rep.rstrip(")") or 1)
        except ValueError:
            return None
        if node < i + times:
            return n
        i += times
    return None


def _launch_key(info: JobInfo, env: Mapping[str, str], ppid: int) -> str:
    """A name every rank of one launch on this node computes alike, and no other launch does."""
    if info.job_id:
        return f"{info.scheduler}-{info.job_id}-{info.step_id or 'batch'}"
    ns = _first(env, "PMIX_NAMESPACE", "OMPI_MCA_ess_base_jobid")
    if ns:
        return f"mpi-{ns}"
    # mpirun without a scheduler: local ranks are children of one launcher daemon
    return f"ppid-{ppid}"


def rank_from_environ(raw: bytes) -> int | None:
    """The rank in a process's /proc/PID/environ (NUL-separated NAME=value), if any."""
    found: dict[str, str] = {}
    for item in raw.split(b"\0"):
        name, eq, value = item.partition(b"=")
        if eq and name in _RANK_NAMES:
            found[name.decode()] = value.decode(errors="replace")
    return _int(found, *RANK_VARS) if found else None


_RANK_NAMES = {n.encode() for n in RANK_VARS}


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None
