"""Helpers for the live-stream tests and benchmark (issue 6): live samples made from real
recordings, a real HTTP receiver for webhooks, certificates for a local SMTP server.

`samples_from_para` turns a .para file back into the samples its writer appended: for each
sampling instant, the rows of every table in the journal's layout (what `push_live` sends).
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from para.formats import ParaFile
from para.formats.schema import TABLES

REPO = Path(__file__).resolve().parent.parent
VM_RECORDING = REPO / "tests" / "fixtures" / "collector" / "vm-10min-1hz.para"


def samples_from_para(path: Path = VM_RECORDING) -> list[tuple[int, dict[str, list[list[Any]]]]]:
    """The file's samples in time order, rows as an agent's live stream carries them."""
    by_t: dict[int, dict[str, list[list[Any]]]] = defaultdict(dict)
    with ParaFile(path) as pf:
        for table in pf.tables:
            if table not in TABLES:
                continue
            spec = TABLES[table]
            names = [c.name for c in spec.columns]
            tab = pf.read_table(table)
            cols = {
                n: tab.column(n).to_pylist() if n in tab.column_names else [None] * len(tab)
                for n in names
            }
            ts = tab.column("t").cast("int64").to_pylist()
            keep = names if spec.timed_rows else names[1:]
            for i, t in enumerate(ts):
                row = [cols[n][i] for n in keep]
                if spec.timed_rows:
                    row[0] = t
                by_t[t].setdefault(table, []).append(row)
    return sorted(by_t.items())


class Receiver:
    """A real HTTP server on 127.0.0.1 recording the JSON bodies POSTed to it.  The first
    `fail_first` requests are answered `fail_status` (to see the sender retry, or not)."""

    def __init__(self, fail_first: int = 0, fail_status: int = 503):
        self.bodies: list[dict[str, Any]] = []
        self.fail_status = fail_status
        self.times: list[float] = []
        self.attempts = 0
        self.fail_first = fail_first
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                with outer.lock:
                    outer.attempts += 1
                    failing = outer.attempts <= outer.fail_first
                    if not failing:
                        outer.bodies.append(json.loads(body))
                        outer.times.append(time.time())
                self.send_response(outer.fail_status if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def events(self, rule: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        with self.lock:
            return [(b["event"], b) for b in self.bodies if rule is None or b["rule"] == rule]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for localhost/127.0.0.1: (ca, cert, key)."""
    from para.collector import tls

    tls.init_ca(directory, server_names=["localhost", "127.0.0.1"])
    return directory / "ca.crt", directory / "server.crt", directory / "server.key"


class SmtpServer:
    """A real SMTP server (aiosmtpd) on 127.0.0.1 that requires STARTTLS (with a certificate
    the test made) and a login before it takes mail."""

    def __init__(self, cert: Path, key: Path, login: bytes = b"para", password: bytes = b"s3cret"):
        import ssl

        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        self.messages: list[tuple[str, list[str], bytes, bool]] = []
        outer = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                outer.messages.append(
                    (
                        envelope.mail_from,
                        list(envelope.rcpt_tos),
                        envelope.original_content,
                        bool(session.authenticated),
                    )
                )
                return "250 OK"

        def authenticate(
            server: Any, session: Any, envelope: Any, mechanism: str, data: Any
        ) -> Any:
            ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
                login,
                password,
            )
            return AuthResult(success=ok)

        class AnyPort(Controller):  # aiosmtpd's controller wants a fixed port: take the one bound
            def _trigger_server(self) -> None:
                self.port = self.server.sockets[0].getsockname()[1]
                super()._trigger_server()

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        self.controller = AnyPort(
            Handler(),
            hostname="127.0.0.1",
            port=0,
            tls_context=ctx,
            require_starttls=True,
            authenticator=authenticate,
            auth_require_tls=True,
        )
        self.controller.start()
        self.port = self.controller.port

    def close(self) -> None:
        self.controller.stop()
