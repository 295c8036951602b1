"""The one table of the pipeline's stages, in run order.

`dvc.yaml` runs these stages (tests/test_stage_table.py checks that it agrees), the Airflow
DAG `dags/relate_daily.py` builds one task per row, and `pipelines.orchestration` turns a
row and a run's day into the task's command. Each stage is `python -m pipelines.<name>`.

Kept free of imports beyond the standard library: the DAG file imports it at every parse.
"""
from __future__ import annotations

from dataclasses import dataclass

# publish exits with this when a gate refuses the models; the Airflow task maps it to
# "skipped" (visible in the grid, no retries, no published-model Asset event).
PUBLISH_REFUSED_EXIT_CODE = 99
# validate exits with this when a day fails its expectations: a verdict on the data (no retry).
VALIDATION_FAILED_EXIT_CODE = 1


@dataclass(frozen=True)
class Stage:
    """One stage: how dvc runs it and how the DAG runs it for a day.

    ds: how the stage reads the run's day, which the DAG passes as `--ds`: "partition" (the
    one day it processes), "as_of" (the end of the rolling window it reads: no partition
    after it, so a backfill of a past day sees what that day would have), or None (no
    `--ds`: the evaluate_* reward-model stages score the models their train_* stage just
    wrote, whose metadata names the days they were trained on). `dvc repro` passes no
    `--ds`: every stage then reads every partition (`dvc_args` adds `--all` where a stage
    wants it said).
    """

    name: str
    group: str  # the Airflow task group
    ds: str | None = None
    upstream: tuple[str, ...] = ()  # stages of the same group that finish first
    dvc_args: tuple[str, ...] = ()  # what dvc.yaml's cmd adds to `python -m pipelines.<name>`
    retries: bool = True  # False: a failure is a verdict on the data or models, not transient
    outlet: str | None = None  # the Airflow Asset the task updates
    refused_exit_code: int | None = None  # exit code of a gate refusal: the task is skipped
    task: str = ""  # the Airflow task id, when not the stage's name

    @property
    def module(self) -> str:
        return f"pipelines.{self.name}"

    @property
    def task_id(self) -> str:
        return self.task or self.name

    @property
    def lands_raw_logs(self) -> bool:
        """The DAG runs this stage only to land a day's missing raw logs (the simulator)."""
        return self.task == LAND_RAW_LOGS


LAND_RAW_LOGS = "land_raw_logs"

STAGES: tuple[Stage, ...] = (
    # Airflow lands the day's raw logs instead: it runs the simulator when that is the source
    # and the day is missing; with real logs a missing day fails the run.
    Stage("simulate", "data", ds="partition", task=LAND_RAW_LOGS),
    Stage("ingest", "data", ds="partition", upstream=("simulate",), dvc_args=("--all",), outlet="relate_curated"),
    Stage("ingest_elements", "data", ds="partition", upstream=("simulate",), dvc_args=("--all",)),
    Stage("validate", "data", ds="partition", upstream=("ingest", "ingest_elements"), dvc_args=("--all",), retries=False,
          outlet="relate_validated_day"),
    Stage("train_ctcvr", "reward_models", ds="as_of"),
    Stage("evaluate_ctcvr", "reward_models", upstream=("train_ctcvr",)),
    Stage("train_attribution", "reward_models", ds="as_of", upstream=("train_ctcvr",)),  # the shared tokenizer
    Stage("evaluate_attribution", "reward_models", upstream=("train_attribution",), outlet="relate_reward_models"),
    Stage("sft", "policies", ds="as_of"),
    Stage("grpo", "policies", ds="as_of", upstream=("sft",)),
    Stage("combo_policy", "policies", ds="as_of"),
    # serving_tables samples the day's pools once; evaluate's `relate` arm serves them
    Stage("serving_tables", "release", ds="as_of"),
    Stage("evaluate", "release", ds="as_of", upstream=("serving_tables",)),
    Stage("publish", "release", ds="partition", upstream=("evaluate", "serving_tables"), retries=False,
          outlet="relate_published_model", refused_exit_code=PUBLISH_REFUSED_EXIT_CODE),
)
BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}
RAW_LOGS_STAGE: Stage = next(s for s in STAGES if s.lands_raw_logs)


def stage(name: str) -> Stage:
    """The table's row for a stage name."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; known: {', '.join(BY_NAME)}") from None


def groups() -> list[tuple[str, list[Stage]]]:
    """The Airflow task groups in run order, each with its stages; each group runs after the one before."""
    ordered: dict[str, list[Stage]] = {}
    for s in STAGES:
        ordered.setdefault(s.group, []).append(s)
    return list(ordered.items())


def ancestors(name: str) -> set[str]:
    """Every stage that finishes before `name` in a DAG run: its upstream and every earlier group."""
    order = [g for g, _ in groups()]
    row = stage(name)
    before = {s.name for s in STAGES if order.index(s.group) < order.index(row.group)}
    todo = list(row.upstream)
    while todo:
        up = todo.pop()
        if up not in before:
            before.add(up)
            todo.extend(stage(up).upstream)
    return before
