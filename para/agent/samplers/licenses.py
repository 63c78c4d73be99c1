"""FlexLM software licenses: `lmutil lmstat -a -c SERVER` every N seconds, per server.

What a poll records: per feature, licenses issued and in use, held by reservations, and
requests queued (`license`); per feature, user and host, the licenses held (`license_use`);
a server that goes down or comes back (events).  lmstat can hang for minutes on an
unreachable server: each poll runs on its own with a timeout (command.py).

The text format (FlexNet Publisher's lmstat, stable since the 1990s): a "Users of FEATURE:"
header with the totals, then for features in use a `"FEATURE" vVERSION, vendor: VENDOR` line
and one line per checkout:

    user host display (vVERSION) (server/port handle), start Wed 10/18 7:11, 21 licenses

followed by optional `, PID: N` or `(linger: ...)`; `queued for N licenses` lines are
requests waiting; `N RESERVATIONs for GROUP name (server/port)` lines hold licenses back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from para.agent.samplers.base import Rows, Sampler, event
from para.agent.samplers.command import PeriodicCommand, Run, find_program

_USERS_OF = re.compile(
    r"^Users of (?P<f>.+?):\s+\(\s*(?:Total of (?P<issued>\d+) licenses? issued;\s*"
    r"Total of (?P<used>\d+) licenses? in use|(?P<uncounted>Uncounted[^)]*)|"
    r"(?P<error>Error:.*?))\s*\)"
)
_FEATURE = re.compile(r'^\s*"(?P<f>[^"]+)"\s+v\S*,\s*vendor:\s*(?P<vendor>[^,\s]+)')
_RESERVED = re.compile(r"^\s*(?P<n>\d+)\s+RESERVATIONs?\s+for\s+\S+\s+\S+")
_CHECKOUT = re.compile(
    r"^\s+(?P<who>\S.*?)\s+\((?P<ver>v[^)]*)\)\s+\((?P<server>[^/\s()]+)/(?P<port>[^\s()]+)"
    r"(?:\s+(?P<handle>\d+))?\)(?P<rest>.*)$"
)
_QUEUED = re.compile(r"queued for (?P<n>\d+) licenses?")
_COUNT = re.compile(r",\s*(?P<n>\d+) licenses?\b")
_SERVER_UP = re.compile(r"^\s*(?P<host>[^\s:]+): license server UP")
_SERVER_DOWN = re.compile(r"^\s*(?P<host>[^\s:]+): (?P<why>Cannot connect.*|license server DOWN.*)")
_ERROR = re.compile(r"^\s*(?:Error getting status|lmgrd is not running|Cannot connect)[:,]?\s*(.*)")
_VENDOR = re.compile(r"^\s*(?P<v>[A-Za-z0-9_-]+): (?P<state>UP|DOWN)\b")


@dataclass
class Feature:
    name: str
    issued: int | None  # None: uncounted (node-locked)
    in_use: int
    vendor: str | None = None
    reserved: int = 0
    queued: int = 0
    users: dict[tuple[str, str], int] = field(default_factory=dict)  # (user, host) -> licenses


@dataclass
class LmStatus:
    features: list[Feature] = field(default_factory=list)
    servers_up: list[str] = field(default_factory=list)
    servers_down: list[tuple[str, str]] = field(default_factory=list)
    vendors: dict[str, str] = field(default_factory=dict)  # name -> UP | DOWN
    errors: list[str] = field(default_factory=list)


def parse_lmstat(text: str) -> LmStatus:
    """Parse `lmutil lmstat -a` output.  Lines it does not know are skipped (lmstat prints
    banners, license file paths and blank lines); a checkout line with a malformed count
    raises ValueError naming the line."""
    st = LmStatus()
    current: Feature | None = None
    in_usage = False
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _USERS_OF.match(line)
        if m:
            in_usage = True
            if m.group("error"):
                st.errors.append(f"{m.group('f')}: {m.group('error')}")
                current = None
                continue
            issued = int(m.group("issued")) if m.group("issued") else None
            current = Feature(m.group("f"), issued, int(m.group("used") or 0))
            st.features.append(current)
            continue
        if not in_usage:
            m = _SERVER_UP.match(line)
            if m:
                st.servers_up.append(m.group("host"))
                continue
            m = _SERVER_DOWN.match(line)
            if m:
                st.servers_down.append((m.group("host"), m.group("why").strip()))
                continue
            m = _ERROR.match(line)
            if m:
                st.errors.append(line.strip())
                continue
            m = _VENDOR.match(line)
            if m and "license server" not in line:
                st.vendors[m.group("v")] = m.group("state")
            continue
        if current is None:
            continue
        m = _FEATURE.match(line)
        if m:
            current.vendor = m.group("vendor")
            continue
        m = _RESERVED.match(line)
        if m:
            current.reserved += int(m.group("n"))
            continue
        m = _CHECKOUT.match(line)
        if not m:
            continue
        rest = m.group("rest")
        q = _QUEUED.search(rest)
        if q:
            current.queued += int(q.group("n"))
            continue
        c = _COUNT.search(rest)
        try:
            count = int(c.group("n")) if c else 1
        except ValueError:  # pragma: no cover - the regex admits digits only
            raise ValueError(f"lmstat line {n}: bad license count: {line[:100]!r}") from None
        who = m.group("who").split()
        user = who[0]
        host = who[1] if len(who) > 1 else ""
        key = (user, host)
        current.users[key] = current.users.get(key, 0) + count
    for f in st.features:
        # uncounted features report no total: the checkouts are the use
        if f.issued is None:
            f.in_use = max(f.in_use, sum(f.users.values()))
    return st


class LicenseSampler(Sampler):
    family = "licenses"
    tables = ("license", "license_use", "events")

    def __init__(
        self, servers: list[str], lmutil: str, every_s: float, timeout_s: float, users: bool
    ):
        self.servers = list(servers)
        self.lmutil = lmutil
        self.every_s = every_s
        self.timeout_s = timeout_s
        self.users = users
        self.runners: dict[str, PeriodicCommand] = {}
        self.server_state: dict[str, str] = {}  # server -> ok | down (why)
        self.polls = 0

    def open(self) -> dict[str, Any]:
        exe = find_program(
            self.lmutil,
            "FlexLM licenses",
            "install the FlexNet lmutil of your license servers, or set licenses.lmutil",
        )
        for s in self.servers:
            self.runners[s] = PeriodicCommand(
                [exe, "lmstat", "-a", "-c", s], self.every_s, self.timeout_s
            )
        return {"servers": self.servers, "every_s": self.every_s, "lmutil": exe}

    @property
    def helper_pids(self) -> set[int]:
        return {r.pid for r in self.runners.values() if r.pid is not None}

    def sample(self, t_ms: int, out: Rows) -> None:
        failures = []
        polled = 0
        for server, runner in self.runners.items():
            run = runner.poll()
            if run is None:
                continue
            polled += 1
            why = self._record(t_ms, server, run, out)
            if why:
                failures.append(f"{server}: {why}")
        self.polls += polled
        if polled and len(failures) == polled == len(self.runners):
            raise RuntimeError("; ".join(failures))

    def _record(self, t_ms: int, server: str, run: Run, out: Rows) -> str | None:
        """Rows for one server's poll; the reason it gave nothing, if it did not."""
        why: str | None = None
        st: LmStatus | None = None
        if run.timed_out:
            why = run.why()
        else:
            st = parse_lmstat(run.stdout)
            if not st.features:
                why = "; ".join(st.errors) or run.why()
        state = "ok" if why is None else f"down ({why})"
        before = self.server_state.get(server)
        if before != state and (before is not None or why is not None):
            kind = "license_server_ok" if why is None else "license_server_down"
            out.setdefault("events", []).append(event(t_ms, kind, server, reason=why))
        self.server_state[server] = state
        if st is None or why is not None:
            return why
        rows = out.setdefault("license", [])
        use = out.setdefault("license_use", []) if self.users else None
        for f in st.features:
            rows.append([server, f.name, f.issued, f.in_use, f.reserved, f.queued, f.vendor])
            if use is not None:
                for (user, host), n in f.users.items():
                    use.append([server, f.name, user, host, n])
        return None

    def close(self) -> None:
        for r in self.runners.values():
            r.close()

    def metadata(self) -> dict[str, Any]:
        return {"servers": dict(self.server_state), "polls": self.polls}
