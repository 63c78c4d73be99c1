"""Beyond one machine (issue 14): what one collector process costs per 1,000 nodes, with 1, 2
and 4 collector processes on this machine, the dataset of a site-year, and a site-wide
feature query on DuckDB and on Spark at 1/100 scale.

1. Live path, real processes on 127.0.0.1: `para collector serve --alerts` (100 rules, the
   rules of bench_alerts.py) in K = 1, 2, 4 processes serving one database; N simulated
   agents (this process, one mutual-TLS client each, hosts split over the K collectors)
   push one live message per node and second, replaying the real 1 Hz recording of
   tests/fixtures (each node from its own offset).  Figure: the collectors' CPU seconds per
   second (psutil, summed over the K processes) per 1,000 nodes; anchor in the same run: the
   senders' own CPU (the agents' side, not the collector's).
2. Ingest: the collector's merge (FeatureDB.import_paths: decode, Parquet, ledger, Delta
   commits) of the real 10-minute segments of tests/fixtures/collector for H hosts; CPU per
   value, the Delta commit's share, and the bytes per value after compaction.
3. Query at 1/100 of a 10,000-node site: 100 nodes; a month of jobs (9,000 jobs with the
   analyzer's features) and a day of 1 Hz `node` rows for the 100 hosts (8.6 M rows), as
   Delta tables; the same SQL on DuckDB (FeatureDB.connect) and on Spark (local[2], `para
   query --engine spark`'s register), median of 3 after one warm-up.

    .venv/bin/python benchmarks/bench_scale.py [--nodes 100] [--seconds 15] [--hosts 16]
        [--skip-live] [--skip-spark]
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from para.agent.collector_client import CollectorClient, Endpoint  # noqa: E402
from para.collector import catalog, dataset, maintenance  # noqa: E402
from para.collector.db import FeatureDB  # noqa: E402
from para.formats.journal import TIME_TYPE  # noqa: E402
from tests.collector_support import (  # noqa: E402
    CollectorProcess,
    load_template,
    make_pki,
    write_segments,
)
from tests.live_support import samples_from_para  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from bench_alerts import rules_text  # noqa: E402

# -- 1. the live path over K collector processes ---------------------------------------------


def bench_live(nodes: int, seconds: int, procs: int, work: Path, pki: Path) -> dict[str, Any]:
    rules = work / "rules.toml"
    rules.write_text(rules_text())
    db = work / f"live-{procs}" / "db"
    cols = []
    for k in range(procs):
        state = work / f"live-{procs}" / f"c{k}"
        state.mkdir(parents=True)
        cols.append(
            CollectorProcess(
                db, pki, "--alerts", str(rules), "--compact-every", "0", "-q", state=state
            ).start()
        )
    rec = samples_from_para()
    rng = random.Random(14)
    hosts = [f"cn{i:04d}" for i in range(nodes)]
    offsets = [rng.randrange(len(rec)) for _ in hosts]
    clients = [
        CollectorClient(
            Endpoint(
                f"grpc+tls://127.0.0.1:{cols[i % procs].port}",
                ca_file=pki / "ca.crt",
                cert_file=pki / "issued" / f"{h}.crt",
                key_file=pki / "issued" / f"{h}.key",
                timeout=30,
            )
        )
        for i, h in enumerate(hosts)
    ]
    t0 = int(time.time()) * 1000
    me = psutil.Process()

    def second(k: int) -> None:
        def push(i: int) -> None:
            _, rows = rec[(offsets[i] + k) % len(rec)]
            clients[i].push_live(hosts[i], [(t0 + k * 1000, rows)])

        with ThreadPoolExecutor(8) as ex:
            list(ex.map(push, range(nodes)))

    try:
        warm = 3
        behind = 0
        for k in range(warm + seconds):
            if k == warm:
                cpu0 = [sum(psutil.Process(c.proc.pid).cpu_times()[:2]) for c in cols]
                me0 = sum(me.cpu_times()[:2])
                w0 = time.monotonic()
            start = time.monotonic()
            second(k)
            spent = time.monotonic() - start
            if spent < 1.0:
                time.sleep(1.0 - spent)
            elif k >= warm:
                behind += 1
        wall = time.monotonic() - w0
        cpu = [sum(psutil.Process(c.proc.pid).cpu_times()[:2]) - c0 for c, c0 in zip(cols, cpu0)]
        sender = sum(me.cpu_times()[:2]) - me0
    finally:
        for c in clients:
            c.close()
        for c in cols:
            c.stop()
    per_s = sum(cpu) / wall
    return {
        "procs": procs,
        "nodes": nodes,
        "wall": wall,
        "collector_cores": per_s,
        "per_1000": per_s * 1000 / nodes,
        "per_proc": [round(x / wall, 3) for x in cpu],
        "sender_cores": sender / wall,
        "seconds_behind": behind,
    }


# -- 2. ingest and bytes per value ------------------------------------------------------------


def bench_ingest(hosts: int, segments: int, work: Path) -> dict[str, Any]:
    tpl = load_template()
    work.mkdir(parents=True)
    paths = []
    for i in range(hosts):
        paths += [
            p for p, _ in write_segments(tpl, work / "ready" / f"h{i}", f"cn{i:04d}", segments)
        ]
    db = FeatureDB(work / "ingest-db")
    db.ledger  # noqa: B018 - created outside the measurement
    commit_cpu = [0.0]
    real_commit = FeatureDB.commit_tables

    def timed(self: FeatureDB, moves: Any, deletes: Any) -> None:
        c = time.process_time()
        try:
            real_commit(self, moves, deletes)
        finally:
            commit_cpu[0] += time.process_time() - c

    FeatureDB.commit_tables = timed  # type: ignore[method-assign]
    try:
        c0, w0 = time.process_time(), time.monotonic()
        results = db.import_paths(paths)
        cpu, wall = time.process_time() - c0, time.monotonic() - w0
    finally:
        FeatureDB.commit_tables = real_commit  # type: ignore[method-assign]
    values = sum(r.get("values", 0) for r in results)
    batches = len({r.get("id") for r in results}) // 16 + 1
    maintenance.compact(db, min_files=2)
    maintenance.expire(db, grace_hours=0)
    data_bytes = sum(
        Path(f).stat().st_size
        for t in db.layout.tables()
        for f in (dataset.snapshot(db.layout.data / t) or dataset.Snapshot(0, pa.schema([]))).files
    )
    seconds = tpl.duration_ms / 1000 * segments
    return {
        "hosts": hosts,
        "segments": len(paths),
        "values": values,
        "cpu_s": cpu,
        "wall_s": wall,
        "cpu_per_mvalue": cpu / values * 1e6,
        "commit_share": commit_cpu[0] / cpu,
        "commit_ms_per_batch": commit_cpu[0] / batches * 1000,
        "bytes_per_value": data_bytes / values,
        "values_per_node_s": values / hosts / seconds,
    }


# -- 3. the 1/100 site: a month of jobs, a day of node rows ----------------------------------


def make_site(root: Path, nodes: int = 100, jobs: int = 9000) -> None:
    rng = random.Random(140)
    start = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    users = [f"u{i:03d}" for i in range(60)]
    bottlenecks = ["io_wait_bound", "memory_bound", "load_imbalance", "network_bound", "cpu_bound"]
    rows: dict[str, list[Any]] = {k: [] for k in ("job_id", "cluster", "user", "name", "nodes",
                                                   "start", "end", "hosts")}  # fmt: skip
    feats: list[dict[str, Any]] = []
    for j in range(jobs):
        s = start + dt.timedelta(seconds=rng.uniform(0, 30 * 86400))
        dur = rng.expovariate(1 / 7200)
        n = rng.choice([1, 1, 1, 2, 4, 8, 16])
        first = rng.randrange(nodes)
        rows["job_id"].append(str(100000 + j))
        rows["cluster"].append("001")
        rows["user"].append(rng.choice(users))
        rows["name"].append(f"job-{j % 97}")
        rows["nodes"].append(n)
        rows["start"].append(s)
        rows["end"].append(s + dt.timedelta(seconds=dur))
        rows["hosts"].append([f"cn{(first + k) % nodes:04d}" for k in range(n)])
        feats.append(
            {
                "analysis_version": 1,
                "duration_s": dur,
                "cpu_util_pct": rng.uniform(1, 100),
                "peak_rss_bytes": rng.uniform(1e8, 2e11),
                "ipc": rng.uniform(0.2, 3.0),
                "bottlenecks": rng.sample(bottlenecks, rng.randrange(3)),
            }
        )
    cols = {k: pa.array(v) for k, v in rows.items() if k not in ("start", "end")}
    cols["start"] = pa.array(rows["start"], TIME_TYPE)
    cols["end"] = pa.array(rows["end"], TIME_TYPE)
    full = catalog._flatten(cols, feats, "feature_", catalog.JOB_FEATURES)
    dataset.overwrite(root / "meta" / "jobs", pa.table(full))
    names = [f"cn{i:04d}" for i in range(nodes)]
    dataset.overwrite(
        root / "meta" / "hosts", pa.table({"host": names, "cluster": ["001"] * nodes})
    )
    dataset.overwrite(root / "meta" / "catalogue", pa.table({"table": ["node"], "name": ["load1"]}))
    # a day of node rows: one file per 10 hosts, as compaction leaves them
    day = int(dt.datetime(2026, 11, 22, tzinfo=dt.timezone.utc).timestamp() * 1000)
    table_dir = root / "data" / "node"
    part = table_dir / "cluster=001" / "date=2026-11-22"
    part.mkdir(parents=True)
    adds = []
    for g in range(nodes // 10):
        n = 10 * 86400
        hosts = pa.array([f"cn{g * 10 + i // 86400:04d}" for i in range(n)])
        t = pa.array([day + (i % 86400) * 1000 for i in range(n)], pa.int64()).cast(TIME_TYPE)
        load = pa.array([rng.random() * 8 for _ in range(n)])
        user = pa.array([(i % 86400) * 97 + g for i in range(n)], pa.int64())
        table = pa.table({"host": hosts, "job_id": pa.nulls(n, pa.string()), "t": t,
                          "cpu_user": user, "load1": load})  # fmt: skip
        from para.collector.merge import write_parquet

        write_parquet(table, part / f"c-{g}.parquet", ["host", "t"], level=9)
        adds.append(
            (f"cluster=001/date=2026-11-22/c-{g}.parquet", {"cluster": "001", "date": "2026-11-22"})
        )
    dataset.commit(table_dir, table.schema, add=adds)
    (root / "ledger.sqlite3").touch()


SITE_QUERIES = {
    "month of jobs by user": """
        SELECT "user", count(*) AS jobs, sum(nodes * duration_s) / 3600 AS node_hours,
               avg(cpu_util_pct) AS cpu, avg(ipc) AS ipc,
               sum(CASE WHEN array_contains(bottlenecks, 'io_wait_bound') THEN 1 ELSE 0 END) AS io
        FROM jobs WHERE start >= TIMESTAMP '2026-11-01 00:00:00' GROUP BY "user"
        ORDER BY node_hours DESC""",
    "day of node per host": """
        SELECT host, count(*) AS n, avg(load1) AS load1, max(cpu_user) - min(cpu_user) AS ticks
        FROM node WHERE date = DATE '2026-11-22' GROUP BY host ORDER BY host""",
}


def bench_queries(root: Path, spark_too: bool) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    db = FeatureDB(root)

    def duck(sql: str) -> int:
        con = db.connect()
        try:
            return len(con.execute(sql).fetchall())
        finally:
            con.close()

    for name, sql in SITE_QUERIES.items():
        duck(sql)
        times = []
        for _ in range(3):
            w = time.monotonic()
            rows = duck(sql)
            times.append(time.monotonic() - w)
        out[name] = {"duckdb_s": statistics.median(times), "rows": rows}
    if spark_too:
        from para.collector import spark as pspark

        s = pspark.session("local[2]", "para-bench")
        try:
            for name, sql in SITE_QUERIES.items():
                pspark.register(s, root)
                s.sql(sql).collect()
                times = []
                for _ in range(3):
                    w = time.monotonic()
                    pspark.register(s, root)
                    rows = len(s.sql(sql).collect())
                    times.append(time.monotonic() - w)
                out[name]["spark_s"] = statistics.median(times)
                assert rows == out[name]["rows"], name
        finally:
            s.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--procs", default="1,2,4")
    ap.add_argument("--hosts", type=int, default=16)
    ap.add_argument("--segments", type=int, default=3)
    ap.add_argument("--skip-live", action="store_true")
    ap.add_argument("--skip-spark", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="para-bench-scale-") as tmp:
        work = Path(tmp)
        if not a.skip_live:
            pki = make_pki(work / "pki", [f"cn{i:04d}" for i in range(a.nodes)])
            print(f"1. live path, {a.nodes} simulated nodes at 1 Hz, 100 rules")
            for k in (int(x) for x in a.procs.split(",")):
                r = bench_live(a.nodes, a.seconds, k, work, pki)
                print(
                    f"  {k} collector process(es): {r['collector_cores']:.3f} cores in all "
                    f"({r['per_proc']}), {r['per_1000']:.2f} cores per 1,000 nodes; senders "
                    f"{r['sender_cores']:.2f} cores; seconds behind: {r['seconds_behind']}"
                )
        one = bench_ingest(1, 1, work / "one")
        r = bench_ingest(a.hosts, a.segments, work / "many")
        # bytes per value of one host's real 10 minutes: the simulated hosts replay the same
        # recording, which compresses across hosts as no real site would
        r["bytes_per_value"] = one["bytes_per_value"]
        print(
            f"2. ingest: {r['values']:,} values of {r['segments']} segments from {r['hosts']} "
            f"hosts in {r['cpu_s']:.2f} CPU s: {r['cpu_per_mvalue']:.2f} CPU s per million "
            f"values; Delta commits {r['commit_share']:.1%} of it "
            f"({r['commit_ms_per_batch']:.1f} ms per merge batch); "
            f"{r['bytes_per_value']:.3f} bytes per value after compaction; a node makes "
            f"{r['values_per_node_s']:.0f} values/s"
        )
        vps = r["values_per_node_s"]
        for n in (1000, 10_000, 50_000):
            cores = n * vps * r["cpu_per_mvalue"] / 1e6
            print(f"  {n:,} nodes: ingest {cores:.2f} cores (merge path, measured per value)")
        year = 10_000 * vps * 86400 * 365 * r["bytes_per_value"]
        print(
            f"  a 10,000-node site-year: {year / 1e12:.1f} TB at {r['bytes_per_value']:.3f} B/value"
        )
        site = work / "site"
        make_site(site)
        print("3. site-wide queries at 1/100 of a 10,000-node site (100 nodes)")
        for name, q in bench_queries(site, not a.skip_spark).items():
            spark = f", Spark {q['spark_s']:.2f} s" if "spark_s" in q else ""
            print(f"\n  {name}: DuckDB {q['duckdb_s']:.3f} s{spark} ({q['rows']} rows)")


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
