"""What the Airflow DAG wires: the stage commands for a run's `ds`, their environment, the
callbacks. Kept out of `dags/` so the DAG file stays thin and cheap to parse.

The DAG runs each stage of `pipelines.stages.STAGES` as `python -m pipelines.<stage> [--ds DS]`
in the project root: the same entry points `dvc.yaml` runs, so nothing is implemented twice.
"""
from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path

from pipelines.stages import PUBLISH_REFUSED_EXIT_CODE, RAW_LOGS_STAGE, stage
from plumbing.dates import parse_ds

__all__ = ["PROJECT_ROOT", "PUBLISH_REFUSED_EXIT_CODE", "ensure_raw_partition", "on_publish_refused",
           "on_task_failure", "stage_argv", "stage_command", "stage_env"]

PROJECT_ROOT = Path(os.environ.get("RELATE_HOME") or Path(__file__).resolve().parents[1])

log = logging.getLogger("relate.orchestration")


def stage_argv(name: str, ds: str | None = None) -> list[str]:
    """The command line that runs one stage of the table for a run date (validated)."""
    row = stage(name)
    argv = [sys.executable, "-m", row.module]
    if row.ds is not None:
        if ds is None:
            raise ValueError(f"stage {name} needs a ds")
        parse_ds(ds)
        argv += ["--ds", ds]
    if row.refused_exit_code is not None:
        argv += ["--refused-exit-code", str(row.refused_exit_code)]
    return argv


def stage_command(name: str, ds: str | None = None) -> str:
    """stage_argv as one quoted shell command (what the DAG's bash tasks run)."""
    return shlex.join(stage_argv(name, ds))


def stage_env() -> dict[str, str]:
    """Variables every stage needs on top of the worker's environment."""
    return {
        "PYTHONPATH": str(PROJECT_ROOT),
        "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def ensure_raw_partition(ds: str, source: str) -> str:
    """Make sure raw logs for `ds` exist: run the simulator when it is the data source.

    With real logs a missing partition fails the run with a message naming it (the log
    shipper is late or broken); nothing downstream runs.
    """
    from plumbing.paths import RAW_EVENTS, partition

    parse_ds(ds)
    path = PROJECT_ROOT / partition(RAW_EVENTS, ds)
    if path.is_dir() and any(path.glob("*.jsonl.gz")):
        return str(path)
    if source != "simulator":
        raise FileNotFoundError(f"raw logs for {ds} have not landed: {path} is missing or empty")
    # a child process in the project root: the Airflow worker's own directory stays as it is
    done = subprocess.run(stage_argv(RAW_LOGS_STAGE.name, ds), cwd=PROJECT_ROOT,
                          env={**os.environ, **stage_env()}, check=False)
    if done.returncode != 0:
        raise RuntimeError("the simulator failed; see the log above")
    if not path.is_dir():
        raise FileNotFoundError(f"the simulator ran but wrote no partition for {ds}: is ds inside simulate.start_date + days?")
    return str(path)


def on_task_failure(context) -> None:
    """Airflow failure callback: one line that says which stage failed for which day, and why."""
    ti = context.get("task_instance") or context.get("ti")
    task_id = getattr(ti, "task_id", "?")
    ds = context.get("ds", "?")
    error = context.get("exception")
    hint = ""
    if task_id.endswith("validate"):
        hint = (f" The data failed the validation gate: see {PROJECT_ROOT}/data/validation/{ds}/summary.json and the"
                " Data Docs; nothing downstream runs and nothing is published.")
    elif task_id.endswith("land_raw_logs"):
        hint = " Raw logs for the day are missing: check the log shipper (or the simulator's date range)."
    elif task_id.endswith("publish"):
        hint = f" Publishing crashed (not a gate refusal): see {PROJECT_ROOT}/reports/publish.md and the task log."
    log.error("RELATE stage %s failed for ds=%s (try %s): %s.%s", task_id, ds, getattr(ti, "try_number", "?"),
              error or "non-zero exit", hint)


def on_publish_refused(context) -> None:
    """Airflow skipped callback of the publish task: say why nothing was published."""
    import json

    ds = context.get("ds", "?")
    reasons = "see the task log"
    report = PROJECT_ROOT / "metrics" / "publish.json"
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
        if data.get("ds") == ds:
            reasons = "; ".join(
                f"{g['gate']}: {g['value']} < {g['required']}" for g in data["gates"] if not g["passed"])
    except (OSError, ValueError, KeyError):
        pass
    log.warning("RELATE publish for ds=%s refused by the gates (champion unchanged): %s. Report: %s", ds,
                reasons, PROJECT_ROOT / "reports" / "publish.md")
