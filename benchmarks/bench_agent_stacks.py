"""What the agent's always-on call stacks (issue 13) cost a node, and what they are worth.

A node runs two jobs at once, each a fixed amount of work: a CPU-bound C program
(tests/fixtures/stacks/hot.c, five functions of known shares) and a CPU-bound Python program
(hot.py), found by the agent as Slurm jobs (SLURM_JOB_ID in their environment).  The real
`para agent run` samples them with the stacks family off, then on (its defaults: 19 Hz per
busy CPU, perf windows of 300 s cut at each job's end, py-spy at 20 Hz on CPython
processes), alternately, --repeat times; medians.  Printed side by side, each beside its
anchor of the same run:

- the agent's CPU (itself and every child it waited for: perf record, perf script, py-spy,
  the Parquet finaliser; utime+stime+cutime+cstime of /proc/PID/stat) per second of the jobs,
  on against off, and the difference in % of one core per busy CPU (goal: at most 1 %);
- each job's slowdown: its CPU time (rusage: sampling interrupts are charged to it) and its
  wall time, on against off;
- the stacks' bytes per node-hour: the stacks and instr_samples members of the finalised
  segments (Parquet, one dictionary of stacks per segment), scaled to an hour, beside the
  whole segment's bytes;
- the C job's top 5 functions from the feature database (`para collect`, `para report --job
  ID --db`) against a `para profile --functions` of the same program and work.

    .venv/bin/python benchmarks/bench_agent_stacks.py [--repeat 3] [--c-rounds 1500]
        [--py-rounds 1000]
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
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIX = REPO / "tests" / "fixtures" / "stacks"
TICK = os.sysconf("SC_CLK_TCK")
PARA = [sys.executable, "-m", "para"]
STACK_TABLES = ("stacks/", "instr_samples/")


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PBS_"))}
    e["PYTHONPATH"] = str(REPO)
    return e


def tree_cpu_s(pid: int) -> float:
    """utime + stime + cutime + cstime: the agent and the children it waited for."""
    data = Path(f"/proc/{pid}/stat").read_bytes()
    f = data[data.rindex(b")") + 2 :].split()
    return sum(int(x) for x in f[11:15]) / TICK


def status(spool: Path) -> dict:
    try:
        return json.loads((spool / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def wait_for(pred, timeout: float, what: str):  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    sys.exit(f"timed out: {what}")


def run_jobs(exe: Path, c_rounds: int, py_rounds: int, base_id: int, spool: Path,
             seen: set[str]) -> dict[str, dict]:  # fmt: skip
    """Both jobs at once; each one's wall and CPU time (rusage of the waited child)."""
    out: dict[str, dict] = {}
    procs = {}
    for name, argv in (
        ("c", [str(exe), "0", str(c_rounds)]),
        ("py", ["/usr/bin/python3", str(FIX / "hot.py"), "0", str(py_rounds)]),
    ):
        e = dict(env(), SLURM_JOB_ID=str(base_id + len(procs)), SLURM_JOB_NAME=f"bench-{name}")
        procs[name] = (subprocess.Popen(argv, env=e), time.monotonic())  # fmt: skip
    # every job the agent follows meanwhile (a shared machine runs others' jobs too)
    while len(out) < len(procs):
        seen.update(str(j.get("job")) for j in status(spool).get("jobs") or [])
        for name, (p, t0) in procs.items():
            if name in out or os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) \
                    is None:  # fmt: skip
                continue
            wall = time.monotonic() - t0
            _, st, ru = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(st)
            out[name] = {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime,
                         "id": str(base_id + list(procs).index(name))}  # fmt: skip
        time.sleep(0.1)
    return out


def one_run(tmp: Path, stacks: bool, exe: Path, args: argparse.Namespace, base_id: int) -> dict:
    spool = tmp / "spool"
    cfg = tmp / "agent.toml"
    cfg.write_text(
        f'[agent]\ninterval = 1.0\nspool_dir = "{spool}"\nstatus_every_s = 0.5\n'
        f"[jobs]\nend_after_s = 1.0\n[stacks]\nenabled = {str(stacks).lower()}\n"
    )
    log = open(tmp / "agent.log", "w")  # noqa: SIM115
    agent = subprocess.Popen([*PARA, "agent", "run", "--config", str(cfg)], env=env(),
                             stderr=log)  # fmt: skip
    try:
        wait_for(lambda: status(spool).get("pid") == agent.pid
                 and status(spool).get("samples", 0) >= 3, 60, "agent start")  # fmt: skip
        cpu0 = tree_cpu_s(agent.pid)
        t0 = time.monotonic()
        seen: set[str] = set()
        jobs = run_jobs(exe, args.c_rounds, args.py_rounds, base_id, spool, seen)
        ids = {j["id"] for j in jobs.values()}
        wait_for(lambda: not ({j.get("job") for j in status(spool).get("jobs") or []} & ids),
                 60, "jobs end")  # fmt: skip
        agent.send_signal(signal.SIGTERM)
        # the last window's stacks and the Parquet finaliser are counted: they are its cost
        _, wst, ru = os.wait4(agent.pid, 0)
        agent.returncode = os.waitstatus_to_exitcode(wst)
        t1 = time.monotonic()
        st = status(spool).get("stacks") or {}  # as the agent left it, its last window in
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        log.close()
    # wait4's rusage: the agent's and every child it waited for (as cutime, cstime)
    total = ru.ru_utime + ru.ru_stime
    segs = sorted((spool / "ready").glob("*.para"))
    stack_bytes = 0
    for s in segs:
        with zipfile.ZipFile(s) as z:
            names = [i for i in z.infolist() if i.filename.startswith(STACK_TABLES)]
            stack_bytes += sum(i.compress_size for i in names)
    return {
        "agent_cpu_s": total - cpu0,
        "seconds": t1 - t0,
        "jobs": jobs,
        "segments": segs,
        "segment_bytes": sum(s.stat().st_size for s in segs),
        "stack_bytes": stack_bytes,
        "stacks_status": st,
        "jobs_followed": len(seen - {"None"}),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--c-rounds", type=int, default=1500)
    ap.add_argument("--py-rounds", type=int, default=1000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-stacks-"))
    exe = work / "hot"
    subprocess.run(["gcc", "-O1", "-fno-omit-frame-pointer", "-fno-inline", "-o", str(exe),
                    str(FIX / "hot.c")], check=True)  # fmt: skip
    runs: dict[bool, list[dict]] = {False: [], True: []}
    base = 7_000_000 + (os.getpid() % 1000) * 100
    for i in range(args.repeat):
        # pairs, each in the other order than the last: a drift of the machine's load
        # favours neither side
        for on in (False, True) if i % 2 == 0 else (True, False):
            tmp = work / f"{'on' if on else 'off'}-{i}"
            tmp.mkdir()
            r = one_run(tmp, on, exe, args, base + 10 * (2 * i + on))
            runs[on].append(r)
            cost = r["stacks_status"].get("cost_cpu_s") if on else None
            if cost:
                print(f"  run {i + 1} stacks on: of the agent's CPU, perf record + perf script "
                      f"{cost['perf']:.2f} s, folding {cost['fold']:.2f} s, py-spy "
                      f"{cost['pyspy']:.2f} s", flush=True)  # fmt: skip
            print(
                f"  run {i + 1} stacks {'on ' if on else 'off'}: {r['jobs_followed']} jobs "
                "followed (the bench's 2 and the machine's others);",
                flush=True,
            )
            print(f"  run {i + 1} stacks {'on ' if on else 'off'}: agent {r['agent_cpu_s']:.2f} s "
                  f"CPU over {r['seconds']:.1f} s; C job {r['jobs']['c']['cpu_s']:.2f} s CPU "
                  f"{r['jobs']['c']['wall_s']:.1f} s wall; Python job "
                  f"{r['jobs']['py']['cpu_s']:.2f} s CPU", flush=True)  # fmt: skip
    med = statistics.median

    def m(on: bool, f) -> float:  # type: ignore[no-untyped-def]
        return med(f(r) for r in runs[on])

    busy = 2  # the two jobs keep two CPUs busy
    off_rate = m(False, lambda r: r["agent_cpu_s"] / r["seconds"])
    on_rate = m(True, lambda r: r["agent_cpu_s"] / r["seconds"])
    print(f"\nmedians of {args.repeat} runs each (two jobs: C {args.c_rounds} rounds, Python "
          f"{args.py_rounds} rounds, at once)")  # fmt: skip
    print(
        f"agent CPU (itself + perf, py-spy, finaliser) per second: stacks on "
        f"{100 * on_rate:.2f} % of a core vs off {100 * off_rate:.2f} %: stacks add "
        f"{100 * (on_rate - off_rate) / busy:.2f} % of one core per busy CPU (goal <= 1 %)"
    )
    for name in ("c", "py"):
        on_cpu, off_cpu = (m(x, lambda r, n=name: r["jobs"][n]["cpu_s"]) for x in (True, False))
        on_w, off_w = (m(x, lambda r, n=name: r["jobs"][n]["wall_s"]) for x in (True, False))
        print(f"{'C' if name == 'c' else 'Python'} job: CPU {on_cpu:.2f} s on vs {off_cpu:.2f} s "
              f"off ({100 * (on_cpu / off_cpu - 1):+.1f} %); wall {on_w:.1f} s vs {off_w:.1f} s "
              f"({100 * (on_w / off_w - 1):+.1f} %)")  # fmt: skip
    # what the family itself spent, counted apart in the agent (children's rusage around
    # each perf, the folding thread's time, py-spy's CPU): free of the agent's other work,
    # which grows with the other jobs the machine runs meanwhile
    own = m(True, lambda r: sum((r["stacks_status"].get("cost_cpu_s") or {}).values())
            / r["seconds"])  # fmt: skip
    print(f"stacks' own CPU (perf record + perf script + folding + py-spy): {100 * own:.2f} % "
          f"of a core: {100 * own / busy:.2f} % of one core per busy CPU")  # fmt: skip
    # the same figures per pair (on and off run back to back, under the same load): medians
    # of the pairs' differences and ratios
    pairs = list(zip(runs[True], runs[False]))
    added = med(
        (a["agent_cpu_s"] / a["seconds"] - b["agent_cpu_s"] / b["seconds"]) / busy for a, b in pairs
    )
    print(f"median of {len(pairs)} pairs: stacks add {100 * added:.2f} % of one core per busy "
          f"CPU to the agent")  # fmt: skip
    for name in ("c", "py"):
        cpu = med(a["jobs"][name]["cpu_s"] / b["jobs"][name]["cpu_s"] - 1 for a, b in pairs)
        wall = med(a["jobs"][name]["wall_s"] / b["jobs"][name]["wall_s"] - 1 for a, b in pairs)
        print(f"  {'C' if name == 'c' else 'Python'} job slowdown, median of pairs: CPU "
              f"{100 * cpu:+.1f} %, wall {100 * wall:+.1f} %")  # fmt: skip
    sb = m(True, lambda r: r["stack_bytes"] / r["seconds"] * 3600)
    seg_on = m(True, lambda r: r["segment_bytes"] / r["seconds"] * 3600)
    seg_off = m(False, lambda r: r["segment_bytes"] / r["seconds"] * 3600)
    print(
        f"stacks bytes per node-hour: {sb / 1e6:.2f} MB (stacks + instr_samples members) vs "
        f"the whole segment {seg_on / 1e6:.2f} MB on, {seg_off / 1e6:.2f} MB off"
    )
    # DB against para profile, on the last "on" run
    last = runs[True][-1]
    db = work / "db"
    subprocess.run([*PARA, "collect", "--db", str(db), "-q", *map(str, last["segments"])],
                   env=env(), check=True, capture_output=True)  # fmt: skip
    job = last["jobs"]["c"]["id"]
    rep = subprocess.run([*PARA, "report", "--job", job, "--db", str(db), "--json"], env=env(),
                         capture_output=True, text=True, check=True)  # fmt: skip
    db_doc = json.loads(rep.stdout)["job"]["functions"]
    out = work / "prof.para"
    subprocess.run([*PARA, "profile", "--functions", "-q", "-o", str(out), "--", str(exe), "0",
                    str(args.c_rounds)], env=env(), check=True, capture_output=True)  # fmt: skip
    rep = subprocess.run([*PARA, "report", str(out), "--json"], env=env(), capture_output=True,
                         text=True, check=True)  # fmt: skip
    pr_doc = json.loads(rep.stdout)["job"]["functions"]
    dbh = {h["function"]: h["self_pct"] for h in db_doc["hotspots"]}
    prh = {h["function"]: h["self_pct"] for h in pr_doc["hotspots"]}
    top = sorted(prh, key=lambda f: -prh[f])[:5]
    print(
        f"C job's top 5 (self %): database ({db_doc['samples']} samples at 19 Hz) vs "
        f"para profile --functions ({pr_doc['samples']} samples)"
    )
    worst = 0.0
    for fn in top:
        d = abs(dbh.get(fn, 0.0) - prh[fn])
        worst = max(worst, d)
        print(f"  {fn:<10} {dbh.get(fn, 0.0):6.2f} vs {prh[fn]:6.2f}  ({d:.2f} points)")
    same = set(sorted(dbh, key=lambda f: -dbh[f])[:5]) == set(top)
    print(f"  same top 5: {same}; largest difference {worst:.2f} points (goal <= 5)")


if __name__ == "__main__":
    main()
