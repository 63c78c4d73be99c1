"""The analysis of a job in the five dimensions of its run, and what limits it.

- system: each node's resources against what the job had (CPUs, memory, storage, network,
  GPUs) - `system`, `heatmap`;
- job: across the nodes: balance, idle nodes, stragglers, phases - `balance`, `phases`;
- application: per executable and process - `applications`;
- function: self and total share per function, whole run and per phase, as a table and a
  flame graph - `functions`;
- instruction: per-instruction sample shares of the hottest functions - `instructions`;
then the bottleneck rules (rules.py) over all of it.  Everything comes from the SQL of
sql/job.sql and sql/analysis.sql over a Job (job.py); the document is plain JSON
(docs/report-json.md, section `job`).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any

import pyarrow as pa

from para.analyzer import instructions, phases, pyfacts, rules
from para.analyzer.job import Job
from para.analyzer.load import sql_file, views
from para.analyzer.summary import callers_lost

MAX_HOTSPOTS = 50
PHASE_HOTSPOTS = 10
HEATMAP_COLUMNS = 600
TIMELINE_POINTS = 3600
FLAME_MIN_SHARE = 0.002  # frames under 0.2 % of the samples are merged into their parent

_QUERIES = {v.name: v.sql for v in views(sql_file("analysis.sql"))}


def q(job: Job, name: str, *params: Any) -> list[tuple[Any, ...]]:
    return job.query(_QUERIES[name], list(params))


def _num(v: Any, nd: int = 3) -> float | None:
    if v is None:
        return None
    f = float(v)
    if not math.isfinite(f):
        return None
    return round(f, nd) + 0.0


def _int(v: Any) -> int | None:
    if v is None:
        return None
    f = float(v)
    return int(round(f)) if math.isfinite(f) else None


def _dicts(job: Job, name: str, *params: Any) -> list[dict[str, Any]]:
    cur = job.con.execute(_QUERIES[name], list(params))
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


def _first(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    return rows[0] if rows else None


def _family_reasons(job: Job) -> dict[str, str]:
    """Why a family is missing, from the nodes' own records (first node that says)."""
    out: dict[str, str] = {}
    for n in job.nodes:
        for fam, st in (n.meta.get("families") or {}).items():
            if st.get("state") != "ok" and fam not in out:
                out[fam] = str(st.get("reason") or st.get("state"))
    # perf stat ran, but the machine counts no hardware events (a VM without a PMU)
    unsupported = sorted({str(n) for (n,) in job.query(
        "SELECT DISTINCT name FROM events WHERE kind = 'counter_unsupported' AND name IN "
        "('cycles', 'instructions')")})  # fmt: skip
    counted = {str(e) for (e,) in job.query("SELECT DISTINCT event FROM ctr")}
    if "counters" not in out and unsupported and not counted & {"cycles", "instructions"}:
        out["counters"] = (f"no hardware counters on this machine ({', '.join(unsupported)}: "
                           "not supported by perf here, e.g. a VM without a PMU)")  # fmt: skip
    elif "counters" not in out and not counted:
        out["counters"] = "no hardware counters were recorded"
    if not any("gpu" in n.tables for n in job.nodes) and "gpu" not in out:
        out["gpu"] = "no GPU was sampled"
    if not any("stacks" in n.tables for n in job.nodes):
        info = job.nodes[0].meta.get("functions") if job.nodes else None
        if isinstance(info, dict) and info.get("error"):
            out["functions"] = str(info["error"])
        elif info:
            out["functions"] = "perf record took no samples of the command"
        else:
            out["functions"] = ("call stacks were not recorded (run `para profile --functions "
                                "-- CMD`)")  # fmt: skip
    return out


def _process_names(job: Job) -> dict[int, dict[int, dict[str, Any]]]:
    """node -> pid -> {name, cmdline} from the process_start events, and the process_exec
    ones that follow (a shell or a pyenv shim that execs the program takes its name)."""
    out: dict[int, dict[int, dict[str, Any]]] = defaultdict(dict)
    for node, pid, name, detail, kind in job.query(
        "SELECT node, pid, name, detail, kind FROM events WHERE kind IN "
        "('process_start', 'process_exec') AND pid IS NOT NULL ORDER BY node, t, kind DESC"
    ):
        if pid in out[node] and kind == "process_start":
            continue
        try:
            d = json.loads(detail) if detail else {}
        except ValueError:
            d = {}
        cmd = d.get("cmdline") if isinstance(d, dict) else None
        out[node][int(pid)] = {
            "name": str(name or ""),
            "cmdline": [str(a) for a in cmd] if isinstance(cmd, list) else [],
        }
    return out


def _memory_peaks(job: Job) -> dict[int, tuple[float, str]]:
    """Each node's peak memory bandwidth as its recording found it (host facts)."""
    out = {}
    for i, n in enumerate(job.nodes):
        peak = (n.meta.get("host") or {}).get("memory_peak") or {}
        if peak.get("bytes_per_s"):
            out[i] = (float(peak["bytes_per_s"]), str(peak.get("how") or "DMI"))
    return out


def _kernel_stacks(job: Job) -> bool | None:
    """Whether the recorded call stacks reach into the kernel: the count the recorder kept
    (samples whose leaf was a kernel function), else the leaves of the instruction table;
    None when neither says."""
    counts = [((n.meta.get("functions") or {}).get("kernel_samples")) for n in job.nodes
              if (n.meta.get("functions") or {}).get("samples")]  # fmt: skip
    if counts and all(c is not None for c in counts):
        return sum(int(c or 0) for c in counts) > 0
    if job.has("instr"):
        n = job.one("SELECT count(*) FROM instr WHERE dso LIKE '[kernel%' OR dso LIKE '%vmlinux%'")
        return bool(n)
    return None


def _downsample(xs: list[Any], size: int) -> list[Any]:
    if size <= 1:
        return xs
    out = []
    for i in range(0, len(xs), size):
        chunk = [x for x in xs[i : i + size] if x is not None]
        out.append(sum(chunk) / len(chunk) if chunk else None)
    return out


def _per_wall_time(
    job: Job, totals: dict[str, Any], nodes: list[dict[str, Any]], step: float
) -> float:
    """The job's duration, and its cores (and each node's) per second of it: the time its
    commands ran where every node is a `para profile` and that time is shorter than its
    steps (its elapsed time), else its steps.
    The grid's last step of a profile holds what the command used after the last look, but
    the command ended within it: counted as a whole step, a 2.2 s command read 2.5 s at
    0.78 cores where the kernel counted 1.95 CPU-s (0.89 cores)."""
    grid_s = (totals["steps"] or 0) * step
    walls: dict[int, float] = {}
    spans = []
    for i, node in enumerate(job.nodes):
        m = node.meta
        start, elapsed = m.get("start"), m.get("elapsed_s")
        if m.get("source") != "para profile" or not (
            isinstance(start, (int, float)) and isinstance(elapsed, (int, float)) and elapsed > 0
        ):
            return grid_s
        walls[i] = float(elapsed)
        spans.append((float(start), float(start) + float(elapsed)))
    wall = max(e for _, e in spans) - min(s for s, _ in spans)
    # only ever shorter: a grid without that last step (a file without the command's end)
    # is left as its steps say, as the live rules judge a window
    if wall <= 0 or wall >= grid_s:
        return grid_s
    # (the means of rates over the steps: what the steps hold, per second of the run)
    for key in ("cores", "read_bps", "write_bps", "io_bps", "nw_bps"):
        if totals.get(key) is not None:
            totals[key] = totals[key] * grid_s / wall
    for n in nodes:
        w = walls.get(n["node"])
        if w and n.get("steps") and w < n["steps"] * step:
            for key in ("cores", "io_bps", "nw_bps"):
                if n.get(key) is not None:
                    n[key] = n[key] * n["steps"] * step / w
    return wall


class Analysis:
    def __init__(self, job: Job, config: dict[str, dict[str, Any]] | None = None):
        self.job = job
        self.cfg = config or rules.load_config()
        self.step_s = job.step_ms / 1000.0
        self.doc: dict[str, Any] = {}

    def run(self) -> dict[str, Any]:
        job, step = self.job, self.step_s
        cfg = self.cfg
        totals = _dicts(job, "totals", cfg["memory_pressure"]["max_swap_pages_per_s"])[0]
        nodes = _dicts(job, "nodes")
        ends = dict(q(job, "last_busy"))
        for n in nodes:
            n["end_work"] = ends.get(n["node"])
        duration_s = _per_wall_time(job, totals, nodes, step)
        series_rows = q(job, "series")
        cols = ["sec", "live", "work_cores", "allowed", "busy", "iowait", "io_bps", "read_bps",
                "write_bps", "nw_bps", "gpu_util", "rss", "mem_used", "dstate", "majflt_ps",
                "swap_pps", "live_nodes", "active_cores"]  # fmt: skip
        series = {c: [r[i] for r in series_rows] for i, c in enumerate(cols)}
        self.phases = phases.detect(job)
        phase_rows = self._phase_stats()
        phases.name_phases(self.phases, phase_rows)
        phase_docs = [p.as_dict(step) for p in self.phases]
        self.names = _process_names(job)
        stack_total = int(q(job, "stack_total")[0][0]) if job.has("stacks") else 0
        facts = rules.Facts(
            step_s=step,
            duration_s=duration_s,
            steps=int(totals["steps"] or 0),
            samples=max((n["steps"] or 0) for n in nodes) + 1 if nodes else 0,
            nodes=nodes,
            totals=totals,
            series=series,
            phases=phase_docs,
            cores=[(a, b, c) for a, b, c in q(job, "cores")] if job.has("cores") else [],
            siblings=_dicts(job, "siblings") if job.has("procs") else [],
            gpus=_dicts(job, "gpus") if job.has("gpu") else [],
            counters={r["event"]: r for r in _dicts(job, "counters")} if job.has("ctr") else {},
            regression=_first(_dicts(job, "regression")),
            catastrophe=_first(_dicts(job, "catastrophe")),
            ib=_first(_dicts(job, "ib", *[cfg["network_bound"]["max_link_share"]] * 3))
            if job.has("ib")
            else None,
            stack_samples=stack_total,
            share=lambda pattern: q(job, "stack_share", pattern)[0][0],
            counter_rate=lambda pattern: [(a, b) for a, b in q(job, "counter_nodes", pattern)],
            unmeasured=_family_reasons(job),
            processes={n: {p: d["name"] for p, d in m.items()} for n, m in self.names.items()},
            has_meta_counters=job.has("fsmeta"),
            meta_ops_per_node=totals.get("meta_ops_per_node"),
            ranks=_dicts(job, "ranks", rules.COMM_PATTERN) if job.has("procs") else [],
            python=pyfacts.python_facts(job, pyfacts.perf_frequency(job)),
            kernel_stacks=_kernel_stacks(job) if stack_total else None,
            counter_events=lambda pattern: (
                [tuple(r) for r in q(job, "counter_events", pattern)] if job.has("ctr") else []
            ),
            memory_peak=_memory_peaks(job),
        )
        self.facts = facts
        outcomes = rules.evaluate(facts, cfg)
        fired = rules.order(outcomes)
        hot, hot_samples = self._hotspots(-(2**62), 2**62, MAX_HOTSPOTS)
        cpu_s = self._cpu_s(totals)
        apps, seen_s = self._applications(cpu_s)
        self.doc = {
            "nodes_total": len(job.nodes),
            "files": sum(len(n.files) for n in job.nodes),
            "t0": job.t0_ms / 1000,
            "step_s": step,
            "duration_s": _num(facts.duration_s, 3),
            "samples": facts.samples,
            "allowed_cpus": sum(n.allowed for n in job.nodes),
            "identity": self._identity(),
            "summary": self._summary(totals, facts, cpu_s, seen_s),
            "system": self._system(nodes),
            "balance": self._balance(nodes, outcomes),
            "phases": self._phase_docs(phase_docs, phase_rows),
            "applications": apps,
            "ranks": self._ranks(facts),
            "functions": self._functions(hot, hot_samples),
            "instructions": instructions.annotate(job),
            "timeline": self._timeline(series),
            "heatmap": self._heatmap(),
            "roofline": self._roofline(facts),
            "rules": [o.rule_dict() for o in outcomes],
            "unmeasured": dict(sorted(facts.unmeasured.items())),
        }
        self.outcomes = outcomes
        self.bottlenecks = [o.bottleneck() for o in fired]
        self.hotspots = hot
        return self.doc

    # -- parts -------------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        meta = self.job.nodes[0].meta
        j = meta.get("job") or {}
        return {
            "scheduler": j.get("scheduler"),
            "job_id": j.get("job_id"),
            "name": j.get("name"),
            "user": j.get("user"),
            "command": meta.get("command"),
            "hosts": [n.label for n in self.job.nodes],
        }

    def _summary(
        self, t: dict[str, Any], f: rules.Facts, cpu_s: float | None, seen_s: float | None
    ) -> dict[str, Any]:
        allowed = t.get("allowed") or 0
        unseen = None if cpu_s is None or seen_s is None else max(0.0, cpu_s - seen_s)
        return {
            "cores_mean": _num(t.get("cores")),
            "cpu_s": _num(cpu_s, 2),
            "unseen_cpu_s": _num(unseen, 2),
            "cores_peak": _num(t.get("peak_cores")),
            "cpu_util_pct": _num(100 * t["cores"] / allowed, 1)
            if t.get("cores") is not None and allowed
            else None,
            "peak_rss_bytes": _int(t.get("peak_rss")),
            "peak_mem_bytes": _int(t.get("peak_mem")),
            "read_bps": _int(t.get("read_bps")),
            "write_bps": _int(t.get("write_bps")),
            "net_bps": _int(t.get("nw_bps")),
            "gpu_util_pct": _num(t.get("gpu_util"), 1),
            "ipc": self._ipc(f),
            "stack_samples": f.stack_samples,
        }

    def _cpu_s(self, t: dict[str, Any]) -> float | None:
        """The job's CPU time: what its steps hold (the processes as sampled, and what the
        agent's account or the command's rusage adds: before the first and after the last
        look, children too short to be seen)."""
        steps = t.get("core_steps")
        return None if steps is None else steps * self.step_s

    def _ipc(self, f: rules.Facts) -> float | None:
        ins = sum(v["total"] or 0 for e, v in f.counters.items() if e == "instructions")
        cyc = sum(v["total"] or 0 for e, v in f.counters.items() if e == "cycles")
        return _num(ins / cyc, 3) if ins and cyc else None

    def _system(self, nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        step = self.step_s
        for n in nodes:
            allowed = n["allowed"] or 1
            out.append({
                "node": n["label"],
                "host": n["host"],
                "cpus": n["allowed"],
                "memory_bytes": _int(n["mem_total"] or n["memory"]),
                "gpus": _int(n["gpus"]) or 0,
                "cores_mean": _num(n["cores"]),
                "cores_peak": _num(n["peak_cores"]),
                "cpu_util_pct": _num(100 * n["cores"] / allowed, 1) if n["cores"] is not None
                else None,
                "node_busy_pct": _num(100 * n["busy"] / allowed, 1) if n["busy"] is not None
                else None,
                "iowait_pct": _num(100 * n["iowait"] / allowed, 1) if n["iowait"] is not None
                else None,
                "peak_rss_bytes": _int(n["peak_rss"]),
                "peak_mem_bytes": _int(n["peak_mem"]),
                "io_bps": _int(n["io_bps"]),
                "net_bps": _int(n["nw_bps"]),
                "gpu_util_pct": _num(n["gpu_util"], 1),
                "start_s": _num((n["first_sec"] or 0) * step, 3),
                "end_s": _num((n["end_sec"] or 0) * step, 3),
                "end_work_s": _num(n["end_work"] * step, 3) if n.get("end_work") else None,
            })  # fmt: skip
        return out

    def _balance(self, nodes: list[dict[str, Any]], outcomes: list[rules.Outcome]
                 ) -> dict[str, Any]:  # fmt: skip
        work = [n["cores"] for n in nodes if n["cores"] is not None]
        imb = None
        if len(work) >= 2 and max(work) > 0:
            busy = [w for w in work if w > 0.01]
            if len(busy) >= 2:
                imb = _num(100 * (max(busy) - sum(busy) / len(busy)) / max(busy), 1)
        by = {o.id: o for o in outcomes}
        idle = by["idle_nodes"].nodes if by.get("idle_nodes") and by["idle_nodes"].status == \
            "fired" else []  # fmt: skip
        # stragglers: the nodes that worked more than 1.1 x the median working node (the
        # others wait for them at every synchronisation)
        working = sorted(
            (n["cores"], n["label"])
            for n in nodes
            if n["cores"] is not None and n["label"] not in idle and n["cores"] > 0
        )
        strag = []
        if len(working) >= 3:
            median = working[len(working) // 2][0]
            strag = [label for c, label in working if c > 1.1 * median]
        return {"imbalance_pct": imb, "idle_nodes": idle, "stragglers": strag}

    def _phase_stats(self) -> dict[int, dict[str, Any]]:
        if not self.phases:
            return {}
        spans = pa.table({
            "phase": [p.index for p in self.phases],
            "start_sec": [p.start_sec for p in self.phases],
            "end_sec": [p.end_sec for p in self.phases],
        })  # fmt: skip
        self.job.con.register("phase_span", spans)
        self._spans = spans
        out = {}
        for r in _dicts(self.job, "phase_stats"):
            out[r["phase"]] = {k: float(v) if v is not None else None for k, v in r.items()}
            for k in ("cores", "allowed", "read_bps", "write_bps", "nw_bps"):
                out[r["phase"]][k] = out[r["phase"]][k] or 0.0
        return out

    def _phase_docs(
        self, docs: list[dict[str, Any]], rows: dict[int, dict[str, Any]]
    ) -> list[dict[str, Any]]:
        out = []
        for p, d in zip(self.phases, docs, strict=True):
            r = rows.get(p.index, {})
            allowed = r.get("allowed") or 0
            hot, n = self._hotspots(p.start_sec, p.end_sec, PHASE_HOTSPOTS) \
                if self.job.has("stacks") else ([], 0)  # fmt: skip
            out.append({
                **d,
                "cores": _num(r.get("cores")),
                "cpu_util_pct": _num(100 * r["cores"] / allowed, 1) if allowed and
                r.get("cores") is not None else None,
                "read_bps": _int(r.get("read_bps")),
                "write_bps": _int(r.get("write_bps")),
                "net_bps": _int(r.get("nw_bps")),
                "gpu_util_pct": _num(r.get("gpu_util"), 1),
                "peak_rss_bytes": _int(r.get("peak_rss")),
                "stack_samples": n,
                "hotspots": hot,
            })  # fmt: skip
        return out

    def _applications(self, job_cpu_s: float | None) -> tuple[list[dict[str, Any]], float | None]:
        """Per executable, its processes' CPU as last sampled; each share is of the job's CPU
        time (what no process was seen using, after its last look or in a child too short
        to be seen, is the job's and no executable's).  And the CPU of every process seen."""
        if not self.job.has("procs"):
            return [], None
        total = 0.0
        apps: dict[str, dict[str, Any]] = {}
        for node, pid, cpu_s, rss, rb, wb in self.job.query(
            "SELECT node, pid, cpu_s, peak_rss, read_bytes, write_bytes FROM procs"
        ):
            info = self.names.get(node, {}).get(int(pid), {})
            cmd = info.get("cmdline") or []
            exe = (cmd[0].rsplit("/", 1)[-1] if cmd else "") or info.get("name") or f"pid {pid}"
            a = apps.setdefault(exe, {"executable": exe, "processes": 0, "nodes": set(),
                                      "cpu_s": 0.0, "peak_rss_bytes": 0, "read_bytes": 0,
                                      "write_bytes": 0})  # fmt: skip
            a["processes"] += 1
            a["nodes"].add(node)
            a["cpu_s"] += cpu_s or 0.0
            a["peak_rss_bytes"] = max(a["peak_rss_bytes"], int(rss or 0))
            a["read_bytes"] += int(rb or 0)
            a["write_bytes"] += int(wb or 0)
            total += cpu_s or 0.0
        out = []
        seen = total
        total = max(total, job_cpu_s or 0.0)
        for a in apps.values():
            a["nodes"] = len(a["nodes"])
            a["cpu_pct"] = _num(100 * a["cpu_s"] / total, 1) if total else None
            a["cpu_s"] = _num(a["cpu_s"], 2)
            out.append(a)
        out.sort(key=lambda a: (-(a["cpu_s"] or 0), a["executable"]))
        return out[:50], seen

    def _ranks(self, facts: rules.Facts) -> list[dict[str, Any]]:
        """The MPI ranks, side by side: CPU time and the share of their call-stack samples
        in communication libraries (their MPI time: a rank waiting in MPI spins there)."""
        if len(facts.ranks) < 2:
            return []
        out = []
        for r in facts.ranks:
            node = r["node"]
            samples = int(r["samples"] or 0)
            out.append({
                "rank": int(r["rank"]),
                "node": self.job.nodes[node].label if node < len(self.job.nodes) else None,
                "nodes": int(r["nodes"]), "processes": int(r["procs"]),
                "cpu_s": _num(r["cpu_s"], 2), "stack_samples": samples,
                "mpi_pct": _num(100 * r["comm"] / samples, 1)
                if samples >= rules.MIN_RANK_SAMPLES else None,
            })  # fmt: skip
        return out[:1024]

    def _hotspots(self, lo: int, hi: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        if not self.job.has("stacks"):
            return [], 0
        rows = q(self.job, "hotspots", lo, hi, limit)
        total = self.job.one(
            "SELECT coalesce(sum(samples), 0) FROM stack_sec WHERE sec >= ? AND sec < ?",
            [lo, hi],
        )
        total = int(total or 0)
        if not total:
            return [], 0
        return [
            {
                "function": str(fn),
                "self_pct": _num(100 * sn / total, 2),
                "total_pct": _num(100 * tn / total, 2),
                "self_samples": int(sn),
                "total_samples": int(tn),
            }
            for fn, sn, tn in rows
        ], total

    def _functions(self, hot: list[dict[str, Any]], samples: int) -> dict[str, Any]:
        return {
            "samples": samples,
            "hotspots": hot,
            "flamegraph": self._flamegraph() if samples else None,
            # Python threads off-CPU (py-spy saw them, perf did not): issue 12
            "waiting": pyfacts.waiting(self.job),
            "sources": self._sources(),
            "shares": self._shares() if samples else None,
            "callers_lost": self._callers_lost() if samples else None,
        }

    def _callers_lost(self) -> str | None:
        return callers_lost([n.meta.get("functions") for n in self.job.nodes])

    def _shares(self) -> dict[str, float]:
        """Shares of the CPU samples in communication, I/O and the Python interpreter
        (issue 13: `para jobs` shows them)."""
        f = self.facts
        py = f.python
        total = f.stack_samples or 1
        return {
            "comm_pct": round(100.0 * (f.share(rules.COMM_PATTERN) or 0.0), 2),
            "io_pct": round(100.0 * (f.share(rules.IO_PATTERN) or 0.0), 2),
            "interpreter_pct": round(100.0 * py["interpreter"] / total, 2) if py else 0.0,
        }

    def _sources(self) -> dict[str, Any]:
        """Who named the frames (perf, py-spy), from the files' own records."""
        out: dict[str, Any] = {"python": [], "unreadable": []}
        for n in self.job.nodes:
            info = n.meta.get("functions")
            py = info.get("python") if isinstance(info, dict) else None
            if isinstance(py, dict):
                out["python"].append({
                    "node": n.label, "tool": py.get("tool"), "version": py.get("version"),
                    "rate_hz": py.get("rate_hz"), "processes": py.get("processes"),
                    "stitched_samples": py.get("stitched_samples"),
                    "perf_only_samples": py.get("perf_only_samples"),
                    "wait_samples": py.get("wait_samples"),
                })  # fmt: skip
                out["unreadable"] += [{"node": n.label, **u} for u in py.get("unreadable") or []]
        return out

    def _flamegraph(self) -> dict[str, Any]:
        """The stacks as a tree (root: all samples), small frames folded into '(other)'."""
        root: dict[str, Any] = {"name": "all", "value": 0, "children": {}}
        for stack, n in q(self.job, "stacks_all"):
            node = root
            node["value"] += int(n)
            for frame in str(stack).split(";") if stack else []:
                node = node["children"].setdefault(frame, {"name": frame, "value": 0,
                                                           "children": {}})  # fmt: skip
                node["value"] += int(n)
        floor = root["value"] * FLAME_MIN_SHARE

        def prune(node: dict[str, Any]) -> dict[str, Any]:
            kids = sorted(node["children"].values(), key=lambda k: (-k["value"], k["name"]))
            keep = [prune(k) for k in kids if k["value"] >= floor]
            small = sum(k["value"] for k in kids if k["value"] < floor)
            if small:
                keep.append({"name": "(other)", "value": small, "children": []})
            return {"name": node["name"], "value": node["value"], "children": keep}

        return prune(root)

    def _timeline(self, s: dict[str, list[Any]]) -> dict[str, Any]:
        size = max(1, math.ceil(len(s["sec"]) / TIMELINE_POINTS))
        secs = s["sec"][::size]
        out = {
            "t_s": [round(x * self.step_s, 3) + 0.0 for x in secs],
            "step_s": self.step_s * size,
        }
        keys = {"cores": ("work_cores", 3), "allowed_cpus": ("allowed", 0),
                "iowait_cores": ("iowait", 3), "read_bps": ("read_bps", None),
                "write_bps": ("write_bps", None), "net_bps": ("nw_bps", None),
                "gpu_util_pct": ("gpu_util", 1), "rss_bytes": ("rss", None),
                "mem_used_bytes": ("mem_used", None)}  # fmt: skip
        for key, (col, nd) in keys.items():
            xs = _downsample(s[col], size)
            out[key] = [_int(x) if nd is None else _num(x, nd) for x in xs]
        return out

    def _heatmap(self) -> dict[str, Any] | None:
        n_steps = self.job.one("SELECT max(sec) + 1 FROM node_sec")
        if not n_steps:
            return None
        bucket = max(1, math.ceil(n_steps / HEATMAP_COLUMNS))
        cols = math.ceil(n_steps / bucket)
        rows = q(self.job, "heatmap", bucket, cols)
        metrics = ["cpu_pct", "mem_pct", "io_bps", "net_bps", "gpu_pct"]
        labels = [n.label for n in self.job.nodes]
        has_gpu = any(v is not None for r in rows for v in r[5])
        out_rows = []
        for r in rows:
            row: dict[str, Any] = {"node": labels[r[0]]}
            for i, m in enumerate(metrics, start=1):
                if m == "gpu_pct" and not has_gpu:
                    continue
                vals = r[i]
                if m in ("io_bps", "net_bps"):
                    vals = [None if v is None else int(v) for v in vals]
                row[m] = vals
            out_rows.append(row)
        return {
            "bucket_s": bucket * self.step_s,
            "t_s": [round(i * bucket * self.step_s, 3) for i in range(cols)],
            "rows": out_rows,
        }

    def _roofline(self, f: rules.Facts) -> dict[str, Any]:
        """Arithmetic intensity (FLOP per byte of memory traffic) against FLOP/s, per node,
        with the machine's ceilings when the rules file gives them."""
        if not f.counters or "counters" in f.unmeasured:
            return {"points": [], "reason": f.unmeasured.get("counters",
                                                            "no hardware counters")}  # fmt: skip
        # FLOPs per count: Intel counts instructions by width; AMD's fp_ret_sse_avx_ops.all
        # counts the FLOPs themselves
        weights = {r"fp_arith_inst_retired\.scalar": 1, r"128b_packed_double": 2,
                   r"256b_packed_double": 4, r"512b_packed_double": 8,
                   r"128b_packed_single": 4, r"256b_packed_single": 8,
                   r"512b_packed_single": 16, r"fp_ret_sse_avx_ops\.all": 1}  # fmt: skip
        flops: dict[int, float] = defaultdict(float)
        seen = False
        for pattern, w in weights.items():
            for node, per_s in q(self.job, "counter_nodes", pattern):
                if per_s:
                    flops[node] += w * per_s
                    seen = True
        traffic = rules.memory_traffic(
            [tuple(r) for r in q(self.job, "counter_events", rules.MEM_CAS_PATTERN)]
        )
        mem = {node: bw for node, (bw, _) in traffic.items()}
        if not seen or not any(mem.values()):
            return {"points": [], "reason": "needs floating-point (fp_arith_inst_retired.*) "
                    "and memory-controller (uncore_imc cas_count_*) events"}  # fmt: skip
        labels = [n.label for n in self.job.nodes]
        pts = []
        for node, fl in sorted(flops.items()):
            bw = mem.get(node) or 0.0
            if bw > 0:
                pts.append({"node": labels[node], "flops_per_s": _num(fl, 0),
                            "bytes_per_s": _num(bw, 0),
                            "intensity": _num(fl / bw, 4)})  # fmt: skip
        c = self.cfg.get("memory_bandwidth_bound", {})
        return {
            "points": pts,
            "peak_bytes_per_s": c.get("peak_bytes_per_s")
            or max((p for p, _ in f.memory_peak.values()), default=None),
            "peak_flops_per_s": None,
            "reason": None if pts else "no node had both kinds of events",
        }


def analyse(job: Job, config: dict[str, dict[str, Any]] | None = None) -> Analysis:
    a = Analysis(job, config)
    a.run()
    return a
