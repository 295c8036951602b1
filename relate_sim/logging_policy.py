"""Traffic (who sees which ad, where) and the logging policy (which creative it serves).

The policy was "trained on clicks": it prefers texts with a high click effect (clickbait
included), explores uniformly with a per-ad epsilon (some ads far more than others), never
serves texts the review blocked, and on the feed pairs titles with images against their true
quality. Every served choice is logged with its exact probability (`propensity`).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from relate_sim import grammar
from relate_sim.truth import TruthTables
from relate_sim.world import (FEED_POSITION_PROBS, QUERY_MODIFIER_PROBS, SEARCH_POSITION_PROBS, World)


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = np.exp(x - x.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


@dataclasses.dataclass
class ServingPolicy:
    text_probs: np.ndarray  # [A, T], zero on blocked texts
    combo_probs: np.ndarray  # [A, Ti*I*H]


def build_policy(world: World, tables: TruthTables) -> ServingPolicy:
    c = world.coef
    eps = world.ad_exploration[:, None]
    servable = ~world.text_blocked
    score = np.where(servable, (tables.text_click + world.policy_text_score) / c["policy_temperature"], -np.inf)
    greedy = _softmax(score)
    uniform = servable / servable.sum(axis=1, keepdims=True)
    text_probs = (1 - eps) * greedy + eps * uniform

    A = world.n_ads
    Ti, I, H = world.title_utility.shape[1], world.image_utility.shape[1], world.highlight_utility.shape[1]
    paired = np.zeros((A, Ti, I))
    paired[np.arange(A)[:, None], np.arange(Ti)[None, :], world.policy_pair_image] = 1.0
    logits = ((world.policy_title_score[:, :, None, None] + world.policy_image_score[:, None, :, None]
               + world.policy_highlight_score[:, None, None, :]) / c["policy_temperature"]
              + c["policy_pairing_bonus"] * paired[:, :, :, None]).reshape(A, -1)
    combo_probs = (1 - eps) * _softmax(logits) + eps / (Ti * I * H)
    return ServingPolicy(text_probs=text_probs, combo_probs=combo_probs)


def sample_rows(rng: np.random.Generator, probs: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """One categorical draw per element of `rows` from `probs[row]` (vectorised inverse CDF)."""
    cdf = np.cumsum(probs, axis=1)
    cdf[:, -1] = 1.0  # guard against rounding leaving a gap at the top
    u = rng.random(len(rows))
    out = np.empty(len(rows), dtype=np.int64)
    # group by row so each group is one searchsorted
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    bounds = np.flatnonzero(np.diff(sorted_rows)) + 1
    for group in np.split(order, bounds):
        if len(group):
            out[group] = np.searchsorted(cdf[rows[group[0]]], u[group], side="right")
    return np.minimum(out, probs.shape[1] - 1)


@dataclasses.dataclass
class Traffic:
    """A batch of impression contexts (arrays of equal length)."""

    user: np.ndarray
    segment: np.ndarray
    ad: np.ndarray
    search: np.ndarray  # bool: search placement, else feed
    keyword: np.ndarray  # index into the product's keywords (search only)
    modifier: np.ndarray  # index into grammar.QUERY_MODIFIERS (search only)
    position: np.ndarray  # 1-based


def sample_traffic(world: World, rng: np.random.Generator, n: int, search_share: float) -> Traffic:
    """Draw `n` impression contexts: user -> segment -> vertical (affinity) -> ad -> placement."""
    cfg = world.config
    user = sample_rows(rng, world.user_activity[None, :], np.zeros(n, dtype=np.int64))
    segment = world.user_segment[user]
    vertical = sample_rows(rng, world.segment_vertical_traffic, segment)
    per_vertical = world.ads_by_vertical.shape[1]
    ad = world.ads_by_vertical[vertical, rng.integers(0, per_vertical, size=n)]
    search = rng.random(n) < search_share
    keyword = rng.integers(0, cfg.keywords_per_product, size=n)
    modifier = sample_rows(rng, np.asarray(QUERY_MODIFIER_PROBS)[None, :], np.zeros(n, dtype=np.int64))
    search_pos = 1 + sample_rows(rng, np.asarray(SEARCH_POSITION_PROBS)[None, :], np.zeros(n, dtype=np.int64))
    feed_pos = 1 + sample_rows(rng, np.asarray(FEED_POSITION_PROBS)[None, :], np.zeros(n, dtype=np.int64))
    position = np.where(search, search_pos, feed_pos)
    assert len(grammar.QUERY_MODIFIERS) == len(QUERY_MODIFIER_PROBS)
    return Traffic(user=user, segment=segment, ad=ad, search=search, keyword=keyword, modifier=modifier,
                   position=position)


def segment_weights_for_ad(world: World, ad: int) -> np.ndarray:
    """P(segment | the ad's vertical is shown), from user shares and vertical affinities."""
    vertical = world.products[world.ads[ad]["product"]]["vertical"]
    seg_mass = np.bincount(world.user_segment, weights=world.user_activity, minlength=len(world.segments))
    joint = seg_mass * world.segment_vertical_traffic[:, vertical]
    return joint / joint.sum()
