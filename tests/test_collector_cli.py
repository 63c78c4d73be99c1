"""`para collector ...`, `para collect` and `para query` as a user types them."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from cryptography import x509

from para.cli import main
from tests.collector_support import (
    load_template,
    segment_bytes,
    template_rows,
    write_segments,
)
from tests.conftest import run_para

pytestmark = pytest.mark.no_kernel

TPL = load_template()
ROWS = template_rows(TPL)


def test_a_site_stands_up_its_certificates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = tmp_path / "ca"
    assert (
        main(["collector", "init-ca", "--dir", str(ca), "--server-name", "collector.example"]) == 0
    )
    out = capsys.readouterr().out
    assert "issue-cert" in out and "serve" in out
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE((ca / key).stat().st_mode) == 0o600
    server = x509.load_pem_x509_certificate((ca / "server.crt").read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["collector.example"]
    assert main(["collector", "init-ca", "--dir", str(ca)]) == 1
    assert "already exists" in capsys.readouterr().err

    assert main(["collector", "issue-cert", "node7", "--dir", str(ca)]) == 0
    assert "cert_file" in capsys.readouterr().out
    cert = x509.load_pem_x509_certificate((ca / "issued" / "node7.crt").read_bytes())
    assert cert.subject.rfc4514_string() == "CN=node7"
    assert main(["collector", "issue-cert", "alice", "--reader", "--dir", str(ca)]) == 0
    reader = x509.load_pem_x509_certificate((ca / "issued" / "reader-alice.crt").read_bytes())
    assert reader.subject.rfc4514_string() == "CN=para-reader:alice"
    assert main(["collector", "issue-cert", "../evil", "--dir", str(ca)]) == 1
    assert "invalid host name" in capsys.readouterr().err
    assert not (tmp_path / "evil.crt").exists()


def test_tokens_are_shown_once_and_stored_hashed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens = tmp_path / "tokens.json"
    assert main(["collector", "add-token", "node1", "--tokens", str(tokens), "--days", "30"]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("para_") and len(token) > 40
    text = tokens.read_text()
    assert token not in text and json.loads(text)["tokens"][0]["name"] == "node1"
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600


def test_collect_files_and_a_hand_copied_spool(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spool = tmp_path / "spool"
    write_segments(TPL, spool / "sent", "n1", 2)
    write_segments(TPL, spool / "ready", "n1", 1, first_seq=2)
    (spool / "current").mkdir()
    (spool / "current" / "n1-open.para").write_bytes(b"PK\x03\x04 being written")
    name, _, data = segment_bytes(TPL, TPL.parts, "laptop", 0, 0)
    run = tmp_path / "run.para"
    run.write_bytes(data)
    db = str(tmp_path / "db")
    assert main(["collect", "--db", db, str(spool), str(run)]) == 0
    err = capsys.readouterr().err
    assert "4 imported" in err and "0 skipped" in err
    assert main(["collect", "--db", db, "--json", str(run)]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "duplicate"
    junk = tmp_path / "junk.para"
    junk.write_text("nope")
    assert main(["collect", "--db", db, str(junk)]) == 1
    assert "not a .para file" in capsys.readouterr().err


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("q")
    paths = [str(p) for p, _ in write_segments(TPL, d / "r", "n1", 2)]
    paths += [str(p) for p, _ in write_segments(TPL, d / "r2", "n2", 1)]
    assert main(["collect", "-q", "--db", str(d / "db"), *paths]) == 0
    return str(d / "db")


def test_query_as_a_table(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["query", "--db", db, "SELECT host, count(*) AS n FROM node GROUP BY 1 ORDER BY 1"])
        == 0
    )
    out = capsys.readouterr().out
    assert "n1" in out and str(2 * ROWS["node"]) in out and "2 rows" in out


def test_query_as_csv_and_json(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    sql = "SELECT host, t, cpu_user FROM node ORDER BY host, t LIMIT 3"
    assert main(["query", "--db", db, "--csv", sql]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["host"] for r in rows] == ["n1"] * 3 and rows[0]["t"].startswith("20")
    assert main(["query", "--db", db, "--json", sql]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc) == 3 and set(doc[0]) == {"host", "t", "cpu_user"}
    assert isinstance(doc[0]["cpu_user"], int)


def test_query_to_parquet(db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "disk.parquet"
    assert main(["query", "--db", db, "--parquet", str(out), "SELECT * FROM disk"]) == 0
    assert pq.read_metadata(out).num_rows == 3 * ROWS["disk"]
    assert "wrote" in capsys.readouterr().err


def test_query_errors_say_what_is_there(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", "--db", db, "SELECT * FROM nosuch"]) == 1
    err = capsys.readouterr().err
    assert "query failed" in err and "nosuch" in err and "node" in err
    assert main(["query", "--db", "/nonexistent/db", "SELECT 1"]) == 1
    assert "no feature database" in capsys.readouterr().err


def test_status_compact_and_retain(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["collector", "status", "--db", db]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["segments"] == 3 and doc["hosts"] == 2
    assert main(["collector", "compact", "--db", db, "--min-files", "2"]) == 0
    assert "compacted" in capsys.readouterr().out
    assert main(["collector", "retain", "--db", db, "--retention", "node=bogus"]) == 2
    assert "not an age" in capsys.readouterr().err
    assert main(["query", "--db", db, "--csv", "SELECT count(*) AS n FROM node"]) == 0
    assert capsys.readouterr().out.split() == ["n", str(3 * ROWS["node"])]


def test_serve_refuses_plaintext_without_tokens_and_tls_without_certificates(
    tmp_path: Path,
) -> None:
    r = run_para("collector", "serve", "--db", str(tmp_path / "db"), "--insecure", timeout=60)
    assert r.returncode == 1 and "--auth token" in r.stderr
    r = run_para(
        "collector", "serve", "--db", str(tmp_path / "db"), "--tls-dir", str(tmp_path / "none"),
        "--listen", "127.0.0.1:0", timeout=60,
    )  # fmt: skip
    assert r.returncode == 1 and "server.crt" in r.stderr
    assert not os.path.exists(tmp_path / "db")  # refused before creating anything
