"""
### RELATE daily retraining

For the run's `ds`: land the raw logs (the simulator, when it is the source), ingest them
with Spark, gate them with Great Expectations, then retrain the reward models on the
rolling window ending at `ds` and score them against the oracle. Every task runs the
same `python -m pipelines.<stage>` entry point as `dvc.yaml`; see `pipelines/orchestration.py`.

Backfill: `airflow backfill create --dag-id relate_daily --from-date 2026-01-04 --to-date 2026-01-10`.
Re-running a day is idempotent: each stage overwrites exactly the partitions it owns.
"""
from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Asset, Param, dag, task, task_group

from pipelines.orchestration import PROJECT_ROOT, ensure_raw_partition, on_task_failure, stage_command, stage_env

CURATED_TABLES = Asset(name="relate_curated_tables", uri=f"file://{PROJECT_ROOT}/data/curated")
VALIDATED_DAY = Asset(name="relate_validated_day", uri=f"file://{PROJECT_ROOT}/data/validation")
REWARD_MODELS = Asset(name="relate_reward_models", uri=f"file://{PROJECT_ROOT}/models")

STAGE_TASK = dict(cwd=str(PROJECT_ROOT), env=stage_env(), append_env=True)


@dag(
    dag_id="relate_daily",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["relate", "retraining"],
    doc_md=__doc__,
    params={"source": Param("simulator", enum=["simulator", "logs"], description="where raw logs come from")},
    default_args={
        "owner": "relate",
        "retries": 2,
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=20),
        "on_failure_callback": on_task_failure,
    },
)
def relate_daily():
    @task_group(group_id="data")
    def data():
        @task
        def land_raw_logs(ds=None, params=None):
            return ensure_raw_partition(ds, params["source"])

        @task.bash(outlets=[CURATED_TABLES], **STAGE_TASK)
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

    data() >> reward_models()


relate_daily()
