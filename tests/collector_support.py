"""Helpers for the collector's tests and benchmark: agent segments made from a real recording,
certificates, an in-process collector, a collector subprocess.

Segments are the real 10-minute recording of tests/fixtures/collector (see SOURCES.md) with
the identity an agent gives its segments (meta.json "segment", "source": "para agent"), the
host name of the simulated node, and times shifted so that consecutive segments follow each
other.  The Parquet parts are re-encoded exactly as the writer encodes them.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from para.formats import journal
from para.formats.schema import TABLES

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "collector" / "vm-10min-1hz.para"


@dataclass
class Template:
    """A recording split into what a segment needs."""

    meta: dict[str, Any]
    end: dict[str, Any]
    parts: dict[str, bytes]  # member name -> Parquet bytes

    @property
    def duration_ms(self) -> int:
        return int(round((self.end["end"] - self.end["start"]) * 1000)) + 1000


def load_template(path: Path = FIXTURE) -> Template:
    with zipfile.ZipFile(path) as zf:
        meta = json.loads(zf.read("meta.json"))
        end = json.loads(zf.read("end.json"))
        parts = {n: zf.read(n) for n in zf.namelist() if n.endswith(".parquet")}
    return Template(meta, end, parts)


def shifted_parts(tpl: Template, shift_ms: int) -> dict[str, bytes]:
    """The template's parts with every `t` moved by shift_ms (re-encoded like the writer)."""
    if shift_ms == 0:
        return dict(tpl.parts)
    layout = journal.table_layout(tpl.meta["catalogue"])
    out = {}
    for name, data in tpl.parts.items():
        table_name = name.split("/")[0]
        table = pq.read_table(pa.BufferReader(data))
        t = table.column("t").cast(pa.int64())
        moved = pa.compute.add(t, shift_ms).cast(journal.TIME_TYPE)
        table = table.set_column(table.schema.get_field_index("t"), "t", moved)
        keys = (
            [c.name for c in TABLES[table_name].keys]
            if table_name in TABLES
            else [c["name"] for c in layout[table_name] if c["kind"] == "info"]
        )
        out[name] = journal.parquet_bytes(table, keys)
    return out


def segment_bytes(
    tpl: Template,
    parts: dict[str, bytes],
    host: str,
    seq: int,
    shift_ms: int,
    seg_id: str | None = None,
    extra_meta: dict[str, Any] | None = None,
) -> tuple[str, str, bytes]:
    """(file name, segment id, bytes) of one agent segment."""
    seg_id = seg_id or uuid.uuid4().hex
    meta = json.loads(json.dumps(tpl.meta))
    meta["host"]["hostname"] = host
    meta["source"] = "para agent"
    meta["segment"] = {"id": seg_id, "seq": seq, "host": host, "agent_started": 1.0}
    meta.update(extra_meta or {})
    end = dict(tpl.end)
    end["start"] = tpl.end["start"] + shift_ms / 1000
    end["end"] = tpl.end["end"] + shift_ms / 1000
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(end["start"]))
    name = f"{host}-{stamp}-{seq:06d}.para"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("meta.json", json.dumps(meta), zipfile.ZIP_DEFLATED)
        for member, data in parts.items():
            zf.writestr(member, data)
        zf.writestr("end.json", json.dumps(end), zipfile.ZIP_DEFLATED)
    return name, seg_id, buf.getvalue()


def write_segments(
    tpl: Template, ready: Path, host: str, count: int, first_seq: int = 0
) -> list[tuple[Path, str]]:
    """`count` consecutive segments of `host` in a spool's ready/ directory."""
    ready.mkdir(parents=True, exist_ok=True)
    out = []
    for seq in range(first_seq, first_seq + count):
        shift = seq * tpl.duration_ms
        name, seg_id, data = segment_bytes(tpl, shifted_parts(tpl, shift), host, seq, shift)
        tmp = ready / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, ready / name)
        out.append((ready / name, seg_id))
    return out


def template_rows(tpl: Template) -> dict[str, int]:
    return dict(tpl.end["rows"])


# -- certificates and a collector -----------------------------------------------------------


def make_pki(directory: Path, hosts: list[str], readers: list[str] = ()) -> Path:  # type: ignore[assignment]
    from para.collector import tls

    tls.init_ca(directory, server_names=["localhost", "127.0.0.1"])
    for h in hosts:
        tls.issue(directory, h, out=directory / "issued")
    for r in readers:
        tls.issue(directory, r, out=directory / "issued", reader=True)
    return directory


def agent_config(pki: Path, port: int, host: str, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "url": f"grpc+tls://127.0.0.1:{port}",
        "ca_file": str(pki / "ca.crt"),
        "cert_file": str(pki / "issued" / f"{host}.crt"),
        "key_file": str(pki / "issued" / f"{host}.key"),
        "send_window": 0.0,
        "poll_interval": 0.05,
        "backoff_min": 0.05,
        "backoff_max": 0.5,
        "timeout": 30.0,
    }
    cfg.update(extra)
    return cfg


def wait_for(pred: Any, timeout: float = 30.0, step: float = 0.05, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or pred}")
        time.sleep(step)


class CollectorProcess:
    """`para collector serve` as a real subprocess on 127.0.0.1."""

    def __init__(
        self, db: Path, pki: Path | None, *args: str, port: int = 0, state: Path | None = None
    ):
        self.db, self.pki, self.args = db, pki, args
        self.port = port
        self.proc: subprocess.Popen[str] | None = None
        self.state = state or db.parent  # its log and port file (off a disk a test fills)
        self.log = self.state / f"{db.name}-collector.log"

    def start(self, timeout: float = 60.0) -> CollectorProcess:
        port_file = self.state / f"{self.db.name}.port"
        port_file.unlink(missing_ok=True)
        cmd = [
            sys.executable, "-m", "para", "collector", "serve", "--db", str(self.db),
            "--listen", f"127.0.0.1:{self.port}", "--port-file", str(port_file),
            "--min-free-mb", "0", *self.args,
        ]  # fmt: skip
        if self.pki is not None:
            cmd += ["--tls-dir", str(self.pki)]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        logf = open(self.log, "a")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(cmd, stdout=logf, stderr=logf, env=env, text=True)
        logf.close()
        deadline = time.monotonic() + timeout
        while not port_file.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"collector exited {self.proc.returncode}: {self.output()}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"collector did not start: {self.output()}")
            time.sleep(0.05)
        self.port = json.loads(port_file.read_text())["port"]
        return self

    def output(self) -> str:
        try:
            return self.log.read_text()
        except OSError:
            return ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=60)

    def stop(self) -> int:
        self.kill(signal.SIGTERM)
        return self.proc.returncode if self.proc is not None else 0


def column(table: str, name: str, kind: str = "gauge", typ: str = "int") -> dict[str, str]:
    return {
        "table": table,
        "name": name,
        "unit": "",
        "kind": kind,
        "type": typ,
        "source": "test",
        "description": name,
    }


def write_para(
    path: Path,
    catalogue: list[dict[str, str]],
    samples: list[tuple[int, dict[str, list[list[Any]]]]],
    host: str = "node1",
    **meta: Any,
) -> Path:
    """A complete .para file written by para's own writer, with the given catalogue."""
    from para.formats import ParaWriter

    doc: dict[str, Any] = {
        "source": "para agent",
        "host": {"hostname": host, "clock_ticks": 100},
        "interval": 1.0,
        "catalogue": catalogue,
    }
    doc.update(meta)
    w = ParaWriter(path, doc)
    for t_ms, rows in samples:
        w.append(t_ms, rows)
    w.close()
    return path
