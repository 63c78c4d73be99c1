"""Anomaly baselines of collector shards, kept in the database directory they share.

Each collector process keeps the baselines it learns in `DB/alerting/baselines/SHARD.json`
(written beside, then renamed) and judges with its own and every other shard's together
(live.engine.pooled: each weighted by its history, halved every half-life of its rule since
it was written): an application whose runs a shard has never seen is judged on the runs the
other shards saw, and a node that failed over keeps its history.  A shard learns only its
own, so nothing is counted twice.

The file of a process that stopped (it says so) or has not written for DEAD_S is taken by
the next shard that reads it (renamed, so one taker only) and added to its own: a restarted
collector goes on from its predecessor's history, and the files of processes long gone do
not pile up.  The single `DB/alerting/baselines.json` of earlier versions is taken the same
way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from para.live.engine import BaselineItem, Engine, baselines_of

DEAD_S = 600.0  # a shard's file not written for this long: its process is gone
_MAX_BYTES = 256 << 20  # another process's file larger than this is not read


class BaselineFiles:
    def __init__(self, root: Path, shard: str, log: Callable[[str], None]):
        self.dir = root / "alerting" / "baselines"
        self.legacy = root / "alerting" / "baselines.json"
        self.shard = shard
        self.path = self.dir / f"{shard}.json"
        self.log = log
        self._warned: set[str] = set()
        self._keys: dict[str, Any] = {}  # the baselines' keys decoded (baselines_of)

    def save(self, engine: Engine, now: float, lock: AbstractContextManager[Any],
             ended: bool = False) -> None:  # fmt: skip
        """Ours, as learned so far (`ended`: this process stops; the next shard takes them),
        taken under `lock` (the engine's), written outside it."""
        with lock:
            if not engine.baselines:
                return
            mine = engine.export_baselines()
        doc = {"t": now, "shard": self.shard, "ended": ended, "baselines": mine}
        tmp = self.dir / f".{self.shard}.tmp"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, self.path)
        except OSError as e:
            self._once("save", f"cannot save the anomaly baselines to {self.path}: {e}")

    def read(self, engine: Engine, now: float, lock: AbstractContextManager[Any]) -> int:
        """Take the files of processes gone into ours, and judge with the other shards'
        from now on.  How many files were taken.  The files are read and decoded outside
        `lock` (the engine's): the live path waits only for the baselines to be put in."""
        taken: list[tuple[list[BaselineItem], float, Path]] = []
        shared: list[tuple[list[BaselineItem], float]] = []
        for p in self._files():
            doc = _load(p)
            if doc is None:
                continue
            if doc["ended"] or now - doc["t"] > DEAD_S:
                claimed = p.with_name(f".{p.name}.{self.shard}.taken")
                try:
                    os.rename(p, claimed)  # one taker, whoever renames first
                except OSError:
                    continue
                doc = _load(claimed) or doc
                taken.append((baselines_of(doc["baselines"], self._keys), now - doc["t"], claimed))
            else:
                shared.append((baselines_of(doc["baselines"], self._keys), now - doc["t"]))
        pooled = engine.shared_baselines(shared)
        with lock:
            for parsed, age, _ in taken:
                engine.absorb_baselines(parsed, age)
            engine.shared = pooled
        if taken:
            self.save(engine, now, lock)  # what was taken is ours now, on disk before it goes
        for *_, claimed in taken:
            _unlink(claimed)
        return len(taken)

    def _files(self) -> list[Path]:
        out = [self.legacy] if self.legacy.exists() else []
        try:
            out += [
                Path(e.path)
                for e in os.scandir(self.dir)
                if e.name.endswith(".json") and e.path != str(self.path)
            ]
        except OSError:
            pass
        return out

    def _once(self, what: str, msg: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            self.log(msg)


def _load(p: Path) -> dict[str, Any] | None:
    """A shard's file (or the single file of earlier versions, dated by its mtime, taken as
    ended); None if it is gone or does not decode."""
    try:
        if p.stat().st_size > _MAX_BYTES:
            return None
        mtime = p.stat().st_mtime
        doc = json.loads(p.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    if "baselines" not in doc:  # DB/alerting/baselines.json: the baselines alone
        return {"t": mtime, "ended": True, "baselines": doc}
    if not isinstance(doc.get("t"), (int, float)) or not isinstance(doc["baselines"], dict):
        return None
    return {"t": float(doc["t"]), "ended": bool(doc.get("ended")), "baselines": doc["baselines"]}


def _unlink(p: Path) -> None:
    try:
        p.unlink()
    except OSError:
        pass
