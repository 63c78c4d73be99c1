"""Issue 15 end to end: the portal as a real server over a database made by a real agent and
collector, driven in headless Chromium.

A real `para agent run` samples this machine every half second, finds four batch jobs by
their environment (as Slurm leaves it: user, account, partition, a job name built to break out
of HTML), and ships its segments and live samples over mutual TLS to a real
`para collector serve --alerts --web` (the portal in the collector's process, HTTPS with the
collector's certificate, people signing in with tokens).  A second portal, `para web`
as its own process over the same database, takes users from a reverse proxy's header.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from tests.collector_support import REPO, CollectorProcess, make_pki, wait_for
from tests.conftest import SERVICES, _children, stop
from tests.web_support import (
    Https,
    browser,
    console_errors,
    drawn,
    navigate,
    sign_in,
    wait,
    wait_port_file,
)

pytestmark = pytest.mark.slow

HOSTILE = "</script><script>alert(1)</script><img src=x onerror=alert(1)>"
RULES = """
[defaults]
sinks = ["log"]

[[rule]]
name = "job-busy"
metric = "job.cpu_cores"
above = 0.3
for = "1s"
clear_for = "2s"
severity = "critical"
"""
# a job: one core busy until its stdin says stop (the alert is in the database), then waiting
BUSY_JOB = (
    "import select, sys, time\nt = time.time()\n"
    "while not select.select([sys.stdin], [], [], 0)[0] and time.time() - t < 300: pass\n"
    "time.sleep(600)"
)
IDLE_JOB = "import time\ntime.sleep(600)"
# job id: (user, account, partition, name).  The agent takes a job's user from the kernel
# (the processes' real uid), so the jobs run as three accounts every Debian system has.
ALICE, BOB, CAROL = "daemon", "bin", "sys"
JOB_PYTHON = "/usr/bin/python3"  # the system's (this venv's may not be readable by them)
JOBS = {
    "901": (ALICE, "physics", "gpu", HOSTILE),
    "902": (BOB, "chem", "cpu", "bob-sim"),
    "903": (ALICE, "physics", "gpu", HOSTILE),
    "904": (CAROL, "physics", "cpu", "carol-run"),
}
_CLUSTER: set[int] = set()


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    yield
    # the session's services (a real Slurm another module started) are not leaks either
    left = [c for c in _children(os.getpid()) if int(c.split()[0]) not in _CLUSTER | SERVICES]
    assert not left, f"child processes left running: {left}"


def _jobs_in_db(db: Path) -> dict[str, dict[str, Any]]:
    try:
        rows = DeltaTable(str(db / "meta" / "jobs")).to_pyarrow_table().to_pylist()
    except (OSError, ValueError, TableNotFoundError):
        return {}
    return {r["job_id"]: r for r in rows}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from para.collector.auth import TokenStore

    tmp = tmp_path_factory.mktemp("web")
    pki = make_pki(tmp / "pki", ["webnode"])
    tokens = TokenStore(pki / "web-tokens.json")
    tok = {who: tokens.add(who, reader=True) for who in ("admin", ALICE, BOB)}
    (tmp / "alerts.toml").write_text(RULES)
    (tmp / "web.toml").write_text('[web]\nadmins = ["admin"]\nrefresh_s = 1\n')
    db = tmp / "db"
    col = CollectorProcess(
        db,
        pki,
        "--alerts",
        str(tmp / "alerts.toml"),
        "--web",
        "127.0.0.1:0",
        "--web-config",
        str(tmp / "web.toml"),
        "--compact-every",
        "0",
    ).start()
    web_port = wait_port_file(col.state / f"{db.name}.port", "web_port")
    spool = tmp / "spool"
    (tmp / "agent.toml").write_text(f"""
[agent]
interval = 0.5
spool_dir = "{spool}"
host = "webnode"
[segments]
max_seconds = 10
[collector]
url = "grpc+tls://127.0.0.1:{col.port}"
ca_file = "{pki}/ca.crt"
cert_file = "{pki}/issued/webnode.crt"
key_file = "{pki}/issued/webnode.key"
send_window = 0
poll_interval = 0.2
live = true
live_interval = 0.5
""")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with open(tmp / "agent.log", "w") as log:
        agent = subprocess.Popen(
            [sys.executable, "-m", "para", "agent", "run", "--config", str(tmp / "agent.toml")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    jobs: list[subprocess.Popen[bytes]] = []
    web2 = None
    _CLUSTER.update(p.pid for p in (agent, col.proc) if p is not None)
    try:
        wait_for(
            lambda: (spool / "status.json").exists() or agent.poll() is not None,
            timeout=90,
            what="the agent",
        )
        assert agent.poll() is None, (tmp / "agent.log").read_text()
        for job_id, (user, account, partition, name) in JOBS.items():
            jenv = dict(
                os.environ,
                SLURM_JOB_ID=job_id,
                SLURM_JOB_USER=user,
                SLURM_JOB_ACCOUNT=account,
                SLURM_JOB_PARTITION=partition,
                SLURM_JOB_NAME=name,
            )
            code = BUSY_JOB if job_id == "901" else IDLE_JOB
            jobs.append(
                subprocess.Popen(
                    [JOB_PYTHON, "-c", code],
                    env=jenv,
                    user=user,
                    stdin=subprocess.PIPE,
                    cwd="/",
                )
            )
        _CLUSTER.update(p.pid for p in jobs)
        # the jobs in the database (a segment closed, shipped, merged, the catalogue written)
        wait_for(
            lambda: all(j in _jobs_in_db(db) and _jobs_in_db(db)[j]["hosts"] for j in JOBS),
            timeout=180,
            step=0.5,
            what="the jobs in the db",
        )
        wait_for(
            lambda: (db / "data" / "alerts").is_dir(),
            timeout=120,
            step=0.5,
            what="an alert in the database",
        )
        jobs[0].stdin.write(b"stop\n")  # 901 stops burning
        jobs[0].stdin.flush()
        # and in the portal's own table of jobs (it loads each new version in the background)
        portal = Https(web_port, pki / "ca.crt")
        admin_hdr = {"Authorization": f"Bearer {tok['admin']}"}
        wait_for(
            lambda: (
                {j["job_id"] for j in portal.json("/api/jobs", admin_hdr)[1]["jobs"]} >= set(JOBS)
            ),
            timeout=60,
            step=0.2,
            what="the jobs in the portal",
        )
        # the second portal: `para web`, users from a proxy on 127.0.0.1 only
        port_file = tmp / "web2.port"
        with open(tmp / "web2.log", "w") as log:
            web2 = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "para",
                    "web",
                    "--db",
                    str(db),
                    "--listen",
                    "127.0.0.1:0",
                    "--tls-dir",
                    str(pki),
                    "--port-file",
                    str(port_file),
                    "--trusted-proxy",
                    "127.0.0.1",
                    "--admin",
                    "root",
                    "--share-accounts",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        _CLUSTER.add(web2.pid)
        web2_port = wait_port_file(port_file, "port")
        yield {
            "tmp": tmp,
            "pki": pki,
            "db": db,
            "col": col,
            "port": web_port,
            "tokens": tok,
            "web2": web2_port,
            "web2_log": tmp / "web2.log",
        }
    finally:
        for j in jobs:
            j.kill()
            j.wait()
        if web2 is not None:
            stop(web2)
        code = stop(agent)
        col.stop()
        _CLUSTER.clear()
    assert code == 0, (tmp / "agent.log").read_text()


@pytest.fixture(scope="module")
def admin(site: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    drv = browser(tmp_path_factory.mktemp("chrome-admin"), site["pki"] / "server.crt")
    _CLUSTER.add(drv.service.process.pid)  # lives across this module's tests
    try:
        _sign_in(drv, site, "admin")
        yield drv
    finally:
        drv.quit()


def _sign_in(drv: Any, site: dict[str, Any], who: str) -> None:
    sign_in(drv, f"https://127.0.0.1:{site['port']}", site["tokens"][who], who)


def _plots_drawn(drv: Any, selector: str, at_least: int = 1) -> list[Any]:
    """The plot elements matching `selector` once plotly drew them, each checked on a
    screenshot: drawn (not blank) and with colour (the data, not only axes)."""
    from selenium.webdriver.common.by import By

    wait(
        drv,
        lambda d: len(d.find_elements(By.CSS_SELECTOR, selector + " .main-svg")) >= at_least,
        what=f"plots {selector}",
    )
    plots = drv.find_elements(By.CSS_SELECTOR, selector)
    for p in plots[:6]:
        drv.execute_script("arguments[0].scrollIntoView()", p)
        # plotly draws the axes before the traces (and a loaded browser paints late): look
        # again until the data is there or the time is up
        deadline = time.monotonic() + 30.0
        while True:
            look = drawn(p.screenshot_as_png)
            good = look["ink"] > 0.02 and look["colour"] > 0.002 and look["colours"] > 20
            if good or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert good, (
            p.get_attribute("id"),
            look,
        )
    return plots


# -- the pages ----------------------------------------------------------------------------------


def test_the_cluster_page_draws_the_nodes_and_updates_live(site, admin):
    from selenium.webdriver.common.by import By

    drv = admin
    drv.get(f"https://127.0.0.1:{site['port']}/cluster")
    _plots_drawn(drv, "#heatmap")
    root = drv.find_element(By.ID, "cluster")
    first_t = float(wait(drv, lambda d: root.get_attribute("data-t"), what="data"))
    n = int(root.get_attribute("data-updates"))
    # refreshed without reloading: the same document, newer data (the agent's next samples)
    drv.execute_script("window.__same_document = true")
    wait(
        drv,
        lambda d: (
            int(root.get_attribute("data-updates")) >= n + 2
            and float(root.get_attribute("data-t")) > first_t
        ),
        what="live updates",
    )
    assert drv.execute_script("return window.__same_document") is True
    # the node's row in the heatmap, and the jobs running on it, from the live stream
    heat = drv.execute_script("return document.getElementById('heatmap').data[0].y")
    assert heat == ["webnode"]
    wait(
        drv,
        lambda d: (
            {
                e.get_attribute("data-job")
                for e in d.find_elements(By.CSS_SELECTOR, "#live-jobs tbody tr")
            }
            >= set(JOBS)
        ),
        what="the jobs running",
    )
    names = [e.text for e in drv.find_elements(By.CSS_SELECTOR, "#live-jobs tbody td:nth-child(3)")]
    assert HOSTILE in names  # shown as text: no element was made of it
    assert not drv.find_elements(By.CSS_SELECTOR, "#live-jobs img, #live-jobs script")
    # every metric's heatmap draws
    for b in drv.find_elements(By.CSS_SELECTOR, "#metric-tabs button"):
        b.click()
        metric = b.get_attribute("data-metric")
        wait(
            drv,
            lambda d, m=metric: d.execute_script(
                "return document.getElementById('heatmap').layout.title.text"
            ).startswith(
                {"cpu": "CPU", "mem": "memory", "io": "storage", "net": "network", "gpu": "GPU"}[m]
            ),
            what=f"the {metric} heatmap",
        )
    assert console_errors(drv) == []


def test_the_job_list_filters_sorts_and_pages_on_the_server(site, admin):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    drv = admin
    base = f"https://127.0.0.1:{site['port']}"
    drv.get(base + "/jobs")

    def ids() -> list[str]:
        return [
            r.get_attribute("data-job")
            for r in drv.find_elements(By.CSS_SELECTOR, "#jobs tbody tr[data-job]")
        ]

    # what the page said when the jobs were not there (CI once saw none: no other clue)
    assert set(ids()) >= set(JOBS), (drv.current_url, drv.find_element(By.TAG_NAME, "body").text)
    # the hostile job name is text in its cell, no element
    cells = {
        r.get_attribute("data-job"): r.find_element(By.CSS_SELECTOR, ".c-name").text
        for r in drv.find_elements(By.CSS_SELECTOR, "#jobs tbody tr[data-job]")
    }
    assert cells["901"] == HOSTILE and cells["903"] == HOSTILE
    assert not drv.find_elements(By.CSS_SELECTOR, "#jobs img, #jobs tbody script")
    # sorting by user, both ways (what the database says the users are)
    navigate(drv, drv.find_element(By.CSS_SELECTOR, "a.sort[data-sort='user']").click, "sort=user")
    users = [e.text for e in drv.find_elements(By.CSS_SELECTOR, "#jobs .c-user")]
    assert users == sorted(users, reverse=True) and len(set(users)) >= 3
    navigate(drv, drv.find_element(By.CSS_SELECTOR, "a.sort[data-sort='user']").click, "dir=asc")
    users = [e.text for e in drv.find_elements(By.CSS_SELECTOR, "#jobs .c-user")]
    assert users == sorted(users)
    # a filter: bob's jobs only
    Select(drv.find_element(By.ID, "f-user")).select_by_value(BOB)
    navigate(drv, drv.find_element(By.ID, "apply").click, f"user={BOB}")
    assert ids() == ["902"]
    # the account filter, and a page of one row at a time
    drv.get(base + "/jobs?account=physics&size=1&sort=job&dir=asc")
    assert ids() == ["901"]
    navigate(drv, drv.find_element(By.ID, "next").click, "page=2")
    assert ids() == ["903"]
    assert "3 jobs" in drv.find_element(By.ID, "jobs-total").text
    assert console_errors(drv) == []


def _job_end(h: Https, hdr: dict[str, str], job_id: str) -> Any:
    return next(j["end_ms"] for j in h.json("/api/jobs", hdr)[1]["jobs"] if j["job_id"] == job_id)


def _asked_twice(h: Https, hdr: dict[str, str], job_id: str) -> bytes:
    """The job's page asked for twice in a row comes from the cache the second time, unless
    the job grew in between: its agent still runs and ships a segment every 10 s, and a new
    one (the loaded CI run was slow enough to see one land between the two) is a new page."""
    for _ in range(10):
        before = _job_end(h, hdr, job_id)
        first = h.get(f"/jobs/{job_id}", hdr)
        status, headers, body = h.get(f"/jobs/{job_id}", hdr)
        assert first[0] == 200 and status == 200
        if _job_end(h, hdr, job_id) == before:
            assert headers["x-para-cache"] == "hit"
            return body
    raise AssertionError(f"job {job_id} changed between every two requests")


def test_a_job_page_shows_the_analysis_links_nodes_and_compares(site, admin):
    from selenium.webdriver.common.by import By

    drv = admin
    base = f"https://127.0.0.1:{site['port']}"
    drv.get(base + "/jobs")
    navigate(drv, drv.find_element(By.CSS_SELECTOR, "tr[data-job='901'] a.job-link").click)
    wait(drv, lambda d: d.find_elements(By.ID, "portal-nav"), what="the job page")
    assert "901" in drv.title
    _plots_drawn(drv, "#job-timeline")
    assert not drv.find_elements(By.CSS_SELECTOR, "main img")
    # cached the second time (the server says so)
    h = Https(site["port"], site["pki"] / "ca.crt")
    hdr = {"Authorization": f"Bearer {site['tokens']['admin']}"}
    body = _asked_twice(h, hdr, "901")
    assert HOSTILE not in body.decode()  # escaped everywhere, in the HTML and in the JSON
    # its node
    navigate(drv, drv.find_element(By.CSS_SELECTOR, "a.node-link").click)
    wait(drv, lambda d: d.find_elements(By.ID, "node-name"), what="the node page")
    assert drv.find_element(By.ID, "node-name").text == "webnode"
    _plots_drawn(drv, "[data-timeline]", at_least=3)
    node_jobs = drv.find_element(By.ID, "node-jobs").text
    assert all(j in node_jobs for j in JOBS)
    # compare with the other job of the same application
    drv.get(base + "/jobs/901/compare")
    opts = [
        o.get_attribute("value") for o in drv.find_elements(By.CSS_SELECTOR, "#compare-with option")
    ]
    assert opts == ["903"]  # same name: the same application; bob's and carol's are others
    navigate(drv, drv.find_element(By.ID, "compare-go").click)
    wait(drv, lambda d: d.find_elements(By.ID, "verdict"), timeout=180, what="the comparison")
    assert "B " in drv.find_element(By.ID, "verdict").text
    assert console_errors(drv) == []


def test_the_alert_history_shows_evidence_and_filters(site, admin):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    drv = admin
    drv.get(f"https://127.0.0.1:{site['port']}/alerts")
    rows = drv.find_elements(By.CSS_SELECTOR, "#alerts-table tbody tr[data-rule]")
    assert rows and {r.get_attribute("data-rule") for r in rows} == {"job-busy"}
    rows[0].find_element(By.TAG_NAME, "summary").click()
    text = rows[0].find_element(By.TAG_NAME, "details").text
    assert "job.cpu_cores" in text
    Select(drv.find_element(By.ID, "f-event")).select_by_value("firing")
    navigate(drv, drv.find_element(By.ID, "apply").click, "event=firing")
    events = {
        e.text for e in drv.find_elements(By.CSS_SELECTOR, "#alerts-table tbody td:nth-child(2)")
    }
    assert events == {"firing"}
    drv.get(f"https://127.0.0.1:{site['port']}/alerts?rule=no-such-rule")
    assert drv.find_elements(By.ID, "no-alerts")
    assert console_errors(drv) == []


def test_a_user_sees_their_jobs_only_and_gets_404_on_another_users(site, tmp_path):
    from selenium.webdriver.common.by import By

    drv = browser(tmp_path / "chrome-alice", site["pki"] / "server.crt")
    try:
        _sign_in(drv, site, ALICE)
        base = f"https://127.0.0.1:{site['port']}"
        drv.get(base + "/jobs")
        ids = {
            r.get_attribute("data-job")
            for r in drv.find_elements(By.CSS_SELECTOR, "#jobs tbody tr[data-job]")
        }
        assert ids == {"901", "903"}
        assert console_errors(drv) == []
        drv.get(base + "/jobs/902")
        assert "Not found" in drv.find_element(By.TAG_NAME, "h1").text
        assert "902" in drv.find_element(By.ID, "error-message").text
        drv.get(base + "/cluster")
        wait(drv, lambda d: d.find_elements(By.CSS_SELECTOR, "#live-jobs tbody tr"), what="jobs")
        wait(
            drv,
            lambda d: (
                {
                    e.get_attribute("data-job")
                    for e in d.find_elements(By.CSS_SELECTOR, "#live-jobs tbody tr")
                }
                == {"901", "903"}
            ),
            what="alice's jobs",
        )
    finally:
        drv.quit()
    # the same answer for a job that does not exist; the refusal is logged at the server
    h = Https(site["port"], site["pki"] / "ca.crt")
    hdr = {"Authorization": f"Bearer {site['tokens'][ALICE]}"}
    assert h.get("/jobs/902", hdr)[0] == 404
    assert h.get("/jobs/99999", hdr)[0] == 404
    assert h.get("/api/alerts?job=902", hdr)[0] == 200
    status, doc = h.json("/api/alerts?job=902", hdr)
    assert doc["total"] == 0  # bob's job's alerts are not alice's either
    status, doc = h.json(f"/api/jobs?user={BOB}", hdr)
    assert doc["total"] == 0
    log = site["col"].output()
    assert re.search(
        rf"denied: {ALICE} \(token, 127\.0\.0\.1\) asked for job '902' of '{BOB}'", log
    )
    assert "99999" not in log  # a job that does not exist is no one's


def test_identity_from_the_proxy_header_only_from_the_trusted_address(site):
    trusted = Https(site["web2"], site["pki"] / "ca.crt")
    other = Https(site["web2"], site["pki"] / "ca.crt", source="127.0.0.2")
    as_alice = {"X-Forwarded-User": ALICE}
    status, doc = trusted.json("/api/jobs?sort=job&dir=asc", as_alice)
    assert status == 200
    # --share-accounts: alice's own jobs and the physics account's (carol's), not bob's
    assert [j["job_id"] for j in doc["jobs"]] == ["901", "903", "904"]
    assert trusted.json("/api/jobs", {"X-Forwarded-User": "root"})[1]["total"] >= 4
    # from an address that is not the proxy, the header means nothing
    assert other.get("/api/jobs", as_alice)[0] == 401
    assert other.get("/jobs", {"X-Forwarded-User": "root"})[0] == 401
    # a name that is no user name is refused, not cleaned
    assert trusted.get("/api/jobs", {"X-Forwarded-User": ALICE + "<script>"})[0] == 401
    log = site["web2_log"].read_text()
    assert "ignored the x-forwarded-user header from 127.0.0.2" in log


def test_bad_input_gets_clear_errors(site):
    h = Https(site["port"], site["pki"] / "ca.crt")
    hdr = {"Authorization": f"Bearer {site['tokens']['admin']}"}
    status, _, body = h.get("/nodes/" + quote("<img src=x onerror=alert(1)>", safe=""), hdr)
    assert status == 404
    assert b"no node &#39;&lt;img src=x onerror=alert(1)&gt;&#39;" in body and b"<img" not in body
    status, _, body = h.get("/no/such/page", hdr)
    assert status == 404 and b"no page /no/such/page" in body
    status, doc = h.json("/api/nodes/webnode?from=2020-01-01&to=2026-01-01", hdr)
    assert status == 413 and "days is longer than" in doc["error"]
    status, doc = h.json("/api/nodes/webnode?from=yesterday", hdr)
    assert status == 400 and "not a time" in doc["error"]
    status, doc = h.json("/api/jobs?page=x", hdr)
    assert status == 400 and "page" in doc["error"]
    status, doc = h.json("/api/jobs?size=100000", hdr)
    assert status == 200 and doc["size"] == 500  # pages are bounded
    # signing in sends people to pages of the portal only
    from urllib.parse import urlencode

    for nxt, where in (
        ("//evil.example/x", "/cluster"),
        ("/\\evil.example", "/cluster"),
        (f"/jobs?user={BOB}", f"/jobs?user={BOB}"),
    ):
        body = urlencode({"token": site["tokens"][BOB], "next": nxt}).encode()
        status, headers, _ = h.get(
            "/login", {"Content-Type": "application/x-www-form-urlencoded"}, body
        )
        assert status == 303 and headers["location"] == where
        assert (
            "para_session=" in headers["set-cookie"] and "secure" in headers["set-cookie"].lower()
        )
    status, _, _ = h.get(
        "/login",
        {"Content-Type": "application/x-www-form-urlencoded"},
        b"token=para_wrong&next=/jobs",
    )
    assert status == 401
    assert h.get("/api/jobs")[0] == 401  # nobody
    assert h.get("/api/jobs", {"Authorization": "Bearer para_forged"})[0] == 401
    # the portal serves HTTPS only, with the collector's certificate
    import http.client

    with pytest.raises((http.client.HTTPException, OSError)):
        Https(site["port"], None).get("/healthz")
