"""The agent's CPU per sample against sysstat, by the size of the job it follows (issue 17).

For each job size (0, 100, 300, 1,000, 5,000 processes, and the same numbers of threads in
10 processes) three programs run over the same seconds, so the shared machine's load falls
on all of them alike: the real `para agent run` (every family this machine has, perf off,
the job found by its SLURM_JOB_ID environment), `sadc -S XALL 1` (node activity) and
`pidstat -h -urd -p ALL 1` (CPU, memory and I/O of every process: what a sysadmin runs
beside sadc to see processes).  Each is measured from outside: CPU from the scheduler's
own count (/proc/PID/task/*/schedstat, ns), samples from what each wrote in the window (the
agent's segment, sadc's file read with sadf, pidstat's report headers).  The rounds repeat
the sizes in turn; the figures are the medians over rounds of each window's ratios.

With --shipper, one more agent run with a [collector] table (an unreachable collector: the
shipper starts its sender child, which loads pyarrow and its Flight client, and tries to send)
and a job of 300 processes gives the peak resident set (VmHWM) with the shipper loaded, and
what the sender children cost (from the agent's status; with --before, the agent of TREE with
the same [collector] beside it).

    .venv/bin/python benchmarks/bench_node.py [--rounds 2] [--seconds 30]
        [--sizes 0,100,300,1000,5000] [--threads] [--shipper] [--pure] [--before TREE]

--before TREE runs a second agent, from another source tree (the code before a change),
in the same windows: before and after side by side under the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_agent import cpu_s, para_instants, sadc_instants, sadc_path, status_kb  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
THREADS = "import threading,time,sys\n" + (
    "for _ in range(int(sys.argv[1])): threading.Thread(target=time.sleep, args=(3600,)).start()\n"
    "time.sleep(3600)\n"
)


def start_job(n: int, threads: bool, env: dict[str, str]) -> list[subprocess.Popen]:
    if threads:
        procs = 10
        return [
            subprocess.Popen([sys.executable, "-c", THREADS, str(n // procs)], env=env)
            for _ in range(procs if n else 0)
        ]
    return [subprocess.Popen(["sleep", "3600"], env=env) for _ in range(n)]


def forks() -> int:
    """Processes (and threads) created since boot: /proc/stat's `processes`."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("processes "):
            return int(line.split()[1])
    return 0


def pidstat_reports(path: Path, w0: float, w1: float) -> int:
    """Reports pidstat printed in [w0, w1): one '# Time' header per report; its time is
    the local clock's HH:MM:SS."""
    lo, hi = time.localtime(w0), time.localtime(w1)
    s0 = lo.tm_hour * 3600 + lo.tm_min * 60 + lo.tm_sec
    s1 = hi.tm_hour * 3600 + hi.tm_min * 60 + hi.tm_sec
    n = 0
    prev_header = False
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("#"):
                prev_header = True
                continue
            if prev_header and line[:2].isdigit():
                h, m, s = (int(x) for x in line.split()[0].split(":"))
                sec = h * 3600 + m * 60 + s
                if s0 <= sec < s1:
                    n += 1
            prev_header = False
    return n


def window(size: int, threads: bool, seconds: float, warmup: float, env: dict[str, str],
           shipper: bool = False, before: str | None = None, environ: bool = True
           ) -> dict[str, float]:  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="bench-node-"))
    spool = work / "spool"
    text = f'[agent]\ninterval = 1\nspool_dir = "{spool}"\n'
    if shipper:
        text += '[collector]\nurl = "grpc+tcp://127.0.0.1:9"\ninsecure = true\nsend_window = 0\n'
        # segments closed every 10 s, so that the shipper has one to send (and loads pyarrow
        # and its Flight client to try) within the window
        text += "[segments]\nmax_seconds = 10\n"
    jobs = "" if environ else "[jobs]\nenviron = false\n"
    (work / "agent.toml").write_text(text + jobs)
    before_text = f'[agent]\ninterval = 1\nspool_dir = "{work / "sp0"}"\n'
    if shipper:  # the same shipper configuration: before and after side by side
        before_text += text.split("\n", 3)[3]
    (work / "before.toml").write_text(before_text + jobs)
    job_env = dict(env, SLURM_JOB_ID="424242", SLURM_JOB_NAME="bench", SLURM_CPUS_ON_NODE="2")
    job = start_job(size, threads, job_env)
    agent = subprocess.Popen(
        [sys.executable, "-m", "para", "agent", "run", "--config", str(work / "agent.toml")],
        env=env,
        stderr=open(work / "agent.log", "w"),  # noqa: SIM115 (closed with the process)
    )
    progs = [agent]
    if before:
        # the same agent from another tree (the code before a change), in the same seconds
        old_env = dict(env, PYTHONPATH=before + os.pathsep + env.get("PYTHONPATH", ""))
        progs.append(
            subprocess.Popen(
                [sys.executable, "-m", "para", "agent", "run", "--config", f"{work}/before.toml"],
                env=old_env,
                cwd=before,
                stderr=subprocess.DEVNULL,
            )
        )
    sa = subprocess.Popen([sadc_path(), "-S", "XALL", "1", str(work / "sa")])
    pid_out = open(work / "pidstat.txt", "w")  # noqa: SIM115
    ps = subprocess.Popen(
        ["pidstat", "-h", "-urd", "-p", "ALL", "1"],
        stdout=pid_out,
        env=dict(os.environ, LC_ALL="C", S_TIME_FORMAT=""),
    )
    out: dict[str, float] = {}
    try:
        time.sleep(warmup)
        w0 = time.time()
        c0 = [cpu_s(p.pid) for p in (sa, ps, *progs)]
        f0 = forks()
        time.sleep(seconds)
        c1 = [cpu_s(p.pid) for p in (sa, ps, *progs)]
        out["forks_per_s"] = (forks() - f0) / seconds
        w1 = time.time()
        out["rss_mib"] = status_kb(agent.pid, "VmHWM") / 1024
        out["anon_mib"] = status_kb(agent.pid, "RssAnon") / 1024
        out["file_mib"] = status_kb(agent.pid, "RssFile") / 1024
        maps = Path(f"/proc/{agent.pid}/maps").read_text()
        out["arrow_loaded"] = float("libarrow_flight" in maps)
        if before:
            out["before_rss_mib"] = status_kb(progs[1].pid, "VmHWM") / 1024
            maps = Path(f"/proc/{progs[1].pid}/maps").read_text()
            out["before_arrow_loaded"] = float("libarrow_flight" in maps)
        if shipper:
            # what the sender children (para/agent/sender.py) cost, as the agent says
            sender = json.loads((spool / "status.json").read_text())["shipper"].get("sender")
            if sender:
                out["children"] = sender["started"]
                out["child_cpu_s"] = sender["cpu_s"]
                out["child_rss_mib"] = sender["max_rss_bytes"] / 2**20
    finally:
        for p in (sa, ps):
            p.send_signal(signal.SIGTERM)
            p.wait()
        pid_out.close()
        for p in progs:
            p.send_signal(signal.SIGTERM)
        for p in progs:
            p.wait(timeout=600)
        for p in job:
            p.kill()
            p.wait()
    n_para = sum(1 for t in para_instants(spool) if w0 <= t < w1)
    n_sadc = sum(1 for t in sadc_instants(work / "sa") if w0 <= t < w1)
    n_pid = pidstat_reports(work / "pidstat.txt", w0, w1)
    counts = [("sadc", 0, n_sadc), ("pidstat", 1, n_pid), ("para", 2, n_para)]
    if before:
        counts.append(("before", 3, sum(1 for t in para_instants(work / "sp0") if w0 <= t < w1)))
    for name, i, n in counts:
        out[name] = 1000 * (c1[i] - c0[i]) / max(1, n)
        out["n_" + name] = n
    shutil.rmtree(work, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=30.0, help="measured window per size")
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--sizes", default="0,100,300,1000,5000")
    ap.add_argument("--threads", action="store_true", help="also jobs of N threads")
    ap.add_argument("--shipper", action="store_true", help="peak RSS with the shipper loaded")
    ap.add_argument("--pure", action="store_true", help="PARA_PURE_PYTHON=1 for the agent")
    ap.add_argument("--before", metavar="TREE", help="also run the agent of this source tree")
    ap.add_argument(
        "--cgroups-only",
        action="store_true",
        help="also no job with [jobs] environ = false (a site whose jobs have cgroups)",
    )
    args = ap.parse_args()
    if not shutil.which("pidstat"):
        sys.exit("pidstat not found: install sysstat (Debian: apt install sysstat)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PBS_", "LSB_"))}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PARA_PURE_PYTHON"] = "1" if args.pure else "0"
    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = [(s, False, True) for s in sizes]
    kinds += [(s, True, True) for s in sizes if s] if args.threads else []
    if args.cgroups_only:
        kinds.insert(1, (0, False, False))
    runs: dict[tuple[int, bool, bool], list[dict[str, float]]] = {k: [] for k in kinds}
    for r in range(args.rounds):
        for size, threads, environ in kinds:
            w = window(size, threads, args.seconds, args.warmup, env, before=args.before,
                       environ=environ)  # fmt: skip
            runs[(size, threads, environ)].append(w)
            print(f"round {r + 1} {size:>5} {'threads' if threads else 'processes'}"
                  f"{'' if environ else ' (environ off)'}, {w['forks_per_s']:.1f} forks/s: "
                  f"para {w['para']:.3f} ms ({w['n_para']:.0f} samples), sadc {w['sadc']:.3f} "
                  f"({w['n_sadc']:.0f}), pidstat {w['pidstat']:.3f} ({w['n_pidstat']:.0f}), "
                  f"para peak RSS {w['rss_mib']:.1f} MiB"
                  + (f"; before {w['before']:.3f} ms" if args.before else ""),
                  flush=True)  # fmt: skip
    med = statistics.median
    print(f"\nms CPU per sample, medians over {args.rounds} rounds of {args.seconds:.0f} s "
          f"(agent kernels: {'pure Python' if args.pure else 'Cython'})")  # fmt: skip
    print(f"{'job':<16}{'para':>8}{'sadc':>8}{'pidstat':>9}{'para/sadc':>11}"
          f"{'para/(sadc+pidstat)':>21}{'para/pidstat':>14}{'RSS MiB':>9}")  # fmt: skip
    for (size, threads, environ), ws in runs.items():
        if not ws:
            continue  # --rounds 0: the shipper's memory only
        label = f"{size} {'threads' if threads else 'procs'}{'' if environ else ' env-off'}"
        print(f"{label:<16}{med(w['para'] for w in ws):>8.3f}{med(w['sadc'] for w in ws):>8.3f}"
              f"{med(w['pidstat'] for w in ws):>9.3f}"
              f"{med(w['para'] / w['sadc'] for w in ws):>11.2f}"
              f"{med(w['para'] / (w['sadc'] + w['pidstat']) for w in ws):>21.2f}"
              f"{med(w['para'] / w['pidstat'] for w in ws):>14.2f}"
              f"{max(w['rss_mib'] for w in ws):>9.1f}"
              f"{med(w['forks_per_s'] for w in ws):>9.1f} forks/s"
              + (f"   before {med(w['before'] for w in ws):.3f} ms, "
                 f"{med(w['before'] / w['sadc'] for w in ws):.2f}x sadc, "
                 f"{med(w['before'] / (w['sadc'] + w['pidstat']) for w in ws):.2f}x sadc+pidstat"
                 if args.before else ""))  # fmt: skip
    if args.shipper:
        w = window(300, False, args.seconds, args.warmup, env, shipper=True, before=args.before)
        print(f"\nwith the shipper (unreachable collector; Flight client "
              f"{'loaded' if w['arrow_loaded'] else 'NOT loaded'} in the agent), 300 job "
              f"processes: peak RSS {w['rss_mib']:.1f} MiB (at the end: {w['anon_mib']:.1f} MiB "
              f"private, {w['file_mib']:.1f} MiB of mapped files, shared and clean); "
              f"{w['para']:.3f} ms per sample in the agent's own process "
              f"(sadc {w['sadc']:.3f}, pidstat {w['pidstat']:.3f})")  # fmt: skip
        if "children" in w:
            print(f"  sender children (each its own process, started per sending attempt): "
                  f"{w['children']:.0f} started, {w['child_cpu_s']:.2f} s CPU in all, peak "
                  f"RSS {w['child_rss_mib']:.1f} MiB each")  # fmt: skip
        if args.before:
            print(f"  before (same window and configuration): peak RSS "
                  f"{w['before_rss_mib']:.1f} MiB, Flight client "
                  f"{'loaded' if w['before_arrow_loaded'] else 'NOT loaded'} in the agent, "
                  f"{w['before']:.3f} ms per sample")  # fmt: skip


if __name__ == "__main__":
    main()
