"""A job: the .para files of its nodes (or the agent's segments of them), reduced node by node
(reduce.py) into one DuckDB connection, where the SQL of sql/job.sql analyses them together.

Files of the same host whose times do not overlap are one node (the agent writes a node's
recording as consecutive segments); files that overlap in time are different nodes, or
different runs on one machine, and keep their own label (`host`, `host#2`, ...).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from para.analyzer.load import sql_file, views
from para.analyzer.reduce import (
    NodeData,
    file_facts,
    node_facts,
    reduce_node,
    reduce_sources,
)
from para.errors import ParaError

# The reduced tables, their columns, and their types when no node has them (empty views
# keep the SQL valid whatever a job recorded).
TABLES: dict[str, dict[str, str]] = {
    "cpu": {"t": "BIGINT", "user": "DOUBLE", "nice": "DOUBLE", "system": "DOUBLE",
            "idle": "DOUBLE", "iowait": "DOUBLE", "irq": "DOUBLE", "softirq": "DOUBLE",
            "steal": "DOUBLE", "procs_blocked": "DOUBLE", "busy": "DOUBLE", "total": "DOUBLE"},
    "cores": {"cpu": "BIGINT", "busy_s": "DOUBLE", "total_s": "DOUBLE"},
    "mem": {"t": "BIGINT", "used": "DOUBLE", "total": "DOUBLE", "cache": "DOUBLE",
            "swap_used": "DOUBLE", "majflt_ps": "DOUBLE", "swap_pps": "DOUBLE"},
    "job": {"t": "BIGINT", "cores": "DOUBLE", "rss": "DOUBLE", "read_bps": "DOUBLE",
            "write_bps": "DOUBLE", "dstate": "DOUBLE", "procs": "BIGINT"},
    "procs": {"pid": "BIGINT", "first_ms": "BIGINT", "last_ms": "BIGINT", "ppid": "BIGINT",
              "cpu_s": "DOUBLE", "peak_rss": "DOUBLE", "peak_threads": "DOUBLE",
              "read_bytes": "DOUBLE", "write_bytes": "DOUBLE", "busy_samples": "BIGINT",
              "peak_cores": "DOUBLE", "samples": "BIGINT", "rank": "BIGINT"},
    "disk": {"t": "BIGINT", "read_bps": "DOUBLE", "write_bps": "DOUBLE", "iops": "DOUBLE",
             "util_max": "DOUBLE", "wait_ms_ps": "DOUBLE"},
    "net": {"t": "BIGINT", "rx_bps": "DOUBLE", "tx_bps": "DOUBLE", "pps": "DOUBLE"},
    "ib": {"t": "BIGINT", "rx_bps": "DOUBLE", "tx_bps": "DOUBLE", "wait_ps": "DOUBLE",
           "link_bps": "DOUBLE"},
    "gpu": {"t": "BIGINT", "gpu": "VARCHAR", "util": "DOUBLE", "mem_util": "DOUBLE",
            "mem_used": "DOUBLE", "mem_total": "DOUBLE", "power_w": "DOUBLE"},
    "ctr": {"event": "VARCHAR", "total": "DOUBLE", "counted": "DOUBLE", "seconds": "DOUBLE",
            "running_pct": "DOUBLE", "unit": "VARCHAR"},
    "stacks": {"t": "BIGINT", "stack": "VARCHAR", "samples": "BIGINT"},
    "pstacks": {"pid": "BIGINT", "stack": "VARCHAR", "samples": "BIGINT"},  # per process
    # Python threads off-CPU, in samples of perf's period (issue 12)
    "waits": {"t": "BIGINT", "stack": "VARCHAR", "state": "VARCHAR", "samples": "BIGINT"},
    "pystacks": {"pid": "BIGINT", "tid": "BIGINT", "stack": "VARCHAR", "state": "VARCHAR",
                 "samples": "BIGINT"},
    "events": {"t": "BIGINT", "kind": "VARCHAR", "pid": "BIGINT", "name": "VARCHAR",
               "detail": "VARCHAR"},
    "fsmeta": {"t": "BIGINT", "ops_ps": "DOUBLE"},
    "power": {"t": "BIGINT", "rapl_w": "DOUBLE"},
    "instr": {"dso": "VARCHAR", "symbol": "VARCHAR", "offset": "BIGINT", "samples": "BIGINT",
              "build_id": "VARCHAR"},
    # every sampling instant of a node, its families side by side (reduce._Reducer.steps)
    "steps": {"t": "BIGINT", "k": "BIGINT", "busy": "DOUBLE", "usr": "DOUBLE", "sys": "DOUBLE",
              "iowait": "DOUBLE", "steal": "DOUBLE", "ncpu": "DOUBLE", "blocked": "DOUBLE",
              "job_cores": "DOUBLE", "rss": "DOUBLE", "job_read_bps": "DOUBLE",
              "job_write_bps": "DOUBLE", "procs": "BIGINT", "dstate": "DOUBLE",
              "mem_used": "DOUBLE", "mem_total": "DOUBLE", "swap_used": "DOUBLE",
              "majflt_ps": "DOUBLE", "swap_pps": "DOUBLE", "disk_read_bps": "DOUBLE",
              "disk_write_bps": "DOUBLE", "disk_util": "DOUBLE", "net_bps": "DOUBLE",
              "ib_bps": "DOUBLE", "ib_link_bps": "DOUBLE", "ib_wait_ps": "DOUBLE",
              "gpu_util": "DOUBLE", "gpu_mem": "DOUBLE", "gpu_mem_total": "DOUBLE",
              "gpus": "BIGINT", "meta_ops": "DOUBLE"},
}  # fmt: skip

_ARROW = {"BIGINT": pa.int64(), "DOUBLE": pa.float64(), "VARCHAR": pa.string(),
          "INTEGER": pa.int32()}  # fmt: skip

Progress = Callable[[int, int], None]


@dataclass
class Node:
    index: int
    label: str
    host: str
    files: list[str]
    meta: dict[str, Any]
    interval: float
    hz: float
    allowed: int
    threads: int | None
    memory: int | None
    start: float | None
    end: float | None
    wraps: int
    resets: int
    tables: set[str]


def group_files(paths: list[Path]) -> list[tuple[str, list[Path]]]:
    """Files -> nodes: a host's files that follow each other in time are one node."""
    metas = []
    for p in paths:
        f = file_facts(p)
        metas.append((p, f.host, f.start, f.end, f.segment))
    groups: list[tuple[str, list[tuple[Path, float | None, float | None]]]] = []
    for p, host, start, end, segment in metas:
        for label, members in groups:
            if label.split("#")[0] != host or not segment:
                continue
            if all(_apart(start, end, s, e) for _, s, e in members):
                members.append((p, start, end))
                break
        else:
            same = sum(1 for label, _ in groups if label.split("#")[0] == host)
            groups.append((host if same == 0 else f"{host}#{same + 1}", [(p, start, end)]))
    out = []
    for label, members in groups:
        members.sort(key=lambda m: (m[1] is None, m[1] or 0))
        out.append((label, [m[0] for m in members]))
    return out


def _apart(s1: float | None, e1: float | None, s2: float | None, e2: float | None) -> bool:
    if None in (s1, e1, s2, e2):
        return False
    return bool(e1 < s2 or e2 < s1)  # type: ignore[operator]


class Job:
    """The nodes of one job in one DuckDB connection (see module doc)."""

    def __init__(self, files: list[str] | list[Path] | None = None,
                 progress: Progress | None = None, threads: int | None = None,
                 sources: list[tuple[str, Callable[[], list[Any]]]] | None = None):  # fmt: skip
        """`files`: .para files; or `sources`: per node, its label and a function that opens
        its sources (the feature database's rows, jobs.py)."""
        paths = [Path(f) for f in files or []]
        if not paths and not sources:
            raise ParaError("no .para files given", hint="para report FILE.para ...")
        groups: list[Any] = group_files(paths) if paths else list(sources or [])
        done = 0

        one = len(groups) == 1

        def work(item: tuple[int, tuple[str, Any]]) -> NodeData:
            label, what = item[1]
            if callable(what):
                return reduce_sources(label, what(), cores=one)
            return reduce_node(label, what, cores=one)

        workers = threads or min(len(groups), os.cpu_count() or 1)
        datas: list[NodeData] = []
        with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
            for nd in ex.map(work, enumerate(groups)):
                datas.append(nd)
                done += 1
                if progress:
                    progress(done, len(groups))
        self.nodes: list[Node] = []
        for i, nd in enumerate(datas):
            f = node_facts(nd.meta)
            self.nodes.append(
                Node(
                    i,
                    nd.label,
                    f["host"],
                    nd.files,
                    nd.meta,
                    f["interval"],
                    f["hz"],
                    f["allowed"],
                    f["threads"],
                    f["memory"],
                    nd.meta.get("start"),
                    nd.meta.get("end"),
                    nd.wraps,
                    nd.resets,
                    set(nd.series),
                )  # fmt: skip
            )
        self.con = duckdb.connect()
        # one thread: sums of floating-point values then add up in one order, run after run
        self.con.execute("SET threads TO 1")
        self._register(datas)
        starts = [n.start for n in self.nodes if n.start is not None]
        self.t0_ms = int(round(min(starts) * 1000)) if starts else self._first_t()
        self.step_ms = int(round(1000 * max((n.interval for n in self.nodes), default=1.0)))
        self.con.execute(f"SET VARIABLE t0 = {self.t0_ms}")
        self.con.execute(f"SET VARIABLE step_ms = {self.step_ms}")
        self.views: list[str] = []
        present = {t for t in TABLES if any(t in n.tables for n in self.nodes)}
        for v in views(sql_file("job.sql")):
            self.con.execute(v.sql)
            if all(n in present for n in v.needs):
                self.views.append(v.name)
        self.present = present

    def _register(self, datas: list[NodeData]) -> None:
        node_rows = []
        for i, (nd, n) in enumerate(zip(datas, self.nodes, strict=True)):
            node_rows.append({
                "node": i, "label": n.label, "host": n.host, "allowed": n.allowed,
                "threads": n.threads, "memory": n.memory, "interval": n.interval,
                "start_ms": None if n.start is None else int(round(n.start * 1000)),
                "first_ms": (nd.series["steps"]["t"][0].as_py() if "steps" in nd.series
                             else None),
                "has_proc": "job" in nd.series,
                "end_ms": None if n.end is None else int(round(n.end * 1000)),
            })  # fmt: skip
        self._nodes = pa.Table.from_pylist(node_rows)
        self.con.register("nodes", self._nodes)
        # Arrow tables are registered, not copied: DuckDB scans them in place.
        self._arrow: dict[str, pa.Table] = {}
        for name, cols in TABLES.items():
            schema = pa.schema([("node", pa.int32())]
                               + [(c, _ARROW[t]) for c, t in cols.items()])  # fmt: skip
            parts = []
            for i, nd in enumerate(datas):
                tab = nd.series.get(name)
                if tab is None or not len(tab):
                    continue
                arrays = [pa.repeat(pa.scalar(i, pa.int32()), len(tab))]
                for f in schema:
                    if f.name == "node":
                        continue
                    if f.name in tab.column_names:
                        col = tab[f.name]
                        arrays.append(
                            pc.cast(col, f.type, safe=False) if col.type != f.type else col
                        )
                    else:
                        arrays.append(pa.nulls(len(tab), f.type))
                parts.append(pa.table(arrays, schema=schema))
            arrow = pa.concat_tables(parts) if parts else schema.empty_table()
            self._arrow[name] = arrow
            self.con.register(name, arrow)

    def _first_t(self) -> int:
        v = self.one("SELECT min(t) FROM cpu")
        return int(v) if v is not None else 0

    def has(self, name: str) -> bool:
        return name in self.present or name in self.views

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        return self.con.execute(sql, params or []).fetchall()

    def one(self, sql: str, params: list[Any] | None = None) -> Any:
        row = self.con.execute(sql, params or []).fetchone()
        return row[0] if row else None

    def arrow(self, sql: str, params: list[Any] | None = None) -> pa.Table:
        return self.con.sql(sql, params=params or []).to_arrow_table()

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Job:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
