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

Writes metrics/attribution.json and plots/attribution/scatter.png.

    python -m pipelines.evaluate_attribution [--params params.yaml]
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from scipy.stats import spearmanr

from pipelines import atomic, paths
from pipelines.logs import get_logger
from pipelines.params import ConfigError, load_config, require
from pipelines.train_attribution import MODEL_DIR, PLOT_DIR, read_partition
from relate_models import attribution as attr

log = get_logger(__name__)
METRICS_FILE = paths.METRICS / "attribution.json"
KEYS = ["ad_id", "slot", "element_id"]


@dataclass
class EvaluateAttributionConfig:
    goal_spearman: float = 0.9  # recorded as meets_goal; the stage does not fail below it
    min_group_size: int = 3  # (ad, slot) groups with fewer ranked elements are left out

    def __post_init__(self):
        require(-1 <= self.goal_spearman <= 1, "evaluate_attribution.goal_spearman", "must be in [-1, 1]")
        require(self.min_group_size >= 2, "evaluate_attribution.min_group_size", "must be >= 2")


# --------------------------------------------------------------------------- element level


def within_group_spearman(frame: pd.DataFrame, estimate: str, truth: str, min_group_size: int) -> dict:
    """Spearman of `estimate` vs `truth` per (ad, slot), averaged; pooled after centring; per slot."""
    frame = frame.dropna(subset=[estimate, truth])
    rhos, slots = [], []
    for (ad_id, slot), g in frame.groupby(["ad_id", "slot"], sort=True):
        if len(g) < min_group_size or g[truth].nunique() < 2:
            continue
        rho = spearmanr(g[estimate], g[truth]).statistic
        # a constant estimate ranks nothing: score it 0, not NaN (which would flatter the mean)
        rhos.append(0.0 if np.isnan(rho) else float(rho))
        slots.append(slot)
    if not rhos:
        raise ValueError(f"no (ad, slot) group with >= {min_group_size} elements to rank {estimate} on")
    centred = frame.copy()
    for col in (estimate, truth):
        centred[col] = centred[col] - centred.groupby(["ad_id", "slot"])[col].transform("mean")
    by_slot = pd.Series(rhos).groupby(pd.Series(slots)).mean()
    return {
        "mean_within_ad_slot": float(np.mean(rhos)),
        "pooled_centred": float(spearmanr(centred[estimate], centred[truth]).statistic),
        "by_slot": {s: float(v) for s, v in by_slot.items()},
        "groups": len(rhos),
    }


def true_utilities() -> tuple[pd.DataFrame, "Oracle"]:  # noqa: F821
    from relate_sim.oracle import Oracle

    oracle = Oracle.load()
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
        raise ValueError(f"held-out days {holdout_days} have no feed impressions")
    pos = rows["clicks"].to_numpy(np.float64)
    neg = rows["impressions"].to_numpy(np.float64) - pos
    model_p = scorer.score_frame(rows, on_unknown="fallback", use_context=bool(scorer.context_features)).p_click
    out = {"auc_level": level, "holdout_impressions": int(pos.sum() + neg.sum()),
           "holdout_auc": attr.weighted_auc(model_p, pos, neg)}

    combos = rows[["ad_id", *attr.ELEMENT_COLUMNS]].drop_duplicates()
    ctr = {tuple(c): oracle.true_combo_ctr(*c) for c in combos.itertuples(index=False)}
    combo_p = np.array([ctr[tuple(c)] for c in rows[["ad_id", *attr.ELEMENT_COLUMNS]].itertuples(index=False)])
    out["oracle_combo_auc"] = attr.weighted_auc(combo_p, pos, neg)

    truth_dir = paths.SIM_TRUTH / "impressions"
    if level == "impression" and all((truth_dir / f"dt={d}").is_dir() for d in holdout_days):
        truth = pd.concat([pq.read_table(paths.partition(truth_dir, d), columns=["impression_id", "p_click"]).to_pandas()
                           for d in holdout_days], ignore_index=True)
        joined = rows[["impression_id"]].merge(truth.drop_duplicates("impression_id"), on="impression_id", how="left")
        ok = joined["p_click"].notna().to_numpy()
        out["oracle_auc"] = attr.weighted_auc(joined["p_click"].to_numpy()[ok], pos[ok], neg[ok])
        out["oracle_auc_coverage"] = float(ok.mean())
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


def run(cfg: EvaluateAttributionConfig) -> dict:
    scorer = attr.AttributionScorer.load(MODEL_DIR)
    rewards_path = MODEL_DIR / "element_rewards.parquet"
    if not rewards_path.is_file():
        raise FileNotFoundError(f"missing {rewards_path} (run pipelines.train_attribution first)")
    rewards = pd.read_parquet(rewards_path)
    truth, oracle = true_utilities()
    frame = rewards.merge(truth, on=KEYS, how="inner")
    if frame.empty:
        raise ValueError("no learned element matches an element of the simulated world (stale model or world?)")
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
    }
    metrics["meets_goal"] = bool(metrics["spearman_vs_truth"] >= cfg.goal_spearman)
    metrics["beats_baseline"] = bool(metrics["spearman_vs_truth"] > metrics["baseline_spearman_vs_truth"])
    metrics.update(holdout_auc(scorer, oracle, list(scorer.meta["holdout_days"])))
    metrics["holdout_days"] = list(scorer.meta["holdout_days"])
    log.info("Spearman vs truth %.3f (naive marginal CTR %.3f); holdout AUC %.4f (oracle combo %.4f)",
             metrics["spearman_vs_truth"], metrics["baseline_spearman_vs_truth"], metrics["holdout_auc"],
             metrics["oracle_combo_auc"])
    atomic.write_json(METRICS_FILE, metrics)
    plot_scatter(frame, PLOT_DIR / "scatter.png")
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", help="params file (default: $RELATE_PARAMS or params.yaml)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(EvaluateAttributionConfig, "evaluate_attribution", args.params)
        run(cfg)
    except (ConfigError, ValueError, FileNotFoundError, KeyError) as err:
        log.error("evaluate_attribution failed: %s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
