"""The portal's parts without a browser (issue 15): its DuckDB can read the database and
nothing else; the job list filters, sorts, pages and hides as an independent computation in
Python says; a node's timelines are the recording's own values; sessions, user names, times
and settings are checked.  (Pages in a real browser: test_web_portal.py.)"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.compute as pc
import pytest

from para.collector.db import FeatureDB
from para.errors import ParaError
from para.formats import ParaFile
from para.web.access import Policy, Sessions, Viewer, check_user, parse_networks
from para.web.app import BadRequest, parse_time
from para.web.commands import load_config
from para.web.jobpage import PageCache, Rendered
from para.web.store import NotFound, Store
from tests.collector_support import FIXTURE
from tests.web_support import write_jobs

N_JOBS = 3000


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("webdb") / "db"
    fdb = FeatureDB(root)
    assert fdb.import_para(FIXTURE)["status"] == "imported"
    fdb.close()
    rows = write_jobs(root / "meta" / "jobs", N_JOBS, seed=7)
    store = Store(root)
    yield {"root": root, "rows": rows, "store": store}
    store.close()


ADMIN = Viewer("root", True, "proxy")


def test_the_portals_duckdb_reads_the_database_and_nothing_else(db):
    store = db["store"]
    with ParaFile(FIXTURE) as pf:
        want = len(pf.read_table("node"))
    with store.cursor() as cur:
        assert cur.execute("SELECT count(*) FROM node").fetchone()[0] == want
        assert cur.execute("SELECT count(*) FROM web_jobs").fetchone()[0] == N_JOBS
        for sql in (
            "SELECT * FROM read_csv('/etc/passwd')",
            "SELECT * FROM read_text('/etc/hostname')",
            "SELECT * FROM read_parquet('data/../catalog.duckdb')",
            f"SELECT * FROM read_csv('{db['root']}/ledger.sqlite3')",
            "COPY (SELECT 1) TO 'data/x.csv'",
            f"ATTACH '{db['root']}/other.duckdb'",
            "INSTALL httpfs",
            "LOAD httpfs",
            "SELECT * FROM read_parquet('https://example.org/x.parquet')",
            "SET enable_external_access = true",
            "SET allowed_directories = ['/']",
        ):
            with pytest.raises(duckdb.Error):
                cur.execute(sql)
    assert not (db["root"] / "data" / "x.csv").exists()


def _expect(rows: list[dict[str, Any]], keep: Any, key: str, desc: bool) -> list[str]:
    """The job ids in the order the list must show them: by `key` (missing values last),
    then job id ascending."""
    have = [r for r in rows if keep(r)]
    with_v = [r for r in have if r[key] is not None]
    without = sorted((r for r in have if r[key] is None), key=lambda r: r["job_id"])
    with_v.sort(key=lambda r: r["job_id"])
    with_v.sort(key=lambda r: r[key], reverse=desc)
    return [r["job_id"] for r in with_v + without]


def _account(r: dict[str, Any]) -> str:
    import json

    return json.loads(r["info"])["account"]


@pytest.mark.parametrize(
    ("filters", "keep", "sort", "key", "desc"),
    [
        ({}, lambda r: True, "cpu", "cpu_util_pct", True),
        ({}, lambda r: True, "start", "start", False),
        ({"user": "u042"}, lambda r: r["user"] == "u042", "nodes", "nodes", True),
        (
            {"bottleneck": "io_wait_bound"},
            lambda r: "io_wait_bound" in (r["bottlenecks"] or []),
            "rss",
            "peak_rss_bytes",
            True,
        ),
        ({"min_nodes": 16}, lambda r: r["nodes"] >= 16, "user", "user", False),
        ({"q": "lammps-1"}, lambda r: "lammps-1" in r["name"], "job", "job_id", True),
        (
            {"name": "gromacs-*"},
            lambda r: r["name"].startswith("gromacs-"),
            "gpu",
            "gpu_util_pct",
            True,
        ),
        ({"account": "acct07"}, lambda r: _account(r) == "acct07", "start", "start", True),
    ],
)
def test_the_job_list_filters_sorts_and_pages_as_python_does(db, filters, keep, sort, key, desc):
    want = _expect(db["rows"], keep, key, desc)
    got: list[str] = []
    page = 1
    while True:
        p = db["store"].jobs(ADMIN, False, filters, sort, desc, page, 97)
        assert p.total == len(want)
        got += [r["job_id"] for r in p.rows]
        if page >= p.pages:
            break
        page += 1
    assert got == want


def test_a_user_sees_their_jobs_their_accounts_and_their_groups_where_the_site_says(db):
    rows, store = db["rows"], db["store"]
    me = Viewer("u001", False, "token")
    ids = lambda p: {r["job_id"] for r in p.rows}  # noqa: E731
    mine = {r["job_id"] for r in rows if r["user"] == "u001"}
    assert mine and ids(store.jobs(me, False, {}, size=500)) == mine
    accounts = {_account(r) for r in rows if r["user"] == "u001"}
    shared = {r["job_id"] for r in rows if _account(r) in accounts}
    assert shared > mine
    got = store.jobs(me, True, {}, size=500)
    assert got.total == len(shared) and ids(got) <= shared
    team = Viewer("u001", False, "token", users=frozenset({"u002", "u003"}))
    want = {r["job_id"] for r in rows if r["user"] in ("u001", "u002", "u003")}
    assert ids(store.jobs(team, False, {}, size=500)) == want
    other = next(r["job_id"] for r in rows if r["user"] == "u999" or r["user"] == "u500")
    with pytest.raises(NotFound):
        store.job(me, False, other)
    assert store.job(ADMIN, False, other)["job_id"] == other
    # filters cannot widen what a user sees
    assert store.jobs(me, False, {"user": "u500"}).total == 0


def test_a_nodes_timelines_are_the_recordings_values(db):
    store = db["store"]
    with ParaFile(FIXTURE) as pf:
        node = pf.read_table("node").sort_by("t")
        mem = pf.read_table("memory").sort_by("t")
        host = pf.meta["host"]["hostname"]
    t = node.column("t").cast("int64").to_pylist()
    col = {c: node.column(c).to_pylist() for c in node.column_names}
    total = [
        sum(
            col[k][i] or 0
            for k in (
                "cpu_user",
                "cpu_nice",
                "cpu_system",
                "cpu_idle",
                "cpu_iowait",
                "cpu_irq",
                "cpu_softirq",
                "cpu_steal",
            )
        )
        for i in range(len(t))
    ]
    idle = [col["cpu_idle"][i] + col["cpu_iowait"][i] for i in range(len(t))]
    want = {}
    for i in range(1, len(t)):
        dt = total[i] - total[i - 1]
        if dt > 0:
            want[t[i] // 1000] = 100 * (1 - (idle[i] - idle[i - 1]) / dt)
    tl = store.timelines(host, t[0] / 1000 - 1, t[-1] / 1000 + 1, 100_000)
    assert tl["step_s"] == 1
    got = dict(zip(tl["cpu"]["b"], tl["cpu"]["busy_pct"], strict=True))
    assert set(got) == set(want)
    assert all(abs(got[k] - want[k]) < 1e-3 for k in want)
    total_b = pc.cast(mem["mem_total"], "float64")
    used = pc.divide(pc.subtract(total_b, pc.cast(mem["mem_available"], "float64")), total_b)
    mem_want = {
        a // 1000: 100 * b
        for a, b in zip(mem.column("t").cast("int64").to_pylist(), used.to_pylist(), strict=True)
    }
    mem_got = dict(zip(tl["mem"]["b"], tl["mem"]["used_pct"], strict=True))
    assert set(mem_got) == set(mem_want)
    assert all(abs(mem_got[k] - mem_want[k]) < 1e-3 for k in mem_want)
    # coarser buckets: never more points than asked for
    coarse = store.timelines(host, t[0] / 1000, t[-1] / 1000, 50)
    assert 0 < len(coarse["cpu"]["b"]) <= 51
    with pytest.raises(NotFound):
        store.host("no-such-node")


def test_sessions_are_signed_and_expire():
    s = Sessions()
    c = s.make("alice")
    assert s.read(c) == "alice"
    payload, _, mac = c.rpartition(".")
    forged = Sessions().make("root")
    assert s.read(forged) is None  # another key
    assert s.read(forged.rpartition(".")[0] + "." + mac) is None
    assert s.read(c[:-2] + ("AA" if not c.endswith("AA") else "BB")) is None
    assert s.read(c, now=time.time() + s.lifetime_s + 10) is None
    assert s.read(None) is None and s.read("garbage") is None


def test_user_names_and_proxies():
    assert check_user("alice") == "alice" and check_user("a.b@site.org") == "a.b@site.org"
    for bad in ("", "a b", "alice<script>", "-rf", "x" * 200, "al'ice", "ali\nce"):
        assert check_user(bad) is None
    p = Policy(trusted_proxies=parse_networks(["127.0.0.1", "10.1.0.0/16"]))
    assert p.is_trusted_proxy("127.0.0.1") and p.is_trusted_proxy("10.1.200.3")
    assert not p.is_trusted_proxy("127.0.0.2") and not p.is_trusted_proxy(None)
    assert not Policy().is_trusted_proxy("127.0.0.1")  # none configured: none believed
    with pytest.raises(ParaError, match="invalid proxy address"):
        parse_networks(["localhost"])
    admins = Policy(admins=frozenset({"root"}))
    assert admins.viewer("root", "proxy").admin and not admins.viewer("alice", "proxy").admin


def test_times_and_settings(tmp_path: Path):
    assert parse_time("2026-11-22") == 1795305600.0
    assert parse_time("2026-11-22T10:00") == 1795305600.0 + 36000
    assert parse_time("1795305600") == 1795305600.0
    assert parse_time("-6h", now=1000000.0) == 1000000.0 - 6 * 3600
    assert parse_time("") is None
    for bad in ("yesterday", "nan", "2026-13-01"):
        with pytest.raises(BadRequest):
            parse_time(bad)
    f = tmp_path / "web.toml"
    f.write_text('[web]\nadmins = ["root"]\nmax_range_days = 7\n')
    assert load_config(str(f)) == {"admins": ["root"], "max_range_days": 7.0}
    f.write_text("[web]\nadmin = 'root'\n")
    with pytest.raises(ParaError, match="unknown key web.admin"):
        load_config(str(f))
    f.write_text("[web]\nadmins = 'root'\n")
    with pytest.raises(ParaError, match="list of strings"):
        load_config(str(f))


def test_the_page_cache_renders_once_and_keeps_what_fits():
    cache = PageCache(max_bytes=100)
    made: list[str] = []
    gate = threading.Event()

    def make(text: str) -> Any:
        def f() -> Rendered:
            gate.wait(10)
            made.append(text)
            return Rendered(text, 0.0, time.time())

        return f

    out: list[Any] = []
    threads = [
        threading.Thread(target=lambda: out.append(cache.get_or_make("a", make("A" * 40))))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(10)
    assert made == ["A" * 40] and sorted(c for _, c in out) == [False, True, True, True]
    cache.get_or_make("b", make("B" * 40))
    cache.get_or_make("c", make("C" * 40))  # 120 bytes: the least recently used goes
    assert cache.stats()["pages"] == 2 and cache.stats()["bytes"] == 80
    assert cache.get_or_make("a", make("A" * 40))[1] is False  # made again
