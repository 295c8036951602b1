"""Command `closed_loop`: daily retraining as a closed loop on the drifting simulated market.

    python -m pipelines.closed_loop [--params params.yaml] [--arm all|logging|frozen|daily|daily_warm] [--days N]
                                    [--faults corrupt@DS,refuse@DS,kill@DS:STAGE]

Each day D runs simulate(D) -> ingest -> validate -> train -> evaluate -> publish, the stage
commands of pipelines/stages.py (the ones dvc.yaml and the Airflow DAG run): the simulator
serves the champion's published serving tables as of the start of D (registry/<version>/serving,
mixed with the logging policy's exploration), and reads nothing else of the pipeline. Days
0 .. warmup_days-2 are the warm-up (the logging policy serves; shared by every arm); from day
warmup_days-1 on each arm, in its own run directory `runs/loop_<params stem>/<arm>/` with the same
market and traffic seeds:
- `logging`: never trains; the logging policy serves every day;
- `frozen`: trains from the last warm-up day until the gates pass once; that champion serves to the end;
  (an arm that trains no more only simulates its days: nothing would read them landed, and the
  measurement reads what the simulator served)
- `daily`: trains in full and publishes (through the gates) every day but the last;
- `daily_warm`: as daily, its training warm-started from its champion (training.mode warm, with
  the cadence and forced-full rules of pipelines/warm_start.py).
A failed validation trains nothing that day (the champion keeps serving); a gate refusal keeps
the champion; a stage that dies is retried `closed_loop.retries` times. The loop resumes after
the last finished day when run again. Measured from the truth of what was served
(pipelines.closed_loop_metrics); the report (pipelines.closed_loop_report) goes to
metrics/closed_loop.json, plots/closed_loop/days.csv, plots/closed_loop/trajectories.png and
reports/closed_loop.md of the params file's run. docs/operations.md explains how to read them.

--faults injects faults (the reliability test; comma-separated): `corrupt@DS` garbles a share of
day DS's raw lines after it is simulated (the validation gate blocks the day), `refuse@DS` runs
that day's publish with a gate no model meets, `kill@DS:STAGE` SIGKILLs STAGE's first attempt
on DS once it has run `kill_after_s` seconds.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field

from pipelines.closed_loop_metrics import day_measurement
from pipelines.closed_loop_report import write_report
from pipelines.closed_loop_runner import DayRunner, Faults, Workspace
from pipelines.stages import STAGES
from plumbing.cli import StageContext, run_stage
from plumbing.config import load_params, project_root, require
from plumbing.dates import shift_ds
from plumbing.errors import ConfigError
from plumbing.logs import get_logger
from plumbing.paths import RUNS

log = get_logger("closed_loop")
ARMS = ("logging", "frozen", "daily", "daily_warm")
# training.mode of each arm's runs: only daily_warm continues from its champion (pipelines.warm_start)
ARM_TRAINING_MODE = {"daily_warm": "warm"}
WARMUP = "_warmup"


@dataclass
class ClosedLoopConfig:
    """The `closed_loop:` params section."""

    warmup_days: int  # days the logging policy serves before the first training (on the last of them)
    days: int  # days after the warm-up
    arms: list[str]
    retries: int  # extra attempts of a stage that fails or is killed
    kill_after_s: float  # --faults kill@: seconds the stage runs before it is killed
    corrupt_share: float  # --faults corrupt@: share of the day's raw lines garbled
    last_days: int  # the summary's window: the loop's last days
    distinct_sample: int  # served search impressions the day's distinct-2 is computed over
    seed: int  # that sample's draw

    def __post_init__(self) -> None:
        p = "closed_loop"

        require(self.days >= 1, f"{p}.days", f"must be >= 1, got {self.days}")
        unknown = sorted(set(self.arms) - set(ARMS))
        require(bool(self.arms) and not unknown, f"{p}.arms", f"must name arms among {ARMS}, got {self.arms}")
        require(self.retries >= 0, f"{p}.retries", f"must be >= 0, got {self.retries}")
        require(self.kill_after_s > 0, f"{p}.kill_after_s", f"must be > 0, got {self.kill_after_s}")
        require(0 < self.corrupt_share <= 1, f"{p}.corrupt_share", f"must be in (0, 1], got {self.corrupt_share}")
        require(1 <= self.last_days <= self.days, f"{p}.last_days",
                f"must be in [1, days={self.days}], got {self.last_days}")
        require(self.distinct_sample >= 2, f"{p}.distinct_sample", f"must be >= 2, got {self.distinct_sample}")

    @property
    def total_days(self) -> int:
        return self.warmup_days + self.days


@dataclass
class ArmPlan:
    """Which days an arm trains on (day indices from simulate.start_date)."""

    arm: str
    first_train: int
    last_train: int  # inclusive; -1 = never
    faults: Faults = field(default_factory=Faults)

    until_published: bool = False  # frozen: trains only until a champion is published

    @classmethod
    def of(cls, arm: str, cfg: ClosedLoopConfig, faults: Faults) -> "ArmPlan":
        last = -1 if arm == "logging" else cfg.total_days - 2  # the last day's models would never serve
        return cls(arm, cfg.warmup_days - 1, last, faults, until_published=arm == "frozen")

    def trains(self, day: int, has_champion: bool) -> bool:
        return self.first_train <= day <= self.last_train and not (self.until_published and has_champion)

    def lands(self, has_champion: bool) -> bool:
        """Whether a day is ingested and validated: not once the arm trains no more (logging; frozen after
        its champion), as nothing would read it; the measurement reads what the simulator served."""
        return self.last_train >= 0 and not (self.until_published and has_champion)


def main(argv: list[str] | None = None) -> int:
    return run_stage("closed_loop", __doc__, run, argv, ds=None, add_arguments=_arguments)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arm", default="all", help="an arm of closed_loop.arms, or all (default)")
    parser.add_argument("--days", type=int, default=None, help="days after the warm-up (default: closed_loop.days)")
    parser.add_argument("--faults", default="", help="faults to inject: corrupt@DS,refuse@DS,kill@DS:STAGE")


def run(ctx: StageContext) -> None:
    """Warm up once, run each arm day by day (resuming where it stopped), then write the report."""
    cfg = ctx.config(ClosedLoopConfig)
    if ctx.args.days is not None:
        cfg.days, cfg.last_days = ctx.args.days, min(cfg.last_days, max(ctx.args.days, 1))
        cfg.__post_init__()
    arms = cfg.arms if ctx.args.arm == "all" else [ctx.args.arm]
    if ctx.args.arm != "all" and ctx.args.arm not in cfg.arms:
        raise ConfigError(f"--arm {ctx.args.arm!r}: not one of closed_loop.arms {cfg.arms} (or all)")
    start = load_params(ctx.params)["simulate"]["start_date"]
    faults = Faults.parse(ctx.args.faults, start, cfg.total_days, {s.name for s in STAGES})
    project = project_root(ctx.params)
    home = project / RUNS / f"loop_{ctx.params.stem}"
    warm = Workspace.create(home / WARMUP, ctx.params, cfg.total_days)
    warm_up(DayRunner(warm, cfg, ArmPlan("logging", 0, -1, faults)), range(cfg.warmup_days - 1), start, cfg)
    records = {}
    for arm in arms:
        ws = Workspace.create(home / arm, ctx.params, cfg.total_days, seed_from=warm, mode=arm_mode(arm))
        records[arm] = run_days(DayRunner(ws, cfg, ArmPlan.of(arm, cfg, faults)), range(cfg.total_days), start, cfg)
    for arm in set(cfg.arms) - set(arms):  # arms run before (by another --arm) join the report
        if (home / arm).is_dir():
            records[arm] = Workspace.create(home / arm, ctx.params, cfg.total_days, mode=arm_mode(arm)).records()
    shown = ctx.params.relative_to(project) if ctx.params.is_relative_to(project) else ctx.params
    summary = write_report(records, cfg, shown)
    log.info("closed loop done: %s", summary["headline"])


def arm_mode(arm: str) -> str:
    """The arm's training.mode: a daily full retrain unless the arm says warm."""
    return ARM_TRAINING_MODE.get(arm, "full")


def warm_up(runner: DayRunner, days, start: str, cfg: ClosedLoopConfig) -> None:
    """The shared warm-up days not yet recorded, simulated one by one, ingested and validated at once."""
    done = {r["day"] for r in runner.ws.records()}
    todo = [(d, shift_ds(start, d)) for d in days if d not in done]
    t0 = time.monotonic()
    for record in runner.warm_up(todo):
        record["measure"] = day_measurement(runner.ws.root, record["ds"], cfg.distinct_sample, cfg.seed)
        record["seconds"] = round((time.monotonic() - t0) / len(todo), 1)
        runner.ws.append(record)
    if todo:
        log.info("warm-up: %d days simulated, ingested and validated in %.0fs", len(todo), time.monotonic() - t0)


def run_days(runner: DayRunner, days, start: str, cfg: ClosedLoopConfig) -> list[dict]:
    """Run the days not yet recorded in the runner's workspace, in order; return every record."""
    done = {r["day"] for r in runner.ws.records()}
    for day in days:
        if day in done:
            continue
        t0 = time.monotonic()
        record = runner.run_day(day, shift_ds(start, day))
        record["measure"] = day_measurement(runner.ws.root, record["ds"], cfg.distinct_sample, cfg.seed)
        record["seconds"] = round(time.monotonic() - t0, 1)
        runner.ws.append(record)
        search = record["measure"]["search"]
        log.info("%s %s (day %d/%d): served by %s, search true CTCVR %.5f, champion share %.2f; %s; %.0fs",
                 runner.plan.arm, record["ds"], day + 1, cfg.total_days, record["served_by"] or "logging policy",
                 search["true_ctcvr"], search["champion_share"], record["verdict"], record["seconds"])
    return runner.ws.records()


if __name__ == "__main__":
    sys.exit(main())
