"""Issue 6 end to end, on 127.0.0.1 with certificates made here: a real `para agent run`
sends its live samples to a real `para collector serve --alerts`, a batch job (found by its
environment, as Slurm leaves it) burns a core then waits; the collector's alerts reach a real
HTTP receiver and the database, Prometheus' parser reads both /metrics endpoints, and
`para top` is driven in tmux (send-keys, capture-pane) at 80x24.  Then an agent whose
collector is unreachable notifies by itself."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from para.collector.db import FeatureDB
from tests.collector_support import REPO, CollectorProcess, make_pki, wait_for
from tests.conftest import SERVICES, _children, need_tool, run_para, stop
from tests.live_support import Receiver

pytestmark = pytest.mark.slow

RULES = """
[defaults]
sinks = ["log", "hook"]

[[sink]]
name = "hook"
type = "webhook"
url = "{url}"
backoff = 0.1

[[rule]]
name = "job-busy"
metric = "job.cpu_cores"
above = 0.1
for = "1s"
clear_for = "1s"
severity = "critical"

[[rule]]
name = "job-underused"
type = "bottleneck"
bottleneck = "low_cpu_utilization"
window = "10s"
every = "2s"
"""
# a job: one core busy for 8 s, then waiting (job-busy fires above 0.1 core: what a loaded
# machine still gives a busy loop; waiting, it uses none)
JOB = "import time\nt = time.time()\nwhile time.time() - t < 8: pass\ntime.sleep(300)"
_CLUSTER: set[int] = set()  # the module's agent, collector and job: they live across tests


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """conftest's guard against child processes outliving a test, but for the cluster's,
    which the `cluster` fixture ends (and then checks that nothing is left)."""
    yield
    left = [c for c in _children(os.getpid()) if int(c.split()[0]) not in _CLUSTER | SERVICES]
    assert not left, f"child processes left running: {left}"


def _start_agent(tmp: Path, name: str, text: str) -> subprocess.Popen[bytes]:
    (tmp / f"{name}.toml").write_text(text)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    log = open(tmp / f"{name}.log", "w")  # noqa: SIM115 - the child writes it
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "para", "agent", "run", "--config", str(tmp / f"{name}.toml")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    finally:
        log.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("live")
    pki = make_pki(tmp / "pki", ["e2enode"], ["alice"])
    rx = Receiver(fail_first=1)
    (tmp / "alerts.toml").write_text(RULES.format(url=rx.url))
    col = CollectorProcess(
        tmp / "db", pki, "--alerts", str(tmp / "alerts.toml"), "--metrics-listen", "127.0.0.1:0"
    ).start()
    spool = tmp / "spool"
    agent = _start_agent(
        tmp,
        "agent",
        f"""
[agent]
interval = 0.5
spool_dir = "{spool}"
host = "e2enode"
[collector]
url = "grpc+tls://127.0.0.1:{col.port}"
ca_file = "{pki}/ca.crt"
cert_file = "{pki}/issued/e2enode.crt"
key_file = "{pki}/issued/e2enode.key"
live = true
live_interval = 0.5
[alerts]
rules = "{tmp / "alerts.toml"}"
[metrics]
listen = "127.0.0.1:0"
""",
    )
    job = None
    try:
        wait_for(lambda: (spool / "status.json").exists(), timeout=60, what="the agent")
        job = subprocess.Popen(
            [sys.executable, "-c", JOB],
            env=dict(os.environ, SLURM_JOB_ID="777", SLURM_JOB_NAME="train"),
        )
        _CLUSTER.update(p.pid for p in (agent, job, col.proc) if p is not None)
        yield {"tmp": tmp, "pki": pki, "rx": rx, "col": col, "spool": spool, "agent": agent}
    finally:
        if job is not None:
            job.kill()
            job.wait()
        code = stop(agent)
        col.stop()
        rx.close()
        _CLUSTER.clear()
    assert code == 0, (tmp / "agent.log").read_text()
    assert not [c for c in _children(os.getpid()) if int(c.split()[0]) not in SERVICES]


def _ours(rx: Receiver, rule: str) -> list[tuple[str, dict[str, Any]]]:
    """The rule's notifications for the test's job (the agent sees every job of this
    machine: others' suites run jobs here too)."""
    return [(e, b) for e, b in rx.events(rule) if b.get("jobs") == ["777"]]


def test_a_threshold_alert_fires_and_resolves_at_the_webhook_and_in_the_database(cluster):
    rx = cluster["rx"]
    wait_for(
        lambda: [e for e, _ in _ours(rx, "job-busy")] == ["firing", "resolved"],
        timeout=60,
        step=0.2,
        what="job-busy firing then resolved",
    )
    fired, resolved = (b for _, b in _ours(rx, "job-busy"))
    assert fired["source"] == "collector" and fired["severity"] == "critical"
    assert fired["host"] == "e2enode" and fired["jobs"] == ["777"]
    assert fired["labels"] == {"job": "777"} and fired["value"] > 0.1
    assert "e2enode job 777: job.cpu_cores is" in fired["summary"]
    assert len(fired["evidence"]["points"]) >= 2  # the samples that made it fire
    assert resolved["id"] == fired["id"] and resolved["ended"] >= fired["started"]
    assert rx.attempts >= 3  # the first POST was refused (503) and retried
    # every record is in the database, with its evidence
    db = FeatureDB(cluster["tmp"] / "db")

    def stored() -> list[tuple[Any, ...]]:
        if not (cluster["tmp"] / "db" / "data" / "alerts").is_dir():
            return []
        con = db.connect()
        try:
            return con.execute(
                "SELECT event, alert_id, job_id, notified, evidence FROM alerts "
                "WHERE rule = 'job-busy' AND job_id = '777' ORDER BY t"
            ).fetchall()
        finally:
            con.close()

    rows = wait_for(lambda: len(stored()) == 2 and stored(), timeout=30, what="the alerts table")
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("firing", fired["id"], "777", 1),
        ("resolved", fired["id"], "777", 1),
    ]
    assert json.loads(rows[0][4])["points"] == fired["evidence"]["points"]


def test_a_bottleneck_rule_judges_the_jobs_window_with_the_analyzer(cluster):
    rx = cluster["rx"]
    got = wait_for(
        lambda: _ours(rx, "job-underused"), timeout=60, step=0.2, what="the bottleneck alert"
    )
    event, note = got[0]
    assert event == "firing" and note["jobs"] == ["777"] and note["host"] is None
    a = note["evidence"]["analyzer"]
    assert a["id"] == "low_cpu_utilization" and a["status"] == "fired"
    assert a["thresholds"]["warn_pct"] == 80.0 and "jobstats" in a["source"]
    assert "of 2 the job could use" in note["summary"]


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_prometheus_scrapes_the_collector_and_the_agent_with_job_labels(cluster):
    col_port = json.loads((cluster["tmp"] / "db.port").read_text())["metrics_port"]
    status = json.loads((cluster["spool"] / "status.json").read_text())
    agent_port = int(status["live"]["metrics"].rsplit(":", 1)[1])
    col = wait_for(
        lambda: (
            (m := _scrape(col_port))
            and any(k[0] == "para_job_cpu_seconds_total" and ("job_id", "777") in k[1] for k in m)
            and m
        ),
        timeout=30,
    )
    info = [dict(k[1]) for k in col if k[0] == "para_node_job_info" and ("job_id", "777") in k[1]]
    assert len(info) == 1 and info[0]["job_name"] == "train" and info[0]["host"] == "e2enode"
    assert col[("para_node_cpus", (("cluster", "default"), ("host", "e2enode")))] >= 1
    assert col[("para_collector_live_samples_total", ())] > 10
    assert any(k[0] == "para_alerts_active" and ("rule", "job-underused") in k[1] for k in col)
    agent = _scrape(agent_port)
    assert ("para_node_mem_total_bytes", (("host", "e2enode"),)) in agent
    assert any(
        k[0] == "para_job_resident_memory_bytes" and ("job_id", "777") in k[1] for k in agent
    )
    assert agent[("para_agent_samples_total", (("host", "e2enode"),))] > 5


def test_para_top_in_tmux(cluster, tmp_path: Path):
    need_tool("tmux", "apt install tmux (make test installs it)")
    pki, port = cluster["pki"], cluster["col"].port
    sock = str(tmp_path / "tmux.sock")

    def tmux(*args: str) -> str:
        return subprocess.run(
            ["tmux", "-S", sock, *args], capture_output=True, text=True, check=True
        ).stdout

    top = (
        f"env PYTHONPATH={REPO} LANG=C.UTF-8 {shlex.quote(sys.executable)} -m para top "
        f"--collector grpc+tls://127.0.0.1:{port} --ca {pki}/ca.crt "
        f"--cert {pki}/issued/reader-alice.crt --key {pki}/issued/reader-alice.key"
    )
    tmux(
        "-f",
        "/dev/null",
        "new-session",
        "-d",
        "-x",
        "80",
        "-y",
        "24",
        "-s",
        "top",
        f"sh -c {shlex.quote(top + '; echo para top exited $?; sleep 60')}",
    )

    def screen() -> str:
        return tmux("capture-pane", "-p", "-t", "top")

    def keys(*k: str) -> None:
        tmux("send-keys", "-t", "top", *k)

    def shows(*words: str, timeout: float = 30) -> str:
        return wait_for(
            lambda: (s := screen()) and all(w in s for w in words) and s,
            timeout=timeout,
            step=0.2,
            what=f"{words} on screen:\n{screen()}",
        )

    try:
        # the first screen waits for para top's start-up too (imports: slow on a loaded host),
        # and for the bottleneck alert (judged every 2 s once the job has 10 s of samples)
        s = shows("e2enode", "777", "NODE", "CPU%", "job-underused", timeout=120)
        lines = s.splitlines()
        assert len(lines) == 24 and max(len(ln) for ln in lines) <= 80
        # the test's job, and any other the node runs (others' suites run jobs here too)
        assert re.search(r" 1 nodes [1-9]\d* jobs ", lines[0]) and "sort: CPU v" in lines[1]
        assert any(ln.startswith("! [") and "job-underused" in ln for ln in lines)
        keys("m")
        shows("sort: memory v")
        keys("m")
        shows("sort: memory ^")
        keys("Tab")
        s = shows("view: jobs", "train", "JOB ")
        assert any(ln.startswith("777") and "train" in ln for ln in s.splitlines())
        # the test's job alone (another job on the node, one of the stacks tests' in a loaded
        # run, sorted first and was opened instead)
        keys("/", "7", "7", "7", "Enter")
        shows("filter: 777", "train")
        keys("Enter")
        shows("view: job 777", "NODE OF THIS JOB", "name train")
        keys("Enter")
        shows("view: node e2enode", "JOB ON THIS NODE", "CPU busy")
        keys("Escape")
        shows("view: job 777")
        keys("Escape")
        shows("view: jobs", "filter: 777")
        keys("Escape", "Escape")  # the filter, then the view
        shows("view: nodes")
        keys("/", "z", "z", "z", "Enter")
        shows("filter: zzz", "no node matches the filter")
        keys("Escape")
        shows("e2enode")
        keys("a")
        shows("view: alerts", "job-underused")
        keys("q")
        s = shows("para top exited 0")
        assert "Traceback" not in s
    finally:
        subprocess.run(["tmux", "-S", sock, "kill-server"], capture_output=True)


def test_para_top_once_reads_the_local_agent(cluster):
    r = run_para(
        "top",
        "--spool",
        str(cluster["spool"]),
        "--once",
        "--jobs",
        env={"COLUMNS": "80", "LINES": "24"},
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("para top - e2enode (its agent, pid")
    assert any(ln.startswith("777") and "train" in ln for ln in lines)


def test_the_agent_kept_quiet_while_the_collector_could_see_it(cluster):
    assert {b["source"] for _, b in cluster["rx"].events()} == {"collector"}
    status = json.loads((cluster["spool"] / "status.json").read_text())
    assert status["live"]["rules"] == 2 and status["live"]["notifying"] is False


def test_an_agent_that_cannot_reach_its_collector_notifies_by_itself(tmp_path: Path):
    pki = make_pki(tmp_path / "pki", ["solo"])
    with Receiver() as rx:
        (tmp_path / "alerts.toml").write_text(f"""
[[sink]]
name = "hook"
type = "webhook"
url = "{rx.url}"

[[rule]]
name = "node-up"
metric = "cpu_busy_pct"
above = -1
for = "3s"
sinks = ["hook"]
""")
        spool = tmp_path / "spool"
        agent = _start_agent(
            tmp_path,
            "solo",
            f"""
[agent]
interval = 0.5
spool_dir = "{spool}"
host = "solo"
[collector]
url = "grpc+tls://127.0.0.1:1"
ca_file = "{pki}/ca.crt"
cert_file = "{pki}/issued/solo.crt"
key_file = "{pki}/issued/solo.key"
live = true
live_interval = 0.5
backoff_min = 0.2
[alerts]
rules = "{tmp_path / "alerts.toml"}"
fallback_after = 1
""",
        )
        try:
            got = wait_for(lambda: rx.events("node-up"), timeout=60, step=0.2, what="the alert")
        finally:
            code = stop(agent)
    assert code == 0, (tmp_path / "solo.log").read_text()
    event, note = got[0]
    assert event == "firing" and note["source"] == "agent:solo" and note["host"] == "solo"
    # the alert is in the node's own record too: the segment carries it to the database
    seg = sorted((spool / "ready").glob("*.para"))[-1]
    from para.formats import ParaFile

    with ParaFile(seg) as pf:
        events = pf.read_table("events").to_pylist()
    alerts = [json.loads(e["detail"]) for e in events if e["kind"] == "alert"]
    assert alerts and alerts[0]["id"] == note["id"] and alerts[0]["event"] == "firing"
    assert zipfile.is_zipfile(seg)


def test_the_agents_alerting_stays_out_of_pyarrow():
    code = (
        "import sys, para.agent.livenode, para.live.sinks, para.live.openmetrics; "
        "print(sorted(m for m in ('pyarrow', 'duckdb', 'numpy') if m in sys.modules))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=60,
    )
    assert r.stdout.strip() == "[]", r.stderr
