"""End to end: `dvc repro` of the whole pipeline on the tiny config, in a fresh copy of the project."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, TINY_PARAMS

CODE = ["dvc.yaml", "plumbing", "pipelines", "relate_sim", "relate_models", "sql", "dags"]


def _run(cmd, cwd, env, timeout=900):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    work = tmp_path_factory.mktemp("project")
    for name in CODE:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, work / name)
    shutil.copy2(TINY_PARAMS, work / "params.yaml")
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(work),
        PATH=f"{os.path.dirname(sys.executable)}:{env.get('PATH', '')}",
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t",
    )
    env.pop("RELATE_PARAMS", None)
    _run(["git", "init", "-q"], work, env)
    _run([sys.executable, "-m", "dvc", "init", "-q"], work, env)
    _run([sys.executable, "-m", "dvc", "repro"], work, env)
    return work, env


def test_repro_writes_conserving_ingest_metrics(project):
    work, _ = project
    ingest = json.loads((work / "metrics" / "ingest.json").read_text())
    assert ingest["rows_in"] > 0
    assert ingest["rows_in"] == ingest["rows_kept"] + ingest["rows_quarantined"]
    assert ingest["rows_quarantined"] > 0, "the simulator writes corrupt and duplicate lines; ingest must catch some"


def test_repro_passes_the_validation_gate(project):
    work, _ = project
    assert (work / "data" / "validation" / "_SUCCESS").exists()
    assert list((work / "data" / "validation").glob("*/*.html")) or list((work / "data" / "validation").rglob("*.html"))


def test_second_repro_has_nothing_to_do(project):
    work, env = project
    started = time.monotonic()
    proc = _run([sys.executable, "-m", "dvc", "repro"], work, env)
    assert "didn't change" in proc.stdout or "up to date" in proc.stdout.lower(), proc.stdout
    assert time.monotonic() - started < 60
    status = _run([sys.executable, "-m", "dvc", "status"], work, env)
    assert "changed" not in status.stdout, status.stdout
