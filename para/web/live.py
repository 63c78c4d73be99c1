"""The cluster now, from the live stream the collector keeps (para.live.view): every node's
last minutes as nodes-by-time matrices, the jobs running, the alerts firing.

Two sources, one interface (`poll(request) -> the document para top draws`): the collector
this process runs (`para collector serve --web`, handed in by para/cli.py), or a collector
elsewhere asked over Arrow Flight with a reader's credential (`para web --collector URL`,
the way `para top --collector` asks).  One poll serves every viewer for a second.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from para.errors import ParaError
from para.live.view import HISTORY_S, TOP_METRICS

METRICS = {
    "cpu": ("CPU busy", "%"),
    "mem": ("memory used", "%"),
    "io": ("storage I/O", "bytes/s"),
    "net": ("network", "bytes/s"),
    "gpu": ("GPU busy", "%"),
}
assert set(METRICS) == set(TOP_METRICS)


class InProcess:
    """The collector of this process: `summary` is its AlertService.summary."""

    label = "this collector"

    def __init__(self, summary: Callable[[dict[str, Any]], dict[str, Any]]):
        self._summary = summary

    def poll(self, request: dict[str, Any]) -> dict[str, Any]:
        return self._summary(request)

    def close(self) -> None:
        pass


class Live:
    def __init__(self, source: Any | None, span_s: int = 300, columns: int = 60):
        self.source = source
        self.span_s = max(10, min(span_s, HISTORY_S))
        self.columns = max(2, columns)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._hosts: list[str] = []

    @property
    def available(self) -> bool:
        return self.source is not None

    def _poll(self, metric: str) -> dict[str, Any]:
        assert self.source is not None
        bucket = max(1, -(-self.span_s // self.columns))
        req = {"history": self._hosts, "points": self.span_s, "bucket": bucket, "metrics": [metric]}
        doc: dict[str, Any] = self.source.poll(req)
        hosts = [n["host"] for n in doc.get("nodes", [])]
        if set(hosts) - set(self._hosts):  # nodes we did not ask the history of yet
            self._hosts = hosts
            doc = self.source.poll({**req, "history": hosts})
        doc["bucket_s"] = bucket
        return doc

    def snapshot(self, metric: str) -> dict[str, Any]:
        """The source's document, at most a second old (shared by every viewer)."""
        if self.source is None:
            raise ParaError(
                "no live stream: this portal reads the database only",
                hint="run it as `para collector serve --web`, or give "
                "`para web --collector URL` and a reader's credential",
            )
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(metric)
            if hit is not None and now - hit[0] < 1.0:
                return hit[1]
            doc = self._poll(metric)
            self._cache[metric] = (now, doc)
            return doc


def heatmap(doc: dict[str, Any], metric: str) -> dict[str, Any]:
    """Nodes (rows, by name) by time (columns, oldest first) of one metric."""
    hist = doc.get("history") or {}
    rows = sorted(hist)
    z = [hist[h].get(metric) or [] for h in rows]
    width = max((len(r) for r in z), default=0)
    z = [[None] * (width - len(r)) + list(r) for r in z]  # right-aligned: now is the last column
    bucket = doc.get("bucket_s") or 1
    t = doc.get("t") or time.time()
    x = [round(t - (width - 1 - i) * bucket - t, 1) for i in range(width)]
    name, unit = METRICS[metric]
    return {
        "metric": metric,
        "title": name,
        "unit": unit,
        "hosts": rows,
        "x": x,
        "z": z,
        "bucket_s": bucket,
    }
