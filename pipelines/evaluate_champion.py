"""The champion's gated metrics on the candidate's evaluation day, for publish's no-regression gate.

The champion's recorded metrics were measured on the day it was published; comparing a
candidate with them would compare two days' traffic (and, the market drifting, two days'
markets). So its artifacts are scored again on the candidate's evaluation data, against the
market as of the candidate's day, with the evaluate stages' own code: the A/B harness of
`pipelines.evaluate_harness` (the candidate's held-out prompts and logged contexts up to `ds`, the
candidate's SFT policy as the common baseline, the same seeds) for the text-policy gates:
the champion's texts are its published prompt pools (registry/<version>/serving/prompt_pools.parquet,
what the ad server serves), its policy sampled only for held-out prompts they lack (every prompt
for a champion published before prompt pools existed); the SFT arm's texts are the ones the
candidate's evaluate stage sampled (data/evaluate/sft_texts.json: the same policy, prompts and
seed), sampled again only when they no longer match;
and `pipelines.evaluate_attribution.holdout_auc` on the candidate's held-out days for the MIL
model (the oracle as of the newest of them, as the candidate's attribution.json). The CTCVR
model is scored on the candidate's held-out day (the same impressions and features as
train_ctcvr's prediction pass; AUC over the oracle's AUC as evaluate_ctcvr computes it). The
champion's combination serving table is A/B tested against the oracle's best on the
candidate's market and traffic (`pipelines.evaluate_combo.ratio_to_oracle`). The result has
the shape of the metrics files, so publish reads it with the same keys: every gate compares
two models on one day's data.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from pipelines import evaluate_combo, evaluate_ctcvr, train_ctcvr
from pipelines.evaluate import EvaluateConfig
from pipelines.evaluate_attribution import holdout_auc
from pipelines.evaluate_harness import ArmOutcome, Harness, generate_candidates, load_oracle, recorded_sft_texts
from plumbing.config import load_config
from plumbing.errors import DataError
from plumbing.logs import get_logger
from plumbing.paths import METRICS, SFT_DIR, curated, partitions, read_as_of
from plumbing.runtime import limit_torch_threads
from plumbing.serving_schema import PROMPT_POOLS_FILE, read_prompt_pools

log = get_logger("evaluate_champion")
RESCORED_FILES = ("evaluate.json", "attribution.json", "ctcvr.json")


def champion_metrics(version_dir: Path, ds: str, params_path=None) -> dict[str, dict]:
    """{metrics file: its re-scored values} for the champion's artifact set in `version_dir`."""
    from relate_models.attribution import AttributionScorer

    version_dir = Path(version_dir)
    cfg = load_config(EvaluateConfig, "evaluate", params_path)
    limit_torch_threads(cfg.torch_threads)  # re-scored as evaluate scores (publish ran on torch's default pool)
    with read_as_of(ds) as curated:  # the candidate's evaluate stage saw the partitions up to ds, no more
        harness = Harness.build(cfg, params_path, curated=curated)
        sft_texts = recorded_sft_texts(cfg, harness.prompts) or generate_candidates(SFT_DIR, harness.prompts, cfg)
        relate, pools = champion_arm(harness, version_dir)
        outcomes = {"sft": harness.sampled_arm("sft", sft_texts), "relate": relate, "logged": harness.logged_arm()}
        arms = harness.summarize_all(outcomes)
        holdout_days = read_metrics("attribution.json")["holdout_days"]
        attribution = holdout_auc(AttributionScorer.load(version_dir / "attribution"), load_oracle(max(holdout_days)),
                                  holdout_days)
    ctcvr = ctcvr_on_day(version_dir / "ctcvr", params_path)
    combo_day = read_metrics("evaluate.json")["combo"]["eval_day"]
    combo = {"true_ctr_ratio_to_oracle": evaluate_combo.ratio_to_oracle(
        load_config(evaluate_combo.EvaluateComboConfig, "evaluate_combo", params_path),
        evaluate_combo.load_serving(version_dir / "combo_policy" / evaluate_combo.SERVING_FILE.name), combo_day)}
    log.info("champion %s on the candidate's data (ds %s; %d published prompt pools, %d sampled): true CTCVR "
             "uplift %+.4f, compliance %.4f, MIL holdout AUC %.4f, CTCVR AUC ratio %.4f, combo ratio to oracle "
             "%.4f", version_dir.name, ds, pools["published"], pools["sampled"],
             arms["relate"]["true_ctcvr_uplift_vs_sft"], arms["relate"]["compliance_rate"],
             attribution["holdout_auc"], ctcvr["auc_ratio_ctcvr"], combo["true_ctr_ratio_to_oracle"])
    return {"evaluate.json": {"relate": arms["relate"], "sft": arms["sft"], "combo": combo,
                              "eval_day": harness.eval_day, "champion_pools": pools},
            "attribution.json": {**attribution, "eval_day": max(holdout_days)}, "ctcvr.json": ctcvr}


def champion_arm(harness: Harness, version_dir: Path) -> tuple[ArmOutcome, dict[str, int]]:
    """The champion's `relate` arm and {"published": n, "sampled": m} prompts: its published prompt
    pools (what the ad server serves), its policy sampled now for held-out prompts they lack (all
    of them for a champion published before prompt pools were)."""
    path = version_dir / "serving" / PROMPT_POOLS_FILE
    published, plain = read_prompt_pools(path) if path.is_file() else ({}, set())
    ids = [p["prompt_id"] for p in harness.prompts]
    pools = {i: published[i] for i in ids if i in published}
    unpooled = [i for i in pools if i in plain]
    missing = [p for p in harness.prompts if p["prompt_id"] not in published]
    if missing:
        log.info("champion %s: %d of %d held-out prompt(s) have no published pool (%s): sampling its policy for "
                 "them", version_dir.name, len(missing), len(ids), path)
        sampled, fell_back = harness.served_texts(version_dir / "policy", missing)
        pools.update(sampled)
        unpooled += fell_back
    counts = {"published": len(ids) - len(missing), "sampled": len(missing)}
    return harness.pools_arm("relate", {i: pools[i] for i in ids}, unpooled), counts


def read_metrics(name: str) -> dict:
    return json.loads((METRICS / name).read_text(encoding="utf-8"))


def ctcvr_on_day(scorer_dir: Path, params_path=None) -> dict:
    """metrics/ctcvr.json's keys for the CTCVR model in `scorer_dir` on the candidate's held-out day:
    the impressions of its predictions, their features built as train_ctcvr built them."""
    from relate_models import ctcvr

    cfg = load_config(train_ctcvr.TrainCTCVRConfig, "train_ctcvr", params_path)
    trained = read_metrics("ctcvr_train.json")
    eval_day, scorer = trained["eval_day"], ctcvr.CTCVRScorer.load(scorer_dir)
    _, frame = train_ctcvr.load_window(cfg, partitions(curated("labeled_impressions")), trained["train_days"], eval_day)
    pred = ctcvr.predict(scorer.model, scorer.encoder, ctcvr.build_train_data(scorer.encoder, frame))
    candidate = evaluate_ctcvr.load_predictions()  # its labels and baseline columns; the champion's p_*
    champion = pd.DataFrame({"impression_id": frame["impression_id"].astype(str).to_numpy(), **pred})
    mine = candidate.drop(columns=list(pred)).merge(champion, on="impression_id", how="inner", validate="1:1")
    if len(mine) != len(candidate):
        raise DataError(f"the champion's CTCVR pass over {eval_day} covered {len(mine)} of the candidate's "
                        f"{len(candidate)} held-out impressions")
    eval_cfg = load_config(evaluate_ctcvr.EvaluateCTCVRConfig, evaluate_ctcvr.SECTION, params_path)
    frame = evaluate_ctcvr.join_truth(mine, evaluate_ctcvr.load_truth(eval_day))
    return evaluate_ctcvr.compute_metrics(frame, eval_cfg.ece_bins, eval_cfg.goal_auc_ratio)
