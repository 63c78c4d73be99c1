"""Alerts and `para top` across collector shards (issue 14): what the cross-shard path adds,
and how late a job rule over shards is.

1. CPU, per 1,000 nodes: the simulated nodes of benchmarks/bench_alerts.py (the real
   10-minute recording, each node from its own offset, 4 nodes per job) split over two shards
   (node i on shard i % 2, so every job spans both), through the collector's own code
   (para/collector/alerts.py) with the 100 rules of bench_alerts plus one `job` rule.  Anchor,
   in the same run: the single-shard live path (decoding, per-second values, the 100 rules)
   for all the nodes in one service.  The cross-shard path is what each shard does once a
   second for the job rules (`AlertService.shard_round`: its part of the jobs as JSON into the
   shared database directory) plus what the evaluating shard adds (reading the other parts,
   adding them up per job, judging the job rules).  Main-thread CPU (time.thread_time), the
   services' own threads stopped.  Also `para top`'s merge of the two shards' documents.

2. Delay, end to end, real processes on 127.0.0.1: two real `para collector serve --alerts`
   sharing one database, four simulated nodes (the agents' own client, mutual TLS, a live
   push every second), two on each shard, running one job.  The job's nodes go from 0.2 to
   0.5 core each at a moment the benchmark notes; the time from then to the webhook POST of
   the job rule (total above 1 core: only the nodes of both shards together pass it) is the
   delay.  Anchor in the same runs: a node-local rule on one node (its share above 0.3 core),
   evaluated on that node's own shard.

    .venv/bin/python benchmarks/bench_shards.py [--nodes 1000] [--seconds 20] [--repeats 3]
        [--delay-runs 8] [--skip-delay]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_alerts import job_row, rules_text  # noqa: E402

from para.formats import wire  # noqa: E402
from tests.collector_support import CollectorProcess, make_pki, wait_for  # noqa: E402
from tests.live_support import Receiver, samples_from_para  # noqa: E402
from tests.shard_support import HOSTS, Nodes  # noqa: E402

JOB_RULE = """
[[rule]]
name = "job-cores"
type = "job"
metric = "cpu_cores"
above = 1e9
for = "1m"
"""


def _quiet(svc: Any) -> Any:
    """The service without its own threads: the benchmark drives it (and times it) alone."""
    svc._stop.set()
    for t in svc._threads:
        t.join()
    return svc


def bench_cpu(nodes: int, seconds: int, repeats: int, work: Path) -> dict[str, Any]:
    from para.collector.alerts import AlertService
    from para.collector.db import FeatureDB
    from para.live.shards import merge_summaries

    rec = samples_from_para()
    rng = random.Random(6)
    offsets = [rng.randrange(len(rec)) for _ in range(nodes)]
    hosts = [f"cn{i:04d}" for i in range(nodes)]
    t0 = 1_795_000_000_000
    messages = []
    for k in range(seconds):
        second = []
        for i, (h, off) in enumerate(zip(hosts, offsets)):
            _, rows = rec[(off + k) % len(rec)]
            rows = dict(rows, job=[job_row(f"j{i // 4}", rows)])
            second.append((i % 2, h, wire.encode_live(h, [(t0 + k * 1000, rows)])))
        messages.append(second)
    plain = work / "rules.toml"
    plain.write_text(rules_text())
    with_job = work / "rules-job.toml"
    with_job.write_text(rules_text() + JOB_RULE)
    out: dict[str, list[float]] = {"single": [], "shards_live": [], "round": [], "lead": []}
    out["merge"] = []
    out["part_bytes"] = []
    for r in range(repeats):
        now = [0.0]
        clock = lambda now=now: now[0]  # noqa: E731
        single = _quiet(AlertService(plain, None, "b", lambda m: None, store=False, clock=clock))
        db = FeatureDB(work / f"db{r}")
        shards = [
            _quiet(AlertService(with_job, db, "b", lambda m: None, store=False, clock=clock))
            for _ in range(2)
        ]
        try:
            t_single = t_live = t_round = t_lead = t_merge = 0.0
            for k, second in enumerate(messages):
                now[0] = float(k)
                c0 = time.thread_time()
                decoded = [wire.decode_live(body) for _, _, body in second]
                with single._lock:
                    single.process([(h, s, float(k)) for h, s in decoded])
                    single.engine.tick(float(k))
                    single.view.tick(float(k))
                t_single += time.thread_time() - c0
                for j, svc in enumerate(shards):
                    c0 = time.thread_time()
                    mine = [wire.decode_live(b) for s, _, b in second if s == j]
                    with svc._lock:
                        svc.process([(h, s, float(k)) for h, s in mine])
                        svc.engine.tick(float(k))
                        svc.view.tick(float(k))
                    t_live += time.thread_time() - c0
                for svc in shards:
                    c0 = time.thread_time()
                    with svc._lock:
                        svc.shard_round(float(k))
                    dt = time.thread_time() - c0
                    t_round += dt
                    if svc.leading:
                        t_lead += dt
                if k % 5 == 0:  # para top's merge: once per refresh of a reader
                    docs = [svc.summary({}) for svc in shards]
                    c0 = time.thread_time()
                    merge_summaries([(str(j), d, None) for j, d in enumerate(docs)])
                    t_merge += time.thread_time() - c0
            lead = next(s for s in shards if s.leading)
            assert len(lead.job_totals) == (nodes + 3) // 4, len(lead.job_totals)
            assert all(len(t["shards"]) == 2 for t in lead.job_totals.values() if t["nodes"] > 1)
            out["single"].append(t_single / seconds)
            out["shards_live"].append(t_live / seconds)
            out["round"].append(t_round / seconds)
            out["lead"].append(t_lead / seconds)
            out["merge"].append(t_merge / len(range(0, seconds, 5)))
            out["part_bytes"].append(
                sum(p.stat().st_size for p in (db.root / "alerting" / "shards").glob("*.json"))
            )
        finally:
            single.stop()
            for s in shards:
                s.stop()
    return {"nodes": nodes, "seconds": seconds, "repeats": repeats, "runs": out,
            **{k: statistics.median(v) for k, v in out.items()}}  # fmt: skip


RULES = """
[defaults]
sinks = ["hook"]
flap_changes = 1000  # every run fires and resolves: not flapping

[[sink]]
name = "hook"
type = "webhook"
url = "{url}"
backoff = 0.1

[[rule]]
name = "job-total"
type = "job"
metric = "cpu_cores"
above = 1.0
for = "0s"
clear_for = "0s"

[[rule]]
name = "node-share"
metric = "job.cpu_cores"
above = 0.3
for = "0s"
clear_for = "0s"
hosts = ["n1"]
"""


def bench_delay(runs: int, work: Path) -> dict[str, list[float]]:
    pki = make_pki(work / "pki", list(HOSTS))
    db = work / "delay-db"
    out: dict[str, list[float]] = {"job-total": [], "node-share": []}
    with Receiver() as rx:
        rules = work / "delay-rules.toml"
        rules.write_text(RULES.format(url=rx.url))
        shards = []
        for name in ("a", "b"):
            (work / name).mkdir()
            shards.append(
                CollectorProcess(
                    db, pki, "--compact-every", "0", "--alerts", str(rules), state=work / name
                ).start()
            )
        nodes = Nodes(pki, [f"grpc+tls://127.0.0.1:{s.port}" for s in shards], interval=1.0)
        try:
            for h in HOSTS:
                nodes.cores[h] = 0.2
            for _ in range(runs):
                # calm for a few seconds (each rule resolved), then the job speeds up
                time.sleep(4 + random.random())
                seen = len(rx.events())
                t = time.time()
                for h in HOSTS:
                    nodes.cores[h] = 0.5
                for rule in out:
                    wait_for(
                        lambda rule=rule, seen=seen: (
                            any(e == "firing" for e, _ in rx.events(rule)[-1:])
                            and len(rx.events()) > seen
                        ),
                        timeout=60,
                        step=0.01,
                        what=rule,
                    )
                with rx.lock:
                    for rule in out:
                        at = [
                            tm
                            for b, tm in zip(rx.bodies, rx.times)
                            if b["rule"] == rule and b["event"] == "firing" and tm >= t
                        ]
                        out[rule].append(min(at) - t)
                for h in HOSTS:
                    nodes.cores[h] = 0.2
                for rule in out:
                    wait_for(
                        lambda rule=rule: rx.events(rule)[-1][0] == "resolved",
                        timeout=60,
                        step=0.05,
                        what=f"{rule} resolved",
                    )
            firing = [b for e, b in rx.events("job-total") if e == "firing"]
            assert len(firing) == runs, f"{len(firing)} job notifications for {runs} runs"
        finally:
            nodes.close()
            for s in shards:
                s.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--delay-runs", type=int, default=8)
    ap.add_argument("--skip-delay", action="store_true")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPUs; Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="para-bench-shards-") as tmp:
        work = Path(tmp)
        c = bench_cpu(args.nodes, args.seconds, args.repeats, work)
        per_k = 1000 / c["nodes"]
        print(
            f"\n1. CPU per second of cluster time, {c['nodes']} simulated nodes (4 per job, "
            f"every job on both shards), {c['seconds']} s, median of {c['repeats']}; "
            f"share of one core per 1,000 nodes\n"
        )
        print("| path | CPU s / s per 1,000 nodes |")
        print("|---|---:|")
        print(
            f"| single shard: decoding, per-second values, 100 rules (anchor) | "
            f"{c['single'] * per_k:.3f} |"
        )
        print(
            f"| two shards, their live paths together (the same work, split) | "
            f"{c['shards_live'] * per_k:.4f} |"
        )
        print(
            f"| cross-shard path, both shards: parts written, read, added up, job rule "
            f"judged | {c['round'] * per_k:.4f} |"
        )
        print(f"| of which the evaluating shard | {c['lead'] * per_k:.4f} |")
        print(
            f"\nCross-shard path: {100 * c['round'] / c['single']:.1f} % of the single-shard "
            f"live path; parts on disk {c['part_bytes'] / 1024:.0f} KiB "
            f"({c['part_bytes'] / c['nodes']:.0f} bytes a node); `para top` merging the two "
            f"shards' documents: {1000 * c['merge']:.1f} ms CPU a refresh. "
            f"Runs: round {[round(x * per_k, 4) for x in c['runs']['round']]}, single "
            f"{[round(x * per_k, 3) for x in c['runs']['single']]}"
        )
        if args.skip_delay:
            return
        d = bench_delay(args.delay_runs, work)
        print(
            f"\n2. Delay from the job's speed-up to the webhook POST ({args.delay_runs} runs; "
            f"live push every 1 s; two real collectors)\n"
        )
        print("| rule | evaluated | median s | max s |")
        print("|---|---|---:|---:|")
        for rule, where in (
            ("node-share", "on the node's own shard (anchor)"),
            ("job-total", "over both shards, by the evaluating shard"),
        ):
            xs = d[rule]
            print(f"| `{rule}` | {where} | {statistics.median(xs):.2f} | {max(xs):.2f} |")
        extra = [j - n for j, n in zip(d["job-total"], d["node-share"])]
        print(
            f"\nAdded by the cross-shard path (job rule minus node rule, same run): median "
            f"{statistics.median(extra):.2f} s, max {max(extra):.2f} s"
        )


if __name__ == "__main__":
    main()
