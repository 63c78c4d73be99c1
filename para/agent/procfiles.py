"""The agent's /proc reader: files several families read are read once per sample.

/proc/loadavg is read by the CPU family (the load) and by the job family (its last pid says
whether any process was created): on a VM the first system calls after the sampler wakes
cost tens of microseconds each, so the second family gets the first one's bytes.  The loop
calls `new_sample()` (through the clock it stamps samples with) before each sample.
"""

from __future__ import annotations

import os

from para.agent.samplers.base import ProcFiles


class SampleFiles(ProcFiles):
    SHARED = frozenset({"proc/loadavg", "proc/stat"})

    def __init__(self, root: str | os.PathLike[str] = "/"):
        super().__init__(root)
        self._memo: dict[str, bytes] = {}

    def new_sample(self) -> None:
        self._memo.clear()

    def read(self, rel: str) -> bytes:
        if rel not in self.SHARED:
            return super().read(rel)
        data = self._memo.get(rel)
        if data is None:
            data = self._memo[rel] = super().read(rel)
        return data
