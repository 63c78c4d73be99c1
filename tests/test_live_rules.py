"""Alert rules files (para.live.rules): what they accept, and how they say what is wrong."""

from __future__ import annotations

import pytest

from para.analyzer.window import rule_ids
from para.errors import ParaError
from para.live import rules

GOOD = """
[defaults]
for = "2m"
sinks = ["log", "ops"]

[metrics]
free_gib = "memory.mem_available / 2**30"

[[sink]]
name = "ops"
type = "webhook"
url = "http://127.0.0.1:9/hook"
retries = 2

[[sink]]
name = "mail"
type = "email"
host = "smtp.example.org"
from = "para@example.org"
to = ["ops@example.org"]

[[rule]]
name = "gpu-idle-in-job"
metric = "gpu.util_gpu"
below = 10
for = "5m"
when = "host.jobs > 0"
severity = "critical"
sinks = ["mail"]

[[rule]]
name = "low-memory"
metric = "free_gib"
below = 2

[[rule]]
name = "cpu-unusual"
type = "anomaly"
metric = "cpu_busy_pct"
deviation = 3.5
min_change = 20
history = "1d"
warmup = "30m"

[[rule]]
name = "app-slow"
type = "anomaly"
baseline = "app"
metric = "job.cpu_util_pct"
direction = "below"

[[rule]]
name = "io-bound"
type = "bottleneck"
bottleneck = "io_wait_bound"
window = "10m"
every = "1m"
min_severity = "medium"

[[rule]]
name = "silent"
type = "absent"
for = "3m"
hosts = ["cn*"]
"""


def test_a_file_with_every_kind_of_rule():
    rs = rules.parse(GOOD, "alerts.toml", rule_ids())
    by = {r.name: r for r in rs.rules}
    gpu = by["gpu-idle-in-job"]
    assert (gpu.type, gpu.below, gpu.for_s, gpu.clear_s) == ("threshold", 10.0, 300.0, 300.0)
    assert gpu.metric is not None and gpu.metric.table == "gpu"
    assert gpu.when is not None and gpu.sinks == ["mail"] and gpu.severity == "critical"
    assert by["low-memory"].for_s == 120.0 and by["low-memory"].sinks == ["log", "ops"]
    assert by["cpu-unusual"].deviation == 3.5 and by["cpu-unusual"].warmup_s == 1800
    assert by["app-slow"].baseline == "app" and by["app-slow"].direction == "below"
    io = by["io-bound"]
    assert (io.bottleneck, io.window_s, io.every_s, io.for_s) == ("io_wait_bound", 600, 60, 0)
    assert by["silent"].matches_host("cn17") and not by["silent"].matches_host("login1")
    assert set(rs.sinks) == {"log", "ops", "mail"}
    assert rs.wanted() == {
        "gpu": frozenset({"util_gpu"}),
        "memory": frozenset({"mem_available"}),
        "job": frozenset({"cpu_util_pct"}),
    }


def test_every_problem_is_reported_with_its_line():
    text = """[[rule]]
name = "a"
metric = "gpu.util_gpuu"
below = 10

[[rule]]
name = "b"
metric = "cpu_busy_pct"
abvoe = 90
for = "five minutes"
sinks = ["pager"]

[[rule]]
name = "c"
type = "bottleneck"
bottleneck = "io_wait_bond"

[[sink]]
name = "hook"
type = "webhook"
url = "ftp://x"
"""
    with pytest.raises(ParaError) as e:
        rules.parse(text, "site.toml", rule_ids())
    msg = e.value.message
    assert msg.startswith("site.toml: 7 problems in the alert rules:")
    lines = msg.splitlines()[1:]
    assert any(
        ln.startswith("  site.toml:3: [[rule]] a: table gpu has no column 'util_gpuu'")
        and "did you mean 'util_gpu'" in ln
        for ln in lines
    )
    assert any(
        ln.startswith(
            "  site.toml:9: [[rule]] b: unknown key for a threshold rule (did you mean `above`?)"
        )
        for ln in lines
    )
    assert any(ln.startswith("  site.toml:10: [[rule]] b: not a duration") for ln in lines)
    assert any(ln.startswith("  site.toml:11: [[rule]] b: no sink named 'pager'") for ln in lines)
    assert any("site.toml:16: [[rule]] c: no bottleneck 'io_wait_bond'" in ln for ln in lines)
    assert any("site.toml:21: [[sink]] hook: must start with http://" in ln for ln in lines)
    assert any("needs `above` or `below`" in ln for ln in lines)  # rule b lost its limit


def test_the_agent_accepts_bottleneck_rules_it_leaves_to_the_collector():
    rs = rules.parse('[[rule]]\nname = "x"\ntype = "bottleneck"\nbottleneck = "stalled"\n')
    assert rs.rules[0].bottleneck == "stalled"


@pytest.mark.parametrize(
    "text, seconds",
    [
        (90, 90.0),
        ("90", 90.0),
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("250ms", 0.25),
        (0.5, 0.5),
    ],
)
def test_durations(text, seconds):
    assert rules.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["-1", "5 minutes", "1y", True, [1]])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        rules.parse_duration(text)


def test_an_application_baseline_needs_a_job_metric():
    with pytest.raises(ParaError, match="per-job metric"):
        rules.parse(
            '[[rule]]\nname = "x"\ntype = "anomaly"\nbaseline = "app"\nmetric = "cpu_busy_pct"\n'
        )


def test_the_commands_that_check_rules_and_agent_tables(tmp_path):
    from tests.conftest import run_para

    good = tmp_path / "alerts.toml"
    good.write_text(GOOD.replace("http://127.0.0.1:9/hook", "http://127.0.0.1:9/x"))
    r = run_para("collector", "check-alerts", str(good))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{good}: OK, 6 rules, sinks log, mail, ops")
    assert "io-bound" in r.stdout and "bottleneck" in r.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rule]]\nname = "x"\nmetric = "cpu_busy"\nabove = 1\n')
    r = run_para("collector", "check-alerts", str(bad))
    assert r.returncode == 1 and f"{bad}:3: [[rule]] x: no metric 'cpu_busy'" in r.stderr
    conf = tmp_path / "agent.toml"
    conf.write_text(
        f'[agent]\nspool_dir = "{tmp_path}"\n[alerts]\nrules = "{bad}"\n'
        '[metrics]\nlisten = "nowhere"\nport = 1\n'
    )
    r = run_para("agent", "check-config", str(conf))
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert any(ln.startswith(f"{conf}:4: [alerts] alerts.rules: {bad}: 1 problem") for ln in lines)
    assert any(ln.startswith(f"{conf}:6: [metrics] metrics.listen:") for ln in lines)
    assert any(ln.startswith(f"{conf}:7: [metrics] metrics.port: unknown key") for ln in lines)
    conf.write_text(
        f'[agent]\nspool_dir = "{tmp_path}"\n[alerts]\nrules = "{good}"\n'
        '[metrics]\nlisten = "127.0.0.1:9466"\n'
    )
    r = run_para("agent", "check-config", str(conf))
    assert r.returncode == 0, r.stderr
    assert "alerts: rules" in r.stdout and "metrics: /metrics on 127.0.0.1:9466" in r.stdout
