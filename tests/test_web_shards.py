"""The portal's live cluster across sharded collectors (issue 14): two real
`para collector serve` shards sharing one database, four simulated nodes (real mutual TLS, the
agents' own client) running one job, two nodes on each shard, and a real `para web` reading
both with a reader's certificate (`--collector A --collector B`), asked over HTTPS and shown
in headless Chromium:

- /api/cluster has every node once, the job with its nodes on both shards and its cores the
  sum of what each node gives it (known exactly: the nodes' CPU ticks), both shards answering;
- one shard is killed (SIGKILL): its nodes fail over to the other, the portal still shows the
  four, and the cluster page says which shard does not answer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from para.collector.auth import TokenStore
from tests.collector_support import REPO, CollectorProcess, make_pki, wait_for
from tests.conftest import stop
from tests.shard_support import HOSTS, Nodes
from tests.web_support import Https, browser, console_errors, sign_in, wait, wait_port_file

pytestmark = pytest.mark.slow


def test_the_portal_shows_one_cluster_across_shards_and_says_which_is_silent(
    tmp_path: Path,
) -> None:
    pki = make_pki(tmp_path / "pki", list(HOSTS), readers=["web"])
    token = TokenStore(pki / "web-tokens.json").add("root", reader=True)
    db = tmp_path / "db"
    shards = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        shards.append(
            CollectorProcess(db, pki, "--compact-every", "0", state=tmp_path / name).start()
        )
    urls = [f"grpc+tls://127.0.0.1:{s.port}" for s in shards]
    nodes = Nodes(pki, urls, interval=0.5)
    web: subprocess.Popen[bytes] | None = None
    drv = None
    port_file = tmp_path / "web.port"
    try:
        args = [sys.executable, "-m", "para", "web", "--db", str(db), "--listen", "127.0.0.1:0",
                "--tls-dir", str(pki), "--port-file", str(port_file), "--admin", "root",
                "--trusted-proxy", "127.0.0.1", "--collector-ca", str(pki / "ca.crt"),
                "--reader-cert", str(pki / "issued/reader-web.crt"),
                "--reader-key", str(pki / "issued/reader-web.key")]  # fmt: skip
        for u in urls:
            args += ["--collector", u]
        with open(tmp_path / "web.log", "wb") as log:
            web = subprocess.Popen(
                args, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        portal = Https(wait_port_file(port_file, "port"), pki / "ca.crt")
        root = {"X-Forwarded-User": "root"}

        def cluster() -> dict[str, Any]:
            status, doc = portal.json("/api/cluster?metric=cpu", root)
            assert status == 200, doc
            return doc

        given = sum(nodes.cores.values())
        seen: list[dict[str, Any]] = []

        def whole() -> dict[str, Any] | None:
            """Every node, and the job's cores what its four nodes give it (from their ticks,
            once each node has two samples), not one shard's part."""
            doc = cluster()
            seen[:] = [doc]
            job = {j["job"]: j for j in doc["jobs"]}.get("7", {})
            full = doc["nodes"] == 4 and job.get("hosts") == list(HOSTS)
            near = abs((job.get("cpu_cores") or 0) - given) <= 0.1 * given
            return doc if full and near and doc["heatmap"]["hosts"] == list(HOSTS) else None

        try:
            doc = wait_for(whole, timeout=90, step=0.5, what="the four nodes in the portal")
        except AssertionError as e:
            raise AssertionError(f"{e}: {seen[0]['jobs']}, {seen[0]['nodes']} nodes") from None
        assert [(s["shard"], s["ok"], s["nodes"]) for s in doc["shards"]] == [
            (u.split("://")[1], True, 2) for u in urls
        ]

        shards[1].kill()
        silent = urls[1].split("://")[1]

        def failed_over() -> dict[str, Any] | None:
            d = cluster()
            states = {s["shard"]: s["ok"] for s in d["shards"]}
            ok = states.get(silent) is False and d["nodes"] == 4 and not d["stale"]
            return d if ok else None

        doc = wait_for(failed_over, timeout=90, step=0.5, what="the nodes failed over")
        [dead] = [s for s in doc["shards"] if not s["ok"]]
        assert silent in dead["error"] and dead["nodes"] == 0
        assert {j["job"]: j["hosts"] for j in doc["jobs"]}["7"] == list(HOSTS)

        # the page says it, drawn by the browser from the same API
        from selenium.webdriver.common.by import By

        drv = browser(tmp_path / "chrome", pki / "server.crt")
        base = f"https://127.0.0.1:{portal.port}"
        sign_in(drv, base, token, "root")
        drv.get(base + "/cluster")
        text = wait(
            drv,
            lambda d: (
                "shards not answering" in d.find_element(By.ID, "cluster-status").text
                and d.find_element(By.ID, "cluster-status").text
            ),
            what="the cluster page's status",
        )
        assert text.startswith("4 nodes, 2 shards"), text
        assert f"1 of 2 shards not answering: {silent}" in text, text
        assert not console_errors(drv)
    finally:
        if drv is not None:
            drv.quit()
        nodes.close()
        if web is not None:
            stop(web)
        for s in shards:
            s.stop()
    assert not nodes.errors, nodes.errors  # every sample reached one shard or the other
