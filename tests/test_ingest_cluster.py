"""The ingest on real Spark services on this machine: spark-submit to a standalone cluster (a master and
2 workers) and a run through a Spark Connect server give the same tables, row for row, as local[2].

The data are tests/test_ingest.py's hand-built days (every quarantine reason, dedupe, late
conversions) and tests/test_real_upworthy.py's report rows. The services are started by
plumbing.spark_services and stopped by their own process ids. Slow (marked): 3-4.5 min on a 2-core VM
under a load average of 6-10 (local 54-87 s, cluster 81-113 s, Connect 54-73 s), mostly JVM starts.
"""
from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from plumbing import spark_services
from plumbing.config import load_config
from plumbing.spark import connect_url, get_spark, is_connect, task_slots
from pipelines import ingest, ingest_reports
from tests import test_ingest, test_real_upworthy

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
EVENT_TABLES = test_ingest.TABLES
REPORT_TABLES = ("combo_stats", "text_stats", "quarantine", "ingest_quality")


def tables(curated: Path, names) -> dict[str, pd.DataFrame]:
    """Curated tables as frames sorted on every column (row-for-row equality, not file order)."""
    out = {}
    for name in names:
        df = pd.read_parquet(curated / name)
        df["dt"] = df["dt"].astype(str)
        out[name] = df.sort_values(list(df.columns)).reset_index(drop=True)
    return out


def land(root: Path) -> None:
    """The raw events days and params.yaml (master local[1]: every run below must override it), and
    the report rows as a landed Upworthy delivery."""
    test_ingest.write_raw(root)
    report = root / "data" / "raw" / "upworthy" / "packages.csv.gz"
    report.parent.mkdir(parents=True)
    with gzip.open(report, "wt", encoding="utf-8") as fh:
        fh.write(test_real_upworthy.HEADER + "\n".join(test_real_upworthy.ROWS) + "\n")


def ingest_both(spark, root: Path) -> None:
    """Events (`--all`, in the given session: stage_session reuses it) and the report; cwd is root."""
    assert ingest.main(["--all", "--params", "params.yaml"]) == 0
    cfg = load_config(ingest.IngestConfig, "ingest", root / "params.yaml")
    ingest_reports.run_source(spark, "upworthy", cfg, root / "data" / "raw" / "upworthy", root / "reports_curated")


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The reference: classic local[2] in this process."""
    root = tmp_path_factory.mktemp("local")
    land(root)
    spark = get_spark("local[2]", "test-ingest-local", 2)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(root)
            ingest_both(spark, root)
    finally:
        spark.stop()
    return root


def test_spark_submit_to_a_standalone_cluster_gives_local_tables(local_run, tmp_path):
    """spark-submit's --master wins over params' ingest.master (local[1]); executors run on the workers."""
    land(tmp_path)
    logs = tmp_path / "services"
    submit = str(spark_services.spark_home() / "bin" / "spark-submit")
    with spark_services.standalone_cluster(logs, workers=2, cores=1, memory="1g") as master:
        done = subprocess.run([submit, "--master", master, "--conf", "spark.executor.memory=512m",
                               "--conf", "spark.ui.enabled=false", str(ROOT / "pipelines" / "ingest.py"), "--all",
                               "--params", "params.yaml"],
                              cwd=tmp_path, env={**os.environ, "PYSPARK_PYTHON": sys.executable},
                              capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert all(list(logs.glob(f"worker-{i}/app-*/*")) for i in range(2))  # executors ran on both workers
    want, got = tables(local_run / "data" / "curated", EVENT_TABLES), tables(tmp_path / "data" / "curated", EVENT_TABLES)
    for name in EVENT_TABLES:
        pd.testing.assert_frame_equal(got[name], want[name], obj=name)


def test_spark_connect_gives_local_tables(local_run, tmp_path, monkeypatch):
    """SPARK_REMOTE sends the unchanged jobs (events and report) to a Connect server over params' local[1]."""
    land(tmp_path)
    monkeypatch.chdir(tmp_path)
    with spark_services.connect_server(tmp_path / "services", master="local[2]") as url:
        monkeypatch.setenv("SPARK_REMOTE", url)
        # pyspark marks the process Connect-only (SPARK_CONNECT_MODE_ENABLED) once a Connect session
        # exists; setenv records its absence, so the undo deletes it and later classic sessions work
        monkeypatch.setenv("SPARK_CONNECT_MODE_ENABLED", "")
        monkeypatch.delenv("SPARK_CONNECT_MODE_ENABLED")
        spark = get_spark("local[1]", "test-ingest-connect", 2)
        assert is_connect(spark) and task_slots(spark, 99) == 2  # the server's local[2]
        try:
            ingest_both(spark, tmp_path)
        finally:
            spark.stop()
    for curated, names in (("data/curated", EVENT_TABLES), ("reports_curated", REPORT_TABLES)):
        want, got = tables(local_run / curated, names), tables(tmp_path / curated, names)
        for name in names:
            pd.testing.assert_frame_equal(got[name], want[name], obj=f"{curated}/{name}")


def test_connect_url_and_submitted_master(monkeypatch):
    monkeypatch.delenv("SPARK_REMOTE", raising=False)
    assert connect_url("sc://h:15002") == "sc://h:15002" and connect_url("local[2]") is None
    monkeypatch.setenv("SPARK_REMOTE", "sc://r:1")
    assert connect_url("local[2]") == "sc://r:1" and connect_url("sc://h:2") == "sc://h:2"


def test_a_classic_session_starts_after_the_connect_test():
    """The Connect test leaves no Connect-only mark on the process (test_ingest_fuzz runs next in CI)."""
    assert "SPARK_CONNECT_MODE_ENABLED" not in os.environ

