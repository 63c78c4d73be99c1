"""Jobs in the feature database: `para report --job ID`, `para jobs`, and the per-job
features the analyzer writes back to the database's `jobs` table.

A job's rows are read from the database (para/collector/db.py, docs/database.md) host by host
and go through the same reduction and analysis as .para files: DBSource reads like a .para
file does.  Rows belong to the job when the database attributed them to it, or to no job
while it ran on that host (node-wide rows of a shared node; process rows of a `para
profile` recording imported before the collector attributed them).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from para.analyzer.analysis import Analysis, analyse
from para.analyzer.job import Job
from para.errors import ParaError, UsageError
from para.formats.schema import TABLES

FEATURES_VERSION = 1
# Devices that are parts of a disk (partitions) or built on others: counted once, as disks.
_NOT_WHOLE = re.compile(r"^(loop|ram|dm-|md|zram)|^(sd[a-z]+|vd[a-z]+|xvd[a-z]+|hd[a-z]+)\d+$|"
                        r"^nvme\d+n\d+p\d+$|^mmcblk\d+p\d+$")  # fmt: skip


def db_dir(db: str | os.PathLike[str] | None) -> Path:
    return Path(db or os.environ.get("PARA_DB") or "para-db")


def _feature_db(db: str | os.PathLike[str] | None) -> Any:
    try:
        from para.collector.db import FeatureDB
    except ImportError as e:  # the collector part is not installed
        raise ParaError(f"the feature database is not available: {e}") from e
    return FeatureDB(db_dir(db))


@dataclass
class JobRow:
    job_id: str
    scheduler: str | None
    user: str | None
    name: str | None
    hosts: list[str]
    start_ms: int | None
    end_ms: int | None
    info: dict[str, Any]


def _job_row(con: Any, job_id: str, where: Path) -> JobRow:
    cur = con.execute(
        'SELECT job_id, scheduler, "user", name, hosts, epoch_ms(start), epoch_ms("end"), '
        "info FROM jobs WHERE job_id = ?",
        [str(job_id)],
    )
    row = cur.fetchone()
    if row is None:
        raise ParaError(f"no job {job_id!r} in the feature database at {where}",
                        hint=f"`para jobs --db {where}` lists the jobs it holds")  # fmt: skip
    try:
        info = json.loads(row[7]) if row[7] else {}
    except ValueError:
        info = {}
    return JobRow(str(row[0]), row[1], row[2], row[3], list(row[4] or []), row[5], row[6],
                  info if isinstance(info, dict) else {})  # fmt: skip


class DBSource:
    """One host's rows of one job in the database, read as reduce.Source reads a file."""

    def __init__(self, con: Any, job: JobRow, host: str, tables: set[str]):
        self.con = con
        self.host = host
        self.job = job
        # what reduce.py reads of a source that holds one job's rows
        self.job_start_ms = job.start_ms
        self.path = f"db:{job.job_id}@{host}"
        self._parts: dict[str, list[Any]] = {}
        self.tables = tables
        self._where = "host = ? AND (job_id = ? OR (job_id IS NULL AND t BETWEEN " \
            "make_timestamptz(? * 1000) AND make_timestamptz(? * 1000)))"  # fmt: skip
        self._params = [host, job.job_id, job.start_ms or 0, job.end_ms or 2**50]
        self.meta = self._meta()

    def _meta(self) -> dict[str, Any]:
        cur = self.con.execute("SELECT * FROM hosts WHERE host = ?", [self.host])
        cols = [d[0] for d in cur.description]
        row = cur.fetchone()
        facts = dict(zip(cols, row, strict=True)) if row else {}

        def fact(name: str) -> Any:
            return facts.get(f"fact_{name}", facts.get(name))

        interval = None
        if "node" in self.tables:
            interval = self.con.execute(
                "SELECT median(d) FROM (SELECT epoch_ms(t) - lag(epoch_ms(t)) OVER (ORDER BY t) "
                f"AS d FROM node WHERE {self._where} LIMIT 2000)",
                self._params,
            ).fetchone()[0]
        allowed = None
        if "job" in self.tables:
            allowed = self.con.execute(
                f"SELECT max(cpus) FROM job WHERE {self._where} AND job = ?",
                [*self._params, self.job.job_id],
            ).fetchone()[0]
        disks = []
        if "disk" in self.tables:
            disks = [str(d) for (d,) in self.con.execute(
                f"SELECT DISTINCT device FROM disk WHERE {self._where}", self._params
            ).fetchall() if d and not _NOT_WHOLE.search(str(d))]  # fmt: skip
        host = {"hostname": self.host, "clock_ticks": fact("clock_ticks") or 100,
                "threads": fact("threads"), "memory_bytes": fact("memory_bytes"),
                "cpu_model": fact("cpu_model")}  # fmt: skip
        return {
            "host": host,
            "interval": round(float(interval) / 1000, 3) if interval else 1.0,
            "allowed_cpus": int(allowed or fact("threads") or 1),
            "job": {
                "scheduler": self.job.scheduler,
                "job_id": self.job.job_id,
                "user": self.job.user,
                "name": self.job.name,
            },  # fmt: skip
            "command": self.job.info.get("command"),
            "start": self.job.start_ms / 1000 if self.job.start_ms else None,
            "end": self.job.end_ms / 1000 if self.job.end_ms else None,
            "families": {},
            "family_facts": {"disk": {"whole_disks": disks}} if disks else {},
            "functions": self.job.info.get("functions"),
        }

    def read(self, table: str, columns: list[str], dictionary: tuple[str, ...] = ()
             ) -> pa.Table | None:  # fmt: skip
        if table not in self.tables:
            return None
        have = set(self._columns(table))
        keys = [c.name for c in TABLES[table].keys] if table in TABLES else ["t"]
        order = [k for k in keys if k != "t" and k in have] + ["t"]
        sel = ", ".join(f'"{c}"' if c in have else f'NULL AS "{c}"' for c in columns)
        # Rows attributed one by one (processes, per-job sums) belong to the job only when
        # they say so; node-wide rows of the job's time on the host describe its node.
        own = table in TABLES and "job" in TABLES[table].column_names
        where, params = (
            ("host = ? AND job_id = ?", self._params[:2]) if own else (self._where, self._params)
        )
        tab = self.con.sql(
            f'SELECT {sel} FROM "{table}" WHERE {where} '
            f"ORDER BY {', '.join(chr(34) + k + chr(34) for k in order)}",
            params=params,
        ).to_arrow_table()
        return tab if len(tab) else None

    def _columns(self, table: str) -> list[str]:
        return [r[0] for r in self.con.execute(f'DESCRIBE "{table}"').fetchall()]

    def close(self) -> None:
        pass


def open_job(job_id: str, db: str | os.PathLike[str] | None = None, con: Any = None) -> Job:
    """The job's hosts as the nodes of a Job, read from the feature database (through `con`
    when given: a connection with the database's views, such as the portal's locked-down
    one)."""
    fdb = _feature_db(db)
    if con is None:
        con = fdb.connect(read_only=True)
    row = _job_row(con, job_id, fdb.root)
    hosts = row.hosts or fdb.job_hosts(job_id)
    if not hosts:
        raise ParaError(f"job {job_id!r} has no host with data in {fdb.root}")
    tables = {str(t) for (t,) in con.execute(
        "SELECT table_name FROM information_schema.tables").fetchall()}  # fmt: skip

    def opener(host: str) -> Callable[[], list[Any]]:
        return lambda: [DBSource(con, row, host, tables)]

    job = Job(sources=[(h, opener(h)) for h in hosts], threads=1)
    job.db_con = con  # type: ignore[attr-defined]
    return job


# -- per-job features -------------------------------------------------------------------------


def features(a: Analysis) -> dict[str, Any]:
    """The job's features for the database's `jobs` table (one flat object, JSON types)."""
    d = a.doc
    s = d["summary"]
    counters = a.facts.counters
    flops = a.doc["roofline"]["points"]
    energy = _energy(a)
    return {
        "analysis_version": FEATURES_VERSION,
        "duration_s": d["duration_s"],
        "cores_mean": s["cores_mean"],
        "cpu_util_pct": s["cpu_util_pct"],
        "peak_rss_bytes": s["peak_rss_bytes"],
        "peak_mem_bytes": s["peak_mem_bytes"],
        "ipc": s["ipc"],
        "flops_per_s": sum(p["flops_per_s"] or 0 for p in flops) if flops else None,
        "mem_bandwidth_bytes_per_s": sum(p["bytes_per_s"] or 0 for p in flops) if flops else None,
        "read_bps": s["read_bps"],
        "write_bps": s["write_bps"],
        "net_bps": s["net_bps"],
        "gpu_util_pct": s["gpu_util_pct"],
        "gpu_peak_mem_bytes": max((g["peak_mem"] or 0 for g in a.facts.gpus), default=None),
        "energy_j": energy,
        "imbalance_pct": d["balance"]["imbalance_pct"],
        "bottlenecks": [b["id"] for b in a.bottlenecks],
        "worst_severity": a.bottlenecks[0]["severity"] if a.bottlenecks else None,
        "phases": [f"{p['label']} {p['duration_s']:g}s" for p in d["phases"]],
        "top_function": a.hotspots[0]["function"] if a.hotspots else None,
        "counters": sorted(counters),
        # issue 13: where its CPU went, from its call stacks (analysis.py)
        "top_functions": [
            {"function": h["function"], "self_pct": h["self_pct"]} for h in a.hotspots[:5]
        ]
        or None,  # fmt: skip
        **(a.doc["functions"].get("shares") or {}),
    }


def _energy(a: Analysis) -> float | None:
    """Joules from the RAPL packages (per second, summed over the run), when recorded."""
    if not a.job.has("power"):
        return None
    v = a.job.one("SELECT sum(rapl_w) * getvariable('step_ms') / 1000.0 FROM power")
    return round(float(v), 1) if v is not None else None


def write_features(job_id: str, a: Analysis, db: str | os.PathLike[str] | None) -> bool:
    """Store the features; False (and a note on stderr) when the database is read-only."""
    fdb = _feature_db(db)
    try:
        fdb.write_job_features(job_id, features(a))
    except (ParaError, OSError) as e:
        msg = e.message if isinstance(e, ParaError) else str(e)
        print(f"para: the features of job {job_id} were not stored: {msg}", file=sys.stderr)
        return False
    finally:
        fdb.close()
    return True


def analyse_job(job_id: str, db: str | os.PathLike[str] | None, rules: str | None = None
                ) -> Analysis:  # fmt: skip
    from para.analyzer.rules import load_config

    with open_job(job_id, db) as job:
        return analyse(job, load_config(rules))


# -- para jobs ---------------------------------------------------------------------------------

JOB_COLUMNS = ["job_id", "user", "name", "nodes", "start", "duration_s", "cpu_util_pct",
               "peak_rss_bytes", "gpu_util_pct", "bottlenecks"]  # fmt: skip


def list_jobs(
    db: str | os.PathLike[str] | None,
    *,
    user: str | None = None,
    name: str | None = None,
    since: str | None = None,
    until: str | None = None,
    min_nodes: int | None = None,
    bottleneck: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    fdb = _feature_db(db)
    con = fdb.connect(read_only=True)
    cols = {r[0] for r in con.execute("DESCRIBE jobs").fetchall()}
    where: list[str] = ["TRUE"]
    params: list[Any] = []
    for col, val, op in (("user", user, "="), ("name", name, "LIKE")):
        if val is not None:
            where.append(f'"{col}" {op} ?')
            params.append(val if op == "=" else val.replace("*", "%"))
    for val, op in ((since, ">="), (until, "<")):
        if val is not None:
            where.append(f"start {op} CAST(? AS TIMESTAMPTZ)")
            params.append(val)
    if min_nodes is not None:
        where.append("nodes >= ?")
        params.append(min_nodes)
    if bottleneck is not None:
        if "bottlenecks" not in cols:
            return []
        where.append("list_contains(bottlenecks, ?)")
        params.append(bottleneck)
    feats = [c for c in cols if c not in ("job_id", "cluster", "scheduler", "user", "name",
                                          "hosts", "nodes", "start", "end", "info")]  # fmt: skip
    sql = (
        f'SELECT job_id, scheduler, "user", name, hosts, nodes, epoch_ms(start), '
        f'epoch_ms("end"){"".join(", " + chr(34) + c + chr(34) for c in sorted(feats))} '
        f"FROM jobs WHERE {' AND '.join(where)} ORDER BY start DESC, job_id LIMIT ?"
    )
    rows = con.execute(sql, [*params, limit]).fetchall()
    con.close()
    out = []
    for r in rows:
        d: dict[str, Any] = {
            "job_id": r[0], "scheduler": r[1], "user": r[2], "name": r[3], "hosts": r[4],
            "nodes": r[5], "start": r[6] / 1000 if r[6] is not None else None,
            "end": r[7] / 1000 if r[7] is not None else None,
        }  # fmt: skip
        d.update(dict(zip(sorted(feats), r[8:], strict=True)))
        out.append(d)
    return out


def _analysed(j: dict[str, Any]) -> bool:
    return j.get("analysis_version") is not None


def jobs_main(
    db: str | None,
    *,
    as_json: bool = False,
    analyse_missing: bool = False,
    rules: str | None = None,
    **filters: Any,
) -> int:
    from para.analyzer.progress import Progress

    jobs = list_jobs(db, **filters)
    todo = [j for j in jobs if analyse_missing and not _analysed(j)]
    if todo:
        with Progress(len(todo), enabled=None if len(todo) >= 2 else False) as progress:
            for i, j in enumerate(todo):
                try:
                    a = analyse_job(j["job_id"], db, rules)
                except ParaError as e:
                    print(f"para: job {j['job_id']}: {e.message}", file=sys.stderr)
                    continue
                write_features(j["job_id"], a, db)
                progress.advance("jobs", i + 1, len(todo))
        jobs = list_jobs(db, **filters)
    if as_json:
        sys.stdout.write(json.dumps({"jobs": jobs}, default=str, separators=(",", ":")) + "\n")
        return 0
    render_jobs(jobs, db_dir(db))
    return 0


def render_jobs(jobs: list[dict[str, Any]], where: Path) -> None:
    import shutil
    from datetime import datetime, timezone

    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from para.analyzer.summary import fmt_bytes

    tty = sys.stdout.isatty()
    console = Console(
        markup=False,
        highlight=False,
        emoji=False,
        force_terminal=tty,
        color_system="auto" if tty else None,
        width=max(100, shutil.get_terminal_size().columns) if tty else 140,
    )
    if not jobs:
        console.print(f"No jobs match in {where}.")
        return
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for name, just in (
        ("job", "left"),
        ("user", "left"),
        ("name", "left"),
        ("nodes", "right"),
        ("start (UTC)", "left"),
        ("time", "right"),
        ("CPU use", "right"),
        ("peak RSS", "right"),
        ("GPU", "right"),
        ("top functions", "left"),
        ("comm/IO/interp", "right"),
        ("what limits it", "left"),
    ):
        t.add_column(name, justify=just)  # type: ignore[arg-type]
    for j in jobs:
        start = (datetime.fromtimestamp(j["start"], timezone.utc).strftime("%Y-%m-%d %H:%M")
                 if j.get("start") else "-")  # fmt: skip
        dur = j.get("duration_s")
        if dur is None and j.get("start") and j.get("end"):
            dur = j["end"] - j["start"]
        bn = j.get("bottlenecks")
        t.add_row(
            Text(str(j["job_id"])), Text(str(j.get("user") or "")),
            Text(str(j.get("name") or "")), str(j.get("nodes") or 0), start,
            "-" if dur is None else f"{dur:.0f} s",
            "-" if j.get("cpu_util_pct") is None else f"{j['cpu_util_pct']:.0f} %",
            "-" if j.get("peak_rss_bytes") is None else fmt_bytes(j["peak_rss_bytes"]),
            "-" if j.get("gpu_util_pct") is None else f"{j['gpu_util_pct']:.0f} %",
            Text(_top_functions(j.get("top_functions"))), _shares(j),
            Text(", ".join(bn) if bn else ("none" if _analysed(j) else "(not analysed)")),
        )  # fmt: skip
    console.print(t)
    todo = sum(1 for j in jobs if not _analysed(j))
    if todo:
        console.print(f"{todo} job(s) not analysed yet: para jobs --analyze "
                      f"(or para report --job ID)")  # fmt: skip


def _top_functions(top: Any) -> str:
    if isinstance(top, str):  # as the database's jobs view may give it back
        try:
            top = json.loads(top)
        except ValueError:
            return top
    if not top:
        return "-"
    return ", ".join(f"{t['function'][:40]} {t['self_pct']:.0f}%" for t in top[:3]
                     if isinstance(t, dict) and t.get("self_pct") is not None)  # fmt: skip


def _shares(j: dict[str, Any]) -> str:
    vals = [j.get(k) for k in ("comm_pct", "io_pct", "interpreter_pct")]
    if all(v is None for v in vals):
        return "-"
    return "/".join("-" if v is None else f"{v:.0f}" for v in vals) + " %"


__all__ = ["DBSource", "UsageError", "analyse_job", "features", "jobs_main", "list_jobs",
           "open_job", "write_features"]  # fmt: skip
