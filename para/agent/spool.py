"""The spool: where the agent leaves segments for the shipper (layout: docs/agent.md).

    <spool>/current/<segment>.para   being written (a journaled .para)
    <spool>/ready/<segment>.para     closed and complete, waiting to be shipped
    <spool>/sent/<segment>.para      acknowledged by the collector, kept for local retention
    <spool>/rejected/<segment>.para  refused by the collector for good (with a .reason file)
    <spool>/status.json              the agent's state, for `para agent status`
    <spool>/work/                    its helpers' scratch (perf.data of the current window)

Segment names are `<host>-<YYYYmmddTHHMMSSZ of the first sample>-<seq:06d>.para`.  Retention
keeps rejected/ to a tenth of the spool's size cap, deletes from sent/ first, then the oldest
of ready/ (counted: those were never shipped), and never touches current/.  Age alone never
deletes an unshipped segment: ages come from the clock, and a clock that steps forward (a node
booted with a wrong time, then set right) would make every waiting segment look old.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from para.errors import ParaError

SUFFIX = ".para"
_NAME = re.compile(r"^(?P<host>.+)-(?P<stamp>\d{8}T\d{6}Z)-(?P<seq>\d{6,})\.para$")


def safe_host(host: str) -> str:
    """The host name as it appears in file names (no path separators or odd characters)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in host).strip(".") or "host"


def segment_name(host: str, t_ms: int, seq: int) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t_ms / 1000))
    return f"{safe_host(host)}-{stamp}-{seq:06d}{SUFFIX}"


def parse_name(name: str) -> tuple[str, str, int] | None:
    """(host, stamp, seq) of a segment file name, None for anything else."""
    m = _NAME.match(name)
    if not m:
        return None
    return m.group("host"), m.group("stamp"), int(m.group("seq"))


@dataclass
class Dropped:
    path: Path
    reason: str  # "age" | "size" | "free space"
    shipped: bool  # from sent/ (already at the collector) or ready/ (lost)
    bytes: int
    rejected: bool = False  # from rejected/ (the collector refused it for good)


class Spool:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.current = self.root / "current"
        self.ready = self.root / "ready"
        self.sent = self.root / "sent"
        self.rejected = self.root / "rejected"
        self.status_path = self.root / "status.json"
        # scratch of the agent's helpers (a perf window's perf.data, py-spy's output): on the
        # spool's disk rather than a /tmp that is often RAM; emptied at each start
        self.work = self.root / "work"

    def ensure(self) -> None:
        # work/ holds samples of every process of the node (perf -a): for root alone
        for d, mode in [*((d, 0o750) for d in (self.root, self.current, self.ready, self.sent)),
                        (self.work, 0o700)]:  # fmt: skip
            try:
                d.mkdir(mode=mode, parents=True, exist_ok=True)
            except OSError as e:
                raise ParaError(
                    f"cannot create the spool directory {d}: {e.strerror}",
                    hint="set agent.spool_dir to a writable directory, or run the agent as root",
                ) from e
        if not os.access(self.current, os.W_OK | os.X_OK):
            raise ParaError(
                f"cannot write in the spool directory {self.current}",
                hint="set agent.spool_dir to a writable directory, or run the agent as root",
            )

    def segments(self, where: Path) -> list[Path]:
        """Segment files in one of the directories, oldest name first."""
        try:
            names = [n for n in os.listdir(where) if n.endswith(SUFFIX)]
        except FileNotFoundError:
            return []
        return [where / n for n in sorted(names, key=_order)]

    def next_seq(self, host: str) -> int:
        """One more than the highest sequence number of this host's segments in the spool."""
        top = -1
        mine = safe_host(host)
        for d in (self.current, self.ready, self.sent):
            for p in self.segments(d):
                parsed = parse_name(p.name)
                if parsed and parsed[0] == mine:
                    top = max(top, parsed[2])
        return top + 1

    def leftovers(self) -> list[Path]:
        """Segments a previous agent left in current/ (it crashed or was killed); stray
        temporary files of an interrupted finalisation, and its helpers' scratch in work/
        (perf.data of the window it was in), are removed."""
        for p in self.work.glob("*"):
            shutil.rmtree(p, ignore_errors=True)
        try:
            for n in os.listdir(self.current):
                if n.endswith(".tmp-final"):
                    (self.current / n).unlink(missing_ok=True)
        except FileNotFoundError:
            return []
        return self.segments(self.current)

    def promote(self, path: Path) -> Path:
        """current/X -> ready/X, atomically (same filesystem)."""
        target = self.ready / path.name
        os.replace(path, target)
        return target

    def usage(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dir": str(self.root)}
        total = 0
        for d in (self.current, self.ready, self.sent, self.rejected):
            files = self.segments(d)
            size = 0
            for p in files:
                try:
                    size += p.stat().st_size
                except FileNotFoundError:
                    continue
            out[d.name] = {"segments": len(files), "bytes": size}
            total += size
        out["bytes"] = total
        try:
            st = os.statvfs(self.root)
            out["fs_free_bytes"] = st.f_bavail * st.f_frsize
            out["fs_size_bytes"] = st.f_blocks * st.f_frsize
        except OSError:
            pass
        return out

    def enforce_retention(
        self, max_bytes: int, max_age_s: float, min_free_bytes: int, now: float | None = None
    ) -> list[Dropped]:
        """Delete what is too old, then oldest-first until the spool fits its caps."""
        now = time.time() if now is None else now
        dropped: list[Dropped] = []
        dropped += self._trim_rejected(max_bytes // 10, max_age_s, now)
        queue: list[tuple[Path, bool, int, float]] = []  # path, shipped, size, mtime
        for d, shipped in ((self.sent, True), (self.ready, False)):
            for p in self.segments(d):
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue
                queue.append((p, shipped, st.st_size, st.st_mtime))
        keep = []
        for p, shipped, size, mtime in queue:
            if shipped and now - mtime > max_age_s:
                if _remove(p):
                    dropped.append(Dropped(p, "age", shipped, size))
            else:
                keep.append((p, shipped, size, mtime))
        total = sum(size for _, _, size, _ in keep)
        for d in (self.current, self.rejected):
            for p in self.segments(d):
                try:
                    total += p.stat().st_size
                except FileNotFoundError:
                    pass
        free = self._free()
        # sent/ first (already safe at the collector), then ready/ oldest first
        for p, shipped, size, _ in keep:
            reason = None
            if total > max_bytes:
                reason = "size"
            elif free is not None and free < min_free_bytes:
                reason = "free space"
            if reason is None:
                break
            if _remove(p):
                dropped.append(Dropped(p, reason, shipped, size))
                total -= size
                if free is not None:
                    free += size
        return dropped

    def _trim_rejected(self, cap: int, max_age_s: float, now: float) -> list[Dropped]:
        """rejected/ to its cap (oldest first) and age; each with its .reason file."""
        files = []
        for p in self.segments(self.rejected):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            files.append((p, st.st_size, st.st_mtime))
        total = sum(size for _, size, _ in files)
        out = []
        for p, size, mtime in files:
            reason = "age" if now - mtime > max_age_s else "size" if total > cap else None
            if reason is None:
                continue
            if _remove(p):
                (p.parent / (p.name + ".reason")).unlink(missing_ok=True)
                out.append(Dropped(p, reason, False, size, rejected=True))
                total -= size
        return out

    def _free(self) -> int | None:
        try:
            st = os.statvfs(self.root)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def write_status(self, doc: dict[str, Any]) -> None:
        """status.json, replaced atomically so a reader never sees half of it."""
        tmp = self.status_path.with_name(f".status.json.{os.getpid()}")
        data = json.dumps(doc, indent=1, default=str).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, self.status_path)

    def read_status(self) -> dict[str, Any] | None:
        try:
            doc = json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None


def _order(name: str) -> tuple[str, int, str]:
    parsed = parse_name(name)
    if parsed is None:
        return ("", 0, name)
    return (parsed[1], parsed[2], name)


def _remove(p: Path) -> bool:
    try:
        p.unlink()
        return True
    except FileNotFoundError:
        return False  # the shipper moved it meanwhile
