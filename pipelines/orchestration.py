"""What the Airflow DAG wires: the stage commands for a run's `ds`, their environment, the
failure callback. Kept out of `dags/` so the DAG file stays thin and cheap to parse.

The DAG runs each stage as `python -m pipelines.<stage> [--ds DS]` in the project root:
the same entry points `dvc.yaml` runs, so nothing is implemented twice.
"""
from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path

from plumbing.dates import parse_ds

PROJECT_ROOT = Path(os.environ.get("RELATE_HOME") or Path(__file__).resolve().parents[1])

# stage -> whether it takes --ds: the run's day, the end of the rolling window it reads (no
# partition after it, so a backfill of a past day trains and evaluates as that day would have).
# The evaluate_* stages score the models their train_* stage just wrote, whose metadata names
# the days they were trained on.
STAGES: dict[str, bool] = {
    "ingest": True,
    "validate": True,
    "train_ctcvr": True,
    "evaluate_ctcvr": False,
    "train_attribution": True,
    "evaluate_attribution": False,
    "sft": True,
    "grpo": True,
    "combo_policy": True,
    "evaluate": True,
    "publish": True,
}
# publish exits with this when a gate refuses the models; the Airflow task maps it to
# "skipped" (visible in the grid, no retries, no published-model Asset event).
PUBLISH_REFUSED_EXIT_CODE = 99

log = logging.getLogger("relate.orchestration")


def stage_command(stage: str, ds: str | None = None) -> str:
    """The shell command that runs one stage for a run date (validated, then quoted)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
    argv = [sys.executable, "-m", f"pipelines.{stage}"]
    if STAGES[stage]:
        if ds is None:
            raise ValueError(f"stage {stage} needs a ds")
        parse_ds(ds)
        argv += ["--ds", ds]
    if stage == "publish":
        argv += ["--refused-exit-code", str(PUBLISH_REFUSED_EXIT_CODE)]
    return shlex.join(argv)


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
    from pipelines import simulate

    previous = os.getcwd()
    os.chdir(PROJECT_ROOT)
    try:
        if simulate.main([]) != 0:
            raise RuntimeError("the simulator failed; see the log above")
    finally:
        os.chdir(previous)
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
