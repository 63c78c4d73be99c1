"""The live view across sharded collectors (issue 14), with two real `para collector serve`
processes sharing one database and four simulated nodes (real mutual TLS, the agents' own
client) running one job, two nodes on each shard:

- a `job` rule on the job's total CPU (above what either shard's nodes give alone) fires once,
  at the webhook, from one shard; node-local rules fire on each node's own shard;
- `para top --collector A --collector B` shows every node once;
- the evaluating shard is killed (SIGKILL): its nodes fail over, `para top` says which shard
  did not answer and shows the others, the other shard takes the job rules over without a
  second notification, and resolves the alert once when the job calms down."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from para.agent.collector_client import CollectorClient, Endpoint
from tests.collector_support import CollectorProcess, make_pki, wait_for
from tests.conftest import run_para
from tests.live_support import Receiver
from tests.shard_support import HOSTS, Nodes

pytestmark = pytest.mark.slow
RULES = """
[defaults]
sinks = ["hook"]

[[sink]]
name = "hook"
type = "webhook"
url = "{url}"
backoff = 0.1

[[rule]]
name = "job-too-busy"
type = "job"
metric = "cpu_cores"
above = 1.0
for = "1s"
clear_for = "1s"

[[rule]]
name = "node-share"
metric = "job.cpu_cores"
above = 0.25
for = "1s"
clear_for = "1s"
"""


def _reader(pki: Path, port: int) -> CollectorClient:
    return CollectorClient(
        Endpoint(f"grpc+tls://127.0.0.1:{port}", pki / "ca.crt", pki / "issued/reader-reader.crt",
                 pki / "issued/reader-reader.key", timeout=10.0)
    )  # fmt: skip


def _job_status(pki: Path, port: int) -> dict[str, Any]:
    with _reader(pki, port) as c:
        return c.alerts()["status"]


def _top(pki: Path, *ports: int, config: Path | None = None) -> list[str]:
    args = []
    for p in ports:
        args += ["--collector", f"grpc+tls://127.0.0.1:{p}"]
    if config is not None:  # an agent's configuration names the shards; its CA is taken
        args += ["--shards-from", str(config)]
    else:
        args += ["--ca", str(pki / "ca.crt")]
    r = run_para(
        "top", *args, "--cert", str(pki / "issued/reader-reader.crt"),
        "--key", str(pki / "issued/reader-reader.key"), "--once", "-i", "0.2",
        env={"COLUMNS": "120", "LINES": "30"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def test_job_rules_and_top_across_two_shards_and_one_killed(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", list(HOSTS), readers=["reader"])
    db = tmp_path / "db"
    rx = Receiver()
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES.format(url=rx.url))
    shards = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        shards.append(
            CollectorProcess(
                db, pki, "--compact-every", "0", "--alerts", str(rules), state=tmp_path / name
            ).start()
        )
    ports = [s.port for s in shards]
    nodes = Nodes(pki, [f"grpc+tls://127.0.0.1:{p}" for p in ports], interval=0.5)
    try:

        def events(rule: str) -> list[tuple[str, Any]]:
            return [(e, b.get("host")) for e, b in rx.events(rule)]

        wait_for(lambda: events("job-too-busy"), timeout=60, step=0.1, what="the job rule")
        [(_, note)] = rx.events("job-too-busy")
        assert note["jobs"] == ["7"] and note["host"] is None
        assert note["evidence"]["job"]["hosts"] == list(HOSTS)
        assert len(note["evidence"]["job"]["shards"]) == 2  # its nodes on both shards
        assert note["value"] > 1.0
        # node-local rules: on each node's own shard, once per node above 0.25 core
        wait_for(lambda: len(events("node-share")) >= 3, timeout=60, what="node rules")
        statuses = [_job_status(pki, p) for p in ports]
        evaluating = [s["job_rules"]["evaluating"] for s in statuses]
        assert sorted(evaluating) == [False, True]
        lead = evaluating.index(True)
        # a few more rounds of the job rules: still one notification
        rounds = statuses[lead]["job_rule_rounds"]
        wait_for(
            lambda: _job_status(pki, ports[lead])["job_rule_rounds"] >= rounds + 3,
            timeout=60,
            what="three more rounds",
        )
        assert events("job-too-busy") == [("firing", None)]
        assert sorted(events("node-share")) == [("firing", h) for h in ("n1", "n3", "n4")]

        lines = _top(pki, *ports)
        assert "4 nodes 1 jobs" in lines[0]
        assert [h for h in HOSTS if any(ln.startswith(h + " ") for ln in lines)] == list(HOSTS)
        assert not any("not answering" in ln for ln in lines)

        # the evaluating shard dies
        shards[lead].kill()
        other = 1 - lead

        def failed_over() -> bool:
            with _reader(pki, ports[other]) as c:
                doc = c.top({})
            return sorted(n["host"] for n in doc["nodes"] if n["age_s"] < 3) == list(HOSTS)

        wait_for(failed_over, timeout=60, step=0.2, what="every node at the other shard")
        conf = tmp_path / "agent.toml"
        conf.write_text(
            f'[collector]\nurl = "grpc+tls://127.0.0.1:{ports[0]}"\n'
            f'fallback = ["grpc+tls://127.0.0.1:{ports[1]}"]\nca_file = "{pki / "ca.crt"}"\n'
            f'cert_file = "{pki / "issued/n1.crt"}"\nkey_file = "{pki / "issued/n1.key"}"\n'
        )
        lines = _top(pki, config=conf)
        assert "4 nodes 1 jobs" in lines[0]
        assert any(f"1 of 2 shards not answering: 127.0.0.1:{ports[lead]}" in ln for ln in lines)
        assert [h for h in HOSTS if any(ln.startswith(h + " ") for ln in lines)] == list(HOSTS)
        wait_for(
            lambda: _job_status(pki, ports[other])["job_rules"]["evaluating"],
            timeout=30,
            what="the other shard evaluating the job rules",
        )
        # the job calms down: resolved once, by the shard left; never notified twice
        for h in HOSTS:
            nodes.cores[h] = 0.05
        wait_for(lambda: ("resolved", None) in events("job-too-busy"), timeout=60, what="resolved")
        assert events("job-too-busy") == [("firing", None), ("resolved", None)]
        log = shards[other].output()
        assert (
            "this shard now evaluates the job rules over every shard (1 alert(s) taken over" in log
        )
    finally:
        nodes.close()
        for s in shards:
            s.stop()
        rx.close()
