"""The node's peak memory bandwidth, from its DMI memory-device table (`dmidecode -t 17`).

Peak = channels x transfer rate x bus width: each channel moves one 64-bit word per transfer
(DDR4-3200: 3200 MT/s x 8 bytes = 25.6 GB/s), however many DIMMs share it.  The channels are
read from the slot names where the firmware names them ("ChannelA-DIMM1", "P0 CHANNEL B");
else each populated DIMM is taken for a channel of its own, and the answer says so (two
DIMMs on one channel would make the real peak lower).  The table is readable by root only:
a recording made without it says that the peak is unknown.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

_CHANNEL = re.compile(r"(?i)\bchannel\s*[-_ ]?\s*([A-Z0-9]+)|\bCH(?:ANNEL)?[-_ ]?([A-Z])\b")
_SOCKET = re.compile(r"(?i)\b(?:P|CPU|NODE|SOCKET)\s*[-_ ]?(\d+)")


def parse_memory_devices(text: str) -> list[dict[str, str]]:
    """The `Memory Device` records of dmidecode's output, as {field: value}."""
    devices: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    for line in text.splitlines():
        if not line.strip():
            current = None
            continue
        if not line.startswith("\t"):
            if line.strip() == "Memory Device":
                current = {}
                devices.append(current)
            elif not line.startswith("Handle "):
                current = None
            continue
        if current is not None and not line.startswith("\t\t") and ":" in line:
            key, _, value = line.strip().partition(":")
            current[key.strip()] = value.strip()
    return devices


def _rate(value: str | None) -> float | None:
    """Transfers per second of "3200 MT/s" (or the older "2933 MHz", which dmidecode printed
    for the same number)."""
    m = re.match(r"(\d+(?:\.\d+)?)\s*(MT/s|MHz)", value or "")
    return float(m.group(1)) * 1e6 if m else None


def peak_bandwidth(devices: list[dict[str, str]]) -> dict[str, Any] | None:
    """{bytes_per_s, how} for the populated DIMMs, or None when the table does not say."""
    dimms = []
    for d in devices:
        size = d.get("Size", "")
        if not re.match(r"\d", size):  # "No Module Installed", "Not Installed", "Unknown"
            continue
        rate = _rate(d.get("Configured Memory Speed")) or _rate(d.get("Configured Clock Speed"))
        rate = rate or _rate(d.get("Speed"))
        bits = re.match(r"(\d+) bits", d.get("Data Width", ""))
        if rate is None:
            continue
        dimms.append((d, rate, int(bits.group(1)) // 8 if bits else 8))
    if not dimms:
        return None
    channels: dict[tuple[str, str], tuple[float, int]] = {}
    named = True
    for d, rate, width in dimms:
        where = f"{d.get('Bank Locator', '')} {d.get('Locator', '')}"
        ch = _CHANNEL.search(where)
        if ch is None:
            named = False
            break
        sock = _SOCKET.search(where)
        key = (sock.group(1) if sock else "", (ch.group(1) or ch.group(2)).upper())
        old = channels.get(key)
        # DIMMs sharing a channel run at its (slowest) rate
        channels[key] = (min(rate, old[0]) if old else rate, width)
    if not named:
        channels = {(str(i), ""): (rate, width) for i, (_, rate, width) in enumerate(dimms)}
    total = sum(rate * width for rate, width in channels.values())
    rates = sorted({rate for rate, _ in channels.values()})
    speed = "/".join(f"{r / 1e6:.0f}" for r in rates)
    widths = sorted({w for _, w in channels.values()})
    how = (f"DMI: {len(channels)} memory channels x {speed} MT/s x "
           f"{'/'.join(str(w) for w in widths)} bytes")  # fmt: skip
    if not named:
        how += " (one channel per populated DIMM assumed: the slot names do not say)"
    return {"bytes_per_s": total, "how": how}


def memory_peak(timeout: float = 10.0) -> dict[str, Any] | None:
    """This machine's peak memory bandwidth from `dmidecode -t 17`; None where dmidecode is
    missing or may not read the table (not root)."""
    exe = shutil.which("dmidecode")
    if exe is None:
        return None
    try:
        r = subprocess.run([exe, "-t", "17"], capture_output=True, text=True, timeout=timeout,
                           check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None
    return peak_bandwidth(parse_memory_devices(r.stdout))
