"""`para top`: the cluster, or this node, second by second in a terminal.

    para top                                   this node (its agent, or sampled here)
    para top --collector grpc+tls://collector:8815 --ca ca.crt --cert me.crt --key me.key

Views: nodes, jobs, alerts, one node (its jobs), one job (its nodes).  Keys: c m i n g
sort by CPU, memory, I/O, network, GPU (again: reverse); tab next view; / filter; arrows
select; enter drills into a node or job; esc back; q quits.  Made for 80x24 over ssh:
plain curses, ASCII sparklines when the terminal is not UTF-8.

Drawing is a pure function of the state and the data (`render`), keys change the state
(`handle_key`); the curses loop only shows lines and reads keys, and a fetcher thread polls
the source once per interval, so a slow collector never freezes the keys.
"""

from __future__ import annotations

import fnmatch
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from para.errors import ParaError, UsageError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
SORT_KEYS = {"c": "cpu", "m": "mem", "i": "io", "n": "net", "g": "gpu"}
SORT_NAMES = {"cpu": "CPU", "mem": "memory", "io": "I/O", "net": "network", "gpu": "GPU"}
JOB_SORT = {
    "cpu": "cpu_cores",
    "mem": "rss_bytes",
    "io": "io_bps",
    "net": "cpu_cores",
    "gpu": "gpu_util_pct",
}
JOB_SPARK = {"cpu": "cores", "mem": "rss", "io": "io", "net": "cores", "gpu": "gpu"}
VIEWS = ("nodes", "jobs", "alerts")
BLOCKS = "▁▂▃▄▅▆▇█"
ASCII = "_.-:=+*#"
SPAN_S = 300  # what a table's sparklines cover (seconds)
DETAIL_SPAN_S = 600
FOOTER = "c m i n g sort  r reverse  tab view  / filter  enter open  esc back  q quit"
# line styles
NORMAL, HEAD, SELECTED, ALERT, DIM = range(5)

Line = tuple[str, int]


@dataclass
class State:
    view: str = "nodes"  # nodes | jobs | alerts | node | job
    sort: str = "cpu"
    descending: bool = True
    filter: str = ""
    editing: str | None = None  # the filter being typed
    selected: dict[str, int] = field(default_factory=dict)
    node: str | None = None
    job: str | None = None
    back: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    unicode: bool = True
    width: int = 80
    height: int = 24

    def request(self, data: dict[str, Any] | None) -> dict[str, Any]:
        """What to ask the source for: the history of what is on screen."""
        width = self.spark_width()
        hosts: list[str] = []
        jobs: list[str] = []
        if self.view == "node" and self.node:
            hosts = [self.node]
            jobs = [j["job"] for j in (data or {}).get("jobs", []) if self.node in j["hosts"]]
            span, width = DETAIL_SPAN_S, max(10, self.width - 24)
        elif self.view == "job" and self.job:
            jobs = [self.job]
            span, width = DETAIL_SPAN_S, max(10, self.width - 24)
        else:
            span = SPAN_S
            if data:
                rows = table_rows(self, data)[: max(1, self.height - 6)]
                if self.view == "nodes":
                    hosts = [r["host"] for r in rows]
                elif self.view == "jobs":
                    jobs = [r["job"] for r in rows]
        metrics = None if self.view == "node" else [self.sort]
        return {
            "history": hosts,
            "job_history": jobs,
            "points": span,
            "bucket": max(1, math.ceil(span / max(width, 1))),
            "metrics": metrics,
        }

    def spark_width(self) -> int:
        return max(4, self.width - 62)


# -- formatting -----------------------------------------------------------------------------


def human(v: Any, suffix: str = "") -> str:
    """1234567 -> '1.2M' (binary units), None -> '-'."""
    if not isinstance(v, (int, float)):
        return "-"
    n = float(v)
    for unit in ("", "K", "M", "G", "T", "P"):
        if abs(n) < 1000 or unit == "P":
            return (
                f"{n:.0f}{unit}{suffix}" if unit == "" or abs(n) >= 10 else f"{n:.1f}{unit}{suffix}"
            )
        n /= 1024
    return f"{n:.0f}P{suffix}"


def pct(v: Any) -> str:
    return f"{v:.1f}" if isinstance(v, (int, float)) else "-"


def spark(values: list[Any], width: int, top: float | None = None, unicode: bool = True) -> str:
    """A sparkline of the last `width` values; `top`: the value of a full bar (default: the
    largest shown)."""
    chars = BLOCKS if unicode else ASCII
    vals = values[-width:] if width > 0 else []
    nums = [v for v in vals if isinstance(v, (int, float))]
    hi = top if top is not None else max(nums, default=0.0)
    out = []
    for v in vals:
        if not isinstance(v, (int, float)):
            out.append(" ")
        elif hi <= 0:
            out.append(chars[0])
        else:
            out.append(chars[max(0, min(len(chars) - 1, int(v / hi * len(chars))))])
    return "".join(out).rjust(width)


def _matches(pattern: str, *texts: Any) -> bool:
    if not pattern:
        return True
    p = pattern.lower()
    glob = any(c in p for c in "*?[")
    for t in texts:
        if t is None:
            continue
        s = str(t).lower()
        if (glob and fnmatch.fnmatchcase(s, p)) or (not glob and p in s):
            return True
    return False


def _sorted(rows: list[dict[str, Any]], key: str, descending: bool) -> list[dict[str, Any]]:
    have = [r for r in rows if isinstance(r.get(key), (int, float))]
    none = [r for r in rows if not isinstance(r.get(key), (int, float))]
    have.sort(key=lambda r: r[key], reverse=descending)
    return have + none


def table_rows(state: State, data: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of the current view's table, filtered and sorted."""
    f = state.filter
    if state.view == "nodes":
        rows = [n for n in data.get("nodes", []) if _matches(f, n["host"], *n.get("jobs", []))]
        return _sorted(rows, state.sort, state.descending)
    if state.view == "jobs":
        rows = [
            j
            for j in data.get("jobs", [])
            if _matches(f, j["job"], j.get("user"), j.get("name"), j.get("app"))
        ]
        return _sorted(rows, JOB_SORT[state.sort], state.descending)
    if state.view == "alerts":
        return [
            a
            for a in data.get("alerts", [])
            if _matches(f, a.get("rule"), a.get("host"), a.get("summary"))
        ]
    if state.view == "node":
        node = _node(data, state.node)
        return (
            [{"job": j, **(node.get("job_use") or {}).get(j, {})} for j in (node.get("jobs") or [])]
            if node
            else []
        )
    if state.view == "job":
        job = _job(data, state.job)
        nodes = {n["host"]: n for n in data.get("nodes", [])}
        return [nodes[h] for h in (job or {}).get("hosts", []) if h in nodes]
    return []


def _node(data: dict[str, Any], host: str | None) -> dict[str, Any] | None:
    return next((n for n in data.get("nodes", []) if n["host"] == host), None)


def _job(data: dict[str, Any], job: str | None) -> dict[str, Any] | None:
    return next((j for j in data.get("jobs", []) if j["job"] == job), None)


# -- drawing --------------------------------------------------------------------------------


def render(
    state: State,
    data: dict[str, Any] | None,
    label: str,
    error: str | None = None,
    now: float | None = None,
) -> list[Line]:
    """The screen as lines (text, style), at most state.height, each at most state.width."""
    w, h = state.width, state.height
    if w < 40 or h < 10:
        return [("para top needs 40x10 at least", NORMAL)]
    t = time.strftime("%H:%M:%S", time.localtime(now or time.time()))
    d = data or {}
    nodes, jobs, alerts = d.get("nodes", []), d.get("jobs", []), d.get("alerts", [])
    head = f"para top - {label}"
    stats = f"{len(nodes)} nodes {len(jobs)} jobs {len(alerts)} alerts  {t}"
    lines: list[Line] = [(_fit(head, w - len(stats) - 1) + " " + stats, HEAD)]
    order = "v" if state.descending else "^"
    where = {"node": f"node {state.node}", "job": f"job {state.job}"}.get(state.view, state.view)
    filt = f"  filter: {state.filter}" if state.filter else ""
    if state.editing is not None:
        filt = f"  filter: {state.editing}_"
    lines.append((f"view: {where}  sort: {SORT_NAMES[state.sort]} {order}{filt}", NORMAL))
    if error:
        lines.append((_fit(f"! {error}", w), ALERT))
    silent = [s for s in d.get("shards") or [] if not s.get("ok")]
    if silent:
        what = "; ".join(f"{s['shard']} ({s.get('error') or 'no answer'})" for s in silent)
        n = len(d["shards"])
        lines.append((_fit(f"! {len(silent)} of {n} shards not answering: {what}", w), ALERT))
    if data is None:
        lines.append(("waiting for the first sample...", DIM))
    elif state.view == "nodes":
        lines += _nodes_view(state, d)
    elif state.view == "jobs":
        lines += _jobs_view(state, d)
    elif state.view == "alerts":
        lines += _alerts_view(state, d, h - len(lines) - 1)
    elif state.view == "node":
        lines += _node_view(state, d)
    elif state.view == "job":
        lines += _job_view(state, d)
    body_max = h - 1
    if state.view in ("nodes", "jobs") and alerts:
        room = min(2, len(alerts))
        body_max -= room
        tail = [
            (_fit(f"! [{a['severity']}] {a['rule']}: {a.get('summary') or ''}", w), ALERT)
            for a in alerts[:room]
        ]
    else:
        tail = []
    lines = lines[:body_max]
    lines += [("", NORMAL)] * (body_max - len(lines))
    lines += tail
    lines.append((_fit(FOOTER, w), DIM))
    return [(_fit(text, w), style) for text, style in lines]


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "~"


def _selected(state: State, n: int) -> int:
    i = state.selected.get(state.view, 0)
    i = max(0, min(i, n - 1))
    state.selected[state.view] = i
    return i


def _window(state: State, rows: list[Any], room: int) -> tuple[list[Any], int, int]:
    """The rows that fit in `room` lines around the selection: (rows, first index, selected)."""
    sel = _selected(state, len(rows)) if rows else 0
    first = max(0, min(sel - room + 1, len(rows) - room)) if sel >= room else 0
    return rows[first : first + room], first, sel


def _nodes_view(state: State, d: dict[str, Any]) -> list[Line]:
    rows = table_rows(state, d)
    hist = d.get("history", {})
    sw = state.spark_width()
    name_w = 14
    out: list[Line] = [
        (
            f"{'NODE':<{name_w}} {'CPU%':>5} {'MEM%':>5} {'IO/s':>6} {'NET/s':>6} "
            f"{'GPU%':>5} {'JOBS':<12} {SORT_NAMES[state.sort]} last "
            f"{SPAN_S // 60} min",
            HEAD,
        )
    ]
    if not rows:
        out.append(("no node matches the filter" if state.filter else "no node yet", DIM))
        return out
    room = state.height - 7
    shown, first, sel = _window(state, rows, room)
    top = 100.0 if state.sort in ("cpu", "mem", "gpu") else None
    for i, n in enumerate(shown, start=first):
        jobs = ",".join(n.get("jobs") or []) or "-"
        stale = " (silent)" if (n.get("age_s") or 0) > 10 else ""
        values = (hist.get(n["host"]) or {}).get(state.sort) or []
        text = (
            f"{_fit(n['host'] + stale, name_w):<{name_w}} {pct(n.get('cpu')):>5} "
            f"{pct(n.get('mem')):>5} {human(n.get('io')):>6} {human(n.get('net')):>6} "
            f"{pct(n.get('gpu')):>5} {_fit(jobs, 12):<12} "
            f"{spark(values, sw, top, state.unicode)}"
        )
        out.append((text, SELECTED if i == sel else NORMAL))
    return out


def _jobs_view(state: State, d: dict[str, Any]) -> list[Line]:
    rows = table_rows(state, d)
    hist = d.get("job_history", {})
    sw = max(4, state.width - 72)
    out: list[Line] = [
        (
            f"{'JOB':<10} {'USER':<8} {'NAME':<10} {'NODES':>5} {'CORES':>6} "
            f"{'CPU%':>5} {'MEM':>6} {'IO/s':>6} {'GPU%':>5} "
            f"{JOB_SPARK[state.sort]} {SPAN_S // 60} min",
            HEAD,
        )
    ]
    if not rows:
        out.append(("no job matches the filter" if state.filter else "no job running", DIM))
        return out
    shown, first, sel = _window(state, rows, state.height - 7)
    for i, j in enumerate(shown, start=first):
        util = 100 * j["cpu_cores"] / j["cpus"] if j.get("cpus") else None
        values = (hist.get(j["job"]) or {}).get(JOB_SPARK[state.sort]) or []
        text = (
            f"{_fit(j['job'], 10):<10} {_fit(j.get('user') or '-', 8):<8} "
            f"{_fit(j.get('name') or j.get('app') or '-', 10):<10} {len(j['hosts']):>5} "
            f"{j['cpu_cores']:>6.2f} {pct(util):>5} {human(j.get('rss_bytes')):>6} "
            f"{human(j.get('io_bps')):>6} {pct(j.get('gpu_util_pct')):>5} "
            f"{spark(values, sw, None, state.unicode)}"
        )
        out.append((text, SELECTED if i == sel else NORMAL))
    return out


def _alerts_view(state: State, d: dict[str, Any], room: int) -> list[Line]:
    rows = table_rows(state, d)
    out: list[Line] = [(f"{'SEVERITY':<9} {'RULE':<20} {'SINCE':<8} WHAT", HEAD)]
    if not rows:
        out.append(("no alert firing" + (" matches the filter" if state.filter else ""), DIM))
        return out
    shown, first, sel = _window(state, rows, max(1, room - 1))
    for i, a in enumerate(shown, start=first):
        since = (
            time.strftime("%H:%M:%S", time.localtime(a["started"]))
            if isinstance(a.get("started"), (int, float))
            else "-"
        )
        text = f"{a['severity']:<9} {_fit(a['rule'], 20):<20} {since:<8} {a.get('summary') or ''}"
        out.append((text, SELECTED if i == sel else ALERT))
    return out


def _detail_spark(
    label: str, value: str, values: list[Any], state: State, top: float | None
) -> Line:
    sw = max(10, state.width - 24)
    return (f"  {label:<9} {value:>10} {spark(values, sw, top, state.unicode)}", NORMAL)


def _node_view(state: State, d: dict[str, Any]) -> list[Line]:
    n = _node(d, state.node)
    if n is None:
        return [(f"node {state.node} is not (or no longer) reporting", DIM)]
    hist = (d.get("history") or {}).get(n["host"]) or {}
    mem = f", {human(n.get('mem_total'), 'B')} memory" if n.get("mem_total") else ""
    cpus = f"{n['cpus']:g} CPUs" if isinstance(n.get("cpus"), (int, float)) else "? CPUs"
    out: list[Line] = [
        (
            f"node {n['host']}: {cpus}{mem}, load {pct(n.get('load1'))}, sample "
            f"{n.get('age_s') or 0:.1f} s old; last {DETAIL_SPAN_S // 60} min:",
            NORMAL,
        ),
        _detail_spark("CPU busy", f"{pct(n.get('cpu'))} %", hist.get("cpu") or [], state, 100.0),
        _detail_spark("memory", f"{pct(n.get('mem'))} %", hist.get("mem") or [], state, 100.0),
        _detail_spark("I/O", human(n.get("io"), "B/s"), hist.get("io") or [], state, None),
        _detail_spark("network", human(n.get("net"), "B/s"), hist.get("net") or [], state, None),
    ]
    if n.get("gpus"):
        out.append(
            _detail_spark("GPU busy", f"{pct(n.get('gpu'))} %", hist.get("gpu") or [], state, 100.0)
        )
    rows = table_rows(state, d)
    out.append(
        (
            f"{'JOB ON THIS NODE':<18} {'USER':<10} {'CORES':>6} {'MEM':>7} {'IO/s':>7} "
            f"{'PROCS':>5}",
            HEAD,
        )
    )
    if not rows:
        out.append(("no job running on this node", DIM))
    jobs = {j["job"]: j for j in d.get("jobs", [])}
    shown, first, sel = _window(state, rows, max(1, state.height - len(out) - 6))
    for i, r in enumerate(shown, start=first):
        user = (jobs.get(r["job"]) or {}).get("user") or "-"
        cores = f"{r['cores']:.2f}" if isinstance(r.get("cores"), (int, float)) else "-"
        out.append(
            (
                f"{_fit(r['job'], 18):<18} {_fit(user, 10):<10} {cores:>6} "
                f"{human(r.get('rss')):>7} {human(r.get('io')):>7} {r.get('procs') or 0:>5}",
                SELECTED if i == sel else NORMAL,
            )
        )
    mine = [a for a in d.get("alerts", []) if a.get("host") == n["host"]]
    for a in mine[:3]:
        out.append((f"! [{a['severity']}] {a['rule']}: {a.get('summary') or ''}", ALERT))
    return out


def _job_view(state: State, d: dict[str, Any]) -> list[Line]:
    j = _job(d, state.job)
    if j is None:
        return [(f"job {state.job} is not (or no longer) running", DIM)]
    hist = (d.get("job_history") or {}).get(j["job"]) or {}
    since = time.strftime("%H:%M:%S", time.localtime(j["since"])) if j.get("since") else "?"
    name = j.get("name") or j.get("app") or "-"
    util = (
        f" of {j['cpus']} CPUs ({100 * j['cpu_cores'] / j['cpus']:.0f} %)" if j.get("cpus") else ""
    )
    out: list[Line] = [
        (
            f"job {j['job']}  user {j.get('user') or '-'}  name {name}"
            f"  {len(j['hosts'])} nodes  since {since}",
            NORMAL,
        ),
        _detail_spark("cores", f"{j['cpu_cores']:.2f}", hist.get("cores") or [], state, None),
        (
            f"  {j['cpu_cores']:.2f} cores busy{util}, memory {human(j.get('rss_bytes'), 'B')}, "
            f"I/O {human(j.get('io_bps'), 'B/s')}, GPU {pct(j.get('gpu_util_pct'))} %",
            NORMAL,
        ),
        _detail_spark("memory", human(j.get("rss_bytes"), "B"), hist.get("rss") or [], state, None),
        (
            f"{'NODE OF THIS JOB':<18} {'CPU%':>5} {'MEM%':>5} {'CORES':>6} {'JOB MEM':>8} "
            f"{'IO/s':>7}",
            HEAD,
        ),
    ]
    rows = table_rows(state, d)
    shown, first, sel = _window(state, rows, max(1, state.height - len(out) - 6))
    for i, n in enumerate(shown, start=first):
        use = (n.get("job_use") or {}).get(j["job"]) or {}
        cores = f"{use['cores']:.2f}" if isinstance(use.get("cores"), (int, float)) else "-"
        out.append(
            (
                f"{_fit(n['host'], 18):<18} {pct(n.get('cpu')):>5} {pct(n.get('mem')):>5} "
                f"{cores:>6} {human(use.get('rss')):>8} {human(use.get('io')):>7}",
                SELECTED if i == sel else NORMAL,
            )
        )
    mine = [a for a in d.get("alerts", []) if j["job"] in (a.get("jobs") or [])]
    for a in mine[:3]:
        out.append((f"! [{a['severity']}] {a['rule']}: {a.get('summary') or ''}", ALERT))
    return out


# -- keys -----------------------------------------------------------------------------------


def handle_key(state: State, key: str, data: dict[str, Any] | None) -> bool:
    """Apply one key; False to quit."""
    if state.editing is not None:
        if key == "enter":
            state.filter, state.editing = state.editing, None
            state.selected[state.view] = 0
        elif key == "esc":
            state.editing = None
        elif key == "backspace":
            state.editing = state.editing[:-1]
        elif len(key) == 1 and key.isprintable():
            state.editing += key
        return True
    if key in ("q", "Q"):
        return False
    if key in SORT_KEYS:
        new = SORT_KEYS[key]
        state.descending = not state.descending if new == state.sort else True
        state.sort = new
    elif key == "r":
        state.descending = not state.descending
    elif key == "tab":
        cur = state.view if state.view in VIEWS else "nodes"
        state.view = VIEWS[(VIEWS.index(cur) + 1) % len(VIEWS)]
        state.back.clear()
    elif key == "a":
        state.view = "alerts"
        state.back.clear()
    elif key == "/":
        state.editing = state.filter
    elif key in ("down", "j"):
        state.selected[state.view] = state.selected.get(state.view, 0) + 1
    elif key in ("up", "k"):
        state.selected[state.view] = max(0, state.selected.get(state.view, 0) - 1)
    elif key == "pgdn":
        state.selected[state.view] = state.selected.get(state.view, 0) + state.height - 8
    elif key == "pgup":
        state.selected[state.view] = max(0, state.selected.get(state.view, 0) - state.height + 8)
    elif key in ("enter", "right", "l") and data is not None:
        _drill(state, data)
    elif key in ("esc", "backspace", "left", "h"):
        if state.back:
            state.view, state.node, state.job = state.back.pop()
        elif state.filter:
            state.filter = ""
        elif state.view not in ("nodes",):
            state.view = "nodes"
    return True


def _drill(state: State, data: dict[str, Any]) -> None:
    rows = table_rows(state, data)
    if not rows:
        return
    row = rows[_selected(state, len(rows))]
    here = (state.view, state.node, state.job)
    if state.view in ("nodes", "job"):
        state.back.append(here)
        state.view, state.node = "node", row["host"]
    elif state.view in ("jobs", "node"):
        state.back.append(here)
        state.view, state.job = "job", row["job"]
    elif state.view == "alerts":
        if row.get("host"):
            state.back.append(here)
            state.view, state.node = "node", row["host"]
        elif row.get("jobs"):
            state.back.append(here)
            state.view, state.job = "job", row["jobs"][0]
    state.selected[state.view] = 0


# -- running --------------------------------------------------------------------------------


class Fetcher:
    """Polls the source once per interval in a thread of its own."""

    def __init__(self, source: Any, interval: float, request: Callable[[], dict[str, Any]]):
        self.source = source
        self.interval = interval
        self.request = request
        self.data: dict[str, Any] | None = None
        self.error: str | None = None
        self.version = 0
        self.changed = threading.Event()
        self._stop = threading.Event()
        self._poke = threading.Event()
        self._thread = threading.Thread(target=self._run, name="para-top-fetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.data = self.source.poll(self.request())
                self.error = None
            except ParaError as e:
                self.error = e.message
            except Exception as e:  # shown on screen; the next poll tries again
                self.error = f"{type(e).__name__}: {e}"
            self.version += 1
            self.changed.set()
            self._poke.wait(self.interval)
            self._poke.clear()

    def poke(self) -> None:
        """Poll again now (the view changed and needs other histories)."""
        self._poke.set()

    def stop(self) -> None:
        self._stop.set()
        self._poke.set()
        self._thread.join(10.0)


_CURSES_KEYS: dict[int, str] = {}


def _key_name(k: Any) -> str | None:
    import curses

    if not _CURSES_KEYS:
        _CURSES_KEYS.update(
            {
                curses.KEY_UP: "up",
                curses.KEY_DOWN: "down",
                curses.KEY_LEFT: "left",
                curses.KEY_RIGHT: "right",
                curses.KEY_ENTER: "enter",
                curses.KEY_BACKSPACE: "backspace",
                curses.KEY_NPAGE: "pgdn",
                curses.KEY_PPAGE: "pgup",
                curses.KEY_RESIZE: "resize",
            }
        )
    if isinstance(k, int):
        return _CURSES_KEYS.get(k)
    return {
        "\n": "enter",
        "\r": "enter",
        "\x1b": "esc",
        "\x7f": "backspace",
        "\b": "backspace",
        "\t": "tab",
    }.get(k, k)


def run_curses(source: Any, state: State, interval: float) -> None:
    import curses

    holder: dict[str, Any] = {"data": None}
    fetcher = Fetcher(source, interval, lambda: state.request(holder["data"]))

    def main(scr: Any) -> None:
        try:
            curses.curs_set(0)
        except curses.error:
            pass
        scr.timeout(100)
        styles = {
            NORMAL: curses.A_NORMAL,
            HEAD: curses.A_REVERSE,
            SELECTED: curses.A_BOLD | curses.A_REVERSE,
            ALERT: curses.A_BOLD,
            DIM: curses.A_DIM,
        }
        shown = -1
        dirty = True
        while True:
            if fetcher.version != shown:
                shown = fetcher.version
                holder["data"] = fetcher.data
                dirty = True
            if dirty:
                h, w = scr.getmaxyx()
                state.height, state.width = h, w - 1  # the last column scrolls some terminals
                scr.erase()
                for y, (text, style) in enumerate(
                    render(state, holder["data"], source.label, fetcher.error)
                ):
                    try:
                        scr.addstr(y, 0, text, styles[style])
                    except curses.error:
                        pass
                scr.refresh()
                dirty = False
            try:
                k = scr.get_wch()
            except curses.error:
                continue  # no key within the timeout
            name = _key_name(k)
            if name is None:
                continue
            if name == "resize":
                dirty = True
                continue
            before = state.request(holder["data"])
            if not handle_key(state, name, holder["data"]):
                return
            if state.request(holder["data"]) != before:
                fetcher.poke()
            dirty = True

    try:
        curses.wrapper(main)
    except KeyboardInterrupt:
        pass
    finally:
        fetcher.stop()


def print_once(source: Any, state: State, interval: float) -> None:
    """One screen as plain text on stdout (scripts, or no terminal)."""
    data = source.poll(state.request(None))
    deadline = time.monotonic() + 3 * interval + 2
    # rates need two samples of a node: wait for them (a collector has them already)
    while time.monotonic() < deadline and (
        not data.get("nodes") or all(n.get("cpu") is None for n in data["nodes"])
    ):
        time.sleep(min(interval, 0.25))
        data = source.poll(state.request(data))
    data = source.poll(state.request(data))
    for text, _ in render(state, data, source.label):
        click.echo(text.rstrip())


def open_source(
    collector: str | tuple[str, ...] | list[str] | None,
    ca: str | None,
    cert: str | None,
    key: str | None,
    token_file: str | None,
    insecure: bool,
    spool: str | None,
    config: str | None,
    sample_here: bool,
    interval: float,
) -> Any:
    from para.analyzer import topdata

    urls = [collector] if isinstance(collector, str) else list(collector or [])
    if urls:
        return topdata.collector_source(urls, ca, cert, key, token_file, insecure)
    if not sample_here:
        if spool is None:
            from para.agent import config as cfgmod

            spool_dir = cfgmod.load(config).spool_dir
        else:
            spool_dir = Path(spool)
        doc = topdata.read_status(spool_dir)
        if topdata.agent_running(doc):
            assert doc is not None
            return topdata.AgentSource(spool_dir, doc)
        if spool is not None:
            raise ParaError(
                f"no agent is running with the spool {spool}",
                hint="leave out --spool to sample this node from para top itself",
            )
    return topdata.SelfSource(interval)


@click.command("top", context_settings=CONTEXT)
@click.option(
    "--collector",
    metavar="URL",
    multiple=True,
    help="The cluster, from this collector (grpc+tls://HOST:8815); needs a reader's credential. "
    "Repeat it for sharded collectors: every shard's nodes as one cluster.",
)
@click.option(
    "--shards-from",
    metavar="FILE",
    help="Every collector shard an agent configuration names ([collector] url and fallback), "
    "read as one cluster (your own reader's credential still needed).",
)
@click.option("--ca", metavar="FILE", help="CA of the collector's certificate.")
@click.option("--cert", metavar="FILE", help="Your reader certificate (mutual TLS).")
@click.option("--key", metavar="FILE", help="Its private key.")
@click.option("--token-file", metavar="FILE", help="A reader token instead (--auth token).")
@click.option("--insecure", is_flag=True, help="Allow a plaintext grpc+tcp:// collector.")
@click.option("--spool", metavar="DIR", help="The local agent's spool (default: its config's).")
@click.option("-c", "--config", metavar="FILE", help="The local agent's configuration file.")
@click.option(
    "--self",
    "sample_here",
    is_flag=True,
    help="Sample this node from para top even if an agent runs.",
)
@click.option(
    "-i",
    "--interval",
    type=float,
    default=1.0,
    show_default=True,
    help="Seconds between refreshes.",
)
@click.option("-s", "--sort", type=click.Choice(list(SORT_NAMES)), default="cpu", show_default=True)
@click.option(
    "-f",
    "--filter",
    "filter_",
    metavar="TEXT",
    default="",
    help="Show nodes and jobs matching TEXT (a substring, or a glob: gpu*).",
)
@click.option("--jobs", "jobs_view", is_flag=True, help="Start in the jobs view.")
@click.option("--once", is_flag=True, help="Print one screen as text and exit.")
def top_command(
    collector: tuple[str, ...],
    shards_from: str | None,
    ca: str | None,
    cert: str | None,
    key: str | None,
    token_file: str | None,
    insecure: bool,
    spool: str | None,
    config: str | None,
    sample_here: bool,
    interval: float,
    sort: str,
    filter_: str,
    jobs_view: bool,
    once: bool,
) -> None:
    """The cluster's nodes and jobs (or this node's), live, refreshed every second.

    \b
    Keys: c m i n g   sort by CPU, memory, I/O, network, GPU (again: reverse)
          tab         nodes -> jobs -> alerts      a  alerts
          / TEXT      filter (enter applies, esc cancels)
          up/down     select      enter  open the node or job      esc  back
          q           quit
    Without --collector: this node, from its agent, else sampled by para top itself.
    """
    import locale
    import shutil
    import sys

    if interval < 0.1:
        raise UsageError("--interval must be at least 0.1 s")
    locale.setlocale(locale.LC_ALL, "")
    enc = (locale.getpreferredencoding(False) or "").lower().replace("-", "")
    state = State(
        sort=sort, filter=filter_, view="jobs" if jobs_view else "nodes", unicode=enc == "utf8"
    )
    if not once and not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("para top needs a terminal", hint="use --once to print one screen")
    if shards_from:
        from para.analyzer.topdata import shards_of

        urls, shard_ca, shard_insecure = shards_of(shards_from)
        collector, ca, insecure = (*collector, *urls), ca or shard_ca, insecure or shard_insecure
    source = open_source(
        collector, ca, cert, key, token_file, insecure, spool, config, sample_here, interval
    )
    try:
        if once:
            size = shutil.get_terminal_size((80, 24))
            state.width, state.height = size.columns, size.lines
            print_once(source, state, interval)
        else:
            run_curses(source, state, interval)
    finally:
        source.close()
