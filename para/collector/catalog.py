"""The catalogue: the Delta tables meta/hosts, meta/jobs and meta/catalogue, and the views.

The ledger is the truth about hosts and jobs; these tables make them typed Delta tables, so
that Spark or Trino read them like the series.  Every view (DuckDB's, and spark.py's) reads
one snapshot of its table: exactly the files of that version (dataset.py).  `catalog.duckdb`
holds views with paths relative to the database directory (DuckDB resolves them through
`file_search_path`, which FeatureDB.connect sets), so the directory can be moved or mounted
elsewhere.
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

from para.collector import dataset
from para.collector.layout import Layout
from para.collector.ledger import Ledger
from para.formats.journal import TIME_TYPE

# Delta tables under meta/ (dataset.py): replaced in one commit at each export
HOSTS_FILE = "hosts"
JOBS_FILE = "jobs"
CATALOGUE_FILE = "catalogue"
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
# The analyzer's features (para/analyzer/jobs.py features()): columns of `jobs` from the
# start, typed, NULL until a job is analysed, so that every engine reads one schema.
# Numbers are doubles whatever JSON made of them; a feature not declared here gets the type
# of its first value and keeps it (the schema only grows).
JOB_FEATURES: list[tuple[str, pa.DataType]] = [
    ("analysis_version", pa.int64()),
    ("duration_s", pa.float64()),
    ("cores_mean", pa.float64()),
    ("cpu_util_pct", pa.float64()),
    ("peak_rss_bytes", pa.float64()),
    ("peak_mem_bytes", pa.float64()),
    ("ipc", pa.float64()),
    ("flops_per_s", pa.float64()),
    ("mem_bandwidth_bytes_per_s", pa.float64()),
    ("read_bps", pa.float64()),
    ("write_bps", pa.float64()),
    ("net_bps", pa.float64()),
    ("gpu_util_pct", pa.float64()),
    ("gpu_peak_mem_bytes", pa.float64()),
    ("energy_j", pa.float64()),
    ("imbalance_pct", pa.float64()),
    ("bottlenecks", pa.list_(pa.string())),
    ("worst_severity", pa.string()),
    ("phases", pa.list_(pa.string())),
    ("top_function", pa.string()),
    ("counters", pa.list_(pa.string())),
]


def data_glob(table: str) -> str:
    """Every file on disk, including those compaction removed but expiry has not deleted
    yet: for recovery tools only; readers use source_sql (the current snapshot)."""
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
    base: dict[str, pa.Array],
    extra: list[dict[str, Any]],
    prefix: str,
    declared: list[tuple[str, pa.DataType]] = (),  # type: ignore[assignment]
) -> dict[str, pa.Array]:
    types = dict(declared)
    keys = sorted({k for doc in extra for k in doc} | set(types))
    out = dict(base)
    for k in keys:
        name = k if k not in out else prefix + k
        values = [doc.get(k) for doc in extra]
        out[name] = _typed(values, types[k]) if k in types else _column(values)
    return out


def _typed(values: list[Any], typ: pa.DataType) -> pa.Array:
    """A declared column: values of another type read as NULL rather than change its type."""
    try:
        return pa.array(values, typ)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
        out = []
        for v in values:
            try:
                out.append(pa.scalar(v, typ).as_py())
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
                out.append(None)
        return pa.array(out, typ)


def _write_atomic(table: pa.Table, path: Path) -> None:
    """One commit to the Delta table at `path` (readers of the previous version keep their
    files until expiry); an old single-file meta/NAME.parquet goes."""
    table = pa.table(
        {n: c for n, c in zip(table.column_names, table.columns) if not pa.types.is_null(c.type)}
    )
    dataset.overwrite(path, table)
    path.with_name(path.name + ".parquet").unlink(missing_ok=True)


def export_meta(layout: Layout, ledger: Ledger) -> None:
    """Rewrite the Delta tables meta/hosts, meta/jobs and meta/catalogue from the
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
    _write_atomic(
        pa.table(_flatten(cols, features, "feature_", JOB_FEATURES)), layout.meta / JOBS_FILE
    )

    entries = []
    for table, columns in sorted(ledger.table_columns().items()):
        for c in columns:
            entries.append({k: str(c.get(k, table if k == "table" else "")) for k in _CAT_FIELDS})
    cat = pa.table({k: pa.array([e[k] for e in entries], pa.string()) for k in _CAT_FIELDS})
    _write_atomic(cat, layout.meta / CATALOGUE_FILE)


def empty_meta(layout: Layout) -> None:
    """The snapshots of a new database (so that its views always have something to read)."""
    layout.meta.mkdir(parents=True, exist_ok=True)
    jobs = _JOB_BASE + [(n, t) for n, t in JOB_FEATURES if n not in dict(_JOB_BASE)]
    for name, fields in ((HOSTS_FILE, _HOST_BASE), (JOBS_FILE, jobs)):
        if not dataset.is_table(layout.meta / name):
            _write_atomic(pa.schema(fields).empty_table(), layout.meta / name)
    if not dataset.is_table(layout.meta / CATALOGUE_FILE):
        schema = pa.schema([(k, pa.string()) for k in _CAT_FIELDS])
        _write_atomic(schema.empty_table(), layout.meta / CATALOGUE_FILE)


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


_DUCK_TYPES = {
    "int8": "TINYINT",
    "int16": "SMALLINT",
    "int32": "INTEGER",
    "int64": "BIGINT",
    "float": "FLOAT",
    "double": "DOUBLE",
    "string": "VARCHAR",
    "large_string": "VARCHAR",
    "bool": "BOOLEAN",
    "date32[day]": "DATE",
}


def duck_type(t: pa.DataType) -> str:
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ" if t.tz else "TIMESTAMP"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return duck_type(t.value_type) + "[]"
    return _DUCK_TYPES.get(str(t), "VARCHAR")


META_VIEWS = {
    "hosts": f"meta/{HOSTS_FILE}",
    "jobs": f"meta/{JOBS_FILE}",
    "catalogue": f"meta/{CATALOGUE_FILE}",
}


def source_sql(
    con: duckdb.DuckDBPyConnection, table_dir: Path, rel_to: Path | None = None
) -> str | None:
    """A SELECT of the table's current snapshot (dataset.py): exactly its files, every
    column of its schema typed (a column no file of the snapshot has reads as a typed NULL),
    `cluster` a string and `date` a DATE whatever they look like.  Paths relative to
    `rel_to` when given (the catalogue file: DuckDB resolves them through file_search_path).
    None when the directory is not a table."""
    snap = dataset.snapshot(table_dir)
    if snap is None:
        return None
    partitioned = snap.partitioned
    files = [os.path.relpath(f, rel_to) if rel_to is not None else f for f in snap.files]
    present: set[str] = set()
    src = ""
    if files:
        hive = (
            ", hive_partitioning = true, hive_types = {'cluster': VARCHAR, 'date': DATE}"
            if partitioned
            else ", hive_partitioning = false"
        )
        listed = ", ".join(_quote_str(f) for f in files)
        src = f"read_parquet([{listed}]{hive}, union_by_name = true)"
        present = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()}
    cols = [
        _quote_ident(f.name)
        if f.name in present
        else f"NULL::{duck_type(f.type)} AS {_quote_ident(f.name)}"
        for f in snap.schema
    ]
    return f"SELECT {', '.join(cols)} " + (f"FROM {src}" if files else "WHERE false")


def view_sql(
    con: duckdb.DuckDBPyConnection,
    name: str,
    table_dir: Path,
    temp: bool = False,
    rel_to: Path | None = None,
) -> str | None:
    body = source_sql(con, table_dir, rel_to)
    if body is None:
        return None
    kind = "TEMP VIEW" if temp else "VIEW"
    return f"CREATE OR REPLACE {kind} {_quote_ident(name)} AS {body}"


def _all_views(layout: Layout) -> dict[str, Path]:
    views = {t: layout.data / t for t in layout.tables()}
    views.update({name: layout.root / where for name, where in META_VIEWS.items()})
    return views


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
    # `date` is the UTC date of `t`: so is CAST(t AS DATE) here (as in para's Spark session)
    con.execute("SET TimeZone = 'UTC'")


def catalog_views(con: duckdb.DuckDBPyConnection) -> set[str]:
    rows = con.execute(
        "SELECT view_name FROM duckdb_views() WHERE NOT internal AND database_name = "
        "current_database() AND schema_name = 'main'"
    ).fetchall()
    return {r[0] for r in rows}


def refresh(layout: Layout, timeout: float = 5.0) -> bool:
    """Make catalog.duckdb's views show the tables' current snapshots (for the DuckDB CLI;
    FeatureDB.connect never depends on it being fresh).  False if another process held it
    past `timeout`."""
    try:
        con = open_duckdb(layout.catalog, read_only=False, timeout=timeout)
    except duckdb.Error as e:
        if is_lock_error(e):
            return False
        raise
    try:
        set_root(con, layout.root)
        have = catalog_views(con)
        made = set()
        for name, table_dir in _all_views(layout).items():
            sql = view_sql(con, name, table_dir, rel_to=layout.root.resolve())
            if sql is not None:
                con.execute(sql)
                made.add(name)
        for stale in have - made:
            con.execute(f"DROP VIEW IF EXISTS {_quote_ident(stale)}")
        con.execute(
            "CREATE OR REPLACE TABLE para_catalog AS SELECT 2 AS version, "
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
    """A connection whose views show every table's current snapshot, whatever the catalogue
    file says (temporary views over its own): the files of that snapshot stay on disk for
    the grace period of dataset.expire however the tables change meanwhile.  Tables the
    ledger knows but whose data is gone read as empty tables with their columns."""
    con = open_duckdb(layout.catalog, read_only=read_only, timeout=timeout)
    try:
        set_root(con, layout.root)
        _create_views(con, layout, empty_tables, temp=True)
    except BaseException:
        con.close()
        raise
    return con


def _create_views(
    con: duckdb.DuckDBPyConnection,
    layout: Layout,
    empty_tables: dict[str, list[dict[str, str]]],
    temp: bool,
) -> None:
    made = set()
    for name, table_dir in _all_views(layout).items():
        sql = view_sql(con, name, table_dir, temp=temp)
        if sql is not None:
            con.execute(sql)
            made.add(name)
    for table in sorted(set(empty_tables) - made - set(META_VIEWS)):
        con.execute(_empty_view_sql(table, empty_tables.get(table, [])))


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
        con.execute("SET TimeZone = 'UTC'")
        _create_views(con, Layout(root), empty_tables, temp=True)
        allowed = ", ".join(_quote_str(f"{root}/{d}/") for d in ("data", "meta"))
        con.execute(f"SET allowed_directories = [{allowed}]")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con
