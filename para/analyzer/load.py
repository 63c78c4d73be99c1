"""Open a .para file for analysis: its tables in DuckDB, plus the derived per-second views
of sql/series.sql."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb

from para.formats import ParaFile


@dataclass(frozen=True)
class View:
    name: str
    needs: tuple[str, ...]
    sql: str


_HEADER = re.compile(r"^-- name: (\w+)\s+needs: ([\w, ]+)$", re.M)


def sql_file(name: str) -> str:
    return resources.files("para.analyzer").joinpath("sql").joinpath(name).read_text()


def views(text: str | None = None) -> list[View]:
    """The statements of a SQL file, each headed `-- name: X  needs: table, ...`."""
    text = text if text is not None else sql_file("series.sql")
    heads = list(_HEADER.finditer(text))
    out = []
    for i, m in enumerate(heads):
        body = text[m.end() : heads[i + 1].start() if i + 1 < len(heads) else len(text)]
        needs = tuple(n.strip() for n in m.group(2).split(","))
        out.append(View(m.group(1), needs, body.strip()))
    return out


class Run:
    """One recorded run (a .para file) with a DuckDB connection over its tables."""

    def __init__(self, path: str | Path, skip: tuple[str, ...] = ()):
        """`skip`: tables not to load (the per-core table of a big node is a quarter of a
        million rows that a per-run report does not use)."""
        self.pf = ParaFile(path)
        self.path = self.pf.path
        self.meta: dict[str, Any] = self.pf.meta
        self.con = duckdb.connect()
        self.tables = [t for t in self.pf.tables if t not in skip]
        for table in self.tables:
            self.con.register(table, self.pf.read_table(table))
        ticks = int(self.meta.get("host", {}).get("clock_ticks") or 100)
        self.views: list[str] = []
        present = set(self.tables)
        for v in views():
            if all(n in present for n in v.needs):
                self.con.execute(v.sql.replace("$ticks", str(ticks)))
                self.views.append(v.name)

    def has(self, name: str) -> bool:
        return name in self.tables or name in self.views

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        return self.con.execute(sql, params or []).fetchall()

    def one(self, sql: str, params: list[Any] | None = None) -> Any:
        row = self.con.execute(sql, params or []).fetchone()
        return row[0] if row else None

    def close(self) -> None:
        self.con.close()
        self.pf.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
