"""Sharded collectors: two real `para collector serve` processes writing one database, two real
`para agent run` processes each with its own collector first and the other as fallback; one
collector killed mid-way: its agent fails over, its spool drains into the other, and every
row of every acknowledged segment is in the database exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import zipfile
from pathlib import Path

import pytest

from para.collector.db import FeatureDB
from tests.collector_support import REPO, CollectorProcess, make_pki, wait_for

from .conftest import para_cmd

pytestmark = pytest.mark.slow
HOSTS = ("rack1-n1", "rack2-n1")


def _agent(tmp: Path, pki: Path, host: str, url: str, fallback: str) -> subprocess.Popen[bytes]:
    conf = tmp / f"{host}.toml"
    conf.write_text(
        f"""
[agent]
interval = 0.25
spool_dir = "{tmp / host}"
host = "{host}"
[segments]
max_seconds = 10
[jobs]
environ = false
[collector]
url = "{url}"
fallback = ["{fallback}"]
ca_file = "{pki}/ca.crt"
cert_file = "{pki}/issued/{host}.crt"
key_file = "{pki}/issued/{host}.key"
send_window = 0.1
poll_interval = 0.1
backoff_min = 0.1
backoff_max = 1.0
"""
    )
    log = open(tmp / f"{host}.log", "w")  # noqa: SIM115 - the child writes it
    return subprocess.Popen(
        [*para_cmd(), "agent", "run", "--config", str(conf)],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _sent_rows(spool: Path) -> tuple[int, set[str]]:
    rows, ids = 0, set()
    for f in sorted((spool / "sent").glob("*.para")):
        with zipfile.ZipFile(f) as zf:
            rows += json.loads(zf.read("end.json"))["rows"].get("node", 0)
            ids.add(json.loads(zf.read("meta.json"))["segment"]["id"])
    return rows, ids


def test_an_agent_fails_over_to_another_shard_and_loses_nothing(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", list(HOSTS))
    db = tmp_path / "db"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = CollectorProcess(db, pki, "--compact-every", "0", state=tmp_path / "a").start()
    b = CollectorProcess(db, pki, "--compact-every", "0", state=tmp_path / "b").start()
    url_a, url_b = (f"grpc+tls://127.0.0.1:{c.port}" for c in (a, b))
    agents = [
        _agent(tmp_path, pki, HOSTS[0], url_a, url_b),
        _agent(tmp_path, pki, HOSTS[1], url_b, url_a),
    ]
    try:

        def merged(host: str, n: int) -> bool:
            for ag in agents:
                assert ag.poll() is None, [(tmp_path / f"{h}.log").read_text() for h in HOSTS]
            rows = FeatureDB(db)._read_ledger(
                "SELECT count(*) FROM segments WHERE host = ? AND state = 'merged'", (host,)
            )
            return rows[0][0] >= n

        wait_for(lambda: merged(HOSTS[0], 1), timeout=120, what="rack1's first segment")
        a.kill()  # rack1's own collector dies (SIGKILL)
        # its agent goes on with the other shard: two more segments of rack1 merged there
        wait_for(lambda: merged(HOSTS[0], 3), timeout=120, what="rack1 failed over")
        wait_for(lambda: merged(HOSTS[1], 2), timeout=120, what="rack2")
    finally:
        for ag in agents:
            ag.send_signal(signal.SIGTERM)
        for ag in agents:
            ag.wait(timeout=60)
        b.stop()
        a.kill()
    # what the shards acknowledged but had not merged yet (rack1's collector was killed) is
    # merged when one starts again
    (tmp_path / "c").mkdir()
    c = CollectorProcess(db, pki, "--compact-every", "0", state=tmp_path / "c").start()
    try:
        wait_for(
            lambda: (
                FeatureDB(db)._read_ledger(
                    "SELECT count(*) FROM segments WHERE state = 'received'"
                )[0][0]
                == 0
            ),
            timeout=120,
            what="every received segment merged",
        )
    finally:
        c.stop()
    log = (tmp_path / f"{HOSTS[0]}.log").read_text()
    assert "cannot reach the collector" in log  # the outage it rode out
    con = FeatureDB(db).connect()
    for host in HOSTS:
        rows, ids = _sent_rows(tmp_path / host)
        assert rows > 0
        got = con.execute(
            "SELECT count(*), count(DISTINCT t) FROM node WHERE host = ?", [host]
        ).fetchone()
        assert got == (rows, rows), host  # every acknowledged row, once
        merged_ids = {
            r[0]
            for r in FeatureDB(db)._read_ledger(
                "SELECT id FROM segments WHERE host = ? AND state = 'merged'", (host,)
            )
        }
        assert ids <= merged_ids
    con.close()
