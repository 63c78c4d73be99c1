"""Issue 16's attacks on a real `para collector serve` (127.0.0.1, mutual TLS): for each, the
collector's resident memory before and at its peak (the kernel's VmRSS and VmHWM), how long
the other nodes' next segments took to be merged after it (the anchor: the same with no
attack, measured in the same run), and what the log said.

    .venv/bin/python benchmarks/bench_attacks.py

Prints a Markdown table (docs/benchmarks.md, "Issue 16").  Each attack gets a fresh
collector, warmed by one good segment of every node.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

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


ATTACKS: list[tuple[str, str, Callable[[atk.Site], str]]] = [
    ("none (anchor)", "", lambda s: "-"),
    ("1. null `t`", "without a time", lambda s: send(s, atk.null_times())),
    ("1. `t` in year 33658", "outside 1970", lambda s: send(s, atk.far_times())),
    ("1. column retyped", "holds it as", lambda s: send(s, *atk.retyped_catalogue())),
    ("2. 512 MiB meta.json in 0.5 MiB", "limit", meta_bomb),
    ("2. Parquet: 800 MiB of dictionary text", "limit", lambda s: send(s, atk.parquet_bomb())),
    ("4. forged alert note for node03", "speak for itself", forged_note),
    ("5. job 4242 claimed for mallory", "", job_claim),
    ("7. live: 700 MiB inflating from ~1 MiB", "refused live", live_flood),
    ("8. revoked node keeps sending", "revoked", revoked),
]


def main() -> int:
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        pki = make_pki(Path(tmp) / "pki", HOSTS, ["alice"])
        rules = Path(tmp) / "alerts.toml"
        rules.write_text('[[rule]]\nname = "busy"\nmetric = "cpu_busy_pct"\nabove = 80\n')
        for i, (name, words, attack) in enumerate(ATTACKS):
            d = Path(tmp) / f"a{i}"
            d.mkdir()
            site = atk.Site(d, pki, "--alerts", str(rules))
            try:
                for h in HOSTS:
                    site.send_good(h)
                for h in HOSTS:
                    site.wait_merged(h, 1, timeout=300)
                rss0, _ = site.memory()
                base = statistics.median(others(site) for _ in range(2))
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
