"""Filesystem usage (statvfs) of the mounts a job can fill: local and network filesystems."""

from __future__ import annotations

import os
from typing import Any

from para.agent.samplers.base import ProcFiles, Rows, Sampler, Unavailable

# Kernel interfaces and containers' plumbing, never where a job's data goes.
PSEUDO = frozenset(
    [
        "proc",
        "sysfs",
        "devtmpfs",
        "devpts",
        "cgroup",
        "cgroup2",
        "securityfs",
        "debugfs",
        "tracefs",
        "pstore",
        "bpf",
        "mqueue",
        "hugetlbfs",
        "configfs",
        "fusectl",
        "autofs",
        "binfmt_misc",
        "rpc_pipefs",
        "nsfs",
        "efivarfs",
        "selinuxfs",
        "ramfs",
        "overlay_internal",
        "squashfs",
        "iso9660",
        "nfsd",
    ]
)
# tmpfs is memory: only the places jobs write scratch data to are worth a series.
TMPFS_KEPT = ("/dev/shm", "/tmp")
NETWORK = frozenset(
    ["nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "ceph", "glusterfs", "fuse.sshfs"]
)
# Mounts change rarely; re-read the table every this many samples.
REFRESH_EVERY = 30


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040 ...)."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(data: bytes) -> list[tuple[str, str, str]]:
    """/proc/self/mountinfo -> [(mount point, fstype, source)] of the filesystems worth sampling,
    one per mount point (the last mount over a path is the one that is visible)."""
    seen: dict[str, tuple[str, str, str]] = {}
    for line in data.decode(errors="replace").splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lf, rf = left.split(), right.split()
        if len(lf) < 5 or len(rf) < 2:
            continue
        mount, fstype, source = _unescape(lf[4]), rf[0], _unescape(rf[1])
        if fstype in PSEUDO:
            continue
        if fstype == "tmpfs" and mount not in TMPFS_KEPT:
            continue
        seen.pop(mount, None)
        seen[mount] = (mount, fstype, source)
    return list(seen.values())


class FsSampler(Sampler):
    family = "fs"
    tables = ("fs",)
    may_block = True  # statvfs on a hung NFS or Lustre server never returns

    def __init__(self, files: ProcFiles):
        self.files = files
        self.mounts: list[tuple[str, str, str]] = []
        self._tick = 0

    def keep(self, fstype: str) -> bool:
        """Which filesystems this sampler takes (all; the agent splits local from remote)."""
        return True

    def _mounts(self) -> list[tuple[str, str, str]]:
        found = parse_mountinfo(self.files.read_once("proc/self/mountinfo"))
        return [m for m in found if self.keep(m[1])]

    def open(self) -> dict[str, Any]:
        try:
            self.mounts = self._mounts()
        except OSError as e:
            raise Unavailable(f"cannot read /proc/self/mountinfo: {e.strerror}") from e
        return {"filesystems": [{"mount": m, "type": t, "source": s} for m, t, s in self.mounts]}

    def sample(self, t_ms: int, out: Rows) -> None:
        self._tick += 1
        if self._tick % REFRESH_EVERY == 0:
            self.mounts = self._mounts()
        rows = []
        for mount, _, _ in self.mounts:
            try:
                st = os.statvfs(self.files.path(mount.lstrip("/")))
            except OSError:
                continue  # unmounted since the table was read, or permission denied
            rows.append(
                [
                    mount,
                    st.f_blocks * st.f_frsize,
                    (st.f_blocks - st.f_bfree) * st.f_frsize,
                    st.f_bavail * st.f_frsize,
                    st.f_files,
                    st.f_ffree,
                ]
            )
        out["fs"] = rows
