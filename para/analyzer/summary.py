"""The short answer about a run: time, CPU against the cores it had, memory, I/O, network,
GPU, IPC, and what could not be measured (said, never guessed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TextIO

from para.analyzer.load import Run


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


fmt_bytes = _fmt_bytes  # for the report's tables

# Below this share of samples unwound to their thread's start, the report says so.
UNWOUND_ENOUGH = 0.9


def callers_lost(infos: list[Any]) -> str | None:
    """What the recordings' `functions` records say of the call stacks whose callers were
    lost (perf's unwinder stopped before the thread's start), when too many were: a
    function's "total" then undercounts the time of the functions above it."""
    infos = [i for i in infos if isinstance(i, dict) and i.get("samples")
             and i.get("unwound_samples") is not None]  # fmt: skip
    total = sum(int(i["samples"]) for i in infos)
    whole = sum(int(i["unwound_samples"]) for i in infos)
    if total < 50 or whole >= UNWOUND_ENOUGH * total:
        return None
    modes = {str(i.get("call_graph")) for i in infos}
    if modes == {"fp"}:
        why = ("code without frame pointers (most distributions' libraries): "
               "try --call-graph dwarf")  # fmt: skip
    elif modes == {"dwarf"}:
        sizes = [int(i["dwarf_stack_bytes"]) for i in infos if i.get("dwarf_stack_bytes")]
        copy = f"the {max(sizes)} bytes" if sizes else "the part of the stack"
        why = f"stacks deeper than {copy} perf copies with each sample"
    else:
        why = "unwinding mode " + "/".join(sorted(modes))
    return (f"{100 * (total - whole) / total:.0f} % of the call-stack samples lost their "
            f"callers ({why}): a function's total undercounts the time of the functions "
            "that call it")  # fmt: skip


# cells of the report's tables ("-" where nothing was measured)
def fmt_pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} %"


def fmt_rate(v: float | None) -> str:
    return "-" if v is None else f"{fmt_bytes(v)}/s"


def fmt_size(v: float | None) -> str:
    return "-" if v is None else fmt_bytes(v)


def printable(s: str) -> str:
    """Control characters (a command line can hold escape sequences) shown, not obeyed."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


def _counter_span(run: Run, table: str, key: str, expr: str, where: str = "TRUE") -> float:
    """Sum over devices of (last - first) of a counter expression: its growth in the run."""
    v = run.one(
        f"SELECT sum(d) FROM (SELECT max({expr}) - min({expr}) AS d FROM {table} "
        f"WHERE {where} GROUP BY {key})"
    )
    return float(v or 0)


def family_reason(meta: dict[str, Any], family: str) -> str | None:
    st = (meta.get("families") or {}).get(family)
    if st is None:
        return "not recorded in this file"
    if st.get("state") != "ok":
        return st.get("reason") or st.get("state")
    return None


def summarize(run: Run) -> dict[str, Any]:
    meta = run.meta
    host = meta.get("host", {})
    ticks = float(host.get("clock_ticks") or 100)
    start, end = meta.get("start"), meta.get("end")
    duration = float(meta.get("elapsed_s") or ((end - start) if start and end else 0))
    allowed = int(meta.get("allowed_cpus") or host.get("threads") or 1)
    ex = meta.get("exit") or {}
    out: dict[str, Any] = {
        "file": str(run.path),
        "host": host.get("hostname"),
        "command": meta.get("command"),
        "duration_s": round(duration, 3),
        "samples": meta.get("samples"),
        "interval_s": meta.get("interval"),
        "exit": ex,
        "allowed_cpus": allowed,
    }
    # CPU: the kernel's exact account of the command and every descendant it waited for,
    # else the sampled processes.
    if "cpu_user_s" in ex and int(meta.get("ranks_on_node") or 1) == 1:
        user, system = float(ex["cpu_user_s"]), float(ex["cpu_system_s"])
        source = "rusage"
    elif run.has("proc"):
        user = _counter_span(run, "proc", "pid", "utime") / ticks
        system = _counter_span(run, "proc", "pid", "stime") / ticks
        source = "sampled processes"
    else:
        user = system = 0.0
        source = None
    cpu_s = user + system
    # a rate over a few milliseconds is noise: below a tenth of a second say only the times
    rated = duration >= 0.1
    out["cpu"] = {
        "user_s": round(user, 3),
        "system_s": round(system, 3),
        "cores_busy": round(cpu_s / duration, 3) if rated else None,
        "utilization_pct": round(100 * cpu_s / (duration * allowed), 1) if rated else None,
        "source": source,
    }
    if run.has("node_cpu"):
        row = run.query(
            "SELECT avg(busy_pct), avg(iowait_pct), avg(steal_pct), max(busy_pct) FROM node_cpu"
        )[0]
        out["cpu"]["node_busy_pct"] = _r(row[0])
        out["cpu"]["node_iowait_pct"] = _r(row[1])
        out["cpu"]["node_steal_pct"] = _r(row[2])
    mem: dict[str, Any] = {}
    if run.has("proc"):
        mem["job_peak_rss_bytes"] = run.one(
            "SELECT max(rss) FROM (SELECT sum(rss_bytes) AS rss FROM proc GROUP BY t)"
        )
    if "max_rss_bytes" in ex:
        mem["largest_process_rss_bytes"] = ex["max_rss_bytes"]
    if run.has("node_memory"):
        row = run.query("SELECT max(mem_used), max(mem_total), max(swap_used) FROM node_memory")[0]
        mem.update(node_peak_used_bytes=row[0], node_total_bytes=row[1], swap_peak_bytes=row[2])
    out["memory"] = mem
    io: dict[str, Any] = {}
    if run.has("proc"):
        io["job_read_bytes"] = _counter_span(run, "proc", "pid", "read_bytes")
        io["job_write_bytes"] = _counter_span(run, "proc", "pid", "write_bytes")
    if run.has("disk"):
        whole = ((meta.get("family_facts") or {}).get("disk") or {}).get("whole_disks")
        if whole:
            names = ", ".join("'" + d.replace("'", "''") + "'" for d in whole)
            where = f"device IN ({names})"
        else:
            where = "TRUE"
        io["node_read_bytes"] = _counter_span(run, "disk", "device", "read_bytes", where)
        io["node_write_bytes"] = _counter_span(run, "disk", "device", "write_bytes", where)
        io["busiest_disk"] = _busiest_disk(run)
    out["io"] = io
    if run.has("net"):
        out["network"] = {
            "rx_bytes": _counter_span(run, "net", "iface", "rx_bytes", "iface <> 'lo'"),
            "tx_bytes": _counter_span(run, "net", "iface", "tx_bytes", "iface <> 'lo'"),
        }
    out["gpu"] = _gpu(run)
    out["ipc"] = _ipc(run)
    out["unmeasured"] = {
        f: st.get("reason", st.get("state"))
        for f, st in (meta.get("families") or {}).items()
        if st.get("state") != "ok"
    }
    return out


def _r(v: Any, nd: int = 1) -> float | None:
    return None if v is None else round(float(v), nd)


def _busiest_disk(run: Run) -> dict[str, Any] | None:
    if not run.has("disk_rates"):
        return None
    row = run.query(
        "SELECT device, avg(util_pct), max(util_pct), avg(await_ms) FROM disk_rates "
        "GROUP BY device ORDER BY avg(util_pct) DESC NULLS LAST LIMIT 1"
    )
    if not row or row[0][1] is None:
        return None
    d, avg, peak, aw = row[0]
    return {
        "device": d,
        "avg_util_pct": _r(avg),
        "peak_util_pct": _r(peak),
        "avg_await_ms": _r(aw, 2),
    }


def _gpu(run: Run) -> dict[str, Any]:
    reason = family_reason(run.meta, "gpu")
    if not run.has("gpu"):
        return {"measured": False, "reason": reason or "no GPU rows"}
    rows = run.query(
        "SELECT gpu, avg(util_gpu), max(util_gpu), max(mem_used), max(mem_total), avg(power_mw) "
        "FROM gpu GROUP BY gpu ORDER BY gpu"
    )
    return {
        "measured": True,
        "gpus": [
            {
                "gpu": g,
                "avg_util_pct": _r(a),
                "peak_util_pct": _r(p),
                "peak_mem_bytes": m,
                "mem_total_bytes": mt,
                "avg_power_w": _r(pw / 1000 if pw is not None else None),
            }
            for g, a, p, m, mt, pw in rows
        ],
    }


def _ipc(run: Run) -> dict[str, Any]:
    facts = (run.meta.get("family_facts") or {}).get("counters") or {}
    reason = family_reason(run.meta, "counters")
    if reason:
        return {"measured": False, "reason": f"counters not sampled: {reason}"}
    if not run.has("counters"):
        return {"measured": False, "reason": "no counter rows were recorded"}
    got = dict(
        run.query(
            "SELECT event, sum(value) FROM counters "
            "WHERE event IN ('instructions', 'cycles') GROUP BY event"
        )
    )
    if got.get("instructions") and got.get("cycles"):
        return {
            "measured": True,
            "ipc": round(got["instructions"] / got["cycles"], 3),
            "instructions": got["instructions"],
            "cycles": got["cycles"],
        }
    # facts["events"] is the list of events asked for; per-event states, where a sampler
    # gives them, are a mapping; perf's "<not supported>" lands in events as counter_unsupported.
    states = facts.get("event_states")
    states = states if isinstance(states, dict) else {}
    unsupported: set[str] = set()
    if run.has("events"):
        unsupported = {
            str(n)
            for (n,) in run.query(
                "SELECT DISTINCT name FROM events WHERE kind = 'counter_unsupported'"
            )
        }
    missing = [e for e in ("cycles", "instructions") if not got.get(e)]
    detail = ", ".join(
        f"{e}: {states.get(e) or ('not supported' if e in unsupported else 'not counted')}"
        for e in missing
    )
    return {"measured": False, "reason": f"no hardware counters here ({detail})"}


def render(s: dict[str, Any]) -> str:
    lines = [f"para: summary of {s['file']}"]
    ex = s.get("exit") or {}
    how = ex.get("signal") or f"exit code {ex.get('exit_code', '?')}"
    lines.append(
        f"  duration     {s['duration_s']:.1f} s ({how}), {s['samples']} samples "
        f"every {s['interval_s']} s"
    )
    c = s["cpu"]
    if c.get("cores_busy") is None:
        lines.append(
            f"  CPU          user {c['user_s']:.2f} s, system {c['system_s']:.2f} s "
            "(too short a run for a rate)"
        )
    else:
        lines.append(
            f"  CPU          {c['cores_busy']:.2f} cores busy on average of {s['allowed_cpus']} "
            f"it could use ({c['utilization_pct']:.0f}%); user {c['user_s']:.1f} s, system "
            f"{c['system_s']:.1f} s"
            + (f"; node iowait {c['node_iowait_pct']:.0f}%" if c.get("node_iowait_pct") else "")
        )
    m = s["memory"]
    parts = []
    if m.get("job_peak_rss_bytes") is not None:
        parts.append(f"job peak {_fmt_bytes(m['job_peak_rss_bytes'])} resident")
    if m.get("node_peak_used_bytes") is not None:
        parts.append(
            f"node peak used {_fmt_bytes(m['node_peak_used_bytes'])} of "
            f"{_fmt_bytes(m['node_total_bytes'])}"
        )
    if m.get("swap_peak_bytes"):
        parts.append(f"swap {_fmt_bytes(m['swap_peak_bytes'])}")
    if parts:
        lines.append("  memory       " + ", ".join(parts))
    io = s["io"]
    if io:
        txt = []
        if "job_read_bytes" in io:
            txt.append(
                f"job read {_fmt_bytes(io['job_read_bytes'])}, wrote "
                f"{_fmt_bytes(io['job_write_bytes'])} to storage"
            )
        if "node_read_bytes" in io:
            txt.append(
                f"node disks {_fmt_bytes(io['node_read_bytes'])} read, "
                f"{_fmt_bytes(io['node_write_bytes'])} written"
            )
        b = io.get("busiest_disk")
        if b and b.get("peak_util_pct"):
            txt.append(
                f"{b['device']} busy {b['avg_util_pct']:.0f}% on average, "
                f"{b['peak_util_pct']:.0f}% at peak"
            )
        lines.append("  storage      " + "; ".join(txt))
    n = s.get("network")
    if n:
        lines.append(
            f"  network      received {_fmt_bytes(n['rx_bytes'])}, sent "
            f"{_fmt_bytes(n['tx_bytes'])} (node, all interfaces but lo)"
        )
    g = s["gpu"]
    if g["measured"]:
        for gpu in g["gpus"]:
            lines.append(
                f"  GPU {gpu['gpu']:<8} {gpu['avg_util_pct']}% busy on average, memory "
                f"peak {_fmt_bytes(gpu['peak_mem_bytes'])} of "
                f"{_fmt_bytes(gpu['mem_total_bytes'])}"
            )
    else:
        lines.append(f"  GPU          not measured: {g['reason']}")
    i = s["ipc"]
    if i["measured"]:
        lines.append(f"  IPC          {i['ipc']:.2f} instructions per cycle")
    else:
        lines.append(f"  IPC          not measured: {i['reason']}")
    return "\n".join(lines)


def print_profile_summary(path: str | Path, out: TextIO) -> None:
    with Run(path) as run:
        s = summarize(run)
    out.write(render(s) + "\n")
    out.write(f"Next: para report {path} --html {Path(path).with_suffix('.html')}\n")
    out.flush()
