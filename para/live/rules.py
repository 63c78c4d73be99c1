"""Alert rules: a TOML file of `[[rule]]`s and `[[sink]]`s (docs/alerts.md has the reference).

```toml
[defaults]
for = "1m"                 # how long a condition must hold before the alert fires
sinks = ["log", "ops"]

[[sink]]
name = "ops"
type = "webhook"
url = "http://127.0.0.1:9000/hooks/para"

[[rule]]
name = "gpu-idle-in-job"
metric = "gpu.util_gpu"
below = 10
for = "5m"
when = "host.jobs > 0"     # only on a node that runs a job
```

Five types of rule: `threshold` (a metric above or below a number for a duration),
`anomaly` (a metric far from its own baseline: the node's, or the application's across its
runs), `bottleneck` (one of the analyzer's bottleneck ids, judged on a sliding window of a
running job), `absent` (a host that stopped sending), `job` (a running job's total over all
its nodes, whichever collector shard each node reports to, above or below a number).
`parse` checks everything and raises one ParaError listing every problem with its line.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Collection
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from para.errors import ParaError
from para.live import sinks as sinks_mod
from para.live.expr import Expr, ExprError, compile_expr

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

TYPES = ("threshold", "anomaly", "bottleneck", "absent", "job")
# what a `job` rule reads: a job's total over its nodes (para.live.shards.job_totals) -> unit
JOB_METRICS = {
    "cpu_cores": "cores",
    "cpu_util_pct": "%",
    "rss_bytes": "bytes",
    "io_bps": "bytes/s",
    "gpu_util_pct": "%",
    "nodes": "",
}
SEVERITIES = ("critical", "warning", "info")
ANALYZER_SEVERITIES = ("high", "medium", "low")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d|w)?\s*$")
_UNITS = {
    None: 1.0,
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}

DEFAULTS: dict[str, Any] = {
    "for": 60.0,
    "clear_for": None,  # None: the same as `for`, at least one sample
    "severity": "warning",
    "sinks": ["log"],
    "repeat": 0.0,
    "flap_window": 1800.0,
    "flap_changes": 6,
    "stale": 60.0,
}

COMMON = {
    "name",
    "type",
    "severity",
    "summary",
    "description",
    "sinks",
    "for",
    "clear_for",
    "repeat",
    "flap_window",
    "flap_changes",
    "hosts",
    "labels",
}
KEYS_BY_TYPE = {
    "threshold": COMMON | {"metric", "above", "below", "when"},
    "anomaly": COMMON
    | {"metric", "when", "baseline", "deviation", "min_change", "direction", "history", "warmup"},
    "bottleneck": COMMON | {"bottleneck", "window", "every", "min_severity"},
    "absent": COMMON,
    "job": COMMON | {"metric", "above", "below"},
}


def parse_duration(v: Any) -> float:
    """Seconds from 90, 1.5, "90s", "5m", "2h", "1d"; ValueError otherwise."""
    if isinstance(v, bool):
        raise ValueError(f"not a duration: {v!r}")
    if isinstance(v, (int, float)):
        if v < 0:
            raise ValueError("a duration cannot be negative")
        return float(v)
    if isinstance(v, str):
        m = _DURATION.match(v)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError(f'not a duration: {v!r} (e.g. 30, "30s", "5m", "2h", "1d")')


def format_duration(s: float) -> str:
    if s >= 86400 and s % 86400 == 0:
        return f"{s / 86400:g} d"
    if s >= 3600 and s % 3600 == 0:
        return f"{s / 3600:g} h"
    if s >= 60 and s % 60 == 0:
        return f"{s / 60:g} min"
    return f"{s:g} s"


@dataclass
class Rule:
    name: str
    type: str
    severity: str
    sinks: list[str]
    for_s: float
    clear_s: float
    repeat_s: float
    flap_window_s: float
    flap_changes: int
    summary: str | None = None
    description: str = ""
    hosts: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    metric: Expr | None = None
    when: Expr | None = None
    above: float | None = None
    below: float | None = None
    baseline: str = "node"
    deviation: float = 4.0
    min_change: float = 0.0
    direction: str = "both"
    history_s: float = 86400.0
    warmup_s: float = 900.0
    bottleneck: str | None = None
    window_s: float = 600.0
    every_s: float = 60.0
    min_severity: str = "low"
    aggregate: str | None = None  # a job rule's JOB_METRICS name
    stale_s: float = 60.0
    line: int | None = None

    def matches_host(self, host: str | None) -> bool:
        if not self.hosts or host is None:
            return True
        return any(fnmatchcase(host, p) for p in self.hosts)

    def threshold(self) -> dict[str, float]:
        out = {}
        if self.above is not None:
            out["above"] = self.above
        if self.below is not None:
            out["below"] = self.below
        return out


@dataclass
class RuleSet:
    rules: list[Rule]
    sinks: dict[str, sinks_mod.SinkConfig]
    metrics: dict[str, str]
    path: str = "<rules>"

    def wanted(self) -> dict[str, frozenset[str]]:
        """Columns of each table the rules read (what a HostState must convert)."""
        out: dict[str, set[str]] = {}
        for r in self.rules:
            for e in (r.metric, r.when):
                if e is not None:
                    for t, cs in e.refs.items():
                        if t != "host":
                            out.setdefault(t, set()).update(cs)
        return {t: frozenset(cs) for t, cs in out.items()}

    def by_name(self, name: str) -> Rule:
        for r in self.rules:
            if r.name == name:
                return r
        raise KeyError(name)


def empty() -> RuleSet:
    return RuleSet([], {"log": sinks_mod.SinkConfig("log", "log", {})}, {})


def load(path: str | Path, bottlenecks: Collection[str] | None = None) -> RuleSet:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ParaError(
            f"{p}: cannot read the alert rules: {e.strerror or e}",
            hint="docs/alerts.md has examples",
        ) from e
    return parse(text, str(p), bottlenecks)


def _lines(text: str) -> dict[tuple[str, int, str], int]:
    """(table, index in its array, key) -> line; key '' is the header itself."""
    where: dict[tuple[str, int, str], int] = {}
    counts: dict[str, int] = {}
    table, index = "", 0
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        m = re.match(r"^\[\[\s*([A-Za-z0-9_.-]+)\s*\]\]", s) or re.match(
            r"^\[\s*([A-Za-z0-9_.-]+)\s*\]", s
        )
        if m:
            table = m.group(1)
            if s.startswith("[["):
                index = counts.get(table, 0)
                counts[table] = index + 1
            else:
                index = 0
            where.setdefault((table, index, ""), n)
            continue
        k = re.match(r'^("[^"]*"|[A-Za-z0-9_-]+)\s*=', s)
        if k:
            where.setdefault((table, index, k.group(1).strip('"')), n)
    return where


class _Problems:
    def __init__(self, path: str, lines: dict[tuple[str, int, str], int]):
        self.path = path
        self.lines = lines
        self.items: list[str] = []

    def add(self, table: str, index: int, key: str, what: str, msg: str) -> None:
        line = self.lines.get((table, index, key)) or self.lines.get((table, index, ""))
        at = f"{self.path}:{line}" if line else self.path
        self.items.append(f"{at}: {what}: {msg}")

    def raise_if_any(self) -> None:
        if self.items:
            n = len(self.items)
            raise ParaError(
                f"{self.path}: {n} problem{'s' if n != 1 else ''} in the alert rules:\n  "
                + "\n  ".join(self.items),
                hint="docs/alerts.md describes every key, with examples",
            )


def parse(text: str, path: str = "<rules>", bottlenecks: Collection[str] | None = None) -> RuleSet:
    """The rules of a file.  `bottlenecks`: the analyzer's rule ids, checked when given (the
    collector); the agent leaves bottleneck rules to the collector."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ParaError(f"{path}: not valid TOML: {e}", hint="docs/alerts.md has examples") from e
    pr = _Problems(path, _lines(text))
    for top in doc:
        if top not in ("defaults", "metrics", "rule", "sink"):
            pr.add(top, 0, "", f"[{top}]", "unknown table (defaults, metrics, [[rule]], [[sink]])")
    defaults = dict(DEFAULTS)
    d = doc.get("defaults", {})
    if not isinstance(d, dict):
        pr.add("defaults", 0, "", "[defaults]", "must be a table")
        d = {}
    for k, v in d.items():
        if k not in DEFAULTS:
            pr.add(
                "defaults", 0, k, f"[defaults] {k}", f"unknown key (known: {', '.join(DEFAULTS)})"
            )
            continue
        err = _check_common(k, v, defaults)
        if err:
            pr.add("defaults", 0, k, f"[defaults] {k}", err)
    metrics = doc.get("metrics", {})
    if not isinstance(metrics, dict) or not all(isinstance(v, str) for v in metrics.values()):
        pr.add("metrics", 0, "", "[metrics]", 'must map names to expressions: name = "expr"')
        metrics = {}
    for name, text_ in metrics.items():
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            pr.add("metrics", 0, name, f"[metrics] {name}", "names are lowercase, digits and _")
            continue
        try:
            compile_expr(text_, metrics)
        except ExprError as e:
            pr.add("metrics", 0, name, f"[metrics] {name}", e.message)

    sinks: dict[str, sinks_mod.SinkConfig] = {"log": sinks_mod.SinkConfig("log", "log", {})}
    raw_sinks = doc.get("sink", [])
    if not isinstance(raw_sinks, list):
        pr.add("sink", 0, "", "[[sink]]", "write each sink as a [[sink]] table")
        raw_sinks = []
    for i, s in enumerate(raw_sinks):
        name = s.get("name") if isinstance(s, dict) else None
        what = f"[[sink]] {name or '#' + str(i + 1)}"
        if not isinstance(name, str) or not _NAME.match(name):
            pr.add("sink", i, "name", what, "needs a name (letters, digits, - _ .)")
            continue
        if name in sinks and name != "log":
            pr.add("sink", i, "name", what, "a sink of this name is defined above")
            continue
        typ = s.get("type")
        opts = {k: v for k, v in s.items() if k not in ("name", "type")}
        for key, msg in sinks_mod.validate(typ, opts):
            pr.add("sink", i, key or "type", what, msg)
        sinks[name] = sinks_mod.SinkConfig(name, str(typ), opts, pr.lines.get(("sink", i, "")))

    rules: list[Rule] = []
    raw_rules = doc.get("rule", [])
    if not isinstance(raw_rules, list):
        pr.add("rule", 0, "", "[[rule]]", "write each rule as a [[rule]] table")
        raw_rules = []
    seen: set[str] = set()
    for i, r in enumerate(raw_rules):
        rule = _rule(i, r, defaults, metrics, sinks, bottlenecks, pr)
        if rule is None:
            continue
        if rule.name in seen:
            pr.add("rule", i, "name", f"[[rule]] {rule.name}", "another rule has this name")
            continue
        seen.add(rule.name)
        rules.append(rule)
    pr.raise_if_any()
    return RuleSet(rules, sinks, metrics, path)


def _check_common(k: str, v: Any, into: dict[str, Any]) -> str | None:
    try:
        if k in ("for", "clear_for", "repeat", "flap_window", "stale"):
            into[k] = parse_duration(v)
        elif k == "severity":
            if v not in SEVERITIES:
                return f"must be one of {', '.join(SEVERITIES)}"
            into[k] = v
        elif k == "sinks":
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                return 'must be a list of sink names, e.g. ["log", "ops"]'
            into[k] = list(v)
        elif k == "flap_changes":
            if isinstance(v, bool) or not isinstance(v, int) or v < 2:
                return "must be a whole number, 2 or more"
            into[k] = v
    except ValueError as e:
        return str(e)
    return None


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def _rule(
    i: int,
    r: Any,
    defaults: dict[str, Any],
    metrics: dict[str, str],
    sinks: dict[str, Any],
    bottlenecks: Collection[str] | None,
    pr: _Problems,
) -> Rule | None:
    if not isinstance(r, dict):
        pr.add("rule", i, "", f"[[rule]] #{i + 1}", "must be a table")
        return None
    name = r.get("name")
    what = f"[[rule]] {name if isinstance(name, str) else '#' + str(i + 1)}"
    before = len(pr.items)
    if not isinstance(name, str) or not _NAME.match(name):
        pr.add("rule", i, "name", what, "needs a name (letters, digits, - _ ., up to 80)")
    typ = r.get("type", "threshold")
    if typ not in TYPES:
        pr.add("rule", i, "type", what, f"unknown type {typ!r} ({', '.join(TYPES)})")
        return None
    known = sorted(KEYS_BY_TYPE[typ])
    for k in r:
        if k not in KEYS_BY_TYPE[typ]:
            close = difflib.get_close_matches(k, known, n=1)
            hint = f"did you mean `{close[0]}`?" if close else f"known: {', '.join(known)}"
            pr.add("rule", i, k, what, f"unknown key for a {typ} rule ({hint})")
    vals = dict(defaults)
    if typ == "bottleneck":
        vals["for"] = 0.0  # the window already spans time
    if typ == "absent":
        vals["for"] = 120.0
    for k in ("for", "clear_for", "repeat", "flap_window", "flap_changes", "severity", "sinks"):
        if k in r:
            err = _check_common(k, r[k], vals)
            if err:
                pr.add("rule", i, k, what, err)
    for s in vals["sinks"]:
        if s not in sinks:
            pr.add("rule", i, "sinks", what, f"no sink named {s!r} (define it with [[sink]])")
    hosts = r.get("hosts", [])
    if isinstance(hosts, str):
        hosts = [hosts]
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        pr.add("rule", i, "hosts", what, 'must be host name patterns, e.g. ["gpu*"]')
        hosts = []
    labels = r.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        pr.add("rule", i, "labels", what, 'must be a table of strings, e.g. {team = "hpc"}')
        labels = {}
    summary = r.get("summary")
    if summary is not None and not isinstance(summary, str):
        pr.add("rule", i, "summary", what, "must be a string")
        summary = None
    clear = vals["clear_for"]
    rule = Rule(
        name=str(name),
        type=typ,
        severity=vals["severity"],
        sinks=vals["sinks"],
        for_s=vals["for"],
        clear_s=vals["for"] if clear is None else clear,
        repeat_s=vals["repeat"],
        flap_window_s=vals["flap_window"],
        flap_changes=vals["flap_changes"],
        summary=summary,
        description=str(r.get("description", "")),
        hosts=hosts,
        labels=dict(labels),
        stale_s=vals["stale"],
        line=pr.lines.get(("rule", i, "")),
    )

    def expr(key: str, required: bool) -> Expr | None:
        if key not in r:
            if required:
                pr.add("rule", i, "", what, f'needs `{key}` (e.g. {key} = "gpu.util_gpu")')
            return None
        try:
            return compile_expr(r[key], metrics)
        except ExprError as e:
            pr.add("rule", i, key, what, e.message)
            return None

    if typ in ("threshold", "anomaly"):
        rule.metric = expr("metric", True)
        rule.when = expr("when", False)
        if rule.metric and rule.when and rule.when.table not in (None, rule.metric.table):
            pr.add(
                "rule",
                i,
                "when",
                what,
                f"ranges over {rule.when.table}, the metric over "
                f"{rule.metric.table or 'hosts'}: aggregate it (max(), ...)",
            )
    if typ == "job":
        agg = r.get("metric")
        if agg not in JOB_METRICS:
            pr.add(
                "rule",
                i,
                "metric",
                what,
                f"a job rule reads a job's total over its nodes: one of {', '.join(JOB_METRICS)}",
            )
        rule.aggregate = agg if isinstance(agg, str) else None
    if typ in ("threshold", "job"):
        for k in ("above", "below"):
            if k in r:
                num = _number(r[k])
                if num is None:
                    pr.add("rule", i, k, what, "must be a number")
                setattr(rule, k, num)
        if "above" not in r and "below" not in r:
            pr.add("rule", i, "", what, "needs `above` or `below` (a number)")
    elif typ == "anomaly":
        base = r.get("baseline", "node")
        if base not in ("node", "app"):
            pr.add("rule", i, "baseline", what, 'must be "node" or "app"')
        rule.baseline = base
        if base == "app" and rule.metric is not None and rule.metric.table != "job":
            pr.add(
                "rule",
                i,
                "baseline",
                what,
                "an application baseline needs a per-job metric (job.cpu_util_pct, ...)",
            )
        for k, lo in (("deviation", 0.5), ("min_change", 0.0)):
            if k in r:
                num = _number(r[k])
                if num is None or num < lo:
                    pr.add("rule", i, k, what, f"must be a number, at least {lo:g}")
                else:
                    setattr(rule, k, num)
        direction = r.get("direction", "both")
        if direction not in ("above", "below", "both"):
            pr.add("rule", i, "direction", what, 'must be "above", "below" or "both"')
        rule.direction = direction
        for k, attr in (("history", "history_s"), ("warmup", "warmup_s")):
            if k in r:
                try:
                    setattr(rule, attr, parse_duration(r[k]))
                except ValueError as e:
                    pr.add("rule", i, k, what, str(e))
        if rule.history_s <= 0:
            pr.add("rule", i, "history", what, "must be longer than 0")
    elif typ == "bottleneck":
        bid = r.get("bottleneck")
        if not isinstance(bid, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", bid):
            pr.add("rule", i, "bottleneck", what, "needs a bottleneck id (e.g. io_wait_bound)")
        elif bottlenecks is not None and bid not in bottlenecks:
            pr.add(
                "rule",
                i,
                "bottleneck",
                what,
                f"no bottleneck {bid!r} (the analyzer's ids: {', '.join(sorted(bottlenecks))})",
            )
        rule.bottleneck = bid if isinstance(bid, str) else None
        for k, attr in (("window", "window_s"), ("every", "every_s")):
            if k in r:
                try:
                    setattr(rule, attr, parse_duration(r[k]))
                except ValueError as e:
                    pr.add("rule", i, k, what, str(e))
        if rule.window_s < 10:
            pr.add(
                "rule",
                i,
                "window",
                what,
                "must be at least 10 s (the analyzer judges nothing on fewer than 10 samples)",
            )
        if rule.every_s < 1:
            pr.add("rule", i, "every", what, "must be at least 1 s")
        sev = r.get("min_severity", "low")
        if sev not in ANALYZER_SEVERITIES:
            pr.add("rule", i, "min_severity", what, 'must be "high", "medium" or "low"')
        rule.min_severity = sev
    if len(pr.items) > before:
        return None
    return rule
