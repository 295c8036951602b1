"""GenCO's combination generator: masking, planted optimum, per-slot credit, scale, artifacts, the stages."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from relate_models import attribution as attr
from relate_models import combo_generator as cg
from tests.test_attribution import synthetic_curated_tree, synthetic_world, true_logit


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def grid_problem(n_ads: int, n_slots: int, n_candidates: int, forbidden=()) -> cg.ComboProblem:
    return cg.ComboProblem(
        ad_ids=[f"ad{a}" for a in range(n_ads)], slots=[f"s{s}" for s in range(n_slots)],
        candidates=[[[f"ad{a}_s{s}_e{j}" for j in range(n_candidates)] for s in range(n_slots)] for a in range(n_ads)],
        forbidden=list(forbidden))


def additive_reward(utility: torch.Tensor):
    """Reward = sum of planted per-(ad, slot, candidate) utilities; contributions = the terms."""
    def reward(ads, picks):
        parts = utility[ads].gather(2, picks.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (picks >= 0)
        return parts.sum(1), parts
    return reward


# --------------------------------------------------------------------------- masking and constraints


def test_sampling_respects_each_ads_candidates_absent_slots_and_constraints():
    problem = cg.ComboProblem(
        ad_ids=["a", "b"], slots=["title", "image", "highlight"],
        candidates=[[["a_t0", "a_t1", "a_t2"], ["a_i0", "a_i1"], ["a_h0"]],
                    [["b_t0"], ["b_i0", "b_i1", "b_i2", "b_i3"], []]],  # ad b has no highlight slot
        forbidden=[("a", "title", "a_t0", "image", "a_i0"), (None, "title", "b_t0", "image", "b_i2"),
                   ("a", "image", "a_i1", "highlight", "a_h0")])
    policy = cg.ComboPolicy.create(problem, hidden_dim=8, seed=0)
    ads = torch.tensor([0, 1]).repeat_interleave(400)
    out = policy.sample(ads, torch.Generator().manual_seed(1))
    seen = set()
    for a, picks in zip(ads.tolist(), out.picks.tolist()):
        ids = problem.picks_to_ids(a, picks)
        for s, e in enumerate(ids):
            if e is not None:
                assert e in problem.candidates[a][s]  # never another ad's element, never padding
        if a == 0:
            assert None not in ids
            assert not (ids[0] == "a_t0" and ids[1] == "a_i0")
            assert ids[1] != "a_i1"  # a_i1 forbids the only highlight: it could never be completed
        else:
            assert ids[2] is None and picks[2] == -1 and float(out.logp.detach()[ads.tolist().index(1), 2]) == 0.0
            assert ids[1] != "b_i2"
        seen.add(tuple(ids))
    # everything allowed does get sampled: the masks remove exactly the forbidden picks
    assert {c for c in seen if c[0].startswith("b")} == {("b_t0", f"b_i{k}", None) for k in (0, 1, 3)}
    # a_t0 goes only with a_i1, which is dead: (t1|t2, i0, h0) are all that is left
    assert {c for c in seen if c[0].startswith("a")} == {("a_t1", "a_i0", "a_h0"), ("a_t2", "a_i0", "a_h0")}
    # beam search obeys the same masks and returns distinct combinations
    top = policy.top_k(10)
    for row in top:
        assert not (row["title"] == "a_t0" and row["image"] == "a_i0") and row["image"] not in ("a_i1", "b_i2")
    assert len({(r["ad_id"], r["title"], r["image"], r["highlight"]) for r in top}) == len(top) == 2 + 3


def test_problem_and_teacher_forcing_reject_bad_input():
    with pytest.raises(ValueError, match="no candidate element"):
        cg.ComboProblem(ad_ids=["a"], slots=["title"], candidates=[[[]]])
    with pytest.raises(ValueError, match="leave no candidate for slot 's0'"):
        grid_problem(1, 2, 1, forbidden=[(None, "s0", "ad0_s0_e0", "s1", "ad0_s1_e0")]).tensors()
    with pytest.raises(ValueError, match="two different slots"):
        grid_problem(1, 2, 2, forbidden=[(None, "s0", "x", "s0", "y")])
    policy = cg.ComboPolicy.create(grid_problem(1, 2, 3), hidden_dim=8)
    with pytest.raises(ValueError, match="not an allowed candidate"):
        policy.log_prob(torch.tensor([0]), torch.tensor([[0, 5]]))
    with pytest.raises(ValueError, match="not an allowed candidate"):
        policy.log_prob(torch.tensor([0]), torch.tensor([[-1, 0]]))  # a present slot cannot be skipped


# --------------------------------------------------------------------------- credit assignment


def test_slot_advantages_on_a_hand_made_group():
    # three groups of 3 (one ad each): all slots present; slot 1 absent for the ad; a constant reward
    reward = torch.tensor([3.0, 1.0, 2.0, 1.0, 0.0, 2.0, 5.0, 5.0, 5.0])
    contribution = torch.tensor([[2.0, 1.0], [0.0, 1.0], [1.0, 0.5],
                                 [1.0, 9.0], [0.0, 9.0], [1.0, 9.0],
                                 [1.0, 2.0], [2.0, 1.0], [0.0, 3.0]])
    present = torch.tensor([[True, True]] * 3 + [[True, False]] * 3 + [[True, True]] * 3)
    adv = cg.slot_advantages(reward, contribution, present, group_size=3) * (1 + cg.EPS)
    # group 1: mean R 2, std 1; slot 0 centred 1, -1, 0; slot 1 centred 1/6, 1/6, -1/3;
    # unclaimed R - sum(c) = 0, 0, 0.5 -> centred -1/6, -1/6, 1/3, half to each slot
    expected = torch.tensor([[11 / 12, 1 / 12], [-13 / 12, 1 / 12], [1 / 6, -1 / 6]])
    assert torch.allclose(adv[:3], expected, atol=1e-5)
    # group 2: the absent slot gets nothing (its contribution is ignored); slot 0 takes it all
    assert torch.allclose(adv[3:6], torch.tensor([[0.0, 0.0], [-1.0, 0.0], [1.0, 0.0]]), atol=1e-5)
    # the slot advantages of a sample sum to its sequence advantage (R - mean) / std
    assert torch.allclose(adv[:6].sum(1), torch.tensor([1.0, -1.0, 0.0, 0.0, -1.0, 1.0]), atol=1e-5)
    # a constant total whose slot contributions trade off: only the trade-off is taught, at the
    # scale of one slot's spread (std 1 here), not blown up by the zero std of the total
    assert torch.allclose(adv[6:], torch.tensor([[0.0, 0.0], [1.0, -1.0], [-1.0, 1.0]]), atol=1e-5)
    seq = cg.slot_advantages(reward, contribution, present, group_size=3, credit_assignment=False) * (1 + cg.EPS)
    assert torch.allclose(seq[:6], torch.tensor([[1.0, 1.0], [-1.0, -1.0], [0.0, 0.0],
                                                 [0.0, 0.0], [-1.0, 0.0], [1.0, 0.0]]), atol=1e-5)
    with pytest.raises(ValueError, match="whole groups"):
        cg.slot_advantages(reward[:5], contribution[:5], present[:5], group_size=3)


# --------------------------------------------------------------------------- learning


def test_trained_generator_finds_the_planted_best_combination():
    n_ads, n_slots, n_cand = 6, 3, 5
    gen = torch.Generator().manual_seed(3)
    utility = torch.randn(n_ads, n_slots, n_cand, generator=gen) * 0.5
    best = utility.argmax(-1)
    utility[torch.arange(n_ads).unsqueeze(1), torch.arange(n_slots), best] += 0.3  # a clear, unique optimum
    policy = cg.ComboPolicy.create(grid_problem(n_ads, n_slots, n_cand), hidden_dim=16, seed=0)
    settings = cg.TrainSettings(steps=80, group_size=16, learning_rate=0.03, entropy_coef=0.1, entropy_target=0.3,
                                seed=0, log_every=40)
    history = policy.train(additive_reward(utility), settings)
    assert history[-1]["mean_reward"] > history[0]["mean_reward"] + 1.0
    top = policy.top_k(3)
    top1 = [r["picks"] for r in top if r["rank"] == 1]
    assert top1 == best.tolist()
    # diversity control: the policy still samples alternatives
    div = cg.diversity_metrics(policy, top, samples_per_ad=32, seed=0)
    assert div["distinct_combos_in_samples_per_ad"] > 1.5 and div["distinct_combos_in_top_k_per_ad"] == 3


def test_stress_space_of_a_hundred_thousand_combinations_samples_and_trains():
    problem = grid_problem(n_ads=3, n_slots=5, n_candidates=10)
    assert problem.n_combinations(0) == 10 ** 5
    utility = torch.randn(3, 5, 10, generator=torch.Generator().manual_seed(0))
    policy = cg.ComboPolicy.create(problem, hidden_dim=16, seed=0)
    history = policy.train(additive_reward(utility), cg.TrainSettings(steps=4, group_size=8, log_every=2))
    assert len(history) == 3 and all(np.isfinite(h["loss"]) for h in history)
    out = policy.sample(torch.arange(3).repeat_interleave(64), torch.Generator().manual_seed(0))
    assert out.picks.shape == (192, 5) and bool((out.picks >= 0).all() and (out.picks < 10).all())
    top = policy.top_k(4)
    assert len(top) == 12 and all(r["logp"] <= 0 for r in top)


def test_save_load_round_trip_gives_identical_scores(tmp_path):
    problem = grid_problem(2, 3, 4, forbidden=[(None, "s0", "ad0_s0_e0", "s1", "ad0_s1_e1")])
    policy = cg.ComboPolicy.create(problem, hidden_dim=8, seed=1)
    policy.train(additive_reward(torch.randn(2, 3, 4)), cg.TrainSettings(steps=3, group_size=4, log_every=1))
    policy.save(tmp_path)
    loaded = cg.ComboPolicy.load(tmp_path)
    ads = torch.tensor([0, 1]).repeat_interleave(20)
    picks = policy.sample(ads, torch.Generator().manual_seed(5)).picks
    assert torch.equal(policy.log_prob(ads, picks).logp, loaded.log_prob(ads, picks).logp)
    assert policy.top_k(5) == loaded.top_k(5)
    with pytest.raises(FileNotFoundError, match="generator.safetensors"):
        cg.ComboPolicy.load(tmp_path / "nothing")


def test_mil_reward_matches_the_attribution_scorer():
    world = synthetic_world(n_ads=3)
    rows = pd.DataFrame([{"ad_id": a, "product_id": ad["product_id"], "title_id": t, "image_id": i, "highlight_id": h,
                          "impressions": 100, "clicks": int(100 / (1 + np.exp(-true_logit(ad, (t, i, h)))))}
                         for a, ad in world.items() for t, i, h in itertools.product(ad["title"], ad["image"],
                                                                                       ad["highlight"])])
    settings = attr.FitSettings(steps=20, log_every=20, l2_pair=8.0)
    scorer, _ = attr.fit(rows, settings, {"embed_dim": 4, "attention_dim": 4, "hash_buckets": 32})
    problem = cg.ComboProblem(ad_ids=scorer.vocab.ads, slots=list(attr.SLOTS),
                              candidates=[[scorer.vocab.ad_elements(a)[s] for s in attr.SLOTS] for a in scorer.vocab.ads])
    assert scorer.model.pair_bias.weight.abs().max() > 0.01  # the (title, image) pair effects take part
    reward = cg.MILReward.from_scorer(scorer, problem)
    ads = torch.tensor([0, 1, 2, 2])
    picks = torch.tensor([[0, 0, 0], [5, 2, 3], [1, 4, 2], [3, 3, 1]])
    logit, contribution = reward(ads, picks)
    combos = [dict(zip(attr.SLOTS, problem.picks_to_ids(a, p))) for a, p in zip(ads.tolist(), picks.tolist())]
    expected = scorer.score([problem.ad_ids[a] for a in ads.tolist()], combos)
    assert np.allclose(logit.numpy(), expected.logit, atol=1e-5)
    assert np.allclose(contribution.numpy(), expected.contribution, atol=1e-5)


# --------------------------------------------------------------------------- the stages


class _StandInOracle:
    """The synthetic world's true CTRs behind relate_sim.oracle.Oracle's interface (A/B without fatigue)."""

    def __init__(self, world: dict):
        self.world = world
        self.ad_ids = sorted(world)

    def true_combo_ctr(self, ad_id, title_id, image_id, highlight_id) -> float:
        return float(1 / (1 + np.exp(-true_logit(self.world[ad_id], (title_id, image_id, highlight_id)))))

    def oracle_best_combo(self, ad_id) -> dict:
        ad = self.world[ad_id]
        best = max(itertools.product(ad["title"], ad["image"], ad["highlight"]), key=lambda c: true_logit(ad, c))
        return {"ad_id": ad_id, **dict(zip(attr.ELEMENT_COLUMNS, best)), "ctr": self.true_combo_ctr(ad_id, *best)}

    def ad_info(self, ad_id) -> dict:
        return {f"{s}_ids": list(self.world[ad_id][s]) for s in attr.SLOTS}

    def ab_test_combos(self, policy, n_impressions: int, seed: int):
        from relate_sim.oracle import ABResult

        rng = np.random.default_rng(seed)
        clicks, expected = 0, 0.0
        for i in range(n_impressions):
            ad_id = self.ad_ids[i % len(self.ad_ids)]
            p = self.true_combo_ctr(ad_id, *policy({"ad_id": ad_id, "impression": i}))
            expected += p
            clicks += bool(rng.random() < p)
        return ABResult(n_impressions, clicks, 0, 0, expected, 0.0, 0)


def test_policy_and_evaluate_stages_end_to_end(tiny_params, monkeypatch):
    from pipelines import combo_policy, evaluate_combo, train_attribution

    world = synthetic_world(n_ads=6)
    synthetic_curated_tree(Path.cwd(), world)
    assert train_attribution.main([]) == 0
    assert combo_policy.main([]) == 0
    serving = pd.read_parquet("models/combo_policy/serving.parquet")
    assert list(serving.columns[:6]) == ["ad_id", "rank", "title_id", "image_id", "highlight_id", "score"]
    assert set(serving["ad_id"]) == set(world) and (serving.groupby("ad_id")["rank"].max() == 3).all()
    for row in serving.itertuples():
        ad = world[row.ad_id]
        assert row.title_id in ad["title"] and row.image_id in ad["image"] and row.highlight_id in ad["highlight"]
    assert serving["score"].between(0, 1).all()
    assert (Path("models/combo_policy") / "generator.safetensors").is_file()
    metrics = json.loads(Path("metrics/combo_policy.json").read_text())
    assert metrics["ads"] == 6 and metrics["diversity"]["distinct_combos_in_top_k_per_ad"] == 3
    # served ranks follow the MIL reward, and rank 1 is the reward's best of the policy's serving beam (6)
    assert (serving.groupby("ad_id")["score"].diff().dropna() <= 0).all()
    policy = cg.ComboPolicy.load("models/combo_policy")
    scorer = attr.AttributionScorer.load("models/attribution")
    beam = pd.DataFrame(policy.top_k(6)).rename(columns={s: attr.SLOT_COLUMNS[s] for s in attr.SLOTS})
    beam["score"] = scorer.score_frame(beam[["ad_id", *attr.ELEMENT_COLUMNS]]).p_click
    best = beam.loc[beam.groupby("ad_id")["score"].idxmax()].set_index("ad_id")
    top1 = serving[serving["rank"] == 1].set_index("ad_id")
    pd.testing.assert_frame_equal(top1[list(attr.ELEMENT_COLUMNS)], best.loc[top1.index, list(attr.ELEMENT_COLUMNS)])
    # deterministic given the seed
    assert combo_policy.main([]) == 0
    pd.testing.assert_frame_equal(serving, pd.read_parquet("models/combo_policy/serving.parquet"))

    monkeypatch.setattr(evaluate_combo, "load_oracle", lambda day=None: _StandInOracle(world))
    assert evaluate_combo.main([]) == 0
    result = json.loads(Path("metrics/evaluate_combo.json").read_text())
    assert set(result["arms"]) == {"generator_top1", "generator_top_k", "oracle_best", "logging", "greedy_marginal",
                                   "mil_argmax"}
    assert result["arms"]["oracle_best"]["ratio_to_oracle"] == 1.0
    assert 0 < result["true_ctr_ratio_to_oracle"] <= 1.0 + 1e-9
    # the confounded logging policy serves bad combinations: learning from it must beat it
    assert result["true_ctr_uplift_vs_logging"] > 0
    lo, hi = result["arms"]["generator_top1"]["ctr_ci95"]
    assert lo <= result["arms"]["generator_top1"]["ctr"] <= hi
    assert evaluate_combo.evaluate_combos()["true_ctr_ratio_to_oracle"] == result["true_ctr_ratio_to_oracle"]


def test_stages_exit_2_on_bad_config_or_missing_inputs(tiny_params):
    from pipelines import combo_policy, evaluate_combo

    assert combo_policy.main([]) == 2  # no attribution model yet
    assert evaluate_combo.main([]) == 2  # no serving table yet
    text = tiny_params.read_text().replace("  group_size: 8\n", "  group_size: 1\n")
    tiny_params.write_text(text)
    assert combo_policy.main([]) == 2
    from plumbing.config import ConfigError, load_config
    from tests.conftest import TINY_PARAMS

    with pytest.raises(ConfigError, match="combo_policy.serving_beam"):
        load_config(combo_policy.ComboPolicyConfig, "combo_policy", TINY_PARAMS, overrides={"top_k": 5, "serving_beam": 4})


def test_the_problem_keeps_only_live_elements_where_any_is_live():
    from types import SimpleNamespace

    from pipelines.combo_policy import build_problem

    elements = [("a1", "title", "t1"), ("a1", "title", "t2"), ("a1", "image", "i1"), ("a1", "highlight", "h1"),
                ("a1", "highlight", "h2")]
    vocab = SimpleNamespace(ads=["a1"], elements=elements, ad_product={"a1": "p1"})
    vocab.ad_elements = lambda ad: {s: [e for a, slot, e in elements if a == ad and slot == s]
                                    for s in ("title", "image", "highlight")}
    scorer = SimpleNamespace(vocab=vocab, content=None)
    live = {"a1": {"title": {"t2", "t9"}, "image": {"i7"}, "highlight": {"h1", "h2"}}}
    problem = build_problem(scorer, {"a1": "travel"}, live)
    # t1 retired; no trained image is live (keep them all rather than leave the slot empty)
    assert problem.candidates == [[["t2"], ["i1"], ["h1", "h2"]]]
    assert build_problem(scorer, {"a1": "travel"}).candidates == [[["t1", "t2"], ["i1"], ["h1", "h2"]]]
