"""distinct-n and self-BLEU on hand-made texts, values computed by hand."""
from __future__ import annotations

import math

import pytest

from relate_models.text_metrics import distinct_n, group_diversity, self_bleu, sentence_bleu, words


def test_words_ignore_case_and_punctuation():
    assert words("Shop NOW! Free-shipping, don't wait.") == ["shop", "now", "free", "shipping", "don't", "wait"]


def test_distinct_n_by_hand():
    texts = ["a b c", "A b d!"]
    # unigrams a b c a b d: 4 unique of 6; bigrams ab bc ab bd: 3 unique of 4
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n(["same text here", "same text here"], 2) == pytest.approx(2 / 4)
    assert distinct_n(["one two three four"], 2) == 1.0
    assert math.isnan(distinct_n(["one", "two"], 2))  # no text has a bigram
    with pytest.raises(ValueError):
        distinct_n(texts, 0)


def test_sentence_bleu_by_hand():
    # p1 = 2/3 (a, b match), p2 = 1/2 (ab matches, bc does not); equal lengths: no brevity penalty
    assert sentence_bleu(["a", "b", "c"], [["a", "b", "d"]], max_n=2) == pytest.approx(math.sqrt(2 / 3 * 1 / 2))
    # no bigram matches: smoothed to epsilon / total = 0.1 / 2
    assert sentence_bleu(["a", "b", "c"], [["c", "b", "a"]], max_n=2) == pytest.approx(math.sqrt(1.0 * 0.05))
    # a 2-word hypothesis against a 4-word reference: precisions 1, brevity penalty exp(1 - 4/2)
    assert sentence_bleu(["a", "b"], [["a", "b", "c", "d"]], max_n=2) == pytest.approx(math.exp(-1))
    # clipping: "the the the" against "the cat" matches "the" once
    assert sentence_bleu(["the", "the", "the"], [["the", "cat", "sat"]], max_n=1) == pytest.approx(1 / 3)
    assert sentence_bleu(["x", "y"], [["x", "y"]], max_n=2) == pytest.approx(1.0)


def test_self_bleu_by_hand():
    # symmetric pair: each text scores sqrt(2/3 * 1/2) against the other
    assert self_bleu(["a b c", "a b d"], max_n=2) == pytest.approx(math.sqrt(1 / 3))
    assert self_bleu(["buy shoes now", "buy shoes now", "buy shoes now"], max_n=2) == pytest.approx(1.0)
    assert math.isnan(self_bleu(["only one text"]))
    # more diverse sets score lower
    assert self_bleu(["cheap flights to rome", "luxury hotels in paris"]) < self_bleu(
        ["cheap flights to rome", "cheap flights to paris"])


def test_group_diversity_averages_groups():
    out = group_diversity([["a b c", "a b d"], ["x y", "x y"]], n=2, max_n=2)
    assert out["distinct_2"] == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert out["self_bleu"] == pytest.approx((math.sqrt(1 / 3) + 1.0) / 2)
    assert out["groups"] == 2
