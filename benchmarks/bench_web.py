"""The web portal (issue 15): what a person waits for, measured against a real server.

1. The job list with 1,000,000 jobs (a year of a busy site: tests/web_support.write_jobs,
   the schema the collector writes to the table meta/jobs) served by `para web` as a real
   process on 127.0.0.1: the page (HTML) and /api/jobs for the first page, a filter, a sort
   on a feature, a search, a deep page, and a user who sees only their own jobs; median and
   p95 over the mix.  Anchor in the same run: the same first page read straight from
   the table's Parquet files by a plain DuckDB (what a portal pays per page without the
   table it keeps).

2. The job page of the 128-node benchmark job (benchmarks/gen_job.py: 128 nodes x 1 h at
   1 Hz, imported into a database with `para collect`): the first request (analysis from the
   database and rendering) and the next (cached).  Anchor: `para report --job ID --html` as
   a process on the same database.

3. The cluster page with 1,000 live nodes: every node replays the real 10-minute recording
   (tests/fixtures/collector, each from its own offset) through the collector's live view
   for 300 s; the portal (a real uvicorn server in this process, reading the view as
   `para collector serve --web` does) answers /api/cluster: a refresh that rebuilds the
   heatmap, and the same second again (shared by every viewer).  With Chromium: the time
   to the first drawn heatmap and what one redraw costs the browser.

    .venv/bin/python benchmarks/bench_web.py [--jobs 1000000] [--requests 40] [--skip-job]
        [--skip-cluster] [--nodes 1000]
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from deltalake import DeltaTable  # noqa: E402

from para.collector import dataset  # noqa: E402
from tests.collector_support import FIXTURE  # noqa: E402
from tests.web_support import wait_port_file, write_jobs  # noqa: E402

ADMIN = {"X-Forwarded-User": "root"}


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(p / 100 * (len(s) - 1)))))]


class Client:
    def __init__(self, port: int):
        self.con = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

    def get(self, path: str, headers: dict[str, str]) -> tuple[int, bytes, float]:
        t = time.perf_counter()
        self.con.request("GET", path, headers={**headers, "Accept-Encoding": "gzip"})
        r = self.con.getresponse()
        body = r.read()
        return r.status, body, time.perf_counter() - t


def start_web(db: Path, work: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    port_file = work / "web.port"
    port_file.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    log = open(work / "web.log", "w")  # noqa: SIM115 - the child writes it
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "para",
            "web",
            "--db",
            str(db),
            "--insecure",
            "--listen",
            "127.0.0.1:0",
            "--port-file",
            str(port_file),
            "--trusted-proxy",
            "127.0.0.1",
            "--admin",
            "root",
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    log.close()
    return proc, wait_port_file(port_file, "port", timeout=120)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- 1. the job list ------------------------------------------------------------------------


def bench_jobs(n: int, requests: int, work: Path) -> dict[str, Any]:
    import duckdb

    from para.collector.db import FeatureDB

    db = work / "jobs-db"
    if db.exists():
        shutil.rmtree(db)
    fdb = FeatureDB(db)
    fdb.import_para(FIXTURE)
    fdb.close()
    t = time.perf_counter()
    rows = write_jobs(db / "meta" / "jobs", n, seed=3)
    gen_s = time.perf_counter() - t
    users = sorted({r["user"] for r in rows[:5000]})
    t = time.perf_counter()
    proc, port = start_web(db, work)  # loads the jobs into its table before it listens
    load_s = time.perf_counter() - t
    try:
        c = Client(port)
        status, _, _ = c.get("/api/jobs?size=1", ADMIN)
        assert status == 200
        rnd = random.Random(5)
        mix = [
            ("first page", "/jobs", ADMIN),
            ("first page, JSON", "/api/jobs", ADMIN),
            ("one user's", "/jobs?user={u}", ADMIN),
            ("sorted by CPU use", "/jobs?sort=cpu&dir=asc", ADMIN),
            ("bottleneck + nodes", "/jobs?bottleneck=io_wait_bound&min_nodes=8", ADMIN),
            ("search", "/jobs?q=lammps-4", ADMIN),
            ("page 10,000", "/jobs?page=10000", ADMIN),
            ("as a user", "/jobs", None),
        ]
        times: dict[str, list[float]] = {name: [] for name, _, _ in mix}
        for i in range(requests):
            name, path, hdr = mix[i % len(mix)]
            u = rnd.choice(users)
            status, body, dt = c.get(path.format(u=u), hdr or {"X-Forwarded-User": u})
            assert status == 200, (path, status, body[:300])
            times[name].append(dt)
        allt = [x for v in times.values() for x in v]
    finally:
        stop(proc)
    # anchor: the first page straight from the Parquet files of the table's snapshot, each time
    con = duckdb.connect()
    files = "[" + ", ".join(f"'{f}'" for f in dataset.snapshot(db / "meta" / "jobs").files) + "]"
    anchor = []
    for _ in range(max(5, requests // 8)):
        t = time.perf_counter()
        con.execute(
            'SELECT job_id, "user", name, nodes, start, "end", cpu_util_pct, bottlenecks '
            f"FROM read_parquet({files}) ORDER BY start DESC LIMIT 50"
        ).fetchall()
        con.execute(f"SELECT count(*) FROM read_parquet({files})").fetchall()
        anchor.append(time.perf_counter() - t)
    return {
        "jobs": n,
        "generate_s": gen_s,
        "load_s": load_s,
        "median_ms": 1000 * statistics.median(allt),
        "p95_ms": 1000 * pct(allt, 95),
        "per_kind_ms": {k: round(1000 * statistics.median(v), 1) for k, v in times.items() if v},
        "requests": len(allt),
        "anchor_ms": 1000 * statistics.median(anchor),
    }


# -- 2. the 128-node job's page ------------------------------------------------------------------


def bench_job_page(work: Path, nodes: int, seconds: int) -> dict[str, Any]:
    import gen_job

    src = Path(os.environ.get("PARA_BENCH_DIR", "/tmp/para-bench-job"))
    files = gen_job.make_job(src, nodes, seconds)
    db = work / f"job-db-{nodes}-{seconds}"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    import_s = None
    if not (db / "ledger.sqlite3").exists():
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "para", "collect", "--db", str(db), *map(str, files)],
            env=env,
            check=True,
            capture_output=True,
        )
        import_s = time.perf_counter() - t
    jobs = DeltaTable(str(db / "meta" / "jobs")).to_pyarrow_table().to_pylist()
    job = max(jobs, key=lambda j: j["nodes"] or 0)
    job_id = job["job_id"]
    out = work / "job.html"
    t = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "para",
            "report",
            "--job",
            job_id,
            "--db",
            str(db),
            "--html",
            str(out),
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    anchor_s = time.perf_counter() - t
    proc, port = start_web(db, work, "--max-node-seconds", "1e9")
    try:
        c = Client(port)
        status, body, first = c.get(f"/jobs/{job_id}", ADMIN)
        assert status == 200, body[:500]
        cached = []
        for _ in range(5):
            status, body2, dt = c.get(f"/jobs/{job_id}", ADMIN)
            assert status == 200
            cached.append(dt)
    finally:
        stop(proc)
    return {
        "job": job_id,
        "nodes": job["nodes"],
        "import_s": import_s,
        "first_s": first,
        "cached_ms": 1000 * statistics.median(cached),
        "page_mib": len(body) / 2**20,
        "anchor_report_html_s": anchor_s,
    }


# -- 3. the cluster page -------------------------------------------------------------------------


def bench_cluster(
    nodes: int, seconds: int, requests: int, work: Path, browser: bool
) -> dict[str, Any]:
    from bench_alerts import job_row

    from para.collector.alerts import AlertService
    from para.collector.db import FeatureDB
    from para.web.app import WebOptions
    from para.web.live import InProcess
    from para.web.server import WebServer
    from tests.live_support import samples_from_para

    db = work / "cluster-db"
    if not db.exists():
        fdb = FeatureDB(db)
        fdb.import_para(FIXTURE)
        fdb.close()
    rec = samples_from_para()
    rng = random.Random(6)
    offsets = [rng.randrange(len(rec)) for _ in range(nodes)]
    hosts = [f"cn{i:04d}" for i in range(nodes)]
    svc = AlertService(None, None, "bench", lambda msg: None, store=False)
    base = time.time() - seconds
    t0 = int(base * 1000)
    t = time.perf_counter()
    for k in range(seconds):
        with svc._lock:
            second = []
            for i, (h, off) in enumerate(zip(hosts, offsets, strict=True)):
                _, rows = rec[(off + k) % len(rec)]
                rows = dict(rows, job=[job_row(f"j{i // 4}", rows)])  # 4 nodes per job
                second.append((h, [(t0 + k * 1000, rows)], base + k))
            svc.process(second)
            svc.engine.tick(base + k)
            svc.view.tick(base + k)
    feed_s = time.perf_counter() - t
    opts = WebOptions(
        db=db,
        listen="127.0.0.1:0",
        insecure=True,
        trusted_proxies=("127.0.0.1",),
        admins=("root",),
        live=InProcess(svc.summary),
        quiet=True,
    )
    web = WebServer(opts).start()
    portal = web.app.state.portal
    try:
        c = Client(web.port)
        c.get("/api/cluster?metric=cpu", ADMIN)
        fresh, shared, size = [], [], 0
        for i in range(requests):
            metric = ("cpu", "mem", "io", "net", "gpu")[i % 5]
            portal.live._cache.clear()
            status, body, dt = c.get(f"/api/cluster?metric={metric}", ADMIN)
            assert status == 200, body[:300]
            fresh.append(dt)
            size = max(size, len(body))
            status, body, dt = c.get(f"/api/cluster?metric={metric}", ADMIN)
            shared.append(dt)
        status, html, html_dt = c.get("/cluster", ADMIN)
        out: dict[str, Any] = {
            "nodes": nodes,
            "history_s": seconds,
            "feed_s": feed_s,
            "refresh_median_ms": 1000 * statistics.median(fresh),
            "refresh_p95_ms": 1000 * pct(fresh, 95),
            "shared_median_ms": 1000 * statistics.median(shared),
            "gzip_kib": size / 1024,
            "shell_ms": 1000 * html_dt,
        }
        if browser:
            out.update(browser_cluster(web.port, work))
    finally:
        web.stop()
        svc.stop()
    return out


def browser_cluster(port: int, work: Path) -> dict[str, Any]:
    """Chromium on the cluster page, signed in as a sysadmin (a session cookie made with the
    portal's signer: a page cannot send the proxy's header)."""
    from selenium.webdriver.common.by import By

    from tests.web_support import browser, wait

    drv = browser(work / "chrome")
    try:
        drv.get(f"http://127.0.0.1:{port}/healthz")
        drv.add_cookie({"name": "para_session", "value": _COOKIE["v"], "path": "/"})
        t = time.perf_counter()
        drv.get(f"http://127.0.0.1:{port}/cluster")
        root = wait(drv, lambda d: d.find_element(By.ID, "cluster"))
        wait(drv, lambda d: int(root.get_attribute("data-updates") or 0) >= 1, timeout=300)
        first = time.perf_counter() - t
        draws = []
        seen = 1
        while len(draws) < 5:
            wait(
                drv, lambda d, s=seen: int(root.get_attribute("data-updates") or 0) > s, timeout=300
            )
            seen = int(root.get_attribute("data-updates"))
            draws.append(float(root.get_attribute("data-draw-ms")))
        rows = drv.execute_script("return document.getElementById('heatmap').data[0].y.length")
        return {
            "browser_first_s": first,
            "browser_redraw_ms": statistics.median(draws),
            "browser_rows": rows,
        }
    finally:
        drv.quit()


_COOKIE: dict[str, str] = {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--job-nodes", type=int, default=128)
    ap.add_argument("--job-seconds", type=int, default=3600)
    ap.add_argument("--skip-jobs", action="store_true")
    ap.add_argument("--skip-job", action="store_true")
    ap.add_argument("--skip-cluster", action="store_true")
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--work", type=Path, help="Keep the databases here (default: a temp dir).")
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="para-bench-web-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work directory {work}; {os.cpu_count()} CPUs", flush=True)
    if not a.skip_jobs:
        r = bench_jobs(a.jobs, a.requests, work)
        print(
            f"\n1. job list, {r['jobs']:,} jobs ({r['requests']} requests): median "
            f"{r['median_ms']:.0f} ms, p95 {r['p95_ms']:.0f} ms; server start with the "
            f"table {r['load_s']:.1f} s; anchor (first page straight from the jobs table's files): "
            f"{r['anchor_ms']:.0f} ms",
            flush=True,
        )
        print(f"   per kind (median ms): {r['per_kind_ms']}", flush=True)
    if not a.skip_job:
        r = bench_job_page(work, a.job_nodes, a.job_seconds)
        print(
            f"\n2. job page of job {r['job']} ({r['nodes']} nodes): first "
            f"{r['first_s']:.1f} s, "
            f"cached {r['cached_ms']:.0f} ms ({r['page_mib']:.1f} MiB); anchor "
            f"`para report --job --html` {r['anchor_report_html_s']:.1f} s"
            + (f"; import {r['import_s']:.0f} s" if r["import_s"] else ""),
            flush=True,
        )
    if not a.skip_cluster:
        r = bench_cluster_with_cookie(a, work)
        print(
            f"\n3. cluster page, {r['nodes']} live nodes ({r['history_s']} s of history): "
            f"refresh median {r['refresh_median_ms']:.0f} ms, p95 {r['refresh_p95_ms']:.0f} "
            f"ms; same second (shared) {r['shared_median_ms']:.1f} ms; {r['gzip_kib']:.0f} "
            f"KiB gzipped; page shell {r['shell_ms']:.0f} ms",
            flush=True,
        )
        if "browser_first_s" in r:
            print(
                f"   Chromium: first heatmap drawn {r['browser_first_s']:.1f} s after "
                f"navigation, redraw {r['browser_redraw_ms']:.0f} ms, "
                f"{r['browser_rows']} rows",
                flush=True,
            )


def bench_cluster_with_cookie(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    # The portal's signer is made per server: patch it so the browser can hold a session of
    # `root` (a sysadmin) without a token file.
    import para.web.app as webapp

    real = webapp.Sessions

    class Known(real):  # type: ignore[misc,valid-type]
        def __init__(self) -> None:
            super().__init__(b"k" * 32)

    webapp.Sessions = Known  # type: ignore[misc]
    _COOKIE["v"] = Known().make("root")
    try:
        return bench_cluster(a.nodes, 300, a.requests, work, not a.no_browser)
    finally:
        webapp.Sessions = real  # type: ignore[misc]


if __name__ == "__main__":
    main()
