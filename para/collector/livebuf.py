"""The live samples a collector keeps for readers (`para top`, live-snapshot): the last few
minutes of each host, bounded by bytes per host and in all (docs/collector.md, "Bounds").

A sample costs what its JSON weighed on the wire, decompressed: a node whose samples are
big keeps fewer of them, and when the whole passes its bound the biggest host gives first,
so one node's flood never evicts the others' data.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

SAMPLES_PER_HOST = 300
BYTES_PER_HOST = 8 << 20
BYTES_TOTAL = 512 << 20


class LiveBuffer:
    def __init__(
        self,
        samples_per_host: int = SAMPLES_PER_HOST,
        bytes_per_host: int = BYTES_PER_HOST,
        bytes_total: int = BYTES_TOTAL,
    ) -> None:
        self.samples_per_host = samples_per_host
        self.bytes_per_host = bytes_per_host
        self.bytes_total = bytes_total
        self._lock = threading.Lock()
        self._hosts: dict[str, deque[tuple[int, Any, int]]] = {}
        self._bytes: dict[str, int] = {}
        self.total = 0
        self.evicted = 0

    def add(self, host: str, samples: list[tuple[int, Any]], nbytes: int) -> bool:
        """Keep `samples` (their JSON weighed `nbytes`); False if one message alone passes the
        host's bound (nothing kept)."""
        if not samples:
            return True
        if nbytes > self.bytes_per_host:
            return False
        cost = max(1, nbytes // len(samples))
        with self._lock:
            d = self._hosts.setdefault(host, deque())
            for t, rows in samples:
                d.append((t, rows, cost))
            self._bytes[host] = self._bytes.get(host, 0) + cost * len(samples)
            self.total += cost * len(samples)
            while d and (len(d) > self.samples_per_host or self._bytes[host] > self.bytes_per_host):
                self._pop(host)
            while self.total > self.bytes_total:
                self._pop(max(self._bytes, key=self._bytes.__getitem__))
        return True

    def _pop(self, host: str) -> None:
        _, _, cost = self._hosts[host].popleft()
        self._bytes[host] -= cost
        self.total -= cost
        self.evicted += 1

    def snapshot(self, host: str | None = None) -> dict[str, list[tuple[int, Any]]]:
        with self._lock:
            return {
                h: [(t, rows) for t, rows, _ in d]
                for h, d in self._hosts.items()
                if host in (None, h)
            }

    def __len__(self) -> int:
        return len(self._hosts)

    def status(self) -> dict[str, int]:
        with self._lock:
            biggest = max(self._bytes.values(), default=0)
            return {"hosts": len(self._hosts), "bytes": self.total,
                    "biggest_host_bytes": biggest, "evicted": self.evicted}  # fmt: skip
