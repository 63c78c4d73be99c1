"""`para query "SQL"`: DuckDB SQL on the feature database, as a table, CSV, JSON or Parquet.

Results stream: CSV, JSON and Parquet outputs never hold the whole result in memory.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import decimal
import json
import math
import uuid
from pathlib import Path
from typing import Any, TextIO

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from para.collector.db import FeatureDB
from para.errors import ParaError

BATCH_ROWS = 10_000


def locked_connection(db_path: str | Path) -> duckdb.DuckDBPyConnection:
    """What anything that serves queries (the web portal) calls: a DuckDB connection over the
    database's views that cannot read or write other files, install or load extensions, or
    unlock itself.  Run only what check_select() lets through on it."""
    db = FeatureDB(db_path)
    try:
        return db.connect_locked()
    finally:
        db.close()


def check_select(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse anything but SELECT statements (a COPY could write under data/)."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as e:
        raise ParaError(f"query failed: {str(e).strip()}") from None
    for st in statements:
        if st.type != duckdb.StatementType.SELECT:
            raise ParaError(
                f"only SELECT queries may run here, not {st.type.name}",
                hint="this connection is locked down (para query --locked)",
            )


def run(
    db_path: str | Path,
    sql: str,
    *,
    fmt: str = "table",
    out: TextIO,
    parquet_out: str | None = None,
    max_rows: int = 1000,
    locked: bool = False,
    engine: str = "duckdb",
) -> int:
    """Run `sql`; returns the number of rows written.  `locked`: as a portal would, on
    locked_connection(), SELECT only.  `engine="spark"`: on Spark in local mode (spark.py),
    the result written by the same code as DuckDB's."""
    db = FeatureDB(db_path)
    if engine == "spark":
        from para.collector import spark

        db._require()
        result = spark.query(db.root, sql)
        con = duckdb.connect()
        con.register("spark_result", result)
        sql = "SELECT * FROM spark_result"
    else:
        con = db.connect_locked() if locked else db.connect(read_only=True)
    try:
        if locked:
            check_select(con, sql)
        if fmt == "parquet":
            assert parquet_out is not None
            rel = con.sql(sql)
            return 0 if rel is None else _parquet(rel.to_arrow_reader(BATCH_ROWS), parquet_out)
        result = con.execute(sql)
        if result.description is None:
            return 0
        if fmt == "csv":
            return _csv(result, out)
        if fmt == "json":
            return _json(result, out)
        return _table(result, out, max_rows)
    except duckdb.Error as e:
        raise ParaError(
            f"query failed: {str(e).strip()}",
            hint=f"tables in {db_path}: {', '.join(_tables(con))}; "
            '`para query "DESCRIBE node"` shows a table\'s columns',
        ) from None
    finally:
        con.close()
        db.close()


def _tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    rows = con.execute(
        "SELECT DISTINCT table_name FROM information_schema.tables ORDER BY 1"
    ).fetchall()
    return [r[0] for r in rows if r[0] != "para_catalog"]


def _names(result: duckdb.DuckDBPyConnection) -> list[str]:
    return [d[0] for d in result.description or []]


def _batches(result: duckdb.DuckDBPyConnection) -> Any:
    while True:
        rows = result.fetchmany(BATCH_ROWS)
        if not rows:
            return
        yield rows


def plain(v: Any) -> Any:
    """A JSON-able value: times as ISO 8601, decimals as numbers, bytes as base64."""
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, dt.timedelta):
        return v.total_seconds()
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(v)).decode()
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    return v


def _csv(result: duckdb.DuckDBPyConnection, out: TextIO) -> int:
    w = csv.writer(out, lineterminator="\n")
    w.writerow(_names(result))
    n = 0
    for rows in _batches(result):
        for row in rows:
            w.writerow(
                [
                    ""
                    if v is None
                    else json.dumps(plain(v))
                    if isinstance(v, (list, dict))
                    else plain(v)
                    for v in row
                ]
            )
        n += len(rows)
    return n


def _json(result: duckdb.DuckDBPyConnection, out: TextIO) -> int:
    names = _names(result)
    n = 0
    out.write("[")
    for rows in _batches(result):
        for row in rows:
            out.write(",\n " if n else "\n ")
            out.write(json.dumps({k: plain(v) for k, v in zip(names, row)}))
            n += 1
    out.write("\n]\n" if n else "]\n")
    return n


def _parquet(reader: pa.RecordBatchReader, path: str) -> int:
    n = 0
    tmp = Path(path).with_name(f".{Path(path).name}.tmp")
    try:
        with pq.ParquetWriter(tmp, reader.schema, compression="zstd") as w:
            for batch in reader:
                w.write_batch(batch)
                n += batch.num_rows
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ParaError(f"cannot write {path}: {e.strerror}") from e
    return n


def _table(result: duckdb.DuckDBPyConnection, out: TextIO, max_rows: int) -> int:
    from rich.console import Console
    from rich.table import Table

    names = _names(result)
    rows = result.fetchmany(max_rows + 1)
    more = len(rows) > max_rows
    rows = rows[:max_rows]
    table = Table(show_edge=False, header_style="bold")
    for name, desc in zip(names, result.description or []):
        numeric = str(desc[1]).upper() in {
            "NUMBER",
            "BIGINT",
            "INTEGER",
            "DOUBLE",
            "FLOAT",
            "HUGEINT",
            "SMALLINT",
            "TINYINT",
            "UBIGINT",
            "UINTEGER",
            "DECIMAL",
        }
        table.add_column(name, justify="right" if numeric else "left", overflow="fold")
    for row in rows:
        table.add_row(*("NULL" if v is None else _cell(v) for v in row))
    console = Console(file=out, width=max(100, min(240, 12 * len(names))), soft_wrap=False)
    console.print(table)
    note = f"{len(rows)} row{'s' if len(rows) != 1 else ''}"
    if more:
        note += " shown; more rows follow (--max-rows, or --csv/--json/--parquet for all)"
    console.print(f"[dim]{note}[/dim]")
    return len(rows)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, dt.datetime):
        return v.isoformat(sep=" ", timespec="milliseconds")
    return str(plain(v))


def function_hours_sql(since: str | None = None, until: str | None = None) -> str:
    """Functions ranked by core-hours, site-wide: the leaf frame of the agents' call-stack
    samples (each stands for `sample_s` CPU seconds; `para profile` rows carry none and are
    left out, their jobs being sampled by the agent too)."""
    where = ["state = 'cpu'", "sample_s IS NOT NULL"]
    for val, op in ((since, ">="), (until, "<")):
        if val is not None:
            where.append(f"t {op} CAST('{_literal(val)}' AS TIMESTAMPTZ)")
    return (
        "SELECT string_split(stack, ';')[-1] AS function, "
        "round(sum(samples * sample_s) / 3600.0, 6) AS core_hours, "
        "count(DISTINCT job_id) AS jobs, count(DISTINCT host) AS hosts, "
        "sum(samples) AS samples "
        f"FROM stacks WHERE {' AND '.join(where)} "
        "GROUP BY 1 ORDER BY core_hours DESC, function"
    )


def _literal(v: str) -> str:
    """A time given on the command line, as an SQL string literal's body."""
    return v.replace("'", "''")
