"""The bottleneck rules: what limits a job, with the evidence in numbers and advice in words.

Each rule has a stable id, a metric, thresholds whose defaults and sources are in rules.toml
(overridable with `para report --rules FILE` or PARA_RULES), and comes out as one of:
- fired: a bottleneck, with severity, evidence, advice and its estimated impact (the share
  of the job's time or resources it costs, which orders the findings);
- passed: measured, within bounds (the value is reported);
- not evaluated: its inputs were not recorded (no PMU, no GPU, no call stacks ...), said with
  the reason instead of guessing.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from para.errors import ParaError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SEVERITY = ("high", "medium", "low")
# Frames inside communication libraries: by symbol, or by the library itself where perf
# could not name the function (distributions strip their MPI plugins: "[mca_btl_vader.so]",
# "[libopen-pal.so.40.30.2]").  OpenSHMEM is matched by its API names, not by "shmem_": the
# kernel's tmpfs is shmem_* too (shmem_fault, shmem_file_read_iter, shmem_get_folio), and I/O
# on /dev/shm is not communication.  RE2 (DuckDB) and Python read it alike: no lookarounds.
COMM_DSOS = (r"\[(libmpi|libmpich|libopen-pal|libopen-rte|libpmix|mca_|libucp|libuct|libucs|"
             r"libfabric|libpsm2|libpsm_infinipath|libnccl|libibverbs|libmlx5|libhcoll|"
             r"liboshmem|libsma)")  # fmt: skip
SHMEM_API = (r"p?shmemx?_(init(_thread)?(;|$)|finalize|my_pe|n_pes|barrier|sync|quiet|fence|"
             r"(put|get)(8|16|32|64|128|mem|_signal|_nbi)|i(put|get)(8|16|32|64|128)|"
             r"wait|test|broadcast|collect|fcollect|alltoall|(and|or|xor|max|min|sum|prod)_"
             r"reduce|set_lock|clear_lock|test_lock|ctx_|team_|atomic_|signal_|"
             r"(short|int|long|longlong|float|double|longdouble|char|schar|uchar|ushort|uint|"
             r"ulong|ulonglong|int8|int16|int32|int64|uint8|uint16|uint32|uint64|size|ptrdiff|"
             r"complexd|complexf)_)")  # fmt: skip
COMM_FRAMES = re.compile(
    r"(^|;)(P?MPIX?_|MPID|MPIR_|mca_|ompi_|opal_|orte_|ucp_|uct_|ucs_|psm2?_|fi_|"
    r"ibv_|mlx5_|nccl|gloo|gasnet|" + SHMEM_API + "|" + COMM_DSOS + ")"
)  # fmt: skip
COMM_PATTERN = COMM_FRAMES.pattern
# I/O in the C library, the kernel and the parallel I/O libraries (issue 13: a job's I/O share)
IO_PATTERN = (
    r"(^|;)(__libc_(p?read|p?write)v?|(p?read|p?write)v?(64)?|fsync|fdatasync|__?open64|"
    r"openat|io_submit|io_uring_\w+|ksys_(p?read|p?write)\w*|vfs_\w+|do_sys_open\w*|"
    r"H5[A-Z]\w*|nc_\w+|ncmpi_\w+|MPI_File_\w+|adios2?\w*)(;|$)"
)
META_PATTERN = (
    r"(^|;)(do_sys_open|do_sys_openat2|__x64_sys_open|path_openat|do_filp_open|vfs_statx|"
    r"do_statx|vfs_fstatat|__do_sys_newfstatat|__do_sys_newstat|__x64_sys_statx|do_unlinkat|"
    r"__x64_sys_unlink|do_mkdirat|do_rmdir|do_renameat2|path_lookupat|filename_lookup|"
    r"do_faccessat|__x64_sys_access|iterate_dir|__x64_sys_getdents|ll_lookup|ll_file_open|"
    r"mdc_|nfs_lookup|nfs4_proc_open|nfs_atomic_open)"
)


# Python threads (issue 12): the frames of data loaders, of their worker processes, and of
# copies between host and GPU memory (the CUDA runtime's and driver's), as perf and py-spy
# name them (py-spy: "module.function (path/file.py:line)").
DATA_LOADING_PATTERN = r"(torch/utils/data/|tensorflow/python/data/|[dD]ata_?[lL]oader)"
LOADER_WORKER_PATTERN = r"(torch/utils/data/_utils/worker\.py|_worker_loop \()"
H2D_PATTERN = (r"(cudaMemcpy|cuMemcpy|cudaHostAlloc|cuMemHostAlloc|cudaHostRegister|"
               r"cuMemHostRegister|cudaMallocHost|cuMemAllocHost)")  # fmt: skip


# Memory-controller traffic, by the events that count it (perfsets.py collects them): each
# source is (what it is, its read and write events, its total event, bytes per count when
# perf printed no unit).  perf scales the named Intel events itself (sysfs .scale/.unit:
# cas_count_* and the free-running data_* print in MiB); AMD's UMC CAS commands and data-
# fabric beats, and Intel's raw uncore event 0x04 with the read/write umasks of Skylake-SP
# (0x03, 0x0c) and Ice Lake-SP (0x0f, 0x30), are counts of 64-byte lines.  A node's traffic
# comes from the first source it has: two sources count the same bytes.
MEM_SOURCES: tuple[tuple[str, str, str | None, float], ...] = (
    ("Intel IMC CAS", r"(^|/)cas_count_(read|write)(/|$)", None, 2.0**20),
    ("Intel IMC CAS", r"(?i)unc_m_cas_count\.(rd|wr)", None, 64.0),
    ("Intel IMC free-running", r"imc_free_running[^/]*/data_(read|write)/",
     r"imc_free_running[^/]*/data_total/", 2.0**20),
    ("AMD UMC CAS", r"umc_cas_cmd\.(rd|wr)", r"umc_cas_cmd\.all", 64.0),
    ("AMD data-fabric DRAM", r"(read|write)_data_beats_dram", None, 64.0),
    ("Intel IMC CAS", r"imc[^/]*/event=0x0?4,umask=0x(0?3|0?c|0f|30)/", None, 64.0),
)  # fmt: skip
MEM_CAS_PATTERN = "|".join(
    p for _, rw, total, _ in MEM_SOURCES for p in (rw, total) if p
).replace("(?i)", "")  # fmt: skip
MEM_CAS_PATTERN = MEM_CAS_PATTERN.replace(
    r"unc_m_cas_count\.(rd|wr)", r"(unc_m_cas_count|UNC_M_CAS_COUNT)\.(rd|wr|RD|WR)"
)
# what perf prints as an event's unit, in bytes
UNIT_BYTES = {"B": 1.0, "Bytes": 1.0, "KiB": 2.0**10, "MiB": 2.0**20, "GiB": 2.0**30,
              "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9}  # fmt: skip


def memory_traffic(
    rows: list[tuple[int, str, str | None, float | None]],
) -> dict[int, tuple[float, str]]:
    """Per node: memory traffic in bytes/s and the source it was read from, from the rows
    (node, event, unit, per second) of the events matching MEM_CAS_PATTERN."""
    out: dict[int, tuple[float, str]] = {}
    for node in sorted({r[0] for r in rows}):
        mine = [r for r in rows if r[0] == node and r[3] is not None]
        for name, rw, total, per_count in MEM_SOURCES:
            for pattern in (rw, total):
                if pattern is None:
                    continue
                rx = re.compile(pattern)
                hits = [r for r in mine if rx.search(r[1])]
                if not hits:
                    continue
                bps = 0.0
                for _, _, unit, per_s in hits:
                    scale = UNIT_BYTES.get((unit or "").strip(), per_count) if unit else per_count
                    bps += float(per_s or 0.0) * scale
                out[node] = (bps, name)
                break
            if node in out:
                break
    return out


def default_config() -> dict[str, dict[str, Any]]:
    text = resources.files("para.analyzer").joinpath("rules.toml").read_text()
    return tomllib.loads(text)


def load_config(path: str | os.PathLike[str] | None = None) -> dict[str, dict[str, Any]]:
    """The defaults, with the overrides of `path` (or of $PARA_RULES) merged over them."""
    cfg = default_config()
    path = path or os.environ.get("PARA_RULES") or None
    if not path:
        return cfg
    p = Path(path)
    try:
        user = tomllib.loads(p.read_text())
    except OSError as e:
        raise ParaError(f"cannot read rules file {p}: {e.strerror or e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ParaError(f"{p}: not valid TOML: {e}", hint="see para/analyzer/rules.toml") from e
    for rule, table in user.items():
        if rule not in cfg:
            raise ParaError(
                f"{p}: no rule named [{rule}]",
                hint="rules: " + ", ".join(sorted(cfg)),
            )
        if not isinstance(table, dict):
            raise ParaError(f"{p}: [{rule}] must be a table of settings")
        for key, value in table.items():
            if key not in cfg[rule]:
                keys = ", ".join(k for k in cfg[rule] if isinstance(cfg[rule][k], (int, float)))
                raise ParaError(f"{p}: [{rule}] has no setting {key!r}", hint=f"settings: {keys}")
            if isinstance(cfg[rule][key], (int, float)) and not isinstance(value, (int, float)):
                raise ParaError(f"{p}: [{rule}] {key} must be a number, not {value!r}")
            cfg[rule][key] = value
        cfg[rule]["source"] = f"{cfg[rule]['source']} (changed in {p})"
    return cfg


@dataclass
class Outcome:
    id: str
    title: str
    status: str  # fired | passed | not_evaluated
    metric: str
    source: str
    value: float | None = None
    unit: str = ""
    thresholds: dict[str, float] = field(default_factory=dict)
    reason: str | None = None
    severity: str | None = None
    impact_pct: float = 0.0
    evidence: str = ""
    advice: str = ""
    nodes: list[str] = field(default_factory=list)
    start_s: float | None = None
    end_s: float | None = None

    def rule_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "value": _r(self.value),
            "unit": self.unit,
            "thresholds": {k: _r(v) for k, v in self.thresholds.items()},
            "source": self.source,
            "reason": self.reason,
        }

    def bottleneck(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "severity": self.severity,
            "title": self.title,
            "evidence": self.evidence,
            "advice": self.advice,
            "metric": self.metric,
            "value": _r(self.value),
            "unit": self.unit,
            "thresholds": {k: _r(v) for k, v in self.thresholds.items()},
            "source": self.source,
            "impact_pct": round(self.impact_pct, 1),
            "nodes": self.nodes,
            "start_s": self.start_s,
            "end_s": self.end_s,
        }


def _r(v: float | None, nd: int = 4) -> float | None:
    if v is None or not math.isfinite(v):
        return None
    return round(float(v), nd) + 0.0


@dataclass
class Facts:
    """What the rules look at; built by analysis.py from the job's tables."""

    step_s: float
    duration_s: float
    steps: int
    samples: int
    nodes: list[dict[str, Any]]
    totals: dict[str, Any]
    series: dict[str, list[Any]]
    phases: list[dict[str, Any]]
    cores: list[tuple[int, int, float | None]]
    siblings: list[dict[str, Any]]
    gpus: list[dict[str, Any]]
    counters: dict[str, dict[str, Any]]
    regression: dict[str, Any] | None
    catastrophe: dict[str, Any] | None
    ib: dict[str, Any] | None
    stack_samples: int
    share: Callable[[str], float | None]
    counter_rate: Callable[[str], list[tuple[int, float | None]]]
    unmeasured: dict[str, str]
    processes: dict[int, dict[int, str]]
    has_meta_counters: bool
    meta_ops_per_node: float | None
    # MPI ranks (sql/analysis.sql `ranks`): rank, cpu_s, node, nodes, samples, comm
    ranks: list[dict[str, Any]] = field(default_factory=list)
    # Python threads' stacks (pyfacts.python_facts), None without py-spy stacks (issue 12)
    python: dict[str, Any] | None = None
    # (node, event, unit, per second) of the counter events matching a pattern
    counter_events: Callable[[str], list[tuple[int, str, str | None, float | None]]] = field(
        default=lambda pattern: []
    )
    # per node: the peak memory bandwidth of the machine (bytes/s) and where it came from
    memory_peak: dict[int, tuple[float, str]] = field(default_factory=dict)
    # whether the call stacks hold kernel frames (False: perf sampled user space only, so
    # system calls are invisible in them); None: not known (a file without the count)
    kernel_stacks: bool | None = None


MIN_RANK_SAMPLES = 20  # call-stack samples of a rank for its MPI share to mean something


def rank_shares(ranks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ranks whose call stacks were sampled enough, with their share of samples inside
    communication libraries (`mpi_share`) and their CPU time outside them (`work_s`)."""
    out = []
    for r in ranks:
        if (r.get("samples") or 0) >= MIN_RANK_SAMPLES:
            share = (r.get("comm") or 0) / r["samples"]
            out.append({**r, "mpi_share": share, "work_s": (r.get("cpu_s") or 0.0) * (1 - share)})
    return out


def _sev(impact: float) -> str:
    return "high" if impact >= 25 else "medium" if impact >= 10 else "low"


def _fmt_s(s: float) -> str:
    return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"


def _bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class Evaluator:
    def __init__(self, facts: Facts, config: dict[str, dict[str, Any]]):
        self.f = facts
        self.cfg = config

    def outcome(self, rid: str, status: str, **kw: Any) -> Outcome:
        c = self.cfg[rid]
        th = {k: float(v) for k, v in c.items() if isinstance(v, (int, float))
              and not isinstance(v, bool)}  # fmt: skip
        o = Outcome(rid, c["title"], status, c["metric"], c["source"], thresholds=th, **kw)
        if status == "fired":
            o.advice = c["advice"]
            if o.severity is None:
                o.severity = _sev(o.impact_pct)
        return o

    def missing(self, rid: str, reason: str) -> Outcome:
        return self.outcome(rid, "not_evaluated", reason=reason)

    def run(self) -> list[Outcome]:
        out = []
        for rid in self.cfg:
            fn = getattr(self, rid, None)
            if fn is None:
                continue
            out.append(fn(rid, self.cfg[rid]))
        return out

    # -- time ---------------------------------------------------------------------------------
    def too_short(self, rid: str, c: dict[str, Any]) -> Outcome:
        n = self.f.samples
        if n < c["min_samples"]:
            return self.outcome(
                rid, "fired", value=n, unit="samples", severity="low",
                evidence=f"{n} samples over {_fmt_s(self.f.duration_s)} (every "
                f"{self.f.step_s:g} s); fewer than {c['min_samples']:g}",
            )  # fmt: skip
        return self.outcome(rid, "passed", value=n, unit="samples")

    # -- job: nodes -------------------------------------------------------------------------
    def _work_nodes(self) -> list[dict[str, Any]]:
        return [n for n in self.f.nodes if n["steps"]]

    def idle_nodes(self, rid: str, c: dict[str, Any]) -> Outcome:
        nodes = self._work_nodes()
        if not nodes:
            return self.missing(rid, "no CPU samples in the recording")
        peak = max((n["cores"] or 0.0) for n in nodes)
        idle = []
        for n in nodes:
            cores = n["cores"] or 0.0
            share = cores / max(n["allowed"], 1)
            rel = cores / peak if peak > 0 else 0.0
            if share < c["max_share"] and (len(nodes) == 1 or rel < c["max_share"] or peak <= 0):
                idle.append(n)
        worst = min(((n["cores"] or 0.0) / max(n["allowed"], 1) for n in nodes), default=0.0)
        if not idle:
            return self.outcome(rid, "passed", value=100 * worst, unit="% of CPUs")
        impact = 100.0 * len(idle) / len(nodes)
        lines = [f"{n['label']}: {n['cores'] or 0:.2f} of {n['allowed']} cores busy on average "
                 f"over {_fmt_s(n['steps'] * self.f.step_s)}" for n in idle[:5]]  # fmt: skip
        more = f" and {len(idle) - 5} more" if len(idle) > 5 else ""
        busiest = max(nodes, key=lambda n: n["cores"] or 0.0)
        ref = (f"; busiest node {busiest['label']}: {busiest['cores']:.2f} cores"
               if len(nodes) > 1 and peak > 0 else "")  # fmt: skip
        what = ("the job's processes did no work" if len(nodes) == 1
                else f"{len(idle)} of {len(nodes)} nodes did no work")  # fmt: skip
        return self.outcome(
            rid, "fired", value=100 * worst, unit="% of CPUs", impact_pct=impact,
            evidence=f"{what}: " + "; ".join(lines) + more + ref,
            nodes=[n["label"] for n in idle],
        )  # fmt: skip

    def low_cpu_utilization(self, rid: str, c: dict[str, Any]) -> Outcome:
        t = self.f.totals
        if not t.get("steps") or t.get("cores") is None:
            return self.missing(rid, "no CPU samples in the recording")
        if self.f.gpus and any(g["util"] is not None and g["util"] >= 1 for g in self.f.gpus):
            return self.missing(rid, "a GPU job: its CPU use is judged by the GPU rules")
        util = 100.0 * t["cores"] / max(t["allowed"], 1e-9)
        if util >= c["warn_pct"]:
            return self.outcome(rid, "passed", value=util, unit="%")
        sev = "high" if util < c["alert_pct"] else "medium"
        nodes = len(self._work_nodes())
        where = f" on {nodes} nodes" if nodes > 1 else ""
        return self.outcome(
            rid, "fired", value=util, unit="%", severity=sev, impact_pct=100.0 - util,
            evidence=f"{t['cores']:.2f} cores busy on average of {t['allowed']:.0f} the job "
            f"could use{where} ({util:.0f} %) over {_fmt_s(self.f.duration_s)}; "
            f"peak {t['peak_cores']:.2f} cores",
        )  # fmt: skip

    def serial_bottleneck(self, rid: str, c: dict[str, Any]) -> Outcome:
        s = self.f.series
        # the cores of the nodes doing real work (not the noise of thousands of idle ranks)
        pairs = [(w, a) for w, a, live in zip(s["active_cores"], s["allowed"], s["live"],
                                              strict=True)
                 if live and w is not None and a]  # fmt: skip
        if not pairs:
            return self.missing(rid, "no CPU samples in the recording")
        if max(a for _, a in pairs) < 2:
            return self.missing(rid, "the job could use only one CPU")
        serial = [w for w, a in pairs if a >= 2 and c["low_cores"] <= w <= c["high_cores"]]
        share = len(serial) / len(pairs)
        if share < c["min_share"]:
            return self.outcome(rid, "passed", value=100 * share, unit="% of the run")
        allowed = sum(a for _, a in pairs) / len(pairs)
        impact = 100.0 * share * (1 - 1 / max(allowed, 1))
        where = self._phase_of(lambda p: p["label"].startswith("serial"))
        busiest = self._busiest_core()
        return self.outcome(
            rid, "fired", value=100 * share, unit="% of the run", impact_pct=impact,
            evidence=f"about one core busy ({sum(serial) / len(serial):.2f} cores on average) "
            f"during {len(serial)} of {len(pairs)} steps ({100 * share:.0f} % of the run) "
            f"while {allowed:.0f} could be used" + where + busiest,
        )  # fmt: skip

    def _busiest_core(self) -> str:
        if not self.f.cores or len(self.f.nodes) != 1:
            return ""
        shares = [(cpu, b) for _, cpu, b in self.f.cores if b is not None]
        if len(shares) < 2:
            return ""
        shares.sort(key=lambda x: -x[1])
        top, rest = shares[0], shares[1:]
        mean_rest = sum(b for _, b in rest) / len(rest)
        return (f"; busiest CPU {top[0]} {100 * top[1]:.0f} % busy, the other "
                f"{len(rest)} {100 * mean_rest:.0f} % on average")  # fmt: skip

    def _phase_of(self, pred: Callable[[dict[str, Any]], bool]) -> str:
        hits = [p for p in self.f.phases if pred(p)]
        if not hits:
            return ""
        p = max(hits, key=lambda p: p["duration_s"])
        return (
            f"; mostly in phase {p['index'] + 1} ({p['label']}, {p['start_s']:g}-{p['end_s']:g} s)"
        )

    def load_imbalance(self, rid: str, c: dict[str, Any]) -> Outcome:
        nodes = [n for n in self._work_nodes()
                 if (n["cores"] or 0) > 0.01 * max(n["allowed"], 1)]  # fmt: skip
        findings: list[tuple[float, float, str, list[str]]] = []
        best_value = 0.0
        if len(nodes) >= 2:
            work = [n["cores"] or 0.0 for n in nodes]
            top = max(work)
            mean = sum(work) / len(work)
            imb = (top - mean) / top if top > 0 else 0.0
            best_value = max(best_value, imb)
            if imb > c["max_imbalance"]:
                busiest = max(nodes, key=lambda n: n["cores"] or 0.0)
                least = min(nodes, key=lambda n: n["cores"] or 0.0)
                med = sorted(work)[len(work) // 2]
                strag = [n["label"] for n in nodes if (n["cores"] or 0) > 1.1 * med]
                late = self._late_nodes()
                ev = (f"nodes busy {least['cores']:.2f} to {busiest['cores']:.2f} cores "
                      f"(mean {mean:.2f}, busiest {busiest['label']}): imbalance "
                      f"{100 * imb:.0f} %")  # fmt: skip
                if strag:
                    ev += f"; stragglers (over 1.1x the median node): {', '.join(strag[:8])}"
                    ev += f" and {len(strag) - 8} more" if len(strag) > 8 else ""
                if late:
                    ev += f"; finished working last: {late}"
                findings.append((100 * imb, imb, ev, strag or [busiest["label"]]))
        for g in self.f.siblings:
            if g["n"] < 2 or g["share"] < c["min_share"] or g["max_cpu"] <= 0:
                continue
            imb = (g["max_cpu"] - g["mean_cpu"]) / g["max_cpu"]
            best_value = max(best_value, imb)
            if imb <= c["max_imbalance"]:
                continue
            names = self.f.processes.get(g["node"], {})
            label = self.f.nodes[g["node"]]["label"] if len(self.f.nodes) > 1 else ""
            ev = (f"{g['n']} processes of parent {g['ppid']}"
                  + (f" on {label}" if label else "")
                  + f" used {g['min_cpu']:.2f} to {g['max_cpu']:.2f} s of CPU (mean "
                  f"{g['mean_cpu']:.2f} s, busiest pid {g['busiest']}"
                  + (f" {names[g['busiest']]}" if g["busiest"] in names else "")
                  + f"): imbalance {100 * imb:.0f} %")  # fmt: skip
            findings.append((100 * imb * g["share"], imb, ev, [label] if label else []))
        ranks = self._rank_imbalance(c)
        if ranks is not None:
            best_value = max(best_value, ranks[1])
            if ranks[1] > c["max_imbalance"] and ranks[0] >= 100 * c["min_share"]:
                findings.append(ranks)
        if not findings:
            if len(nodes) < 2 and not self.f.siblings and len(self.f.ranks) < 2:
                return self.missing(rid, "one node, one rank and no sibling processes to compare")
            return self.outcome(rid, "passed", value=100 * best_value, unit="%")
        findings.sort(key=lambda f: -f[0])
        impact, imb, ev, where = findings[0]
        extra = "; " + "; ".join(f[2] for f in findings[1:3]) if len(findings) > 1 else ""
        return self.outcome(
            rid, "fired", value=100 * imb, unit="%", impact_pct=impact, evidence=ev + extra,
            nodes=where,
        )  # fmt: skip

    def _rank_imbalance(self, c: dict[str, Any]
                        ) -> tuple[float, float, str, list[str]] | None:  # fmt: skip
        """The ranks compared.  A rank that waits in MPI spins there: with call stacks the
        work of a rank is its CPU time outside communication libraries, and the time the
        others spent in MPI is the evidence; without them, CPU time (which hides spinning)."""
        ranks = [r for r in self.f.ranks if (r.get("cpu_s") or 0) > 0]
        if len(ranks) < 2:
            return None
        sampled = rank_shares(ranks)
        with_stacks = len(sampled) >= 2
        if with_stacks:
            work = {r["rank"]: r["work_s"] for r in sampled}
            ranks = sampled
        else:
            work = {r["rank"]: float(r["cpu_s"]) for r in ranks}
        top = max(work.values())
        if top <= 0:
            return None
        mean = sum(work.values()) / len(work)
        imb = (top - mean) / top
        busiest = max(ranks, key=lambda r: work[r["rank"]])
        least = min(work.values())
        median = sorted(work.values())[len(work) // 2]
        strag = [r["rank"] for r in ranks if work[r["rank"]] > 1.1 * median]
        # What the imbalance costs: the others wait for the busiest rank's extra work, which is
        # only the part of its time it computes (an allreduce loop's 11 % spread of a compute
        # share of 20 % is not worth a finding)
        busy_share = min(1.0, top / busiest["cpu_s"]) if with_stacks and busiest["cpu_s"] else 1.0
        impact = 100 * imb * busy_share
        what = "CPU time outside MPI" if with_stacks else "CPU time"
        ev = (f"{len(ranks)} ranks worked {least:.2f} to {top:.2f} s ({what}; mean {mean:.2f} s,"
              f" busiest rank {busiest['rank']}{self._node_of(busiest)}): imbalance "
              f"{100 * imb:.0f} %")  # fmt: skip
        if strag and len(strag) < len(ranks):
            ev += "; straggler ranks (over 1.1x the median): " + ", ".join(map(str, strag[:8]))
            ev += f" and {len(strag) - 8} more" if len(strag) > 8 else ""
        if with_stacks:
            by_share = sorted(ranks, key=lambda r: -r["mpi_share"])
            shown = ", ".join(f"rank {r['rank']} {100 * r['mpi_share']:.0f} %"
                              for r in by_share[:8])  # fmt: skip
            more = f" and {len(by_share) - 8} more" if len(by_share) > 8 else ""
            ev += (f"; time in MPI (share of each rank's call-stack samples in communication "
                   f"libraries; a rank that yields or sleeps while it waits shows the wait as "
                   f"less CPU time instead): {shown}{more}")  # fmt: skip
        else:
            ev += ("; without call stacks a rank spinning in an MPI wait looks busy: record with "
                   "para profile --functions to see the MPI wait of each rank")  # fmt: skip
        where = sorted({self._label(r) for r in ranks if r["rank"] in strag or r is busiest} - {""})
        return (impact, imb, ev, where)

    def _label(self, r: dict[str, Any]) -> str:
        node = r.get("node")
        if len(self.f.nodes) < 2 or not isinstance(node, int) or node >= len(self.f.nodes):
            return ""
        return str(self.f.nodes[node]["label"])

    def _node_of(self, r: dict[str, Any]) -> str:
        label = self._label(r)
        return f" on {label}" if label else ""

    def _late_nodes(self) -> str:
        ends = [(str(n["label"]), float(n["end_work"])) for n in self.f.nodes if n.get("end_work")]
        if len(ends) < 2:
            return ""
        ends.sort(key=lambda x: -x[1])
        others = sorted(e for _, e in ends[1:])
        median = others[len(others) // 2]
        if ends[0][1] - median < max(3, 0.02 * self.f.steps):
            return ""
        return (f"{ends[0][0]} ({(ends[0][1] - median) * self.f.step_s:.0f} s after the "
                "median node)")  # fmt: skip

    # -- storage ----------------------------------------------------------------------------
    def io_wait_bound(self, rid: str, c: dict[str, Any]) -> Outcome:
        nodes = self._work_nodes()
        if not nodes:
            return self.missing(rid, "no CPU samples in the recording")
        d_shares = [n["dstate_share"] for n in nodes if n["dstate_share"] is not None]
        t = self.f.totals
        # Two views of the same wait: the job's processes seen blocked in the kernel on I/O
        # (state D, sampled), and the node's CPUs idle waiting for I/O (counted, but
        # node-wide: it counts only while the job itself moves data, and is low when other
        # programs keep the CPUs busy).
        d_share = sum(d_shares) / len(d_shares) if d_shares else 0.0
        busy, wait = t.get("cores") or 0.0, t.get("iowait") or 0.0
        job_io = (t.get("read_bps") or 0.0) + (t.get("write_bps") or 0.0)
        io_known = t.get("read_bps") is not None or t.get("write_bps") is not None
        # The node's iowait is the job's only while the job moves data (or when neither its
        # data nor its processes' states were recorded: then it is all there is).
        counted = job_io >= 1e6 or (not io_known and not d_shares)
        w_share = wait / (busy + wait) if busy + wait > 0 and counted else 0.0
        share = max(d_share, w_share)
        how = (f"the job's processes were blocked on I/O (state D) in {100 * d_share:.0f} % of "
               f"their samples; the CPUs waited for I/O {wait:.2f} cores on average against "
               f"{busy:.2f} busy with the job ({100 * w_share:.0f} %)")  # fmt: skip
        if not counted:
            how += " (not counted: the job moved under 1 MB/s of storage data)"
        if share < c["min_share"]:
            return self.outcome(rid, "passed", value=100 * share, unit="%")
        io = (f"; storage traffic {_bytes(t.get('read_bps'))}/s read, "
              f"{_bytes(t.get('write_bps'))}/s written on average")  # fmt: skip
        return self.outcome(
            rid, "fired", value=100 * share, unit="%", impact_pct=100 * share,
            evidence=how + io
            + self._phase_of(lambda p: "write" in p["label"] or "read" in p["label"]),
        )  # fmt: skip

    def metadata_storm(self, rid: str, c: dict[str, Any]) -> Outcome:
        ops = self.f.meta_ops_per_node
        if self.f.has_meta_counters and ops is not None and ops >= c["max_ops_per_s"]:
            return self.outcome(
                rid, "fired", value=ops, unit="ops/s per node",
                impact_pct=min(50.0, 10 * ops / c["max_ops_per_s"]),
                evidence=f"{ops:.0f} metadata operations per second per node on average "
                "(Lustre/NFS client counters: open, close, stat, create, unlink, lookup ...)",
            )  # fmt: skip
        user_only = bool(self.f.stack_samples) and self.f.kernel_stacks is False
        share = self.f.share(META_PATTERN) if self.f.stack_samples and not user_only else None
        if share is not None and share >= c["max_sample_share"]:
            return self.outcome(
                rid, "fired", value=100 * share, unit="% of samples", impact_pct=100 * share,
                evidence=f"{100 * share:.0f} % of {self.f.stack_samples:,} call-stack samples "
                "were in file-metadata system calls (open, stat, unlink, path lookup)",
            )  # fmt: skip
        if not self.f.has_meta_counters and share is None:
            if user_only:
                return self.missing(
                    rid, "no Lustre or NFS client counters, and the call stacks hold no kernel "
                    "frames (perf sampled user space only: not root, kernel.perf_event_paranoid "
                    "above 1), so file-metadata system calls cannot be seen in them",
                )  # fmt: skip
            return self.missing(rid, "no Lustre or NFS client counters and no call stacks "
                                "(record with para profile --functions)")  # fmt: skip
        value = ops if self.f.has_meta_counters and ops is not None else 100 * (share or 0)
        unit = "ops/s per node" if self.f.has_meta_counters and ops is not None else "% of samples"
        return self.outcome(rid, "passed", value=value, unit=unit)

    # -- network ----------------------------------------------------------------------------
    def network_bound(self, rid: str, c: dict[str, Any]) -> Outcome:
        ib = self.f.ib
        if ib and ib.get("link_bps"):
            sat = ib.get("saturated_share") or 0.0
            if sat >= c["min_saturated_share"]:
                # name the direction that fills the link (both when both do)
                dirs = [(name, ib.get(f"{key}_saturated_share") or 0.0, ib.get(f"{key}_share"))
                        for key, name in (("tx", "send"), ("rx", "receive"))]  # fmt: skip
                full = [d for d in dirs if d[1] >= c["min_saturated_share"]] or [
                    max(dirs, key=lambda d: d[1])
                ]
                which = " and ".join(d[0] for d in full)
                means = ", ".join(f"{d[0]} {100 * (d[2] or 0):.0f} %" for d in dirs)
                return self.outcome(
                    rid, "fired", value=100 * (ib.get("link_share") or 0), unit="% of link",
                    impact_pct=100 * sat,
                    evidence=f"InfiniBand traffic in the {which} direction at "
                    f"{100 * c['max_link_share']:.0f} % or more of the "
                    f"{ib['link_bps'] * 8 / 1e9:.0f} Gb/s link during {100 * sat:.0f} % "
                    f"of the run (mean share of the link: {means})",
                )  # fmt: skip
        share = self.f.share(COMM_PATTERN) if self.f.stack_samples else None
        sampled = rank_shares(self.f.ranks)
        if share is not None and len(sampled) >= 2:
            # What every rank pays is communication; what some ranks pay more is waiting for
            # the others (load_imbalance): judge the rank that waited least.
            least = min(sampled, key=lambda r: r["mpi_share"])
            most = max(r["mpi_share"] for r in sampled)
            share = least["mpi_share"]
            if share >= c["max_sample_share"]:
                return self.outcome(
                    rid, "fired", value=100 * share, unit="% of samples", impact_pct=100 * share,
                    evidence=f"every rank spent at least {100 * share:.0f} % of its call-stack "
                    f"samples inside communication libraries (MPI, UCX, libfabric, NCCL ...): "
                    f"{len(sampled)} ranks from {100 * share:.0f} % (rank {least['rank']}) to "
                    f"{100 * most:.0f} %",
                )  # fmt: skip
        elif share is not None and share >= c["max_sample_share"]:
            return self.outcome(
                rid, "fired", value=100 * share, unit="% of samples", impact_pct=100 * share,
                evidence=f"{100 * share:.0f} % of {self.f.stack_samples:,} call-stack samples "
                "were inside communication libraries (MPI, UCX, libfabric, NCCL ...)",
            )  # fmt: skip
        if (not ib or not ib.get("link_bps")) and share is None:
            return self.missing(rid, "no InfiniBand link counters (the link rate of Ethernet "
                                "is not recorded) and no call stacks")  # fmt: skip
        if share is not None:
            return self.outcome(rid, "passed", value=100 * share, unit="% of samples")
        return self.outcome(rid, "passed", value=100 * (ib or {}).get("link_share", 0.0),
                            unit="% of link")  # fmt: skip

    # -- counters ---------------------------------------------------------------------------
    def _counter_reason(self) -> str:
        return self.f.unmeasured.get("counters", "no hardware counters were recorded")

    def _no_pmu(self) -> bool:
        return "counters" in self.f.unmeasured

    def _sum_events(self, pattern: str) -> float | None:
        rx = re.compile(pattern)
        vals = [v["total"] for e, v in self.f.counters.items() if rx.search(e) and v["total"]]
        return sum(vals) if vals else None

    def memory_bandwidth_bound(self, rid: str, c: dict[str, Any]) -> Outcome:
        if not self.f.counters or self._no_pmu():
            return self.missing(rid, self._counter_reason())
        traffic = memory_traffic(self.f.counter_events(MEM_CAS_PATTERN))
        if not traffic:
            return self.missing(rid, "no memory-controller events (Intel uncore_imc cas_count_"
                                "read/write or free-running data_read/write, AMD umc_cas_cmd."
                                "rd/wr) among the recorded counters: add them with -e")  # fmt: skip
        # the peak: the rules file's, else each node's own (DMI memory speed x channels)
        shares = []
        for node, (bw, source) in traffic.items():
            if c["peak_bytes_per_s"]:
                peak, how = float(c["peak_bytes_per_s"]), "peak_bytes_per_s of the rules file"
            elif node in self.f.memory_peak:
                peak, how = self.f.memory_peak[node]
            else:
                continue
            shares.append((bw / peak if peak > 0 else 0.0, bw, source, peak, how, node))
        if not shares:
            node, (bw, source) = max(traffic.items(), key=lambda kv: kv[1][0])
            return self.missing(
                rid,
                f"memory bandwidth {_bytes(bw)}/s measured on the busiest node ({source} "
                "events), but the node's peak is not known (no DMI memory table was readable "
                "when it was recorded): set [memory_bandwidth_bound] peak_bytes_per_s in a "
                "rules file",
            )  # fmt: skip
        frac, bw, source, peak, how, node = max(shares)
        where = (f" ({self.f.nodes[node]['label']})" if len(self.f.nodes) > 1
                 and node < len(self.f.nodes) else "")  # fmt: skip
        if frac < c["min_fraction"]:
            return self.outcome(rid, "passed", value=100 * frac, unit="% of peak",
                                reason=f"peak {_bytes(peak)}/s: {how}")  # fmt: skip
        return self.outcome(
            rid, "fired", value=100 * frac, unit="% of peak", impact_pct=100 * frac / 2,
            evidence=f"{_bytes(bw)}/s of memory traffic on the busiest node{where} ({source} "
            f"events), {100 * frac:.0f} % of its {_bytes(peak)}/s peak ({how})",
        )  # fmt: skip

    def low_ipc(self, rid: str, c: dict[str, Any]) -> Outcome:
        if not self.f.counters or self._no_pmu():
            return self.missing(rid, self._counter_reason())
        ins = self._sum_events(r"^(cpu_core/)?instructions(/|:|$)")
        cyc = self._sum_events(r"^(cpu_core/)?cycles(/|:|$)")
        if not ins or not cyc:
            missing = [e for e, v in (("instructions", ins), ("cycles", cyc)) if not v]
            return self.missing(rid, f"{' and '.join(missing)} not counted on this machine "
                                f"({self._counter_reason()})")  # fmt: skip
        ipc = ins / cyc
        if ipc >= c["alert"]:
            return self.outcome(rid, "passed", value=ipc, unit="instructions/cycle")
        sev = "high" if ipc < c["high"] else "medium"
        return self.outcome(
            rid, "fired", value=ipc, unit="instructions/cycle", severity=sev,
            impact_pct=100 * (1 - ipc / c["alert"]) / 2,
            evidence=f"IPC {ipc:.2f}: {ins:.3g} instructions in {cyc:.3g} cycles",
        )  # fmt: skip

    def poor_vectorization(self, rid: str, c: dict[str, Any]) -> Outcome:
        if not self.f.counters or self._no_pmu():
            return self.missing(rid, self._counter_reason())
        # Intel counts FP instructions by width; AMD Zen 4 and later count FP ops by type
        # (fp_ops_retired_by_type.scalar_all / .vector_all)
        scalar = self._sum_events(r"fp_arith_inst_retired\.scalar|FP_ARITH.*SCALAR|"
                                  r"fp_ops_retired_by_type\.scalar_all")  # fmt: skip
        packed = self._sum_events(r"fp_arith_inst_retired\.(128b|256b|512b)_packed|"
                                  r"FP_ARITH.*PACKED|"
                                  r"fp_ops_retired_by_type\.vector_all")  # fmt: skip
        if scalar is None and packed is None:
            if self._sum_events(r"fp_ret_sse_avx_ops\.") is not None:
                return self.missing(
                    rid, "fp_ret_sse_avx_ops.* (AMD Zen 1 to 3) counts floating-point "
                    "operations without telling packed from scalar ones: the vectorised share "
                    "needs fp_ops_retired_by_type.scalar_all/.vector_all (Zen 4 and later) "
                    "or Intel's fp_arith_inst_retired.*",
                )  # fmt: skip
            return self.missing(
                rid,
                "no floating-point instruction events (fp_arith_inst_retired"
                ".scalar_double/.256b_packed_double ..., AMD fp_ops_retired_by_type"
                ".scalar_all/.vector_all) among the counters",
            )
        scalar, packed = scalar or 0.0, packed or 0.0
        ins = self._sum_events(r"^(cpu_core/)?instructions(/|:|$)")
        if ins and (scalar + packed) / ins < c["min_fp_share"]:
            return self.outcome(rid, "passed", value=None, unit="%",
                                reason="few floating-point instructions: not judged")  # fmt: skip
        ratio = 100.0 * packed / (scalar + packed) if scalar + packed else 0.0
        if ratio >= c["caution_pct"]:
            return self.outcome(rid, "passed", value=ratio, unit="% packed")
        sev = "high" if ratio < c["alert_pct"] else "medium"
        return self.outcome(
            rid, "fired", value=ratio, unit="% packed", severity=sev,
            impact_pct=(c["caution_pct"] - ratio) / 2,
            evidence=f"{ratio:.1f} % of floating-point instructions were packed (SIMD): "
            f"{packed:.3g} packed against {scalar:.3g} scalar",
        )  # fmt: skip

    # -- memory -----------------------------------------------------------------------------
    def memory_pressure(self, rid: str, c: dict[str, Any]) -> Outcome:
        t = self.f.totals
        if t.get("majflt_ps") is None and t.get("swap_pps") is None:
            return self.missing(rid, self.f.unmeasured.get("memory", "memory was not sampled"))
        swap_share = t.get("swap_share") or 0.0
        majflt = t.get("majflt_ps") or 0.0
        swap = t.get("swap_pps") or 0.0
        if swap_share >= c["min_swap_share"]:
            return self.outcome(
                rid, "fired", value=swap, unit="pages/s", impact_pct=100 * swap_share,
                evidence=f"swapping during {100 * swap_share:.0f} % of the run "
                f"({swap:.0f} pages/s on average); {majflt:.0f} major faults/s",
            )  # fmt: skip
        if majflt >= c["max_major_faults_per_s"]:
            peak = max((x for x in self.f.series["majflt_ps"] if x is not None), default=0.0)
            return self.outcome(
                rid, "fired", value=majflt, unit="major faults/s",
                impact_pct=min(50.0, 10 * majflt / c["max_major_faults_per_s"]),
                evidence=f"{majflt:.0f} major page faults per second on average (peak "
                f"{peak:.0f}/s): pages read back from storage; swap {swap:.1f} pages/s",
            )  # fmt: skip
        return self.outcome(rid, "passed", value=majflt, unit="major faults/s")

    def memory_growth(self, rid: str, c: dict[str, Any]) -> Outcome:
        g = self.f.regression
        if not g or g.get("n") is None or g["n"] < 5 or g.get("slope") is None:
            return self.missing(rid, "fewer than 5 samples of memory in the run")
        start = g["intercept"] + g["slope"] * g["first_sec"]
        end = g["intercept"] + g["slope"] * g["last_sec"]
        growth = end - start
        # a line from below 1 MiB (a start-up slow on a loaded node, then the growth) is
        # growth from next to nothing, not no growth
        rel = growth / max(start, float(1 << 20))
        r2 = g.get("r2") or 0.0
        fired = rel >= c["min_growth"] and growth >= c["min_bytes"] and r2 >= c["min_r2"]
        if not fired:
            return self.outcome(rid, "passed", value=100 * rel, unit="% growth")
        span = (g["last_sec"] - g["first_sec"]) * self.f.step_s
        rate = growth / span if span > 0 else 0.0
        peak = self.f.totals.get("peak_rss") or self.f.totals.get("peak_mem")
        return self.outcome(
            rid, "fired", value=100 * rel, unit="% growth", impact_pct=min(40.0, 10 * rel),
            evidence=f"resident memory grew steadily from {_bytes(start)} to {_bytes(end)} "
            f"(+{100 * rel:.0f} %, {_bytes(rate)}/s, R squared {r2:.2f}) over "
            f"{_fmt_s(span)}; peak {_bytes(peak)}",
        )  # fmt: skip

    def near_oom(self, rid: str, c: dict[str, Any]) -> Outcome:
        rows = [(n, n["peak_mem"] / n["mem_total"]) for n in self.f.nodes
                if n.get("peak_mem") and n.get("mem_total")]  # fmt: skip
        if not rows:
            return self.missing(rid, self.f.unmeasured.get("memory", "memory was not sampled"))
        n, frac = max(rows, key=lambda x: x[1])
        if frac < c["max_fraction"]:
            return self.outcome(rid, "passed", value=100 * frac, unit="% of memory")
        hot = [x[0]["label"] for x in rows if x[1] >= c["max_fraction"]]
        where = f" on {n['label']}" if len(self.f.nodes) > 1 else ""
        return self.outcome(
            rid, "fired", value=100 * frac, unit="% of memory", impact_pct=100 * frac / 2,
            severity="high" if frac >= 0.97 else "medium",
            evidence=f"memory used peaked at {_bytes(n['peak_mem'])} of {_bytes(n['mem_total'])}"
            f"{where} ({100 * frac:.0f} %)" + (f"; swap used {_bytes(n['peak_swap'])}"
                                               if n.get("peak_swap") else ""),
            nodes=hot,
        )  # fmt: skip

    # -- GPUs -------------------------------------------------------------------------------
    def _gpu_reason(self) -> str:
        return self.f.unmeasured.get("gpu", "no GPU was sampled")

    def _gpu_label(self, g: dict[str, Any]) -> str:
        node = f"{self.f.nodes[g['node']]['label']}:" if len(self.f.nodes) > 1 else ""
        return f"GPU {node}{g['gpu']}"

    def gpu_idle(self, rid: str, c: dict[str, Any]) -> Outcome:
        gpus = [g for g in self.f.gpus if g["util"] is not None]
        if not gpus:
            return self.missing(rid, self._gpu_reason())
        idle = [g for g in gpus if g["util"] < c["max_util_pct"]]
        if not idle:
            return self.outcome(rid, "passed", value=min(g["util"] for g in gpus), unit="%")
        return self.outcome(
            rid, "fired", value=min(g["util"] for g in idle), unit="%",
            impact_pct=100.0 * len(idle) / len(gpus),
            evidence=f"{len(idle)} of {len(gpus)} GPUs were never busy: "
            + "; ".join(f"{self._gpu_label(g)} {g['util']:.1f} % busy on average, memory "
                        f"{_bytes(g['peak_mem'])} at peak" for g in idle[:6]),
            nodes=sorted({self.f.nodes[g["node"]]["label"] for g in idle}),
        )  # fmt: skip

    def _busy_gpus(self) -> list[dict[str, Any]]:
        lo = self.cfg["gpu_idle"]["max_util_pct"]
        return [g for g in self.f.gpus if g["util"] is not None and g["util"] >= lo]

    def gpu_low_utilization(self, rid: str, c: dict[str, Any]) -> Outcome:
        if not self.f.gpus:
            return self.missing(rid, self._gpu_reason())
        gpus = self._busy_gpus()
        if not gpus:
            return self.missing(rid, "no GPU was used (see gpu_idle)")
        mean = sum(g["util"] for g in gpus) / len(gpus)
        if mean >= c["warn_pct"]:
            return self.outcome(rid, "passed", value=mean, unit="%")
        sev = "high" if mean < c["alert_pct"] else "medium"
        return self.outcome(
            rid, "fired", value=mean, unit="%", severity=sev, impact_pct=100 - mean,
            evidence=f"the {len(gpus)} GPU(s) in use were busy {mean:.0f} % of the time on "
            "average: " + "; ".join(f"{self._gpu_label(g)} {g['util']:.0f} % (peak "
                                    f"{g['peak_util']:.0f} %)" for g in gpus[:6]),
        )  # fmt: skip

    def gpu_memory_underused(self, rid: str, c: dict[str, Any]) -> Outcome:
        if not self.f.gpus:
            return self.missing(rid, self._gpu_reason())
        gpus = [g for g in self._busy_gpus() if g.get("mem_total")]
        if not gpus:
            return self.missing(rid, "no GPU was used, or its memory size is unknown")
        frac = max(g["peak_mem"] / g["mem_total"] for g in gpus)
        if frac >= c["max_fraction"]:
            return self.outcome(rid, "passed", value=100 * frac, unit="% of GPU memory")
        return self.outcome(
            rid, "fired", value=100 * frac, unit="% of GPU memory", severity="low",
            impact_pct=5.0,
            evidence="peak GPU memory " + "; ".join(
                f"{self._gpu_label(g)} {_bytes(g['peak_mem'])} of {_bytes(g['mem_total'])} "
                f"({100 * g['peak_mem'] / g['mem_total']:.0f} %)" for g in gpus[:6]),
        )  # fmt: skip

    # -- time -------------------------------------------------------------------------------
    def stalled(self, rid: str, c: dict[str, Any]) -> Outcome:
        k = self.f.catastrophe
        if self.f.steps < 10:
            return self.missing(rid, "fewer than 10 steps: no before and after to compare")
        if not k or k.get("ratio") is None:
            return self.missing(rid, "the job did no measurable work")
        ratio, tail = k["ratio"], k["tail_share"]
        if ratio > c["max_ratio"] or tail < c["min_tail_share"]:
            return self.outcome(rid, "passed", value=ratio, unit="after/before")
        if (k.get("tail_active") or 0.0) >= self.cfg["serial_bottleneck"]["low_cores"]:
            # one core still works: a serial end, which serial_bottleneck reports
            return self.outcome(
                rid,
                "passed",
                value=ratio,
                unit="after/before",
                reason="activity fell to one busy core, not to nothing",
            )
        at = k["sec"] * self.f.step_s
        return self.outcome(
            rid, "fired", value=ratio, unit="after/before", impact_pct=100 * tail,
            evidence=f"from {at:.0f} s on, the job kept {k['after']:.2f} cores busy on average "
            f"against {k['before']:.2f} before ({100 * ratio:.1f} %), for the last "
            f"{100 * tail:.0f} % of the run",
            start_s=round(at, 3), end_s=round(self.f.duration_s, 3),
        )  # fmt: skip

    # -- Python (issue 12) --------------------------------------------------------------------
    def _python(self, rid: str) -> tuple[dict[str, Any] | None, Outcome | None]:
        p = self.f.python
        if p is None:
            return None, self.missing(rid, "no Python call stacks (para profile --functions "
                                           "of a Python program, with py-spy)")  # fmt: skip
        return p, None

    def python_interpreter(self, rid: str, c: dict[str, Any]) -> Outcome:
        p, no = self._python(rid)
        if p is None:
            assert no is not None
            return no
        total = self.f.stack_samples
        if p["cpu"] < c["min_samples"] or not total:
            return self.missing(rid, f"{p['cpu']} CPU samples of Python threads; fewer than "
                                     f"{c['min_samples']:g}")  # fmt: skip
        share = p["interpreter"] / total
        if share < c["min_share"]:
            return self.outcome(rid, "passed", value=100 * share, unit="% of CPU samples")
        top = ", ".join(f"{fn} {100 * n / total:.0f} %" for fn, n in p["interpreter_top"][:3]
                        if n >= 0.01 * total)  # fmt: skip
        return self.outcome(
            rid, "fired", value=100 * share, unit="% of CPU samples", impact_pct=100 * share,
            evidence=f"{100 * share:.0f} % of the job's CPU samples ({p['interpreter']:,} of "
            f"{total:,}) ran Python code in the interpreter (the innermost frame is a Python "
            f"function, not compiled code): {top}",
        )  # fmt: skip

    def python_data_loading(self, rid: str, c: dict[str, Any]) -> Outcome:
        p, no = self._python(rid)
        if p is None:
            assert no is not None
            return no
        cands = [t for t in p["threads"]
                 if not t["worker"] and t["cpu"] + t["wait"] >= c["min_samples"]]  # fmt: skip
        if not cands:
            return self.missing(rid, f"no Python thread with {c['min_samples']:g} samples "
                                     "outside data-loader workers")  # fmt: skip
        t = max(cands, key=lambda t: (t["data"] / (t["cpu"] + t["wait"]), -t["pid"], -t["tid"]))
        own = t["cpu"] + t["wait"]
        share = t["data"] / own
        if share < c["min_share"]:
            return self.outcome(rid, "passed", value=100 * share, unit="% of a thread's time")
        freq = p.get("freq_hz") or 0.0
        secs = f" ({t['data'] / freq:.1f} s)" if freq else ""
        waited = p["where"](DATA_LOADING_PATTERN, "wait", t)
        where = f" in {waited[0][0]}" if waited else ""
        workers = [w for w in p["threads"] if w["worker"]]
        busy = ""
        if workers and freq and self.f.duration_s:
            cores = sum(w["cpu"] for w in workers) / freq / self.f.duration_s
            procs = len({(w["node"], w["pid"]) for w in workers})
            busy = f"; its {procs} loader worker process{'es' if procs > 1 else ''} kept " \
                   f"{cores:.2f} cores busy"  # fmt: skip
        return self.outcome(
            rid, "fired", value=100 * share, unit="% of a thread's time", impact_pct=100 * share,
            evidence=f"thread {t['tid']} of pid {t['pid']} spent {100 * share:.0f} % of its "
            f"time{secs} loading data: {100 * t['data_wait'] / own:.0f} % waiting for "
            f"batches{where}, {100 * (t['data'] - t['data_wait']) / own:.0f} % preparing them "
            f"itself" + busy,
        )  # fmt: skip

    def python_host_to_gpu(self, rid: str, c: dict[str, Any]) -> Outcome:
        p, no = self._python(rid)
        if p is None:
            assert no is not None
            return no
        if p["cpu"] < c["min_samples"]:
            return self.missing(rid, f"{p['cpu']} CPU samples of Python threads; fewer than "
                                     f"{c['min_samples']:g}")  # fmt: skip
        copy = sum(t["copy"] for t in p["threads"])
        share = copy / p["cpu"]
        if share < c["max_share"]:
            return self.outcome(rid, "passed", value=100 * share, unit="% of CPU samples")
        where = "; ".join(f"{k} {100 * n / p['cpu']:.0f} %"
                          for k, n in p["where"](H2D_PATTERN, None))  # fmt: skip
        return self.outcome(
            rid, "fired", value=100 * share, unit="% of CPU samples", impact_pct=100 * share,
            evidence=f"{100 * share:.0f} % of the Python threads' CPU samples ({copy:,} of "
            f"{p['cpu']:,}) were in copies between host and GPU memory: {where}",
        )  # fmt: skip


def evaluate(facts: Facts, config: dict[str, dict[str, Any]]) -> list[Outcome]:
    return Evaluator(facts, config).run()


# Rules that say the job left resources unused without saying why: at equal severity the
# rules that explain it come first, and they are named in its evidence.
GENERIC = ("low_cpu_utilization",)
EXPLAINS_CPU = ("idle_nodes", "serial_bottleneck", "load_imbalance", "io_wait_bound",
                "metadata_storm", "network_bound", "stalled", "memory_pressure")  # fmt: skip


def order(outcomes: list[Outcome]) -> list[Outcome]:
    """Fired rules, what limits the job first: by severity, then estimated impact."""
    fired = [o for o in outcomes if o.status == "fired"]
    why = [o.id for o in fired if o.id in EXPLAINS_CPU]
    for o in fired:
        if o.id in GENERIC and why:
            o.evidence += "; explained in part by " + ", ".join(why)
    return sorted(fired, key=lambda o: (SEVERITY.index(o.severity or "low"), o.id in GENERIC,
                                        -o.impact_pct, o.id))  # fmt: skip
