"""The GPU sampler against replays of nvidia-smi captures from real machines, and against the
real pynvml of this machine (which has no NVIDIA driver)."""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path
from typing import Any

import pynvml
import pytest

from para.agent.loop import SamplingLoop
from para.agent.samplers.base import Rows, Unavailable
from para.agent.samplers.gpu import INIT_REASONS, GpuSampler
from para.formats.schema import GPU, GPU_PROC

from .conftest import need_tool
from .nvml_replay import MiB, NvmlReplay, from_capture, from_xml

pytestmark = pytest.mark.no_kernel

FIX = Path(__file__).parent / "fixtures" / "nvidia-smi"
V100S = FIX / "nvidia-smi-q-x-8x-tesla-v100s-pcie-32gb-datakit.xml.gz"
A100 = FIX / "nvidia-smi-q-x-a100-sxm4-v12-telegraf.xml"
A10G = FIX / "nvidia-smi-q-x-a10g-telegraf.xml"
T4 = FIX / "nvidia-smi-q-x-tesla-t4-telegraf.xml"
ADA = FIX / "nvidia-smi-q-x-rtx-4000-sff-ada-v13-telegraf.xml"
CAPTURE = "nvidia-smi-capture-linux-x86_64__nvidia-{}__590.48.01-nvidia_gpu_exporter.txt"
H100 = FIX / CAPTURE.format("h100-80gb-hbm3")
H100_MIG = FIX / CAPTURE.format("h100-mig")
H200 = FIX / CAPTURE.format("h200")
H200_MIG = FIX / CAPTURE.format("h200-mig")

COLS = [c.name for c in GPU.columns][1:]  # a row: the gpu key and the metrics, no t


def run(replay: NvmlReplay, samples: int = 1, **kw: Any) -> tuple[GpuSampler, dict, list[Rows]]:
    s = GpuSampler(replay, **kw)
    facts = s.open()
    outs: list[Rows] = []
    for i in range(samples):
        out: Rows = {}
        s.sample(1_800_000_000_000 + 1000 * i, out)
        outs.append(out)
    return s, facts, outs


def by_key(rows: list[list[Any]]) -> dict[str, dict[str, Any]]:
    assert all(len(r) == len(COLS) for r in rows)
    return {r[0]: dict(zip(COLS, r, strict=True)) for r in rows}


def test_eight_v100s_give_eight_rows_with_the_recorded_values():
    s, facts, (out,) = run(from_xml(V100S))
    assert facts["driver_version"] == "460.73.01"
    assert [g["gpu"] for g in facts["gpus"]] == [str(i) for i in range(8)]
    assert {g["name"] for g in facts["gpus"]} == {"Tesla V100S-PCIE-32GB"}
    assert {g["mem_total"] for g in facts["gpus"]} == {32510 * MiB}
    assert facts["gpus"][0]["uuid"] == "GPU-76098dc1-d3bc-9a1b-7ea6-f7b48837829e"
    assert {g["mig_mode"] for g in facts["gpus"]} == {None}
    rows = by_key(out["gpu"])
    assert list(rows) == [str(i) for i in range(8)]
    assert out["gpu"][0] == [
        "0",
        97,  # utilization.gpu 97 %
        52,
        31689 * MiB,  # "31689 MiB" in bytes
        32510 * MiB,
        232800,  # "232.80 W" in mW
        None,  # no energy counter in the capture: NOT_SUPPORTED
        66,
        1410,
        1107,
        22000,  # tx_util "22000 KB/s"
        19000,
        0,
        0,
        0,
    ]
    assert rows["2"]["power_mw"] == 67570
    assert rows["3"]["throttle_reasons"] == 0x4  # sw_power_cap Active
    assert rows["7"]["util_gpu"] == 99
    s.close()


def test_per_process_gpu_memory_of_the_v100s():
    _, _, (out,) = run(from_xml(V100S))
    procs = out["gpu_proc"]
    assert all(len(r) == len(GPU_PROC.columns) - 1 for r in procs)
    assert [r[0] for r in procs] == [str(i) for i in range(8)]
    assert {r[1] for r in procs} == {37305}
    assert procs[0][2] == 31683 * MiB
    assert procs[7][2] == 29495 * MiB


def test_pcie_read_for_a_few_gpus_per_sample_in_turn():
    _, facts, outs = run(from_xml(V100S), samples=3)
    assert "at most 4 GPUs per sample" in facts["pcie"]
    first, second, third = (by_key(o["gpu"]) for o in outs)
    assert [first[str(i)]["pcie_tx_kbs"] is not None for i in range(8)] == [True] * 4 + [False] * 4
    assert [second[str(i)]["pcie_rx_kbs"] is not None for i in range(8)] == [False] * 4 + [True] * 4
    assert (second["4"]["pcie_tx_kbs"], second["4"]["pcie_rx_kbs"]) == (602000, 2797000)
    assert third["0"]["pcie_tx_kbs"] == 22000
    _, _, (out,) = run(from_xml(V100S), pcie_gpus_per_sample=8)
    assert all(r["pcie_tx_kbs"] is not None for r in by_key(out["gpu"]).values())


def test_not_supported_is_none_and_never_asked_again():
    replay = from_xml(V100S)
    s, _, outs = run(replay, samples=3)
    for out in outs:
        assert {r[COLS.index("energy_mj")] for r in out["gpu"]} == {None}
    for i in range(8):
        assert replay.calls[("nvmlDeviceGetTotalEnergyConsumption", str(i))] == 1
        assert replay.calls[("nvmlDeviceGetPowerUsage", str(i))] == 3
    assert s.metadata()["unsupported"] == {str(i): ["energy"] for i in range(8)}
    assert not any("events" in out for out in outs)


def test_h100_query_gpu_units():
    _, facts, (out,) = run(from_capture(H100, "idle"))
    assert facts["driver_version"] == "590.48.01"
    assert facts["gpus"][0]["mig_mode"] == "disabled"
    row = by_key(out["gpu"])["0"]
    assert row["mem_total"] == 81559 * MiB
    assert row["mem_used"] == 0
    assert row["power_mw"] == 69850  # "69.85 W"
    assert (row["util_gpu"], row["temp_c"], row["sm_clock_mhz"]) == (0, 41, 345)
    assert row["throttle_reasons"] == 0x1  # 0x0000000000000001: idle
    assert (row["pcie_tx_kbs"], row["pcie_rx_kbs"]) == (352, 329)
    assert out["gpu_proc"] == []


def test_h100_and_h200_under_load_with_their_processes():
    _, _, (out,) = run(from_capture(H100, "load"))
    row = by_key(out["gpu"])["0"]
    assert (row["util_gpu"], row["util_mem"], row["power_mw"]) == (100, 11, 631950)
    assert row["mem_used"] == 19818 * MiB
    assert out["gpu_proc"] == [
        ["0", 11327, 2566 * MiB],
        ["0", 11328, 1542 * MiB],
        ["0", 11345, 15690 * MiB],
    ]
    _, facts, (out,) = run(from_capture(H200, "load"))
    assert facts["gpus"][0]["name"] == "NVIDIA H200"
    row = by_key(out["gpu"])["0"]
    assert (row["mem_total"], row["power_mw"], row["mem_clock_mhz"]) == (
        143771 * MiB,
        627400,
        3201,
    )
    assert [p[1:] for p in out["gpu_proc"]][-1] == [10309, 28234 * MiB]


def test_h100_mig_instances_and_their_processes():
    replay = from_capture(H100_MIG, "load")
    s, facts, outs = run(replay, samples=2)
    gpu = facts["gpus"][0]
    assert gpu["mig_mode"] == "enabled"
    assert [(m["gpu"], m["gpu_instance_id"], m["mem_total"]) for m in gpu["mig"]] == [
        ("0.0", 2, 40448 * MiB),
        ("0.1", 3, 20096 * MiB),
        ("0.2", 9, 9984 * MiB),
        ("0.3", 10, 9984 * MiB),
    ]
    rows = by_key(outs[0]["gpu"])
    assert list(rows) == ["0", "0.0", "0.1", "0.2", "0.3"]
    parent = rows["0"]
    assert (parent["util_gpu"], parent["util_mem"]) == (None, None)  # "[N/A]" under MIG
    assert (parent["mem_used"], parent["power_mw"]) == (11125 * MiB, 433780)
    assert (parent["pcie_tx_kbs"], parent["pcie_rx_kbs"]) == (9139, 19191)
    mig = rows["0.0"]
    assert (mig["mem_used"], mig["mem_total"]) == (11091 * MiB, 40448 * MiB)
    assert all(v is None for k, v in mig.items() if k not in ("gpu", "mem_used", "mem_total"))
    assert outs[0]["gpu_proc"] == [
        ["0.0", 21180, 2296 * MiB],
        ["0.0", 21181, 1272 * MiB],
        ["0.0", 21198, 7484 * MiB],
    ]
    assert replay.calls[("nvmlDeviceGetUtilizationRates", "0")] == 1
    assert replay.calls[("nvmlDeviceGetComputeRunningProcesses", "0")] == 0
    assert s.metadata()["unsupported"] == {"0": ["energy", "util"]}


def test_h200_mig_processes_go_to_their_compute_instance():
    _, facts, (out,) = run(from_capture(H200_MIG, "load"))
    keys = [
        (m["gpu"], m["gpu_instance_id"], m["compute_instance_id"]) for m in facts["gpus"][0]["mig"]
    ]
    assert keys == [("0.0", 2, 0), ("0.1", 2, 1), ("0.2", 3, 0), ("0.3", 9, 0), ("0.4", 10, 0)]
    assert {r[0] for r in out["gpu_proc"]} == {"0.1"}  # GPU instance 2, compute instance 1
    assert [r[1] for r in out["gpu_proc"]] == [12249, 12250, 12267]
    assert by_key(out["gpu"])["0.3"]["mem_total"] == 16384 * MiB


def test_a100_mig_from_xml():
    _, facts, (out,) = run(from_xml(A100))
    assert [m["gpu"] for m in facts["gpus"][0]["mig"]] == ["0.0", "0.1", "0.2", "0.3"]
    rows = by_key(out["gpu"])
    assert rows["0"]["power_mw"] == 67030
    assert rows["0"]["util_gpu"] is None
    assert {rows[f"0.{j}"]["mem_total"] for j in range(4)} == {19968 * MiB}
    assert rows["0.2"]["mem_used"] == 12 * MiB


def test_ada_v13_ecc_off_and_compute_processes_only():
    replay = from_xml(ADA)
    s, _, outs = run(replay, samples=2)
    row = by_key(outs[1]["gpu"])["0"]
    assert (row["ecc_corrected"], row["ecc_uncorrected"]) == (None, None)  # ECC disabled: N/A
    assert replay.calls[("nvmlDeviceGetTotalEccErrors", "0")] == 1
    assert row["power_mw"] == 8810  # average_power_draw 8.81 W
    assert (row["util_mem"], row["throttle_reasons"]) == (37, 0x1)
    # graphics-only clients (the compositor, an editor) are not compute processes
    assert outs[0]["gpu_proc"] == [["0", 4937, 160 * MiB], ["0", 34626, 183 * MiB]]
    assert "ecc" in s.metadata()["unsupported"]["0"]


def test_older_bindings_use_the_throttle_reasons_call():
    replay = from_xml(A10G, event_reasons=False)
    _, facts, (out,) = run(replay)
    assert facts["driver_version"] == "515.105.01"
    assert by_key(out["gpu"])["0"]["throttle_reasons"] == 0x1  # gpu_idle Active
    assert replay.calls[("nvmlDeviceGetCurrentClocksThrottleReasons", "0")] == 1
    assert out["gpu_proc"] == []  # only Xorg, a graphics process


def test_driver_without_the_event_reasons_call_falls_back():
    replay = from_xml(T4, fail={("nvmlDeviceGetCurrentClocksEventReasons", "*"): 13})
    _, _, outs = run(replay, samples=2)
    assert {by_key(o["gpu"])["0"]["throttle_reasons"] for o in outs} == {0}
    assert replay.calls[("nvmlDeviceGetCurrentClocksEventReasons", "0")] == 1
    assert replay.calls[("nvmlDeviceGetCurrentClocksThrottleReasons", "0")] == 2
    assert outs[0]["gpu_proc"] == [["0", 5762, 1005 * MiB]]
    assert not any("events" in o for o in outs)


def test_an_error_on_one_gpu_keeps_the_others():
    replay = from_xml(
        V100S, fail={("nvmlDeviceGetUtilizationRates", "3"): pynvml.NVML_ERROR_UNKNOWN}
    )
    messages: list[str] = []
    s, _, outs = run(replay, samples=2, on_message=messages.append)
    rows = by_key(outs[0]["gpu"])
    assert len(rows) == 8
    assert (rows["3"]["util_gpu"], rows["3"]["power_mw"]) == (None, 198410)
    assert rows["4"]["util_gpu"] == 98
    errors = outs[0]["events"]
    assert [(e[1], e[3]) for e in errors] == [("gpu_error", "gpu 3")]
    assert '"metric": "util"' in errors[0][4] and "Unknown Error" in errors[0][4]
    assert "events" not in outs[1]  # said once
    assert replay.calls[("nvmlDeviceGetUtilizationRates", "3")] == 2  # but asked again
    assert len(messages) == 1 and "GPU 3" in messages[0]
    assert s.notes == messages


def test_a_lost_gpu_has_no_row_and_the_others_do():
    replay = from_xml(
        V100S, fail={("nvmlDeviceGetUtilizationRates", "5"): pynvml.NVML_ERROR_GPU_IS_LOST}
    )
    s, _, (out,) = run(replay)
    assert list(by_key(out["gpu"])) == ["0", "1", "2", "3", "4", "6", "7"]
    assert [r[0] for r in out["gpu_proc"]] == ["0", "1", "2", "3", "4", "6", "7"]
    assert replay.calls[("nvmlDeviceGetMemoryInfo", "5")] == 1  # at open(); not after the loss
    assert "GPU 5 is lost" in s.notes[0]


def test_init_failures_are_plain_reasons():
    no_driver = from_xml(T4, fail={("nvmlInit", ""): pynvml.NVML_ERROR_DRIVER_NOT_LOADED})
    with pytest.raises(Unavailable, match="NVIDIA driver not loaded"):
        GpuSampler(no_driver).open()
    no_gpu = NvmlReplay("595.84", [])
    with pytest.raises(Unavailable, match="no GPU found"):
        GpuSampler(no_gpu).open()
    assert no_gpu.initialised == 0  # shut down again


def test_close_shuts_nvml_down():
    replay = from_xml(T4)
    s, _, _ = run(replay)
    assert replay.initialised == 1
    s.close()
    s.close()
    assert replay.initialised == 0


def test_through_the_sampling_loop_in_its_own_thread():
    got: list[Rows] = []
    loop = SamplingLoop([GpuSampler(from_xml(V100S))], lambda t, rows: got.append(rows), 1.0)
    status = loop.open()
    assert status["gpu"].state == "ok"
    assert status["gpu"].facts["gpus"][7]["gpu"] == "7"
    loop.sample_once()
    loop.close()
    assert len(got[0]["gpu"]) == 8 and len(got[0]["gpu_proc"]) == 8


def nvml_library_present() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


def test_real_pynvml_on_this_machine():
    s = GpuSampler()
    if nvml_library_present():
        # A machine with a driver: para sees the GPUs nvidia-smi lists, or, where nvidia-smi
        # cannot reach one either, says why in one of its own sentences.
        smi = need_tool("nvidia-smi", "install the NVIDIA driver's utilities (nvidia-utils)")
        r = subprocess.run([smi, "--query-gpu=index,uuid,name", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        listed = [[f.strip() for f in ln.split(",")] for ln in r.stdout.splitlines() if ln.strip()]
        try:
            if r.returncode == 0 and listed:
                facts = s.open()
                seen = [[g["gpu"], g.get("uuid"), g.get("name")] for g in facts["gpus"]]
                assert seen == listed, (seen, r.stdout)
            else:
                with pytest.raises(Unavailable) as e:
                    s.open()
                why = str(e.value)
                assert why in INIT_REASONS.values() or why.startswith(
                    ("NVML cannot", "no GPU found", "none of the")
                ), (why, r.stdout, r.stderr)
        finally:
            s.close()
        return
    with pytest.raises(Unavailable) as e:
        s.open()
    assert str(e.value) == (
        "NVML library not found: no NVIDIA driver on this machine "
        "(libnvidia-ml.so.1 cannot be loaded)"
    )
    s.close()
