"""One node's recording reduced to what a job analysis needs: per-second series, per-core
and per-process totals, and call stacks per second.

A node of a big job holds millions of rows (64 CPUs x 3600 s is 230,000 per-core rows, its
ranks as many again, its call stacks more); loading them all for 128 nodes does not fit in
memory.  So each node is read once, only the columns needed, and reduced here: counters
become rates with the `rates` kernel (wraps and resets handled, never made up), rows are
summed per second with Arrow's group-by, and what comes out is a few thousand rows per node.
The job's SQL (sql/job.sql) then works on the reduced tables of all nodes together.
"""

from __future__ import annotations

import functools
import mmap
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from para.cython_ext import load
from para.formats import ParaFile

_rates = load("rates")

# A rate over a window much shorter than the interval is noise (see report.MIN_WINDOW).
MIN_WINDOW = 0.25
CPU_KINDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
# Metadata operations of a parallel or network filesystem client (AGENT's lustre/nfs tables).
LUSTRE_META = (
    "open",
    "close",
    "getattr",
    "setattr",
    "create",
    "unlink",
    "mkdir",
    "rmdir",
    "rename",
    "statfs",
    "readdir",
    "getxattr",
    "setxattr",
    "inode_permission",
)
NFS_META = ("vfs_open", "vfs_lookup", "vfs_getdents", "vfs_setattr", "inode_revalidate")


# Keys x stacks summed in an array up to this many cells (160 MB), hashed past it.
MAX_CELLS = 20_000_000

# pyarrow converts a Python number on every call (slowly): constants are made once
_F0 = pa.scalar(0.0)
_I0 = pa.scalar(0, pa.int64())
_IM1 = pa.scalar(-1, pa.int32())
_PYSPY = pa.array(["py-spy"])
_WAITING = pa.array(["wait", "ready"])
_DSTATE = pa.array(["D"])


# -- reading the members of a .para file ---------------------------------------------------


class Source:
    """The tables of one .para file, read by column.  A complete file's Parquet parts are
    read in place from a memory map where they are stored, not compressed, inside the ZIP
    (a table with a deflated part, as short recordings have, and an unfinished file go
    through ParaFile, which inflates parts and recovers journals)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.pf = ParaFile(self.path)
        self.meta: dict[str, Any] = self.pf.meta
        self.tables = set(self.pf.tables)
        self._parts: dict[str, list[tuple[int, int]]] = {}
        self._map: mmap.mmap | None = None
        if self.pf.complete:
            self._index()

    def _index(self) -> None:
        deflated: set[str] = set()
        with zipfile.ZipFile(self.path) as zf, open(self.path, "rb") as f:
            for info in zf.infolist():
                table, _, rest = info.filename.partition("/")
                if not rest.endswith(".parquet"):
                    continue
                if info.compress_type != zipfile.ZIP_STORED:
                    deflated.add(table)  # a small part deflated: read through ParaFile
                    continue
                f.seek(info.header_offset + 26)
                head = f.read(4)
                nlen, xlen = int.from_bytes(head[:2], "little"), int.from_bytes(head[2:], "little")
                start = info.header_offset + 30 + nlen + xlen
                self._parts.setdefault(table, []).append((start, info.compress_size))
        for table in deflated:
            self._parts.pop(table, None)
        if self._parts:
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def read(self, table: str, columns: list[str], dictionary: tuple[str, ...] = ()
             ) -> pa.Table | None:  # fmt: skip
        """The named columns of `table` (a column the file lacks reads as nulls), or None.
        Columns in `dictionary` stay dictionary-encoded as stored (call stacks repeat)."""
        if table not in self.tables:
            return None
        schema = self.pf.schema(table)
        wanted = pa.schema([schema.field(c) if c in schema.names else pa.field(c, pa.null())
                            for c in columns])  # fmt: skip
        if table in self._parts and self._map is not None:
            pieces = []
            for start, size in self._parts[table]:
                buf = pa.py_buffer(self._map)[start : start + size]
                pfile = pq.ParquetFile(pa.BufferReader(buf), read_dictionary=dictionary or None)
                have = [c for c in columns if c in pfile.schema_arrow.names]
                pieces.append(_conform(pfile.read(columns=have, use_threads=False), wanted))
            return pa.concat_tables(pieces) if len(pieces) > 1 else pieces[0]
        present = [c for c in columns if c in schema.names]
        return _conform(self.pf.read_table(table, present), wanted)

    def close(self) -> None:
        if self._map is not None:
            # Arrow may still reference the map through buffers handed out; it is
            # closed when they are gone.
            self._map = None
        self.pf.close()


def _conform(tab: pa.Table, wanted: pa.Schema) -> pa.Table:
    cols = []
    for f in wanted:
        if f.name in tab.column_names:
            col = tab.column(f.name)
            if pa.types.is_dictionary(col.type) or f.type == pa.null() or col.type == f.type:
                cols.append(col)
            else:
                cols.append(col.cast(f.type))
        else:
            cols.append(pa.nulls(len(tab), f.type if f.type != pa.null() else pa.int64()))
    return pa.table(cols, names=wanted.names)


@dataclass(frozen=True)
class FileFacts:
    """What a report needs of a file before reading it: whose, when, and whether an agent
    wrote it (its segments hold several jobs)."""

    host: str
    start: float | None
    end: float | None
    segment: bool
    agent: bool


def file_facts(path: str | Path) -> FileFacts:
    """The file's facts, read once per process while it is unchanged (a report looks at
    every file's header twice before reading it: 0.09 s for 128 files each time)."""
    try:
        st = Path(path).stat()
    except OSError:
        return _read_facts(str(path))  # ParaFile says what is wrong, and what to do
    # a file rewritten (the writer renames a new one in place: another inode) or grown
    # (an unfinished one's journal) is read again
    return _file_facts(str(path), (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))


@functools.lru_cache(maxsize=4096)
def _file_facts(path: str, version: tuple[int, int, int, int]) -> FileFacts:
    return _read_facts(path)


def _read_facts(path: str) -> FileFacts:
    with ParaFile(path) as pf:
        st = pf.stats() if not pf.complete else pf.meta
        return FileFacts(
            str((pf.meta.get("host") or {}).get("hostname") or Path(path).stem),
            st.get("start"), st.get("end"), bool(pf.meta.get("segment")),
            pf.meta.get("source") == "para agent" or bool(pf.meta.get("segment")),
        )  # fmt: skip


# -- the kernel on Arrow arrays --------------------------------------------------------------


def _flat(col: pa.ChunkedArray | pa.Array, typ: pa.DataType) -> pa.Array:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return arr.cast(typ) if arr.type != typ else arr


def _data(arr: pa.Array) -> pa.Buffer:
    width = arr.type.bit_width // 8
    buf = arr.buffers()[1]
    assert buf is not None
    return buf.slice(arr.offset * width, len(arr) * width)


def _numbers(values: pa.ChunkedArray | pa.Array) -> tuple[pa.Array, bool]:
    """Values for the kernels: 64-bit integers as they are (counters are stored so: the
    kernel reads them as floats row by row, where a cast would copy the column first),
    anything else as floats; and whether they are integers."""
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if pa.types.is_int64(arr.type):
        return arr, True
    return _flat(arr, pa.float64()), False


def rates(
    keys: pa.Array | None,
    t_ms: pa.Array,
    values: pa.ChunkedArray | pa.Array,
    *,
    min_dt_s: float,
    scale: float = 1.0,
    modulus: float = 0.0,
    moduli: pa.Array | None = None,
) -> tuple[pa.Array, int, int]:
    """Per-second rate of a cumulative counter (rows grouped by key, in time order): the
    array of rates (null where none can be known), wraps and resets seen."""
    v, ints = _numbers(values)
    valid = None
    if v.null_count:
        # the kernel never reads a value whose valid byte is 0: what lies under a null
        # need not be filled in
        valid = _data(_flat(pc.is_valid(v), pa.uint8()))
    mods = None
    if moduli is not None:
        mods = _data(pc.fill_null(_flat(moduli, pa.float64()), _F0))
    data, bitmap, nulls, wraps, resets = _rates.counter_rates(
        _data(keys) if keys is not None else None, _data(t_ms), _data(v), valid,
        min_dt_s=min_dt_s, modulus=modulus, moduli=mods, scale=scale, ints=ints,
    )  # fmt: skip
    n = len(t_ms)
    arr = pa.Array.from_buffers(
        pa.float64(), n, [pa.py_buffer(bitmap), pa.py_buffer(data)], null_count=nulls
    )
    return arr, wraps, resets


def rates_on_steps(t_ms: pa.Array, rate: pa.Array, step_ms: float) -> pa.Array:
    """Each look's rate over the interval since the look before, made the rate of the step
    the look stands for (the kernel `on_steps`: step k from t0 + (k-1) steps to t0 + k
    steps, t0 the first look), keeping what the intervals held.  The job's grid counts each
    step as one interval long: a look taken late (an agent beside a CPU hog on each core
    looks 0.486-0.514 s apart at 0.5 s) measured its rate over longer, and a job whose CPU
    came in lumps (a script's children, credited when reaped) gained or lost up to 0.05 s
    of 4 on the grid."""
    t = _flat(t_ms, pa.int64())
    r = _flat(rate, pa.float64())
    valid = None
    if r.null_count:
        valid = _data(_flat(pc.is_valid(r), pa.uint8()))  # (nulls unread, as in rates)
    data, bitmap, nulls = _rates.on_steps(_data(t), _data(r), valid, step_ms)
    return pa.Array.from_buffers(
        pa.float64(), len(t), [pa.py_buffer(bitmap), pa.py_buffer(data)], null_count=nulls
    )


def slot_sums(slots: pa.Array, n_slots: int, values: pa.ChunkedArray | pa.Array,
              how: str = "sums") -> pa.Array:  # fmt: skip
    """Sum (or max, `how="max"`) of `values` per slot (null where a slot got no valid
    value), with the kernel; `how="count"`: how many valid values each slot got (int64)."""
    v, ints = _numbers(values)
    valid = None
    if v.null_count:
        valid = _data(_flat(pc.is_valid(v), pa.uint8()))  # (nulls unread, as in rates)
    sums, counts = _rates.slot_sums(_data(slots), n_slots, _data(v), valid, how == "max",
                                    ints=ints)  # fmt: skip
    if how == "count":
        return pa.Array.from_buffers(pa.int64(), n_slots, [None, pa.py_buffer(counts)])
    total = pa.Array.from_buffers(pa.float64(), n_slots, [None, pa.py_buffer(sums)])
    count = pa.Array.from_buffers(pa.int64(), n_slots, [None, pa.py_buffer(counts)])
    return pc.if_else(pc.greater(count, _I0), total, pa.scalar(None, pa.float64()))


def _slots(t: pa.Array) -> tuple[pa.Array, pa.Array]:
    """The distinct instants of `t` in order, and each row's position among them."""
    if t.null_count:
        spine = pc.unique(t)
        spine = spine.take(pc.sort_indices(spine))
        return spine, _flat(pc.fill_null(pc.index_in(t, value_set=spine), _IM1), pa.int32())
    # one pass of the kernel's hash table (rows are stored by process, then time)
    spine, slots = _rates.instants(_data(_flat(t, pa.int64())))
    return (pa.Array.from_buffers(pa.int64(), len(spine) // 8, [None, pa.py_buffer(spine)]),
            pa.Array.from_buffers(pa.int32(), len(t), [None, pa.py_buffer(slots)]))  # fmt: skip


def _stack_sums(t: pa.Array, stack: pa.DictionaryArray, pid: pa.Array, samples: pa.Array
                ) -> tuple[pa.Table | None, pa.Table | None]:  # fmt: skip
    """Samples summed per instant and stack, and per process and stack (the kernel, in one
    pass each); either None where the kernel leaves it to hashing."""
    valid = None
    if samples.null_count or stack.null_count:
        valid = _data(_flat(pc.and_(pc.is_valid(samples), pc.is_valid(stack)), pa.uint8()))
    idx = _flat(pc.fill_null(stack.indices, 0), pa.int32())
    per_t, per_pid = _rates.stack_sums(
        _data(t), _data(idx), _data(_flat(pc.fill_null(pid, -1), pa.int64())),
        _data(_flat(pc.fill_null(samples, _I0), pa.int64())), valid,
        n_stacks=len(stack.dictionary), max_cells=MAX_CELLS,
    )  # fmt: skip
    names = stack.dictionary.cast(pa.string())

    def table(key: str, bufs: tuple[bytearray, bytearray, bytearray] | None) -> pa.Table | None:
        if bufs is None:
            return None
        m = len(bufs[2]) // 8
        return pa.table({
            key: pa.Array.from_buffers(pa.int64(), m, [None, pa.py_buffer(bufs[0])]),
            "stack": names.take(pa.Array.from_buffers(pa.int32(), m,
                                                      [None, pa.py_buffer(bufs[1])])),
            "samples": pa.Array.from_buffers(pa.int64(), m, [None, pa.py_buffer(bufs[2])]),
        })  # fmt: skip

    return table("t", per_t), table("pid", per_pid)


def _hashed(tab: pa.Table, key: str) -> pa.Table:
    """What _stack_sums makes, by hashing: samples per key and stack, the pairs above 0."""
    g = tab.group_by([key, "stack"], use_threads=False).aggregate([("samples", "sum")])
    g = g.filter(pc.fill_null(pc.greater(g["samples_sum"], _I0), False))
    return pa.table({key: _flat(g[key], pa.int64()) if key == "pid" else g[key],
                     "stack": _flat(g["stack"], pa.string()),
                     "samples": _flat(g["samples_sum"], pa.int64())})  # fmt: skip


def _matches(col: pa.ChunkedArray, values: pa.Array) -> pa.ChunkedArray | None:
    """Where a column of names holds one of `values` (null where it holds none): on the
    dictionary where the column was read dictionary-encoded (a handful of names for
    hundreds of thousands of rows); None where the file has no such names at all."""
    out = []
    for chunk in col.chunks:
        if pa.types.is_dictionary(chunk.type):
            out.append(pc.is_in(chunk.dictionary, value_set=values).take(chunk.indices))
        elif pa.types.is_string(chunk.type) or pa.types.is_large_string(chunk.type):
            hit = pc.is_in(chunk, value_set=values)
            out.append(pc.if_else(pc.is_valid(chunk), hit, pa.scalar(None, pa.bool_())))
        else:
            return None
    return pa.chunked_array(out, pa.bool_())


def _keys(col: pa.ChunkedArray) -> pa.Array:
    """Integer series ids for a key column of any type (names become dictionary indices)."""
    arr = col.combine_chunks()
    if pa.types.is_integer(arr.type):
        return _flat(pc.fill_null(arr, -1), pa.int64())
    enc = pc.fill_null(arr.cast(pa.string()), "").dictionary_encode()
    return _flat(enc.indices, pa.int64())


def _sorted(tab: pa.Table, keys: list[str]) -> pa.Table:
    """Rows grouped by key and in time order.  A file's parts are each sorted so; a node
    made of several parts or files is sorted again (cheap: Arrow sorts in parallel)."""
    return tab.sort_by([(k, "ascending") for k in keys] + [("t", "ascending")])


def _bounds(keys: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Indices of the first and last row of each run of equal keys (rows grouped by key)."""
    n = len(keys)
    if n == 0:
        return pa.array([], pa.int64()), pa.array([], pa.int64())
    change = pc.not_equal(keys.slice(1), keys.slice(0, n - 1))
    after = pc.add(pc.indices_nonzero(change), pa.scalar(1, pa.uint64()))
    first = pa.concat_arrays([pa.array([0], pa.uint64()), after.cast(pa.uint64())])
    last = pa.concat_arrays(
        [pc.subtract(after, pa.scalar(1, pa.uint64())), pa.array([n - 1], pa.uint64())]
    )
    return first, last


def _t_ms(tab: pa.Table) -> pa.Array:
    return _flat(tab.column("t"), pa.timestamp("ms", tz="UTC")).cast(pa.int64())


# -- one node ---------------------------------------------------------------------------------


@dataclass
class NodeData:
    """What one node contributes to a job analysis (every table keyed by time in epoch ms)."""

    label: str
    host: str
    files: list[str]
    meta: dict[str, Any]
    series: dict[str, pa.Table] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    wraps: int = 0
    resets: int = 0


def node_facts(meta: dict[str, Any]) -> dict[str, Any]:
    host = meta.get("host") or {}
    return {
        "host": str(host.get("hostname") or "?"),
        "interval": float(meta.get("interval") or 1.0),
        "hz": float(host.get("clock_ticks") or 100),
        "threads": int(host.get("threads") or 0) or None,
        "allowed": int(meta.get("allowed_cpus") or host.get("threads") or 1),
        "memory": host.get("memory_bytes"),
    }


# the steps before its first row over which a job's first CPU is spread (the agent sees a
# Slurm job's first process a sample or two after its start)
_HEAD_STEPS = 4
# the most steps in a row a node's steps may lack and still be one interval of its agent's
# (ticks it skipped when it fell behind), not a time nothing recorded
_FILL_STEPS = 4


def reduce_node(label: str, paths: list[Path], cores: bool = True) -> NodeData:
    """Read the files of one node (one run, or the agent's consecutive segments) and reduce.
    `cores`: also the busy share of each CPU (only the report of one node shows it)."""
    return reduce_sources(label, [Source(p) for p in paths], cores)


def reduce_sources(label: str, sources: list[Any], cores: bool = True) -> NodeData:
    """Reduce one node's recordings: .para files (Source) or anything that reads the same
    way (the feature database's rows of a job, jobs.DBSource)."""
    try:
        meta = dict(sources[0].meta)
        for s in sources[1:]:  # end facts of the last segment win; the first start stays
            meta.update({k: v for k, v in s.meta.items() if k not in ("start",)})
        facts = node_facts(meta)
        nd = NodeData(label, facts["host"], [str(s.path) for s in sources], meta)
        r = _Reducer(nd, sources, facts)
        r.want_cores = cores
        r.run()
        return nd
    finally:
        for s in sources:
            s.close()


class _Reducer:
    def __init__(self, nd: NodeData, sources: list[Any], facts: dict[str, Any]):
        self.nd = nd
        self.sources = sources
        self.f = facts
        self.min_dt = MIN_WINDOW * facts["interval"]

    def read(self, table: str, columns: list[str], keys: list[str],
             dictionary: tuple[str, ...] = ()) -> pa.Table | None:  # fmt: skip
        parts = [t for s in self.sources
                 if (t := s.read(table, ["t", *keys, *columns], dictionary))]  # fmt: skip
        parts = [p for p in parts if len(p)]
        if not parts:
            return None
        tab = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        n_parts = sum(len(s._parts.get(table, [])) or 1 for s in self.sources)
        if n_parts > 1 and table != "stacks":
            tab = _sorted(tab, keys)
        return tab

    def rate(self, tab: pa.Table, col: str, keys: pa.Array | None, t: pa.Array,
             scale: float = 1.0, moduli: pa.Array | None = None) -> pa.Array:  # fmt: skip
        arr, w, r = rates(keys, t, tab.column(col), min_dt_s=self.min_dt, scale=scale,
                          moduli=moduli)  # fmt: skip
        self.nd.wraps += w
        self.nd.resets += r
        return arr

    def run(self) -> None:
        for step in (self.node, self.cores, self.memory, self.procs, self.disk, self.net,
                     self.ib, self.gpu, self.counters, self.stacks, self.events,
                     self.fsmeta, self.energy, self.instructions, self.steps):  # fmt: skip
            step()

    # node-wide CPU by kind, in cores (ticks per second / USER_HZ)
    def node(self) -> None:
        cols = [f"cpu_{k}" for k in CPU_KINDS]
        tab = self.read("node", cols + ["procs_blocked", "load1"], [])
        if tab is None:
            return
        t = _t_ms(tab)
        out: dict[str, pa.Array] = {"t": t}
        for k in CPU_KINDS:
            out[k] = self.rate(tab, f"cpu_{k}", None, t, 1.0 / self.f["hz"])
        out["procs_blocked"] = _flat(tab.column("procs_blocked"), pa.float64())
        s = pa.table(out)
        busy = pc.add(pc.add(pc.add(s["user"], s["nice"]), pc.add(s["system"], s["irq"])),
                      pc.add(s["softirq"], s["steal"]))  # fmt: skip
        total = pc.add(pc.add(busy, s["idle"]), s["iowait"])
        s = s.append_column("busy", busy).append_column("total", total)
        self.nd.series["cpu"] = s.filter(pc.is_valid(s["total"]))

    # per core: busy and total CPU time over the run (one busy core among many shows here)
    want_cores = True

    def cores(self) -> None:
        if not self.want_cores:
            return
        # idle and iowait only: a core's busy time is its time span less them (reading the
        # six other kinds of 64 cores for an hour costs more than everything else of a node)
        tab = self.read("cpu", ["idle", "iowait"], ["cpu"])
        if tab is None:
            return
        cpu = _flat(tab["cpu"], pa.int64())
        first, last = _bounds(cpu)
        hz = self.f["hz"]
        t = _t_ms(tab)
        span_s = pc.divide(
            pc.subtract(t.take(last), t.take(first)).cast(pa.float64()), pa.scalar(1000.0)
        )
        rest = pc.add(tab["idle"], tab["iowait"])
        idle_s = pc.divide(
            pc.subtract(rest.take(last), rest.take(first)).cast(pa.float64()), pa.scalar(hz)
        )
        self.nd.series["cores"] = pa.table({
            "cpu": cpu.take(first), "total_s": span_s,
            "busy_s": pc.max_element_wise(pc.subtract(span_s, idle_s), _F0),
        })  # fmt: skip

    def memory(self) -> None:
        cols = ["mem_total", "mem_available", "mem_cached", "mem_buffers", "swap_total",
                "swap_free", "pgmajfault", "pswpin", "pswpout"]  # fmt: skip
        tab = self.read("memory", cols, [])
        if tab is None:
            return
        t = _t_ms(tab)
        swap_io = pc.add(tab["pswpin"], tab["pswpout"])
        self.nd.series["mem"] = pa.table({
            "t": t,
            "used": _flat(pc.subtract(tab["mem_total"], tab["mem_available"]), pa.float64()),
            "total": _flat(tab["mem_total"], pa.float64()),
            "cache": _flat(pc.add(tab["mem_cached"], tab["mem_buffers"]), pa.float64()),
            "swap_used": _flat(pc.subtract(tab["swap_total"], tab["swap_free"]), pa.float64()),
            "majflt_ps": self.rate(tab, "pgmajfault", None, t),
            "swap_pps": rates(None, t, swap_io, min_dt_s=self.min_dt)[0],
        })  # fmt: skip

    # the job's processes: per-process rates, summed per second; per-process totals
    def procs(self) -> None:
        cols = ["ppid", "state", "utime", "stime", "rss_bytes", "threads", "read_bytes",
                "write_bytes", "cutime", "cstime", "rank"]  # fmt: skip
        # the state's few letters are decoded as a dictionary: as strings they cost as much
        # as all the numbers of the table
        tab = self.read("proc", cols, ["pid"], ("state",))
        if tab is None:
            return
        t = _t_ms(tab)
        pid = _flat(tab["pid"], pa.int64())
        hz = self.f["hz"]
        own = pc.add(tab["utime"], tab["stime"])
        cores, w, r = rates(pid, t, own, min_dt_s=self.min_dt, scale=1.0 / hz)
        self.nd.wraps += w
        self.nd.resets += r
        job_cores = self._with_children(tab, pid, t, own, cores)
        rb = self.rate(tab, "read_bytes", pid, t)
        wb = self.rate(tab, "write_bytes", pid, t)
        spine, slots = _slots(t)
        n = len(spine)
        dstate = _matches(tab["state"], _DSTATE)
        if dstate is None:  # no state column in the file
            dstate = pa.nulls(len(t), pa.bool_())
        step_ms = 1000.0 * self.f["interval"]
        self.nd.series["job"] = pa.table({
            "t": spine, "cores": rates_on_steps(spine, slot_sums(slots, n, job_cores), step_ms),
            "rss": slot_sums(slots, n, tab["rss_bytes"]), "read_bps": slot_sums(slots, n, rb),
            "write_bps": slot_sums(slots, n, wb),
            "dstate": slot_sums(slots, n, _flat(dstate, pa.float64())),
            "procs": slot_sums(slots, n, t, "count"),
        })  # fmt: skip
        # per process: first and last sample, CPU time as last sampled, peaks
        first, last = _bounds(pid)
        # rows are grouped by pid: the i-th run of equal pids is slot i
        run = pc.cumulative_sum(_flat(pc.not_equal(pid, pa.concat_arrays(
            [pid.slice(0, 1), pid.slice(0, len(pid) - 1)])), pa.int32()))  # fmt: skip
        slot = _flat(run, pa.int32())
        n_pids = len(first)
        busy = _flat(pc.greater(pc.fill_null(cores, _F0), pa.scalar(0.05)), pa.float64())
        peaks = {
            "rss_max": slot_sums(slot, n_pids, tab["rss_bytes"], "max"),
            "threads_max": slot_sums(slot, n_pids, tab["threads"], "max"),
            "cores_max": slot_sums(slot, n_pids, cores, "max"),
            "busy_sum": pc.fill_null(slot_sums(slot, n_pids, busy), _F0).cast(pa.int64()),
        }

        def at(arr: pa.Array, idx: pa.Array) -> pa.Array:  # (a few rows cast, not all)
            return _flat(arr.take(idx), pa.float64())

        cpu_s = pc.divide(
            pc.add(
                pc.fill_null(at(tab["utime"], last), _F0), pc.fill_null(at(tab["stime"], last), _F0)
            ),
            pa.scalar(hz),
        )
        # what each process had used when first seen (no rate says it: see _command_tail)
        self._first_cpu_s = pc.divide(pc.fill_null(at(own, first), _F0), pa.scalar(hz))
        self.nd.series["procs"] = pa.table({
            "pid": pid.take(first), "first_ms": t.take(first), "last_ms": t.take(last),
            "ppid": _flat(tab["ppid"].take(first), pa.int64()), "cpu_s": cpu_s,
            "peak_rss": peaks["rss_max"], "peak_threads": peaks["threads_max"],
            "read_bytes": at(tab["read_bytes"], last), "write_bytes": at(tab["write_bytes"], last),
            "busy_samples": peaks["busy_sum"], "peak_cores": peaks["cores_max"],
            "samples": pc.add(pc.subtract(last, first), pa.scalar(1, pa.uint64())).cast(pa.int64()),
            "rank": _flat(tab["rank"].take(last), pa.int64()),
        })  # fmt: skip
        self._job_account()
        self._command_tail()

    def _command_tail(self) -> None:
        """`para profile` of one command: the kernel's count of its CPU (its rusage at exit,
        the children it waited for included) less what the samples showed is what it used
        after the last sample that saw it running (and in children never sampled nor
        waited for in a sample): that is the CPU of the step after that sample, the step of
        the command's end.  Without it a command lost up to an interval of its CPU (0.60 s
        of a 2.29 s one at 1 s)."""
        if len(self.sources) != 1 or "job" not in self.nd.series:
            return
        meta = self.sources[0].meta
        ex = meta.get("exit") or {}
        nums = [ex.get("cpu_user_s"), ex.get("cpu_system_s"), meta.get("start"),
                meta.get("elapsed_s")]  # fmt: skip
        if meta.get("ranks_on_node", 1) != 1 or not all(isinstance(x, (int, float)) for x in nums):
            return  # under a launcher the rusage is one rank's of several
        user, system, start, elapsed = (float(x) for x in nums)
        job = self.nd.series["job"]
        t = _flat(job["t"], pa.int64())
        cores = _flat(job["cores"], pa.float64())
        if len(t) < 2:
            return
        step_ms = 1000.0 * self.f["interval"]
        # the rates are of the steps the looks stand for (rates_on_steps)
        k = pc.round(pc.divide(pc.subtract(t, t[0]).cast(pa.float64()), step_ms))
        span = pc.multiply(pc.subtract(k.slice(1), k.slice(0, len(k) - 1)), step_ms / 1000)
        counted = pc.sum(pc.multiply(pc.fill_null(cores.slice(1), _F0), span)).as_py() or 0.0
        # the command's own processes (their parent is not of the recording: the command and
        # whatever it left behind) ran before para's first look at them, by as much as their
        # first look shows (0.18 s of a real-time burner beside two CPU hogs): that is CPU of
        # the start, not of the command's end (where it made a stalled program look busy
        # again).  It joins the first step the looks measure: a step of its own, part of a
        # step before the start, made a phase of its own of every profile.  Children are
        # credited when their parent reaps them (_with_children).
        procs = self.nd.series["procs"]
        own = set(procs["pid"].to_pylist())
        head = [(ms, c) for ms, c, ppid in zip(procs["first_ms"].to_pylist(),
                                               self._first_cpu_s.to_pylist(),
                                               procs["ppid"].to_pylist(), strict=True)
                if c > 0 and ppid not in own]  # fmt: skip
        if head:
            at_ms = {x: i for i, x in enumerate(t.to_pylist())}
            rates = cores.to_pylist()
            for ms, c in head:
                i = min(at_ms[ms] + 1, len(rates) - 1)
                rates[i] = (rates[i] or 0.0) + c / (step_ms / 1000)
            cores = pa.array(rates, pa.float64())
            self.nd.series["job"] = job = job.set_column(
                job.column_names.index("cores"), "cores", cores
            )
        tail = user + system - counted - sum(c for _, c in head)
        t_last = t[len(t) - 1].as_py()
        end_ms = (start + elapsed) * 1000
        if tail <= 0.01 or end_ms <= t_last:
            return
        # the node's sample in the step after (the final sample, taken at the end), else one
        # step on: never an instant of the last step, whose CPU it would be averaged with
        at = t_last + step_ms
        if "cpu" in self.nd.series:
            after = [x for x in self.nd.series["cpu"]["t"].to_pylist()
                     if t_last + 0.5 * step_ms <= x <= t_last + 1.5 * step_ms]  # fmt: skip
            at = after[0] if after else at
        cols = {name: pa.concat_arrays([job[name].combine_chunks(),
                                        pa.nulls(1, job.schema.field(name).type)])
                for name in job.column_names}  # fmt: skip
        cols["t"] = pa.concat_arrays([t, pa.array([int(at)], pa.int64())])
        cols["cores"] = pa.concat_arrays([cores, pa.array([tail / (step_ms / 1000)])])
        self.nd.series["job"] = _no_io_where_unseen(pa.table(cols), job)

    def _job_account(self) -> None:
        """One job's rows of an agent (its segments or the database, read for one job): the
        job's CPU each second is the rate of the agent's account of it (the `job` rows: every
        process once, the children too short to be sampled, those that ended, and the final
        CPU its scheduler's process reaped after the last look at its processes), not the
        sum of its processes' rates, which knows nothing of a process before its first row
        or after its last.  Its first row holds what the job used since it started, spread
        evenly over the steps from the start when the job started shortly before (the agent
        may see its first process a sample or two late)."""
        starts = [getattr(s, "job_start_ms", False) for s in self.sources]
        if False in starts or "job" not in self.nd.series:
            return
        tab = self.read("job", ["utime", "stime"], [])
        if tab is None or tab.column("utime").null_count == len(tab):
            return  # an agent that follows no process's CPU (jobs mode "none")
        t = _t_ms(tab)
        cum = pc.add(tab["utime"], tab["stime"])
        acct, w, r = rates(None, t, cum, min_dt_s=self.min_dt, scale=1.0 / self.f["hz"])
        self.nd.wraps += w
        self.nd.resets += r
        step_ms = 1000.0 * self.f["interval"]
        acct = rates_on_steps(t, acct, step_ms)
        start = min((s for s in starts if s is not None), default=None)
        t0 = t[0].as_py()
        if start is not None and t0 - _HEAD_STEPS * step_ms < start < t0 and cum[0].is_valid:
            rate = cum[0].as_py() / self.f["hz"] / ((t0 - start) / 1000)
            # each step's share of the time since the start: the first row's own step is
            # a part too when the job started within it (seen at once, on a quiet node)
            head_t, head = [t0], [rate * min(1.0, (t0 - start) / step_ms)]
            while head_t[0] - step_ms > start:  # the steps before, the earliest a part
                head_t.insert(0, round(head_t[0] - step_ms))
                head.insert(0, rate * min(1.0, (head_t[0] - start) / step_ms))
            t = pa.concat_arrays([pa.array(head_t[:-1], pa.int64()), t])
            acct = pa.concat_arrays([pa.array(head, pa.float64()), acct.slice(1)])
        job = self.nd.series["job"]
        spine = pc.unique(pa.concat_arrays([_flat(job["t"], pa.int64()), t]))
        spine = spine.take(pc.sort_indices(spine))
        at_job = pc.index_in(spine, value_set=_flat(job["t"], pa.int64()))
        at_acct = pc.index_in(spine, value_set=t)
        cols = {"t": spine}
        for name in job.column_names[1:]:
            cols[name] = job[name].combine_chunks().take(at_job)
        # where the account has no rate (a counter reset) the processes' rates stand
        cols["cores"] = pc.coalesce(acct.take(at_acct), cols["cores"])
        self.nd.series["job"] = _no_io_where_unseen(pa.table(cols), job)

    def _with_children(self, tab: pa.Table, pid: pa.Array, t: pa.Array,
                       own: pa.ChunkedArray, cores: pa.Array) -> pa.Array:  # fmt: skip
        """Each row's cores plus the CPU of the children its process waited for since the last
        sample (cutime, cstime), less what was already seen of those children in their own
        rows: processes shorter than an interval (a script's commands, make's compilers) are
        never sampled, and this is the only place their CPU shows."""
        if tab.column("cutime").null_count == len(tab):
            return cores  # a file from before the columns existed
        hz = self.f["hz"]
        kids = pc.fill_null(pc.add(tab["cutime"], tab["cstime"]), _F0)
        if not pc.max(kids).as_py():
            return cores  # no process waited for a child (MPI ranks, most often)
        kc, _, _ = rates(pid, t, kids, min_dt_s=self.min_dt, scale=1.0 / hz)
        # a child seen in its own rows that ended before the recording did: what its rows
        # counted, (own + children) at its last row less at its first, comes again in its
        # parent's children time when the parent waits for it; take it off there
        first, last = _bounds(pid)
        t_last = t.take(last)
        gone = pc.indices_nonzero(pc.less(t_last, pc.max(t)))
        if len(gone) and len(kc):
            total = pc.add(pc.fill_null(_flat(own, pa.float64()), _F0), _flat(kids, pa.float64()))
            seen = pc.subtract(total.take(last.take(gone)), total.take(first.take(gone)))
            parents = _flat(tab["ppid"], pa.int64()).take(last.take(gone))
            rows_of = dict(zip(pid.take(first).to_pylist(),
                               zip(first.to_pylist(), last.to_pylist())))  # fmt: skip
            pending: dict[int, list[tuple[int, float]]] = {}
            for parent, at, ticks in zip(parents.to_pylist(), t_last.take(gone).to_pylist(),
                                         seen.to_pylist()):  # fmt: skip
                if parent in rows_of and ticks and ticks > 0:
                    pending.setdefault(parent, []).append((at, ticks / hz))
            fixed: dict[int, float] = {}
            for parent, items in pending.items():
                items.sort()
                lo, hi = rows_of[parent]
                ts = t.slice(lo, hi - lo + 1).to_pylist()
                rate = kc.slice(lo, hi - lo + 1).to_pylist()
                owed, k = 0.0, 0
                for i in range(1, len(ts)):
                    while k < len(items) and items[k][0] < ts[i]:
                        owed += items[k][1]
                        k += 1
                    if owed <= 0 or not rate[i]:
                        continue
                    dt = (ts[i] - ts[i - 1]) / 1000
                    took = min(owed, rate[i] * dt)
                    owed -= took
                    fixed[lo + i] = rate[i] - took / dt
            if fixed:
                values = kc.to_pylist()
                for i, v in fixed.items():
                    values[i] = v
                kc = pa.array(values, pa.float64())
        add = pc.and_(pc.is_valid(kc), pc.greater(kc, _F0))
        return pc.if_else(add, pc.add(pc.fill_null(cores, _F0), kc), cores)

    def disk(self) -> None:
        cols = ["reads", "writes", "read_bytes", "write_bytes", "read_ms", "write_ms", "io_ms"]
        tab = self.read("disk", cols, ["device"])
        if tab is None:
            return
        whole = ((self.nd.meta.get("family_facts") or {}).get("disk") or {}).get("whole_disks")
        if whole:
            tab = tab.filter(pc.is_in(tab["device"], pa.array([str(d) for d in whole])))
        if not len(tab):
            return
        t = _t_ms(tab)
        k = _keys(tab["device"])
        ops = pc.add(tab["reads"], tab["writes"])
        wait = pc.add(tab["read_ms"], tab["write_ms"])
        per = pa.table({
            "t": t, "read_bps": self.rate(tab, "read_bytes", k, t),
            "write_bps": self.rate(tab, "write_bytes", k, t),
            "iops": rates(k, t, ops, min_dt_s=self.min_dt)[0],
            "util": pc.min_element_wise(self.rate(tab, "io_ms", k, t, 0.1), pa.scalar(100.0)),
            "wait_ms_ps": rates(k, t, wait, min_dt_s=self.min_dt)[0],
        })  # fmt: skip
        g = per.group_by("t", use_threads=False).aggregate(
            [
                ("read_bps", "sum"),
                ("write_bps", "sum"),
                ("iops", "sum"),
                ("util", "max"),
                ("wait_ms_ps", "sum"),
            ]  # fmt: skip
        )
        # by name: where the group key lands among the columns differs between pyarrow versions
        names = {"read_bps_sum": "read_bps", "write_bps_sum": "write_bps", "iops_sum": "iops",
                 "util_max": "util_max", "wait_ms_ps_sum": "wait_ms_ps", "t": "t"}  # fmt: skip
        g = g.rename_columns([names[c] for c in g.column_names])
        self.nd.series["disk"] = g.sort_by("t")

    def net(self) -> None:
        tab = self.read("net", ["rx_bytes", "tx_bytes", "rx_packets", "tx_packets"], ["iface"])
        if tab is None:
            return
        tab = tab.filter(pc.not_equal(tab["iface"], "lo"))
        if not len(tab):
            return
        t = _t_ms(tab)
        k = _keys(tab["iface"])
        per = pa.table({
            "t": t, "rx_bps": self.rate(tab, "rx_bytes", k, t),
            "tx_bps": self.rate(tab, "tx_bytes", k, t),
            "pps": rates(k, t, pc.add(tab["rx_packets"], tab["tx_packets"]),
                         min_dt_s=self.min_dt)[0],
        })  # fmt: skip
        self.nd.series["net"] = _grouped(per, ["rx_bps", "tx_bps", "pps"])

    def ib(self) -> None:
        tab = self.read("ib", ["rcv_bytes", "xmit_bytes", "xmit_wait", "rate_gbps"], ["port"])
        if tab is None:
            return
        t = _t_ms(tab)
        k = _keys(tab["port"])
        per = pa.table({
            "t": t, "rx_bps": self.rate(tab, "rcv_bytes", k, t),
            "tx_bps": self.rate(tab, "xmit_bytes", k, t),
            "wait_ps": self.rate(tab, "xmit_wait", k, t),
            "link_bps": pc.multiply(_flat(tab["rate_gbps"], pa.float64()), pa.scalar(1e9 / 8)),
        })  # fmt: skip
        self.nd.series["ib"] = _grouped(per, ["rx_bps", "tx_bps", "wait_ps", "link_bps"])

    def gpu(self) -> None:
        cols = ["util_gpu", "util_mem", "mem_used", "mem_total", "power_mw"]
        tab = self.read("gpu", cols, ["gpu"])
        if tab is None:
            return
        self.nd.series["gpu"] = pa.table({
            "t": _t_ms(tab), "gpu": _flat(tab["gpu"], pa.string()),
            "util": _flat(tab["util_gpu"], pa.float64()),
            "mem_util": _flat(tab["util_mem"], pa.float64()),
            "mem_used": _flat(tab["mem_used"], pa.float64()),
            "mem_total": _flat(tab["mem_total"], pa.float64()),
            "power_w": pc.divide(_flat(tab["power_mw"], pa.float64()), pa.scalar(1000.0)),
        })  # fmt: skip

    # perf stat -I: a count per interval; its rate is the count over the interval's length
    def counters(self) -> None:
        tab = self.read("counters", ["value", "running_pct"], ["event"])
        if tab is None:
            return
        t = _t_ms(tab)
        k = _keys(tab["event"])
        # the interval's length: time since the event's previous row (none for its first)
        n = len(t)
        prev_t = pa.concat_arrays([pa.nulls(1, pa.int64()), t.slice(0, n - 1)])
        prev_k = pa.concat_arrays([pa.nulls(1, pa.int64()), k.slice(0, n - 1)])
        dt = pc.divide(pc.if_else(pc.equal(k, prev_k), pc.subtract(t, prev_t),
                                  pa.scalar(None, pa.int64())).cast(pa.float64()),
                       pa.scalar(1000.0))  # fmt: skip
        dt = pc.if_else(pc.greater(dt, _F0), dt, pa.scalar(None, pa.float64()))
        value = _flat(tab["value"], pa.float64())
        timed = pc.is_valid(dt)
        g = pa.table({
            "event": _flat(tab["event"], pa.string()), "value": value,
            "counted": pc.if_else(timed, value, pa.scalar(None, pa.float64())),
            "seconds": dt, "running_pct": _flat(tab["running_pct"], pa.float64()),
        }).group_by("event", use_threads=False).aggregate([
            ("value", "sum"), ("counted", "sum"), ("seconds", "sum"), ("running_pct", "mean"),
        ])  # fmt: skip
        # per event over the run: the count, and the count and seconds of the timed intervals;
        # and the unit perf printed it in (MiB for the scaled uncore events), kept by the
        # sampler in the file's metadata
        units = ((self.nd.meta.get("family_facts") or {}).get("counters") or {}).get("units")
        unit = pa.array([(units or {}).get(e) or None for e in g["event"].to_pylist()],
                        pa.string())  # fmt: skip
        self.nd.series["ctr"] = pa.table({
            "event": g["event"], "total": g["value_sum"], "counted": g["counted_sum"],
            "seconds": g["seconds_sum"], "running_pct": g["running_pct_mean"], "unit": unit,
        })  # fmt: skip

    def stacks(self) -> None:
        """The call stacks, read once for each series made of them: per second (hotspots,
        per-phase hotspots, the flame graph), per process over the run (each rank's time in
        MPI), and the Python threads' (py-spy's, CPU and waiting)."""
        # the names (frames, who named them, thread states) repeat: read as dictionaries
        tab = self.read("stacks", ["pid", "stack", "samples", "source", "state"], [],
                        ("stack", "source", "state"))  # fmt: skip
        if tab is None:
            return
        pyspy = _matches(tab["source"], _PYSPY)
        if pyspy is not None and pc.any(pyspy).as_py():
            # Python stacks are per thread: their tid is read only for them
            tid = self.read("stacks", ["tid"], [], ())
            assert tid is not None and len(tid) == len(tab)
            self.pystacks(tab.append_column("tid", tid["tid"]), pyspy)
        waiting = _matches(tab["state"], _WAITING)
        if waiting is not None and pc.any(waiting).as_py():
            # Python threads seen off-CPU (issue 12): where the time went waiting, apart
            # from the CPU samples that make the hotspots
            wait = pc.fill_null(waiting, False)
            waits = tab.filter(wait)
            self.nd.series["waits"] = pa.table({
                "t": _t_ms(waits), "stack": _flat(waits["stack"], pa.string()),
                "state": _flat(waits["state"], pa.string()),
                "samples": _flat(waits["samples"], pa.int64()),
            })  # fmt: skip
            tab = tab.filter(pc.invert(wait))
        if not len(tab):  # every Python thread waiting: no hotspot, no process's share
            self.nd.series["pstacks"] = pa.table({"pid": pa.array([], pa.int64()),
                                                  "stack": pa.array([], pa.string()),
                                                  "samples": pa.array([], pa.int64())})  # fmt: skip
            return
        stack = tab["stack"].combine_chunks()
        if not pa.types.is_dictionary(stack.type):
            stack = stack.dictionary_encode()
        per_t, per_pid = _stack_sums(_t_ms(tab), stack, tab["pid"].combine_chunks(),
                                     tab["samples"].combine_chunks())  # fmt: skip
        # too many instants or processes x stacks for an array: hash the pairs instead
        if per_t is None:
            per_t = _hashed(tab, "t")
            per_t = per_t.set_column(0, "t", _t_ms(per_t))
        if per_pid is None:
            per_pid = _hashed(tab, "pid")
        self.nd.series["stacks"] = per_t
        self.nd.series["pstacks"] = per_pid

    def pystacks(self, tab: pa.Table, pyspy: pa.ChunkedArray) -> None:
        """The Python threads' stacks (py-spy's, CPU and waiting) over the run, per thread:
        what the Python rules read (pyfacts.py)."""
        py = tab.filter(pc.fill_null(pyspy, False))
        if not len(py):
            return
        py = pa.table({
            "pid": _flat(py["pid"], pa.int64()), "tid": _flat(py["tid"], pa.int64()),
            "stack": _flat(py["stack"], pa.string()), "state": _flat(py["state"], pa.string()),
            "samples": _flat(py["samples"], pa.int64()),
        })  # fmt: skip
        g = py.group_by(["pid", "tid", "stack", "state"], use_threads=False).aggregate(
            [("samples", "sum")]
        )
        self.nd.series["pystacks"] = pa.table({
            "pid": g["pid"], "tid": g["tid"], "stack": g["stack"], "state": g["state"],
            "samples": g["samples_sum"],
        })  # fmt: skip

    def events(self) -> None:
        tab = self.read("events", ["kind", "pid", "name", "detail"], [])
        if tab is None:
            return
        self.nd.series["events"] = pa.table({
            "t": _t_ms(tab), "kind": _flat(tab["kind"], pa.string()),
            "pid": _flat(tab["pid"], pa.int64()), "name": _flat(tab["name"], pa.string()),
            "detail": _flat(tab["detail"], pa.string()),
        })  # fmt: skip

    # metadata operations per second on Lustre and NFS clients
    def fsmeta(self) -> None:
        parts = []
        for table, key, ops in (("lustre", "fs", LUSTRE_META), ("nfs", "mount", NFS_META)):
            tab = self.read(table, list(ops), [key])
            if tab is None:
                continue
            t = _t_ms(tab)
            k = _keys(tab[key])
            total = None
            for op in ops:
                r = pc.fill_null(self.rate(tab, op, k, t), _F0)
                total = r if total is None else pc.add(total, r)
            parts.append(pa.table({"t": t, "ops_ps": total}))
        if parts:
            self.nd.series["fsmeta"] = _grouped(pa.concat_tables(parts), ["ops_ps"])

    def energy(self) -> None:
        tab = self.read("energy", ["energy_uj", "max_range_uj"], ["zone"])
        if tab is None:
            return
        # packages only: their core and dram subzones are inside them
        tab = tab.filter(pc.match_substring_regex(tab["zone"], r"^package-\d+$"))
        if not len(tab):
            return
        t = _t_ms(tab)
        k = _keys(tab["zone"])
        w = self.rate(tab, "energy_uj", k, t, 1e-6, moduli=_flat(tab["max_range_uj"],
                                                                  pa.float64()))  # fmt: skip
        self.nd.series["power"] = _grouped(pa.table({"t": t, "rapl_w": w}), ["rapl_w"])

    # per-instruction samples (optional table written by `para profile --functions`)
    def instructions(self) -> None:
        tab = self.read("instr_samples", ["pid", "dso", "symbol", "offset", "samples",
                                          "build_id"], [])  # fmt: skip
        if tab is None:
            return
        g = tab.group_by(["dso", "symbol", "offset"], use_threads=False).aggregate(
            [("samples", "sum"), ("build_id", "max")]
        )
        self.nd.series["instr"] = pa.table({
            "dso": _flat(g["dso"], pa.string()), "symbol": _flat(g["symbol"], pa.string()),
            "offset": _flat(g["offset"], pa.int64()), "samples": _flat(g["samples_sum"],
                                                                        pa.int64()),
            # the binary's GNU build id where the agent recorded it (issue 13)
            "build_id": _flat(g["build_id_max"], pa.string()),
        })  # fmt: skip

    # The node's sampling instants side by side: one row per instant, the series of every
    # family as columns (sql/job.sql puts the rows of all nodes on the job's time grid).
    def steps(self) -> None:
        ser = self.nd.series
        spines = [ser[k]["t"] for k in ("cpu", "job", "mem", "gpu") if k in ser]
        if not spines:
            return
        spine = pc.unique(pa.chunked_array([x.combine_chunks() if isinstance(x, pa.ChunkedArray)
                                            else x for x in spines]))  # fmt: skip
        spine = spine.take(pc.sort_indices(spine))
        step_ms = 1000.0 * self.f["interval"]
        first = spine[0].as_py()
        cols: dict[str, Any] = {
            "t": spine,
            "k": pc.round(
                pc.divide(
                    pc.subtract(spine, pa.scalar(first, pa.int64())).cast(pa.float64()),
                    pa.scalar(step_ms),
                )
            ).cast(pa.int64()),
        }

        def put(table: str, pairs: list[tuple[str, Any]]) -> None:
            tab = ser.get(table)
            if tab is None:
                return
            where = pc.index_in(spine, value_set=tab["t"].combine_chunks()
                                if isinstance(tab["t"], pa.ChunkedArray) else tab["t"])  # fmt: skip
            for name, expr in pairs:
                arr = expr(tab) if callable(expr) else tab[expr]
                arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
                cols[name] = arr.take(where)

        put("cpu", [("busy", "busy"), ("usr", lambda x: pc.add(x["user"], x["nice"])),
                    ("sys", lambda x: pc.add(pc.add(x["system"], x["irq"]), x["softirq"])),
                    ("iowait", "iowait"), ("steal", "steal"), ("ncpu", "total"),
                    ("blocked", "procs_blocked")])  # fmt: skip
        put(
            "job",
            [
                ("job_cores", "cores"),
                ("rss", "rss"),
                ("job_read_bps", "read_bps"),
                ("job_write_bps", "write_bps"),
                ("procs", "procs"),
                ("dstate", "dstate"),
            ],
        )
        put("mem", [("mem_used", "used"), ("mem_total", "total"), ("swap_used", "swap_used"),
                    ("majflt_ps", "majflt_ps"), ("swap_pps", "swap_pps")])  # fmt: skip
        put("disk", [("disk_read_bps", "read_bps"), ("disk_write_bps", "write_bps"),
                     ("disk_util", "util_max")])  # fmt: skip
        put("net", [("net_bps", lambda x: pc.add(x["rx_bps"], x["tx_bps"]))])
        put("ib", [("ib_bps", lambda x: pc.add(x["rx_bps"], x["tx_bps"])),
                   ("ib_link_bps", "link_bps"), ("ib_wait_ps", "wait_ps")])  # fmt: skip
        if "gpu" in ser:
            g = (
                ser["gpu"]
                .group_by("t", use_threads=False)
                .aggregate(
                    [("util", "mean"), ("mem_used", "sum"), ("mem_total", "sum"), ("gpu", "count")]
                )
            )
            ser["gpu_t"] = g
            put("gpu_t", [("gpu_util", "util_mean"), ("gpu_mem", "mem_used_sum"),
                          ("gpu_mem_total", "mem_total_sum"), ("gpus", "gpu_count")])  # fmt: skip
            del ser["gpu_t"]
        put("fsmeta", [("meta_ops", "ops_ps")])
        ser["steps"] = _skipped_steps_filled(pa.table(cols))


def _skipped_steps_filled(steps: pa.Table) -> pa.Table:
    """The node's steps with a row for each step of a tick the agent skipped (loop.py skips
    the ticks it fell behind on, never bursts): the look after the gap measured the rates
    of its whole interval, so each step it spans holds that look's values (a step with no
    row lost its part of the interval's CPU: half of it for one skipped tick).  Longer gaps
    (an agent stopped, a node down) stay gaps: nothing was recording."""
    k = steps["k"].combine_chunks()
    if len(k) < 2:
        return steps
    gaps = pc.subtract(k.slice(1), k.slice(0, len(k) - 1))
    if pc.max(gaps).as_py() <= 1:
        return steps
    ks, ts = k.to_pylist(), steps["t"].combine_chunks().to_pylist()
    src, k_out, t_out = [0], [ks[0]], [ts[0]]
    for i in range(1, len(ks)):
        missing = ks[i] - ks[i - 1] - 1
        if 0 < missing <= _FILL_STEPS:
            for j in range(1, missing + 1):  # evenly between the looks on either side
                src.append(i)
                k_out.append(ks[i - 1] + j)
                t_out.append(ts[i - 1] + round(j * (ts[i] - ts[i - 1]) / (missing + 1)))
        src.append(i)
        k_out.append(ks[i])
        t_out.append(ts[i])
    if len(src) == len(ks):
        return steps
    take = pa.array(src, pa.int64())
    cols = {"t": pa.array(t_out, steps.schema.field("t").type),
            "k": pa.array(k_out, steps.schema.field("k").type)}  # fmt: skip
    for name in steps.column_names[2:]:
        cols[name] = steps[name].combine_chunks().take(take)
    return pa.table(cols)


def _no_io_where_unseen(series: pa.Table, sampled: pa.Table) -> pa.Table:
    """The job's series with steps added where none of its processes was sampled (what the
    agent's account or the command's rusage says it used): their storage I/O is none seen,
    not unknown, where the processes' I/O was read at all (an unknown one is the node's in
    the analysis: a sleeping job beside a disk writer was found io_wait_bound)."""
    for name in ("read_bps", "write_bps"):
        col = sampled[name]
        if col.null_count == len(col):
            continue  # /proc/PID/io not readable: the node's stands in everywhere
        seen = pc.is_in(series["t"], value_set=_flat(sampled["t"], pa.int64()))
        filled = pc.if_else(seen, series[name], pa.scalar(0.0, pa.float64()))
        series = series.set_column(series.schema.get_field_index(name), name, filled)
    return series


def _grouped(per: pa.Table, cols: list[str]) -> pa.Table:
    g = per.group_by("t", use_threads=False).aggregate([(c, "sum") for c in cols])
    return g.rename_columns([c.removesuffix("_sum") for c in g.column_names]).sort_by("t")
