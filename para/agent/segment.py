"""A spool segment while it is being recorded: a journaled .para file, written without pyarrow.

The layout is the one of docs/para-format.md ("While recording: the journal"): `meta.json`,
then one stored ZIP member `journal/NNNNNNNN` per sample holding a zlib-compressed JSON record
`{"t": ms, "r": {table: [row, ...]}}`, each written with one write().  `para.formats.writer`
writes the same thing, but importing it loads pyarrow (see para/agent/lean.py); the Parquet
conversion happens later, in a child process (para/agent/finalize.py).

A write that fails (disk full, I/O error) is undone: the file is cut back to the end of the
last whole member, so the journal stays readable and the record can be written again later.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from para.formats.container import FORMAT_VERSION, JOURNAL_PREFIX, META_NAME, local_member

Rows = dict[str, list[list[Any]]]


def encode_record(t_ms: int, rows: Rows) -> bytes:
    """One journal record, byte for byte what para.formats.journal.encode makes."""
    return zlib.compress(json.dumps({"t": t_ms, "r": rows}, separators=(",", ":")).encode(), 1)


class SegmentWriter:
    """Appends journal records to `path` (created new); `close` leaves a recoverable journal.

    `write` is os.write unless a test injects a failing one.
    """

    def __init__(
        self,
        path: Path,
        meta: dict[str, Any],
        write: Callable[[int, bytes | memoryview], int] = os.write,
    ):
        self.path = path
        self._write = write
        meta["format"] = "para"
        meta["format_version"] = FORMAT_VERSION
        meta.setdefault("created", time.time())
        self.meta = meta
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        self.offset = 0
        self.header_bytes = 0
        self.records = 0
        self.samples = 0
        self.first_ms: int | None = None
        self.last_ms: int | None = None
        self.closed = False
        try:
            self._member(META_NAME, json.dumps(meta, indent=1, default=str).encode())
        except BaseException:
            os.close(self._fd)
            path.unlink(missing_ok=True)
            raise
        self.header_bytes = self.offset  # what every segment holds before its first record

    def _member(self, name: str, data: bytes) -> None:
        blob = memoryview(local_member(name, data))
        size = len(blob)
        start = self.offset
        try:
            while blob:
                n = self._write(self._fd, blob)
                blob = blob[n:]
        except BaseException:
            # A member cut short would end every reader's walk here: take it back.
            try:
                os.ftruncate(self._fd, start)
                os.lseek(self._fd, start, os.SEEK_SET)
            except OSError:
                pass
            raise
        self.offset = start + size

    def append(self, t_ms: int, record: bytes, sample: bool = True) -> None:
        """Write one encoded record (raises OSError, leaving the file as it was).

        `sample=False` for records that are not a sampling instant (their JSON says `"s": 0`).
        """
        self._member(f"{JOURNAL_PREFIX}{self.records:08d}", record)
        self.records += 1
        if sample:
            self.samples += 1
        if self.first_ms is None:
            self.first_ms = t_ms
        self.last_ms = t_ms

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self._fd)
