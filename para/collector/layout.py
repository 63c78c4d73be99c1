"""Where things live in a feature database directory (docs/database.md), and its lock."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from para.formats import wire

CATALOG = "catalog.duckdb"
LEDGER = "ledger.sqlite3"
DATA = "data"
META = "meta"
INCOMING = "incoming"
STAGING = "staging"
QUARANTINE = "quarantine"
LOCK = ".lock"
RECEIVING = ".receiving"
README = "README.txt"

_README = """This directory is a para feature database (docs/database.md in the para sources).

  data/<table>/          one Delta Lake table per table: _delta_log/ says which of its
                         cluster=<c>/date=<YYYY-MM-DD>/*.parquet files are the table now
  meta/hosts, meta/jobs, meta/catalogue   Delta Lake tables too
  catalog.duckdb        DuckDB views over the above (open it from this directory:
                        cd <this directory> && duckdb -readonly catalog.duckdb)
  ledger.sqlite3        the collector's record of every segment received (do not edit)
  incoming/, staging/   work in progress of the collector (do not edit)

Query it with: para query --db <this directory> "SELECT ..."
"""


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def catalog(self) -> Path:
        return self.root / CATALOG

    @property
    def ledger(self) -> Path:
        return self.root / LEDGER

    @property
    def data(self) -> Path:
        return self.root / DATA

    @property
    def meta(self) -> Path:
        return self.root / META

    @property
    def incoming(self) -> Path:
        return self.root / INCOMING

    @property
    def staging(self) -> Path:
        return self.root / STAGING

    @property
    def quarantine(self) -> Path:
        return self.root / QUARANTINE

    def exists(self) -> bool:
        return self.ledger.exists()

    def create(self) -> None:
        for d in (self.root, self.data, self.meta, self.incoming, self.staging):
            d.mkdir(parents=True, exist_ok=True)
        readme = self.root / README
        if not readme.exists():
            readme.write_text(_README)

    def partition(self, table: str, cluster: str, date: str) -> Path:
        """data/<table>/cluster=<c>/date=<d>: every component checked, so no peer-supplied
        name can point outside the database."""
        wire.check_table_name(table)
        wire.check_cluster(cluster)
        if len(date) != 10 or not date.replace("-", "").isdigit():
            raise ValueError(f"bad partition date {date!r}")
        return self.data / table / f"cluster={cluster}" / f"date={date}"

    def incoming_file(self, host: str, seg_id: str) -> Path:
        return self.incoming / wire.check_host(host) / f"{wire.check_segment_id(seg_id)}.para"

    def tables(self) -> list[str]:
        """Tables with at least one data file."""
        out: list[str] = []
        if not self.data.is_dir():
            return out
        for entry in sorted(os.scandir(self.data), key=lambda e: e.name):
            if entry.is_dir() and (
                (Path(entry.path) / "_delta_log").is_dir()
                or next(self.data_files(entry.name), None) is not None
            ):
                out.append(entry.name)
        return out

    def data_files(self, table: str) -> Iterator[Path]:
        base = self.data / table
        if not base.is_dir():
            return
        for cluster in sorted(base.iterdir()):
            if not cluster.is_dir() or not cluster.name.startswith("cluster="):
                continue
            for date in sorted(cluster.iterdir()):
                if not date.is_dir():
                    continue
                for f in sorted(date.iterdir()):
                    if f.suffix == ".parquet":
                        yield f

    @contextmanager
    def receiving(self, shared: bool) -> Iterator[None]:
        """Uploads being stored (shared) against the clean-up of a starting collector
        (exclusive): collectors serving one database never take each other's files."""
        fd = os.open(self.root / RECEIVING, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def partitions(self, table: str) -> Iterator[Path]:
        base = self.data / table
        if not base.is_dir():
            return
        for cluster in sorted(base.iterdir()):
            if cluster.is_dir() and cluster.name.startswith("cluster="):
                for date in sorted(cluster.iterdir()):
                    if date.is_dir():
                        yield date


@contextmanager
def locked(layout: Layout) -> Iterator[None]:
    """One writer of data files at a time, across processes (`para collect` beside a running
    collector).  flock: released by the kernel if the holder dies, so a kill -9 never leaves
    the database locked."""
    fd = os.open(layout.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
