"""`para compare A B`: what changed between two runs of the same application.

Each side is a .para file, a directory of them (the nodes of one job), or a job id of the
feature database.  Both are analysed as `para report` does; then, side by side:
- the verdict: how much faster or slower B is, and where the difference went;
- time per phase: phases paired in order by what they did (a sequence alignment of their
  labels), with their durations, and the time per kind of phase;
- resources: CPU use, memory, storage, network, GPU, IPC;
- hotspots: CPU seconds per function (samples / sampling frequency), the biggest changes,
  and functions that appeared or vanished;
- bottlenecks: new in B, gone since A, and those whose severity changed.
"""

from __future__ import annotations

import difflib
import io
import json
import shutil
import sys
from pathlib import Path
from typing import Any, TextIO

from para.analyzer.analysis import Analysis, analyse
from para.analyzer.job import Job
from para.analyzer.rules import SEVERITY, load_config
from para.analyzer.summary import fmt_bytes
from para.errors import ParaError

COMPARE_VERSION = 1
MIN_FUNCTION_PCT = 1.0  # a function under 1 % of both runs' samples is not listed


def side_files(spec: str) -> list[str]:
    p = Path(spec)
    if p.is_dir():
        files = sorted(str(f) for f in p.glob("*.para"))
        if not files:
            raise ParaError(f"{p}: no .para files in this directory")
        return files
    if p.exists():
        return [str(p)]
    raise ParaError(
        f"{spec}: no such file or directory",
        hint="give a .para file, a directory of a job's .para files, or a job id with --db",
    )


def _open(spec: str, db: str | None) -> Job:
    if db is not None and not Path(spec).exists():
        from para.analyzer.jobs import open_job

        return open_job(spec, db)
    return Job(side_files(spec))


def _freq(job: Job) -> float | None:
    for n in job.nodes:
        info = n.meta.get("functions")
        if isinstance(info, dict) and info.get("frequency_hz"):
            return float(info["frequency_hz"])
    return None


def _pct_change(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or a == 0:
        return None
    return round(100.0 * (b - a) / abs(a), 1) + 0.0


def _r(v: Any, nd: int = 3) -> Any:
    return None if v is None else round(float(v), nd) + 0.0


def _side(a: Analysis, spec: str) -> dict[str, Any]:
    d = a.doc
    return {
        "spec": spec,
        "nodes": d["nodes_total"],
        "hosts": d["identity"]["hosts"],
        "command": d["identity"]["command"],
        "job_id": d["identity"]["job_id"],
        "duration_s": d["duration_s"],
        "allowed_cpus": d["allowed_cpus"],
    }


def _resources(a: Analysis, b: Analysis) -> list[dict[str, Any]]:
    sa, sb = a.doc["summary"], b.doc["summary"]
    rows = [
        ("duration_s", "elapsed time", "s", a.doc["duration_s"], b.doc["duration_s"]),
        ("cores_mean", "cores busy on average", "cores", sa["cores_mean"], sb["cores_mean"]),
        ("cpu_util_pct", "CPU use of what it had", "%", sa["cpu_util_pct"], sb["cpu_util_pct"]),
        ("cpu_s", "CPU time", "s",
         (sa["cores_mean"] or 0) * a.doc["duration_s"] if sa["cores_mean"] is not None else None,
         (sb["cores_mean"] or 0) * b.doc["duration_s"] if sb["cores_mean"] is not None else None),
        ("peak_rss_bytes", "peak resident memory", "bytes", sa["peak_rss_bytes"],
         sb["peak_rss_bytes"]),
        ("read_bps", "storage read", "bytes/s", sa["read_bps"], sb["read_bps"]),
        ("write_bps", "storage written", "bytes/s", sa["write_bps"], sb["write_bps"]),
        ("net_bps", "network", "bytes/s", sa["net_bps"], sb["net_bps"]),
        ("gpu_util_pct", "GPU busy", "%", sa["gpu_util_pct"], sb["gpu_util_pct"]),
        ("ipc", "instructions per cycle", "", sa["ipc"], sb["ipc"]),
    ]  # fmt: skip
    return [
        {"metric": k, "label": label, "unit": unit, "a": _r(va), "b": _r(vb),
         "change_pct": _pct_change(va, vb)}
        for k, label, unit, va, vb in rows if va is not None or vb is not None
    ]  # fmt: skip


def _phases(a: Analysis, b: Analysis) -> dict[str, Any]:
    pa_, pb = a.doc["phases"], b.doc["phases"]
    la = [p["label"] for p in pa_]
    lb = [p["label"] for p in pb]
    pairs: list[dict[str, Any]] = []
    sm = difflib.SequenceMatcher(a=la, b=lb, autojunk=False)
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        if op == "equal" or (op == "replace" and i2 - i1 == j2 - j1):
            for i, j in zip(range(i1, i2), range(j1, j2), strict=True):
                pairs.append(_pair(pa_[i], pb[j]))
        else:
            pairs.extend(_pair(pa_[i], None) for i in range(i1, i2))
            pairs.extend(_pair(None, pb[j]) for j in range(j1, j2))
    kinds: dict[str, list[float]] = {}
    for p, side in ((pa_, 0), (pb, 1)):
        for ph in p:
            for kind in ph["label"].split(" + "):
                kinds.setdefault(kind, [0.0, 0.0])[side] += ph["duration_s"]
    by_kind = [
        {"kind": k, "a_s": _r(v[0]), "b_s": _r(v[1]), "change_s": _r(v[1] - v[0])}
        for k, v in sorted(kinds.items(), key=lambda kv: -max(kv[1]))
    ]
    return {"pairs": pairs, "by_kind": by_kind}


def _pair(x: dict[str, Any] | None, y: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "a_index": x["index"] if x else None,
        "b_index": y["index"] if y else None,
        "label_a": x["label"] if x else None,
        "label_b": y["label"] if y else None,
        "a_s": x["duration_s"] if x else None,
        "b_s": y["duration_s"] if y else None,
        "change_s": _r(y["duration_s"] - x["duration_s"]) if x and y else None,
        "cores_a": x["cores"] if x else None,
        "cores_b": y["cores"] if y else None,
    }


def _functions(a: Analysis, b: Analysis) -> dict[str, Any]:
    fa, fb = a.doc["functions"], b.doc["functions"]
    if not fa["samples"] or not fb["samples"]:
        missing = [s for s, f in (("A", fa), ("B", fb)) if not f["samples"]]
        return {"unit": None, "rows": [], "new": [], "gone": [],
                "reason": f"no call stacks in {' and '.join(missing)} "
                "(record with para profile --functions)"}  # fmt: skip
    freq_a, freq_b = _freq(a.job), _freq(b.job)
    seconds = bool(freq_a and freq_b)

    def amount(h: dict[str, Any], freq: float | None, total: int) -> float:
        return h["self_samples"] / freq if seconds and freq else 100.0 * h["self_samples"] / total

    ha = {h["function"]: h for h in fa["hotspots"]}
    hb = {h["function"]: h for h in fb["hotspots"]}
    rows = []
    for fn in sorted(set(ha) | set(hb)):
        x, y = ha.get(fn), hb.get(fn)
        pct_a = x["self_pct"] if x else 0.0
        pct_b = y["self_pct"] if y else 0.0
        if max(pct_a, pct_b) < MIN_FUNCTION_PCT:
            continue
        va = amount(x, freq_a, fa["samples"]) if x else 0.0
        vb = amount(y, freq_b, fb["samples"]) if y else 0.0
        rows.append({"function": fn, "a": _r(va), "b": _r(vb), "change": _r(vb - va),
                     "a_self_pct": pct_a, "b_self_pct": pct_b})  # fmt: skip
    rows.sort(key=lambda r: (-abs(r["change"] or 0.0), r["function"]))
    new = [r["function"] for r in rows if r["function"] not in ha]
    gone = [r["function"] for r in rows if r["function"] not in hb]
    return {"unit": "s" if seconds else "% of samples", "rows": rows[:30], "new": new,
            "gone": gone, "reason": None}  # fmt: skip


def _bottlenecks(a: Analysis, b: Analysis) -> dict[str, Any]:
    ba = {x["id"]: x for x in a.bottlenecks}
    bb = {x["id"]: x for x in b.bottlenecks}
    changed = []
    for rid in sorted(set(ba) & set(bb)):
        if ba[rid]["severity"] != bb[rid]["severity"] or ba[rid]["value"] != bb[rid]["value"]:
            changed.append({"id": rid, "severity_a": ba[rid]["severity"],
                            "severity_b": bb[rid]["severity"], "value_a": ba[rid]["value"],
                            "value_b": bb[rid]["value"], "unit": bb[rid]["unit"]})  # fmt: skip
    return {
        "new": [bb[r] for r in bb if r not in ba],
        "gone": [ba[r] for r in ba if r not in bb],
        "still": changed,
    }


def _verdict(doc: dict[str, Any]) -> str:
    ra = doc["a"]["duration_s"] or 0.0
    rb = doc["b"]["duration_s"] or 0.0
    if not ra:
        return "A has no live samples: nothing to compare"
    change = 100.0 * (rb - ra) / ra
    if abs(change) < 2:
        words = f"B took as long as A ({rb:.1f} s against {ra:.1f} s)"
    else:
        words = (f"B was {abs(change):.0f} % {'faster' if change < 0 else 'slower'} than A "
                 f"({rb:.1f} s against {ra:.1f} s)")  # fmt: skip
    kinds = sorted(doc["phases"]["by_kind"], key=lambda k: -abs(k["change_s"] or 0.0))
    if kinds and abs(kinds[0]["change_s"] or 0.0) >= 0.5:
        k = kinds[0]
        words += f"; the biggest change is in {k['kind']} phases ({k['change_s']:+.1f} s)"
    fn = doc["functions"]["rows"]
    if fn and fn[0]["change"]:
        unit = " s" if doc["functions"]["unit"] == "s" else " points of the samples"
        words += f"; in functions, {fn[0]['function']} ({fn[0]['change']:+.2f}{unit})"
    new = [x["id"] for x in doc["bottlenecks"]["new"]]
    gone = [x["id"] for x in doc["bottlenecks"]["gone"]]
    if new:
        words += f"; new in B: {', '.join(new)}"
    if gone:
        words += f"; gone since A: {', '.join(gone)}"
    return words


def compare(spec_a: str, spec_b: str, *, db: str | None = None, rules: str | None = None
            ) -> dict[str, Any]:  # fmt: skip
    with _open(spec_a, db) as ja, _open(spec_b, db) as jb:
        return _compare(ja, jb, spec_a, spec_b, rules)


def compare_jobs(job_a: str, job_b: str, *, db: str, rules: str | None = None,
                 con_a: Any = None, con_b: Any = None) -> dict[str, Any]:  # fmt: skip
    """Two jobs of the feature database, by id only (never a path), each read through its
    own connection when given (the web portal's)."""
    from para.analyzer.jobs import open_job

    with open_job(job_a, db, con_a) as ja, open_job(job_b, db, con_b) as jb:
        return _compare(ja, jb, job_a, job_b, rules)


def _compare(ja: Job, jb: Job, spec_a: str, spec_b: str, rules: str | None) -> dict[str, Any]:
    config = load_config(rules)
    a, b = analyse(ja, config), analyse(jb, config)
    doc: dict[str, Any] = {
        "para_compare_version": COMPARE_VERSION,
        "a": _side(a, spec_a),
        "b": _side(b, spec_b),
        "resources": _resources(a, b),
        "phases": _phases(a, b),
        "functions": _functions(a, b),
        "bottlenecks": _bottlenecks(a, b),
    }
    cmd_a, cmd_b = doc["a"]["command"], doc["b"]["command"]
    prog = lambda c: Path(c[0]).name if c else None  # noqa: E731
    doc["same_program"] = prog(cmd_a) == prog(cmd_b)
    doc["verdict"] = _verdict(doc)
    return doc


# -- terminal -----------------------------------------------------------------------------------


def _fmt(v: Any, unit: str) -> str:
    if v is None:
        return "-"
    if unit in ("bytes", "bytes/s"):
        return fmt_bytes(v) + ("/s" if unit == "bytes/s" else "")
    if unit == "%":
        return f"{v:.1f} %"
    if unit == "s":
        return f"{v:.2f} s"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def render(doc: dict[str, Any], out: TextIO) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    tty = out.isatty()
    buf = io.StringIO()
    console = Console(
        file=buf,
        markup=False,
        highlight=False,
        emoji=False,
        force_terminal=tty,
        color_system="auto" if tty else None,
        width=max(100, shutil.get_terminal_size().columns) if tty else 120,
    )

    def table(title: str, *cols: tuple[str, str]) -> Table:
        console.print()
        console.print(title, soft_wrap=True)
        t = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, expand=True)
        for i, (name, just) in enumerate(cols):
            flex = i == len(cols) - 1
            t.add_column(name, justify=just, no_wrap=not flex,  # type: ignore[arg-type]
                         ratio=1 if flex else None)  # fmt: skip
        return t

    console.print(Text(f"para: compare A = {doc['a']['spec']} with B = {doc['b']['spec']}"),
                  soft_wrap=True)  # fmt: skip
    if not doc["same_program"]:
        console.print("  note: A and B ran different programs", soft_wrap=True)
    console.print(Text("  " + doc["verdict"]), soft_wrap=True)

    t = table("Resources", ("", "left"), ("A", "right"), ("B", "right"), ("change", "right"),
              ("", "left"))  # fmt: skip
    for r in doc["resources"]:
        ch = "-" if r["change_pct"] is None else f"{r['change_pct']:+.1f} %"
        t.add_row(r["label"], _fmt(r["a"], r["unit"]), _fmt(r["b"], r["unit"]), ch, "")
    console.print(t)

    ph = doc["phases"]
    if ph["pairs"]:
        t = table("Time per phase (paired in order by what they did)", ("A", "left"),
                  ("A s", "right"), ("B", "left"), ("B s", "right"), ("change", "right"),
                  ("", "left"))  # fmt: skip
        for p in ph["pairs"]:
            t.add_row(
                f"{p['a_index'] + 1}. {p['label_a']}" if p["label_a"] else "-",
                _fmt(p["a_s"], "s"),
                f"{p['b_index'] + 1}. {p['label_b']}" if p["label_b"] else "-",
                _fmt(p["b_s"], "s"),
                "-" if p["change_s"] is None else f"{p['change_s']:+.2f} s", "",
            )  # fmt: skip
        console.print(t)
        t = table("Time per kind of phase", ("kind", "left"), ("A", "right"), ("B", "right"),
                  ("change", "right"), ("", "left"))  # fmt: skip
        for k in ph["by_kind"]:
            t.add_row(k["kind"], _fmt(k["a_s"], "s"), _fmt(k["b_s"], "s"),
                      f"{k['change_s']:+.2f} s", "")  # fmt: skip
        console.print(t)

    fn = doc["functions"]
    if fn["rows"]:
        unit = fn["unit"]
        t = table(
            f"Functions by change ({'CPU seconds, self' if unit == 's' else unit})",
            ("A", "right"),
            ("B", "right"),
            ("change", "right"),
            ("function", "left"),
        )
        for r in fn["rows"][:15]:
            t.add_row(_fmt(r["a"], unit if unit == "s" else "%"),
                      _fmt(r["b"], unit if unit == "s" else "%"),
                      f"{r['change']:+.2f}", Text(r["function"]))  # fmt: skip
        console.print(t)
        if fn["new"]:
            console.print(Text("  new in B: " + ", ".join(fn["new"][:10])), soft_wrap=True)
        if fn["gone"]:
            console.print(Text("  gone since A: " + ", ".join(fn["gone"][:10])), soft_wrap=True)
    elif fn["reason"]:
        console.print()
        console.print(f"Functions: {fn['reason']}", soft_wrap=True)

    bn = doc["bottlenecks"]
    console.print()
    console.print("Bottlenecks", soft_wrap=True)
    if not (bn["new"] or bn["gone"] or bn["still"]):
        console.print("  the same in both runs", soft_wrap=True)
    for x in bn["new"]:
        console.print(Text(f"  new in B   [{x['severity']}] {x['id']}: {x['evidence']}"),
                      soft_wrap=True)  # fmt: skip
    for x in bn["gone"]:
        console.print(Text(f"  gone in B  [{x['severity']}] {x['id']}"), soft_wrap=True)
    for x in bn["still"]:
        sev = (f"{x['severity_a']} -> {x['severity_b']}" if x["severity_a"] != x["severity_b"]
               else x["severity_b"])  # fmt: skip
        console.print(Text(f"  in both    [{sev}] {x['id']}: {_fmt(x['value_a'], '')} -> "
                           f"{_fmt(x['value_b'], '')} {x['unit']}"), soft_wrap=True)  # fmt: skip
    out.write("\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n\n")


def main(a: str, b: str, *, as_json: bool = False, db: str | None = None,
         rules: str | None = None) -> int:  # fmt: skip
    doc = compare(a, b, db=db, rules=rules)
    if as_json:
        sys.stdout.write(json.dumps(doc, separators=(",", ":"), allow_nan=False) + "\n")
    else:
        render(doc, sys.stdout)
    return 0


__all__ = ["SEVERITY", "compare", "main", "render"]
