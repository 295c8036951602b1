"""The served market's wear: how much of the served search traffic each word bigram already carries.

The pipeline's own logs (curated `text_stats`: impressions per served ad text and day) say which
phrases the market sees everywhere; a creative built on one of them wears out market-wide. Each
bigram's daily share of the served search impressions is smoothed with an exponential moving
average; a text's wear is the largest smoothed share among its bigrams, and the serving pool
(relate_models.serving) takes `serving.pool_wear_weight` times it off a candidate's total.
Nothing here reads the simulator.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from plumbing.errors import MissingArtifact
from relate_models.text_metrics import ngrams, words


@dataclass
class MarketWear:
    """Each word bigram's smoothed share of the served search impressions, and the pool's weight on it."""

    weight: float
    shares: dict[tuple[str, ...], float]

    def of(self, text: str) -> float:
        """The largest smoothed share among the text's bigrams (0.0: none of them served)."""
        return max((self.shares.get(g, 0.0) for g in ngrams(words(text), 2)), default=0.0)


def smoothed_bigram_shares(frame: pd.DataFrame, days: Sequence[str], half_life_days: float) -> dict[tuple[str, ...], float]:
    """Exponential moving average, over `days` in order, of each word bigram's share of the day's
    impressions (`frame`: ad_text, impressions, dt); a text counts once per bigram it carries, and
    a day with no rows decays every share."""
    step = 1.0 - 0.5 ** (1.0 / half_life_days)
    shares: dict[tuple[str, ...], float] = {}
    by_day = {str(dt): g for dt, g in frame.groupby(frame["dt"].astype(str), sort=False, observed=True)}
    for day in days:
        served = by_day.get(day)
        total = float(served["impressions"].sum()) if served is not None else 0.0
        counts: Counter = Counter()
        if total > 0:
            for text, n in served.groupby("ad_text", sort=False)["impressions"].sum().items():
                for gram in set(ngrams(words(text), 2)):
                    counts[gram] += float(n)
        for gram in set(shares) | set(counts):
            shares[gram] = (1.0 - step) * shares.get(gram, 0.0) + step * counts[gram] / (total or 1.0)
    return shares


def load_market_shares(text_stats_dir: str | os.PathLike, half_life_days: float) -> dict[tuple[str, ...], float]:
    """Each word bigram's smoothed share of the served search impressions in curated `text_stats`
    (smoothed_bigram_shares over its `dt=` partitions, oldest first)."""
    text_stats_dir = Path(text_stats_dir)
    days = sorted(p.name[3:] for p in text_stats_dir.iterdir() if p.name.startswith("dt=")) \
        if text_stats_dir.is_dir() else []
    if not days:
        raise MissingArtifact(f"no text_stats partitions under {text_stats_dir}; run ingest first")
    parts = [pd.read_parquet(text_stats_dir / f"dt={d}", columns=["ad_text", "impressions"]).assign(dt=d)
             for d in days]
    return smoothed_bigram_shares(pd.concat(parts, ignore_index=True), days, half_life_days)


def market_wear(weight: float, half_life_days: float, text_stats_dir: str | os.PathLike) -> MarketWear | None:
    """The wear the served logs show, weighted for the pool (None when `weight` is 0: nothing is read)."""
    return MarketWear(weight, load_market_shares(text_stats_dir, half_life_days)) if weight else None
