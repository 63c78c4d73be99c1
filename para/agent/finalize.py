"""Finalising a spool segment in a short-lived child process.

Turning an hour of journal into Parquet needs pyarrow and, for a while, memory in proportion
to the segment: both would stay with the agent for good if it did the work itself (a Python
process never gives its heap back).  So the agent runs `python -m para.agent.finalize`,
nice'd, once per segment; the child reads a JSON request on stdin and answers on stdout:

    {"path": "/var/lib/para/spool/current/x.para", "end": {...} or null}
    -> {"path": ..., "samples": N, "values": N, "bytes": N, "rusage": {...}}
    -> {"error": "..."}    (exit status 1; the journal is left as it was)

`end` null means a leftover of an agent that did not close it (a crash, SIGKILL): the file is
recovered with ParaFile.recover(), which says in end.json what it could read.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import para


class FinalizeError(Exception):
    pass


def finalize_segment(path: Path, end_info: dict[str, Any] | None) -> dict[str, Any]:
    """Rewrite the journaled segment at `path` as a complete .para file, in place."""
    from para.formats.container import JOURNAL_PREFIX, iter_members, read_member, scan
    from para.formats.reader import ParaFile
    from para.formats.writer import finalize

    sc = scan(path)
    if sc.has_central_directory and not any(m.name.startswith(JOURNAL_PREFIX) for m in sc.members):
        with ParaFile(path) as pf:
            stats = pf.stats()
        return {"path": str(path), "already_complete": True, **_counts(stats, path)}
    if end_info is None or sc.problem is not None:
        with ParaFile(path) as pf:
            fin = pf.recover()
    else:
        meta = json.loads(read_member(path, sc.members[0]))
        journal = [m for m in sc.members if m.name.startswith(JOURNAL_PREFIX)]
        fin = finalize(path, meta, iter_members(path, journal), len(journal), end_info=end_info)
    return {
        "path": str(fin.path),
        "samples": fin.samples,
        "values": fin.values,
        "rows": fin.rows,
        "bytes": fin.bytes,
        "start": fin.start_ms / 1000 if fin.start_ms is not None else None,
        "end": fin.end_ms / 1000 if fin.end_ms is not None else None,
    }


def _counts(stats: dict[str, Any], path: Path) -> dict[str, Any]:
    return {
        "samples": stats.get("samples") or 0,
        "values": stats.get("values") or 0,
        "bytes": path.stat().st_size,
    }


def run_child(
    path: Path, end_info: dict[str, Any] | None, timeout: float, nice: int = 10
) -> dict[str, Any]:
    """Parent side: finalise `path` in a child; its answer, or FinalizeError saying why not."""
    env = dict(os.environ)
    root = str(Path(para.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    request = json.dumps({"path": str(path), "end": end_info, "nice": nice}, default=str)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "para.agent.finalize"],
            input=request,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise FinalizeError(f"finalising {path.name} took more than {timeout:g} s") from e
    except OSError as e:
        raise FinalizeError(f"cannot start the finaliser for {path.name}: {e}") from e
    lines = proc.stdout.strip().splitlines()
    try:
        answer: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    except ValueError:
        answer = {}
    if proc.returncode != 0 or "error" in answer or not answer:
        why = answer.get("error") or (proc.stderr.strip().splitlines() or ["no answer"])[-1]
        raise FinalizeError(f"finalising {path.name} failed (exit {proc.returncode}): {why}")
    return answer


def main() -> int:
    try:
        request = json.load(sys.stdin)
        path = Path(request["path"])
    except (ValueError, KeyError, TypeError) as e:
        print(json.dumps({"error": f"bad request: {e}"}))
        return 2
    try:
        os.nice(int(request.get("nice", 10)))
    except OSError:
        pass
    try:
        answer = finalize_segment(path, request.get("end"))
    except Exception as e:  # reported to the agent, which keeps the journal and retries
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        return 1
    ru = resource.getrusage(resource.RUSAGE_SELF)
    answer["rusage"] = {
        "cpu_s": round(ru.ru_utime + ru.ru_stime, 3),
        "max_rss_bytes": ru.ru_maxrss * 1024,
    }
    print(json.dumps(answer, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
