"""A workload with visible phases, bundled for `make demo` and the end-to-end tests.

compute (two processes) -> write and fsync a file -> read it back -> idle -> compute (one
process, growing memory).  Each phase prints its name and duration so a report can be checked
against what really happened.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time


def burn(seconds: float) -> int:
    end = time.monotonic() + seconds
    x = 0
    while time.monotonic() < end:
        for i in range(20000):
            x = (x * 31 + i) % 1000003
    return x


def phase(name: str, fn, *args) -> None:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    fn(*args)
    print(f"phase {name}: {time.monotonic() - t0:.2f} s", flush=True)


def compute_parallel(seconds: float, procs: int) -> None:
    with mp.get_context("fork").Pool(procs) as pool:
        pool.map(burn, [seconds] * procs)


def write_file(path: str, megabytes: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(megabytes):
            f.write(block)
            f.flush()
            os.fsync(f.fileno())


def read_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # read from disk, not the cache
        while os.read(fd, 1 << 20):
            pass
    finally:
        os.close(fd)


def grow_memory(seconds: float, megabytes: int) -> None:
    chunks = []
    end = time.monotonic() + seconds
    step = max(1, megabytes // 20)
    while time.monotonic() < end:
        if len(chunks) * step < megabytes:
            chunks.append(bytearray(step << 20))
        burn(seconds / 20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every phase's length")
    ap.add_argument("--io-mb", type=int, default=200)
    args = ap.parse_args()
    s = args.scale
    with tempfile.TemporaryDirectory(dir=os.environ.get("PARA_DEMO_DIR", ".")) as d:
        path = os.path.join(d, "phases.dat")
        phase("compute", compute_parallel, 4 * s, 2)
        phase("write", write_file, path, max(1, int(args.io_mb * s)))
        phase("read", read_file, path)
    phase("idle", time.sleep, 3 * s)
    phase("memory", grow_memory, 3 * s, 300)


if __name__ == "__main__":
    main()
