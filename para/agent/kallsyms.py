"""A copy of /proc/kallsyms for the `perf script` of every stacks window.

The kernel writes /proc/kallsyms afresh at each read: 120,000 symbols cost ~60 ms of system
time here, which `perf script` paid at every window, about 40 % of its own CPU for a window
of a few thousand samples.  The copy holds while the kernel's symbols do: it is taken again
when /proc/modules changes (a module loaded or unloaded moves symbols) and after `refresh_s`
(BPF programs and ftrace trampolines come and go without a module).  Where the addresses are
hidden (kptr_restrict) or the file cannot be read, there is no copy and perf reads the
kernel's file as before.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

REFRESH_S = 600.0


class KallsymsCopy:
    def __init__(self, workdir: Path, proc: str = "/proc", refresh_s: float = REFRESH_S):
        self.target = Path(workdir) / "kallsyms"
        self.proc = proc
        self.refresh_s = refresh_s
        self._modules: bytes | None = None
        self._taken = 0.0  # monotonic
        self._ok = False

    def path(self) -> str | None:
        """The copy's path for `perf script --kallsyms`, or None: let perf read the kernel's."""
        try:
            with open(f"{self.proc}/modules", "rb") as f:
                modules = f.read()
        except OSError:
            modules = b""
        fresh = time.monotonic() - self._taken < self.refresh_s
        if self._modules == modules and fresh:
            return str(self.target) if self._ok else None
        self._modules, self._taken = modules, time.monotonic()
        self._ok = self._copy()
        return str(self.target) if self._ok else None

    def _copy(self) -> bool:
        try:
            with open(f"{self.proc}/kallsyms", "rb") as f:
                data = f.read()
        except OSError:
            data = b""
        if not _addresses_shown(data):
            self.target.unlink(missing_ok=True)
            return False
        tmp = self.target.with_name(self.target.name + ".tmp")
        try:
            # the kernel's addresses (KASLR's secret) stay root's, whatever work/'s mode
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self.target)
        except OSError:
            tmp.unlink(missing_ok=True)
            return False
        return True


def _addresses_shown(kallsyms: bytes) -> bool:
    """Whether the kernel's text is at a real address (hidden ones read as zeros; the per-CPU
    symbols some kernels list first are at zero whatever)."""
    at = kallsyms.find(b" T _text\n")
    if at < 0:
        return False
    addr = kallsyms[kallsyms.rfind(b"\n", 0, at) + 1 : at]
    try:
        return int(addr, 16) != 0
    except ValueError:
        return False
