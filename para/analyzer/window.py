"""The analyzer's bottleneck rules on a sliding window of a running job's live samples.

The collector keeps the last minutes of every node's live samples; for a job it hands them
here as one `LiveSource` per node, read the way reduce.py reads a .para file (the job's own
process rows, and the node-wide rows of the window).  The job is then reduced and analysed
by exactly the code of `para report` (reduce.py, sql/job.sql, sql/analysis.sql, rules.py):
the same metrics, the same thresholds (rules.toml, or the site's rules file), the same
evidence in words.  What a window cannot show (call stacks, hardware counters not sampled)
comes out "not evaluated", as in a report.
"""

from __future__ import annotations

import statistics
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from para.analyzer import analysis, rules
from para.analyzer.job import Job
from para.formats import journal
from para.formats.schema import TABLES, catalogue
from para.live.metrics import LAYOUTS, NOT_WHOLE_DISK

# tables a window never needs: per-CPU rows (only a one-node report's per-core figure uses
# them, and they are the bulk of a big node's sample), filesystem sizes, licenses, stacks
SKIP_TABLES = frozenset({"cpu", "fs", "license", "license_use", "stacks", "instr_samples"})
_LAYOUT = journal.table_layout(catalogue())
_TIMED = {name for name, t in TABLES.items() if t.timed_rows}
_USER_HZ = (100, 250, 300, 1000)
_JOB_CPUS = LAYOUTS["job"].index["cpus"]

Sample = tuple[int, dict[str, list[list[Any]]]]


def rule_ids() -> list[str]:
    """The bottleneck ids a live rule may name."""
    return [rid for rid in rules.default_config() if rid != "too_short"]


class LiveSource:
    """One node's live samples of a job, read like reduce.Source reads a file."""

    def __init__(self, host: str, job: dict[str, Any], samples: list[Sample]):
        self.host = host
        self.job = job
        self.path = f"live:{job.get('job_id')}@{host}"
        self._parts: dict[str, list[Any]] = {}
        builder = journal.TableBuilder(_LAYOUT, _TIMED)
        for t, rows in samples:
            builder.add(t, {k: v for k, v in rows.items() if k not in SKIP_TABLES})
        self._builder = builder
        self.tables = set(builder.tables())
        self._cache: dict[str, pa.Table] = {}
        self.meta = self._meta(samples)

    def _meta(self, samples: list[Sample]) -> dict[str, Any]:
        ts = [t for t, _ in samples]
        steps = [b - a for a, b in zip(ts, ts[1:]) if b > a]
        interval = statistics.median(steps) / 1000 if steps else 1.0
        # (a sample's timed rows may come alone, at their own time: look at all of them)
        ncpu = max((len(rows.get("cpu") or ()) for _, rows in samples), default=0) or None
        mems = [rows["memory"][0] for _, rows in samples if rows.get("memory")]
        mem = mems[-1] if mems else [None]
        last = next((rows for _, rows in reversed(samples) if rows.get("disk")), {})
        hz = _user_hz(samples, ncpu)
        job_id = str(self.job.get("job_id"))
        cpus = [
            r[_JOB_CPUS]
            for _, rows in samples
            for r in rows.get("job") or ()
            if len(r) > _JOB_CPUS and r[0] == job_id and isinstance(r[_JOB_CPUS], int)
        ]
        disks = sorted({str(r[0]) for r in last.get("disk") or ()
                        if r and not NOT_WHOLE_DISK.search(str(r[0]))})  # fmt: skip
        return {
            "host": {"hostname": self.host, "clock_ticks": hz, "threads": ncpu,
                     "memory_bytes": mem[0] if mem and isinstance(mem[0], int) else None},
            "interval": round(interval, 3),
            "allowed_cpus": max(cpus) if cpus else ncpu or 1,
            "job": {"scheduler": self.job.get("scheduler"), "job_id": job_id,
                    "user": self.job.get("user"), "name": self.job.get("name")},
            "start": ts[0] / 1000 if ts else None,
            "end": ts[-1] / 1000 if ts else None,
            "families": {},
            "family_facts": {"disk": {"whole_disks": disks}} if disks else {},
        }  # fmt: skip

    def read(
        self, table: str, columns: list[str], dictionary: tuple[str, ...] = ()
    ) -> pa.Table | None:
        if table not in self.tables:
            return None
        tab = self._cache.get(table)
        if tab is None:
            tab = self._builder.to_arrow(table)
            spec = TABLES.get(table)
            if spec is not None and "job" in spec.column_names:
                # a process or per-job row belongs to the job only when it says so
                tab = tab.filter(pc.equal(tab["job"], str(self.job.get("job_id"))))
            keys = [c.name for c in spec.keys] if spec is not None else ["t"]
            tab = journal.sort_for_storage(tab, keys)
            self._cache[table] = tab
        if not len(tab):
            return None
        cols = []
        for c in columns:
            if c in tab.column_names:
                col = tab[c]
                cols.append(col.dictionary_encode() if c in dictionary else col)
            else:
                cols.append(pa.nulls(len(tab)))
        return pa.table(cols, names=columns)

    def close(self) -> None:
        self._cache.clear()


def _user_hz(samples: list[Sample], ncpu: int | None) -> int:
    """The node's clock ticks per second, from its own counters (USER_HZ is 100 on almost
    every Linux, but the counters say so themselves)."""
    if not ncpu or len(samples) < 2:
        return 100
    (t0, a), (t1, b) = samples[0], samples[-1]
    try:
        ticks = sum(b["node"][0][:8]) - sum(a["node"][0][:8])
    except (KeyError, IndexError, TypeError):
        return 100
    if t1 <= t0 or ticks <= 0:
        return 100
    per = ticks / ((t1 - t0) / 1000) / ncpu
    return min(_USER_HZ, key=lambda hz: abs(hz - per))


def evaluate(
    job: dict[str, Any],
    nodes: dict[str, list[Sample]],
    config: dict[str, dict[str, Any]] | None = None,
) -> dict[str, rules.Outcome]:
    """Every bottleneck rule on the job's window: outcome by rule id."""
    hosts = [h for h, s in sorted(nodes.items()) if len(s) >= 2]
    if not hosts:
        return {}

    def opener(host: str) -> Any:
        return lambda: [LiveSource(host, job, nodes[host])]

    with Job(sources=[(h, opener(h)) for h in hosts], threads=1) as j:
        a = analysis.Analysis(j, config or rules.load_config())
        a.run()
        return {o.id: o for o in a.outcomes}


def outcome_evidence(o: rules.Outcome) -> dict[str, Any]:
    """What an alert keeps of an outcome."""
    d = o.bottleneck() if o.status == "fired" else o.rule_dict()
    d["status"] = o.status
    d.setdefault("title", o.title)
    return d


class Judge:
    """The analyzer's bottleneck rules as the collector's alert service asks for them
    (para.collector.alerts.BottleneckJudge): handed to `para collector serve` by para/cli.py,
    the collector sitting upstream of the analyzer."""

    skip_tables = SKIP_TABLES

    def __init__(self) -> None:
        self._config: dict[str, dict[str, Any]] | None = None

    def rule_ids(self) -> list[str]:
        return rule_ids()

    def judge(
        self, job: dict[str, Any], nodes: dict[str, list[Sample]]
    ) -> dict[str, dict[str, Any]]:
        """Every rule's outcome on the job's window, as an alert keeps it, by rule id."""
        if self._config is None:
            self._config = rules.load_config()
        return {rid: outcome_evidence(o) for rid, o in evaluate(job, nodes, self._config).items()}
