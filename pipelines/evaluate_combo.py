"""Evaluate the combination generator against the simulator's truth (an evaluate* stage: it may).

Simulated A/B test (`Oracle.ab_test_combos`: the same feed traffic and random draws for
every arm, fatigue on) of these arms, each one combination per ad unless noted:
- generator_top1: rank 1 of models/combo_policy/serving.parquet (the arm under test)
- generator_top_k: the top-k of the serving table, one drawn uniformly per impression
- oracle_best: the combination with the highest true CTR (the ceiling)
- logging: the logging policy as logged (the ad's logged combinations drawn in proportion
  to their impressions over the reward model's training days)
- greedy_marginal: per slot, the element with the highest logged marginal CTR
- mil_argmax: exhaustive argmax of the MIL model's CTR (ads small enough to enumerate)
Each arm reports its CTR with a 95% Wilson interval and `expected_ctr` (the mean true click
probability over the served impressions: the noise-free value of the same traffic). The
headline `true_ctr_ratio_to_oracle` is expected_ctr(generator_top1) / expected_ctr(oracle_best);
`true_ctr_uplift_vs_logging` is the relative expected-CTR gain over the logging arm, with the
observed CTR difference and its 95% CI beside it. `learned_vs_true` puts the MIL model's
predicted CTR of the generator's picks next to their true CTR (the gap is reward hacking).

The truth is the market's as of the eval day (`eval_day`: the evaluate stage's; standalone, the
newest curated partition). A drifting market retires elements: a combination holding one is not
served that day, so an arm falls back to logging for that ad (counted in ads_fallback), and the
logging arm keeps its still-live logged combinations.

`evaluate_combos(params_path, day)` returns the dict (the evaluate stage merges it under "combo");
`main()` also writes metrics/evaluate_combo.json.

    python -m pipelines.evaluate_combo [--params params.yaml]
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.combo_policy import ATTRIBUTION_DIR, SERVING_FILE, mil_argmax
from plumbing import atomic, paths
from plumbing.cli import StageContext, run_stage
from plumbing.config import load_config, require
from plumbing.errors import DataError, MissingArtifact
from plumbing.logs import get_logger
from plumbing.tables import read_partition
from relate_models import attribution as attr
from relate_models import combo_generator as cg

log = get_logger(__name__)
METRICS_FILE = paths.METRICS / "evaluate_combo.json"
COLS = list(attr.ELEMENT_COLUMNS)


@dataclass
class EvaluateComboConfig:
    n_impressions: int  # simulated feed impressions per arm
    seed: int
    goal_ctr_ratio_to_oracle: float  # recorded as meets_goal: generator_top1 / oracle_best true CTR
    max_enumerate: int  # the mil_argmax arm covers ads with at most this many combinations

    def __post_init__(self):
        require(self.n_impressions >= 100, "evaluate_combo.n_impressions", "must be >= 100")
        require(0 < self.goal_ctr_ratio_to_oracle <= 1.5, "evaluate_combo.goal_ctr_ratio_to_oracle", "must be in (0, 1.5]")
        require(self.max_enumerate >= 1, "evaluate_combo.max_enumerate", "must be >= 1")


def logged_rows(scorer: attr.AttributionScorer) -> pd.DataFrame:
    days = list(scorer.meta.get("train_days") or [])
    if not days:
        raise DataError(f"{ATTRIBUTION_DIR}/config.json has no train_days")
    cols = ["ad_id", *COLS, "impressions", "clicks"]
    rows = pd.concat([read_partition("combo_stats", d, cols) for d in days], ignore_index=True)
    return rows.dropna(subset=COLS).groupby(["ad_id", *COLS], sort=True)[["impressions", "clicks"]].sum().reset_index()


def greedy_marginal(rows: pd.DataFrame) -> dict[str, tuple]:
    naive = attr.naive_marginal_ctr(rows).sort_values(["ad_id", "slot", "naive_ctr", "element_id"],
                                                      ascending=[True, True, False, True])
    best = naive.drop_duplicates(["ad_id", "slot"]).set_index(["ad_id", "slot"])["element_id"]
    return {ad: tuple(best.get((ad, s)) for s in attr.SLOTS) for ad in rows["ad_id"].unique()}


def logging_policy(rows: pd.DataFrame, seed: int, oracle=None):
    """fn(context) -> a logged combination of the ad, drawn in proportion to its logged impressions.

    An ad none of whose logged combinations is still live (a drifting market retired them) gets a
    uniform draw of its live elements from `oracle`, as an exploring ad server would serve it."""
    rng, explore = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    table = {ad: (list(map(tuple, g[COLS].to_numpy())), g["impressions"].to_numpy(np.float64) / g["impressions"].sum())
             for ad, g in rows.groupby("ad_id", sort=True)}

    def choose(ctx: dict) -> tuple:
        if ctx["ad_id"] not in table and oracle is not None:
            info = oracle.ad_info(ctx["ad_id"])
            return tuple(str(explore.choice(info[f"{s}_ids"])) for s in attr.SLOTS)
        combos, p = table[ctx["ad_id"]]
        return combos[int(rng.choice(len(combos), p=p))]

    return choose


def live_ids(oracle) -> dict[str, set]:
    """slot -> the element ids live in the oracle's market (every ad's; an id names its ad)."""
    infos = [oracle.ad_info(ad) for ad in oracle.ad_ids]
    return {s: {e for info in infos for e in info[f"{s}_ids"]} for s in attr.SLOTS}


def live_choices(choices: dict, live: dict[str, set]) -> dict:
    """An arm's choices without the combinations holding an element retired by the eval day.

    The ad server cannot serve those on that day; an ad left with none falls back to logging."""
    def ok(combo) -> bool:
        return all(e in live[s] for s, e in zip(attr.SLOTS, combo))

    out = {}
    for ad, choice in choices.items():
        kept = [c for c in choice if ok(c)] if isinstance(choice, list) else choice if ok(choice) else None
        if kept:
            out[ad] = kept
    return out


def with_fallback(choices: dict, fallback):
    """Arms cover the ads they know; any other ad is served as logged (counted in ads_fallback)."""
    def choose(ctx: dict):
        choice = choices.get(ctx["ad_id"])
        if choice is None:
            return fallback(ctx)
        if isinstance(choice, list):
            return choice[int(ctx["impression"]) % len(choice)]
        return choice
    return choose


def arm_summary(result) -> dict:
    est, lo, hi = result.ctr
    return {"ctr": est, "ctr_ci95": [lo, hi], "expected_ctr": result.expected_ctr,
            "impressions": result.impressions, "clicks": result.clicks, "repeat_exposures": result.repeat_exposures}


def load_oracle(day: str | None = None):
    """The simulator's truth as of `day` (a function, so tests can stand a synthetic world in for it)."""
    from pipelines.evaluate_harness import load_oracle as as_of

    return as_of(day)


def load_serving(path=SERVING_FILE) -> pd.DataFrame:
    """A generator's serving table (this run's: models/combo_policy/serving.parquet), sorted by ad and rank."""
    if not path.is_file():
        raise MissingArtifact(f"missing {path} (run pipelines.combo_policy first)")
    serving = pd.read_parquet(path)
    missing = [c for c in ("ad_id", "rank", *COLS, "score") if c not in serving.columns]
    if missing or serving.empty:
        raise DataError(f"{path}: empty or lacks column(s) {missing}")
    return serving.sort_values(["ad_id", "rank"])


def market(scorer: attr.AttributionScorer, day: str | None):
    """(the oracle as of `day`, its live element ids, the logged combinations still live): every arm's world."""
    oracle = load_oracle(day)
    live = live_ids(oracle)
    rows = logged_rows(scorer)
    rows = rows[np.logical_and.reduce([rows[attr.SLOT_COLUMNS[s]].isin(live[s]) for s in attr.SLOTS])]
    return oracle, live, rows


def ab_test(cfg: EvaluateComboConfig, oracle, rows: pd.DataFrame, choices: dict | None):
    """One arm's simulated A/B; `choices` None is the logging arm. Each arm gets its own logging
    fallback with the same seed, so an arm's result does not depend on which arms ran before it."""
    logged = logging_policy(rows, cfg.seed, oracle)
    return oracle.ab_test_combos(logged if choices is None else with_fallback(choices, logged), cfg.n_impressions,
                                 cfg.seed)


def oracle_best_choices(best: dict[str, dict]) -> dict[str, tuple]:
    """ad -> its best combination, from {ad: oracle.oracle_best_combo(ad)}."""
    return {ad: tuple(b[c] for c in COLS) for ad, b in best.items()}


def top1_choices(serving: pd.DataFrame) -> dict[str, tuple]:
    """ad -> the rank-1 combination of a serving table sorted by ad and rank."""
    return {ad: tuple(g.iloc[0][COLS]) for ad, g in serving.groupby("ad_id")}


def ratio_to_oracle(cfg: EvaluateComboConfig, serving: pd.DataFrame, day: str | None) -> float:
    """`serving`'s top-1 arm / the oracle_best arm in expected CTR, on combo_metrics' traffic as of `day`
    (publish scores the champion's serving table with it on the candidate's day)."""
    oracle, live, rows = market(attr.AttributionScorer.load(ATTRIBUTION_DIR), day)
    top1 = top1_choices(serving)
    best = oracle_best_choices({ad: oracle.oracle_best_combo(ad) for ad in oracle.ad_ids})
    gen, ceiling = (ab_test(cfg, oracle, rows, live_choices(c, live)) for c in (top1, best))
    return gen.expected_ctr / ceiling.expected_ctr


def combo_metrics(cfg: EvaluateComboConfig, day: str | None = None) -> dict:
    """Every arm's simulated A/B and the headline ratios (see the module docstring), in the market as of `day`."""
    from plumbing.metrics import diff_ci

    serving = load_serving()
    scorer = attr.AttributionScorer.load(ATTRIBUTION_DIR)
    oracle, live, rows = market(scorer, day)
    top1 = top1_choices(serving)
    top_k = {ad: [tuple(r) for r in g[COLS].to_numpy()] for ad, g in serving.groupby("ad_id")}
    best = {ad: oracle.oracle_best_combo(ad) for ad in oracle.ad_ids}
    problem = cg.ComboProblem(ad_ids=list(scorer.vocab.ads), slots=list(attr.SLOTS),
                              candidates=[[scorer.vocab.ad_elements(a)[s] for s in attr.SLOTS] for a in scorer.vocab.ads])
    arms = {
        "generator_top1": top1,
        "generator_top_k": top_k,
        "oracle_best": oracle_best_choices(best),
        "greedy_marginal": greedy_marginal(rows),
        "mil_argmax": {ad: b[:3] for ad, b in mil_argmax(scorer, problem, cfg.max_enumerate).items()},
    }
    arms = {name: live_choices(choices, live) for name, choices in arms.items()}
    top1 = arms["generator_top1"]
    results = {"logging": ab_test(cfg, oracle, rows, None)}
    for name, choices in arms.items():
        log.info("simulated A/B: %s (%d impressions)", name, cfg.n_impressions)
        results[name] = ab_test(cfg, oracle, rows, choices)

    world_ads = set(oracle.ad_ids)
    out = {"arms": {k: {**arm_summary(v), "ads_fallback": len(world_ads - set(arms.get(k, world_ads)))}
                    for k, v in results.items()}}
    gen, ora, logg = results["generator_top1"], results["oracle_best"], results["logging"]
    out["true_ctr_ratio_to_oracle"] = gen.expected_ctr / ora.expected_ctr
    out["true_ctr_ratio_to_oracle_observed"] = gen.ctr[0] / ora.ctr[0] if ora.clicks else float("nan")
    out["true_ctr_uplift_vs_logging"] = gen.expected_ctr / logg.expected_ctr - 1
    diff, lo, hi = diff_ci((logg.clicks, logg.impressions), (gen.clicks, gen.impressions))
    out["observed_ctr_diff_vs_logging"] = {"estimate": diff, "ci95": [lo, hi]}
    for name in arms:
        out["arms"][name]["ratio_to_oracle"] = results[name].expected_ctr / ora.expected_ctr
    out.update(per_ad_metrics(oracle, top1, best, serving, world_ads, day))
    out["goal_ratio"] = cfg.goal_ctr_ratio_to_oracle
    out["meets_goal"] = bool(out["true_ctr_ratio_to_oracle"] >= cfg.goal_ctr_ratio_to_oracle)
    out["n_impressions_per_arm"], out["eval_day"] = cfg.n_impressions, day
    log.info("generator top-1 true CTR %.5f = %.3f of oracle best (%.5f); %+.1f%% vs logging (%.5f)",
             gen.expected_ctr, out["true_ctr_ratio_to_oracle"], ora.expected_ctr,
             100 * out["true_ctr_uplift_vs_logging"], logg.expected_ctr)
    return out


def per_ad_metrics(oracle, top1: dict, best: dict, serving: pd.DataFrame, world_ads: set, day: str | None) -> dict:
    """Per ad, without traffic or fatigue: how close each live top-1 pick is to the ad's own best."""
    per_ad = [oracle.true_combo_ctr(ad, *c) / best[ad]["ctr"] for ad, c in top1.items() if ad in world_ads]
    if not per_ad:  # every top-1 pick holds an element retired by the eval day
        raise DataError(f"no generator top-1 combination is live on {day}: the serving table is stale")
    learned = serving[(serving["rank"] == 1) & serving["ad_id"].isin(top1)]
    true_top1 = np.array([oracle.true_combo_ctr(ad, *top1[ad]) for ad in learned["ad_id"]])
    return {"per_ad_ratio_to_oracle_mean": float(np.mean(per_ad)), "per_ad_ratio_to_oracle_min": float(np.min(per_ad)),
            "top1_is_oracle_best_share": float(np.mean([top1[ad] == tuple(best[ad][c] for c in COLS) for ad in top1])),
            "learned_vs_true": {"top1_mil_predicted_ctr": float(learned["score"].mean()),
                                "top1_true_ctr": float(true_top1.mean())}}


def evaluate_combos(params_path=None, day: str | None = None) -> dict:
    """The combination metrics for the evaluate stage (merged under "combo"), as of its eval day."""
    return combo_metrics(load_config(EvaluateComboConfig, "evaluate_combo", params_path), day)


def main(argv: list[str] | None = None) -> int:
    return run_stage("evaluate_combo", __doc__, run, argv, ds=None)


def run(ctx: StageContext) -> None:
    metrics = combo_metrics(ctx.config(EvaluateComboConfig), ctx.curated.run_day())
    atomic.write_json(METRICS_FILE, metrics)
    log.info("wrote %s", METRICS_FILE)

if __name__ == "__main__":
    sys.exit(main())
