"""The instruction dimension: where inside the hottest functions the samples fell.

What `perf annotate` shows needs two things: the address of every sample inside its
function, and the function's machine code.  A .para file keeps the first in the optional
table `instr_samples` (leaf frame of each sample: pid, DSO, symbol, offset, samples), made at
profile time from the same `perf script` run that gives the call stacks (`rows_from_script`;
add `symoff` to its fields).  The machine code is read at report time with objdump from the
DSO, if it is still there and still the same file: per-instruction shares are then exactly
what perf annotate prints for these samples.  When the binary is gone or changed, the
offsets and their shares are still shown, and the report says why there is no disassembly.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from para.agent import binaries
from para.agent.perfrecord import instruction_rows
from para.analyzer.job import Job
from para.formats.schema import catalogue

TOP_FUNCTIONS = 5
TOP_INSTRUCTIONS = 12
# The table's catalogue entries, and the parser `para profile --functions` keeps them with.
CATALOGUE = catalogue(["instr_samples"])
rows_from_script = instruction_rows


def _nm(args: list[str]) -> list[tuple[int, int, str]]:
    """(address, size, name) of the defined functions nm lists."""
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    found = []
    for line in out.splitlines():
        # "addr size type name": a demangled name may hold spaces
        parts = line.split(maxsplit=3)
        if len(parts) == 4 and parts[2] in ("t", "T", "w", "W", "i", "I"):
            try:
                found.append((int(parts[0], 16), int(parts[1], 16), parts[3]))
            except ValueError:
                continue
    return found


def _bare(name: str) -> str:
    """A demangled name without its parameter list (and const/ABI tags after it)."""
    depth = 0
    for i, ch in enumerate(name):
        if ch in "<[":
            depth += 1
        elif ch in ">]":
            depth -= 1
        elif ch == "(" and depth == 0 and i > 0 and not name.startswith("(anonymous", i):
            return name[:i]
    return name


def _symbol(dso: str, name: str) -> tuple[int, int] | None:
    """Address and size of a function in an ELF file: its symbol table, then the dynamic.
    perf prints C++ and Rust names demangled: they are compared with nm's demangled names
    (-C), then with the raw ones, then without parameter lists when only one function has
    that name."""
    for dynamic in ([], ["-D"]):
        for demangle in (["-C"], []):
            syms = _nm(["nm", *dynamic, *demangle, "--defined-only", "-S", dso])
            exact = [(a, sz) for a, sz, n in syms if n == name]
            if exact:
                return exact[0]
            if demangle:
                bare = _bare(name)
                loose = {(a, sz) for a, sz, n in syms if _bare(n) == bare}
                if len(loose) == 1:
                    return loose.pop()
    return None


def disassemble(
    dso: str, name: str, recorded: dict[str, Any] | None = None
) -> tuple[list[tuple[int, str]], str | None]:
    """[(offset, instruction text)] of a function, or ([], why not).  `recorded` is the
    binary's identity when it ran (build id, size, mtime): a binary that has changed since
    is not disassembled, its code is not the code that was sampled."""
    path = Path(dso)
    if dso.startswith("[kernel"):
        return [], "kernel code (perf names no file for it): offsets only"
    if dso == "inlined":  # perf named no function holding it (or an older para's row)
        return [], f"{name} was inlined into a function perf did not name: offsets only"
    if not dso.startswith("/") or not path.is_file():
        return [], f"{dso} is not there any more (or is not a file): offsets only"
    changed = binaries.differs(recorded, binaries.identity(dso))
    if changed:
        return [], f"{dso} is not the binary that ran ({changed}): offsets only"
    if shutil.which("objdump") is None or shutil.which("nm") is None:
        return [], "objdump and nm (binutils) are not installed: offsets only"
    sym = _symbol(dso, name)
    if sym is None:
        return [], f"{name} is not in the symbol tables of {dso} (stripped?): offsets only"
    addr, size = sym
    try:
        out = subprocess.run(
            ["objdump", "-d", "-C", "--no-show-raw-insn", f"--start-address={addr:#x}",
             f"--stop-address={addr + size:#x}", dso],
            capture_output=True, text=True, timeout=60,
        ).stdout  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        return [], f"objdump failed on {dso}: {e}"
    lines = []
    for line in out.splitlines():
        m = re.match(r"^\s*([0-9a-f]+):\s+(.*\S)\s*$", line)
        if m:
            lines.append((int(m.group(1), 16) - addr, m.group(2)))
    if not lines:
        return [], f"objdump found no code for {name} in {dso}"
    return lines, None


def _recorded_binaries(job: Job) -> dict[str, dict[str, Any]]:
    """The identity of each binary when it ran, as the recordings kept it (first wins)."""
    out: dict[str, dict[str, Any]] = {}
    for n in job.nodes:
        for dso, ident in ((n.meta.get("functions") or {}).get("binaries") or {}).items():
            out.setdefault(dso, ident)
    # the agent's rows carry the build id themselves (issue 13: a job of the database)
    for dso, bid in job.query(
        "SELECT dso, max(build_id) FROM instr WHERE build_id IS NOT NULL GROUP BY dso"
    ):
        out.setdefault(str(dso), {"build_id": str(bid)})
    return out


def annotate(job: Job) -> dict[str, Any]:
    """Per-instruction shares for the functions with the most instruction samples: the
    functions whose code ran, as `perf annotate` ranks them.  (Not the hottest functions of
    the call stacks: those name inlined functions, whose code is their holder's; ranked by
    them, `make demo` showed five kernel functions of 18-201 samples and none of
    libpython's 287-591, all of whose samples were in code inlined into them.)"""
    if not job.has("instr"):
        reason = ("no per-instruction samples in the recording (they are kept by `para profile "
                  "--functions` when it records the instr_samples table)")  # fmt: skip
        return {"functions": [], "reason": reason}
    funcs = []
    recorded = _recorded_binaries(job)
    rows = job.query(
        "SELECT symbol, dso, sum(samples) AS n FROM instr GROUP BY symbol, dso "
        "ORDER BY n DESC, symbol, dso LIMIT ?",
        [TOP_FUNCTIONS],
    )
    for symbol, dso, total in rows:
        per = job.query(
            'SELECT "offset", sum(samples) FROM instr WHERE symbol = ? AND dso = ? '
            'GROUP BY "offset" ORDER BY 2 DESC, 1 NULLS FIRST',
            [symbol, dso],
        )
        code, why = disassemble(str(dso), str(symbol), recorded.get(str(dso)))
        text = dict(code)
        # samples perf could place at no offset (no symbol, or none printed) are counted in
        # the function's total and shown as one line without an offset
        lines = [
            {
                "offset": None if off is None else int(off),
                "instruction": None if off is None else text.get(int(off)),
                "samples": int(n),
                "pct": round(100.0 * n / total, 2) + 0.0,
            }
            for off, n in per[:TOP_INSTRUCTIONS]
        ]
        unplaced = sum(int(n) for off, n in per if off is None)
        funcs.append({
            "function": str(symbol), "dso": str(dso), "samples": int(total),
            "build_id": (recorded.get(str(dso)) or {}).get("build_id"),
            "unplaced_samples": unplaced,
            "disassembled": why is None, "reason": why, "instructions": lines,
        })  # fmt: skip
    return {"functions": funcs, "reason": None if funcs else "no instruction samples"}
