"""`para show FILE`: what a .para file holds, without reading its series."""

from __future__ import annotations

import json
import time
from typing import Any, TextIO

from para.formats.reader import ParaFile


def describe(pf: ParaFile) -> dict[str, Any]:
    """The facts `para show --json` prints; `values` are stored values, so that bytes per
    value is `bytes / values`."""
    stats = pf.stats()
    size = pf.path.stat().st_size
    meta = pf.meta
    values = stats.get("values") or 0
    return {
        "path": str(pf.path),
        "format_version": meta.get("format_version"),
        "complete": pf.complete,
        "recovery": pf.recovery.message if pf.recovery else None,
        "source": meta.get("source"),
        "host": meta.get("host", {}),
        "job": meta.get("job", {}),
        "command": meta.get("command"),
        "interval": meta.get("interval"),
        "start": stats.get("start"),
        "end": stats.get("end"),
        "duration": (stats["end"] - stats["start"]) if stats.get("start") is not None else None,
        "samples": stats.get("samples") or 0,
        "values": values,
        "bytes": size,
        "bytes_per_value": round(size / values, 4) if values else None,
        "rows": stats.get("rows") or {},
        "exit": meta.get("exit"),
        "families": meta.get("families", {}),
        "counters": (meta.get("family_facts") or {}).get("counters"),
        "catalogue": pf.catalogue(),
    }


def _utc(epoch: float | None) -> str:
    return "?" if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def render_text(d: dict[str, Any], out: TextIO, catalogue: bool = True) -> None:
    w = out.write
    state = "complete" if d["complete"] else "NOT complete"
    w(f"{d['path']}  (.para format {d['format_version']}, {state}, {_size(d['bytes'])})\n")
    if d["recovery"]:
        w(f"  note      {d['recovery']}\n")
    h = d["host"]
    if h:
        mem = _size(h.get("memory_bytes") or 0)
        w(
            f"  host      {h.get('hostname')}: {h.get('cpu_model')}, {h.get('sockets') or '?'} "
            f"socket(s), {h.get('cores') or '?'} cores, {h.get('threads')} threads, {mem}, "
            f"{h.get('kernel')}\n"
        )
    job = d["job"] or {}
    if job.get("job_id"):
        w(
            f"  job       {job.get('scheduler')} job {job['job_id']} ({job.get('name') or '-'}), "
            f"user {job.get('user')}\n"
        )
    if d["command"]:
        w(f"  command   {' '.join(d['command'])}\n")
    if d["exit"]:
        ex = d["exit"]
        w(f"  exit      {ex.get('signal') or 'code ' + str(ex.get('exit_code'))}\n")
    w(f"  interval  {d['interval']} s\n")
    dur = f" ({d['duration']:.1f} s)" if d["duration"] is not None else ""
    w(f"  time      {_utc(d['start'])} to {_utc(d['end'])}{dur}\n")
    bpv = f", {d['bytes_per_value']} bytes/value" if d["bytes_per_value"] else ""
    w(f"  samples   {d['samples']:,} instants, {d['values']:,} values{bpv}\n")
    fams = d["families"]
    if fams:
        parts = [
            f"{f} {s['state']}" + (f" ({s['reason']})" if s.get("reason") else "")
            for f, s in fams.items()
        ]
        w("  families  " + "\n            ".join(parts) + "\n")
    w("tables\n")
    for table, n in d["rows"].items():
        w(f"  {table:<10} {n:>10,} rows\n")
    if catalogue:
        w("metric catalogue\n")
        w(f"  {'table':<9} {'column':<22} {'unit':<16} {'kind':<8} source\n")
        for c in d["catalogue"]:
            if c["table"] in d["rows"]:
                w(
                    f"  {c['table']:<9} {c['name']:<22} {c['unit']:<16} {c['kind']:<8} "
                    f"{c['source']}\n"
                )


def show(path: str, as_json: bool, out: TextIO, catalogue: bool = True) -> int:
    with ParaFile(path) as pf:
        d = describe(pf)
    if as_json:
        json.dump(d, out, indent=1, default=str)
        out.write("\n")
    else:
        render_text(d, out, catalogue)
    return 0
