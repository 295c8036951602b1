"""Stage `publish`: gate the run's models, then register one versioned artifact set with DVC.

    python -m pipelines.publish --ds 2026-01-07 [--params params.yaml] [--refused-exit-code 99]
    python -m pipelines.publish --rollback [--to VERSION]

Gates (thresholds in the `publish:` params section; `null` turns one off): each gated
metric must reach its minimum, and must not fall more than `max_regression` below the
current champion's value on the same evaluation day (one number for every gate, or a mapping
gate name -> allowed drop, so that each gate tolerates its own run-to-run noise): when the champion was evaluated on
another day, its artifacts are scored again on the candidate's data
(`pipelines.evaluate_champion`, every gate; a champion that cannot be scored again
compares with its recorded values, and the report says which). On pass, `registry/<version>/` gets the policy (save_pretrained,
with its tokenizer), the shared tokenizer, the CTCVR and MIL models, the combo generator,
the evaluation metrics, MODEL_CARD.md and manifest.json (data partitions, git revision,
params hash, metrics); it is `dvc add`-ed and pushed to the DVC remote `remote_url`
(a local directory by default; `s3://...` or `gs://...` with dvc-s3 / dvc-gs installed and
the usual cloud credentials), and `registry/champion.json` moves to it atomically.
On refusal nothing is written under registry/ and the champion stays.

Before any gate it verifies (exit 2 otherwise, nothing written): the day was validated
(data/validation/_SUCCESS lists it) and has curated data; no model was trained on data after
it; `registry_dir` lies inside the project and is no system path; `champion.json` fits its
schema (a malformed one is refused and left as it is); `--to` is a registry version, given
with `--rollback`. docs/operations.md "What publish verifies" lists each check.
Either way reports/publish.md and metrics/publish.json say which gate passed or failed and
by how much.

Exit codes: 0 published, or refused by a gate (a verdict, not a crash: dvc repro goes on
and metrics/publish.json says `published: false`); `--refused-exit-code N` makes a refusal
exit N instead (the Airflow task uses it to show the run as skipped); 2 bad config or
input, or a failed DVC command.

The version is `<ds>-<content hash>`: a rerun of the same day with the same models is
the same version, so publishing is idempotent.

Layout: the gates are pipelines.publish_gates, the registry (versions, hashing, locking, DVC,
the champion pointer, rollback) pipelines.publish_registry, the model card and the report
pipelines.publish_card; this module is the stage's config and its linear run.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from pipelines.publish_card import fmt, model_card, publish_report
from pipelines.publish_gates import (GATES, artifact_rows, candidate_metrics, champion_on_candidate_day, check_gates,
                                     eval_day, eval_serving, stale_champion, verify_day)
from pipelines.publish_registry import (ARTIFACTS, check_registry_dir, data_partitions, git_revision,
                                        missing_artifacts, params_hash, promote, read_champion, register,
                                        registry_lock, rollback, stage_version, track_and_push)
from pipelines.warm_start import read_lineage
from plumbing import atomic
from plumbing.cli import StageContext, run_stage
from plumbing.config import ConfigError, require
from plumbing.dates import parse_ds
from plumbing.logs import get_logger
from plumbing.paths import METRICS, REPORTS, curated, partitions

log = get_logger(__name__)

SECTION = "publish"
REPORT = REPORTS / "publish.md"
METRICS_FILE = METRICS / "publish.json"


@dataclass
class PublishConfig:
    """The `publish:` params section."""

    registry_dir: str
    remote_name: str
    remote_url: str  # relative paths: to the project root
    push: bool
    artifacts: list[str]
    min_true_ctcvr_uplift_vs_sft: float | None
    min_true_ctcvr_uplift_vs_logged: float | None
    min_compliance_rate: float | None
    min_combo_ratio_to_oracle: float | None
    min_ctcvr_auc_ratio: float | None
    min_attribution_auc_ratio: float | None
    # allowed drop below the champion: one number for every gate, or gate name -> number (a gate
    # left out, or null, is not compared); null: no comparison at all
    max_regression: float | dict[str, float | None] | None
    # a champion that has served this many days sets no no-regression bar (null: it always does)
    champion_max_age_days: int | None

    def __post_init__(self) -> None:
        p = SECTION
        require(bool(self.registry_dir.strip()), f"{p}.registry_dir", "must not be empty")
        check_registry_dir(self.registry_dir)  # inside the project, or absolute and no system path
        require(bool(self.remote_name.strip()) and " " not in self.remote_name, f"{p}.remote_name",
                f"must be a non-empty name without spaces, got {self.remote_name!r}")
        require(bool(self.remote_url.strip()), f"{p}.remote_url", "must not be empty")
        unknown = sorted(set(self.artifacts) - set(ARTIFACTS))
        require(not unknown, f"{p}.artifacts", f"unknown artifact(s) {unknown}; known: {', '.join(ARTIFACTS)}")
        require(len(self.artifacts) > 0, f"{p}.artifacts", "must name at least one artifact")
        for name in ("min_compliance_rate", "min_combo_ratio_to_oracle", "min_ctcvr_auc_ratio",
                     "min_attribution_auc_ratio"):
            value = getattr(self, name)
            require(value is None or 0 <= value <= 1.5, f"{p}.{name}", f"must be in [0, 1.5] or null, got {value}")
        age = self.champion_max_age_days
        require(age is None or (isinstance(age, int) and not isinstance(age, bool) and age >= 1),
                f"{p}.champion_max_age_days", f"must be an integer >= 1 or null, got {age!r}")
        if isinstance(self.max_regression, dict):
            unknown = sorted(set(self.max_regression) - {g.name for g in GATES})
            require(not unknown, f"{p}.max_regression", f"unknown gate(s) {unknown}; known: "
                    f"{', '.join(g.name for g in GATES)}")
            for name, drop in self.max_regression.items():
                require(drop is None or (isinstance(drop, (int, float)) and not isinstance(drop, bool) and drop >= 0),
                        f"{p}.max_regression.{name}", f"must be a number >= 0 or null, got {drop!r}")
        else:
            require(self.max_regression is None or self.max_regression >= 0, f"{p}.max_regression",
                    f"must be >= 0, a mapping gate -> number, or null, got {self.max_regression}")

    def allowed_drop(self, gate: str) -> float | None:
        """How far `gate` may fall below the champion; None: not compared."""
        if isinstance(self.max_regression, dict):
            drop = self.max_regression.get(gate)
            return None if drop is None else float(drop)
        return self.max_regression

    @property
    def compares_with_champion(self) -> bool:
        return any(self.allowed_drop(g.name) is not None for g in GATES)

    def remote_location(self, root: Path) -> str:
        if "://" in self.remote_url:
            return self.remote_url
        return str((root / self.remote_url).resolve())


def latest_ingested_day() -> str:
    """The version's day when no --ds is given (dvc repro): the newest curated partition."""
    days = partitions(curated("labeled_impressions"))
    if not days:
        raise ConfigError("no --ds given and no curated partitions to take the day from")
    return days[-1]


def publish(ds: str, cfg: PublishConfig, params_file: Path, root: Path | None = None) -> dict:
    """Verify the day, gate, and on pass register and promote. Returns the publish report (also written)."""
    root = (root or Path.cwd()).resolve()
    registry = check_registry_dir(cfg.registry_dir, root)
    verified = verify_day(ds)
    with registry_lock(registry):
        champion = read_champion(registry)  # a malformed champion.json is refused here, before anything is written
        values = candidate_metrics()
        day, serving = eval_day(), eval_serving()
        stale = stale_champion(cfg, champion, ds)
        rescored, champion_source = champion_on_candidate_day(cfg, champion, day, ds, params_file, serving, stale)
        gates = (check_gates(cfg, values, day, champion, rescored, stale)
                 + artifact_rows(missing_artifacts(cfg.artifacts)))
        failed = [g for g in gates if not g["passed"]]
        report = {"ds": ds, "eval_day": day, "published": False, "version": None, "gates": gates,
                  "failed_gates": [g["gate"] for g in failed], "candidate_metrics": values,
                  "champion_before": champion.get("version") if champion else None,
                  "champion_metrics_source": champion_source, "champion_rescored_metrics": rescored,
                  "verified": verified}
        if failed:
            report["champion_after"] = report["champion_before"]
            return report
        version = release(cfg, ds, params_file, root, champion, values, gates, day, serving)
        report.update(published=True, version=version, champion_after=version,
                      remote=cfg.remote_location(root) if cfg.push else None)
        return report


def release(cfg: PublishConfig, ds: str, params_file: Path, root: Path, champion: dict | None,
            values: dict, gates: list[dict], day: str | None, serving: dict | None) -> str:
    """Register the gated artifact set as a version, track and push it, make it the champion."""
    registry = Path(cfg.registry_dir)
    candidate, digest, evaluation = stage_version(registry, ds, cfg.artifacts)
    version = f"{ds}-{digest[:10]}"
    manifest = {
        "version": version, "ds": ds, "eval_day": day, "serving": serving, "content_sha256": digest,
        "artifacts": {n: str(ARTIFACTS[n]) for n in cfg.artifacts},
        "data": data_partitions(ds), "git": git_revision(root),
        "params_file": str(params_file), "params_sha256": params_hash(params_file),
        "metrics": values, "gates": gates, "evaluation": evaluation, "lineage": artifact_lineage(cfg.artifacts),
    }
    version_dir = register(registry, candidate, version, manifest, model_card(manifest, gates, evaluation))
    track_and_push(root, cfg, root / version_dir)
    promote(registry, champion, version, {"ds": ds, "eval_day": day, "serving": serving, "metrics": values})
    return version


def artifact_lineage(artifacts: list[str]) -> dict:
    """Artifact -> how its model was trained (full or warm, from which version), for those that record it."""
    found = {name: read_lineage(ARTIFACTS[name]) for name in artifacts}
    return {name: lineage for name, lineage in found.items() if lineage is not None}


def write_report(report: dict) -> None:
    atomic.write_json(METRICS_FILE, report)
    atomic.write_text(REPORT, publish_report(report))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rollback", action="store_true", help="move the champion back to the previous version")
    parser.add_argument("--to", help="with --rollback: the version to point the champion at")
    parser.add_argument("--refused-exit-code", type=int, default=0,
                        help="exit code when a gate refuses (default 0; Airflow uses 99 to mark the task skipped)")


def main(argv: list[str] | None = None) -> int:
    return run_stage("publish", __doc__, run, argv, ds="partition", add_arguments=add_arguments)


def run(ctx: StageContext) -> int:
    """Roll back, or gate this run's models and publish them; a refusal exits --refused-exit-code."""
    cfg = ctx.config(PublishConfig, SECTION)
    root = Path.cwd()
    if ctx.args.to is not None and not ctx.args.rollback:
        raise ConfigError(f"--to {ctx.args.to!r} is only meaningful with --rollback; nothing published or rolled back")
    if ctx.args.rollback:
        if ctx.ds is not None:
            raise ConfigError("--ds is not meaningful with --rollback (it names a day to publish); nothing rolled back")
        pointer = rollback(cfg, ctx.args.to, root)
        log.info("rolled back: champion %s -> %s", pointer["rolled_back_from"], pointer["version"])
        return 0
    # --ds: the version's day; default the newest curated day (an empty --ds is refused, never "every day")
    ds = latest_ingested_day() if ctx.ds is None else ctx.ds
    parse_ds(ds)
    report = publish(ds, cfg, ctx.params, root)
    write_report(report)
    if report["published"]:
        log.info("published %s and made it the champion (was %s)", report["version"], report["champion_before"])
        return 0
    for g in report["gates"]:
        if not g["passed"]:
            log.warning("gate %s failed: value %s, required %s, margin %s %s", g["gate"], fmt(g["value"]),
                        fmt(g["required"]), fmt(g["margin"]), g.get("reason", ""))
    log.warning("nothing published; the champion stays %s (see %s)", report["champion_before"], REPORT)
    return ctx.args.refused_exit_code


if __name__ == "__main__":
    sys.exit(main())
