"""`para fold`: perf script output -> folded stacks, as FlameGraph's stackcollapse-perf.pl.

The output is byte for byte the reference's ("stack count" lines sorted by their bytes), so
it feeds flamegraph.pl, speedscope or inferno unchanged; `para` itself stores the per-second
form (`fold_timed`) next to the other metrics.
"""

from __future__ import annotations

import mmap
import os
import sys
from contextlib import contextmanager

from para.cython_ext import load
from para.errors import ParaError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs `para fold` start-up time
    from collections.abc import Iterator
    from typing import Any, BinaryIO

READ_HINT = "give the file `perf script` wrote, or - (the default) to read standard input"


def map_whole(fd: int) -> mmap.mmap:
    """The file mapped read-only, its pages read in by the kernel at once (MAP_POPULATE):
    faulting them in one by one while scanning costs as much as the folding itself."""
    populate = getattr(mmap, "MAP_POPULATE", 0)
    if populate:
        return mmap.mmap(fd, 0, flags=mmap.MAP_SHARED | populate, prot=mmap.PROT_READ)
    return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)


@contextmanager
def opened_input(path: str) -> Iterator[bytes | mmap.mmap]:
    """The whole input: the file at `path` (mapped, not copied: the kernel scans it in place),
    or standard input for '-'."""
    if path == "-":
        yield sys.stdin.buffer.read()
        return
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below, after the mapping)
    except FileNotFoundError:
        raise ParaError(f"para fold: {path}: no such file", hint=READ_HINT) from None
    except OSError as e:  # a directory, no permission
        raise ParaError(
            f"para fold: cannot read {path}: {e.strerror or e}", hint=READ_HINT
        ) from None
    with f:
        try:
            mapped: mmap.mmap | None = map_whole(f.fileno())
        except (ValueError, OSError):  # empty, or not a regular file (a pipe, /dev/null)
            mapped = None
        if mapped is None:
            try:
                data = f.read()
            except OSError as e:
                raise ParaError(
                    f"para fold: cannot read {path}: {e.strerror or e}", hint=READ_HINT
                ) from None
            yield data
            return
        try:
            yield mapped
        finally:
            mapped.close()


def render(folded: dict[str, int]) -> bytes:
    """The reference's output: one "stack count" line per stack, sorted by bytes (Perl's
    `sort`), so that names that are not UTF-8 keep their bytes and their place."""
    items = sorted((k.encode("utf-8", "surrogateescape"), n) for k, n in folded.items())
    return b"".join(b"%s %d\n" % item for item in items)


def fold_text(
    data: bytes | mmap.mmap,
    *,
    pid: bool = False,
    tid: bool = False,
    kernel: bool = False,
    jit: bool = False,
    addrs: bool = False,
    event_filter: str | None = None,
    jobs: int = 1,
) -> bytes:
    """What `para fold` prints for `data`, folded by up to `jobs` processes (fold_parts)."""
    options = dict(pid=pid, tid=tid, kernel=kernel, jit=jit, addrs=addrs, event_filter=event_filter)
    if jobs > 1:
        from para.analyzer import fold_parts

        return render(fold_parts.fold(data, jobs, **options))
    return render(load("fold").fold(data, **options))


def _write(out: BinaryIO, text: bytes) -> None:
    try:
        out.write(text)
        out.flush()
    except BrokenPipeError:
        # `para fold x | head`: the reader has gone; stop quietly, as the reference does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


FLAGS = ("pid", "tid", "kernel", "jit", "all", "addrs")


def _click_command() -> Any:
    """The click command (help, usage errors); built when first asked for, so that a plain
    `para fold FILE` starts without loading click."""
    import click

    @click.command("fold")
    @click.option("--pid", is_flag=True, help="Append the PID to process names (name-PID).")
    @click.option("--tid", is_flag=True, help="Append PID and TID to process names (name-PID/TID).")
    @click.option("--kernel", is_flag=True, help="Mark kernel frames with _[k].")
    @click.option("--jit", is_flag=True, help="Mark JIT frames (/tmp/perf-PID.map) with _[j].")
    @click.option("--all", "all_", is_flag=True, help="Both --kernel and --jit.")
    @click.option("--addrs", is_flag=True, help="Keep raw addresses of unknown symbols.")
    @click.option(
        "--event-filter",
        metavar="EVENT",
        default=None,
        help="Keep samples of this event only (default: the first event seen).",
    )
    @click.option(
        "--jobs",
        "-j",
        type=click.IntRange(min=1),
        default=None,
        help="Fold on up to N processes (default: the CPUs para may run on; 1 for one).",
        metavar="N",
    )
    @click.argument("file", default="-", metavar="[FILE]")
    def fold_command(
        pid: bool,
        tid: bool,
        kernel: bool,
        jit: bool,
        all_: bool,
        addrs: bool,
        event_filter: str | None,
        jobs: int | None,
        file: str,
    ) -> None:
        """Fold `perf script` output (FILE, or - for standard input) into "stack count" lines,
        exactly as FlameGraph's stackcollapse-perf.pl does.

        \b
        Example:
          perf record -g -F 999 ./app && perf script | para fold > app.folded
        """
        run(file, pid=pid, tid=tid, kernel=kernel or all_, jit=jit or all_, addrs=addrs,
            event_filter=event_filter, jobs=jobs)  # fmt: skip

    return fold_command


_COMMAND: Any = None


def __getattr__(name: str) -> Any:
    global _COMMAND
    if name == "fold_command":
        if _COMMAND is None:
            _COMMAND = _click_command()
        return _COMMAND
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run(file: str, jobs: int | None = None, **options: Any) -> None:
    """Fold FILE (- for standard input) and print the result; on up to `jobs` processes
    (default: the CPUs this process may run on)."""
    if jobs is None:
        from para.analyzer.fold_parts import usable_cpus

        jobs = usable_cpus()
    with opened_input(file) as data:
        text = fold_text(data, jobs=jobs, **options)
    _write(sys.stdout.buffer, text)


def plain_args(argv: list[str]) -> dict[str, Any] | None:
    """The options of a plain command line (the flags, --event-filter, --jobs, one FILE), or
    None for anything else (--help, a mistake ...), which click then reads and answers."""
    opts: dict[str, Any] = {f: False for f in FLAGS}
    opts.update(event_filter=None, jobs=None, file=None)
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--") and a[2:] in FLAGS:
            opts[a[2:]] = True
        elif a == "--event-filter" and i + 1 < len(argv):
            opts["event_filter"] = argv[i + 1]
            i += 1
        elif a.startswith("--event-filter="):
            opts["event_filter"] = a.split("=", 1)[1]
        elif a in ("--jobs", "-j") and i + 1 < len(argv) and _count(argv[i + 1]):
            opts["jobs"] = int(argv[i + 1])
            i += 1
        elif a.startswith("--jobs=") and _count(a.split("=", 1)[1]):
            opts["jobs"] = int(a.split("=", 1)[1])
        elif (a == "-" or not a.startswith("-")) and opts["file"] is None:
            opts["file"] = a
        else:
            return None
        i += 1
    all_ = opts.pop("all")
    opts["kernel"] = opts["kernel"] or all_
    opts["jit"] = opts["jit"] or all_
    opts["file"] = opts["file"] or "-"
    return opts


def _count(text: str) -> bool:
    """Whether `text` is what --jobs takes (a positive integer); click says why not."""
    return text.isdigit() and text.isascii() and int(text) > 0


def main(argv: list[str] | None = None) -> int:
    """Run `para fold` with `argv` (default: the process arguments); the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    plain = plain_args(argv)
    try:
        if plain is not None:
            run(plain.pop("file"), **plain)
            return 0
        return _click_main(argv)
    except ParaError as e:
        print(str(e), file=sys.stderr)
        return e.exit_code


def _click_main(argv: list[str]) -> int:
    import click

    try:
        __getattr__("fold_command").main(args=argv, prog_name="para fold", standalone_mode=False)
    except click.exceptions.Exit as e:  # --help
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
