"""evals.generator_ceiling: the pair-effect ceiling learns a planted (title, image) interaction."""
import numpy as np

from evals.generator_ceiling import pair_argmax_choices, pair_prior_scores

AD = "ad-0"
ELEMENTS = [(AD, "highlight", "h0"), (AD, "image", "i0"), (AD, "image", "i1"), (AD, "title", "t0"), (AD, "title", "t1")]


class TinyMarket:
    ad_ids = [AD]

    def ad_info(self, ad):
        return {"title_ids": ["t0", "t1"], "image_ids": ["i0", "i1"], "highlight_ids": ["h0"]}


def problem(pair_logit: float) -> dict:
    """Every (title, image) pair logged 200k times; only (t1, i0) carries an interaction."""
    pos = {e: j for j, e in enumerate(ELEMENTS)}
    rows = [(pos[(AD, "title", t)], pos[(AD, "image", i)], pos[(AD, "highlight", "h0")]) for t in ("t0", "t1")
            for i in ("i0", "i1")]
    logits = np.array([-3.0 + (pair_logit if (t, i) == (4, 1) else 0.0) for t, i, _ in rows])
    return {"elements": ELEMENTS, "index": np.array([[0, *r] for r in rows]), "n": np.full(4, 200_000.0),
            "p_true": 1 / (1 + np.exp(-logits)), "n_ads": 1}


def test_a_planted_pair_interaction_is_learned_and_moves_the_argmax():
    prior = {e: (0.0, 0.3) for e in ELEMENTS}
    est = pair_prior_scores(problem(0.4), prior, pair_sd=0.25, rng=np.random.default_rng(0))
    pairs = {k[2:]: v for k, v in est.items() if k[0] == "pair"}
    assert max(pairs, key=pairs.get) == ("t1", "i0")
    assert pairs[("t1", "i0")] - np.mean([v for k, v in pairs.items() if k != ("t1", "i0")]) > 0.1
    fallback = {e: 0.0 for e in ELEMENTS}
    assert pair_argmax_choices(TinyMarket(), est, fallback) == {AD: ("t1", "i0", "h0")}


def test_without_an_interaction_no_pair_stands_out():
    prior = {e: (0.0, 0.3) for e in ELEMENTS}
    est = pair_prior_scores(problem(0.0), prior, pair_sd=0.25, rng=np.random.default_rng(0))
    assert max(abs(v) for k, v in est.items() if k[0] == "pair") < 0.05
