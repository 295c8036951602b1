"""The RELATE reward registry: ctcvr, quality_structural, quality_compliance, diversity.

Each reward is built from a `RewardContext` (the learned CTCVR scorer, the compliance
lexicon, the historical ad texts) and exposes:
- `score(completions, **kwargs) -> list[float]`: the plain TRL reward function;
- `spans(completions, **kwargs) -> list[list[(start, end)]]` for token-level rewards: the
  character spans of each completion that carry the penalty; `relate_models.credit`
  maps them to tokens through the tokenizer's offsets.
kwargs are TRL's: the dataset columns (`keyword`, `vertical`, `user_segment`, ...) and
`prompts`; completions of one prompt form a group (GRPO's group).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from relate_models.compliance import ComplianceChecker, merge_spans

Span = tuple[int, int]
SEQUENCE, TOKEN = "sequence", "token"
# where each reward's credit lands; the builders below read it, and config checks read it
# before any reward is built
REWARD_GRANULARITY = {"ctcvr": SEQUENCE, "quality_structural": SEQUENCE, "quality_compliance": TOKEN,
                      "diversity": TOKEN}
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# a CJK character is a word of its own (Chinese has no spaces); other text: \w+ runs as before
_WORD = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+(?:'[^\W{_CJK}]+)?")


@dataclass(kw_only=True)
class RewardContext:
    """What the rewards need besides the completions: the grpo knobs (no defaults: they come from
    params.yaml, through grpo_trainer.reward_context) and the run's scorer, lexicon and history."""

    scorer: Any = None  # relate_models.ctcvr.CTCVRScorer (score(texts, contexts) -> {"p_ctcvr": ...})
    compliance: ComplianceChecker | None = None
    historical_texts: Sequence[str] = ()
    min_chars: int
    max_chars: int
    compliance_penalty: float  # per unit of severity: large, so it dominates any other reward
    group_ngram: int  # word n-grams shared with another completion of the group are "repeated"
    copy_ngram: int  # word n-grams found in a historical ad are "copied"
    default_position: int = 1
    default_user_segment: str | None = None
    eos_token_id: int | None = None  # set: a completion that never emitted <eos> (truncated) fails a format check
    latin_script: bool = True  # False (e.g. Chinese copy): the structural reward skips its mostly-ASCII check
    _history: set = field(default_factory=set, repr=False)

    def history_ngrams(self) -> set:
        if not self._history and self.historical_texts:
            for text in self.historical_texts:
                words = [w for w, _, _ in words_with_offsets(text)]
                self._history.update(_ngrams(words, self.copy_ngram))
        return self._history


@dataclass(frozen=True)
class Reward:
    name: str
    granularity: str  # SEQUENCE or TOKEN
    score: Callable[..., list[float]]
    spans: Callable[..., list[list[Span]]] | None = None
    constraint: bool = False  # a text with a negative score must never win its group


def as_text(completion) -> str:
    """TRL passes strings (standard format) or [{"role", "content"}] (conversational)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    return str(completion)


def words_with_offsets(text: str) -> list[tuple[str, int, int]]:
    return [(m.group(0).lower(), m.start(), m.end()) for m in _WORD.finditer(text)]


def _ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def _column(kwargs: dict, name: str, n: int, default=None) -> list:
    values = kwargs.get(name)
    if values is None:
        return [default] * n
    if len(values) != n:
        raise ValueError(f"reward kwarg {name!r}: {len(values)} values for {n} completions")
    return list(values)


def _groups(kwargs: dict, n: int) -> list[list[int]]:
    """Indices of each GRPO group: completions sharing a prompt (all in one group without prompts)."""
    keys = _column(kwargs, "prompt_id", n) if kwargs.get("prompt_id") is not None else _column(kwargs, "prompts", n)
    out: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        out.setdefault(str(key), []).append(i)
    return list(out.values())


# ------------------------------------------------------------------------------ ctcvr
def build_ctcvr(ctx: RewardContext) -> Reward:
    if ctx.scorer is None:
        raise ValueError("reward ctcvr: no CTCVR scorer loaded (models/ctcvr/ missing? run train_ctcvr first)")

    def ctcvr(completions, **kwargs) -> list[float]:
        n = len(completions)
        keywords = _column(kwargs, "keyword", n)
        verticals = _column(kwargs, "vertical", n)
        segments = _column(kwargs, "user_segment", n, ctx.default_user_segment)
        contexts = [
            {"keyword": k, "vertical": v, "position": ctx.default_position, "user_segment": s}
            for k, v, s in zip(keywords, verticals, segments)
        ]
        texts = [as_text(c).strip() for c in completions]
        return [float(p) for p in ctx.scorer.score(texts, contexts)["p_ctcvr"]]

    return Reward("ctcvr", REWARD_GRANULARITY["ctcvr"], ctcvr)


# ------------------------------------------------------------------ quality_structural
_REPEATED_PUNCT = re.compile(r"[!?.,]{2,}")
_FORBIDDEN_CHARS = re.compile(r"[|<>{}\[\]\\^~`]|https?://|www\.")
# byte-level junk: U+FFFD (a broken UTF-8 byte sequence), control characters
_GARBAGE = re.compile(r"[\ufffd\x00-\x08\x0b-\x1f\x7f-\x9f]")


def structural_score(text: str, keyword: str | None, min_chars: int, max_chars: int, terminated: bool = True,
                     latin_script: bool = True) -> float:
    """0.4 keyword present + 0.3 length within bounds (linear decay outside) + 0.3 format checks.

    Format checks: no repeated punctuation, no shouting, no markup/URL/prompt separators,
    starts like a sentence, no byte-level junk, mostly ASCII, ended with <eos> (not truncated).
    """
    text = text.strip()
    if not text:
        return 0.0
    keyword_ok = float(bool(keyword) and keyword.lower() in text.lower())
    n = len(text)
    if n < min_chars:
        length_ok = n / min_chars
    elif n > max_chars:
        length_ok = max(0.0, 1.0 - (n - max_chars) / max_chars)
    else:
        length_ok = 1.0
    letters = [c for c in text if c.isalpha()]
    upper_share = sum(c.isupper() for c in letters) / len(letters) if letters else 1.0
    checks = [
        not _REPEATED_PUNCT.search(text),  # "!!!", "??"
        upper_share <= 0.5,  # shouting
        not _FORBIDDEN_CHARS.search(text),  # prompt separators, markup, URLs leaking into the ad
        text[0].isalnum() and text[0] == text[0].upper(),  # starts like a sentence
        not _GARBAGE.search(text),
        not latin_script or sum(c.isascii() for c in text) >= 0.95 * len(text),
        terminated,
    ]
    format_ok = sum(checks) / len(checks)
    return 0.4 * keyword_ok + 0.3 * length_ok + 0.3 * format_ok


def build_quality_structural(ctx: RewardContext) -> Reward:
    def quality_structural(completions, **kwargs) -> list[float]:
        keywords = _column(kwargs, "keyword", len(completions))
        ids = kwargs.get("completion_ids")
        if ids is not None and ctx.eos_token_id is not None:
            terminated = [bool(len(x)) and x[-1] == ctx.eos_token_id for x in ids]
        else:
            terminated = [True] * len(completions)
        return [
            structural_score(as_text(c), k, ctx.min_chars, ctx.max_chars, t, ctx.latin_script)
            for c, k, t in zip(completions, keywords, terminated)
        ]

    return Reward("quality_structural", REWARD_GRANULARITY["quality_structural"], quality_structural)


# ------------------------------------------------------------------ quality_compliance
def build_quality_compliance(ctx: RewardContext) -> Reward:
    checker = ctx.compliance or ComplianceChecker.load()

    def quality_compliance(completions, **kwargs) -> list[float]:
        return [-ctx.compliance_penalty * checker.penalty(as_text(c)) for c in completions]

    def compliance_spans(completions, **kwargs) -> list[list[Span]]:
        return [merge_spans([(v.start, v.end) for v in checker.find(as_text(c))]) for c in completions]

    return Reward("quality_compliance", REWARD_GRANULARITY["quality_compliance"], quality_compliance, compliance_spans, constraint=True)


# --------------------------------------------------------------------------- diversity
def repeated_word_spans(texts: Sequence[str], groups: list[list[int]], group_n: int, copy_n: int, history: set,
                        keywords: Sequence[str | None] | None = None):
    """Per text: (char spans of words in repeated/copied n-grams, share of words covered).

    The words of the text's `keywords[i]` are never counted as group repeats: every completion
    is asked to carry the keyword, so sharing it is no sign of collapse.
    """
    words = [words_with_offsets(t) for t in texts]
    keyword_words = [{w for w, _, _ in words_with_offsets(k or "")} for k in (keywords or [None] * len(texts))]
    spans: list[list[Span]] = [[] for _ in texts]
    covered_share = [0.0] * len(texts)
    for members in groups:
        # n-gram -> number of distinct group members using it
        counts: Counter = Counter()
        for i in members:
            counts.update(set(_ngrams([w for w, _, _ in words[i]], group_n)))
        for i in members:
            toks = [w for w, _, _ in words[i]]
            covered = [False] * len(toks)
            kw = keyword_words[i]
            for start, gram in enumerate(_ngrams(toks, group_n)):
                if counts[gram] > 1:  # the blame lands on the template words, never on the keyword's
                    for j in range(start, start + group_n):
                        covered[j] = covered[j] or toks[j] not in kw
            for start, gram in enumerate(_ngrams(toks, copy_n)):
                if gram in history:
                    covered[start : start + copy_n] = [True] * copy_n
            # one span per run of covered words, so "fast shipping on laptop deals" is one phrase
            runs: list[Span] = []
            for j, c in enumerate(covered):
                if not c:
                    continue
                if runs and j > 0 and covered[j - 1]:
                    runs[-1] = (runs[-1][0], words[i][j][2])
                else:
                    runs.append((words[i][j][1], words[i][j][2]))
            spans[i] = runs
            covered_share[i] = sum(covered) / len(toks) if toks else 1.0
    return spans, covered_share


def build_diversity(ctx: RewardContext) -> Reward:
    def analyse(completions, kwargs):
        texts = [as_text(c) for c in completions]
        return repeated_word_spans(texts, _groups(kwargs, len(texts)), ctx.group_ngram, ctx.copy_ngram,
                                   ctx.history_ngrams(), _column(kwargs, "keyword", len(texts)))

    def diversity(completions, **kwargs) -> list[float]:
        return [1.0 - share for share in analyse(completions, kwargs)[1]]

    def diversity_spans(completions, **kwargs) -> list[list[Span]]:
        return analyse(completions, kwargs)[0]

    return Reward("diversity", REWARD_GRANULARITY["diversity"], diversity, diversity_spans)


REGISTRY: dict[str, Callable[[RewardContext], Reward]] = {
    "ctcvr": build_ctcvr,
    "quality_structural": build_quality_structural,
    "quality_compliance": build_quality_compliance,
    "diversity": build_diversity,
}


def validate_weights(weights: dict, field_name: str = "grpo.rewards") -> dict[str, float]:
    """Reward name -> weight, the rewards of weight 0 left out (an overlay turns a reward off with 0:
    params files merge nested mappings key by key); unknown names and negative or non-numeric
    weights are rejected."""
    from plumbing.config import ConfigError

    if not isinstance(weights, dict) or not weights:
        raise ConfigError(f"{field_name}: expected a non-empty mapping of reward name -> weight")
    out = {}
    for name, weight in weights.items():
        if name not in REGISTRY:
            raise ConfigError(f"{field_name}.{name}: unknown reward; known: {', '.join(REGISTRY)}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ConfigError(f"{field_name}.{name}: weight must be a number, got {weight!r}")
        if weight < 0:
            raise ConfigError(f"{field_name}.{name}: weight must be >= 0, got {weight}")
        out[name] = float(weight)
    if sum(out.values()) <= 0:
        raise ConfigError(f"{field_name}: at least one weight must be > 0")
    return {name: weight for name, weight in out.items() if weight > 0}


def build_rewards(names: Sequence[str], ctx: RewardContext) -> list[Reward]:
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown reward(s) {', '.join(unknown)}; known: {', '.join(REGISTRY)}")
    rewards = [REGISTRY[name](ctx) for name in names]
    for reward in rewards:
        reward.score.__name__ = reward.name  # TRL names its reward columns after the function
    return rewards


def group_kwargs(prompt_rows: Sequence[dict], texts: Sequence[Sequence[str]]) -> tuple[list[str], dict[str, list]]:
    """N texts per prompt row, flattened, and the reward kwargs: each row field repeated once per text."""
    flat, kwargs = [], {}
    for row, group in zip(prompt_rows, texts):
        for text in group:
            flat.append(text)
            for key, value in row.items():
                kwargs.setdefault(key, []).append(value)
    kwargs["prompts"] = kwargs.get("prompt", [None] * len(flat))
    return flat, kwargs


def score_texts(rewards: Sequence[Reward], prompt_rows: Sequence[dict], texts: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean of each reward over N texts per prompt row (rows carry prompt, keyword, vertical, ...).

    The N texts of a prompt form one group (for diversity). Adds `violation_rate`, the share
    of texts breaking a constraint reward.
    """
    flat, kwargs = group_kwargs(prompt_rows, texts)
    out, violating = {}, [False] * len(flat)
    for reward in rewards:
        values = reward.score(flat, **kwargs)
        out[reward.name] = float(sum(values) / len(values)) if values else float("nan")
        if reward.constraint:
            violating = [v or s < 0 for v, s in zip(violating, values)]
    out["violation_rate"] = sum(violating) / len(violating) if violating else float("nan")
    return out
