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
    pools, unpooled = serving_pools(candidates, prompts, rewards, size=2, ctcvr_weight=0.1, max_phrase_share=1.0)
    # p1: both compliant texts are all new; the longer one (higher score) first
    assert pools["p1"] == ["fly to rome this week", "cheap flights now"]
    # p2: every candidate violates, so it serves its plain samples, and says so
    assert unpooled == ["p2"] and pools["p2"] == candidates["p2"][:2]
    with pytest.raises(ValueError, match="quality_compliance"):
        serving_pools(candidates, prompts, rewards[:1], size=2, ctcvr_weight=0.1, max_phrase_share=1.0)


def test_cross_ad_cap_keeps_a_shared_hook_to_its_share_of_pooled_texts():
    from relate_models.serving import select_pools

    # every prompt's policy leads with the same hook; each has one text without it
    groups = [[f"fresh picks {k} now", f"fresh picks {k} today", f"made for you {k} deals"]
              for k in ("tires", "hotels", "shoes", "flights")]
    hook = ("fresh", "picks")
    none = [None] * len(groups)

    def hook_share(picks):
        pooled = [groups[g][i] for g, pool in enumerate(picks) for i in pool]
        return sum(" ".join(hook) in t for t in pooled) / len(pooled)

    uncapped = select_pools(groups, 2, none, none, 0.0, max_phrase_share=1.0)
    assert hook_share(uncapped) == 0.5  # each pool: the first text, then the all-new one
    assert [select_pools([g], 2, [None], [None], 0.0, 1.0)[0] for g in groups] == uncapped  # no cap: pools alone
    first_only = select_pools(groups, 1, none, none, 0.0, max_phrase_share=1.0)
    assert hook_share(first_only) == 1.0
    capped = select_pools(groups, 1, none, none, 0.0, max_phrase_share=0.5)
    assert hook_share(capped) == 0.5  # two prompts give the hook up for their text without it
    # a prompt serving many ads spends the budget first; the light ones give the hook up
    weighted = select_pools(groups, 1, none, none, 0.0, max_phrase_share=0.5, weights=[3, 1, 1, 1])
    assert [groups[g][p[0]].startswith("fresh") for g, p in enumerate(weighted)] == [True, False, False, False]


def test_cross_ad_cap_overspends_least_when_no_text_fits():
    from relate_models.serving import select_pools

    groups = [["fresh picks a b", "fresh picks c d"], ["fresh picks a b", "fresh picks e f"]]
    none = [None, None]
    picks = select_pools(groups, 2, none, none, 0.0, max_phrase_share=0.25)
    assert [len(p) for p in picks] == [2, 2]  # pools stay full: the cap ranks, it never empties a pool
    # once the hook is over budget, the second prompt avoids also spending "a b" again
    assert picks[1][0] == 1
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="max_phrase_share"):
            select_pools(groups, 1, none, none, 0.0, max_phrase_share=bad)
    with pytest.raises(ValueError, match="weight"):
        select_pools(groups, 1, none, none, 0.0, max_phrase_share=0.5, weights=[1.0])
