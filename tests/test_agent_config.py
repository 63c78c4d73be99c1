"""The agent's configuration: defaults, errors that point at the key and the line, and the
documentation of every key."""

from __future__ import annotations

import re

import pytest

from para.agent import config
from para.agent.config import KEYS, ConfigError, parse, parse_size
from para.agent.livenode import ALERT_KEYS, METRICS_KEYS

from .conftest import REPO, run_para


def problems(text: str) -> list[config.Problem]:
    with pytest.raises(ConfigError) as e:
        parse(text, "agent.toml")
    return e.value.problems


def test_defaults_and_an_empty_file():
    cfg = parse("", "agent.toml")
    assert cfg.interval == 1.0
    assert str(cfg.spool_dir) == "/var/lib/para/spool"
    assert cfg["retention"]["max_bytes"] == 2 << 30
    assert cfg.collector is None and not cfg.explicit
    assert [f for f in config.FAMILIES if not cfg.enabled(f)] == ["ipmi", "licenses", "counters"]


def test_values_sizes_and_families():
    cfg = parse(
        """
[agent]
interval = 0.5          # seconds
disable = ["gpu", "rapl"]

[retention]
max_bytes = "512MiB"
min_free_bytes = "1G"

[licenses]
servers = ["27000@lic1", "27001@lic2.example.org"]

[perf]
enabled = true
""",
        "agent.toml",
    )
    assert cfg.interval == 0.5
    assert cfg["retention"]["max_bytes"] == 512 << 20
    assert cfg["retention"]["min_free_bytes"] == 1 << 30
    assert not cfg.enabled("gpu") and cfg.enabled("licenses") and cfg.enabled("counters")
    assert cfg.explicit == {
        "agent.interval",
        "agent.disable",
        "retention.max_bytes",
        "retention.min_free_bytes",
        "licenses.servers",
        "perf.enabled",
    }


def test_problems_name_the_key_and_the_line():
    found = problems(
        """[agent]
intervall = 2
interval = "fast"
disable = ["gpus"]

[segmants]
max_seconds = 10

[retention]
max_bytes = "lots"
min_free_bytes = -1
"""
    )
    text = [p.format("agent.toml") for p in found]
    assert text[0] == "agent.toml:2: [agent] intervall: unknown key (did you mean `interval`?)"
    assert text[1].startswith("agent.toml:3: [agent] interval = 'fast': must be a number")
    assert text[2].startswith("agent.toml:4: [agent] disable = ['gpus']: unknown families")
    assert text[3] == "agent.toml:6: [segmants]: unknown table (did you mean `segments`?)"
    assert text[4].startswith("agent.toml:10: [retention] max_bytes = 'lots': must be a size")
    assert text[5].startswith("agent.toml:11: [retention] min_free_bytes = -1: must be a size")
    assert len(text) == 6


def test_ranges_and_choices():
    (p,) = problems("[agent]\ninterval = 0.001\n")
    assert p.line == 2 and "between 0.05 and 3600" in p.message
    (p,) = problems('[jobs]\nprocesses = "some"\n')
    assert '"jobs", "all", "none"' in p.message
    (p,) = problems("[ipmi]\nenabled = 1\n")
    assert "true or false" in p.message
    (p,) = problems('[licenses]\nservers = ["not a server"]\n')
    assert "port@host" in p.message


def test_toml_syntax_error_points_at_its_line():
    (p,) = problems('[agent]\ninterval = 1\nspool_dir = "/var/lib\n')
    assert p.line == 3 and p.where == "TOML syntax"


def test_collector_table_is_passed_to_the_shipper():
    cfg = parse('[collector]\nurl = "grpc+tls://collector:8815"\n', "agent.toml")
    assert cfg.collector == {"url": "grpc+tls://collector:8815"}


@pytest.mark.parametrize(
    "text, n",
    [("0", 0), (4096, 4096), ("64MiB", 64 << 20), ("2 GB", 2_000_000_000), ("512k", 512 << 10)],
)
def test_sizes(text, n):
    assert parse_size(text) == n


def test_bad_sizes():
    assert parse_size("a lot") is None and parse_size(True) is None and parse_size(-1) is None


def test_the_example_has_every_key_at_its_default():
    cfg = parse(config.example(), "example.toml")
    assert cfg.values == config.defaults().values
    assert len(cfg.explicit) == len(KEYS)


def test_docs_list_every_key_with_its_default():
    doc = (REPO / "docs/agent.md").read_text()
    rows = {}
    for line in doc.splitlines():
        m = re.match(r"\|\s*`(\w+)\.(\w+)`\s*\|\s*`([^`]*)`\s*\|", line)
        if m:
            rows[(m.group(1), m.group(2))] = m.group(3)
    for k in KEYS:
        assert (k.table, k.name) in rows, f"docs/agent.md does not document {k.full}"
        assert rows[(k.table, k.name)] == config._toml(k.default), k.full
    # the [alerts] and [metrics] tables, validated by the agent's live part
    live = {("alerts", n): d for n, (_, d, _) in ALERT_KEYS.items()}
    live.update({("metrics", n): d for n, (_, d, _) in METRICS_KEYS.items()})
    for (table, name), default in live.items():
        if default is not None:  # a required key has no default to show
            assert rows.get((table, name)) == config._toml(default), f"{table}.{name}"
    assert set(rows) == {(k.table, k.name) for k in KEYS} | {
        key for key, default in live.items() if default is not None
    }


def test_check_config_command(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[agent]\ninterval = 2\nspool_dir = "/tmp/spool"\n')
    r = run_para("agent", "check-config", str(good))
    assert r.returncode == 0, r.stderr
    assert f"{good}: OK" in r.stdout and "every 2 s into /tmp/spool" in r.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[agent]\ninterval = 2\n\n[jobs]\nprocess = "all"\n')
    r = run_para("agent", "check-config", "--config", str(bad))
    assert r.returncode == 1
    assert f"{bad}:5: [jobs] process: unknown key (did you mean `processes`?)" in r.stderr
    r = run_para("agent", "check-config", str(tmp_path / "missing.toml"))
    assert r.returncode == 1 and "cannot read" in r.stderr


@pytest.mark.parametrize("host", ["node\\n01", "node01\\n", "../etc", "node 01"])
def test_check_config_refuses_a_host_name_para_cannot_use(tmp_path, host):
    """Issue 16 item 11: a name with a newline (also a trailing one, which `$` lets through)
    is refused by check-config, not found later by a shipper that dies."""
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[agent]\nhost = "{host}"\n')
    r = run_para("agent", "check-config", str(bad))
    assert r.returncode == 1 and "[agent] host" in r.stderr and "invalid host name" in r.stderr


def test_names_from_peers_never_end_in_a_newline():
    from para.formats import wire

    for check, good in (
        (wire.check_host, "node01"),
        (wire.check_segment_id, "a" * 32),
        (wire.check_table_name, "node"),
        (wire.check_cluster, "site"),
        (wire.check_segment_file, "node01-x.para"),
        (wire.check_reader_name, "alice"),
    ):
        assert check(good) == good
        with pytest.raises(wire.WireError):
            check(good + "\n")
