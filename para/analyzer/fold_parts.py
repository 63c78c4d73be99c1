"""`para fold` on more than one core: the input cut into parts at sample boundaries, each
part folded by its own process, the counts added.

The reference emits a sample at a blank line and forgets its header there, so after a blank
line nothing carries over but the event filter (the first event seen in the whole input).
Parts that start just after a blank line, each given that filter, therefore add up to
exactly what the whole input folds to. Processes rather than threads: the kernel holds the
GIL while it scans. Each child inherits the mapped input (nothing is copied), folds its part
and hands its counts back through a pipe with marshal (str -> int, exact at any size).
"""

from __future__ import annotations

import marshal
import os
import sys

from para.cython_ext import load

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs `para fold` start-up time
    from collections.abc import Sequence
    from typing import Any

# A part smaller than this folds faster than a process starts and hands back its counts.
MIN_PART_BYTES = 8 << 20


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, as taskset or a cgroup set it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cut(data: Any, parts: int) -> list[tuple[int, int]]:
    """(start, end) of up to `parts` spans of `data`, every span after the first starting
    just after a blank line."""
    n = len(data)
    spans: list[tuple[int, int]] = []
    start = 0
    for i in range(1, parts):
        blank = data.find(b"\n\n", max(start, i * n // parts))
        if blank < 0 or blank + 2 >= n:
            break
        spans.append((start, blank + 2))
        start = blank + 2
    spans.append((start, n))
    return spans


def fold(data: Any, jobs: int, *, impl: Any = None, **options: Any) -> dict[str, int]:
    """What `impl.fold(data, **options)` returns (`impl`: the folding that load("fold")
    picks), folded by up to `jobs` processes."""
    kernel = load("fold") if impl is None else impl
    parts = min(jobs, len(data) // MIN_PART_BYTES) if jobs > 1 else 1
    spans = cut(data, parts) if parts > 1 else []
    if len(spans) < 2:
        return kernel.fold(data, **options)
    if options.get("event_filter") is None:
        options = {**options, "event_filter": kernel.first_event(data)}
    with memoryview(data) as view:
        return _fold_spans(kernel, view, spans, options)


def _fold_spans(
    kernel: Any, view: memoryview, spans: Sequence[tuple[int, int]], options: dict[str, Any]
) -> dict[str, int]:
    children: list[tuple[int, int, tuple[int, int]]] = []  # pid, read end, span
    here = list(spans[:1])  # the parts this process folds
    try:
        for i, span in enumerate(spans[1:], 1):
            try:
                children.append(_start(kernel, view, span, options))
            except OSError as e:  # no process to spare (ulimit -u, a cgroup's pids.max)
                print(f"para fold: cannot start a helper process ({e.strerror or e}); "
                      "folding the rest in this one", file=sys.stderr)  # fmt: skip
                here.extend(spans[i:])
                break
        folded: dict[str, int] = {}
        for span in here:
            _add(folded, _fold_span(kernel, view, span, options))
        while children:
            pid, fd, span = children.pop(0)
            counts = _collect(pid, fd)
            if counts is None:  # the child failed: its part is folded here, nothing is lost
                print(f"para fold: a helper process failed; folding bytes {span[0]}..{span[1]}"
                      " here", file=sys.stderr)  # fmt: skip
                counts = _fold_span(kernel, view, span, options)
            _add(folded, counts)
        return folded
    finally:
        if children:  # only after an error: stop what was started
            import signal
        for pid, fd, _ in children:
            os.close(fd)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def _add(folded: dict[str, int], counts: dict[str, int]) -> None:
    if not folded:
        folded.update(counts)
        return
    for key, count in counts.items():
        folded[key] = folded.get(key, 0) + count


def _fold_span(
    kernel: Any, view: memoryview, span: tuple[int, int], options: dict[str, Any]
) -> dict[str, int]:
    with view[span[0] : span[1]] as part:
        return kernel.fold(part, **options)


def _start(
    kernel: Any, view: memoryview, span: tuple[int, int], options: dict[str, Any]
) -> tuple[int, int, tuple[int, int]]:
    r, w = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        raise
    if pid == 0:  # the child: fold, write, and leave without running the parent's cleanup
        status = 1
        try:
            os.close(r)
            payload = marshal.dumps(_fold_span(kernel, view, span, options))
            with open(w, "wb") as out:
                out.write(payload)
            status = 0
        except BaseException:  # noqa: BLE001 (the parent folds the part again)
            pass
        os._exit(status)
    os.close(w)
    return pid, r, span


def _collect(pid: int, fd: int) -> dict[str, int] | None:
    """The counts the child `pid` wrote to `fd`, or None when it did not finish."""
    with open(fd, "rb") as f:
        payload = f.read()
    _, status = os.waitpid(pid, 0)
    if status != 0:
        return None
    try:
        counts = marshal.loads(payload)
    except (EOFError, ValueError, TypeError):
        return None
    return counts if isinstance(counts, dict) else None
