"""Lustre client statistics per mounted filesystem (llite `stats`).

Where they are: /proc/fs/lustre/llite/<fsname>-<instance>/stats up to Lustre 2.11 and
/sys/kernel/debug/lustre/llite/<fsname>-<instance>/stats from 2.12 on (debugfs, readable by
root).  The format, as the Lustre Operations Manual documents it ("Monitoring Client
Activity", llite stats), one counter per line:

    snapshot_time             1308343279.169704 secs.usecs
    read_bytes                36502963 samples [bytes] 1 26843582 55488794
    open                      3304805 samples [regs]

i.e. NAME COUNT "samples" [UNIT] then, for counters that sum something, MIN MAX SUM (and
SUMSQ in newer versions, which also add start_time/elapsed_time lines and time the metadata
operations in [usecs]).  COUNT is what a call counter needs; SUM is the bytes of
read_bytes/write_bytes.  No real capture of these files was available to para's developers:
the parser follows the manual, and its tests use files written from the manual's examples
(tests/fixtures/lustre/SOURCES.md says so).
"""

from __future__ import annotations

import os
import re
from typing import Any

from para.agent.samplers.base import ProcFiles, Rows, Sampler, Unavailable
from para.formats.schema import LUSTRE_OPS

ROOTS = ("proc/fs/lustre/llite", "sys/kernel/debug/lustre/llite")
INT64_MAX = (1 << 63) - 1
_INSTANCE = re.compile(r"^(?P<fs>.+)-(?P<inst>[0-9a-f]{8,16})$")
_SKIP = ("snapshot_time", "start_time", "elapsed_time")


def parse_llite_stats(data: bytes) -> dict[str, tuple[int, int | None]]:
    """llite stats -> {name: (count, sum or None)}.

    Raises ValueError naming the line when a counter line is malformed.
    """
    out: dict[str, tuple[int, int | None]] = {}
    for n, raw in enumerate(data.decode(errors="replace").split("\n"), 1):
        f = raw.split()
        if not f or f[0] in _SKIP:
            continue
        if len(f) < 3 or f[2] != "samples":
            raise ValueError(
                f"llite stats line {n}: expected 'NAME COUNT samples ...': {raw[:80]!r}"
            )
        try:
            count = int(f[1])
            nums = [int(x) for x in f[3:] if not x.startswith("[")]
        except ValueError:
            raise ValueError(f"llite stats line {n}: not a number in {raw[:80]!r}") from None
        total = nums[2] if len(nums) >= 3 else None
        if count > INT64_MAX or count < 0:
            continue
        if total is not None and not 0 <= total <= INT64_MAX:
            total = None
        out[f[0]] = (count, total)
    return out


def fs_name(instance: str, all_instances: list[str]) -> str:
    """'scratch-ffff8f2ab0e13000' -> 'scratch', unless two mounts share the name."""
    m = _INSTANCE.match(instance)
    if not m:
        return instance
    fs = m.group("fs")
    same = [i for i in all_instances if (_INSTANCE.match(i) or m).group("fs") == fs]
    return fs if len(same) == 1 else instance


def lustre_row(name: str, stats: dict[str, tuple[int, int | None]]) -> list[Any]:
    rb = stats.get("read_bytes")
    wb = stats.get("write_bytes")
    row: list[Any] = [
        name,
        rb[1] if rb else None,
        wb[1] if wb else None,
        rb[0] if rb else None,
        wb[0] if wb else None,
    ]
    for op in LUSTRE_OPS:
        v = stats.get(op)
        row.append(v[0] if v else None)
    return row


class LustreSampler(Sampler):
    family = "lustre"
    tables = ("lustre",)

    def __init__(self, files: ProcFiles):
        self.files = files
        self.instances: list[tuple[str, str]] = []  # (name, rel path of stats)
        self._rescan = 0

    def _find(self) -> list[tuple[str, str]]:
        for root in ROOTS:
            try:
                names = sorted(os.listdir(self.files.path(root)))
            except OSError:
                continue
            found = [n for n in names if self.files.exists(f"{root}/{n}/stats")]
            if found:
                return [(fs_name(n, found), f"{root}/{n}/stats") for n in found]
        return []

    def open(self) -> dict[str, Any]:
        self.instances = self._find()
        if not self.instances:
            raise Unavailable(
                "no Lustre filesystem mounted (no llite stats in /proc/fs/lustre or "
                "/sys/kernel/debug/lustre)"
            )
        return {"filesystems": [{"fs": n, "stats": "/" + p} for n, p in self.instances]}

    def sample(self, t_ms: int, out: Rows) -> None:
        self._rescan += 1
        if self._rescan % 60 == 0:  # mounts come and go; look again every minute or so
            self.instances = self._find() or self.instances
        rows = []
        for name, rel in self.instances:
            try:
                stats = parse_llite_stats(self.files.read(rel))
            except OSError:
                self.files.forget(rel)  # unmounted
                continue
            rows.append(lustre_row(name, stats))
        out["lustre"] = rows
