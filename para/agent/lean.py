"""Keep pyarrow out of the agent's sampling process.

About 40 MB of resident memory that a node agent holding a 64 MB budget cannot spend on code
it only needs once an hour, to turn a journal into Parquet (which it does in a short-lived
child, see para/agent/finalize.py).  `para.formats` loads its reader and writer (and
pyarrow) lazily, so the sampling process only ever imports the schema and the container;
this module says whether that still holds.
"""

from __future__ import annotations

import sys


def heavy_modules_loaded() -> list[str]:
    """Which of the big libraries this process has imported (for status and tests)."""
    return [m for m in ("pyarrow", "duckdb", "pandas", "numpy") if m in sys.modules]
