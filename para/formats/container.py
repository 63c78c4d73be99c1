"""The container: a ZIP archive (members stored, not deflated) that any unzip can open.

While recording, a .para file is `meta.json` followed by one journal member per sample,
appended with a single write() each, and no central directory: a writer killed at any point
leaves every complete member readable by walking the local headers.  On a clean close the
file is rewritten as `meta.json` plus one Parquet file per table and part, with a central
directory, and renamed into place atomically.  See docs/para-format.md.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from para.errors import FormatError

FORMAT_VERSION = 1
META_NAME = "meta.json"
END_NAME = "end.json"
JOURNAL_PREFIX = "journal/"

_LOCAL = struct.Struct("<IHHHHHIIIHH")
_LOCAL_SIG = 0x04034B50
_CENTRAL_SIG = 0x02014B50
_END_SIG = 0x06054B50
# 1980-01-01 00:00 in DOS format: journal members carry no meaningful mtime.
_DOS_TIME, _DOS_DATE = 0, (0 << 9) | (1 << 5) | 1
_MAX32 = 0xFFFFFFFF

# What one member may cost once decompressed (docs/collector.md, "Bounds"): a file of a few
# hundred KiB can hold a deflated member of gigabytes, and every reader of a .para file (the
# collector before its ack, `para show`, `para collect`) reads peers' files.
MAX_JSON_BYTES = 8 << 20  # meta.json, end.json (a real catalogue is ~100 KiB)
MAX_RECORD_BYTES = 64 << 20  # one journal record (one sample of every table)
MAX_PART_BYTES = 256 << 20  # one Parquet part, uncompressed (its row groups add up)


class TooLarge(FormatError):
    """A member decompresses to more than the bound for its kind; the message says which."""

    def __init__(self, message: str):
        super().__init__(message, hint="the file is damaged or hostile: para will not read it")


def inflate(data: bytes, limit: int, name: str) -> bytes:
    """Raw deflate `data`, refusing to produce more than `limit` bytes."""
    d = zlib.decompressobj(-15)
    out = d.decompress(data, limit + 1)
    if len(out) > limit or d.unconsumed_tail:
        raise TooLarge(f"member {name} decompresses to more than {limit} bytes (the limit)")
    return out


def read_zip_member(zf: object, name: str, limit: int) -> bytes:
    """One member of an open zipfile.ZipFile, decompressing at most `limit` bytes."""
    import zipfile

    assert isinstance(zf, zipfile.ZipFile)
    info = zf.getinfo(name)
    if info.file_size > limit:
        raise TooLarge(
            f"member {name} declares {info.file_size} bytes, more than the limit of {limit}"
        )
    with zf.open(info) as f:  # the declared size may lie: never read past the limit
        data = f.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(f"member {name} decompresses to more than {limit} bytes (the limit)")
    return data


def local_member(name: str, data: bytes) -> bytes:
    """One complete stored member (local header + data), ready for a single write()."""
    raw = name.encode()
    if len(data) >= _MAX32:
        raise ValueError(f"member {name} is too large for a journal record")
    header = _LOCAL.pack(
        _LOCAL_SIG,
        20,
        0,
        0,
        _DOS_TIME,
        _DOS_DATE,
        zlib.crc32(data),
        len(data),
        len(data),
        len(raw),
        0,
    )
    return header + raw + data


@dataclass(frozen=True)
class Member:
    name: str
    offset: int  # of the data, not the header
    size: int  # stored size
    crc: int
    deflated: bool = False


@dataclass
class Scan:
    """What walking the local headers found."""

    members: list[Member]
    end: int  # offset just past the last complete member
    file_size: int
    problem: str | None  # why the walk stopped before the end of the file, if it did
    has_central_directory: bool


def scan(path: str | os.PathLike[str]) -> Scan:
    """Walk the local headers of a (possibly unfinished or truncated) archive.

    Members whose data is cut short or fails its CRC end the walk: everything before them
    is trusted, nothing after.
    """
    members: list[Member] = []
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        pos = 0
        problem: str | None = None
        central = False
        while pos < size:
            head = f.read(_LOCAL.size)
            if len(head) < 4:
                problem = f"{size - pos} stray bytes at offset {pos}"
                break
            sig = struct.unpack_from("<I", head)[0]
            if sig in (_CENTRAL_SIG, _END_SIG):
                central = True
                break
            if sig != _LOCAL_SIG or len(head) < _LOCAL.size:
                problem = f"no member header at offset {pos} (file cut or overwritten there)"
                break
            (_, _, flags, method, _, _, crc, csize, usize, nlen, xlen) = _LOCAL.unpack(head)
            if flags & 0x08 or method not in (0, 8) or (method == 0 and csize != usize):
                problem = f"member at offset {pos} is not a member para can walk (method {method})"
                break
            name_raw = f.read(nlen)
            f.seek(xlen, os.SEEK_CUR)
            data_off = pos + _LOCAL.size + nlen + xlen
            if len(name_raw) < nlen or data_off + csize > size:
                problem = (
                    f"member {name_raw.decode(errors='replace')!r} at offset {pos} is cut short "
                    f"(needs {data_off + csize - size} more bytes)"
                )
                break
            name = name_raw.decode(errors="replace")
            if name.startswith(JOURNAL_PREFIX):
                data = f.read(csize)
                if zlib.crc32(data) != crc:
                    problem = f"journal member {name!r} at offset {pos} fails its checksum"
                    break
            else:
                f.seek(csize, os.SEEK_CUR)
            members.append(Member(name, data_off, csize, crc, method == 8))
            pos = data_off + csize
        end = pos if problem is None else pos
        return Scan(members, end, size, problem, central)


def read_member(
    path: str | os.PathLike[str], member: Member, limit: int = MAX_RECORD_BYTES
) -> bytes:
    """A member's bytes, inflated (at most `limit` bytes) if it is deflated."""
    with open(path, "rb") as f:
        f.seek(member.offset)
        data = f.read(member.size)
    if len(data) != member.size:
        raise OSError(f"{path}: member {member.name} cut short")
    return inflate(data, limit, member.name) if member.deflated else data


def iter_members(path: str | os.PathLike[str], members: list[Member]) -> Iterator[bytes]:
    """Read several members with one open file, in file order."""
    with open(path, "rb") as f:
        for m in members:
            f.seek(m.offset)
            data = f.read(m.size)
            yield inflate(data, MAX_RECORD_BYTES, m.name) if m.deflated else data
