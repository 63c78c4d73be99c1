"""The agent's shipper on its own: configuration, backoff, staggering, a spool that changes."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from para.agent.shipper import KEYS, Shipper, backoff_delay, validate_config
from para.errors import ParaError
from tests.collector_support import load_template, wait_for, write_segments

pytestmark = pytest.mark.no_kernel


def _cfg(tmp_path: Path, **over: object) -> dict[str, object]:
    tok = tmp_path / "token"
    tok.write_text("para_x\n")
    cfg: dict[str, object] = {"url": "grpc+tls://127.0.0.1:9", "token_file": str(tok)}
    cfg.update(over)
    return cfg


def test_a_good_table_has_no_problems(tmp_path: Path) -> None:
    assert validate_config(_cfg(tmp_path, send_window=60, live=True, live_buffer=10)) == []


@pytest.mark.parametrize(
    ("over", "words"),
    [
        ({"urll": "x"}, "collector.urll: unknown key"),
        ({"send_window": "soon"}, "collector.send_window: expected int or float"),
        ({"live": 1}, "collector.live: expected bool"),
        ({"timeout": True}, "collector.timeout: expected a number"),
        ({"backoff_min": -1}, "must not be negative"),
        ({"backoff_min": 100, "backoff_max": 10}, "backoff_min is larger"),
        ({"url": "grpc+tcp://c:1"}, "plaintext"),
        ({"url": "http://c:1"}, "must start with grpc+tls://"),
        ({"url": "grpc+tls://collector"}, "has no port"),
        ({"ca_file": "/nonexistent/ca.crt"}, "collector.ca_file: cannot read"),
        ({"cert_file": "/etc/hostname"}, "go together"),
    ],
)
def test_each_problem_names_its_key(tmp_path: Path, over: dict[str, object], words: str) -> None:
    problems = validate_config(_cfg(tmp_path, **over))
    assert any(words in p for p in problems), problems


def test_missing_url_and_credential(tmp_path: Path) -> None:
    problems = validate_config({})
    assert any("collector.url: missing" in p for p in problems)
    assert any("no credential" in p for p in problems)
    assert set(KEYS) >= {"url", "send_window", "backoff_min", "backoff_max", "live"}


def test_a_bad_table_stops_the_shipper_from_starting(tmp_path: Path) -> None:
    with pytest.raises(ParaError, match="bad \\[collector\\] configuration"):
        Shipper({"url": "nope"}, tmp_path, "node1", print)


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap() -> None:
    rng = random.Random(7)
    for failures in range(1, 30):
        cap = min(600.0, 5.0 * 2 ** (failures - 1))
        delays = [backoff_delay(failures, 5.0, 600.0, rng) for _ in range(200)]
        assert all(cap / 2 <= d <= cap for d in delays)
        assert max(delays) - min(delays) > cap / 4  # really jittered, not one value
    assert backoff_delay(40, 5.0, 600.0, rng) <= 600.0


def test_new_segments_wait_a_random_delay_within_the_window(tmp_path: Path) -> None:
    write_segments(load_template(), tmp_path / "ready", "node1", 1)
    sh = Shipper(_cfg(tmp_path, send_window=3600.0, poll_interval=0.05), tmp_path, "node1", print)
    sh.start()
    wait_for(lambda: sh.status()["state"] == "waiting", what="the random delay")
    st = sh.status()
    sh.stop()
    assert st["attempts"] == 0 and st["waiting_segments"] == 1
    assert 0 <= st["next_attempt_in_s"] <= 3600.0


def test_segments_that_vanish_are_taken_in_stride(tmp_path: Path) -> None:
    """The agent's retention may delete the oldest while we wait or send."""
    segs = write_segments(load_template(), tmp_path / "ready", "node1", 2)
    sh = Shipper(_cfg(tmp_path), tmp_path, "node1", print)
    segs[0][0].unlink()
    assert sh._ship(segs[0][0]) is True
    assert sh.status()["vanished"] == 1 and sh.status()["waiting_segments"] == 1


def test_push_live_never_blocks_and_counts_what_it_drops(tmp_path: Path) -> None:
    sh = Shipper(_cfg(tmp_path, live=True, live_buffer=3), tmp_path, "node1", print)
    for i in range(10):
        sh.push_live(i, {"node": [[i]]})
    live = sh.status()["live"]
    assert live["queued"] == 3 and live["dropped"] == 7
    off = Shipper(_cfg(tmp_path), tmp_path, "node1", print)
    off.push_live(1, {})
    assert off.status()["live"]["queued"] == 0


def test_unreachable_collector_backs_off_and_keeps_the_segments(tmp_path: Path) -> None:
    write_segments(load_template(), tmp_path / "ready", "node1", 2)
    msgs: list[str] = []
    cfg = _cfg(
        tmp_path, url="grpc+tls://127.0.0.1:1", send_window=0, backoff_min=0.05, backoff_max=0.2
    )
    sh = Shipper(cfg, tmp_path, "node1", msgs.append)
    sh.start()
    wait_for(lambda: sh.status()["failed_attempts"] >= 3, what="three failed attempts")
    sh.stop()
    st = sh.status()
    assert st["waiting_segments"] == 2 and st["sent"] == 0
    assert st["consecutive_failures"] >= 3 and st["last_error"]
    # said once for the outage, not at every retry
    assert sum("cannot reach the collector" in m for m in msgs) == 1


def test_an_unreachable_collector_costs_the_live_stream_one_sender_child(tmp_path: Path) -> None:
    """The Flight client lives in a sender child (para/agent/sender.py) whose start costs a
    pyarrow import: live pushes that fail reuse it (its client reconnects by itself) rather
    than start one child per live_interval."""
    cfg = _cfg(tmp_path, url="grpc+tls://127.0.0.1:1", live=True, live_interval=0.02)
    sh = Shipper(cfg, tmp_path, "node1", print)
    sh.start()
    dropped = 0
    try:
        # pushes through the child (started for the first), each refused: 25 batches
        # dropped, one at a time
        while dropped < 25:
            before = sh.status()["live"]["dropped"]
            sh.push_live(dropped, {"node": [[dropped]]})
            wait_for(lambda b=before: sh.status()["live"]["dropped"] > b, what="a failed push")
            dropped += 1
        st = sh.status()
    finally:
        sh.stop()
    assert st["live"]["sent"] == 0 and st["live"]["last_error"]
    assert st["sender"]["started"] == 1 and st["sender"]["died"] == 0, st["sender"]
    assert sh.status()["sender"]["pids"] == []  # stop() ended it
