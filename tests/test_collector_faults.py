"""The collector as a real process having a bad day: SIGKILL under load, a full disk.

Each test checks the same four things: nothing lost, nothing duplicated, a clear error while it
lasted, and the collector kept serving the others.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from para.agent.collector_client import CollectorClient, Endpoint
from para.agent.shipper import Shipper
from para.collector.db import FeatureDB
from tests.collector_support import (
    CollectorProcess,
    agent_config,
    load_template,
    make_pki,
    template_rows,
    wait_for,
    write_segments,
)
from tests.conftest import cannot_run

pytestmark = [pytest.mark.slow, pytest.mark.no_kernel]
TPL = load_template()
ROWS = template_rows(TPL)
HOSTS = ["node1", "node2", "node3", "node4"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"), HOSTS, ["alice"])


def _start_shippers(
    tmp_path: Path, pki: Path, port: int, per_host: int, **cfg: object
) -> tuple[list[Shipper], list[list[str]]]:
    shippers, logs = [], []
    for host in HOSTS:
        write_segments(TPL, tmp_path / f"spool-{host}" / "ready", host, per_host)
        msgs: list[str] = []
        sh = Shipper(
            agent_config(pki, port, host, **cfg), tmp_path / f"spool-{host}", host, msgs.append
        )
        sh.start()
        shippers.append(sh)
        logs.append(msgs)
    return shippers, logs


def _sent(tmp_path: Path) -> int:
    return sum(len(list((tmp_path / f"spool-{h}" / "sent").glob("*.para"))) for h in HOSTS)


def _check_database(db: Path, segments: int) -> None:
    fdb = FeatureDB(db)
    st = fdb.status()
    assert (st["segments"], st["waiting"], st["quarantined"]) == (segments, 0, 0)
    con = fdb.connect()
    for table, n in ROWS.items():
        if table in ("events", "counters"):
            continue  # several rows may share an instant
        total = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        distinct = con.execute(f"SELECT count(*) FROM (SELECT DISTINCT * FROM {table})").fetchone()[
            0
        ]
        assert total == segments * n, table
        assert distinct == total, f"duplicated rows in {table}"
    con.close()
    fdb.close()


def _reader(pki: Path, port: int) -> CollectorClient:
    return CollectorClient(
        Endpoint(
            f"grpc+tls://127.0.0.1:{port}",
            ca_file=pki / "ca.crt",
            cert_file=pki / "issued" / "reader-alice.crt",
            key_file=pki / "issued" / "reader-alice.key",
            timeout=20,
        )
    )


def test_kill_9_under_load_then_restart(tmp_path: Path, pki: Path) -> None:
    per_host = 6
    col = CollectorProcess(tmp_path / "db", pki).start()
    shippers, logs = _start_shippers(tmp_path, pki, col.port, per_host)
    try:
        wait_for(lambda: _sent(tmp_path) >= 3, what="the first acknowledgements")
        col.kill()  # SIGKILL: mid-upload, mid-merge, wherever it was
        killed_at = _sent(tmp_path)
        assert killed_at < len(HOSTS) * per_host
        wait_for(
            lambda: any(s.status()["consecutive_failures"] >= 1 for s in shippers),
            what="shippers noticing",
        )
        col.start()  # same database, same port
        wait_for(lambda: _sent(tmp_path) == len(HOSTS) * per_host, timeout=90, what="all acked")
        assert all(list((tmp_path / f"spool-{h}" / "ready").glob("*.para")) == [] for h in HOSTS)
        wait_for(
            lambda: FeatureDB(tmp_path / "db").status()["waiting"] == 0, timeout=60, what="merged"
        )
    finally:
        for s in shippers:
            s.stop()
        col.stop()
    assert col.proc is not None and col.proc.returncode == 0, col.output()
    assert any("cannot reach the collector" in m for msgs in logs for m in msgs)
    _check_database(tmp_path / "db", len(HOSTS) * per_host)
    acked = sum(s.status()["sent"] + s.status()["duplicates"] for s in shippers)
    assert acked == len(HOSTS) * per_host


AS_ROOT = "run the tests as root (CI and `make test` do): the test mounts a small tmpfs to fill"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    try:
        r = subprocess.run(
            [
                "mount",
                "-t",
                "tmpfs",
                "-o",
                "size=16m",
                f"para-test-{uuid.uuid4().hex[:6]}",
                str(mnt),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        cannot_run(f"cannot mount a small tmpfs to fill: {e}", AS_ROOT)
    if r.returncode != 0:
        cannot_run(f"cannot mount a small tmpfs to fill ({r.stderr.strip()})", AS_ROOT)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def test_a_full_disk_delays_but_loses_nothing(tmp_path: Path, pki: Path, small_disk: Path) -> None:
    per_host = 10
    db = small_disk / "db"
    col = CollectorProcess(db, pki, state=tmp_path).start()
    # the disk fills up (something else wrote to it): 150 KB left, less than 40 segments need
    filler = small_disk / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * (shutil.disk_usage(small_disk).free - 150_000))
    shippers, logs = _start_shippers(tmp_path, pki, col.port, per_host, backoff_max=0.3)
    try:
        wait_for(
            lambda: any("disk full" in (s.status()["last_error"] or "") for s in shippers),
            timeout=60,
            what="the disk to fill",
        )
        assert _sent(tmp_path) < len(HOSTS) * per_host
        with _reader(pki, col.port) as reader:  # still serving
            got = reader.status()
        assert got["received"]["unavailable"] >= 1 and "disk full" in got["received"]["last_error"]
        filler.unlink()  # space freed
        wait_for(lambda: _sent(tmp_path) == len(HOSTS) * per_host, timeout=90, what="all acked")
        wait_for(lambda: FeatureDB(db).status()["waiting"] == 0, timeout=60, what="merged")
    finally:
        for s in shippers:
            s.stop()
        col.stop()
    assert any("disk full" in m for msgs in logs for m in msgs)
    _check_database(db, len(HOSTS) * per_host)
