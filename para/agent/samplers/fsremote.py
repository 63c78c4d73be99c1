"""Filesystem usage for the agent, split by what can hang.

statvfs on a local filesystem answers from memory; on a network filesystem (NFS, Lustre,
GPFS, CIFS, Ceph, FUSE...) it asks a server, and a hung server makes it wait forever.  The
agent samples local filesystems inline, as cheaply as any /proc file, and network ones in a
thread of their own with a time budget (loop.py), so only they pay for the isolation.
"""

from __future__ import annotations

from typing import Any

from para.agent.samplers.base import Unavailable
from para.agent.samplers.fs import NETWORK, FsSampler


def is_remote(fstype: str) -> bool:
    return fstype in NETWORK or fstype.startswith("fuse")


class LocalFsSampler(FsSampler):
    family = "fs"
    may_block = False

    def keep(self, fstype: str) -> bool:
        return not is_remote(fstype)


class RemoteFsSampler(FsSampler):
    family = "fs_remote"
    may_block = True

    def keep(self, fstype: str) -> bool:
        return is_remote(fstype)

    def open(self) -> dict[str, Any]:
        facts = super().open()
        if not self.mounts:
            raise Unavailable("no network filesystem (NFS, Lustre, GPFS, CIFS, FUSE...) mounted")
        return facts
