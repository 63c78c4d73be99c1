"""The Prometheus/OpenMetrics exposition (para.live.openmetrics), read back with the
prometheus-client parsers, over a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from para.live import openmetrics
from para.live.metrics import LAYOUTS, HostState
from tests.live_support import samples_from_para

pytestmark = pytest.mark.no_kernel


def _job_rows(job: str, utime: int) -> list:
    lay = LAYOUTS["job"]
    row: list = [None] * len(lay.cols)
    row[lay.index["job"]], row[lay.index["procs"]] = job, 3
    row[lay.index["utime"]], row[lay.index["stime"]] = utime, 0
    row[lay.index["rss_bytes"]], row[lay.index["cpus"]] = 123456789, 2
    return [row]


@pytest.fixture(scope="module")
def snapshot():
    """Three samples of the real recording, with a job `4711` of user alice on the node."""
    samples = samples_from_para()[300:303]
    hs = HostState("cn01")
    snap = None
    start = [samples[0][0], "job_start", None, "4711",
             json.dumps({"user": "alice", "job_name": "train \"big\""})]  # fmt: skip
    for i, (t, rows) in enumerate(samples):
        rows = dict(rows, job=_job_rows("4711", 100 * i), events=[start] if i == 0 else [])
        snap = hs.update(t, rows)
    return snap


def _samples(families) -> dict:
    out = {}
    for fam in families:
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_text_format_parses_with_job_labels(snapshot):
    fams = openmetrics.node_families([snapshot], cluster="hpc")
    fams += openmetrics.agent_families("cn01", {"samples": 42})
    text = openmetrics.render(fams)
    got = _samples(parse_text(text))
    node = (("cluster", "hpc"), ("host", "cn01"))
    assert got[("para_node_mem_used_bytes", node)] == snapshot.host_values["mem_used_bytes"]
    assert got[("para_node_cpus", node)] == snapshot.host_values["cpus"]
    job = (*node, ("job_id", "4711"))
    assert got[("para_job_resident_memory_bytes", job)] == 123456789
    assert got[("para_job_cpus", job)] == 2
    # the job's user and name on its info series only (a counter's labels must stay put)
    info = (*job, ("job_name", 'train "big"'), ("user", "alice"))
    assert got[("para_node_job_info", info)] == 1
    assert ("para_job_cpu_seconds_total", job) in got
    assert got[("para_agent_samples_total", (("host", "cn01"),))] == 42


def test_openmetrics_format_parses(snapshot):
    fams = openmetrics.node_families([snapshot])
    fams.append(openmetrics.alert_family([{"rule": "busy", "severity": "warning", "host": "cn01",
                                           "jobs": ["4711"], "labels": {"gpu": "0"}}]))  # fmt: skip
    fams.append(openmetrics.Family("para_collector_live_samples_total", "counter", "samples",
                                   samples=[({}, 7.0)]))  # fmt: skip
    text = openmetrics.render(fams, openmetrics=True)
    assert text.endswith("# EOF\n")
    parsed = {f.name: f for f in parse_openmetrics(text)}
    assert parsed["para_collector_live_samples"].type == "counter"
    assert parsed["para_node_mem_used_bytes"].unit == "bytes"
    assert parsed["para_node_cpu_seconds"].type == "counter"
    assert parsed["para_node_cpu_seconds"].unit == "seconds"
    alert = parsed["para_alerts_active"].samples[0]
    assert alert.labels == {"rule": "busy", "severity": "warning", "host": "cn01",
                            "job_id": "4711", "gpu": "0"}  # fmt: skip


def test_served_over_http_on_loopback(snapshot):
    server = openmetrics.MetricsServer("127.0.0.1:0", lambda: openmetrics.node_families([snapshot]))
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.headers["Content-Type"] == openmetrics.TEXT_TYPE
            text = r.read().decode()
        assert ("para_node_cpus", (("host", "cn01"),)) in _samples(parse_text(text))
        req = urllib.request.Request(url, headers={"Accept": "application/openmetrics-text"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.headers["Content-Type"].startswith("application/openmetrics-text")
            assert list(parse_openmetrics(r.read().decode()))
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/", timeout=10)
        assert e.value.code == 404
    finally:
        server.stop()
