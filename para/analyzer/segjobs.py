"""The jobs in `para agent` segments, each reported on its own (`para report SEG... --job ID`).

A node's agent records every job that ran there in the same segments.  One job's report reads
the rows attributed to it (its processes' rows, its per-job sums: tables with a `job` column)
and, of the node-wide tables, the rows of the time it ran; its identity (id, name, user) and
CPUs come from the agent's job_start and job_end events.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from para.analyzer.reduce import Source, file_facts
from para.formats import ParaFile
from para.formats.schema import TABLES

# rows attributed one by one to a job
_OWN = {name for name, t in TABLES.items() if "job" in t.column_names}


@dataclass
class SegmentJob:
    job_id: str
    scheduler: str | None = None
    name: str | None = None
    user: str | None = None
    cpus: int | None = None
    start: float | None = None  # epoch seconds
    end: float | None = None
    info: dict[str, Any] = field(default_factory=dict)


def is_agent_recording(files: list[str]) -> bool:
    return any(file_facts(f).agent for f in files)


def segment_jobs(files: list[str]) -> dict[str, SegmentJob]:
    """The jobs the agent saw in these segments, in the order they started."""
    jobs: dict[str, SegmentJob] = {}
    for f in files:
        with ParaFile(f) as pf:
            if "events" not in pf.tables:
                continue
            ev = pf.read_table("events", ["t", "kind", "name", "detail"])
            for e in ev.to_pylist():
                if e["kind"] not in ("job_start", "job_running", "job_end") or not e["name"]:
                    continue
                try:
                    d = json.loads(e["detail"] or "{}")
                except ValueError:
                    d = {}
                j = jobs.setdefault(str(e["name"]), SegmentJob(str(e["name"])))
                t = e["t"].timestamp() if e["t"] is not None else None
                j.scheduler = j.scheduler or d.get("scheduler")
                j.name = j.name or d.get("job_name")
                j.user = j.user or d.get("user")
                if isinstance(d.get("cpus"), int):
                    j.cpus = d["cpus"]
                start = d.get("start", d.get("started", d.get("since", t)))
                if isinstance(start, (int, float)) and (j.start is None or start < j.start):
                    j.start = float(start)
                end = d.get("end", t) if e["kind"] == "job_end" else t
                if isinstance(end, (int, float)) and (j.end is None or end > j.end):
                    j.end = float(end)
                j.info.update(d)
    return dict(sorted(jobs.items(), key=lambda kv: (kv[1].start or 0, kv[0])))


class JobSource:
    """A segment read as reduce.Source reads it, holding one job's rows only."""

    def __init__(self, path: str | Path, job: SegmentJob):
        self.inner = Source(path)
        self.path = self.inner.path
        self.job = job
        # what reduce.py reads of a source that holds one job's rows
        self.job_start_ms = job.start * 1000 if job.start is not None else None
        self.tables = self.inner.tables
        self._parts = self.inner._parts
        meta = dict(self.inner.meta)
        meta["job"] = {"scheduler": job.scheduler, "job_id": job.job_id, "user": job.user,
                       "name": job.name}  # fmt: skip
        if job.cpus:
            meta["allowed_cpus"] = job.cpus
        self.meta = meta

    def read(self, table: str, columns: list[str], dictionary: tuple[str, ...] = ()
             ) -> pa.Table | None:  # fmt: skip
        own = table in _OWN
        cols = columns + ["job"] if own and "job" not in columns else columns
        tab = self.inner.read(table, cols, dictionary)
        if tab is None or len(tab) == 0:
            return tab
        if own:
            keep = pc.equal(tab["job"], pa.scalar(self.job.job_id))
            tab = tab.filter(pc.fill_null(keep, False))
            if "job" not in columns:
                tab = tab.drop_columns(["job"])
        elif "t" in tab.column_names and self.job.start is not None:
            # the node's rows while the job ran (a sample before and after: rates need both)
            t = pc.cast(tab["t"], pa.timestamp("ms", tz="UTC")).cast(pa.int64())
            lo = int((self.job.start - 2) * 1000)
            hi = int(((self.job.end or 2**40) + 2) * 1000)
            tab = tab.filter(pc.and_(pc.greater_equal(t, lo), pc.less_equal(t, hi)))
        return tab

    def close(self) -> None:
        self.inner.close()
