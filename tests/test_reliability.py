"""Reliability: killed writers, a corrupted day, corrupted labels, overlapping backfills.

One tiny upstream per module (simulate + ingest --all + ingest_elements --all); each test works on its own copy.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from tests.test_dags import airflow_env, dag_test, make_project, stage

DAY = "2026-01-06"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("reliability") / "upstream")
    stage(project, "pipelines.simulate")
    stage(project, "pipelines.ingest", "--all")
    stage(project, "pipelines.ingest_elements", "--all")  # validate fails a delivered element table not landed
    return project


@pytest.fixture
def project(upstream, tmp_path):
    copy = tmp_path / "project"
    shutil.copytree(upstream, copy, symlinks=True)
    return copy


def set_params(project: Path, section: str, **values) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params[section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params))


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(x for x in root.rglob("*") if x.is_file()):
        h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def table(project: Path, name: str, ds: str) -> pd.DataFrame:
    frame = pq.read_table(project / "data" / "curated" / name / f"dt={ds}").to_pandas()
    return frame.sort_values(list(frame.columns[:3])).reset_index(drop=True)


def test_killed_simulator_leaves_no_partial_partition_and_its_retry_completes(tmp_path):
    proj = make_project(tmp_path / "kill")
    set_params(proj, "simulate", days=2, impressions_per_day=150000)
    env = airflow_env(proj / ".airflow", proj / "dags", proj)
    raw = proj / "data" / "raw" / "events"
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.simulate"], cwd=proj, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    # kill while a day is being written: a hidden staging directory with files in it exists
    while time.monotonic() < deadline and proc.poll() is None:
        staging = [p for p in raw.glob(".dt=*staging-*") if any(p.iterdir())] if raw.is_dir() else []
        if staging:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the simulator finished before it could be killed; raise impressions_per_day"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    visible = sorted(p.name for p in raw.iterdir() if p.name.startswith("dt=")) if raw.is_dir() else []
    assert len(visible) < 2, "killed mid-run, yet every day is visible"
    partial = {name: tree_digest(raw / name) for name in visible}

    stage(proj, "pipelines.simulate")  # the retry
    assert sorted(p.name for p in raw.iterdir() if p.name.startswith("dt=")) == ["dt=2026-01-01", "dt=2026-01-02"]
    assert not [p for p in raw.iterdir() if p.name.startswith(".")], "the retry left staging directories behind"
    for name, digest in partial.items():  # a day visible after the kill was already complete
        assert tree_digest(raw / name) == digest

    reference = make_project(tmp_path / "reference")
    shutil.copy2(proj / "params.yaml", reference / "params.yaml")
    stage(reference, "pipelines.simulate")
    assert tree_digest(raw) == tree_digest(reference / "data" / "raw" / "events")


def test_corrupted_day_stops_at_the_validation_gate(project):
    part = next((project / "data" / "raw" / "events" / f"dt={DAY}").glob("*.jsonl.gz"))
    import gzip

    lines = gzip.decompress(part.read_bytes()).decode().splitlines()
    # a broken log shipper: a third of the lines truncated mid-record
    broken = [line[: len(line) // 2] if i % 3 == 0 else line for i, line in enumerate(lines)]
    part.write_bytes(gzip.compress(("\n".join(broken) + "\n").encode()))

    states, log = dag_test(project, DAY, project / ".airflow")
    tasks = states["tasks"]
    assert tasks["data.ingest"] == "success"  # bad lines are quarantined and counted, not a crash
    assert tasks["data.validate"] == "failed"
    downstream = {t: s for t, s in tasks.items() if not t.startswith("data.")}
    assert downstream and all(s == "upstream_failed" for s in downstream.values()), downstream
    assert "RELATE stage data.validate failed for ds=" + DAY in log  # the failure callback's reason
    summary = json.loads((project / "data" / "validation" / DAY / "summary.json").read_text())
    failed = [e for s in summary["suites"].values() for e in s["failed_expectations"]]
    assert any("quarantine" in json.dumps(e) for e in failed), failed
    assert not (project / "data" / "validation" / "_SUCCESS").exists()
    assert not (project / "models").exists() and not (project / "registry").exists()


def test_model_trained_on_corrupted_labels_is_refused_by_the_publish_gate(project):
    set_params(project, "publish", artifacts=["attribution"], min_true_ctcvr_uplift_vs_sft=None,
               min_true_ctcvr_uplift_vs_logged=None, min_compliance_rate=None, min_combo_ratio_to_oracle=None,
               min_ctcvr_auc_ratio=None, min_attribution_auc_ratio=0.7)  # between the clean and the scrambled model
    set_params(project, "train_attribution", content=False)  # no train_ctcvr here: no shared tokenizer
    run_ds = "2026-01-07"

    def train_evaluate_publish() -> dict:
        stage(project, "pipelines.train_attribution", "--ds", run_ds)
        stage(project, "pipelines.evaluate_attribution")
        stage(project, "pipelines.publish", "--ds", run_ds)
        return json.loads((project / "metrics" / "publish.json").read_text())

    stage(project, "pipelines.validate", "--ds", run_ds)  # publish names versions after validated days only
    clean = train_evaluate_publish()
    assert clean["published"] is True, clean
    champion = json.loads((project / "registry" / "champion.json").read_text())

    # labels scrambled by an upstream bug: clicks shuffled across the training days' combinations
    # (counts and rates unchanged, so the data gate cannot see it); the held-out day stays clean
    from plumbing.dates import shift_ds

    trained = json.loads((project / "metrics" / "train_attribution.json").read_text())
    holdout = yaml.safe_load((project / "params.yaml").read_text())["train_attribution"]["holdout_days"]
    last_train = shift_ds(trained["window_end"], -holdout)
    train_days = [shift_ds(last_train, -i) for i in range(trained["train_days"])]
    rng = np.random.default_rng(0)
    for ds in train_days:
        pdir = project / "data" / "curated" / "combo_stats" / f"dt={ds}"
        for f in sorted(pdir.glob("*.parquet")):
            frame = pq.read_table(f).to_pandas()
            frame["clicks"] = np.minimum(rng.permutation(frame["clicks"].to_numpy()), frame["impressions"])
            frame["ctr"] = frame["clicks"] / frame["impressions"]
            frame.to_parquet(f, index=False)

    corrupted = train_evaluate_publish()
    assert corrupted["published"] is False
    assert "attribution_auc_ratio" in corrupted["failed_gates"], corrupted["gates"]
    gate = next(g for g in corrupted["gates"] if g["gate"] == "attribution_auc_ratio")
    assert gate["margin"] < 0 and gate["value"] < clean["candidate_metrics"]["attribution_auc_ratio"]
    assert json.loads((project / "registry" / "champion.json").read_text()) == champion
    assert sorted(p.name for p in (project / "registry").iterdir() if p.is_dir() and not p.name.startswith(".")) \
        == [champion["version"]]


def test_overlapping_backfills_do_not_corrupt_each_others_partitions(project):
    days = ["2026-01-03", "2026-01-06"]
    before = {(t, d): table(project, t, d) for t in ("events", "quarantine", "ingest_quality") for d in days}
    shared = table(project, "labeled_impressions", "2026-01-03")  # both runs relabel this partition
    env = airflow_env(project / ".airflow", project / "dags", project)
    procs = [subprocess.Popen([sys.executable, "-m", "pipelines.ingest", "--ds", d], cwd=project, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for d in days]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-4000:]
    for (t, d), frame in before.items():  # partitions a run owns alone: exactly as before
        after = table(project, t, d)
        if "labels_as_of" in after.columns:
            continue
        pd.testing.assert_frame_equal(after.drop(columns=[c for c in ("ingested_at",) if c in after]),
                                      frame.drop(columns=[c for c in ("ingested_at",) if c in frame]))
    after = table(project, "labeled_impressions", "2026-01-03")
    assert after["labels_as_of"].nunique() == 1, "a partition mixes two runs' rows"
    assert len(after) == len(shared) and after["impression_id"].is_unique
    assert sorted(after["impression_id"]) == sorted(shared["impression_id"])
    for d in days:  # no staging left visible
        for t in ("events", "labeled_impressions"):
            assert not [p for p in (project / "data" / "curated" / t).iterdir() if p.name.startswith("dt=")
                        and not any(p.iterdir())]
