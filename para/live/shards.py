"""The live view across collector shards (issue 14): what one shard tells the others of its
jobs, a job's totals over every shard, and `para top`'s documents of several shards as one.

A node reports to one shard at a time, but one that failed over is known to two (the old
shard still holds its last sample): everywhere here a node counts once, from the shard with
its newest sample.  Pure functions of JSON-able documents: the collector
(para/collector/alerts.py) and `para top` (para/analyzer/top.py) call them.
"""

from __future__ import annotations

import math
from typing import Any

from para.live.view import LiveView

PARTIAL_VERSION = 1
# one node's part of a job: [t_ms, cpu_cores, rss_bytes, io_bps, cpus, gpu util sum, gpus]
_T, _CORES, _RSS, _IO, _CPUS, _GSUM, _GN = range(7)


def job_partial(view: LiveView, shard: str, now: float) -> dict[str, Any]:
    """This shard's part of every running job: each of its nodes' latest use of the job."""
    jobs: dict[str, Any] = {}
    for job, js in view.jobs.items():
        hosts: dict[str, list[Any]] = {}
        for host, last in js.hosts.items():
            hs = view.hosts.get(host)
            snap = hs.last if hs is not None else None
            if snap is None or snap.t_ms - last > 5000:
                continue  # the job no longer runs there (as LiveView.job_now)
            row = snap.tables.get("job", {}).get(job)
            if row is None:
                continue
            gsum, gn = 0.0, 0
            for g, on in snap.gpu_jobs.items():
                if job in on:
                    u = _num(snap.tables.get("gpu", {}).get(g, {}).get("util_gpu"))
                    if u is not None:
                        gsum, gn = gsum + u, gn + 1
            hosts[host] = [
                snap.t_ms,
                _num(row.get("cpu_cores")),  # None until a node's second sample here (a rate)
                _num(row.get("rss_bytes")) or 0.0,
                _num(row.get("io_bps")) or 0.0,
                int(_num(row.get("cpus")) or 0),
                gsum,
                gn,
            ]
        if hosts:
            info = view.job_info(job)
            jobs[job] = {"user": info.get("user"), "name": info.get("name"), "hosts": hosts}
    return {"v": PARTIAL_VERSION, "shard": shard, "t": now, "jobs": jobs}


def job_totals(partials: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every job's totals over all its nodes, whichever shard each reports to (a node known
    to several shards counts once, at its newest sample): the values `job` rules read.
    A node that just failed over has no CPU rate yet at its new shard: its rate at the old
    one stands in while that is fresh, else the job's cores are unknown (None) that second,
    so that a rule is not evaluated on a total missing a node."""
    best: dict[str, dict[str, tuple[list[Any], str]]] = {}
    info: dict[str, dict[str, Any]] = {}
    for part in partials:
        shard = str(part.get("shard"))
        for job, doc in (part.get("jobs") or {}).items():
            mine = best.setdefault(job, {})
            info.setdefault(job, {"user": doc.get("user"), "name": doc.get("name")})
            for host, row in (doc.get("hosts") or {}).items():
                have = mine.get(host)
                if have is None:
                    mine[host] = (row, shard)
                    continue
                new, old = (row, have[0]) if row[_T] > have[0][_T] else (have[0], row)
                if new[_CORES] is None and old[_CORES] is not None:
                    new = [*new[:_CORES], old[_CORES], *new[_CORES + 1 :]]
                mine[host] = (new, shard if new[_T] == row[_T] else have[1])
    out = {}
    for job, hosts in best.items():
        rows = [r for r, _ in hosts.values()]
        known = [r[_CORES] for r in rows if r[_CORES] is not None]
        cores = round(sum(known), 3) if len(known) == len(rows) else None
        cpus = sum(r[_CPUS] for r in rows)
        gn = sum(r[_GN] for r in rows)
        out[job] = {
            **info[job],
            "hosts": sorted(hosts),
            "shards": sorted({s for _, s in hosts.values()}),
            "t_ms": max(r[_T] for r in rows),
            "nodes": len(rows),
            "cpu_cores": cores,
            "cpus": cpus,
            "cpu_util_pct": round(100.0 * cores / cpus, 3) if cpus and cores is not None else None,
            "rss_bytes": sum(r[_RSS] for r in rows),
            "io_bps": sum(r[_IO] for r in rows),
            "gpu_util_pct": sum(r[_GSUM] for r in rows) / gn if gn else None,
        }
    return out


def merge_summaries(docs: list[tuple[str, dict[str, Any] | None, str | None]]) -> dict[str, Any]:
    """`para top`'s documents of several shards (name, document or None, why not) as the
    document of one cluster: every node once (from the shard with its newest sample), every
    job with its nodes on all shards, every alert once; `shards` says which answered."""
    nodes: dict[str, tuple[dict[str, Any], str]] = {}
    answered = [(name, doc) for name, doc, _ in docs if doc is not None]
    for name, doc in answered:
        for n in doc.get("nodes", []):
            have = nodes.get(n["host"])
            if have is None or (n.get("t") or 0) > (have[0].get("t") or 0):
                nodes[n["host"]] = (n, name)
    history: dict[str, Any] = {}
    for host, (_, name) in nodes.items():
        doc = next(d for s, d in answered if s == name)
        h = (doc.get("history") or {}).get(host)
        if h is not None:
            history[host] = h
    jobs: dict[str, dict[str, Any]] = {}
    job_history: dict[str, dict[str, list[Any]]] = {}
    for _, doc in answered:
        for j in doc.get("jobs", []):
            jobs.setdefault(j["job"], dict(j))
        for job, series in (doc.get("job_history") or {}).items():
            into = job_history.setdefault(job, {})
            for k, vals in series.items():
                into[k] = _add_series(into.get(k), vals, mean=k == "gpu")
    # a job's use from its nodes' own rows, each node counted once
    uses: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for n, _ in nodes.values():
        for job in n.get("jobs") or []:
            use = (n.get("job_use") or {}).get(job)
            if use is not None:
                uses.setdefault(job, []).append((n, use))
    for j in jobs.values():
        on = uses.get(j["job"])
        if not on:
            j["hosts"] = []
            continue
        j["hosts"] = sorted(n["host"] for n, _ in on)
        j["cpu_cores"] = round(sum(u.get("cores") or 0.0 for _, u in on), 3)
        j["rss_bytes"] = sum(u.get("rss") or 0.0 for _, u in on)
        j["io_bps"] = sum(u.get("io") or 0.0 for _, u in on)
        if all("cpus" in u for _, u in on):
            j["cpus"] = sum(int(u.get("cpus") or 0) for _, u in on)
    alerts: dict[str, dict[str, Any]] = {}
    for _, doc in answered:
        for a in doc.get("alerts", []):
            alerts.setdefault(str(a.get("id")), a)
    first = answered[0][1] if answered else {}
    return {
        "t": max((d.get("t") or 0 for _, d in answered), default=None),
        "cluster": first.get("cluster"),
        "nodes": sorted((n for n, _ in nodes.values()), key=lambda n: n["host"]),
        "jobs": sorted((j for j in jobs.values() if j.get("hosts")), key=lambda j: j["job"]),
        "alerts": sorted(alerts.values(), key=lambda a: (a.get("rule") or "", a.get("id") or "")),
        "history": history,
        "job_history": job_history,
        "rules": max((d.get("rules") or 0 for _, d in answered), default=0),
        "shards": [
            {
                "shard": name,
                "ok": doc is not None,
                "error": why,
                "nodes": sum(1 for _, s in nodes.values() if s == name),
            }
            for name, doc, why in docs
        ],
    }


def _num(v: Any) -> float | None:
    """A node's value as a number; None for what is not one (a node's bytes are hostile: a
    string here must not stop every job's totals)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _add_series(a: list[Any] | None, b: list[Any], mean: bool) -> list[Any]:
    """Two shards' series of one job, aligned at their newest point: summed (cores, memory,
    I/O) or averaged (GPU %)."""
    if a is None:
        return list(b)
    n = max(len(a), len(b))
    pa = [None] * (n - len(a)) + list(a)
    pb = [None] * (n - len(b)) + list(b)
    out: list[Any] = []
    for x, y in zip(pa, pb):
        nums = [v for v in (x, y) if isinstance(v, (int, float))]
        if not nums:
            out.append(None)
        else:
            out.append(sum(nums) / len(nums) if mean else sum(nums))
    return out
