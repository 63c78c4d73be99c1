"""A real Prometheus server for the tests (Debian's `prometheus`, started here): its own
configuration and storage under the test's directory, listening on 127.0.0.1, scraping the
given targets every second; queried through its HTTP API.  Stopped by its pid."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import need_tool

HINT = "apt install prometheus (make system-deps)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrometheusServer:
    def __init__(self, work: Path, targets: dict[str, str], interval: str = "1s"):
        self.work = work
        self.targets = targets  # scrape job name -> HOST:PORT
        self.interval = interval
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> PrometheusServer:
        binary = need_tool("prometheus", HINT)
        self.work.mkdir(parents=True, exist_ok=True)
        jobs = "".join(
            f"  - job_name: {name}\n    static_configs: [{{targets: ['{addr}']}}]\n"
            for name, addr in self.targets.items()
        )
        cfg = self.work / "prometheus.yml"
        cfg.write_text(
            f"global:\n  scrape_interval: {self.interval}\n  scrape_timeout: {self.interval}\n"
            f"  evaluation_interval: {self.interval}\nscrape_configs:\n{jobs}"
        )
        for _ in range(5):  # another test may take the port between our probe and its bind
            self.port = _free_port()
            log = open(self.work / "prometheus.log", "wb")  # noqa: SIM115 - the child's
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={cfg}",
                    f"--storage.tsdb.path={self.work / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1d",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            log.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as r:
                        if r.status == 200:
                            return self
                except OSError:
                    pass
                time.sleep(0.2)
            if self.proc.poll() is None:
                self.stop()
                raise AssertionError(f"prometheus did not get ready: {self.log()[-2000:]}")
            if "address already in use" not in self.log():
                raise AssertionError(f"prometheus exited: {self.log()[-2000:]}")
        raise AssertionError("prometheus found no free port")

    def log(self) -> str:
        try:
            return (self.work / "prometheus.log").read_text(errors="replace")
        except OSError:
            return ""

    def api(self, path: str, **params: Any) -> dict[str, Any]:
        """GET /api/v1/PATH: the answer's `data`; an error answer raises with its message."""
        url = f"{self.url}/api/v1/{path}?" + urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                doc = json.loads(r.read())
        except urllib.error.HTTPError as e:
            doc = json.loads(e.read() or b"{}")
        if doc.get("status") != "success":
            raise AssertionError(f"{params}: {doc.get('errorType')}: {doc.get('error')}")
        return doc["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query: the result's series (vector or matrix)."""
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self.api("query", **params)["result"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
