"""The agent's configuration: a TOML file, every key with a default (docs/agent.md).

`load` returns a Config or raises ConfigError with one Problem per bad key, each naming the
file, the line and what to write instead, so `para agent check-config` can point at it.  The
[collector] table belongs to the shipper (para/agent/shipper.py): it is passed through as it
is and validated by the shipper's own `validate_config`.
"""

from __future__ import annotations

import difflib
import math
import re
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from para.errors import ParaError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_PATH = Path("/etc/para/agent.toml")

# Families the agent knows, in sampling order (docs/agent.md lists what each records).
FAMILIES = (
    "cpu",
    "memory",
    "net",
    "disk",
    "fs",
    "jobs",
    "gpu",
    "infiniband",
    "nfs",
    "lustre",
    "rapl",
    "ipmi",
    "licenses",
    "counters",
    "stacks",
)
# Families off unless configured: they run external commands or need a PMU and privileges.
OPT_IN = ("ipmi", "licenses", "counters")

Check = Callable[[Any], str | None]


@dataclass(frozen=True)
class Key:
    table: str
    name: str
    default: Any
    type: str  # float int bool str size list
    doc: str
    check: Check | None = None

    @property
    def full(self) -> str:
        return f"{self.table}.{self.name}"


def _range(lo: float, hi: float) -> Check:
    def check(v: Any) -> str | None:
        return None if lo <= v <= hi else f"must be between {lo:g} and {hi:g}"

    return check


def _one_of(*choices: str) -> Check:
    def check(v: Any) -> str | None:
        return None if v in choices else "must be one of " + ", ".join(f'"{c}"' for c in choices)

    return check


def _families(v: Any) -> str | None:
    bad = [f for f in v if f not in FAMILIES]
    if bad:
        return f"unknown families {bad}; known: {', '.join(FAMILIES)}"
    return None


def _servers(v: Any) -> str | None:
    bad = [s for s in v if not re.fullmatch(r"\d+@[A-Za-z0-9_.:-]+|[A-Za-z0-9_./-]+", s)]
    if bad:
        return f"not a license server (port@host or a license file path): {bad}"
    return None


def _host(v: Any) -> str | None:
    if v == "":
        return None
    from para.formats import wire

    try:
        wire.check_host(v)
    except wire.WireError as e:
        return e.message
    return None


GiB = 1 << 30
MiB = 1 << 20

KEYS: tuple[Key, ...] = (
    # [agent]
    Key("agent", "interval", 1.0, "float", "seconds between samples", _range(0.05, 3600)),
    Key("agent", "spool_dir", "/var/lib/para/spool", "str", "where segments are written"),
    Key(
        "agent",
        "host",
        "",
        "str",
        "host name in segment names and metadata (default: hostname)",
        lambda v: _host(v),
    ),
    Key(
        "agent",
        "host_root",
        "/",
        "str",
        "where the host's /proc and /sys are seen (/host when the agent runs in a container)",
    ),
    Key("agent", "disable", [], "list", "families not to sample", _families),
    Key(
        "agent",
        "reprobe_s",
        600.0,
        "float",
        "how often a family found unavailable is looked for again (0: never)",
        _range(0, 86400),
    ),
    Key(
        "agent",
        "status_every_s",
        10.0,
        "float",
        "how often status.json is rewritten",
        _range(0.1, 3600),
    ),
    Key(
        "agent",
        "log_level",
        "info",
        "str",
        "debug, info, warning or error",
        _one_of("debug", "info", "warning", "error"),
    ),
    # [segments]
    Key(
        "segments",
        "max_seconds",
        3600.0,
        "float",
        "a segment is closed after this long (aligned to the clock)",
        _range(10, 86400),
    ),
    Key(
        "segments",
        "max_bytes",
        64 * MiB,
        "size",
        "or once its samples reach this size in its journal (its header not counted)",
        _range(64 * 1024, 4 * GiB),
    ),
    Key(
        "segments",
        "buffer_samples",
        3600,
        "int",
        "samples kept in memory while the spool cannot be written (disk full)",
        _range(1, 10_000_000),
    ),
    Key(
        "segments",
        "finalize_timeout_s",
        300.0,
        "float",
        "longest a segment may take to be finalised (Parquet) by its child process",
        _range(5, 86400),
    ),
    # [retention]
    Key(
        "retention",
        "max_bytes",
        2 * GiB,
        "size",
        "the spool's total size; past it sent/, then the oldest of ready/, are deleted",
        _range(1 * MiB, 1 << 50),
    ),
    Key(
        "retention",
        "max_age_hours",
        168.0,
        "float",
        "segments older than this are deleted (sent or not)",
        _range(0.01, 24 * 3650),
    ),
    Key(
        "retention",
        "min_free_bytes",
        256 * MiB,
        "size",
        "free space to leave on the spool's filesystem",
        _range(0, 1 << 50),
    ),
    # [jobs]
    Key(
        "jobs",
        "processes",
        "jobs",
        "str",
        'per-process rows for: "jobs" (processes in a job), "all" processes, or "none"',
        _one_of("jobs", "all", "none"),
    ),
    Key(
        "jobs",
        "environ",
        True,
        "bool",
        "read the job id from /proc/PID/environ when the cgroup does not name the job",
    ),
    Key(
        "jobs",
        "end_after_s",
        5.0,
        "float",
        "a job with no process left for this long has ended",
        _range(0, 3600),
    ),
    Key(
        "jobs",
        "ctxt_every",
        10,
        "int",
        "per-process context switches (/proc/PID/status, the dearest file) every N samples",
        _range(1, 3600),
    ),
    Key("jobs", "cgroup_root", "/sys/fs/cgroup", "str", "where the cgroup filesystems are mounted"),
    # [gpu]
    Key(
        "gpu",
        "process_utilization",
        True,
        "bool",
        "per-process SM and memory utilisation from NVML (gpu_proc_util)",
    ),
    Key(
        "gpu",
        "pcie_gpus_per_sample",
        4,
        "int",
        "GPUs whose PCIe throughput (a 20 ms reading) is read per sample",
        _range(0, 64),
    ),
    # [ipmi]
    Key("ipmi", "enabled", False, "bool", "read node power from the BMC with ipmitool"),
    Key("ipmi", "command", "ipmitool", "str", "the ipmitool program"),
    Key(
        "ipmi",
        "args",
        ["dcmi", "power", "reading"],
        "list",
        'its arguments: dcmi power reading, or e.g. ["sdr", "type", "Current"] for SDR watts',
    ),
    Key("ipmi", "every_s", 10.0, "float", "seconds between readings", _range(1, 86400)),
    Key("ipmi", "timeout_s", 5.0, "float", "a reading taking longer is killed", _range(0.5, 600)),
    # [licenses]
    Key(
        "licenses",
        "servers",
        [],
        "list",
        'FlexLM servers to poll ("port@host"); none: the family is off',
        _servers,
    ),
    Key("licenses", "lmutil", "lmutil", "str", "the lmutil program"),
    Key("licenses", "every_s", 60.0, "float", "seconds between polls", _range(5, 86400)),
    Key("licenses", "timeout_s", 30.0, "float", "a poll taking longer is killed", _range(1, 3600)),
    Key("licenses", "users", True, "bool", "record who holds licenses (license_use)"),
    # [perf]
    Key("perf", "enabled", False, "bool", "count hardware events with perf stat"),
    Key(
        "perf",
        "mode",
        "system",
        "str",
        '"system" (whole node) or "jobs" (per job cgroup, cgroup v2)',
        _one_of("system", "jobs"),
    ),
    Key("perf", "command", "perf", "str", "the perf program"),
    Key("perf", "events", [], "list", "events counted beside the CPU family's set"),
    # [stacks]: call stacks of the jobs' processes (issue 13, docs/agent.md)
    Key("stacks", "enabled", True, "bool", "sample the call stacks of job processes"),
    Key(
        "stacks",
        "frequency_hz",
        19,
        "int",
        "perf samples per second of each busy CPU (prime: no lockstep with periodic work)",
        _range(1, 1000),
    ),
    Key("stacks", "event", "cycles", "str", "perf event (cpu-clock where there is no PMU)"),
    Key("stacks", "command", "perf", "str", "the perf program"),
    Key(
        "stacks",
        "window_s",
        300.0,
        "float",
        "perf's output is folded and restarted this often (and at each segment's end)",
        _range(2, 3600),
    ),
    Key("stacks", "python", True, "bool", "Python stacks of CPython processes with py-spy"),
    Key("stacks", "pyspy_rate", 20, "int", "py-spy samples per second", _range(1, 1000)),
    Key(
        "stacks",
        "pyspy_min_cpu",
        0.05,
        "float",
        "a CPython process gets py-spy once it uses this share of a core (0: all at once)",
        _range(0, 64),
    ),
    Key(
        "stacks",
        "max_backoff_s",
        300.0,
        "float",
        "longest wait before a failed perf or py-spy is started again",
        _range(1, 86400),
    ),
    Key(
        "stacks",
        "script_timeout_s",
        120.0,
        "float",
        "longest `perf script` of one window may take before it is killed (said as hung)",
        _range(1, 3600),
    ),
)

KEY_INDEX = {(k.table, k.name): k for k in KEYS}
TABLES = tuple(dict.fromkeys(k.table for k in KEYS))
# tables validated by their own parts: the shipper's, and the live view's (para/agent/livenode.py)
PASS_THROUGH = ("collector", "alerts", "metrics")


@dataclass
class Problem:
    line: int | None
    where: str  # "[table] key" or "file"
    message: str

    def format(self, path: str) -> str:
        at = f"{path}:{self.line}" if self.line else path
        return f"{at}: {self.where}: {self.message}"


class ConfigError(ParaError):
    def __init__(self, path: str, problems: list[Problem]):
        self.path = path
        self.problems = problems
        lines = [p.format(path) for p in problems]
        super().__init__(
            f"{path}: {len(problems)} problem{'s' if len(problems) != 1 else ''} in the "
            "configuration:\n  " + "\n  ".join(lines),
            hint="see docs/agent.md for every key and its default; "
            "`para agent check-config` checks a file",
        )


@dataclass
class Config:
    values: dict[str, dict[str, Any]]
    path: str | None = None
    collector: dict[str, Any] | None = None
    explicit: set[str] = field(default_factory=set)  # "table.key" set by the file
    live: dict[str, dict[str, Any]] = field(default_factory=dict)  # [alerts], [metrics]

    def __getitem__(self, table: str) -> dict[str, Any]:
        return self.values[table]

    @property
    def interval(self) -> float:
        return float(self.values["agent"]["interval"])

    @property
    def spool_dir(self) -> Path:
        return Path(self.values["agent"]["spool_dir"])

    @property
    def host(self) -> str:
        return str(self.values["agent"]["host"] or socket.gethostname())

    def enabled(self, family: str) -> bool:
        """Whether a family is configured to run (it may still be unavailable here)."""
        if family in self.values["agent"]["disable"]:
            return False
        if family == "ipmi":
            return bool(self.values["ipmi"]["enabled"])
        if family == "licenses":
            return bool(self.values["licenses"]["servers"])
        if family == "counters":
            return bool(self.values["perf"]["enabled"])
        if family == "stacks":
            return bool(self.values["stacks"]["enabled"]) and self.enabled("jobs")
        return True

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {t: dict(v) for t, v in self.values.items()}
        if self.collector is not None:
            out["collector"] = "(configured)"
        out.update({t: dict(v) for t, v in self.live.items()})
        return out


def defaults() -> Config:
    values: dict[str, dict[str, Any]] = {t: {} for t in TABLES}
    for k in KEYS:
        values[k.table][k.name] = list(k.default) if isinstance(k.default, list) else k.default
    return Config(values)


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(i?)B?\s*", re.IGNORECASE)


def parse_size(v: Any) -> int | None:
    """Bytes from an integer or a string such as "64MiB", "2 GB", "512k"."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v if v >= 0 else None
    if not isinstance(v, str):
        return None
    m = _SIZE.fullmatch(v)
    if not m:
        return None
    number, unit, binary = float(m.group(1)), m.group(2).upper(), m.group(3)
    power = "KMGTP".find(unit) + 1 if unit else 0
    base = 1024 if binary or not unit else 1000
    if unit and not binary and v.strip()[-1:] not in ("B", "b"):
        base = 1024  # "512k" / "2G": what sysadmins mean in config files
    return int(number * base**power)


def _coerce(key: Key, v: Any) -> tuple[Any, str | None]:
    t = key.type
    if t == "float":
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return None, f"must be a number (got {v!r})"
        return float(v), None
    if t == "int":
        if isinstance(v, bool) or not isinstance(v, int):
            return None, f"must be a whole number (got {v!r})"
        return v, None
    if t == "bool":
        if not isinstance(v, bool):
            return None, f"must be true or false (got {v!r})"
        return v, None
    if t == "str":
        if not isinstance(v, str):
            return None, f"must be a string in quotes (got {v!r})"
        return v, None
    if t == "size":
        n = parse_size(v)
        if n is None:
            return None, f'must be a size in bytes, e.g. 1073741824 or "1GiB" (got {v!r})'
        return n, None
    if t == "list":
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            return None, f'must be a list of strings, e.g. ["a", "b"] (got {v!r})'
        return list(v), None
    raise AssertionError(t)


_HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]")
_KEYLINE = re.compile(r'^\s*("[^"]*"|[A-Za-z0-9_-]+)\s*=')


def key_lines(text: str) -> dict[tuple[str, str], int]:
    """Line number of each `key =` under each [table] (and of each header, key '')."""
    where: dict[tuple[str, str], int] = {}
    table = ""
    for n, line in enumerate(text.splitlines(), 1):
        h = _HEADER.match(line)
        if h:
            table = h.group(1)
            where.setdefault((table, ""), n)
            continue
        k = _KEYLINE.match(line)
        if k:
            where.setdefault((table, k.group(1).strip('"')), n)
    return where


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean `{close[0]}`?)" if close else ""


def parse(text: str, path: str = "<config>") -> Config:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"at line (\d+)", str(e))
        line = int(m.group(1)) if m else None
        raise ConfigError(path, [Problem(line, "TOML syntax", str(e))]) from e
    lines = key_lines(text)
    cfg = defaults()
    cfg.path = path
    problems: list[Problem] = []
    for table, body in doc.items():
        if table in PASS_THROUGH:
            if not isinstance(body, dict):
                problems.append(Problem(lines.get((table, "")), f"[{table}]", "must be a table"))
            elif table == "collector":
                cfg.collector = body
            else:
                cfg.live[table] = body
            continue
        if table not in TABLES:
            problems.append(
                Problem(
                    lines.get((table, "")) or lines.get(("", table)),
                    f"[{table}]",
                    "unknown table" + _suggest(table, [*TABLES, *PASS_THROUGH]),
                )
            )
            continue
        if not isinstance(body, dict):
            problems.append(Problem(lines.get(("", table)), table, "must be a [table]"))
            continue
        for name, value in body.items():
            key = KEY_INDEX.get((table, name))
            line = lines.get((table, name))
            if key is None:
                known = [k.name for k in KEYS if k.table == table]
                problems.append(
                    Problem(line, f"[{table}] {name}", "unknown key" + _suggest(name, known))
                )
                continue
            v, err = _coerce(key, value)
            if err is None and key.check is not None:
                err = key.check(v)
            if err is not None:
                problems.append(Problem(line, f"[{table}] {name} = {value!r}", err))
                continue
            cfg.values[table][name] = v
            cfg.explicit.add(key.full)
    if problems:
        raise ConfigError(path, problems)
    return cfg


def load(path: str | Path | None) -> Config:
    """The file's configuration; None: /etc/para/agent.toml if it exists, else the defaults."""
    if path is None:
        if not DEFAULT_PATH.exists():
            return defaults()
        path = DEFAULT_PATH
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ParaError(
            f"{p}: no such configuration file",
            hint="create it (docs/agent.md has an example) or leave out --config for defaults",
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ParaError(f"{p}: cannot read the configuration: {e}") from e
    return parse(text, str(p))


def example() -> str:
    """A configuration file listing every key at its default (for docs and tests)."""
    out: list[str] = []
    table = ""
    for k in KEYS:
        if k.table != table:
            if out:
                out.append("")
            out.append(f"[{k.table}]")
            table = k.table
        out.append(f"# {k.doc}")
        out.append(f"{k.name} = {_toml(k.default)}")
    return "\n".join(out) + "\n"


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return repr(v)
