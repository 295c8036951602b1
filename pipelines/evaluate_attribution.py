"""Evaluate the MIL attribution model against the simulator's truth (an evaluate* stage: it may).

Element level: Spearman of the learned element rewards vs the true element utilities,
computed within each (ad, slot) - the only comparison that makes sense, since rewards
rank an ad's candidates for one slot - then averaged over (ad, slot) groups
(`spearman_vs_truth`, the headline); also pooled over all elements after centring each
(ad, slot) group (`spearman_vs_truth_pooled`). The same for the naive per-element
marginal CTR of the training window (`baseline_*`), which the confounded logging policy
fools. Bag level: AUC of the model's p_click on the held-out days' feed impressions, beside
the oracle AUC of the true p_click (per impression, context included) and of the true
combination CTR (averaged over contexts: the ceiling for a model that sees no context).
The truth is the market's as of the newest day of the model's window (`eval_day`: its last
held-out day, from the model's metadata): a drifting market retires and re-prices elements.

Warm and cold (issue 18). `spearman_vs_truth` ranks the warm elements: those the model trained on.
`spearman_cold_start` ranks elements with no clicks: the model is refitted without `cold_ads_share` of
the ads (seeded; the same params, data and content) and those ads' elements are scored from their
content alone, within (ad, slot) as above. The two ceilings (`content_ceiling`) replace the content-free
noise ceiling: `warm` is an estimator given the true priors and the true content function on the same
data (a MAP logistic fit, element effects ~ N(true content utility, the slot's true idiosyncratic sd),
per-ad intercepts, on clicks redrawn from the true combination CTRs of the training window's logged
impressions: `bootstrap_replicates` redraws); `cold` is the true content function's own Spearman on the
held-out ads' groups. `content_share`: the oracle's measured share of utility variance content explains
on the eval day.

Writes metrics/attribution.json and plots/attribution/scatter.png.

    python -m pipelines.evaluate_attribution [--params params.yaml]
"""
from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from pipelines.train_attribution import MODEL_DIR, PLOT_DIR
from plumbing import atomic, paths
from plumbing.cli import StageContext, run_stage
from plumbing.config import load_config, require
from plumbing.errors import DataError, MissingArtifact
from plumbing.logs import get_logger
from plumbing.runtime import limit_torch_threads
from plumbing.tables import read_partition
from relate_models import attribution as attr
from plumbing.metrics import weighted_auc, within_group_spearman

log = get_logger(__name__)
METRICS_FILE = paths.METRICS / "attribution.json"
KEYS = ["ad_id", "slot", "element_id"]


@dataclass
class EvaluateAttributionConfig:
    goal_spearman: float  # recorded as meets_goal; the stage does not fail below it
    min_group_size: int  # (ad, slot) groups with fewer ranked elements are left out
    bootstrap_replicates: int  # click redraws of the warm content ceiling; 0 = no warm ceiling
    cold_ads_share: float  # share of ads held out of the cold-start refit; 0 = no cold-start measurement
    seed: int

    def __post_init__(self):
        require(self.bootstrap_replicates >= 0, "evaluate_attribution.bootstrap_replicates", "must be >= 0")
        require(0 <= self.cold_ads_share < 1, "evaluate_attribution.cold_ads_share", "must be in [0, 1)")
        require(-1 <= self.goal_spearman <= 1, "evaluate_attribution.goal_spearman", "must be in [-1, 1]")
        require(self.min_group_size >= 2, "evaluate_attribution.min_group_size", "must be >= 2")


# --------------------------------------------------------------------------- element level


def window_day(scorer: attr.AttributionScorer) -> str:
    """The newest day of the model's training window (its held-out days included): the market it is judged in."""
    days = list(scorer.meta.get("train_days") or []) + list(scorer.meta.get("holdout_days") or [])
    if not days:
        raise DataError(f"{MODEL_DIR}/config.json names no train_days or holdout_days")
    return max(days)


def window_rows(scorer: attr.AttributionScorer) -> pd.DataFrame:
    """The combination rows (with dt) of the model's training days: the data every ceiling is fitted on."""
    cols = ["ad_id", *attr.ELEMENT_COLUMNS, "impressions", "clicks"]  # read_partition adds dt
    return pd.concat([read_partition("combo_stats", d, cols) for d in scorer.meta["train_days"]], ignore_index=True)


def true_utilities(day: str | None = None) -> tuple[pd.DataFrame, "Oracle"]:  # noqa: F821
    """The true element utilities of the market as of `day` (None: day 0), and its oracle."""
    from relate_sim.oracle import Oracle  # not evaluate_harness.load_oracle: this stage never loads the policy code

    oracle = Oracle.load() if day is None else Oracle.load().as_of(day)
    table = pd.DataFrame(oracle.element_utilities()).rename(columns={"element_type": "slot"})
    return table[KEYS + ["utility", "uniform_marginal_ctr", "content_utility"]], oracle


# --------------------------------------------------------------------------- bag level


def holdout_auc(scorer: attr.AttributionScorer, oracle, holdout_days: list[str]) -> dict:
    """Model vs oracle AUC on the held-out days, per feed impression where labels exist."""
    labeled = set(paths.partitions(paths.curated("labeled_impressions")))
    if all(d in labeled for d in holdout_days):
        cols = ["impression_id", "ad_id", *attr.ELEMENT_COLUMNS, "placement", "clicked", *scorer.context_features]
        rows = pd.concat([read_partition("labeled_impressions", d, cols) for d in holdout_days], ignore_index=True)
        rows = rows[rows["placement"] == "feed"].reset_index(drop=True)
        rows["impressions"], rows["clicks"] = 1, rows["clicked"].astype(np.int64)
        level = "impression"
    else:
        rows = pd.concat([read_partition("combo_stats", d) for d in holdout_days], ignore_index=True)
        level = "combination"
    if rows.empty:
        raise DataError(f"held-out days {holdout_days} have no feed impressions")
    pos = rows["clicks"].to_numpy(np.float64)
    neg = rows["impressions"].to_numpy(np.float64) - pos
    model_p = scorer.score_frame(rows, on_unknown="fallback", use_context=bool(scorer.context_features)).p_click
    out = {"auc_level": level, "holdout_impressions": int(pos.sum() + neg.sum()),
           "holdout_auc": weighted_auc(model_p, pos, neg)}

    out["oracle_combo_auc"] = weighted_auc(true_ctr_of_rows(oracle, rows), pos, neg)

    truth_dir = paths.SIM_TRUTH / "impressions"
    if level == "impression" and all((truth_dir / f"dt={d}").is_dir() for d in holdout_days):
        truth = pd.concat([pq.read_table(paths.partition(truth_dir, d), columns=["impression_id", "p_click"]).to_pandas()
                           for d in holdout_days], ignore_index=True)
        joined = rows[["impression_id"]].merge(truth.drop_duplicates("impression_id"), on="impression_id", how="left")
        ok = joined["p_click"].notna().to_numpy()
        out["oracle_auc"] = weighted_auc(joined["p_click"].to_numpy()[ok], pos[ok], neg[ok])
        out["oracle_auc_coverage"] = float(ok.mean())
    return out


def true_ctr_of_rows(oracle, rows: pd.DataFrame) -> np.ndarray:
    """True CTR (averaged over contexts) of each row's (ad, title, image, highlight), one grid per ad."""
    out = np.empty(len(rows))
    for ad_id, g in rows.groupby("ad_id", sort=False):
        cands = {s: sorted(g[attr.SLOT_COLUMNS[s]].unique()) for s in attr.SLOTS}
        grid = true_ctr_grid(oracle, ad_id, cands)
        pos = [g[attr.SLOT_COLUMNS[s]].map({e: k for k, e in enumerate(cands[s])}).to_numpy() for s in attr.SLOTS]
        out[rows.index.get_indexer(g.index)] = grid[tuple(pos)]
    return out


# --------------------------------------------------------------------------- ceilings


def true_ctr_grid(oracle, ad_id: str, candidates: dict[str, list[str]]) -> np.ndarray:
    """True CTR of every combination of an ad's candidates, [titles, images, highlights]."""
    shape = [len(candidates[s]) for s in attr.SLOTS]
    if hasattr(oracle, "_combo_ctr_table"):
        # relate_sim's Oracle: its per-ad table in one pass (true_combo_ctr rebuilds it on every call)
        w = oracle.world
        ad = w.ad_index(ad_id)
        table = oracle._combo_ctr_table(ad)
        k = [[w.parse_element_id(e, s, ad) for e in candidates[s]] for s in attr.SLOTS]
        return table[np.ix_(*k)]
    combos = itertools.product(*(candidates[s] for s in attr.SLOTS))
    return np.asarray([oracle.true_combo_ctr(ad_id, *c) for c in combos]).reshape(shape)


def fit_content_prior_glm(index: np.ndarray, n: np.ndarray, y: np.ndarray, n_ads: int, prior_mean: np.ndarray,
                          prior_sd: np.ndarray) -> np.ndarray:
    """MAP logistic fit: per-ad intercept + one effect per element, each ~ N(prior_mean, prior_sd^2).

    index: [rows, 1 + k]: the ad's position, then k positions in one flat table of len(prior_mean) effects
    (the title, image, highlight; any more add effects, such as a pair's). Returns the effect estimates."""
    a, cols = torch.as_tensor(index[:, 0]), torch.as_tensor(index[:, 1:])
    n_t, y_t = torch.as_tensor(n, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    m, sd = torch.as_tensor(prior_mean, dtype=torch.float64), torch.as_tensor(prior_sd, dtype=torch.float64)
    b = torch.full((n_ads,), float(np.log(y.sum() / max(n.sum() - y.sum(), 1.0))), dtype=torch.float64,
                   requires_grad=True)
    e = m.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([b, e], max_iter=200, line_search_fn="strong_wolfe", tolerance_grad=1e-9)

    def closure():
        opt.zero_grad()
        z = b[a] + e[cols].sum(dim=1)
        nll = -(y_t * torch.nn.functional.logsigmoid(z) + (n_t - y_t) * torch.nn.functional.logsigmoid(-z)).sum()
        loss = nll + ((e - m) ** 2 / (2 * sd ** 2)).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return e.detach().numpy()


def content_prior_problem(oracle, truth: pd.DataFrame, train: pd.DataFrame) -> dict:
    """The ceiling estimator's problem on the training window's logged impressions: each row's true CTR
    as of its day (the market then), the elements it indexes, and each element's prior (its true content
    utility, the slot's true idiosyncratic sd). Keys: elements, index, n, p_true, n_ads, prior_mean,
    prior_sd, resid_sd."""
    rows = train.groupby(["dt", "ad_id", *attr.ELEMENT_COLUMNS], sort=True)[["impressions", "clicks"]].sum()
    rows = rows.reset_index()
    p_true, content = np.empty(len(rows)), {}
    for day, part in rows.groupby("dt", sort=True):
        market = oracle.as_of(day) if hasattr(oracle, "as_of") else oracle
        p_true[part.index.to_numpy()] = true_ctr_of_rows(market, part)
        if hasattr(market, "element_utilities"):
            content.update({(r["ad_id"], r["element_type"], r["element_id"]): r["content_utility"]
                            for r in market.element_utilities()})
    content.update(dict(zip(map(tuple, truth[KEYS].itertuples(index=False)), truth["content_utility"])))
    elements = sorted({(a, s, e) for s in attr.SLOTS
                       for a, e in rows[["ad_id", attr.SLOT_COLUMNS[s]]].itertuples(index=False)})
    pos = {k: j for j, k in enumerate(elements)}
    ads = {a: j for j, a in enumerate(sorted(rows["ad_id"].unique()))}
    index = np.array([[ads[r[0]], *(pos[(r[0], s, e)] for s, e in zip(attr.SLOTS, r[1:]))]
                      for r in rows[["ad_id", *attr.ELEMENT_COLUMNS]].itertuples(index=False)])
    resid_sd = (truth["utility"] - truth["content_utility"]).groupby(truth["slot"]).std()
    return {"elements": elements, "index": index, "n": rows["impressions"].to_numpy(np.float64), "p_true": p_true,
            "n_ads": len(ads), "prior_mean": np.array([content.get(k, 0.0) for k in elements]),
            "prior_sd": np.array([max(resid_sd[s], 1e-3) for _, s, _ in elements]),  # a floor: content may explain all
            "resid_sd": resid_sd}


def content_prior_estimates(problem: dict, rng: np.random.Generator) -> pd.DataFrame:
    """One replicate of the ceiling estimator: clicks redrawn from the true CTRs, then the MAP fit.
    Columns KEYS + estimate, one row per element of the window."""
    y = rng.binomial(problem["n"].astype(np.int64), problem["p_true"]).astype(np.float64)
    est = fit_content_prior_glm(problem["index"], problem["n"], y, problem["n_ads"], problem["prior_mean"],
                                problem["prior_sd"])
    return pd.DataFrame(problem["elements"], columns=KEYS).assign(estimate=est)


def content_ceiling_warm(oracle, truth: pd.DataFrame, train: pd.DataFrame, cfg: EvaluateAttributionConfig) -> dict:
    """Spearman of an estimator given the true priors and the true content function on the same data: a MAP
    logistic fit (per-ad intercepts, element effects ~ N(true content utility, the slot's true idiosyncratic
    sd)) on clicks redrawn from each day's true combination CTRs (the market as of that day) on the training
    window's logged impressions. Every row counts; the elements live on the eval day are ranked."""
    problem = content_prior_problem(oracle, truth, train)
    rng = np.random.default_rng(cfg.seed)
    rhos = []
    for _ in range(cfg.bootstrap_replicates):
        frame = content_prior_estimates(problem, rng).merge(truth, on=KEYS)
        rhos.append(within_group_spearman(frame, "estimate", "utility", cfg.min_group_size)["mean_within_ad_slot"])
    if not rhos:
        return {}
    n, p_true = problem["n"], problem["p_true"]
    return {"warm": float(np.mean(rhos)), "warm_sd": float(np.std(rhos)), "warm_rows": int(len(n)),
            "warm_clicks_per_ad": float((n * p_true).sum() / problem["n_ads"]),
            "prior_residual_sd": problem["resid_sd"].to_dict()}


def cold_start(cfg: EvaluateAttributionConfig, params: Path, scorer: attr.AttributionScorer, truth: pd.DataFrame
               ) -> dict:
    """Cold-start Spearman: the model refitted without `cold_ads_share` of the ads (seeded), then those ads'
    elements scored from their content alone, within (ad, slot) vs the truth; beside the cold ceiling, the
    true content function's own Spearman on the same groups. {} for a content-free model."""
    from pipelines import train_attribution as ta

    tcfg = load_config(ta.TrainAttributionConfig, "train_attribution", params)
    if scorer.content is None or not tcfg.content or cfg.cold_ads_share == 0:
        return {}
    limit_torch_threads(tcfg.torch_threads)  # as train_attribution fits
    rng = np.random.default_rng(cfg.seed)
    held = set(rng.choice(scorer.vocab.ads, max(1, round(cfg.cold_ads_share * len(scorer.vocab.ads))),
                          replace=False).tolist())
    train_days, holdout_days = list(scorer.meta["train_days"]), list(scorer.meta["holdout_days"])
    rows, holdout = ta.load_rows(tcfg, train_days), ta.load_rows(tcfg, holdout_days)
    content = ta.content_inputs(tcfg, params, train_days + holdout_days, None)
    refit, _ = ta.fit(tcfg, rows[~rows["ad_id"].isin(held)], holdout[~holdout["ad_id"].isin(held)], None, content)
    rewards = refit.element_rewards(tcfg.max_combinations_per_ad, seed=tcfg.seed)
    frame = rewards[rewards["ad_id"].isin(held) & ~rewards["warm"]].merge(truth, on=KEYS)
    model = within_group_spearman(frame, "reward", "utility", cfg.min_group_size)
    ceiling = within_group_spearman(frame, "content_utility", "utility", cfg.min_group_size)
    return {"spearman": model["mean_within_ad_slot"], "by_slot": model["by_slot"], "ceiling": ceiling["mean_within_ad_slot"],
            "groups": model["groups"], "held_out_ads": sorted(held)}


# --------------------------------------------------------------------------- plot


def plot_scatter(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centred = frame.copy()
    for col in ("reward", "naive_ctr", "utility"):
        centred[col] = centred[col] - centred.groupby(["ad_id", "slot"])[col].transform("mean")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, col, title in ((axes[0], "reward", "MIL element reward (logit)"),
                           (axes[1], "naive_ctr", "naive marginal CTR")):
        for slot in attr.SLOTS:
            part = centred[centred["slot"] == slot]
            ax.scatter(part["utility"], part[col], s=8, alpha=0.6, label=slot)
        ax.set_xlabel("true element utility (centred within ad, slot)")
        ax.set_ylabel(f"{title}, centred")
        ax.set_title(title)
        ax.legend()
    atomic.save_figure(fig, path, dpi=100)


# --------------------------------------------------------------------------- stage


def main(argv: list[str] | None = None) -> int:
    return run_stage("evaluate_attribution", __doc__, run, argv, ds=None)


def run(ctx: StageContext) -> None:
    attribution_metrics(ctx.config(EvaluateAttributionConfig), ctx.params)


def element_metrics(frame: pd.DataFrame, cfg: EvaluateAttributionConfig) -> dict:
    """Spearman of the model's and the naive marginal CTR's element scores vs the truth, warm elements."""
    mil = within_group_spearman(frame, "reward", "utility", cfg.min_group_size)
    naive = within_group_spearman(frame, "naive_ctr", "utility", cfg.min_group_size)
    return {
        "spearman_method": "per (ad, slot) Spearman vs true utility, averaged over groups; "
                           "_pooled: one Spearman over all elements centred within (ad, slot)",
        "spearman_vs_truth": mil["mean_within_ad_slot"],
        "spearman_vs_truth_pooled": mil["pooled_centred"],
        "spearman_vs_truth_by_slot": mil["by_slot"],
        "baseline_spearman_vs_truth": naive["mean_within_ad_slot"],
        "baseline_spearman_vs_truth_pooled": naive["pooled_centred"],
        "baseline_spearman_vs_truth_by_slot": naive["by_slot"],
        "spearman_vs_uniform_marginal_ctr": within_group_spearman(
            frame, "reward", "uniform_marginal_ctr", cfg.min_group_size)["mean_within_ad_slot"],
        "groups": mil["groups"],
    }


def attribution_metrics(cfg: EvaluateAttributionConfig, params: Path) -> dict:
    """Element- and bag-level metrics against the truth, cold start and the ceilings; writes the metrics and plot."""
    scorer = attr.AttributionScorer.load(MODEL_DIR)
    rewards_path = MODEL_DIR / "element_rewards.parquet"
    if not rewards_path.is_file():
        raise MissingArtifact(f"missing {rewards_path} (run pipelines.train_attribution first)")
    rewards = pd.read_parquet(rewards_path)
    warm = rewards["warm"] if "warm" in rewards else pd.Series(True, index=rewards.index)
    day = window_day(scorer)
    truth, oracle = true_utilities(day)
    frame = rewards[warm].merge(truth, on=KEYS, how="inner")
    if frame.empty:
        raise DataError("no learned element matches an element of the simulated world (stale model or world?)")
    log.info("%d of %d warm learned elements matched to the truth", len(frame), int(warm.sum()))
    metrics = {**element_metrics(frame, cfg), "elements_matched": len(frame), "elements_in_world": len(truth),
               "cold_elements_launched_after_window": int(rewards[~warm].merge(truth, on=KEYS).shape[0]),
               "goal_spearman": cfg.goal_spearman, "eval_day": day}
    metrics["meets_goal"] = bool(metrics["spearman_vs_truth"] >= cfg.goal_spearman)
    metrics["beats_baseline"] = bool(metrics["spearman_vs_truth"] > metrics["baseline_spearman_vs_truth"])
    metrics.update(holdout_auc(scorer, oracle, list(scorer.meta["holdout_days"])))
    train = window_rows(scorer)
    ceiling = content_ceiling_warm(oracle, truth, train, cfg) if "content_utility" in truth else {}
    cold = cold_start(cfg, params, scorer, truth)
    metrics["spearman_cold_start"] = cold.get("spearman")
    metrics["cold_start"] = cold
    metrics["content_ceiling"] = {**ceiling, "cold": cold.get("ceiling")}
    if hasattr(oracle, "content_share"):
        metrics["content_share"] = oracle.content_share()["all"]
        metrics["content_share_by_kind"] = oracle.content_share()
    metrics["holdout_days"] = list(scorer.meta["holdout_days"])
    log.info("Spearman vs truth %.3f warm (naive marginal CTR %.3f; ceiling %s), cold start %s (ceiling %s); "
             "holdout AUC %.4f (oracle combo %.4f)", metrics["spearman_vs_truth"], metrics["baseline_spearman_vs_truth"],
             ceiling.get("warm"), cold.get("spearman"), cold.get("ceiling"), metrics["holdout_auc"],
             metrics["oracle_combo_auc"])
    atomic.write_json(METRICS_FILE, atomic.undefined_as_null(metrics))
    plot_scatter(frame, PLOT_DIR / "scatter.png")
    return metrics


if __name__ == "__main__":
    sys.exit(main())
