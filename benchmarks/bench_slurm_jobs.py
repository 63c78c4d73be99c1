"""Job CPU of real Slurm jobs against the kernel's truth (issue 10).

A real single-node Slurm (tests/slurm_support.py: Debian's slurm-wlm 22.05 and munge, in the
foreground, proctrack/cgroup + task/cgroup + jobacct_gather/cgroup where the machine allows,
else proctrack/linuxproc) runs six jobs under one real `para agent run` at its default 1 Hz.
Each job's truth is the rusage its own shells print with bash `times` (the shell and every
child it waited for, user and system, as the kernel accounts them); the srun tasks print
theirs too.  The agent's figure is job_end's cpu_s; the ratio agent / truth is printed per
job, with the processes' and the cgroup's own figures beside it, and the worst case.

    .venv/bin/python benchmarks/bench_slurm_jobs.py [--interval 1.0] [--linuxproc]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from para.formats import ParaFile  # noqa: E402
from tests.slurm_support import TEST_USER, Slurm, ensure_test_user  # noqa: E402
from tests.test_agent_e2e import AgentRun  # noqa: E402
from tests.test_slurm import BUSY, END, JOBS, START, cpu_seconds  # noqa: E402

SIX = dict(JOBS)
# two children side by side, and 300 commands each shorter than the interval
SIX["pair"] = (
    "#!/bin/bash\n" + START + f"{BUSY.format(cpu=2)} &\n{BUSY.format(cpu=2)} &\nwait\n" + END,
    ("-n2",),
    None,
)
SIX["short"] = (
    "#!/bin/bash\n"
    + START
    + "for i in $(seq 300); do sha256sum /usr/bin/bash > /dev/null; done\n"
    + END,
    ("-n1",),
    None,
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--linuxproc", action="store_true", help="proctrack/linuxproc, no cgroups")
    args = ap.parse_args()
    ensure_test_user()
    slurm = Slurm(proctrack="linuxproc" if args.linuxproc else None)
    tmp = Path(tempfile.mkdtemp(prefix="para-bench-slurm-"))
    try:
        slurm.start()
        agent = AgentRun(tmp, extra="[jobs]\nend_after_s = 2.0\n", interval=args.interval)
        try:
            agent.wait_samples(2)
            ids = {n: slurm.sbatch(s, *a, name=n, user=u) for n, (s, a, u) in SIX.items()}
            slurm.wait_done(list(ids.values()), timeout=600)
            mine = set(ids.values())
            end = time.monotonic() + 60
            while time.monotonic() < end:
                if not {j.get("job") for j in agent.status().get("jobs") or []} & mine:
                    break
                time.sleep(0.2)
            agent.stop()
        finally:
            agent.kill()
        ends = {}
        for seg in agent.ready():
            with ParaFile(seg) as pf:
                for e in pf.read_table("events").to_pylist():
                    if e["kind"] == "job_end" and e["name"] in mine:
                        ends[e["name"]] = json.loads(e["detail"])
        print(f"Slurm {slurm.proctrack}, agent at {args.interval:g} s; truth: bash `times`")
        print(f"{'job':8} {'truth s':>8} {'agent s':>8} {'ratio':>7} {'from':>9} "
              f"{'procs s':>8} {'cgroup s':>8}")  # fmt: skip
        worst = 1.0
        for name, job_id in ids.items():
            truth = cpu_seconds(slurm.output(name))
            d = ends.get(job_id, {})
            got = d.get("cpu_s")
            ratio = got / truth if got is not None and truth else float("nan")
            if abs(ratio - 1) > abs(worst - 1) or ratio != ratio:
                worst = ratio
            print(f"{name:8} {truth:8.2f} {got if got is not None else float('nan'):8.2f} "
                  f"{ratio:7.4f} {d.get('cpu_from', '-'):>9} "
                  f"{d.get('processes_cpu_s', float('nan')):8.2f} "
                  f"{d.get('cg_cpu_s', float('nan')):8.2f}")  # fmt: skip
        print(f"worst ratio: {worst:.4f} ({100 * (worst - 1):+.2f} %); user of 'other': "
              f"{TEST_USER}")  # fmt: skip
    finally:
        slurm.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
