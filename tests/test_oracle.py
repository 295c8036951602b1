"""The oracle: text truth from the string alone, combos, and simulated A/B tests with CIs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from plumbing.config import build_config
from relate_sim.config import SimulateConfig
from plumbing.metrics import diff_ci, wilson
from relate_sim.oracle import Oracle
from relate_sim.world import build_world
from tests.conftest import TINY_PARAMS


@pytest.fixture(scope="module")
def oracle() -> Oracle:
    values = yaml.safe_load(TINY_PARAMS.read_text())["simulate"]
    return Oracle(build_world(build_config(SimulateConfig, "simulate", values)))


@pytest.fixture(scope="module")
def ctx(oracle):
    info = oracle.ad_info(oracle.ad_ids[0])
    keyword = info["keywords"][1]  # a qualified keyword like "cheap flights"
    return {"ad_id": info["ad_id"], "keyword": keyword, "query": keyword, "user_segment": "students", "position": 1,
            "noun": info["noun"]}


def test_noncompliant_text_earns_nothing(oracle, ctx):
    clean = f"Shop {ctx['keyword']}. Free shipping. Book today"
    p_click, p_conv, ok = oracle.true_text_probs(ctx, clean)
    assert ok and 0 < p_click < 1 and 0 < p_conv < 1
    for claim in ("Guaranteed results", "Risk-free", "Best ever", "#1 choice", "Number one",
                  "Only 1 left", "Offer ends in minutes", "cures", "Clinically proven to help", "Double your money"):
        assert oracle.true_text_probs(ctx, f"{claim}. {clean}") == (0.0, 0.0, False), claim
    # case and punctuation do not hide a claim; a longer number is not "#1"
    assert oracle.true_text_probs(ctx, f"GUARANTEED   results!! {clean}")[2] is False
    assert oracle.true_text_probs(ctx, f"#10 in town. {clean}")[2] is True


def test_clickbait_raises_ctr_but_lowers_cvr(oracle, ctx):
    base = f"Shop {ctx['keyword']}. Free shipping. Book today"
    p0, c0, _ = oracle.true_text_probs(ctx, base)
    for hook in ("Shocking", "You won't believe", "This one trick"):
        p1, c1, ok = oracle.true_text_probs(ctx, f"{hook}: {base}")
        assert ok and p1 > p0 and c1 < c0, hook


def test_keyword_and_query_relevance_raise_ctr(oracle, ctx):
    with_kw = f"Shop {ctx['keyword']}. Free shipping. Book today"
    without = "Shop here. Free shipping. Book today"
    assert oracle.true_text_probs(ctx, with_kw)[0] > oracle.true_text_probs(ctx, without)[0]
    query_ctx = {**ctx, "query": f"{ctx['keyword']} near me"}
    assert (oracle.true_text_probs(query_ctx, f"Shop {ctx['keyword']} near me. Free shipping. Book today")[0]
            > oracle.true_text_probs(query_ctx, with_kw)[0])


def test_overlong_text_is_truncated_and_costs_ctr(oracle, ctx):
    limit = oracle.world.config.text_max_chars
    short = f"Shop {ctx['keyword']}. Free shipping. Book today"
    long = f"Shop {ctx['keyword']}, " + "really truly " * 10 + "free shipping. Book today"
    analysis = oracle.analyze(long)
    assert len(long) > limit and analysis.truncated and len(analysis.served) <= limit
    assert "cta" in analysis.slot_phrases and not analysis.slot_phrases["cta"]  # the CTA was cut off
    assert oracle.true_text_probs(ctx, long)[0] < oracle.true_text_probs(ctx, short)[0]


def test_gibberish_and_missing_cta_are_penalised(oracle, ctx):
    good = oracle.true_text_probs(ctx, f"Discover {ctx['keyword']}. Free shipping. Shop now")[0]
    no_cta = oracle.true_text_probs(ctx, f"Discover {ctx['keyword']}. Free shipping")[0]
    gibberish = oracle.true_text_probs(ctx, "zorp blarg wibble")[0]
    assert gibberish < no_cta < good


def test_text_truth_is_a_pure_function_of_the_string(oracle, ctx):
    text = f"Top rated {ctx['keyword']} - Easy returns - Learn more"
    assert oracle.true_text_probs(ctx, text) == oracle.true_text_probs(dict(ctx), "  " + text.upper() + " ")
    assert oracle.true_text_probs(ctx, text, exposures=2)[0] == pytest.approx(
        oracle.true_text_probs(ctx, text)[0] * oracle.world.coef["fatigue_decay"] ** 2)


def test_best_combo_and_element_table(oracle):
    ad = oracle.ad_ids[3]
    best = oracle.oracle_best_combo(ad)
    info = oracle.ad_info(ad)
    all_ctr = [oracle.true_combo_ctr(ad, t, i, h) for t in info["title_ids"] for i in info["image_ids"]
               for h in info["highlight_ids"]]
    assert best["ctr"] == pytest.approx(max(all_ctr))
    assert oracle.true_combo_ctr(ad, best["title_id"], best["image_id"], best["highlight_id"]) == best["ctr"]
    assert 0.005 < float(np.mean(all_ctr)) < 0.15
    rows = oracle.element_utilities()
    cfg = oracle.world.config
    assert len(rows) == len(oracle.ad_ids) * (cfg.titles_per_ad + cfg.images_per_ad + cfg.highlights_per_ad)
    titles = [r for r in rows if r["ad_id"] == ad and r["element_type"] == "title"]
    # the unconfounded marginal CTR orders titles mostly like their utility
    from scipy.stats import spearmanr
    assert spearmanr([r["utility"] for r in titles], [r["uniform_marginal_ctr"] for r in titles]).statistic > 0.5
    with pytest.raises(ValueError, match="does not belong"):
        oracle.true_combo_ctr(ad, info["title_ids"][0].replace(ad[-4:], "9999"), info["image_ids"][0],
                              info["highlight_ids"][0])


def _pool_policy(oracle):
    return {ad: [t for t in oracle.ad_info(ad)["pool_texts"] if oracle.analyze(t).compliant] for ad in oracle.ad_ids}


def test_ab_ci_contains_the_true_rate(oracle):
    policy = _pool_policy(oracle)
    big = oracle.ab_test_texts(policy, 20_000, seed=7)
    for rate, expected in (("ctr", big.expected_ctr), ("ctcvr", big.expected_ctcvr)):
        est, lo, hi = getattr(big, rate)
        assert lo <= expected <= hi, (rate, lo, expected, hi)
        assert hi - lo < 0.5 * expected
    assert big.violations == 0 and big.compliance[0] == 1.0
    covered = 0
    for seed in range(20):
        r = oracle.ab_test_texts(policy, 1500, seed=100 + seed)
        covered += r.ctr[1] <= r.expected_ctr <= r.ctr[2]
    assert covered >= 16  # 95% intervals: P(fewer than 16 of 20) < 0.3%
    json.dumps(big.to_dict())  # serialisable for metrics


def test_ab_counts_violations_and_they_earn_nothing(oracle):
    bad = {ad: "Guaranteed results. Shop now" for ad in oracle.ad_ids}
    r = oracle.ab_test_texts(bad, 2000, seed=3)
    assert r.violations == 2000 and r.clicks == 0 and r.conversions == 0 and r.compliance[2] < 0.01


def test_fatigue_one_repeated_text_loses_to_varied_texts(oracle):
    """Arm A always shows each ad's best text; arm B rotates texts no better than it. Without
    fatigue A wins; with fatigue (few users, many repeats) B wins."""
    repeat, varied = {}, {}
    for ad in oracle.ad_ids:
        info = oracle.ad_info(ad)
        ctx = {"ad_id": ad, "keyword": info["keywords"][0], "query": info["keywords"][0],
               "user_segment": oracle.world.segments[0], "position": 1}
        scored = sorted(((oracle.true_text_probs(ctx, t)[0], t) for t in info["pool_texts"]), reverse=True)
        scored = [(p, t) for p, t in scored if p > 0]
        repeat[ad] = scored[0][1]
        varied[ad] = [t for _, t in scored[:4]]
    a = oracle.ab_test_texts(repeat, 30_000, seed=11)
    b = oracle.ab_test_texts(varied, 30_000, seed=11)
    assert a.repeat_exposures > b.repeat_exposures
    assert b.expected_ctr > a.expected_ctr
    a_fresh = oracle.ab_test_texts(repeat, 30_000, seed=11, fatigue=False)
    b_fresh = oracle.ab_test_texts(varied, 30_000, seed=11, fatigue=False)
    assert a_fresh.expected_ctr > b_fresh.expected_ctr
    diff, lo, hi = diff_ci((a.clicks, a.impressions), (b.clicks, b.impressions))
    assert lo > 0, (a.ctr, b.ctr)  # varied wins, significantly


def test_ab_combos_best_beats_random(oracle):
    best = {ad: tuple(oracle.oracle_best_combo(ad)[k] for k in ("title_id", "image_id", "highlight_id"))
            for ad in oracle.ad_ids}
    anything = {}
    for ad in oracle.ad_ids:
        info = oracle.ad_info(ad)
        anything[ad] = [(t, i, h) for t in info["title_ids"] for i in info["image_ids"] for h in info["highlight_ids"]]
    a = oracle.ab_test_combos(anything, 20_000, seed=5, fatigue=False)
    b = oracle.ab_test_combos(best, 20_000, seed=5, fatigue=False)
    assert b.ctr[1] > a.ctr[2] and a.violations == b.violations == 0
    assert wilson(0, 0)[1:] == (0.0, 1.0)


def test_oracle_load_checks_the_fingerprint(tmp_path, oracle):
    world = oracle.world
    payload = {"fingerprint": world.fingerprint(), **world.to_dict()}
    (tmp_path / "world.json").write_text(json.dumps(payload))
    loaded = Oracle.load(tmp_path)
    assert loaded.world.fingerprint() == world.fingerprint()
    payload["fingerprint"] = "0" * 64
    (tmp_path / "world.json").write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="does not match"):
        Oracle.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        Oracle.load(tmp_path / "nowhere")
