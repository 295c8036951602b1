"""
### RELATE daily retraining

For the run's `ds`: land the raw logs (the simulator, when it is the source), ingest them
with Spark, gate them with Great Expectations, retrain the reward models on the rolling
window ending at `ds` and score them against the oracle, retrain the policies (SFT, GRPO,
combo generator), evaluate, and publish through the gates. Every task runs the same
`python -m pipelines.<stage>` entry point as `dvc.yaml`; see `pipelines/orchestration.py`.

- A failed validation suite fails `data.validate` (no retries: it is a fact about the
  data); nothing downstream runs and nothing is published.
- A gate refusal marks `release.publish` **skipped** (pink): the champion stays, no
  published-model Asset event; `reports/publish.md` says which gate failed by how much.
- Every training and evaluation stage reads only partitions up to the run's `ds` (the end of
  its rolling window), so a backfill of a past day never sees a later day's logs.

Backfill (the DAG unpaused): `airflow backfill create --dag-id relate_daily --from-date 2026-01-04
--to-date 2026-01-10 --max-active-runs 1` (a backfill's run limit is its own, not the DAG's, and
the days share models/). Reprocessing a day (`--reprocess-behavior completed`) is idempotent:
each stage overwrites exactly the partitions it owns, training is seeded, and publishing the
same models again resolves to the same registry version (tests/test_airflow_live.py).
"""
from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import Asset, Param, dag, task, task_group

from pipelines.orchestration import (
    PROJECT_ROOT,
    PUBLISH_REFUSED_EXIT_CODE,
    ensure_raw_partition,
    on_publish_refused,
    on_task_failure,
    stage_command,
    stage_env,
)
from plumbing.paths import CURATED_TABLES as TABLE_NAMES

CURATED_TABLES = [Asset(name=f"relate_curated_{t}", uri=f"file://{PROJECT_ROOT}/data/curated/{t}")
                  for t in TABLE_NAMES]
VALIDATED_DAY = Asset(name="relate_validated_day", uri=f"file://{PROJECT_ROOT}/data/validation")
REWARD_MODELS = Asset(name="relate_reward_models", uri=f"file://{PROJECT_ROOT}/models")
PUBLISHED_MODEL = Asset(name="relate_published_model", uri=f"file://{PROJECT_ROOT}/registry/champion.json")

STAGE_TASK = dict(cwd=str(PROJECT_ROOT), env=stage_env(), append_env=True)
# RELATE_DAG_END_DATE: the last day the scheduler creates runs for, when the log source is finite
# (the simulator's range). Unpausing the DAG for a backfill then schedules no run for "today",
# which would compete with the backfill for the project's partitions.
END_DATE = os.environ.get("RELATE_DAG_END_DATE")


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
    @task_group(group_id="data")
    def data():
        @task
        def land_raw_logs(ds=None, params=None):
            return ensure_raw_partition(ds, params["source"])

        @task.bash(outlets=CURATED_TABLES, **STAGE_TASK)
        def ingest(ds=None):
            return stage_command("ingest", ds)

        # A failed gate is a fact about the data, not a transient error: no retries.
        @task.bash(outlets=[VALIDATED_DAY], retries=0, **STAGE_TASK)
        def validate(ds=None):
            return stage_command("validate", ds)

        land_raw_logs() >> ingest() >> validate()

    @task_group(group_id="reward_models")
    def reward_models():
        @task.bash(**STAGE_TASK)
        def train_ctcvr(ds=None):
            return stage_command("train_ctcvr", ds)

        @task.bash(**STAGE_TASK)
        def evaluate_ctcvr():
            return stage_command("evaluate_ctcvr")

        @task.bash(**STAGE_TASK)
        def train_attribution(ds=None):
            return stage_command("train_attribution", ds)

        @task.bash(outlets=[REWARD_MODELS], **STAGE_TASK)
        def evaluate_attribution():
            return stage_command("evaluate_attribution")

        train_ctcvr() >> evaluate_ctcvr()
        train_attribution() >> evaluate_attribution()

    @task_group(group_id="policies")
    def policies():
        @task.bash(**STAGE_TASK)
        def sft(ds=None):
            return stage_command("sft", ds)

        @task.bash(**STAGE_TASK)
        def grpo(ds=None):
            return stage_command("grpo", ds)

        @task.bash(**STAGE_TASK)
        def combo_policy(ds=None):
            return stage_command("combo_policy", ds)

        sft() >> grpo()
        combo_policy()

    @task_group(group_id="release")
    def release():
        # A refusal is a verdict, not a transient error: no retries, shown as skipped.
        @task.bash(outlets=[PUBLISHED_MODEL], retries=0, skip_on_exit_code=PUBLISH_REFUSED_EXIT_CODE,
                   on_skipped_callback=on_publish_refused, **STAGE_TASK)
        def publish(ds=None):
            return stage_command("publish", ds)

        @task.bash(**STAGE_TASK)
        def evaluate(ds=None):
            return stage_command("evaluate", ds)

        evaluate() >> publish()

    data() >> reward_models() >> policies() >> release()


relate_daily()
