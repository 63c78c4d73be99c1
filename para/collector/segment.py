"""Reading a complete `.para` file (a segment or a profile output) for the database.

Checks everything a peer could get wrong before the collector acknowledges it: a ZIP with a
central directory (a closed file, not a journal), `meta.json` and `end.json` that say it is a
complete para file of a version we read, every member's CRC, table names safe as paths, a
well-formed catalogue.  Parts are read from a memory map, so a segment costs C++ Parquet
decoding and no Python-level copying.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from para.formats import wire
from para.formats.container import (
    END_NAME,
    FORMAT_VERSION,
    JOURNAL_PREFIX,
    MAX_JSON_BYTES,
    MAX_PART_BYTES,
    META_NAME,
    TooLarge,
    inflate,
    read_zip_member,
)
from para.formats.journal import arrow_schema, table_layout

_TYPES = {"int", "float", "str"}
_KINDS = {"counter", "gauge", "info"}
# Columns the database adds (host, job_id) or derives from the partition path (cluster, date):
# a file column of the same name (other than job_id, which is the attribution itself) is
# kept under this prefix.
RESERVED = ("host", "cluster", "date")
RENAMED_PREFIX = "col_"
# What one file may cost decoded, all its parts together (docs/collector.md, "Bounds").
MAX_DECODED_BYTES = 512 << 20
MAX_ROWS = 20_000_000


class Rejected(Exception):
    """The file can never be accepted as it stands; the message says why and where."""


# Errors of the machine reading the file, not of the file: the reader may try again later
# (the collector answers UNAVAILABLE and the agent keeps the segment).
PASSING_ERRNOS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.EIO, errno.ENOMEM, errno.EAGAIN, errno.EINTR,
     errno.ENOSPC, errno.EDQUOT, errno.EBUSY, errno.ENOBUFS}
)  # fmt: skip


def _raise_if_passing(e: OSError) -> None:
    if e.errno in PASSING_ERRNOS:
        raise e


@dataclass(frozen=True)
class _Part:
    name: str
    offset: int
    size: int
    crc: int
    deflated: bool = False  # a small part: uncompressed Parquet in a deflated member
    inflated_size: int = 0  # what a deflated member declares it inflates to


@dataclass
class Segment:
    path: Path
    id: str
    host: str
    meta: dict[str, Any]
    size: int
    layout: dict[str, list[dict[str, str]]]
    parts: dict[str, list[_Part]] = field(default_factory=dict)
    _mm: pa.MemoryMappedFile | None = None
    _decoded: int = 0
    _rows: int = 0

    @property
    def job(self) -> dict[str, Any]:
        job = self.meta.get("job")
        return job if isinstance(job, dict) else {}

    @property
    def source(self) -> str:
        return str(self.meta.get("source") or "")

    def schema(self, table: str) -> pa.Schema:
        return arrow_schema(self.layout[table])

    def read_table(self, table: str) -> pa.Table:
        """All rows of `table`, conformed to this file's catalogue."""
        schema = self.schema(table)
        pieces = []
        for part in self.parts.get(table, []):
            got = self._read_part(part, None)
            pieces.append(_conform(got, schema, f"{self.path}: {part.name}"))
        if not pieces:
            return schema.empty_table()
        return pa.concat_tables(pieces) if len(pieces) > 1 else pieces[0]

    def read_column(self, table: str, name: str) -> pa.ChunkedArray:
        """One column of `table` (nulls where a part lacks it), for checks before the ack."""
        field_ = self.schema(table).field(name)
        chunks: list[pa.Array] = []
        for part in self.parts.get(table, []):
            got = self._read_part(part, name, charge=False)
            if name in got.schema.names:
                col = got.column(name)
                try:
                    col = col if col.type == field_.type else col.cast(field_.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                    raise Rejected(f"{self.path}: {part.name}: column {name} is not "
                                   f"{field_.type} ({e})") from None  # fmt: skip
                chunks.extend(col.chunks)
            else:
                chunks.append(pa.nulls(len(got), field_.type))
        return pa.chunked_array(chunks, field_.type)

    def measure(self) -> int:
        """Check every part against the bounds without keeping its rows (before the ack);
        returns the bytes the file decodes to."""
        self._decoded = self._rows = 0
        for parts in self.parts.values():
            for part in parts:
                self._read_part(part, None, expand=False)
        decoded, self._decoded, self._rows = self._decoded, 0, 0
        return decoded

    def _read_part(
        self, part: _Part, column: str | None, *, charge: bool = True, expand: bool = True
    ) -> pa.Table:
        """A part's rows (or one column), refused before decoding when its metadata passes
        the bounds, and after decoding the strings when they do: Parquet pages are
        compressed and dictionary-encoded, so a small part can decode to gigabytes."""
        buf = self._buffer(part)
        try:
            strings = _string_columns(pq.read_schema(pa.BufferReader(buf)))
            pf = pq.ParquetFile(pa.BufferReader(buf), read_dictionary=strings)
            if charge:
                self._charge(part, pf.metadata)
            got = pf.read(columns=None if column is None else [column])
            return self._expand(part, got, charge, expand)
        except (pa.ArrowException, OSError) as e:
            if isinstance(e, pa.ArrowMemoryError):
                raise MemoryError(f"{self.path}: {e}") from None  # the collector's, not the file's
            if isinstance(e, OSError) and not isinstance(e, pa.ArrowException):
                _raise_if_passing(e)
            raise Rejected(
                f"{self.path}: member {part.name} at offset {part.offset} is not readable "
                f"Parquet ({e})"
            ) from None

    def _charge(self, part: _Part, md: pq.FileMetaData) -> None:
        # fixed-width values cost 8 bytes a row whatever the encoding (RLE expands them)
        size = max(
            sum(
                md.row_group(i).column(j).total_uncompressed_size
                for i in range(md.num_row_groups)
                for j in range(md.num_columns)
            ),
            md.num_rows * md.num_columns * 8,
        )
        self._charge_bytes(part, size, md.num_rows)

    def _charge_bytes(self, part: _Part, size: int, rows: int = 0) -> None:
        if size > MAX_PART_BYTES:
            raise Rejected(
                f"{self.path}: member {part.name} decodes to {size} bytes or more, past the "
                f"limit of {MAX_PART_BYTES} for one part"
            )
        self._decoded += size
        self._rows += rows
        if self._decoded > MAX_DECODED_BYTES or self._rows > MAX_ROWS:
            raise Rejected(
                f"{self.path}: its parts decode to more than {MAX_DECODED_BYTES} bytes or "
                f"{MAX_ROWS} rows (the limits for one file); send smaller segments"
            )

    def _expand(self, part: _Part, table: pa.Table, charge: bool, expand: bool) -> pa.Table:
        """Dictionary-encoded strings back to plain strings, once their decoded size is
        known to fit the bounds."""
        cols = []
        for f, col in zip(table.schema, table.columns):
            if not pa.types.is_dictionary(f.type):
                cols.append(col)
                continue
            if charge:
                need = 0
                for chunk in col.chunks:
                    lengths = pc.binary_length(chunk.dictionary)
                    need += pc.sum(pc.take(lengths, chunk.indices)).as_py() or 0
                self._charge_bytes(part, need)
            cols.append(col.cast(f.type.value_type) if expand else col)
        return pa.table(cols, names=table.schema.names)

    def verify(self) -> None:
        """Every member's CRC-32 (a flipped bit anywhere is caught before the ack)."""
        for parts in self.parts.values():
            for part in parts:
                if zlib.crc32(self._buffer(part)) != part.crc:
                    raise Rejected(
                        f"{self.path}: member {part.name} at offset {part.offset} fails its "
                        "CRC-32 (the file is damaged)"
                    )

    def _buffer(self, part: _Part) -> pa.Buffer:
        if self._mm is None:
            self._mm = pa.memory_map(str(self.path))
        # zero-copy; Arrow keeps the mapping alive while a buffer points into it
        raw = self._mm.read_at(part.size, part.offset)
        if not part.deflated:
            return raw
        # at most the size it declares, which open_segment bounded (per part, per file)
        try:
            data = inflate(raw, part.inflated_size, part.name)
        except TooLarge as e:
            raise Rejected(f"{self.path}: {e.message}") from None
        except zlib.error as e:
            raise Rejected(
                f"{self.path}: member {part.name} at offset {part.offset} does not inflate ({e})"
            ) from None
        return pa.py_buffer(data)

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None

    def __enter__(self) -> Segment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")


def open_segment(
    path: str | os.PathLike[str], *, sha256: str | None = None, verify: bool = True
) -> Segment:
    """Open and check a complete .para file; raises Rejected with the reason otherwise.

    `sha256` is the digest of the file's bytes when the caller already has it (the collector
    computes it while receiving); otherwise it is computed here (needed for the id of files
    without a segment id).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        _raise_if_passing(e)
        raise Rejected(f"{path}: cannot read ({e.strerror})") from None
    if head != b"PK\x03\x04":
        raise Rejected(f"{path}: not a .para file (offset 0 holds {head!r})")
    try:
        zf = zipfile.ZipFile(path)
    except OSError as e:
        _raise_if_passing(e)
        raise Rejected(f"{path}: cannot read ({e.strerror})") from None
    except zipfile.BadZipFile as e:
        raise Rejected(
            f"{path}: not a complete .para file ({e}); a file whose writer was stopped is a "
            f"journal: run `para recover {path}` first"
        ) from None
    with zf:
        names = zf.namelist()
        if not names or names[0] != META_NAME:
            raise Rejected(f"{path}: not a .para file (its first member is not {META_NAME})")
        if any(n.startswith(JOURNAL_PREFIX) for n in names):
            raise Rejected(f"{path}: still holds journal records; run `para recover {path}`")
        meta = _json(zf, META_NAME, path)
        if END_NAME not in names:
            raise Rejected(f"{path}: has no {END_NAME}: it was not closed; run `para recover`")
        end = _json(zf, END_NAME, path)
        if meta.get("format") != "para":
            raise Rejected(f"{path}: {META_NAME} does not describe a para file")
        version = meta.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise Rejected(
                f"{path}: .para format version {version!r}; this collector reads up to "
                f"{FORMAT_VERSION} (upgrade the collector)"
            )
        if not end.get("complete"):
            raise Rejected(f"{path}: {END_NAME} does not say complete")
        meta = {**meta, **end}
        layout = _layout(meta.get("catalogue"), path)
        parts: dict[str, list[_Part]] = {}
        inflated = 0  # what the deflated parts declare they inflate to
        for info in zf.infolist():
            table, _, rest = info.filename.partition("/")
            if not rest.endswith(".parquet"):
                continue
            if table not in layout:
                raise Rejected(f"{path}: member {info.filename} belongs to no catalogued table")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise Rejected(
                    f"{path}: member {info.filename} is compressed other than by deflate"
                )
            if info.compress_type == zipfile.ZIP_DEFLATED:
                # bounded before any byte is inflated: a member that inflates past what it
                # declares is refused when read (inflate's limit is the declared size)
                inflated += info.file_size
                if info.file_size > MAX_PART_BYTES or inflated > MAX_DECODED_BYTES:
                    raise Rejected(
                        f"{path}: member {info.filename} declares {info.file_size} bytes "
                        f"inflated, past the limits ({MAX_PART_BYTES} for one part, "
                        f"{MAX_DECODED_BYTES} for a file)"
                    )
            offset = _data_offset(path, info.header_offset)
            if offset + info.compress_size > size:
                raise Rejected(f"{path}: member {info.filename} runs past the end of the file")
            parts.setdefault(table, []).append(
                _Part(
                    info.filename,
                    offset,
                    info.compress_size,
                    info.CRC,
                    info.compress_type == zipfile.ZIP_DEFLATED,
                    info.file_size,
                )  # fmt: skip
            )
    if sha256 is None:
        with open(path, "rb") as f:
            sha256 = _file_sha256(f)
    try:
        host = wire.host_of(meta)
        seg_id = wire.segment_id_for(meta, sha256)
    except wire.WireError as e:
        raise Rejected(f"{path}: {e.message}") from None
    seg = Segment(path, seg_id, host, meta, size, layout, parts)
    if verify:
        try:
            seg.verify()
        except Rejected:
            seg.close()
            raise
    return seg


def _file_sha256(f: Any) -> str:
    import hashlib

    h = hashlib.sha256()
    while chunk := f.read(1 << 20):
        h.update(chunk)
    return h.hexdigest()


def _json(zf: zipfile.ZipFile, name: str, path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(read_zip_member(zf, name, MAX_JSON_BYTES))
    except TooLarge as e:
        raise Rejected(f"{path}: {e.message}") from None
    except OSError as e:
        _raise_if_passing(e)
        raise Rejected(f"{path}: {name} is not readable ({e})") from None
    except (ValueError, zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise Rejected(f"{path}: {name} is not readable JSON ({e})") from None
    if not isinstance(doc, dict):
        raise Rejected(f"{path}: {name} is not a JSON object")
    return doc


def _layout(catalogue: object, path: Path) -> dict[str, list[dict[str, str]]]:
    if not isinstance(catalogue, list):
        raise Rejected(f"{path}: meta.json has no metric catalogue")
    for i, entry in enumerate(catalogue):
        ok = (
            isinstance(entry, dict)
            and isinstance(entry.get("name"), str)
            and entry["name"]
            and entry.get("type") in _TYPES
            and entry.get("kind") in _KINDS
        )
        if not ok:
            raise Rejected(f"{path}: catalogue entry {i} is malformed: {entry!r:.200}")
        try:
            wire.check_table_name(entry.get("table"))
        except wire.WireError as e:
            raise Rejected(f"{path}: catalogue entry {i}: {e.message}") from None
    layout = table_layout(catalogue)
    for table, cols in layout.items():
        names = [c["name"] for c in cols]
        if len(set(names)) != len(names):
            raise Rejected(f"{path}: table {table} declares a column twice")
        if "t" not in names:
            raise Rejected(f"{path}: table {table} has no time column t")
    return layout


def _data_offset(path: Path, header_offset: int) -> int:
    with open(path, "rb") as f:
        f.seek(header_offset)
        head = f.read(_LOCAL_HEADER.size)
    if len(head) < _LOCAL_HEADER.size or head[:4] != b"PK\x03\x04":
        raise Rejected(f"{path}: no member header at offset {header_offset}")
    nlen, xlen = _LOCAL_HEADER.unpack(head)[-2:]
    return header_offset + _LOCAL_HEADER.size + nlen + xlen


def _string_columns(schema: pa.Schema) -> list[str]:
    return [
        f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
    ]


def _conform(table: pa.Table, schema: pa.Schema, where: str) -> pa.Table:
    """The catalogue's columns and types; a column a part lacks reads as nulls."""
    if table.schema.equals(schema):
        return table
    arrays = []
    for f in schema:
        if f.name in table.schema.names:
            col = table.column(f.name)
            try:
                arrays.append(col if col.type == f.type else col.cast(f.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise Rejected(f"{where}: column {f.name} is not {f.type} ({e})") from None
        else:
            arrays.append(pa.nulls(len(table), f.type))
    return pa.Table.from_arrays(arrays, schema=schema)
