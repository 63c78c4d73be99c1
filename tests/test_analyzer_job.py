"""The job engine and the dimensions beyond the rules: several nodes (idle node, straggler,
phases, heatmap), the agent's segments of one node, the instruction dimension on a real
binary sampled by perf, `para compare` on real runs, and the HTML page of a job in
headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from para.analyzer import instructions
from para.analyzer.analysis import analyse
from para.analyzer.job import Job, group_files
from para.analyzer.report import render_html, report
from para.analyzer.rules import default_config
from para.cython_ext import load
from para.formats import ParaFile, ParaWriter
from para.formats.schema import catalogue

from .conftest import REPO, cannot_run, need_tool, para_cmd, run_para
from .test_report import CHROMIUM, CHROMIUM_HINT, HOSTILE, Tree, _chromium

sys.path.insert(0, str(REPO / "benchmarks"))
import gen_job  # noqa: E402

WORKLOADS = Path(__file__).parent / "analyzer_workloads.py"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """benchmarks/gen_job.py's job at a small size: 4 nodes, 4 minutes, 8 CPUs and 4 ranks
    each; node 2 (cn0003) idle, node 1 (cn0002) the straggler, FP counters of scalar code."""
    return gen_job.make_job(tmp_path_factory.mktemp("job"), nodes=4, seconds=240, cpus=8,
                            ranks=4, quiet=True)  # fmt: skip


@pytest.fixture(scope="module")
def synth(synthetic: list[Path]) -> Any:
    with Job(synthetic) as job:
        return analyse(job, default_config())


def test_nodes_of_a_job_idle_node_straggler_and_balance(synth):
    d = synth.doc
    assert d["nodes_total"] == 4 and d["allowed_cpus"] == 32
    assert [n["node"] for n in d["system"]] == ["cn0001", "cn0002", "cn0003", "cn0004"]
    fired = {b["id"]: b for b in synth.bottlenecks}
    assert fired["idle_nodes"]["nodes"] == ["cn0003"]
    assert d["balance"]["idle_nodes"] == ["cn0003"]
    assert "cn0002" in d["balance"]["stragglers"]
    assert d["balance"]["imbalance_pct"] > 5
    assert fired["poor_vectorization"]["severity"] == "high"  # 2e7 packed of 6.2e8: 3.2 %
    assert fired["poor_vectorization"]["value"] == pytest.approx(100 * 2e7 / 6.2e8, rel=1e-3)
    assert synth.hotspots[0]["function"] == "stencil_apply"
    # a third of the samples wait in MPI_Waitall / ucp_worker_progress
    assert "communication libraries" in fired["network_bound"]["evidence"]


def test_phases_of_the_synthetic_job(synth):
    labels = [p["label"] for p in synth.doc["phases"]]
    # input, then compute with a checkpoint every 20 % of the run after the first 10 % (4 in
    # 4 minutes), then rank 0 alone
    assert labels[0].startswith("read")
    assert sum("write" in x for x in labels) == 4
    assert labels[-1] == "serial compute"
    assert any("communication" in x for x in labels)
    ph = synth.doc["phases"]
    assert all(a["end_s"] == b["start_s"] for a, b in zip(ph, ph[1:], strict=False))
    write = next(p for p in ph if "write" in p["label"])
    assert write["hotspots"][0]["function"] == "__pwrite64"


def test_heatmap_and_timeline_shapes(synth):
    h = synth.doc["heatmap"]
    assert [r["node"] for r in h["rows"]] == ["cn0001", "cn0002", "cn0003", "cn0004"]
    assert all(len(r["cpu_pct"]) == len(h["t_s"]) for r in h["rows"])
    idle = h["rows"][2]["cpu_pct"]
    assert max(v for v in idle if v is not None) < 1.0
    tl = synth.doc["timeline"]
    assert len(tl["t_s"]) == len(tl["cores"]) and tl["allowed_cpus"][10] == 32


def _rows(path: Path, table: str) -> tuple[list[str], list[dict[str, Any]]]:
    with ParaFile(path) as pf:
        tab = pf.read_table(table)
    return tab.column_names, tab.to_pylist()


def test_the_agents_segments_of_one_node_are_one_node(tmp_path, synthetic):
    src = synthetic[0]
    with ParaFile(src) as pf:
        meta = {k: pf.meta[k] for k in ("host", "interval", "job", "command", "allowed_cpus")}
    parts = []
    for i, (lo, hi) in enumerate(((0, 120), (120, 240))):
        w = ParaWriter(tmp_path / f"seg{i}.para", {**meta, "source": "para agent",
                       "segment": {"id": f"s{i}", "seq": i, "host": "cn0001"}})  # fmt: skip
        for table in ("node", "memory"):
            cols, rows = _rows(src, table)
            for r in rows:
                t_ms = int(r["t"].timestamp() * 1000)
                if lo * 1000 <= t_ms - gen_job.T0_MS < hi * 1000:
                    w.append(t_ms, {table: [[r[c] for c in cols[1:]]]})
        w.close()
        parts.append(tmp_path / f"seg{i}.para")
    assert [label for label, _ in group_files(parts)] == ["cn0001"]
    with Job(list(reversed(parts))) as job:
        assert len(job.nodes) == 1 and len(job.nodes[0].files) == 2
        steps = job.one("SELECT count(*) FROM node_sec")
        assert steps == 240
    # two runs at the same time on one host are two nodes
    assert [label for label, _ in group_files([src, src])] == ["cn0001", "cn0001#2"]


HOT_C = r"""
#include <stdio.h>
#include <stdlib.h>
double work(long n) {
    double s = 0.0;
    for (long i = 1; i < n; i++) { s += 1.0 / (double)i; s *= 1.0000001; }
    return s;
}
int main(int argc, char **argv) { printf("%f\n", work(atol(argv[1]))); return 0; }
"""


@pytest.fixture(scope="module")
def annotated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A C program sampled by perf record as `para profile --functions` does, its leaf
    instructions kept with instructions.rows_from_script, written to a .para file."""
    need_tool("perf", "apt install linux-perf (make test installs it)")
    need_tool("cc", "apt install gcc")
    need_tool("objdump", "apt install binutils")
    d = tmp_path_factory.mktemp("instr")
    (d / "hot.c").write_text(HOT_C)
    exe = d / "hot"
    subprocess.run(["cc", "-O1", "-g", "-fno-omit-frame-pointer", "-o", str(exe), str(d / "hot.c")],
                   check=True)  # fmt: skip
    rec = subprocess.run(["perf", "record", "-e", "cpu-clock", "-F", "999", "-g", "-o",
                          str(d / "perf.data"), str(exe), "150000000"],
                         capture_output=True, text=True)  # fmt: skip
    if rec.returncode != 0:
        cannot_run(
            f"perf record cannot run here: {rec.stderr.strip()[-200:]}",
            "allow perf events: run as root or sysctl kernel.perf_event_paranoid=1",
        )
    script = subprocess.run(["perf", "script", "-i", str(d / "perf.data"), "-F",
                             "comm,pid,tid,time,event,ip,sym,symoff,dso"],
                            capture_output=True, check=True).stdout  # fmt: skip
    rows = instructions.rows_from_script(script)
    stacks = load("fold").fold_timed(script)
    path = d / "hot.para"
    w = ParaWriter(path, {"host": {"hostname": "h", "clock_ticks": 100}, "interval": 1.0,
                          "command": [str(exe), "150000000"], "allowed_cpus": 1,
                          "catalogue": catalogue()})  # fmt: skip
    t = 1_800_000_000_000
    w.append(t, {"stacks": [[t, p, tid, c, s, n] for _, p, tid, c, s, n in stacks]},
             sample=False)  # fmt: skip
    w.append(t, {"instr_samples": rows}, sample=False)
    w.close({"functions": {"event": "cpu-clock", "frequency_hz": 999}})
    return {"path": path, "exe": exe, "rows": rows}


def test_instruction_rows_are_the_leaf_of_each_sample(annotated):
    rows = annotated["rows"]
    assert rows and all(len(r) == 5 for r in rows)
    work = [r for r in rows if r[2] == "work" and r[1] == str(annotated["exe"])]
    assert sum(r[4] for r in work) > 0.5 * sum(r[4] for r in rows)


def test_hottest_function_annotated_from_the_binary(annotated):
    with Job([annotated["path"]]) as job:
        a = analyse(job, default_config())
    ins = a.doc["instructions"]
    f = ins["functions"][0]
    assert f["function"] == "work" and f["disassembled"] and f["reason"] is None
    # each share is its samples' of the function's, rounded to 0.01 (so their sum may pass
    # 100 by 0.005 each: 100.02 seen), and the instructions shown hold no more than it did
    assert all(
        abs(x["pct"] - 100 * x["samples"] / f["samples"]) <= 0.005 for x in f["instructions"]
    )
    assert sum(x["samples"] for x in f["instructions"]) <= f["samples"]
    assert all(x["instruction"] for x in f["instructions"])
    # the loop is where the time goes: found in the binary by the test itself (the span of
    # work's one backward branch), it holds nearly every sample, each at its own instruction
    first, last, text = _loop_of(annotated["exe"], "work")
    in_loop = [x for x in f["instructions"] if first <= x["offset"] <= last]
    assert sum(x["samples"] for x in in_loop) >= 0.95 * f["samples"], (first, last, f)
    assert all(x["instruction"] == text[x["offset"]] for x in f["instructions"])
    assert a.hotspots[0]["function"] == "work"


def _loop_of(exe: Path, fn: str) -> tuple[int, int, dict[int, str]]:
    """(first, last) offsets in `fn` of the loop that its backward branch closes, and the text
    of each instruction, from objdump's own disassembly."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(exe)], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    body = out.split(f"<{fn}>:\n", 1)[1].split("\n\n", 1)[0]
    code = [
        (int(m[1], 16), m[2].strip()) for m in re.finditer(r"^\s*([0-9a-f]+):\s+(.*)$", body, re.M)
    ]
    start = code[0][0]
    loops = [(int(m[1], 16) - start, at - start) for at, ins in code
             if (m := re.match(r"j\w+\s+([0-9a-f]+) <", ins)) and int(m[1], 16) < at]  # fmt: skip
    assert len(loops) == 1, loops
    return loops[0][0], loops[0][1], {at - start: ins for at, ins in code}


def test_annotation_says_why_when_the_binary_is_gone(annotated, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.move(str(annotated["exe"]), moved)
    try:
        with Job([annotated["path"]]) as job:
            a = analyse(job, default_config())
        f = a.doc["instructions"]["functions"][0]
        assert not f["disassembled"] and "not there any more" in f["reason"]
        assert f["instructions"] and f["instructions"][0]["instruction"] is None
    finally:
        shutil.move(str(moved), annotated["exe"])


def test_no_instruction_table_says_how_to_get_one(synth):
    ins = synth.doc["instructions"]
    assert ins["functions"] == [] and "instr_samples" in ins["reason"]


# Runs a workload and then prints the CPU time it used, as the program itself measures it.
CPU_TIMED = ("import runpy, sys, time; sys.argv = sys.argv[1:]; "
             "runpy.run_path(sys.argv[0], run_name='__main__'); "
             "print(f'cpu_s {time.process_time()}', file=sys.stderr)")  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("cmp")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = {}
    for name, secs in (("a", "2"), ("b", "4")):
        procs[name] = subprocess.Popen(
            [
                *para_cmd(),
                "profile",
                "-q",
                "-i",
                "0.5",
                "--functions",
                "-o",
                str(d / f"{name}.para"),
                "--",
                sys.executable,
                "-c",
                CPU_TIMED,
                str(WORKLOADS),
                "burn",
                secs,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    cpu = {}
    for name, p in procs.items():
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        cpu[name] = float(re.findall(r"^cpu_s (\S+)$", err, re.M)[-1])
    return {"a": d / "a.para", "b": d / "b.para", "cpu_a": cpu["a"], "cpu_b": cpu["b"]}


def test_compare_two_runs(runs):
    r = run_para("compare", str(runs["a"]), str(runs["b"]), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["same_program"] and doc["a"]["duration_s"] < doc["b"]["duration_s"]
    assert "slower than A" in doc["verdict"]
    res = {x["metric"]: x for x in doc["resources"]}
    assert res["duration_s"]["change_pct"] > 40
    # the phases of B last longer in all (what they are called depends on what else ran)
    assert sum(k["change_s"] for k in doc["phases"]["by_kind"]) > 1.0
    fn = doc["functions"]
    assert fn["reason"] is None, fn["reason"]  # both were recorded with --functions
    assert fn["unit"] == "s" and fn["rows"]
    top = fn["rows"][0]
    cpu_a, cpu_b = runs["cpu_a"], runs["cpu_b"]
    assert cpu_b > cpu_a, (cpu_a, cpu_b)  # the program's own measure: B worked longer
    assert top["b"] > top["a"] > 0, top  # and the extra work shows in its hottest function
    for run, cpu in (("a", cpu_a), ("b", cpu_b)):
        with ParaFile(runs[run]) as pf:
            hz = pf.meta["functions"]["frequency_hz"]
            stacks = pf.read_table("stacks").to_pylist()
        # on a CPU: py-spy's rows of threads waiting or ready are not CPU time
        stacks = [r for r in stacks if r.get("state") in (None, "cpu")]
        # the seconds are perf's samples over its rate: together, the CPU time the program
        # measured itself; the function's, its leaf samples in the recorded stacks
        sampled = sum(r["samples"] for r in stacks) / hz
        assert abs(sampled - cpu) <= 0.15 * cpu + 0.05, (run, sampled, cpu)
        leaf = sum(r["samples"] for r in stacks if r["stack"].rsplit(";", 1)[-1] == top["function"])
        assert abs(top[run] - leaf / hz) < 0.002, (run, top, leaf / hz)
    text = run_para("compare", str(runs["a"]), str(runs["b"]))
    assert text.returncode == 0 and "Time per phase" in text.stdout and "Resources" in text.stdout


def test_compare_says_what_is_missing(runs, tmp_path):
    r = run_para("compare", str(runs["a"]), str(tmp_path / "none.para"))
    assert r.returncode == 1 and "no such file or directory" in r.stderr


def test_job_page_in_chromium(synthetic, tmp_path):
    if CHROMIUM is None:
        need_tool("chromium", CHROMIUM_HINT)
    hostile = tmp_path / "hostile.para"
    w = ParaWriter(hostile, {"host": {"hostname": "h", "clock_ticks": 100}, "interval": 1.0,
                             "command": ["app"], "allowed_cpus": 1})  # fmt: skip
    t = gen_job.T0_MS
    w.append(t, {"stacks": [[t, 7, 7, "app", f"main;{HOSTILE}", 5], [t, 7, 7, "app", "main;f", 5]]},
             sample=False)  # fmt: skip
    w.close()
    rep = report([str(p) for p in synthetic], runs=False)
    page = tmp_path / "job.html"
    page.write_text(render_html(rep))
    dump = _chromium(page.as_uri(), tmp_path / "profile", "--dump-dom")
    console = [ln for ln in dump.stderr.splitlines() if "CONSOLE" in ln]
    assert not console, console
    tree = Tree(dump.stdout).root
    for pid in ("job-timeline", "job-heatmap", "job-flame", "job-roofline"):
        box = next((n for n in tree.iter() if n.attrs.get("id") == pid), None)
        assert box is not None, pid
        assert [n for n in box.iter() if n.tag == "svg"], f"{pid} not drawn"
    finding = [n for n in tree.iter() if n.attrs.get("data-rule") == "idle_nodes"]
    assert finding and "cn0003" in finding[0].all_text()
    page2 = tmp_path / "hostile.html"
    page2.write_text(render_html(report([str(hostile)])))
    dump2 = _chromium(page2.as_uri(), tmp_path / "profile2", "--dump-dom")
    assert not [ln for ln in dump2.stderr.splitlines() if "CONSOLE" in ln]
    tree2 = Tree(dump2.stdout).root
    assert not [n for n in tree2.iter() if n.tag == "img"]
    assert not [n for n in tree2.iter() if any(a.startswith("on") for a in n.attrs)]
    assert HOSTILE in [n.all_text() for n in tree2.iter() if n.tag == "td"]
