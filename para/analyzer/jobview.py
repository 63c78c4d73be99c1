"""The job analysis in the terminal: what limits the job first, then the evidence (phases,
nodes, applications, functions, instructions), then what could not be judged and why."""

from __future__ import annotations

import io
import shutil
from typing import Any, TextIO

from para.analyzer.summary import fmt_pct, fmt_rate, fmt_size, printable

SEV_MARK = {"high": "HIGH", "medium": "MEDIUM", "low": "low"}


def _cores(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def render(rep: dict[str, Any], out: TextIO) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    job = rep["job"]
    tty = out.isatty()
    buf = io.StringIO()
    console = Console(
        file=buf, markup=False, highlight=False, emoji=False, force_terminal=tty,
        color_system="auto" if tty else None,
        width=max(100, shutil.get_terminal_size().columns) if tty else 120,
    )  # fmt: skip

    def table(title: str, *cols: tuple[str, str], last: str = "fold") -> Table:
        console.print()
        console.print(title, soft_wrap=True)
        t = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, expand=True)
        for i, (name, just) in enumerate(cols):
            flex = i == len(cols) - 1
            t.add_column(
                name, justify=just, no_wrap=not flex, ratio=1 if flex else None,  # type: ignore[arg-type]
                overflow=last if flex else "fold",  # type: ignore[arg-type]
            )  # fmt: skip
        return t

    ident = job["identity"]
    s = job["summary"]
    who = []
    if ident.get("job_id"):
        who.append(f"{ident.get('scheduler') or 'job'} job {ident['job_id']}")
    if ident.get("name"):
        who.append(f"({ident['name']})")
    nodes = job["nodes_total"]
    head = (f"para: analysis of {' '.join(who) + ', ' if who else ''}{nodes} node"
            f"{'s' if nodes != 1 else ''}, {job['duration_s']:.1f} s, "
            f"{job['allowed_cpus']} CPUs")  # fmt: skip
    console.print(printable(head), soft_wrap=True)
    util = f" ({s['cpu_util_pct']:.0f} %)" if s.get("cpu_util_pct") is not None else ""
    line = [f"  {_cores(s.get('cores_mean'))} cores busy on average{util}"]
    if s.get("peak_rss_bytes"):
        line.append(f"peak resident {fmt_size(s['peak_rss_bytes'])}")
    if s.get("read_bps") or s.get("write_bps"):
        line.append(f"storage {fmt_rate(s.get('read_bps'))} read, {fmt_rate(s.get('write_bps'))} "
                    "written")  # fmt: skip
    if s.get("net_bps"):
        line.append(f"network {fmt_rate(s['net_bps'])}")
    if s.get("gpu_util_pct") is not None:
        line.append(f"GPUs {s['gpu_util_pct']:.0f} % busy")
    if s.get("ipc") is not None:
        line.append(f"IPC {s['ipc']:.2f}")
    console.print(", ".join(line), soft_wrap=True)

    bots = rep["bottlenecks"]
    console.print()
    if bots:
        console.print("What limits this job, first things first:", soft_wrap=True)
        for i, b in enumerate(bots, 1):
            console.print(
                Text(f"  {i}. [{SEV_MARK.get(b['severity'], b['severity'])}] {b['title']} "
                     f"({b['id']})"),
                soft_wrap=True,
            )  # fmt: skip
            console.print(Text("     evidence: " + printable(b["evidence"])), soft_wrap=True)
            console.print(Text("     advice:   " + b["advice"]), soft_wrap=True)
    else:
        console.print("No bottleneck rule fired: the job used what it had, as far as para "
                      "measured (see the rules below).", soft_wrap=True)  # fmt: skip

    if job["phases"]:
        t = table("Phases (where the job's activity changed)",
                  ("#", "right"), ("from s", "right"), ("to s", "right"), ("cores", "right"),
                  ("CPU use", "right"), ("read", "right"), ("write", "right"),
                  ("network", "right"), ("what it did", "left"))  # fmt: skip
        for p in job["phases"]:
            top = p["hotspots"][0]["function"] if p.get("hotspots") else ""
            t.add_row(
                str(p["index"] + 1),
                f"{p['start_s']:g}",
                f"{p['end_s']:g}",
                _cores(p["cores"]),
                fmt_pct(p["cpu_util_pct"]),
                fmt_rate(p["read_bps"]),
                fmt_rate(p["write_bps"]),
                fmt_rate(p["net_bps"]),
                Text(p["label"] + (f"; hottest: {printable(top)}" if top else "")),
            )
        console.print(t)

    system = job["system"]
    if len(system) > 1:
        shown = sorted(system, key=lambda n: n["cores_mean"] or 0.0)
        pick = shown[:5] + [n for n in shown[-5:] if n not in shown[:5]] if len(shown) > 10 \
            else shown  # fmt: skip
        bal = job["balance"]
        imb = f"; imbalance {bal['imbalance_pct']:.0f} %" if bal.get("imbalance_pct") else ""
        t = table(f"Nodes ({len(system)}; the least and the most busy{imb})",
                  ("node", "left"), ("cores", "right"), ("CPU use", "right"),
                  ("peak RSS", "right"), ("memory used", "right"), ("I/O", "right"),
                  ("network", "right"), ("note", "left"))  # fmt: skip
        for n in pick:
            note = []
            if n["node"] in bal.get("idle_nodes", []):
                note.append("idle")
            if n["node"] in bal.get("stragglers", []):
                note.append("straggler")
            t.add_row(Text(printable(n["node"])), _cores(n["cores_mean"]),
                      fmt_pct(n["cpu_util_pct"]), fmt_size(n["peak_rss_bytes"]),
                      fmt_size(n["peak_mem_bytes"]), fmt_rate(n["io_bps"]), fmt_rate(n["net_bps"]),
                      ", ".join(note))  # fmt: skip
        console.print(t)

    apps = job["applications"]
    if apps:
        t = table("Applications (executables, all nodes)", ("executable", "left"),
                  ("processes", "right"), ("nodes", "right"), ("CPU s", "right"),
                  ("share", "right"), ("peak RSS", "right"), ("", "left"))  # fmt: skip
        for a in apps[:8]:
            t.add_row(
                Text(printable(a["executable"])),
                str(a["processes"]),
                str(a["nodes"]),
                f"{a['cpu_s']:.1f}",
                fmt_pct(a["cpu_pct"]),
                fmt_size(a["peak_rss_bytes"]),
                "",
            )
        unseen, cpu = unseen_cpu(job)
        if unseen is not None:
            t.add_row(Text("(no process seen)", style="dim"), "", "", f"{unseen:.1f}",
                      fmt_pct(100 * unseen / cpu), "",
                      "short children, or after a last look")  # fmt: skip
        console.print(t)

    ranks = job.get("ranks") or []
    if ranks:
        t = table("MPI ranks (MPI: share of a rank's call-stack samples in communication "
                  "libraries; a rank waiting in MPI spins, so its CPU time hides the wait)",
                  ("rank", "right"), ("node", "left"), ("CPU s", "right"),
                  ("samples", "right"), ("MPI", "right"), ("", "left"))  # fmt: skip
        shown = ranks if len(ranks) <= 16 else sorted(
            ranks, key=lambda r: -(r["mpi_pct"] or 0))[:16]  # fmt: skip
        for r in shown:
            t.add_row(str(r["rank"]), Text(printable(r["node"] or "")), f"{r['cpu_s'] or 0:.1f}",
                      f"{r['stack_samples']:,}", fmt_pct(r["mpi_pct"]), "")  # fmt: skip
        console.print(t)

    fn = job["functions"]
    if fn["hotspots"]:
        t = table(f"Hottest functions of the job (of {fn['samples']:,} call-stack samples; "
                  "self = the function itself, total = with what it calls)",
                  ("self", "right"), ("total", "right"), ("function", "left"))  # fmt: skip
        for h in fn["hotspots"][:15]:
            fn_name = Text(printable(h["function"]))
            t.add_row(fmt_pct(h["self_pct"]), fmt_pct(h["total_pct"]), fn_name)
        console.print(t)
        if fn.get("callers_lost"):
            console.print(f"Note: {fn['callers_lost']}", soft_wrap=True)
    waits = fn.get("waiting") or {}
    if waits.get("functions"):
        secs = f"{waits['seconds']:.1f} thread-seconds, " if waits.get("seconds") else ""
        ready = (f"; {waits['ready_seconds']:.1f} of them runnable, waiting for a CPU"
                 if waits.get("ready_seconds") else "")  # fmt: skip
        t = table(f"Where Python threads waited, off-CPU ({secs}{waits['samples']:,} samples: "
                  f"sleep, I/O, locks, the GIL{ready})",
                  ("share", "right"), ("seconds", "right"), ("innermost Python function",
                                                              "left"))  # fmt: skip
        for w in waits["functions"][:10]:
            t.add_row(fmt_pct(w["pct"]), "-" if w["seconds"] is None else f"{w['seconds']:.1f}",
                      Text(printable(w["function"])))  # fmt: skip
        console.print(t)
    ins = job["instructions"]
    for f in ins["functions"][:2]:
        how = "" if f["disassembled"] else f" ({f['reason']})"
        t = table(f"Instructions of {printable(f['function'])} in {printable(f['dso'])} "
                  f"({f['samples']:,} samples){how}", ("share", "right"),
                  ("offset", "right"), ("instruction", "left"))  # fmt: skip
        for line in f["instructions"][:8]:
            off = "(no offset)" if line["offset"] is None else f"+{line['offset']:#x}"
            t.add_row(fmt_pct(line["pct"]), off,
                      Text(printable(line["instruction"] or "?")))  # fmt: skip
        console.print(t)

    missing = [r for r in job["rules"] if r["status"] == "not_evaluated"]
    passed = [r for r in job["rules"] if r["status"] == "passed"]
    console.print()
    console.print(f"Rules: {len(bots)} fired, {len(passed)} passed, {len(missing)} could not "
                  "be judged:", soft_wrap=True)  # fmt: skip
    for r in missing:
        console.print(Text(f"  {r['id']}: {printable(r['reason'] or '')}"), soft_wrap=True)
    out.write("\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n\n")


def unseen_cpu(job: dict[str, Any]) -> tuple[float | None, float]:
    """The job's CPU time no sampled process accounts for, when it is worth a row (at least
    0.05 s and 0.5 % of the job's), and the job's CPU time."""
    s = job.get("summary") or {}
    unseen, cpu = s.get("unseen_cpu_s"), s.get("cpu_s") or 0.0
    if unseen is None or not cpu or unseen < max(0.05, 0.005 * cpu):
        return None, cpu
    return unseen, cpu
