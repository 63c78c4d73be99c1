from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# pids of services a session-scoped fixture runs for many tests (a real Slurm's daemons):
# not leaks, and stopped by that fixture
SERVICES: set[int] = set()
PROCFS = FIXTURES / "procfs"


@pytest.fixture(autouse=True)
def no_leaks():
    """Like pyinstrument's guard: no sampler thread and no child process outlives a test."""
    before = {t.ident for t in threading.enumerate()}
    yield
    leaked = [
        t.name
        for t in threading.enumerate()
        if t.ident not in before and t.name.startswith("para-") and t.is_alive()
    ]
    # blocking samplers' daemon threads stop at the next wake-up; give them a moment
    for t in threading.enumerate():
        if t.name in leaked:
            t.join(timeout=2)
    still = [t.name for t in threading.enumerate() if t.name in leaked and t.is_alive()]
    assert not still, f"threads left running: {still}"
    children = [c for c in _children(os.getpid()) if int(c.split()[0]) not in SERVICES]
    assert not children, f"child processes left running: {children}"


def _kernels_loaded() -> set[str]:
    return {m for m in sys.modules if m.startswith("para.cython_ext.")}


@pytest.fixture(autouse=True)
def no_kernel_reached(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test marked no_kernel is left out of make test's pure-Python pass, which need only run
    what reaches a kernel: it must load no kernel (nor twin) in this process.  (What a para it
    starts loads is the mark's author's to check: such modules are not marked.)"""
    before = _kernels_loaded()
    yield
    new = _kernels_loaded() - before
    assert not (new and request.node.get_closest_marker("no_kernel")), (
        f"marked no_kernel (so left out of the pure-Python pass) but loaded {sorted(new)}: "
        "remove the mark"
    )


def _children(pid: int) -> list[str]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for k in kids:
            try:
                comm = Path(f"/proc/{k}/comm").read_text().strip()
                state = Path(f"/proc/{k}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                out.append(f"{k} ({comm})")
    return out


def kill_tree(p: subprocess.Popen) -> None:  # type: ignore[type-arg]
    """SIGKILL a para a test started and the processes it started (its command, perf, py-spy):
    a para killed leaves those to whoever killed it (systemd's control group, in production),
    and a system-wide perf left behind records for ever."""
    kids = []
    for task in Path(f"/proc/{p.pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            kids += [int(k) for k in (task / "children").read_text().split()]
    p.kill()
    for k in kids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(k, signal.SIGKILL)


def stop(p: subprocess.Popen, timeout: float = 60.0) -> int:  # type: ignore[type-arg]
    """SIGTERM a process a test started, as a service manager would; SIGKILL past `timeout`."""
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return p.returncode


def para_cmd() -> list[str]:
    """How tests run the real `para` command: a subprocess of this interpreter."""
    return [sys.executable, "-m", "para"]


def run_para(
    *args: str, cwd: Path | None = None, timeout: float = 120, **kw
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **kw.pop("env", {}))
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [*para_cmd(), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        **kw,
    )


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


# `make test` and CI run strict: a test that cannot run here is a failure that says what to
# install, never a silent skip.  Outside them (a developer's quick run) it is a skip that says so.
STRICT = os.environ.get("CI") == "true" or os.environ.get("PARA_STRICT") == "1"


def cannot_run(why: str, hint: str) -> NoReturn:
    """This test cannot run on this machine: fail under CI/`make test`, else skip, saying why."""
    msg = f"{why}; {hint}"
    if STRICT:
        pytest.fail(f"cannot run here: {msg}", pytrace=False)
    pytest.skip(msg)


def need_tool(tool: str, hint: str) -> str:
    """The path of `tool`, or `cannot_run` with the install hint (e.g. "apt install sysstat")."""
    path = shutil.which(tool)
    if path is None:
        cannot_run(f"{tool} is not installed", hint)
    return path


def need_module(name: str, hint: str) -> ModuleType:
    """The module `name`, or `cannot_run` with the install hint."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as e:
        cannot_run(f"{name} cannot be imported ({e})", hint)


@pytest.fixture(scope="session")
def slurm(request):
    """A real single-node Slurm (tests/slurm_support.py), started once for the session."""
    from .slurm_support import DAEMONS, HINT, Slurm, SlurmError

    for tool in (*DAEMONS, "sbatch", "srun", "scontrol"):
        need_tool(tool, HINT)
    # PARA_SLURM_PROCTRACK=linuxproc runs it without job cgroups even where they could be made
    s = Slurm(proctrack=os.environ.get("PARA_SLURM_PROCTRACK"))
    try:
        s.start()
    except (SlurmError, OSError) as e:
        s.stop()
        pytest.fail(f"a real Slurm did not start: {e}", pytrace=False)
    SERVICES.update(p.pid for p in s.procs.values())
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"real Slurm for the tests: {s.proctrack}, node {s.node}, in {s.dir}")
    yield s
    s.stop()
    SERVICES.difference_update(p.pid for p in s.procs.values())


@functools.cache
def compiled_kernel(name: str) -> ModuleType:
    """The compiled Cython kernel `name`: a twin test that compared the pure-Python twin with
    itself (what `load(name, pure=False)` falls back to when the kernel is not built) would pass
    whatever the kernel does, so a missing kernel fails, in every mode."""
    from para.cython_ext import compiled, unbuilt

    mod = compiled(name)
    why = (
        "not built"
        if mod is None
        else next((u.split(" ", 1)[1] for u in unbuilt() if u.split(" ", 1)[0] == name), None)
    )
    if why is not None:
        pytest.fail(
            f"the Cython kernel _{name} is {why.strip('()')}: run `make venv` (it builds every "
            "para/cython_ext/_*.pyx in place)",
            pytrace=False,
        )
    assert mod is not None
    return mod
