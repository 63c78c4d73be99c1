"""What every sampler is: a family of metrics that owns whole tables of the .para file."""

from __future__ import annotations

import abc
import errno
import json
import os
from pathlib import Path
from typing import Any

Rows = dict[str, list[list[Any]]]


class Unavailable(Exception):
    """This family cannot be sampled here (no such hardware, library or permission)."""


class Sampler(abc.ABC):
    """One metric family.  `sample` appends rows (in schema column order, without `t`) to
    the tables it owns; rows of timed tables (events, counters) start with their own time.

    The sampling loop isolates samplers from each other: an exception marks the family
    failing and the others go on; a sampler with `may_block` runs in a thread of its own with
    a time budget, so a stuck NFS statvfs or driver call never delays the rest.
    """

    family: str = ""
    tables: tuple[str, ...] = ()
    may_block: bool = False

    def open(self) -> dict[str, Any]:
        """Prepare; return static facts for the file's metadata.  Raise Unavailable."""
        return {}

    @abc.abstractmethod
    def sample(self, t_ms: int, out: Rows) -> None: ...

    def stop(self) -> None:  # noqa: B027 (an optional hook)
        """Called just before the final sample: wind down what runs on its own (a perf
        subprocess) so that its last output lands in that sample."""

    def close(self) -> None:  # noqa: B027 (an optional hook)
        """Release files, subprocesses and handles."""


def event(t_ms: int, kind: str, name: str, pid: int | None = None, **detail: Any) -> list[Any]:
    """A row of the events table."""
    return [t_ms, kind, pid, name, json.dumps(detail, default=str) if detail else None]


class ProcFiles:
    """Keeps /proc and /sys files open and re-reads them with pread: half the system calls of
    open/read/close, and no path lookup, every second.

    `root` lets tests point every sampler at a fake tree captured from a real machine.
    """

    def __init__(self, root: str | os.PathLike[str] = "/"):
        self.root = Path(root)
        self._prefix = str(self.root).rstrip("/") + "/"
        self._fds: dict[str, int] = {}

    def path(self, rel: str) -> Path:
        return self.root / rel

    def exists(self, rel: str) -> bool:
        return (self.root / rel).exists()

    def read(self, rel: str) -> bytes:
        """Whole content of root/rel (raises OSError if it vanished)."""
        fd = self._fds.get(rel)
        if fd is None:
            try:
                fd = os.open(self._prefix + rel, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                if e.errno == errno.EMFILE:  # out of descriptors: read without keeping one
                    return self.read_once(rel)
                raise
            self._fds[rel] = fd
        size = 65536
        while True:
            data = os.pread(fd, size, 0)
            if len(data) < size:
                return data
            size *= 4

    def read_once(self, rel: str) -> bytes:
        """For files read rarely: no descriptor kept."""
        fd = os.open(self._prefix + rel, os.O_RDONLY | os.O_CLOEXEC)
        try:
            # a short read of a /proc or /sys file is its end (as read() trusts): one read
            # call, not a second one to see the end, for the files of each new process
            chunk = os.read(fd, 65536)
            if len(chunk) < 65536:
                return chunk
            chunks = [chunk]
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def forget(self, rel: str) -> None:
        fd = self._fds.pop(rel, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
