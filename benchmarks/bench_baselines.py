"""Anomaly baselines shared by collector shards (para/collector/baselinefiles.py): what a
shard pays once a minute to save its own and to read the others', beside the anchor of
json.loads of the same files (the decoding floor), and how long the live path waits (the
engine's lock held).

    python benchmarks/bench_baselines.py --shards 4 --nodes 10000 --rules 5

Each shard holds the node baselines of its share of the nodes (distinct means and variances
per node and rule) and the application baselines of 200 applications.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

from para.collector.baselinefiles import BaselineFiles
from para.live import rules
from para.live.engine import Baseline, Engine


class TimedLock:
    """An RLock that adds up how long it was held."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.held = 0.0
        self._t = 0.0

    def __enter__(self) -> None:
        self.lock.acquire()
        self._t = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.held += time.perf_counter() - self._t
        self.lock.release()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--rules", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    text = (
        "".join(
            f'[[rule]]\nname = "node{i}"\ntype = "anomaly"\nmetric = "cpu_busy_pct"\n'
            for i in range(args.rules)
        )
        + '[[rule]]\nname = "app"\ntype = "anomaly"\nbaseline = "app"\nmetric = "job.rss_bytes"\n'
    )
    rs = rules.parse(text)
    root = Path(tempfile.mkdtemp(prefix="para-bench-baselines-"))
    engines, files = [], []
    per = args.nodes // args.shards
    for s in range(args.shards):
        e = Engine(rs, lambda n, notify: None)
        for i in range(per):
            for r in range(args.rules):
                e.baselines[(f"node{r}", f"cn{s * per + i:05d}", ())] = Baseline(
                    3600.0 + i, 40.0 + (i * 7 + r) % 50, 1.0 + (i + s) % 13
                )
        for a in range(200):
            e.baselines[("app", f"app:code{a}", None)] = Baseline(86400.0 + a, 2e9 + a * 1e7, 1e16)
        engines.append(e)
        files.append(BaselineFiles(root, f"shard{s}", print))
    now = time.time()
    save, read, held, floor = [], [], [], []
    for _ in range(args.rounds):
        for f, e in zip(files, engines, strict=True):
            lock = TimedLock()
            t0 = time.perf_counter()
            f.save(e, now, lock)
            save.append(time.perf_counter() - t0)
        lock = TimedLock()
        t0 = time.perf_counter()
        files[0].read(engines[0], now + 1, lock)
        read.append(time.perf_counter() - t0)
        held.append(lock.held)
        t0 = time.perf_counter()
        for p in sorted((root / "alerting/baselines").glob("*.json"))[1:]:
            json.loads(p.read_bytes())
        floor.append(time.perf_counter() - t0)
    size = (root / "alerting/baselines/shard0.json").stat().st_size
    keys = per * args.rules + 200
    print(f"{args.shards} shards, {args.nodes} nodes, {args.rules} node rules + 1 app rule: "
          f"{keys:,} baselines a shard, {size:,} bytes a file")  # fmt: skip
    print(f"save (one shard)            median {statistics.median(save) * 1000:8.1f} ms")
    r, fl = statistics.median(read), statistics.median(floor)
    print(f"read the {args.shards - 1} others           median {r * 1000:8.1f} ms   anchor "
          f"json.loads of their files {fl * 1000:8.1f} ms   ratio {r / fl:.2f}")  # fmt: skip
    print(f"the engine's lock held      median {statistics.median(held) * 1000:8.1f} ms "
          f"(the live path waits this long once a minute)")  # fmt: skip


if __name__ == "__main__":
    main()
