"""Hostile segments and a site to aim them at, for the attack tests (issue 16) and
benchmarks/bench_attacks.py.

Every file here is what an attacker holding one node's credential (or a buggy agent) can send:
built from the real recording of tests/fixtures/collector, then broken in one way.  `Site` is a
real `para collector serve` process on 127.0.0.1 with an agent client per host, a reader, and
the collector's resident memory read from /proc.
"""

from __future__ import annotations

import io
import json
import sqlite3
import time
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from para.agent.collector_client import CollectorClient, Endpoint
from para.formats import journal, wire
from tests.collector_support import (
    FIXTURE,
    CollectorProcess,
    Template,
    load_template,
    segment_bytes,
    shifted_parts,
    wait_for,
)

TPL = load_template()
TPL_PATH = FIXTURE
MIB = 1 << 20


def memory(pid: int) -> tuple[int, int]:
    """(resident now, resident peak) of a process, in bytes (the kernel's VmRSS, VmHWM)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


# -- hostile files ---------------------------------------------------------------------------


def _with_table(
    tpl: Template, table: str, change: Callable[[pa.Table], pa.Table]
) -> dict[str, bytes]:
    parts = dict(tpl.parts)
    name = f"{table}/part-00000.parquet"
    data = change(pq.read_table(pa.BufferReader(parts[name])))
    keys = [c["name"] for c in journal.table_layout(tpl.meta["catalogue"])[table][:1]]
    parts[name] = journal.parquet_bytes(data, keys)
    return parts


def null_times(tpl: Template = TPL) -> dict[str, bytes]:
    """The `node` table with every `t` null."""
    return _with_table(
        tpl, "node", lambda t: t.set_column(0, "t", pa.nulls(len(t), journal.TIME_TYPE))
    )


def far_times(tpl: Template = TPL) -> dict[str, bytes]:
    """The `node` table dated in the year 33658 (past any date a partition can take)."""
    return _with_table(
        tpl,
        "node",
        lambda t: t.set_column(
            0,
            "t",
            pa.array([10**15 + i for i in range(len(t))], pa.int64()).cast(journal.TIME_TYPE),
        ),
    )


def retyped_catalogue(tpl: Template = TPL) -> tuple[dict[str, bytes], dict[str, Any]]:
    """`node.load1` declared and written as text (the database holds it as float)."""
    cat = [
        {**c, "type": "str"} if (c["table"], c["name"]) == ("node", "load1") else c
        for c in tpl.meta["catalogue"]
    ]
    parts = _with_table(
        tpl,
        "node",
        lambda t: t.set_column(
            t.schema.get_field_index("load1"), "load1", t.column("load1").cast(pa.string())
        ),
    )
    return parts, {"catalogue": cat}


def rezip(data: bytes, change: Callable[[str, bytes], tuple[bytes, int]]) -> bytes:
    """The same members, each through `change(name, bytes) -> (bytes, compression)`."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as zin, zipfile.ZipFile(out, "w") as zout:
        for name in zin.namelist():
            body, how = change(name, zin.read(name))
            zout.writestr(name, body, how, compresslevel=9 if how else None)
    return out.getvalue()


def meta_bomb(data: bytes, size: int = 512 * MIB) -> bytes:
    """meta.json padded with `size` bytes of blanks, deflated (about 1/1000 of it on the wire)."""

    def change(name: str, body: bytes) -> tuple[bytes, int]:
        if name == "meta.json":
            return body + b" " * size, zipfile.ZIP_DEFLATED
        return body, zipfile.ZIP_STORED if name.endswith(".parquet") else zipfile.ZIP_DEFLATED

    return rezip(data, change)


def parquet_bomb(tpl: Template = TPL, rows: int = 200_000, width: int = 4096) -> dict[str, bytes]:
    """A `node` part whose `events`-like text column repeats one `width`-byte string on every
    row: dictionary-encoded and compressed it is a few KiB, decoded rows x width bytes."""
    parts = dict(tpl.parts)
    t0 = pq.read_table(pa.BufferReader(parts["node/part-00000.parquet"])).column("t")[0].as_py()
    times = pa.array([t0] * rows, journal.TIME_TYPE)
    text = pa.array(["x" * width] * rows, pa.string())
    table = pa.table({"t": times, "kind": text, "name": text, "detail": text})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", use_dictionary=True)
    parts["events/part-00000.parquet"] = buf.getvalue()
    return parts


# -- a site ----------------------------------------------------------------------------------


class Site:
    """A collector process, its agents (one client each) and a reader."""

    def __init__(self, tmp_path: Path, pki: Path, *args: str) -> None:
        self.tmp, self.pki = tmp_path, pki
        self.db = tmp_path / "db"
        self.col = CollectorProcess(self.db, pki, *args).start()
        self.seq: dict[str, int] = {}

    @property
    def pid(self) -> int:
        assert self.col.proc is not None
        return self.col.proc.pid

    def memory(self) -> tuple[int, int]:
        return memory(self.pid)

    def endpoint(self, who: str, timeout: float = 60.0) -> Endpoint:
        stem = f"reader-{who}" if who == "alice" else who
        return Endpoint(
            f"grpc+tls://127.0.0.1:{self.col.port}",
            ca_file=self.pki / "ca.crt",
            cert_file=self.pki / "issued" / f"{stem}.crt",
            key_file=self.pki / "issued" / f"{stem}.key",
            timeout=timeout,
        )

    def client(self, who: str, timeout: float = 60.0) -> CollectorClient:
        return CollectorClient(self.endpoint(who, timeout))

    def segment(
        self,
        host: str,
        parts: dict[str, bytes] | None = None,
        extra_meta: dict[str, Any] | None = None,
    ) -> tuple[wire.PutHeader, bytes]:
        seq = self.seq.get(host, 0)
        self.seq[host] = seq + 1
        shift = seq * TPL.duration_ms
        parts = parts if parts is not None else shifted_parts(TPL, shift)
        name, seg_id, data = segment_bytes(TPL, parts, host, seq, shift, extra_meta=extra_meta)
        return self.header(host, name, seg_id, data), data

    @staticmethod
    def header(host: str, name: str, seg_id: str, data: bytes) -> wire.PutHeader:
        return wire.PutHeader(host, seg_id, name, len(data), wire.sha256_hex(data))

    def send(self, host: str, header: wire.PutHeader, data: bytes) -> wire.Ack:
        with self.client(host) as c:
            return c.send_segment(data, header)

    def send_good(self, host: str) -> wire.Ack:
        header, data = self.segment(host)
        ack = self.send(host, header, data)
        assert ack.status == wire.STORED, ack
        return ack

    def merged(self, host: str) -> int:
        con = sqlite3.connect(f"file:{self.db / 'ledger.sqlite3'}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute(
                "SELECT count(*) FROM segments WHERE host = ? AND state = 'merged'", (host,)
            ).fetchone()[0]
        finally:
            con.close()

    def wait_merged(self, host: str, n: int, timeout: float = 90.0) -> float:
        """Seconds until `n` segments of `host` are merged."""
        t0 = time.monotonic()
        wait_for(lambda: self.merged(host) >= n, timeout=timeout, what=f"{n} merged of {host}")
        return time.monotonic() - t0

    def status(self) -> dict[str, Any]:
        with self.client("alice") as c:
            return c.status()

    def log(self) -> str:
        return self.col.output()

    def stop(self) -> None:
        self.col.stop()


def new_id() -> str:
    return uuid.uuid4().hex


def extra(name: str, body: bytes) -> tuple[bytes, int]:
    return body, zipfile.ZIP_STORED if name.endswith(".parquet") else zipfile.ZIP_DEFLATED


def describe(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1, default=str)
