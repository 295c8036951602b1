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

The pools of all prompts are picked together, rank by rank, under one cross-ad cap: no word
bigram may sit in more than `pool_max_phrase_share` of the pooled texts, each weighted by the
ads its prompt serves. GRPO's policies converge on the same hook for every ad ("fresh picks" on
81% of a champion's pooled texts in the closed loop), and a phrase the whole market shows wears
out for everyone; a pool can only see that across ads (docs/decisions.md, 2026-12-05).

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
    pool_max_phrase_share: float  # most a word bigram may take of all served pool texts, across ads; 1 = no cap

    def __post_init__(self) -> None:
        require(self.pool_candidates >= 0, "serving.pool_candidates", f"must be >= 0, got {self.pool_candidates}")
        require(self.pool_ctcvr_weight >= 0, "serving.pool_ctcvr_weight",
                f"must be >= 0, got {self.pool_ctcvr_weight}")
        require(0.0 < self.pool_max_phrase_share <= 1.0, "serving.pool_max_phrase_share",
                f"must be in (0, 1], got {self.pool_max_phrase_share}")

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
    return select_pools([texts], size, [scores], [violating], score_weight, max_phrase_share=1.0)[0]


def select_pools(groups: Sequence[Sequence[str]], size: int, scores: Sequence[Sequence[float] | None],
                 violating: Sequence[Sequence[bool] | None], score_weight: float, max_phrase_share: float,
                 weights: Sequence[float] | None = None) -> list[list[int]]:
    """Each group's pool (indices into it), picked rank by rank across the groups.

    Within a group a pool is `select_pool`'s. Across groups no word bigram may sit in more than
    `max_phrase_share` of all pooled texts, each text counted with its group's weight (the ads
    the prompt serves): once a bigram's budget is spent, a group takes a text without it, or,
    when none is left, the text that overspends least (summed over its bigrams). Ranks go round the groups in turn, so
    every group's first text is picked before any group's second.
    """
    if size < 1:
        raise ValueError(f"select_pool: size must be >= 1, got {size}")
    if not 0.0 < max_phrase_share <= 1.0:
        raise ValueError(f"select_pools: max_phrase_share must be in (0, 1], got {max_phrase_share}")
    weights = [1.0] * len(groups) if weights is None else [float(w) for w in weights]
    if len(weights) != len(groups) or min(weights, default=0.0) < 0:
        raise ValueError(f"select_pools: need one weight >= 0 per group ({len(groups)}), got {len(weights)}")
    pickers = [_GroupPicker(texts, scores[g], violating[g], score_weight) for g, texts in enumerate(groups)]
    budget = max_phrase_share * size * sum(weights)
    used: dict = {}
    for _ in range(size):
        for picker, w in zip(pickers, weights):
            picker.pick(lambda grams, w=w: sum(max(used.get(g, 0.0) + w - budget, 0.0) for g in grams), used, w)
    return [p.pool for p in pickers]


class _GroupPicker:
    """One group's candidates, its pool so far and its bigrams already pooled."""

    def __init__(self, texts: Sequence[str], scores, violating, score_weight: float) -> None:
        n = len(texts)
        for name, values in (("scores", scores), ("violating", violating)):
            if values is not None and len(values) != n:
                raise ValueError(f"select_pool: {len(values)} {name} for {n} texts")
        self.bonus = [0.0] * n
        if scores is not None and score_weight:
            mean = sum(scores) / n
            sd = math.sqrt(sum((s - mean) ** 2 for s in scores) / n)
            self.bonus = [score_weight * (s - mean) / sd if sd > 0 else 0.0 for s in scores]
        self.bigrams = [ngrams(words(t), 2) for t in texts]
        self.distinct = [set(g) for g in self.bigrams]
        self.left = [i for i in range(n) if not (violating and violating[i])]
        self.pool: list[int] = []
        self.seen: set = set()

    def total(self, i: int) -> float:
        grams = self.bigrams[i]
        new = sum(1 for g in grams if g not in self.seen) / len(grams) if grams else 0.0
        return new + self.bonus[i]

    def pick(self, overspend, used: dict, weight: float) -> None:
        """Add the text that overspends the shared bigram budget least, then has the best total."""
        if not self.left:
            return
        best = max(self.left, key=lambda i: (-overspend(self.distinct[i]), self.total(i), -i))
        self.left.remove(best)
        self.pool.append(best)
        self.seen.update(self.distinct[best])
        for g in self.distinct[best]:
            used[g] = used.get(g, 0.0) + weight


def serving_pools(candidates: dict[str, list[str]], prompts: Sequence[dict], rewards, size: int,
                  ctcvr_weight: float, max_phrase_share: float,
                  weights: dict[str, float] | None = None) -> tuple[dict[str, list[str]], list[str]]:
    """(prompt_id -> its serving pool, the prompts whose every candidate violated and so serve them unpooled).

    Scores come from the learned `ctcvr` and `quality_compliance` rewards, as GRPO saw them. The
    bigram budget (`select_pools`) weighs each prompt by `weights` (prompt_id -> the ads it
    serves; 1 each when None, 0 for a prompt no ad serves).
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
    bounds = [0]
    for texts in groups:
        bounds.append(bounds[-1] + len(texts))
    spans = list(zip(bounds, bounds[1:]))
    picks = select_pools(groups, size, [ctcvr[a:b] for a, b in spans], [[c < 0 for c in compliance[a:b]] for a, b in spans],
                         ctcvr_weight, max_phrase_share,
                         None if weights is None else [weights.get(row["prompt_id"], 0.0) for row in prompts])
    pools, unpooled = {}, []
    for row, texts, picked in zip(prompts, groups, picks):
        if not picked:  # nothing compliant to pool: serve the plain samples, and say so
            unpooled.append(row["prompt_id"])
            picked = list(range(min(size, len(texts))))
        pools[row["prompt_id"]] = [texts[i] for i in picked]
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
