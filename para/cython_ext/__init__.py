"""Cython kernels and their pure-Python twins; this module alone chooses between them.

Each kernel `_NAME` (compiled from `_NAME.pyx`) has a twin `NAME_py` with the same functions
and signatures (described once, in `_NAME.pyi`).  `PARA_PURE_PYTHON=1` forces the twins; a
kernel that was not built falls back to its twin and `BUILT` says so.
"""

from __future__ import annotations

import importlib
import importlib.machinery
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


def compiled(name: str) -> ModuleType | None:
    """The compiled kernel `name` (never its twin), or None when it is not built."""
    try:
        mod = importlib.import_module(f"para.cython_ext._{name}")
    except ImportError:
        return None
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return mod if str(getattr(mod, "__file__", "")).endswith(suffixes) else None


def unbuilt() -> list[str]:
    """Kernels of this source tree (one per _NAME.pyx) whose compiled module is missing or
    older than its source, each with why: `make venv` builds them."""
    from pathlib import Path  # here: `para fold`'s start-up does not need it

    out = []
    for pyx in sorted(Path(__file__).parent.glob("_*.pyx")):
        name = pyx.stem[1:]
        mod = compiled(name)
        if mod is None:
            out.append(f"{name} (not built)")
        elif Path(str(mod.__file__)).stat().st_mtime < pyx.stat().st_mtime:
            out.append(f"{name} (older than {pyx.name})")
    return out
