"""The agent's copy of /proc/kallsyms for `perf script` (the kernel writes the file afresh at
every read: ~60 ms of system time per stacks window here): copied again when the kernel's
modules change or the copy is old, never used when it would name frames wrongly, and perf
names every frame with it exactly as with the kernel's own file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from para.agent.kallsyms import KallsymsCopy

from .conftest import need_tool

# as some kernels list them: per-CPU symbols at zero first
SYMS = ("0000000000000000 A fixed_percpu_data\nffffffff81000000 T _text\n"
        "ffffffff81001000 T do_syscall_64\n")  # fmt: skip
HIDDEN = SYMS.replace("ffffffff8100", "000000000000")


def fake_proc(tmp: Path, kallsyms: str, modules: str = "ext4 1 0 - Live 0x0\n") -> Path:
    proc = tmp / "proc"
    proc.mkdir(exist_ok=True)
    (proc / "kallsyms").write_text(kallsyms)
    (proc / "modules").write_text(modules)
    return proc


def test_copied_once_and_again_when_modules_change(tmp_path):
    proc = fake_proc(tmp_path, SYMS)
    work = tmp_path / "work"
    work.mkdir()
    ks = KallsymsCopy(work, proc=str(proc))
    path = ks.path()
    assert path is not None and Path(path).read_text() == SYMS
    assert Path(path).stat().st_mode & 0o077 == 0  # KASLR's addresses: root's alone
    (proc / "kallsyms").write_text(SYMS + "ffffffff81002000 T new_one\n")
    assert ks.path() == path and Path(path).read_text() == SYMS  # same modules: kept
    (proc / "modules").write_text("ext4 1 0 - Live 0x0\nxfs 2 0 - Live 0x0\n")
    assert Path(ks.path() or "").read_text().endswith("new_one\n")  # a module came: again


def test_copied_again_once_old(tmp_path, monkeypatch):
    proc = fake_proc(tmp_path, SYMS)
    ks = KallsymsCopy(tmp_path, proc=str(proc), refresh_s=60.0)
    path = ks.path()
    (proc / "kallsyms").write_text(SYMS + "ffffffff81003000 T bpf_prog_x\n")
    clock = [ks._taken + 61.0]
    monkeypatch.setattr("para.agent.kallsyms.time.monotonic", lambda: clock[0])
    assert Path(ks.path() or "").read_text().endswith("bpf_prog_x\n") and ks.path() == path


def test_no_copy_of_hidden_or_unreadable_symbols(tmp_path):
    """Addresses hidden (kptr_restrict) or no file: perf reads the kernel's own, as before."""
    assert KallsymsCopy(tmp_path, proc=str(fake_proc(tmp_path, HIDDEN))).path() is None
    assert KallsymsCopy(tmp_path, proc=str(tmp_path / "nothing")).path() is None
    assert list(tmp_path.glob("kallsyms*")) == []


BUSY_KERNEL = """
import os, time
end = time.monotonic() + 1.5
with open("/dev/zero", "rb", buffering=0) as z:
    while time.monotonic() < end:
        z.read(65536)
        os.getppid()
"""


def test_perf_names_kernel_frames_alike_with_the_copy(tmp_path):
    """The same perf.data (the whole node, kernel stacks of a program in syscalls) through
    `perf script` with the kernel's file and with the copy: the same text, line for line."""
    perf = need_tool("perf", "apt install linux-perf")
    data = tmp_path / "perf.data"
    rec = subprocess.run([perf, "record", "-q", "-a", "-g", "-F", "199", "-o", str(data),
                          "--no-buildid-cache", "--no-buildid", "--", sys.executable, "-c",
                          BUSY_KERNEL], capture_output=True, text=True)  # fmt: skip
    assert rec.returncode == 0, rec.stderr
    copy = KallsymsCopy(tmp_path).path()
    assert copy is not None, "this machine hides kernel addresses from root"
    fields = ["-F", "comm,pid,tid,time,event,ip,sym,symoff,dso", "--no-demangle", "--no-inline"]
    own = subprocess.run([perf, "script", "-i", str(data), *fields], capture_output=True)
    cached = subprocess.run([perf, "script", "-i", str(data), *fields, "--kallsyms", copy],
                            capture_output=True)  # fmt: skip
    assert own.returncode == 0 and cached.returncode == 0, (own.stderr, cached.stderr)
    assert b"[kernel.kallsyms]" in own.stdout and b"do_syscall_64" in own.stdout
    assert own.stdout == cached.stdout
