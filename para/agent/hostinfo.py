"""Facts about the host, read once at start: what a reader needs to interpret the series."""

from __future__ import annotations

import os
import platform
import socket
from typing import Any

import psutil

import para
from para.agent import memspeed
from para.agent.samplers.base import ProcFiles


def cpu_topology(cpuinfo: bytes) -> dict[str, Any]:
    """Model, sockets, cores and threads from /proc/cpuinfo (x86 and most ARM kernels)."""
    model = ""
    sockets: set[str] = set()
    cores: set[tuple[str, str]] = set()
    threads = 0
    phys = core = ""
    for line in cpuinfo.decode(errors="replace").splitlines() + [""]:
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "processor":
            threads += 1
        elif key in ("model name", "Model", "cpu model") and not model:
            model = value
        elif key == "physical id":
            phys = value
        elif key == "core id":
            core = value
        elif not line.strip() and threads:
            if phys:
                sockets.add(phys)
            if core:
                cores.add((phys, core))
            phys = core = ""
    return {
        "cpu_model": model or platform.processor() or "unknown",
        "sockets": len(sockets) or None,
        "cores": len(cores) or psutil.cpu_count(logical=False),
        "threads": threads or os.cpu_count(),
    }


def host_facts(files: ProcFiles | None = None) -> dict[str, Any]:
    files = files or ProcFiles()
    try:
        topo = cpu_topology(files.read_once("proc/cpuinfo"))
    except OSError:
        topo = {"cpu_model": "unknown", "sockets": None, "cores": None, "threads": os.cpu_count()}
    uname = platform.uname()
    return {
        "hostname": socket.gethostname(),
        **topo,
        "memory_bytes": psutil.virtual_memory().total,
        "kernel": f"{uname.system} {uname.release}",
        "arch": uname.machine,
        "os": _os_release(),
        "boot_time": psutil.boot_time(),
        "clock_ticks": os.sysconf("SC_CLK_TCK"),
        "page_size": os.sysconf("SC_PAGE_SIZE"),
        "para_version": para.__version__,
        "python": platform.python_version(),
        # the peak the memory_bandwidth_bound rule compares with (None: not readable here)
        "memory_peak": memspeed.memory_peak(),
    }


def _os_release() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return ""
