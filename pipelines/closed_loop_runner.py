"""One arm's day of the closed loop: its run directory, the stage commands, retries and faults.

A `Workspace` is a run directory of its own (a params.yaml that extends the loop's params file,
so plumbing.paths puts data/, models/, registry/ ... under it). `DayRunner.run_day` runs one day's
stage commands there, as subprocesses (the commands dvc.yaml and the Airflow DAG run), retrying a
stage that dies. Nothing here reads the simulator's truth (pipelines.closed_loop_metrics does).
"""
from __future__ import annotations

import gzip
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from pipelines.orchestration import stage_argv, stage_env
from pipelines.publish_registry import VALIDATED_MARKER, champion_serving, read_json, serving_folder
from pipelines.stages import PUBLISH_REFUSED_EXIT_CODE, STAGES, VALIDATION_FAILED_EXIT_CODE
from pipelines.stages import stage as stage_row
from plumbing import atomic
from plumbing.cli import EXPECTED_FAILURE_EXIT_CODE
from plumbing.config import load_params
from plumbing.dates import ds_range, shift_ds
from plumbing.errors import ConfigError, StageError
from plumbing.logs import get_logger
from plumbing.paths import METRICS, RAW_EVENTS, partition

log = get_logger("closed_loop")
DATA_STAGES = ("simulate", "ingest", "ingest_elements", "validate")
# the gate a refuse@ fault sets: no model's compliance rate reaches it
REFUSE_FAULT = {"publish": {"min_compliance_rate": 1.5}}


@dataclass
class Faults:
    """Faults to inject by day (see pipelines.closed_loop's --faults)."""

    corrupt: set[str] = field(default_factory=set)
    refuse: set[str] = field(default_factory=set)
    kill: dict[str, str] = field(default_factory=dict)  # ds -> stage

    @classmethod
    def parse(cls, spec: str, start: str, total_days: int, stages: set[str]) -> "Faults":
        faults, days = cls(), set(ds_range(start, shift_ds(start, total_days - 1)))
        for item in filter(None, (s.strip() for s in spec.split(","))):
            kind, _, target = item.partition("@")
            ds, _, stage = target.partition(":")
            if kind not in ("corrupt", "refuse", "kill") or ds not in days:
                raise ConfigError(f"--faults {item!r}: expected corrupt@DS, refuse@DS or kill@DS:STAGE with DS "
                                  f"in {start} .. {shift_ds(start, total_days - 1)}")
            if kind == "kill":
                if stage not in stages:
                    raise ConfigError(f"--faults {item!r}: STAGE must be one of {sorted(stages)}")
                faults.kill[ds] = stage
            else:
                getattr(faults, kind).add(ds)
        return faults


@dataclass
class Workspace:
    """An arm's run directory: params.yaml (extends the loop's params), its data, models, registry and records."""

    root: Path
    base_params: Path
    total_days: int
    mode: str = "full"  # training.mode of the arm's runs

    @classmethod
    def create(cls, root: Path, base_params: Path, total_days: int, seed_from: "Workspace | None" = None,
               mode: str = "full"):
        """The workspace at `root`, made (from a copy of `seed_from` when given) if it does not exist yet."""
        if not root.is_dir():
            if seed_from is not None:
                tmp = root.with_name(f".{root.name}.copying")
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(seed_from.root, tmp, symlinks=True)
                tmp.rename(root)
            root.mkdir(parents=True, exist_ok=True)
        ws = cls(root, Path(base_params).resolve(), total_days, mode)
        ws.write_params()  # always: also heals a refuse@ fault a killed run left in place
        return ws

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    def write_params(self, extra: dict | None = None) -> None:
        params = {"extends": str(self.base_params), "simulate": {"days": self.total_days},
                  "training": {"mode": self.mode}, **(extra or {})}
        atomic.write_text(self.params, yaml.safe_dump(params, sort_keys=False))

    def records(self) -> list[dict]:
        return read_json(self.root / "loop" / "records.json") or []

    def append(self, record: dict) -> None:
        atomic.write_json(self.root / "loop" / "records.json", self.records() + [atomic.undefined_as_null(record)])

    @property
    def registry(self) -> Path:
        return self.root / load_params(self.params)["publish"]["registry_dir"]

    def champion(self) -> tuple[str, Path] | None:
        return champion_serving(self.registry)


class DayRunner:
    """Runs one arm's days in its workspace (pipelines.closed_loop.ArmPlan decides the training days)."""

    def __init__(self, ws: Workspace, cfg, plan):
        self.ws, self.cfg, self.plan = ws, cfg, plan

    def run_day(self, day: int, ds: str) -> dict:
        """Day `ds`: simulate it served by the current champion, land and gate it, and on a training day
        retrain and publish. Returns the day's record (measurements are added by the caller)."""
        served = self.serving_for(ds)
        rec = {"arm": self.plan.arm, "day": day, "ds": ds, "served_by": served[0] if served else None,
               "trained": False, "published": None, "stage_seconds": {}, "attempts": {}, "faults": []}
        self.stage("simulate", ds, rec, extra=["--serving", str(served[1])] if served else [])
        if ds in self.plan.faults.corrupt:
            rec["faults"].append(f"corrupt: {corrupt_partition(self.ws.root, ds, self.cfg.corrupt_share)} lines")
        has_champion = served is not None or self.ws.champion() is not None
        if not self.plan.lands(has_champion):
            rec["verdict"] = "not landed: the arm trains no more"
        else:
            self.land_and_train(day, ds, rec, has_champion)
        champion = self.ws.champion()
        rec["champion_after"] = champion[0] if champion else None
        return rec

    def land_and_train(self, day: int, ds: str, rec: dict, has_champion: bool) -> None:
        """Ingest and validate the day; on a training day that passed, retrain and publish."""
        self.stage("ingest", ds, rec)
        self.stage("ingest_elements", ds, rec)
        rec["validated"] = self.stage("validate", ds, rec, allowed={VALIDATION_FAILED_EXIT_CODE}) == 0
        if not rec["validated"]:
            rec["verdict"] = "validation failed: nothing trained, the champion keeps serving"
        elif self.plan.trains(day, has_champion):
            self.train_and_publish(ds, rec)
        else:
            rec["verdict"] = "no training on this day"

    def warm_up(self, days: list[tuple[int, str]]) -> list[dict]:
        """The warm-up days at once (the logging policy serves): each simulated, then one ingest and one
        validation over all of them (one Spark session, as `dvc repro` runs them). Their records."""
        recs = []
        for day, ds in days:
            rec = {"arm": "warmup", "day": day, "ds": ds, "served_by": None, "trained": False, "published": None,
                   "stage_seconds": {}, "attempts": {}, "faults": [], "verdict": "warm-up"}
            self.stage("simulate", ds, rec)
            recs.append(rec)
        if recs:
            batch = {"stage_seconds": {}, "attempts": {}, "faults": []}
            self.stage("ingest", None, batch, extra=["--all"])
            self.stage("ingest_elements", None, batch, extra=["--all"])
            self.stage("validate", None, batch, extra=["--all"], allowed={VALIDATION_FAILED_EXIT_CODE})
            passed = set((self.ws.root / VALIDATED_MARKER).read_text().split()) if \
                (self.ws.root / VALIDATED_MARKER).is_file() else set()
            for rec in recs:  # the batch's time, shared evenly
                rec["stage_seconds"].update({k: round(v / len(recs), 1) for k, v in batch["stage_seconds"].items()})
                rec["validated"] = rec["ds"] in passed
        return recs

    def serving_for(self, ds: str) -> tuple[str, Path] | None:
        """The champion as of the start of `ds`, fixed when the day starts (a resumed day serves the same)."""
        marker = self.ws.root / "loop" / "day_started.json"
        started = read_json(marker)
        if started and started["ds"] == ds:
            version = started["served_by"]
            return (version, serving_folder(self.ws.registry, version)) if version else None
        served = self.ws.champion()
        atomic.write_json(marker, {"ds": ds, "served_by": served[0] if served else None})
        return served

    def train_and_publish(self, ds: str, rec: dict) -> None:
        rec["trained"] = True
        for row in STAGES:
            if row.name in DATA_STAGES or row.name == "publish":
                continue
            self.stage(row.name, ds, rec)
        refuse = ds in self.plan.faults.refuse
        if refuse:
            rec["faults"].append("refuse: publish ran with a gate no model meets")
            self.ws.write_params(REFUSE_FAULT)
        try:
            self.stage("publish", ds, rec, allowed={PUBLISH_REFUSED_EXIT_CODE})
        finally:
            if refuse:
                self.ws.write_params()
        report = read_json(self.ws.root / METRICS / "publish.json") or {}
        rec["published"] = bool(report.get("published")) and report.get("ds") == ds
        rec["refused_gates"] = report.get("failed_gates", [])
        rec["verdict"] = (f"published {report['version']}" if rec["published"]
                          else f"publish refused ({', '.join(rec['refused_gates'])}): the champion stays")

    def stage(self, name: str, ds: str | None, rec: dict, extra: list[str] = (),
              allowed: set[int] = frozenset()) -> int:
        """Run one stage command for `ds`, retrying a failure; its exit code (0 or one of `allowed`)."""
        argv = stage_argv(name, ds) if ds else [sys.executable, "-m", stage_row(name).module]  # a batch (--all)
        argv += ["--params", str(self.ws.params), *extra]
        logfile = self.ws.root / "logs" / (ds or "batch") / f"{name}.log"
        logfile.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, self.cfg.retries + 2):
            kill = attempt == 1 and self.plan.faults.kill.get(ds) == name
            code, seconds, killed = spawn(argv, logfile, self.cfg.kill_after_s if kill else None)
            if killed:
                rec["faults"].append(f"kill: {name} SIGKILLed after {seconds:.1f}s")
            elif kill:
                rec["faults"].append(f"kill missed: {name} ended in {seconds:.1f}s, before kill_after_s")
            if code == 0 or code in allowed:
                rec["stage_seconds"][name] = round(seconds, 1)
                rec["attempts"][name] = attempt
                return code
            if code == EXPECTED_FAILURE_EXIT_CODE:  # bad config or input: a retry would fail the same way
                break
            log.warning("%s %s: %s exited %s (attempt %d of %d); log: %s", self.plan.arm, ds, name, code, attempt,
                        self.cfg.retries + 1, logfile)
        raise StageError(f"{self.plan.arm} {ds}: {name} failed (exit {code}, attempt {attempt}); see {logfile}")


def spawn(argv: list[str], logfile: Path, kill_after_s: float | None) -> tuple[int, float, bool]:
    """Run `argv` (output appended to `logfile`); SIGKILL its process group after `kill_after_s` if given."""
    t0 = time.monotonic()
    with open(logfile, "a", encoding="utf-8") as out:
        out.write(f"\n$ {' '.join(argv)}\n")
        out.flush()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **stage_env()},
                                start_new_session=True)
        killed = False
        if kill_after_s is not None:
            try:
                proc.wait(timeout=kill_after_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
        code = proc.wait()
    return code, time.monotonic() - t0, killed


def corrupt_partition(root: Path, ds: str, share: float) -> int:
    """Garble (truncate) about `share` of day `ds`'s raw lines, file by file, written aside then renamed."""
    folder = root / partition(RAW_EVENTS, ds)
    rng, garbled = np.random.default_rng([int(x) for x in ds.split("-")]), 0
    for path in sorted(folder.glob("*.jsonl.gz")):
        lines = gzip.decompress(path.read_bytes()).decode("utf-8").splitlines()
        hit = rng.random(len(lines)) < share
        lines = [line[: len(line) // 2] if h else line for line, h in zip(lines, hit)]
        garbled += int(hit.sum())
        atomic.write_bytes(path, gzip.compress(("\n".join(lines) + "\n").encode("utf-8"), mtime=0))
    if not garbled:
        raise StageError(f"corrupt@{ds}: no raw lines under {folder} to garble")
    return garbled
