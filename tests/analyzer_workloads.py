"""Small real workloads that each show one bottleneck, for tests/test_analyzer_rules.py.

    python analyzer_workloads.py KIND SECONDS

idle        sleeps
burn        one busy thread (of the machine's cores)
imbalanced  two worker processes, one with four times the work of the other
syncwrite   writes 4 MiB blocks straight to the disk (O_DIRECT | O_DSYNC), as a checkpoint
            writer does; where the filesystem refuses O_DIRECT, buffered writes each followed
            by fsync
grow        allocates and touches memory steadily
stall       works for 40 % of the time, then waits for nothing until the end
meta        creates, stats and deletes small files in a loop
majflt      maps a file dropped from the page cache and touches its pages in random order
script      runs CPU-bound commands one after another, as a shell script does: most of them
            shorter than the sampling interval, every fifth one longer
"""

from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import sys
import tempfile
import time


def burn(seconds: float) -> int:
    end = time.monotonic() + seconds
    x = 0
    while time.monotonic() < end:
        for i in range(20000):
            x = (x * 31 + i) % 1000003
    return x


def imbalanced(seconds: float) -> None:
    ps = [mp.get_context("fork").Process(target=burn, args=(seconds * f,)) for f in (1.0, 0.25)]
    for p in ps:
        p.start()
    for p in ps:
        p.join()


def sync_writer(seconds: float, path: str) -> None:
    # Buffered 64 KiB writes with fsync spend most of their time copying into the page cache
    # and waking up on a fast disk (state D in a third of the looks, a fifth beside CPU hogs);
    # 4 MiB written past the cache keep the process waiting on the device in about 70 %.
    size = 4 << 20
    block = mmap.mmap(-1, size)  # page-aligned, as O_DIRECT wants
    block.write(os.urandom(size))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_DIRECT | os.O_DSYNC, 0o600)
    except OSError:  # tmpfs and a few others
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        direct = False
    else:
        direct = True
    end = time.monotonic() + seconds
    n = 0
    try:
        while time.monotonic() < end:
            os.pwrite(fd, block, (n % 16) * size)
            if not direct:
                os.fsync(fd)
            n += 1
    finally:
        os.close(fd)


def grow(seconds: float, megabytes: int = 400) -> None:
    chunks = []
    steps = 40
    for _ in range(steps):
        chunks.append(bytearray(b"\x01") * ((megabytes << 20) // steps))
        time.sleep(seconds / steps)


def stall(seconds: float) -> None:
    burn(0.4 * seconds)
    time.sleep(0.6 * seconds)


def metadata(seconds: float, d: str) -> None:
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        p = os.path.join(d, f"f{i % 200}")
        open(p, "w").close()  # noqa: SIM115
        os.stat(p)
        os.unlink(p)
        i += 1


def majflt(seconds: float, path: str, megabytes: int = 64) -> None:
    with open(path, "wb") as f:
        f.write(os.urandom(megabytes << 20))
    pages = list(range(0, megabytes << 20, mmap.PAGESIZE))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # out of the page cache
        m = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        m.madvise(mmap.MADV_RANDOM)  # no read-ahead: every page is a major fault
        total = 0
        for off in pages[::-1]:
            total += m[off]
        m.close()
        os.close(fd)


def script(seconds: float) -> None:
    import subprocess

    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        busy = 1.5 if i % 5 == 4 else 0.15
        code = f"import time\nend = time.monotonic() + {busy}\nwhile time.monotonic() < end: pass"
        subprocess.run([sys.executable, "-S", "-c", code], check=True)
        i += 1


def main() -> None:
    kind, seconds = sys.argv[1], float(sys.argv[2])
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as d:
        {
            "idle": lambda: time.sleep(seconds),
            "burn": lambda: burn(seconds),
            "imbalanced": lambda: imbalanced(seconds),
            "syncwrite": lambda: sync_writer(seconds, os.path.join(d, "f")),
            "grow": lambda: grow(seconds),
            "stall": lambda: stall(seconds),
            "meta": lambda: metadata(seconds, d),
            "majflt": lambda: majflt(seconds, os.path.join(d, "m")),
            "script": lambda: script(seconds),
        }[kind]()


if __name__ == "__main__":
    main()
