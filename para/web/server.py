"""Serving the portal: uvicorn over TLS (plaintext only with --insecure), on its own or in a
thread of `para collector serve --web`.

The socket is bound here (port 0 picks a free port, written to --port-file), and uvicorn
is told not to believe X-Forwarded-* headers: the peer address is the TCP peer's, which is
what --trusted-proxy is checked against.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from para.errors import ParaError
from para.web.app import WebOptions, make_app


def _log(opts: WebOptions, out: Any) -> Any:
    def log(msg: str) -> None:
        if not opts.quiet or msg.startswith(("error", "denied", "refused")):
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            print(f"{stamp} para web: {msg}", file=out, flush=True)

    return log


def _bind(listen: str) -> socket.socket:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen(128)
        sock.set_inheritable(True)
    except (OSError, ValueError) as e:
        raise ParaError(
            f"cannot listen on {listen}: {e}",
            hint="give --listen HOST:PORT (port 0: any free port)",
        ) from e
    return sock


class WebServer:
    """The portal on its socket; `start()` runs it in a thread, `stop()` ends it."""

    def __init__(self, opts: WebOptions, out: Any = None):
        import uvicorn

        self.opts = opts
        self.log = _log(opts, out or sys.stderr)
        if not opts.insecure and not (opts.cert_file and opts.key_file):
            raise ParaError(
                "the portal serves HTTPS: it needs a certificate and key (--cert, --key or "
                "--tls-dir)",
                hint="make them with `para collector init-ca`, or pass --insecure for plain "
                "HTTP behind a TLS-terminating proxy on this host",
            )
        for f in (opts.cert_file, opts.key_file) if not opts.insecure else ():
            if f is not None and not Path(f).is_file():
                raise ParaError(f"cannot read {f}", hint="para collector init-ca makes them")
        self.app = make_app(opts, self.log)
        self.sock = _bind(opts.listen)
        self.port = self.sock.getsockname()[1]
        host = opts.listen.rpartition(":")[0] or "0.0.0.0"
        self.scheme = "http" if opts.insecure else "https"
        self.url = f"{self.scheme}://{host}:{self.port}"
        kwargs: dict[str, Any] = {}
        if not opts.insecure:
            kwargs.update(ssl_certfile=str(opts.cert_file), ssl_keyfile=str(opts.key_file))
        self.config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            proxy_headers=False,
            server_header=False,
            timeout_keep_alive=30,
            lifespan="off",
            **kwargs,
        )
        self.server = uvicorn.Server(self.config)
        self._thread: threading.Thread | None = None

    def write_port_file(self, path: Path | None, extra: dict[str, Any] | None = None) -> None:
        if path is None:
            return
        tmp = Path(str(path) + ".tmp")
        tmp.write_text(json.dumps({"port": self.port, "pid": os.getpid(), **(extra or {})}))
        os.replace(tmp, path)

    def run(self) -> None:
        self.server.run(sockets=[self.sock])

    def start(self) -> WebServer:
        self._thread = threading.Thread(target=self.run, name="para-web", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.app.state.portal.store.close()
        try:
            self.sock.close()
        except OSError:
            pass


def serve(opts: WebOptions, out: Any = None) -> int:
    """`para web`: run until SIGTERM or SIGINT."""
    web = WebServer(opts, out)
    mode = "plain HTTP (--insecure)" if opts.insecure else "HTTPS"
    web.log(
        f"serving {web.url}/ ({mode}); database {opts.db}"
        f"{'; live from ' + getattr(opts.live, 'label', '?') if opts.live else ''}"
    )
    web.write_port_file(opts.port_file)
    done = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        done.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    web.start()
    try:
        while not done.wait(1.0):
            if web._thread is not None and not web._thread.is_alive():
                raise ParaError("the web server stopped", hint="see the messages above")
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        web.log("stopping")
        web.stop()
        if opts.live is not None:
            opts.live.close()
    return 0
