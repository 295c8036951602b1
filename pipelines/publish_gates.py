"""Publish's gates: which metric each gate reads, the candidate's values, the champion's bar, the verdict rows.

A gate passes when its metric reaches the `publish:` minimum and, with a champion, does not
fall more than the allowed drop below the champion's value measured like the candidate's
(same evaluation day and serving settings: its recorded value; otherwise its artifacts are
scored again, pipelines.evaluate_champion).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.publish_registry import VALIDATED_MARKER, read_json, validated_days
from plumbing.dates import parse_ds
from plumbing.errors import DataError, MissingArtifact, StageError
from plumbing.logs import get_logger
from plumbing.paths import METRICS, curated, partition

log = get_logger("publish")


@dataclass(frozen=True)
class Gate:
    name: str
    metrics_file: str  # under metrics/
    key: str  # dotted path inside it
    threshold_field: str  # PublishConfig field with the minimum
    meaning: str


GATES = (
    Gate("relate_true_ctcvr_uplift", "evaluate.json", "relate.true_ctcvr_uplift_vs_sft",
         "min_true_ctcvr_uplift_vs_sft", "true CTCVR uplift of the RELATE policy over SFT (oracle A/B)"),
    Gate("relate_true_ctcvr_uplift_vs_logged", "evaluate.json", "relate.true_ctcvr_uplift_vs_logged",
         "min_true_ctcvr_uplift_vs_logged", "true CTCVR uplift of the RELATE policy over the texts the logs show "
         "served on the same impressions (the incumbent: oracle A/B)"),
    Gate("relate_compliance", "evaluate.json", "relate.compliance_rate",
         "min_compliance_rate", "share of generated texts that pass the compliance check"),
    Gate("combo_ratio_to_oracle", "evaluate.json", "combo.true_ctr_ratio_to_oracle",
         "min_combo_ratio_to_oracle", "true CTR of the combo generator / the oracle's best combination"),
    Gate("ctcvr_auc_ratio", "ctcvr.json", "auc_ratio_ctcvr",
         "min_ctcvr_auc_ratio", "CTCVR model AUC / oracle AUC on the held-out day"),
    Gate("attribution_auc_ratio", "attribution.json", "holdout_auc/oracle_auc",
         "min_attribution_auc_ratio", "MIL attribution model holdout AUC / oracle AUC (same impressions)"),
)


def lookup(obj: Any, dotted: str) -> Any:
    """`a.b` is a nested key; `x/y` the ratio of two keys (None when either is missing or y is 0)."""
    if "/" in dotted:
        num, den = (lookup(obj, part) for part in dotted.split("/", 1))
        ok = all(_is_number(v) for v in (num, den))
        return num / den if ok and den else None
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def gate_values(files: dict[str, dict | None], gates=GATES) -> dict[str, float | None]:
    """gate name -> its metric as a float, from {metrics file: its content} (None where missing)."""
    values = {}
    for gate in gates:
        value = lookup(files.get(gate.metrics_file), gate.key)
        values[gate.name] = float(value) if _is_number(value) else None
    return values


def candidate_metrics(metrics_dir: Path = METRICS) -> dict[str, float | None]:
    """The gated metrics of this run's models (None where a metric is missing)."""
    return gate_values({name: read_json(metrics_dir / name) for name in {g.metrics_file for g in GATES}})


def eval_day(metrics_dir: Path = METRICS) -> str | None:
    """The held-out evaluation day the gated metrics were measured on."""
    for name in ("evaluate.json", "ctcvr.json"):
        day = lookup(read_json(metrics_dir / name), "eval_day")
        if isinstance(day, str):
            return day
    return None


def eval_serving(metrics_dir: Path = METRICS) -> dict | None:
    """How the evaluated policy was served (evaluate.json setup.serving): recorded metrics compare only alike."""
    serving = lookup(read_json(metrics_dir / "evaluate.json"), "setup.serving")
    return serving if isinstance(serving, dict) else None


def stale_champion(cfg, champion: dict | None, ds: str) -> str | None:
    """Why the champion sets no no-regression bar for a candidate of day `ds` (None: it does).

    Offline re-scoring cannot see what serving costs a champion: its phrases wear out market-wide
    and its users tire of texts they saw on the days before (docs/decisions.md). Once it has served
    `champion_max_age_days` days, a candidate that meets every threshold replaces it."""
    limit = cfg.champion_max_age_days
    if champion is None or limit is None or not champion.get("ds"):
        return None
    served = (parse_ds(ds) - parse_ds(champion["ds"])).days  # it serves from the day after its own
    if served < limit:
        return None
    return f"champion {champion.get('version')} has served {served} days by {ds} (publish.champion_max_age_days {limit})"


def champion_on_candidate_day(cfg, champion: dict | None, day: str | None, ds: str, params_file: Path,
                              serving: dict | None = None, stale: str | None = None
                              ) -> tuple[dict[str, float | None], str]:
    """The champion's gated metrics measured like the candidate's, and how they were obtained.

    Same evaluation day and the same serving settings: its recorded metrics. Another day, or
    serving settings that changed since: its artifacts scored again on the candidate's data
    (every gate: the policy, MIL, CTCVR and combination metrics; a gate missing from the result
    keeps the recorded value, and the report says so). A champion that cannot be scored again (artifacts missing, incompatible with the current
    code) keeps its recorded values, with the reason in the report.
    """
    if champion is None:
        return {}, "no champion"
    if stale:
        return {}, f"not scored again: {stale}"
    if not cfg.compares_with_champion:
        return {}, "not compared (max_regression: null)"
    if champion.get("eval_day") == day and champion.get("serving") == serving:
        return {}, "recorded on the same evaluation day"
    from pipelines import evaluate_champion

    try:
        files = evaluate_champion.champion_metrics(Path(champion["path"]), ds, params_file)
    # missing or unreadable artifacts (StageError, OSError), a model the current code cannot load
    # (RuntimeError from torch, ValueError from a config check): fall back, loudly, to the recorded bar
    except (StageError, OSError, RuntimeError, ValueError) as err:
        log.warning("champion %s could not be scored on %s (%s): comparing with its recorded metrics",
                    champion.get("version"), day, err, exc_info=not isinstance(err, StageError))
        return {}, f"recorded on {champion.get('eval_day')}: scoring it again on {day} failed ({err})"
    rescored = gate_values(files, [g for g in GATES if g.metrics_file in evaluate_champion.RESCORED_FILES])
    pools = (files.get("evaluate.json") or {}).get("champion_pools")
    texts = (f" (its texts: {pools['published']} held-out prompt(s) from its published pools, {pools['sampled']} "
             f"sampled from its policy)") if isinstance(pools, dict) else ""
    return {k: v for k, v in rescored.items() if v is not None}, f"scored again on {day}{texts}"


def threshold_rows(cfg, values: dict[str, float | None]) -> list[dict]:
    """One row per enabled gate: its metric against the configured minimum."""
    rows = []
    for gate in GATES:
        minimum = getattr(cfg, gate.threshold_field)
        if minimum is None:
            continue
        value = values.get(gate.name)
        row = {"gate": gate.name, "kind": "threshold", "metric": f"{gate.metrics_file}:{gate.key}",
               "value": value, "required": minimum}
        if value is None:
            row.update(passed=False, margin=None, reason=f"metric missing ({gate.metrics_file}: {gate.key})")
        else:
            row.update(passed=value >= minimum, margin=value - minimum)
        rows.append(row)
    return rows


def regression_rows(cfg, values: dict[str, float | None], day: str | None, champion: dict,
                    rescored: dict[str, float | None]) -> list[dict]:
    """One row per compared gate: its metric against the champion's value less the allowed drop."""
    rows = []
    for gate in GATES:
        allowed_drop = cfg.allowed_drop(gate.name)
        if getattr(cfg, gate.threshold_field) is None or allowed_drop is None:
            continue
        same_day = gate.name in rescored or champion.get("eval_day") == day
        best = rescored.get(gate.name, champion.get("metrics", {}).get(gate.name))
        value = values.get(gate.name)
        if best is None:
            continue  # the champion never measured it: nothing to regress against
        required = best - allowed_drop
        row = {"gate": f"{gate.name}_vs_champion", "kind": "no_regression", "metric": gate.name,
               "value": value, "required": required, "allowed_drop": allowed_drop,
               "champion_version": champion.get("version"),
               "champion_value": best, "champion_eval_day": day if same_day else champion.get("eval_day"),
               "champion_recorded_eval_day": champion.get("eval_day"),
               "champion_rescored": gate.name in rescored, "same_eval_day": same_day}
        if value is None:
            row.update(passed=False, margin=None, reason="metric missing")
        else:
            row.update(passed=value >= required, margin=value - required)
        rows.append(row)
    return rows


def check_gates(cfg, values: dict[str, float | None], day: str | None,
                champion: dict | None, rescored: dict[str, float | None] | None = None,
                stale: str | None = None) -> list[dict]:
    """One row per enabled check: threshold and no-regression-vs-champion.

    `rescored`: the champion's metrics on the candidate's evaluation day (gate name -> value);
    a gate missing from it compares with the champion's recorded value. A champion that fails a
    threshold on that day, or is `stale` (stale_champion's reason), no longer sets a bar: its
    no-regression rows pass, marked waived.
    """
    rows, rescored = threshold_rows(cfg, values), rescored or {}
    if champion is not None:
        comparisons = regression_rows(cfg, values, day, champion, rescored)
        disqualified = [r["gate"] for r in threshold_rows(cfg, rescored) if r["gate"] in rescored and not r["passed"]]
        reason = stale
        if disqualified:  # e.g. a compliance rule that started after it was published: no bar to hold
            reason = f"champion {champion.get('version')} fails {', '.join(disqualified)} on {day} itself"
        if reason:
            comparisons = [{**r, "passed": True, "waived": True, "reason": f"waived: {reason}"} for r in comparisons]
        rows += comparisons
    return rows


def artifact_rows(missing: dict[str, Path]) -> list[dict]:
    """A failed row per artifact directory that is missing or empty."""
    return [{"gate": f"artifact_{name}", "kind": "artifact", "metric": str(path), "value": None,
             "required": "a non-empty directory", "margin": None, "passed": False,
             "reason": f"{path} is missing or empty"} for name, path in missing.items()]


# ---------------------------------------------------------------- before any gate: the day and the models' data

# metrics file -> its keys that name the days its model was trained or scored on (a day or a list of days)
TRAINING_DAY_KEYS = {"ctcvr_train.json": ("train_days", "eval_day"), "ctcvr.json": ("eval_day",),
                     "train_attribution.json": ("window_end",), "attribution.json": ("holdout_days",)}


def trained_days(metrics_dir: Path = METRICS) -> dict[str, str]:
    """`file:key` -> the newest day it names, over the models' metrics files present."""
    newest = {}
    for name, keys in TRAINING_DAY_KEYS.items():
        recorded = read_json(metrics_dir / name)
        for key in keys if isinstance(recorded, dict) else ():
            value = recorded.get(key)
            days = value if isinstance(value, list) else [] if value is None else [value]
            for day in days:
                if not isinstance(day, str):
                    raise DataError(f"{metrics_dir / name}: {key} must name days as YYYY-MM-DD, got {day!r}")
                parse_ds(day)
            if days:
                newest[f"{metrics_dir / name}:{key}"] = max(days)
    return newest


def verify_day(ds: str, metrics_dir: Path = METRICS) -> dict:
    """What publish checks before any gate; an expected failure (exit 2) when the day cannot be published.

    The day passed validation (listed in its marker), has data (a curated partition), and the
    models were trained on data up to it: no metrics file names a later day.
    """
    if ds not in validated_days():
        state = "does not list it" if VALIDATED_MARKER.is_file() else "is missing"
        raise DataError(f"day {ds} was never validated: {VALIDATED_MARKER} {state}; "
                        f"run `python -m pipelines.validate --ds {ds}` first")
    part = partition(curated("labeled_impressions"), ds)
    if not part.is_dir() or not any(part.iterdir()):
        raise DataError(f"no data for {ds}: {part} is missing or empty (a day after the last logs?)")
    days = trained_days(metrics_dir)
    if not days:
        raise MissingArtifact(f"the models name no training days (none of {', '.join(TRAINING_DAY_KEYS)} under "
                              f"{metrics_dir}): cannot tell which data they were trained on")
    later = [f"{key} = {day}" for key, day in days.items() if day > ds]
    if later:
        raise DataError(f"the models were trained on data after {ds} ({', '.join(later)}): "
                        f"retrain them with --ds {ds}, or publish the day they were trained for")
    return {"validated": str(VALIDATED_MARKER), "data": str(part), "newest_trained_day": days}
