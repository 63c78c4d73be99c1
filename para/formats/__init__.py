"""The .para file format: the shared language of the agent, collector and analyzer.

The reader and the writer (and with them pyarrow, ~40 MB resident) load on first use:
`para agent` samples with only `schema` and `container` and stays small.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from para.formats.container import FORMAT_VERSION

if TYPE_CHECKING:
    from para.formats.reader import ParaFile, Recovery
    from para.formats.writer import ParaWriter

__all__ = ["FORMAT_VERSION", "ParaFile", "ParaWriter", "Recovery"]


def __getattr__(name: str) -> Any:
    if name in ("ParaFile", "Recovery"):
        from para.formats import reader

        return getattr(reader, name)
    if name == "ParaWriter":
        from para.formats import writer

        return writer.ParaWriter
    raise AttributeError(f"module 'para.formats' has no attribute {name!r}")
