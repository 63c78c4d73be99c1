"""Continuous evaluation of alert rules on the live stream.

Every rule watches series: one per host (or per device or job of a host, when its metric
ranges over a table), or one per job for bottleneck rules.  Each series moves through

    ok --(condition true)--> pending --(true for `for`)--> FIRING --(false)--> clearing
                                                              ^                  |
                                                              +-----(true)-------+
    clearing --(false for `clear_for`)--> resolved (= ok)

so an alert fires once when its condition has held for its duration and resolves once when
it has stopped holding for `clear_for` (hysteresis: one sample on the right side of the line
does not end it).  An unknown value (no rate yet, a device that says nothing) moves nothing.
One alert per (rule, host, device or job) at a time: that is the deduplication.  A series
that changes between firing and resolved `flap_changes` times within `flap_window` is
flapping: one `flapping` notification, then silence until it has been stable for a whole
window, when its state at that moment is notified once.  A series that stops being reported
(device removed, job ended) resolves after the rule's `stale` time.

Time is the samples' own time (milliseconds of the node's clock), so evaluation does not
depend on when or in which batches samples arrive; only `absent` rules use the evaluator's
clock (the time samples were received).

`emit(note, notify)` receives every state change as a notification document (the same JSON a
webhook receives, docs/alerts.md); `notify` is False for changes the rules say to keep quiet
(flapping, an alert another evaluator already notified).  Everything is also kept: every
note goes to the store, notified or not.
"""

from __future__ import annotations

import json
import math
import string
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from para.live.metrics import LAYOUTS, Snapshot
from para.live.rules import JOB_METRICS, Rule, RuleSet, format_duration

OK, PENDING, FIRING, CLEARING = "ok", "pending", "firing", "clearing"
EVIDENCE_POINTS = 60
NOTE_VERSION = 1
SEVERITY_RANK = {"high": 0, "medium": 1, "low": 2}

Emit = Callable[[dict[str, Any], bool], None]


@dataclass
class Track:
    """One series of one rule."""

    rule: Rule
    host: str | None
    key: Any
    labels: dict[str, str]
    state: str = OK
    true_ms: int | None = None  # when the condition became true (pending)
    false_ms: int | None = None  # when it became false again (clearing)
    seen_ms: int = 0
    alert_id: str | None = None
    started_ms: int | None = None
    value: Any = None
    jobs: list[str] = field(default_factory=list)
    points: deque[tuple[int, Any]] = field(default_factory=lambda: deque(maxlen=EVIDENCE_POINTS))
    changes: deque[int] = field(default_factory=deque)
    flapping: bool = False
    last_notice_ms: int = 0
    told: bool = False  # the current alert was notified (by us or by another evaluator)
    adopted: bool = False  # opened by another evaluator, which also closes it
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Baseline:
    """Exponentially weighted mean and variance of a metric, with how much history it has."""

    seconds: float = 0.0
    mean: float = 0.0
    var: float = 0.0

    def update(self, x: float, dt_s: float, half_life_s: float, weight: float = 1.0) -> None:
        if self.seconds == 0.0:
            self.mean, self.var = x, 0.0
        else:
            a = 1.0 - 0.5 ** (weight * dt_s / half_life_s)
            d = x - self.mean
            self.mean += a * d
            self.var = (1.0 - a) * (self.var + a * d * d)
        self.seconds += dt_s * weight

    @property
    def sd(self) -> float:
        return math.sqrt(max(self.var, 0.0))


def pooled(parts: list[Baseline]) -> Baseline:
    """Several evaluators' baselines of one series as one: each weighted by its history."""
    w = sum(p.seconds for p in parts)
    if w <= 0.0:
        return Baseline()
    mean = sum(p.seconds * p.mean for p in parts) / w
    var = sum(p.seconds * (p.var + (p.mean - mean) ** 2) for p in parts) / w
    return Baseline(w, mean, var)


def fmt_value(v: Any, unit: str = "") -> str:
    """A value for people: bytes in binary units, rates per second, percentages."""
    if v is None:
        return "unknown"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if unit.startswith("bytes"):
        rest = unit[len("bytes") :]
        n = float(v)
        for u in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
            if abs(n) < 1024 or u == "PiB":
                return (f"{n:.0f} {u}" if u == "B" else f"{n:.1f} {u}") + rest
            n /= 1024
    text = f"{v:.3g}" if isinstance(v, float) else str(v)
    return f"{text} %" if unit == "%" else f"{text} {unit}".rstrip()


class _Fields(dict[str, Any]):
    """str.format_map fields where an unknown name stays as written."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _safe_format(template: str, fields: dict[str, Any]) -> str:
    try:
        return string.Formatter().vformat(template, (), _Fields(fields))
    except (ValueError, IndexError, KeyError, AttributeError):
        return template


class Engine:
    def __init__(
        self,
        ruleset: RuleSet,
        emit: Emit,
        *,
        source: str = "collector",
        cluster: str = "default",
        clock: Callable[[], float] = time.time,
    ):
        self.rules = ruleset
        self.emit = emit
        self.source = source
        self.cluster = cluster
        self.clock = clock
        self.series_rules = [r for r in ruleset.rules if r.type in ("threshold", "anomaly")]
        self.absent_rules = [r for r in ruleset.rules if r.type == "absent"]
        self.window_rules = [r for r in ruleset.rules if r.type == "bottleneck"]
        self.job_rules = [r for r in ruleset.rules if r.type == "job"]
        self.tracks: dict[tuple[str, str | None, Any], Track] = {}
        self.baselines: dict[tuple[str, str, Any], Baseline] = {}
        # other evaluators' baselines (the other collector shards'): judged with ours, each
        # learns only its own (shared_baselines)
        self.shared: dict[tuple[str, str, Any], list[Baseline]] = {}
        self._host_ms: dict[str, int] = {}
        self._received: dict[str, float] = {}
        self._rules_for: dict[str, list[Rule]] = {}
        self._held: dict[str, dict[str, int]] = {}  # host -> rule -> its tracks there
        # observe_many: each series rule's place, the simple threshold rules among them
        # grouped by the value they read, and per host which rules run on every sample
        self._rule_index = {r.name: j for j, r in enumerate(self.series_rules)}
        self._simple: set[int] = set()
        self._simple_groups: dict[tuple[str, str, bool], list[int]] = {}
        for j, r in enumerate(self.series_rules):
            m = r.metric
            if r.type == "threshold" and m is not None and m.simple is not None:
                self._simple.add(j)
                key = (m.simple[0], m.simple[1], m.table is not None)
                self._simple_groups.setdefault(key, []).append(j)
        self._plans: dict[str, tuple[list[int], set[int]]] = {}
        self.evaluations = 0
        self.notes = 0

    # -- samples ---------------------------------------------------------------------------
    def observe(self, snap: Snapshot, received: float | None = None) -> None:
        """One sample of a host, rule by rule (the agent's way; observe_many is the
        collector's, over many hosts at once, with the same outcome)."""
        self._arrive(snap, received)
        n = 0
        for rule in self._host_rules(snap.host):
            n += self._observe_rule(rule, snap)
        self.evaluations += n

    def observe_many(
        self,
        snaps: list[Snapshot],
        received: list[float] | None = None,
        after: Callable[[Snapshot], None] | None = None,
        failed: Callable[[Snapshot, Exception], None] | None = None,
    ) -> None:
        """Samples of many hosts (a second of the cluster), as observe() on each in turn
        (then `after(snap)`), with the same notes in the same order and the same state.

        The simple threshold rules (a bare value against numbers, most of a site's rules)
        are first judged column by column over all the samples at once: for each value,
        the samples where any series crosses the line (or holds something that is not a
        number).  A rule then runs on a sample only where that found something or where the
        rule already follows a series of that host; elsewhere a sample would move nothing,
        and only its evaluations are counted.  Every other rule runs on every sample.

        With `failed`, a sample whose rules raise is handed to it and the others go on (at
        the collector one node's sample must not stop every node's rules); without, it
        raises."""
        hits, counted = self._columns(snaps)
        index = self._rule_index
        n = counted
        for i, snap in enumerate(snaps):
            self._arrive(snap, None if received is None else received[i])
            host = snap.host
            plan = self._plans.get(host)
            if plan is None:
                plan = self._plans[host] = self._plan(host)
            always, simple = plan
            held = self._held.get(host)
            mine = hits[i] & simple if hits[i] else set()
            if held:
                mine |= {j for name in held if (j := index.get(name)) is not None and j in simple}
            run = sorted(mine.union(always)) if mine else always
            rules = self.series_rules
            try:
                for j in run:
                    rule = rules[j]
                    k = self._observe_rule(rule, snap)
                    if j not in simple:
                        n += k
                if after is not None:
                    after(snap)
            except Exception as e:
                if failed is None:
                    raise
                failed(snap, e)
        self.evaluations += n

    def _arrive(self, snap: Snapshot, received: float | None) -> None:
        host, t = snap.host, snap.t_ms
        self._host_ms[host] = max(t, self._host_ms.get(host, t))
        self._received[host] = self.clock() if received is None else received
        held = self._held.get(host) or _NONE
        for rule in self.absent_rules:
            if rule.name in held:
                tr = self.tracks.get((rule.name, host, None))
                if tr is not None and tr.state == FIRING:
                    tr.value = 0.0
                    self._resolve(tr, t, "samples arrive again")

    def _host_rules(self, host: str) -> list[Rule]:
        rules = self._rules_for.get(host)
        if rules is None:
            rules = self._rules_for[host] = [
                r for r in self.series_rules if r.metric is not None and r.matches_host(host)
            ]
        return rules

    def _plan(self, host: str) -> tuple[list[int], set[int]]:
        """The rules of `host` by their place among series_rules: those run on every sample,
        and the simple threshold rules (run where the columns found something)."""
        index = self._rule_index
        always: list[int] = []
        simple: set[int] = set()
        for r in self._host_rules(host):
            j = index[r.name]
            if j in self._simple:
                simple.add(j)
            else:
                always.append(j)
        return always, simple

    def _columns(self, snaps: list[Snapshot]) -> tuple[list[set[int]], int]:
        """For each sample, the simple threshold rules with a series that crosses its line
        (or holds what is not a number: judged by the rule itself); and how many series
        the simple rules evaluate over all the samples (what observe() would count)."""
        hits: list[set[int]] = [set() for _ in snaps]
        counted = 0
        rules = self.series_rules
        for (tname, col, keyed), members in self._simple_groups.items():
            # the column: each sample's value, or its devices' values (keyed), in a row;
            # owner[k]: the sample of flat[k]
            flat: list[Any]
            owner: list[int]
            tabs: list[Any] = []
            if tname == "host":
                flat = [s.host_values.get(col) for s in snaps]
                present = owner = list(range(len(snaps)))
            else:
                tabs = [s.tables.get(tname) for s in snaps]
                present = [i for i, t in enumerate(tabs) if t is not None]
                if not present:
                    continue
                if keyed:
                    flat, owner = [], []
                    for i in present:
                        rows = tabs[i].values()
                        flat.extend([r.get(col) for r in rows])
                        owner.extend([i] * len(rows))
                else:
                    flat = []
                    for i in present:
                        r0 = tabs[i].get(())
                        flat.append(None if r0 is None else r0.get(col))
                    owner = present
            sizes = None
            for j in members:
                rule = rules[j]
                if rule.hosts:
                    mine = [i for i in present if rule.matches_host(snaps[i].host)]
                else:
                    mine = present
                if keyed:
                    if sizes is None:
                        sizes = {i: len(tabs[i]) for i in present}
                    counted += sum(sizes[i] for i in mine)
                else:
                    counted += len(mine)
                above, below = rule.above, rule.below
                vals: list[Any] = flat
                if above is not None and below is not None:
                    found = [k for k, v in enumerate(vals) if v.__class__ not in _NUMS
                             or v > above or v < below]  # fmt: skip
                elif above is not None:
                    found = [k for k, v in enumerate(vals) if v.__class__ not in _NUMS
                             or v > above]  # fmt: skip
                elif below is not None:
                    found = [k for k, v in enumerate(vals) if v.__class__ not in _NUMS
                             or v < below]  # fmt: skip
                else:
                    found = [k for k, v in enumerate(flat) if v.__class__ not in _NUMS]
                for k in found:
                    x = flat[k]
                    if x is None or x is True or x is False or isinstance(x, str):
                        continue  # unknown: moves nothing
                    hits[owner[k]].add(j)
        return hits, counted

    def _observe_rule(self, rule: Rule, snap: Snapshot) -> int:
        """One rule on one sample; returns the series it evaluated."""
        host, t = snap.host, snap.t_ms
        held = self._held.get(host) or _NONE
        m = rule.metric
        assert m is not None
        items: Any
        simple = m.simple
        if simple is not None and rule.type == "threshold":
            # the common case, without closures: a bare value against numbers
            tname, col = simple
            if tname == "host":
                items = (((), None, snap.host_values.get(col)),)
            else:
                tab = snap.tables.get(tname)
                if tab is None:
                    return 0
                if m.table is None:
                    r0 = tab.get(())
                    items = (((), None, None if r0 is None else r0.get(col)),)
                else:
                    items = [(k, r, r.get(col)) for k, r in tab.items()]
        else:
            items = m.series(snap)
        name = rule.name
        when = rule.when
        anomaly = rule.type == "anomaly"
        above, below = rule.above, rule.below
        n = 0
        for key, row, value in items:
            n += 1
            extra = None
            if value is None or value is True or value is False or isinstance(value, str):
                cond: bool | None = None
                value = None
            elif anomaly:
                cond, extra = self._anomalous(rule, snap, key, float(value))
            else:
                cond = (above is not None and value > above) or (
                    below is not None and value < below
                )
            if not cond and name not in held:
                continue  # nothing to start, nothing to move
            if cond and when is not None:
                w = when.value(snap, row)
                cond = None if w is None else bool(w)
            tk = (name, host, key)
            tr = self.tracks.get(tk)
            if tr is None:
                if not cond:
                    continue
                tr = self._add(tk, Track(rule, host, key, self._labels(rule, key)))
                held = self._held[host]
            self._step(tr, cond, value, t, snap, extra)
        return n

    def _add(self, tk: tuple[str, str | None, Any], tr: Track) -> Track:
        if tk not in self.tracks and tk[1] is not None:
            held = self._held.setdefault(tk[1], {})
            held[tk[0]] = held.get(tk[0], 0) + 1
        self.tracks[tk] = tr
        return tr

    def _drop(self, tk: tuple[str, str | None, Any]) -> None:
        if self.tracks.pop(tk, None) is not None and tk[1] is not None:
            held = self._held.get(tk[1], {})
            left = held.get(tk[0], 0) - 1
            if left > 0:
                held[tk[0]] = left
            else:
                held.pop(tk[0], None)

    def _labels(self, rule: Rule, key: Any) -> dict[str, str]:
        labels = dict(rule.labels)
        table = rule.metric.table if rule.metric is not None else None
        if table is not None and key != ():
            names = LAYOUTS[table].keys
            values = key if isinstance(key, tuple) else (key,)
            labels.update({n: str(v) for n, v in zip(names, values)})
        return labels

    def _anomalous(
        self, rule: Rule, snap: Snapshot, key: Any, x: float
    ) -> tuple[bool | None, dict[str, Any] | None]:
        if rule.baseline == "app":
            job = snap.jobs.get(str(key))
            app = job.app if job is not None else None
            if app is None:
                return None, None  # an application we cannot name has no history to compare
            bk: tuple[str, str, Any] = (rule.name, f"app:{app}", None)
        else:
            bk = (rule.name, snap.host, key)
        base = self.baselines.get(bk)
        if base is None:
            base = self.baselines[bk] = Baseline()
        others = self.shared.get(bk)
        judged = pooled([base, *others]) if others else base
        dt = min(snap.dt_s or 1.0, 60.0)
        if judged.seconds < rule.warmup_s:
            base.update(x, dt, rule.history_s)
            return None, None
        d = x - judged.mean
        floor = rule.min_change / rule.deviation if rule.min_change else 0.0
        sd = max(judged.sd, floor, 1e-12)
        z = d / sd
        out = abs(d) >= rule.min_change and abs(z) >= rule.deviation
        if rule.direction == "above":
            out = out and d > 0
        elif rule.direction == "below":
            out = out and d < 0
        # what is unusual enters the baseline at a tenth of its weight: a lasting change
        # becomes the new normal after about ten half-lives, a passing one hardly counts
        base.update(x, dt, rule.history_s, 0.1 if out else 1.0)
        base_now = pooled([base, *others]) if others else base
        info = {
            "mean": round(base_now.mean, 6),
            "sd": round(sd, 6),
            "z": round(z, 3),
            "history_s": round(base_now.seconds, 1),
            "baseline": bk[1] if rule.baseline == "app" else "node",
        }
        return out, info

    # -- the state machine -----------------------------------------------------------------
    def _step(
        self,
        tr: Track,
        cond: bool | None,
        value: Any,
        t: int,
        snap: Snapshot | None,
        baseline: dict[str, Any] | None = None,
    ) -> None:
        tr.seen_ms = max(tr.seen_ms, t)
        if value is not None:
            tr.value = value
        if baseline is not None:
            tr.extra["baseline"] = baseline
        if snap is not None and tr.host is not None:
            tr.jobs = (
                [str(tr.key)]
                if tr.rule.metric is not None and tr.rule.metric.table == "job"
                else snap.job_ids()
            )
        if tr.flapping and tr.changes and t - tr.changes[-1] >= tr.rule.flap_window_s * 1000:
            self._unflap(tr, t)
        if cond is None:
            return
        if tr.state in (PENDING, FIRING, CLEARING) and value is not None:
            tr.points.append((t, value))
        rule = tr.rule
        if cond:
            tr.false_ms = None
            if tr.state == OK:
                tr.state, tr.true_ms = PENDING, t
                tr.points.clear()
                if value is not None:
                    tr.points.append((t, value))
            if tr.state == PENDING and t - (tr.true_ms or t) >= rule.for_s * 1000:
                self._fire(tr, t)
            elif tr.state == CLEARING:
                tr.state = FIRING
            elif (
                tr.state == FIRING
                and rule.repeat_s > 0
                and not tr.flapping
                and t - tr.last_notice_ms >= rule.repeat_s * 1000
            ):
                self._emit(tr, "reminder", t, True)
        else:
            tr.true_ms = None
            if tr.state == PENDING:
                tr.state = OK
                self._forget_if_idle(tr)
            elif tr.state == FIRING:
                tr.state, tr.false_ms = CLEARING, t
                if rule.clear_s <= 0:
                    self._resolve(tr, t)
            elif tr.state == CLEARING and t - (tr.false_ms or t) >= rule.clear_s * 1000:
                self._resolve(tr, t)
            elif tr.state == OK:
                self._forget_if_idle(tr)

    def _fire(self, tr: Track, t: int) -> None:
        tr.state = FIRING
        if tr.alert_id is None:
            tr.alert_id = uuid.uuid4().hex
            tr.started_ms = tr.true_ms if tr.true_ms is not None else t
            tr.told = False
        self._changed(tr, t)
        notify = not tr.flapping and not tr.told
        self._emit(tr, "firing", t, notify)
        if notify:
            tr.told = True

    def _resolve(self, tr: Track, t: int, why: str | None = None) -> None:
        if tr.alert_id is None:
            tr.state = OK
            return
        tr.state = OK
        tr.false_ms = tr.true_ms = None
        if why:
            tr.extra["resolved_because"] = why
        self._changed(tr, t)
        self._emit(tr, "resolved", t, not tr.flapping and tr.told and not tr.adopted, ended=t)
        tr.alert_id = None
        tr.started_ms = None
        tr.told = tr.adopted = False
        tr.extra.pop("resolved_because", None)
        self._forget_if_idle(tr)

    def _changed(self, tr: Track, t: int) -> None:
        window = tr.rule.flap_window_s * 1000
        tr.changes.append(t)
        while tr.changes and t - tr.changes[0] > window:
            tr.changes.popleft()
        if not tr.flapping and len(tr.changes) >= tr.rule.flap_changes:
            tr.flapping = True
            self._emit(tr, "flapping", t, True)

    def _unflap(self, tr: Track, t: int) -> None:
        tr.flapping = False
        tr.changes.clear()
        if tr.state in (FIRING, CLEARING):
            # stable again while firing: one notification for the alert as it stands
            self._emit(tr, "firing", t, True, note="stable again after flapping")
            tr.told = True

    def _forget_if_idle(self, tr: Track) -> None:
        if tr.state == OK and not tr.flapping and not tr.changes:
            self._drop((tr.rule.name, tr.host, tr.key))

    # -- time passing ----------------------------------------------------------------------
    def tick(self, now: float | None = None) -> None:
        """Absent hosts, series no longer reported, and the end of flapping."""
        now = self.clock() if now is None else now
        for rule in self.absent_rules:
            for host, rx in self._received.items():
                if not rule.matches_host(host):
                    continue
                silent = now - rx
                if silent < rule.for_s:
                    continue
                tk = (rule.name, host, None)
                tr = self.tracks.get(tk)
                if tr is None:
                    tr = self._add(tk, Track(rule, host, None, dict(rule.labels)))
                tr.value = round(silent, 1)
                if tr.state != FIRING:
                    t = int(rx * 1000 + rule.for_s * 1000)
                    tr.true_ms = int(rx * 1000)
                    tr.state = PENDING
                    self._fire(tr, t)
        for tr in list(self.tracks.values()):
            rule = tr.rule
            if rule.type in ("bottleneck", "job"):
                # a job whose windows (or totals) are no longer judged (it ended while we
                # were away, or this evaluator no longer sees it)
                limit = max(3 * rule.every_s, 600.0) if rule.type == "bottleneck" else rule.stale_s
                quiet = now * 1000 - tr.seen_ms > limit * 1000
                if quiet and tr.state in (FIRING, CLEARING):
                    self._resolve(tr, int(now * 1000), "the job is no longer evaluated")
                continue
            if rule.type == "absent" or tr.host is None:
                continue
            host_ms = self._host_ms.get(tr.host, tr.seen_ms)
            gone = host_ms - tr.seen_ms > rule.stale_s * 1000
            if tr.flapping and tr.changes and host_ms - tr.changes[-1] >= rule.flap_window_s * 1e3:
                self._unflap(tr, host_ms)
            if not gone:
                continue
            if tr.state in (FIRING, CLEARING):
                self._resolve(tr, host_ms, "no data: the series is no longer reported")
            elif tr.state == PENDING:
                tr.state = OK
                self._forget_if_idle(tr)
            elif (
                tr.state == OK
                and tr.changes
                and host_ms - tr.changes[-1] > rule.flap_window_s * 1e3
            ):
                tr.changes.clear()
                tr.flapping = False
                self._forget_if_idle(tr)

    # -- windows (bottleneck rules, judged by the caller) ----------------------------------
    def report(
        self,
        rule: Rule,
        job: str,
        fired: bool | None,
        t_ms: int,
        value: Any = None,
        evidence: dict[str, Any] | None = None,
    ) -> None:
        """The outcome of a rule judged by the caller on a whole job: a bottleneck rule on
        the job's window (fired: at least min_severity), or a job rule on the job's totals
        over all its nodes; passed (False) or not evaluated (None)."""
        tk = (rule.name, None, job)
        tr = self.tracks.get(tk)
        if tr is None:
            if not fired:
                return
            tr = self._add(tk, Track(rule, None, job, {**rule.labels, "job": job}))
        tr.jobs = [job]
        if evidence is not None:
            tr.extra["analyzer" if rule.type == "bottleneck" else "job"] = evidence
        self._step(tr, fired, value, t_ms, None)

    def end_job(self, job: str, t_ms: int, rules: list[Rule] | None = None) -> None:
        """The job ended: its window and job-total alerts (or those of `rules`) resolve."""
        for rule in self.window_rules + self.job_rules if rules is None else rules:
            tr = self.tracks.get((rule.name, None, job))
            if tr is not None:
                if tr.state in (FIRING, CLEARING):
                    self._resolve(tr, t_ms, "the job ended")
                else:
                    self._drop((rule.name, None, job))

    def release_job(self, job: str, rules: list[Rule]) -> list[dict[str, Any]]:
        """Another evaluator judges the job's `rules` from now on: its tracks here end without
        a note, and the alerts open among them are returned for that evaluator (restore)."""
        out = []
        for rule in rules:
            tk = (rule.name, None, job)
            tr = self.tracks.get(tk)
            if tr is None:
                continue
            if tr.state in (FIRING, CLEARING) and tr.alert_id:
                out.append(self._note(tr, "firing", tr.seen_ms or int(self.clock() * 1000)))
            self._drop(tk)
        return out

    # -- alerts notified elsewhere ---------------------------------------------------------
    def adopt(self, note: dict[str, Any], sender: str | None = None) -> bool:
        """An alert another evaluator (the node's agent, while it could not reach us) notified:
        the same series here takes its id and is not notified a second time, neither when it
        fires nor when it resolves (whoever opened an alert closes it).

        `sender` is the host whose stream carried the note: a node speaks for itself only, so
        a note about another host (or about none) is refused (False), or any node could
        silence another's alerts."""
        if sender is not None and note.get("host") != sender:
            return False
        try:
            rule = self.rules.by_name(str(note["rule"]))
        except KeyError:
            return False
        key = _key_from(rule, note)
        tk = (rule.name, note.get("host"), key)
        tr = self.tracks.get(tk)
        if note.get("state") == "resolved":
            if tr is not None and tr.alert_id == note.get("id") and tr.state != FIRING:
                self._drop(tk)
            return True
        if tr is None:
            tr = self._add(tk, Track(rule, note.get("host"), key, dict(note.get("labels") or {})))
        if tr.state in (FIRING, CLEARING) and tr.told:
            return True  # we notified it ourselves
        tr.alert_id = str(note["id"])
        started = note.get("started")
        tr.started_ms = int(started * 1000) if isinstance(started, (int, float)) else None
        tr.told = tr.adopted = True
        tr.extra["adopted_from"] = note.get("source")
        if tr.state == OK:
            tr.state = PENDING
            tr.true_ms = tr.started_ms
        return True

    def restore(self, notes: list[dict[str, Any]]) -> int:
        """Alerts that were firing when the evaluator stopped (from the database): they stay
        open without a second notification and resolve when their condition clears."""
        n = 0
        for note in notes:
            try:
                rule = self.rules.by_name(str(note["rule"]))
            except KeyError:
                continue
            key = _key_from(rule, note)
            tk = (rule.name, note.get("host"), key)
            tr = Track(rule, note.get("host"), key, dict(note.get("labels") or {}))
            tr.state = FIRING
            tr.alert_id = str(note["id"])
            started = note.get("started")
            tr.started_ms = int(started * 1000) if isinstance(started, (int, float)) else None
            tr.seen_ms = int(note.get("at", 0) * 1000)
            tr.told = True
            tr.value = note.get("value")
            tr.jobs = list(note.get("jobs") or [])
            self._add(tk, tr)
            if note.get("host"):
                self._host_ms.setdefault(note["host"], tr.seen_ms)
            n += 1
        return n

    # -- reading ---------------------------------------------------------------------------
    def active(self) -> list[dict[str, Any]]:
        """The alerts firing now (and those clearing, not yet resolved)."""
        out = []
        for tr in self.tracks.values():
            if tr.state in (FIRING, CLEARING) and tr.alert_id:
                out.append(self._note(tr, "firing", tr.seen_ms or int(self.clock() * 1000)))
        out.sort(key=lambda n: (_SEV.get(n["severity"], 9), n["rule"], n.get("host") or ""))
        return out

    def export_baselines(self) -> dict[str, list[float]]:
        return {
            json.dumps([r, h, k]): [b.seconds, b.mean, b.var]
            for (r, h, k), b in self.baselines.items()
        }

    def import_baselines(self, doc: dict[str, list[float]]) -> None:
        """Baselines saved by export_baselines."""
        self.baselines.update(baselines_of(doc))

    def absorb_baselines(self, parsed: list[BaselineItem], age_s: float) -> None:
        """Another evaluator's baselines (baselines_of), written `age_s` ago, added to ours:
        each weighted by its history, halved every half-life of its rule since."""
        for bk, b in self._aged(parsed, age_s):
            mine = self.baselines.get(bk)
            self.baselines[bk] = pooled([mine, b]) if mine is not None else b

    def shared_baselines(
        self, others: list[tuple[list[BaselineItem], float]]
    ) -> dict[tuple[str, str, Any], list[Baseline]]:
        """The other evaluators' baselines (baselines_of, and how long ago each was written)
        as `shared` holds them: judged with ours once put there, ours learning alone.  Reads
        only the rules: made outside the engine's lock, put in under it."""
        shared: dict[tuple[str, str, Any], list[Baseline]] = {}
        for parsed, age_s in others:
            for bk, b in self._aged(parsed, age_s):
                shared.setdefault(bk, []).append(b)
        return shared

    def _aged(self, parsed: list[BaselineItem], age_s: float) -> list[BaselineItem]:
        decay: dict[str, float] = {}
        for r in self.rules.rules:
            if r.type == "anomaly":
                decay[r.name] = 0.5 ** (max(0.0, age_s) / r.history_s)
        out = []
        for bk, b in parsed:
            f = decay.get(bk[0])  # none: a rule no longer in our rules
            if f is not None and b.seconds * f > 0.0:
                out.append((bk, Baseline(b.seconds * f, b.mean, b.var)))
        return out

    # -- notes -----------------------------------------------------------------------------
    def _emit(
        self,
        tr: Track,
        event: str,
        t: int,
        notify: bool,
        ended: int | None = None,
        note: str | None = None,
    ) -> None:
        doc = self._note(tr, event, t, ended=ended, remark=note)
        if notify:
            tr.last_notice_ms = t
        self.notes += 1
        self.emit(doc, notify)

    def _note(
        self, tr: Track, event: str, t: int, ended: int | None = None, remark: str | None = None
    ) -> dict[str, Any]:
        rule = tr.rule
        state = "resolved" if event == "resolved" else "firing"
        started = tr.started_ms if tr.started_ms is not None else t
        evidence: dict[str, Any] = {
            "text": self._evidence_text(tr, event),
            "points": [[p[0] / 1000, _round(p[1])] for p in list(tr.points)[-EVIDENCE_POINTS:]],
        }
        for k in ("baseline", "analyzer", "job", "resolved_because", "adopted_from"):
            if k in tr.extra:
                evidence[k] = tr.extra[k]
        if remark:
            evidence["remark"] = remark
        doc: dict[str, Any] = {
            "version": NOTE_VERSION,
            "id": tr.alert_id or uuid.uuid4().hex,
            "event": event,
            "state": state,
            "rule": rule.name,
            "type": rule.type,
            "severity": rule.severity,
            "cluster": self.cluster,
            "source": self.source,
            "host": tr.host,
            "labels": dict(tr.labels),
            "jobs": list(tr.jobs),
            "metric": _metric_name(rule),
            "value": _round(tr.value),
            "unit": _unit(rule),
            "threshold": rule.threshold() if rule.type in ("threshold", "job") else {},
            "for_s": rule.for_s,
            "started": started / 1000,
            "ended": None if ended is None else ended / 1000,
            "at": t / 1000,
            "flapping": tr.flapping,
            "summary": "",
            "evidence": evidence,
        }
        doc["summary"] = self._summary(tr, doc)
        return doc

    def _where(self, tr: Track) -> str:
        parts = [tr.host] if tr.host else []
        lab = {k: v for k, v in tr.labels.items() if k not in tr.rule.labels}
        table = tr.rule.metric.table if tr.rule.metric is not None else None
        for k, v in lab.items():
            if table == "job" or (tr.rule.type in ("bottleneck", "job") and k == "job"):
                parts.append(f"job {v}")
            else:
                parts.append(f"{k} {v}")
        return " ".join(parts) or "cluster"

    def _summary(self, tr: Track, doc: dict[str, Any]) -> str:
        rule = tr.rule
        if rule.summary:
            fields = {
                **doc,
                **doc["labels"],
                "value": fmt_value(tr.value, doc["unit"]),
                "for": format_duration(rule.for_s),
                "jobs": ", ".join(doc["jobs"]),
            }
            return _safe_format(rule.summary, fields)
        where = self._where(tr)
        unit = doc["unit"]
        value = fmt_value(tr.value, unit)
        jobs = ""
        if doc["jobs"] and "job" not in tr.labels and rule.type != "absent":
            jobs = f" (job {', '.join(doc['jobs'])} running)"
        ended = doc["event"] == "resolved"
        if rule.type == "absent":
            if ended:
                return f"{where} sends samples again"
            return f"{where} has sent no sample for {format_duration(round(tr.value or 0))}"
        if rule.type == "bottleneck":
            a = tr.extra.get("analyzer") or {}
            title = a.get("title") or rule.bottleneck
            if ended:
                why = tr.extra.get("resolved_because")
                return f"{where}: no longer {rule.bottleneck}" + (f" ({why})" if why else "")
            return (
                f"{where}: {title} ({rule.bottleneck}, {a.get('severity', '?')}): "
                f"{a.get('evidence', '')}".rstrip(": ")
            )
        metric = _metric_name(rule) or "?"
        if rule.type == "job":
            hosts = (tr.extra.get("job") or {}).get("hosts") or []
            where = f"{where} ({len(hosts)} node{'s' if len(hosts) != 1 else ''})"
            metric = f"its total {metric}"
        if rule.type == "anomaly":
            b = tr.extra.get("baseline") or {}
            base = "its application's runs" if rule.baseline == "app" else "this node's history"
            if ended:
                return f"{where}: {metric} back to {value}, within its usual range{jobs}"
            usual = fmt_value(b.get("mean"), unit)
            z = b.get("z") or 0.0
            side = "above" if z > 0 else "below"
            return (
                f"{where}: {metric} is {value}, {abs(z):.1f} standard deviations {side} "
                f"its usual {usual} ({base}){jobs}"
            )
        limits = []
        if rule.above is not None:
            limits.append(f"above {fmt_value(rule.above, unit)}")
        if rule.below is not None:
            limits.append(f"below {fmt_value(rule.below, unit)}")
        limit = " or ".join(limits)
        if ended:
            why = tr.extra.get("resolved_because")
            return (
                f"{where}: {metric} is {value}, no longer {limit}"
                + (f" ({why})" if why else "")
                + jobs
            )
        dur = f" for {format_duration(rule.for_s)}" if rule.for_s else ""
        return f"{where}: {metric} is {value}, {limit}{dur}{jobs}"

    def _evidence_text(self, tr: Track, event: str) -> str:
        rule = tr.rule
        pts = [p[1] for p in tr.points if isinstance(p[1], (int, float))]
        unit = _unit(rule)
        if rule.type == "bottleneck":
            a = tr.extra.get("analyzer") or {}
            return str(a.get("evidence", ""))
        if rule.type == "absent":
            return f"last sample received {tr.value} s before"
        if not pts:
            return ""
        span = (tr.points[-1][0] - tr.points[0][0]) / 1000 if len(tr.points) > 1 else 0.0
        text = (
            f"{len(pts)} samples over {span:.0f} s: min {fmt_value(min(pts), unit)}, "
            f"mean {fmt_value(sum(pts) / len(pts), unit)}, max {fmt_value(max(pts), unit)}"
        )
        b = tr.extra.get("baseline")
        if rule.type == "anomaly" and b:
            text += (
                f"; baseline mean {fmt_value(b['mean'], unit)}, standard deviation "
                f"{fmt_value(b['sd'], unit)}, from {b['history_s'] / 3600:.1f} h of history"
            )
        return text


_SEV = {"critical": 0, "warning": 1, "info": 2}
_NONE: dict[str, int] = {}
# observe_many: a value of another class is judged by the rule itself
_NUMS: frozenset[Any] = frozenset([int, float])


def _metric_name(rule: Rule) -> str | None:
    if rule.metric is not None:
        return rule.metric.text
    return rule.bottleneck or rule.aggregate


def _unit(rule: Rule) -> str:
    if rule.metric is not None:
        return rule.metric.unit
    return JOB_METRICS.get(rule.aggregate or "", "")


def _round(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 4) if math.isfinite(v) else None
    return v


BaselineItem = tuple[tuple[str, str, Any], Baseline]


def baselines_of(doc: Any, keys: dict[str, Any] | None = None) -> list[BaselineItem]:
    """The baselines of an export_baselines document; what does not decode is left out (a
    file another process wrote).  `keys`: the keys decoded before (the same ones come back
    every minute; decoding each is most of the cost), kept up to date here."""
    out: list[BaselineItem] = []
    if not isinstance(doc, dict):
        return out
    if keys is None:
        keys = {}
    elif len(keys) > 2_000_000:
        keys.clear()
    for k, v in doc.items():
        bk: Any = keys.get(k)
        if bk is None:
            try:
                r, h, key = json.loads(k)
            except (ValueError, TypeError):
                keys[k] = bk = False
            else:
                ok = isinstance(r, str) and isinstance(h, str)
                keys[k] = bk = (r, h, tuple(key) if isinstance(key, list) else key) if ok else False
        if bk is False:
            continue
        try:
            secs, mean, var = (float(x) for x in v)
        except (ValueError, TypeError):
            continue
        out.append((bk, Baseline(secs, mean, var)))
    return out


def _key_from(rule: Rule, note: dict[str, Any]) -> Any:
    """The series key of an alert document (its labels in the table's key order)."""
    labels = note.get("labels") or {}
    if rule.type in ("bottleneck", "job"):
        return labels.get("job")
    if rule.type == "absent":
        return None
    table = rule.metric.table if rule.metric is not None else None
    if table is None:
        return ()
    lay = LAYOUTS[table]
    vals = []
    for name in lay.keys:
        v = labels.get(name)
        col = next((c for c in _columns(table) if c[0] == name), None)
        if v is not None and col is not None and col[1] == "int":
            try:
                v = int(v)
            except ValueError:
                pass
        vals.append(v)
    return vals[0] if len(vals) == 1 else tuple(vals)


def _columns(table: str) -> list[tuple[str, str]]:
    from para.formats.schema import TABLES

    return [(c.name, c.type) for c in TABLES[table].columns]
