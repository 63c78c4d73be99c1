"""Where `para top` gets what it shows, as one document (para.live.view.LiveView.summary):

- `CollectorSource`: the running collector's `top` action (a reader's credential);
- `ShardedSource`: several collector shards at once, as one cluster (para.live.shards);
- `AgentSource`: the local agent, by following the journal of the segment it is writing
  (`<spool>/current/*.para`: every sample, as it is written), and its status.json for the
  alerts it evaluates;
- `SelfSource`: the agent's own samplers, when no agent runs on this node.

Each is polled once a refresh by `para top`'s fetcher thread.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from para.errors import ParaError, UsageError
from para.live.metrics import HostState
from para.live.view import LiveView

# a ZIP local file header (APPNOTE 4.3.7): what a .para journal is made of
_LOCAL = struct.Struct("<IHHHHHIIIHH")
_LOCAL_SIG = 0x04034B50
SEED_SAMPLES = 600  # samples read back when starting on a journal (the sparklines' history)


class Source(Protocol):
    label: str

    def poll(self, request: dict[str, Any]) -> dict[str, Any]: ...

    def close(self) -> None: ...


class CollectorSource:
    def __init__(self, url: str, client_factory: Callable[[], Any]):
        self.url = url
        self.label = "cluster at " + url.split("://", 1)[-1]
        self._factory = client_factory
        self._client: Any = None

    def poll(self, request: dict[str, Any]) -> dict[str, Any]:
        from para.agent.collector_client import Denied, Transient

        try:
            if self._client is None:
                self._client = self._factory()
            doc: dict[str, Any] = self._client.top(request)
            return doc
        except Denied as e:
            raise ParaError(f"the collector at {self.url} refused us: {e}",
                            hint="para top needs a reader's certificate or token "
                            "(para collector issue-cert NAME --reader)") from None  # fmt: skip
        except (Transient, ParaError) as e:
            if self._client is not None:
                self._client.close()
                self._client = None
            raise ParaError(f"cannot reach the collector at {self.url}: {e}") from None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class ShardedSource:
    """Several collector shards asked at once (one thread each, so a shard that hangs costs
    its timeout, not the others'), merged into one cluster: every node once, from the shard
    with its newest sample; a shard that does not answer is named in `shards`."""

    def __init__(self, sources: list[CollectorSource]):
        from concurrent.futures import ThreadPoolExecutor

        self.sources = sources
        self.label = f"cluster across {len(sources)} shards"
        self._pool = ThreadPoolExecutor(len(sources), thread_name_prefix="para-top-shard")

    def poll(self, request: dict[str, Any]) -> dict[str, Any]:
        from para.live.shards import merge_summaries

        futures = [self._pool.submit(s.poll, request) for s in self.sources]
        docs: list[tuple[str, dict[str, Any] | None, str | None]] = []
        for src, fut in zip(self.sources, futures):
            name = src.url.split("://", 1)[-1]
            try:
                docs.append((name, fut.result(), None))
            except ParaError as e:
                docs.append((name, None, e.message))
        if all(d is None for _, d, _ in docs):
            raise ParaError(
                "no collector shard answered: " + "; ".join(f"{n}: {w}" for n, _, w in docs)
            )
        return merge_summaries(docs)

    def close(self) -> None:
        for s in self.sources:
            s.close()
        self._pool.shutdown(wait=False)


def collector_source(
    urls: list[str],
    ca: str | None,
    cert: str | None,
    key: str | None,
    token_file: str | None,
    insecure: bool,
) -> CollectorSource | ShardedSource:
    """The live cluster from one collector, or from several shards as one (para top and the
    portal both read it this way)."""
    from para.agent.collector_client import CollectorClient, reader_endpoint

    def one(url: str) -> CollectorSource:
        ep = reader_endpoint(url, ca, cert, key, token_file, insecure, timeout=10.0)
        return CollectorSource(url, lambda: CollectorClient(ep))

    unique = list(dict.fromkeys(urls))
    return one(unique[0]) if len(unique) == 1 else ShardedSource([one(u) for u in unique])


def shards_of(agent_config: str) -> tuple[list[str], str | None, bool]:
    """Every collector shard an agent configuration names ([collector] url, then fallback),
    with its CA file and whether it allows plaintext: (urls, ca_file, insecure)."""
    from para.agent import config as cfgmod

    table = cfgmod.load(agent_config).collector or {}
    if not isinstance(table.get("url"), str):
        raise UsageError(
            f"{agent_config} has no [collector] url: no shard to read",
            hint="give the agents' configuration file, or --collector URL for each shard",
        )
    fallback = [u for u in table.get("fallback") or [] if isinstance(u, str)]
    ca = table.get("ca_file")
    return (
        [table["url"], *fallback],
        ca if isinstance(ca, str) else None,
        table.get("insecure") is True,
    )


class JournalTail:
    """The samples of the segment the agent writes, as they are appended."""

    def __init__(self, current: Path):
        self.current = current
        self.path: Path | None = None
        self.pos = 0

    def _newest(self) -> Path | None:
        try:
            names = sorted(
                (e.stat().st_mtime, e.name)
                for e in os.scandir(self.current)
                if e.name.endswith(".para") and e.is_file()
            )
        except FileNotFoundError:
            return None
        return self.current / names[-1][1] if names else None

    def read(self) -> list[tuple[int, dict[str, Any], bool]]:
        """New records since the last call: (t_ms, rows, is_a_sample)."""
        newest = self._newest()
        if newest is None:
            return []
        out: list[tuple[int, dict[str, Any], bool]] = []
        if newest != self.path:
            if self.path is not None and self.path.exists():
                out += self._records(self.path)  # the end of the segment just closed
            self.path, self.pos = newest, 0
        out += self._records(newest)
        return out

    def _records(self, path: Path) -> list[tuple[int, dict[str, Any], bool]]:
        out = []
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(self.pos)
                while self.pos + _LOCAL.size <= size:
                    head = f.read(_LOCAL.size)
                    sig, _, _, method, _, _, _, csize, _, nlen, xlen = _LOCAL.unpack(head)
                    if sig != _LOCAL_SIG:
                        break  # the central directory of a finished file, or a torn write
                    end = self.pos + _LOCAL.size + nlen + xlen + csize
                    if end > size:
                        break  # still being written
                    name = f.read(nlen).decode(errors="replace")
                    f.seek(xlen, os.SEEK_CUR)
                    data = f.read(csize)
                    self.pos = end
                    if name.startswith("journal/") and method == 0:
                        try:
                            doc = json.loads(zlib.decompress(data))
                            out.append((int(doc["t"]), doc["r"], bool(doc.get("s", 1))))
                        except (ValueError, KeyError, TypeError, zlib.error):
                            continue
        except OSError:
            return out
        return out


class _LocalSource:
    """One node in a LiveView (what AgentSource and SelfSource share)."""

    label = ""

    def __init__(self) -> None:
        self.view = LiveView()
        self.lock = threading.Lock()
        self.host = socket.gethostname()

    def add(self, t_ms: int, rows: dict[str, Any], sample: bool = True) -> None:
        """A record of the node; one that is not a sample (or is too old to show) only
        tells about jobs."""
        with self.lock:
            if not sample:
                hs = self.view.hosts.get(self.host)
                if hs is None:
                    hs = self.view.hosts[self.host] = HostState(self.host)
                hs.note_events(rows.get("events") or ())
                return
            self.view.add(self.host, t_ms, rows, time.time())

    def alerts(self) -> list[dict[str, Any]]:
        return []

    def poll(self, request: dict[str, Any]) -> dict[str, Any]:
        self.feed()
        with self.lock:
            self.view.tick(time.time())
            return self.view.summary(request, self.alerts(), None)

    def feed(self) -> None:
        return None

    def close(self) -> None:
        return None


class AgentSource(_LocalSource):
    def __init__(self, spool: Path, status: dict[str, Any]):
        super().__init__()
        self.spool = spool
        self.host = str(status.get("host") or self.host)
        self.label = f"{self.host} (its agent, pid {status.get('pid')})"
        self.tail = JournalTail(spool / "current")
        self._status: dict[str, Any] = status
        self._status_read = time.monotonic()
        records = self.tail.read()
        skip = max(0, sum(1 for r in records if r[2]) - SEED_SAMPLES)
        for t, rows, is_sample in records:
            old = is_sample and skip > 0
            skip -= 1 if is_sample else 0
            self.add(t, rows, is_sample and not old)

    def feed(self) -> None:
        for t, rows, is_sample in self.tail.read():
            self.add(t, rows, is_sample)

    def alerts(self) -> list[dict[str, Any]]:
        if time.monotonic() - self._status_read > 2.0:
            self._status_read = time.monotonic()
            doc = read_status(self.spool)
            if doc is not None:
                self._status = doc
        live = self._status.get("live") or {}
        out = []
        for a in live.get("active") or []:
            out.append({"rule": a.get("rule"), "severity": a.get("severity", "warning"),
                        "host": self.host, "summary": a.get("summary"), "started": a.get("since"),
                        "jobs": a.get("jobs") or []})  # fmt: skip
        return out


class SelfSource(_LocalSource):
    """The agent's samplers in this process (no agent runs here)."""

    def __init__(self, interval: float = 1.0):
        super().__init__()
        from para.agent import config as cfgmod
        from para.agent.daemon import build_samplers
        from para.agent.loop import SamplingLoop
        from para.agent.procfiles import SampleFiles

        self.label = f"{self.host} (no agent: sampled by para top)"
        self.files = SampleFiles("/")
        cfg = cfgmod.defaults()
        samplers = build_samplers(cfg, self.files, lambda: {os.getpid()}, lambda msg: None)

        def stamp() -> int:
            self.files.new_sample()
            return time.time_ns() // 1_000_000

        self.loop = SamplingLoop(samplers, self.add, interval, clock=stamp)
        self.loop.open()
        self.loop.start()

    def close(self) -> None:
        self.loop.stop(final_sample=False)
        self.loop.close()
        self.files.close()


def read_status(spool: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads((spool / "status.json").read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def agent_running(doc: dict[str, Any] | None) -> bool:
    if not doc or doc.get("state") != "running":
        return False
    pid = doc.get("pid")
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, TypeError):
        return False
    return b"para" in cmd and b"agent" in cmd
