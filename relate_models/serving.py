"""The serving pool: which of a policy's sampled texts go live for a prompt.

GRPO sharpens the policy onto the few phrases that pay, so its samples for one prompt
repeat each other more than SFT's do. A platform serves a rotation of creatives per
ad, not one sample at a time, so the pool is curated: the policy samples `candidates`
texts, texts that break a constraint reward (the compliance lexicon) are dropped, then
`size` texts are added one at a time, each time the one whose word bigrams are most new
to the pool (share of its bigrams not in it yet). The learned CTCVR reward, scaled by
`score_weight` after a z-score within the prompt, is added to that share: a small weight
only breaks the many ties between equally new texts, a large one turns the pool into a
top-k by learned CTCVR (the two-stage ranker's move).

Creatives wear out when the market sees a phrase everywhere, and the pipeline's own logs show
it (relate_models.market_wear): a candidate's wear is the largest smoothed share of the served
search impressions among its word bigrams, and `pool_wear_weight` times it is taken off its
total. A hook the champions served for days is taxed, a fresh one is not, whatever the pool
about to be served does.

The settings are the `serving:` params section (ServingConfig); `generate --pool-from`, the
serving_tables stage and publish's champion re-scoring (for prompts a champion's published
pools lack) all serve through `serving_pools` with the rewards of `learned_rewards`, so they
see the same pool. The evaluate stage's `relate` arm serves serving_tables' pools as written
(models/serving/prompt_pools.parquet): the policy is sampled for them once a day.
Nothing here reads the simulator: the rewards are the ones GRPO trained on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from plumbing.config import load_config, require
from plumbing.dates import shift_ds
from plumbing.paths import ALL_CURATED, CuratedReader
from relate_models.text_metrics import ngrams, words

POOL_REWARDS = ("ctcvr", "quality_compliance")  # the learned rewards the pool scores candidates with


@dataclass
class ServingConfig:
    """The `serving:` params section: how a policy's texts go live."""

    pool_candidates: int  # policy samples per prompt the pool picks from; 0 = serve plain samples, no pool
    pool_ctcvr_weight: float  # weight of the learned-CTCVR z-score beside the share of new bigrams
    pool_wear_weight: float  # taken off a candidate's total per unit of its market wear
    pool_wear_half_life_days: float  # half-life of the moving average of each bigram's served share

    def __post_init__(self) -> None:
        require(self.pool_candidates >= 0, "serving.pool_candidates", f"must be >= 0, got {self.pool_candidates}")
        for name in ("pool_ctcvr_weight", "pool_wear_weight"):
            require(getattr(self, name) >= 0, f"serving.{name}", f"must be >= 0, got {getattr(self, name)}")
        require(self.pool_wear_half_life_days > 0, "serving.pool_wear_half_life_days",
                f"must be > 0, got {self.pool_wear_half_life_days}")

    def market_wear(self, curated: CuratedReader = ALL_CURATED):
        """The wear of the run's served logs the pools are picked with (None: pool_wear_weight is 0)."""
        from relate_models.market_wear import market_wear

        return market_wear(self.pool_wear_weight, self.pool_wear_half_life_days, curated.table("text_stats"))

    def check_pool_size(self, size: int, size_field: str) -> None:
        """A pool of `size` texts needs at least that many candidates (or no pool at all)."""
        require(self.pool_candidates == 0 or self.pool_candidates >= size, "serving.pool_candidates",
                f"must be 0 (no pool) or >= {size_field} ({size}), got {self.pool_candidates}")


def select_pool(texts: Sequence[str], size: int, scores: Sequence[float] | None = None,
                violating: Sequence[bool] | None = None, score_weight: float = 0.0,
                wear: Sequence[float] | None = None) -> list[int]:
    """Indices (into `texts`) of the pool, in the order they were picked.

    `wear` is each text's penalty (already weighted), taken off its total. Violating texts are
    never picked; when every text violates, the pool is empty and the caller decides what to
    serve. Equal totals keep the earlier sample.
    """
    if size < 1:
        raise ValueError(f"select_pool: size must be >= 1, got {size}")
    n = len(texts)
    for name, values in (("scores", scores), ("violating", violating), ("wear", wear)):
        if values is not None and len(values) != n:
            raise ValueError(f"select_pool: {len(values)} {name} for {n} texts")
    bonus = [0.0] * n
    if scores is not None and score_weight:
        mean = sum(scores) / n
        sd = math.sqrt(sum((s - mean) ** 2 for s in scores) / n)
        bonus = [score_weight * (s - mean) / sd if sd > 0 else 0.0 for s in scores]
    if wear is not None:
        bonus = [b - w for b, w in zip(bonus, wear)]
    bigrams = [ngrams(words(t), 2) for t in texts]
    left = [i for i in range(n) if not (violating and violating[i])]
    pool: list[int] = []
    seen: set = set()
    while left and len(pool) < size:
        def total(i: int) -> float:
            new = sum(1 for g in bigrams[i] if g not in seen) / len(bigrams[i]) if bigrams[i] else 0.0
            return new + bonus[i]

        best = max(left, key=lambda i: (total(i), -i))
        left.remove(best)
        pool.append(best)
        seen.update(bigrams[best])
    return pool


def serving_pools(candidates: dict[str, list[str]], prompts: Sequence[dict], rewards, size: int,
                  ctcvr_weight: float, wear=None) -> tuple[dict[str, list[str]], list[str]]:
    """(prompt_id -> its serving pool, the prompts whose every candidate violated and so serve them unpooled).

    Scores come from the learned `ctcvr` and `quality_compliance` rewards, as GRPO saw them; `wear`
    (market_wear.MarketWear, None: off) taxes the phrases the served market already carries.
    """
    from relate_models.rewards import group_kwargs

    by_name = {r.name: r for r in rewards}
    missing = set(POOL_REWARDS) - set(by_name)
    if missing:
        raise ValueError(f"serving pool: reward(s) {sorted(missing)} missing")
    groups = [candidates[row["prompt_id"]] for row in prompts]
    flat, kwargs = group_kwargs(prompts, groups)
    ctcvr = by_name["ctcvr"].score(flat, **kwargs)
    compliance = by_name["quality_compliance"].score(flat, **kwargs)
    penalty = [wear.weight * wear.of(t) for t in flat] if wear else None
    pools, unpooled, start = {}, [], 0
    for row, texts in zip(prompts, groups):
        end = start + len(texts)
        picked = select_pool(texts, size, ctcvr[start:end], [c < 0 for c in compliance[start:end]], ctcvr_weight,
                             penalty[start:end] if penalty else None)
        if not picked:  # nothing compliant to pool: serve the plain samples, and say so
            unpooled.append(row["prompt_id"])
            picked = list(range(min(size, len(texts))))
        pools[row["prompt_id"]] = [texts[i] for i in picked]
        start = end
    return pools, unpooled


def learned_rewards(scorer, params_path, curated: CuratedReader = ALL_CURATED):
    """The grpo stage's reward functions (learned rewards only), to score and pool served texts.

    The compliance rules are those in effect on the day the pools serve, the day after the run's
    day (`curated.run_day()`): a dated rule announced for tomorrow keeps its phrases out of the
    pools published tonight, which the ad server serves from tomorrow."""
    from relate_models.grpo_trainer import GRPOStageConfig, reward_context
    from relate_models.policy import load_search_corpus
    from relate_models.rewards import build_rewards

    grpo_cfg = load_config(GRPOStageConfig, "grpo", params_path)
    run_day = curated.run_day()
    serve_day = shift_ds(run_day, 1) if run_day else None
    ctx = reward_context(grpo_cfg, scorer, load_search_corpus(curated.table("text_stats")), as_of=serve_day)
    return build_rewards(["ctcvr", "quality_structural", "quality_compliance", "diversity"], ctx)
