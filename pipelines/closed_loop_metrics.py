"""What the closed loop served, measured from the simulator's truth (inside the honesty boundary).

Per day, from data/sim_truth/state/dt=<ds>/served.json (relate_sim/writer.py writes it as the
day is simulated): per placement (search: ad texts, feed: combinations) the true CTR, CVR and
CTCVR of the served impressions (the means of the oracle's probabilities, no outcome noise)
with 95% CIs, the champion's share of the impressions; on search, the compliance of the served
texts (all of them, and those the champion served), distinct-2 of the served texts and the
word bigram on the largest share of the served search impressions (a hook the served creatives
share across ads, which the market wears out).
Windows of days (the last 7) pool the days' sums; uplifts are ratios of two windows' means
with a delta-method CI on the log ratio (the arms' traffic draws are independent).
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import orjson

from plumbing.errors import MissingArtifact
from plumbing.metrics import Z95
from plumbing.paths import SIM_TRUTH
from relate_models.text_metrics import distinct_n, ngrams, words

SUM_KEYS = ("n", "champion", "compliant", "champion_compliant", "sum_ctr", "sum_ctr2", "sum_ctcvr", "sum_ctcvr2",
            "sum_ctr_ctcvr")
# a non-compliant text's true CTCVR valued at nothing (the oracle's rule); served records written before lack them
COMPLIANT_VALUE_KEYS = ("sum_ctcvr_compliant", "sum_ctcvr_compliant2")


def served_record(root: Path, ds: str) -> dict:
    """The simulator's record of what day `ds` served (under the run root `root`)."""
    path = Path(root) / SIM_TRUTH / "state" / f"dt={ds}" / "served.json"
    if not path.is_file():
        raise MissingArtifact(f"{path} is missing: day {ds} was not simulated (or by a simulator without it)")
    return orjson.loads(path.read_bytes())


def day_measurement(root: Path, ds: str, distinct_sample: int, seed: int) -> dict:
    """One day's measurements (see the module doc), with the sums windows pool."""
    record = served_record(root, ds)
    out = {"ds": ds, "served_by": record["served_by"], "sums": record["truth_sums"]}
    for placement, sums in record["truth_sums"].items():
        out[placement] = rates(sums)
    out["search_distinct2"] = served_distinct2(record["search_texts"], distinct_sample, seed)
    out["search_top_bigram"] = top_bigram(record["search_texts"])
    return out


def top_bigram(search_texts: list) -> dict | None:
    """The word bigram carried by the largest share of the served search impressions, and that
    share (a text counts once per bigram it carries; ties: the first served). None: no bigram."""
    counts: Counter = Counter()
    for text, n, _ in search_texts:
        for gram in dict.fromkeys(ngrams(words(text), 2)):
            counts[gram] += n
    total = sum(n for _, n, _ in search_texts)
    if not counts or not total:
        return None
    gram, n = counts.most_common(1)[0]
    return {"bigram": " ".join(gram), "share": n / total}


def served_distinct2(search_texts: list, sample: int, seed: int) -> float | None:
    """distinct-2 of `sample` served search impressions' texts, drawn in proportion to impressions."""
    if not search_texts:
        return None
    texts = [t for t, _, _ in search_texts]
    counts = np.array([n for _, n, _ in search_texts], dtype=float)
    picks = np.random.default_rng(seed).choice(len(texts), size=sample, p=counts / counts.sum())
    return float(distinct_n([texts[i] for i in picks], 2))


def rates(sums: dict) -> dict:
    """Means and 95% CIs of true CTR, CTCVR and CVR (= CTCVR / CTR, delta method) from a placement's sums."""
    n = sums["n"]
    if n == 0:
        return {"impressions": 0}
    ctr, ctr_ci = _mean_ci(sums["sum_ctr"], sums["sum_ctr2"], n)
    ctcvr, ctcvr_ci = _mean_ci(sums["sum_ctcvr"], sums["sum_ctcvr2"], n)
    cvr = ctcvr / ctr if ctr > 0 else float("nan")
    # var of the ratio of means: var(y - R x) / (n * mean(x)^2)
    resid = (sums["sum_ctcvr2"] - 2 * cvr * sums["sum_ctr_ctcvr"] + cvr ** 2 * sums["sum_ctr2"]) / n
    half = Z95 * math.sqrt(max(resid, 0.0) / n) / ctr if ctr > 0 else float("nan")
    return {"impressions": n, "champion_share": sums["champion"] / n,
            "true_ctr": ctr, "true_ctr_ci95": ctr_ci, "true_ctcvr": ctcvr, "true_ctcvr_ci95": ctcvr_ci,
            "true_cvr": cvr, "true_cvr_ci95": [cvr - half, cvr + half],
            "compliance": sums["compliant"] / n,
            "champion_compliance": sums["champion_compliant"] / sums["champion"] if sums["champion"] else None,
            **_compliant_valued(sums, n)}


def _compliant_valued(sums: dict, n: int) -> dict:
    """True CTCVR with non-compliant texts valued at nothing, and its CI; {} for sums without them."""
    if not all(k in sums for k in COMPLIANT_VALUE_KEYS):
        return {}
    mean, ci = _mean_ci(sums["sum_ctcvr_compliant"], sums["sum_ctcvr_compliant2"], n)
    return {"true_ctcvr_compliant_valued": mean, "true_ctcvr_compliant_valued_ci95": ci}


def _mean_ci(total: float, total_sq: float, n: int) -> tuple[float, list[float]]:
    mean = total / n
    var = max(total_sq / n - mean ** 2, 0.0)
    half = Z95 * math.sqrt(var / n)
    return mean, [mean - half, mean + half]


def pooled(days: list[dict], placement: str) -> dict:
    """The rates of `placement` over several days' impressions pooled."""
    keys = SUM_KEYS + tuple(k for k in COMPLIANT_VALUE_KEYS if all(k in d["sums"][placement] for d in days))
    sums = {k: sum(d["sums"][placement][k] for d in days) for k in keys}
    return rates(sums)


def uplift(arm: dict, base: dict, key: str) -> dict:
    """arm / base - 1 of a pooled rate, with a 95% CI from the delta method on log(arm / base)."""
    a, b = arm[key], base[key]
    if not (a > 0 and b > 0):
        return {"uplift": None, "ci95": None}
    se = math.sqrt(sum(((ci[1] - ci[0]) / (2 * Z95) / m) ** 2
                       for m, ci in ((a, arm[f"{key}_ci95"]), (b, base[f"{key}_ci95"]))))
    ratio = a / b
    return {"uplift": ratio - 1, "ci95": [ratio * math.exp(-Z95 * se) - 1, ratio * math.exp(Z95 * se) - 1]}
