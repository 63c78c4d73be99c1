"""para: a per-second performance monitor and analyzer for HPC and AI clusters."""

__version__ = "0.1.0"
