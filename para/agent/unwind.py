"""How `perf record` unwinds a command's call stacks, chosen per process.

- fp: frame pointers. Cheapest (a few words per sample), but where code was built without
  them (most distributions' libraries, Open MPI's plugins among them) the callers of a frame
  are `[unknown]` and the time in MPI cannot be tied to the code that called it.
- dwarf: perf copies the top of the user stack with every sample (a bounded number of bytes)
  and unwinds it from the debug frame tables afterwards. Callers are known through code
  without frame pointers, at a higher cost (docs/benchmarks.md, issue 10: slowdown and bytes
  per second of each mode).
- lbr: the CPU's last-branch records (Intel, Haswell on): callers without frame pointers at
  almost no cost, user space only, a bounded depth; only where the CPU has them.

`choose` looks at the command's executable (a script's interpreter) and at the libraries it
links but the C and C++ runtime (an MPI library, libpython behind a thin `python` ...): if
their code keeps frame pointers, fp; else lbr where the CPU has it, else dwarf.  Code whose
frame pointers cannot be told (stripped) gets dwarf, which unwinds either way.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

MODES = ("auto", "fp", "dwarf", "lbr")
DWARF_STACK_BYTES = 8192  # perf's default; issue 10's figures show what less would save
# Linked libraries not looked at: the C and C++ runtime, whose few hot functions (memcpy ...)
# do not decide whether the program's callers are known.
RUNTIME_LIBS = re.compile(r"^(libc|libm|libdl|libpthread|librt|libutil|libgcc_s|libstdc\+\+|"
                          r"ld-linux[^.]*|libresolv|libcrypt)\.so")  # fmt: skip
# Share of functions that set up a frame pointer: 50-100 % in code built with them (leaf
# functions may go without), under 5 % in code built without.
FP_SHARE = 0.3
_MOV_RSP_RBP = (b"\x48\x89\xe5", b"\x48\x8b\xec")
_STT_FUNC = 2


@dataclass
class Choice:
    mode: str  # fp | dwarf | lbr
    why: str
    stack_bytes: int | None = None  # dwarf: bytes of user stack copied per sample

    def perf_args(self) -> list[str]:
        if self.mode == "dwarf":
            return ["--call-graph", f"dwarf,{self.stack_bytes or DWARF_STACK_BYTES}"]
        if self.mode == "lbr":
            return ["--call-graph", "lbr"]
        return ["--call-graph", "fp"]

    def as_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"call_graph": self.mode, "call_graph_why": self.why}
        if self.stack_bytes:
            d["dwarf_stack_bytes"] = self.stack_bytes
        return d


class _Elf:
    """Just enough of an x86-64 ELF file: its sections, function symbols and DT_NEEDED."""

    def __init__(self, data: bytes):
        if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            raise ValueError("not a 64-bit little-endian ELF file")
        self.data = data
        self.machine = struct.unpack_from("<H", data, 18)[0]
        shoff = struct.unpack_from("<Q", data, 40)[0]
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 58)
        self.sections = []
        for i in range(shnum):
            name, typ, _, addr, off, size, link, _, _, entsize = struct.unpack_from(
                "<IIQQQQIIQQ", data, shoff + i * shentsize
            )
            self.sections.append((name, typ, addr, off, size, link, entsize))
        strtab = self.sections[shstrndx] if shstrndx < len(self.sections) else None
        self.names = [self._str(strtab, s[0]) if strtab else "" for s in self.sections]

    def _str(self, sec: tuple[int, ...], off: int) -> str:
        start = sec[3] + off
        end = self.data.index(b"\0", start)
        return self.data[start:end].decode(errors="replace")

    def section(self, name: str) -> tuple[int, ...] | None:
        for n, s in zip(self.names, self.sections, strict=True):
            if n == name:
                return s
        return None

    def functions(self, limit: int = 4000) -> list[bytes]:
        """The first 64 bytes of up to `limit` defined functions (symtab, else dynsym)."""
        out: list[bytes] = []
        for table in (".symtab", ".dynsym"):
            sym = self.section(table)
            if sym is None:
                continue
            _, _, _, off, size, _, entsize = sym
            for i in range(0, size // max(entsize, 24)):
                _, info, _, shndx, value, fsize = struct.unpack_from(
                    "<IBBHQQ", self.data, off + i * 24
                )
                if info & 0xF != _STT_FUNC or fsize < 16 or shndx == 0 or shndx >= 0xFF00:
                    continue
                sec = self.sections[shndx]
                pos = sec[3] + value - sec[2]
                if 0 <= pos < len(self.data) - 8:
                    out.append(self.data[pos : pos + min(fsize, 64)])
                if len(out) >= limit:
                    return out
            if out:
                return out
        return out

    def dynamic(self, wanted: int) -> list[str]:
        """The strings of one tag of the dynamic section (DT_NEEDED 1, DT_RPATH 15,
        DT_RUNPATH 29)."""
        dyn, dynstr = self.section(".dynamic"), self.section(".dynstr")
        if dyn is None or dynstr is None:
            return []
        out = []
        for i in range(dyn[4] // 16):
            tag, val = struct.unpack_from("<qQ", self.data, dyn[3] + i * 16)
            if tag == 0:
                break
            if tag == wanted:
                out.append(self._str(dynstr, val))
        return out


def _has_fp_prologue(head: bytes) -> bool:
    """`mov %rsp,%rbp` near the start: compilers schedule other instructions into the
    prologue and shrink-wrap it after an early return, so it is looked for, not matched."""
    return any(m in head for m in _MOV_RSP_RBP)


def frame_pointer_share(path: str | os.PathLike[str]) -> float | None:
    """Share of an x86-64 binary's functions that set up a frame pointer; None when it
    cannot be told (not x86-64 ELF, no symbols)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        elf = _Elf(data)
    except (OSError, ValueError, struct.error, IndexError):
        return None
    if elf.machine != 62:  # EM_X86_64
        return None
    heads = elf.functions()
    if len(heads) < 3:
        return None
    return sum(_has_fp_prologue(h) for h in heads) / len(heads)


def needed_libraries(path: str | os.PathLike[str]) -> list[Path]:
    """The libraries a binary links (DT_NEEDED), where the dynamic loader finds them: its
    RPATH/RUNPATH ($ORIGIN too), LD_LIBRARY_PATH, the common system directories."""
    try:
        with open(path, "rb") as f:
            elf = _Elf(f.read())
        names, paths = elf.dynamic(1), elf.dynamic(15) + elf.dynamic(29)
    except (OSError, ValueError, struct.error, IndexError):
        return []
    origin = str(Path(os.path.realpath(path)).parent)
    dirs = [d.replace("$ORIGIN", origin).replace("${ORIGIN}", origin)
            for p in paths for d in p.split(":") if d]  # fmt: skip
    dirs += [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    dirs += list(_LIB_DIRS)
    out = []
    for n in names:
        found = next((Path(d) / n for d in dirs if (Path(d) / n).exists()), None)
        if found is not None:
            out.append(found)
    return out


_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64", "/lib64",
             "/usr/local/lib", "/usr/lib", "/lib")  # fmt: skip


def program_of(path: str) -> str:
    """The binary that runs a command: a script's interpreter (#!), else the file itself."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return path
    if not head.startswith(b"#!"):
        return path
    words = head[2:].split(b"\n", 1)[0].split()
    if not words:
        return path
    interp = words[0].decode(errors="replace")
    if Path(interp).name == "env" and len(words) > 1:
        found = shutil.which(words[1].decode(errors="replace"))
        return found or interp
    return interp


def cpu_has_lbr(sysfs: str = "/sys/bus/event_source/devices/cpu") -> bool:
    """Intel's LBR call stacks: the core PMU says how many branch records it keeps."""
    try:
        return int(Path(sysfs, "caps", "branches").read_text().strip() or 0) > 0
    except (OSError, ValueError):
        return False


def choose(
    executable: str,
    requested: str = "auto",
    stack_bytes: int = DWARF_STACK_BYTES,
    lbr: bool | None = None,
) -> Choice:
    """The unwinding mode for a command (see the module doc)."""
    if requested == "fp":
        return Choice("fp", "asked for (--call-graph fp)")
    if requested == "dwarf":
        return Choice("dwarf", "asked for (--call-graph dwarf)", stack_bytes)
    if requested == "lbr":
        return Choice("lbr", "asked for (--call-graph lbr)")
    prog = program_of(executable)
    checked = [prog] + [str(p) for p in needed_libraries(prog) if not RUNTIME_LIBS.match(p.name)]
    shares = {Path(p).name: frame_pointer_share(p) for p in checked}
    known = {n: v for n, v in shares.items() if v is not None}
    without = [f"{n} ({100 * v:.0f} % of functions)" for n, v in known.items() if v < FP_SHARE]
    if known and not without:
        return Choice("fp", f"{', '.join(known)} keep frame pointers")
    if without:
        why = "no frame pointers in " + ", ".join(without)
    else:
        why = f"cannot tell whether {', '.join(shares)} keep frame pointers (no symbols)"
    if lbr if lbr is not None else cpu_has_lbr():
        return Choice("lbr", why + "; the CPU has LBR call stacks")
    return Choice("dwarf", why, stack_bytes)


def fallback(choice: Choice, stack_bytes: int = DWARF_STACK_BYTES) -> Choice | None:
    """What to try when perf refuses a mode (LBR needs the hardware cycles event)."""
    if choice.mode == "lbr":
        return Choice("dwarf", choice.why + "; perf could not use LBR", stack_bytes)
    if choice.mode == "dwarf":
        return Choice("fp", choice.why + "; perf could not unwind with dwarf")
    return None
