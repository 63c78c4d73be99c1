"""Live view and alerts (issue 6): how late an alert is, and what evaluating rules costs.

1. Delay, end to end, real processes on 127.0.0.1: a real `para agent run` (1 Hz sampling,
   live pushes every second) and a real `para collector serve --alerts` over mutual TLS.  A
   batch job (Slurm's environment) starts and at once holds 300 MB, or burns a core; the
   time from that moment (the job says when, on this machine's clock) to the webhook POST
   arriving at a local HTTP receiver is the delay.  Two rules: `job.rss_bytes > 200e6`
   (a gauge: seen at the first sample) and `job.cpu_cores > 0.5` (a rate: needs two samples).
   Goal: under 5 s at 1 Hz.

2. The collector's CPU for 100 rules over 1,000 simulated nodes: every node replays the real
   10-minute recording of tests/fixtures/collector (from its own offset), one live message
   per node and second, through the collector's own code (para/collector/alerts.py:
   decoding, per-second values, the rules).  CPU seconds per second of cluster time, i.e.
   the share of one core; anchor in the same run: decoding the messages alone (what the
   collector already does for the live stream), and the same path with no rule.

3. A bottleneck rule's cost: the analyzer on one job's 10-minute window (1 and 4 nodes).

    .venv/bin/python benchmarks/bench_alerts.py [--nodes 1000] [--seconds 30] [--repeats 3]
        [--delay-runs 10] [--skip-delay] [--skip-windows]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from para.formats import wire  # noqa: E402
from tests.collector_support import CollectorProcess, make_pki, wait_for  # noqa: E402
from tests.live_support import Receiver, samples_from_para  # noqa: E402

# -- 100 rules as a site might write them -----------------------------------------------------

HOST_RULES = [  # (metric, above, below, for)
    ("cpu_busy_pct", 95, None, "10m"),
    ("cpu_iowait_pct", 30, None, "5m"),
    ("load_per_cpu", 2.0, None, "5m"),
    ("mem_used_pct", 95, None, "1m"),
    ("swap_used_pct", 50, None, "5m"),
    ("swap_pages_per_s", 100, None, "2m"),
    ("major_faults_per_s", 500, None, "2m"),
    ("fs_used_pct", 90, None, "10m"),
    ("disk_util_pct", 90, None, "5m"),
    ("net_errors_per_s", 10, None, "1m"),
    ("procs_blocked", 16, None, "2m"),
    ("io_bps", 2e9, None, "10m"),
    ("net_bps", 10e9, None, "10m"),
    ("gpu_util_pct", None, 10, "5m"),
    ("gpu_temp_c", 85, None, "1m"),
    ("gpu_mem_used_pct", 98, None, "5m"),
    ("ib_link_pct", 90, None, "5m"),
    ("cpu_steal_pct", 10, None, "5m"),
    ("cpu_system_pct", 40, None, "5m"),
    ("mem_available_bytes", None, 2e9, "1m"),
]
DEVICE_RULES = [  # (metric, above, below, for)
    ("disk.util_pct", 95, None, "5m"),
    ("disk.await_ms", 100, None, "5m"),
    ("fs.used_pct", 95, None, "10m"),
    ("cpu.busy_pct", 99, None, "30m"),
    ("net.rx_errs", 1, None, "1m"),
    ("net.tx_drop", 10, None, "1m"),
    ("gpu.util_gpu", None, 5, "10m"),
    ("gpu.temp_c", 88, None, "1m"),
    ("job.mem_limit_pct", 95, None, "1m"),
    ("job.cpu_util_pct", None, 10, "10m"),
]
ANOMALY_RULES = [
    "cpu_busy_pct",
    "mem_used_pct",
    "io_bps",
    "net_bps",
    "load_per_cpu",
    "disk.util_pct",
    "net.rx_bytes",
    "gpu_util_pct",
]


def rules_text() -> str:
    """100 rules: 40 on host values (20 of them only while a job runs), 30 per device or job,
    24 anomaly rules (16 on host values, 8 per device), 6 absent rules."""
    out: list[str] = []

    def rule(**kw: Any) -> None:
        out.append("[[rule]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in kw.items()))

    for i in range(40):
        m, above, below, dur = HOST_RULES[i % len(HOST_RULES)]
        kw: dict[str, Any] = {"name": f"host-{i}", "metric": m, "for": dur}
        kw["above" if above is not None else "below"] = above if above is not None else below
        if i >= 20:
            kw["when"] = "host.jobs > 0"
        rule(**kw)
    for i in range(30):
        m, above, below, dur = DEVICE_RULES[i % len(DEVICE_RULES)]
        kw = {"name": f"dev-{i}", "metric": m, "for": dur}
        kw["above" if above is not None else "below"] = above if above is not None else below
        rule(**kw)
    for i in range(24):
        rule(
            **{
                "name": f"anomaly-{i}",
                "type": "anomaly",
                "deviation": 4 + i % 3,
                "metric": ANOMALY_RULES[i % len(ANOMALY_RULES)],
                "min_change": 10,
                "warmup": "5m",
                "history": "1d",
                "for": "2m",
            }
        )
    for i in range(6):
        rule(**{"name": f"absent-{i}", "type": "absent", "for": f"{2 + i}m"})
    return "\n".join(out)


# -- 2. CPU --------------------------------------------------------------------------------------


def cpu_run(messages: list[list[tuple[str, bytes]]], rules_path: Path | None) -> dict[str, float]:
    """Feed `messages` (per second, per node) through the collector's alert service; CPU
    seconds spent decoding and in the service."""
    from para.collector.alerts import AlertService

    # the service's clock is the cluster's simulated time: on the real clock its own thread's
    # once-a-second look at time finds every node silent since 1970 (absent rules firing for
    # all nodes, then resolving at their next sample), work no real collector does
    now = [0.0]
    svc = AlertService(
        rules_path, None, "bench", lambda msg: None, store=False, clock=lambda: now[0]
    )
    try:
        decode = evaluate = 0.0
        for k, second in enumerate(messages):
            now[0] = float(k)
            c0 = time.process_time()
            decoded = [wire.decode_live(body) for _, body in second]
            c1 = time.process_time()
            with svc._lock:
                if hasattr(svc, "process"):
                    svc.process([(host, samples, float(k)) for host, samples in decoded])
                else:  # a checkout from before the columnar evaluation (--before)
                    for host, samples in decoded:
                        svc._process(host, samples, float(k))
                svc.engine.tick(float(k))
                svc.view.tick(float(k))
            c2 = time.process_time()
            decode += c1 - c0
            evaluate += c2 - c1
        return {
            "decode": decode,
            "evaluate": evaluate,
            "samples": svc.counts["samples"],
            "evaluations": svc.engine.evaluations,
            "notes": svc.counts["notes"],
        }
    finally:
        svc.stop()


def job_row(job: str, rows: dict[str, Any]) -> list[Any]:
    """A `job` row of the recording's process (as an agent sums a job's processes)."""
    from para.live.metrics import LAYOUTS

    lay, proc = LAYOUTS["job"], LAYOUTS["proc"]
    row: list[Any] = [None] * len(lay.cols)
    p = (rows.get("proc") or [[0] * len(proc.cols)])[0]
    row[lay.index["job"]], row[lay.index["procs"]], row[lay.index["cpus"]] = job, 1, 2
    for c in ("threads", "utime", "stime", "rss_bytes", "read_bytes", "write_bytes"):
        row[lay.index[c]] = p[proc.index[c]]
    row[lay.index["scheduler"]] = "slurm"
    return row


def bench_cpu(nodes: int, seconds: int, repeats: int, work: Path) -> dict[str, Any]:
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
            rows = dict(rows, job=[job_row(f"j{i // 4}", rows)])  # 4 nodes per job
            second.append((h, wire.encode_live(h, [(t0 + k * 1000, rows)])))
        messages.append(second)
    rules_path = work / "rules.toml"
    rules_path.write_text(rules_text())
    runs: dict[str, list[dict[str, float]]] = {"none": [], "rules": []}
    for _ in range(repeats):
        runs["none"].append(cpu_run(messages, None))
        runs["rules"].append(cpu_run(messages, rules_path))

    def med(which: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[which])

    per_s = lambda x: x / seconds  # noqa: E731
    return {
        "nodes": nodes,
        "seconds": seconds,
        "repeats": repeats,
        "decode_core": per_s(med("rules", "decode")),
        "derive_core": per_s(med("none", "evaluate")),
        "rules_core": per_s(med("rules", "evaluate")),
        "evaluations_per_s": med("rules", "evaluations") / seconds,
        "notes": med("rules", "notes"),
        "spread": [round(per_s(r["evaluate"]), 3) for r in runs["rules"]],
    }


def bench_engine(nodes: int, seconds: int, repeats: int) -> dict[str, Any]:
    """The rules alone on the same samples (made once through the live view): each sample
    rule by rule (Engine.observe, the agent's way and the collector's before issue 17)
    against each second of the cluster at once (Engine.observe_many), interleaved."""
    from para.live import rules
    from para.live.engine import Engine
    from para.live.view import LiveView

    rec = samples_from_para()
    rng = random.Random(6)
    offsets = [rng.randrange(len(rec)) for _ in range(nodes)]
    rs = rules.parse(rules_text())
    view = LiveView(rs.wanted(), lambda: 0.0)
    t0 = 1_795_000_000_000
    secs = []
    for k in range(seconds):
        snaps = []
        for i, off in enumerate(offsets):
            _, rows = rec[(off + k) % len(rec)]
            rows = dict(rows, job=[job_row(f"j{i // 4}", rows)])
            snap = view.add(f"cn{i:04d}", t0 + k * 1000, rows, float(k))
            assert snap is not None
            snaps.append(snap)
        secs.append(snaps)
    out: dict[str, list[float]] = {"rows": [], "columns": []}
    counts = set()
    for _ in range(repeats):
        for way in ("rows", "columns"):
            eng = Engine(rs, lambda note, notify: None, clock=lambda: 0.0)
            c0 = time.process_time()
            for k, snaps in enumerate(secs):
                if way == "columns":
                    eng.observe_many(snaps, [float(k)] * len(snaps))
                else:
                    for snap in snaps:
                        eng.observe(snap, float(k))
            out[way].append((time.process_time() - c0) / seconds)
            counts.add(eng.evaluations)
    assert len(counts) == 1, counts  # both ways evaluate the same series
    return {"nodes": nodes, **{k: statistics.median(v) for k, v in out.items()}, "runs": out}


# -- 3. bottleneck windows -------------------------------------------------------------------


def bench_window(repeats: int) -> dict[int, float]:
    from para.analyzer import window
    from para.live.metrics import LAYOUTS

    rec = samples_from_para()
    ji = LAYOUTS["proc"].index["job"]
    for _, rows in rec:
        for r in rows.get("proc") or ():
            r[ji] = "42"
    out = {}
    for n in (1, 4):
        nodes = {f"cn{i}": rec for i in range(n)}
        times = []
        for _ in range(repeats):
            t = time.process_time()
            window.evaluate({"job_id": "42"}, nodes)
            times.append(time.process_time() - t)
        out[n] = statistics.median(times) * 1000
    return out


# -- 1. delay --------------------------------------------------------------------------------

JOB = """import os, sys, time
mode = sys.argv[1]
if mode == "mem":
    block = bytearray(300 * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    print(time.time(), flush=True)
    time.sleep(120)
else:
    print(time.time(), flush=True)
    while True:
        pass
"""


def bench_delay(runs: int, work: Path) -> dict[str, list[float]]:
    pki = make_pki(work / "pki", ["benchnode"])
    rx = Receiver()
    rules = work / "delay.toml"
    rules.write_text(f"""
[defaults]
sinks = ["hook"]
stale = "2s"
[[sink]]
name = "hook"
type = "webhook"
url = "{rx.url}"
[[rule]]
name = "job-memory"
metric = "job.rss_bytes"
above = 200e6
for = 0
[[rule]]
name = "job-cpu"
metric = "job.cpu_cores"
above = 0.5
for = 0
""")
    col = CollectorProcess(work / "db", pki, "--alerts", str(rules), "-q").start()
    spool = work / "spool"
    (work / "agent.toml").write_text(f"""
[agent]
interval = 1.0
spool_dir = "{spool}"
host = "benchnode"
[collector]
url = "grpc+tls://127.0.0.1:{col.port}"
ca_file = "{pki}/ca.crt"
cert_file = "{pki}/issued/benchnode.crt"
key_file = "{pki}/issued/benchnode.key"
live = true
live_interval = 1.0
""")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out: dict[str, list[float]] = {}
    try:
        # the live push runs on a timer of its own: its phase against the sampling is set when
        # the agent starts, so the runs are spread over several agent starts
        starts = 3
        for start in range(starts):
            agent = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "para",
                    "agent",
                    "run",
                    "--config",
                    str(work / "agent.toml"),
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                wait_for(lambda: (spool / "status.json").exists(), timeout=60)
                time.sleep(3)  # the live stream is flowing
                n = runs // starts + (1 if start < runs % starts else 0)
                for i in range(n):
                    for rule, mode in (("job-memory", "mem"), ("job-cpu", "cpu")):
                        one_run(rx, env, f"bench-{start}-{i}-{mode}", rule, mode, out)
            finally:
                agent.send_signal(signal.SIGTERM)
                agent.wait(60)
                (spool / "status.json").unlink(missing_ok=True)
    finally:
        col.stop()
        rx.close()
    return out


def one_run(
    rx: Receiver, env: dict[str, str], job: str, rule: str, mode: str, out: dict[str, list[float]]
) -> None:
    """Start the job, wait for its alert; record the delay and where it went."""
    p = subprocess.Popen(
        [sys.executable, "-c", JOB, mode],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(env, SLURM_JOB_ID=job),
    )
    try:
        assert p.stdout is not None
        t_cond = float(p.stdout.readline())

        def arrived() -> Any:
            with rx.lock:
                for b, t in zip(rx.bodies, rx.times):
                    if b["rule"] == rule and b["jobs"] == [job]:
                        return b, t
            return None

        note, t_rx = wait_for(arrived, timeout=30, step=0.01)
        out.setdefault(rule, []).append(t_rx - t_cond)
        out.setdefault(f"{rule}:sampling", []).append(note["at"] - t_cond)
        out.setdefault(f"{rule}:after", []).append(t_rx - note["at"])
    finally:
        p.kill()
        p.wait()
    time.sleep(random.uniform(0.5, 1.5))  # the next one lands at another point of the second


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--delay-runs", type=int, default=10)
    ap.add_argument("--skip-delay", action="store_true")
    ap.add_argument("--skip-windows", action="store_true")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPUs; Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="para-bench-alerts-") as tmp:
        work = Path(tmp)
        if not args.skip_delay:
            d = bench_delay(args.delay_runs, work)
            print(
                f"\n1. Delay from the condition on the node to the webhook POST at a local "
                f"receiver ({args.delay_runs} runs each; agent at 1 Hz, live push every 1 s)\n"
            )
            print(
                "| rule | median s | max s | of which: condition to the sample that shows "
                "it (median) | that sample to the POST: push, evaluation, webhook (median, "
                "max) |"
            )
            print("|---|---:|---:|---:|---:|")
            for rule in ("job-memory", "job-cpu"):
                xs, smp, aft = d[rule], d[f"{rule}:sampling"], d[f"{rule}:after"]
                print(
                    f"| `{rule}` | {statistics.median(xs):.2f} | {max(xs):.2f} | "
                    f"{statistics.median(smp):.2f} | {statistics.median(aft):.2f}, "
                    f"{max(aft):.2f} |"
                )
            worst = max(max(d["job-memory"]), max(d["job-cpu"]))
            print(
                f"Goal under 5 s at 1 Hz: {'met' if worst < 5 else 'NOT met'} (worst {worst:.2f} s)"
            )
        c = bench_cpu(args.nodes, args.seconds, args.repeats, work)
        print(
            f"\n2. Collector CPU, {c['nodes']} simulated nodes at 1 Hz, {c['seconds']} s of "
            f"cluster time, median of {c['repeats']} (share of one core)\n"
        )
        print("| work per second of cluster time | CPU s / s |")
        print("|---|---:|")
        print(
            f"| decoding the live messages (anchor: already done for the live stream) | "
            f"{c['decode_core']:.3f} |"
        )
        print(f"| per-second values, history, jobs (no rule) | {c['derive_core']:.3f} |")
        print(f"| the same with 100 rules | {c['rules_core']:.3f} |")
        rules_only = c["rules_core"] - c["derive_core"]
        print(
            f"\n100 rules alone: {rules_only:.3f} CPU s per s "
            f"({rules_only / c['decode_core']:.2f}x "
            f"the decoding); {c['evaluations_per_s']:,.0f} series evaluated per second "
            f"({1e6 * rules_only / max(c['evaluations_per_s'], 1):.2f} us each); "
            f"runs {c['spread']}"
        )
        e = bench_engine(args.nodes, min(args.seconds, 10), args.repeats)
        print(
            f"\n2b. The 100 rules alone, {e['nodes']} nodes, CPU s per s, median of "
            f"{args.repeats} interleaved: sample by sample (anchor) {e['rows']:.3f}, all "
            f"nodes at once (columnar) {e['columns']:.3f}: {e['rows'] / e['columns']:.2f}x "
            f"(runs {[round(x, 3) for x in e['runs']['rows']]} / "
            f"{[round(x, 3) for x in e['runs']['columns']]})"
        )
        if args.skip_windows:
            return
        w = bench_window(args.repeats)
        print(
            "\n3. A bottleneck rule on one job's 10-minute window (the analyzer): "
            + ", ".join(f"{n} node{'s' if n > 1 else ''} {ms:.0f} ms CPU" for n, ms in w.items())
        )


if __name__ == "__main__":
    main()
