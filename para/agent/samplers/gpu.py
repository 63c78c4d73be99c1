"""NVIDIA GPUs through NVML (nvidia-ml-py): one `gpu` row per GPU and per MIG instance, and
the GPU memory of each compute process.

NVML answers NOT_SUPPORTED for what a board or mode lacks (utilization under MIG, energy
before Volta, ECC on consumer boards); such a metric is stored as null and never asked again
on that device, so a sample costs only the calls that can answer.  Any other NVML error
costs that one value (a lost GPU, that one GPU's row); the other GPUs' rows are kept.

nvmlDeviceGetPcieThroughput measures over 20 ms inside the driver, two readings per GPU: on a
node with many GPUs that alone would eat the sample's time budget, so the PCIe columns are
read for at most `pcie_gpus_per_sample` GPUs per sample, in turn; the others' are null.

MIG instances are keyed "GPU.N", N being NVML's MIG device index (nvidia-smi's "MIG Dev"):
NVML gives their memory and their processes, and nothing else, so their other columns are
null.  The MIG layout is read once, at open().
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from para.agent.samplers.base import Rows, Sampler, Unavailable, event

# NVML's ABI values (nvml.h); fixed, so an injected backend need not define them.
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_PCIE_UTIL_TX_BYTES = 0
NVML_PCIE_UTIL_RX_BYTES = 1
NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_VOLATILE_ECC = 0
NVML_DEVICE_MIG_ENABLE = 1

# Absent means absent: a metric in these is null for the device from then on.
ABSENT = (NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_FUNCTION_NOT_FOUND)

INIT_REASONS = {
    NVML_ERROR_LIBRARY_NOT_FOUND: (
        "NVML library not found: no NVIDIA driver on this machine "
        "(libnvidia-ml.so.1 cannot be loaded)"
    ),
    NVML_ERROR_DRIVER_NOT_LOADED: (
        "NVIDIA driver not loaded: NVML is installed but the nvidia kernel module is not "
        "running (check `nvidia-smi` and `lsmod | grep nvidia`)"
    ),
    NVML_ERROR_LIB_RM_VERSION_MISMATCH: (
        "NVML and the NVIDIA kernel driver are different versions (driver upgraded without "
        "a reboot?): reboot, or reload the nvidia kernel module"
    ),
    NVML_ERROR_NO_PERMISSION: (
        "no permission to use the NVIDIA driver: check the access rights of /dev/nvidia*"
    ),
}

# Columns of a gpu row after the key, in schema order.
N_METRICS = 14


class _Lost(Exception):
    """The GPU stopped answering: skip the rest of its calls this sample."""


@dataclass
class _Device:
    key: str  # "0", or "0.1" for a MIG instance
    handle: Any
    mig: bool = False
    gpu_instance_id: int | None = None
    compute_instance_id: int | None = None
    migs: list[_Device] = field(default_factory=list)
    absent: set[str] = field(default_factory=set)  # metrics NVML does not have here
    said: set[tuple[str, int]] = field(default_factory=set)  # (metric, error) reported


def _text(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


class GpuSampler(Sampler):
    """GPUs through NVML.  `nvml` is the pynvml module (default) or anything with the same
    functions (tests pass a replay of recorded nvidia-smi outputs).

    For the file's metadata read `metadata()` (per GPU: metrics NVML does not support there);
    `notes` holds what to tell the user (also handed to `on_message`).
    """

    family = "gpu"
    tables: tuple[str, ...] = ("gpu", "gpu_proc", "events")
    may_block = True

    def __init__(
        self,
        nvml: Any | None = None,
        *,
        pcie_gpus_per_sample: int = 4,
        on_message: Callable[[str], None] | None = None,
    ):
        self.nvml = nvml
        self.pcie_gpus_per_sample = pcie_gpus_per_sample
        self.on_message = on_message
        self.notes: list[str] = []
        self.devices: list[_Device] = []
        self._nv: Any = None
        self._error: type[BaseException] = Exception
        self._pcie_next = 0
        self._errors: list[tuple[_Device, str, int, str]] = []
        self._throttle: Callable[[Any], int] | None = None
        self._throttle_old: Callable[[Any], int] | None = None

    def _note(self, msg: str) -> None:
        self.notes.append(msg)
        if self.on_message is not None:
            self.on_message(msg)

    # -- set-up ----------------------------------------------------------------------------
    def open(self) -> dict[str, Any]:
        nv: Any = self.nvml
        if nv is None:
            try:
                nv = importlib.import_module("pynvml")
            except ImportError as e:
                raise Unavailable(
                    "nvidia-ml-py is not installed (no module pynvml): pip install nvidia-ml-py"
                ) from e
        self._error = nv.NVMLError
        try:
            nv.nvmlInit()
        except nv.NVMLError as e:
            code = getattr(e, "value", -1)
            raise Unavailable(INIT_REASONS.get(code, f"NVML cannot start: {e}")) from e
        self._nv = nv
        try:
            facts = self._discover(nv)
        except BaseException:
            self.close()
            raise
        self._throttle_old = getattr(nv, "nvmlDeviceGetCurrentClocksThrottleReasons", None)
        # The event-reasons call replaces the throttle-reasons one (deprecated in CUDA 12).
        self._throttle = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
        if self._throttle is None:
            self._throttle = self._throttle_old
        return facts

    def _discover(self, nv: Any) -> dict[str, Any]:
        try:
            count = nv.nvmlDeviceGetCount()
        except nv.NVMLError as e:
            raise Unavailable(f"NVML cannot count the GPUs: {e}") from e
        if count == 0:
            raise Unavailable("no GPU found: the NVIDIA driver is loaded but NVML sees no device")
        gpus: list[dict[str, Any]] = []
        for i in range(count):
            try:
                handle = nv.nvmlDeviceGetHandleByIndex(i)
            except nv.NVMLError as e:
                gpus.append({"gpu": str(i), "error": str(e)})
                self._note(f"GPU {i} cannot be opened ({e}); it is left out")
                continue
            dev = _Device(str(i), handle)
            info: dict[str, Any] = {
                "gpu": dev.key,
                "name": self._fact(lambda h: _text(nv.nvmlDeviceGetName(h)), handle),
                "uuid": self._fact(lambda h: _text(nv.nvmlDeviceGetUUID(h)), handle),
                "mem_total": self._fact(lambda h: nv.nvmlDeviceGetMemoryInfo(h).total, handle),
            }
            mode = self._fact(lambda h: nv.nvmlDeviceGetMigMode(h)[0], handle)
            info["mig_mode"] = (
                None
                if mode is None
                else ("enabled" if mode == NVML_DEVICE_MIG_ENABLE else "disabled")
            )
            if mode == NVML_DEVICE_MIG_ENABLE:
                dev.migs = self._mig_devices(nv, dev)
                info["mig"] = [
                    {
                        "gpu": m.key,
                        "gpu_instance_id": m.gpu_instance_id,
                        "compute_instance_id": m.compute_instance_id,
                        "mem_total": self._fact(
                            lambda h: nv.nvmlDeviceGetMemoryInfo(h).total, m.handle
                        ),
                    }
                    for m in dev.migs
                ]
            self.devices.append(dev)
            gpus.append(info)
        if not self.devices:
            raise Unavailable(f"none of the {count} GPUs NVML lists can be opened")
        return {
            "driver_version": self._fact(lambda _: _text(nv.nvmlSystemGetDriverVersion()), None),
            "gpus": gpus,
            "pcie": (
                f"nvmlDeviceGetPcieThroughput (a 20 ms reading) for at most "
                f"{self.pcie_gpus_per_sample} GPUs per sample, in turn"
            ),
        }

    def _fact(self, get: Callable[[Any], Any], handle: Any) -> Any:
        try:
            return get(handle)
        except self._error:
            return None

    def _mig_devices(self, nv: Any, parent: _Device) -> list[_Device]:
        out: list[_Device] = []
        try:
            slots = nv.nvmlDeviceGetMaxMigDeviceCount(parent.handle)
        except nv.NVMLError as e:
            self._note(f"GPU {parent.key} is in MIG mode but its instances cannot be listed: {e}")
            return out
        for j in range(slots):
            try:
                h = nv.nvmlDeviceGetMigDeviceHandleByIndex(parent.handle, j)
            except nv.NVMLError as e:
                if getattr(e, "value", None) != NVML_ERROR_NOT_FOUND:
                    self._note(f"MIG device {parent.key}.{j} cannot be opened: {e}")
                continue
            out.append(
                _Device(
                    f"{parent.key}.{j}",
                    h,
                    mig=True,
                    gpu_instance_id=self._fact(nv.nvmlDeviceGetGpuInstanceId, h),
                    compute_instance_id=self._fact(nv.nvmlDeviceGetComputeInstanceId, h),
                )
            )
        return out

    # -- sampling --------------------------------------------------------------------------
    def _get(self, dev: _Device, metric: str, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(handle, *args), or None when NVML cannot say."""
        if metric in dev.absent:
            return None
        try:
            return fn(dev.handle, *args)
        except self._error as e:
            self._failed(dev, metric, e)
            return None

    def _failed(self, dev: _Device, metric: str, e: BaseException) -> None:
        """NOT_SUPPORTED is remembered; other errors are reported; a lost GPU is given up."""
        code = getattr(e, "value", -1)
        if code in ABSENT:
            dev.absent.add(metric)
            return
        self._errors.append((dev, metric, code, str(e)))
        if code == NVML_ERROR_GPU_IS_LOST:
            raise _Lost from e

    def _throttle_reasons(self, dev: _Device) -> int | None:
        fn = self._throttle
        if fn is None or "throttle_reasons" in dev.absent:
            return None
        try:
            return int(fn(dev.handle))
        except self._error as e:
            old = self._throttle_old
            code = getattr(e, "value", None)
            if code == NVML_ERROR_FUNCTION_NOT_FOUND and old is not None and old is not fn:
                # The bindings know the new call, the driver does not: use the old one.
                self._throttle = old
                return self._throttle_reasons(dev)
            self._failed(dev, "throttle_reasons", e)
            return None

    def _gpu_row(self, dev: _Device, pcie: bool) -> list[Any]:
        nv = self._nv
        g = self._get
        util = g(dev, "util", nv.nvmlDeviceGetUtilizationRates)
        mem = g(dev, "memory", nv.nvmlDeviceGetMemoryInfo)
        tx = rx = None
        if pcie:
            tx = g(dev, "pcie", nv.nvmlDeviceGetPcieThroughput, NVML_PCIE_UTIL_TX_BYTES)
            if tx is not None:
                rx = g(dev, "pcie", nv.nvmlDeviceGetPcieThroughput, NVML_PCIE_UTIL_RX_BYTES)
        ecc = nv.nvmlDeviceGetTotalEccErrors
        return [
            dev.key,
            None if util is None else util.gpu,
            None if util is None else util.memory,
            None if mem is None else mem.used,
            None if mem is None else mem.total,
            g(dev, "power", nv.nvmlDeviceGetPowerUsage),
            g(dev, "energy", nv.nvmlDeviceGetTotalEnergyConsumption),
            g(dev, "temp", nv.nvmlDeviceGetTemperature, NVML_TEMPERATURE_GPU),
            g(dev, "sm_clock", nv.nvmlDeviceGetClockInfo, NVML_CLOCK_SM),
            g(dev, "mem_clock", nv.nvmlDeviceGetClockInfo, NVML_CLOCK_MEM),
            tx,
            rx,
            g(dev, "ecc", ecc, NVML_MEMORY_ERROR_TYPE_CORRECTED, NVML_VOLATILE_ECC),
            g(dev, "ecc", ecc, NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_VOLATILE_ECC),
            self._throttle_reasons(dev),
        ]

    def _procs(self, dev: _Device, out: list[list[Any]]) -> None:
        procs = self._get(dev, "processes", self._nv.nvmlDeviceGetComputeRunningProcesses)
        for p in procs or ():
            out.append([dev.key, p.pid, p.usedGpuMemory])

    def _pcie_turn(self) -> set[str]:
        """The GPUs whose PCIe throughput this sample reads."""
        able = [d for d in self.devices if "pcie" not in d.absent]
        if len(able) <= self.pcie_gpus_per_sample:
            return {d.key for d in able}
        start = self._pcie_next % len(able)
        self._pcie_next = start + self.pcie_gpus_per_sample
        return {able[(start + k) % len(able)].key for k in range(self.pcie_gpus_per_sample)}

    def sample(self, t_ms: int, out: Rows) -> None:
        self._errors = []
        gpu_rows: list[list[Any]] = []
        proc_rows: list[list[Any]] = []
        pcie = self._pcie_turn()
        for dev in self.devices:
            try:
                row = self._gpu_row(dev, dev.key in pcie)
                if any(v is not None for v in row[1:]):
                    gpu_rows.append(row)
                if not dev.migs:
                    self._procs(dev, proc_rows)
                for mig in dev.migs:
                    mem = self._get(mig, "memory", self._nv.nvmlDeviceGetMemoryInfo)
                    if mem is not None:
                        mig_row: list[Any] = [mig.key] + [None] * N_METRICS
                        mig_row[3], mig_row[4] = mem.used, mem.total
                        gpu_rows.append(mig_row)
                    self._procs(mig, proc_rows)
            except _Lost:
                continue
        out["gpu"] = gpu_rows
        out["gpu_proc"] = proc_rows
        events = self._report(t_ms)
        if events:
            out.setdefault("events", []).extend(events)

    def _report(self, t_ms: int) -> list[list[Any]]:
        """An events row and a note the first time a GPU fails a metric with a given error."""
        events: list[list[Any]] = []
        for dev, metric, code, text in self._errors:
            if (metric, code) in dev.said:
                continue
            dev.said.add((metric, code))
            events.append(event(t_ms, "gpu_error", f"gpu {dev.key}", metric=metric, error=text))
            if code == NVML_ERROR_GPU_IS_LOST:
                self._note(f"GPU {dev.key} is lost ({text}): it has no rows until it answers")
            else:
                self._note(f"GPU {dev.key}: reading {metric} failed ({text}); left empty")
        return events

    # -- winding down ----------------------------------------------------------------------
    def close(self) -> None:
        nv, self._nv = self._nv, None
        if nv is not None:
            try:
                nv.nvmlShutdown()
            except nv.NVMLError:
                pass

    def metadata(self) -> dict[str, Any]:
        """Per GPU (and MIG instance), the metrics NVML does not give there (null columns)."""
        devs = [d for dev in self.devices for d in (dev, *dev.migs)]
        return {"unsupported": {d.key: sorted(d.absent) for d in devs if d.absent}}
