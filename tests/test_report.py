"""`para report` on real recordings made here by `para profile`: the terminal tables agree
with the file, the JSON follows docs/report-json.md and is deterministic, and the HTML page
renders in headless Chromium with every hostile string shown as text."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from para.analyzer.report import render_html, report
from para.analyzer.summary import fmt_bytes
from para.formats import ParaFile, ParaWriter
from para.formats.schema import TABLES

from .conftest import REPO, cannot_run, need_tool, para_cmd, run_para

HOSTILE = "</script><script>alert(1)</script> <img src=x onerror=alert(1)>"
HOSTILE_SCRIPT = f"sleep 1; exit 3 # {HOSTILE}"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_HINT = "apt install chromium (make test installs it)"
PLOTS = ["cpu", "job", "memory", "disk", "net", "gpu", "counters"]
FAMILY = {"cpu": "cpu", "job": "process", "memory": "memory", "disk": "disk", "net": "net",
          "gpu": "gpu", "counters": "counters"}  # fmt: skip

pytestmark = pytest.mark.slow


# -- recordings ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two real recordings, made at the same time: the phases workload (compute on two
    processes for 3 s, write+fsync, read, idle, growing memory) with call stacks, and a
    command line built to break out of HTML that exits with code 3."""
    d = tmp_path_factory.mktemp("report")
    env = dict(os.environ, PARA_DEMO_DIR=str(d))
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    phases, hostile = d / "phases.para", d / "hostile.para"
    workload = [sys.executable, str(REPO / "benchmarks/workloads/phases.py"), "--scale", "0.75",
                "--io-mb", "10"]  # fmt: skip
    procs = [
        subprocess.Popen([*para_cmd(), "profile", "-q", "--functions", "-o", str(phases), "--",
                          *workload], env=env, cwd=d, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True),
        subprocess.Popen([*para_cmd(), "profile", "-q", "-o", str(hostile), "--", "sh", "-c",
                          HOSTILE_SCRIPT], env=env, cwd=d, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True),
    ]  # fmt: skip
    outs = [p.communicate(timeout=120) for p in procs]
    assert procs[0].returncode == 0, outs[0][1]
    assert procs[1].returncode == 3, outs[1][1]
    return {"dir": d, "phases": phases, "hostile": hostile, "workload": workload,
            "stderr": outs[0][1]}  # fmt: skip


def _meta(path: Path) -> dict[str, Any]:
    with ParaFile(path) as pf:
        return pf.meta


def _column(path: Path, table: str, column: str) -> list[Any]:
    with ParaFile(path) as pf:
        if table not in pf.tables:
            return []
        return pf.read_table(table, [column]).column(column).to_pylist()


@pytest.fixture(scope="module")
def text(rec: dict[str, Any]) -> str:
    r = run_para("report", str(rec["phases"]))
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def json_out(rec: dict[str, Any]) -> str:
    r = run_para("report", str(rec["phases"]), str(rec["hostile"]), "--json")
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def doc(json_out: str) -> dict[str, Any]:
    return json.loads(json_out)


# -- terminal --------------------------------------------------------------------------------


def test_terminal_report_agrees_with_the_file(rec, text):
    meta = _meta(rec["phases"])
    assert "\x1b" not in text, "colour codes written to a pipe"
    assert all(line == line.rstrip() for line in text.splitlines())
    assert (
        f"duration     {meta['elapsed_s']:.1f} s (exit code 0), {meta['samples']} samples "
        f"every {meta['interval']} s" in text
    )
    for title in ("Resources over the run", "Processes of the job by CPU time"):
        assert title in text
    rows = {line.split()[0]: line for line in text.splitlines() if re.match(r"^\s*\d+ ", line)}
    pids = _column(rec["phases"], "proc", "pid")
    rss = _column(rec["phases"], "proc", "rss_bytes")
    peak: dict[int, int] = {}
    for pid, r in zip(pids, rss, strict=True):
        peak[pid] = max(peak.get(pid, 0), r or 0)
    top = max(peak, key=lambda p: peak[p])  # the parent, which grows memory at the end
    assert str(top) in rows, text
    assert fmt_bytes(peak[top]) in rows[str(top)]
    assert " python " in rows[str(top)] and f"   {sys.executable} " in rows[str(top)]
    gpu = (meta.get("families") or {}).get("gpu") or {}
    if gpu.get("state") == "ok":
        assert re.search(r"^GPU \S+ busy ", text, re.M)
    else:
        assert re.search(r"^GPU\s+-\s+-\s+not measured: ", text, re.M)
        assert gpu.get("reason", "not recorded")[:40] in " ".join(text.split())
    with ParaFile(rec["phases"]) as pf:
        has_stacks = "stacks" in pf.tables
    if has_stacks:
        assert "Hottest functions by self time" in text
    else:
        assert "\nFunctions: " in text


def test_the_bundled_workload_shows_its_python_functions(rec, doc):
    """What `make demo` shows (issue 12): the Python functions of phases.py, not the
    interpreter's, the hottest (py-spy's frames on perf's samples)."""
    with ParaFile(rec["phases"]) as pf:
        rows = pf.read_table("stacks").to_pylist() if "stacks" in pf.tables else []
        python = (pf.meta.get("functions") or {}).get("python")
    if not python:
        cannot_run(
            "no Python stacks were recorded (py-spy or perf record missing)",
            "pip install py-spy (para's dependency); apt install linux-perf",
        )
    # why, when it fails: how many of perf's samples took a Python stack, which processes
    # py-spy could not read, and what `para profile` said
    why = {k: v for k, v in python.items() if k != "binary"}
    why = f"{json.dumps(why, indent=1, default=str)}\nprofile's stderr:\n{rec['stderr']}"
    assert any(r["source"] == "py-spy" for r in rows), why
    hot = [h["function"] for h in doc["job"]["functions"]["hotspots"][:5]]
    assert re.match(r"phases\.burn \(.*phases\.py:\d+\)$", hot[0]), f"{hot}\n{why}"
    # the samples taken before py-spy first read a process are not the interpreter's
    # functions either (pystacks.NO_PY_STACK)
    assert not any(h.startswith("_Py") for h in hot[:3]), f"{hot}\n{why}"


def test_terminal_shows_exit_code_and_hostile_command_as_is(rec):
    r = run_para("report", str(rec["hostile"]))
    assert r.returncode == 0, r.stderr
    assert "(exit code 3)" in r.stdout
    assert HOSTILE_SCRIPT[:40] in r.stdout  # shown literally (the column may cut it short)


def test_several_files_give_one_section_each(rec):
    r = run_para("report", str(rec["phases"]), str(rec["hostile"]))
    assert r.returncode == 0, r.stderr
    assert "=== run 1 of 2 ===" in r.stdout and "=== run 2 of 2 ===" in r.stdout
    assert r.stdout.count("para: summary of ") == 2


def _job_cores_by_hand(path: Path) -> dict[int, float]:
    """Cores busy with the job at each sample (epoch ms), from the raw process ticks."""
    import pyarrow as pa

    with ParaFile(path) as pf:
        tab = pf.read_table("proc", ["t", "pid", "utime", "stime"])
        hz = float(pf.meta["host"]["clock_ticks"])
        interval = float(pf.meta["interval"])
    rows = zip(
        tab.column("t").cast(pa.int64()).to_pylist(),
        tab.column("pid").to_pylist(),
        tab.column("utime").to_pylist(),
        tab.column("stime").to_pylist(),
        strict=True,
    )
    last: dict[int, tuple[int, int]] = {}
    cores: dict[int, float] = {}
    for t, pid, u, s in sorted(rows, key=lambda r: (r[1], r[0])):
        if pid in last:
            t0, ticks0 = last[pid]
            dt = (t - t0) / 1000
            if dt >= interval / 4:
                cores[t] = cores.get(t, 0.0) + (u + s - ticks0) / hz / dt
        last[pid] = (t, u + s)
    return cores


def test_compute_phase_keeps_more_than_one_core_busy(rec, doc):
    run = doc["runs"][0]
    # the report's per-second job CPU is what the kernel's ticks say
    by_hand = _job_cores_by_hand(rec["phases"])
    job = run["timeline"]["job"]
    t0_ms = round(run["t0"] * 1000)
    for t, c in zip(job["t_s"], job["cores"], strict=True):
        expected = by_hand.get(t0_ms + round(t * 1000))
        assert (c is None) == (expected is None), t
        assert c is None or c == pytest.approx(expected, abs=0.002), t
    # the compute phase: from the start of the two pool workers to their end
    procs = {p["pid"]: p for p in run["processes"]}
    root = next(p for p in run["processes"] if p["cmdline"] == run["command"]
                and p["ppid"] not in procs)  # fmt: skip
    workers = [p for p in run["processes"] if p["ppid"] == root["pid"]]
    assert len(workers) == 2, run["processes"]
    start = min(p["start_s"] for p in workers)
    end = max(p["end_s"] for p in workers)
    inside = [
        c
        for t, c in zip(job["t_s"], job["cores"], strict=True)
        if start < t < end and c is not None
    ]
    assert inside, (start, end, job)
    node = run["timeline"]["node_cpu"]
    busy = [b for t, b in zip(node["t_s"], node["busy_pct"], strict=True) if start < t < end]
    node_cores = sum(busy) / len(busy) / 100 * run["allowed_cpus"]
    job_cores = sum(inside) / len(inside)
    if run["allowed_cpus"] >= 2:
        assert node_cores > 1.0, busy
        if job_cores <= 1.0:
            # Only other programs on this shared machine may hold the job under one core, and
            # then the node is saturated (how far under depends on how many: no bound here)
            assert sum(busy) / len(busy) >= 90, (inside, busy)
    assert max(c for c in job["cores"] if c is not None) <= run["allowed_cpus"] + 0.15


# -- JSON ------------------------------------------------------------------------------------


def _schema() -> dict[str, dict[str, tuple[str, bool]]]:
    """docs/report-json.md: section name -> {key: (type, optional)}."""
    text = (REPO / "docs/report-json.md").read_text()
    out: dict[str, dict[str, tuple[str, bool]]] = {}
    for m in re.finditer(r"^### `([^`]+)`\n(.*?)(?=^### |\Z)", text, re.M | re.S):
        rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \|", m.group(2), re.M)
        fields = {}
        for key, typ in rows:
            typ = typ.strip()
            fields[key] = (typ.removesuffix(", optional"), typ.endswith(", optional"))
        out[m.group(1)] = fields
    return out


SCHEMA = _schema()


def _check(value: Any, typ: str, where: str, seen: set[str]) -> None:
    alts = [a.strip() for a in typ.split(" or ")]
    errors = []
    for alt in alts:
        try:
            _check_one(value, alt, where, seen)
            return
        except AssertionError as e:
            errors.append(str(e))
    raise AssertionError(f"{where}: {value!r:.80} is not {typ} ({'; '.join(errors)})")


def _check_one(value: Any, alt: str, where: str, seen: set[str]) -> None:
    if alt.startswith("array of "):
        assert isinstance(value, list), "not an array"
        for i, v in enumerate(value):
            _check(v, alt.removeprefix("array of ").replace("/", " or "), f"{where}[{i}]", seen)
    elif alt.startswith("map of "):
        assert isinstance(value, dict), "not an object"
        for k, v in value.items():
            _check(v, alt.removeprefix("map of "), f"{where}.{k}", seen)
    elif alt.startswith("`"):
        name = alt.strip("`")
        assert isinstance(value, dict), "not an object"
        fields = SCHEMA[name]
        seen.add(name)
        unknown = set(value) - set(fields)
        assert not unknown, f"keys not in docs/report-json.md section {name}: {unknown}"
        for key, (t, optional) in fields.items():
            if key not in value:
                assert optional, f"{where}: documented key {key!r} missing"
                continue
            _check(value[key], t, f"{where}.{key}", seen)
    elif alt == "string":
        assert isinstance(value, str), "not a string"
    elif alt == "integer":
        assert isinstance(value, int) and not isinstance(value, bool), "not an integer"
    elif alt == "number":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), "not a number"
    elif alt == "boolean":
        assert isinstance(value, bool), "not a boolean"
    elif alt == "null":
        assert value is None, "not null"
    else:
        assert alt == "any", f"unknown type {alt!r} in docs/report-json.md"


def test_schema_document_parses():
    assert {"report", "run", "run.timeline", "run.processes[]", "run.hotspots[]", "stat"} <= set(
        SCHEMA
    )
    assert SCHEMA["run.hotspots[]"]["self_pct"] == ("number", False)


def test_json_follows_the_documented_schema(doc):
    seen: set[str] = set()
    _check(doc, "`report`", "report", seen)
    assert doc["para_report_version"] == 1
    assert len(doc["runs"]) == 2
    # what these recordings must have exercised
    for name in ("run.timeline.node_cpu", "run.timeline.job", "run.timeline.memory",
                 "run.timeline.disk", "run.processes[]", "run.resources.job", "stat"):  # fmt: skip
        assert name in seen, name


def test_json_schema_check_catches_an_undocumented_key(doc):
    bad = json.loads(json.dumps(doc))
    bad["runs"][0]["processes"][0]["surprise"] = 1
    with pytest.raises(AssertionError, match="surprise"):
        _check(bad, "`report`", "report", set())


def test_json_numbers_agree_with_the_file(rec, doc):
    run, hostile = doc["runs"]
    meta = _meta(rec["phases"])
    assert run["duration_s"] == round(meta["elapsed_s"], 3)
    assert run["samples"] == meta["samples"]
    assert run["exit"]["exit_code"] == 0 and hostile["exit"]["exit_code"] == 3
    assert hostile["command"] == ["sh", "-c", HOSTILE_SCRIPT]
    assert run["t0"] == meta["start"]
    pids = set(_column(rec["phases"], "proc", "pid"))
    assert run["processes_total"] >= len(pids)
    assert {p["pid"] for p in run["processes"]} >= pids
    cpu = [p["cpu_s"] for p in run["processes"]]
    assert cpu == sorted(cpu, reverse=True)
    # the job's processes account for the CPU time the kernel charged to the command, all but
    # what each used after its last sample: at most its threads (or the CPUs) busy from that
    # sample to its end (however long a loaded machine made it)
    rusage = meta["exit"]["cpu_user_s"] + meta["exit"]["cpu_system_s"]
    assert sum(cpu) <= rusage + 0.01 * len(cpu)
    with ParaFile(rec["phases"]) as pf:
        rows = pf.read_table("proc").to_pylist()
    last = {r["pid"]: r["t"].timestamp() for r in rows}
    cores = {pid: min(max(r["threads"] for r in rows if r["pid"] == pid), run["allowed_cpus"])
             for pid in last}  # fmt: skip
    after = sum(cores[p["pid"]] * (run["t0"] + p["end_s"] - last[p["pid"]])
                for p in run["processes"] if p["pid"] in last)  # fmt: skip
    assert rusage - sum(cpu) <= after + 0.01 * len(cpu), (rusage, cpu, after)
    for key, family in FAMILY.items():
        group = run["timeline"]["node_cpu" if key == "cpu" else key]
        assert (group is None) == (family in run["unmeasured"]), (key, run["unmeasured"])
        if isinstance(group, dict):
            t = group["t_s"]
            assert t == sorted(t) and t[0] >= 0 and t[-1] <= run["duration_s"] + 2
            assert all(len(v) == len(t) for v in group.values() if isinstance(v, list)
                       and v and not isinstance(v[0], dict))  # fmt: skip
    families = meta.get("families") or {}
    if (families.get("gpu") or {}).get("state") != "ok":
        assert run["unmeasured"]["gpu"] == families.get("gpu", {}).get(
            "reason", "not recorded in this file"
        )
    if not run["hotspots"]:
        assert run["unmeasured"]["functions"]
    else:
        selfs = [h["self_pct"] for h in run["hotspots"]]
        assert selfs == sorted(selfs, reverse=True)
        assert sum(selfs) <= 100 + 0.005 * len(selfs)  # each rounded to 0.01
        assert all(h["self_pct"] <= h["total_pct"] <= 100 for h in run["hotspots"])


def test_json_is_deterministic(rec, json_out):
    again = run_para("report", str(rec["phases"]), str(rec["hostile"]), "--json")
    assert again.stdout == json_out


def test_json_leaves_out_the_runs_of_many_files_unless_asked(rec, doc, monkeypatch, capsys):
    """Past JSON_RUNS files `--json` carries the job alone (the per-file documents of a big
    job cost far more than its analysis); --runs brings them back, --no-runs drops them for
    any number.  The job's analysis is the same either way."""
    from para.analyzer import report as report_mod

    files = [str(rec["phases"]), str(rec["hostile"])]
    monkeypatch.setattr(report_mod, "JSON_RUNS", 1)

    def run(**kw: Any) -> dict[str, Any]:
        assert report_mod.main(files, as_json=True, **kw) == 0
        return json.loads(capsys.readouterr().out)

    auto = run()
    assert auto["runs"] == [] and auto["runs_omitted"] == 2
    assert auto["job"] == doc["job"] and auto["bottlenecks"] == doc["bottlenecks"]
    _check(auto, "`report`", "report", set())
    asked = run(runs=True)
    assert "runs_omitted" not in asked
    assert asked["runs"] == doc["runs"]
    monkeypatch.setattr(report_mod, "JSON_RUNS", 8)
    dropped = run(runs=False)
    assert dropped["runs"] == [] and dropped["runs_omitted"] == 2
    r = run_para("report", *files, "--json", "--no-runs")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["runs_omitted"] == 2 and "--runs adds them" in r.stderr


def _stacks_file(path: Path) -> Path:
    """A file whose call stacks are known: self and total shares follow by hand."""
    cols = [c.name for c in TABLES["node"].columns if c.name != "t"]
    w = ParaWriter(path, {"host": {"hostname": "h", "clock_ticks": 100}, "interval": 1.0,
                          "command": ["app"], "allowed_cpus": 1})  # fmt: skip
    for i in range(3):
        row = dict.fromkeys(cols, 0)
        row.update(cpu_user=60 * i, cpu_idle=40 * i)
        w.append(1_800_000_000_000 + 1000 * i, {"node": [[row[c] for c in cols]]})
    stacks = [
        [1_800_000_001_000, 7, 7, "app", "main;solve;dgemm", 6],
        [1_800_000_001_000, 7, 7, "app", "main;solve", 2],
        [1_800_000_002_000, 7, 7, "app", "main;walk;walk", 1],  # recursion counts once
        [1_800_000_002_000, 7, 7, "app", f"main;walk;{HOSTILE}", 1],
    ]
    w.append(1_800_000_003_000, {"stacks": stacks}, sample=False)
    w.close({"elapsed_s": 2.0, "exit": {"exit_code": 0}, "functions": {"samples": 10}})
    return path


def test_hotspots_self_is_the_leaf_and_total_counts_each_stack_once(tmp_path):
    f = _stacks_file(tmp_path / "stacks.para")
    hot = report([str(f)])["runs"][0]["hotspots"]
    got = [(h["function"], h["self_pct"], h["total_pct"]) for h in hot]
    assert got == [
        ("dgemm", 60.0, 60.0),
        ("solve", 20.0, 80.0),
        ("walk", 10.0, 20.0),  # same self share: the larger total first
        (HOSTILE, 10.0, 10.0),
        ("main", 0.0, 100.0),
    ]
    r = run_para("report", str(f))
    assert re.search(r"^\s*60\.0 %\s+60\.0 %\s+dgemm$", r.stdout, re.M), r.stdout
    assert re.search(r"^\s*0\.0 %\s+100\.0 %\s+main$", r.stdout, re.M)


# -- HTML ------------------------------------------------------------------------------------


class Node:
    def __init__(self, tag: str, attrs: dict[str, str | None], parent: Node | None):
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node] = []
        self.text: list[str] = []

    def iter(self):  # type: ignore[no-untyped-def]
        yield self
        for c in self.children:
            yield from c.iter()

    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def all_text(self) -> str:
        return "".join(self.text) + "".join(c.all_text() for c in self.children)


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}  # fmt: skip


class Tree(HTMLParser):
    """Just enough of a DOM to look inside what Chromium dumped (SVG included)."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.root = self.cur = Node("#root", {}, None)
        self.feed(html)

    def handle_starttag(self, tag, attrs):  # type: ignore[no-untyped-def]
        node = Node(tag, dict(attrs), self.cur)
        self.cur.children.append(node)
        if tag not in VOID:
            self.cur = node

    def handle_startendtag(self, tag, attrs):  # type: ignore[no-untyped-def]
        self.cur.children.append(Node(tag, dict(attrs), self.cur))

    def handle_endtag(self, tag):  # type: ignore[no-untyped-def]
        n: Node | None = self.cur
        while n is not None and n.tag != tag:
            n = n.parent
        if n is not None and n.parent is not None:
            self.cur = n.parent

    def handle_data(self, data):  # type: ignore[no-untyped-def]
        self.cur.text.append(data)


def _chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=10000", "--hide-scrollbars", "--window-size=1280,2400",
         *extra, url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.fixture(scope="module")
def page(rec: dict[str, Any]) -> dict[str, Any]:
    out = rec["dir"] / "report.html"
    r = run_para("report", str(rec["phases"]), str(rec["hostile"]), "--html", str(out))
    assert r.returncode == 0, r.stderr
    return {"path": out, "stdout": r.stdout, "html": out.read_text()}


@pytest.fixture(scope="module")
def browser(rec: dict[str, Any], page: dict[str, Any]) -> dict[str, Any]:
    if CHROMIUM is None:
        need_tool("chromium", CHROMIUM_HINT)
    d = rec["dir"]
    dump = _chromium(page["path"].as_uri(), d / "profile", "--dump-dom")
    png = d / "report.png"
    shot = _chromium(page["path"].as_uri(), d / "profile", f"--screenshot={png}")
    # Where the plots are: a copy of the page with one more script (allowed by its hash)
    # that writes their boxes into the title.  Only this copy carries it.
    probe = (
        "window.addEventListener('load', function () { setTimeout(function () {"
        "document.title = JSON.stringify(Array.prototype.map.call("
        "document.querySelectorAll('[data-plot]'), function (e) {"
        "var r = e.getBoundingClientRect(); return [e.id, r.left, r.top + scrollY, r.width,"
        " r.height]; })); }, 0); });"
    )
    digest = base64.b64encode(hashlib.sha256(probe.encode()).digest()).decode()
    html = page["html"].replace("script-src ", f"script-src 'sha256-{digest}' ", 1)
    html = html.replace("</body>", f"<script>{probe}</script></body>", 1)
    copy = d / "probe.html"
    copy.write_text(html)
    boxes = _chromium(copy.as_uri(), d / "profile", "--dump-dom")
    title = Tree(boxes.stdout).root
    t = next(n for n in title.iter() if n.tag == "title").all_text()
    return {
        "dom": dump.stdout,
        "stderr": dump.stderr + shot.stderr + boxes.stderr,
        "png": png,
        "boxes": {b[0]: b[1:] for b in json.loads(t)},
    }


def test_html_is_written_and_self_contained(page):
    html = page["html"]
    assert page["stdout"].startswith(f"Wrote {page['path']} (")
    assert "Next: open it in a browser" in page["stdout"]
    tree = Tree(html).root
    scripts = [n for n in tree.iter() if n.tag == "script"]
    assert len(scripts) == 3 and not any("src" in s.attrs for s in scripts)
    assert scripts[0].attrs.get("type") == "application/json"
    assert not [n for n in tree.iter() if n.tag in ("link", "img", "iframe", "object")]
    csp = next(n for n in tree.iter() if n.attrs.get("http-equiv") == "Content-Security-Policy")
    assert "default-src 'none'" in (csp.attrs["content"] or "")
    assert HOSTILE not in html  # only escaped forms are in the file
    assert "Plotly.newPlot" in html and len(html) > 3_000_000  # plotly.js is inside


def test_html_is_deterministic(rec, page):
    files = [str(rec["phases"]), str(rec["hostile"])]
    assert render_html(report(files)) == page["html"]


def test_html_renders_in_chromium_without_console_messages(browser):
    console = [line for line in browser["stderr"].splitlines() if "CONSOLE" in line]
    assert not console, "\n".join(console)


def test_html_every_plot_is_drawn_or_says_why_not(browser, doc):
    tree = Tree(browser["dom"]).root
    for i, run in enumerate(doc["runs"]):
        for plot in PLOTS:
            key = "node_cpu" if plot == "cpu" else plot
            box = next((n for n in tree.iter() if n.attrs.get("id") == f"run{i}-{plot}"), None)
            if run["timeline"][key] is None:
                assert box is None
                notes = [n.all_text() for n in tree.iter()
                         if n.attrs.get("data-unmeasured") == plot]  # fmt: skip
                assert any(run["unmeasured"][FAMILY[plot]] in " ".join(t.split())
                           for t in notes), (plot, notes)  # fmt: skip
                continue
            assert box is not None, f"run {i}: no plot {plot}"
            svgs = [n for n in box.iter() if n.tag == "svg" and "main-svg" in n.classes()]
            assert svgs, f"run {i}: plot {plot} has no plotly SVG"
            lines = [n for n in box.iter() if n.tag == "path"
                     and n.classes() & {"js-line", "js-fill", "point"}
                     and len(n.attrs.get("d") or "") > 10]  # fmt: skip
            assert lines, f"run {i}: plot {plot} has no trace drawn"


def test_html_shows_hostile_strings_as_text_and_runs_none(browser):
    tree = Tree(browser["dom"]).root
    shown = shlex.join(["sh", "-c", HOSTILE_SCRIPT])
    assert shown in [n.all_text() for n in tree.iter() if n.tag == "dd"]
    cells = [n.all_text() for n in tree.iter() if n.tag == "td"]
    assert any(HOSTILE in c for c in cells), "process table lacks the command line"
    assert not [n for n in tree.iter() if n.tag == "img"]
    assert not [n for n in tree.iter() if any(a.startswith("on") for a in n.attrs)]
    scripts = [n for n in tree.iter() if n.tag == "script"]
    assert len(scripts) == 3
    assert all("alert(1)" not in s.all_text() for s in scripts[1:])


def test_html_hostile_function_names_are_text(tmp_path):
    f = _stacks_file(tmp_path / "stacks.para")
    tree = Tree(render_html(report([str(f)]))).root
    assert HOSTILE in [n.all_text() for n in tree.iter() if n.tag == "td"]
    assert not [n for n in tree.iter() if n.tag == "img"]


def test_html_plots_are_not_blank(browser):
    from PIL import Image

    img = Image.open(browser["png"]).convert("RGB")
    assert img.size == (1280, 2400)
    boxes = browser["boxes"]
    first = boxes["run0-cpu"]
    for name, (x, y, w, h) in boxes.items():
        if y + h > img.size[1]:
            continue  # below the screenshot
        crop = img.crop((int(x), int(y), int(x + w), int(y + h)))
        counts = crop.getcolors(maxcolors=crop.width * crop.height) or []
        ink = [(n, c) for n, c in counts if min(c) < 200]  # not white nor the pale grid
        share = sum(n for n, _ in ink) / (crop.width * crop.height)
        colours = {(r // 32, g // 32, b // 32) for _, (r, g, b) in ink}
        floor = 0.10 if (x, y, w, h) == tuple(first) else 0.01
        assert share > floor, f"{name}: {share:.1%} of the plot area is drawn"
        assert len(colours) >= 3, f"{name}: only {len(colours)} colours"
