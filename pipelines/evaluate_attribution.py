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

Noise ceiling (`noise_ceiling`): what the data scale allows. Clicks are redrawn from the
true combination CTRs on the training window's own logged impressions (x each of
`bootstrap_scales`), and a near-Bayes-optimal estimator with oracle knowledge is refitted:
a logistic model with per-ad intercepts, per-slot element effects and (variant `pair`) a
title x image effect, each under a Gaussian prior with the true spread. Its Spearman at
scale 1 bounds what any model can expect from this much data; the larger scales show how
much data the goal needs. `spearman_target_ceiling` is the infinite-data limit: the
Spearman of each element's true uniform-marginal logit effect (what combination clicks
identify: its utility plus its average title x image interaction and, for images, the
audience-weighted segment preference) vs the utility. `argmax_ctr_ratio` is the true CTR
of each fit's best combination over the best one's, averaged over ads.

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
from plumbing.config import require
from plumbing.errors import DataError, MissingArtifact
from plumbing.logs import get_logger
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
    bootstrap_scales: list[float]
    bootstrap_replicates: int  # redraws per scale; 0 = no noise ceiling
    seed: int

    def __post_init__(self):
        require(self.bootstrap_replicates >= 0, "evaluate_attribution.bootstrap_replicates", "must be >= 0")
        require(all(float(x) > 0 for x in self.bootstrap_scales), "evaluate_attribution.bootstrap_scales",
                f"must all be > 0, got {self.bootstrap_scales}")
        require(-1 <= self.goal_spearman <= 1, "evaluate_attribution.goal_spearman", "must be in [-1, 1]")
        require(self.min_group_size >= 2, "evaluate_attribution.min_group_size", "must be >= 2")


# --------------------------------------------------------------------------- element level


def window_day(scorer: attr.AttributionScorer) -> str:
    """The newest day of the model's training window (its held-out days included): the market it is judged in."""
    days = list(scorer.meta.get("train_days") or []) + list(scorer.meta.get("holdout_days") or [])
    if not days:
        raise DataError(f"{MODEL_DIR}/config.json names no train_days or holdout_days")
    return max(days)


def true_utilities(day: str | None = None) -> tuple[pd.DataFrame, "Oracle"]:  # noqa: F821
    """The true element utilities of the market as of `day` (None: day 0), and its oracle."""
    from relate_sim.oracle import Oracle  # not evaluate_harness.load_oracle: this stage never loads the policy code

    oracle = Oracle.load() if day is None else Oracle.load().as_of(day)
    table = pd.DataFrame(oracle.element_utilities()).rename(columns={"element_type": "slot"})
    return table[KEYS + ["utility", "uniform_marginal_ctr"]], oracle


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


# --------------------------------------------------------------------------- noise ceiling


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


def fit_prior_glm(index: np.ndarray, n: np.ndarray, y: np.ndarray, shape: tuple, slot_sd: list[float],
                  pair_sd: float | None) -> tuple[list[np.ndarray], np.ndarray]:
    """MAP logistic fit: per-ad intercept + per-slot effects (+ title x image effect), Gaussian priors.

    index: [rows, 4] (ad, title, image, highlight) positions; shape (A, T, I, H). Returns the
    per-slot uniform-marginal effect estimates [A, K] (the pair's row/column means included)
    and the title x image effect [A, T, I] (zeros without pair_sd).
    """
    a, t, i, h = (torch.as_tensor(index[:, k]) for k in range(4))
    n_t, y_t = torch.as_tensor(n, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    A, T, I, H = shape
    params = [torch.zeros(A, dtype=torch.float64), *(torch.zeros(A, K, dtype=torch.float64) for K in (T, I, H)),
              torch.zeros(A, T, I, dtype=torch.float64)]
    with torch.no_grad():
        params[0].fill_(float(np.log(y.sum() / max(n.sum() - y.sum(), 1.0))))
    for p in params:
        p.requires_grad_(True)
    sds = [*slot_sd, pair_sd or 1.0]
    opt = torch.optim.LBFGS(params, max_iter=100, line_search_fn="strong_wolfe", tolerance_grad=1e-9)

    def closure():
        opt.zero_grad()
        b, et, ei, eh, pair = params
        z = b[a] + et[a, t] + ei[a, i] + eh[a, h] + (pair[a, t, i] if pair_sd else 0.0)
        nll = -(y_t * torch.nn.functional.logsigmoid(z) + (n_t - y_t) * torch.nn.functional.logsigmoid(-z)).sum()
        prior = sum((p ** 2).sum() / (2 * sd ** 2) for p, sd in zip(params[1:], sds))
        loss = nll + prior
        loss.backward()
        return loss

    opt.step(closure)
    _, et, ei, eh, pair = (p.detach().numpy() for p in params)
    return [et + pair.mean(2), ei + pair.mean(1), eh], pair


def noise_ceiling(oracle, truth: pd.DataFrame, train: pd.DataFrame, cfg: EvaluateAttributionConfig) -> dict:
    """Spearman and argmax CTR ratio of oracle-prior refits on clicks redrawn from the truth (see module doc)."""
    rows = train.groupby(["ad_id", *attr.ELEMENT_COLUMNS], sort=True)[["impressions", "clicks"]].sum().reset_index()
    ads = sorted(rows["ad_id"].unique())
    cands = {ad: {s: sorted(g[attr.SLOT_COLUMNS[s]].unique()) for s in attr.SLOTS} for ad, g in rows.groupby("ad_id")}
    sizes = {tuple(len(cands[ad][s]) for s in attr.SLOTS) for ad in ads}
    if len(sizes) != 1:  # the refit works on one dense [ads, titles, images, highlights] grid
        log.warning("noise ceiling skipped: ads differ in candidate counts %s", sorted(sizes))
        return {}
    shape = (len(ads), *(len(cands[ads[0]][s]) for s in attr.SLOTS))
    ctr = np.stack([true_ctr_grid(oracle, ad, cands[ad]) for ad in ads])
    pos = {ad: {s: {e: k for k, e in enumerate(cands[ad][s])} for s in attr.SLOTS} for ad in ads}
    ad_pos = {ad: k for k, ad in enumerate(ads)}
    index = np.array([[ad_pos[r[0]], *(pos[r[0]][s][e] for s, e in zip(attr.SLOTS, r[1:]))]
                      for r in rows[["ad_id", *attr.ELEMENT_COLUMNS]].itertuples(index=False)])
    p_true = ctr[tuple(index.T)]
    logit = np.log(ctr / (1 - ctr))
    # the identified target (uniform-marginal logit effect) and the true title x image interaction
    marginal = [logit.mean(axis=(2, 3)), logit.mean(axis=(1, 3)), logit.mean(axis=(1, 2))]
    ti = logit.mean(3)
    interaction = ti - ti.mean(2, keepdims=True) - ti.mean(1, keepdims=True) + ti.mean((1, 2), keepdims=True)
    slot_sd = [float(truth.loc[truth["slot"] == s, "utility"].std()) for s in attr.SLOTS]
    pair_sd = float(interaction.std()) or None
    best = ctr.reshape(len(ads), -1).max(1)

    def score(effects: list[np.ndarray], pair: np.ndarray) -> tuple[float, float]:
        frame = pd.DataFrame([(ad, s, e, float(effects[k][ad_pos[ad], j])) for ad in ads
                              for k, s in enumerate(attr.SLOTS) for j, e in enumerate(cands[ad][s])],
                             columns=[*KEYS, "estimate"]).merge(truth, on=KEYS)
        rho = within_group_spearman(frame, "estimate", "utility", cfg.min_group_size)["mean_within_ad_slot"]
        z = effects[0][:, :, None, None] + effects[1][:, None, :, None] + effects[2][:, None, None, :]
        z = z + (pair - pair.mean(2, keepdims=True) - pair.mean(1, keepdims=True)
                 + pair.mean((1, 2), keepdims=True))[:, :, :, None]
        picked = ctr.reshape(len(ads), -1)[np.arange(len(ads)), z.reshape(len(ads), -1).argmax(1)]
        return rho, float(np.mean(picked / best))

    target_rho, target_ratio = score(marginal, np.zeros_like(ti))
    out = {"spearman_target_ceiling": target_rho, "argmax_ctr_ratio_target_additive": target_ratio,
           "prior_sd": dict(zip(attr.SLOTS, slot_sd), title_x_image=pair_sd), "by_scale": {}}
    rng = np.random.default_rng(cfg.seed)
    n = rows["impressions"].to_numpy(np.float64)
    for scale in cfg.bootstrap_scales if cfg.bootstrap_replicates else ():
        runs = {"additive": [], "pair": []}
        for _ in range(cfg.bootstrap_replicates):
            n_s = np.round(n * scale)
            y = rng.binomial(n_s.astype(np.int64), p_true).astype(np.float64)
            for name, psd in (("additive", None), ("pair", pair_sd)):
                runs[name].append(score(*fit_prior_glm(index, n_s, y, shape, slot_sd, psd)))
        out["by_scale"][f"{scale:g}"] = {
            "clicks_per_ad": float((n * p_true).sum() * scale / len(ads)),
            **{f"spearman_{k}": float(np.mean([r[0] for r in v])) for k, v in runs.items()},
            **{f"spearman_{k}_sd": float(np.std([r[0] for r in v])) for k, v in runs.items()},
            **{f"argmax_ctr_ratio_{k}": float(np.mean([r[1] for r in v])) for k, v in runs.items()},
        }
        log.info("noise ceiling x%g: %s", scale, out["by_scale"][f"{scale:g}"])
    return out


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
    attribution_metrics(ctx.config(EvaluateAttributionConfig))


def attribution_metrics(cfg: EvaluateAttributionConfig) -> dict:
    """Element- and bag-level metrics against the truth, and the noise ceiling; writes the metrics and plot."""
    scorer = attr.AttributionScorer.load(MODEL_DIR)
    rewards_path = MODEL_DIR / "element_rewards.parquet"
    if not rewards_path.is_file():
        raise MissingArtifact(f"missing {rewards_path} (run pipelines.train_attribution first)")
    rewards = pd.read_parquet(rewards_path)
    day = window_day(scorer)
    truth, oracle = true_utilities(day)
    frame = rewards.merge(truth, on=KEYS, how="inner")
    if frame.empty:
        raise DataError("no learned element matches an element of the simulated world (stale model or world?)")
    log.info("%d of %d learned elements matched to the truth", len(frame), len(rewards))
    mil = within_group_spearman(frame, "reward", "utility", cfg.min_group_size)
    naive = within_group_spearman(frame, "naive_ctr", "utility", cfg.min_group_size)
    metrics = {
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
        "elements_matched": len(frame),
        "elements_in_world": len(truth),
        "goal_spearman": cfg.goal_spearman,
        "eval_day": day,
    }
    metrics["meets_goal"] = bool(metrics["spearman_vs_truth"] >= cfg.goal_spearman)
    metrics["beats_baseline"] = bool(metrics["spearman_vs_truth"] > metrics["baseline_spearman_vs_truth"])
    metrics.update(holdout_auc(scorer, oracle, list(scorer.meta["holdout_days"])))
    train_cols = ["ad_id", *attr.ELEMENT_COLUMNS, "impressions", "clicks"]
    train = pd.concat([read_partition("combo_stats", d, train_cols) for d in scorer.meta["train_days"]],
                      ignore_index=True)
    metrics["noise_ceiling"] = noise_ceiling(oracle, truth, train, cfg)
    metrics["holdout_days"] = list(scorer.meta["holdout_days"])
    log.info("Spearman vs truth %.3f (naive marginal CTR %.3f); holdout AUC %.4f (oracle combo %.4f)",
             metrics["spearman_vs_truth"], metrics["baseline_spearman_vs_truth"], metrics["holdout_auc"],
             metrics["oracle_combo_auc"])
    atomic.write_json(METRICS_FILE, metrics)
    plot_scatter(frame, PLOT_DIR / "scatter.png")
    return metrics


if __name__ == "__main__":
    sys.exit(main())
