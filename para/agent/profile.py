"""`para profile -- CMD`: run a command and record the node, its processes, counters and
(optionally) its call stacks into a .para file."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from para.agent import hostinfo, jobenv
from para.agent.child import Child, make_subreaper
from para.agent.jobcpus import job_cpus
from para.agent.loop import SamplingLoop
from para.agent.nodelocal import NodeLocal
from para.agent.samplers.base import ProcFiles, Sampler
from para.agent.samplers.fs import FsSampler
from para.agent.samplers.gpu import GpuSampler
from para.agent.samplers.perfstat import PerfStatSampler
from para.agent.samplers.process import ProcessSampler
from para.agent.samplers.system import CpuSampler, DiskSampler, MemorySampler, NetSampler
from para.cython_ext import implementation
from para.errors import ParaError, UsageError
from para.formats import ParaWriter
from para.formats.schema import catalogue
from para.formats.writer import Finalized, check_writable

# What a profile can hold: the agent's node-wide families (jobs, InfiniBand, licenses ...)
# are left out of its catalogue.
PROFILE_TABLES = [
    "node", "memory", "cpu", "net", "disk", "fs", "proc", "gpu", "gpu_proc", "counters",
    "events", "stacks", "instr_samples",
]  # fmt: skip


@dataclass
class ProfileOptions:
    cmd: list[str]
    output: str | None = None
    interval: float = 1.0
    functions: bool = False
    events: list[str] = field(default_factory=list)
    counters: bool = True
    gpu: bool = True
    quiet: bool = False
    perf: str = "perf"
    call_graph: str = "auto"  # how --functions unwinds: auto | fp | dwarf | lbr (unwind.py)
    # --functions: Python stacks of CPython processes by py-spy (issue 12)
    python_stacks: bool = True
    pyspy: str | None = None  # the py-spy to run (default: beside para's interpreter, PATH)
    pyspy_rate: int = 100


@dataclass
class ProfileResult:
    exit_code: int
    path: Path | None  # None for a rank that only ran its command (another para samples)
    finalized: Finalized | None = None
    interrupted: bool = False


def resolve_command(cmd: list[str]) -> str:
    """The executable CMD names; a missing one exits 127 and a non-executable 126, as a
    shell would, before anything else happens."""
    if not cmd:
        raise UsageError(
            "no command to profile", hint="usage: para profile [OPTIONS] -- CMD [ARGS]"
        )
    prog = cmd[0]
    if "/" in prog:
        if not os.path.exists(prog):
            raise ParaError(f"command not found: {prog}", exit_code=127)
        if os.path.isdir(prog) or not os.access(prog, os.X_OK):
            raise ParaError(f"command is not executable: {prog}", exit_code=126)
        return prog
    found = shutil.which(prog)
    if found is None:
        raise ParaError(
            f"command not found: {prog}", hint="check the name and your PATH", exit_code=127
        )
    return found


def output_path(template: str | None, cmd: list[str], job: jobenv.JobInfo, host: str,
                rank: int | None = None, stamp: str | None = None) -> Path:  # fmt: skip
    """Default: para-<cmd>-[<job>-]<host>-<time>.para.  A given name may use {cmd} {host}
    {job} {rank} {time} {pid}; under srun/mpirun a name without {host} gets the host added,
    so the nodes of one job never write the same file.  {rank} is the lowest rank on the
    node (`rank`; the sampler renames its file when a lower rank than its own joined)."""
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    rank = job.rank if rank is None else rank
    prog = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(cmd[0]).name) or "cmd"
    fields = {
        "cmd": prog,
        "host": host,
        "job": job.job_id or "nojob",
        "rank": "" if rank is None else str(rank),
        "time": stamp,
        "pid": str(os.getpid()),
    }
    if template is None:
        job_part = f"{job.job_id}-" if job.job_id else ""
        path = Path(f"para-{prog}-{job_part}{host}-{stamp}.para")
        n = 1
        while path.exists():  # never overwrite an earlier run with a default name
            path = Path(f"para-{prog}-{job_part}{host}-{stamp}.{n}.para")
            n += 1
        return path
    try:
        name = template.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise UsageError(
            f"--output {template!r}: unknown placeholder {e}",
            hint="placeholders: {cmd} {host} {job} {rank} {time} {pid}",
        ) from e
    if job.launch_key and "{host}" not in template:
        p = Path(name)
        stem = p.stem if p.suffix == ".para" else p.name
        name = str(p.with_name(f"{stem}.{host}.para"))
    return Path(name)


class Profiler:
    def __init__(self, opts: ProfileOptions, err: TextIO | None = None):
        self.opts = opts
        self.err = err or sys.stderr
        self.job = jobenv.detect()
        self.host = socket.gethostname()
        self._stamp = time.strftime("%Y%m%d-%H%M%S")
        self._affinity = set(os.sched_getaffinity(0))
        self._python: Any = None  # pystacks.PySpyRecorder under --functions

    def say(self, msg: str) -> None:
        if not self.opts.quiet:
            print(f"para: {msg}", file=self.err, flush=True)

    def warn(self, msg: str) -> None:
        print(f"para: {msg}", file=self.err, flush=True)

    # -- the entry point -------------------------------------------------------------------
    def run(self) -> ProfileResult:
        if self.opts.interval < 0.05:
            raise UsageError(f"--interval {self.opts.interval}: the shortest interval is 0.05 s")
        resolve_command(self.opts.cmd)
        path = self._path()
        if not self.job.launch_key:
            check_writable(path)
            return self._sample(path, None)
        # One rank of many: whatever goes wrong with the profile, the rank's command runs
        # (the job's other ranks wait for it), and the node's sampler is a para that can
        # write its file.
        try:
            check_writable(path)
        except ParaError as e:
            return self._unsampled(f"{e.message}")
        node = NodeLocal(self.job.launch_key)
        if not node.claim():
            return self._passenger(node)
        try:
            return self._sample(path, node)
        except _NotStarted as e:
            node.release()
            return self._unsampled(str(e))
        finally:
            node.release()

    def _path(self, rank: int | None = None) -> Path:
        return output_path(self.opts.output, self.opts.cmd, self.job, self.host, rank,
                           self._stamp)  # fmt: skip

    def _unsampled(self, why: str) -> ProfileResult:
        """This rank cannot sample: it still runs its command (and says so)."""
        self.warn(f"rank {self.job.rank}: {why}; running the command without profiling it")
        child = Child(self.opts.cmd, gated=False, on_signal=self.say)
        child.forward_signals()
        return ProfileResult(child.wait().code, None)

    def _passenger(self, node: NodeLocal) -> ProfileResult:
        """Another para samples this node: run the rank, let that para see its processes
        (and record the rank's call stacks here, for that para's file)."""
        sampler = node.sampler_pid()
        self.say(
            f"rank {self.job.rank}: the node's sampler is para pid {sampler}; running the command"
        )
        child = Child(self.opts.cmd, gated=True, on_signal=self.say)
        recorder = None
        self._helpers: set[int] = set()
        try:
            child.forward_signals()
            if self.opts.functions:
                recorder = self._start_recorder(child.pid)
            if recorder is not None and self.opts.python_stacks:
                self._python = self._python_recorder(child)
            node.register(child.pid, self.job.rank, self._affinity)
            if not node.wait_ready():
                self.warn(f"rank {self.job.rank}: the node's sampler (para pid {sampler}) is "
                          "not ready; running the command all the same")  # fmt: skip
            child.release()  # returns once exec'd: the sampler sees the command, not the gate
            node.running(child.pid)
            if self._python is not None:
                self._python.start()
        except BaseException:
            child.kill()
            child.wait()
            if self._python is not None:
                self._python.stop()
                self._python.close()
            node.finished(child.pid)
            raise
        try:
            child.wait_exit()
            ended_ms = int(time.time() * 1000)
            if not node.wait_sampled_after(ended_ms, timeout=3 * self.opts.interval + 5):
                self.warn(f"rank {self.job.rank}: the node's sampler took no sample after the "
                          "command ended; its last second of CPU time may be missing")  # fmt: skip
            status = child.wait()
        finally:
            try:
                if recorder is not None:
                    node.hand_over(child.pid, self._recorded(recorder, self._python))
            finally:
                node.finished(child.pid)
        return ProfileResult(status.code, None)

    def _recorded(self, recorder: Any, python: Any = None) -> dict[str, Any]:
        """Finish this para's recording (perf's stacks, py-spy's Python stacks stitched on
        them): what goes into the node's file."""
        from para.agent.perfrecord import unwound

        if python is not None:
            python.stop()
            recorder.python = python
        try:
            stacks = recorder.finish()
        finally:
            if python is not None:
                python.close()
        return {
            "rank": self.job.rank,
            "stacks": stacks,
            "instr_samples": recorder.instructions,
            # counted here, not in perfrecord: the agent's windows do not keep it
            "functions": {**recorder.info, **unwound(stacks)},
        }

    # -- the sampling run ------------------------------------------------------------------
    def _samplers(self, files: ProcFiles, child: Child, node: NodeLocal | None) -> list[Sampler]:
        def roots() -> set[int]:
            others = node.passengers() if node else set()
            return {child.pid} | others

        helpers: set[int] = set()
        self._helpers = helpers
        samplers: list[Sampler] = [
            CpuSampler(files),
            MemorySampler(files),
            NetSampler(files),
            DiskSampler(files),
            FsSampler(files),
            ProcessSampler(files, roots, adopt_children_of=os.getpid(), exclude=self._excluded),
        ]
        if self.opts.gpu:
            samplers.append(GpuSampler(on_message=self.say))
        if self.opts.counters:
            samplers.append(
                PerfStatSampler(
                    self.opts.events or None,
                    pid=child.pid,
                    interval_ms=int(self.opts.interval * 1000),
                    perf=self.opts.perf,
                    on_message=self.say,
                )
            )
        return samplers

    def _sample(self, path: Path, node: NodeLocal | None) -> ProfileResult:
        files = ProcFiles()
        host = hostinfo.host_facts(files)
        cpus = job_cpus([self._affinity], self.job.cpus_on_node)
        meta: dict[str, Any] = {
            "host": host,
            "interval": self.opts.interval,
            "job": self.job.as_dict(),
            "command": self.opts.cmd,
            "cwd": os.getcwd(),
            "allowed_cpus": cpus["cpus"],
            "cpus": cpus,
            "started": time.time(),
            "source": "para profile",
            "catalogue": catalogue(PROFILE_TABLES),
        }
        try:
            writer = ParaWriter(path, meta)
        except OSError as e:
            raise _NotStarted(f"cannot write {path}: {e.strerror or e}") from e
        subreaper = make_subreaper()
        try:
            child = Child(self.opts.cmd, gated=True, on_signal=self.say)
        except (OSError, KeyboardInterrupt) as e:
            writer.abandon()
            path.unlink(missing_ok=True)
            raise ParaError(f"could not start {self.opts.cmd[0]}: {e}", exit_code=126) from e
        try:
            return self._run_child(path, node, files, host, writer, child, subreaper)
        except BaseException:
            # Whatever broke, the command must not stay held at the gate, and what was
            # sampled stays recoverable in the journal.
            child.kill()
            writer.abandon()
            if self._python is not None:
                self._python.stop()
                self._python.close()
            raise

    def _excluded(self) -> set[int]:
        """para's own helpers (perf, py-spy), which are its children but not the job's."""
        py = self._python.helper_pids() if self._python is not None else set()
        return self._helpers | py

    def _run_child(
        self,
        path: Path,
        node: NodeLocal | None,
        files: ProcFiles,
        host: dict[str, Any],
        writer: ParaWriter,
        child: Child,
        subreaper: bool,
    ) -> ProfileResult:
        # Signals first: every thread started from here on inherits the blocked mask.
        child.forward_signals()

        def sink(t_ms: int, rows: Any) -> None:
            try:
                writer.append(t_ms, rows)
            finally:
                if node is not None:  # the ranks whose command ended before t_ms are in it
                    node.sampled(t_ms)

        loop = SamplingLoop(
            self._samplers(files, child, node), sink, self.opts.interval, on_message=self.warn
        )
        status = loop.open()
        for s in loop.samplers:  # para's own subprocesses are not the job's
            helper = getattr(s, "perf_pid", None)
            if helper is not None:
                self._helpers.add(helper)
        recorder = self._start_recorder(child.pid) if self.opts.functions else None
        if recorder is not None and self.opts.python_stacks:
            self._python = self._python_recorder(child)
        self._announce(path, child, loop, recorder)
        if node is not None:
            self._gather(node)
        started = time.monotonic()
        child.release()  # returns once the command has exec'd: it, not the gate, is sampled
        loop.start()  # the first sample is taken at once
        if self._python is not None:
            self._python.start()
        # Under a launcher, left unreaped until the last sample: the kernel keeps its final
        # CPU time till then, and the ranks are compared on it.  (Alone, it is reaped at
        # once, as before: the report's timeline and phases end at the command's end.)
        exit_status = child.wait() if node is None else None
        if node is not None:
            child.wait_exit()
        if node is not None and node.pending():
            self.say("the command ended; waiting for the other ranks on this node")
            while node.pending():
                time.sleep(min(self.opts.interval, 0.5))
        elapsed = time.monotonic() - started
        loop.stop(final_sample=True)
        if exit_status is None:
            exit_status = child.wait()
        functions = self._write_stacks(writer, recorder, node, self._python)
        loop.close()
        facts = {f: dict(st.facts) for f, st in status.items() if st.facts}
        for s in loop.samplers:  # what a family learnt while running (counter states, ...)
            learnt = getattr(s, "metadata", None)
            if callable(learnt) and status[s.family].state != "unavailable":
                facts.setdefault(s.family, {}).update(learnt())
        end_info = {
            "ended": time.time(),
            "elapsed_s": round(elapsed, 3),
            "exit": exit_status.as_dict(),
            "host": {**host, "gpus": facts.get("gpu", {}).get("gpus", [])},
            "families": loop.families(),
            "family_facts": facts,
            "signals": child.signals_seen,
            # rusage in "exit" covers this para's own command only when other ranks ran too
            "ranks_on_node": 1 + (len(node.registrations()) if node else 0),
            **self._node_cpus(node),
            "sampler": {
                "cpu_s": round(loop.cpu_seconds, 4),
                "missed_ticks": loop.missed_ticks,
                "lost_samples": loop.sink_errors,
            },
            "functions": functions,
            "kernels": implementation(),
            "subreaper": subreaper,
        }
        prog = Path(self.opts.cmd[0]).name
        ex = exit_status.as_dict()
        how = (
            f"was killed by {ex['signal']}"
            if "signal" in ex
            else f"exited with code {ex['exit_code']}"
        )
        self.say(f"{prog} {how} after {elapsed:.1f} s")
        try:
            finalized = writer.close(end_info)
        except OSError as e:
            raise ParaError(
                f"could not finish {path}: {e}",
                hint=f"the samples are safe in its journal; run `para recover {path}` later",
            ) from e
        path = self._named_by_lowest_rank(path, node)
        return ProfileResult(exit_status.code, path, finalized, bool(child.signals_seen))

    def _gather(self, node: NodeLocal, timeout: float = 30.0) -> None:
        """Start together with the node's other ranks (as many as the launcher says), so that
        the first sample sees every rank's command: they wait for `ready`, held."""
        others = (self.job.local_size or 1) - 1
        if others > 0:
            came = node.wait_registered(others, timeout)
            if came < others:
                self.warn(f"{came} of the {others} other ranks on this node came in "
                          f"{timeout:g} s; sampling without waiting for the others")  # fmt: skip
        node.mark_ready()
        node.wait_running(timeout=10.0)

    def _node_cpus(self, node: NodeLocal | None) -> dict[str, Any]:
        """The job's CPUs on the node: every rank's affinity, within the cgroup and the
        scheduler's allocation."""
        if node is None:
            return {}
        regs = list(node.registrations().values())
        affinities = [self._affinity] + [set(r.get("cpus") or []) for r in regs]
        cpus = job_cpus([a for a in affinities if a], self.job.cpus_on_node)
        ranks = sorted({r["rank"] for r in regs if isinstance(r.get("rank"), int)}
                       | ({self.job.rank} if self.job.rank is not None else set()))  # fmt: skip
        return {"allowed_cpus": cpus["cpus"], "cpus": cpus, "ranks": ranks}

    def _named_by_lowest_rank(self, path: Path, node: NodeLocal | None) -> Path:
        """`{rank}` names the node's file by its lowest rank, whichever rank sampled."""
        if node is None or not self.opts.output or "{rank}" not in self.opts.output:
            return path
        ranks = [r["rank"] for r in node.registrations().values() if isinstance(r.get("rank"), int)]
        if self.job.rank is None or not ranks or min(ranks) >= self.job.rank:
            return path
        final = self._path(min(ranks))
        try:
            os.replace(path, final)
        except OSError as e:
            self.warn(f"could not rename {path} to {final} (the node's lowest rank): {e}")
            return path
        return final

    def _write_stacks(self, writer: ParaWriter, recorder: Any, node: NodeLocal | None,
                      python: Any = None) -> dict[str, Any] | None:  # fmt: skip
        """Call stacks of this para's command and of the node's other ranks (each rank's para
        records its own) into the file; what each recording was, for `functions`."""
        parts: list[dict[str, Any]] = []
        if recorder is not None:
            parts.append(self._recorded(recorder, python))
        if node is not None:
            parts += list(node.collect().values())
        if not parts:
            return None
        for part in parts:
            rows = {"stacks": part.get("stacks") or [],
                    "instr_samples": part.get("instr_samples") or []}  # fmt: skip
            if rows["stacks"]:
                writer.append(int(time.time() * 1000), rows, sample=False)
            err = (part.get("functions") or {}).get("error")
            if err:
                who = f"rank {part['rank']}: " if part.get("rank") is not None else ""
                self.warn(f"{who}no call stacks: {err}")
        info = dict(parts[0].get("functions") or {})
        if len(parts) > 1:
            infos = [dict(p.get("functions") or {}, rank=p.get("rank")) for p in parts]
            info["ranks"] = sorted(infos, key=lambda i: (i["rank"] is None, i["rank"] or 0))
            for key in ("samples", "stacks", "perf_data_bytes", "kernel_samples",
                        "unwound_samples"):  # fmt: skip
                info[key] = sum(int(i.get(key) or 0) for i in infos)
            info["binaries"] = {k: v for i in infos for k, v in (i.get("binaries") or {}).items()}
            if any(i.get("samples") for i in infos):
                info.pop("error", None)
        return info

    def _start_recorder(self, pid: int) -> Any:
        from para.agent.perfrecord import FunctionRecorder
        from para.agent.samplers.base import Unavailable
        from para.agent.unwind import choose

        exe = resolve_command(self.opts.cmd)
        rec = FunctionRecorder(pid, perf=self.opts.perf, unwind=choose(exe, self.opts.call_graph))
        try:
            rec.start()
        except Unavailable as e:
            self.warn(f"--functions: no call stacks this run: {e}")
            return None
        if rec.proc is not None and hasattr(self, "_helpers"):
            self._helpers.add(rec.proc.pid)
        return rec

    def _python_recorder(self, child: Child) -> Any:
        """py-spy on the CPython processes of the command's tree (the processes perf
        follows), or None when py-spy is missing: then perf's frames of the interpreter stay."""
        from para.agent.pystacks import PySpyRecorder
        from para.agent.samplers.base import Unavailable

        try:
            return PySpyRecorder(
                lambda: {child.pid}, adopter=os.getpid(), exclude=lambda: self._helpers,
                rate=self.opts.pyspy_rate, pyspy=self.opts.pyspy, on_message=self.warn,
            )  # fmt: skip
        except Unavailable as e:
            self.warn(f"--functions: Python functions are not resolved: {e}; Python processes "
                      "keep perf's frames of the interpreter")  # fmt: skip
            return None

    def _announce(self, path: Path, child: Child, loop: SamplingLoop, recorder: Any) -> None:
        cmd = " ".join(self.opts.cmd)
        if len(cmd) > 60:
            cmd = cmd[:57] + "..."
        ok = [f for f, st in loop.status.items() if st.state == "ok"]
        self.say(
            f"profiling `{cmd}` (pid {child.pid}) on {self.host} every {self.opts.interval:g} s: "
            + ", ".join(ok)
            + (
                f", call stacks (perf record, {recorder.unwind.mode} unwinding"
                + (", py-spy for Python)" if self._python else ")")
                if recorder
                else ""
            )
        )
        for f, st in loop.status.items():
            if st.state != "ok":
                self.say(f"{f}: not sampled ({st.reason})")
        self.say(f"writing {path}; Ctrl-C stops the command and still writes the file")


class _NotStarted(ParaError):
    """The sampler could not start (its file cannot be created): nothing has run yet."""


def run(opts: ProfileOptions, err: TextIO | None = None) -> ProfileResult:
    return Profiler(opts, err).run()
