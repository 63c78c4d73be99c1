"""The feature database read by a real Apache Spark (pyspark, local mode, Java 17), against
DuckDB: the findings of issue 14, each reproduced, on a database built by a real `para agent
run` shipping to a real `para collector serve --cluster 001`, plus two `para profile`
recordings of (pretend) Slurm jobs imported with `para collect` and analysed by `para jobs
--analyze`.  One SparkSession for the module (local[1]: the machine is small)."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from para.collector import dataset
from para.collector import spark as pspark
from para.collector.db import FeatureDB
from tests.collector_support import CollectorProcess, column, make_pki, wait_for, write_para

from .conftest import REPO, SERVICES, _children, cannot_run, need_tool, para_cmd, run_para

pytestmark = pytest.mark.slow
WORKLOADS = Path(__file__).parent / "analyzer_workloads.py"
HOST = "rack1-n001"


@pytest.fixture(scope="module")
def spark() -> Any:
    need_tool("java", "apt install openjdk-17-jre-headless")
    try:
        import pyspark  # noqa: F401
    except ImportError:
        cannot_run("pyspark is not installed", "pip install -e '.[test]'")
    before = {int(c.split()[0]) for c in _children(os.getpid())}
    s = pspark.session(master="local[1]", app="para-tests")
    # the JVM serves every test of the module: a service, not a leak (stopped below)
    jvm = {int(c.split()[0]) for c in _children(os.getpid())} - before
    SERVICES.update(jvm)
    yield s
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    proc = getattr(gateway, "proc", None)
    s.stop()
    if gateway is not None:
        gateway.shutdown()
    SparkContext._gateway = SparkContext._jvm = None  # a later session starts its own JVM
    if proc is not None:
        proc.stdin.close()  # the JVM ends when its parent's pipe closes
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=60)
    for pid in jvm:
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists() or _zombie(pid), timeout=60)
    SERVICES.difference_update(jvm)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _agent_segments(tmp: Path, db: Path) -> None:
    """A real agent shipping to a real collector (mutual TLS) until 2 segments are merged."""
    pki = make_pki(tmp / "pki", [HOST])
    col = CollectorProcess(db, pki, "--cluster", "001", "--compact-every", "0").start()
    spool = tmp / "spool"
    (tmp / "agent.toml").write_text(
        f"""
[agent]
interval = 0.2
spool_dir = "{spool}"
host = "{HOST}"
[segments]
max_seconds = 10
[jobs]
environ = false
[collector]
url = "grpc+tls://127.0.0.1:{col.port}"
ca_file = "{pki}/ca.crt"
cert_file = "{pki}/issued/{HOST}.crt"
key_file = "{pki}/issued/{HOST}.key"
send_window = 0.1
poll_interval = 0.1
"""
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with open(tmp / "agent.log", "w") as log:
        agent = subprocess.Popen(
            [*para_cmd(), "agent", "run", "--config", str(tmp / "agent.toml")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:

            def merged() -> bool:
                assert agent.poll() is None, (tmp / "agent.log").read_text()
                return FeatureDB(db).exists() and FeatureDB(db).status()["segments"] >= 2

            wait_for(merged, timeout=180, what="2 agent segments merged")
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=60)
            col.stop()
    assert agent.returncode == 0, (tmp / "agent.log").read_text()


def _profiles(tmp: Path, db: Path) -> None:
    for job, kind, user in (("501", "imbalanced", "alice"), ("502", "grow", "bob")):
        env = dict(os.environ, SLURM_JOB_ID=job, SLURM_JOB_NAME=f"wl-{kind}",
                   SLURM_JOB_USER=user, SLURM_JOB_NUM_NODES="1", TMPDIR=str(tmp))  # fmt: skip
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        r = subprocess.run(
            [*para_cmd(), "profile", "-q", "-i", "0.2", "-o", str(tmp / f"{job}.para"), "--",
             sys.executable, str(WORKLOADS), kind, "3"],
            env=env, capture_output=True, text=True, timeout=180)  # fmt: skip
        assert r.returncode == 0, r.stderr
    r = run_para("collect", "--db", str(db), "--cluster", "001", "-q",
                 str(tmp / "501.para"), str(tmp / "502.para"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = run_para("jobs", "--db", str(db), "--analyze", timeout=300)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("sparkdb")
    db = tmp / "db"
    _agent_segments(tmp, db)
    _profiles(tmp, db)
    return db


@pytest.fixture()
def db(built: Path, tmp_path: Path) -> Path:
    """A copy per test: tests compact, expire and change schemas."""
    shutil.copytree(built, tmp_path / "db")
    return tmp_path / "db"


# the same SQL on both engines (double-quoted identifiers as in DuckDB)
QUERIES = {
    "job features": """
        SELECT job_id, "user", name, nodes, cpu_util_pct, peak_rss_bytes, ipc,
               analysis_version, array_contains(bottlenecks, 'load_imbalance') AS imbalanced
        FROM jobs ORDER BY job_id""",
    "per-host aggregates": """
        SELECT host, cluster, count(*) AS n, avg(load1) AS load1, max(cpu_user) - min(cpu_user)
               AS user_ticks, min(t) AS first, max(t) AS last, count(DISTINCT date) AS days
        FROM node GROUP BY host, cluster ORDER BY host""",
    "jobs join node": """
        SELECT j.job_id, j.cluster, count(*) AS n, sum(n.procs_running) AS running,
               max(n.t) <= j."end" AS inside
        FROM jobs j JOIN node n ON n.job_id = j.job_id AND n.cluster = j.cluster
        GROUP BY j.job_id, j.cluster, j."end" ORDER BY j.job_id""",
    "hosts join node": """
        SELECT h.host, h.cluster, count(*) AS n FROM node n
        JOIN hosts h ON n.host = h.host AND n.cluster = h.cluster
        GROUP BY h.host, h.cluster ORDER BY h.host""",
}


def _norm(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        return v.astimezone(dt.timezone.utc).replace(tzinfo=None)
    if isinstance(v, float):
        return round(v, 6) if math.isfinite(v) else None
    return v


def _duck(db: Path, sql: str) -> list[tuple[Any, ...]]:
    con = FeatureDB(db).connect()
    try:
        return [tuple(_norm(v) for v in r) for r in con.execute(sql).fetchall()]
    finally:
        con.close()


def _spark(spark: Any, db: Path, sql: str) -> list[tuple[Any, ...]]:
    pspark.register(spark, db)
    return _rows(spark.sql(sql))


def _rows(df: Any) -> list[tuple[Any, ...]]:
    return [tuple(_norm(v) for v in row.values()) for row in df.toArrow().to_pylist()]


def _same(spark: Any, db: Path) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    for what, sql in QUERIES.items():
        duck = _duck(db, sql)
        assert duck, f"{what}: no rows"
        assert _spark(spark, db, sql) == duck, what
        out[what] = duck
    return out


def test_every_table_in_one_call_with_the_numbers_of_duckdb(spark: Any, db: Path) -> None:
    """Finding: every table had to be registered by hand (read.parquet(db/data) fails with
    CONFLICTING_DIRECTORY_STRUCTURES; CREATE TABLE ... LOCATION returns 0 rows)."""
    names = pspark.register(spark, db)
    con = FeatureDB(db).connect()
    duck_views = {
        r[0]
        for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_name <> 'para_catalog'"
        ).fetchall()
    }
    assert set(names) == duck_views
    assert {"node", "proc", "jobs", "hosts", "catalogue"} <= set(names)
    for name in names:
        assert (
            spark.table(name).count() == con.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
        ), name
    con.close()
    got = _same(spark, db)
    jobs = {r[0]: r for r in got["job features"]}
    assert {"501", "502"} <= set(jobs) and jobs["501"][7] == jobs["502"][7] == 1
    assert jobs["501"][8] is True and jobs["502"][8] is False
    assert [r[0] for r in got["per-host aggregates"]] == sorted({HOST, *_profile_hosts(db)})
    assert all(r[4] for r in got["jobs join node"])


def _profile_hosts(db: Path) -> set[str]:
    return {r[0] for r in _duck(db, "SELECT host FROM node WHERE job_id IS NOT NULL")}


def test_cluster_001_stays_a_string_and_joins_hosts(spark: Any, db: Path) -> None:
    """Finding: partition inference made `--cluster 001` the integer 1."""
    pspark.register(spark, db)
    node = spark.table("node")
    assert dict(node.dtypes)["cluster"] == "string" and dict(node.dtypes)["date"] == "date"
    assert {r[0] for r in node.select("cluster").distinct().collect()} == {"001"}
    # what Spark's own partition inference does with the same directory
    raw = spark.read.parquet(*[str(p.parent.parent) for p in _one_partition(db)])
    assert dict(raw.dtypes)["cluster"] == "int"
    joined = _spark(spark, db, QUERIES["hosts join node"])
    assert {r[1] for r in joined} == {"001"} and sum(r[2] for r in joined) == node.count()


def _one_partition(db: Path) -> list[Path]:
    snap = dataset.snapshot(db / "data" / "node")
    assert snap is not None
    return [Path(snap.files[0]).parent]


def test_date_partition_is_to_date_of_t_in_a_non_utc_session(spark: Any, db: Path) -> None:
    """Finding: a non-UTC session's to_date(t) disagreed with the `date` partition."""
    cat = [column("node", "t", "info"), column("node", "load1", typ="float")]
    late = dt.datetime(2030, 6, 30, 23, 30, tzinfo=dt.timezone.utc)  # 07:30 next day in Shanghai
    samples = [(int(late.timestamp() * 1000) + i * 1000, {"node": [[0.5]]}) for i in range(3)]
    with FeatureDB(db, cluster="001") as fdb:
        fdb.import_para(write_para(db.parent / "late.para", cat, samples))
    q = "SELECT count(*) FROM node WHERE CAST(t AS DATE) <> date"
    spark.conf.set("spark.sql.session.timeZone", "Asia/Shanghai")
    try:
        pspark.register(spark, db, utc=False)
        assert spark.sql(q).collect()[0][0] >= 3  # what the issue saw
        pspark.register(spark, db)  # sets the session to UTC, as documented
        assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
        assert spark.sql(q).collect()[0][0] == 0
        assert _duck(db, q) == [(0,)]
    finally:
        spark.conf.set("spark.sql.session.timeZone", "UTC")


def test_a_reader_planned_before_compaction_reads_the_same_after_it(spark: Any, db: Path) -> None:
    """Finding: compaction deleted files under a running reader (FILE_NOT_EXIST)."""
    sql = QUERIES["per-host aggregates"]
    before = _spark(spark, db, sql)
    planned = spark.sql(sql)  # planned on the snapshot of now
    live = dataset.snapshot(db / "data" / "node")
    assert live is not None and len(live.files) >= 3
    r = run_para("collector", "compact", "--db", str(db), "--min-files", "2")
    assert r.returncode == 0 and "compacted" in r.stdout, r.stderr
    r = run_para("collector", "expire", "--db", str(db))  # the default grace period: 24 h
    assert r.returncode == 0, r.stderr
    after = dataset.snapshot(db / "data" / "node")
    assert after is not None and len(after.files) < len(live.files)
    assert all(Path(f).exists() for f in live.files)
    assert _rows(planned) == before
    assert _spark(spark, db, sql) == before == _duck(db, sql)
    # once expired (grace 0), the old snapshot's files are gone: the new one reads the same
    r = run_para("collector", "expire", "--db", str(db), "--older-than", "0")
    assert r.returncode == 0 and "deleted" in r.stdout, r.stderr
    assert not any(Path(f).exists() for f in set(live.files) - set(after.files))
    assert _spark(spark, db, sql) == before


def test_same_numbers_while_a_compaction_runs(spark: Any, db: Path) -> None:
    expect = {w: _duck(db, q) for w, q in QUERIES.items()}
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [*para_cmd(), "collector", "compact", "--db", str(db), "--min-files", "2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    rounds = 0
    try:
        while rounds < 2 or proc.poll() is None:
            for what, sql in QUERIES.items():
                assert _spark(spark, db, sql) == expect[what], what
            rounds += 1
    finally:
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "compacted" in out, err
    assert {w: _duck(db, q) for w, q in QUERIES.items()} == expect


def test_same_numbers_after_a_schema_change(spark: Any, db: Path) -> None:
    """A newer agent adds a column; the analyzer a feature: both typed, old rows NULL."""
    before = {w: _duck(db, q) for w, q in QUERIES.items()}
    cat = [column("node", "t", "info"), column("node", "load1", typ="float"),
           column("node", "psi_cpu_some", typ="float")]  # fmt: skip
    t0 = dt.datetime(2030, 7, 1, 12, tzinfo=dt.timezone.utc)
    samples = [(int(t0.timestamp() * 1000) + i * 1000, {"node": [[1.0, 0.25 * i]]})
               for i in range(4)]  # fmt: skip
    with FeatureDB(db, cluster="001") as fdb:
        fdb.import_para(write_para(db.parent / "newer.para", cat, samples))
        fdb.write_job_features("501", {"site_score": 7.5})
    pspark.register(spark, db)
    types = dict(spark.table("node").dtypes)
    assert (
        types["psi_cpu_some"] == "double"
        and dict(spark.table("jobs").dtypes)["site_score"] == "double"
    )
    q = "SELECT count(*), count(psi_cpu_some), sum(psi_cpu_some) FROM node"
    assert _spark(spark, db, q) == _duck(db, q)
    assert _spark(spark, db, q)[0][1:] == (4, 1.5)
    # the test's own jobs: the agent records any other job the machine runs meanwhile
    q = "SELECT job_id, site_score FROM jobs WHERE job_id IN ('501', '502') ORDER BY job_id"
    assert _spark(spark, db, q) == _duck(db, q) == [("501", 7.5), ("502", None)]
    for what, sql in QUERIES.items():
        got = _duck(db, sql)
        assert _spark(spark, db, sql) == got, what
        if what.startswith("job"):  # the new host adds to the per-host ones
            assert got == before[what], what


def test_jobs_has_one_typed_schema_before_and_after_analysis(spark: Any, tmp_path: Path) -> None:
    """Finding: feature columns appeared only after analysis, and an all-null feature was a
    string (a typed `ipc double` table failed with PARQUET_COLUMN_DATA_TYPE_MISMATCH)."""
    cat = [column("node", "t", "info"), column("node", "load1", typ="float")]
    with FeatureDB(tmp_path / "db") as fdb:
        fdb.import_para(
            write_para(tmp_path / "a.para", cat, [(1_800_000_000_000, {"node": [[1.0]]})])
        )
    jobs = dataset.snapshot(tmp_path / "db" / "meta" / "jobs")
    assert jobs is not None
    types = {f.name: str(f.type) for f in jobs.schema}
    assert types["ipc"] == "double" and types["bottlenecks"].startswith("list<")
    assert "string" in types["bottlenecks"]
    pspark.register(spark, tmp_path / "db")
    assert dict(spark.table("jobs").dtypes)["ipc"] == "double"
    # a site's own typed table over the snapshot's files reads them (no type mismatch)
    typed = spark.read.schema("job_id STRING, ipc DOUBLE, cpu_util_pct DOUBLE").parquet(*jobs.files)
    assert typed.count() == 0


def test_para_query_engine_spark_runs_the_same_sql(db: Path) -> None:
    sql = QUERIES["per-host aggregates"].replace("min(t) AS first, max(t) AS last, ", "")
    duck = run_para("query", "--db", str(db), "--json", sql)
    assert duck.returncode == 0, duck.stderr
    sp = run_para("query", "--db", str(db), "--json", "--engine", "spark", sql, timeout=300)
    assert sp.returncode == 0, sp.stderr
    a, b = json.loads(duck.stdout), json.loads(sp.stdout)
    assert len(a) == len(b) >= 1
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k] == pytest.approx(y[k]), k
