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

from para.agent.perfrecord import instruction_rows
from para.analyzer.job import Job
from para.formats.schema import catalogue

TOP_FUNCTIONS = 5
TOP_INSTRUCTIONS = 12
# The table's catalogue entries, and the parser `para profile --functions` keeps them with.
CATALOGUE = catalogue(["instr_samples"])
rows_from_script = instruction_rows


def _symbol(dso: str, name: str) -> tuple[int, int] | None:
    """Address and size of a function in an ELF file: its symbol table, then the dynamic."""
    for args in (["nm", "--defined-only", "-S", dso], ["nm", "-D", "--defined-only", "-S", dso]):
        try:
            out = subprocess.run(args, capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            return None
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[3] == name and parts[2] in "tTwWiI":
                return int(parts[0], 16), int(parts[1], 16)
    return None


def disassemble(dso: str, name: str) -> tuple[list[tuple[int, str]], str | None]:
    """[(offset, instruction text)] of a function, or ([], why not)."""
    path = Path(dso)
    if not dso.startswith("/") or not path.is_file():
        return [], f"{dso} is not there any more (or is not a file): offsets only"
    if shutil.which("objdump") is None or shutil.which("nm") is None:
        return [], "objdump and nm (binutils) are not installed: offsets only"
    sym = _symbol(dso, name)
    if sym is None:
        return [], f"{name} is not in the symbol tables of {dso} (stripped?): offsets only"
    addr, size = sym
    try:
        out = subprocess.run(
            ["objdump", "-d", "--no-show-raw-insn", f"--start-address={addr:#x}",
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


def annotate(job: Job, hotspots: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-instruction shares for the hottest functions that have instruction samples."""
    if not job.has("instr"):
        reason = ("no per-instruction samples in the recording (they are kept by `para profile "
                  "--functions` when it records the instr_samples table)")  # fmt: skip
        return {"functions": [], "reason": reason}
    funcs = []
    hot_names = [h["function"] for h in hotspots if h["self_samples"] > 0]
    rows = job.query(
        "SELECT symbol, dso, sum(samples) AS n FROM instr GROUP BY symbol, dso "
        "ORDER BY n DESC, symbol, dso"
    )
    order = sorted(rows, key=lambda r: (hot_names.index(r[0]) if r[0] in hot_names else 10**6,
                                        -r[2], r[0], r[1]))  # fmt: skip
    for symbol, dso, total in order[:TOP_FUNCTIONS]:
        per = job.query(
            'SELECT "offset", sum(samples) FROM instr WHERE symbol = ? AND dso = ? '
            'GROUP BY "offset" ORDER BY 2 DESC, 1',
            [symbol, dso],
        )
        code, why = disassemble(str(dso), str(symbol))
        text = dict(code)
        lines = [
            {
                "offset": int(off),
                "instruction": text.get(int(off)),
                "samples": int(n),
                "pct": round(100.0 * n / total, 2) + 0.0,
            }
            for off, n in per[:TOP_INSTRUCTIONS]
        ]
        funcs.append({
            "function": str(symbol), "dso": str(dso), "samples": int(total),
            "disassembled": why is None, "reason": why, "instructions": lines,
        })  # fmt: skip
    return {"functions": funcs, "reason": None if funcs else "no instruction samples"}
