"""ParaFile: reads complete, unfinished (writer killed) and truncated .para files alike."""

from __future__ import annotations

import json
import os
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from para.errors import FormatError
from para.formats import journal
from para.formats.container import (
    END_NAME,
    FORMAT_VERSION,
    JOURNAL_PREFIX,
    MAX_JSON_BYTES,
    MAX_PART_BYTES,
    META_NAME,
    Member,
    TooLarge,
    iter_members,
    read_member,
    read_zip_member,
    scan,
)
from para.formats.writer import PART_SAMPLES, Finalized, finalize, timed_tables


@dataclass
class Recovery:
    """What a reader could and could not take from a file that was not closed cleanly."""

    journal_samples: int
    parts: int
    stopped_at: str | None  # why the walk of the file ended early, with the offset
    last_sample: float | None
    message: str = ""
    lost_bytes: int = 0


@dataclass
class _Source:
    parts: dict[str, list[Member | str]] = field(default_factory=dict)  # Member or zip name
    journal: list[Member] = field(default_factory=list)


def _utc(epoch: float | None) -> str:
    if epoch is None:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


class ParaFile:
    """A .para file opened for reading.  Never loads the data whole: tables are read in parts.

    `recovery` is None for a complete file; otherwise it says precisely what was recovered.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if not self.path.exists():
            raise FormatError(f"{self.path}: no such file")
        if self.path.is_dir():
            raise FormatError(f"{self.path}: is a directory, not a .para file")
        self._src = _Source()
        self._zip: zipfile.ZipFile | None = None
        self.recovery: Recovery | None = None
        end: dict[str, Any] | None = None
        try:
            zf = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError):
            zf = None
        if zf is not None and META_NAME in zf.namelist():
            self._zip = zf
            meta = self._json(self._member(zf, META_NAME), META_NAME)
            if END_NAME in zf.namelist():
                end = self._json(self._member(zf, END_NAME), END_NAME)
            for name in zf.namelist():
                table, _, rest = name.partition("/")
                if rest.endswith(".parquet"):
                    self._src.parts.setdefault(table, []).append(name)
                elif name.startswith(JOURNAL_PREFIX):
                    self._src.journal.append(_zip_member(zf, name))
        else:
            if zf is not None:
                zf.close()
            meta, end = self._open_by_scan()
        self._check_version(meta)
        self.meta: dict[str, Any] = dict(meta)
        self.end: dict[str, Any] | None = end
        if end:
            self.meta.update(end)
        self.complete = bool(end and end.get("complete")) and not self._src.journal
        self.layout = journal.table_layout(self.meta.get("catalogue", []))
        self.timed = timed_tables(list(self.layout))
        if not self.complete and self.recovery is None:
            self.recovery = Recovery(len(self._src.journal), self._n_parts(), None, None)
        if self.recovery is not None and not self.recovery.message:
            self._describe_recovery()

    # -- opening ---------------------------------------------------------------------------
    def _member(self, zf: zipfile.ZipFile, name: str) -> bytes:
        try:
            return read_zip_member(zf, name, MAX_JSON_BYTES)
        except TooLarge as e:
            raise TooLarge(f"{self.path}: {e.message}") from None
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:
            raise FormatError(f"{self.path}: {name} is not readable ({e})") from None

    def _json(self, data: bytes, name: str) -> dict[str, Any]:
        try:
            doc = json.loads(data)
        except ValueError as e:
            raise FormatError(
                f"{self.path}: {name} is not valid JSON ({e})",
                hint="the file is damaged; `para recover` cannot fix its metadata",
            ) from e
        if not isinstance(doc, dict):
            raise FormatError(f"{self.path}: {name} is not a JSON object")
        return doc

    def _open_by_scan(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        with open(self.path, "rb") as f:
            head = f.read(4)
        if head != b"PK\x03\x04":
            raise FormatError(
                f"{self.path}: not a .para file (offset 0 holds {head!r}, not a ZIP member header)",
                hint="para reads files written by `para profile` or `para agent`",
            )
        sc = scan(self.path)
        if not sc.members or sc.members[0].name != META_NAME:
            raise FormatError(
                f"{self.path}: not a .para file (its first member is not {META_NAME})"
                + (f"; {sc.problem}" if sc.problem else "")
            )
        meta = self._json(read_member(self.path, sc.members[0], MAX_JSON_BYTES), META_NAME)
        end = None
        for m in sc.members[1:]:
            table, _, rest = m.name.partition("/")
            if m.name.startswith(JOURNAL_PREFIX):
                self._src.journal.append(m)
            elif rest.endswith(".parquet"):
                self._src.parts.setdefault(table, []).append(m)
            elif m.name == END_NAME:
                end = self._json(read_member(self.path, m, MAX_JSON_BYTES), END_NAME)
        if sc.problem is not None or end is None or self._src.journal:
            self.recovery = Recovery(
                journal_samples=len(self._src.journal),
                parts=self._n_parts(),
                stopped_at=sc.problem,
                last_sample=None,
                lost_bytes=sc.file_size - sc.end,
            )
        return meta, end

    def _check_version(self, meta: dict[str, Any]) -> None:
        if meta.get("format") != "para":
            raise FormatError(f"{self.path}: {META_NAME} does not describe a para file")
        version = meta.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise FormatError(
                f"{self.path}: written in .para format version {version}, "
                f"this para reads up to version {FORMAT_VERSION}",
                hint="upgrade para (pip install -U para)",
            )

    def _n_parts(self) -> int:
        return sum(len(v) for v in self._src.parts.values())

    def _describe_recovery(self) -> None:
        rec = self.recovery
        assert rec is not None
        last = None
        if self._src.journal:
            last_t, _, _ = journal.decode(read_member(self.path, self._src.journal[-1]))
            last = last_t / 1000
        rec.last_sample = last
        parts = []
        if rec.journal_samples:
            parts.append(
                f"{rec.journal_samples} samples from its journal, the last at {_utc(last)}"
            )
        if rec.parts:
            parts.append(f"{rec.parts} complete Parquet parts")
        what = " and ".join(parts) or "its metadata only (no samples)"
        state = (
            "was not closed (its writer was stopped or is still running)"
            if self._src.journal
            else "is incomplete (cut short or damaged)"
        )
        msg = f"{self.path} {state}: recovered {what}"
        if rec.stopped_at:
            msg += f"; reading stopped where {rec.stopped_at}, {rec.lost_bytes} bytes not used"
        msg += f". Run `para recover {self.path}` to rewrite it as a complete file."
        rec.message = msg

    # -- metadata --------------------------------------------------------------------------
    @property
    def tables(self) -> list[str]:
        """Tables that hold rows, in catalogue order."""
        present = set(self._src.parts)
        if self._src.journal:
            present |= set(self._journal_tables())
        return [t for t in self.layout if t in present]

    def _journal_tables(self) -> set[str]:
        if not hasattr(self, "_jt"):
            seen: set[str] = set()
            for data in iter_members(self.path, self._src.journal):
                _, rows, _ = journal.decode(data)
                seen.update(t for t, r in rows.items() if r)
            self._jt = seen
        return self._jt

    def catalogue(self, table: str | None = None) -> list[dict[str, str]]:
        cat: list[dict[str, str]] = self.meta.get("catalogue", [])
        return [c for c in cat if table is None or c["table"] == table]

    def metric_columns(self, table: str) -> list[str]:
        return [c["name"] for c in self.layout.get(table, []) if c["kind"] in ("counter", "gauge")]

    def stats(self) -> dict[str, Any]:
        """start, end (epoch s), samples (instants), values (stored values), rows per table."""
        if self.complete:
            return {k: self.meta.get(k) for k in ("start", "end", "samples", "values", "rows")}
        rows: dict[str, int] = {}
        values = 0
        times: set[int] = set()
        for table in self.tables:
            metrics = self.metric_columns(table)
            for batch in self.iter_batches(table):
                rows[table] = rows.get(table, 0) + batch.num_rows
                values += sum(batch.num_rows - batch.column(c).null_count for c in metrics)
                if table not in self.timed:
                    times.update(batch.column("t").cast(pa.int64()).to_pylist())
        for d in iter_members(self.path, self._src.journal):
            t_ms, _, is_sample = journal.decode(d)
            if is_sample:
                times.add(t_ms)
        return {
            "start": min(times) / 1000 if times else None,
            "end": max(times) / 1000 if times else None,
            "samples": len(times),
            "values": values,
            "rows": rows,
        }

    # -- data ------------------------------------------------------------------------------
    def schema(self, table: str) -> pa.Schema:
        if table not in self.layout:
            raise FormatError(
                f"{self.path}: no table {table!r}",
                hint=f"tables in this file: {', '.join(self.tables) or 'none'}",
            )
        return journal.arrow_schema(self.layout[table])

    def iter_batches(
        self, table: str, columns: list[str] | None = None, batch_size: int = 65536
    ) -> Iterator[pa.RecordBatch]:
        """The rows of `table`, part by part; memory stays bounded by one part."""
        schema = self.schema(table)
        if columns is not None:
            schema = pa.schema([schema.field(c) for c in columns])
        for part in self._src.parts.get(table, []):
            pf = self._open_part(part)
            names = [n for n in schema.names if n in pf.schema_arrow.names]
            for batch in pf.iter_batches(batch_size=batch_size, columns=names):
                yield _conform(batch, schema)
        if self._src.journal:
            for chunk in self._journal_chunks():
                if table in chunk.columns:
                    arrow = chunk.to_arrow(table).select(schema.names)
                    yield from arrow.to_batches(max_chunksize=batch_size)

    def read_table(self, table: str, columns: list[str] | None = None) -> pa.Table:
        schema = self.schema(table)
        if columns is not None:
            schema = pa.schema([schema.field(c) for c in columns])
        return pa.Table.from_batches(list(self.iter_batches(table, columns)), schema=schema)

    def _open_part(self, part: Member | str) -> pq.ParquetFile:
        if isinstance(part, str):
            assert self._zip is not None
            if self._zip.getinfo(part).compress_type == zipfile.ZIP_STORED:
                return pq.ParquetFile(self._zip.open(part))
            # a small part deflated by the container: Parquet seeks, so inflate it once
            data = read_zip_member(self._zip, part, MAX_PART_BYTES)
            return pq.ParquetFile(pa.BufferReader(data))
        return pq.ParquetFile(pa.BufferReader(read_member(self.path, part, MAX_PART_BYTES)))

    def _journal_chunks(self) -> Iterator[journal.TableBuilder]:
        records = iter_members(self.path, self._src.journal)
        while True:
            builder = journal.TableBuilder(self.layout, self.timed)
            for _ in range(PART_SAMPLES):
                data = next(records, None)
                if data is None:
                    break
                builder.add(*journal.decode(data))
            if not builder.records:
                return
            yield builder
            if builder.records < PART_SAMPLES:
                return

    def recover(
        self,
        out: str | os.PathLike[str] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Finalized:
        """Rewrite an unfinished or truncated file as a complete one (in place by default)."""
        if self.complete and out is None:
            raise FormatError(f"{self.path} is already complete; nothing to recover")
        end_info = {"recovered": self.recovery.message if self.recovery else None}
        if self._src.parts:
            raise FormatError(
                f"{self.path}: cut short after its Parquet parts were written; "
                "read it as it is (para show / para report use what it holds)",
            )
        records = iter_members(self.path, self._src.journal)
        return finalize(
            self.path,
            self.meta_at_start(),
            records,
            len(self._src.journal),
            progress,
            out=Path(out) if out else None,
            end_info=end_info,
        )

    def meta_at_start(self) -> dict[str, Any]:
        if self.end:
            return {k: v for k, v in self.meta.items() if k not in self.end}
        return dict(self.meta)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def __enter__(self) -> ParaFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _zip_member(zf: zipfile.ZipFile, name: str) -> Member:
    info = zf.getinfo(name)
    # Stored members: the data follows the local header; its length is read from the header.
    with open(zf.filename or "", "rb") as f:
        f.seek(info.header_offset + 26)
        nlen, xlen = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
    return Member(name, info.header_offset + 30 + nlen + xlen, info.compress_size, info.CRC)


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Columns a part lacks (written by an older para) come back as nulls."""
    if batch.schema.names == schema.names:
        return batch.cast(schema) if batch.schema != schema else batch
    arrays = [
        batch.column(f.name).cast(f.type)
        if f.name in batch.schema.names
        else pa.nulls(batch.num_rows, f.type)
        for f in schema
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
