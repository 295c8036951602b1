"""Each RELATE reward on crafted texts; the registry and weight validation."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from plumbing.config import ConfigError, load_config
from relate_models.compliance import ComplianceChecker
from relate_models.grpo_trainer import GRPOStageConfig
from relate_models.rewards import RewardContext, build_rewards, score_texts, structural_score, validate_weights
from tests.conftest import TINY_PARAMS

GRPO = load_config(GRPOStageConfig, "grpo", TINY_PARAMS)


@pytest.fixture(scope="module")
def checker() -> ComplianceChecker:
    return ComplianceChecker.load()


def context(**fields) -> RewardContext:
    """A RewardContext with the tiny params' grpo knobs, `fields` replacing some."""
    knobs = {k: getattr(GRPO, k) for k in ("min_chars", "max_chars", "compliance_penalty", "group_ngram", "copy_ngram")}
    return RewardContext(**{**knobs, **fields})


def by_name(ctx, *names):
    return {r.name: r for r in build_rewards(list(names), ctx)}


def test_compliance_compliant_vs_violating(checker):
    reward = by_name(context(compliance=checker, compliance_penalty=5.0), "quality_compliance")["quality_compliance"]
    ok, bad, two = "Book cheap flights to Rome with free changes", "Guaranteed results for cheap flights", \
        "Act now: guaranteed results, clinically proven"
    assert reward.score([ok, bad, two]) == [0.0, -5.0, -15.0]
    spans = reward.spans([ok, bad])
    assert spans[0] == []
    assert spans[1] == [(0, len("Guaranteed results"))]
    assert reward.constraint and reward.granularity == "token"


@pytest.mark.parametrize(
    "text, category",
    [
        ("The best in the world running shoes", "absolute_claim"),
        ("Number one laptop deals", "absolute_claim"),
        ("Risk-free credit card offers", "guarantee"),
        ("This vitamin cures diabetes", "medical_claim"),
        ("Lose 10 kg with our plan", "medical_claim"),
        ("Earn $500 a day from home", "financial_claim"),
        ("Double your money with us", "financial_claim"),
        ("Only 3 left, hurry", "fake_urgency"),
        ("Sale ends in 2 hours", "fake_urgency"),
        ("Offer ends in minutes", "fake_urgency"),  # a countdown without a number is still one
    ],
)
def test_compliance_categories_case_insensitive(checker, text, category):
    for variant in (text, text.upper(), text.lower()):
        assert category in {v.category for v in checker.find(variant)}, variant


def test_compliance_word_boundaries(checker):
    # "hurry" inside another word and "cure" inside "secure" are not violations
    assert checker.find("Secure checkout for unhurried shoppers") == []


def test_lexicon_rejects_bad_rules():
    with pytest.raises(ValueError, match="categories.bogus"):
        ComplianceChecker.from_dict({"categories": {"bogus": {"phrases": ["x"]}}})
    with pytest.raises(ValueError, match=r"guarantee.patterns\[0\]"):
        ComplianceChecker.from_dict({"categories": {"guarantee": {"patterns": ["(unclosed"]}}})


def test_structural_keyword_length_format():
    kw = "cheap flights"
    good = "Book cheap flights to Rome with free changes"
    assert structural_score(good, kw, 20, 90) == pytest.approx(1.0)
    assert structural_score("Book trips to Rome with free changes", kw, 20, 90) == pytest.approx(0.6)  # keyword absent
    too_long = good + " and " + "many more words " * 8
    assert len(too_long) > 90
    assert structural_score(too_long, kw, 20, 90) < structural_score(good, kw, 20, 90)
    assert structural_score("Cheap flights", kw, 20, 90) < 1.0  # too short
    assert structural_score("BOOK CHEAP FLIGHTS NOW!!!", kw, 20, 90) == pytest.approx(0.4 + 0.3 + 0.3 * 5 / 7)  # 2 of 7 fail
    assert structural_score("Cheap flights \ufffd\ufffdq\x17 deals", kw, 20, 90) < 0.99  # byte-level junk
    assert structural_score(good, kw, 20, 90, terminated=False) == pytest.approx(1 - 0.3 / 7)  # truncated
    assert structural_score("travel | cheap flights | book", kw, 20, 90) < 1.0  # prompt leaking
    assert structural_score("   ", kw, 20, 90) == 0.0
    reward = by_name(context(), "quality_structural")["quality_structural"]
    assert reward.score([good, "Book trips to Rome with free changes"], keyword=[kw, kw]) == pytest.approx([1.0, 0.6])
    eos = 2
    reward = by_name(context(eos_token_id=eos), "quality_structural")["quality_structural"]
    scores = reward.score([good, good], keyword=[kw, kw], completion_ids=[[5, 6, eos], [5, 6, 7]])
    assert scores[0] == pytest.approx(1.0) and scores[1] < 1.0  # the second never ended: truncated


def test_diversity_group_repeats_and_copies():
    history = ["Compare laptop deals from top brands today"]
    reward = by_name(context(historical_texts=history, group_ngram=3, copy_ngram=5), "diversity")["diversity"]
    group = [
        "Fast shipping on laptop deals this week",
        "Fast shipping on laptop deals for students",  # shares "fast shipping on laptop deals" with the first
        "Quiet keyboards and bright screens for work",  # unique
        "Compare laptop deals from top brands today",  # copied verbatim from history
    ]
    prompts = ["p"] * 4
    scores = reward.score(group, prompts=prompts)
    assert scores[2] == 1.0
    assert scores[3] == 0.0
    assert scores[0] == pytest.approx(1 - 5 / 7) and scores[1] == pytest.approx(1 - 5 / 7)
    spans = reward.spans(group, prompts=prompts)
    assert spans[2] == []
    assert group[0][slice(*spans[0][0])] == "Fast shipping on laptop deals"
    # the same texts in different groups do not penalise each other
    assert reward.score(group[:2], prompts=["a", "b"]) == [1.0, 1.0]


def test_diversity_keyword_is_no_repeat_but_shared_template_is():
    reward = by_name(context(group_ngram=2), "diversity")["diversity"]
    kw = ["car tires"] * 2
    # only the keyword is shared: both fully diverse
    assert reward.score(["Quiet car tires for winter", "Cheap car tires today"], prompts=["p"] * 2,
                        keyword=kw) == [1.0, 1.0]
    # the same hook and call to action around the keyword: the shared bigrams are repeats
    group = ["Fresh picks - new car tires - Shop now", "Fresh picks - top car tires - Shop now"]
    scores = reward.score(group, prompts=["p"] * 2, keyword=kw)
    assert scores == [pytest.approx(1 - 4 / 7)] * 2
    spans = reward.spans(group, prompts=["p"] * 2, keyword=kw)
    assert [group[0][slice(*s)] for s in spans[0]] == ["Fresh picks", "Shop now"]
    # without the keyword column, "car tires" counts as a repeat too
    assert reward.score(group, prompts=["p"] * 2) == [pytest.approx(1 - 6 / 7)] * 2


class StubScorer:
    """Test-only stand-in for CTCVRScorer: p_ctcvr grows with text length; records contexts."""

    def __init__(self):
        self.contexts = None

    def score(self, texts, contexts):
        self.contexts = contexts
        p = np.array([min(len(t), 100) / 1000 for t in texts], dtype=np.float32)
        return {"p_ctr": p, "p_cvr": np.ones_like(p), "p_ctcvr": p}


def test_ctcvr_reward_uses_scorer_and_context():
    scorer = StubScorer()
    reward = by_name(context(scorer=scorer, default_user_segment="students"), "ctcvr")["ctcvr"]
    out = reward.score([" short ad", " a somewhat longer ad text"], keyword=["k1", "k2"], vertical=["travel", "home"])
    assert out == pytest.approx([0.008, 0.025])  # stripped texts
    assert scorer.contexts[1] == {"keyword": "k2", "vertical": "home", "position": 1, "user_segment": "students"}
    with pytest.raises(ValueError, match="CTCVR scorer"):
        build_rewards(["ctcvr"], context(scorer=None))


def test_score_texts_means_and_violation_rate(checker):
    rewards = build_rewards(["quality_compliance", "quality_structural"], context(compliance=checker))
    rows = [{"prompt": "travel | flights |", "keyword": "flights", "vertical": "travel"}]
    out = score_texts(rewards, rows, [["Cheap flights to Rome today", "Guaranteed results on flights"]])
    assert out["violation_rate"] == 0.5
    assert out["quality_compliance"] == pytest.approx(-2.5)


def test_bad_weights_rejected_naming_the_field():
    with pytest.raises(ConfigError, match=r"grpo.rewards.ctr_magic: unknown reward"):
        validate_weights({"ctr_magic": 1.0})
    with pytest.raises(ConfigError, match=r"grpo.rewards.diversity: weight must be >= 0"):
        validate_weights({"ctcvr": 1.0, "diversity": -0.5})
    with pytest.raises(ConfigError, match=r"grpo.rewards.ctcvr: weight must be a number"):
        validate_weights({"ctcvr": "high"})
    assert validate_weights({"ctcvr": 0, "diversity": 0.5}) == {"diversity": 0.5}  # weight 0: the reward is off
    with pytest.raises(ConfigError, match="at least one weight"):
        validate_weights({"ctcvr": 0})
    for overrides, field in (({"rewards": {"nope": 1}}, r"grpo.rewards.nope"), ({"beta": -1.0}, r"grpo.beta"),
                             ({"num_generations": 1}, r"grpo.num_generations"),
                             ({"rewardz": {}}, r"grpo: unknown key\(s\) rewardz")):
        with pytest.raises(ConfigError, match=field):
            load_config(GRPOStageConfig, "grpo", TINY_PARAMS, overrides=overrides)


def test_registry_granularities():
    from relate_models.rewards import REGISTRY, REWARD_GRANULARITY

    ctx = context(scorer=object(), compliance=ComplianceChecker.load())
    assert {r.name: r.granularity for r in build_rewards(list(REGISTRY), ctx)} == REWARD_GRANULARITY


def test_grpo_applies_the_rule_in_effect_on_the_run_day_and_the_pool_on_the_serving_day(tmp_path):
    """The dated rule (relate_models/data/compliance_rules/2026-01-11.yaml) reaches GRPO's reward through
    the run's day (its --ds, else the newest curated partition read), and the serving pool's through
    the day the pools serve, the day after: the pools published the day before the rule keep it."""
    import pandas as pd

    from plumbing.dates import shift_ds
    from plumbing.paths import CuratedReader
    from relate_models.grpo_trainer import reward_context
    from relate_models.serving import learned_rewards

    rule_day = "2026-01-11"
    text = "Top rated cheap flights. Book today"

    def flagged_by_grpo(as_of) -> bool:
        return reward_context(GRPO, None, [text], as_of=as_of).compliance.penalty(text) > 0

    assert [flagged_by_grpo(d) for d in (None, shift_ds(rule_day, -1), rule_day, shift_ds(rule_day, 3))] == \
        [False, False, True, True]

    curated = tmp_path / "curated"
    stats = pd.DataFrame([{"vertical": "travel", "keyword": "cheap flights", "ad_text": "Fly cheap. Book today",
                           "impressions": 10, "clicks": 1, "conversions": 0}])
    for day in (shift_ds(rule_day, -2), shift_ds(rule_day, -1)):
        for table in ("text_stats", "labeled_impressions"):
            (curated / table / f"dt={day}").mkdir(parents=True)
        stats.to_parquet(curated / "text_stats" / f"dt={day}" / "part-00000.parquet", index=False)

    def flagged_by_serving(reader: CuratedReader) -> bool:
        rewards = {r.name: r for r in learned_rewards(object(), TINY_PARAMS, reader)}
        return rewards["quality_compliance"].score([text])[0] < 0

    assert not flagged_by_serving(CuratedReader(curated, as_of=shift_ds(rule_day, -2)))  # serves the day before
    assert flagged_by_serving(CuratedReader(curated, as_of=shift_ds(rule_day, -1)))  # serves on the rule's day
    assert flagged_by_serving(CuratedReader(curated))  # no --ds: the newest partition, the day before the rule
    shutil.rmtree(curated / "labeled_impressions" / f"dt={shift_ds(rule_day, -1)}")
    assert not flagged_by_serving(CuratedReader(curated))
