"""Granularity-aware credit assignment on hand-made groups (numbers checked by hand)."""
from __future__ import annotations

import math
import random

import pytest
import torch

from relate_models import credit
from relate_models.compliance import ComplianceChecker
from relate_models.tokenizer import train_tokenizer

Z = 1 / math.sqrt(2)  # z-score of each member of a two-member group with distinct values (unbiased std)


@pytest.fixture(scope="module")
def tokenizer():
    rng = random.Random(0)
    words = "get guaranteed results cheap flights book today save big running shoes free delivery on all orders".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 10))).capitalize() for _ in range(400)]
    return train_tokenizer(texts, vocab_size=400)


def test_group_normalize_by_hand():
    rewards = torch.tensor([[1.0, 0.0], [3.0, -5.0], [2.0, 7.0], [2.0, 7.0]])
    z = credit.group_normalize(rewards, group_size=2)
    assert z[0].tolist() == pytest.approx([-Z, Z], rel=1e-3)
    assert z[1].tolist() == pytest.approx([Z, -Z], rel=1e-3)
    assert z[2:].abs().max() == 0  # constant within its group: no signal
    with pytest.raises(ValueError, match="whole groups"):
        credit.group_normalize(rewards, group_size=3)


def hand_group():
    # two completions, one group; reward 0 sequence-level, reward 1 token-level (compliance-like)
    rewards = torch.tensor([[1.0, 0.0], [3.0, -5.0]])
    weights = torch.tensor([1.0, 0.5])
    spans = torch.tensor([[0, 0, 0, 0], [0, 1, 1, 0]], dtype=torch.float32)  # row 1 tokens 1-2 violate
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    return rewards, weights, spans, mask


def test_token_level_rewards_only_blame_by_hand():
    rewards, weights, spans, mask = hand_group()
    adv = credit.combine_advantages(rewards, weights, [False, True], {1: spans}, mask, group_size=2)
    assert adv.shape == (2, 4)
    # row 0 beats the group on the token-level reward (z=+Z): no gain from it, only its sequence part -Z; padding 0
    assert adv[0].tolist() == pytest.approx([-Z, -Z, -Z, 0.0], rel=1e-3)
    # row 1: seq +Z everywhere; compliance z=-Z (x 0.5) only on the violating tokens 1-2
    assert adv[1].tolist() == pytest.approx([Z, Z / 2, Z / 2, Z], rel=1e-3)


def test_constraint_violator_never_wins():
    rewards, weights, spans, mask = hand_group()
    violating = torch.tensor([False, True])
    adv = credit.combine_advantages(rewards, weights, [False, True], {1: spans}, mask, 2, violating=violating)
    # row 1's sequence part is capped at min(0, row 0's sequence part -Z) = -Z, then the span blame
    assert adv[1].tolist() == pytest.approx([-Z, -1.5 * Z, -1.5 * Z, -Z], rel=1e-3)
    assert adv[0].tolist() == pytest.approx([-Z, -Z, -Z, 0.0], rel=1e-3)
    assert adv[1].max() <= adv[0, :3].min()


def test_credit_assignment_off_is_sequence_level():
    rewards, weights, spans, mask = hand_group()
    adv = credit.combine_advantages(rewards, weights, [False, True], {1: spans}, mask, 2, credit_assignment=False)
    assert adv[0].tolist() == pytest.approx([-Z / 2] * 3 + [0.0], rel=1e-3)  # -Z + 0.5 Z
    assert adv[1].tolist() == pytest.approx([Z / 2] * 4, rel=1e-3)  # +Z - 0.5 Z on every token
    capped = credit.combine_advantages(rewards, weights, [False, True], {1: spans}, mask, 2,
                                       violating=torch.tensor([False, True]), credit_assignment=False)
    assert capped[1].tolist() == pytest.approx([-Z / 2] * 4, rel=1e-3)  # capped at the compliant member's value


def test_unlocalisable_penalty_spreads_over_sequence():
    rewards, weights, _, mask = hand_group()
    adv = credit.combine_advantages(rewards, weights, [False, True], {}, mask, 2)
    assert adv[1].tolist() == pytest.approx([Z / 2] * 4, rel=1e-3)


def test_shape_mismatch_rejected():
    rewards, weights, spans, mask = hand_group()
    with pytest.raises(ValueError, match="weights"):
        credit.combine_advantages(rewards, torch.ones(3), [False, True], {1: spans}, mask, 2)


def test_spans_map_to_exactly_the_covering_tokens(tokenizer):
    text = " Get guaranteed results today"
    (violation,) = ComplianceChecker.load().find(text)
    assert text[violation.start : violation.end] == "guaranteed results"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    offsets = credit.token_char_offsets(tokenizer, [ids], len(ids) + 2)  # 2 padding positions
    mask = credit.spans_to_token_mask([[(violation.start, violation.end)]], offsets)[0]
    flagged = "".join(tokenizer.decode([t]) for t, m in zip(ids, mask.tolist()) if m)
    unflagged = [tokenizer.decode([t]) for t, m in zip(ids, mask.tolist()) if not m]
    assert flagged.strip() == "guaranteed results"
    assert all("guarant" not in piece and "result" not in piece for piece in unflagged)
    assert mask[-3:].sum() == 0  # <eos> and padding never carry a span penalty
    # the offsets from the sampled ids agree with the tokenizer's own offset mapping
    own = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    for mine, theirs in zip(offsets[0].tolist(), own):
        if theirs[0] == theirs[1]:  # a whitespace-only token: zero width in both (where it sits is moot)
            assert mine[0] == mine[1]
        else:
            assert mine == list(theirs)


def test_offsets_follow_sampled_ids_not_canonical_tokenization(tokenizer):
    # a non-canonical segmentation (one character per token) still maps spans to the right tokens
    text = " results"
    ids = tokenizer.convert_tokens_to_ids(["Ġ", "r", "e", "s", "u", "l", "t", "s"])  # byte-level: Ġ is a space
    assert tokenizer.decode(ids) == text
    offsets = credit.token_char_offsets(tokenizer, [ids], len(ids))
    mask = credit.spans_to_token_mask([[(1, 4)]], offsets)[0]  # "res"
    assert mask.tolist() == [0, 1, 1, 1, 0, 0, 0, 0]
