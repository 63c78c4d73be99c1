"""Every Cython kernel is built, current, and the one para runs (unless PARA_PURE_PYTHON=1).

`load(name)` falls back to the pure-Python twin when a kernel is not built, so a broken build
would otherwise go unnoticed: the twin tests would compare the twin with itself and para would
run at the twin's speed.  `make test` runs the same check (`make kernels`) before the suite.
"""

from __future__ import annotations

import ast
import inspect
import os
from pathlib import Path

import pytest

import para.cython_ext as ext
from para.cython_ext import load

from .conftest import REPO, compiled_kernel

KERNELS = sorted(p.stem[1:] for p in (REPO / "para" / "cython_ext").glob("_*.pyx"))
PURE = os.environ.get("PARA_PURE_PYTHON", "") not in ("", "0")


def test_the_kernels_are_those_of_the_source_tree():
    assert KERNELS == ["changepoint", "fold", "procparse", "procread", "rates"]
    for name in KERNELS:  # each kernel has its twin and its one description
        assert (REPO / "para" / "cython_ext" / f"{name}_py.py").is_file(), name
        assert (REPO / "para" / "cython_ext" / f"_{name}.pyi").is_file(), name


def test_every_kernel_is_built_from_its_current_source():
    missing = ext.unbuilt()
    assert missing == [], f"run `make venv` to build the Cython kernels: {missing}"
    for name in KERNELS:
        mod = compiled_kernel(name)
        so = Path(str(mod.__file__))
        assert so.parent == REPO / "para" / "cython_ext" and so.name.startswith(f"_{name}.")


@pytest.mark.parametrize("name", KERNELS)
def test_the_kernel_para_runs(name):
    """The default choice is the compiled kernel; PARA_PURE_PYTHON=1 forces the twin."""
    mod = load(name)
    if PURE:
        assert mod.__name__ == f"para.cython_ext.{name}_py"
        assert ext.implementation() == "python (PARA_PURE_PYTHON=1)"
    else:
        assert mod is compiled_kernel(name)
        assert ext.implementation() == "cython"


def described(name: str) -> dict[str, list[str]]:
    """The functions the kernel's .pyi describes, with their parameters' names."""
    tree = ast.parse((REPO / "para" / "cython_ext" / f"_{name}.pyi").read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            a = node.args
            out[node.name] = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    return out


@pytest.mark.parametrize("name", KERNELS)
def test_kernel_and_twin_have_the_described_functions(name):
    cy, py = compiled_kernel(name), load(name, pure=True)
    assert cy is not py
    funcs = described(name)
    assert funcs, f"_{name}.pyi describes no function"
    for f, params in funcs.items():
        for mod in (cy, py):
            sig = inspect.signature(getattr(mod, f))
            assert list(sig.parameters) == params, (mod.__name__, f)
        kinds = [
            [p.kind for p in inspect.signature(getattr(m, f)).parameters.values()] for m in (cy, py)
        ]
        assert kinds[0] == kinds[1], f
