"""One sampler per node under srun/mpirun: the first `para profile` of a launch on a node that
can write its file samples the node and every rank's processes; the others register their
rank and run it.

Coordination is a lock file and a directory in the node-local temporary directory, both named
after the launch (job id and step, or the MPI namespace).  In the directory each rank's para
leaves, by its command's pid:
- `PID.reg`  (JSON: para's pid, the rank, its CPU affinity), while the command is held;
- `PID.run`  once the command runs (it is sampled from then on);
- `PID.out`  (JSON: what the rank recorded itself, its call stacks), written after it ended;
- `PID.done` once it has nothing more to hand over;
and the sampler leaves `sampled` (the time of its last stored sample): a rank whose command
ended waits, before it reaps the command, until a sample after the end read its final CPU time.
The sampler waits until the node's ranks (as many as the launcher says there are) have
registered, leaves `ready`, waits until they run, and only then starts its own command and
samples: every rank's command is sampled from its start, short as it may be.
The sampler reads them while it runs and removes the directory when it ends; a rank that
finds no sampler left when it ends removes what it wrote (nothing stays in /tmp).
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


class NodeLocal:
    def __init__(self, launch_key: str, tmpdir: str | None = None):
        base = Path(tmpdir or tempfile.gettempdir())
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in launch_key)
        stem = f"para-{os.getuid()}-{safe}"
        self.lock_path = base / f"{stem}.lock"
        self.pid_dir = base / f"{stem}.pids"
        self._fd: int | None = None
        self.seen: dict[int, dict[str, Any]] = {}  # command pid -> its registration
        self._seen_lock = threading.Lock()  # the sampling thread and the main thread scan

    # -- the lock ---------------------------------------------------------------------------
    def _lock(self) -> int | None:
        """The lock, held; None when another process holds it.  A lock file removed by its
        last holder while we opened it is not the lock any more: open the new one."""
        for _ in range(5):
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            try:
                same = os.stat(self.lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)
        return None

    def claim(self) -> bool:
        """True if this process is now the node's sampler (it keeps the lock until it
        releases it or exits)."""
        fd = self._lock()
        if fd is None:
            return False
        self._fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.pid_dir.mkdir(mode=0o700, exist_ok=True)
        return True

    def wait_registered(self, n: int, timeout: float) -> int:
        """Until `n` ranks have registered (or `timeout`); how many did."""
        deadline = time.monotonic() + timeout
        while len(self._scan()) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(self._scan())

    def mark_ready(self) -> None:
        """The sampler is ready: the ranks may start their commands."""
        (self.pid_dir / "ready").touch()

    def wait_running(self, timeout: float) -> None:
        """Until every registered rank's command runs (or ended, or its para is gone)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            held = [
                pid
                for pid, reg in self._scan().items()
                if not (self.pid_dir / f"{pid}.run").exists()
                and not (self.pid_dir / f"{pid}.done").exists()
                and _alive(reg.get("para"))
            ]
            if not held:
                return
            time.sleep(0.01)

    # -- a rank that runs its command (a passenger), continued ------------------------------
    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Until the node's sampler is ready (True), or is gone, or `timeout` passed."""
        deadline = time.monotonic() + timeout
        while not (self.pid_dir / "ready").exists():
            if time.monotonic() > deadline or not _alive(self.sampler_pid()):
                return False
            time.sleep(0.01)
        return True

    def running(self, pid: int) -> None:
        """The rank's command was released: sample it."""
        try:
            (self.pid_dir / f"{pid}.run").touch()
        except OSError:
            pass

    def sampled(self, t_ms: int) -> None:
        """The sampler has stored a sample taken at `t_ms` (wall clock, ms)."""
        try:
            self._write_text(self.pid_dir / "sampled", str(t_ms))
        except OSError:
            pass

    def wait_sampled_after(self, t_ms: int, timeout: float) -> bool:
        """A rank whose command has ended, unreaped, waits until the sampler has taken a
        sample after `t_ms`: that sample read the command's final CPU time (the kernel keeps
        it until the command is reaped).  False if the sampler is gone or `timeout` passed."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if int((self.pid_dir / "sampled").read_text()) > t_ms:
                    return True
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline or not _alive(self.sampler_pid()):
                return False
            time.sleep(0.01)

    def sampler_pid(self) -> int | None:
        try:
            return int(self.lock_path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    # -- a rank that runs its command (a passenger) -----------------------------------------
    def register(self, pid: int, rank: int | None, cpus: set[int]) -> None:
        self.pid_dir.mkdir(mode=0o700, exist_ok=True)
        doc = {"para": os.getpid(), "rank": rank, "cpus": sorted(cpus)}
        self._write(self.pid_dir / f"{pid}.reg", doc)

    def hand_over(self, pid: int, doc: dict[str, Any]) -> None:
        """What this rank recorded itself, for the sampler to put in the node's file."""
        self._write(self.pid_dir / f"{pid}.out", doc)

    def finished(self, pid: int) -> None:
        """The rank's part is over.  When no sampler holds the lock any more (it ended, or it
        failed), nobody will read or remove what this rank wrote: remove it here."""
        try:
            (self.pid_dir / f"{pid}.done").touch()
        except OSError:
            pass
        fd = self._lock()
        if fd is None:
            return  # the sampler runs: it reads and removes everything
        try:
            for suffix in (".reg", ".run", ".out", ".done"):
                (self.pid_dir / f"{pid}{suffix}").unlink(missing_ok=True)
            if not any(n.endswith(".reg") for n in _names(self.pid_dir)):
                for name in ("ready", "sampled"):  # the dead sampler's
                    (self.pid_dir / name).unlink(missing_ok=True)
            self._remove_if_empty()
        finally:
            os.close(fd)

    # -- the sampler ------------------------------------------------------------------------
    def passengers(self) -> set[int]:
        """Registered rank commands still alive (the roots of their process trees)."""
        return {
            pid
            for pid in self._scan()
            if (self.pid_dir / f"{pid}.run").exists() and os.path.exists(f"/proc/{pid}")
        }

    def pending(self) -> set[int]:
        """Ranks whose para has more to hand over: not done, and their para still alive."""
        out = set()
        for pid, reg in self._scan().items():
            if (self.pid_dir / f"{pid}.done").exists():
                continue
            if _alive(reg.get("para")):
                out.add(pid)
        return out

    def collect(self) -> dict[int, dict[str, Any]]:
        """What each rank handed over, by command pid (read once)."""
        out = {}
        for pid in self._scan():
            path = self.pid_dir / f"{pid}.out"
            try:
                doc = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            path.unlink(missing_ok=True)
            if isinstance(doc, dict):
                out[pid] = doc
        return out

    def registrations(self) -> dict[int, dict[str, Any]]:
        """Every rank that registered on this node so far, by command pid."""
        return self._scan()

    def _scan(self) -> dict[int, dict[str, Any]]:
        """Registrations seen so far (a copy), new ones read from the directory."""
        with self._seen_lock:
            try:
                names = os.listdir(self.pid_dir)
            except OSError:
                names = []
            for n in names:
                stem, _, suffix = n.partition(".")
                if suffix != "reg" or not stem.isdigit() or int(stem) in self.seen:
                    continue
                try:
                    doc = json.loads((self.pid_dir / n).read_text())
                except (OSError, ValueError):
                    continue  # being written: read next time
                if isinstance(doc, dict):
                    self.seen[int(stem)] = doc
            return dict(self.seen)

    def release(self) -> None:
        """Stop being the sampler: remove what the ranks left (a rank registering later
        removes its own, finished())."""
        if self._fd is None:
            return
        try:
            busy = self.pending()
            for pid in self._scan():
                if pid in busy:
                    continue  # still at work: it cleans up after itself
                for suffix in (".reg", ".run", ".out", ".done"):
                    (self.pid_dir / f"{pid}{suffix}").unlink(missing_ok=True)
            for name in ("ready", "sampled"):
                (self.pid_dir / name).unlink(missing_ok=True)
            self._remove_if_empty()
        finally:
            os.close(self._fd)
            self._fd = None

    def _remove_if_empty(self) -> None:
        """With the lock held: the directory and the lock file go once nothing is left."""
        try:
            os.rmdir(self.pid_dir)
        except FileNotFoundError:
            pass
        except OSError:
            return  # a rank registered late: it removes its own when it ends
        self.lock_path.unlink(missing_ok=True)

    @staticmethod
    def _write(path: Path, doc: dict[str, Any]) -> None:
        NodeLocal._write_text(path, json.dumps(doc))

    @staticmethod
    def _write_text(path: Path, text: str) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)


def _names(d: Path) -> list[str]:
    try:
        return os.listdir(d)
    except OSError:
        return []


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
