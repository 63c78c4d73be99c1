"""Python threads in a job's call stacks (issue 12): where they waited, and what the Python
rules (rules.py: python_interpreter, python_data_loading, python_host_to_gpu) look at.

`para profile --functions` names the frames of CPython processes with py-spy
(`module.function (file.py:line)`) and keeps perf's native frames below them; rows of state
"wait" are the time a thread spent off-CPU in a stack (the `waits` series).  Samples are
perf's: one is 1/frequency seconds of one thread.
"""

from __future__ import annotations

import re
from typing import Any

from para.analyzer import rules
from para.analyzer.job import Job

# a frame py-spy named: "module.function (file.py:line)" (perf's native frames have no line)
PY_FRAME = r" \([^();]*:\d+\)"
PY_LEAF = PY_FRAME + r"$"
_PY_LEAF = re.compile(PY_LEAF)
MAX_WAITING = 15


def _pct(n: float, total: float) -> float | None:
    return round(100.0 * n / total, 2) + 0.0 if total else None


def perf_frequency(job: Job) -> float | None:
    """perf record's sampling frequency (a sample is 1/frequency seconds of one thread)."""
    for n in job.nodes:
        info = n.meta.get("functions")
        if isinstance(info, dict) and info.get("frequency_hz"):
            return float(info["frequency_hz"])
    return None


def waiting(job: Job, limit: int = MAX_WAITING) -> dict[str, Any]:
    """Where Python threads waited (off-CPU): the innermost Python frame of each waiting
    stack, with its samples and seconds."""
    if not job.has("waits"):
        return {"samples": 0, "seconds": None, "ready_samples": 0, "ready_seconds": None,
                "functions": []}  # fmt: skip
    total, ready = job.query(
        "SELECT coalesce(sum(samples), 0), coalesce(sum(samples) FILTER (WHERE state = "
        "'ready'), 0) FROM wait_sec"
    )[0]
    total, ready = int(total), int(ready)
    rows = job.query(
        "SELECT string_split(stack, ';')[-1] AS fn, sum(samples) AS n FROM wait_sec "
        "GROUP BY fn ORDER BY n DESC, fn LIMIT ?",
        [limit],
    )
    freq = perf_frequency(job)
    return {
        "samples": total,
        "seconds": round(total / freq, 3) if freq else None,
        "ready_samples": ready,
        "ready_seconds": round(ready / freq, 3) if freq else None,
        "functions": [
            {"function": str(fn), "samples": int(n), "pct": _pct(int(n), total),
             "seconds": round(int(n) / freq, 3) if freq else None}
            for fn, n in rows
        ],
    }  # fmt: skip


def python_facts(job: Job, freq_hz: float | None) -> dict[str, Any] | None:
    """The Python threads' CPU and waiting, and the stacks the Python rules look for; None
    when no py-spy stacks were recorded."""
    if not job.has("pystacks"):
        return None
    cpu, interp = job.query(
        "SELECT coalesce(sum(samples) FILTER (WHERE state = 'cpu'), 0), "
        "coalesce(sum(samples) FILTER (WHERE state = 'cpu' AND regexp_matches(stack, ?)), 0) "
        "FROM pystacks",
        [PY_LEAF],
    )[0]
    top = job.query(
        "SELECT string_split(stack, ';')[-1] AS fn, sum(samples) AS n FROM pystacks "
        "WHERE state = 'cpu' AND regexp_matches(stack, ?) GROUP BY fn ORDER BY n DESC, fn "
        "LIMIT 5",
        [PY_LEAF],
    )
    data, worker, copy = (rules.DATA_LOADING_PATTERN, rules.LOADER_WORKER_PATTERN,
                          rules.H2D_PATTERN)  # fmt: skip
    threads = [
        {"node": int(node), "pid": int(pid), "tid": int(tid), "cpu": int(c), "wait": int(w),
         "data": int(d), "data_wait": int(dw), "worker": bool(wk), "copy": int(cp)}
        for node, pid, tid, c, w, d, dw, wk, cp in job.query(
            "SELECT node, pid, tid, "
            "coalesce(sum(samples) FILTER (WHERE state = 'cpu'), 0), "
            "coalesce(sum(samples) FILTER (WHERE state <> 'cpu'), 0), "
            "coalesce(sum(samples) FILTER (WHERE regexp_matches(stack, ?)), 0), "
            "coalesce(sum(samples) FILTER (WHERE state = 'wait' AND "
            "  regexp_matches(stack, ?)), 0), "
            "bool_or(regexp_matches(stack, ?)), "
            "coalesce(sum(samples) FILTER (WHERE regexp_matches(stack, ?)), 0) "
            "FROM pystacks GROUP BY node, pid, tid ORDER BY node, pid, tid",
            [data, data, worker, copy],
        )
    ]  # fmt: skip
    return {
        "freq_hz": freq_hz,
        "cpu": int(cpu),
        "interpreter": int(interp),
        "interpreter_top": [(str(fn), int(n)) for fn, n in top],
        "threads": threads,
        "where": lambda pattern, state, thread=None: _where(job, pattern, state, thread),
    }


def _where(
    job: Job, pattern: str, state: str | None, thread: dict[str, Any] | None = None
) -> list[tuple[str, int]]:
    """The stacks matching `pattern` (in `state`, or any; of one thread, or all), cut after
    the last frame that matches, by samples: the evidence a rule quotes."""
    cond = "regexp_matches(stack, ?)"
    params: list[Any] = [pattern]
    if state:
        cond += " AND state = ?"
        params.append(state)
    if thread is not None:
        cond += " AND node = ? AND pid = ? AND tid = ?"
        params += [thread["node"], thread["pid"], thread["tid"]]
    out: dict[str, int] = {}
    rx = re.compile(pattern)
    for stack, n in job.query(
        f"SELECT stack, sum(samples) FROM pystacks WHERE {cond} GROUP BY stack", params
    ):
        frames = str(stack).split(";")
        last = max(i for i, f in enumerate(frames) if rx.search(";" + f))
        py = [f for f in frames[: last + 1] if _is_py(f)]
        caller = py[-1] if py else ""
        hit = frames[last]
        key = hit if not caller or caller == hit else f"{caller} -> {hit}"
        out[key] = out.get(key, 0) + int(n)
    return sorted(out.items(), key=lambda kv: (-kv[1], kv[0]))[:3]


def _is_py(frame: str) -> bool:
    return _PY_LEAF.search(frame) is not None
