"""The champion's gated metrics on the candidate's evaluation day, for publish's no-regression gate.

The champion's recorded metrics were measured on the day it was published; comparing a
candidate with them would compare two days' traffic (and, the market drifting, two days'
markets). So its artifacts are scored again on the candidate's evaluation data, against the
market as of the candidate's day, with the evaluate stages' own code: the A/B harness of
`pipelines.evaluate_harness` (the candidate's held-out prompts and logged contexts up to `ds`, the
candidate's SFT policy as the common baseline, the same seeds) for the text-policy gates,
and `pipelines.evaluate_attribution.holdout_auc` on the candidate's held-out days for the MIL
model (the oracle as of the newest of them, as the candidate's attribution.json). The result has the shape of the metrics files, so publish reads it with the same keys.

Not scored again, and why (publish then compares with the recorded value and says so):
`ctcvr.json` (the held-out AUC needs train_ctcvr's prediction pass over the day, which lives
inside that stage; the ratio to the oracle's AUC on the same impressions already normalises
the day) and `evaluate.json:combo` (the combination A/B draws its traffic from the simulated
world, not from a day's logs: the same for every day).
"""
from __future__ import annotations

import json
from pathlib import Path

from pipelines.evaluate import EvaluateConfig
from pipelines.evaluate_attribution import holdout_auc
from pipelines.evaluate_harness import Harness, generate_candidates, load_oracle
from plumbing.config import load_config
from plumbing.logs import get_logger
from plumbing.paths import METRICS, SFT_DIR, read_as_of

log = get_logger("evaluate_champion")
RESCORED_FILES = ("evaluate.json", "attribution.json")


def champion_metrics(version_dir: Path, ds: str, params_path=None) -> dict[str, dict]:
    """{metrics file: its re-scored values} for the champion's artifact set in `version_dir`."""
    from relate_models.attribution import AttributionScorer

    version_dir = Path(version_dir)
    cfg = load_config(EvaluateConfig, "evaluate", params_path)
    with read_as_of(ds) as curated:  # the candidate's evaluate stage saw the partitions up to ds, no more
        harness = Harness.build(cfg, params_path, curated=curated)
        outcomes = {
            "sft": harness.sampled_arm("sft", generate_candidates(SFT_DIR, harness.prompts, cfg)),
            "relate": harness.served_arm("relate", version_dir / "policy"),
            "logged": harness.logged_arm(),
        }
        arms = harness.summarize_all(outcomes)
        holdout_days = json.loads((METRICS / "attribution.json").read_text(encoding="utf-8"))["holdout_days"]
        attribution = holdout_auc(AttributionScorer.load(version_dir / "attribution"), load_oracle(max(holdout_days)),
                                  holdout_days)
    log.info("champion %s on the candidate's data (ds %s): true CTCVR uplift %+.4f, compliance %.4f, "
             "MIL holdout AUC %.4f", version_dir.name, ds, arms["relate"]["true_ctcvr_uplift_vs_sft"],
             arms["relate"]["compliance_rate"], attribution["holdout_auc"])
    return {"evaluate.json": {"relate": arms["relate"], "sft": arms["sft"], "eval_day": harness.eval_day},
            "attribution.json": {**attribution, "eval_day": max(holdout_days)}}
