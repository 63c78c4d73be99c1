"""The agent's shipper: sends closed segments from the spool to the collector, store and forward.

- A segment leaves `ready/` for `sent/` only when the collector acknowledged it (stored, or
  already held: the segment id makes every retry idempotent).  Until then it stays in the
  spool, whatever happens to the network or the collector; the agent's retention bounds the
  spool and may delete the oldest while we wait (we take that in our stride).
- When segments appear after a quiet spell, sending starts after a random delay within
  `send_window`, so thousands of nodes rotating their segments at the same second reach the
  collector spread over the window.
- Failures back off exponentially (from `backoff_min` to `backoff_max`) with jitter; the
  log says so once per outage, and again when shipping resumes.
- A segment the collector can never accept (damaged, not a para file) goes to `rejected/`
  with the collector's reason, and is counted: it never blocks the ones behind it.
- Optionally (`live = true`) the samples are also pushed as they are taken, best effort.

The [collector] keys are documented in docs/collector.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
import zipfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from para.agent.sender import Denied, SenderChild, SenderStats, Transient
from para.errors import ParaError
from para.formats import wire

# key: (type(s), default, what)
KEYS: dict[str, tuple[tuple[type, ...], Any, str]] = {
    "url": ((str,), None, "collector address, grpc+tls://HOST:PORT"),
    "fallback": ((list,), [], "more collectors, tried in turn while the current one fails"),
    "primary_retry": ((int, float), 300.0, "seconds on a fallback before trying url again"),
    "ca_file": ((str,), None, "CA certificate that signed the collector's certificate"),
    "cert_file": ((str,), None, "this node's client certificate (mutual TLS)"),
    "key_file": ((str,), None, "its private key"),
    "token_file": ((str,), None, "file holding this node's bearer token (token auth)"),
    "server_name": ((str,), None, "name to expect in the collector's certificate"),
    "insecure": ((bool,), False, "allow a plaintext grpc+tcp:// url"),
    "send_window": ((int, float), 300.0, "seconds: random delay before sending new segments"),
    "poll_interval": ((int, float), 5.0, "seconds between looks at spool/ready"),
    "backoff_min": ((int, float), 5.0, "seconds: first retry delay"),
    "backoff_max": ((int, float), 600.0, "seconds: longest retry delay"),
    "timeout": ((int, float), 120.0, "seconds for one upload"),
    "live": ((bool,), False, "also push samples as they are taken"),
    "live_interval": ((int, float), 1.0, "seconds between live pushes"),
    "live_buffer": ((int,), 60, "samples kept for the live stream while it cannot send"),
}


def validate_config(table: dict[str, Any]) -> list[str]:
    """Problems in the [collector] table, each naming its key (for `para agent check-config`)."""
    problems = []
    for key, value in table.items():
        if key not in KEYS:
            problems.append(f"collector.{key}: unknown key (known: {', '.join(sorted(KEYS))})")
            continue
        types = KEYS[key][0]
        if isinstance(value, bool) and bool not in types:
            problems.append(f"collector.{key}: expected a number, got {value!r}")
        elif not isinstance(value, types):
            want = " or ".join(t.__name__ for t in types)
            problems.append(f"collector.{key}: expected {want}, got {value!r}")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            problems.append(f"collector.{key}: must not be negative")
    url = table.get("url")
    insecure = table.get("insecure") is True
    if url is None:
        problems.append('collector.url: missing (e.g. url = "grpc+tls://collector:8815")')
    elif isinstance(url, str):
        problems += _url_problems("collector.url", url, insecure)
    fallback = table.get("fallback")
    if isinstance(fallback, list):
        for i, other in enumerate(fallback):
            if not isinstance(other, str):
                problems.append(f"collector.fallback[{i}]: expected an address, got {other!r}")
            else:
                problems += _url_problems(f"collector.fallback[{i}]", other, insecure)
    for key in ("ca_file", "cert_file", "key_file", "token_file"):
        path = table.get(key)
        if isinstance(path, str) and not os.access(path, os.R_OK):
            problems.append(f"collector.{key}: cannot read {path}")
    if bool(table.get("cert_file")) != bool(table.get("key_file")):
        problems.append("collector.cert_file and collector.key_file go together")
    if not table.get("insecure") and not (table.get("cert_file") or table.get("token_file")):
        problems.append("collector: no credential: set cert_file and key_file, or token_file")
    lo, hi = table.get("backoff_min", 5.0), table.get("backoff_max", 600.0)
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo > hi:
        problems.append("collector.backoff_min is larger than collector.backoff_max")
    return problems


def _url_problems(key: str, url: str, insecure: bool) -> list[str]:
    if url.startswith(("grpc+tcp://", "grpc://")) and not insecure:
        return [f"{key}: {url} is plaintext; use grpc+tls:// or set insecure = true"]
    if not url.startswith(("grpc+tls://", "grpc+tcp://", "grpc://")):
        return [f"{key}: {url!r} must start with grpc+tls://"]
    if url.rpartition(":")[2].isdigit() is False:
        return [f"{key}: {url!r} has no port (HOST:PORT)"]
    return []


@dataclass
class _Cfg:
    url: str
    fallback: list[str]
    primary_retry: float
    ca_file: str | None
    cert_file: str | None
    key_file: str | None
    token_file: str | None
    server_name: str | None
    insecure: bool
    send_window: float
    poll_interval: float
    backoff_min: float
    backoff_max: float
    timeout: float
    live: bool
    live_interval: float
    live_buffer: int


def backoff_delay(failures: int, lo: float, hi: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: between half and all of min(hi, lo * 2^(failures-1))."""
    cap = min(hi, lo * (2 ** max(0, failures - 1)))
    return cap / 2 + rng.uniform(0, cap / 2)


class Shipper:
    def __init__(
        self,
        config: dict[str, Any],
        spool_dir: Path,
        host: str,
        on_message: Callable[[str], None],
    ) -> None:
        problems = validate_config(config)
        if problems:
            raise ParaError("bad [collector] configuration: " + "; ".join(problems))
        values = {k: config.get(k, default) for k, (_, default, _) in KEYS.items()}
        self.cfg = _Cfg(**values)
        self.spool = Path(spool_dir)
        self.ready = self.spool / "ready"
        self.sent = self.spool / "sent"
        self.rejected = self.spool / "rejected"
        self.host = wire.check_host(host)
        self.on_message = on_message
        self._rng = random.Random()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._client: Any = None
        self._live_client: Any = None
        # sharded collectors: the configured one first, then the fallbacks in turn
        self._urls = [self.cfg.url, *self.cfg.fallback]
        self._current = 0
        self._on_fallback_since = 0.0
        self._live: deque[tuple[int, dict[str, Any]]] = deque(maxlen=max(1, self.cfg.live_buffer))
        self._session_due: float | None = None
        self._backoff_until = 0.0
        self._failures = 0
        self._outage_since: float | None = None
        self._last_reminder = 0.0
        self.state = "starting"
        self.counts = {
            "sent": 0,
            "duplicates": 0,
            "rejected": 0,
            "vanished": 0,
            "bytes_sent": 0,
            "attempts": 0,
            "failed_attempts": 0,
        }
        self.live_counts = {"sent": 0, "dropped": 0}
        self.sender = SenderStats()
        self.last_ack: float | None = None
        self.last_error: str | None = None
        self.live_error: str | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._threads = [threading.Thread(target=self._run, name="para-shipper", daemon=True)]
        if self.cfg.live:
            self._threads.append(
                threading.Thread(target=self._run_live, name="para-shipper-live", daemon=True)
            )
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        for c in (self._client, self._live_client):
            if c is not None:
                try:
                    c.close()
                except Exception:
                    pass
        self._client = self._live_client = None

    # -- live ------------------------------------------------------------------------------
    def push_live(self, t_ms: int, rows: dict[str, Any]) -> None:
        """Queue one sample for the live stream; never blocks, drops the oldest when full."""
        if not self.cfg.live:
            return
        if len(self._live) == self._live.maxlen:
            self.live_counts["dropped"] += 1
        self._live.append((t_ms, rows))

    def _run_live(self) -> None:
        restarts = 0  # sender children of the live stream that died or could not start
        restart_at = 0.0
        while not self._stop.wait(self.cfg.live_interval):
            now = time.monotonic()
            if not self._live or now < max(self._backoff_until, restart_at):
                continue  # the collector is down: keep the newest samples only
            batch = []
            while self._live:
                batch.append(self._live.popleft())
            try:
                if self._live_client is None:
                    self._live_client = self._connect()
                self._live_client.push_live_body(wire.encode_live(self.host, batch))
                self.live_counts["sent"] += len(batch)
                self.live_error = None
                restarts = 0
            except Exception as e:
                self.live_counts["dropped"] += len(batch)
                self.live_error = str(e)
                client = self._live_client
                if client is None or not client.alive():
                    # a new child costs a pyarrow import: not every live_interval while
                    # children keep dying, but after a backoff as for segments
                    self._live_client = None
                    if client is not None:
                        client.close()  # reaped already: its pipes closed
                    restarts += 1
                    restart_at = time.monotonic() + backoff_delay(
                        restarts, self.cfg.backoff_min, self.cfg.backoff_max, self._rng
                    )
                elif client.url != self._urls[self._current]:
                    client.close()  # the segments moved to another collector: follow them
                    self._live_client = None
                # else: a child still alive keeps its Flight client, which reconnects itself

    # -- segments --------------------------------------------------------------------------
    def _pending(self) -> list[Path]:
        try:
            names = sorted(
                e.name
                for e in os.scandir(self.ready)
                if e.name.endswith(".para") and not e.name.startswith(".")
            )
        except FileNotFoundError:
            return []
        return [self.ready / n for n in names]

    def _run(self) -> None:
        while not self._stop.is_set():
            pending = self._pending()
            now = time.monotonic()
            if not pending:
                self.state = "idle"
                self._session_due = None
                self._end_session()
                self._stop.wait(self.cfg.poll_interval)
                continue
            if self._session_due is None:
                self._session_due = now + self._rng.uniform(0, self.cfg.send_window)
            wait_until = max(self._session_due, self._backoff_until)
            if now < wait_until:
                self.state = "waiting" if now >= self._backoff_until else "backing off"
                self._stop.wait(min(wait_until - now, self.cfg.poll_interval))
                continue
            self.state = "sending"
            for path in pending:
                if self._stop.is_set() or not self._ship(path):
                    break
            else:
                self._session_due = None if not self._pending() else self._session_due

    def _ship(self, path: Path) -> bool:
        """Send one segment; False when the collector could not be reached or refused us."""
        try:
            with open(path, "rb") as f:
                header = _header(path.name, f)
        except FileNotFoundError:
            self.counts["vanished"] += 1  # retention dropped it meanwhile
            return True
        except OSError as e:
            self._set_aside(path, f"cannot read it: {e.strerror}")
            return True
        except (wire.WireError, ValueError, KeyError, zipfile.BadZipFile) as e:
            self._set_aside(path, f"not a complete .para segment ({e})")
            return True
        if header.host != self.host:
            self._set_aside(path, f"holds data of host {header.host!r}, this is {self.host!r}")
            return True
        self.counts["attempts"] += 1
        try:
            if self._client is None:
                self._client = self._connect()
            ack = self._client.send_segment(path, header)
        except (Transient, Denied, ParaError) as e:
            self._failed(e, isinstance(e, Transient))
            return False
        if ack.status == wire.REJECTED:
            self._set_aside(path, f"the collector rejected it: {ack.reason}")
            self._succeeded()
            return True
        self.counts["sent" if ack.status == wire.STORED else "duplicates"] += 1
        self.counts["bytes_sent"] += header.size
        self.last_ack = time.time()
        self._move(path, self.sent)
        self._succeeded()
        return True

    def _connect(self) -> SenderChild:
        """A sender child (para/agent/sender.py) holding a Flight client to the current
        collector: the agent's own process never loads pyarrow."""
        token = None
        if self.cfg.token_file:
            try:
                token = Path(self.cfg.token_file).read_text().strip()
            except OSError as e:
                raise Denied(f"cannot read token file {self.cfg.token_file}: {e.strerror}") from e
        if self._current and time.monotonic() - self._on_fallback_since >= self.cfg.primary_retry:
            self._current = 0  # back to this node's own collector
        endpoint = {
            "url": self._urls[self._current],
            "ca_file": self.cfg.ca_file,
            "cert_file": self.cfg.cert_file,
            "key_file": self.cfg.key_file,
            "token": token,
            "insecure": self.cfg.insecure,
            "server_name": self.cfg.server_name,
            "timeout": self.cfg.timeout,
        }
        return SenderChild(endpoint, self.host, self.cfg.timeout, self.sender)

    def _end_session(self) -> None:
        """The spool is empty: the sender child goes (started again for the next segment)."""
        if self._client is not None:
            client, self._client = self._client, None
            try:
                client.close()
            except Exception:
                pass

    def _failed(self, e: Exception, transient: bool) -> None:
        self.counts["failed_attempts"] += 1
        self._failures += 1
        # the next collector of the list, each tried after the shortest delay; the backoff
        # grows once every one of them failed
        if transient and len(self._urls) > 1:
            self._current = (self._current + 1) % len(self._urls)
            if self._current:
                self._on_fallback_since = time.monotonic()
        rounds = 1 + (self._failures - 1) // len(self._urls) if transient else self._failures
        delay = backoff_delay(rounds, self.cfg.backoff_min, self.cfg.backoff_max, self._rng)
        self._backoff_until = time.monotonic() + delay
        self.state = "backing off"
        msg = str(e)
        if self._client is not None:
            try:
                self._client.close()
            except Exception:
                pass
            self._client = None
        now = time.time()
        first = self._outage_since is None
        if first:
            self._outage_since = now
        if first or msg != self.last_error or now - self._last_reminder > 3600:
            n, size = self._backlog()
            kind = "cannot reach the collector" if transient else "the collector refused us"
            self.on_message(
                f"shipper: {kind} ({msg}); {n} segment(s), {size / 1e6:.1f} MB wait in "
                f"{self.ready}; retrying in {delay:.0f} s (backoff up to "
                f"{self.cfg.backoff_max:.0f} s)"
            )
            self._last_reminder = now
        self.last_error = msg

    def _succeeded(self) -> None:
        if self._outage_since is not None:
            n, _ = self._backlog()
            self.on_message(
                f"shipper: collector reachable again after {self._failures} failed attempt(s) "
                f"over {time.time() - self._outage_since:.0f} s; {n} segment(s) to send"
            )
        self._outage_since = None
        self._failures = 0
        self._backoff_until = 0.0
        self.last_error = None

    def _set_aside(self, path: Path, reason: str) -> None:
        self.counts["rejected"] += 1
        self.on_message(f"shipper: segment {path.name} set aside in {self.rejected}: {reason}")
        if self._move(path, self.rejected):
            try:
                (self.rejected / (path.name + ".reason")).write_text(reason + "\n")
            except OSError:
                pass

    def _move(self, path: Path, to: Path) -> bool:
        try:
            to.mkdir(parents=True, exist_ok=True)
            os.replace(path, to / path.name)
            return True
        except FileNotFoundError:
            return False  # retention removed it after the collector took it: nothing lost

    def _backlog(self) -> tuple[int, int]:
        n = size = 0
        for p in self._pending():
            try:
                size += p.stat().st_size
                n += 1
            except FileNotFoundError:
                pass
        return n, size

    def status(self) -> dict[str, Any]:
        n, size = self._backlog()
        now = time.monotonic()
        next_in = None
        if self._backoff_until > now:
            next_in = round(self._backoff_until - now, 1)
        elif self._session_due is not None and self._session_due > now:
            next_in = round(self._session_due - now, 1)
        return {
            "collector": self._urls[self._current],
            "state": self.state,
            "waiting_segments": n,
            "waiting_bytes": size,
            **self.counts,
            "consecutive_failures": self._failures,
            "next_attempt_in_s": next_in,
            "last_ack": self.last_ack,
            "last_error": self.last_error,
            "sender": self.sender.as_dict(),
            "live": {
                "enabled": self.cfg.live,
                **self.live_counts,
                "queued": len(self._live),
                "last_error": self.live_error,
            },
        }


def _header(name: str, f: BinaryIO) -> wire.PutHeader:
    """The upload descriptor of a segment file: its id and host from meta.json.  Read from the
    file, never whole into memory (the sender child reads the bytes it sends)."""
    with zipfile.ZipFile(f) as zf:
        if "end.json" not in zf.namelist():
            raise ValueError("no end.json: the file was not closed")
        meta = json.loads(zf.read("meta.json"))
    f.seek(0)
    h = hashlib.sha256()
    while chunk := f.read(1 << 20):
        h.update(chunk)
    digest = h.hexdigest()
    return wire.PutHeader(
        host=wire.host_of(meta),
        id=wire.segment_id_for(meta, digest),
        name=wire.check_segment_file(name),
        size=f.tell(),
        sha256=digest,
    )
