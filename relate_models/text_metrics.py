"""Diversity metrics of generated ad texts: distinct-n and self-BLEU.

Texts are compared as lower-cased word tokens (the same word pattern the diversity reward
uses), so punctuation and case never make two texts look different.

- distinct-n: unique n-grams / all n-grams over a set of texts (1.0: no n-gram repeats;
  higher is more diverse).
- self-BLEU: the mean, over the texts of a set, of each text's BLEU against all the other
  texts as references (1.0: every text repeats the others; lower is more diverse). BLEU is
  the geometric mean of clipped n-gram precisions for n = 1..max_n times the brevity
  penalty (closest reference length); a precision with no match counts as
  `epsilon / total` (Chen & Cherry's smoothing method 1), so one missing 4-gram does not
  zero the score.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

_WORD = re.compile(r"\w+(?:'\w+)?")


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Unique n-grams / total n-grams over all `texts`; NaN when no text has n words."""
    if n < 1:
        raise ValueError(f"distinct_n: n must be >= 1, got {n}")
    grams = [g for text in texts for g in ngrams(words(text), n)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def sentence_bleu(hypothesis: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4,
                  epsilon: float = 0.1) -> float:
    """BLEU of one tokenised hypothesis against tokenised references (see the module docstring)."""
    if not hypothesis or not references:
        return 0.0
    log_sum = 0.0
    for n in range(1, max_n + 1):
        hyp = Counter(ngrams(hypothesis, n))
        total = sum(hyp.values())
        if total == 0:  # hypothesis shorter than n words: nothing to match at this order
            log_sum += math.log(epsilon / 1.0)
            continue
        max_ref: Counter = Counter()
        for ref in references:
            for gram, count in Counter(ngrams(ref, n)).items():
                max_ref[gram] = max(max_ref[gram], count)
        matched = sum(min(count, max_ref[gram]) for gram, count in hyp.items())
        log_sum += math.log((matched if matched else epsilon) / total)
    hyp_len = len(hypothesis)
    ref_len = min((len(r) for r in references), key=lambda r: (abs(r - hyp_len), r))
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(log_sum / max_n)


def self_bleu(texts: Sequence[str], max_n: int = 4) -> float:
    """Mean BLEU of each text against the others of the set; NaN for fewer than two texts."""
    tokenised = [words(t) for t in texts]
    tokenised = [t for t in tokenised if t]
    if len(tokenised) < 2:
        return float("nan")
    scores = [sentence_bleu(hyp, tokenised[:i] + tokenised[i + 1 :], max_n) for i, hyp in enumerate(tokenised)]
    return sum(scores) / len(scores)


def group_diversity(groups: Sequence[Sequence[str]], n: int = 2, max_n: int = 4) -> dict[str, float]:
    """Mean distinct-n and self-BLEU over groups of texts (e.g. the texts served for one prompt).

    Groups where a metric is undefined (too few words or texts) are left out of its mean.
    """
    distinct = [d for d in (distinct_n(g, n) for g in groups) if not math.isnan(d)]
    bleu = [b for b in (self_bleu(g, max_n) for g in groups) if not math.isnan(b)]
    return {
        f"distinct_{n}": sum(distinct) / len(distinct) if distinct else float("nan"),
        "self_bleu": sum(bleu) / len(bleu) if bleu else float("nan"),
        "groups": len(groups),
    }
