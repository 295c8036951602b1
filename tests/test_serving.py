"""The serving pool on hand-made texts: novelty first, violations never, scores as tie-breaks."""
from __future__ import annotations

import pytest

from relate_models.serving import select_pool
from tests.conftest import TINY_PARAMS
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


def test_market_wear_is_a_moving_average_of_each_bigrams_served_share():
    import pandas as pd

    from relate_models.market_wear import MarketWear, smoothed_bigram_shares

    frame = pd.DataFrame({"ad_text": ["fresh picks now", "fresh picks today", "shop now", "fresh picks now"],
                          "impressions": [30, 10, 60, 100], "dt": ["d1", "d1", "d1", "d3"]})
    step = 1 - 0.5 ** (1 / 2.0)  # half-life 2 days
    shares = smoothed_bigram_shares(frame, ["d1", "d2", "d3"], 2.0)  # d2: nothing served, every share decays
    assert shares[("fresh", "picks")] == pytest.approx(((step * 0.4) * (1 - step)) * (1 - step) + step * 1.0)
    assert shares[("shop", "now")] == pytest.approx(step * 0.6 * (1 - step) ** 2)
    wear = MarketWear(2.0, shares)
    assert wear.of("Fresh picks, book today") == shares[("fresh", "picks")]  # its most served bigram
    assert wear.of("made for you") == 0.0 and wear.of("one") == 0.0


def test_worn_texts_give_way_to_fresh_ones_and_no_weight_keeps_the_pool():
    from relate_models.market_wear import MarketWear
    from relate_models.rewards import Reward
    from relate_models.serving import serving_pools

    texts = ["fresh picks for flights", "flights made for you", "cheap flights fresh picks"]
    assert select_pool(texts, 2) == [0, 1]
    assert select_pool(texts, 2, wear=[0.0, 0.0, 0.0]) == [0, 1]
    # the worn hook loses its first place, and its other text stays out behind the fresh one
    assert select_pool(texts, 2, wear=[0.6, 0.0, 0.6]) == [1, 0]
    with pytest.raises(ValueError, match="wear"):
        select_pool(texts, 1, wear=[0.1])
    rewards = [Reward("ctcvr", "sequence", lambda t, **k: [0.0] * len(t)),
               Reward("quality_compliance", "token", lambda t, **k: [0.0] * len(t), constraint=True)]
    prompts = [{"prompt_id": "p", "keyword": "flights"}]
    worn = MarketWear(1.0, {("fresh", "picks"): 0.6})
    assert serving_pools({"p": texts}, prompts, rewards, 2, 0.1)[0]["p"] == texts[:2]
    assert serving_pools({"p": texts}, prompts, rewards, 2, 0.1, worn)[0]["p"] == [texts[1], texts[0]]


def test_market_wear_reads_the_runs_text_stats_and_is_off_at_weight_zero(tmp_path):
    import pandas as pd

    from plumbing.config import load_config
    from plumbing.errors import MissingArtifact
    from plumbing.paths import CuratedReader
    from relate_models.serving import ServingConfig

    on, off = (load_config(ServingConfig, "serving", TINY_PARAMS, overrides={"pool_wear_weight": w})
               for w in (0.5, 0.0))
    with pytest.raises(ValueError, match="pool_wear_half_life_days"):
        load_config(ServingConfig, "serving", TINY_PARAMS, overrides={"pool_wear_half_life_days": 0})
    reader = CuratedReader(tmp_path)
    assert off.market_wear(reader) is None  # nothing read
    with pytest.raises(MissingArtifact, match="text_stats"):
        on.market_wear(reader)
    table = tmp_path / "text_stats"
    for day, text in (("2026-01-02", "fresh picks now"), ("2026-01-03", "shop now")):
        (table / f"dt={day}").mkdir(parents=True)
        pd.DataFrame({"ad_text": [text], "impressions": [5]}).to_parquet(table / f"dt={day}" / "part-0.parquet")
    step = 1 - 0.5 ** (1 / on.pool_wear_half_life_days)
    wear = on.market_wear(reader)
    assert wear.weight == 0.5
    assert wear.of("fresh picks") == pytest.approx(step * (1 - step))  # the older day, decayed once
    assert wear.of("shop now") == pytest.approx(step)
