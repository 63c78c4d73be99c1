"""Job rules across collector shards (issue 14), through the database directory they share.

Every shard writes, once a second, its part of each running job (para.live.shards.job_partial)
to `DB/alerting/shards/SHARD.json` (written beside, then renamed).  One shard, the one holding
the flock on `DB/alerting/job-rules.lock`, reads every part younger than STALE_S, adds them up
per job and evaluates the `job` rules: each such alert is judged and notified once, in one
place.  The lock dies with its holder, so when the evaluating shard stops or is killed another
takes the lock within a second; the alerts open at that moment are handed over through
`DB/alerting/job-alerts.json` (kept open without a second notification).  A shard that stops,
killed or cleanly, leaves its part to age out after STALE_S: its nodes' last seconds count
until they have failed over to another shard (seconds later), then drop out of the totals and
come back through the shard they report to now; a part removed at once made the shard taking
over resolve the job alerts of nodes still on their way, and fire them again.  Node-local
rules stay on each shard.

Bottleneck rules of a job whose nodes report to several shards are judged the same way, by
the evaluating shard, on the windows of every node: at each period of a rule (aligned on the
clock, so that every shard acts at the same moment) the other shards write their nodes' raw
samples of the job to `DB/alerting/windows/JOB/SHARD.json`, and the evaluating shard judges
them with its own GRACE_S later.  A job on one shard is judged there, as before.  When a job
spreads to several shards, or is back on one, the shard that judged its bottleneck rules
hands the alerts it holds open over to the one that judges them now, through
`DB/alerting/windows/JOB/alerts.handoff`: the same alerts go on, notified once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

STALE_S = 10.0  # a shard's part older than this is left out of the totals
HANDOFF_S = 120.0  # open alerts handed over if the last evaluator wrote them this recently
GRACE_S = 2.0  # the evaluating shard judges a spanning job's window this long after the others
ALERTS_FILE = "alerts.handoff"  # a job's bottleneck alerts, from the shard that judged it


def shard_name() -> str:
    """This collector process among the shards of a database (a restarted one is another)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class ShardLink:
    def __init__(self, root: Path, log: Callable[[str], None]):
        self.log = log
        self.dir = root / "alerting" / "shards"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lock_path = root / "alerting" / "job-rules.lock"
        self.handoff_path = root / "alerting" / "job-alerts.json"
        self.windows_dir = root / "alerting" / "windows"
        self.shard = shard_name()
        self.path = self.dir / f"{self.shard}.json"
        self._fd: int | None = None
        self._warned: set[str] = set()

    # -- every shard -----------------------------------------------------------------------
    def publish(self, part: dict[str, Any]) -> None:
        tmp = self.dir / f".{self.shard}.tmp"
        try:
            tmp.write_text(json.dumps(part, separators=(",", ":")))
            os.replace(tmp, self.path)
        except OSError as e:
            self._once("publish", f"cannot write this shard's job totals to {self.path}: {e}")

    # -- the evaluating shard --------------------------------------------------------------
    def lead(self) -> bool:
        """Do we evaluate the job rules?  Takes the lock when it is free (never waits)."""
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            self._once("lock", f"cannot open {self.lock_path}: {e}")
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def gather(self, now: float) -> list[dict[str, Any]]:
        """The other shards' parts written in the last STALE_S seconds."""
        out: list[dict[str, Any]] = []
        try:
            entries = list(os.scandir(self.dir))
        except OSError:
            return out
        for e in entries:
            if not e.name.endswith(".json") or e.path == str(self.path):
                continue
            try:
                doc = json.loads(Path(e.path).read_bytes())
            except (OSError, ValueError):
                continue  # replaced or removed meanwhile; the next second reads it again
            if not isinstance(doc, dict) or not isinstance(doc.get("t"), (int, float)):
                continue
            if now - doc["t"] > STALE_S:
                if now - doc["t"] > 86400:
                    _unlink(Path(e.path))  # a shard long gone
                continue
            out.append(doc)
        return out

    def hand_over(self, notes: list[dict[str, Any]], now: float) -> None:
        """The job alerts open now, for whoever evaluates after us."""
        tmp = self.handoff_path.with_name(f".job-alerts.{self.shard}.tmp")
        try:
            tmp.write_text(json.dumps({"t": now, "alerts": notes}, default=str))
            os.replace(tmp, self.handoff_path)
        except OSError as e:
            self._once("handoff", f"cannot write {self.handoff_path}: {e}")

    def taken_over(self, now: float) -> list[dict[str, Any]]:
        """The alerts the previous evaluator had open (when it wrote them recently)."""
        try:
            doc = json.loads(self.handoff_path.read_bytes())
        except (OSError, ValueError):
            return []
        if not isinstance(doc, dict) or now - float(doc.get("t") or 0) > HANDOFF_S:
            return []
        return [a for a in doc.get("alerts") or [] if isinstance(a, dict)]

    # -- bottleneck windows of jobs on several shards ---------------------------------------
    def _job_dir(self, job: str) -> Path:
        # a job id comes from a node: hashed, it cannot name a path of its choosing
        return self.windows_dir / hashlib.sha256(job.encode("utf-8", "replace")).hexdigest()[:24]

    def export_window(self, job: str, doc: dict[str, Any]) -> None:
        """This shard's nodes' samples of `job` for the evaluating shard."""
        d = self._job_dir(job)
        tmp = d / f".{self.shard}.tmp"
        try:
            d.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(doc, separators=(",", ":")))
            os.replace(tmp, d / f"{self.shard}.json")
        except OSError as e:
            self._once("windows", f"cannot write the windows of spanning jobs to {d}: {e}")

    def windows(self, job: str, since: float) -> list[dict[str, Any]]:
        """The other shards' samples of `job` written at `since` or later."""
        out: list[dict[str, Any]] = []
        try:
            entries = list(os.scandir(self._job_dir(job)))
        except OSError:
            return out
        for e in entries:
            if not e.name.endswith(".json") or e.name == f"{self.shard}.json":
                continue
            try:
                doc = json.loads(Path(e.path).read_bytes())
            except (OSError, ValueError):
                continue
            if isinstance(doc, dict) and doc.get("job") == job and _t(doc) >= since:
                out.append(doc)
        return out

    def give_alerts(self, job: str, notes: list[dict[str, Any]], now: float) -> None:
        """The job's bottleneck alerts open here, for the shard that judges the job from now
        on (the evaluating shard when the job spread to several, or the one shard it is
        back on)."""
        d = self._job_dir(job)
        tmp = d / f".alerts.{self.shard}.tmp"
        try:
            d.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"t": now, "job": job, "alerts": notes}, default=str))
            os.replace(tmp, d / ALERTS_FILE)
        except OSError as e:
            self._once("give", f"cannot hand the alerts of job {job!r} over in {d}: {e}")

    def take_alerts(self, job: str, now: float) -> list[dict[str, Any]]:
        """The job's alerts another shard handed over recently (removed once taken)."""
        p = self._job_dir(job) / ALERTS_FILE
        try:
            doc = json.loads(p.read_bytes())
        except (OSError, ValueError):
            return []
        _unlink(p)
        if (
            not isinstance(doc, dict)
            or doc.get("job") != job
            or not isinstance(doc.get("t"), (int, float))
            or now - doc["t"] > HANDOFF_S
        ):
            return []
        return [a for a in doc.get("alerts") or [] if isinstance(a, dict)]

    def forget_windows(self, job: str, every_shard: bool) -> None:
        """The job's windows are no longer wanted: this shard's file, or (the evaluating
        shard, once the job ended everywhere) the whole directory."""
        d = self._job_dir(job)
        if every_shard:
            shutil.rmtree(d, ignore_errors=True)
        else:
            _unlink(d / f"{self.shard}.json")

    def close(self) -> None:
        # the part stays, to age out (see the module's docstring)
        if self._fd is not None:
            os.close(self._fd)  # releases the lock: another shard evaluates from now on
            self._fd = None

    def _once(self, what: str, msg: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            self.log(msg)


def _t(doc: dict[str, Any]) -> float:
    t = doc.get("t")
    return float(t) if isinstance(t, (int, float)) else 0.0


def _unlink(p: Path) -> None:
    try:
        p.unlink()
    except OSError:
        pass
