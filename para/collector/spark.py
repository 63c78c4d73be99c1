"""The feature database in Apache Spark: every table registered with one call, same SQL as DuckDB.

`register(spark, db)` makes a temporary view per table (node, memory, ..., jobs, hosts,
catalogue) over the table's current snapshot (dataset.py): exactly its files, the table's
typed schema (a column no file has reads as a typed NULL), `cluster` a string ("001" stays
"001") and `date` a DATE, both from the file's partition.  The snapshot's files stay on
disk for the expiry grace period (24 h by default), so a DataFrame planned now reads the
same rows even if compaction runs meanwhile.

`date` is the UTC date of `t`; `register` sets the session's time zone to UTC (unless told
not to) so that `to_date(t) = date` holds, and double-quoted identifiers (`"end"`,
`"user"`) as in DuckDB, so `para query --engine spark` runs the same SQL as the default.

Sites with the Delta Lake jars (delta-spark) can instead read each table natively with
`spark.read.format("delta").load("DB/data/node")` (docs/database.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from para.collector import catalog, dataset
from para.collector.layout import Layout
from para.errors import ParaError

HINT = "pip install pyspark (4.x needs Java 17: apt install openjdk-17-jre-headless)"


def session(master: str = "local[2]", app: str = "para") -> Any:
    """A local SparkSession set up as `register` wants it (UTC, small shuffles)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as e:
        raise ParaError("Apache Spark is not installed", hint=HINT) from e
    spark = (
        SparkSession.builder.master(master)
        .appName(app)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.ansi.doubleQuotedIdentifiers", "true")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.memory", "1g")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def spark_type(t: pa.DataType) -> str:
    """Spark SQL DDL type of an Arrow type of the dataset."""
    if pa.types.is_timestamp(t):
        return "TIMESTAMP" if t.tz else "TIMESTAMP_NTZ"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"ARRAY<{spark_type(t.value_type)}>"
    simple = {
        "int8": "TINYINT",
        "int16": "SMALLINT",
        "int32": "INT",
        "int64": "BIGINT",
        "float": "FLOAT",
        "double": "DOUBLE",
        "bool": "BOOLEAN",
        "date32[day]": "DATE",
    }
    return simple.get(str(t), "STRING")


def _ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def table_frame(spark: Any, table_dir: Path) -> Any:
    """A DataFrame of the table's current snapshot, None when the directory is no table."""
    from pyspark.sql import functions as F

    snap = dataset.snapshot(table_dir)
    if snap is None:
        return None
    data = snap.data_schema
    ddl = ", ".join(f"{_ident(f.name)} {spark_type(f.type)}" for f in data) or "_empty INT"
    partitioned = snap.partitioned
    if not snap.files:
        full = ", ".join(f"{_ident(f.name)} {spark_type(f.type)}" for f in snap.schema)
        return spark.createDataFrame([], full)
    # files listed one by one: no directory listing (nothing removed but not yet expired is
    # read) and no partition inference (which turns cluster "001" into the number 1)
    df = spark.read.schema(ddl).parquet(*snap.files)
    if not partitioned:
        return df
    path = F.col("_metadata.file_path")
    return df.select(
        *[F.col(_ident(f.name)) for f in data],
        F.regexp_extract(path, r"/cluster=([^/]+)/", 1).alias("cluster"),
        F.to_date(F.regexp_extract(path, r"/date=([0-9]{4}-[0-9]{2}-[0-9]{2})/", 1)).alias("date"),
    )


def register(spark: Any, db: str | Path, *, utc: bool = True) -> list[str]:
    """Temporary views of every table of the database at `db` (its current snapshots), in
    one call; returns their names.  `utc`: set the session time zone to UTC, in which the
    `date` partition is the date of `t`."""
    layout = Layout(Path(db).expanduser())
    if not layout.exists():
        raise ParaError(f"no feature database at {layout.root}")
    if utc:
        spark.conf.set("spark.sql.session.timeZone", "UTC")
    names = []
    views = {t: layout.data / t for t in layout.tables()}
    views.update({name: layout.root / where for name, where in catalog.META_VIEWS.items()})
    for name, table_dir in sorted(views.items()):
        df = table_frame(spark, table_dir)
        if df is not None:
            df.createOrReplaceTempView(name)
            names.append(name)
    return names


def query(db: str | Path, sql: str, spark: Any | None = None) -> pa.Table:
    """Run `sql` on Spark over the database; the result as an Arrow table."""
    spark = spark or session()
    register(spark, db)
    try:
        df = spark.sql(sql)
    except Exception as e:  # pyspark's AnalysisException and friends
        raise ParaError(f"query failed on Spark: {str(e).strip()[:2000]}") from None
    return df.toArrow()
