"""The catalogue: `meta/*.parquet` snapshots of hosts, jobs and metrics, and the DuckDB views.

The ledger is the truth about hosts and jobs; these snapshots make them plain Parquet, so that
Spark or Trino read them like the series.  `catalog.duckdb` holds views over everything with
paths relative to the database directory (DuckDB resolves them through `file_search_path`,
which FeatureDB.connect sets), so the directory can be moved or mounted elsewhere.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from para.collector.layout import Layout
from para.collector.ledger import Ledger
from para.formats.journal import TIME_TYPE

HOSTS_FILE = "hosts.parquet"
JOBS_FILE = "jobs.parquet"
CATALOGUE_FILE = "catalogue.parquet"
# another process holds the file, or this one holds it with other settings (read-only)
_LOCK_WORDS = ("lock", "Conflicting", "being used by another process", "different configuration")

_HOST_BASE = [
    ("host", pa.string()),
    ("cluster", pa.string()),
    ("first_seen", TIME_TYPE),
    ("last_seen", TIME_TYPE),
    ("last_received", TIME_TYPE),
    ("segments", pa.int64()),
    ("values", pa.int64()),
]
_JOB_BASE = [
    ("job_id", pa.string()),
    ("cluster", pa.string()),
    ("scheduler", pa.string()),
    ("user", pa.string()),
    ("name", pa.string()),
    ("hosts", pa.list_(pa.string())),
    ("nodes", pa.int64()),
    ("start", TIME_TYPE),
    ("end", TIME_TYPE),
    ("info", pa.string()),
]
_CAT_FIELDS = ("table", "name", "unit", "kind", "type", "source", "description")


def data_glob(table: str) -> str:
    return f"data/{table}/*/*/*.parquet"


def _ms(epoch: float | None) -> int | None:
    return None if epoch is None else int(round(epoch * 1000))


def _times(epochs: list[float | None]) -> pa.Array:
    return pa.array([_ms(v) for v in epochs], pa.int64()).cast(TIME_TYPE)


def _column(values: list[Any]) -> pa.Array:
    """An Arrow column for free-form values (facts, features): inferred, else JSON text."""
    try:
        arr = pa.array(values)
        # plain values only: nested ones (a list of empty objects, say: a struct with no
        # field, which Parquet cannot store) go in as JSON text, so no host's odd fact can
        # stop the export of every host's
        if _plain_type(arr.type):
            return arr
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        pass
    return pa.array(
        [None if v is None else v if isinstance(v, str) else json.dumps(v) for v in values],
        pa.string(),
    )


def _plain_type(t: pa.DataType, nested: bool = True) -> bool:
    if nested and (pa.types.is_list(t) or pa.types.is_large_list(t)):
        return _plain_type(t.value_type, nested=False)
    return (
        pa.types.is_boolean(t)
        or pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_timestamp(t)
        or pa.types.is_date(t)
    )


def _flatten(
    base: dict[str, pa.Array], extra: list[dict[str, Any]], prefix: str
) -> dict[str, pa.Array]:
    keys = sorted({k for doc in extra for k in doc})
    out = dict(base)
    for k in keys:
        name = k if k not in out else prefix + k
        out[name] = _column([doc.get(k) for doc in extra])
    return out


def _write_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def export_meta(layout: Layout, ledger: Ledger) -> None:
    """Rewrite meta/hosts.parquet, meta/jobs.parquet and meta/catalogue.parquet from the
    ledger (each replaced atomically).  The caller holds the database lock."""
    layout.meta.mkdir(parents=True, exist_ok=True)
    hosts = ledger.query(
        'SELECT host, cluster, first_seen, last_seen, last_received, segments, "values", facts'
        " FROM hosts ORDER BY host"
    )
    base = {
        "host": pa.array([r[0] for r in hosts], pa.string()),
        "cluster": pa.array([r[1] for r in hosts], pa.string()),
        "first_seen": _times([r[2] for r in hosts]),
        "last_seen": _times([r[3] for r in hosts]),
        "last_received": _times([r[4] for r in hosts]),
        "segments": pa.array([r[5] for r in hosts], pa.int64()),
        "values": pa.array([r[6] for r in hosts], pa.int64()),
    }
    facts = [json.loads(r[7]) if r[7] else {} for r in hosts]
    facts = [{k: v for k, v in f.items() if k != "hostname"} for f in facts]
    _write_atomic(pa.table(_flatten(base, facts, "fact_")), layout.meta / HOSTS_FILE)

    jobs = ledger.query(
        'SELECT j.job_id, j.cluster, j.scheduler, j.user, j.name, j.start, j."end", j.info,'
        " f.features FROM jobs j LEFT JOIN job_features f USING (job_id) ORDER BY j.start, j.job_id"
    )
    hosts_of: dict[str, list[str]] = {}
    for job_id, host in ledger.query("SELECT job_id, host FROM job_hosts ORDER BY job_id, host"):
        hosts_of.setdefault(job_id, []).append(host)
    cols: dict[str, pa.Array] = {
        "job_id": pa.array([r[0] for r in jobs], pa.string()),
        "cluster": pa.array([r[1] for r in jobs], pa.string()),
        "scheduler": pa.array([r[2] for r in jobs], pa.string()),
        "user": pa.array([r[3] for r in jobs], pa.string()),
        "name": pa.array([r[4] for r in jobs], pa.string()),
        "hosts": pa.array([hosts_of.get(r[0], []) for r in jobs], pa.list_(pa.string())),
        "nodes": pa.array([len(hosts_of.get(r[0], [])) for r in jobs], pa.int64()),
        "start": _times([r[5] for r in jobs]),
        "end": _times([r[6] for r in jobs]),
        "info": pa.array([r[7] for r in jobs], pa.string()),
    }
    features = [json.loads(r[8]) if r[8] else {} for r in jobs]
    _write_atomic(pa.table(_flatten(cols, features, "feature_")), layout.meta / JOBS_FILE)

    entries = []
    for table, columns in sorted(ledger.table_columns().items()):
        for c in columns:
            entries.append({k: str(c.get(k, table if k == "table" else "")) for k in _CAT_FIELDS})
    cat = pa.table({k: pa.array([e[k] for e in entries], pa.string()) for k in _CAT_FIELDS})
    _write_atomic(cat, layout.meta / CATALOGUE_FILE)


def empty_meta(layout: Layout) -> None:
    """The snapshots of a new database (so that its views always have something to read)."""
    layout.meta.mkdir(parents=True, exist_ok=True)
    for name, fields in ((HOSTS_FILE, _HOST_BASE), (JOBS_FILE, _JOB_BASE)):
        if not (layout.meta / name).exists():
            _write_atomic(pa.schema(fields).empty_table(), layout.meta / name)
    if not (layout.meta / CATALOGUE_FILE).exists():
        schema = pa.schema([(k, pa.string()) for k in _CAT_FIELDS])
        _write_atomic(schema.empty_table(), layout.meta / CATALOGUE_FILE)


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def view_sql(table: str, temp: bool = False, root: Path | None = None) -> str:
    kind = "TEMP VIEW" if temp else "VIEW"
    where = data_glob(table) if root is None else f"{root}/{data_glob(table)}"
    return (
        f"CREATE OR REPLACE {kind} {_quote_ident(table)} AS SELECT * FROM read_parquet("
        f"{_quote_str(where)}, hive_partitioning = true, union_by_name = true)"
    )


META_VIEWS = {
    "hosts": f"meta/{HOSTS_FILE}",
    "jobs": f"meta/{JOBS_FILE}",
    "catalogue": f"meta/{CATALOGUE_FILE}",
}


def _meta_view_sql(name: str, temp: bool = False, root: Path | None = None) -> str:
    kind = "TEMP VIEW" if temp else "VIEW"
    where = META_VIEWS[name] if root is None else f"{root}/{META_VIEWS[name]}"
    return (
        f"CREATE OR REPLACE {kind} {_quote_ident(name)} AS "
        f"SELECT * FROM read_parquet({_quote_str(where)})"
    )


def is_lock_error(e: Exception) -> bool:
    kinds = (duckdb.IOException, duckdb.ConnectionException)
    return isinstance(e, kinds) and any(w in str(e) for w in _LOCK_WORDS)


def open_duckdb(
    path: Path, read_only: bool, timeout: float, sleep: Callable[[float], None] = time.sleep
) -> duckdb.DuckDBPyConnection:
    """Open the catalogue, waiting while another process holds it for writing."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.Error as e:
            if not is_lock_error(e) or time.monotonic() >= deadline:
                raise
        sleep(delay)
        delay = min(delay * 2, 0.5)


def set_root(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    con.execute(f"SET file_search_path = {_quote_str(str(root.resolve()))}")


def catalog_views(con: duckdb.DuckDBPyConnection) -> set[str]:
    rows = con.execute(
        "SELECT view_name FROM duckdb_views() WHERE NOT internal AND database_name = "
        "current_database() AND schema_name = 'main'"
    ).fetchall()
    return {r[0] for r in rows}


def refresh(layout: Layout, timeout: float = 5.0) -> bool:
    """Make catalog.duckdb's views match the tables on disk.  False if another process held
    it past `timeout` (readers of FeatureDB.connect never depend on it being fresh)."""
    try:
        con = open_duckdb(layout.catalog, read_only=False, timeout=timeout)
    except duckdb.Error as e:
        if is_lock_error(e):
            return False
        raise
    try:
        set_root(con, layout.root)
        tables = layout.tables()
        have = catalog_views(con)
        for table in tables:
            con.execute(view_sql(table))
        for name in META_VIEWS:
            con.execute(_meta_view_sql(name))
        for stale in have - set(tables) - set(META_VIEWS):
            con.execute(f"DROP VIEW IF EXISTS {_quote_ident(stale)}")
        con.execute(
            "CREATE OR REPLACE TABLE para_catalog AS SELECT 1 AS version, "
            f"{_quote_str(str(layout.root.resolve()))} AS built_at_path, now() AS refreshed"
        )
    finally:
        con.close()
    return True


def connect(
    layout: Layout,
    read_only: bool,
    empty_tables: dict[str, list[dict[str, str]]],
    timeout: float = 30.0,
) -> duckdb.DuckDBPyConnection:
    """A connection whose views show every table on disk now, whatever the catalogue file
    says: tables that appeared since its last refresh get temporary views, and views of
    tables whose files are all gone (retention) read as empty tables with their columns."""
    con = open_duckdb(layout.catalog, read_only=read_only, timeout=timeout)
    try:
        set_root(con, layout.root)
        tables = set(layout.tables())
        have = catalog_views(con)
        for table in sorted(tables - have):
            con.execute(view_sql(table, temp=True))
        for name in sorted(set(META_VIEWS) - have):
            con.execute(_meta_view_sql(name, temp=True))
        for table in sorted((have | set(empty_tables)) - tables - set(META_VIEWS)):
            con.execute(_empty_view_sql(table, empty_tables.get(table, [])))
    except BaseException:
        con.close()
        raise
    return con


_SQL_TYPES = {"int": "BIGINT", "float": "DOUBLE", "str": "VARCHAR"}


def _empty_view_sql(table: str, columns: list[dict[str, str]]) -> str:
    cols = ["NULL::VARCHAR AS host", "NULL::VARCHAR AS job_id"]
    for c in columns:
        if c["name"] in ("host", "job_id"):
            continue
        typ = "TIMESTAMPTZ" if c["name"] == "t" else _SQL_TYPES.get(c["type"], "VARCHAR")
        cols.append(f"NULL::{typ} AS {_quote_ident(c['name'])}")
    cols += ["NULL::VARCHAR AS cluster", "NULL::DATE AS date"]
    return (
        f"CREATE OR REPLACE TEMP VIEW {_quote_ident(table)} AS SELECT {', '.join(cols)} WHERE false"
    )


def connect_locked(
    layout: Layout, empty_tables: dict[str, list[dict[str, str]]]
) -> duckdb.DuckDBPyConnection:
    """A connection for queries from people the collector does not trust with its files
    (what a portal serves): the same views, in memory, and DuckDB locked down before the
    first query: no file outside data/ and meta/ of this database, no extension installed
    or loaded, no setting changed back.  Pair it with query.check_select (files under
    data/ could be written by a COPY: only SELECT statements may run)."""
    root = layout.root.resolve()
    con = duckdb.connect(
        ":memory:",
        config={"autoinstall_known_extensions": False, "autoload_known_extensions": False},
    )
    try:
        tables = set(layout.tables())
        for table in sorted(tables):
            con.execute(view_sql(table, root=root))
        for name in sorted(META_VIEWS):
            if (root / META_VIEWS[name]).exists():
                con.execute(_meta_view_sql(name, root=root))
        for table in sorted(set(empty_tables) - tables):
            con.execute(_empty_view_sql(table, empty_tables[table]))
        allowed = ", ".join(_quote_str(f"{root}/{d}/") for d in ("data", "meta"))
        con.execute(f"SET allowed_directories = [{allowed}]")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con
