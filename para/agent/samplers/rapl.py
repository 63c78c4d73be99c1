"""CPU package, core and DRAM energy from RAPL, through the powercap interface.

/sys/class/powercap/intel-rapl:N is a package (name `package-N`), intel-rapl:N:M a subzone of
it (`core`, `uncore`, `dram`), intel-rapl:1 may be `psys` (the whole SoC); AMD Zen processors
appear the same way.  energy_uj counts microjoules and wraps at max_energy_range_uj: the
counter is stored raw with its range beside it, and rates are the analyzer's job.
Since Linux 5.10 energy_uj is readable by root only (CVE-2020-8694).
"""

from __future__ import annotations

import errno
import os
from typing import Any

from para.agent.samplers.base import ProcFiles, Rows, Sampler, Unavailable

BASE = "sys/class/powercap"


class RaplSampler(Sampler):
    family = "rapl"
    tables = ("energy",)

    def __init__(self, files: ProcFiles):
        self.files = files
        self.zones: list[tuple[str, str, int | None]] = []  # key, rel energy_uj, max range

    def _name(self, zone: str) -> str:
        try:
            return self.files.read_once(f"{BASE}/{zone}/name").decode(errors="replace").strip()
        except OSError:
            return zone

    def zone_key(self, zone: str) -> str:
        """'intel-rapl:0:1' -> 'package-0/dram'; 'intel-rapl-mmio:0' -> 'mmio/package-0'."""
        control, _, index = zone.partition(":")
        parts = index.split(":") if index else []
        names = [self._name(f"{control}:{':'.join(parts[: k + 1])}") for k in range(len(parts))]
        key = "/".join(names) or self._name(zone)
        if control.endswith("-mmio"):
            key = f"mmio/{key}"
        return key

    def open(self) -> dict[str, Any]:
        try:
            entries = sorted(os.listdir(self.files.path(BASE)))
        except OSError:
            entries = []
        denied = []
        for zone in entries:
            rel = f"{BASE}/{zone}/energy_uj"
            if not self.files.exists(rel):
                continue  # a control type (intel-rapl), not a zone
            try:
                int(self.files.read(rel))
            except OSError as e:
                if e.errno in (errno.EACCES, errno.EPERM):
                    denied.append(zone)
                continue
            except ValueError:
                continue
            try:
                top: int | None = int(self.files.read_once(f"{BASE}/{zone}/max_energy_range_uj"))
            except (OSError, ValueError):
                top = None
            self.zones.append((self.zone_key(zone), rel, top))
        if not self.zones:
            if denied:
                raise Unavailable(
                    f"RAPL energy counters ({', '.join(denied)}) are readable by root only "
                    "(Linux 5.10+, CVE-2020-8694): run the agent as root"
                )
            raise Unavailable(
                "no RAPL energy counter (/sys/class/powercap has no zone with energy_uj: no "
                "intel_rapl driver, or a VM)"
            )
        return {"zones": [{"zone": k, "max_range_uj": top} for k, _, top in self.zones]}

    def sample(self, t_ms: int, out: Rows) -> None:
        rows = []
        for key, rel, top in self.zones:
            try:
                rows.append([key, int(self.files.read(rel)), top])
            except (OSError, ValueError):
                continue
        out["energy"] = rows
