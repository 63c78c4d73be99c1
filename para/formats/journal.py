"""Journal records (one per sample) and their conversion to Arrow tables and Parquet parts.

The same code turns journal records into tables when a writer closes cleanly and when a
reader recovers a file whose writer was killed, so the recovery path runs on every recording.
"""

from __future__ import annotations

import io
import json
import zlib
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

Rows = dict[str, list[list[Any]]]

# Columns added at the end of a table after rows were first written without them: a row
# that lacks them (an older writer's) reads them as null.
ADDED_LAST = {"stacks": 4, "instr_samples": 2}  # source, state (12); job, ... (13)

_ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "str": pa.string()}
TIME_TYPE = pa.timestamp("ms", tz="UTC")


def encode(t_ms: int, rows: Rows, sample: bool = True) -> bytes:
    """A record; `sample=False` for records that are not a sampling instant (stacks at the end)."""
    obj: dict[str, Any] = {"t": t_ms, "r": rows}
    if not sample:
        obj["s"] = 0
    return zlib.compress(json.dumps(obj, separators=(",", ":")).encode(), 1)


def decode(data: bytes) -> tuple[int, Rows, bool]:
    obj = json.loads(zlib.decompress(data))
    return int(obj["t"]), obj["r"], bool(obj.get("s", 1))


def table_layout(catalogue: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    """Columns of each table, in order, from a file's own catalogue."""
    out: dict[str, list[dict[str, str]]] = {}
    for entry in catalogue:
        out.setdefault(entry["table"], []).append(entry)
    return out


def arrow_schema(columns: list[dict[str, str]]) -> pa.Schema:
    return pa.schema(
        [
            pa.field(c["name"], TIME_TYPE if c["name"] == "t" else _ARROW_TYPES[c["type"]])
            for c in columns
        ]
    )


class TableBuilder:
    """Accumulates journal records column by column, then emits one Arrow table per table."""

    def __init__(self, layout: dict[str, list[dict[str, str]]], timed: set[str]):
        self.layout = layout
        self.timed = timed
        self.columns: dict[str, list[list[Any]]] = {}
        self.samples: list[int] = []
        self.records = 0
        self.bad_rows = 0

    def add(self, t_ms: int, rows: Rows, sample: bool = True) -> None:
        self.records += 1
        if sample:
            self.samples.append(t_ms)
        for table, table_rows in rows.items():
            cols = self.layout.get(table)
            if cols is None:
                continue  # written by a newer para for a table this file does not declare
            store = self.columns.get(table)
            if store is None:
                store = self.columns[table] = [[] for _ in cols]
            width = len(cols)
            shortest = width - ADDED_LAST.get(table, 0)
            timed = table in self.timed
            for row in table_rows:
                cells = row if timed else [t_ms, *row]
                if len(cells) != width:
                    if not shortest <= len(cells) < width:
                        self.bad_rows += 1
                        continue
                    cells = [*cells, *([None] * (width - len(cells)))]
                for i, v in enumerate(cells):
                    store[i].append(v)

    def to_arrow(self, table: str) -> pa.Table:
        cols = self.layout[table]
        schema = arrow_schema(cols)
        data = self.columns.get(table) or [[] for _ in cols]
        arrays = [pa.array(values, type=field.type) for values, field in zip(data, schema)]
        return pa.Table.from_arrays(arrays, schema=schema)

    def tables(self) -> list[str]:
        return [t for t in self.layout if self.columns.get(t) and self.columns[t][0]]


def sort_for_storage(table: pa.Table, keys: list[str]) -> pa.Table:
    """Rows of one device together, in time order: what makes delta encoding pay."""
    order = [(k, "ascending") for k in keys if k != "t"] + [("t", "ascending")]
    return table.sort_by(order)


# Below this size a part is also tried as uncompressed Parquet in a deflated ZIP member: one
# deflate stream over the whole part (footer included) beats zstd page by page when the
# pages are a few hundred bytes, as in a recording of minutes (docs/para-format.md).
SMALL_PART_BYTES = 256 << 10


def part_bytes(table: pa.Table, keys: list[str]) -> tuple[bytes, bool]:
    """One part as it goes into the file, and whether its member is to be deflated: the
    smaller of zstd-compressed Parquet stored as is (read in place) and uncompressed Parquet
    deflated by the ZIP container (any unzip and Python's zipfile read it)."""
    packed = parquet_bytes(table, keys)
    if len(packed) > SMALL_PART_BYTES:
        return packed, False
    plain = parquet_bytes(table, keys, compression="none")
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -15)
    if len(squeeze.compress(plain) + squeeze.flush()) < len(packed):
        return plain, True
    return packed, False


def parquet_bytes(table: pa.Table, keys: list[str], compression: str = "zstd") -> bytes:
    """One Parquet part, encoded for size: deltas for integers, dictionaries for names."""
    table = sort_for_storage(table, keys)
    # Statistics only where queries filter (time and device): on every column they cost
    # a fifth of a small file.
    stats = [k for k in keys if k in table.schema.names]
    if "t" not in stats:
        stats.append("t")
    encodings: dict[str, str] = {}
    dictionary: list[str] = []
    for field in table.schema:
        if pa.types.is_string(field.type):
            dictionary.append(field.name)
        elif pa.types.is_integer(field.type) or pa.types.is_timestamp(field.type):
            encodings[field.name] = "DELTA_BINARY_PACKED"
        elif pa.types.is_floating(field.type) and compression != "none":
            # byte stream split helps zstd per page; deflate over the part does better plain
            encodings[field.name] = "BYTE_STREAM_SPLIT"
    sink = io.BytesIO()
    pq.write_table(
        table,
        sink,
        compression=compression,
        compression_level=19 if compression == "zstd" else None,
        use_dictionary=dictionary or False,
        column_encoding=encodings or None,
        data_page_size=1 << 20,
        store_schema=False,
        write_statistics=stats,
    )
    return sink.getvalue()


def count_values(table: pa.Table, metric_columns: Iterable[str]) -> int:
    """Stored values: non-null cells of the metric columns."""
    return sum(len(table) - table.column(c).null_count for c in metric_columns)
