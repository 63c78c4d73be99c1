"""Live samples of simulated nodes running one job, for the sharded live view's tests and
benchmark (issue 14): each node's `job` row carries its processes' CPU ticks, so the job's
cores on a node are known exactly (ticks per second / 100) and so is its total."""

from __future__ import annotations

from typing import Any

from para.live.metrics import LAYOUTS

T0 = 1_795_000_000_000


def job_sample(job: str, ticks: int, rss: int, cpus: int = 2) -> list[Any]:
    """A `job` row: `ticks` of CPU time so far (utime), `rss` bytes resident."""
    lay = LAYOUTS["job"]
    row: list[Any] = [None] * len(lay.cols)
    for k, v in {
        "job": job, "procs": 1, "threads": 1, "utime": ticks, "stime": 0, "rss_bytes": rss,
        "read_bytes": 0, "write_bytes": 0, "cpus": cpus, "scheduler": "slurm",
    }.items():  # fmt: skip
        row[lay.index[k]] = v
    return row


def node_rows(job: str, k: int, ticks_per_s: int, rss: int = 100 << 20) -> dict[str, Any]:
    """The rows of second `k` of a node whose share of `job` burns `ticks_per_s` a second."""
    return {"job": [job_sample(job, ticks_per_s * k, rss)]}
