"""The collector's live view of the cluster: alert evaluation, what `para top` shows, and
the `/metrics` endpoint, all fed by the agents' live samples.

The Flight handler only queues what arrives (`ingest`, never blocks); one thread
(`para-alerts`) turns samples into per-second values (para.live.metrics), evaluates the
threshold, anomaly and absent rules on them (para.live.engine), keeps the last minutes of
each node and job for `para top`'s sparklines, and once a second looks at time (absent
nodes, stale series, jobs that ended).  Bottleneck rules judge a job's sliding window with
the analyzer (para/analyzer/window.py) in a thread of their own (`para-alerts-window`), so a
long analysis never delays the per-second rules.  Notifications leave through the sinks'
own threads (para.live.sinks) and every alert record is written to the database's `alerts`
table (alertdb.py) by `para-alert-store`.
"""

from __future__ import annotations

import base64
import json
import queue
import threading
import time
import traceback
import zlib
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from para.collector.alertdb import AlertStore
from para.collector.db import FeatureDB
from para.errors import ParaError
from para.live import engine as engine_mod
from para.live import openmetrics, rules, shards
from para.live.metrics import Snapshot
from para.live.sinks import Dispatcher
from para.live.view import LiveView
from para.live.wellformed import well_formed

QUEUE_MAX = 20000  # live messages waiting for evaluation (past it: dropped, counted)
QUEUE_BYTES = 256 << 20  # ... and their bytes of JSON, in all and per host (docs/collector.md)
QUEUE_BYTES_PER_HOST = 16 << 20
BASELINES_EVERY_S = 60.0


class BottleneckJudge(Protocol):
    """The analyzer's bottleneck rules on a job's window of live samples.  The analyzer sits
    downstream of the collector, so the command that starts the collector hands one in
    (para/cli.py gives para.analyzer.window.Judge); without it bottleneck rules are refused."""

    skip_tables: frozenset[str]  # tables the rules never read: not kept in the windows

    def rule_ids(self) -> list[str]: ...

    def judge(
        self, job: dict[str, Any], nodes: dict[str, list[tuple[int, dict[str, Any]]]]
    ) -> dict[str, dict[str, Any]]:
        """Outcome by rule id: status (fired, passed, not_evaluated), severity, value and
        evidence in words."""
        ...


def _take_nodes(nodes: dict[str, list[tuple[int, Any]]], doc: dict[str, Any]) -> int:
    """Another shard's samples of a job's nodes into `nodes`: a node known to two shards (it
    failed over) has its samples of both, each instant once (its window began on one shard and
    goes on on the other; taking one shard's samples judged it on part of its window).
    Another shard's file is trusted as this shard's memory is (the shards share the
    database), but not blindly: what does not decode is left out.  The time of its newest
    sample (ms)."""
    newest = 0
    hosts = doc.get("hosts")
    if not isinstance(hosts, dict):
        return newest
    for host, items in hosts.items():
        try:
            got = [(int(t), json.loads(zlib.decompress(base64.b64decode(b)))) for t, b in items]
        except (TypeError, ValueError, zlib.error):
            continue
        if not got:
            continue
        have = nodes.get(str(host))
        if have:
            by_t = dict(got)
            by_t.update(have)  # an instant both shards hold (a retried message): ours
            got = sorted(by_t.items(), key=lambda x: x[0])
        nodes[str(host)] = got
        newest = max(newest, got[-1][0])
    return newest


def severity_at_least(severity: str | None, minimum: str) -> bool:
    """Is an analyzer severity (high, medium, low) at least `minimum`?"""
    order = rules.ANALYZER_SEVERITIES
    return severity in order and order.index(severity) <= order.index(minimum)


class AlertService:
    def __init__(
        self,
        rules_path: str | Path | None,
        db: FeatureDB | None,
        cluster: str,
        log: Callable[[str], None],
        *,
        store: bool = True,
        clock: Callable[[], float] = time.time,
        judge: BottleneckJudge | None = None,
    ):
        self.log = log
        self.judge = judge
        self.cluster = cluster
        self.clock = clock
        self.db = db
        bottlenecks = judge.rule_ids() if judge is not None else None
        self.ruleset = rules.load(rules_path, bottlenecks) if rules_path else rules.empty()
        self.rules_path = str(rules_path) if rules_path else None
        window = [r.name for r in self.ruleset.rules if r.type == "bottleneck"]
        if window and judge is None:
            raise ParaError(
                f"{rules_path}: bottleneck rules ({', '.join(window)}) need the analyzer, "
                "which this collector was started without",
                hint="start it with the `para` command: para collector serve --alerts FILE",
            )
        self.wanted = self.ruleset.wanted()
        self.store = AlertStore(db, cluster, log) if (db is not None and store) else None
        self.dispatcher = Dispatcher(self.ruleset.sinks, log)
        self.engine = engine_mod.Engine(
            self.ruleset, self._on_note, source="collector", cluster=cluster, clock=clock
        )
        self.view = LiveView(self.wanted, clock)
        # job rules: judged on each job's totals over every shard, by one shard
        # (shardlink.py); without a database, on this collector's own nodes
        self.job_rules = list(self.engine.job_rules)
        self.window_rules = [r for r in self.ruleset.rules if r.type == "bottleneck"]
        self.link: Any = None
        if (self.job_rules or self.window_rules) and db is not None:
            from para.collector.shardlink import ShardLink

            self.link = ShardLink(db.root, log)
        self.leading = self.link is None
        self.job_totals: dict[str, dict[str, Any]] = {}
        self.shard_cpu_s = 0.0
        self.recent: deque[dict[str, Any]] = deque(maxlen=200)
        self.counts = {
            "samples": 0,
            "messages": 0,
            "dropped": 0,
            "out_of_order": 0,
            "malformed": 0,
            "notes": 0,
            "notified": 0,
            "windows": 0,
            "window_errors": 0,
            "window_skipped": 0,
            "notes_refused": 0,
            "job_rule_rounds": 0,
        }
        self._malformed_logged: dict[str, float] = {}
        self.eval_cpu_s = 0.0
        self.window_cpu_s = 0.0
        self._lock = threading.RLock()
        self._q: queue.Queue[tuple[str, list[Any], float, int]] = queue.Queue(QUEUE_MAX)
        self._qlock = threading.Lock()
        self._queued = 0
        self._queued_by_host: dict[str, int] = {}
        self.offend: Callable[[str, str, str], None] | None = None  # the server's offenders
        self._stop = threading.Event()
        self.baseline_files = None
        if db is not None:
            from para.collector.baselinefiles import BaselineFiles
            from para.collector.shardlink import shard_name

            name = self.link.shard if self.link is not None else shard_name()
            self.baseline_files = BaselineFiles(db.root, name, log)
        self._read_baselines()
        if self.store is not None:
            restored = self.engine.restore(self.store.open_alerts())
            if restored:
                log(f"{restored} alert(s) still firing at the last stop: kept open")
        # bottleneck rules: windows of raw samples per node, evaluated per (window, every);
        # those of jobs on several shards by the evaluating shard (shardlink.py)
        self.spanning: dict[str, dict[str, Any]] = {}
        # jobs whose bottleneck rules this shard judges anew: the alerts the shard that judged
        # them held open are taken over with the first outcome (until this time)
        self._taking: dict[str, float] = {}
        self._elsewhere: set[str] = set()  # jobs whose nodes all report to other shards now
        self.window_s = max((r.window_s for r in self.window_rules), default=0.0)
        self._raw: dict[str, deque[tuple[int, bytes]]] = {}
        self._raw_job_ms: dict[str, int] = {}
        self._due: dict[tuple[str, float, float], float] = {}
        self._window_q: queue.Queue[tuple[str, float, float, str] | None] = queue.Queue(1000)
        self._window_busy: set[tuple[str, float, float]] = set()
        self._results: queue.Queue[tuple[str, float, float, dict[str, Any], int]] = queue.Queue()
        self._analyzer_cfg: dict[str, Any] | None = None
        self._threads = [threading.Thread(target=self._loop, name="para-alerts", daemon=True)]
        if self.window_rules:
            self._threads.append(
                threading.Thread(target=self._window_loop, name="para-alerts-window", daemon=True)
            )
        if self.store is not None:
            self._threads.append(
                threading.Thread(target=self._store_loop, name="para-alert-store", daemon=True)
            )
        for t in self._threads:
            t.start()
        if self.ruleset.rules:
            kinds: dict[str, int] = {}
            for r in self.ruleset.rules:
                kinds[r.type] = kinds.get(r.type, 0) + 1
            what = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
            log(
                f"alerts: {len(self.ruleset.rules)} rules from {self.rules_path} ({what}); "
                f"sinks {', '.join(sorted(self.ruleset.sinks))}"
            )

    # -- input -----------------------------------------------------------------------------
    def ingest(self, host: str, samples: list[tuple[int, Any]], nbytes: int = 0) -> bool:
        """A live message of `host` (called by the Flight handler): queued, never blocks.
        The queue is bounded by bytes (the messages' JSON), in all and per host, so a node
        that floods loses its own samples, not the others'; False when dropped."""
        with self._qlock:
            mine = self._queued_by_host.get(host, 0)
            if (
                self._queued + nbytes > QUEUE_BYTES
                or mine + nbytes > QUEUE_BYTES_PER_HOST
                or self._q.full()
            ):
                self.counts["dropped"] += len(samples)
                return False
            self._queued += nbytes
            self._queued_by_host[host] = mine + nbytes
            self._q.put_nowait((host, samples, self.clock(), nbytes))
        return True

    def _dequeued(self, host: str, nbytes: int) -> None:
        with self._qlock:
            self._queued -= nbytes
            left = self._queued_by_host.get(host, 0) - nbytes
            if left > 0:
                self._queued_by_host[host] = left
            else:
                self._queued_by_host.pop(host, None)

    def _loop(self) -> None:
        next_tick = 0.0
        next_save = self.clock() + BASELINES_EVERY_S
        while not self._stop.is_set():
            try:
                item = self._q.get(timeout=0.2)
            except queue.Empty:
                item = None
            try:
                c0 = time.thread_time()
                batch = [item] if item is not None else []
                while len(batch) < 5000:
                    try:
                        batch.append(self._q.get_nowait())
                    except queue.Empty:
                        break
                with self._lock:
                    for host, _samples, _rx, nbytes in batch:
                        self._dequeued(host, nbytes)
                    self.process([(host, samples, rx) for host, samples, rx, _ in batch])
                    self._take_results()
                    now = self.clock()
                    if now >= next_tick:
                        next_tick = now + 1.0
                        self.engine.tick(now)
                        self._jobs_tick(now)
                        if self.job_rules or self.link is not None:
                            self.shard_round(now)
                        self._schedule_windows(now)
                self.eval_cpu_s += time.thread_time() - c0
                if self.clock() >= next_save:
                    next_save = self.clock() + BASELINES_EVERY_S
                    self._save_baselines()
                    self._read_baselines()
            except Exception:
                self.log("alert evaluation failed (goes on):\n" + traceback.format_exc())

    def process(self, messages: list[tuple[str, list[tuple[int, Any]], float]]) -> None:
        """Live messages (host, samples, when received), in the order they came: each sample
        into the view, then the rules over all of them at once (Engine.observe_many: the
        same outcome as sample by sample, a column per value instead of a rule per sample).
        The caller holds the lock."""
        snaps: list[Snapshot] = []
        rxs: list[float] = []
        raw: list[dict[str, Any]] = []
        for host, samples, rx in messages:
            self.counts["messages"] += 1
            for t_ms, sent in samples:
                rows, problem = well_formed(sent)
                if problem is not None:
                    self._malformed(host, t_ms, problem)
                if rows is None:
                    continue
                try:
                    snap = self.view.add(host, t_ms, rows, rx)
                except Exception as e:  # what well_formed let through: this sample only
                    self._malformed(host, t_ms, f"{type(e).__name__}: {e}")
                    continue
                if snap is None:
                    self.counts["out_of_order"] += 1  # a retried message: already seen
                    continue
                self.counts["samples"] += 1
                snaps.append(snap)
                rxs.append(rx)
                raw.append(rows)
        if not snaps:
            return
        done = iter(raw)

        def after(snap: Snapshot) -> None:
            rows = next(done)
            self._agent_alerts(snap)
            if self.window_rules:
                self._keep_raw(snap.host, snap.t_ms, rows)

        self.engine.observe_many(snaps, rxs, after, self._failed)

    def _failed(self, snap: Snapshot, e: Exception) -> None:
        self._malformed(snap.host, snap.t_ms, f"its rules failed: {type(e).__name__}: {e}")

    def _malformed(self, host: str, t_ms: int, why: str) -> None:
        """A node's sample that the live path could not use as sent (said once a minute
        per node; counted, and among the node's offences in `para collector status`)."""
        self.counts["malformed"] += 1
        why = f"live sample at {t_ms} ms: {why}"
        if self.offend is not None:
            self.offend(host, "live_malformed", why)
        now = time.monotonic()
        if now - self._malformed_logged.get(host, -1e9) >= 60:
            if len(self._malformed_logged) > 10_000:
                self._malformed_logged.clear()
            self._malformed_logged[host] = now
            self.log(f"left out part of a live sample from {host}: {why[:300]}")

    def _agent_alerts(self, snap: Snapshot) -> None:
        """Alerts the node's agent notified itself while it could not reach us."""
        for e in snap.events:
            if len(e) >= 5 and e[1] == "alert" and e[4]:
                try:
                    note = json.loads(e[4])
                except (TypeError, ValueError):
                    continue
                if not (isinstance(note, dict) and "id" in note and "rule" in note):
                    continue
                if not self.engine.adopt(note, sender=snap.host):
                    self.counts["notes_refused"] += 1
                    why = (
                        f"sent an alert note for host {note.get('host')!r} (rule "
                        f"{str(note.get('rule'))[:80]!r}): a node may speak for itself only"
                    )
                    if self.offend is not None:
                        self.offend(snap.host, "notes_refused", why)
                    self.log(f"refused an alert note from {snap.host}: {why}")

    def _jobs_tick(self, now: float) -> None:
        for js in self.view.tick(now):
            # job rules end with the job on every shard (judge_jobs), not on this one; so do
            # the bottleneck rules of a job on several shards (_spanning)
            if js.job not in self.spanning or not self.leading:
                self.engine.end_job(js.job, js.last_ms, self.engine.window_rules)
            if js.job in self.spanning and self.link is not None and not self.leading:
                self.link.forget_windows(js.job, every_shard=False)
            for k in [k for k in self._due if k[0] == js.job]:
                del self._due[k]

    # -- job rules across shards -----------------------------------------------------------
    def shard_round(self, now: float) -> None:
        """Once a second: publish this shard's part of the jobs; if we evaluate the job rules,
        add up every shard's part and judge them.  Which jobs span several shards (their
        bottleneck rules are judged by the evaluating shard) is read from the same parts.
        The caller holds the lock."""
        c0 = time.thread_time()
        part = shards.job_partial(self.view, self.link.shard if self.link else "local", now)
        parts = [part]
        if self.link is not None:
            self.link.publish(part)
            if self.link.lead() and not self.leading:
                self.leading = True
                names = {r.name for r in self.job_rules + self.window_rules}
                kept = self.engine.restore(
                    [n for n in self.link.taken_over(now) if n.get("rule") in names]
                )
                self.log(
                    "this shard now evaluates the job rules over every shard"
                    + (f" ({kept} alert(s) taken over, still open)" if kept else "")
                )
            if not self.leading and not self.window_rules:
                self.shard_cpu_s += time.thread_time() - c0
                return
            parts += self.link.gather(now)
        totals = shards.job_totals(parts)
        if self.window_rules and self.link is not None:
            self._spanning(totals, int(now * 1000))
        if self.leading:
            if self.job_rules:
                self.judge_jobs(totals, now)
            if self.link is not None:
                self.link.hand_over(
                    [
                        a
                        for a in self.engine.active()
                        if a.get("type") == "job"
                        or (
                            a.get("type") == "bottleneck"
                            and (a.get("labels") or {}).get("job") in self.spanning
                        )
                    ],
                    now,
                )
        self.shard_cpu_s += time.thread_time() - c0

    def _spanning(self, totals: dict[str, dict[str, Any]], t_ms: int) -> None:
        """The jobs whose nodes report to several shards now; a spanning job that ended
        everywhere ends its bottleneck alerts here (the evaluating shard's)."""
        from para.collector.shardlink import GRACE_S

        now = {job: tot for job, tot in totals.items() if len(tot["shards"]) > 1}
        t = t_ms / 1000
        # who judges a job's bottleneck rules changes: the alerts open go over with it
        for job in set(now) - set(self.spanning):
            for key in [k for k in self._due if k[0] == job]:
                del self._due[key]  # its periods are now every shard's, on the clock
            if self.leading:
                self._taking[job] = t + 2 * GRACE_S + max(r.every_s for r in self.window_rules)
            else:
                self._give(job, t)
        for job in set(self.spanning) - set(now):
            for key in [k for k in self._due if k[0] == job]:
                del self._due[key]  # judged here again, or by the one shard it is on
            if job not in totals:
                if self.leading:
                    self.engine.end_job(job, t_ms, self.window_rules)
                    self.link.forget_windows(job, every_shard=True)
                continue
            if totals[job]["shards"] == [self.link.shard]:
                if not self.leading:  # back on this shard alone, from the evaluating one
                    self._taking[job] = t + 2 * GRACE_S
                    for r in self.window_rules:  # once it has handed the alerts over
                        self._due[(job, r.window_s, r.every_s)] = t + GRACE_S
            elif self.leading:
                self._give(job, t)  # back on one other shard
        self.spanning = now
        self._elsewhere = {j for j, tot in totals.items() if self.link.shard not in tot["shards"]}

    def _give(self, job: str, t: float) -> None:
        notes = self.engine.release_job(job, self.window_rules)
        if notes and self.link is not None:
            self.link.give_alerts(job, notes, t)
            self.log(f"job {job}: {len(notes)} bottleneck alert(s) handed over to the shard "
                     "that judges it now")  # fmt: skip

    def _take(self, job: str) -> None:
        now = self.clock()
        notes = self.link.take_alerts(job, now) if self.link is not None else []
        if notes:
            kept = self.engine.restore(notes)
            self.log(f"job {job}: {kept} bottleneck alert(s) taken over, still open")
        if notes or now > self._taking[job]:
            del self._taking[job]

    def judge_jobs(self, totals: dict[str, dict[str, Any]], now: float) -> None:
        t_ms = int(now * 1000)
        self.counts["job_rule_rounds"] += 1
        for job in set(self.job_totals) - set(totals):
            self.engine.end_job(job, t_ms, self.job_rules)  # no shard reports it any more
        self.job_totals = totals
        for rule in self.job_rules:
            assert rule.aggregate is not None
            for job, tot in totals.items():
                if rule.hosts and not any(rule.matches_host(h) for h in tot["hosts"]):
                    continue
                v = tot.get(rule.aggregate)
                if not isinstance(v, (int, float)):
                    self.engine.report(rule, job, None, t_ms)
                    continue
                fired = (rule.above is not None and v > rule.above) or (
                    rule.below is not None and v < rule.below
                )
                evidence = {"hosts": tot["hosts"], "shards": tot["shards"]}
                self.engine.report(rule, job, fired, t_ms, v, evidence)

    # -- notes -----------------------------------------------------------------------------
    def _on_note(self, note: dict[str, Any], notify: bool) -> None:
        sinks = self.engine.rules.by_name(note["rule"]).sinks
        self.counts["notes"] += 1
        self.recent.append(note)
        if notify:
            self.counts["notified"] += 1
            self.dispatcher.send(note, sinks)
        if self.store is not None:
            self.store.add(note, notify, sinks)

    def _store_loop(self) -> None:
        assert self.store is not None
        while not self._stop.wait(1.0):
            self.store.flush()

    # -- bottleneck windows ----------------------------------------------------------------
    def _keep_raw(self, host: str, t_ms: int, rows: dict[str, Any]) -> None:
        assert self.judge is not None
        skip = self.judge.skip_tables
        has_job = bool(rows.get("job"))
        buf = self._raw.get(host)
        if buf is None:
            if not has_job:
                return  # nothing runs there: no window to judge
            buf = self._raw[host] = deque()
        keep = {k: v for k, v in rows.items() if k not in skip}
        buf.append((t_ms, zlib.compress(json.dumps(keep, separators=(",", ":")).encode(), 1)))
        limit = t_ms - self.window_s * 1000
        while buf and buf[0][0] < limit:
            buf.popleft()
        if has_job:
            self._raw_job_ms[host] = t_ms
        elif t_ms - self._raw_job_ms.get(host, 0) > self.window_s * 1000:
            del self._raw[host]  # no job there for a whole window

    def _schedule_windows(self, now: float) -> None:
        groups = {(r.window_s, r.every_s) for r in self.window_rules}
        for job, js in self.view.jobs.items():
            if job in self.spanning or job in self._elsewhere:
                continue  # judged by the evaluating shard, or by the one it is on now
            if (js.last_ms - js.first_ms) / 1000 < 10:
                continue  # the analyzer judges nothing on fewer than 10 samples
            for window, every in groups:
                key = (job, window, every)
                if now < self._due.get(key, 0.0) or key in self._window_busy:
                    continue
                self._due[key] = now + every
                self._queue_window(key, "judge")
        # a job on several shards: at each period, aligned on the clock, the other shards
        # hand their nodes' samples over and the evaluating shard judges GRACE_S later
        from para.collector.shardlink import GRACE_S

        for job in self.spanning:
            if not self.leading and job not in self.view.jobs:
                continue  # none of its nodes is ours
            for window, every in groups:
                key = (job, window, every)
                due = self._due.get(key)
                if due is None:  # the first period every shard hands over whole
                    due = self._due[key] = (
                        now // every * every + every + (GRACE_S if self.leading else 0.0)
                    )
                if now < due or key in self._window_busy:
                    continue
                self._due[key] = self._period_end(now, every, GRACE_S)
                self._queue_window(key, "judge all" if self.leading else "export")

    def _period_end(self, now: float, every: float, grace: float) -> float:
        """When the period after `now` of a rule run `every` seconds ends, on every shard's
        clock alike; the evaluating shard's moment is `grace` later."""
        start = (now - grace) // every * every if self.leading else now // every * every
        return start + every + (grace if self.leading else 0.0)

    def _queue_window(self, key: tuple[str, float, float], mode: str) -> None:
        try:
            self._window_q.put_nowait((*key, mode))
            self._window_busy.add(key)
        except queue.Full:
            self.counts["window_skipped"] += 1

    def _window_loop(self) -> None:
        assert self.judge is not None
        while True:
            item = self._window_q.get()
            if item is None:
                return
            job, width, _every, mode = item
            c0 = time.thread_time()
            try:
                with self._lock:
                    js = self.view.jobs.get(job)
                    hosts = dict(js.hosts) if js is not None else {}
                    info = self.view.job_info(job)
                    tot = self.spanning.get(job) or {}
                    raw = {h: list(self._raw.get(h, ())) for h in hosts}
                end = max(hosts.values(), default=0)  # the job's last sample on our nodes
                if mode == "export":
                    self._export(job, raw, int(end - width * 1000))
                    self._results.put((job, width, _every, {}, 0))
                    continue
                nodes = {
                    h: [(t, json.loads(zlib.decompress(b))) for t, b in items]
                    for h, items in raw.items()
                }
                if mode == "judge all":
                    if js is None:
                        info = {"job_id": job, "user": tot.get("user"), "name": tot.get("name")}
                    since = self.clock() - _every - 10.0
                    for doc in self.link.windows(job, since) if self.link else []:
                        end = max(end, _take_nodes(nodes, doc))
                lo = end - width * 1000
                nodes = {h: [(t, r) for t, r in items if t >= lo] for h, items in nodes.items()}
                found = self.judge.judge(info, nodes)
                self._results.put((job, width, _every, found, end))
                with self._lock:
                    self.counts["windows"] += 1
            except Exception as e:
                with self._lock:
                    self.counts["window_errors"] += 1
                self.log(f"bottleneck window of job {job} failed: {type(e).__name__}: {e}")
                self._results.put((job, width, _every, {}, 0))
            finally:
                self.window_cpu_s += time.thread_time() - c0

    def _export(self, job: str, raw: dict[str, list[tuple[int, bytes]]], lo: int) -> None:
        """This shard's nodes' samples of a spanning job from `lo`, for the evaluating shard."""
        if self.link is None:
            return
        hosts = {
            h: [[t, base64.b64encode(b).decode("ascii")] for t, b in items if t >= lo]
            for h, items in raw.items()
        }
        self.link.export_window(
            job, {"t": self.clock(), "shard": self.link.shard, "job": job, "hosts": hosts}
        )

    def _take_results(self) -> None:
        while True:
            try:
                job, width, every, found, end = self._results.get_nowait()
            except queue.Empty:
                return
            self._window_busy.discard((job, width, every))
            if not found or (job not in self.view.jobs and job not in self.spanning):
                continue
            if job in self._taking:
                self._take(job)
            for rule in self.window_rules:
                if (rule.window_s, rule.every_s) != (width, every) or not rule.bottleneck:
                    continue
                o = found.get(rule.bottleneck)
                if o is None or o["status"] == "not_evaluated":
                    self.engine.report(rule, job, None, end)
                    continue
                fired = o["status"] == "fired" and severity_at_least(
                    o.get("severity"), rule.min_severity
                )
                self.engine.report(rule, job, fired, end, o.get("value"), o)

    # -- reading (readers' actions, /metrics) ----------------------------------------------
    def active(self) -> list[dict[str, Any]]:
        with self._lock:
            return self.engine.active()

    def summary(self, request: dict[str, Any] | None = None) -> dict[str, Any]:
        """What `para top --collector` shows (para.live.view.LiveView.summary)."""
        with self._lock:
            doc = self.view.summary(request, self.engine.active(), self.cluster)
        doc["rules"] = len(self.ruleset.rules)
        return doc

    def metric_families(self) -> list[openmetrics.Family]:
        with self._lock:
            fams = self.view.families(self.cluster)
            fams.append(openmetrics.alert_family(self.engine.active()))
            c = dict(self.counts)
        for name, help_ in (
            ("samples", "live samples evaluated"),
            ("dropped", "live samples dropped (evaluation behind)"),
            ("notified", "alert notifications sent to sinks"),
        ):
            fam = openmetrics.Family(f"para_collector_live_{name}_total", "counter", help_)
            fam.samples.append(({}, float(c[name])))
            fams.append(fam)
        return fams

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "rules": len(self.ruleset.rules),
                "rules_file": self.rules_path,
                "hosts": len(self.view.hosts),
                "jobs": len(self.view.jobs),
                "active": len(
                    [
                        1
                        for t in self.engine.tracks.values()
                        if t.state in (engine_mod.FIRING, engine_mod.CLEARING)
                    ]
                ),
                **self.counts,
                "queued": self._q.qsize(),
                "queued_bytes": self._queued,
                "evaluation_cpu_s": round(self.eval_cpu_s, 3),
                "window_cpu_s": round(self.window_cpu_s, 3),
                "job_rules": (
                    None
                    if not self.job_rules
                    else {
                        "evaluating": self.leading,
                        "jobs": len(self.job_totals),
                        "shard": self.link.shard if self.link else None,
                    }
                ),
                "sinks": self.dispatcher.status(),
                "stored": self.store.written if self.store else None,
            }

    # -- baselines -------------------------------------------------------------------------
    # (each shard its own file, judged with the others': baselinefiles.py)
    def _read_baselines(self) -> None:
        if self.baseline_files is None:
            return
        taken = self.baseline_files.read(self.engine, self.clock(), self._lock)
        if taken:
            self.log(f"took over the anomaly baselines of {taken} collector(s) gone")

    def _save_baselines(self, ended: bool = False) -> None:
        if self.baseline_files is not None:
            self.baseline_files.save(self.engine, self.clock(), self._lock, ended)

    def stop(self) -> None:
        self._stop.set()
        if self.window_rules:
            try:
                self._window_q.put(None, timeout=1.0)
            except queue.Full:
                pass
        for t in self._threads:
            t.join(timeout=30)
        self._save_baselines(ended=True)
        self.dispatcher.stop(timeout=5.0)
        if self.link is not None:
            self.link.close()
        if self.store is not None:
            self.store.flush()
