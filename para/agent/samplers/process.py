"""The processes of the profiled job: the whole tree, children that re-parent included.

`para profile` makes itself a child subreaper, so a daemonising grandchild re-parents to para
instead of init and stays in the tree.  Membership is decided from each new pid's parent: a
pid seen once and found outside the tree is not read again (it cannot join later, since a
process only re-parents to an ancestor subreaper).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from para.agent.jobenv import rank_from_environ
from para.agent.samplers.base import ProcFiles, Rows, Sampler, Unavailable, event
from para.cython_ext import load

procparse = load("procparse")
_NO_JOB: tuple[str | None, str | None] = (None, None)


class ProcessSampler(Sampler):
    family = "process"
    tables: tuple[str, ...] = ("proc", "events")

    def __init__(
        self,
        files: ProcFiles,
        roots: Callable[[], set[int]],
        adopt_children_of: int | None = None,
        exclude: Callable[[], set[int]] | None = None,
    ):
        """roots(): pids whose trees form the job; children of `adopt_children_of` (para itself,
        the subreaper) belong too, except the pids in exclude() (para's own helpers)."""
        self.files = files
        self.roots = roots
        self.adopter = adopt_children_of
        self.exclude = exclude or (lambda: set())
        self.members: dict[int, int] = {}  # pid -> start time (ticks since boot)
        self.outsiders: set[int] = set()
        self.page_size = os.sysconf("SC_PAGE_SIZE")
        self.seen_total = 0
        self._last_pid = b""
        self.ranks: dict[int, int | None] = {}  # pid -> MPI rank, read once when it joins
        self.names: dict[int, str] = {}  # pid -> comm, to see it exec another program

    def open(self) -> dict[str, Any]:
        if not self.files.exists("proc/self/stat"):
            raise Unavailable("no /proc/self/stat: /proc is not mounted")
        return {"page_size": self.page_size}

    def _stat(self, pid: int, keep: bool = False) -> tuple[Any, ...] | None:
        """Members' files stay open (a read on a descriptor of a process that has exited
        fails, so pid reuse cannot fool it); others are read once."""
        rel = f"proc/{pid}/stat"
        try:
            data = self.files.read(rel) if keep else self.files.read_once(rel)
            return procparse.parse_pid_stat(data)
        except (OSError, ValueError):
            return None

    def _no_new_process(self) -> bool:
        """The last pid the kernel handed out (/proc/loadavg) is unchanged: nothing was
        created since the last look, so /proc need not be listed."""
        try:
            last = self.files.read("proc/loadavg").rsplit(b" ", 1)[-1]
        except OSError:
            return False
        same = last == self._last_pid
        self._last_pid = last
        return same

    def _discover(self, t_ms: int, out: Rows) -> None:
        """Find the processes that joined the job since the last sample."""
        roots = self.roots()
        if self._no_new_process() and roots <= self.members.keys() | self.outsiders:
            return
        try:
            alive = {int(n) for n in os.listdir(self.files.path("proc")) if n.isdigit()}
        except OSError:
            return
        self.outsiders &= alive
        roots &= alive
        excluded = self.exclude()
        fresh: dict[int, tuple[Any, ...]] = {}
        candidates: dict[int, int] = {}  # pid -> ppid, for pids not yet classified
        for pid in alive - self.members.keys() - self.outsiders:
            st = self._stat(pid)
            if st is None:
                continue
            fresh[pid] = st
            candidates[pid] = st[3]
        # a root that ended (a zombie its para has not reaped yet: profile.py keeps it for a
        # last sample of its CPU time) does not rejoin as a new process
        members = set(self.members) | (roots - self.outsiders)
        changed = True
        while changed:  # a child and its grandchild can both be new this second
            changed = False
            for pid, ppid in list(candidates.items()):
                if pid in excluded:
                    continue
                if (
                    pid in members
                    or ppid in members
                    or (self.adopter is not None and ppid == self.adopter)
                ):
                    members.add(pid)
                    del candidates[pid]
                    changed = True
        self.outsiders.update(candidates)
        for pid in members - self.members.keys():
            st = fresh.get(pid) or self._stat(pid)
            if st is None:
                continue
            self.members[pid] = st[9]
            self.names[pid] = st[1]
            self.seen_total += 1
            out.setdefault("events", []).append(
                event(
                    t_ms,
                    "process_start",
                    st[1],
                    pid,
                    ppid=st[3],
                    cmdline=self._cmdline(pid),
                    start_ticks=st[9],
                )
            )

    def _cmdline(self, pid: int) -> list[str]:
        try:
            raw = self.files.read_once(f"proc/{pid}/cmdline")
        except OSError:
            return []
        return [a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0")] if raw else []

    def sample(self, t_ms: int, out: Rows) -> None:
        self._discover(t_ms, out)
        rows = out.setdefault("proc", [])
        for pid, start in list(self.members.items()):
            st = self._stat(pid, keep=True)
            if st is None or st[9] != start or st[2] == "X":
                self._ended(t_ms, pid, out)
                continue
            try:
                vol, invol = procparse.parse_pid_status_ctxt(self.files.read(f"proc/{pid}/status"))
            except (OSError, ValueError):
                vol = invol = None
            try:
                rchar, wchar, rbytes, wbytes = procparse.parse_pid_io(
                    self.files.read(f"proc/{pid}/io")
                )
            except (OSError, ValueError):
                # /proc/PID/io needs ptrace rights: absent for other users' processes
                rchar = wchar = rbytes = wbytes = None
            if st[1] != self.names.get(pid):
                # an exec (a shell's, a pyenv shim's): the name follows the program it runs
                self.names[pid] = st[1]
                out.setdefault("events", []).append(
                    event(t_ms, "process_exec", st[1], pid, cmdline=self._cmdline(pid))
                )
            _, _, state, ppid, minflt, majflt, utime, stime, threads, _, vsize, rss, cpu = st[:13]
            cu, cs = st[13:15]
            rows.append(
                [
                    pid,
                    ppid,
                    state,
                    utime,
                    stime,
                    rss * self.page_size,
                    vsize,
                    threads,
                    cpu,
                    minflt,
                    majflt,
                    vol,
                    invol,
                    rchar,
                    wchar,
                    rbytes,
                    wbytes,
                    cu,
                    cs,
                    self.rank_of(pid, ppid),
                    *self.job_of(pid),
                ]
            )
            if state == "Z":
                self._ended(t_ms, pid, out)

    def job_of(self, pid: int) -> tuple[str | None, str | None]:
        """The (job, step) a member belongs to: none here; the agent's job sampler knows."""
        return _NO_JOB

    def rank_of(self, pid: int, ppid: int) -> int | None:
        """The MPI rank a launcher gave the process (its environment), else its parent's: a
        rank's helpers count for that rank.  Read once, when first asked."""
        if pid in self.ranks:
            return self.ranks[pid]
        try:
            rank = rank_from_environ(self.files.read_once(f"proc/{pid}/environ"))
        except OSError:  # another user's process, or gone
            rank = None
        if rank is None:
            rank = self.ranks.get(ppid)
        self.ranks[pid] = rank
        return rank

    def _ended(self, t_ms: int, pid: int, out: Rows) -> None:
        del self.members[pid]
        self.ranks.pop(pid, None)
        self.names.pop(pid, None)
        for name in ("stat", "status", "io"):
            self.files.forget(f"proc/{pid}/{name}")
        self.outsiders.add(pid)  # an unreaped zombie must not rejoin as a new process
        out.setdefault("events", []).append(event(t_ms, "process_end", "", pid))

    @property
    def pids(self) -> set[int]:
        return set(self.members)
