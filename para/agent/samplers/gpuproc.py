"""GPU use per process, for the agent: the GPU sampler plus NVML's per-process utilisation.

nvmlDeviceGetProcessUtilization returns the samples the driver took (about every 1/6 s)
since a timestamp: SM, memory, encoder and decoder utilisation of each process.  Each sample
the agent asks for those since its previous call on that GPU and stores their average per
process (`gpu_proc_util`); the job sampler sums them per job.  A board or driver that does
not support it (NOT_SUPPORTED, or no such function in old bindings) leaves the table out and
says so once in the family's facts; NOT_FOUND means no process ran there in the interval.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from para.agent.samplers.base import Rows, event
from para.agent.samplers.gpu import ABSENT, NVML_ERROR_NOT_FOUND, GpuSampler

# per-process samples are stamped in microseconds
_US = 1_000_000


class GpuProcessSampler(GpuSampler):
    tables = ("gpu", "gpu_proc", "gpu_proc_util", "events")

    def __init__(
        self,
        nvml: Any | None = None,
        *,
        process_utilization: bool = True,
        pcie_gpus_per_sample: int = 4,
        on_message: Callable[[str], None] | None = None,
    ):
        super().__init__(nvml, pcie_gpus_per_sample=pcie_gpus_per_sample, on_message=on_message)
        self.process_utilization = process_utilization
        self._since: dict[str, int] = {}
        self._util_absent: set[str] = set()
        self._util_said: set[tuple[str, int]] = set()
        self._util_fn: Callable[..., Any] | None = None

    def open(self) -> dict[str, Any]:
        self.devices = []
        facts = super().open()
        fn = getattr(self._nv, "nvmlDeviceGetProcessUtilization", None)
        self._util_fn = fn if self.process_utilization else None
        facts["process_utilization"] = (
            "off (gpu.process_utilization = false)"
            if not self.process_utilization
            else ("nvmlDeviceGetProcessUtilization" if fn else "not in these NVML bindings")
        )
        return facts

    def sample(self, t_ms: int, out: Rows) -> None:
        super().sample(t_ms, out)
        if self._util_fn is None:
            return
        rows: list[list[Any]] = []
        for dev in self.devices:
            if dev.migs or dev.key in self._util_absent:
                continue  # NVML does not give per-process utilisation under MIG
            rows.extend(self._utilization(dev.key, dev.handle, t_ms, out))
        if rows:
            out["gpu_proc_util"] = rows

    def _utilization(self, key: str, handle: Any, t_ms: int, out: Rows) -> list[list[Any]]:
        assert self._util_fn is not None
        since = self._since.get(key, (t_ms - 1000) * 1000)
        try:
            samples = self._util_fn(handle, since)
        except self._error as e:
            code = getattr(e, "value", -1)
            if code in ABSENT:
                self._util_absent.add(key)
                self._note(f"GPU {key}: no per-process utilisation from NVML ({e})")
            elif code != NVML_ERROR_NOT_FOUND and (key, code) not in self._util_said:
                self._util_said.add((key, code))
                self._note(f"GPU {key}: reading per-process utilisation failed ({e})")
                out.setdefault("events", []).append(
                    event(
                        t_ms, "gpu_error", f"gpu {key}", metric="process_utilization", error=str(e)
                    )
                )
            self._since[key] = t_ms * 1000
            return []
        acc: dict[int, list[float]] = {}
        newest = since
        for s in samples or ():
            a = acc.setdefault(s.pid, [0.0, 0.0, 0.0, 0.0, 0.0])
            a[0] += s.smUtil
            a[1] += s.memUtil
            a[2] += s.encUtil
            a[3] += s.decUtil
            a[4] += 1
            newest = max(newest, s.timeStamp)
        self._since[key] = newest if newest > since else t_ms * 1000
        return [
            [
                key,
                pid,
                round(a[0] / a[4]),
                round(a[1] / a[4]),
                round(a[2] / a[4]),
                round(a[3] / a[4]),
            ]
            for pid, a in acc.items()
        ]
