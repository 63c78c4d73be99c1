"""A progress bar on standard error for the analyses that take a while (many nodes, many
jobs).  Shown only to a person: not when standard error is a pipe or a file, and not for
work that ends before anyone would look at it."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

# Fewer items than this finish in about a second: no bar.
MIN_ITEMS = 8
LABELS = {"nodes": "reading nodes", "runs": "per-run reports", "jobs": "jobs"}


class Progress:
    def __init__(self, items: int, enabled: bool | None = None):
        if enabled is None:
            enabled = items >= MIN_ITEMS and sys.stderr.isatty()
        self.enabled = enabled
        self._bar: Any = None
        self._tasks: dict[str, Any] = {}
        self.started = time.monotonic()

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import Progress as Bar

            self._bar = Bar(
                TextColumn("para: {task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=Console(file=sys.stderr), transient=True,
            )  # fmt: skip
            self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
            self._bar = None

    def advance(self, what: str, done: int, total: int) -> None:
        if self._bar is None:
            return
        if what not in self._tasks:
            self._tasks[what] = self._bar.add_task(LABELS.get(what, what), total=total)
        self._bar.update(self._tasks[what], completed=done, total=total)

    def advancer(self, what: str) -> Callable[[int, int], None]:
        return lambda done, total: self.advance(what, done, total)
