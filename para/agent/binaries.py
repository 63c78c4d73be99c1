"""Which binary ran: its GNU build id (from the ELF note), size and modification time.

`para profile --functions` keeps these for the binaries its instruction samples fell in, so
that the report disassembles a binary only when it is still the one that ran: a rebuilt
program has other code at the recorded offsets, and annotating it would put the samples on
the wrong instructions.
"""

from __future__ import annotations

import os
import struct
from typing import Any

NT_GNU_BUILD_ID = 3
SHT_NOTE = 7
PT_NOTE = 4


def _notes(blob: bytes, little: bool) -> bytes | None:
    """The GNU build id in a run of ELF notes, or None."""
    e = "<" if little else ">"
    pos = 0
    while pos + 12 <= len(blob):
        namesz, descsz, ntype = struct.unpack_from(e + "III", blob, pos)
        pos += 12
        name = blob[pos : pos + namesz]
        pos += (namesz + 3) & ~3
        desc = blob[pos : pos + descsz]
        pos += (descsz + 3) & ~3
        if ntype == NT_GNU_BUILD_ID and name.rstrip(b"\0") == b"GNU" and desc:
            return desc
    return None


def build_id(path: str | os.PathLike[str]) -> str | None:
    """The hex GNU build id of an ELF file, None when it has none or is not ELF."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 52 or head[:4] != b"\x7fELF":
                return None
            is64, little = head[4] == 2, head[5] == 1
            e = "<" if little else ">"
            if is64:
                (phoff,) = struct.unpack_from(e + "Q", head, 32)
                phentsize, phnum = struct.unpack_from(e + "HH", head, 54)
            else:
                (phoff,) = struct.unpack_from(e + "I", head, 28)
                phentsize, phnum = struct.unpack_from(e + "HH", head, 42)
            if not phoff or not phnum or phnum > 4096:
                return None
            f.seek(phoff)
            table = f.read(phentsize * phnum)
            for i in range(phnum):
                ent = table[i * phentsize : (i + 1) * phentsize]
                if len(ent) < (56 if is64 else 32):
                    break
                (ptype,) = struct.unpack_from(e + "I", ent, 0)
                if ptype != PT_NOTE:
                    continue
                if is64:
                    off, filesz = struct.unpack_from(e + "Q", ent, 8)[0], struct.unpack_from(
                        e + "Q", ent, 32)[0]  # fmt: skip
                else:
                    off, filesz = struct.unpack_from(e + "I", ent, 4)[0], struct.unpack_from(
                        e + "I", ent, 16)[0]  # fmt: skip
                if filesz > 1 << 20:
                    continue
                f.seek(off)
                found = _notes(f.read(filesz), little)
                if found:
                    return found.hex()
    except (OSError, struct.error):
        return None
    return None


def identity(path: str) -> dict[str, Any] | None:
    """{build_id, size, mtime_ns} of a binary on disk now, or None when it is not a file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not os.path.isfile(path):
        return None
    return {"build_id": build_id(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def differs(recorded: dict[str, Any] | None, now: dict[str, Any] | None) -> str | None:
    """Why the binary on disk is not the one recorded (None: the same, as far as the
    recording can tell; a recording without an identity cannot tell)."""
    if not recorded or now is None:
        return None
    old_id, new_id = recorded.get("build_id"), now.get("build_id")
    if old_id and new_id:
        return (
            None
            if old_id == new_id
            else (f"its build id is {new_id[:12]}..., not {old_id[:12]}... as when it ran")
        )
    size, mtime = recorded.get("size"), recorded.get("mtime_ns")
    if size is not None and size != now.get("size"):
        return f"it is {now.get('size')} bytes, not {size} as when it ran"
    if mtime is not None and mtime != now.get("mtime_ns"):
        return "it was modified after the run"
    return None
