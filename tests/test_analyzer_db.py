"""Jobs of the feature database: `para report --job ID`, the features it writes to the
`jobs` table, `para jobs` with filters and `--analyze`, and `para compare` of two job ids,
on recordings made here with `para profile` under a (pretend) Slurm job and imported with
the collector's FeatureDB."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from para.collector.db import FeatureDB

from .conftest import REPO, para_cmd, run_para

WORKLOADS = Path(__file__).parent / "analyzer_workloads.py"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("db")
    # one after the other: the database tells jobs on one host apart by time where rows carry
    # no job of their own
    for job, kind, user in (("501", "imbalanced", "alice"), ("502", "grow", "bob")):
        env = dict(os.environ, SLURM_JOB_ID=job, SLURM_JOB_NAME=f"wl-{kind}",
                   SLURM_JOB_USER=user, SLURM_JOB_NUM_NODES="1", TMPDIR=str(d))  # fmt: skip
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        r = subprocess.run(
            [*para_cmd(), "profile", "-q", "-i", "0.2", "-o", str(d / f"{job}.para"), "--",
             sys.executable, str(WORKLOADS), kind, "4"],
            env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert r.returncode == 0, r.stderr
    with FeatureDB(d / "db") as fdb:
        for job in ("501", "502"):
            fdb.import_para(d / f"{job}.para")
    return d / "db"


def test_report_of_a_job_from_the_database_writes_its_features(db, capsys):
    from para.analyzer.report import main

    assert main([], job="501", db=str(db)) == 0
    out = capsys.readouterr().out
    assert "slurm job 501 (wl-imbalanced)" in out and "(load_imbalance)" in out
    r = run_para("jobs", "--db", str(db), "--json")
    assert r.returncode == 0, r.stderr
    jobs = {j["job_id"]: j for j in json.loads(r.stdout)["jobs"]}
    assert set(jobs) == {"501", "502"}
    f = jobs["501"]
    assert f["analysis_version"] == 1 and "load_imbalance" in f["bottlenecks"]
    assert f["cpu_util_pct"] > 0 and f["peak_rss_bytes"] > 0
    assert jobs["502"].get("analysis_version") is None


def test_jobs_analyze_fills_the_rest_and_filters(db):
    r = run_para("jobs", "--db", str(db), "--analyze")
    assert r.returncode == 0, r.stderr
    assert "502" in r.stdout and "memory_growth" in r.stdout
    r = run_para("jobs", "--db", str(db), "--json", "--user", "bob")
    assert [j["job_id"] for j in json.loads(r.stdout)["jobs"]] == ["502"]
    r = run_para("jobs", "--db", str(db), "--json", "--bottleneck", "load_imbalance")
    assert [j["job_id"] for j in json.loads(r.stdout)["jobs"]] == ["501"]
    r = run_para("jobs", "--db", str(db), "--json", "--name", "wl-gr*")
    assert [j["job_id"] for j in json.loads(r.stdout)["jobs"]] == ["502"]


def test_compare_two_jobs_of_the_database(db):
    r = run_para("compare", "--db", str(db), "501", "502", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["a"]["job_id"] == "501" and doc["b"]["job_id"] == "502"
    new = {b["id"] for b in doc["bottlenecks"]["new"]}
    assert "memory_growth" in new


def test_unknown_job_says_how_to_list_them(db, capsys):
    from para.analyzer.report import main
    from para.errors import ParaError

    with pytest.raises(ParaError, match="no job '999'"):
        main([], job="999", db=str(db))
