"""The agent's live view of its own node: alert rules evaluated on its samples, notified by the
agent itself when no collector is reachable, and the optional `/metrics` endpoint.

Configured by two tables of agent.toml (docs/alerts.md):

    [alerts]
    rules = "/etc/para/alerts.toml"   # the same file as the collector's
    fallback_after = 30               # seconds without reaching the collector
    [metrics]
    listen = "127.0.0.1:9466"

The rules are evaluated all the time (their durations and baselines must be warm when they
are needed), in a thread of their own fed by the sampling thread (`push`, a deque append).
Notifications go out only while the collector cannot see this node: no `[collector]`
table, no live stream, or no live push acknowledged for `fallback_after` seconds.  Every
alert the agent notified is written into its own samples as an `alert` event (the segment
carries it to the database; the live stream carries it to the collector, which then does
not notify it a second time).  Bottleneck rules need the analyzer: only the collector
evaluates them.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from para.agent.samplers.base import event
from para.agent.samplers.system import clock_ticks
from para.errors import ParaError
from para.live import openmetrics, rules
from para.live.engine import Engine
from para.live.metrics import HostState, Snapshot
from para.live.sinks import Dispatcher

ALERT_KEYS: dict[str, tuple[tuple[type, ...], Any, str]] = {
    "rules": ((str,), None, "the alert rules file (docs/alerts.md)"),
    "fallback_after": ((int, float), 30, "seconds without reaching the collector"),
    "always": ((bool,), False, "notify even when the collector is reachable"),
}
METRICS_KEYS: dict[str, tuple[tuple[type, ...], Any, str]] = {
    "enabled": ((bool,), True, "serve /metrics"),
    "listen": ((str,), openmetrics.DEFAULT_AGENT_LISTEN, "address of /metrics (HOST:PORT)"),
}
ANNOUNCE_EVERY_S = 30.0
SAVE_EVERY_S = 300.0
QUEUE_MAX = 600


def validate(table: str, body: dict[str, Any]) -> list[str]:
    """Problems of the [alerts] or [metrics] table, each naming its key."""
    keys = ALERT_KEYS if table == "alerts" else METRICS_KEYS
    out = []
    for k, v in body.items():
        if k not in keys:
            out.append(f"{table}.{k}: unknown key (known: {', '.join(sorted(keys))})")
            continue
        types = keys[k][0]
        if isinstance(v, bool) and bool not in types or not isinstance(v, types):
            out.append(f"{table}.{k}: expected {' or '.join(t.__name__ for t in types)}, got {v!r}")
    if table == "alerts":
        path = body.get("rules")
        if not isinstance(path, str):
            out.append('alerts.rules: missing (e.g. rules = "/etc/para/alerts.toml")')
        else:
            try:
                rules.load(path)
            except ParaError as e:
                out.append(f"alerts.rules: {e.message}")
    if table == "metrics" and isinstance(body.get("listen"), str):
        try:
            openmetrics.parse_listen(body["listen"])
        except ParaError as e:
            out.append(f"metrics.listen: {e.message}")
    return out


class NodeLive:
    def __init__(
        self,
        host: str,
        alerts: dict[str, Any] | None,
        metrics: dict[str, Any] | None,
        state_dir: Path,
        log: Callable[[str], None],
        shipper: Callable[[], Any],
        counters: Callable[[], dict[str, float]] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.host = host
        self.log = log
        self.shipper = shipper
        self.counters = counters
        self.clock = clock
        a = {k: alerts.get(k, d) for k, (_, d, _) in ALERT_KEYS.items()} if alerts else None
        self.ruleset = rules.load(a["rules"]) if a else rules.empty()
        self.fallback_after = float(a["fallback_after"]) if a else 30.0
        self.always = bool(a["always"]) if a else False
        self.state = HostState(host, self.ruleset.wanted(), user_hz=clock_ticks())
        self.dispatcher = Dispatcher(self.ruleset.sinks, log)
        self.engine = Engine(self.ruleset, self._on_note, source=f"agent:{host}", clock=clock)
        self.baselines = state_dir / "alert-baselines.json"
        self._load_baselines()
        self._samples: deque[tuple[int, dict[str, Any]]] = deque(maxlen=QUEUE_MAX)
        self._events: deque[list[Any]] = deque()
        self._open: dict[str, dict[str, Any]] = {}  # alerts we notified that are still firing
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._last_sent = -1
        self._last_ok = time.monotonic()
        self._announced = clock()
        self.fallback = False
        self.last: Snapshot | None = None
        self.counts = {"samples": 0, "notes": 0, "notified": 0, "suppressed": 0}
        self.metrics: openmetrics.MetricsServer | None = None
        m = {k: metrics.get(k, d) for k, (_, d, _) in METRICS_KEYS.items()} if metrics else None
        if m and m["enabled"]:
            self.metrics = openmetrics.MetricsServer(m["listen"], self.families)
            log(f"serving /metrics on http://{self.metrics.address}/metrics")
            sh = shipper()
            if sh is not None and getattr(sh.cfg, "live", False):
                # the same series, twice in Prometheus if both are scraped
                log(
                    "this node's live samples also reach the collector, whose /metrics serves "
                    "the same series: have Prometheus scrape the collector or the agents, not "
                    "both (docs/prometheus.md)"
                )
        self._thread = threading.Thread(target=self._run, name="para-agent-live", daemon=True)
        self._thread.start()
        if self.ruleset.rules:
            n_window = sum(1 for r in self.ruleset.rules if r.type in ("bottleneck", "job"))
            log(
                f"alerts: {len(self.ruleset.rules)} rules from {a['rules'] if a else '?'}"
                + (
                    f" ({n_window} bottleneck and job rules left to the collector)"
                    if n_window
                    else ""
                )
                + f"; notified from here when the collector is unreachable for "
                f"{self.fallback_after:g} s"
            )

    # -- the sampling thread's side (cheap) ------------------------------------------------
    def push(self, t_ms: int, rows: dict[str, Any]) -> None:
        self._samples.append((t_ms, rows))
        self._wake.set()

    def take_events(self) -> list[list[Any]]:
        """Alert events to write with the next sample."""
        out = []
        while self._events:
            out.append(self._events.popleft())
        return out

    # -- the evaluation thread -------------------------------------------------------------
    def _run(self) -> None:
        next_tick = next_save = 0.0
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            try:
                while self._samples:
                    t_ms, rows = self._samples.popleft()
                    if self.state.last is not None and t_ms <= self.state.last.t_ms:
                        continue
                    snap = self.state.update(t_ms, rows)
                    with self._lock:
                        self.last = snap
                        self.fallback = self._unreachable()
                        self.engine.observe(snap)
                    self.counts["samples"] += 1
                now = self.clock()
                if now >= next_tick:
                    next_tick = now + 1.0
                    with self._lock:
                        self.engine.tick(now)
                        self._announce(now)
                if now >= next_save:
                    next_save = now + SAVE_EVERY_S
                    self._save_baselines()
            except Exception as e:  # never take the agent down
                self.log(f"alert evaluation failed (goes on): {type(e).__name__}: {e}")

    def _unreachable(self) -> bool:
        if self.always:
            return True
        sh = self.shipper()
        if sh is None or not getattr(sh.cfg, "live", False):
            return True  # no collector sees this node's samples as they come
        sent = int(sh.live_counts.get("sent", 0))
        now = time.monotonic()
        if sent != self._last_sent:
            self._last_sent = sent
            self._last_ok = now
        return now - self._last_ok >= self.fallback_after

    def _on_note(self, note: dict[str, Any], notify: bool) -> None:
        self.counts["notes"] += 1
        if not notify:
            return
        aid = note["id"]
        ours = aid in self._open
        if not self.fallback and not ours:
            self.counts["suppressed"] += 1  # the collector sees us: it notifies
            return
        if not self.fallback and ours and note["event"] != "resolved":
            return
        self.counts["notified"] += 1
        self.dispatcher.send(note, self.engine.rules.by_name(note["rule"]).sinks)
        if note["state"] == "firing":
            self._open[aid] = note
        else:
            self._open.pop(aid, None)
        self._record(note)

    def _record(self, note: dict[str, Any]) -> None:
        t_ms = int(note["at"] * 1000)
        self._events.append(event(t_ms, "alert", note["rule"], **note))

    def _announce(self, now: float) -> None:
        """Alerts we notified that still fire, said again now and then: a collector that was
        away learns them from our live stream and does not notify them again."""
        if not self._open or now - self._announced < ANNOUNCE_EVERY_S:
            return
        self._announced = now
        active = {a["id"]: a for a in self.engine.active()}
        for aid in list(self._open):
            if aid in active:
                self._record(active[aid])
            else:
                self._open.pop(aid, None)

    # -- reading ---------------------------------------------------------------------------
    def families(self) -> list[openmetrics.Family]:
        with self._lock:
            snap = self.last
            alerts = self.engine.active()
        fams = openmetrics.node_families([snap] if snap is not None else [])
        fams.append(openmetrics.alert_family(alerts))
        fams += openmetrics.agent_families(self.host, self.counters() if self.counters else {})
        return fams

    def status(self) -> dict[str, Any]:
        with self._lock:
            active = self.engine.active()
        return {
            "rules": len(self.ruleset.rules),
            "notifying": self.fallback,
            "active": [
                {
                    "rule": a["rule"],
                    "severity": a["severity"],
                    "summary": a["summary"],
                    "since": a["started"],
                    "jobs": a["jobs"],
                }
                for a in active
            ],
            **self.counts,
            "sinks": self.dispatcher.status(),
            "metrics": self.metrics.address if self.metrics else None,
        }

    # -- state -----------------------------------------------------------------------------
    def _load_baselines(self) -> None:
        try:
            self.engine.import_baselines(json.loads(self.baselines.read_text()))
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            self.log(f"cannot read {self.baselines} ({e}): anomaly baselines start afresh")

    def _save_baselines(self) -> None:
        with self._lock:
            if not self.engine.baselines:
                return
            doc = self.engine.export_baselines()
        try:
            tmp = self.baselines.with_name(self.baselines.name + ".tmp")
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, self.baselines)
        except OSError as e:
            self.log(f"cannot save the anomaly baselines to {self.baselines}: {e}")

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(10.0)
        self._save_baselines()
        if self.metrics is not None:
            self.metrics.stop()
        self.dispatcher.stop(timeout=5.0)
