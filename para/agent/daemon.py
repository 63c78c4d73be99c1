"""`para agent run`: the node agent, a foreground service (systemd runs it; it never forks).

Threads: the sampling loop (one record per interval into the current segment, rotation at
the segment boundary), blocking families in threads of their own (loop.py), a finaliser that
turns closed segments into Parquet in a short-lived child process and moves them to ready/,
the shipper's (if [collector] is configured), and the main thread, which handles signals,
writes status.json and enforces retention.

- SIGTERM / SIGINT: a last sample, the segment closed and finalised, exit 0.
- SIGHUP: the configuration is read again; if it is valid the current segment is closed and
  sampling goes on under the new one (a bad file is reported and the old one kept).
- SIGKILL: every sample already taken is in the journal (one write() each): what was being
  sampled is lost, and the next start finalises the leftover segment.
- The spool cannot be written (disk full, I/O error): samples are kept in memory (up to
  segments.buffer_samples), the oldest dropped past that; when writing works again the
  backlog is written, and the loss is recorded as a `samples_lost` event.  Said once.
- The wall clock steps (NTP, an admin's `date`): within a segment the stamps follow the
  monotonic clock, so no series goes backwards or leaves a gap; a step of more than a second
  is recorded (`clock_step`) and the segment is closed, the next one starting on the new time.
"""

from __future__ import annotations

import gc
import json
import os
import queue
import resource
import signal
import sys
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import para
from para.agent import config as config_mod
from para.agent import hostinfo, lean
from para.agent.config import Config
from para.agent.finalize import FinalizeError, run_child
from para.agent.loop import SamplingLoop
from para.agent.procfiles import SampleFiles
from para.agent.samplers.base import ProcFiles, Rows, Sampler, event
from para.agent.samplers.fsremote import LocalFsSampler, RemoteFsSampler
from para.agent.samplers.gpuproc import GpuProcessSampler
from para.agent.samplers.infiniband import InfinibandSampler
from para.agent.samplers.jobs import JobSampler
from para.agent.samplers.lustre import LustreSampler
from para.agent.samplers.nfs import NfsSampler
from para.agent.samplers.rapl import RaplSampler
from para.agent.samplers.system import (
    CpuSampler,
    DiskSampler,
    MemorySampler,
    NetSampler,
)
from para.agent.segment import SegmentWriter, encode_record
from para.agent.spool import Spool, segment_name
from para.cython_ext import implementation
from para.errors import ParaError
from para.formats.schema import catalogue

CLOCK_STEP_MS = 1000
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
# sd-daemon(3) priorities, understood by journald at the start of a line
_SD = {10: "<7>", 20: "<6>", 30: "<4>", 40: "<3>"}
_NAMES = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR"}
FINALIZE_ATTEMPTS = 3
RETENTION_EVERY_S = 60.0


class Log:
    """Lines on stderr; under systemd (JOURNAL_STREAM set) with journald priorities."""

    def __init__(self, level: str = "info", stream: TextIO | None = None):
        self.level = LEVELS.get(level, 20)
        self.stream = stream or sys.stderr
        self.journal = bool(os.environ.get("JOURNAL_STREAM"))
        self._once: set[str] = set()
        self._lock = threading.Lock()

    def _emit(self, level: int, msg: str) -> None:
        if level < self.level:
            return
        if self.journal:
            line = f"{_SD[level]}{msg}"
        else:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            line = f"para-agent {stamp} {_NAMES[level]} {msg}"
        with self._lock:
            try:
                print(line, file=self.stream, flush=True)
            except (OSError, ValueError):
                pass  # nowhere to log (stderr closed): keep sampling

    def debug(self, msg: str) -> None:
        self._emit(10, msg)

    def info(self, msg: str) -> None:
        self._emit(20, msg)

    def warning(self, msg: str) -> None:
        self._emit(30, msg)

    def error(self, msg: str) -> None:
        self._emit(40, msg)

    def once(self, key: str, msg: str, level: int = 30) -> None:
        if key not in self._once:
            self._once.add(key)
            self._emit(level, msg)

    def forget(self, key: str) -> None:
        self._once.discard(key)


class SteadyClock:
    """Sample stamps: the wall clock at the start, advanced by the monotonic clock.

    `now()` never goes backwards or jumps with an NTP step; `step_ms` says by how much the
    wall clock has moved away since the last `rebase()` (0 while within CLOCK_STEP_MS).
    """

    def __init__(
        self,
        wall: Callable[[], int] = time.time_ns,
        mono: Callable[[], int] = time.monotonic_ns,
    ):
        self._wall = wall
        self._mono = mono
        self.rebase()

    def rebase(self) -> None:
        self._w0 = self._wall() // 1_000_000
        self._m0 = self._mono() // 1_000_000
        self.step_ms = 0

    def now(self) -> int:
        t = self._w0 + (self._mono() // 1_000_000 - self._m0)
        offset = self._wall() // 1_000_000 - t
        if abs(offset) > CLOCK_STEP_MS:
            self.step_ms = offset
        return t


def build_samplers(
    cfg: Config,
    files: ProcFiles,
    helpers: Callable[[], set[int]],
    say: Callable[[str], None],
    known_jobs: set[str] | None = None,
    workdir: Path | None = None,
) -> list[Sampler]:
    """The families the configuration enables, in sampling order (`workdir`: where helpers
    such as perf write their scratch files; TMPDIR when None)."""
    out: list[Sampler] = []
    on = cfg.enabled
    if on("cpu"):
        out.append(CpuSampler(files))
    if on("memory"):
        out.append(MemorySampler(files))
    if on("net"):
        out.append(NetSampler(files))
    if on("disk"):
        out.append(DiskSampler(files))
    if on("fs"):
        out.append(LocalFsSampler(files))
        out.append(RemoteFsSampler(files))
    if on("jobs"):
        jobs = cfg["jobs"]
        out.append(
            JobSampler(
                files,
                _under(cfg["agent"]["host_root"], jobs["cgroup_root"]),
                processes=jobs["processes"],
                environ=jobs["environ"],
                ctxt_every=jobs["ctxt_every"],
                end_after_s=jobs["end_after_s"],
                exclude=helpers,
                known_jobs=known_jobs,
            )
        )
    if on("gpu"):
        out.append(
            GpuProcessSampler(
                process_utilization=cfg["gpu"]["process_utilization"],
                pcie_gpus_per_sample=cfg["gpu"]["pcie_gpus_per_sample"],
                on_message=say,
            )
        )
    if on("infiniband"):
        out.append(InfinibandSampler(files))
    if on("nfs"):
        out.append(NfsSampler(files))
    if on("lustre"):
        out.append(LustreSampler(files))
    if on("rapl"):
        out.append(RaplSampler(files))
    if on("ipmi"):
        from para.agent.samplers.ipmi import IpmiSampler

        ip = cfg["ipmi"]
        out.append(IpmiSampler(ip["command"], ip["args"], ip["every_s"], ip["timeout_s"]))
    if on("licenses"):
        from para.agent.samplers.licenses import LicenseSampler

        lic = cfg["licenses"]
        out.append(
            LicenseSampler(
                lic["servers"], lic["lmutil"], lic["every_s"], lic["timeout_s"], lic["users"]
            )
        )
    if on("counters"):
        out.append(_perf_sampler(cfg, files, out, say))
    if on("stacks"):
        out.append(_stack_sampler(cfg, out, helpers, say, workdir))
    return out


def _stack_sampler(
    cfg: Config,
    others: list[Sampler],
    helpers: Callable[[], set[int]],
    say: Callable[[str], None],
    workdir: Path | None,
) -> Sampler:
    from para.agent.samplers.stacks import StackSampler

    st = cfg["stacks"]
    jobs = next((s for s in others if isinstance(s, JobSampler)), None)
    return StackSampler(
        jobs.job_pids if jobs is not None else dict,
        cgroups=jobs.job_cgroups if jobs is not None else None,
        script_timeout_s=st["script_timeout_s"],
        freq=st["frequency_hz"],
        event_name=st["event"],
        perf=st["command"],
        window_s=min(st["window_s"], cfg["segments"]["max_seconds"]),
        python=st["python"],
        pyspy_rate=st["pyspy_rate"],
        pyspy_min_cpu=st["pyspy_min_cpu"],
        max_backoff_s=st["max_backoff_s"],
        exclude=helpers,
        on_message=say,
        proc=str(_under(cfg["agent"]["host_root"], "/proc")),
        workdir=workdir,
    )


def _perf_sampler(
    cfg: Config, files: ProcFiles, others: list[Sampler], say: Callable[[str], None]
) -> Sampler:
    from para.agent.samplers.perfsets import JobPerfSampler, choose_events, perf_list
    from para.agent.samplers.perfstat import PerfStatSampler

    p = cfg["perf"]
    try:
        cpuinfo = files.read_once("proc/cpuinfo")
    except OSError:
        cpuinfo = b""
    per_job = p["mode"] == "jobs"
    chosen = choose_events(
        cpuinfo,
        perf_list(p["command"]),
        files.path("sys/bus/event_source/devices"),
        p["events"],
        per_cgroup=per_job,
    )
    for group, names in chosen.missing.items():
        say(f"counters: no {group.replace('_', ' ')} events on this CPU ({chosen.kind}); "
            f"looked for {', '.join(names)}")  # fmt: skip
    interval_ms = max(10, int(cfg.interval * 1000))
    if per_job:
        jobs = next((s for s in others if isinstance(s, JobSampler)), None)
        source = jobs.job_cgroups if jobs is not None else dict
        return JobPerfSampler(chosen.events, source, interval_ms, p["command"], on_message=say)
    return PerfStatSampler(chosen.events, None, interval_ms, p["command"], on_message=say)


def _under(host_root: str, path: str) -> Path:
    if host_root in ("", "/"):
        return Path(path)
    return Path(host_root) / path.lstrip("/")


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Agent:
    def __init__(self, cfg: Config, log: Log | None = None):
        self.cfg = cfg
        self.log = log or Log(cfg["agent"]["log_level"])
        self.started = time.time()
        self.pid = os.getpid()
        self.clock = SteadyClock()
        self._wake = threading.Event()
        self._signals: deque[int] = deque()
        self._final_queue: queue.Queue[tuple[Path, dict[str, Any] | None] | None] = queue.Queue()
        self._finalizer: threading.Thread | None = None
        self.finalize_pending = 0
        self.finalize_failures: dict[str, int] = {}
        self.finalized = 0
        self.last_finalized: dict[str, Any] | None = None
        self.finalize_cpu_s = 0.0
        self.finalize_max_rss = 0
        self.dropped_unshipped = 0
        self.dropped_rejected = 0
        self.dropped_unshipped_bytes = 0
        self.dropped_total = 0
        self.shipper: Any = None
        self.live: Any = None  # para.agent.livenode.NodeLive with [alerts] or [metrics]
        # Signals first: a SIGTERM while starting must still close what was started.
        self.install_signals()
        # how journal members are written (os.write; tests make it fail like a full disk)
        self.write: Callable[[int, bytes | memoryview], int] = os.write
        self._usage: dict[str, Any] | None = None
        self._usage_key: tuple[int, int] = (0, 0)
        # what the agent has done: kept across reloads
        self.writer: SegmentWriter | None = None
        self.segment_meta: dict[str, Any] = {}
        self.backlog: deque[tuple[int, bytes]] = deque()
        self.lost_samples = 0
        self._lost_reported = 0
        self.lost_first: int | None = None
        self.lost_last: int | None = None
        self.spool_errors = 0
        self.spool_error: str | None = None
        self.unwritable_since: int | None = None
        self.samples = 0
        self.last_sample: float | None = None
        self.segments_opened = 0
        self.clock_steps = 0
        self._rotate_reason: str | None = None
        self._seg_jobs: dict[str, dict[str, Any]] = {}
        self.job_info: dict[str, dict[str, Any]] = {}  # running jobs (and those ended lately)
        self._cpu_at_open = 0.0
        self._setup(cfg)

    # -- set-up ----------------------------------------------------------------------------
    def _setup(self, cfg: Config) -> None:
        """What depends on the configuration (again at each reload)."""
        self.cfg = cfg
        self.log.level = LEVELS.get(cfg["agent"]["log_level"], 20)
        self.host = cfg.host
        self.spool = Spool(cfg.spool_dir)
        self.spool.ensure()
        self.files = SampleFiles(cfg["agent"]["host_root"])
        self.host_facts = hostinfo.host_facts(self.files)
        self.seq = max(self.spool.next_seq(self.host), getattr(self, "seq", 0))
        running = {j for j, info in self.job_info.items() if "end" not in info}
        samplers = build_samplers(
            cfg, self.files, self._helper_pids, self.log.warning, known_jobs=running,
            workdir=self.spool.work,
        )  # fmt: skip
        self.loop = SamplingLoop(
            samplers,
            self._sink,
            cfg.interval,
            on_message=self.log.warning,
            clock=self._tick,
            reprobe_s=cfg["agent"]["reprobe_s"] or None,
        )
        self.jobs: JobSampler | None = next(
            (s for s in samplers if isinstance(s, JobSampler)), None
        )

    def _tick(self) -> int:
        """The stamp of the sample about to be taken (the loop calls this first)."""
        self.files.new_sample()
        return self.clock.now()

    def _helper_pids(self) -> set[int]:
        pids = {self.pid}
        for s in self.loop.samplers if hasattr(self, "loop") else ():
            for attr in ("perf_pid", "helper_pid"):
                p = getattr(s, attr, None)
                if p:
                    pids.add(p)
            pids |= getattr(s, "helper_pids", set())
        return pids

    # -- the sink: one sample --------------------------------------------------------------
    def _sink(self, t_ms: int, rows: Rows) -> None:
        try:
            self._store(t_ms, rows)
        except Exception as e:  # never let the sampling thread die
            self.spool_errors += 1
            self.log.once("sink", f"storing a sample failed: {type(e).__name__}: {e}", 40)

    def _store(self, t_ms: int, rows: Rows) -> None:
        if self.jobs is not None:
            self.jobs.add_gpu(rows)
        self._note_jobs(rows)
        if self.clock.step_ms:
            step = self.clock.step_ms
            self.clock_steps += 1
            rows.setdefault("events", []).append(
                event(t_ms, "clock_step", "clock", step_ms=step, wall_ms=t_ms + step)
            )
            self.log.warning(
                f"the wall clock stepped by {step / 1000:+.3f} s; the segment is closed and the "
                "next one starts on the new time (stamps in a segment never jump)"
            )
            self._rotate_reason = "clock step"
        self.samples += 1
        self.last_sample = t_ms / 1000
        if self.live is not None:
            alerts = self.live.take_events()
            if alerts:
                rows.setdefault("events", []).extend(alerts)
        record = encode_record(t_ms, rows)
        self.backlog.append((t_ms, record))
        self._flush(t_ms)
        if self.shipper is not None:
            self.shipper.push_live(t_ms, rows)
        if self.live is not None:
            self.live.push(t_ms, rows)
        if self._rotate_reason == "clock step":
            self.rotate("clock step")
            self.clock.rebase()

    def _note_jobs(self, rows: Rows) -> None:
        for e in rows.get("events", ()):
            if e[1] == "job_start":
                self.job_info[e[3]] = {"start": e[0] / 1000, **json.loads(e[4] or "{}")}
            elif e[1] == "job_end" and e[3] in self.job_info:
                self.job_info[e[3]]["end"] = e[0] / 1000
        for r in rows.get("job", ()):
            if r[0] not in self._seg_jobs:
                self._seg_jobs[r[0]] = self.job_info.get(r[0], {})

    def _flush(self, t_ms: int) -> None:
        """Write what waits in memory, oldest first; stop at the first failure."""
        while self.backlog:
            bt, record = self.backlog[0]
            try:
                writer = self._writer_for(bt)
                writer.append(bt, record)
            except OSError as e:
                self._unwritable(t_ms, e)
                return
            self.backlog.popleft()
        if self.unwritable_since is not None:
            self._writable_again(t_ms)
        w = self.writer
        # the cap is on the records: the journal's header (the catalogue alone is 50 KB) is
        # every segment's, and counted in, a small cap closed a segment at every sample
        if w is not None and w.offset - w.header_bytes >= self.cfg["segments"]["max_bytes"]:
            self.rotate("size")

    def _writer_for(self, t_ms: int) -> SegmentWriter:
        w = self.writer
        period = int(self.cfg["segments"]["max_seconds"] * 1000)
        if w is not None and w.first_ms is not None and t_ms // period != w.first_ms // period:
            self.rotate("time")
            w = None
        if w is None:
            w = self._open_segment(t_ms)
        return w

    def _open_segment(self, t_ms: int) -> SegmentWriter:
        name = segment_name(self.host, t_ms, self.seq)
        families = self.loop.families()
        facts = {f: dict(st.facts) for f, st in self.loop.status.items() if st.facts}
        meta: dict[str, Any] = {
            "created": t_ms / 1000,
            "source": "para agent",
            "host": self.host_facts,
            "interval": self.cfg.interval,
            "segment": {
                "id": uuid.uuid4().hex,
                "seq": self.seq,
                "host": self.host,
                "agent_started": self.started,
            },
            "agent": {
                "pid": self.pid,
                "config": self.cfg.path,
                "para_version": para.__version__,
                "kernels": implementation(),
            },
            "families": families,
            "family_facts": facts,
            "catalogue": catalogue(),
        }
        w = SegmentWriter(self.spool.current / name, meta, self.write)
        running = [
            event(t_ms, "job_running", job, **{k: v for k, v in info.items() if k != "start"},
                  since=info.get("start"))
            for job, info in self.job_info.items()
            if "end" not in info
        ]  # fmt: skip
        if running:
            # each segment says which jobs were already running when it began
            w.append(t_ms, _not_a_sample(t_ms, {"events": running}), sample=False)
        self.writer = w
        self.segment_meta = meta
        self.seq += 1
        self.segments_opened += 1
        self._cpu_at_open = _cpu_seconds()
        self._seg_jobs = {}
        self.log.debug(f"segment {name} opened")
        return w

    def _unwritable(self, t_ms: int, e: OSError) -> None:
        self.spool_errors += 1
        self.spool_error = f"{e.strerror or e} ({type(e).__name__})"
        if self.unwritable_since is None:
            self.unwritable_since = t_ms
            self.log.error(
                f"cannot write to the spool {self.spool.root}: {self.spool_error}; sampling "
                f"goes on in memory (up to {self.cfg['segments']['buffer_samples']} samples, "
                "the oldest dropped past that)"
            )
        cap = self.cfg["segments"]["buffer_samples"]
        while len(self.backlog) > cap:
            bt, _ = self.backlog.popleft()
            self.lost_samples += 1
            self.lost_first = bt if self.lost_first is None else self.lost_first
            self.lost_last = bt
            self.log.once(
                "dropping",
                f"the in-memory buffer is full ({cap} samples): dropping the oldest; the count "
                "is recorded when the spool can be written again",
            )

    def _writable_again(self, t_ms: int) -> None:
        since = self.unwritable_since or t_ms
        self.unwritable_since = None
        self.log.forget("dropping")
        lost = self.lost_samples_pending()
        self.log.info(
            f"the spool can be written again after {(t_ms - since) / 1000:.0f} s"
            + (f"; {lost} samples were lost" if lost else "; no sample was lost")
        )
        if lost and self.writer is not None:
            rows: Rows = {
                "events": [
                    event(
                        t_ms,
                        "samples_lost",
                        "spool",
                        count=lost,
                        first_ms=self.lost_first,
                        last_ms=self.lost_last,
                        reason=self.spool_error,
                    )
                ]
            }
            try:
                self.writer.append(t_ms, _not_a_sample(t_ms, rows), sample=False)
            except OSError:
                return
        self._lost_reported = self.lost_samples
        self.lost_first = self.lost_last = None

    def lost_samples_pending(self) -> int:
        return self.lost_samples - self._lost_reported

    # -- segments --------------------------------------------------------------------------
    def rotate(self, reason: str) -> None:
        """Close the current segment and hand it to the finaliser."""
        w = self.writer
        self._rotate_reason = None
        if w is None:
            return
        self.writer = None
        w.close()
        for s in self.loop.samplers:
            closed = getattr(s, "segment_closed", None)
            if callable(closed):
                closed()  # the stacks of this segment's time go into the next one
        if w.samples == 0:
            w.path.unlink(missing_ok=True)
            return
        end_info = {
            "closed_by": reason,
            "families": self.loop.families(),
            "family_facts": self._facts(),
            "sampler": {
                "cpu_s": round(_cpu_seconds() - self._cpu_at_open, 4),
                "missed_ticks": self.loop.missed_ticks,
                "lost_samples": self.lost_samples,
            },
            "kernels": implementation(),
            "jobs": {j: dict(info) for j, info in self._seg_jobs.items()},
            "agent": {"pid": self.pid, "rss_bytes": _rss_bytes()},
        }
        # jobs that ended are in this segment's end.json: the agent can forget them now
        self.job_info = {j: info for j, info in self.job_info.items() if "end" not in info}
        self._queue_final(w.path, end_info)

    def _facts(self) -> dict[str, Any]:
        facts = {f: dict(st.facts) for f, st in self.loop.status.items() if st.facts}
        for s in self.loop.samplers:
            learnt = getattr(s, "metadata", None)
            st = self.loop.status.get(s.family)
            if callable(learnt) and st is not None and st.state != "unavailable":
                facts.setdefault(s.family, {}).update(learnt())
        return facts

    def _queue_final(self, path: Path, end_info: dict[str, Any] | None) -> None:
        self.finalize_pending += 1
        self._final_queue.put((path, end_info))
        if self._finalizer is None or not self._finalizer.is_alive():
            self._finalizer = threading.Thread(
                target=self._finalize_loop, name="para-finalizer", daemon=True
            )
            self._finalizer.start()

    def _finalize_loop(self) -> None:
        while True:
            item = self._final_queue.get()
            if item is None:
                self._final_queue.task_done()
                return
            path, end_info = item
            try:
                self._finalize(path, end_info)
            finally:
                self.finalize_pending -= 1
                self._final_queue.task_done()

    def _finalize(self, path: Path, end_info: dict[str, Any] | None) -> None:
        timeout = self.cfg["segments"]["finalize_timeout_s"]
        try:
            answer = run_child(path, end_info, timeout)
        except FinalizeError as e:
            n = self.finalize_failures.get(path.name, 0) + 1
            self.finalize_failures[path.name] = n
            if n >= FINALIZE_ATTEMPTS:
                aside = path.with_name(path.name + ".failed")
                try:
                    os.replace(path, aside)
                except OSError:
                    pass
                self.log.error(
                    f"{e}; tried {n} times, set aside as {aside} (a journaled .para: "
                    f"`para recover {aside}` may read it)"
                )
            else:
                self.log.warning(f"{e}; the journal is kept and finalising is retried")
            return
        self.finalize_failures.pop(path.name, None)
        ru = answer.get("rusage", {})
        self.finalize_cpu_s += float(ru.get("cpu_s", 0.0))
        self.finalize_max_rss = max(self.finalize_max_rss, int(ru.get("max_rss_bytes", 0)))
        if not answer.get("samples"):
            path.unlink(missing_ok=True)  # nothing in it: nothing to ship
            return
        try:
            target = self.spool.promote(path)
        except OSError as e:
            self.log.error(f"cannot move {path} to {self.spool.ready}: {e}")
            return
        self.finalized += 1
        self.last_finalized = {**answer, "path": str(target), "at": time.time()}
        self.log.info(
            f"segment {target.name}: {answer.get('samples')} samples, "
            f"{answer.get('values', 0):,} values, {answer.get('bytes', 0):,} bytes, ready to ship"
        )

    def retry_failed_finalizations(self) -> None:
        """Journals left in current/ by a failed finalisation (not the one being written)."""
        busy = {self.writer.path} if self.writer else set()
        for p in self.spool.segments(self.spool.current):
            if p in busy or self.finalize_failures.get(p.name, 0) == 0:
                continue
            self._queue_final(p, None)

    # -- housekeeping (main thread) --------------------------------------------------------
    def enforce_retention(self) -> None:
        r = self.cfg["retention"]
        dropped = self.spool.enforce_retention(
            r["max_bytes"], r["max_age_hours"] * 3600, r["min_free_bytes"]
        )
        for d in dropped:
            self.dropped_total += 1
            if d.rejected:
                self.dropped_rejected += 1
                self.log.info(f"retention ({d.reason}): deleted rejected {d.path.name}")
            elif not d.shipped:
                self.dropped_unshipped += 1
                self.dropped_unshipped_bytes += d.bytes
                self.log.warning(
                    f"retention ({d.reason}): deleted {d.path.name}, never shipped "
                    f"({d.bytes:,} bytes; {self.dropped_unshipped} unshipped segments dropped "
                    "so far)"
                )
            else:
                self.log.debug(f"retention ({d.reason}): deleted shipped {d.path.name}")

    def status(self, state: str = "running") -> dict[str, Any]:
        w = self.writer
        ru = resource.getrusage(resource.RUSAGE_SELF)
        doc: dict[str, Any] = {
            "state": state,
            "pid": self.pid,
            "host": self.host,
            "started": self.started,
            "updated": time.time(),
            "config": self.cfg.path,
            "interval": self.cfg.interval,
            "para_version": para.__version__,
            "kernels": implementation(),
            "samples": self.samples,
            "last_sample": self.last_sample,
            "missed_ticks": self.loop.missed_ticks,
            "clock_steps": self.clock_steps,
            "segment": None
            if w is None
            else {
                "path": str(w.path),
                "samples": w.samples,
                "bytes": w.offset,
                "since": (w.first_ms or 0) / 1000,
            },
            "segments": {
                "opened": self.segments_opened,
                "finalized": self.finalized,
                "finalizing": self.finalize_pending,
                "failed": dict(self.finalize_failures),
                "last": self.last_finalized,
                "finalizer_cpu_s": round(self.finalize_cpu_s, 3),
                "finalizer_max_rss_bytes": self.finalize_max_rss,
            },
            "families": self.loop.families(),
            "jobs": self.jobs.active_jobs() if self.jobs is not None else None,
            "spool": {
                **self._spool_usage(),
                "dropped_segments": self.dropped_total,
                "dropped_unshipped_segments": self.dropped_unshipped,
                "dropped_unshipped_bytes": self.dropped_unshipped_bytes,
                "dropped_rejected_segments": self.dropped_rejected,
            },
            "losses": {
                "buffered_samples": len(self.backlog),
                "lost_samples": self.lost_samples,
                "spool_errors": self.spool_errors,
                "spool_unwritable_since": (
                    self.unwritable_since / 1000 if self.unwritable_since else None
                ),
                "last_error": self.spool_error,
            },
            "resources": {
                "cpu_s": round(ru.ru_utime + ru.ru_stime, 3),
                "rss_bytes": _rss_bytes(),
                "max_rss_bytes": ru.ru_maxrss * 1024,
                "heavy_modules": lean.heavy_modules_loaded(),
            },
            "shipper": None,
            "live": None,
            "stacks": self._stacks_status(),
        }
        if self.live is not None:
            try:
                doc["live"] = self.live.status()
            except Exception as e:
                doc["live"] = {"error": str(e)}
        if self.shipper is not None:
            try:
                doc["shipper"] = self.shipper.status()
            except Exception as e:
                doc["shipper"] = {"state": "error", "error": str(e)}
        return doc

    def _stacks_status(self) -> dict[str, Any] | None:
        for s in self.loop.samplers:
            status = getattr(s, "status", None)
            if s.family == "stacks" and callable(status):
                return {**status(), "family": self.loop.families().get("stacks")}
        return None

    def _spool_usage(self) -> dict[str, Any]:
        """The spool's size: walked again only when segments moved (or once a minute)."""
        if self._usage is None or self._usage_key != (self.finalized, self.segments_opened):
            self._usage = self.spool.usage()
            self._usage_key = (self.finalized, self.segments_opened)
        return self._usage

    def write_status(self, state: str = "running") -> None:
        try:
            self.spool.write_status(self.status(state))
        except OSError as e:
            self.log.once("status", f"cannot write {self.spool.status_path}: {e}")

    # -- running ---------------------------------------------------------------------------
    def _start_shipper(self) -> None:
        table = self.cfg.collector
        if table is None:
            return
        try:
            from para.agent.shipper import Shipper
        except ImportError as e:
            self.log.error(f"[collector] is configured but the shipper cannot load: {e}")
            return
        try:
            self.shipper = Shipper(table, self.spool.root, self.host, self.log.info)
            self.shipper.start()
        except Exception as e:
            self.log.error(f"the shipper cannot start: {e}; segments wait in {self.spool.ready}")
            self.shipper = None

    def _start_live(self) -> None:
        """[alerts] and [metrics]: rules on this node's samples, /metrics (docs/alerts.md)."""
        if not self.cfg.live:
            return
        from para.agent.livenode import NodeLive

        try:
            self.live = NodeLive(
                self.host,
                self.cfg.live.get("alerts"),
                self.cfg.live.get("metrics"),
                self.spool.root,
                self.log.info,
                lambda: self.shipper,
                lambda: {"samples": self.samples, "missed_ticks": self.loop.missed_ticks},
            )
        except ParaError as e:
            self.log.error(f"alerts and metrics are off: {e.message}")
            self.live = None

    def _stop_live(self) -> None:
        if self.live is not None:
            try:
                self.live.stop()
            except Exception as e:
                self.log.warning(f"stopping the alerts: {e}")
            self.live = None

    def _stop_shipper(self) -> None:
        if self.shipper is not None:
            try:
                self.shipper.stop()
            except Exception as e:
                self.log.warning(f"stopping the shipper: {e}")
            self.shipper = None

    def _recover_leftovers(self) -> None:
        for p in self.spool.leftovers():
            self.log.info(
                f"{p.name} was left unfinished by an earlier agent (killed or crashed): "
                "finalising it from its journal"
            )
            self._queue_final(p, None)

    def _open(self) -> None:
        status = self.loop.open()
        ok = [f for f, st in status.items() if st.state == "ok"]
        self.log.info(
            f"para agent {para.__version__} (pid {self.pid}) on {self.host}: every "
            f"{self.cfg.interval:g} s into {self.spool.root}; sampling {', '.join(ok) or 'nothing'}"
        )
        for f, st in status.items():
            if st.state != "ok":
                self.log.info(f"{f}: not sampled here ({st.reason})")

    def _signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)
        self._wake.set()

    def install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._signal)

    def run(self) -> int:
        """Sample until SIGTERM/SIGINT; returns the exit status."""
        self._recover_leftovers()
        self._open()
        self._start_shipper()
        self._start_live()
        _settle_heap()
        self.loop.start()
        self.write_status()
        next_retention = time.monotonic()
        # the next status once the first samples are in, then every status_every_s
        next_status = next_retention + min(
            1.5 * self.cfg["agent"]["interval"], self.cfg["agent"]["status_every_s"]
        )
        while True:
            # asleep until the next chore: a signal wakes it at once (the handler sets _wake)
            self._wake.wait(max(0.0, min(next_status, next_retention) - time.monotonic()))
            self._wake.clear()
            while self._signals:
                sig = self._signals.popleft()
                if sig == signal.SIGHUP:
                    self.reload()
                else:
                    self.log.info(f"{signal.Signals(sig).name}: closing the segment and stopping")
                    return self.shutdown()
            now = time.monotonic()
            if now >= next_status:
                self.write_status()
                next_status = now + self.cfg["agent"]["status_every_s"]
            if now >= next_retention:
                self.enforce_retention()
                self.retry_failed_finalizations()
                self._usage = None
                next_retention = now + RETENTION_EVERY_S

    def _stop_sampling(self, reason: str) -> None:
        self.loop.stop(final_sample=True)
        self.loop.close()
        self.rotate(reason)
        self.files.close()

    def shutdown(self) -> int:
        self._stop_sampling("shutdown")
        self._stop_live()
        self._stop_shipper()
        self._final_queue.put(None)
        deadline = time.monotonic() + self.cfg["segments"]["finalize_timeout_s"]
        while self.finalize_pending > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.finalize_pending:
            self.log.warning(
                "finalising did not finish in time: the journal stays in current/ and the next "
                "start finalises it"
            )
        if self.backlog:
            self.log.error(
                f"{len(self.backlog)} samples could not be written to the spool and are lost"
            )
        self.enforce_retention()
        self._usage = None
        self.write_status("stopped")
        self.log.info("stopped")
        return 0

    def reload(self) -> None:
        path = self.cfg.path
        try:
            new = config_mod.load(path) if path else config_mod.defaults()
        except ParaError as e:
            self.log.error(f"SIGHUP: the configuration was not reloaded: {e.message}")
            return
        self.log.info(f"SIGHUP: reloading {path or 'the defaults'}")
        old = self.cfg
        self._stop_sampling("reload")
        self._stop_live()
        self._stop_shipper()
        try:
            self._setup(new)
        except ParaError as e:
            self.log.error(
                f"SIGHUP: the new configuration cannot run ({e.message}); keeping the old"
            )
            self._setup(old)
        self._open()
        self._start_shipper()
        self._start_live()
        self.loop.start()
        self.write_status()


def _settle_heap() -> None:
    """Everything allocated while starting lives as long as the agent: move it out of the
    cyclic garbage collector's sight, so its collections walk only what samples allocate."""
    gc.collect()
    gc.freeze()


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _not_a_sample(t_ms: int, rows: Rows) -> bytes:
    """A journal record that is not a sampling instant (`"s": 0`, as the format allows)."""
    return zlib.compress(
        json.dumps({"t": t_ms, "r": rows, "s": 0}, separators=(",", ":")).encode(), 1
    )


def _more_descriptors() -> None:
    """The job family keeps three files open per process it follows: take the hard limit
    (systemd's default soft limit is 1024, its hard limit much higher)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 1 << 20), hard))
        except (ValueError, OSError):
            pass


def main(config_path: str | None) -> int:
    cfg = config_mod.load(config_path)
    _more_descriptors()
    agent = Agent(cfg)
    try:
        return agent.run()
    except ParaError:
        raise
    except BaseException:
        agent.log.error("the agent failed; what was sampled stays in the spool's journal")
        raise
