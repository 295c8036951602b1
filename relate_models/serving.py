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

    def __post_init__(self) -> None:
        require(self.pool_candidates >= 0, "serving.pool_candidates", f"must be >= 0, got {self.pool_candidates}")
        require(self.pool_ctcvr_weight >= 0, "serving.pool_ctcvr_weight",
                f"must be >= 0, got {self.pool_ctcvr_weight}")

    def check_pool_size(self, size: int, size_field: str) -> None:
        """A pool of `size` texts needs at least that many candidates (or no pool at all)."""
        require(self.pool_candidates == 0 or self.pool_candidates >= size, "serving.pool_candidates",
                f"must be 0 (no pool) or >= {size_field} ({size}), got {self.pool_candidates}")


def select_pool(texts: Sequence[str], size: int, scores: Sequence[float] | None = None,
                violating: Sequence[bool] | None = None, score_weight: float = 0.0) -> list[int]:
    """Indices (into `texts`) of the pool, in the order they were picked.

    Violating texts are never picked; when every text violates, the pool is empty and the
    caller decides what to serve. Equal totals keep the earlier sample.
    """
    if size < 1:
        raise ValueError(f"select_pool: size must be >= 1, got {size}")
    n = len(texts)
    for name, values in (("scores", scores), ("violating", violating)):
        if values is not None and len(values) != n:
            raise ValueError(f"select_pool: {len(values)} {name} for {n} texts")
    bonus = [0.0] * n
    if scores is not None and score_weight:
        mean = sum(scores) / n
        sd = math.sqrt(sum((s - mean) ** 2 for s in scores) / n)
        bonus = [score_weight * (s - mean) / sd if sd > 0 else 0.0 for s in scores]
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
                  ctcvr_weight: float) -> tuple[dict[str, list[str]], list[str]]:
    """(prompt_id -> its serving pool, the prompts whose every candidate violated and so serve them unpooled).

    Scores come from the learned `ctcvr` and `quality_compliance` rewards, as GRPO saw them.
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
    pools, unpooled, start = {}, [], 0
    for row, texts in zip(prompts, groups):
        end = start + len(texts)
        picked = select_pool(texts, size, ctcvr[start:end], [c < 0 for c in compliance[start:end]], ctcvr_weight)
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
