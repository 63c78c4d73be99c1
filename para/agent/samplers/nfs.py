"""NFS client statistics per mount, from /proc/self/mountstats.

The kernel keeps them in memory (fs/nfs/iostat.h, net/sunrpc/stats.c), so reading them never
waits on a server, even a hung one.  Per mount: `bytes:` (8 counters), `events:` (27 VFS and
cache events), `xprt:` (RPC transport; tcp, rdma and udp lay their fields out differently),
and `per-op statistics`, one line per NFS operation:
ops transmissions timeouts bytes_sent bytes_recv queue_ms rtt_ms exe_ms [errors].
An operation is recorded from its first call on (a mount lists ~60 that mostly stay at 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from para.agent.samplers.base import ProcFiles, Rows, Sampler, Unavailable

MOUNTSTATS = "proc/self/mountstats"
INT64_MAX = (1 << 63) - 1
NFS_TYPES = ("nfs", "nfs4")
# events: indexes (nfs_iostat.h NFSIOS_*) of the columns the nfs table keeps, in its order
EVENT_COLUMNS = (0, 1, 2, 4, 5, 12, 13, 15, 22, 23, 24)
# xprt: index of 'sends' after the transport name
XPRT_SENDS = {"tcp": 5, "rdma": 5, "udp": 2}


@dataclass
class NfsMount:
    mount: str
    export: str
    fstype: str
    bytes: list[int | None] = field(default_factory=lambda: [None] * 8)
    events: list[int | None] = field(default_factory=lambda: [None] * 27)
    xprt: list[int | None] = field(default_factory=lambda: [None] * 5)  # sends .. backlog_u
    proto: str | None = None
    ops: dict[str, list[int | None]] = field(default_factory=dict)


def _ints(parts: list[str], where: str) -> list[int | None]:
    out: list[int | None] = []
    for p in parts:
        try:
            v = int(p)
        except ValueError:
            raise ValueError(f"{where}: not a number: {p[:40]!r}") from None
        out.append(v if 0 <= v <= INT64_MAX else None)
    return out


def parse_mountstats(data: bytes) -> list[NfsMount]:
    """The NFS mounts of /proc/self/mountstats (other filesystems are skipped).

    Raises ValueError naming the line when an NFS mount's statistics are not numbers.
    """
    mounts: dict[str, NfsMount] = {}
    cur: NfsMount | None = None
    in_ops = False
    for n, raw in enumerate(data.decode(errors="replace").split("\n"), 1):
        if raw.startswith("device "):
            cur, in_ops = None, False
            words = raw.split()
            # device SRC mounted on MOUNT with fstype TYPE [statvers=X]
            try:
                i = words.index("mounted")
                j = words.index("fstype", i)
            except ValueError:
                continue
            fstype = words[j + 1] if j + 1 < len(words) else ""
            if fstype in NFS_TYPES and words[i + 1] == "on":
                mount = " ".join(words[i + 2 : j - 1])
                cur = NfsMount(mount, " ".join(words[1:i]), fstype)
                mounts.pop(mount, None)
                mounts[mount] = cur  # the last mount over a path is the visible one
            continue
        if cur is None:
            continue
        line = raw.strip()
        if not line:
            continue
        where = f"{MOUNTSTATS} line {n}"
        key, _, rest = line.partition(":")
        if in_ops:
            vals = _ints(rest.split(), where)
            if len(vals) < 8:
                raise ValueError(f"{where}: {key} has {len(vals)} fields, expected 8 or 9")
            cur.ops[key] = (vals + [None])[:9]
            continue
        if key == "bytes":
            vals = _ints(rest.split(), where)
            cur.bytes = (vals + [None] * 8)[:8]
        elif key == "events":
            vals = _ints(rest.split(), where)
            cur.events = (vals + [None] * 27)[:27]
        elif key == "xprt":
            parts = rest.split()
            if not parts:
                raise ValueError(f"{where}: empty xprt line")
            cur.proto = parts[0]
            first = XPRT_SENDS.get(parts[0])
            if first is not None:
                vals = _ints(parts[1:], where)
                cur.xprt = (vals[first : first + 5] + [None] * 5)[:5]
        elif line == "per-op statistics":
            in_ops = True
    return list(mounts.values())


class NfsSampler(Sampler):
    family = "nfs"
    tables = ("nfs", "nfs_ops")

    def __init__(self, files: ProcFiles):
        self.files = files
        self.seen_ops: dict[str, set[str]] = {}

    def open(self) -> dict[str, Any]:
        try:
            mounts = parse_mountstats(self.files.read_once(MOUNTSTATS))
        except OSError as e:
            raise Unavailable(f"cannot read /{MOUNTSTATS}: {e.strerror}") from e
        if not mounts:
            raise Unavailable("no NFS filesystem is mounted")
        return {
            "mounts": [
                {"mount": m.mount, "export": m.export, "type": m.fstype, "transport": m.proto}
                for m in mounts
            ]
        }

    def sample(self, t_ms: int, out: Rows) -> None:
        rows = []
        op_rows = []
        for m in parse_mountstats(self.files.read(MOUNTSTATS)):
            ev = m.events
            rows.append([m.mount, *m.bytes, *m.xprt, *(ev[i] for i in EVENT_COLUMNS)])
            seen = self.seen_ops.setdefault(m.mount, set())
            for op, vals in m.ops.items():
                if op in seen or vals[0]:
                    seen.add(op)
                    op_rows.append([m.mount, op, *vals])
        out["nfs"] = rows
        out["nfs_ops"] = op_rows
