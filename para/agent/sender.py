"""The shipper's Flight client in a child process: the agent itself never loads pyarrow.

`import pyarrow.flight` (with `cryptography` for the certificate checks) takes a Python process
from about 11 to 88 MiB resident, for good: more than the agent's whole memory budget, for a
client it uses a few seconds per segment.  So the shipper (para/agent/shipper.py) keeps every
decision (which segment, when, backoff, fallbacks, moving files in the spool) and hands each
upload to `python -m para.agent.sender`, started when a sending session begins and ended when
the spool is empty or the collector cannot be reached (the live stream, when on, keeps one for
as long as it runs).  One JSON line each way:

    parent -> {"endpoint": {...}, "host": "node1"}            (first line)
           <- {"ok": true, "pid": N}  or  {"ok": false, "kind": "denied", "error": "..."}
    parent -> {"op": "segment", "path": "/spool/ready/x.para", "header": {...}}
           <- {"ok": true, "ack": {"status": "stored", "id": ..., "reason": ""}, "rusage": {...}}
    parent -> {"op": "live", "body": "<base64 of wire.encode_live(...)>"}
           <- {"ok": true, "rusage": {...}}
    errors <- {"ok": false, "kind": "transient" | "denied" | "error", "error": "..."}

End of input (the agent closed the pipe, or died) ends the child.  A child that dies or stops
answering is a failed attempt like an unreachable collector: the segment stays in ready/, the
shipper backs off and the next attempt starts a new child.  Nothing is moved in the spool
before the collector's acknowledgement reached the agent; a segment acknowledged by a child
that died before answering is sent again and acknowledged as a duplicate (the segment id makes
every retry idempotent).
"""

from __future__ import annotations

import base64
import json
import os
import resource
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import para
from para.errors import ParaError
from para.formats import wire

# Seconds a new child may take to import pyarrow and answer (a loaded node is slow at it).
START_TIMEOUT = 60.0
# Seconds beyond the upload's own timeout before a silent child is given up on.
ANSWER_GRACE = 30.0


class Transient(Exception):
    """The collector could not take it now; try again later."""


class Denied(Exception):
    """The collector refused the credential (or what it may do); retrying will not help
    until the configuration is fixed."""


class SenderStats:
    """What the shipper's children cost and how they ended (for `para agent status`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = 0
        self.died = 0  # ended before answering: killed, crashed, or stopped answering
        self.running: set[int] = set()
        self.cpu_s = 0.0
        self.max_rss_bytes = 0
        self.last_exit: str | None = None

    def add_rusage(self, ru: dict[str, Any]) -> None:
        with self._lock:
            self.max_rss_bytes = max(self.max_rss_bytes, int(ru.get("max_rss_bytes", 0)))

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "pids": sorted(self.running),
                "started": self.started,
                "died": self.died,
                "cpu_s": round(self.cpu_s, 3),
                "max_rss_bytes": self.max_rss_bytes,
                "last_exit": self.last_exit,
            }


class SenderChild:
    """One child holding a Flight client to one collector; the shipper's `client`."""

    def __init__(
        self,
        endpoint: dict[str, Any],
        host: str,
        timeout: float,
        stats: SenderStats,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self.timeout = timeout
        self.stats = stats
        self.url = str(endpoint["url"])
        self._buf = b""
        self._cpu_s = 0.0
        self._lock = threading.Lock()
        env = dict(os.environ)
        root = str(Path(para.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("GRPC_VERBOSITY", "ERROR")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "para.agent.sender"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                close_fds=True,
            )
        except OSError as e:
            raise Transient(f"cannot start the sender process: {e}") from e
        self.pid = self.proc.pid
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in = self.proc.stdin.fileno()
        self._out = self.proc.stdout.fileno()
        os.set_blocking(self._in, False)
        with stats._lock:
            stats.started += 1
            stats.running.add(self.pid)
        try:
            self._request({"endpoint": endpoint, "host": host}, start_timeout)
        except BaseException:
            self.close()  # refused (a bad credential...): the child ends; reap it
            raise

    # -- what the shipper calls (the interface of collector_client.CollectorClient) ------------
    def send_segment(self, path: Path, header: wire.PutHeader) -> wire.Ack:
        answer = self._request(
            {"op": "segment", "path": str(path), "header": json.loads(header.encode())},
            self.timeout + ANSWER_GRACE,
        )
        try:
            return wire.Ack.decode(json.dumps(answer["ack"]).encode())
        except (KeyError, wire.WireError) as e:
            raise Transient(f"the sender process answered without an acknowledgement ({e})") from e

    def push_live_body(self, body: bytes) -> None:
        self._request(
            {"op": "live", "body": base64.b64encode(body).decode()}, self.timeout + ANSWER_GRACE
        )

    def close(self, grace: float = 5.0) -> None:
        """End the child: end of input, then SIGKILL if it lingers past `grace` seconds."""
        try:
            self.proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        # a request still in flight in another thread ends with the child: let it finish
        # before the pipes close under it
        if self._lock.acquire(timeout=grace):
            try:
                self._reaped()
            finally:
                self._lock.release()

    def alive(self) -> bool:
        """Still running and answering (False once given up on or closed)."""
        return self.pid in self.stats.running and self.proc.poll() is None

    # -- the pipe ------------------------------------------------------------------------------
    def _request(self, doc: dict[str, Any], timeout: float) -> dict[str, Any]:
        with self._lock:
            deadline = time.monotonic() + timeout
            self._write((json.dumps(doc, separators=(",", ":")) + "\n").encode(), deadline)
            line = self._read_line(deadline)
        try:
            answer: dict[str, Any] = json.loads(line)
        except ValueError:
            self._give_up("answered something that is not JSON")
        if not isinstance(answer, dict):
            self._give_up("answered something that is not a JSON object")
        ru = answer.get("rusage")
        if isinstance(ru, dict):
            self.stats.add_rusage(ru)
            self._cpu_s = float(ru.get("cpu_s", 0.0))
        if answer.get("ok"):
            return answer
        msg = str(answer.get("error") or "no reason given")
        kind = answer.get("kind")
        if kind == "denied":
            raise Denied(msg)
        if kind == "transient":
            raise Transient(msg)
        raise ParaError(msg)

    def _write(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            left = deadline - time.monotonic()
            if left <= 0:
                self._give_up("did not read its request in time")
            try:
                _, w, _ = select.select([], [self._in], [], left)
                if w:
                    view = view[os.write(self._in, view) :]
            except BlockingIOError:
                continue
            except (BrokenPipeError, ValueError, OSError):
                self._give_up("ended before reading its request")

    def _read_line(self, deadline: float) -> bytes:
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self._give_up("did not answer in time")
            try:
                r, _, _ = select.select([self._out], [], [], left)
                chunk = os.read(self._out, 65536) if r else None
            except (OSError, ValueError):
                chunk = b""
            if chunk == b"":
                self._give_up("ended before answering")
            if chunk:
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def _give_up(self, what: str) -> Any:
        """The child failed us: kill it; the attempt failed (the shipper retries later)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        why = _exit_words(self.proc.returncode)
        with self.stats._lock:
            self.stats.died += 1
        self._reaped()
        raise Transient(f"the sender process (pid {self.pid}) {what}; {why}")

    def _reaped(self) -> None:
        with self.stats._lock:
            if self.pid in self.stats.running:
                self.stats.running.discard(self.pid)
                self.stats.last_exit = _exit_words(self.proc.returncode)
                self.stats.cpu_s += self._cpu_s  # as it last said (its final work unseen)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass


def _exit_words(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


# -- the child ---------------------------------------------------------------------------------
def _rusage() -> dict[str, Any]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": round(ru.ru_utime + ru.ru_stime, 3), "max_rss_bytes": ru.ru_maxrss * 1024}


_answers = sys.stdout  # the pipe to the shipper; main() moves it off fd 1


def _say(doc: dict[str, Any]) -> None:
    _answers.write(json.dumps(doc, separators=(",", ":"), default=str) + "\n")
    _answers.flush()


def _failure(e: BaseException) -> dict[str, Any]:
    if isinstance(e, Denied):
        kind = "denied"
    elif isinstance(e, Transient):
        kind = "transient"
    else:
        kind = "error"
    msg = e.message if isinstance(e, ParaError) else str(e)
    return {"ok": False, "kind": kind, "error": msg, "rusage": _rusage()}


def _serve(client: Any, request: dict[str, Any]) -> dict[str, Any]:
    op = request.get("op")
    if op == "segment":
        header = wire.PutHeader.decode(json.dumps(request["header"]).encode())
        path = Path(request["path"])
        try:
            data = path.read_bytes()
        except OSError as e:
            raise Transient(f"cannot read {path}: {e.strerror}") from e
        if len(data) != header.size:
            raise Transient(f"{path.name} changed size ({len(data)}, not {header.size})")
        ack = client.send_segment(data, header)
        return {"ok": True, "ack": json.loads(ack.encode())}
    if op == "live":
        client.push_live_body(base64.b64decode(request["body"]))
        return {"ok": True}
    raise ParaError(f"unknown request {op!r}")


def main() -> int:
    global _answers
    # the answers get a descriptor of their own: whatever a library prints to stdout (C
    # code included) goes to stderr, the agent's log, and cannot garble them
    _answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    first = sys.stdin.readline()
    try:
        hello = json.loads(first)
        ep_doc, host = hello["endpoint"], hello["host"]
    except (ValueError, KeyError, TypeError) as e:
        _say({"ok": False, "kind": "error", "error": f"bad first request: {e}"})
        return 2
    try:
        from para.agent.collector_client import CollectorClient, Endpoint, credential_problem

        ep = Endpoint(
            url=ep_doc["url"],
            ca_file=Path(ep_doc["ca_file"]) if ep_doc.get("ca_file") else None,
            cert_file=Path(ep_doc["cert_file"]) if ep_doc.get("cert_file") else None,
            key_file=Path(ep_doc["key_file"]) if ep_doc.get("key_file") else None,
            token=ep_doc.get("token"),
            insecure=bool(ep_doc.get("insecure")),
            server_name=ep_doc.get("server_name"),
            timeout=float(ep_doc.get("timeout", 60.0)),
        )
        problem = credential_problem(ep)
        if problem:
            raise Denied(f"{problem}: issue a new one with `para collector issue-cert {host}`")
        client = CollectorClient(ep)
    except Exception as e:
        _say(_failure(e))
        return 1
    _say({"ok": True, "pid": os.getpid(), "rusage": _rusage()})
    try:
        for line in sys.stdin:
            try:
                answer = _serve(client, json.loads(line))
                answer["rusage"] = _rusage()
            except Exception as e:  # reported to the shipper, which decides what to do
                answer = _failure(e)
            _say(answer)
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    # through the package, so that the exceptions collector_client raises are this module's
    from para.agent.sender import main as _main

    raise SystemExit(_main())
