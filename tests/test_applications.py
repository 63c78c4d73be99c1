"""The application dimension of a real `para profile`: each executable's CPU and share, and
the job's CPU time they are shares of, against what the program measured of itself and of
its children (os.times: the kernel's count)."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from .conftest import run_para

INTERVAL = 0.5

# burns CPU itself, between short shell children (each ~0.05 s: most are never seen by a
# look), then writes what the kernel counted for it and for the children it waited for
PROG = """
import json, os, subprocess, sys, time
t0 = time.monotonic()
def burn(sec):
    end = time.process_time() + sec
    while time.process_time() < end:
        sum(i * i for i in range(1000))
loop = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"
for k in range(12):
    burn(0.1)
    if k == 4:  # 8 MiB to the disk (well after para's first look), counted by the kernel
        with open("out.bin", "wb") as f:
            f.write(os.urandom(8 << 20))
            f.flush()
            os.fsync(f.fileno())
    for _ in range(3):
        subprocess.run(["sh", "-c", loop], check=True)
t = os.times()
json.dump({"self_s": t.user + t.system, "children_s": t.children_user + t.children_system,
           "wall_s": time.monotonic() - t0}, open(sys.argv[1], "w"))
"""


@pytest.fixture(scope="module")
def profiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, str]:
    tmp = tmp_path_factory.mktemp("apps")
    prog, own, out = tmp / "prog.py", tmp / "own.json", tmp / "apps.para"
    prog.write_text(textwrap.dedent(PROG))
    r = run_para("profile", "-q", "-i", str(INTERVAL), "-o", str(out), "--",
                 sys.executable, str(prog), str(own), cwd=tmp)  # fmt: skip
    assert r.returncode == 0, r.stderr
    rep = run_para("report", str(out), "--json")
    assert rep.returncode == 0, rep.stderr
    term = run_para("report", str(out), env={"COLUMNS": "160"})
    assert term.returncode == 0, term.stderr
    return json.loads(rep.stdout)["job"], json.loads(own.read_text()), term.stdout


def test_the_jobs_cpu_time_is_what_the_kernel_counted(profiled):
    job, own, _ = profiled
    want = own["self_s"] + own["children_s"]
    # (the program's count stops just before it writes it and exits)
    assert job["summary"]["cpu_s"] == pytest.approx(want, abs=0.05 + 0.02 * want)


def test_the_jobs_duration_is_the_time_it_ran_and_its_cores_per_second_of_it(profiled):
    """The grid's last step holds what the command used after the last look, but the
    command ended within it: a whole step more read 2.5 s for a 2.2 s command."""
    job, own, _ = profiled
    # the program's own clock starts after the interpreter's start-up and stops before
    # its exit: some hundredths of a second inside the command's time
    assert own["wall_s"] <= job["duration_s"] <= own["wall_s"] + 0.15
    s = job["summary"]
    # (cores to 0.001, CPU time to 0.01 s)
    slack = 0.0005 + 0.005 / job["duration_s"]
    assert s["cores_mean"] == pytest.approx(s["cpu_s"] / job["duration_s"], abs=slack)
    node = job["system"][0]
    assert node["cores_mean"] == pytest.approx(s["cores_mean"], abs=0.002)
    # storage, per second of the same time: what the program wrote
    assert s["write_bps"] * job["duration_s"] == pytest.approx(8 << 20, rel=0.02)


def test_each_executables_share_is_of_the_jobs_cpu(profiled):
    job, own, _ = profiled
    cpu = job["summary"]["cpu_s"]
    apps = {a["executable"]: a for a in job["applications"]}
    # the Python process as last sampled: never more than it used, and short of it by at
    # most what one core can use after the last look at it
    py = apps[prog_exe := next(e for e in apps if e.startswith("python"))]
    assert own["self_s"] - INTERVAL - 0.05 <= py["cpu_s"] <= own["self_s"] + 0.02, prog_exe
    for a in apps.values():
        # (both times are rounded to 0.01 s, the share to 0.1 point)
        slack = 100 * 0.005 * (1 / cpu + a["cpu_s"] / cpu**2) + 0.05
        assert a["cpu_pct"] == pytest.approx(100 * a["cpu_s"] / cpu, abs=slack)
    # the executables and what no process was seen using make the job's CPU time whole
    unseen = job["summary"]["unseen_cpu_s"]
    assert sum(a["cpu_s"] for a in apps.values()) + unseen == pytest.approx(cpu, abs=0.02)
    # most shell children lived between two looks: their CPU is the job's, no executable's
    seen_sh = apps["sh"]["cpu_s"] if "sh" in apps else 0.0
    assert unseen >= own["children_s"] - seen_sh - INTERVAL - 0.05


def test_the_table_shows_what_no_process_was_seen_using(profiled):
    job, _, text = profiled
    unseen = job["summary"]["unseen_cpu_s"]
    row = next(ln for ln in text.splitlines() if ln.startswith("(no process seen)"))
    assert f"{unseen:.1f}" in row.split()
    assert f"{100 * unseen / job['summary']['cpu_s']:.1f} %" in row
