"""
### RELATE daily retraining

For the run's `ds`: land the raw logs (the simulator, when it is the source, serving the
champion in service at the start of `ds`: the published serving tables, or the logging policy
before the first champion; the task's XCom `served_by` says which), ingest them
with Spark, gate them with Great Expectations, retrain the reward models on the rolling
window ending at `ds` and score them against the oracle, retrain the policies (SFT, GRPO,
combo generator), evaluate, and publish through the gates. The tasks, their groups and their
order are the rows of the stage table `pipelines/stages.py`, which `dvc.yaml` follows too: every
task runs the same `python -m pipelines.<stage>` entry point; see `pipelines/orchestration.py`.

- A failed validation suite fails `data.validate` (no retries: it is a fact about the
  data); nothing downstream runs and nothing is published.
- A gate refusal marks `release.publish` **skipped** (pink): the champion stays, no
  published-model Asset event; `reports/publish.md` says which gate failed by how much.
- Every training and evaluation stage reads only partitions up to the run's `ds` (the end of
  its rolling window), so a backfill of a past day never sees a later day's logs.

Backfill (the DAG unpaused): `airflow backfill create --dag-id relate_daily --from-date 2026-01-04
--to-date 2026-01-10 --max-active-runs 1` (a backfill's run limit is its own, not the DAG's, and
the days share models/), or in the UI: Trigger -> Backfill. A missing day is simulated with the
champion the days before it left in service, so a backfill over N days is the closed loop.
Reprocessing a day (`--reprocess-behavior completed`) is idempotent: its raw logs are not
simulated again, each stage overwrites exactly the partitions it owns, training is seeded, and publishing the
same models again resolves to the same registry version (tests/test_airflow_live.py).
"""
from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import Asset, Param, TaskGroup, dag, task

from pipelines.orchestration import (
    PROJECT_ROOT,
    ensure_raw_partition,
    on_publish_refused,
    on_task_failure,
    stage_command,
    stage_env,
)
from pipelines.stages import Stage, groups
from plumbing.paths import CURATED_TABLES as TABLE_NAMES

# the Assets the table's `outlet`s name
OUTLETS = {
    "relate_curated": [Asset(name=f"relate_curated_{t}", uri=f"file://{PROJECT_ROOT}/data/curated/{t}")
                       for t in TABLE_NAMES],
    "relate_validated_day": [Asset(name="relate_validated_day", uri=f"file://{PROJECT_ROOT}/data/validation")],
    "relate_reward_models": [Asset(name="relate_reward_models", uri=f"file://{PROJECT_ROOT}/models")],
    "relate_published_model": [Asset(name="relate_published_model",
                                     uri=f"file://{PROJECT_ROOT}/registry/champion.json")],
}
STAGE_TASK = dict(cwd=str(PROJECT_ROOT), env=stage_env(), append_env=True)
# RELATE_DAG_END_DATE: the last day the scheduler creates runs for, when the log source is finite
# (the simulator's range). Unpausing the DAG for a backfill then schedules no run for "today",
# which would compete with the backfill for the project's partitions.
END_DATE = os.environ.get("RELATE_DAG_END_DATE")


def land_raw_logs_task(row: Stage):
    """The day's raw logs: there already, or the simulator's (the current champion serving) when it is the source."""

    @task(task_id=row.task_id)
    def land_raw_logs(ds=None, params=None):
        return ensure_raw_partition(ds, params["source"])

    return land_raw_logs()


def stage_task(row: Stage):
    """One bash task running the stage's command for the run's ds."""
    options = dict(STAGE_TASK, outlets=OUTLETS[row.outlet] if row.outlet else [])
    if not row.retries:  # a failed gate or a refusal is a verdict, not a transient error
        options["retries"] = 0
    if row.refused_exit_code is not None:  # a refusal shows as skipped: no retries, no Asset event
        options.update(skip_on_exit_code=row.refused_exit_code, on_skipped_callback=on_publish_refused)

    @task.bash(task_id=row.task_id, **options)
    def command(ds=None):
        return stage_command(row.name, ds)

    return command()


@dag(
    dag_id="relate_daily",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    end_date=pendulum.parse(END_DATE, tz="UTC") if END_DATE else None,
    catchup=False,
    max_active_runs=1,
    max_active_tasks=2,  # Spark and torch each want the machine's cores
    tags=["relate", "retraining"],
    doc_md=__doc__,
    params={"source": Param("simulator", enum=["simulator", "logs"], description="where raw logs come from")},
    default_args={
        "owner": "relate",
        # RELATE_DAG_RETRIES: tests running dag.test() set 0, so a broken stage fails fast
        "retries": int(os.environ.get("RELATE_DAG_RETRIES", "2")),
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=20),
        "execution_timeout": timedelta(hours=6),
        "on_failure_callback": on_task_failure,
    },
)
def relate_daily():
    """One task group per group of the stage table, each after the one before."""
    previous = None
    for group_id, rows in groups():
        with TaskGroup(group_id=group_id) as group:
            tasks = {}
            for row in rows:
                tasks[row.name] = land_raw_logs_task(row) if row.lands_raw_logs else stage_task(row)
                for up in row.upstream:
                    tasks[up] >> tasks[row.name]
        if previous is not None:
            previous >> group
        previous = group


relate_daily()
