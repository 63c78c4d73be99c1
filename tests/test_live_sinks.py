"""Alert sinks (para.live.sinks) against real receivers on 127.0.0.1: an HTTP server for
webhooks, an SMTP server (aiosmtpd) that requires STARTTLS and a login, a real command."""

from __future__ import annotations

import email
import json
import sys
from email import policy
from pathlib import Path
from typing import Any

import pytest

from para.live import sinks
from tests.collector_support import wait_for
from tests.live_support import Receiver, SmtpServer, tls_files

pytestmark = pytest.mark.no_kernel


def note(event: str = "firing", **kw: Any) -> dict[str, Any]:
    doc = {
        "version": 1,
        "id": "c0ffee" * 5 + "00",
        "event": event,
        "state": "firing" if event != "resolved" else "resolved",
        "rule": "gpu-idle-in-job",
        "type": "threshold",
        "severity": "critical",
        "cluster": "default",
        "source": "collector",
        "host": "cn17",
        "labels": {"gpu": "0"},
        "jobs": ["4711"],
        "metric": "gpu.util_gpu",
        "value": 3.0,
        "unit": "%",
        "threshold": {"below": 10},
        "for_s": 300.0,
        "started": 1795320000.0,
        "ended": None,
        "at": 1795320300.0,
        "flapping": False,
        "summary": "cn17 gpu 0: gpu.util_gpu is 3 %, below 10 % for 5 min (job 4711 running)",
        "evidence": {"text": "300 samples over 300 s: min 1 %, mean 2.9 %, max 6 %"},
    }
    doc.update(kw)
    return doc


def dispatcher(configs: list[sinks.SinkConfig], log: list[str]) -> sinks.Dispatcher:
    return sinks.Dispatcher({c.name: c for c in configs}, log.append)


def test_webhook_posts_the_alert_as_json_and_retries_until_it_is_taken():
    log: list[str] = []
    with Receiver(fail_first=2) as rx:
        cfg = sinks.SinkConfig(
            "hook",
            "webhook",
            {"url": rx.url, "backoff": 0.05, "retries": 3, "headers": {"X-Site": "hpc"}},
        )
        d = dispatcher([cfg], log)
        try:
            d.send(note(), ["hook"])
            wait_for(lambda: rx.bodies, timeout=10, what="the webhook")
        finally:
            d.stop()
        assert rx.attempts == 3  # 503, 503, then taken
        assert rx.bodies == [note()]
        st = d.status()["hook"]
        assert (st["sent"], st["retries"], st["failed"]) == (1, 2, 0)
    assert log == []


def test_webhook_does_not_retry_what_the_receiver_refuses():
    log: list[str] = []
    with Receiver(fail_first=10, fail_status=400) as rx:
        cfg = sinks.SinkConfig("hook", "webhook", {"url": rx.url, "backoff": 0.05})
        d = dispatcher([cfg], log)
        try:
            d.send(note(), ["hook"])
            wait_for(lambda: d.status()["hook"]["failed"], timeout=10, what="the failure")
        finally:
            d.stop()
        assert rx.attempts == 1
    assert "HTTP 400" in log[0] and "could not be sent to hook" in log[0]


def test_email_over_starttls_with_a_login(tmp_path: Path):
    ca, cert, key = tls_files(tmp_path / "tls")
    (tmp_path / "pw").write_text("s3cret\n")
    server = SmtpServer(cert, key)
    log: list[str] = []
    cfg = sinks.SinkConfig(
        "mail",
        "email",
        {
            "host": "127.0.0.1",
            "port": server.port,
            "from": "para@cluster.example",
            "to": ["ops@cluster.example", "oncall@cluster.example"],
            "username": "para",
            "password_file": str(tmp_path / "pw"),
            "ca_file": str(ca),
            "timeout": 10.0,
        },
    )
    assert sinks.validate("email", cfg.options) == []
    d = dispatcher([cfg], log)
    try:
        d.send(note(), ["mail"])
        wait_for(lambda: server.messages, timeout=20, what="the mail")
    finally:
        d.stop()
        server.close()
    sender, rcpts, raw, authenticated = server.messages[0]
    assert sender == "para@cluster.example" and authenticated
    assert rcpts == ["ops@cluster.example", "oncall@cluster.example"]
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert msg["Subject"] == "[para] FIRING critical: gpu-idle-in-job on cn17 (job 4711)"
    body = msg.get_content()
    assert "below 10 % for 5 min" in body and "alert c0ffee" in body
    assert log == []


def test_email_refuses_a_server_it_cannot_trust(tmp_path: Path):
    _, cert, key = tls_files(tmp_path / "tls")
    server = SmtpServer(cert, key)
    log: list[str] = []
    cfg = sinks.SinkConfig(
        "mail",
        "email",
        {"host": "127.0.0.1", "port": server.port, "from": "a@b.c", "to": "d@e.f", "retries": 0},
    )
    d = dispatcher([cfg], log)
    try:
        d.send(note(), ["mail"])
        wait_for(lambda: log, timeout=20, what="the failure")
    finally:
        d.stop()
        server.close()
    assert server.messages == [] and "certificate" in log[0]


def test_a_command_gets_the_alert_on_stdin_and_in_its_environment(tmp_path: Path):
    out = tmp_path / "got.json"
    script = tmp_path / "page.py"
    script.write_text(
        "import json, os, sys\n"
        "doc = json.load(sys.stdin)\n"
        f"open({str(out)!r}, 'w').write(json.dumps([doc, os.environ['PARA_ALERT_RULE'],"
        " os.environ['PARA_ALERT_HOST'], os.environ['PARA_ALERT_JOBS'], sys.argv[1:]]))\n"
    )
    log: list[str] = []
    cfg = sinks.SinkConfig("page", "command", {"command": [sys.executable, str(script), "--hpc"]})
    d = dispatcher([cfg, sinks.SinkConfig("log", "log", {})], log)
    try:
        d.send(note("resolved", ended=1795320400.0), ["page", "log"])
        wait_for(out.exists, timeout=20, what="the command")
    finally:
        d.stop()
    doc, rule, host, jobs, argv = json.loads(out.read_text())
    assert doc["event"] == "resolved" and (rule, host, jobs, argv) == (
        "gpu-idle-in-job",
        "cn17",
        "4711",
        ["--hpc"],
    )
    assert log[0].startswith("alert resolved [critical] gpu-idle-in-job: cn17 gpu 0")


def test_a_failing_command_is_reported_with_its_words(tmp_path: Path):
    log: list[str] = []
    cfg = sinks.SinkConfig(
        "page",
        "command",
        {
            "command": [
                sys.executable,
                "-c",
                "import sys; print('pager down', file=sys.stderr); sys.exit(3)",
            ]
        },
    )
    d = dispatcher([cfg], log)
    try:
        d.send(note(), ["page"])
        wait_for(lambda: log, timeout=20, what="the failure")
    finally:
        d.stop()
    assert "exited 3: pager down" in log[0]


def test_a_full_queue_drops_the_oldest_and_counts_it(monkeypatch):
    """The sink's thread is held by a receiver that does not answer: what cannot wait is
    dropped, oldest first, and counted; the evaluation never waits."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    monkeypatch.setattr(sinks, "QUEUE_MAX", 20)
    release = threading.Event()
    got: list[str] = []

    class Slow(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["id"])
            release.wait(30)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    httpd.daemon_threads = True
    serving = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    serving.start()
    log: list[str] = []
    cfg = sinks.SinkConfig(
        "hook", "webhook", {"url": f"http://127.0.0.1:{httpd.server_address[1]}/x", "retries": 0}
    )
    d = dispatcher([cfg], log)
    try:
        d.send(note(id="first"), ["hook"])
        wait_for(lambda: got, timeout=10, what="the first POST")  # the thread is held now
        for i in range(70):  # would hang here if send() waited for the held sink
            d.send(note(id=f"{i:032x}"), ["hook"])
        st = d.status()["hook"]
        assert (st["dropped"], st["queued"]) == (50, 20)
    finally:
        release.set()
        d.stop()
        httpd.shutdown()
        httpd.server_close()
        serving.join(5)
    # what was kept is the newest, in order
    assert got == ["first", *(f"{i:032x}" for i in range(50, 70))]


@pytest.mark.parametrize(
    "typ, opts, words",
    [
        ("webhook", {}, "needs `url`"),
        ("webhook", {"url": "http://x", "retries": "3"}, "must be int"),
        ("email", {"host": "h", "from": "a@b", "to": ["not-an-address"]}, "email addresses"),
        ("command", {"command": []}, "list of strings"),
        ("pager", {}, "unknown sink type"),
    ],
)
def test_sink_settings_are_checked(typ, opts, words):
    problems = sinks.validate(typ, opts)
    assert any(words in msg for _, msg in problems), problems
