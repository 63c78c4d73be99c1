"""`para report`: the first report people read about one or more recorded runs.

Each file becomes one document (the summary, per-second series, the job's processes, the
hottest functions and what could not be measured, with the reason) that is rendered three
ways: tables in the terminal, JSON (schema in docs/report-json.md) or one self-contained HTML
page that works offline.  The document is built once, so the three always agree.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import sys
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from para.analyzer.load import Run
from para.analyzer.summary import (
    callers_lost,
    family_reason,
    fmt_pct,
    fmt_rate,
    fmt_size,
    printable,
    render,
    summarize,
)
from para.errors import ParaError

if TYPE_CHECKING:
    from para.analyzer.progress import Progress

REPORT_VERSION = 1
MAX_PROCESSES = 100
MAX_HOTSPOTS = 50
# A rate over a window much shorter than the interval is noise: the baseline sample is taken
# a few milliseconds before the first regular one, and 10 ms CPU ticks over 6 ms read as 0 or
# 100 %.  Such windows are left out of the series.
MIN_WINDOW = 0.25
# Which metric family each timeline group comes from (the keys of `unmeasured`).
FAMILY = {
    "node_cpu": "cpu",
    "job": "process",
    "memory": "memory",
    "disk": "disk",
    "net": "net",
    "gpu": "gpu",
    "counters": "counters",
}

Series = dict[str, Any]


# -- building the document ----------------------------------------------------------------


def _num(v: Any, nd: int = 3) -> float | None:
    if v is None:
        return None
    f = float(v)
    if not math.isfinite(f):
        return None
    return round(f, nd) + 0.0  # + 0.0: no "-0.0" in the output


def _int(v: Any) -> int | None:
    if v is None:
        return None
    f = float(v)
    return int(round(f)) if math.isfinite(f) else None


def _t0_ms(run: Run) -> int:
    start = run.meta.get("start")
    if start is not None:
        return int(round(float(start) * 1000))
    firsts = [
        run.one(f"SELECT min(epoch_ms(t)) FROM {t}")
        for t in ("node", "memory", "proc", "disk", "net", "gpu", "counters")
        if run.has(t)
    ]
    return min((int(f) for f in firsts if f is not None), default=0)


def _columns(
    run: Run, sql: str, params: list[Any], keys: list[tuple[str, int | None]], t0_ms: int
) -> Series | None:
    """Run `sql` (first column epoch ms, then one per key) into {"t_s": [...], key: [...]}.
    A key's digits None means whole numbers (bytes)."""
    rows = run.query(sql, params)
    if not rows:
        return None
    out: Series = {"t_s": [round((r[0] - t0_ms) / 1000, 3) + 0.0 for r in rows]}
    for i, (key, nd) in enumerate(keys, start=1):
        out[key] = [_int(r[i]) if nd is None else _num(r[i], nd) for r in rows]
    return out


def _whole_disks(run: Run) -> list[str] | None:
    whole = ((run.meta.get("family_facts") or {}).get("disk") or {}).get("whole_disks")
    return [str(d) for d in whole] if whole else None


def _timeline(run: Run, t0_ms: int) -> dict[str, Any]:
    interval = float(run.meta.get("interval") or 1.0)
    min_s = MIN_WINDOW * interval
    tl: dict[str, Any] = dict.fromkeys(FAMILY)
    if run.has("node_cpu"):
        tl["node_cpu"] = _columns(
            run,
            "SELECT epoch_ms(t), busy_pct, user_pct, nice_pct, system_pct, irq_pct, steal_pct, "
            "iowait_pct FROM node_cpu WHERE dt >= ? ORDER BY t",
            [min_s],
            [(k, 2) for k in ("busy_pct", "user_pct", "nice_pct", "system_pct", "irq_pct",
                              "steal_pct", "iowait_pct")],
            t0_ms,
        )  # fmt: skip
    if run.has("proc_rates"):
        # Memory from every sample (a process's first sample has no rate yet), CPU from rates.
        tl["job"] = _columns(
            run,
            "WITH r AS (SELECT t, sum(user_cores + system_cores) AS c, sum(user_cores) AS u, "
            "  sum(system_cores) AS s, sum(read_bps) AS rb, sum(write_bps) AS wb "
            "  FROM proc_rates WHERE dt >= ? GROUP BY t), "
            "m AS (SELECT t, sum(rss_bytes) AS rss, count(*) AS n, sum(threads) AS th "
            "  FROM proc GROUP BY t) "
            "SELECT epoch_ms(m.t), r.c, r.u, r.s, m.rss, r.rb, r.wb, m.n, m.th "
            "FROM m LEFT JOIN r USING (t) ORDER BY m.t",
            [min_s],
            [("cores", 3), ("user_cores", 3), ("system_cores", 3), ("rss_bytes", None),
             ("read_bps", None), ("write_bps", None), ("processes", None), ("threads", None)],
            t0_ms,
        )  # fmt: skip
    if run.has("node_memory"):
        tl["memory"] = _columns(
            run,
            "SELECT epoch_ms(t), mem_used, mem_cache, mem_total, swap_used FROM node_memory "
            "ORDER BY t",
            [],
            [("used_bytes", None), ("cache_bytes", None), ("total_bytes", None),
             ("swap_used_bytes", None)],
            t0_ms,
        )  # fmt: skip
    if run.has("disk_rates"):
        tl["disk"] = _disk(run, t0_ms, min_s)
    if run.has("net_rates"):
        tl["net"] = _columns(
            run,
            "SELECT epoch_ms(t), sum(rx_bps), sum(tx_bps), sum(packets_per_s) FROM net_rates "
            "WHERE iface <> 'lo' AND dt_ms >= ? GROUP BY t ORDER BY t",
            [min_s * 1000],
            [("rx_bps", None), ("tx_bps", None), ("packets_per_s", 1)],
            t0_ms,
        )
    if run.has("gpu_series"):
        gpus = []
        for (g,) in run.query("SELECT DISTINCT gpu FROM gpu_series ORDER BY gpu"):
            s = _columns(
                run,
                "SELECT epoch_ms(t), util_gpu, util_mem, mem_used, mem_total, power_w, temp_c "
                "FROM gpu_series WHERE gpu = ? ORDER BY t",
                [g],
                [("util_pct", 1), ("mem_util_pct", 1), ("mem_used_bytes", None),
                 ("mem_total_bytes", None), ("power_w", 1), ("temp_c", 1)],
                t0_ms,
            )  # fmt: skip
            if s:
                gpus.append({"gpu": str(g), **s})
        tl["gpu"] = gpus or None
    if run.has("counter_rates"):
        tl["counters"] = _counters(run, t0_ms)
    return tl


def _disk(run: Run, t0_ms: int, min_s: float) -> Series | None:
    whole = _whole_disks(run)
    where = "dt_ms >= ? AND (? IS NULL OR list_contains(?, device))"
    params: list[Any] = [min_s * 1000, whole, whole]
    s = _columns(
        run,
        f"SELECT epoch_ms(t), sum(read_bps), sum(write_bps), sum(iops) FROM disk_rates "
        f"WHERE {where} GROUP BY t ORDER BY t",
        params,
        [("read_bps", None), ("write_bps", None), ("iops", 1)],
        t0_ms,
    )
    if s is None:
        return None
    devices = [
        d
        for (d,) in run.query(
            f"SELECT device FROM disk_rates WHERE {where} GROUP BY device "
            "HAVING max(util_pct) > 0 ORDER BY avg(util_pct) DESC, device LIMIT 3",
            params,
        )
    ]
    index = {t: i for i, t in enumerate(s["t_s"])}
    s["devices"] = []
    for d in devices:
        util: list[float | None] = [None] * len(index)
        wait: list[float | None] = [None] * len(index)
        for t, u, a in run.query(
            "SELECT epoch_ms(t), util_pct, await_ms FROM disk_rates "
            "WHERE device = ? AND dt_ms >= ? ORDER BY t",
            [d, min_s * 1000],
        ):
            i = index.get(round((t - t0_ms) / 1000, 3) + 0.0)
            if i is not None:
                util[i], wait[i] = _num(u, 1), _num(a, 2)
        s["devices"].append({"device": str(d), "util_pct": util, "await_ms": wait})
    return s


def _counters(run: Run, t0_ms: int) -> Series | None:
    times = [r[0] for r in run.query("SELECT DISTINCT epoch_ms(t) FROM counters ORDER BY 1")]
    if not times:
        return None
    index = {t: i for i, t in enumerate(times)}
    ipc: list[float | None] = [None] * len(times)
    for t, v in run.query("SELECT epoch_ms(t), ipc FROM ipc ORDER BY t"):
        ipc[index[t]] = _num(v, 3)
    events = []
    for (e,) in run.query("SELECT DISTINCT event FROM counters ORDER BY event"):
        per_s: list[float | None] = [None] * len(times)
        running: list[float | None] = [None] * len(times)
        for t, v, r in run.query(
            "SELECT epoch_ms(t), per_s, running_pct FROM counter_rates WHERE event = ? ORDER BY t",
            [e],
        ):
            per_s[index[t]], running[index[t]] = _num(v, 1), _num(r, 1)
        events.append({"event": str(e), "per_s": per_s, "running_pct": running})
    return {
        "t_s": [round((t - t0_ms) / 1000, 3) + 0.0 for t in times],
        "ipc": ipc,
        "events": events,
    }


def _stat(xs: list[Any] | None, nd: int | None = 1) -> dict[str, Any] | None:
    vals = [x for x in xs or [] if x is not None]
    if not vals:
        return None
    mean = sum(vals) / len(vals)
    if nd is None:
        return {"mean": _int(mean), "peak": _int(max(vals))}
    return {"mean": _num(mean, nd), "peak": _num(max(vals), nd)}


def _last(xs: list[Any] | None) -> Any:
    vals = [x for x in xs or [] if x is not None]
    return vals[-1] if vals else None


def _resources(tl: dict[str, Any], allowed: int) -> dict[str, Any]:
    """Mean and peak of the per-second values of each series."""
    res: dict[str, Any] = dict.fromkeys(FAMILY)
    if c := tl["node_cpu"]:
        res["node_cpu"] = {
            k: _stat(c[k]) for k in ("busy_pct", "user_pct", "system_pct", "iowait_pct",
                                     "steal_pct")
        }  # fmt: skip
    if j := tl["job"]:
        res["job"] = {
            "cores": _stat(j["cores"], 3),
            "rss_bytes": _stat(j["rss_bytes"], None),
            "allowed_cpus": allowed,
        }
    if m := tl["memory"]:
        res["memory"] = {
            "used_bytes": _stat(m["used_bytes"], None),
            "total_bytes": _last(m["total_bytes"]),
            "swap_used_bytes": _stat(m["swap_used_bytes"], None),
        }
    if d := tl["disk"]:
        busiest = d["devices"][0] if d["devices"] else None
        res["disk"] = {
            "read_bps": _stat(d["read_bps"], None),
            "write_bps": _stat(d["write_bps"], None),
            "busiest": busiest
            and {
                "device": busiest["device"],
                "util_pct": _stat(busiest["util_pct"]),
                "await_ms": _stat(busiest["await_ms"], 2),
            },
        }
    if n := tl["net"]:
        res["net"] = {"rx_bps": _stat(n["rx_bps"], None), "tx_bps": _stat(n["tx_bps"], None)}
    if g := tl["gpu"]:
        res["gpu"] = [
            {
                "gpu": x["gpu"],
                "util_pct": _stat(x["util_pct"]),
                "mem_used_bytes": _stat(x["mem_used_bytes"], None),
                "mem_total_bytes": _last(x["mem_total_bytes"]),
                "power_w": _stat(x["power_w"]),
            }
            for x in g
        ]
    if k := tl["counters"]:
        res["counters"] = {
            "ipc": _stat(k["ipc"], 3),
            "events": [{"event": e["event"], "per_s": _stat(e["per_s"])} for e in k["events"]],
        }
    return res


def _processes(run: Run, t0_ms: int) -> tuple[list[dict[str, Any]], int]:
    ticks = float(run.meta.get("host", {}).get("clock_ticks") or 100)
    min_s = MIN_WINDOW * float(run.meta.get("interval") or 1.0)
    starts: dict[int, tuple[int, str, list[str], int | None]] = {}
    ends: dict[int, int] = {}
    if run.has("events"):
        for t, kind, pid, name, detail in run.query(
            "SELECT epoch_ms(t), kind, pid, name, detail FROM events "
            "WHERE kind IN ('process_start', 'process_end', 'process_exec') AND pid IS NOT NULL "
            "ORDER BY t, kind, pid"
        ):
            if kind == "process_end":
                ends.setdefault(int(pid), int(t))
                continue
            try:
                d = json.loads(detail) if detail else {}
            except ValueError:
                d = {}
            d = d if isinstance(d, dict) else {}
            raw = d.get("cmdline")
            cmd = [str(a) for a in raw] if isinstance(raw, list) else []
            if kind == "process_exec":
                # it ran another program: the name and command line follow, the start stays
                if int(pid) in starts:
                    st0 = starts[int(pid)]
                    starts[int(pid)] = (st0[0], str(name or ""), cmd or st0[2], st0[3])
                continue
            ppid = d.get("ppid")
            starts.setdefault(
                int(pid), (int(t), str(name or ""), cmd, ppid if isinstance(ppid, int) else None)
            )
    stats: dict[int, tuple[Any, ...]] = {}
    if run.has("proc"):
        for agg in run.query(
            "SELECT pid, min(epoch_ms(t)), arg_min(ppid, t), max(utime), max(stime), "
            "max(rss_bytes), max(read_bytes), max(write_bytes), max(threads), count(*) "
            "FROM proc GROUP BY pid"
        ):
            stats[int(agg[0])] = agg[1:]
    peak: dict[int, Any] = {}
    if run.has("proc_rates"):
        peak = dict(
            run.query(
                "SELECT pid, max(user_cores + system_cores) FROM proc_rates WHERE dt >= ? "
                "GROUP BY pid",
                [min_s],
            )
        )
    out: list[dict[str, Any]] = []
    for pid in sorted(set(starts) | set(stats)):
        st = starts.get(pid)
        row = stats.get(pid)
        name, cmd = (st[1], st[2]) if st else ("", [])
        first = st[0] if st else row[0] if row else None
        user = row[2] / ticks if row and row[2] is not None else None
        system = row[3] / ticks if row and row[3] is not None else None
        out.append(
            {
                "pid": pid,
                "ppid": st[3] if st and st[3] is not None else _int(row[1]) if row else None,
                "name": name,
                "cmdline": cmd,
                "start_s": None if first is None else _num((first - t0_ms) / 1000, 3),
                "end_s": _num((ends[pid] - t0_ms) / 1000, 3) if pid in ends else None,
                "cpu_s": _num((user or 0) + (system or 0), 2),
                "user_s": _num(user, 2),
                "system_s": _num(system, 2),
                "peak_cores": _num(peak.get(pid), 3),
                "peak_rss_bytes": _int(row[4]) if row else None,
                "read_bytes": _int(row[5]) if row else None,
                "write_bytes": _int(row[6]) if row else None,
                "peak_threads": _int(row[7]) if row else None,
                "samples": int(row[8]) if row else 0,
            }
        )
    out.sort(key=lambda p: (-(p["cpu_s"] or 0), -(p["peak_rss_bytes"] or 0), p["pid"]))
    return out[:MAX_PROCESSES], len(out)


def _hotspots(run: Run) -> tuple[list[dict[str, Any]], int]:
    """Self share (the leaf frame) and total share (the frame anywhere in the stack, once per
    stack so recursion does not count twice) of every function, of all samples."""
    if not run.has("stacks"):
        return [], 0
    # CPU samples only: Python threads' waiting (state "wait", issue 12) is not a hotspot
    src = ("(SELECT * FROM stacks WHERE coalesce(state, 'cpu') = 'cpu')"
           if "state" in run.pf.schema("stacks").names else "stacks")  # fmt: skip
    total = int(run.one(f"SELECT coalesce(sum(samples), 0) FROM {src}"))
    if total == 0:
        return [], 0
    rows = run.query(
        f"WITH agg AS (SELECT stack, sum(samples) AS samples FROM {src} GROUP BY stack), "
        "s AS (SELECT string_split(stack, ';') AS f, samples FROM agg), "
        "self AS (SELECT f[-1] AS fn, sum(samples) AS n FROM s GROUP BY fn), "
        "tot AS (SELECT fn, sum(samples) AS n FROM "
        "  (SELECT unnest(list_distinct(f)) AS fn, samples FROM s) GROUP BY fn) "
        "SELECT tot.fn, coalesce(self.n, 0) AS sn, tot.n FROM tot LEFT JOIN self USING (fn) "
        "ORDER BY sn DESC, tot.n DESC, tot.fn LIMIT ?",
        [MAX_HOTSPOTS],
    )
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


def _functions_reason(run: Run) -> str:
    info = run.meta.get("functions")
    if not info:
        return "call stacks were not recorded (run `para profile --functions -- CMD`)"
    if isinstance(info, dict) and info.get("error"):
        return str(info["error"])
    return "perf record took no samples of the command"


def _unmeasured(run: Run, doc: dict[str, Any], tl: dict[str, Any]) -> dict[str, str]:
    out = {str(k): str(v) for k, v in (doc.get("unmeasured") or {}).items()}
    for key, family in FAMILY.items():
        if tl[key] or family in out:
            continue
        if family == "gpu":
            out[family] = str(doc["gpu"].get("reason") or "no GPU rows")
        elif family == "counters":
            out[family] = str(doc["ipc"].get("reason") or "no counter rows")
        else:
            out[family] = family_reason(run.meta, family) or "fewer than two samples: no rates"
    if not doc["hotspots"]:
        out["functions"] = _functions_reason(run)
    return dict(sorted(out.items()))


def build(run: Run) -> dict[str, Any]:
    """The report document of one run (docs/report-json.md)."""
    doc = summarize(run)
    meta = run.meta
    doc.setdefault("network", None)
    t0 = _t0_ms(run)
    doc["job"] = meta.get("job") or {}
    doc["cwd"] = meta.get("cwd")
    doc["source"] = meta.get("source")
    doc["start"] = meta.get("start")
    doc["end"] = meta.get("end")
    doc["complete"] = bool(meta.get("complete"))
    doc["recovery"] = run.pf.recovery.message if run.pf.recovery else None
    doc["t0"] = t0 / 1000
    tl = _timeline(run, t0)
    doc["resources"] = _resources(tl, int(doc["allowed_cpus"]))
    doc["timeline"] = tl
    doc["processes"], doc["processes_total"] = _processes(run, t0)
    doc["hotspots"], doc["hotspot_samples"] = _hotspots(run)
    doc["callers_lost"] = callers_lost([meta.get("functions")]) if doc["hotspots"] else None
    doc["unmeasured"] = _unmeasured(run, doc, tl)
    return doc


def _build_one(f: str) -> dict[str, Any]:
    with Run(f, skip=("cpu",)) as run:
        # one thread: floating-point sums then add up in one order, run after run
        run.con.execute("SET threads TO 1")
        return build(run)


def build_runs(files: list[str], progress: Progress | None = None) -> list[dict[str, Any]]:
    """The document of each file, in the order given; files are read two or more at a time
    (each has its own DuckDB connection, which works without holding the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    if len(files) < 2:
        return [_build_one(f) for f in files]
    runs = []
    with ThreadPoolExecutor(max_workers=min(len(files), os.cpu_count() or 1)) as ex:
        for i, doc in enumerate(ex.map(_build_one, files)):
            runs.append(doc)
            if progress:
                progress.advance("runs", i + 1, len(files))
    return runs


def report(
    files: list[str],
    *,
    rules: str | None = None,
    runs: bool = True,
    progress: Progress | None = None,
    job_id: str | None = None,
    db: str | None = None,
    con: Any = None,
    store_features: bool = True,
) -> dict[str, Any]:
    """The report document: one `run` per file, and the analysis of them together as one
    job (nodes, phases, functions, bottlenecks; docs/report-json.md).  With `job_id`, the
    job comes from the feature database `db` instead (no runs, read through `con` when
    given), and its features are written back to the database's `jobs` table unless
    `store_features` is False."""
    from para.analyzer.analysis import analyse
    from para.analyzer.job import Job
    from para.analyzer.rules import load_config

    config = load_config(rules)
    if job_id is not None and files:
        # one job of the agent's segments (segjobs.py): its rows only, no per-file runs
        from para.analyzer.job import group_files
        from para.analyzer.segjobs import JobSource, segment_jobs

        seen = segment_jobs(files)
        if job_id not in seen:
            raise ParaError(
                f"no job {job_id!r} in {len(files)} file{'s' if len(files) != 1 else ''}",
                hint="the jobs there: " + (", ".join(seen) or "none (not an agent recording?)"),
            )
        sj = seen[job_id]

        def opener(paths: list[Path]) -> Any:
            return lambda: [JobSource(p, sj) for p in paths]

        groups = group_files([Path(f) for f in files])
        with Job(sources=[(label, opener(paths)) for label, paths in groups]) as job:
            a = analyse(job, config)
        files = []
    elif job_id is not None:
        from para.analyzer.jobs import open_job, write_features

        with open_job(job_id, db, con) as job:
            a = analyse(job, config)
        if store_features:
            write_features(job_id, a, db)
        files = []
    else:
        with Job(files, progress=progress.advancer("nodes") if progress else None) as job:
            a = analyse(job, config)
    return {
        "para_report_version": REPORT_VERSION,
        "runs": build_runs(files, progress) if runs else [],
        "job": a.doc,
        "bottlenecks": a.bottlenecks,
        "hotspots": a.hotspots,
    }


# -- terminal --------------------------------------------------------------------------------


def _shorten(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def _cmd(argv: Any) -> str:
    if not argv:
        return ""
    if isinstance(argv, list):
        return shlex.join(str(a) for a in argv)
    return str(argv)


def _secs(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _resource_rows(doc: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    res, um = doc["resources"], doc["unmeasured"]
    rows: list[tuple[str, str, str, str]] = []

    def add(label: str, st: dict[str, Any] | None, fmt: Any, note: str = "") -> None:
        rows.append((label, fmt(st["mean"]) if st else "-", fmt(st["peak"]) if st else "-", note))

    def missing(label: str, family: str) -> None:
        rows.append((label, "-", "-", f"not measured: {um.get(family, 'no data')}"))

    if c := res["node_cpu"]:
        add("node CPU busy", c["busy_pct"], fmt_pct, "share of all CPUs of the node")
        for kind in ("user", "system", "iowait", "steal"):
            add(f"  {kind}", c[f"{kind}_pct"], fmt_pct)
    else:
        missing("node CPU", "cpu")
    if j := res["job"]:
        add("job CPU (sampled)", j["cores"], lambda v: "-" if v is None else f"{v:.2f} cores",
            f"of {j['allowed_cpus']} cores allowed")  # fmt: skip
        add("job RSS", j["rss_bytes"], fmt_size, "sum over its processes")
    else:
        missing("job processes", "process")
    if m := res["memory"]:
        add("node memory used", m["used_bytes"], fmt_size, f"of {fmt_size(m['total_bytes'])}")
        add("swap used", m["swap_used_bytes"], fmt_size)
    else:
        missing("node memory", "memory")
    if d := res["disk"]:
        add("disk read", d["read_bps"], fmt_rate, "whole disks of the node")
        add("disk write", d["write_bps"], fmt_rate)
        if b := d["busiest"]:
            dev = printable(b["device"])
            add(f"{dev} utilization", b["util_pct"], fmt_pct, "busiest disk")
            add(f"{dev} await", b["await_ms"], lambda v: "-" if v is None else f"{v:.2f} ms",
                "time per request")  # fmt: skip
    else:
        missing("disk", "disk")
    if n := res["net"]:
        add("network receive", n["rx_bps"], fmt_rate, "all interfaces but lo")
        add("network send", n["tx_bps"], fmt_rate)
    else:
        missing("network", "net")
    if gs := res["gpu"]:
        for g in gs:
            name = printable(g["gpu"])
            add(f"GPU {name} busy", g["util_pct"], fmt_pct)
            add(f"GPU {name} memory", g["mem_used_bytes"], fmt_size,
                f"of {fmt_size(g['mem_total_bytes'])}")  # fmt: skip
    else:
        missing("GPU", "gpu")
    if (k := res["counters"]) and k["ipc"]:
        add("IPC", k["ipc"], lambda v: "-" if v is None else f"{v:.2f}",
            "instructions per cycle")  # fmt: skip
    elif k:
        rows.append(("IPC", "-", "-", f"not measured: {doc['ipc'].get('reason')}"))
    else:
        missing("counters / IPC", "counters")
    return rows


def _top_processes(doc: dict[str, Any], n: int = 10) -> list[dict[str, Any]]:
    procs = doc["processes"]
    shown = procs[:n]
    by_rss = sorted(procs, key=lambda p: (-(p["peak_rss_bytes"] or 0), p["pid"]))[:3]
    shown += [p for p in by_rss if p not in shown]
    return shown


def render_terminal(doc: dict[str, Any], out: TextIO) -> None:
    import io
    import shutil

    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    tty = out.isatty()
    buf = io.StringIO()
    console = Console(
        file=buf, markup=False, highlight=False, emoji=False, force_terminal=tty,
        color_system="auto" if tty else None,
        width=max(100, shutil.get_terminal_size().columns) if tty else 120,
    )  # fmt: skip

    def table(title: str, *cols: tuple[str, str], last: str = "ellipsis") -> Table:
        """A plain table whose last column takes the width the others leave, and cuts its
        text short ("ellipsis") or wraps it ("fold"); the other columns keep their widths."""
        console.print()
        console.print(title, soft_wrap=True)
        t = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, expand=True)
        for i, (name, just) in enumerate(cols):
            flex = i == len(cols) - 1
            t.add_column(
                name, justify=just, no_wrap=not flex or last == "ellipsis",  # type: ignore[arg-type]
                ratio=1 if flex else None, overflow=last if flex else "fold",  # type: ignore[arg-type]
            )  # fmt: skip
        return t

    console.print(render(doc), soft_wrap=True)
    if doc.get("recovery"):
        console.print(f"  note         {doc['recovery']}", soft_wrap=True)
    t = table(
        "Resources over the run (mean and peak of the per-second values)",
        ("", "left"), ("mean", "right"), ("peak", "right"), ("", "left"),
        last="fold",
    )  # fmt: skip
    for row in _resource_rows(doc):
        t.add_row(*(Text(c) for c in row))
    console.print(t)

    procs = _top_processes(doc)
    if procs:
        t = table(
            f"Processes of the job by CPU time ({len(procs)} of {doc['processes_total']}; "
            "start and end in s from the start of the run)",
            ("pid", "right"), ("name", "left"), ("CPU s", "right"), ("peak cores", "right"),
            ("peak RSS", "right"), ("start", "right"), ("end", "right"), ("command", "left"),
        )  # fmt: skip
        for p in procs:
            t.add_row(
                str(p["pid"]),
                Text(_shorten(printable(p["name"]), 16)),
                f"{p['cpu_s']:.2f}",
                "-" if p["peak_cores"] is None else f"{p['peak_cores']:.2f}",
                fmt_size(p["peak_rss_bytes"]),
                _secs(p["start_s"]),
                _secs(p["end_s"]),
                Text(printable(_cmd(p["cmdline"]))),
            )
        console.print(t)
    else:
        console.print()
        console.print(f"Processes: none sampled ({doc['unmeasured'].get('process', 'no data')})")
    if doc["hotspots"]:
        t = table(
            f"Hottest functions by self time (of {doc['hotspot_samples']:,} call-stack samples; "
            "self = the function itself, total = with what it calls)",
            ("self", "right"), ("total", "right"), ("function", "left"),
        )  # fmt: skip
        for h in doc["hotspots"][:15]:
            fn_name = Text(printable(h["function"]))
            t.add_row(fmt_pct(h["self_pct"]), fmt_pct(h["total_pct"]), fn_name)
        console.print(t)
        if doc.get("callers_lost"):
            console.print(f"Note: {doc['callers_lost']}", soft_wrap=True)
    else:
        console.print()
        console.print(f"Functions: {doc['unmeasured'].get('functions', 'no call stacks')}")
    # rich pads every line to the table's width: trailing blanks only get in the way
    out.write("\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n\n")


# -- HTML ------------------------------------------------------------------------------------

PANELS = [
    # (timeline key, plot id, title)
    ("node_cpu", "cpu", "Node CPU by kind"),
    ("job", "job", "Job CPU: cores used and cores allowed"),
    ("memory", "memory", "Memory: node used and job resident"),
    ("disk", "disk", "Storage I/O"),
    ("net", "net", "Network"),
    ("gpu", "gpu", "GPU"),
    ("counters", "counters", "Hardware counters"),
]


def _csp_hash(text: str) -> str:
    import base64

    digest = hashlib.sha256(str(text).encode()).digest()
    return "'sha256-" + base64.b64encode(digest).decode() + "'"


def _utc(epoch: float | None) -> str:
    if epoch is None:
        return "?"
    return datetime.fromtimestamp(float(epoch), timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def render_html(rep: dict[str, Any], portal: dict[str, Any] | None = None) -> str:
    """The report as one self-contained page; with `portal` (the web portal's links: `nav`,
    `node_href`, `compare`, `plotly_src`), a page of the portal that loads plotly.js from it."""
    import jinja2
    from plotly.offline import get_plotlyjs

    env = jinja2.Environment(
        autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True
    )
    env.filters.update(
        csp_hash=_csp_hash,
        bytes=fmt_size,
        rate=fmt_rate,
        pct=fmt_pct,
        secs=_secs,
        cmd=_cmd,
        utc=_utc,
    )
    from para.analyzer.jobview import unseen_cpu

    env.globals["unseen_cpu"] = unseen_cpu
    text = resources.files("para.analyzer").joinpath("templates/report.html.j2").read_text()
    views = []
    for doc in rep["runs"]:
        panels = []
        for key, pid, title in PANELS:
            panels.append(
                {
                    "id": pid,
                    "title": title,
                    "reason": None if doc["timeline"][key] else doc["unmeasured"].get(FAMILY[key]),
                }
            )
        views.append(
            {"doc": doc, "panels": panels, "resources": _resource_rows(doc), "summary": render(doc)}
        )
    return env.from_string(text).render(
        report=rep,
        views=views,
        plotly_js="" if portal else get_plotlyjs(),
        version=REPORT_VERSION,
        portal=portal,
    )


# -- entry point -----------------------------------------------------------------------------


# Beyond this many runs, the terminal shows the job only and the HTML page the job's
# heatmaps instead of a section per run (the JSON always has every run).
TERMINAL_RUNS = 4
HTML_RUNS = 8
# `--json` carries each file's own document up to this many files; past it (the nodes of a
# big job: 128 nodes' documents are 150 MB and cost 6x the job's analysis) only on request
JSON_RUNS = 8


def main(
    files: list[str],
    *,
    as_json: bool = False,
    html_out: str | None = None,
    job: str | None = None,
    db: str | None = None,
    rules: str | None = None,
    runs: bool | None = None,
) -> int:
    """`runs`: each file's own document in `runs` (None: for up to JSON_RUNS files in JSON,
    HTML_RUNS in HTML, TERMINAL_RUNS in the terminal)."""
    from para.analyzer.progress import Progress

    if not files and job is None:
        raise ParaError("nothing to report on", hint="para report FILE.para... or --job ID")
    if files and job is None:
        from para.analyzer.segjobs import is_agent_recording, segment_jobs

        seen = segment_jobs(files) if is_agent_recording(files) else {}
        if len(seen) > 1 and (as_json or html_out is not None):
            raise ParaError(
                f"these agent segments hold {len(seen)} jobs: report one at a time",
                hint=f"para report {' '.join(shlex.quote(f) for f in files[:3])}"
                f"{' ...' if len(files) > 3 else ''} --job ID, ID one of {', '.join(seen)}",
            )
        if len(seen) == 1:
            job = next(iter(seen))
        elif seen:
            # an agent's node: each job on its own, in the order they started
            for i, jid in enumerate(seen):
                if i:
                    print()
                print(f"=== job {jid} ({i + 1} of {len(seen)}) ===")
                main(files, job=jid, rules=rules)
            return 0
    per_run = runs
    if per_run is None:
        per_run = (
            (as_json and len(files) <= JSON_RUNS)
            or (html_out is not None and len(files) <= HTML_RUNS)
            or (html_out is None and not as_json and len(files) <= TERMINAL_RUNS)
        )
    with Progress(len(files)) as progress:
        rep = report(files, rules=rules, runs=per_run, progress=progress, job_id=job, db=db)
    if as_json and not per_run and job is None and files:
        rep["runs_omitted"] = len(files)
        print(f"runs: the {len(files)} files' own documents left out (more than {JSON_RUNS} "
              "files); --runs adds them", file=sys.stderr)  # fmt: skip
    if html_out is not None:
        page = render_html(rep)
        out = Path(html_out)
        try:
            out.write_text(page, encoding="utf-8")
        except OSError as e:
            raise ParaError(
                f"cannot write {out}: {e.strerror or e}", hint="choose another --html path"
            ) from e
        msg = sys.stderr if as_json else sys.stdout
        print(f"Wrote {out} ({len(page.encode()) / 2**20:.1f} MiB, self-contained, works "
              "offline)", file=msg)  # fmt: skip
        print(f"Next: open it in a browser, e.g. xdg-open {shlex.quote(str(out))}", file=msg)
    if as_json:
        sys.stdout.write(json.dumps(rep, separators=(",", ":"), allow_nan=False) + "\n")
    elif html_out is None:
        from para.analyzer import jobview

        jobview.render(rep, sys.stdout)
        for i, doc in enumerate(rep["runs"]):
            if len(rep["runs"]) > 1:
                print(f"=== run {i + 1} of {len(rep['runs'])} ===")
            render_terminal(doc, sys.stdout)
    sys.stdout.flush()
    return 0
