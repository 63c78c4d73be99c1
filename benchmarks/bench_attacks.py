"""Issue 16's attacks on a real `para collector serve` (127.0.0.1, mutual TLS, or bearer
tokens where the attack needs them): for each, the collector's resident memory before and at
its peak (the kernel's VmRSS, and VmHWM reset just before the attack), how long the other
nodes' next segments took to be merged after it (the anchor: the same with no attack,
measured in the same run), and what the log said.  Item 3's attack is also made on a
collector without its gate (`--no-gate`), as issue 16 saw it.

    .venv/bin/python benchmarks/bench_attacks.py

Prints a Markdown table (docs/benchmarks.md, "Issue 16").  Each attack gets a fresh
collector, warmed by one good segment of every node.
"""

from __future__ import annotations

import json
import socket
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from para.formats import wire  # noqa: E402
from tests import attack_support as atk  # noqa: E402
from tests.collector_support import make_pki  # noqa: E402

HOSTS = ["node01", "node02", "node03"]


def others(site: atk.Site) -> float:
    before = {h: site.merged(h) for h in HOSTS[1:]}
    t0 = time.monotonic()
    for h in HOSTS[1:]:
        site.send_good(h)
    for h in HOSTS[1:]:
        site.wait_merged(h, before[h] + 1, timeout=300)
    return time.monotonic() - t0


def send(site: atk.Site, parts: dict[str, bytes] | None = None, meta: dict | None = None) -> str:
    header, data = site.segment("node01", parts, meta)
    return site.send("node01", header, data).status


def meta_bomb(site: atk.Site) -> str:
    header, data = site.segment("node01")
    data = atk.meta_bomb(data)
    return site.send("node01", atk.Site.header("node01", header.name, header.id, data), data).status


def live_flood(site: atk.Site) -> str:
    blob = "x" * (1 << 20)
    samples = [(1000 * i, {"events": [[1000 * i, "note", None, "x", blob]]}) for i in range(7)]
    body = zlib.compress(json.dumps({"v": 1, "host": "node01", "samples": samples}).encode(), 9)
    big = zlib.compress(json.dumps({"v": 1, "host": "node01", "samples": samples * 2}).encode(), 9)
    with site.client("node01") as c:
        for _ in range(100):
            c._action(wire.ACTION_LIVE, body)
        try:
            c._action(wire.ACTION_LIVE, big)
        except Exception:
            pass
    return f"{100 * len(body) // 1024} KiB sent"


def forged_note(site: atk.Site) -> str:
    note = {"id": "f" * 32, "rule": "busy", "host": "node03", "labels": {}, "state": "firing"}
    ev = [[int(time.time() * 1000), "alert", None, "busy", json.dumps(note)]]
    with site.client("node01") as c:
        c.push_live("node01", [(int(time.time() * 1000), {"events": ev})])
    time.sleep(1.5)  # evaluated on the alert thread
    return "sent"


def revoked(site: atk.Site) -> str:
    from para.collector.auth import REVOKED_FILE, Revoked

    Revoked(site.db / REVOKED_FILE).change("node01", reader=False, revoke=True, reason="bench")
    try:
        send(site)
    except Exception as e:
        return type(e).__name__
    return "accepted?"


def job_claim(site: atk.Site) -> str:
    send(site, None, {"job": {"job_id": "4242", "user": "mallory"}})
    header, data = site.segment("node02", None, {"job": {"job_id": "4242", "user": "alice"}})
    return site.send("node02", header, data).status


def unauthenticated_body(site: atk.Site) -> str:
    """256 MiB in a DoAction, with a token the collector does not know (issue 16, item 3)."""
    from para.agent.collector_client import CollectorClient, Endpoint

    url = f"grpc+tls://127.0.0.1:{site.col.port}"
    ep = Endpoint(url, ca_file=site.pki / "ca.crt", token="para_" + "x" * 43, timeout=120)
    try:
        with CollectorClient(ep) as c:
            c._action(wire.ACTION_LIVE, bytes(256 * atk.MIB))
    except Exception as e:
        return type(e).__name__
    return "accepted?"


def huge_put_message(site: atk.Site) -> str:
    """One DoPut message (a record batch) of 256 MiB from node01."""
    import pyarrow as pa
    import pyarrow.flight as fl

    header, _ = site.segment("node01")
    schema = pa.schema([(wire.CHUNK_COLUMN, pa.binary())])
    big = pa.record_batch([pa.array([bytes(256 * atk.MIB)], pa.binary())], schema=schema)
    try:
        with site.client("node01") as c:
            desc = fl.FlightDescriptor.for_command(header.encode())
            writer, reader = c._client.do_put(desc, schema, options=c._options)
            try:
                writer.write_batch(big)
                writer.done_writing()
                reader.read()
            finally:
                writer.close()
    except Exception as e:
        return type(e).__name__
    return "accepted?"


def raw(flood: Callable[[atk.RawH2], int]) -> Callable[[atk.Site], str]:
    def run(site: atk.Site) -> str:
        h2 = atk.RawH2(site.col.port, site.pki, "node01")
        try:
            flood(h2)
        except OSError:
            pass
        frames = h2.frames()
        h2.close()
        return "GOAWAY" if any(k == 7 for k, *_ in frames) else "not refused?"

    return run


def idle_connections(site: atk.Site) -> str:
    """40 connections from 127.0.0.2 that never finish a TLS handshake."""
    socks = []
    for _ in range(40):
        s = socket.socket()
        s.bind(("127.0.0.2", 0))
        s.connect(("127.0.0.1", site.col.port))
        socks.append(s)
    closed = 0
    for s in socks:
        s.settimeout(60)
        try:
            closed += s.recv(1) == b""
        except OSError:
            closed += 1
        s.close()
    return f"{closed} closed"


def two_names(site: atk.Site) -> str:
    """A certificate of a site CA the collector trusts: CN node01, SAN node02."""
    from para.agent.collector_client import CollectorClient, Endpoint

    d = site.tmp / "site-ca"
    url = f"grpc+tls://127.0.0.1:{site.col.port}"
    ep = Endpoint(url, ca_file=site.pki / "ca.crt", cert_file=d / "client.crt",
                  key_file=d / "client.key", timeout=60)  # fmt: skip
    header, data = site.segment("node02")
    try:
        with CollectorClient(ep) as c:
            c.send_segment(data, header)
    except Exception as e:
        return type(e).__name__
    return "accepted as node02"


def revoked_certificate(site: atk.Site) -> str:
    from para.collector.auth import REVOKED_FILE, Revoked

    pem = (site.pki / "issued" / "node01.crt").read_bytes()
    Revoked(site.db / REVOKED_FILE).change_certificate(pem, revoke=True, reason="bench")
    try:
        send(site)
    except Exception as e:
        return type(e).__name__
    return "accepted?"


def site_ca(tmp: Path, pki: Path) -> list[str]:
    ca, _, _ = atk.foreign_certificate(tmp / "site-ca", "node01", ["node02"])
    bundle = tmp / "cas.pem"
    bundle.write_bytes((pki / "ca.crt").read_bytes() + ca.read_bytes())
    return ["--ca", str(bundle)]


TOKENS = "tokens"
NO_GATE = "no gate"
Setup = Callable[[Path, Path], list[str]] | str | None

ATTACKS: list[tuple[str, str, Callable[[atk.Site], str], Setup]] = [
    ("none (anchor)", "", lambda s: "-"),
    ("1. null `t`", "without a time", lambda s: send(s, atk.null_times())),
    ("1. `t` in year 33658", "outside 1970", lambda s: send(s, atk.far_times())),
    ("1. column retyped", "holds it as", lambda s: send(s, *atk.retyped_catalogue())),
    ("2. 512 MiB meta.json in 0.5 MiB", "the limit of", meta_bomb),
    (
        "2. Parquet: 800 MiB of dictionary text",
        "the limit of",
        lambda s: send(s, atk.parquet_bomb()),
    ),
    ("4. forged alert note for node03", "speak for itself", forged_note),
    ("5. job 4242 claimed for mallory", "", job_claim),
    ("7. live: 700 MiB inflating from ~1 MiB", "refused live", live_flood),
    ("8. revoked node keeps sending", "revoked", revoked),
    ("3. 256 MiB DoAction, unknown token", "unknown token", unauthenticated_body, TOKENS),
    ("3. the same without the gate (`--no-gate`)", "", unauthenticated_body, NO_GATE),
    ("3. one 256 MiB DoPut message", "DoPut message", huge_put_message),
    ("3. 40 requests at once on one connection", "at once", raw(atk.streams_flood)),
    ("3. a header block that never ends", "header block", raw(atk.continuation_flood)),
    ("3. HPACK bomb: 5 KB of headers decoding to 4 MB", "decoding", raw(atk.hpack_bomb)),
    ("3. rapid reset: 1000 requests opened and cancelled", "a second", raw(atk.rapid_reset)),
    (
        "3. 40 connections from one address, no handshake",
        "not authenticated yet",
        idle_connections,
        TOKENS,
    ),
    ("8. CN node01 / SAN node02 from a trusted site CA", "disagree", two_names, site_ca),
    ("8. revoked certificate (serial) keeps sending", "revoked", revoked_certificate),
]


def main() -> int:
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        pki = make_pki(Path(tmp) / "pki", HOSTS, ["alice"])
        rules = Path(tmp) / "alerts.toml"
        rules.write_text('[[rule]]\nname = "busy"\nmetric = "cpu_busy_pct"\nabove = 80\n')
        for i, (name, words, attack, *setup) in enumerate(ATTACKS):
            d = Path(tmp) / f"a{i}"
            d.mkdir()
            how = setup[0] if setup else None
            args = ["--alerts", str(rules)]
            tokens: dict[str, Any] | None = None
            if how == TOKENS:
                tokens = dict.fromkeys([*HOSTS, "alice"], "")
            elif how == NO_GATE:
                tokens = dict.fromkeys([*HOSTS, "alice"], "")
                args.append("--no-gate")
            elif callable(how):
                args += how(d, pki)
            site = atk.Site(d, pki, *args, tokens=tokens)
            try:
                for h in HOSTS:
                    site.send_good(h)
                for h in HOSTS:
                    site.wait_merged(h, 1, timeout=300)
                rss0, _ = site.memory()
                base = statistics.median(others(site) for _ in range(2))
                rss0, _ = site.memory()
                site.reset_peak()
                what = attack(site)
                delay = others(site)
                _, peak = site.memory()
                lines = [ln for ln in site.log().splitlines() if words and words in ln]
                said = "-"
                if lines:
                    line = lines[0].split("para collector: ", 1)[-1]
                    at = line.index(words)
                    head = line[: line.index(": ") + 1] if ": " in line[:at] else ""
                    said = (head + " ..." if head else "") + line[max(at - 50, len(head)) : at + 60]
            finally:
                site.stop()
            out.append(
                f"| {name} | {what} | {rss0 / 2**20:.0f} | {peak / 2**20:.0f} | "
                f"{base:.2f} / {delay:.2f} | {said.replace('|', '/')} |"
            )
            print(out[-1], file=sys.stderr, flush=True)
    print("| attack | answer | RSS before (MiB) | peak RSS (MiB) | others merged in, s "
          "(before / after) | the log said |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
