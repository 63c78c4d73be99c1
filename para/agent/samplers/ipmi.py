"""Node power from the BMC through ipmitool, every few seconds, never waited for.

`ipmitool dcmi power reading` (the default) gives the instantaneous power and the BMC's own
minimum, maximum and average over its sampling period; `ipmitool sdr ...` lists sensors, of
which those read in Watts are kept.  A BMC that does not answer within the timeout costs one
reading, not the sample: the command runs on its own (see command.py).
"""

from __future__ import annotations

import re
from typing import Any

from para.agent.samplers.base import Rows, Sampler, event
from para.agent.samplers.command import PeriodicCommand, find_program

_DCMI = {
    "watts": re.compile(r"Instantaneous power reading:\s*(\d+(?:\.\d+)?)\s*Watts", re.I),
    "min_watts": re.compile(r"Minimum during sampling period:\s*(\d+(?:\.\d+)?)\s*Watts", re.I),
    "max_watts": re.compile(r"Maximum during sampling period:\s*(\d+(?:\.\d+)?)\s*Watts", re.I),
    "avg_watts": re.compile(
        r"Average power reading over sample period:\s*(\d+(?:\.\d+)?)\s*Watts", re.I
    ),
}
_STATE = re.compile(r"Power reading state is:\s*(\w+)", re.I)
_WATTS = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*Watts\s*$", re.I)


def parse_dcmi_power(text: str) -> dict[str, Any]:
    """`ipmitool dcmi power reading` -> watts, min/max/avg_watts, state.

    Fields are found wherever they are, not line by line: some BMCs run two fields together
    on one line.  Raises ValueError when there is no instantaneous reading.
    """
    out: dict[str, Any] = {}
    for key, pattern in _DCMI.items():
        m = pattern.search(text)
        out[key] = float(m.group(1)) if m else None
    if out["watts"] is None:
        first = text.strip().splitlines()[:1]
        raise ValueError(
            "no 'Instantaneous power reading: N Watts' in ipmitool's output"
            + (f" (it says: {first[0][:100]!r})" if first else " (it printed nothing)")
        )
    m = _STATE.search(text)
    out["state"] = m.group(1).lower() if m else None
    return out


def parse_sdr_watts(text: str) -> list[tuple[str, float]]:
    """Sensors read in Watts from `ipmitool sdr` (name | value | status) or `sdr elist`
    (name | id | status | entity | value) output."""
    out: list[tuple[str, float]] = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) < 3 or not cells[0]:
            continue
        value = cells[1] if len(cells) == 3 else cells[-1]
        m = _WATTS.match(value)
        if m:
            out.append((cells[0], float(m.group(1))))
    return out


class IpmiSampler(Sampler):
    family = "ipmi"
    tables = ("ipmi_power", "events")

    def __init__(self, command: str, args: list[str], every_s: float, timeout_s: float):
        self.command = command
        self.args = list(args)
        self.every_s = every_s
        self.timeout_s = timeout_s
        self.runner: PeriodicCommand | None = None
        self.dcmi = bool(self.args) and self.args[0] == "dcmi"
        self.readings = 0
        self._state: str | None = None

    def open(self) -> dict[str, Any]:
        exe = find_program(
            self.command,
            "IPMI power",
            "install ipmitool (Debian/Ubuntu `apt install ipmitool`, RHEL `dnf install ipmitool`)",
        )
        self.runner = PeriodicCommand([exe, *self.args], self.every_s, self.timeout_s)
        return {"command": [exe, *self.args], "every_s": self.every_s, "timeout_s": self.timeout_s}

    @property
    def helper_pid(self) -> int | None:
        return self.runner.pid if self.runner else None

    def sample(self, t_ms: int, out: Rows) -> None:
        assert self.runner is not None
        run = self.runner.poll()
        if run is None:
            return
        if run.returncode != 0:
            raise RuntimeError(run.why())
        if self.dcmi:
            r = parse_dcmi_power(run.stdout)
            watts = [r["watts"], r["min_watts"], r["max_watts"], r["avg_watts"]]
            out["ipmi_power"] = [["dcmi", *watts]]
            if r["state"] != self._state:
                if r["state"] == "deactivated":
                    # the BMC does not average: min/max/avg repeat the instantaneous value
                    out.setdefault("events", []).append(
                        event(t_ms, "note", "ipmi", message="DCMI power reading is deactivated")
                    )
                self._state = r["state"]
        else:
            sensors = parse_sdr_watts(run.stdout)
            if not sensors:
                raise ValueError(f"no sensor in Watts in the output of `{' '.join(run.argv)}`")
            out["ipmi_power"] = [[name, w, None, None, None] for name, w in sensors]
        self.readings += 1

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
