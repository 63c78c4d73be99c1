"""A job's page: `para report --html` of the job, rendered from the database when first asked
for and kept (a job that is still running gets a new page once its data grew), and the
comparison of two jobs of one application (`para compare`).

Rendering reads the job's rows through the portal's locked-down DuckDB.  A job too large to
analyse in the portal is refused with the command that does it offline; at most `workers`
renders run at once, and two requests for the same page wait for one render.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from para.web.store import Store, TooLarge


@dataclass
class Rendered:
    html: str
    seconds: float  # how long it took to render
    made: float  # when
    _gz: bytes | None = None

    def gzipped(self) -> bytes:
        """The page compressed once (a 128-node job's page is megabytes of JSON)."""
        if self._gz is None:
            import gzip

            self._gz = gzip.compress(self.html.encode(), 6)
        return self._gz


class PageCache:
    """Rendered pages by key, the least recently used dropped past `max_bytes`."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._pages: OrderedDict[Any, Rendered] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._making: dict[Any, threading.Lock] = {}
        self.hits = 0
        self.misses = 0

    def get_or_make(self, key: Any, make: Callable[[], Rendered]) -> tuple[Rendered, bool]:
        """The page and whether it came from the cache."""
        with self._lock:
            hit = self._pages.get(key)
            if hit is not None:
                self._pages.move_to_end(key)
                self.hits += 1
                return hit, True
            lock = self._making.setdefault(key, threading.Lock())
        with lock:  # one render per key; the others wait for it
            with self._lock:
                hit = self._pages.get(key)
                if hit is not None:
                    self.hits += 1
                    return hit, True
            try:
                page = make()
            finally:
                with self._lock:
                    self._making.pop(key, None)
            with self._lock:
                self.misses += 1
                size = len(page.html)
                if size <= self.max_bytes:
                    self._pages[key] = page
                    self._bytes += size
                    while self._bytes > self.max_bytes and self._pages:
                        _, old = self._pages.popitem(last=False)
                        self._bytes -= len(old.html)
            return page, False

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "pages": len(self._pages),
                "bytes": self._bytes,
                "hits": self.hits,
                "misses": self.misses,
            }


class JobPages:
    def __init__(
        self,
        store: Store,
        db: Path,
        *,
        cache_bytes: int,
        max_node_seconds: float,
        workers: int = 2,
        rules: str | None = None,
    ):
        self.store = store
        self.db = db
        self.cache = PageCache(cache_bytes)
        self.max_node_seconds = max_node_seconds
        self.rules = rules
        self._slots = threading.BoundedSemaphore(max(1, workers))

    def _check_size(self, job: dict[str, Any]) -> None:
        dur = job.get("duration_s") or 0.0
        cost = (job.get("nodes") or 1) * dur
        if cost > self.max_node_seconds:
            raise TooLarge(
                f"job {job['job_id']} is too large to analyse here: {job.get('nodes')} nodes x "
                f"{dur:,.0f} s = {cost:,.0f} node-seconds, over this portal's limit of "
                f"{self.max_node_seconds:,.0f}",
                hint=f"para report --job {job['job_id']} --db {self.db} --html job.html "
                "(or raise para web --max-node-seconds)",
            )

    def page(self, job: dict[str, Any], portal: dict[str, Any]) -> tuple[Rendered, bool]:
        """The job's report page for the portal (`portal`: see report.render_html)."""
        self._check_size(job)
        key = (
            "job",
            job["job_id"],
            job.get("end_ms"),
            job.get("nodes"),
            repr(sorted((k, repr(v)) for k, v in portal.items())),
        )

        def make() -> Rendered:
            from para.analyzer.report import render_html, report

            with self._slots:
                t = time.perf_counter()
                with self.store.cursor() as cur:
                    rep = report(
                        [],
                        rules=self.rules,
                        job_id=job["job_id"],
                        db=str(self.db),
                        con=cur,
                        store_features=False,
                    )
                html = render_html(rep, portal=portal)
                return Rendered(html, time.perf_counter() - t, time.time())

        return self.cache.get_or_make(key, make)

    def compare(self, a: dict[str, Any], b: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """`para compare A B` of two jobs of the database, kept like the pages."""
        self._check_size(a)
        self._check_size(b)
        key = ("compare", a["job_id"], a.get("end_ms"), b["job_id"], b.get("end_ms"))

        def make() -> Rendered:
            import json

            from para.analyzer.compare import compare_jobs

            with self._slots:
                t = time.perf_counter()
                with self.store.cursor() as ca, self.store.cursor() as cb:
                    doc = compare_jobs(
                        a["job_id"],
                        b["job_id"],
                        db=str(self.db),
                        rules=self.rules,
                        con_a=ca,
                        con_b=cb,
                    )
                return Rendered(json.dumps(doc), time.perf_counter() - t, time.time())

        import json

        got, cached = self.cache.get_or_make(key, make)
        return json.loads(got.html), cached
