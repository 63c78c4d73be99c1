"""A stand-in for pynvml that answers with values recorded by nvidia-smi on real machines.

Two kinds of capture feed it (tests/fixtures/nvidia-smi/, see SOURCES.md):
- `nvidia-smi -q -x` XML (A100 v12, A10G, T4, RTX 4000 Ada v13, 8x V100S): `from_xml`;
- nvidia_gpu_exporter captures (H100, H200, with and without MIG): `from_capture` takes the
  `--query-gpu` CSV of one phase (idle or load) and, from the same phase's `-q` text, what
  the CSV lacks: PCIe throughput, the MIG devices and the processes' MIG instances.

Whatever the capture shows as N/A, or does not show at all (no capture has the energy
counter), is answered with NVML_ERROR_NOT_SUPPORTED, as NVML does for what a board lacks.
Errors are raised as pynvml's own NVMLError classes, so the sampler's handling of them is
the handling real NVML errors get.  `calls` counts every call per (function, device).
"""

from __future__ import annotations

import csv
import gzip
import re
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml

NVMLError = pynvml.NVMLError
MiB = 1024 * 1024

# NVML's clock-event reason bits (nvml.h nvmlClocksEventReason*), by nvidia-smi's names.
REASON_BITS = {
    "gpu_idle": 0x1,
    "applications_clocks_setting": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40,
    "hw_power_brake_slowdown": 0x80,
    "display_clocks_setting": 0x100,
}


@dataclass
class Proc:
    pid: int
    used_bytes: int | None
    type: str  # C, G or C+G
    gpu_instance_id: int | None = None
    compute_instance_id: int | None = None


@dataclass
class Mig:
    index: int
    gpu_instance_id: int
    compute_instance_id: int
    mem_total: int | None
    mem_used: int | None


@dataclass
class Gpu:
    name: str
    uuid: str
    mem_total: int | None = None
    mem_used: int | None = None
    util_gpu: int | None = None
    util_mem: int | None = None
    power_mw: int | None = None
    energy_mj: int | None = None
    temp_c: int | None = None
    sm_clock: int | None = None
    mem_clock: int | None = None
    pcie_tx: int | None = None
    pcie_rx: int | None = None
    ecc_corrected: int | None = None
    ecc_uncorrected: int | None = None
    reasons: int | None = None
    mig_mode: int | None = None  # 1 enabled, 0 disabled, None: no MIG on this board
    migs: list[Mig] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)


@dataclass(frozen=True)
class Handle:
    gpu: int
    mig: int | None = None

    def __str__(self) -> str:
        return f"{self.gpu}" if self.mig is None else f"{self.gpu}.{self.mig}"


class NvmlReplay:
    """The pynvml functions GpuSampler calls, answered from `gpus`.

    fail: {(function name, device label or "*"): NVML error code} raised on every call.
    event_reasons=False plays bindings older than nvmlDeviceGetCurrentClocksEventReasons.
    """

    NVMLError = pynvml.NVMLError

    def __init__(
        self,
        driver: str,
        gpus: list[Gpu],
        *,
        fail: dict[tuple[str, str], int] | None = None,
        event_reasons: bool = True,
    ):
        self.driver = driver
        self.gpus = gpus
        self.fail = fail or {}
        self.calls: Counter[tuple[str, str]] = Counter()
        self.initialised = 0
        if not event_reasons:
            self.nvmlDeviceGetCurrentClocksEventReasons = None  # type: ignore[assignment]

    # -- plumbing --------------------------------------------------------------------------
    def _enter(self, fn: str, handle: Handle | None = None) -> None:
        label = "" if handle is None else str(handle)
        self.calls[(fn, label)] += 1
        for key in ((fn, label), (fn, "*")):
            if key in self.fail:
                raise NVMLError(self.fail[key])

    def _gpu(self, fn: str, handle: Handle) -> Gpu:
        self._enter(fn, handle)
        if handle.mig is not None:
            raise NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)  # NVML: not for MIG handles
        return self.gpus[handle.gpu]

    @staticmethod
    def _have(v: Any) -> Any:
        if v is None:
            raise NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return v

    def _mig(self, handle: Handle) -> Mig:
        for m in self.gpus[handle.gpu].migs:
            if m.index == handle.mig:
                return m
        raise NVMLError(pynvml.NVML_ERROR_NOT_FOUND)

    # -- system ----------------------------------------------------------------------------
    def nvmlInit(self) -> None:
        self._enter("nvmlInit")
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self.initialised -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._enter("nvmlSystemGetDriverVersion")
        return self.driver

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> Handle:
        self._enter("nvmlDeviceGetHandleByIndex", Handle(i))
        if not 0 <= i < len(self.gpus):
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return Handle(i)

    # -- identity and MIG ------------------------------------------------------------------
    def nvmlDeviceGetName(self, h: Handle) -> str:
        return self._gpu("nvmlDeviceGetName", h).name

    def nvmlDeviceGetUUID(self, h: Handle) -> str:
        return self._gpu("nvmlDeviceGetUUID", h).uuid

    def nvmlDeviceGetMigMode(self, h: Handle) -> list[int]:
        mode = self._have(self._gpu("nvmlDeviceGetMigMode", h).mig_mode)
        return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, h: Handle) -> int:
        gpu = self._gpu("nvmlDeviceGetMaxMigDeviceCount", h)
        self._have(gpu.mig_mode)
        return 7  # A100/H100/H200: up to seven instances

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: Handle, j: int) -> Handle:
        self._gpu("nvmlDeviceGetMigDeviceHandleByIndex", h)
        mig = Handle(h.gpu, j)
        self._mig(mig)
        return mig

    def nvmlDeviceGetGpuInstanceId(self, h: Handle) -> int:
        self._enter("nvmlDeviceGetGpuInstanceId", h)
        return self._mig(h).gpu_instance_id

    def nvmlDeviceGetComputeInstanceId(self, h: Handle) -> int:
        self._enter("nvmlDeviceGetComputeInstanceId", h)
        return self._mig(h).compute_instance_id

    # -- metrics ---------------------------------------------------------------------------
    def nvmlDeviceGetMemoryInfo(self, h: Handle) -> SimpleNamespace:
        self._enter("nvmlDeviceGetMemoryInfo", h)
        src: Gpu | Mig = self.gpus[h.gpu] if h.mig is None else self._mig(h)
        total, used = self._have(src.mem_total), self._have(src.mem_used)
        return SimpleNamespace(total=total, used=used, free=total - used)

    def nvmlDeviceGetUtilizationRates(self, h: Handle) -> SimpleNamespace:
        gpu = self._gpu("nvmlDeviceGetUtilizationRates", h)
        return SimpleNamespace(gpu=self._have(gpu.util_gpu), memory=self._have(gpu.util_mem))

    def nvmlDeviceGetPowerUsage(self, h: Handle) -> int:
        return self._have(self._gpu("nvmlDeviceGetPowerUsage", h).power_mw)

    def nvmlDeviceGetTotalEnergyConsumption(self, h: Handle) -> int:
        return self._have(self._gpu("nvmlDeviceGetTotalEnergyConsumption", h).energy_mj)

    def nvmlDeviceGetTemperature(self, h: Handle, sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self._have(self._gpu("nvmlDeviceGetTemperature", h).temp_c)

    def nvmlDeviceGetClockInfo(self, h: Handle, clock: int) -> int:
        gpu = self._gpu("nvmlDeviceGetClockInfo", h)
        by_type = {pynvml.NVML_CLOCK_SM: gpu.sm_clock, pynvml.NVML_CLOCK_MEM: gpu.mem_clock}
        return self._have(by_type[clock])

    def nvmlDeviceGetPcieThroughput(self, h: Handle, counter: int) -> int:
        gpu = self._gpu("nvmlDeviceGetPcieThroughput", h)
        by_counter = {
            pynvml.NVML_PCIE_UTIL_TX_BYTES: gpu.pcie_tx,
            pynvml.NVML_PCIE_UTIL_RX_BYTES: gpu.pcie_rx,
        }
        return self._have(by_counter[counter])

    def nvmlDeviceGetTotalEccErrors(self, h: Handle, kind: int, counter: int) -> int:
        gpu = self._gpu("nvmlDeviceGetTotalEccErrors", h)
        assert counter == pynvml.NVML_VOLATILE_ECC
        by_kind = {
            pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED: gpu.ecc_corrected,
            pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED: gpu.ecc_uncorrected,
        }
        return self._have(by_kind[kind])

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: Handle) -> int:
        return self._have(self._gpu("nvmlDeviceGetCurrentClocksEventReasons", h).reasons)

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h: Handle) -> int:
        return self._have(self._gpu("nvmlDeviceGetCurrentClocksThrottleReasons", h).reasons)

    def nvmlDeviceGetComputeRunningProcesses(self, h: Handle) -> list[SimpleNamespace]:
        self._enter("nvmlDeviceGetComputeRunningProcesses", h)
        gpu = self.gpus[h.gpu]
        procs = [p for p in gpu.procs if "C" in p.type]
        if h.mig is not None:
            mig = self._mig(h)
            procs = [
                p
                for p in procs
                if (p.gpu_instance_id, p.compute_instance_id)
                == (mig.gpu_instance_id, mig.compute_instance_id)
            ]
        return [
            SimpleNamespace(
                pid=p.pid,
                usedGpuMemory=p.used_bytes,
                gpuInstanceId=p.gpu_instance_id,
                computeInstanceId=p.compute_instance_id,
            )
            for p in procs
        ]


# -- reading the captures ---------------------------------------------------------------------

_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def number(text: str | None) -> float | None:
    """'81559 MiB' -> 81559.0; 'N/A', '[N/A]', '' and None -> None."""
    if text is None:
        return None
    m = _NUMBER.match(text.strip())
    return float(m.group()) if m else None


def as_int(text: str | None, scale: float = 1) -> int | None:
    v = number(text)
    return None if v is None else round(v * scale)


def mib(text: str | None) -> int | None:
    return as_int(text, MiB)


def watts_to_mw(text: str | None) -> int | None:
    return as_int(text, 1000)


def _mig_mode(text: str | None) -> int | None:
    return {"Enabled": 1, "Disabled": 0}.get((text or "").strip())


def _sum(texts: list[str | None]) -> int | None:
    values = [as_int(t) for t in texts]
    if not values or any(v is None for v in values):
        return None
    return sum(v for v in values if v is not None)


def _xml_gpu(g: ET.Element) -> Gpu:
    def text(path: str) -> str | None:
        return g.findtext(path)

    power = (
        text("power_readings/power_draw")
        or text("gpu_power_readings/power_draw")
        # DTD v13 has no power_draw: NVML's power usage is the 1 s average on new boards.
        or text("gpu_power_readings/average_power_draw")
    )
    vol = g.find("ecc_errors/volatile")
    corrected: list[str | None] = []
    uncorrected: list[str | None] = []
    if vol is not None and vol.find("single_bit") is not None:  # DTD v11
        corrected = [vol.findtext("single_bit/total")]
        uncorrected = [vol.findtext("double_bit/total")]
    elif vol is not None:  # v12+: SRAM and DRAM counters
        for c in vol:
            (uncorrected if "uncorrectable" in c.tag else corrected).append(c.text)
    reasons: int | None = None
    block = g.find("clocks_event_reasons")
    if block is None:
        block = g.find("clocks_throttle_reasons")
    if block is not None:
        reasons = 0
        for c in block:
            name = re.sub(r"^clocks_(event|throttle)_reason_", "", c.tag)
            if (c.text or "").strip() == "Active":
                reasons |= REASON_BITS[name]
    migs = [
        Mig(
            index=int(m.findtext("index") or 0),
            gpu_instance_id=int(m.findtext("gpu_instance_id") or 0),
            compute_instance_id=int(m.findtext("compute_instance_id") or 0),
            mem_total=mib(m.findtext("fb_memory_usage/total")),
            mem_used=mib(m.findtext("fb_memory_usage/used")),
        )
        for m in g.findall("mig_devices/mig_device")
    ]
    procs = [
        Proc(
            pid=int(p.findtext("pid") or 0),
            used_bytes=mib(p.findtext("used_memory")),
            type=(p.findtext("type") or "").strip(),
            gpu_instance_id=as_int(p.findtext("gpu_instance_id")),
            compute_instance_id=as_int(p.findtext("compute_instance_id")),
        )
        for p in g.findall("processes/process_info")
    ]
    return Gpu(
        name=text("product_name") or "",
        uuid=text("uuid") or "",
        mem_total=mib(text("fb_memory_usage/total")),
        mem_used=mib(text("fb_memory_usage/used")),
        util_gpu=as_int(text("utilization/gpu_util")),
        util_mem=as_int(text("utilization/memory_util")),
        power_mw=watts_to_mw(power),
        temp_c=as_int(text("temperature/gpu_temp")),
        sm_clock=as_int(text("clocks/sm_clock")),
        mem_clock=as_int(text("clocks/mem_clock")),
        pcie_tx=as_int(text("pci/tx_util")),
        pcie_rx=as_int(text("pci/rx_util")),
        ecc_corrected=_sum(corrected),
        ecc_uncorrected=_sum(uncorrected),
        reasons=reasons,
        mig_mode=_mig_mode(text("mig_mode/current_mig")),
        migs=migs,
        procs=procs,
    )


def from_xml(path: Path, **kw: Any) -> NvmlReplay:
    """A replay of an `nvidia-smi -q -x` capture (plain or .gz)."""
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    root = ET.fromstring(data)
    return NvmlReplay(
        root.findtext("driver_version") or "", [_xml_gpu(g) for g in root.findall("gpu")], **kw
    )


def _sections(path: Path) -> dict[str, list[str]]:
    """An exporter capture's sections by title ('load :: query (-q)' ...)."""
    out: dict[str, list[str]] = {}
    lines = path.read_text().splitlines()
    rule = "#" * 80
    i = 0
    while i < len(lines):
        if lines[i] == rule and i + 1 < len(lines) and lines[i + 1].startswith("# "):
            title = lines[i + 1][2:]
            j = i + 2
            while j < len(lines) and lines[j] != rule:
                j += 1  # the '# $ command' lines
            k = j + 1
            while k < len(lines) and lines[k] != rule:
                k += 1
            out[title] = lines[j + 1 : k]
            i = k
        else:
            i += 1
    return out


def _q_text(lines: list[str]) -> tuple[int | None, int | None, list[Mig], list[Proc]]:
    """PCIe throughput, MIG devices and processes from `nvidia-smi -q` text (one GPU)."""
    tx = rx = None
    migs: list[Mig] = []
    procs: list[Proc] = []
    headers: dict[int, str] = {}
    for line in lines:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        key, colon, value = line.strip().partition(":")
        key, value = key.strip(), value.strip()
        for d in [d for d in headers if d >= indent]:
            del headers[d]
        path = [headers[d] for d in sorted(headers)]
        if not colon:
            headers[indent] = key
            if key == "MIG Device":
                migs.append(Mig(0, 0, 0, None, None))
            continue
        if key == "Tx Throughput":
            tx = as_int(value)
        elif key == "Rx Throughput":
            rx = as_int(value)
        elif path and path[-1] == "MIG Device":
            m = migs[-1]
            if key == "Index":
                m.index = int(value)
            elif key == "GPU Instance ID":
                m.gpu_instance_id = int(value)
            elif key == "Compute Instance ID":
                m.compute_instance_id = int(value)
        elif path[-2:] == ["MIG Device", "Shared FB Memory Usage"]:
            if key == "Total":
                migs[-1].mem_total = mib(value)
            elif key == "Used":
                migs[-1].mem_used = mib(value)
        elif "Processes" in path:
            if key == "GPU instance ID":  # the first line of each process
                procs.append(Proc(0, None, "", as_int(value)))
            elif key == "Compute instance ID":
                procs[-1].compute_instance_id = as_int(value)
            elif key == "Process ID":
                procs[-1].pid = int(value)
            elif key == "Type":
                procs[-1].type = value
            elif key == "Used GPU Memory":
                procs[-1].used_bytes = mib(value)
    return tx, rx, migs, procs


def from_capture(path: Path, phase: str = "load", **kw: Any) -> NvmlReplay:
    """A replay of one phase ('idle' or 'load') of an nvidia_gpu_exporter capture."""
    sections = _sections(path)
    table = list(
        csv.reader(
            sections[f"{phase} :: query-gpu (csv, what the exporter parses)"], skipinitialspace=True
        )
    )
    header = [h.split(" [")[0] for h in table[0]]
    rows = [dict(zip(header, r, strict=True)) for r in table[1:] if r]
    tx, rx, migs, procs = _q_text(sections[f"{phase} :: query (-q)"])
    gpus = []
    for r in rows:
        gpus.append(
            Gpu(
                name=r["name"],
                uuid=r["uuid"],
                mem_total=mib(r["memory.total"]),
                mem_used=mib(r["memory.used"]),
                util_gpu=as_int(r["utilization.gpu"]),
                util_mem=as_int(r["utilization.memory"]),
                power_mw=watts_to_mw(r["power.draw"]),
                temp_c=as_int(r["temperature.gpu"]),
                sm_clock=as_int(r["clocks.current.sm"]),
                mem_clock=as_int(r["clocks.current.memory"]),
                pcie_tx=tx,
                pcie_rx=rx,
                ecc_corrected=as_int(r["ecc.errors.corrected.volatile.total"]),
                ecc_uncorrected=as_int(r["ecc.errors.uncorrected.volatile.total"]),
                reasons=int(r["clocks_event_reasons.active"], 16),
                mig_mode=_mig_mode(r["mig.mode.current"]),
                migs=migs,
                procs=procs,
            )
        )
    assert len(gpus) == 1, "the -q text is read as one GPU's"
    return NvmlReplay(rows[0]["driver_version"], gpus, **kw)
