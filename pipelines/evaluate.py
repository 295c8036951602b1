"""Stage `evaluate`: simulated online A/B tests of the ad-text policies against the oracle.

Variants (arms), all on the held-out prompts (data/prompts/eval.jsonl, written by grpo):
- `sft`: the SFT policy; N texts sampled per prompt, one served at random per impression;
- `two_stage`: the industrial baseline; the same N SFT texts, ranked per request context by
  the learned CTR model (models/ctcvr pCTR), the top one served;
- `relate`: the GRPO policy (models/relate) as the ad server would serve it: the pools of its
  held-out prompts in models/serving/prompt_pools.parquet (the serving_tables stage, run before
  this one, samples them once a day for serving and for this arm; plain samples when
  serving.pool_candidates is 0);
- `logged`: the texts the logs show served on the same impressions: the incumbent (the logging
  policy, or the champion mixed with its exploration), which publish's
  `min_true_ctcvr_uplift_vs_logged` gate compares RELATE with.
Traffic: real search contexts (ad_id, keyword, query, user_segment, position, user_id) of
the held-out prompts, sampled from the curated logs. Every arm serves the same impressions
with the same random draws (common random numbers); outcomes come from the simulator's
ground truth (relate_sim.oracle) of the market on the eval day (the --ds, else the newest curated
partition; `eval_day` in the metrics, which publish reads), and the learned compliance reward
applies the rules in effect that day; fatigue on repeated exposures. Reported per arm, with
95% intervals: A/B CTR, CVR, CTCVR (observed clicks/conversions, Wilson), the true CTCVR of
the served texts (the oracle's probabilities averaged over the traffic, no outcome noise),
compliance rate, distinct-2 and self-BLEU of the texts served per prompt, and the learned
CTCVR reward's uplift beside the true uplift (their gap is reward hacking).

Also runs the GenCO combination evaluation (`pipelines.evaluate_combo.evaluate_combos`) and
stores it under "combo". Writes metrics/evaluate.json, reports/evaluate.md, plots/evaluate/ab.png,
and data/evaluate/sft_texts.json (the SFT arm's texts, which publish's re-scoring of a champion
reuses: the same policy, prompts and seed would sample them again).
The harness (traffic, arms, statistics) is pipelines.evaluate_harness, the serving pool
relate_models.serving (the `serving:` section), the report and plot pipelines.ab_report.
"""
from __future__ import annotations

import sys
import time

from pipelines.ab_report import bar_chart, evaluate_report
from pipelines.evaluate_harness import (EvaluateConfig, Harness, generate_candidates, serve_top_ranked, setup_info,
                                        write_sft_texts)
from plumbing.atomic import undefined_as_null, write_json, write_text
from plumbing.cli import StageContext, run_stage
from plumbing.logs import get_logger
from plumbing.paths import METRICS, PLOTS, RELATE_DIR, REPORTS, SERVING_DIR, SFT_DIR
from plumbing.runtime import limit_torch_threads
from plumbing.serving_schema import PROMPT_POOLS_FILE

log = get_logger("evaluate")


def goals(arms: dict[str, dict], cfg: EvaluateConfig) -> dict:
    relate, sft, two = arms["relate"], arms["sft"], arms["two_stage"]
    target, compliance = cfg.goal_relate_ctcvr_uplift, cfg.goal_relate_compliance
    return {
        f"relate_true_ctcvr_uplift_ge_{target:g}": relate["true_ctcvr_uplift_vs_sft"] >= target,
        "relate_beats_two_stage": relate["true_ctcvr"] > two["true_ctcvr"],
        "relate_beats_logged": relate["true_ctcvr_uplift_vs_logged"] > 0,
        f"relate_compliance_ge_{compliance:g}": relate["compliance_rate"] >= compliance,
        "relate_distinct_2_ge_sft": relate["distinct_2"] >= sft["distinct_2"],
    }


def main(argv: list[str] | None = None) -> int:
    return run_stage("evaluate", __doc__, run, argv)


def run(ctx: StageContext) -> None:
    """The simulated A/B of every arm, GenCO's evaluation, the metrics, plot and report."""
    cfg = ctx.config(EvaluateConfig)
    limit_torch_threads(cfg.torch_threads)
    started = time.monotonic()
    harness = Harness.build(cfg, ctx.params, curated=ctx.curated)
    outcomes = run_arms(harness)
    arms = harness.summarize_all(outcomes)
    for name, m in arms.items():
        log.info("%s: true CTCVR %.5f (uplift %+.1f%%), A/B CTCVR %.5f, compliance %.4f, distinct-2 %.3f",
                 name, m["true_ctcvr"], 100 * m.get("true_ctcvr_uplift_vs_sft", 0.0), m["ctcvr"],
                 m["compliance_rate"], m["distinct_2"])

    from pipelines.evaluate_combo import evaluate_combos  # GenCO: its artifacts must exist

    combo = evaluate_combos(ctx.params, harness.eval_day)
    metrics = {**arms, "eval_day": harness.eval_day, "goals": goals(arms, cfg), "setup": setup_info(harness),
               "combo": combo,
               "seconds": round(time.monotonic() - started, 1)}
    write_json(METRICS / "evaluate.json", undefined_as_null(metrics))
    bar_chart(arms, PLOTS / "evaluate" / "ab.png", f"Simulated A/B on {cfg.n_impressions:,} held-out impressions")
    write_text(REPORTS / "evaluate.md", evaluate_report(harness, arms, outcomes, metrics))
    log.info("evaluate done in %.1fs: goals %s", metrics["seconds"], metrics["goals"])


def run_arms(harness: Harness) -> dict:
    """Every arm's outcome on the shared traffic, in a fixed order (generation seeds and draws depend on it)."""
    cfg = harness.cfg
    sft_texts = generate_candidates(SFT_DIR, harness.prompts, cfg)
    write_sft_texts(cfg, sft_texts)  # publish's re-scoring of a champion serves them as its SFT arm
    outcomes = {
        "sft": harness.sampled_arm("sft", sft_texts),
        "two_stage": harness.run_arm("two_stage", serve_top_ranked(sft_texts, harness.contexts, harness.scorer)),
        "relate": harness.table_arm("relate", SERVING_DIR / PROMPT_POOLS_FILE),  # serving_tables' pools
    }
    if harness.serving.pool_candidates:  # the policy's plain samples and the pool over SFT: the pool's share in view
        outcomes["relate_sampled"] = harness.sampled_arm(
            "relate_sampled", generate_candidates(RELATE_DIR, harness.prompts, cfg))
        outcomes["sft_pool"] = harness.served_arm("sft_pool", SFT_DIR)
    outcomes["logged"] = harness.logged_arm()
    return outcomes


if __name__ == "__main__":
    sys.exit(main())
