"""The portal's reading of the feature database, through one locked-down DuckDB.

Queries served to people run in an in-memory DuckDB that can read the database's `data/`
and `meta/` Parquet files and nothing else: no other file, no network, no extension
installed or loaded, its configuration locked.  Each request works on a cursor of it (cursors
share the views and tables, and run in parallel threads).

The jobs are held as a table in that database, reloaded when the collector rewrites
the table meta/jobs: a million jobs filter, sort and page in tens of milliseconds, without
reading the file again on every page.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from para.collector.catalog import JOBS_FILE, META_VIEWS, source_sql, view_sql
from para.collector.layout import Layout
from para.errors import ParaError
from para.web.access import Viewer

VIEWS_EVERY_S = 10.0  # how often new tables are looked for
JOBS_EVERY_S = 1.0  # how often the table meta/jobs is checked for a new version
FACETS_S = 60.0  # how long the job list's filter choices are kept
# the job list: what may be sorted on (page parameter -> SQL)
SORTS = {
    "job": "job_id",
    "user": '"user"',
    "name": "name",
    "account": "account",
    "partition": "partition",
    "nodes": "nodes",
    "start": "start_ms",
    "duration": "duration_s",
    "cpu": "cpu_util_pct",
    "gpu": "gpu_util_pct",
    "rss": "peak_rss_bytes",
    "severity": "severity_rank",
}
# features shown in the list (absent until the analyzer wrote them: NULL then)
FEATURES = {
    "duration_s": "DOUBLE",
    "cpu_util_pct": "DOUBLE",
    "gpu_util_pct": "DOUBLE",
    "peak_rss_bytes": "DOUBLE",
    "bottlenecks": "VARCHAR[]",
    "worst_severity": "VARCHAR",
    "top_function": "VARCHAR",
    "analysis_version": "BIGINT",
}
MAX_PAGE = 500


class NotFound(ParaError):
    """An id that does not exist, or that this viewer may not see (the same to them)."""

    exit_code = 4


class TooLarge(ParaError):
    """A request whose answer would cost too much (a range too long, a job too big)."""

    exit_code = 5


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def locked_down(root: Path, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that may read root/data and root/meta only (paths relative to
    root, as the catalogue's views have them), with no extension loading and its settings
    locked.  (The collector part may offer the same for `para query`: one place then.)"""
    base = str(root.resolve())
    config: dict[str, Any] = {
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
    }
    if threads:
        config["threads"] = threads
    con = duckdb.connect(":memory:", config=config)
    dirs = [f"{base}/data/", f"{base}/meta/", "data/", "meta/"]
    con.execute(f"SET GLOBAL file_search_path = {quote_str(base)}")
    con.execute(f"SET allowed_directories = [{', '.join(quote_str(d) for d in dirs)}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def _log_stamp(table_dir: Path) -> tuple[int, int] | None:
    """Changes when a commit is added to the table's Delta log; None: no table there."""
    try:
        st = os.stat(table_dir / "_delta_log")
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (st.st_mtime_ns, st.st_size)


@dataclass
class Page:
    rows: list[dict[str, Any]]
    total: int
    page: int
    size: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.size))


class Store:
    def __init__(self, root: Path, threads: int | None = None):
        self.root = Path(root)
        self.layout = Layout(self.root)
        if not self.layout.exists():
            raise ParaError(
                f"no feature database at {self.root}",
                hint=f"start `para collector serve --db {self.root}` or import files with "
                f"`para collect --db {self.root} FILE.para`",
            )
        self.con = locked_down(self.root, threads)
        self._lock = threading.Lock()
        self._tables: set[str] = set()
        self._views_at = 0.0
        self._table_dirs: dict[str, Path] = {}
        self._view_stamps: dict[str, tuple[int, int]] = {}
        self._jobs_stamp: tuple[int, int] | None = None
        self._jobs_at = 0.0
        self._job_cols: set[str] = set()
        self._facets: dict[Any, tuple[float, dict[str, list[str]]]] = {}
        self._jobs_lock = threading.Lock()
        self._loading = threading.Event()
        self.refresh(force=True)

    # -- keeping up with the database ----------------------------------------------------
    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._jobs_at >= JOBS_EVERY_S:
            with self._lock:
                self._refresh_views(force or now - self._views_at >= VIEWS_EVERY_S, now)
        if force or now - self._jobs_at >= JOBS_EVERY_S:
            self._jobs_at = now
            stamp = self._stamp()
            if stamp == self._jobs_stamp and self._job_cols:
                return
            if force or not self._job_cols:
                self._load_jobs(stamp)
            elif not self._loading.is_set():
                # pages go on with the jobs they have while the new version loads
                self._loading.set()
                threading.Thread(
                    target=self._load_jobs, args=(stamp,), daemon=True, name="para-web-jobs"
                ).start()

    def _refresh_views(self, look_for_new: bool, now: float) -> None:
        """Each table's view lists the files of its current snapshot (Delta Lake): remade when
        the table's log gained a commit (a stat per table); new tables looked for less often."""
        if look_for_new:
            self._views_at = now
            tables = {t: self.layout.data / t for t in self.layout.tables()}
            tables.update({n: self.root / p for n, p in META_VIEWS.items()})
            self._table_dirs = tables
        for name, table_dir in sorted(self._table_dirs.items()):
            stamp = _log_stamp(table_dir)
            if stamp is None or stamp == self._view_stamps.get(name):
                continue
            sql = view_sql(self.con, name, table_dir)
            if sql is not None:
                self.con.execute(sql)
                self._view_stamps[name] = stamp
        self._tables = set(self._view_stamps)

    def _stamp(self) -> tuple[int, int] | None:
        return _log_stamp(self.layout.meta / JOBS_FILE)

    def _load_jobs(self, stamp: tuple[int, int] | None) -> None:
        try:
            self._load_jobs_locked(stamp)
        finally:
            self._loading.clear()

    def _load_jobs_locked(self, stamp: tuple[int, int] | None) -> None:
        with self._jobs_lock:
            if stamp == self._jobs_stamp and self._job_cols:
                return
            cur = self.con.cursor()
            try:
                if stamp is None:
                    have: set[str] = set()
                    src = "(SELECT NULL::VARCHAR AS job_id WHERE false)"
                else:
                    src = f"({source_sql(cur, self.layout.meta / JOBS_FILE)})"
                    have = {r[0] for r in cur.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()}
                cur.execute(f"CREATE OR REPLACE TABLE web_jobs AS {self._jobs_sql(src, have)}")
                self._job_cols = {r[0] for r in cur.execute("DESCRIBE web_jobs").fetchall()}
            finally:
                cur.close()
            self._jobs_stamp = stamp

    @staticmethod
    def _jobs_sql(src: str, have: set[str]) -> str:
        def col(name: str, typ: str) -> str:
            return quote_ident(name) if name in have else f"NULL::{typ}"

        info = col("info", "VARCHAR")
        command = (
            f"coalesce(json_extract_string({info}, '$.command[0]'), "
            f"split_part(json_extract_string({info}, '$.command'), ' ', 1))"
        )
        start = "epoch_ms(start)" if "start" in have else "NULL::BIGINT"
        end = 'epoch_ms("end")' if "end" in have else "NULL::BIGINT"
        feats = ", ".join(
            f"{col(n, t)}::{t} AS {n}" for n, t in FEATURES.items() if n != "duration_s"
        )
        dur = col("duration_s", "DOUBLE")
        return (
            f"SELECT {col('job_id', 'VARCHAR')} AS job_id, {col('cluster', 'VARCHAR')} AS cluster, "
            f'{col("scheduler", "VARCHAR")} AS scheduler, {col("user", "VARCHAR")} AS "user", '
            f"{col('name', 'VARCHAR')} AS name, {col('hosts', 'VARCHAR[]')} AS hosts, "
            f"coalesce({col('nodes', 'BIGINT')}, 0) AS nodes, "
            f"{start} AS start_ms, {end} AS end_ms, "
            f"{info} AS info, "
            f"json_extract_string({info}, '$.account') AS account, "
            f"json_extract_string({info}, '$.partition') AS partition, "
            f"coalesce(nullif({col('name', 'VARCHAR')}, ''), "
            f"nullif(regexp_extract({command}, '[^/]*$'), '')) AS app, "
            f"coalesce({dur}::DOUBLE, ({end} - {start}) / 1000.0) AS duration_s, {feats}, "
            f"CASE {col('worst_severity', 'VARCHAR')} WHEN 'high' THEN 3 WHEN 'medium' THEN 2 "
            f"WHEN 'low' THEN 1 ELSE 0 END AS severity_rank "
            f"FROM {src}"
        )

    @contextmanager
    def cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        self.refresh()
        cur = self.con.cursor()
        try:
            yield cur
        finally:
            cur.close()

    def has(self, table: str) -> bool:
        return table in self._tables

    def close(self) -> None:
        self.con.close()

    # -- who sees which jobs -------------------------------------------------------------
    @staticmethod
    def visible(v: Viewer, share_accounts: bool, alias: str = "") -> tuple[str, list[Any]]:
        """A SQL condition on the jobs table for what `v` may see, and its parameters."""
        if v.admin:
            return "TRUE", []
        a = f"{alias}." if alias else ""
        parts = [f'{a}"user" = ?']
        params: list[Any] = [v.name]
        if v.users:
            parts.append(f'list_contains(?, {a}"user")')
            params.append(sorted(v.users))
        if share_accounts:
            parts.append(
                f'{a}account IN (SELECT account FROM web_jobs WHERE "user" = ? '
                "AND account IS NOT NULL)"
            )
            params.append(v.name)
        return "(" + " OR ".join(parts) + ")", params

    # -- jobs ----------------------------------------------------------------------------
    def jobs(
        self,
        v: Viewer,
        share_accounts: bool,
        filters: dict[str, Any],
        sort: str = "start",
        descending: bool = True,
        page: int = 1,
        size: int = 50,
    ) -> Page:
        size = max(1, min(int(size), MAX_PAGE))
        page = max(1, int(page))
        cond, params = self.visible(v, share_accounts)
        where = [cond]
        for key, sql in (
            ("user", '"user" = ?'),
            ("account", "account = ?"),
            ("partition", "partition = ?"),
            ("app", "app = ?"),
            ("node", "list_contains(hosts, ?)"),
            ("bottleneck", "list_contains(bottlenecks, ?)"),
        ):
            if filters.get(key):
                where.append(sql)
                params.append(str(filters[key]))
        if filters.get("name"):
            where.append("name ILIKE ? ESCAPE '\\'")
            params.append(_like(str(filters["name"])))
        if filters.get("q"):
            where.append(
                "(job_id ILIKE ? ESCAPE '\\' OR name ILIKE ? ESCAPE '\\' "
                "OR \"user\" ILIKE ? ESCAPE '\\')"
            )
            q = "%" + _like(str(filters["q"]), glob=False) + "%"
            params += [q, q, q]
        for key, op in (("since", ">="), ("until", "<")):
            if filters.get(key) is not None:
                where.append(f"start_ms {op} ?")
                params.append(int(filters[key] * 1000))
        if filters.get("min_nodes"):
            where.append("nodes >= ?")
            params.append(int(filters["min_nodes"]))
        if filters.get("state") == "running":
            where.append("end_ms IS NULL OR json_extract(info, '$.ended') IS NULL")
        elif filters.get("state") == "ended":
            where.append("json_extract(info, '$.ended') IS NOT NULL")
        col = SORTS.get(sort, "start_ms")
        order = f"{col} {'DESC' if descending else 'ASC'} NULLS LAST, job_id"
        sql_where = " AND ".join(f"({w})" for w in where)
        with self.cursor() as cur:
            total = cur.execute(
                f"SELECT count(*) FROM web_jobs WHERE {sql_where}", params
            ).fetchone()
            res = cur.execute(
                f'SELECT job_id, scheduler, "user", name, account, partition, app, nodes, '
                f"hosts[1:4] AS hosts, start_ms, end_ms, duration_s, cpu_util_pct, gpu_util_pct, "
                f"peak_rss_bytes, bottlenecks, worst_severity, top_function, analysis_version "
                f"FROM web_jobs WHERE {sql_where} ORDER BY {order} LIMIT ? OFFSET ?",
                [*params, size, (page - 1) * size],
            )
            rows = _dicts(res)
        return Page(rows, int(total[0]) if total else 0, page, size)

    def job(self, v: Viewer, share_accounts: bool, job_id: str) -> dict[str, Any]:
        cond, params = self.visible(v, share_accounts)
        with self.cursor() as cur:
            res = cur.execute(
                f"SELECT * EXCLUDE (severity_rank) FROM web_jobs WHERE job_id = ? AND {cond}",
                [job_id, *params],
            )
            rows = _dicts(res)
        if not rows:
            raise NotFound(f"no job {job_id!r}", hint="the job list shows the jobs you may see")
        return rows[0]

    def same_app(
        self, v: Viewer, share_accounts: bool, job: dict[str, Any], limit: int = 50
    ) -> list[dict[str, Any]]:
        """Other jobs of the job's application that `v` may see, newest first."""
        if not job.get("app"):
            return []
        cond, params = self.visible(v, share_accounts)
        with self.cursor() as cur:
            res = cur.execute(
                f'SELECT job_id, "user", name, nodes, start_ms, duration_s FROM web_jobs '
                f"WHERE app = ? AND job_id <> ? AND {cond} ORDER BY start_ms DESC NULLS LAST "
                f"LIMIT ?",
                [job["app"], job["job_id"], *params, limit],
            )
            return _dicts(res)

    def facets(self, v: Viewer, share_accounts: bool) -> dict[str, list[str]]:
        """The values the list's filters offer (at most 200 of each), kept a minute per
        viewer and version of the jobs (four scans of a million jobs are not per page)."""
        key = (v.name, v.admin, v.users, share_accounts, self._jobs_stamp)
        now = time.monotonic()
        hit = self._facets.get(key)
        if hit is not None and now - hit[0] < FACETS_S:
            return hit[1]
        out = self._facets_now(v, share_accounts)
        if len(self._facets) > 1000:
            self._facets.clear()
        self._facets[key] = (now, out)
        return out

    def _facets_now(self, v: Viewer, share_accounts: bool) -> dict[str, list[str]]:
        cond, params = self.visible(v, share_accounts)
        out: dict[str, list[str]] = {}
        with self.cursor() as cur:
            for key, sql in (
                ("user", '"user"'),
                ("account", "account"),
                ("partition", "partition"),
            ):
                rows = cur.execute(
                    f"SELECT DISTINCT {sql} FROM web_jobs WHERE {cond} AND {sql} "
                    f"IS NOT NULL ORDER BY 1 LIMIT 200",
                    params,
                ).fetchall()
                out[key] = [str(r[0]) for r in rows]
            rows = cur.execute(
                f"SELECT DISTINCT unnest(bottlenecks) FROM web_jobs WHERE {cond} "
                "ORDER BY 1 LIMIT 200",
                params,
            ).fetchall()
            out["bottleneck"] = [str(r[0]) for r in rows if r[0] is not None]
        return out

    # -- nodes ---------------------------------------------------------------------------
    def host(self, host: str) -> dict[str, Any]:
        if not self.has("hosts"):
            raise NotFound(f"no node {host!r}", hint="the database has no node yet")
        with self.cursor() as cur:
            res = cur.execute(
                "SELECT * REPLACE (epoch_ms(first_seen) AS first_seen, epoch_ms(last_seen) AS "
                "last_seen, epoch_ms(last_received) AS last_received) FROM hosts WHERE host = ?",
                [host],
            )
            rows = _dicts(res)
        if not rows:
            raise NotFound(f"no node {host!r}", hint="the cluster page lists the nodes")
        return rows[0]

    def hosts(self) -> list[str]:
        if not self.has("hosts"):
            return []
        with self.cursor() as cur:
            return [r[0] for r in cur.execute("SELECT host FROM hosts ORDER BY host").fetchall()]

    def timelines(self, host: str, t0: float, t1: float, points: int) -> dict[str, Any]:
        """The node's CPU, memory, storage, network and GPU use over [t0, t1] (epoch
        seconds), in at most `points` buckets: rates from the raw counters, per bucket."""
        step = max(1, int(-(-(t1 - t0) // max(points, 1))))
        args = [host, t0, t1, t0, t1]
        where = (
            "host = ? AND t BETWEEN to_timestamp(?) AND to_timestamp(?) AND "
            "date BETWEEN CAST(to_timestamp(?) AS DATE) AND CAST(to_timestamp(?) AS DATE)"
        )
        b = f"(floor(epoch(t))::BIGINT // {step}) * {step}"
        out: dict[str, Any] = {"step_s": step, "t0": t0, "t1": t1}
        queries = {
            "cpu": (
                "node",
                f"""
                WITH r AS (SELECT t, cpu_idle + cpu_iowait AS idle, cpu_iowait AS io,
                    cpu_user + cpu_nice + cpu_system + cpu_idle + cpu_iowait + cpu_irq
                    + cpu_softirq + coalesce(cpu_steal, 0) AS total, load1 FROM node WHERE {where}),
                d AS (SELECT t, total - lag(total) OVER w AS dt, idle - lag(idle) OVER w AS di,
                    io - lag(io) OVER w AS dio, load1 FROM r WINDOW w AS (ORDER BY t))
                SELECT {b} AS b, 100 * (1 - sum(di) / nullif(sum(dt), 0)) AS busy_pct,
                    100 * sum(dio) / nullif(sum(dt), 0) AS iowait_pct, avg(load1) AS load1
                FROM d WHERE dt > 0 GROUP BY b ORDER BY b""",
            ),
            "mem": (
                "memory",
                f"""
                SELECT {b} AS b, avg(100.0 * (mem_total - mem_available) / nullif(mem_total, 0))
                    AS used_pct, max(mem_total) AS total_bytes
                FROM memory WHERE {where} GROUP BY b ORDER BY b""",
            ),
            "io": (
                "disk",
                f"""
                WITH d AS (SELECT t, (read_bytes - lag(read_bytes) OVER w)
                    / (epoch(t) - epoch(lag(t) OVER w)) AS rd,
                    (write_bytes - lag(write_bytes) OVER w)
                    / (epoch(t) - epoch(lag(t) OVER w)) AS wr
                    FROM disk WHERE {where} AND NOT regexp_matches(device, {quote_str(_PARTS)})
                    WINDOW w AS (PARTITION BY device ORDER BY t)),
                s AS (SELECT t, sum(rd) AS rd, sum(wr) AS wr FROM d WHERE rd >= 0 AND wr >= 0
                    GROUP BY t)
                SELECT {b} AS b, avg(rd) AS read_bps, avg(wr) AS write_bps
                FROM s GROUP BY b ORDER BY b""",
            ),
            "net": (
                "net",
                f"""
                WITH d AS (SELECT t, (rx_bytes - lag(rx_bytes) OVER w)
                    / (epoch(t) - epoch(lag(t) OVER w)) AS rx,
                    (tx_bytes - lag(tx_bytes) OVER w) / (epoch(t) - epoch(lag(t) OVER w)) AS tx
                    FROM net WHERE {where} AND iface <> 'lo'
                    WINDOW w AS (PARTITION BY iface ORDER BY t)),
                s AS (SELECT t, sum(rx) AS rx, sum(tx) AS tx FROM d WHERE rx >= 0 AND tx >= 0
                    GROUP BY t)
                SELECT {b} AS b, avg(rx) AS rx_bps, avg(tx) AS tx_bps
                FROM s GROUP BY b ORDER BY b""",
            ),
            "gpu": (
                "gpu",
                f"""
                SELECT {b} AS b, avg(util_gpu) AS util_pct,
                    avg(100.0 * mem_used / nullif(mem_total, 0)) AS mem_pct
                FROM gpu WHERE {where} GROUP BY b ORDER BY b""",
            ),
        }
        with self.cursor() as cur:
            for key, (table, sql) in queries.items():
                if not self.has(table):
                    out[key] = None
                    continue
                res = cur.execute(sql, args)
                names = [d[0] for d in res.description]
                rows = res.fetchall()
                out[key] = {n: [_num(r[i]) for r in rows] for i, n in enumerate(names)}
        return out

    # -- alerts --------------------------------------------------------------------------
    def alerts(
        self,
        v: Viewer,
        share_accounts: bool,
        filters: dict[str, Any],
        page: int = 1,
        size: int = 50,
    ) -> Page:
        size = max(1, min(int(size), MAX_PAGE))
        page = max(1, int(page))
        if not self.has("alerts"):
            return Page([], 0, page, size)
        where = ["TRUE"]
        params: list[Any] = []
        if not v.admin:
            cond, vp = self.visible(v, share_accounts)
            where.append(
                f"(job_id IS NULL OR job_id IN (SELECT job_id FROM web_jobs WHERE {cond}))"
            )
            params += vp
        for key, sql in (
            ("rule", "rule = ?"),
            ("severity", "severity = ?"),
            ("host", "host = ?"),
            ("job", "job_id = ?"),
            ("event", "event = ?"),
            ("type", "type = ?"),
        ):
            if filters.get(key):
                where.append(sql)
                params.append(str(filters[key]))
        for key, op in (("since", ">="), ("until", "<")):
            if filters.get(key) is not None:
                where.append(f"t {op} to_timestamp(?)")
                params.append(float(filters[key]))
        sql_where = " AND ".join(where)
        with self.cursor() as cur:
            total = cur.execute(f"SELECT count(*) FROM alerts WHERE {sql_where}", params).fetchone()
            res = cur.execute(
                f"SELECT epoch_ms(t) AS t_ms, host, job_id, alert_id, event, state, rule, type, "
                f"severity, source, metric, value, unit, threshold, epoch_ms(started) AS "
                f"started_ms, epoch_ms(ended) AS ended_ms, summary, evidence FROM alerts "
                f"WHERE {sql_where} ORDER BY t DESC, alert_id LIMIT ? OFFSET ?",
                [*params, size, (page - 1) * size],
            )
            rows = _dicts(res)
        for r in rows:
            try:
                ev = json.loads(r.get("evidence") or "{}")
            except ValueError:
                ev = {"text": str(r.get("evidence"))}
            r["evidence"] = ev if isinstance(ev, dict) else {"text": str(ev)}
        return Page(rows, int(total[0]) if total else 0, page, size)

    def alert_facets(self) -> dict[str, list[str]]:
        if not self.has("alerts"):
            return {"rule": [], "severity": [], "event": [], "type": []}
        out = {}
        with self.cursor() as cur:
            for key in ("rule", "severity", "event", "type"):
                rows = cur.execute(
                    f"SELECT DISTINCT {key} FROM alerts WHERE {key} IS NOT NULL "
                    "ORDER BY 1 LIMIT 200"
                ).fetchall()
                out[key] = [str(r[0]) for r in rows]
        return out


# partitions, device-mapper, RAID, loop and RAM devices: their traffic is their disks' too
_PARTS = (
    r"^(loop|ram|dm-|md|zram)|^(sd[a-z]+|vd[a-z]+|xvd[a-z]+|hd[a-z]+)\d+$|"
    r"^nvme\d+n\d+p\d+$|^mmcblk\d+p\d+$"
)


def _like(text: str, glob: bool = True) -> str:
    """A LIKE pattern matching `text` literally (with * as a wildcard when glob)."""
    out = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return out.replace("*", "%") if glob else out


def _num(v: Any) -> Any:
    if isinstance(v, float):
        return None if v != v else round(v, 4)
    return v


def _dicts(res: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    names = [d[0] for d in res.description]
    return [dict(zip(names, r, strict=True)) for r in res.fetchall()]
