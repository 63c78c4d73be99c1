"""Data flows one way through para's parts: agent -> collector -> analyzer, with formats (the
shared language) and cython_ext (kernels) beneath them all, and live (the live stream's
rules and views, used by the agent on its node and by the collector over the cluster)
beneath the agent.  A part imports only the parts
upstream of it; cli.py alone wires them together (docs: the developers' guide)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.no_kernel

PARA = Path(__file__).resolve().parent.parent / "para"

# what each part may import besides itself (para.errors and para.__init__ are shared)
ALLOWED = {
    "formats": {"cython_ext"},
    "cython_ext": set(),
    "live": {"formats", "cython_ext"},
    "agent": {"live", "formats", "cython_ext"},
    "collector": {"agent", "live", "formats", "cython_ext"},
    "analyzer": {"collector", "agent", "live", "formats", "cython_ext"},
    "web": {"collector", "analyzer", "live", "agent", "formats", "cython_ext"},
}


def imported_parts(path: Path) -> set[tuple[str, int]]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "para":
                names = [f"para.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "para" and len(parts) > 1:
                out.add((parts[1], node.lineno))
    return out


def test_the_package_holds_only_the_named_parts():
    found = {p.name for p in PARA.iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert found <= set(ALLOWED), f"para/ has parts outside the layout: {found - set(ALLOWED)}"


def test_each_part_imports_only_what_is_upstream_of_it():
    wrong = []
    for part, allowed in ALLOWED.items():
        for path in sorted((PARA / part).rglob("*.py")):
            for target, line in sorted(imported_parts(path)):
                if target in ("errors", part) or target not in ALLOWED:
                    continue
                if target not in allowed:
                    wrong.append(f"{path.relative_to(PARA.parent)}:{line} imports para.{target}")
    assert not wrong, "imports against the flow of data:\n" + "\n".join(wrong)
