"""The node agent's cost beside sysstat's sadc: CPU seconds per sample and peak memory.

Runs, over the same seconds, the real `para agent run` (every family this machine has; the
processes of a job tracked: --job-procs processes started with SLURM_JOB_ID in their
environment, found the way a site without job cgroups is handled; perf off) and
`sadc -S XALL 1` (every activity sysstat collects, one sample a second).  Both are measured
from outside, from /proc/PID/stat (user + system CPU of the whole process, every thread) and
/proc/PID/status (VmHWM, the peak resident set), over a window that starts after a warm-up,
so the interpreter's start-up is not counted (it is printed apart).  Samples are counted in
what each wrote: the agent's finalised segment and sadc's file (read with sadf).

The agent's segment is finalised to Parquet at rotation (hourly by default) by a child
process; that child's CPU and peak memory come from the agent's status at shutdown, and are
shown amortised over an hour's samples.

With --alerts the agent also evaluates, on its own node, the 100 alert rules of
bench_alerts.py (issue 6; no collector: it notifies by itself), and with --metrics it serves
/metrics, scraped by this script every --scrape-every seconds (Prometheus' usual 15 s).

    .venv/bin/python benchmarks/bench_agent.py [--seconds 600] [--interval 1] [--job-procs 8]
        [--alerts] [--metrics [--scrape-every 15]]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


def sadc_path() -> str:
    for p in ("/usr/lib/sysstat/sadc", "/usr/lib64/sa/sadc", "/usr/libexec/sa/sadc"):
        if os.access(p, os.X_OK):
            return p
    sys.exit("sadc not found: install sysstat (Debian: apt install sysstat)")


def cpu_s(pid: int) -> float:
    """CPU time of the process, all its threads, seconds: the scheduler's own count in ns
    (schedstat, user and system alike), summed over /proc/PID/task; utime + stime in clock
    ticks (10 ms: too coarse for a minute of either) where schedstat is missing."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        data = Path(f"/proc/{pid}/stat").read_bytes()
        f = data[data.rindex(b")") + 2 :].split()
        return (int(f[11]) + int(f[12])) / TICK


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def sadc_instants(sa_file: Path) -> list[float]:
    """Epoch seconds of every record in sadc's file (sadf -U: seconds since the epoch)."""
    out = subprocess.run(
        ["sadf", "-U", "-d", str(sa_file), "--", "-u"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    times = []
    for line in out.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        parts = line.split(";")
        if len(parts) > 2 and parts[2].strip().isdigit():
            times.append(float(parts[2]))
    return times


def para_instants(spool: Path) -> list[float]:
    sys.path.insert(0, str(REPO))
    from para.formats import ParaFile

    times: list[float] = []
    for p in sorted((spool / "ready").glob("*.para")):
        with ParaFile(p) as pf:
            col = pf.read_table("node", ["t"]).column("t").cast("int64").to_pylist()
            times.extend(t / 1000 for t in col)
    return times


HOUR = r"""
import json, os, subprocess, sys, tempfile, time
sys.path.insert(0, sys.argv[1])
from para.agent import config
from para.agent.daemon import Agent, Log
spool = tempfile.mkdtemp(prefix="bench-hour-")
cfg = config.parse(f'[agent]\nspool_dir = "{spool}"\n', "bench.toml")
env = dict(os.environ, SLURM_JOB_ID="424242")
kids = [subprocess.Popen(["sleep", "900"], env=env) for _ in range(8)]
a = Agent(cfg, Log("error"))
a.loop.open()
for _ in range(3600):
    a.loop.sample_once()
journal = a.writer.offset
a.rotate("bench")
t0 = time.monotonic()
a._final_queue.put(None)
a._finalizer.join()
fin = a.last_finalized
print(json.dumps({"journal": journal, "seconds": time.monotonic() - t0, **fin}))
a.loop.close()
for k in kids:
    k.kill(); k.wait()
"""


def hour_segment() -> dict:
    """An hour's segment (3600 samples of this machine, taken back to back), finalised by
    the agent's child process as at an hourly rotation."""
    out = subprocess.run(
        [sys.executable, "-c", HOUR, str(REPO)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(url: str) -> int:
    """One scrape of /metrics, as Prometheus does it: 1 if it answered."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            r.read()
        return 1
    except OSError:
        return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=600, help="measured window (default 600)")
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--job-procs", type=int, default=8)
    ap.add_argument("--pure", action="store_true", help="PARA_PURE_PYTHON=1 for the agent")
    ap.add_argument(
        "--no-hour", action="store_true", help="skip finalising an hour's segment at the end"
    )
    ap.add_argument("--alerts", action="store_true", help="100 alert rules on the node")
    ap.add_argument("--metrics", action="store_true", help="serve /metrics and scrape it")
    ap.add_argument("--scrape-every", type=float, default=15.0, help="seconds between scrapes")
    args = ap.parse_args()
    sadc = sadc_path()
    work = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    spool = work / "spool"
    cfg = work / "agent.toml"
    text = f'[agent]\ninterval = {args.interval}\nspool_dir = "{spool}"\n'
    if args.alerts:
        from bench_alerts import rules_text

        (work / "alerts.toml").write_text(rules_text())
        text += f'[alerts]\nrules = "{work / "alerts.toml"}"\n'
    metrics_url = None
    if args.metrics:
        port = free_port()
        text += f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
        metrics_url = f"http://127.0.0.1:{port}/metrics"
    cfg.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PBS_", "LSB_"))}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PARA_PURE_PYTHON"] = "1" if args.pure else "0"
    job_env = dict(env, SLURM_JOB_ID="424242", SLURM_JOB_NAME="bench", SLURM_CPUS_ON_NODE="2")
    job = [
        subprocess.Popen(["sleep", str(args.seconds + args.warmup + 120)], env=job_env)
        for _ in range(args.job_procs)
    ]
    t_start = time.monotonic()
    agent = subprocess.Popen(
        [sys.executable, "-m", "para", "agent", "run", "--config", str(cfg)],
        env=env,
        stderr=open(work / "agent.log", "w"),  # noqa: SIM115 (closed with the process)
    )
    sa = subprocess.Popen([sadc, "-S", "XALL", str(int(args.interval) or 1), str(work / "sa")])
    try:
        time.sleep(args.warmup)
        start_cpu_para = cpu_s(agent.pid)
        print(
            f"warm-up {args.warmup:.0f} s: the agent used {start_cpu_para:.2f} s CPU starting "
            f"(Python, imports, first samples); sadc {cpu_s(sa.pid):.3f} s",
            flush=True,
        )
        w0 = time.time()
        c0 = (cpu_s(agent.pid), cpu_s(sa.pid))
        marks = [(w0, *c0)]
        end = time.monotonic() + args.seconds
        scrapes = 0
        while time.monotonic() < end:
            minute = min(time.monotonic() + 60.0, end)
            while metrics_url and time.monotonic() < minute - args.scrape_every:
                scrapes += scrape(metrics_url)
                time.sleep(args.scrape_every)
            time.sleep(max(0.0, minute - time.monotonic()))
            marks.append((time.time(), cpu_s(agent.pid), cpu_s(sa.pid)))
            done = marks[-1][0] - w0
            print(f"  {done:5.0f} s: para {marks[-1][1] - c0[0]:.3f} s CPU, "
                  f"sadc {marks[-1][2] - c0[1]:.3f} s CPU", flush=True)  # fmt: skip
        w1 = time.time()
        peak = {
            "para": status_kb(agent.pid, "VmHWM"),
            "sadc": status_kb(sa.pid, "VmHWM"),
        }
        now_rss = {"para": status_kb(agent.pid, "VmRSS"), "sadc": status_kb(sa.pid, "VmRSS")}
        live = json.loads((spool / "status.json").read_text()).get("live") or {}
    finally:
        sa.send_signal(signal.SIGTERM)
        sa.wait()
        t_stop = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=300)
        stop_s = time.monotonic() - t_stop
        for p in job:
            p.kill()
            p.wait()
    status = json.loads((spool / "status.json").read_text())
    all_times = para_instants(spool)
    p_times = [t for t in all_times if w0 <= t < w1]
    s_times = [t for t in sadc_instants(work / "sa") if w0 <= t < w1]

    def per_sample(kind: int, instants: list[float]) -> list[float]:
        """ms CPU per sample for each minute of the window."""
        out = []
        for a, b in zip(marks, marks[1:]):
            n = sum(1 for t in instants if a[0] <= t < b[0])
            if n:
                out.append(1000 * (b[kind] - a[kind]) / n)
        return out

    para_cpu = marks[-1][1] - marks[0][1]
    sadc_cpu = marks[-1][2] - marks[0][2]
    para_ms = 1000 * para_cpu / max(1, len(p_times))
    sadc_ms = 1000 * sadc_cpu / max(1, len(s_times))
    pm, sm = per_sample(1, p_times), per_sample(2, s_times)
    ratios = [p / s for p, s in zip(pm, sm) if s > 0]
    seg = status.get("segments", {})
    fin_cpu = seg.get("finalizer_cpu_s", 0.0)
    fin_rss = seg.get("finalizer_max_rss_bytes", 0) / 2**20
    print()
    print(f"window {w1 - w0:.0f} s, interval {args.interval:g} s, agent kernels "
          f"{status.get('kernels')}, {args.job_procs} job processes tracked")  # fmt: skip
    sampled = [f for f, s in status["families"].items() if s["state"] == "ok"]
    print(f"families sampled: {', '.join(sampled)}")
    if args.alerts or args.metrics:
        print(
            f"live: {live.get('rules', 0)} alert rules evaluated on the node, "
            f"{len(live.get('active') or [])} firing at the end; /metrics "
            + (f"scraped {scrapes} times" if metrics_url else "off")
        )
    print(f"{'':<24}{'para agent':>14}{'sadc -S XALL':>14}{'ratio':>8}")
    print(f"{'samples in the window':<24}{len(p_times):>14}{len(s_times):>14}")
    print(f"{'CPU s in the window':<24}{para_cpu:>14.3f}{sadc_cpu:>14.3f}")
    print(f"{'ms CPU per sample':<24}{para_ms:>14.3f}{sadc_ms:>14.3f}{para_ms / sadc_ms:>8.2f}")
    if ratios:
        print(f"{'  per-minute median':<24}{statistics.median(pm):>14.3f}"
              f"{statistics.median(sm):>14.3f}{statistics.median(ratios):>8.2f}")  # fmt: skip
        print(f"{'  per-minute range':<24}{min(pm):>7.3f}-{max(pm):<6.3f}{min(sm):>7.3f}-"
              f"{max(sm):<6.3f}{min(ratios):>4.2f}-{max(ratios):.2f}")  # fmt: skip
    print(f"{'peak RSS (VmHWM) MiB':<24}{peak['para'] / 1024:>14.1f}{peak['sadc'] / 1024:>14.1f}"
          f"{peak['para'] / max(1, peak['sadc']):>8.1f}")  # fmt: skip
    print(
        f"{'RSS at the end MiB':<24}{now_rss['para'] / 1024:>14.1f}{now_rss['sadc'] / 1024:>14.1f}"
    )
    print(
        f"finalising the segment at SIGTERM: {stop_s:.2f} s; the child used {fin_cpu:.2f} s CPU, "
        f"peak {fin_rss:.0f} MiB (a separate, short-lived process)"
    )
    print(
        f"finalising costs {1000 * fin_cpu / max(1, len(all_times)):.3f} ms CPU per sample of the "
        f"segment ({len(all_times)} samples here; hourly segments spread its fixed start-up "
        "over 3600)"
    )
    if not args.no_hour:
        h = hour_segment()
        ru = h["rusage"]
        print(
            f"an hour's segment ({h['samples']} samples, {h['values']:,} values, journal "
            f"{h['journal'] / 2**20:.1f} MiB -> {h['bytes'] / 2**10:.0f} KiB): finalised in "
            f"{h['seconds']:.1f} s, {ru['cpu_s']:.2f} s CPU = "
            f"{1000 * ru['cpu_s'] / h['samples']:.3f} ms per sample, child peak "
            f"{ru['max_rss_bytes'] / 2**20:.0f} MiB; with it para costs "
            f"{para_ms + 1000 * ru['cpu_s'] / h['samples']:.3f} ms per sample "
            f"(ratio {(para_ms + 1000 * ru['cpu_s'] / h['samples']) / sadc_ms:.2f})"
        )
    print(f"goals: CPU per sample <= sadc's (ratio <= 1.0): "
          f"{'met' if para_ms <= sadc_ms else 'NOT met'}; peak RSS <= 64 MiB: "
          f"{'met' if peak['para'] <= 64 * 1024 else 'NOT met'}")  # fmt: skip
    print(f"files in {work} (agent.log, spool/, sa); total run {time.monotonic() - t_start:.0f} s")


if __name__ == "__main__":
    main()
