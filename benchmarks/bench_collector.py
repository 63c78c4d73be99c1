"""Collector ingest: N simulated agents ship real segments over mutual TLS on 127.0.0.1.

Each agent is para's own shipper (para/agent/shipper.py) with its own client certificate and
a spool of K ten-minute segments made from a real 1 Hz recording of this machine
(tests/fixtures/collector); the collector is `para collector serve` in its own process.  A run
ends when every segment is acknowledged AND merged into the Parquet database; the figure is
values in the database / seconds from the first send.  Then the database is checked row by
row against what was sent: losses and duplicates.

Anchor, same run: `para collect` importing the same files locally (no network, no TLS), i.e.
the merge alone; and the same ingest without the collector's gate (`serve --no-gate`: Flight
terminating TLS itself, as before issue 16's items 3 and 8), each repeat running both.
Reference: Netdata documents about 1 million samples/s per 2 cores for its parent (streaming
ingest); the goal here is 2 million values/s on this 2-core machine.

    .venv/bin/python benchmarks/bench_collector.py [--agents 32] [--segments 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from para.agent.shipper import Shipper  # noqa: E402
from para.collector import tls  # noqa: E402
from para.collector.db import FeatureDB  # noqa: E402
from tests.collector_support import (  # noqa: E402
    FIXTURE,
    CollectorProcess,
    agent_config,
    load_template,
    segment_bytes,
    shifted_parts,
)


def make_spools(work: Path, agents: int, per_agent: int, template: Path) -> tuple[list[str], int]:
    tpl = load_template(template)
    hosts = [f"node{i:04d}" for i in range(agents)]
    size = 0
    for seq in range(per_agent):
        shift = seq * tpl.duration_ms
        parts = shifted_parts(tpl, shift)
        for host in hosts:
            name, _, data = segment_bytes(tpl, parts, host, seq, shift)
            d = work / "spools" / host / "ready"
            d.mkdir(parents=True, exist_ok=True)
            (d / name).write_bytes(data)
            size += len(data)
    return hosts, size


def copy_spools(src: Path, dst: Path) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)


def ledger_state(db: Path) -> tuple[int, int, int]:
    """(merged segments, waiting segments, values) read from the ledger, without locking it."""
    try:
        con = sqlite3.connect(f"file:{db / 'ledger.sqlite3'}?mode=ro", uri=True, timeout=5)
        try:
            rows = con.execute(
                'SELECT state, count(*), coalesce(sum("values"), 0) FROM segments GROUP BY state'
            ).fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return 0, 0, 0
    d = {s: (n, v) for s, n, v in rows}
    return d.get("merged", (0, 0))[0], d.get("received", (0, 0))[0], d.get("merged", (0, 0))[1]


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def check(db: Path, expected_segments: int, template: Path) -> dict[str, int]:
    """Rows per table against what was sent; duplicates by (host, t, device)."""
    tpl = load_template(template)
    fdb = FeatureDB(db)
    con = fdb.connect()
    lost = dup = 0
    for table, n in tpl.end["rows"].items():
        got = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        lost += max(0, expected_segments * n - got)
        dup += max(0, got - expected_segments * n)
    dup += con.execute("SELECT count(*) - count(DISTINCT (host, t)) FROM node").fetchone()[0]
    con.close()
    fdb.close()
    return {"lost_rows": lost, "duplicate_rows": dup}


def run_network(
    work: Path, pki: Path, hosts: list[str], total: int, gate: bool = True
) -> dict[str, float]:
    db = work / "db"
    shutil.rmtree(db, ignore_errors=True)
    copy_spools(work / "spools", work / "run")
    args = ["--compact-every", "0", "-q"] + ([] if gate else ["--no-gate"])
    col = CollectorProcess(db, pki, *args, state=work).start()
    proc = psutil.Process(col.proc.pid)  # type: ignore[union-attr]
    cpu0 = proc.cpu_times()
    me0 = psutil.Process().cpu_times()
    shippers = []
    for h in hosts:
        cfg = agent_config(pki, col.port, h, poll_interval=0.2, backoff_min=0.2, backoff_max=2.0)
        shippers.append(Shipper(cfg, work / "run" / h, h, lambda m: None))
    t0 = time.monotonic()
    for s in shippers:
        s.start()
    acked_at = None
    while True:
        merged, waiting, values = ledger_state(db)
        if (
            acked_at is None
            and sum(s.counts["sent"] + s.counts["duplicates"] for s in shippers) == total
        ):
            acked_at = time.monotonic() - t0
        if merged == total and waiting == 0:
            break
        if time.monotonic() - t0 > 900:
            raise SystemExit(f"gave up after 900 s: {merged}/{total} merged")
        time.sleep(0.02)
    elapsed = time.monotonic() - t0
    cpu1 = proc.cpu_times()
    me1 = psutil.Process().cpu_times()
    rss = peak_rss(proc.pid)
    for s in shippers:
        s.stop()
    failed = sum(s.counts["failed_attempts"] for s in shippers)
    col.stop()
    result = {
        "seconds": elapsed,
        "acked_s": acked_at or elapsed,
        "values": values,
        "values_per_s": values / elapsed,
        "collector_cpu_s": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
        "agents_cpu_s": (me1.user - me0.user) + (me1.system - me0.system),
        "collector_peak_rss": rss,
        "retries": failed,
    }
    result.update(check(db, total, FIXTURE))
    return result


def run_transfer(work: Path, pki: Path, mib: int, gate: bool) -> dict[str, float]:
    """One node sends one upload of `mib` MiB of random bytes (not a .para file: the collector
    receives it all, checks its size and SHA-256, then rejects it): the transport alone."""
    from para.agent.collector_client import CollectorClient, Endpoint
    from para.formats import wire

    db = work / "db-transfer"
    shutil.rmtree(db, ignore_errors=True)
    args = ["--compact-every", "0", "-q"] + ([] if gate else ["--no-gate"])
    col = CollectorProcess(db, pki, *args, state=work).start()
    proc = psutil.Process(col.proc.pid)  # type: ignore[union-attr]
    data = os.urandom(mib << 20)
    header = wire.PutHeader(
        "node0000", "0" * 32, "node0000-x.para", len(data), wire.sha256_hex(data)
    )
    ep = Endpoint(
        f"grpc+tls://127.0.0.1:{col.port}", ca_file=pki / "ca.crt", timeout=600,
        cert_file=pki / "issued" / "node0000.crt", key_file=pki / "issued" / "node0000.key",
    )  # fmt: skip
    try:
        with CollectorClient(ep) as c:
            c.push_live("node0000", [])  # connected before the clock starts
            cpu0 = proc.cpu_times()
            t0 = time.monotonic()
            ack = c.send_segment(data, header)
            elapsed = time.monotonic() - t0
            cpu1 = proc.cpu_times()
    finally:
        col.stop()
    assert ack.status == wire.REJECTED, ack
    return {
        "seconds": elapsed,
        "mb_per_s": len(data) / 1e6 / elapsed,
        "collector_cpu_s": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
    }


def run_local(work: Path) -> dict[str, float]:
    db = work / "db-local"
    shutil.rmtree(db, ignore_errors=True)
    files = sorted((work / "spools").rglob("*.para"))
    cpu0 = psutil.Process().cpu_times()
    t0 = time.monotonic()
    results = FeatureDB(db).import_paths(files)
    elapsed = time.monotonic() - t0
    cpu1 = psutil.Process().cpu_times()
    values = sum(r["values"] for r in results)
    return {
        "seconds": elapsed,
        "values": values,
        "values_per_s": values / elapsed,
        "cpu_s": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
    }


def run_backlog(work: Path, pki: Path, template: Path) -> dict[str, float]:
    """A node whose collector was away for 24 hours: 144 ten-minute segments in its spool."""
    tpl = load_template(template)
    segments = int(round(86400 / (tpl.duration_ms / 1000)))
    spool = work / "backlog" / "node-late"
    shutil.rmtree(work / "backlog", ignore_errors=True)
    size = 0
    for seq in range(segments):
        shift = seq * tpl.duration_ms
        name, _, data = segment_bytes(tpl, shifted_parts(tpl, shift), "node-late", seq, shift)
        (spool / "ready").mkdir(parents=True, exist_ok=True)
        (spool / "ready" / name).write_bytes(data)
        size += len(data)
    tls.issue(pki, "node-late", out=pki / "issued")
    db = work / "db-backlog"
    shutil.rmtree(db, ignore_errors=True)
    col = CollectorProcess(db, pki, "--compact-every", "0", "-q", state=work).start()
    port = col.port
    col.stop()  # the outage: the shipper starts while nobody listens
    cfg = agent_config(pki, port, "node-late", backoff_min=0.5, backoff_max=1.0)
    sh = Shipper(cfg, spool, "node-late", lambda m: None)
    sh.start()
    while sh.counts["failed_attempts"] < 2:
        time.sleep(0.05)
    col = CollectorProcess(db, pki, "--compact-every", "0", "-q", port=port, state=work).start()
    t0 = time.monotonic()
    while ledger_state(db)[0] < segments or ledger_state(db)[1]:
        time.sleep(0.02)
    elapsed = time.monotonic() - t0
    sh.stop()
    col.stop()
    out: dict[str, float] = {"segments": segments, "bytes": size, "seconds": elapsed}
    out.update(check(db, segments, template))
    return out


def report(
    args: argparse.Namespace,
    net: list[dict[str, float]],
    loc: list[dict[str, float]],
    drain: dict[str, float],
    direct: list[dict[str, float]],
) -> None:
    med = {k: statistics.median(r[k] for r in net) for k in net[0]}
    dmed = {k: statistics.median(r[k] for r in direct) for k in direct[0]}
    dvps = [r["values_per_s"] / 1e6 for r in direct]
    lmed = {k: statistics.median(r[k] for r in loc) for k in loc[0]}
    vps = [r["values_per_s"] / 1e6 for r in net]
    lvps = [r["values_per_s"] / 1e6 for r in loc]
    lost = sum(r["lost_rows"] for r in net + direct) + drain["lost_rows"]
    dup = sum(r["duplicate_rows"] for r in net + direct) + drain["duplicate_rows"]
    rows = [
        ("ingest over mutual TLS through the gate, M values/s",
         f"**{med['values_per_s'] / 1e6:.2f}**",
         f"{min(vps):.2f} .. {max(vps):.2f}"),
        ("anchor: local `para collect`, M values/s", f"{lmed['values_per_s'] / 1e6:.2f}",
         f"{min(lvps):.2f} .. {max(lvps):.2f}"),
        ("TLS / local", f"{med['values_per_s'] / lmed['values_per_s']:.2f}", ""),
        ("anchor: without the gate (`--no-gate`), M values/s",
         f"{dmed['values_per_s'] / 1e6:.2f}", f"{min(dvps):.2f} .. {max(dvps):.2f}"),
        ("gate / no gate", f"{med['values_per_s'] / dmed['values_per_s']:.2f}", ""),
        ("collector CPU, s, without the gate", f"{dmed['collector_cpu_s']:.1f}", ""),
        ("collector peak RSS, MiB, without the gate",
         f"{dmed['collector_peak_rss'] / 2**20:.0f}", ""),
        (f"collector CPU, s (of {med['seconds']:.1f} s wall)", f"{med['collector_cpu_s']:.1f}",
         ""),
        ("collector M values per CPU-second",
         f"{med['values'] / med['collector_cpu_s'] / 1e6:.2f}", ""),
        ("collector peak RSS, MiB", f"{med['collector_peak_rss'] / 2**20:.0f}", ""),
        (f"agents' CPU (all {args.agents}), s", f"{med['agents_cpu_s']:.1f}", ""),
        ("24 h backlog of one node drained, s", f"{drain['seconds']:.1f}",
         f"{drain['bytes'] / 1e6:.1f} MB"),
        ("rows lost / duplicated (all runs)", f"{lost} / {dup}", ""),
    ]  # fmt: skip
    print()
    print("| | median | spread |")
    print("|---|---:|---:|")
    for name, value, spread in rows:
        print(f"| {name} | {value} | {spread} |")
    goal = "met" if med["values_per_s"] >= 2e6 and lost == 0 and dup == 0 else "NOT met"
    print(f"\nGoal >= 2 M values/s with zero loss: {goal}.")


def transfer(work: Path, pki: Path, args: argparse.Namespace) -> None:
    runs: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    for i in range(args.repeats):
        for gate in (True, False) if i % 2 == 0 else (False, True):
            r = run_transfer(work, pki, args.transfer_mb, gate)
            runs[gate].append(r)
            print(
                f"  one {args.transfer_mb} MiB upload, {'gate   ' if gate else 'no gate'}: "
                f"{r['mb_per_s']:.0f} MB/s ({r['seconds']:.2f} s, collector CPU "
                f"{r['collector_cpu_s']:.2f} s)"
            )
    print(f"\n| one upload of {args.transfer_mb} MiB (the transport alone) | gate | no gate |")
    print("|---|---:|---:|")
    for key, name in (("mb_per_s", "MB/s"), ("collector_cpu_s", "collector CPU, s")):
        g, d = (statistics.median(r[key] for r in runs[k]) for k in (True, False))
        print(f"| {name}, median of {args.repeats} | {g:.2f} | {d:.2f} |")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agents", type=int, default=32)
    ap.add_argument("--segments", type=int, default=8, help="per agent")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--template", type=Path, default=FIXTURE)
    ap.add_argument("--transfer-mb", type=int, default=256, help="one upload's size (0: none)")
    ap.add_argument("--transfer-only", action="store_true", help="only the one-upload runs")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="para-bench-collector-"))
    try:
        print(f"machine: {os.cpu_count()} CPUs; work dir {work}")
        pki = work / "pki"
        tls.init_ca(pki, server_names=["127.0.0.1", "localhost"])
        t = time.monotonic()
        hosts, size = make_spools(work, args.agents, args.segments, args.template)
        for h in hosts:
            tls.issue(pki, h, out=pki / "issued")
        total = args.agents * args.segments
        tpl = load_template(args.template)
        print(
            f"{args.agents} agents x {args.segments} segments of "
            f"{tpl.end['samples']} samples ({tpl.end['values']:,} values, "
            f"{size // total:,} bytes each); {total * tpl.end['values']:,} values, "
            f"{size / 1e6:.1f} MB in all (made in {time.monotonic() - t:.1f} s)"
        )
        if args.transfer_mb:
            transfer(work, pki, args)
            if args.transfer_only:
                return
        net, loc, direct = [], [], []
        for i in range(args.repeats):
            # both ways each repeat, in turn first, so that a busy spell hits both alike
            for gate in (True, False) if i % 2 == 0 else (False, True):
                n = run_network(work, pki, hosts, total, gate=gate)
                (net if gate else direct).append(n)
                rss = n["collector_peak_rss"] / 2**20
                print(
                    f"  run {i + 1}: TLS {'gate   ' if gate else 'no gate'} "
                    f"{n['values_per_s'] / 1e6:6.2f} M values/s "
                    f"({n['seconds']:.1f} s, acked in {n['acked_s']:.1f} s; collector CPU "
                    f"{n['collector_cpu_s']:.1f} s, peak RSS {rss:.0f} MiB; "
                    f"agents CPU {n['agents_cpu_s']:.1f} s; retries {n['retries']}; "
                    f"lost rows {n['lost_rows']}, duplicated {n['duplicate_rows']})"
                )
            lo = run_local(work)
            loc.append(lo)
            print(
                f"         local para collect {lo['values_per_s'] / 1e6:6.2f} M values/s "
                f"({lo['seconds']:.1f} s, CPU {lo['cpu_s']:.1f} s)"
            )
        drain = run_backlog(work, pki, args.template)
        print(
            f"  24 h outage: one node's backlog of {drain['segments']} segments "
            f"({drain['bytes'] / 1e6:.1f} MB) drained and merged {drain['seconds']:.1f} s after "
            f"the collector came back; lost rows {drain['lost_rows']}, "
            f"duplicated {drain['duplicate_rows']}"
        )
        report(args, net, loc, drain, direct)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
