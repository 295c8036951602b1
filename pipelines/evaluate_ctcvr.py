"""Stage evaluate_ctcvr: the CTCVR model's held-out day against the simulator's truth.

Joins models/ctcvr/heldout_predictions.parquet with the true probabilities of the same
impressions (data/sim_truth/impressions/dt=<eval day>: p_click, p_conv_given_click) and
reports learned AUC next to the oracle AUC (the truth's own AUC against the same labels),
log loss, calibration, and the baseline. Writes metrics/ctcvr.json and plots/ctcvr/
(training_curve.{csv,png}, reliability.{csv,png}).

    python -m pipelines.evaluate_ctcvr [--params params.yaml]
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pipelines.train_ctcvr import CURVE, PREDICTIONS
from plumbing import atomic
from plumbing.cli import StageContext, run_stage
from plumbing.config import require
from plumbing.errors import DataError, MissingArtifact
from plumbing.logs import get_logger
from plumbing.paths import METRICS, PLOTS, SIM_TRUTH, partition
from plumbing.metrics import auc, expected_calibration_error, log_loss, reliability as reliability_bins

log = get_logger(__name__)

SECTION = "evaluate_ctcvr"
TRUTH_IMPRESSIONS = SIM_TRUTH / "impressions"
OUT_METRICS = METRICS / "ctcvr.json"
PLOT_DIR = PLOTS / "ctcvr"


@dataclass
class EvaluateCTCVRConfig:
    ece_bins: int
    goal_auc_ratio: float

    def __post_init__(self):
        require(self.ece_bins >= 2, f"{SECTION}.ece_bins", f"must be >= 2, got {self.ece_bins}")
        require(0 < self.goal_auc_ratio <= 1.5, f"{SECTION}.goal_auc_ratio",
                f"must be in (0, 1.5], got {self.goal_auc_ratio}")


def load_predictions() -> pd.DataFrame:
    if not PREDICTIONS.is_file():
        raise MissingArtifact(f"{PREDICTIONS} missing; run train_ctcvr first")
    frame = pd.read_parquet(PREDICTIONS)
    needed = {"impression_id", "dt", "p_ctr", "p_cvr", "p_ctcvr", "baseline_p_ctr", "baseline_p_ctcvr", "clicked", "converted"}
    missing = sorted(needed - set(frame.columns))
    if missing:
        raise DataError(f"{PREDICTIONS}: missing column(s) {', '.join(missing)}; rerun train_ctcvr")
    if frame.empty:
        raise DataError(f"{PREDICTIONS} is empty")
    return frame


def load_truth(ds: str) -> pd.DataFrame:
    path = partition(TRUTH_IMPRESSIONS, ds)
    files = sorted(path.glob("part-*.parquet"))
    if not files:
        raise MissingArtifact(f"no simulator truth for the eval day: {path}/part-*.parquet missing")
    return pd.concat(
        [pq.read_table(f, columns=["impression_id", "p_click", "p_conv_given_click"]).to_pandas() for f in files],
        ignore_index=True,
    )


def join_truth(pred: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    joined = pred.merge(truth.drop_duplicates("impression_id"), on="impression_id", how="inner", validate="1:1")
    unmatched = len(pred) - len(joined)
    if len(joined) == 0:
        raise DataError("no held-out impression has a truth row (different simulation?)")
    if unmatched:
        log.warning("%d of %d held-out impressions have no truth row; evaluated on the rest", unmatched, len(pred))
    joined["true_p_ctcvr"] = joined["p_click"] * joined["p_conv_given_click"]
    return joined


def compute_metrics(frame: pd.DataFrame, bins: int, ratio_goal: float) -> dict:
    clicked = frame["clicked"].to_numpy()
    label = clicked * frame["converted"].to_numpy()
    m = {
        "eval_day": str(frame["dt"].iloc[0]),
        "n_eval": int(len(frame)),
        "clicks": int(clicked.sum()),
        "conversions": int(label.sum()),
        "auc_ctcvr": auc(label, frame["p_ctcvr"]),
        "oracle_auc_ctcvr": auc(label, frame["true_p_ctcvr"]),
        "baseline_auc_ctcvr": auc(label, frame["baseline_p_ctcvr"]),
        "auc_ctr": auc(clicked, frame["p_ctr"]),
        "oracle_auc_ctr": auc(clicked, frame["p_click"]),
        "baseline_auc_ctr": auc(clicked, frame["baseline_p_ctr"]),
        "logloss_ctcvr": log_loss(label, frame["p_ctcvr"]),
        "oracle_logloss_ctcvr": log_loss(label, frame["true_p_ctcvr"]),
        "baseline_logloss_ctcvr": log_loss(label, frame["baseline_p_ctcvr"]),
        "logloss_ctr": log_loss(clicked, frame["p_ctr"]),
        "oracle_logloss_ctr": log_loss(clicked, frame["p_click"]),
        "ece_ctcvr": expected_calibration_error(label, frame["p_ctcvr"], bins),
        "baseline_ece_ctcvr": expected_calibration_error(label, frame["baseline_p_ctcvr"], bins),
        "ece_ctr": expected_calibration_error(clicked, frame["p_ctr"], bins),
        # against the truth itself: how far the learned probabilities are from the real ones
        "mae_vs_true_p_ctcvr": float(np.mean(np.abs(frame["p_ctcvr"] - frame["true_p_ctcvr"]))),
        "corr_vs_true_p_ctcvr": float(np.corrcoef(frame["p_ctcvr"], frame["true_p_ctcvr"])[0, 1]),
        "corr_vs_true_p_click": float(np.corrcoef(frame["p_ctr"], frame["p_click"])[0, 1]),
    }
    m["auc_ratio_ctcvr"] = m["auc_ctcvr"] / m["oracle_auc_ctcvr"]
    m["baseline_auc_ratio_ctcvr"] = m["baseline_auc_ctcvr"] / m["oracle_auc_ctcvr"]
    m["auc_ratio_ctr"] = m["auc_ctr"] / m["oracle_auc_ctr"]
    m["ratio_goal"] = ratio_goal
    m["meets_ratio_goal"] = bool(m["auc_ratio_ctcvr"] >= ratio_goal)
    m["beats_baseline"] = bool(m["auc_ctcvr"] > m["baseline_auc_ctcvr"])
    if any(isinstance(v, float) and not np.isfinite(v) for v in m.values()):
        raise DataError(f"non-finite metric on eval day {m['eval_day']} (single-class labels?): {m}")
    return m


def write_plots(frame: pd.DataFrame, curve: dict | None, bins: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label = frame["clicked"].to_numpy() * frame["converted"].to_numpy()
    rows = []
    for name, column in (("model", "p_ctcvr"), ("baseline", "baseline_p_ctcvr"), ("oracle", "true_p_ctcvr")):
        rows += [{"model": name, "bin": i, **b} for i, b in enumerate(reliability_bins(label, frame[column], bins))]
    reliability = pd.DataFrame(rows)
    atomic.write_text(PLOT_DIR / "reliability.csv", reliability.to_csv(index=False))

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, group in reliability.groupby("model", sort=False):
        ax.plot(group["mean_predicted"], group["observed_rate"], marker="o", label=name)
    hi = float(max(reliability["mean_predicted"].max(), reliability["observed_rate"].max()))
    ax.plot([0, hi], [0, hi], "k--", lw=1, label="perfect")
    ax.set(xlabel="mean predicted pCTCVR (equal-mass bins)", ylabel="observed CTCVR", title="CTCVR reliability, held-out day")
    ax.legend()
    _save(fig, PLOT_DIR / "reliability.png")

    if curve and curve.get("epochs"):
        epochs = pd.DataFrame(curve["epochs"])
        atomic.write_text(PLOT_DIR / "training_curve.csv", epochs.to_csv(index=False))
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        left.plot(epochs["epoch"], epochs["train_loss"], marker="o", label="train")
        left.plot(epochs["epoch"], epochs["val_loss"], marker="o", label="validation")
        left.set(xlabel="epoch", ylabel="ESMM loss", title="loss")
        left.legend()
        right.plot(epochs["epoch"], epochs["val_auc_ctr"], marker="o", label="CTR")
        right.plot(epochs["epoch"], epochs["val_auc_ctcvr"], marker="o", label="CTCVR")
        right.set(xlabel="epoch", ylabel="validation AUC", title="validation AUC")
        right.legend()
        _save(fig, PLOT_DIR / "training_curve.png")
    else:
        log.warning("%s missing or empty: no training curve plot", CURVE)


def _save(fig, path) -> None:
    atomic.save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    return run_stage(SECTION, __doc__, run, argv, ds=None)


def run(ctx: StageContext) -> None:
    evaluate_heldout(ctx.config(EvaluateCTCVRConfig))


def evaluate_heldout(cfg: EvaluateCTCVRConfig) -> dict:
    """The held-out day's metrics against the truth; writes metrics/ctcvr.json and the plots."""
    pred = load_predictions()
    days = pred["dt"].unique()
    if len(days) != 1:
        raise DataError(f"{PREDICTIONS}: expected one eval day, found {sorted(days)}")
    frame = join_truth(pred, load_truth(str(days[0])))
    metrics = compute_metrics(frame, cfg.ece_bins, cfg.goal_auc_ratio)
    curve = json.loads(CURVE.read_text(encoding="utf-8")) if CURVE.is_file() else None
    write_plots(frame, curve, cfg.ece_bins)
    atomic.write_json(OUT_METRICS, metrics)
    log.info(
        "eval day %s: auc ctcvr %.4f / oracle %.4f = %.3f (goal %.2f), baseline %.4f; auc ctr %.4f / oracle %.4f; "
        "ece ctcvr %.5f", metrics["eval_day"], metrics["auc_ctcvr"], metrics["oracle_auc_ctcvr"],
        metrics["auc_ratio_ctcvr"], cfg.goal_auc_ratio, metrics["baseline_auc_ctcvr"], metrics["auc_ctr"],
        metrics["oracle_auc_ctr"], metrics["ece_ctcvr"],
    )
    return metrics


if __name__ == "__main__":
    sys.exit(main())
