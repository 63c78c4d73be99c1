"""The .para file format: the shared language of the agent, collector and analyzer."""

from para.formats.reader import ParaFile, Recovery
from para.formats.writer import ParaWriter

FORMAT_VERSION = 1

__all__ = ["FORMAT_VERSION", "ParaFile", "ParaWriter", "Recovery"]
