"""/metrics before and after issue 14 (counters instead of one-second gauges), side by side in
one run: what a scrape costs and how many series it carries.

1. The agent: two real `para agent run` at once on this machine, 1 Hz, the same --job-procs
   processes of one batch job (Slurm's environment), /metrics on: one runs the code of
   --before (default: the commit this branch started from, unpacked with `git archive`; the
   compiled kernels are this tree's when their sources did not change, else both run the
   pure-Python twins), the other this tree.  Each round, for each agent in turn: its CPU over
   a quiet stretch (sampling alone), then over --scrapes back-to-back scrapes, each a GET with
   Prometheus 2.42's Accept header (it asks for OpenMetrics); the scrapes' CPU is the burst's
   less the quiet stretch's rate over the burst's length.  CPU from /proc/PID/task/*/schedstat
   (every thread, user and system).  Medians over --rounds.

2. The collector: the exposition of --nodes simulated nodes (each replays the real 10-minute
   recording of tests/fixtures/collector from its own offset, one job per 4 nodes, through
   the collector's live view), rendered by the code of --before and of this tree, in this
   process: CPU per scrape (time.process_time, median of --repeats), series and bytes.

    .venv/bin/python benchmarks/bench_metrics.py [--rounds 15] [--scrapes 40] [--nodes 1000]
        [--job-procs 8] [--before REF]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import types
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from para.live import openmetrics  # noqa: E402
from para.live.view import LiveView  # noqa: E402
from tests.live_support import samples_from_para  # noqa: E402

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()


def cpu_s(pid: int) -> float:
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended meanwhile
    return total / 1e9


def unpack(ref: str, into: Path) -> tuple[Path, bool]:
    """The tree of `ref` under `into`, with this tree's compiled kernels when their sources
    are the same; (path, kernels copied)."""
    data = subprocess.run(
        ["git", "archive", "--format=tar", ref], cwd=REPO, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    same = (
        subprocess.run(
            ["git", "diff", "--quiet", ref, "--", "para/cython_ext"], cwd=REPO
        ).returncode
        == 0
    )
    built = list((REPO / "para" / "cython_ext").glob("*.so"))
    if same and built:
        for so in built:
            (into / "para" / "cython_ext" / so.name).write_bytes(so.read_bytes())
    return into, same and bool(built)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(url: str) -> bytes:
    req = urllib.request.Request(url, headers={"Accept": PROMETHEUS_ACCEPT})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read()


def series(body: bytes) -> int:
    return sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))


def start_agent(tree: Path, work: Path, pure: bool) -> tuple[subprocess.Popen[bytes], str]:
    work.mkdir(parents=True)
    port = free_port()
    (work / "agent.toml").write_text(
        f'[agent]\ninterval = 1\nspool_dir = "{work / "spool"}"\n'
        f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PBS_", "LSB_"))}
    env["PYTHONPATH"] = str(tree)
    env["PARA_PURE_PYTHON"] = "1" if pure else "0"
    with open(work / "agent.log", "wb") as log:
        p = subprocess.Popen(
            [sys.executable, "-m", "para", "agent", "run", "--config", str(work / "agent.toml")],
            env=env,
            cwd=tree,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return p, f"http://127.0.0.1:{port}/metrics"


def bench_agents(args: argparse.Namespace, before: str, work: Path) -> dict[str, Any]:
    tree, kernels = unpack(before, work / "before-tree")
    pure = not kernels
    job_env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    job_env.update(SLURM_JOB_ID="141414", SLURM_JOB_NAME="bench", SLURM_CPUS_ON_NODE="2")
    kids = [subprocess.Popen(["sleep", "3600"], env=job_env) for _ in range(args.job_procs)]
    agents: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    try:
        agents["before"] = start_agent(tree, work / "before", pure)
        agents["after"] = start_agent(REPO, work / "after", pure)
        deadline = time.monotonic() + 120
        for name, (p, url) in agents.items():  # up, and serving its job's series
            while True:
                try:
                    if b'job_id="141414"' in scrape(url):
                        break
                except OSError:
                    pass
                if p.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"the {name} agent did not serve /metrics: {work / name}/agent.log")
                time.sleep(0.5)
        time.sleep(args.warmup)
        per: dict[str, list[float]] = {n: [] for n in agents}
        quiet_rate: dict[str, list[float]] = {n: [] for n in agents}
        last: dict[str, bytes] = {}
        for r in range(args.rounds):
            order = list(agents) if r % 2 == 0 else list(reversed(agents))
            for name in order:
                p, url = agents[name]
                c0, t0 = cpu_s(p.pid), time.monotonic()
                time.sleep(args.quiet)
                c1, t1 = cpu_s(p.pid), time.monotonic()
                for _ in range(args.scrapes):
                    last[name] = scrape(url)
                c2, t2 = cpu_s(p.pid), time.monotonic()
                rate = (c1 - c0) / (t1 - t0)
                quiet_rate[name].append(rate)
                per[name].append((c2 - c1 - rate * (t2 - t1)) / args.scrapes)
        return {
            "kernels": "compiled" if kernels else "pure Python (kernel sources differ)",
            "ms_per_scrape": {n: 1000 * statistics.median(v) for n, v in per.items()},
            "ms_range": {n: (1000 * min(v), 1000 * max(v)) for n, v in per.items()},
            "sampling_ms_per_s": {n: 1000 * statistics.median(v) for n, v in quiet_rate.items()},
            "series": {n: series(b) for n, b in last.items()},
            "bytes": {n: len(b) for n, b in last.items()},
        }
    finally:
        for p, _ in agents.values():
            p.send_signal(signal.SIGTERM)
        for p, _ in agents.values():
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for k in kids:
            k.kill()
            k.wait()


def load_before(ref: str) -> types.ModuleType:
    src = git("show", f"{ref}:para/live/openmetrics.py")
    spec = importlib.util.spec_from_loader("openmetrics_before", loader=None)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["openmetrics_before"] = mod  # dataclasses look their module up
    exec(compile(src, f"{ref}:para/live/openmetrics.py", "exec"), mod.__dict__)
    return mod


def job_row(job: str, rows: dict[str, Any]) -> list[Any]:
    from bench_alerts import job_row as row

    return row(job, rows)


def bench_collector(args: argparse.Namespace, before: str) -> dict[str, Any]:
    old = load_before(before)
    rec = samples_from_para()[10:-10]  # the profile's first and last instants are partial
    rng = random.Random(14)
    offsets = [rng.randrange(len(rec)) for _ in range(args.nodes)]
    view = LiveView(clock=lambda: 0.0)
    t0 = 1_795_000_000_000
    for k in range(3):  # rates need two samples; the third is what is served
        for i, off in enumerate(offsets):
            _, rows = rec[(off + k) % len(rec)]
            ev = []
            if k == 0 and i % 4 == 0:
                detail = json.dumps({"user": f"u{i % 37}", "job_name": f"app{i % 11}"})
                ev = [[t0, "job_start", None, f"j{i // 4}", detail]]
            rows = dict(rows, job=[job_row(f"j{i // 4}", rows)], events=ev)
            view.add(f"cn{i:05d}", t0 + k * 1000, rows, 0.0)
    snaps = [hs.last for hs in view.hosts.values() if hs.last is not None]
    out: dict[str, Any] = {}
    for name, mod in (("before", old), ("after", openmetrics)):
        times = []
        body = ""
        for _ in range(args.repeats):
            c0 = time.process_time()
            body = mod.render(mod.node_families(snaps, "bench"), openmetrics=True)
            times.append(time.process_time() - c0)
        out[name] = {
            "ms": 1000 * statistics.median(times),
            "series": series(body.encode()),
            "bytes": len(body),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--scrapes", type=int, default=40, help="back-to-back scrapes per burst")
    ap.add_argument("--quiet", type=float, default=3.0, help="seconds of sampling alone")
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--job-procs", type=int, default=8)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--before", default=None, help="the code before (default: merge-base main)")
    ap.add_argument("--skip-agents", action="store_true")
    args = ap.parse_args()
    before = args.before or git("merge-base", "HEAD", "main")
    print(f"before: {before[:12]} ({git('log', '-1', '--format=%s', before)[:70]})")
    print(f"after:  this tree ({git('rev-parse', '--short=12', 'HEAD')}, plus any edits)")
    if not args.skip_agents:
        work = Path(tempfile.mkdtemp(prefix="bench-metrics-"))
        a = bench_agents(args, before, work)
        print(
            f"\n1. the agent's /metrics, two real agents side by side, {args.rounds} rounds of "
            f"{args.scrapes} scrapes each ({a['kernels']} kernels; {args.job_procs} job processes)"
        )
        print(f"{'':<28}{'before':>12}{'after':>12}{'ratio':>8}")
        ms = a["ms_per_scrape"]
        print(f"{'ms CPU per scrape (median)':<28}{ms['before']:>12.3f}{ms['after']:>12.3f}"
              f"{ms['after'] / ms['before']:>8.2f}")  # fmt: skip
        lo, hi = a["ms_range"]["before"], a["ms_range"]["after"]
        print(f"{'  range over rounds':<28}{lo[0]:>5.2f}-{lo[1]:<6.2f}{hi[0]:>5.2f}-{hi[1]:<6.2f}")
        print(f"{'series per scrape':<28}{a['series']['before']:>12}{a['series']['after']:>12}"
              f"{a['series']['after'] / a['series']['before']:>8.2f}")  # fmt: skip
        print(f"{'bytes per scrape':<28}{a['bytes']['before']:>12}{a['bytes']['after']:>12}"
              f"{a['bytes']['after'] / a['bytes']['before']:>8.2f}")  # fmt: skip
        sm = a["sampling_ms_per_s"]
        print(f"{'sampling alone, ms CPU/s':<28}{sm['before']:>12.3f}{sm['after']:>12.3f}")
        print(f"(files in {work})")
    c = bench_collector(args, before)
    print(
        f"\n2. the collector's /metrics for {args.nodes} simulated nodes (one job per 4), "
        f"rendering in-process, median of {args.repeats}"
    )
    print(f"{'':<28}{'before':>12}{'after':>12}{'ratio':>8}")
    print(f"{'ms CPU per scrape':<28}{c['before']['ms']:>12.1f}{c['after']['ms']:>12.1f}"
          f"{c['after']['ms'] / c['before']['ms']:>8.2f}")  # fmt: skip
    print(f"{'series per scrape':<28}{c['before']['series']:>12}{c['after']['series']:>12}"
          f"{c['after']['series'] / c['before']['series']:>8.2f}")  # fmt: skip
    print(f"{'series per node':<28}{c['before']['series'] / args.nodes:>12.1f}"
          f"{c['after']['series'] / args.nodes:>12.1f}")  # fmt: skip
    mb = {k: c[k]["bytes"] / 1e6 for k in ("before", "after")}
    print(f"{'MB per scrape':<28}{mb['before']:>12.2f}{mb['after']:>12.2f}"
          f"{mb['after'] / mb['before']:>8.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
