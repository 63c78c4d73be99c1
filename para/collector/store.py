"""Receiving a segment: from the wire to a durable file in incoming/ and a ledger entry.

The acknowledgement is sent only after both are on disk, so once an agent moves a segment to
its sent/ directory the collector holds it, whatever happens next.  Order of work:

1. the segment id is looked up: already received means `duplicate` (nothing written);
2. the bytes go to a temporary file beside the final one, checked against the announced size
   and SHA-256 as they arrive, then fsync'd;
3. the file is opened and checked as a complete .para file of the announced host and id;
4. renamed into place (atomic), the directory fsync'd, the ledger row committed.

A disk that is full (or below the reserve) raises StoreFull before anything is kept: the agent
gets UNAVAILABLE and retries later.  Anything else wrong with the bytes is a rejection.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

from para.collector.db import FeatureDB, StoreFull, is_disk_full
from para.collector.layout import fsync_dir
from para.collector.merge import check_contents
from para.collector.segment import Rejected, open_segment
from para.formats import wire
from para.formats.wire import Ack, PutHeader


class IncomingStore:
    def __init__(
        self,
        db: FeatureDB,
        *,
        min_free_bytes: int = 256 << 20,
        max_segment_bytes: int = 1 << 30,
    ):
        self.db = db
        self.min_free_bytes = min_free_bytes
        self.max_segment_bytes = max_segment_bytes

    def check_space(self, need: int = 0) -> None:
        free = shutil.disk_usage(self.db.layout.incoming).free
        if free < self.min_free_bytes + need:
            raise StoreFull(
                f"collector disk full: {free / 2**20:.1f} MiB free under {self.db.root}, "
                f"{self.min_free_bytes / 2**20:.0f} MiB kept in reserve (--min-free-mb); "
                "segments wait in the agents' spools until space is freed"
            )

    def receive(self, header: PutHeader, chunks: Iterable[memoryview | bytes]) -> Ack:
        ledger = self.db.ledger
        known = ledger.segment(header.id)
        if known is not None:
            return self._known(header, known.host)
        if header.size > self.max_segment_bytes:
            return Ack(
                wire.REJECTED,
                header.id,
                f"segment of {header.size} bytes exceeds the collector's limit of "
                f"{self.max_segment_bytes} bytes",
            )
        self.check_space(header.size)
        # several collectors may serve one database (shards): another's clean() at its
        # start must not take this file between its rename and its ledger row
        with self.db.layout.receiving(shared=True):
            return self._receive(header, chunks)

    def _receive(self, header: PutHeader, chunks: Iterable[memoryview | bytes]) -> Ack:
        ledger = self.db.ledger
        final = self.db.layout.incoming_file(header.host, header.id)
        tmp = final.with_name(f".{header.id}.{uuid.uuid4().hex[:8]}.part")
        try:
            problem = self._write(tmp, header, chunks)
            if problem:
                tmp.unlink(missing_ok=True)
                return Ack(wire.REJECTED, header.id, problem)
            problem = self._check(tmp, header)
            if problem:
                tmp.unlink(missing_ok=True)
                return Ack(wire.REJECTED, header.id, problem)
            os.replace(tmp, final)
            fsync_dir(final.parent)
        except BaseException as e:
            tmp.unlink(missing_ok=True)
            if is_disk_full(e):
                raise StoreFull(
                    f"collector disk full under {self.db.root} ({e}); the segment stays in "
                    "the agent's spool and is sent again later"
                ) from e
            raise
        rel = str(final.relative_to(self.db.root))
        try:
            added = ledger.add_received(
                header.id, header.host, self.db.cluster, header.name, rel, header.size, "agent"
            )
        except BaseException as e:
            if ledger.segment(header.id) is None:
                final.unlink(missing_ok=True)
            if is_disk_full(e):
                raise StoreFull(
                    f"collector disk full under {self.db.root}: the ledger cannot be written "
                    f"({e}); the segment stays in the agent's spool and is sent again later"
                ) from e
            raise
        if not added:
            # the same segment arrived twice at once (a retry racing its first try): both
            # wrote identical bytes to the same name; the ledger row is the other's
            return Ack(wire.DUPLICATE, header.id, "received concurrently")
        return Ack(wire.STORED, header.id)

    def _known(self, header: PutHeader, host: str) -> Ack:
        if host != header.host:
            return Ack(
                wire.REJECTED,
                header.id,
                f"segment id {header.id} was already received from another host",
            )
        return Ack(wire.DUPLICATE, header.id, "received before")

    def _write(self, tmp: Path, header: PutHeader, chunks: Iterable[memoryview | bytes]) -> str:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        got = 0
        with open(tmp, "wb") as f:
            for chunk in chunks:
                got += len(chunk)
                if got > header.size:
                    return (
                        f"segment {header.name} ({header.id}) is longer than the "
                        f"{header.size} bytes announced"
                    )
                digest.update(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        if got != header.size:
            return (
                f"segment {header.name} ({header.id}) is truncated: {got} of {header.size} "
                "bytes arrived"
            )
        if digest.hexdigest() != header.sha256:
            return f"segment {header.name} ({header.id}) does not match its SHA-256"
        return ""

    def _check(self, tmp: Path, header: PutHeader) -> str:
        try:
            seg = open_segment(tmp, sha256=header.sha256)
        except Rejected as e:
            why = str(e).replace(f"{tmp}: ", "").replace(str(tmp), "the upload")
            return f"segment {header.name} ({header.id}): {why}"
        with seg:
            try:
                check_contents(seg, self.db.ledger.table_columns())
            except Rejected as e:
                why = str(e).replace(f"{tmp}: ", "")
                return f"segment {header.name} ({header.id}): {why}"
            if seg.id != header.id:
                return f"segment {header.name}: its meta.json id {seg.id} is not {header.id}"
            if seg.host != header.host:
                return (
                    f"segment {header.name} ({header.id}) holds data of host {seg.host!r}, "
                    f"not {header.host!r}"
                )
        return ""

    def clean(self) -> int:
        """At start: remove temporary files and files the ledger does not know (a collector
        killed between writing and committing never acknowledged them)."""
        inc = self.db.layout.incoming
        if not inc.is_dir():
            return 0
        with self.db.layout.receiving(shared=False):
            return self._clean(inc)

    def _clean(self, inc: Path) -> int:
        removed = 0
        ledger = self.db.ledger
        for host_dir in inc.iterdir():
            if not host_dir.is_dir():
                continue
            for f in host_dir.iterdir():
                if f.name.endswith(".part"):
                    f.unlink(missing_ok=True)
                    removed += 1
                    continue
                seg_id = f.name.removesuffix(".para")
                row = ledger.segment(seg_id) if f.name.endswith(".para") else None
                if row is None or row.state != "received":
                    f.unlink(missing_ok=True)
                    removed += 1
        return removed
