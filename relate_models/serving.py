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

Nothing here reads the simulator: the rewards are the ones GRPO trained on.
"""
from __future__ import annotations

import math
from typing import Sequence

from relate_models.text_metrics import ngrams, words


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
