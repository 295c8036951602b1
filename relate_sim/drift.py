"""The drifting market: its config and the pure parts of each effect (relate_sim/market.py applies them).

`market.market_as_of(base, day, phrase_shares, first_served)` returns a `World` whose arrays hold day `day`'s truth
(day 0 = `simulate.start_date`); every other module (truth tables, logging policy, oracle)
works on it unchanged. Day 0 is the base world itself (the same object), so the first day of
every world is exactly the market without drift. The effects (sizes in docs/simulator.md):

- element lifecycle: each day a share `element_replace_rate` of the live elements of every
  ad (search texts, feed titles, images, highlights) is retired and a new element launches
  in its slot (generation g+1; ids get a `-g<N>` suffix). New elements are drawn like the
  originals, from a stream of their own (seed, kind, ad, slot, generation);
- wear-out: creatives lose click logit with their days in market,
  `wear_out_logit * (1 - exp(-age / wear_out_days))`: feed titles and images by days since
  launch (original elements: age = day); search texts by days since the ad first served the
  text's near-duplicate signature (kept in the state like phrase shares; never served: 0);
- random walks: product appeal (click and conversion logits) and segment preferences
  (segment x vertical click, segment x benefit-phrase click, segment x image attribute) add a
  normal increment per day, drawn from a stream per day;
- season: conversion logits of the products of `season_verticals` rise by
  `season_conv_logit` on the `season_days` days from `season_start`;
- phrase fatigue: a phrase loses click logit once its smoothed share of served search
  impressions (an exponential moving average over the days before, from the simulator's own
  serving counts kept in data/sim_truth/state) passes `phrase_fatigue_free_share`. This is the
  one effect where day D depends on days < D: it is deterministic given those days' logs;
- compliance rule: from `rule_date` texts using a `rule_phrases` phrase are non-compliant
  (the platform's side: relate_models/data/compliance_rules/<date>.yaml). The serving-time
  review re-reviews live texts that day (catching `review_catch_rate` of them).
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from plumbing.config import ConfigError, require
from plumbing.dates import parse_ds
from relate_sim import grammar
from relate_sim.streams import stream_rng

KINDS = ("text", "title", "image", "highlight")
_STREAM_LIFECYCLE, _STREAM_WALK = 40, 42  # relate_sim/market.py: 41 (new elements), 43 (re-review)


@dataclasses.dataclass
class DriftConfig:
    """The `simulate.drift` mapping (params.yaml says what each knob does and its unit)."""

    enabled: bool
    element_replace_rate: float
    wear_out_logit: float
    wear_out_days: float
    appeal_walk_sd: float
    preference_walk_sd: float
    season_start: str
    season_days: int
    season_verticals: list[str]
    season_conv_logit: float
    phrase_fatigue_logit: float
    phrase_fatigue_free_share: float
    phrase_fatigue_half_life_days: float
    rule_date: str
    rule_phrases: list[str]
    rule_category: str

    def __post_init__(self) -> None:
        p = "simulate.drift"
        for name in ("season_start", "rule_date"):
            try:
                parse_ds(getattr(self, name))
            except ValueError as err:
                raise ConfigError(f"{p}.{name}: {err}") from None
        require(0.0 <= self.element_replace_rate <= 0.5, f"{p}.element_replace_rate",
                f"must be in [0, 0.5] per day, got {self.element_replace_rate}")
        require(0.0 <= self.phrase_fatigue_free_share < 1.0, f"{p}.phrase_fatigue_free_share",
                f"must be in [0, 1), got {self.phrase_fatigue_free_share}")
        for name in ("wear_out_days", "phrase_fatigue_half_life_days"):
            require(getattr(self, name) > 0, f"{p}.{name}", f"must be > 0 days, got {getattr(self, name)}")
        for name in ("wear_out_logit", "appeal_walk_sd", "preference_walk_sd", "phrase_fatigue_logit"):
            require(getattr(self, name) >= 0, f"{p}.{name}", f"must be >= 0, got {getattr(self, name)}")
        require(self.season_days >= 0, f"{p}.season_days", f"must be >= 0, got {self.season_days}")
        known = {phrase for phrase, _, _ in grammar.LEXICON}
        bad = [ph for ph in self.rule_phrases if ph not in known]
        require(not bad, f"{p}.rule_phrases", f"must be phrases of the simulator's lexicon, got {bad}")
        require(self.rule_category in grammar.NONCOMPLIANT_CATEGORIES, f"{p}.rule_category",
                f"must be one of {grammar.NONCOMPLIANT_CATEGORIES}, got {self.rule_category!r}")


def day_index(start_date: str, ds: str) -> int:
    return (parse_ds(ds) - parse_ds(start_date)).days


def slot_counts(world) -> dict[str, int]:
    cfg = world.config
    return {"text": cfg.texts_per_ad, "title": cfg.titles_per_ad, "image": cfg.images_per_ad,
            "highlight": cfg.highlights_per_ad}


def lifecycle(world, day: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(generation, launch day) of the element live in every (ad, slot) on `day`, per kind.

    Generation 0 is the world's original element (launch day 0); a replacement on day d
    retires the element live until d - 1 and launches the next generation on d."""
    cfg, drift = world.config, world.config.drift
    counts = slot_counts(world)
    gen = {k: np.zeros((world.n_ads, n), dtype=np.int64) for k, n in counts.items()}
    launch = {k: np.zeros((world.n_ads, n), dtype=np.int64) for k, n in counts.items()}
    for d in range(1, day + 1):
        rng = stream_rng(cfg.seed, _STREAM_LIFECYCLE, d)
        for kind in KINDS:
            replaced = rng.random(gen[kind].shape) < drift.element_replace_rate
            gen[kind] += replaced
            launch[kind][replaced] = d
    return gen, launch


def random_walk(world, day: int) -> dict[str, np.ndarray]:
    """Summed daily increments of days 1..day for appeal and segment preferences."""
    cfg, drift = world.config, world.config.drift
    n_products, (S, V) = len(world.products), world.segment_vertical_click.shape
    benefit = np.array([slot == "benefit" for _, slot, _ in grammar.LEXICON])
    out = {"appeal_click": np.zeros(n_products), "appeal_conv": np.zeros(n_products),
           "segment_vertical_click": np.zeros((S, V)), "phrase_segment_click": np.zeros(world.phrase_segment_click.shape),
           "segment_image_preference": np.zeros(world.segment_image_preference.shape)}
    for d in range(1, day + 1):
        rng = stream_rng(cfg.seed, _STREAM_WALK, d)
        out["appeal_click"] += rng.normal(0.0, drift.appeal_walk_sd, n_products)
        out["appeal_conv"] += rng.normal(0.0, drift.appeal_walk_sd, n_products)
        out["segment_vertical_click"] += rng.normal(0.0, drift.preference_walk_sd, (S, V))
        out["phrase_segment_click"] += benefit[:, None] * rng.normal(0.0, drift.preference_walk_sd,
                                                                     world.phrase_segment_click.shape)
        out["segment_image_preference"] += rng.normal(0.0, drift.preference_walk_sd,
                                                      world.segment_image_preference.shape)
    return out


def smoothed_phrase_share(world, day: int, phrase_shares: dict[int, np.ndarray]) -> np.ndarray:
    """EMA over days < `day` of each phrase's share of served search impressions (0 before day 0).

    `phrase_shares[d]`: shares of day d (the simulator's counts); a missing day raises."""
    drift = world.config.drift
    weight = 1.0 - 0.5 ** (1.0 / drift.phrase_fatigue_half_life_days)
    ema = np.zeros(len(grammar.LEXICON))
    for d in range(day):
        if d not in phrase_shares:
            raise KeyError(f"phrase shares of day {d} are needed for day {day}: simulate the days in order")
        ema = (1.0 - weight) * ema + weight * np.asarray(phrase_shares[d], dtype=float)
    return ema


def phrase_fatigue(world, ema: np.ndarray) -> np.ndarray:
    """Click logit each phrase loses at smoothed share `ema`."""
    drift = world.config.drift
    over = np.clip(ema - drift.phrase_fatigue_free_share, 0.0, None) / (1.0 - drift.phrase_fatigue_free_share)
    return drift.phrase_fatigue_logit * over


def in_season(world, day: int) -> bool:
    drift = world.config.drift
    start = day_index(world.config.start_date, drift.season_start)
    return start <= day < start + drift.season_days


def banned_phrase_ids(world, day: int) -> frozenset[int]:
    drift = world.config.drift
    if not drift.enabled or day < day_index(world.config.start_date, drift.rule_date):
        return frozenset()
    return frozenset(i for i, (phrase, _, _) in enumerate(grammar.LEXICON) if phrase in drift.rule_phrases)


def signature_hash(signature: str) -> int:
    """A stable 62-bit key of a creative signature (user fatigue is kept per user and signature across days)."""
    return int.from_bytes(hashlib.blake2b(signature.encode("utf-8"), digest_size=8).digest(), "little") >> 2


def text_key(ad: int, signature: str) -> int:
    """The key of an ad's search creative (its near-duplicate signature) in the first-served memory."""
    return signature_hash(f"{ad}|{signature}")


def wear(drift: DriftConfig, age) -> np.ndarray:
    """Click logit a creative `age` days in market has lost."""
    return drift.wear_out_logit * (1.0 - np.exp(-np.maximum(np.asarray(age, dtype=float), 0.0) / drift.wear_out_days))


def served_phrase_shares(texts, max_chars: int) -> np.ndarray:
    """Share of `texts` (one per served search impression) using each lexicon phrase: the input of phrase fatigue."""
    counts = np.zeros(len(grammar.LEXICON))
    n = 0
    for text in texts:
        counts[list(grammar.analyze_text(text, max_chars).phrase_ids)] += 1.0
        n += 1
    return counts / max(n, 1)
