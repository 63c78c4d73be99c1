"""Live samples of simulated nodes running one job, for the sharded live view's tests and
benchmark (issue 14): each node's `job` row carries its processes' CPU ticks, so the job's
cores on a node are known exactly (ticks per second / 100) and so is its total."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from para.agent.collector_client import CollectorClient, Endpoint, Transient
from para.live.metrics import LAYOUTS

T0 = 1_795_000_000_000
HOSTS = ("n1", "n2", "n3", "n4")


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


class Nodes:
    """Four nodes sending their job's samples every `interval` seconds, each to its shard
    (n1, n2 to the first, n3, n4 to the second), failing over to the other when its own does
    not answer (as `para agent` does).  `cores`: what each gives the job, changed at will."""

    def __init__(self, pki: Path, urls: list[str], interval: float = 1.0):
        self.interval = interval
        self.pki, self.urls = pki, urls
        self.cores = {"n1": 0.3, "n2": 0.2, "n3": 0.4, "n4": 0.35}
        self.shard = {"n1": 0, "n2": 0, "n3": 1, "n4": 1}
        self.ticks = dict.fromkeys(HOSTS, 0.0)
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _client(self, host: str, i: int) -> CollectorClient:
        p = self.pki
        return CollectorClient(
            Endpoint(self.urls[i], p / "ca.crt", p / f"issued/{host}.crt",
                     p / f"issued/{host}.key", timeout=5.0)
        )  # fmt: skip

    def _run(self) -> None:
        clients: dict[tuple[str, int], CollectorClient] = {}
        last = time.time()
        while not self.stop.wait(self.interval):
            now = time.time()
            for host in HOSTS:
                self.ticks[host] += self.cores[host] * 100 * (now - last)
                sample = (
                    int(now * 1000),
                    {"job": [job_sample("7", int(self.ticks[host]), 1 << 30)]},
                )
                for attempt in (0, 1):
                    i = self.shard[host]
                    c = clients.get((host, i)) or clients.setdefault(
                        (host, i), self._client(host, i)
                    )
                    try:
                        c.push_live(host, [sample])
                        break
                    except Transient as e:
                        clients.pop((host, i)).close()
                        self.shard[host] = 1 - i  # fail over
                        if attempt:
                            self.errors.append(f"{host}: {e}")
            last = now
        for c in clients.values():
            c.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
