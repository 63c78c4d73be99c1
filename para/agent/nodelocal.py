"""One sampler per node under srun/mpirun: the first `para profile` of a launch on a node
samples the node and every rank's processes; the others register their rank and just run it.

Coordination is a lock file and a directory of registered pids in the node-local temporary
directory, both named after the launch (job id and step, or the MPI namespace).
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path


class NodeLocal:
    def __init__(self, launch_key: str, tmpdir: str | None = None):
        base = Path(tmpdir or tempfile.gettempdir())
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in launch_key)
        stem = f"para-{os.getuid()}-{safe}"
        self.lock_path = base / f"{stem}.lock"
        self.pid_dir = base / f"{stem}.pids"
        self._fd: int | None = None

    def claim(self) -> bool:
        """True if this process is the node's sampler (it keeps the lock until it exits)."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.pid_dir.mkdir(mode=0o700, exist_ok=True)
        return True

    def sampler_pid(self) -> int | None:
        try:
            return int(self.lock_path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def register(self, pid: int) -> None:
        self.pid_dir.mkdir(mode=0o700, exist_ok=True)
        (self.pid_dir / str(pid)).touch()

    def unregister(self, pid: int) -> None:
        (self.pid_dir / str(pid)).unlink(missing_ok=True)

    def passengers(self) -> set[int]:
        """Registered rank pids that are still alive."""
        try:
            names = os.listdir(self.pid_dir)
        except OSError:
            return set()
        alive = set()
        for n in names:
            if n.isdigit() and os.path.exists(f"/proc/{n}"):
                alive.add(int(n))
        return alive

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.rmdir(self.pid_dir)
            except OSError:
                pass  # a rank registered late: leave its entry
            self.lock_path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None
