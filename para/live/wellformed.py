"""A live sample as the live path may trust it: tables of rows of scalars, numbers where the
format has numbers.

At the collector every node's bytes are hostile: a sample is JSON (wire.decode_live) whose
shape nothing has checked, and the view, the rules and the jobs' totals do arithmetic on it
for every node at once.  A string in a counter, a table that is a number, an event that is
not a list would raise there, in the one loop that serves every node (one node stopping
everyone's alerts), or sit in a job's totals and raise at every tick.  So each sample is
checked against the format's own column types on its way in, and what does not fit is left
out (a cell becomes unknown, a row or table that is not rows is dropped); the rest of the
sample is kept, and the first problem is said, for the node's offences.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from para.formats.schema import TABLES
from para.live.metrics import LAYOUTS

_NONE = type(None)
_SCALARS = frozenset({_NONE, bool, int, float, str})
_NUMBERS = frozenset({_NONE, int, float})


Spec = tuple[int, tuple[int, ...], Callable[[list[Any]], Any]]


def _kinds() -> dict[str, Spec]:
    """Per table: its row width, where its numeric columns sit, and what picks them out of
    a row as a tuple (in C: the check costs a few microseconds a sample)."""
    out: dict[str, Spec] = {}
    for name, lay in LAYOUTS.items():
        types = {c.name: c.type for c in TABLES[name].columns}
        numeric = tuple(i for i, c in enumerate(lay.cols) if types.get(c) in ("int", "float"))
        pick = operator.itemgetter(*numeric, *numeric)  # two or more: always a tuple
        out[name] = (len(lay.cols), numeric, pick if numeric else (lambda r: ()))
    return out


_TABLES = _kinds()


def well_formed(rows: Any) -> tuple[dict[str, Any] | None, str | None]:
    """(the sample as the live path may use it, or None if nothing of it is usable; the first
    problem found, or None).  A sample with nothing wrong is returned as it is, not copied.
    Rows of another width are left out too (another para version's: the view has never
    guessed at them), and said."""
    if type(rows) is not dict:
        return None, f"a sample is a {type(rows).__name__}, not an object of tables"
    problem: str | None = None
    out = rows
    for name, table in rows.items():
        if name == "events":
            if type(table) is list and all(
                type(e) is list and _SCALARS.issuperset(map(type, e)) for e in table
            ):
                continue
            keep = (
                [e for e in table if type(e) is list and _SCALARS.issuperset(map(type, e))]
                if type(table) is list
                else []
            )
            problem = problem or "events: not a list of events of plain values"
        else:
            spec = _TABLES.get(name)
            if spec is None:
                continue  # a table the view does not know: nothing reads it
            got = _table(name, table, spec)
            if got is None:
                continue
            keep, why = got
            problem = problem or why
        if out is rows:
            out = dict(rows)
        out[name] = keep
    return out, problem


def _table(name: str, table: Any, spec: Spec) -> tuple[list[Any], str] | None:
    """None when `table` is fine as it is; else (what of it is usable, what was wrong)."""
    if type(table) is not list:
        return [], f"table {name!r} is a {type(table).__name__}, not a list of rows"
    width, numeric, pick = spec
    scalars, numbers = _SCALARS.issuperset, _NUMBERS.issuperset
    if all(
        type(r) is list
        and len(r) == width
        and scalars(map(type, r))
        and numbers(map(type, pick(r)))
        for r in table
    ):
        return None
    keep: list[Any] = []
    why = ""
    numeric_at = frozenset(numeric)
    for k, r in enumerate(table):
        if type(r) is not list:
            why = why or f"table {name!r} row {k} is a {type(r).__name__}, not a list"
            continue
        if len(r) != width:
            why = why or (
                f"table {name!r} row {k} has {len(r)} values, this collector's format "
                f"{width} (another para version?)"
            )
            continue
        fixed = None
        for i, v in enumerate(r):
            t = type(v)
            if t not in _SCALARS or (i in numeric_at and t not in _NUMBERS):
                if fixed is None:
                    fixed = list(r)
                fixed[i] = None
                col = LAYOUTS[name].cols[i]
                why = why or f"table {name!r} row {k} column {col!r}: {t.__name__} {str(v)[:40]!r}"
        keep.append(r if fixed is None else fixed)
    return keep, why
