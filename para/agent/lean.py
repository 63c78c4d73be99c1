"""Keep pyarrow out of the agent's sampling process.

About 60 MB of resident memory (pyarrow 26; 77 MB with pyarrow.flight and cryptography) that a
node agent holding a 64 MB budget cannot spend on code it only needs now and then: to turn a
journal into Parquet (a short-lived child does it, see para/agent/finalize.py) and to send
segments to the collector (a sender child holds the Flight client, see para/agent/sender.py).
`para.formats` loads its reader and writer (and pyarrow) lazily, so the agent's process only
ever imports the schema and the container; this module says whether that still holds.
"""

from __future__ import annotations

import sys


def heavy_modules_loaded() -> list[str]:
    """Which of the big libraries this process has imported (for status and tests)."""
    heavy = ("pyarrow", "duckdb", "pandas", "numpy", "cryptography", "grpc")
    return [m for m in heavy if m in sys.modules]
