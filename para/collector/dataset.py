"""The dataset as Delta Lake tables: every table's files, schema and history in a `_delta_log`.

Each table of the database (`data/<table>/`, and `meta/jobs`, `meta/hosts`, `meta/catalogue`)
is a Delta Lake table (delta-rs, the `deltalake` package): the log says which Parquet files
make the table at each version, with one typed schema that only ever grows (a column once
added keeps its type; a file without it reads as a typed NULL).  The merge and compaction
write their Parquet files as before and then commit them here; compaction commits the old
files as *removed*, and they stay on disk until `expire` deletes files removed more than a
grace period ago, so a reader that planned a snapshot (Spark, Trino, DuckDB, para) can read
every file of it while it runs (docs/database.md, "Snapshots and expiry").

Readers without a Delta reader use `snapshot()`: the files and schema of the current
version, which `catalog` turns into DuckDB views and `spark` into Spark tables.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from para.errors import ParaError

PARTITIONS = ["cluster", "date"]
PARTITION_TYPES = {"cluster": pa.string(), "date": pa.date32()}
LOG = "_delta_log"
# How long a file removed by compaction, retention or a meta rewrite stays on disk: the
# longest a reader may take between planning a query and reading its last file.
DEFAULT_GRACE_HOURS = 24.0


@dataclass
class Snapshot:
    """One version of a table: its schema (partition columns last) and its files."""

    version: int
    schema: pa.Schema
    files: list[str] = field(default_factory=list)  # absolute paths
    partitions: list[dict[str, str | None]] = field(default_factory=list)  # per file

    partitioned: bool = True

    @property
    def data_schema(self) -> pa.Schema:
        """The columns stored in the files (a partitioned table's partition columns are in
        the paths and the log only)."""
        if not self.partitioned:
            return self.schema
        return pa.schema([f for f in self.schema if f.name not in PARTITIONS])


def is_table(path: Path) -> bool:
    return (path / LOG).is_dir() and any(
        n.endswith(".json") or n.endswith(".checkpoint.parquet") for n in os.listdir(path / LOG)
    )


def _plain_field(f: pa.Field) -> pa.Field:
    """Delta's types: timestamps in microseconds (files in milliseconds read the same)."""
    t = f.type
    if pa.types.is_timestamp(t):
        t = pa.timestamp("us", tz="UTC" if t.tz else None)
    elif pa.types.is_large_string(t) or pa.types.is_dictionary(t):
        t = pa.string()
    elif pa.types.is_unsigned_integer(t):
        t = pa.int64()
    return pa.field(f.name, t, nullable=True)


def table_schema(data: pa.Schema, partitioned: bool = True) -> pa.Schema:
    if not partitioned:
        return pa.schema([_plain_field(f) for f in data])
    fields = [_plain_field(f) for f in data if f.name not in PARTITIONS]
    fields += [pa.field(p, PARTITION_TYPES[p]) for p in PARTITIONS]
    return pa.schema(fields)


def _open(path: Path, schema: pa.Schema, partitioned: bool) -> Any:
    from deltalake import DeltaTable

    if is_table(path):
        return DeltaTable(str(path))
    path.mkdir(parents=True, exist_ok=True)
    try:
        return DeltaTable.create(
            str(path),
            schema,
            mode="ignore",
            partition_by=PARTITIONS if partitioned else None,
        )
    except Exception:  # another writer created it first
        return DeltaTable(str(path))


def _evolve(dt: Any, schema: pa.Schema) -> pa.Schema:
    """Add the columns of `schema` the table lacks (additive evolution only); a column whose
    type differs is an error (the merge refuses such files before they get here)."""
    from deltalake import Field as DeltaField
    from deltalake import Schema as DeltaSchema

    have = _arrow(dt)
    known = {f.name: f for f in have}
    new = []
    for f in schema:
        old = known.get(f.name)
        if old is None:
            new.append(f)
        elif not old.type.equals(f.type) and not (
            pa.types.is_timestamp(old.type) and pa.types.is_timestamp(f.type)
        ):
            raise ParaError(
                f"{dt.table_uri}: column {f.name} is {old.type} in the table, {f.type} in the "
                "new files: a table's column types never change"
            )
    if new:
        fields = DeltaSchema.from_arrow(pa.schema(new)).fields
        dt.alter.add_columns([DeltaField(x.name, x.type, nullable=True) for x in fields])
        dt.update_incremental()
        have = _arrow(dt)
    return have


def _arrow(dt: Any) -> pa.Schema:
    return pa.schema(dt.schema().to_arrow())


def commit(
    table_dir: Path,
    schema: pa.Schema,
    add: Iterable[tuple[str, dict[str, str]]] = (),
    remove: Iterable[tuple[str, dict[str, str]]] = (),
    *,
    partitioned: bool = True,
) -> int:
    """One transaction on the table at `table_dir`: files added (paths relative to it, with
    their partition values) and removed.  Creates the table, and adds new columns of
    `schema`, first.  Adding a file the table already holds does nothing, so a merge redone
    after a crash commits each file once.  Returns the new version."""
    from deltalake.transaction import AddAction, RemoveAction

    full = table_schema(schema, partitioned)
    dt = _open(table_dir, full, partitioned)
    current = _evolve(dt, full)
    have = set(dt.get_add_actions(flatten=False).column("path").to_pylist())
    now = int(time.time() * 1000)
    actions: list[AddAction | RemoveAction] = []
    for rel, parts in remove:
        if rel in have:
            actions.append(RemoveAction(rel, True, now, None, dict(parts) or None))
    for rel, parts in add:
        if rel in have:
            continue
        st = os.stat(table_dir / rel)
        stats = json.dumps({"numRecords": _rows(table_dir / rel)})
        actions.append(AddAction(rel, st.st_size, parts, int(st.st_mtime * 1000), True, stats))
    if not actions:
        return int(dt.version())
    dt.create_write_transaction(
        actions, "append", current, partition_by=PARTITIONS if partitioned else None
    )
    dt.update_incremental()
    return int(dt.version())


def _rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


def partition_values(rel: str) -> dict[str, str]:
    """{"cluster": ..., "date": ...} from a path `cluster=C/date=D/FILE` (relative)."""
    out: dict[str, str] = {}
    for part in Path(rel).parts[:-1]:
        key, sep, value = part.partition("=")
        if sep and key in PARTITIONS:
            out[key] = value
    return out


def snapshot(table_dir: Path, version: int | None = None) -> Snapshot | None:
    """The table's current version (or `version`), None when it is not a table yet."""
    from deltalake import DeltaTable

    if not is_table(table_dir):
        return None
    dt = DeltaTable(str(table_dir), version=version)
    actions = dt.get_add_actions(flatten=True)
    paths = actions.column("path").to_pylist()
    names = actions.schema.names
    parts: list[dict[str, str | None]] = [{} for _ in paths]
    for p in PARTITIONS:
        col = f"partition.{p}"
        if col in names:
            for i, v in enumerate(actions.column(col).to_pylist()):
                parts[i][p] = None if v is None else str(v)
    order = sorted(range(len(paths)), key=lambda i: paths[i])
    return Snapshot(
        partitioned=bool(dt.metadata().partition_columns),
        version=int(dt.version()),
        schema=_arrow(dt),
        files=[str(table_dir / paths[i]) for i in order],
        partitions=[parts[i] for i in order],
    )


def overwrite(table_dir: Path, data: pa.Table) -> int:
    """Replace a small unpartitioned table (meta/jobs, hosts, catalogue) by `data`, in one
    commit; the schema only grows (columns `data` lacks are written as typed NULLs)."""
    from deltalake import write_deltalake

    full = table_schema(data.schema, partitioned=False)
    if is_table(table_dir):
        from deltalake import DeltaTable

        dt = DeltaTable(str(table_dir))
        have = {f.name for f in _arrow(dt)}
        full = _evolve(dt, pa.schema([f for f in full if f.name not in have]))
    cols = []
    for f in full:
        if f.name in data.schema.names:
            cols.append(_cast(data.column(f.name), f.type))
        else:
            cols.append(pa.nulls(len(data), f.type))
    table = pa.Table.from_arrays(cols, schema=full)
    table_dir.mkdir(parents=True, exist_ok=True)
    write_deltalake(str(table_dir), table, mode="overwrite", schema_mode="merge")
    from deltalake import DeltaTable

    return int(DeltaTable(str(table_dir)).version())


def _cast(col: pa.ChunkedArray, typ: pa.DataType) -> pa.Array:
    """A column to the table's type; a value that does not fit reads as NULL (a column's type
    never changes: the first one wins)."""
    try:
        return col.cast(typ).combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        out = []
        for v in col.to_pylist():
            try:
                out.append(pa.scalar(v, typ).as_py())
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
                out.append(None)
        return pa.array(out, typ)


def expire(table_dir: Path, grace_hours: float = DEFAULT_GRACE_HOURS) -> list[str]:
    """Delete the files of the table that no version younger than `grace_hours` needs (removed
    more than that long ago), and the log entries older than that.  Returns what it deleted
    (paths relative to the table)."""
    from deltalake import DeltaTable

    if not is_table(table_dir):
        return []
    dt = DeltaTable(str(table_dir))
    if grace_hours != int(grace_hours):
        return _expire_exact(dt, table_dir, grace_hours)
    gone = dt.vacuum(
        retention_hours=max(0, int(grace_hours)), dry_run=False, enforce_retention_duration=False
    )
    return sorted(str(g) for g in gone)


def _expire_exact(dt: Any, table_dir: Path, grace_hours: float) -> list[str]:
    """Expiry for a grace period of a fraction of an hour (delta-rs counts whole hours): files
    that no current action adds and that were removed more than `grace_hours` ago."""
    live = set(dt.get_add_actions(flatten=False).column("path").to_pylist())
    horizon = time.time() - grace_hours * 3600
    removed: dict[str, float] = {}
    for entry in sorted((table_dir / LOG).glob("*.json")):
        for line in entry.read_text().splitlines():
            if not line.strip():
                continue
            action = json.loads(line)
            rm = action.get("remove")
            if rm:
                removed[rm["path"]] = rm.get("deletionTimestamp", 0) / 1000.0
    gone = []
    for rel, when in sorted(removed.items()):
        if rel in live or when > horizon:
            continue
        p = table_dir / rel
        if p.exists():
            p.unlink()
            gone.append(rel)
    return gone
