"""InfiniBand, RoCE and Omni-Path port counters from /sys/class/infiniband.

Each port has `counters/` (the IB performance-management attributes: 32-bit on old HCAs,
where they saturate rather than wrap), often `counters_ext/` with 64-bit data and packet
counters, and on RDMA NICs `hw_counters/` (RoCE retransmission, congestion notification).
The 64-bit counter is read where there is one.  port_*_data counts 4-byte words: stored
multiplied by 4, in bytes.  A counter a port does not have, or that reads "N/A (no PMA)"
(iWARP), is null for that port from the first sample on, and never read again.
"""

from __future__ import annotations

import os
import re
from typing import Any

from para.agent.samplers.base import ProcFiles, Rows, Sampler, Unavailable
from para.formats.schema import IB_FIELDS

BASE = "sys/class/infiniband"
INT64_MAX = (1 << 63) - 1

# column -> candidate files under ports/N/, best first, and a multiplier
SOURCES: dict[str, tuple[tuple[str, ...], int]] = {
    "rcv_bytes": (("counters_ext/port_rcv_data_64", "counters/port_rcv_data"), 4),
    "xmit_bytes": (("counters_ext/port_xmit_data_64", "counters/port_xmit_data"), 4),
    "rcv_packets": (("counters_ext/port_rcv_packets_64", "counters/port_rcv_packets"), 1),
    "xmit_packets": (("counters_ext/port_xmit_packets_64", "counters/port_xmit_packets"), 1),
    "unicast_rcv_packets": (
        ("counters_ext/port_unicast_rcv_packets", "counters/unicast_rcv_packets"),
        1,
    ),
    "unicast_xmit_packets": (
        ("counters_ext/port_unicast_xmit_packets", "counters/unicast_xmit_packets"),
        1,
    ),
    "multicast_rcv_packets": (
        ("counters_ext/port_multicast_rcv_packets", "counters/multicast_rcv_packets"),
        1,
    ),
    "multicast_xmit_packets": (
        ("counters_ext/port_multicast_xmit_packets", "counters/multicast_xmit_packets"),
        1,
    ),
    "rcv_errors": (("counters/port_rcv_errors",), 1),
    "xmit_discards": (("counters/port_xmit_discards",), 1),
    "xmit_wait": (("counters/port_xmit_wait",), 1),
    "symbol_errors": (("counters/symbol_error",), 1),
    "link_downed": (("counters/link_downed",), 1),
    "link_error_recovery": (("counters/link_error_recovery",), 1),
    "local_link_integrity_errors": (("counters/local_link_integrity_errors",), 1),
    "excessive_buffer_overrun_errors": (("counters/excessive_buffer_overrun_errors",), 1),
    "rcv_remote_physical_errors": (("counters/port_rcv_remote_physical_errors",), 1),
    "rcv_switch_relay_errors": (("counters/port_rcv_switch_relay_errors",), 1),
    "rcv_constraint_errors": (("counters/port_rcv_constraint_errors",), 1),
    "xmit_constraint_errors": (("counters/port_xmit_constraint_errors",), 1),
    "vl15_dropped": (("counters/VL15_dropped",), 1),
    "out_of_buffer": (("hw_counters/out_of_buffer",), 1),
    "out_of_sequence": (("hw_counters/out_of_sequence",), 1),
    "packet_seq_err": (("hw_counters/packet_seq_err",), 1),
    "local_ack_timeout_err": (("hw_counters/local_ack_timeout_err",), 1),
    "rnr_nak_retry_err": (("hw_counters/rnr_nak_retry_err",), 1),
    "np_cnp_sent": (("hw_counters/np_cnp_sent",), 1),
    "rp_cnp_handled": (("hw_counters/rp_cnp_handled",), 1),
}
COLUMNS = [name for name, *_ in IB_FIELDS]
assert list(SOURCES) == COLUMNS, "IB_FIELDS and SOURCES must list the same columns"

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*Gb/sec")


def parse_counter(data: bytes) -> int | None:
    """A sysfs counter file -> int; None for 'N/A (no PMA)' and anything not a count."""
    s = data.strip()
    if not s.isdigit():
        return None
    v = int(s)
    return v if v <= INT64_MAX else None


def parse_state(data: bytes) -> int | None:
    """'4: ACTIVE' -> 4."""
    head = data.strip().split(b":", 1)[0]
    return int(head) if head.isdigit() else None


def parse_rate(data: bytes) -> float | None:
    """'25 Gb/sec (1X EDR)' -> 25.0."""
    m = _RATE.match(data.decode(errors="replace"))
    return float(m.group(1)) if m else None


class _Port:
    def __init__(self, key: str, base: str):
        self.key = key
        self.base = base
        self.files: list[tuple[str, int] | None] = []


class InfinibandSampler(Sampler):
    family = "infiniband"
    tables = ("ib",)

    def __init__(self, files: ProcFiles):
        self.files = files
        self.ports: list[_Port] = []

    def open(self) -> dict[str, Any]:
        root = self.files.path(BASE)
        try:
            devices = sorted(os.listdir(root))
        except OSError:
            devices = []
        if not devices:
            raise Unavailable(
                "no InfiniBand, RoCE or Omni-Path device (/sys/class/infiniband is empty or "
                "absent: no RDMA driver loaded)"
            )
        facts = []
        for dev in devices:
            try:
                ports = sorted(os.listdir(root / dev / "ports"), key=lambda p: (len(p), p))
            except OSError:
                continue
            for p in ports:
                port = _Port(f"{dev}:{p}", f"{BASE}/{dev}/ports/{p}")
                for col in COLUMNS:
                    port.files.append(self._source(port.base, col))
                self.ports.append(port)
                facts.append(
                    {
                        "port": port.key,
                        "link_layer": self._text(f"{port.base}/link_layer"),
                        "rate": self._text(f"{port.base}/rate"),
                        "state": self._text(f"{port.base}/state"),
                        "hca_type": self._text(f"{BASE}/{dev}/hca_type"),
                        "fw_ver": self._text(f"{BASE}/{dev}/fw_ver"),
                        "counters": sum(f is not None for f in port.files),
                    }
                )
        if not self.ports:
            raise Unavailable(f"InfiniBand devices {devices} have no ports in sysfs")
        return {"ports": facts}

    def _source(self, base: str, col: str) -> tuple[str, int] | None:
        candidates, mult = SOURCES[col]
        for rel in candidates:
            path = f"{base}/{rel}"
            try:
                value = parse_counter(self.files.read(path))
            except OSError:
                continue
            if value is not None:
                return path, mult
            self.files.forget(path)
        return None

    def _text(self, rel: str) -> str | None:
        try:
            return self.files.read_once(rel).decode(errors="replace").strip()
        except OSError:
            return None

    def sample(self, t_ms: int, out: Rows) -> None:
        read = self.files.read
        rows = []
        for port in self.ports:
            row: list[Any] = [port.key]
            for src in port.files:
                if src is None:
                    row.append(None)
                    continue
                try:
                    v = parse_counter(read(src[0]))
                except OSError:
                    v = None
                row.append(v * src[1] if v is not None else None)
            try:
                row.append(parse_state(read(f"{port.base}/state")))
            except OSError:
                row.append(None)
            try:
                row.append(parse_rate(read(f"{port.base}/rate")))
            except OSError:
                row.append(None)
            rows.append(row)
        out["ib"] = rows
