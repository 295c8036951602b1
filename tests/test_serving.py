"""The serving pool on hand-made texts: novelty first, violations never, scores as tie-breaks."""
from __future__ import annotations

import pytest

from relate_models.serving import select_pool
from relate_models.text_metrics import distinct_n


def test_pool_prefers_texts_with_new_bigrams():
    texts = ["shop cheap flights now", "shop cheap flights now", "shop cheap flights today",
             "book hotels by the sea"]
    # first pick: every text is all new, the earliest wins; then the one sharing no bigram;
    # then "today" (1 of 3 bigrams new) before the exact copy (0 of 3)
    assert select_pool(texts, 3) == [0, 3, 2]
    pool = [texts[i] for i in select_pool(texts, 2)]
    assert distinct_n(pool, 2) > distinct_n(texts[:2], 2)


def test_pool_never_serves_a_violation_and_can_be_short():
    texts = ["best ever deal", "fresh picks today", "guaranteed returns now"]
    assert select_pool(texts, 3, violating=[True, False, True]) == [1]
    assert select_pool(texts, 2, violating=[True, True, True]) == []


def test_scores_break_ties_and_a_large_weight_ranks_by_score():
    texts = ["a b c", "d e f", "g h i"]  # all equally new
    scores = [0.1, 0.3, 0.2]
    assert select_pool(texts, 2) == [0, 1]  # no scores: sample order
    assert select_pool(texts, 2, scores, score_weight=0.01) == [1, 2]
    near_copy = ["x y z w", "x y z q", "m n o p"]
    # a small weight keeps novelty first, a large one serves the near-copy with the best score
    assert select_pool(near_copy, 2, [0.3, 0.2, 0.0], score_weight=0.01) == [0, 2]
    assert select_pool(near_copy, 2, [0.3, 0.2, 0.0], score_weight=10.0) == [0, 1]


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="size"):
        select_pool(["a b"], 0)
    with pytest.raises(ValueError, match="scores"):
        select_pool(["a b", "c d"], 1, scores=[1.0])
    with pytest.raises(ValueError, match="violating"):
        select_pool(["a b", "c d"], 1, violating=[False])


def test_serving_pools_score_with_the_rewards_and_fall_back_loudly():
    from relate_models.serving import serving_pools
    from relate_models.rewards import Reward

    def ctcvr(texts, **kwargs):
        assert kwargs["keyword"] == ["flights"] * 3 + ["hotels"] * 3  # one row field per text
        return [0.1 * len(t) for t in texts]

    def compliance(texts, **kwargs):
        return [-5.0 if "best ever" in t else 0.0 for t in texts]

    rewards = [Reward("ctcvr", "sequence", ctcvr), Reward("quality_compliance", "token", compliance, constraint=True)]
    prompts = [{"prompt_id": "p1", "keyword": "flights"}, {"prompt_id": "p2", "keyword": "hotels"}]
    candidates = {"p1": ["cheap flights now", "best ever flights", "fly to rome this week"],
                  "p2": ["best ever hotels", "best ever hotels today", "best ever hotels now"]}
    pools, unpooled = serving_pools(candidates, prompts, rewards, size=2, ctcvr_weight=0.1)
    # p1: both compliant texts are all new; the longer one (higher score) first
    assert pools["p1"] == ["fly to rome this week", "cheap flights now"]
    # p2: every candidate violates, so it serves its plain samples, and says so
    assert unpooled == ["p2"] and pools["p2"] == candidates["p2"][:2]
    with pytest.raises(ValueError, match="quality_compliance"):
        serving_pools(candidates, prompts, rewards[:1], size=2, ctcvr_weight=0.1)
