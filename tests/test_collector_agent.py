"""End to end: the real `para agent run` ships its segments and live samples to the real
`para collector serve`, over mutual TLS on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from para.agent.collector_client import CollectorClient, Endpoint
from para.agent.commands import render_status
from para.collector.db import FeatureDB
from tests.collector_support import REPO, CollectorProcess, make_pki, wait_for

pytestmark = [pytest.mark.slow]


def test_agent_segments_and_live_samples_reach_the_database(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", ["e2enode"], ["alice"])
    col = CollectorProcess(tmp_path / "db", pki).start()
    spool = tmp_path / "spool"
    (tmp_path / "agent.toml").write_text(
        f"""
[agent]
interval = 0.2
spool_dir = "{spool}"
host = "e2enode"
[segments]
max_seconds = 10
[collector]
url = "grpc+tls://127.0.0.1:{col.port}"
ca_file = "{pki}/ca.crt"
cert_file = "{pki}/issued/e2enode.crt"
key_file = "{pki}/issued/e2enode.key"
send_window = 0.5
poll_interval = 0.1
live = true
live_interval = 0.2
"""
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    log = open(tmp_path / "agent.log", "w")  # noqa: SIM115 - the child writes it
    agent = subprocess.Popen(
        [sys.executable, "-m", "para", "agent", "run", "--config", str(tmp_path / "agent.toml")],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    reader = CollectorClient(
        Endpoint(
            f"grpc+tls://127.0.0.1:{col.port}",
            ca_file=pki / "ca.crt",
            cert_file=pki / "issued" / "reader-alice.crt",
            key_file=pki / "issued" / "reader-alice.key",
            timeout=20,
        )
    )
    try:
        live = wait_for(lambda: reader.live_snapshot("e2enode").get("e2enode"), what="live")
        assert "node" in live[-1][1]  # a sample as the agent took it
        sent = spool / "sent"
        first = wait_for(
            lambda: sorted(sent.glob("*.para")) if sent.is_dir() else None,
            timeout=60,
            what="the first segment acknowledged",
        )[0]
        wait_for(lambda: FeatureDB(tmp_path / "db").status()["segments"] >= 1, what="merged")
        # the Flight client ran in sender children (para/agent/sender.py): the agent's own
        # process has loaded neither pyarrow nor its libraries
        st = wait_for(
            lambda: _status(spool, lambda d: (d["shipper"] or {}).get("sent", 0) >= 1),
            what="the status",
        )
        assert st["shipper"]["sender"]["started"] >= 1, st["shipper"]
        assert st["shipper"]["sender"]["max_rss_bytes"] > 0
        shown = [ln for ln in render_status(st) if ln.lstrip().startswith("sender")]
        assert shown and f"{st['shipper']['sender']['started']} started" in shown[0], shown
        assert st["resources"]["heavy_modules"] == []
        maps = Path(f"/proc/{agent.pid}/maps").read_text()
        assert "libarrow" not in maps and "pyarrow" not in maps
    finally:
        reader.close()
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=60)
        log.close()
        col.stop()
    assert agent.returncode == 0, (tmp_path / "agent.log").read_text()
    with zipfile.ZipFile(first) as zf:
        end = json.loads(zf.read("end.json"))
        seg_id = json.loads(zf.read("meta.json"))["segment"]["id"]
    fdb = FeatureDB(tmp_path / "db")
    con = fdb.connect()
    got = con.execute(
        "SELECT count(*), any_value(host) FROM node WHERE epoch(t) <= ?", [end["end"]]
    )
    assert got.fetchone() == (end["rows"]["node"], "e2enode")
    assert con.execute("SELECT host FROM hosts").fetchall() == [("e2enode",)]
    assert fdb._read_ledger("SELECT state FROM segments WHERE id = ?", (seg_id,)) == [("merged",)]
    con.close()


def _status(spool: Path, ok: object) -> dict[str, object] | None:
    try:
        doc = json.loads((spool / "status.json").read_text())
    except (OSError, ValueError):
        return None
    return doc if ok(doc) else None  # type: ignore[operator]
