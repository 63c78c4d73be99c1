"""Keep pyarrow out of the agent's sampling process.

`para/formats/__init__.py` imports the reader and the writer, and with them pyarrow: about
40 MB of resident memory that a node agent holding a 64 MB budget cannot spend on code it
only needs once an hour, to turn a journal into Parquet (which it does in a short-lived child,
see para/agent/finalize.py).  The agent needs two small modules of the format from the
sampling process: the schema (the samplers' tables) and the container (one journal member
per write).  Neither imports anything heavy, so they are loaded here straight from their
files, registered under their own names, before any sampler is imported.

If `para.formats` is already imported (tests, or a process that reads files), this does
nothing: the modules are then the package's own.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

LEAN_MODULES = ("schema", "container")


def preload() -> None:
    """Load para.formats.schema and .container without the package's __init__."""
    if "para.formats" in sys.modules:
        return
    here = Path(__file__).resolve().parent.parent / "formats"
    for name in LEAN_MODULES:
        full = f"para.formats.{name}"
        if full in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(full, here / f"{name}.py")
        if spec is None or spec.loader is None:  # pragma: no cover - the files ship with para
            raise ImportError(f"cannot load {full} from {here}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        spec.loader.exec_module(module)


def heavy_modules_loaded() -> list[str]:
    """Which of the big libraries this process has imported (for status and tests)."""
    return [m for m in ("pyarrow", "duckdb", "pandas", "numpy") if m in sys.modules]
