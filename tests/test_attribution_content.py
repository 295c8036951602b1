"""The content-aware MIL model: content effects learned across ads, cold-start elements scored from content."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from relate_models import attribution as attr
from relate_models.content_encoder import ContentTable
from relate_models.tokenizer import train_tokenizer
from tests.test_attribution import N_HIGHLIGHTS, N_IMAGES, N_TITLES, mean_within_spearman, synthetic_combo_stats, truth_table

TITLE_WORDS = ("sunny", "bold", "quiet", "rapid", "golden", "tiny", "vivid", "calm")
HIGHLIGHT_WORDS = ("free shipping", "easy returns", "fast delivery", "expert advice", "flexible plans")
EMBEDDING_DIM = 4
MAX_TOKENS = 8


def content_world(seed: int = 3, n_ads: int = 16) -> tuple[dict, pd.DataFrame, dict]:
    """Synthetic ads whose element utilities are a content function shared by every ad plus a small
    idiosyncratic part; (world, element table, the planted word weights)."""
    rng = np.random.default_rng(seed)
    title_w = dict(zip(TITLE_WORDS, rng.normal(0, 0.6, len(TITLE_WORDS))))
    highlight_w = dict(zip(HIGHLIGHT_WORDS, rng.normal(0, 0.4, len(HIGHLIGHT_WORDS))))
    image_w = rng.normal(0, 0.6, EMBEDDING_DIM)
    world, rows = {}, []
    for a in range(n_ads):
        ad_id = f"ad{a:03d}"
        ad = {"product_id": f"p{a:03d}", "appeal": rng.normal(0, 0.5), "title": {}, "image": {}, "highlight": {}}
        for i, word in enumerate(rng.choice(TITLE_WORDS, N_TITLES, replace=False)):
            eid = f"{ad_id}_t{i}"
            ad["title"][eid] = title_w[word] + rng.normal(0, 0.1)
            rows.append({"element_id": eid, "ad_id": ad_id, "kind": "title", "text": f"{word.capitalize()} offer",
                         "embedding": None})
        for i in range(N_IMAGES):
            eid, emb = f"{ad_id}_i{i}", rng.normal(0, 1, EMBEDDING_DIM)
            ad["image"][eid] = float(emb @ image_w) + rng.normal(0, 0.1)
            rows.append({"element_id": eid, "ad_id": ad_id, "kind": "image", "text": None, "embedding": list(emb)})
        for i, phrase in enumerate(rng.choice(HIGHLIGHT_WORDS, N_HIGHLIGHTS, replace=False)):
            eid = f"{ad_id}_h{i}"
            ad["highlight"][eid] = highlight_w[phrase] + rng.normal(0, 0.1)
            rows.append({"element_id": eid, "ad_id": ad_id, "kind": "highlight", "text": phrase.capitalize(),
                         "embedding": None})
        world[ad_id] = ad
    return world, pd.DataFrame(rows), title_w


@pytest.fixture(scope="module")
def trained(one_torch_thread):
    world, elements, title_w = content_world()
    train_ads = sorted(world)[:12]  # the last 4 ads are never trained on: all their elements are cold
    rows = synthetic_combo_stats({a: world[a] for a in train_ads}, ["2026-01-01", "2026-01-02"], 3000)
    tokenizer = train_tokenizer(elements["text"].dropna().tolist() * 3, vocab_size=300, min_frequency=1)
    table = ContentTable.build(elements[elements["ad_id"].isin(train_ads)], tokenizer, MAX_TOKENS, EMBEDDING_DIM)
    settings = attr.FitSettings(steps=300, learning_rate=0.05, l2=100.0, l2_bias=1.0, l2_residual=5.0,
                                l2_content=1.0, seed=0, log_every=100)
    model_cfg = {"embed_dim": 8, "attention_dim": 8, "hash_buckets": 64, "token_vocab": len(tokenizer),
                 "content_dim": EMBEDDING_DIM}
    scorer, _ = attr.fit(rows, settings, model_cfg, content=table, tokenizer=tokenizer)
    return world, elements, title_w, scorer, train_ads


def test_a_planted_content_effect_is_learned_across_ads(trained):
    world, elements, title_w, scorer, _ = trained
    rewards = scorer.element_rewards()
    titles = rewards[rewards["slot"] == "title"].merge(
        elements[["element_id", "text"]], on="element_id")
    by_word = titles.groupby(titles["text"].str.split().str[0].str.lower())["content_reward"].mean()
    planted = pd.Series(title_w).loc[by_word.index]
    # the content head scores each word alike in every ad, in the planted order
    assert spearmanr(by_word, planted).statistic > 0.85
    spread = titles.groupby(titles["text"].str.split().str[0])["content_reward"].std().max()
    assert spread < 1e-5  # one function of the text: the same word scores the same in every ad


def test_a_cold_start_element_is_ranked_from_content_alone(trained, tmp_path):
    world, elements, _, scorer, train_ads = trained
    cold_ads = sorted(set(world) - set(train_ads))
    with pytest.raises(attr.UnknownIdError):
        scorer.score(cold_ads[0], {"title": f"{cold_ads[0]}_t0"})
    scorer.save(tmp_path / "model")
    loaded = attr.AttributionScorer.load(tmp_path / "model").with_elements(elements[elements["ad_id"].isin(cold_ads)])
    rewards = loaded.element_rewards()
    cold = rewards[rewards["ad_id"].isin(cold_ads)]
    assert len(cold) == len(cold_ads) * (N_TITLES + N_IMAGES + N_HIGHLIGHTS) and not cold["warm"].any()
    assert (cold["element_bias"] == 0).all()  # no residual: content alone
    assert rewards.loc[rewards["ad_id"].isin(train_ads), "warm"].all()
    truth = truth_table({a: world[a] for a in cold_ads})
    assert mean_within_spearman(cold, "reward", truth) > 0.75
    # the content-free model has nothing to go on for the same elements
    free = attr.fit(synthetic_combo_stats({a: world[a] for a in train_ads}, ["2026-01-01", "2026-01-02"], 3000),
                    attr.FitSettings(steps=150, learning_rate=0.05, seed=0, log_every=100),
                    {"embed_dim": 8, "attention_dim": 8, "hash_buckets": 64})[0]
    grid = pd.DataFrame([(a, e, None, None) for a in cold_ads for e in world[a]["title"]],
                        columns=["ad_id", *attr.ELEMENT_COLUMNS])
    assert free.score_frame(grid, on_unknown="fallback").unknown_ads == len(grid)


def test_the_generator_may_pick_an_element_with_no_history(trained):
    """A content model's candidates include live elements with no clicks; the reward scores them by content
    plus the exploration bonus, exactly as the scorer does."""
    import torch

    from pipelines.combo_policy import build_problem
    from relate_models import combo_generator as cg

    world, elements, _, scorer, train_ads = trained
    ad = train_ads[0]
    new = pd.DataFrame([{"element_id": f"{ad}_t_new", "ad_id": ad, "kind": "title", "text": "Golden offer",
                         "embedding": None}])
    extended = scorer.with_elements(new)
    problem = build_problem(extended, {a: "travel" for a in train_ads})
    titles = problem.candidates[problem.ad_ids.index(ad)][0]
    assert f"{ad}_t_new" in titles and len(titles) == N_TITLES + 1
    bonus = 0.15
    reward = cg.MILReward.from_scorer(extended, problem, cold_bonus=bonus)
    a = problem.ad_ids.index(ad)
    picks = torch.tensor([[titles.index(f"{ad}_t_new"), 0, 0], [titles.index(f"{ad}_t0"), 0, 0]])
    logit, contribution = reward(torch.tensor([a, a]), picks)
    rows = pd.DataFrame([(ad, f"{ad}_t_new", problem.candidates[a][1][0], problem.candidates[a][2][0]),
                         (ad, f"{ad}_t0", problem.candidates[a][1][0], problem.candidates[a][2][0])],
                        columns=["ad_id", *attr.ELEMENT_COLUMNS])
    expected = extended.score_frame(rows, on_unknown="fallback").logit
    assert logit.numpy() == pytest.approx(expected + np.array([bonus, 0.0]), abs=1e-5)
    assert float(contribution[0, 0]) != 0.0  # content alone gives the new title a reward of its own
