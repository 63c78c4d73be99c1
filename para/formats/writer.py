"""ParaWriter: appends one journal member per sample, and rewrites the file compactly on close."""

from __future__ import annotations

import json
import os
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from para.errors import ParaError
from para.formats import journal
from para.formats.container import (
    END_NAME,
    FORMAT_VERSION,
    JOURNAL_PREFIX,
    META_NAME,
    Member,
    iter_members,
    local_member,
)
from para.formats.schema import TABLES, catalogue

# A part holds at most this many samples: bounds the memory a close (or a recovery) needs.
PART_SAMPLES = 3600


@dataclass
class Finalized:
    path: Path
    samples: int
    values: int
    rows: dict[str, int]
    start_ms: int | None
    end_ms: int | None
    bytes: int


def check_writable(path: Path) -> None:
    """Fail before anything starts if `path` cannot be created (the user's CMD never runs)."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ParaError(f"cannot write {path}: it is a directory", hint="give a file name")
    if not parent.is_dir():
        raise ParaError(
            f"cannot write {path}: directory {parent} does not exist",
            hint=f"create it first (mkdir -p {parent}) or choose another --output",
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ParaError(
            f"cannot write {path}: no permission to create files in {parent}",
            hint="choose another --output",
        )
    if path.exists() and not os.access(path, os.W_OK):
        raise ParaError(f"cannot write {path}: the file exists and is read-only")


class ParaWriter:
    """Writes a .para file.

    `append` costs one write() of a few KiB, so a writer killed with SIGKILL loses only the
    sample it was taking.  `close` rebuilds the file as Parquet parts and renames it into place.
    """

    def __init__(self, path: str | os.PathLike[str], meta: dict[str, Any]):
        self.path = Path(path)
        check_writable(self.path)
        if "catalogue" not in meta:
            meta["catalogue"] = catalogue()
        meta["format"] = "para"
        meta["format_version"] = FORMAT_VERSION
        meta.setdefault("created", time.time())
        self.meta = meta
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as e:
            raise ParaError(f"cannot write {self.path}: {e.strerror}") from e
        self._offset = 0
        self._journal: list[Member] = []
        self._write_member(META_NAME, json.dumps(meta, indent=1).encode())
        self.closed = False

    def _write_member(self, name: str, data: bytes) -> Member:
        blob = local_member(name, data)
        view = memoryview(blob)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        member = Member(name, self._offset + len(blob) - len(data), len(data), 0)
        self._offset += len(blob)
        return member

    @property
    def samples(self) -> int:
        return len(self._journal)

    def append(self, t_ms: int, rows: journal.Rows, sample: bool = True) -> None:
        """Store one sample: rows per table (timed tables carry their own time first).

        `sample=False` stores rows that do not make a sampling instant (call stacks folded
        at the end of a run).
        """
        name = f"{JOURNAL_PREFIX}{len(self._journal):08d}"
        self._journal.append(self._write_member(name, journal.encode(t_ms, rows, sample)))

    def close(
        self,
        end_info: dict[str, Any] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Finalized:
        """Rewrite the file as Parquet parts; the journal stays intact until the rename.

        `end_info` lands in end.json: what is only known at the end (exit code, states).
        """
        if self.closed:
            raise RuntimeError("writer already closed")
        self.closed = True
        os.close(self._fd)
        records = iter_members(self.path, self._journal)
        return finalize(
            self.path, self.meta, records, len(self._journal), progress, end_info=end_info
        )

    def abandon(self) -> None:
        """Stop writing without rewriting: the file stays a recoverable journal."""
        if not self.closed:
            self.closed = True
            os.close(self._fd)


def timed_tables(catalogue_tables: list[str]) -> set[str]:
    """Tables whose rows carry their own time: the file says so, else our schema does."""
    return {t for t in catalogue_tables if t in TABLES and TABLES[t].timed_rows}


def finalize(
    path: Path,
    meta: dict[str, Any],
    records: Any,
    n_records: int,
    progress: Callable[[int, int], None] | None = None,
    out: Path | None = None,
    end_info: dict[str, Any] | None = None,
) -> Finalized:
    """Turn journal records into Parquet parts and write a complete .para at `out` (or `path`).

    Layout: `meta.json` (what was known at the start), the parts, then `end.json` (counts,
    time range, final states).  Written beside the target and renamed, so a crash here leaves
    the journal file as it was.
    """
    target = out or path
    tmp = target.with_name(target.name + ".tmp-final")
    layout = journal.table_layout(meta["catalogue"])
    timed = timed_tables(list(layout))
    keys = {
        t: sorted(_key_names(t, cols), key=[c["name"] for c in cols].index)
        for t, cols in layout.items()
    }
    metrics = {
        t: [c["name"] for c in cols if c["kind"] in ("counter", "gauge")]
        for t, cols in layout.items()
    }
    rows: dict[str, int] = {}
    values = 0
    samples = 0
    start = end = None
    parts: dict[str, int] = {}
    when = _dos_time(meta.get("created"))
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
            # JSON members are deflated (the catalogue shrinks eightfold); Parquet parts are
            # stored, already compressed and readable in place, except small ones that are
            # smaller as uncompressed Parquet in a deflated member (journal.part_bytes).
            zf.writestr(
                zipfile.ZipInfo(META_NAME, date_time=when),
                _meta_bytes(meta),
                zipfile.ZIP_DEFLATED,
                9,
            )
            records_iter = iter(records)
            exhausted = False
            done = 0
            while not exhausted:
                builder = journal.TableBuilder(layout, timed)
                for _ in range(PART_SAMPLES):
                    data = next(records_iter, None)
                    if data is None:
                        exhausted = True
                        break
                    builder.add(*journal.decode(data))
                if not builder.records:
                    continue
                samples += len(builder.samples)
                done += builder.records
                if progress:
                    progress(done, n_records)
                if builder.samples:
                    s0, s1 = min(builder.samples), max(builder.samples)
                    start = s0 if start is None else min(start, s0)
                    end = s1 if end is None else max(end, s1)
                for table in builder.tables():
                    arrow = builder.to_arrow(table)
                    n = parts.get(table, 0)
                    parts[table] = n + 1
                    name = f"{table}/part-{n:05d}.parquet"
                    data, deflate = journal.part_bytes(arrow, keys[table])
                    zf.writestr(
                        zipfile.ZipInfo(name, date_time=when),
                        data,
                        zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED,
                        9 if deflate else None,
                    )
                    rows[table] = rows.get(table, 0) + len(arrow)
                    values += journal.count_values(arrow, metrics[table])
            end_doc = dict(end_info or {})
            end_doc.update(
                complete=True,
                samples=samples,
                values=values,
                rows=rows,
                parts=parts,
                start=start / 1000 if start is not None else None,
                end=end / 1000 if end is not None else None,
                closed=time.time(),
            )
            zf.writestr(
                zipfile.ZipInfo(END_NAME, date_time=when),
                _meta_bytes(end_doc),
                zipfile.ZIP_DEFLATED,
                9,
            )
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Finalized(target, samples, values, rows, start, end, target.stat().st_size)


def _meta_bytes(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), default=str).encode()


def _key_names(table: str, cols: list[dict[str, str]]) -> set[str]:
    if table in TABLES:
        return {c.name for c in TABLES[table].keys}
    return {c["name"] for c in cols if c["kind"] == "info"}


def _dos_time(epoch: float | None) -> tuple[int, int, int, int, int, int]:
    tm = time.gmtime(epoch if epoch and epoch > 315532800 else 315532800)
    return (tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec)
