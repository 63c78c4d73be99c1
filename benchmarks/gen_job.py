"""Makes the .para files of a synthetic multi-node job, for the analyzer's speed benchmark.

One file per node, laid out exactly as `para profile` under srun leaves them (meta.json, one
Parquet part per table per hour, end.json; the format's own encoder), holding what a real
MPI code does on real nodes, second by second:

    input (4 % of the run)    ranks read their input: little CPU, disk reads
    compute                   every rank busy, network traffic; every 20 % of the run a
                              checkpoint (1 %) with writes; resident memory grows slowly
    post (last 10 %)          rank 0 alone post-processes: one busy core of the job's many

and three kinds of trouble the rules must find: node 1 is a straggler (its ranks compute
while the others wait for them), node 2 never did any work (its ranks sleep), and the FP
counters show scalar code.  Counter values are cumulative as the kernel gives them; perf
stat counters are per interval.

    .venv/bin/python benchmarks/gen_job.py OUTDIR [--nodes 128] [--seconds 3600]

The files are cached: an existing OUTDIR with the same parameters is reused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from para.formats import journal  # noqa: E402
from para.formats.schema import catalogue  # noqa: E402

T0_MS = 1_800_000_000_000
GIB = 1 << 30
EVENTS = [
    "cycles",
    "instructions",
    "cache-misses",
    "fp_arith_inst_retired.scalar_double",
    "fp_arith_inst_retired.256b_packed_double",
    "uncore_imc/cas_count_read/",
    "uncore_imc/cas_count_write/",
]

# The state of every rank each second: which phase, and how busy.  Shared by all tables.
ACTIVITY = """
CREATE OR REPLACE TEMP TABLE act AS
WITH s AS (SELECT range AS s FROM range($seconds)),
r AS (SELECT range AS r FROM range($ranks)),
base AS (
    SELECT s, r,
        CASE WHEN s < $seconds * 0.04 THEN 'input'
             WHEN s >= $seconds * 0.9 THEN 'post'
             WHEN (s % ($seconds * 0.2)::BIGINT) < $seconds * 0.01 AND s > $seconds * 0.1
                  THEN 'checkpoint'
             ELSE 'compute' END AS phase
    FROM s, r
)
SELECT s, r, phase,
    -- busy share of one core for this rank this second
    CASE
        WHEN $node = 2 THEN 0.002                                   -- the idle node
        WHEN phase = 'input' THEN 0.15 + 0.05 * random()
        WHEN phase = 'checkpoint' THEN 0.25 + 0.05 * random()
        WHEN phase = 'post' THEN CASE WHEN $node = 0 AND r = 0 THEN 0.99 ELSE 0.003 END
        WHEN $node = 1 THEN 0.985 + 0.01 * random()                 -- the straggler
        ELSE 0.80 + 0.06 * random()                                  -- waiting for it
    END AS busy
FROM base
"""


def _q(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]) -> pa.Table:
    for k, v in params.items():
        sql = sql.replace(f"${k}", str(v))
    if sql.lstrip().upper().startswith("CREATE"):
        con.execute(sql)
        return pa.table({})
    return con.sql(sql).to_arrow_table()


def node_tables(node: int, seconds: int, cpus: int, ranks: int, seed: int) -> dict[str, Any]:
    con = duckdb.connect()
    con.execute(f"SELECT setseed({((seed * 7919 + node) % 1000) / 1000.0})")
    p = {"seconds": seconds, "ranks": ranks, "node": node, "cpus": cpus, "t0": T0_MS}
    _q(con, ACTIVITY, p)
    tables: dict[str, pa.Table] = {}
    # per-core CPU: rank r runs on core r; the other cores are idle hyperthreads
    tables["cpu"] = _q(con, """
        WITH c AS (SELECT range AS cpu FROM range($cpus)),
        per AS (
            SELECT t.s, c.cpu, coalesce(a.busy, 0.001) AS busy, coalesce(a.phase, 'idle') AS ph
            FROM (SELECT DISTINCT s FROM act) t CROSS JOIN c
            LEFT JOIN act a ON a.s = t.s AND a.r = c.cpu
        ),
        ticks AS (
            SELECT s, cpu, round(100 * busy * 0.93)::BIGINT AS u,
                round(100 * busy * 0.07)::BIGINT AS sy,
                CASE WHEN ph = 'checkpoint' THEN 20 WHEN ph = 'input' THEN 10 ELSE 0 END AS io
            FROM per
        )
        SELECT make_timestamptz(($t0 + 1000 * s) * 1000) AS t, cpu,
            sum(u) OVER w + 100000 AS "user", 0::BIGINT + 50 AS nice,
            sum(sy) OVER w + 20000 AS system,
            sum(greatest(0, 100 - u - sy - io)) OVER w + 900000 AS idle,
            sum(io) OVER w + 500 AS iowait, 0::BIGINT + 100 AS irq,
            sum(CASE WHEN s % 10 = 0 THEN 1 ELSE 0 END) OVER w + 300 AS softirq,
            0::BIGINT AS steal, 0::BIGINT AS guest, 0::BIGINT AS guest_nice,
            (2400000 + 100000 * (cpu % 3))::BIGINT AS freq_khz
        FROM ticks WINDOW w AS (PARTITION BY cpu ORDER BY s)
    """, p)  # fmt: skip
    con.register("tables_cpu", tables["cpu"])
    tables["node"] = _q(con, """
        SELECT t, sum("user")::BIGINT AS cpu_user, sum(nice)::BIGINT AS cpu_nice,
            sum(system)::BIGINT AS cpu_system, sum(idle)::BIGINT AS cpu_idle,
            sum(iowait)::BIGINT AS cpu_iowait, sum(irq)::BIGINT AS cpu_irq,
            sum(softirq)::BIGINT AS cpu_softirq, 0::BIGINT AS cpu_steal, 0::BIGINT AS cpu_guest,
            0::BIGINT AS cpu_guest_nice,
            (10000000 + 4000 * (epoch_ms(t) - $t0) / 1000)::BIGINT AS ctxt,
            (20000000 + 9000 * (epoch_ms(t) - $t0) / 1000)::BIGINT AS intr,
            5000::BIGINT AS forks, $ranks::BIGINT AS procs_running, 0::BIGINT AS procs_blocked,
            1.0 * $ranks AS load1, 1.0 * $ranks AS load5, 1.0 * $ranks AS load15
        FROM tables_cpu GROUP BY t ORDER BY t
    """, p)  # fmt: skip
    tables["memory"] = _q(con, """
        WITH m AS (SELECT s, 4 * $gib + sum(1.0 * $gib + s * 60000)::BIGINT AS used
                   FROM act GROUP BY s)
        SELECT make_timestamptz(($t0 + 1000 * s) * 1000) AS t, 256 * $gib AS mem_total,
            256 * $gib - used - 8 * $gib AS mem_free, 256 * $gib - used AS mem_available,
            100000000::BIGINT AS mem_buffers, (6 * $gib)::BIGINT AS mem_cached,
            (4096 * (s % 7))::BIGINT AS mem_dirty, 0::BIGINT AS mem_writeback,
            50000000::BIGINT AS mem_shmem, 300000000::BIGINT AS mem_slab_reclaimable,
            0::BIGINT AS swap_total, 0::BIGINT AS swap_free,
            (1000000 + 250 * s)::BIGINT AS pgfault, 12000::BIGINT AS pgmajfault,
            0::BIGINT AS pswpin, 0::BIGINT AS pswpout, (8000000 + 20000 * s)::BIGINT AS pgpgin,
            (3000000 + 50000 * s)::BIGINT AS pgpgout
        FROM m ORDER BY s
    """, {**p, "gib": f"{GIB}::BIGINT"})  # fmt: skip
    tables["net"] = _q(con, """
        WITH x AS (SELECT s, any_value(phase) AS ph, avg(busy) AS b FROM act GROUP BY s),
        i AS (SELECT * FROM (VALUES ('lo', 0), ('eth0', 1), ('ib0', 2)) v(iface, k)),
        r AS (
            SELECT s, iface, CASE
                WHEN k = 0 THEN 20000
                WHEN k = 1 THEN 40000
                WHEN ph = 'compute' AND $node <> 2 THEN (1.5e9 * (1.1 - b))::BIGINT
                ELSE 100000 END AS bps
            FROM x, i
        )
        SELECT make_timestamptz(($t0 + 1000 * s) * 1000) AS t, iface,
            sum(bps) OVER w + 7000000 AS rx_bytes, sum(bps // 4000) OVER w AS rx_packets,
            0::BIGINT AS rx_errs, 0::BIGINT AS rx_drop, sum(bps) OVER w + 9000000 AS tx_bytes,
            sum(bps // 4000) OVER w AS tx_packets, 0::BIGINT AS tx_errs, 0::BIGINT AS tx_drop
        FROM r WINDOW w AS (PARTITION BY iface ORDER BY s)
    """, p)  # fmt: skip
    tables["disk"] = _q(con, """
        WITH x AS (SELECT s, any_value(phase) AS ph FROM act GROUP BY s),
        d AS (SELECT * FROM (VALUES ('nvme0n1'), ('nvme0n1p1'), ('sda')) v(device)),
        r AS (
            SELECT s, device,
                CASE WHEN device = 'sda' THEN 0 WHEN ph = 'input' THEN 400000000 ELSE 0 END
                  AS rb,
                CASE WHEN device = 'sda' THEN 4096 WHEN ph = 'checkpoint' THEN 900000000
                     ELSE 65536 END AS wb
            FROM x, d
        )
        SELECT make_timestamptz(($t0 + 1000 * s) * 1000) AS t, device,
            sum(rb // 131072) OVER w AS reads, 0::BIGINT AS reads_merged,
            sum(rb) OVER w AS read_bytes, sum(rb // 2000000) OVER w AS read_ms,
            sum(wb // 131072) OVER w AS writes, 0::BIGINT AS writes_merged,
            sum(wb) OVER w AS write_bytes, sum(wb // 2000000) OVER w AS write_ms,
            CASE WHEN rb + wb > 1000000 THEN 8 ELSE 0 END AS in_flight,
            sum(least(1000, (rb + wb) // 1000000)) OVER w AS io_ms,
            sum((rb + wb) // 500000) OVER w AS weighted_io_ms, 0::BIGINT AS discards,
            0::BIGINT AS discards_merged, 0::BIGINT AS discard_bytes, 0::BIGINT AS discard_ms,
            0::BIGINT AS flushes, 0::BIGINT AS flush_ms
        FROM r WINDOW w AS (PARTITION BY device ORDER BY s)
    """, p)  # fmt: skip
    tables["fs"] = _q(con, """
        WITH m AS (SELECT * FROM (VALUES ('/'), ('/tmp'), ('/scratch')) v(mount))
        SELECT make_timestamptz(($t0 + 1000 * s) * 1000) AS t, mount,
            (500 * $gib)::BIGINT AS size_bytes, (100 * $gib + 400000 * s)::BIGINT AS used_bytes,
            (400 * $gib - 400000 * s)::BIGINT AS avail_bytes, 30000000::BIGINT AS files,
            29000000::BIGINT AS files_free
        FROM (SELECT range AS s FROM range($seconds)), m
    """, {**p, "gib": f"{GIB}::BIGINT"})  # fmt: skip
    # the ranks and their launcher (pid 1000)
    tables["proc"] = _q(con, """
        WITH r AS (
            SELECT s, r, busy, phase, round(100 * busy * 0.93)::BIGINT AS u,
                round(100 * busy * 0.07)::BIGINT AS sy FROM act
            UNION ALL
            SELECT range AS s, -1 AS r, 0.0 AS busy, 'launcher' AS phase, 0::BIGINT AS u,
                CASE WHEN range % 20 = 0 THEN 1 ELSE 0 END AS sy FROM range($seconds)
        )
        SELECT make_timestamptz(($t0 + 1000 * s) * 1000) AS t, 1001 + r AS pid,
            CASE WHEN r < 0 THEN 1 ELSE 1000 END AS ppid,
            CASE WHEN busy > 0.5 THEN 'R' ELSE 'S' END AS state,
            sum(u) OVER w AS utime, sum(sy) OVER w AS stime,
            CASE WHEN r < 0 THEN 30000000 ELSE (1.0 * $gib + s * 60000)::BIGINT END AS rss_bytes,
            CASE WHEN r < 0 THEN 300000000 ELSE (3 * $gib)::BIGINT END AS vsize_bytes,
            CASE WHEN r < 0 THEN 2 ELSE 4 END AS threads, greatest(r, 0) AS processor,
            sum(5 + u) OVER w AS minflt, 3::BIGINT AS majflt, sum(1) OVER w AS vol_ctxt,
            sum(u // 50) OVER w AS invol_ctxt,
            sum(CASE WHEN phase = 'input' AND r >= 0 THEN 12000000 ELSE 4096 END) OVER w AS rchar,
            sum(CASE WHEN phase = 'checkpoint' AND r >= 0 THEN 28000000 ELSE 4096 END) OVER w
              AS wchar,
            sum(CASE WHEN phase = 'input' AND r >= 0 THEN 12000000 ELSE 0 END) OVER w
              AS read_bytes,
            sum(CASE WHEN phase = 'checkpoint' AND r >= 0 THEN 28000000 ELSE 0 END) OVER w
              AS write_bytes,
            0::BIGINT AS cutime, 0::BIGINT AS cstime
        FROM r WINDOW w AS (PARTITION BY r ORDER BY s)
    """, {**p, "gib": f"{GIB}::BIGINT"})  # fmt: skip
    # perf stat -I 1000: counts in each interval, node-wide for the job's cores
    tables["counters"] = _q(con, """
        WITH x AS (SELECT s, sum(busy) AS cores FROM act GROUP BY s),
        e AS (SELECT unnest($events) AS event)
        SELECT make_timestamptz(($t0 + 1000 * s + 1000) * 1000) AS t, event,
            (CASE event
                WHEN 'cycles' THEN cores * 2.6e9
                WHEN 'instructions' THEN cores * 2.6e9 * (CASE WHEN $node = 1 THEN 1.4 ELSE 0.9 END)
                WHEN 'cache-misses' THEN cores * 4e6
                WHEN 'fp_arith_inst_retired.scalar_double' THEN cores * 6e8
                WHEN 'fp_arith_inst_retired.256b_packed_double' THEN cores * 2e7
                ELSE cores * 1.2e8 END)::DOUBLE AS value,
            100.0 AS running_pct
        FROM x, e
    """, {**p, "events": "[" + ", ".join(f"'{e}'" for e in EVENTS) + "]"})  # fmt: skip
    # perf record at 499 Hz per rank, folded per second: the solver and the wait for others
    tables["stacks"] = _q(con, """
        WITH k AS (SELECT * FROM (VALUES
            ('compute', 'main;solve;step;stencil_apply', 0.62),
            ('compute', 'main;solve;step;flux_limiter', 0.30),
            ('compute', 'main;solve;exchange;MPI_Waitall;ucp_worker_progress', -1.0),
            ('input', 'main;read_input;H5Dread;__pread64', 1.0),
            ('checkpoint', 'main;checkpoint;H5Dwrite;__pwrite64', 1.0),
            ('post', 'main;postprocess;reduce_fields', 1.0)) v(phase, stack, share))
        SELECT * FROM (
            SELECT make_timestamptz(($t0 + 1000 * s) * 1000) AS t, 1001 + r AS pid,
                1001 + r AS tid, 'solver' AS comm, k.stack,
                round(499 * CASE WHEN k.share < 0 THEN 1 - a.busy ELSE a.busy * k.share END)
                  ::BIGINT AS samples
            FROM act a JOIN k ON a.phase = k.phase
        ) WHERE samples > 0
    """, p)  # fmt: skip
    events_rows = [
        [T0_MS, "process_start", 1000 + r + 1, "solver",
         json.dumps({"cmdline": ["./solver", "-i", "input.h5", f"--rank={node * ranks + r}"],
                     "ppid": 1000})]
        for r in range(ranks)
    ]  # fmt: skip
    tables["events"] = pa.table(
        {
            "t": pa.array([r[0] for r in events_rows], pa.int64()).cast(journal.TIME_TYPE),
            "kind": [r[1] for r in events_rows],
            "pid": pa.array([r[2] for r in events_rows], pa.int64()),
            "name": [r[3] for r in events_rows],
            "detail": [r[4] for r in events_rows],
        }
    )
    con.close()
    return tables


def write_node(path: Path, node: int, nodes: int, seconds: int, cpus: int, ranks: int,
               seed: int) -> int:  # fmt: skip
    cat = catalogue()
    layout = journal.table_layout(cat)
    tables = node_tables(node, seconds, cpus, ranks, seed)
    host = f"cn{node + 1:04d}"
    meta = {
        "format": "para",
        "format_version": 1,
        "created": T0_MS / 1000,
        "source": "para profile",
        "host": {
            "hostname": host, "cpu_model": "Intel(R) Xeon(R) Platinum 8358 CPU @ 2.60GHz",
            "sockets": 2, "cores": cpus // 2, "threads": cpus, "memory_bytes": 256 * GIB,
            "kernel": "5.14.0-362.el9.x86_64", "arch": "x86_64", "os": "Rocky Linux 9.3",
            "boot_time": T0_MS / 1000 - 86400, "clock_ticks": 100, "page_size": 4096,
            "para_version": "0.1.0", "python": "3.11.7",
        },
        "interval": 1.0,
        "job": {
            "scheduler": "slurm", "job_id": "4242", "name": "solver", "user": "alice",
            "nodes": nodes, "node_list": f"cn[0001-{nodes:04d}]", "rank": node * ranks,
            "cpus_on_node": cpus,
        },
        "command": ["./solver", "-i", "input.h5"],
        "cwd": "/scratch/alice/run42",
        "allowed_cpus": cpus,
        "catalogue": cat,
    }  # fmt: skip
    keys = {
        "node": ["t"], "memory": ["t"], "cpu": ["t", "cpu"], "net": ["t", "iface"],
        "disk": ["t", "device"], "fs": ["t", "mount"], "proc": ["t", "pid"],
        "counters": ["t", "event"], "events": ["t"], "stacks": ["t", "pid", "tid", "comm", "stack"],
    }  # fmt: skip
    rows: dict[str, int] = {}
    parts: dict[str, int] = {}
    values = 0
    when = (2027, 1, 15, 8, 0, 0)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(
            zipfile.ZipInfo("meta.json", date_time=when),
            json.dumps(meta, separators=(",", ":")).encode(),
            zipfile.ZIP_DEFLATED,
        )
        for name, tab in tables.items():
            schema = journal.arrow_schema(layout[name])
            # columns this job has no values for (a process's batch job, ...) are null
            for f in schema:
                if f.name not in tab.schema.names:
                    tab = tab.append_column(f.name, pa.nulls(len(tab), f.type))
            tab = tab.select(schema.names).cast(schema)
            t_ms = tab.column("t").cast(pa.int64())
            # one part per hour of samples, as the writer does
            hour = pa.compute.divide(pa.compute.subtract(t_ms, T0_MS), 3_600_000)
            n_parts = int(pa.compute.max(hour).as_py()) + 1
            for i in range(n_parts):
                part = tab.filter(pa.compute.equal(hour, i))
                if len(part) == 0:
                    continue
                zf.writestr(zipfile.ZipInfo(f"{name}/part-{i:05d}.parquet", date_time=when),
                            journal.parquet_bytes(part, keys[name]))  # fmt: skip
                parts[name] = parts.get(name, 0) + 1
            rows[name] = len(tab)
            metrics = [c["name"] for c in layout[name] if c["kind"] in ("counter", "gauge")]
            values += journal.count_values(tab, metrics)
        end = {
            "complete": True, "samples": seconds, "values": values, "rows": rows,
            "parts": parts, "start": T0_MS / 1000, "end": (T0_MS + 1000 * (seconds - 1)) / 1000,
            "closed": T0_MS / 1000 + seconds + 1, "elapsed_s": float(seconds),
            "exit": {"exit_code": 0},
            "families": {f: {"state": "ok"} for f in
                         ("cpu", "memory", "net", "disk", "fs", "process", "counters")}
            | {"gpu": {"state": "unavailable", "reason": "no NVIDIA GPU on this node"}},
            "family_facts": {"disk": {"whole_disks": ["nvme0n1", "sda"]},
                             "counters": {"events": EVENTS}},
            "functions": {"event": "cycles", "samples": 0, "frequency_hz": 499},
            "kernels": "cython",
        }  # fmt: skip
        zf.writestr(
            zipfile.ZipInfo("end.json", date_time=when),
            json.dumps(end, separators=(",", ":")).encode(),
            zipfile.ZIP_DEFLATED,
        )
    tmp.replace(path)
    return path.stat().st_size


def make_job(out: Path, nodes: int = 128, seconds: int = 3600, cpus: int = 64, ranks: int = 32,
             seed: int = 1, quiet: bool = False) -> list[Path]:  # fmt: skip
    """The job's files in `out` (made once; reused while the parameters are the same)."""
    out.mkdir(parents=True, exist_ok=True)
    params = {"nodes": nodes, "seconds": seconds, "cpus": cpus, "ranks": ranks, "seed": seed,
              "version": 1}  # fmt: skip
    stamp = out / "params.json"
    files = [out / f"cn{n + 1:04d}.para" for n in range(nodes)]
    if (
        stamp.exists()
        and json.loads(stamp.read_text()) == params
        and all(f.exists() for f in files)
    ):
        return files
    stamp.unlink(missing_ok=True)
    t = time.monotonic()
    size = 0
    for n, f in enumerate(files):
        size += write_node(f, n, nodes, seconds, cpus, ranks, seed)
        if not quiet:
            print(
                f"\r  generated {n + 1}/{nodes} nodes ({size / 2**20:.0f} MiB, "
                f"{time.monotonic() - t:.0f} s)",
                end="",
                file=sys.stderr,
                flush=True,
            )
    if not quiet:
        print(file=sys.stderr)
    stamp.write_text(json.dumps(params))
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--nodes", type=int, default=128)
    ap.add_argument("--seconds", type=int, default=3600)
    ap.add_argument("--cpus", type=int, default=64)
    ap.add_argument("--ranks", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    files = make_job(a.outdir, a.nodes, a.seconds, a.cpus, a.ranks, a.seed)
    print(f"{len(files)} files in {a.outdir}, "
          f"{sum(f.stat().st_size for f in files) / 2**20:.1f} MiB")  # fmt: skip


if __name__ == "__main__":
    main()
