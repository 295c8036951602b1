"""What the Airflow DAG wires: the stage commands for a run's `ds`, their environment, the
callbacks. Kept out of `dags/` so the DAG file stays thin and cheap to parse.

The DAG runs each stage of `pipelines.stages.STAGES` as `python -m pipelines.<stage> [--ds DS]`
in the project root: the same entry points `dvc.yaml` runs, so nothing is implemented twice.
Its first task simulates a missing day with the champion of the moment serving (issue 20's
closed loop): a backfill over N days retrains on logs its own champions served.
"""
from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from pipelines.stages import PUBLISH_REFUSED_EXIT_CODE, RAW_LOGS_STAGE, stage
from plumbing.dates import parse_ds

__all__ = ["LOGGING_POLICY", "PROJECT_ROOT", "PUBLISH_REFUSED_EXIT_CODE", "ensure_raw_partition",
           "on_publish_refused", "on_task_failure", "serving_champion", "stage_argv", "stage_command", "stage_env"]

PROJECT_ROOT = Path(os.environ.get("RELATE_HOME") or Path(__file__).resolve().parents[1])

log = logging.getLogger("relate.orchestration")
LOGGING_POLICY = "logging policy"  # who served a simulated day when no champion's tables exist


def stage_argv(name: str, ds: str | None = None, extra: Sequence[str] = ()) -> list[str]:
    """The command line that runs one stage of the table for a run date (validated), plus
    `extra` arguments of that stage's own (simulate's --serving)."""
    row = stage(name)
    argv = [sys.executable, "-m", row.module]
    if row.ds is not None:
        if ds is None:
            raise ValueError(f"stage {name} needs a ds")
        parse_ds(ds)
        argv += ["--ds", ds]
    if row.refused_exit_code is not None:
        argv += ["--refused-exit-code", str(row.refused_exit_code)]
    return argv + list(extra)


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


def serving_champion() -> tuple[str, Path] | None:
    """(version, serving-table folder) of the champion in service now; None: the logging policy serves.

    The registry is `publish.registry_dir` of the params file the stages read ($RELATE_PARAMS, or
    the project's params.yaml); a malformed champion.json or registry_dir fails the lookup with
    its own message."""
    from pipelines.publish_registry import champion_serving, check_registry_dir
    from plumbing.config import load_params
    from plumbing.errors import ConfigError

    params = PROJECT_ROOT / (os.environ.get("RELATE_PARAMS") or "params.yaml")  # relative: to where the stages run
    written = (load_params(params).get("publish") or {}).get("registry_dir")
    if not isinstance(written, str) or not written.strip():
        raise ConfigError(f"publish.registry_dir: missing or empty in {params}")
    return champion_serving(PROJECT_ROOT / check_registry_dir(written, PROJECT_ROOT))


def ensure_raw_partition(ds: str, source: str) -> dict[str, str | None]:
    """Make sure raw logs for `ds` exist: run the simulator when it is the data source.

    A simulated day is served by the champion in service at its start (its serving tables),
    or by the logging policy when there is none. Returns (the task's XCom) the partition and
    `served_by`: the champion's version, LOGGING_POLICY, or None when the day was already
    there (not simulated again, so a rerun never changes a day's logs). With real logs a
    missing partition fails the run with a message naming it (the log shipper is late or
    broken); nothing downstream runs.
    """
    from plumbing.paths import RAW_EVENTS, partition

    parse_ds(ds)
    path = PROJECT_ROOT / partition(RAW_EVENTS, ds)
    if path.is_dir() and any(path.glob("*.jsonl.gz")):
        log.info("raw logs for %s already landed (%s): not simulated again", ds, path)
        return {"partition": str(path), "served_by": None}
    if source != "simulator":
        raise FileNotFoundError(f"raw logs for {ds} have not landed: {path} is missing or empty")
    champion = serving_champion()
    served_by = champion[0] if champion else LOGGING_POLICY
    log.info("simulating %s served by %s", ds, f"champion {served_by} ({champion[1]})" if champion else served_by)
    extra = ["--serving", str(champion[1])] if champion else []
    # a child process in the project root: the Airflow worker's own directory stays as it is
    done = subprocess.run(stage_argv(RAW_LOGS_STAGE.name, ds, extra), cwd=PROJECT_ROOT,
                          env={**os.environ, **stage_env()}, check=False)
    if done.returncode != 0:
        raise RuntimeError("the simulator failed; see the log above")
    if not path.is_dir():
        raise FileNotFoundError(f"the simulator ran but wrote no partition for {ds}: is ds inside simulate.start_date + days?")
    return {"partition": str(path), "served_by": served_by}


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
