"""Metric expressions of the alert rules: a small, safe arithmetic over live values.

    gpu.util_gpu                                  a column, per GPU
    100 * job.rss_bytes / memory.mem_total        per job, against a node-wide value
    max(disk.util_pct)                            the busiest disk (one value per host)
    cpu_busy_pct > 90 and host.jobs > 0           host values by name (`host.` optional)

Names are `TABLE.COLUMN` (the tables of docs/para-format.md, counters as per-second rates,
and the derived columns of para.live.metrics.VIRTUAL), `host.NAME` or a bare `NAME` for the
host values (metrics.HOST_METRICS) and the site's own metrics (the `[metrics]` table of a
rules file).  An expression is evaluated once per device of the one table it ranges over
(at most one, outside the aggregates max/min/sum/mean/count), else once per host.

Unknown values (a counter's first sample, a column a device lacks) propagate: `x > 3` with x
unknown is unknown, and a rule neither fires nor clears on it.  Python's `ast` parses; only
the node types listed here are accepted, so nothing else can run.
"""

from __future__ import annotations

import ast
import difflib
import math
import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from para.errors import ParaError
from para.live.metrics import (
    HOST_METRICS,
    LAYOUTS,
    NOT_SERIES,
    Row,
    Snapshot,
    columns,
    unit_of,
)

Fn = Callable[[Snapshot, Row | None], Any]
AGGREGATES = ("max", "min", "sum", "mean", "count")
_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.FloorDiv: operator.floordiv,
}
_CMPOPS: dict[type, Callable[[Any, Any], bool]] = {
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}


class ExprError(ParaError):
    """An expression that cannot be used; the message says where and why."""


@dataclass
class Expr:
    text: str
    table: str | None  # the keyed table it ranges over (None: one value per host)
    fn: Fn
    refs: dict[str, set[str]] = field(default_factory=dict)  # table -> columns it reads
    unit: str = ""
    # a bare name ("host", value) or column (table, column): evaluated without closures
    simple: tuple[str, str] | None = None

    def value(self, snap: Snapshot, row: Row | None = None) -> Any:
        return self.fn(snap, row)

    def series(self, snap: Snapshot) -> Iterator[tuple[Any, Row | None, Any]]:
        """(device key, its row, value) for each device of the table; one item per host."""
        if self.table is None:
            yield (), None, self.fn(snap, None)
            return
        fn = self.fn
        for key, row in snap.tables.get(self.table, {}).items():
            yield key, row, fn(snap, row)


def compile_expr(text: str, user_metrics: dict[str, str] | None = None) -> Expr:
    """Compile `text`; raises ExprError naming what is wrong."""
    c = _Compiler(text, user_metrics or {}, ())
    return c.run()


class _Compiler:
    def __init__(self, text: str, user: dict[str, str], stack: tuple[str, ...]):
        self.text = text
        self.user = user
        self.stack = stack
        self.refs: dict[str, set[str]] = {}
        self.ranges: set[str] = set()

    def fail(self, msg: str) -> ExprError:
        return ExprError(f"{msg} in {self.text!r}")

    def run(self) -> Expr:
        if not isinstance(self.text, str) or not self.text.strip():
            raise ExprError("an empty expression")
        try:
            tree = ast.parse(self.text.strip(), mode="eval")
        except SyntaxError as e:
            raise ExprError(
                f"not an expression ({e.msg}, column {e.offset}): {self.text!r}"
            ) from None
        fn = self.node(tree.body, inside_aggregate=False)
        if len(self.ranges) > 1:
            raise self.fail(
                f"ranges over several tables ({', '.join(sorted(self.ranges))}): aggregate all "
                "but one with max(), min(), sum(), mean() or count()"
            )
        table = next(iter(self.ranges), None)
        unit = ""
        simple = None
        body = tree.body
        if isinstance(body, ast.Attribute) and isinstance(body.value, ast.Name):
            unit = unit_of(body.value.id, body.attr)
            if not (body.value.id == "host" and body.attr in self.user):
                # host.NAME of the site's own [metrics] is an expression, not a value of the
                # node that the column pass could read
                simple = (body.value.id, body.attr)
        elif isinstance(body, ast.Name) and body.id in HOST_METRICS and body.id not in self.user:
            unit = HOST_METRICS[body.id][0]
            simple = ("host", body.id)
        return Expr(self.text, table, fn, self.refs, unit, simple)

    # -- names -----------------------------------------------------------------------------
    def column(self, table: str, col: str, inside_aggregate: bool, into: set[str]) -> Fn:
        if table == "host":
            return self.host_value(col, into)
        lay = LAYOUTS.get(table)
        if lay is None or table in NOT_SERIES:
            known = [t for t in LAYOUTS if t not in NOT_SERIES]
            raise self.fail(f"no table {table!r}{_close(table, [*known, 'host'])}")
        cols = columns(table)
        if col not in cols:
            raise self.fail(f"table {table} has no column {col!r}{_close(col, list(cols))}")
        self.refs.setdefault(table, set()).add(col)
        if not lay.keys:  # one row per host (node, memory)

            def one(snap: Snapshot, row: Row | None) -> Any:
                r = snap.tables.get(table, {}).get(())
                return None if r is None else r.get(col)

            return one
        into.add(table)

        def per_device(snap: Snapshot, row: Row | None) -> Any:
            return None if row is None else row.get(col)

        return per_device

    def host_value(self, name: str, into: set[str]) -> Fn:
        if name in self.user:
            if name in self.stack:
                raise self.fail(f"metric {name!r} is defined in terms of itself")
            sub = _Compiler(self.user[name], self.user, (*self.stack, name))
            try:
                e = sub.run()
            except ExprError as err:
                raise self.fail(f"metric {name!r}: {err.message}") from None
            for t, cs in e.refs.items():
                self.refs.setdefault(t, set()).update(cs)
            if e.table is not None:
                into.add(e.table)
            return e.fn
        if name not in HOST_METRICS:
            raise self.fail(
                f"no metric {name!r}{_close(name, [*HOST_METRICS, *self.user])} (per-device "
                "columns are named TABLE.COLUMN, e.g. gpu.util_gpu)"
            )
        self.refs.setdefault("host", set()).add(name)

        def get(snap: Snapshot, row: Row | None) -> Any:
            return snap.host_values.get(name)

        return get

    # -- nodes -----------------------------------------------------------------------------
    def node(self, n: ast.AST, inside_aggregate: bool, into: set[str] | None = None) -> Fn:
        into = self.ranges if into is None else into
        if isinstance(n, ast.Constant):
            if isinstance(n.value, (int, float, str)) and not isinstance(n.value, complex):
                const = n.value
                return lambda snap, row: const
            raise self.fail(f"constant {n.value!r} is not a number or a string")
        if isinstance(n, ast.Name):
            if n.id in ("true", "True"):
                return lambda snap, row: True
            if n.id in ("false", "False"):
                return lambda snap, row: False
            return self.host_value(n.id, into)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name):
            return self.column(n.value.id, n.attr, inside_aggregate, into)
        if isinstance(n, ast.BinOp) and type(n.op) in _BINOPS:
            op = _BINOPS[type(n.op)]
            a, b = (
                self.node(n.left, inside_aggregate, into),
                self.node(n.right, inside_aggregate, into),
            )

            def binop(snap: Snapshot, row: Row | None) -> Any:
                x = a(snap, row)
                if x is None:
                    return None
                y = b(snap, row)
                if y is None:
                    return None
                try:
                    r = op(x, y)
                except (ZeroDivisionError, OverflowError, TypeError, ValueError):
                    return None
                return r if not isinstance(r, float) or math.isfinite(r) else None

            return binop
        if isinstance(n, ast.UnaryOp):
            a = self.node(n.operand, inside_aggregate, into)
            if isinstance(n.op, ast.USub):
                return lambda snap, row: None if (x := a(snap, row)) is None else -x
            if isinstance(n.op, ast.UAdd):
                return a
            if isinstance(n.op, ast.Not):
                return lambda snap, row: None if (x := a(snap, row)) is None else not x
        if isinstance(n, ast.BoolOp):
            parts = [self.node(v, inside_aggregate, into) for v in n.values]
            if isinstance(n.op, ast.And):

                def all_of(snap: Snapshot, row: Row | None) -> Any:
                    unknown = False
                    for p in parts:
                        x = p(snap, row)
                        if x is None:
                            unknown = True
                        elif not x:
                            return False
                    return None if unknown else True

                return all_of

            def any_of(snap: Snapshot, row: Row | None) -> Any:
                unknown = False
                for p in parts:
                    x = p(snap, row)
                    if x is None:
                        unknown = True
                    elif x:
                        return True
                return None if unknown else False

            return any_of
        if isinstance(n, ast.Compare):
            if not all(type(o) in _CMPOPS for o in n.ops):
                raise self.fail("only the comparisons < <= > >= == != are allowed")
            ops = [_CMPOPS[type(o)] for o in n.ops]
            terms = [self.node(x, inside_aggregate, into) for x in [n.left, *n.comparators]]

            def compare(snap: Snapshot, row: Row | None) -> Any:
                left = terms[0](snap, row)
                if left is None:
                    return None
                for op, t in zip(ops, terms[1:]):
                    right = t(snap, row)
                    if right is None:
                        return None
                    try:
                        if not op(left, right):
                            return False
                    except TypeError:
                        return None
                    left = right
                return True

            return compare
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and not n.keywords:
            return self.call(n.func.id, n.args, inside_aggregate, into)
        raise self.fail(
            f"{type(n).__name__} is not allowed (numbers, names, + - * / ** %, "
            "comparisons, and/or/not, max min sum mean count abs)"
        )

    def call(self, name: str, args: list[ast.expr], inside: bool, into: set[str]) -> Fn:
        if name == "abs" and len(args) == 1:
            a = self.node(args[0], inside, into)
            return lambda snap, row: None if (x := a(snap, row)) is None else abs(x)
        if name in ("max", "min") and len(args) >= 2:
            terms = [self.node(a, inside, into) for a in args]
            pick = max if name == "max" else min

            def scalar(snap: Snapshot, row: Row | None) -> Any:
                vals = [v for t in terms if (v := t(snap, row)) is not None]
                return pick(vals) if vals else None

            return scalar
        if name in AGGREGATES and len(args) == 1:
            if inside:
                raise self.fail(f"{name}() inside another aggregate")
            own: set[str] = set()
            inner = self.node(args[0], True, own)
            if len(own) != 1:
                raise self.fail(
                    f"{name}() needs a per-device value to aggregate (e.g. {name}(disk.util_pct))"
                )
            table = next(iter(own))

            def agg(snap: Snapshot, row: Row | None) -> Any:
                vals = []
                for r in snap.tables.get(table, {}).values():
                    v = inner(snap, r)
                    if v is not None and not isinstance(v, str):
                        vals.append(v)
                if name == "count":
                    return len(vals)
                if not vals:
                    return None
                if name == "max":
                    return max(vals)
                if name == "min":
                    return min(vals)
                total = sum(vals)
                return total if name == "sum" else total / len(vals)

            return agg
        raise self.fail(f"unknown function {name}() (max, min, sum, mean, count, abs)")


def _close(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
