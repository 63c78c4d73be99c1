"""Cython kernels and their pure-Python twins; this module alone chooses between them.

Each kernel `_NAME` (compiled from `_NAME.pyx`) has a twin `NAME_py` with the same functions
and signatures (described once, in `_NAME.pyi`).  `PARA_PURE_PYTHON=1` forces the twins; a
kernel that was not built falls back to its twin and `BUILT` says so.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

PURE_PYTHON = os.environ.get("PARA_PURE_PYTHON", "") not in ("", "0")
BUILT: dict[str, bool] = {}


def load(name: str, *, pure: bool | None = None) -> ModuleType:
    """The implementation of kernel `name` that para uses (or the one asked for)."""
    if pure is None:
        pure = PURE_PYTHON
    if not pure:
        try:
            mod = importlib.import_module(f"para.cython_ext._{name}")
            BUILT[name] = True
            return mod
        except ImportError:
            BUILT[name] = False
    return importlib.import_module(f"para.cython_ext.{name}_py")


def implementation() -> str:
    """'cython' or 'python (PARA_PURE_PYTHON=1)' / 'python (not built)', for reports."""
    if PURE_PYTHON:
        return "python (PARA_PURE_PYTHON=1)"
    return "cython" if all(BUILT.values()) else "python (Cython kernels not built)"
