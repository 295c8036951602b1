"""Every metric's maths in one place: ranking (AUC), probability quality (log loss, binomial
NLL, calibration), interval statistics (Wilson, mean, difference and paired-uplift intervals)
and rank correlation within groups. In the leaf package, so the simulator's oracle and the
models score with the same code. Text diversity (distinct-n, self-BLEU) lives in text_metrics.

Pure functions of arrays and frames: no stage, artifact or simulator in sight, so the
training stages, the evaluation and the real-data checks all score with the same code.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from plumbing.errors import DataError

Z95 = 1.959963984540054  # two-sided 95% normal quantile


# ----------------------------------------------------------------------------- ranking
def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC with ties averaged; NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    if labels.size == 0 or labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, scores))


def weighted_auc(scores: np.ndarray, positives: np.ndarray, negatives: np.ndarray) -> float:
    """ROC AUC of aggregated rows: each row is `positives` clicked and `negatives` unclicked
    impressions sharing one score (ties count one half). NaN without both classes."""
    scores = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positives, dtype=np.float64)
    neg = np.asarray(negatives, dtype=np.float64)
    total_pos, total_neg = pos.sum(), neg.sum()
    if total_pos <= 0 or total_neg <= 0:
        return float("nan")
    uniq, inverse = np.unique(scores, return_inverse=True)
    pos_g = np.bincount(inverse, weights=pos, minlength=len(uniq))
    neg_g = np.bincount(inverse, weights=neg, minlength=len(uniq))
    neg_below = np.cumsum(neg_g) - neg_g
    return float((pos_g * (neg_below + 0.5 * neg_g)).sum() / (total_pos * total_neg))


# ----------------------------------------------------------------------------- probabilities
def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def binomial_nll(p: np.ndarray, clicks: np.ndarray, impressions: np.ndarray) -> np.ndarray:
    """Binomial negative log likelihood of each row's (clicks, impressions) under its p."""
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return -(clicks * np.log(p) + (impressions - clicks) * np.log1p(-p))


def binomial_nll_per_impression(p: np.ndarray, clicks: np.ndarray, impressions: np.ndarray) -> float:
    return float(binomial_nll(p, clicks, impressions).sum() / impressions.sum())


def binomial_nll_logits(logit, clicks, impressions):
    """Summed negative log-likelihood of `clicks` out of `impressions` (binomial, no constant),
    from torch logits: the training loss of the MIL model, differentiable."""
    from torch.nn.functional import logsigmoid

    return -(clicks * logsigmoid(logit) + (impressions - clicks) * logsigmoid(-logit)).sum()


def reliability(labels: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> list[dict]:
    """Equal-mass bins (rare events put everything in one equal-width bin): mean p vs rate."""
    labels = np.asarray(labels, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.size == 0:
        return []
    order = np.argsort(probs, kind="stable")
    bins = []
    for chunk in np.array_split(order, min(n_bins, probs.size)):
        bins.append(
            {"mean_predicted": float(probs[chunk].mean()), "observed_rate": float(labels[chunk].mean()), "count": int(chunk.size)}
        )
    return bins


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    bins = reliability(labels, probs, n_bins)
    total = sum(b["count"] for b in bins)
    if total == 0:
        return float("nan")
    return float(sum(b["count"] * abs(b["mean_predicted"] - b["observed_rate"]) for b in bins) / total)


# ----------------------------------------------------------------------------- intervals
def wilson(successes: int, trials: int) -> tuple[float, float, float]:
    """(estimate, low, high), Wilson score interval at 95%."""
    if trials <= 0:
        return float("nan"), 0.0, 1.0
    p, z2 = successes / trials, Z95 * Z95
    denom = 1 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denom
    return p, max(0.0, centre - half), min(1.0, centre + half)


def diff_ci(a: tuple[int, int], b: tuple[int, int]) -> tuple[float, float, float]:
    """(p_b - p_a, low, high) for successes/trials pairs `a`, `b`: normal approximation at 95%."""
    (sa, na), (sb, nb) = a, b
    pa, pb = sa / na, sb / nb
    half = Z95 * math.sqrt(pa * (1 - pa) / na + pb * (1 - pb) / nb)
    return (pb - pa, pb - pa - half, pb - pa + half)


def mean_ci(values: np.ndarray) -> tuple[float, float, float]:
    """(mean, low, high): normal interval of a mean over independent impressions."""
    values = np.asarray(values, dtype=float)
    m = float(values.mean())
    half = Z95 * float(values.std(ddof=1)) / math.sqrt(len(values)) if len(values) > 1 else float("inf")
    return m, m - half, m + half


def paired_uplift(base: np.ndarray, arm: np.ndarray) -> tuple[float, float, float]:
    """(mean(arm) / mean(base) - 1, low, high) over paired impressions (delta method).

    The pairing (same contexts, same draws) is what makes the interval narrow: the variance
    is that of arm_i - R * base_i, not of two independent samples.
    """
    base, arm = np.asarray(base, dtype=float), np.asarray(arm, dtype=float)
    mb, ma = base.mean(), arm.mean()
    if mb <= 0:
        return float("nan"), float("nan"), float("nan")
    ratio = ma / mb
    resid = arm - ratio * base
    se = float(resid.std(ddof=1)) / math.sqrt(len(base)) / mb if len(base) > 1 else float("inf")
    return ratio - 1, ratio - 1 - Z95 * se, ratio - 1 + Z95 * se


# ----------------------------------------------------------------------------- rank correlation
def within_group_spearman(frame: pd.DataFrame, estimate: str, truth: str, min_group_size: int) -> dict:
    """Spearman of `estimate` vs `truth` per (ad, slot), averaged; pooled after centring; per slot."""
    from scipy.stats import spearmanr

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
        raise DataError(f"no (ad, slot) group with >= {min_group_size} elements to rank {estimate} on")
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
