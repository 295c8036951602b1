"""Granularity-aware credit assignment: K rewards per completion -> one (batch, tokens) advantage.

1. Each reward is normalised within its GRPO group: z = (r - group mean) / (group std + eps)
   (std unbiased, as TRL's; a constant reward in a group gives z = 0).
2. Sequence-level rewards (ctcvr, quality_structural): w * z on every completion token.
3. Token-level rewards (quality_compliance, diversity) only blame: a completion that falls
   behind its group (z < 0) gets w * z only on the tokens inside its penalised character
   spans, so the blame lands on the words that earned it (with no span to localise to, on
   the whole completion). One that beats its group (z >= 0) gets nothing from them.
4. Constraint (compliance): a violating completion never wins its group. Its sequence
   part is capped at min(0, the lowest sequence part of a compliant group member), and
   none of its tokens keeps a positive advantage.
With `credit_assignment=False` (the ablation) every reward is sequence-level: the same
weighted z-sum on every token, with the same constraint.
Padding tokens (mask 0) get 0. Everything here is a pure function of tensors except
`token_char_offsets`, which maps token ids to characters with the policy tokenizer's offsets.
"""
from __future__ import annotations

from typing import Sequence

import torch

EPS = 1e-4  # as TRL's group normalisation


def group_normalize(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N, K) raw rewards -> (N, K) per-group z-scores; N must be a multiple of group_size."""
    n, k = rewards.shape
    if group_size < 1 or n % group_size:
        raise ValueError(f"group_normalize: {n} completions are not whole groups of {group_size}")
    grouped = rewards.view(n // group_size, group_size, k)
    mean = grouped.mean(dim=1, keepdim=True)
    if group_size > 1:
        std = grouped.std(dim=1, keepdim=True, unbiased=True)
    else:
        std = torch.zeros_like(mean)
    return ((grouped - mean) / (std + EPS)).view(n, k)


def spans_to_token_mask(spans: Sequence[Sequence[tuple[int, int]]], offsets: torch.Tensor) -> torch.Tensor:
    """(N, T) float mask: 1 where a token's [start, end) characters overlap any span of its row.

    `offsets` is (N, T, 2); zero-width tokens (padding, <eos>) never overlap.
    """
    n, t, _ = offsets.shape
    if len(spans) != n:
        raise ValueError(f"spans_to_token_mask: {len(spans)} span lists for {n} rows")
    mask = torch.zeros(n, t, dtype=torch.float32)
    starts, ends = offsets[..., 0], offsets[..., 1]
    for i, row in enumerate(spans):
        for s, e in row:
            hit = (starts[i] < e) & (ends[i] > s) & (ends[i] > starts[i])
            mask[i] = torch.maximum(mask[i], hit.float())
    return mask


def token_char_offsets(tokenizer, completion_ids: Sequence[Sequence[int]], length: int) -> torch.Tensor:
    """(N, length, 2) character offsets of each generated token in the decoded completion.

    The completion text TRL scores is `decode(ids, skip_special_tokens=True)`. When the policy
    tokenizer encodes that text back to the sampled ids, the offsets are the tokenizer's own
    (`return_offsets_mapping`); otherwise (a sampled segmentation that is not the tokenizer's,
    or a text decoding changed) they come from decoding growing prefixes of the sampled ids.
    A token's leading whitespace is trimmed from its span; special tokens have zero width.
    A slow tokenizer (no offsets) is refused.
    """
    if not getattr(tokenizer, "is_fast", False):
        from plumbing.errors import ConfigError

        raise ConfigError(f"token-level credit: the policy tokenizer {type(tokenizer).__name__} has no offset "
                          "mapping (a slow tokenizer); use a fast tokenizer (tokenizer.json) or grpo.credit_assignment: false")
    special = set(tokenizer.all_special_ids)
    rows = [list(ids)[:length] for ids in completion_ids]
    texts = tokenizer.batch_decode(rows, skip_special_tokens=True)
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True) if rows else None
    table = [[(0, 0)] * length for _ in rows]
    for i, ids in enumerate(rows):
        spans = _mapped_offsets(ids, texts[i], encoded["input_ids"][i], encoded["offset_mapping"][i], special)
        table[i][: len(ids)] = _prefix_offsets(tokenizer, ids) if spans is None else spans
    return torch.tensor(table, dtype=torch.long).view(len(rows), length, 2)


def _mapped_offsets(ids: list[int], text: str, encoded_ids: list[int], offsets, special: set):
    """The tokenizer's offsets of the decoded text when it encodes back to `ids` (else None)."""
    kept = [j for j, t in enumerate(ids) if t not in special]
    if list(encoded_ids) != [ids[j] for j in kept]:
        return None
    spans, prev = [], 0
    mapping = dict(zip(kept, offsets))
    for j in range(len(ids)):
        start, end = mapping.get(j, (prev, prev))
        while start < end and text[start : start + 1].isspace():
            start += 1
        spans.append((start, max(start, end)))
        prev = max(prev, end)
    return spans


def _prefix_offsets(tokenizer, ids: list[int]) -> list[tuple[int, int]]:
    """Offsets from decoding growing prefixes of the sampled ids."""
    prefixes = tokenizer.batch_decode([ids[: j + 1] for j in range(len(ids))], skip_special_tokens=True)
    full = prefixes[-1] if prefixes else ""
    spans, prev = [], 0
    for text in prefixes:
        end = len(text)
        start = prev
        while start < end and full[start : start + 1].isspace():
            start += 1
        spans.append((start, max(start, end)))
        prev = end
    return spans


def combine_advantages(
    rewards: torch.Tensor,
    weights: torch.Tensor,
    token_level: Sequence[bool],
    token_masks: dict[int, torch.Tensor],
    completion_mask: torch.Tensor,
    group_size: int,
    violating: torch.Tensor | None = None,
    credit_assignment: bool = True,
) -> torch.Tensor:
    """(N, T) advantages from (N, K) raw rewards; see the module docstring for the rule.

    token_masks: reward index -> (N, T) mask of the tokens its spans cover (token-level rewards).
    violating: (N,) bool, completions that break the constraint (None: no constraint).
    """
    n, k = rewards.shape
    if weights.shape != (k,) or len(token_level) != k:
        raise ValueError(f"combine_advantages: {k} rewards but weights {tuple(weights.shape)}, {len(token_level)} flags")
    z = group_normalize(rewards.float(), group_size)
    mask = completion_mask.float()
    if not credit_assignment:
        seq = (z * weights).sum(dim=1)
        if violating is not None:
            seq = _cap_violators(seq, violating, group_size)
        return seq.unsqueeze(1) * mask

    seq_cols = [j for j in range(k) if not token_level[j]]
    seq = (z[:, seq_cols] * weights[seq_cols]).sum(dim=1) if seq_cols else torch.zeros(n)
    if violating is not None:
        seq = _cap_violators(seq, violating, group_size)
    adv = seq.unsqueeze(1).expand(n, mask.shape[1]).clone()
    for j in range(k):
        if token_level[j]:
            adv = adv + weights[j] * _token_blame(z[:, j : j + 1], token_masks.get(j), mask)
    if violating is not None:
        adv = torch.where(violating.view(n, 1), adv.clamp(max=0.0), adv)
    return adv * mask


def _token_blame(zj: torch.Tensor, span_mask: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """(N, T) part of one token-level reward (z: (N, 1)): min(z, 0) on its span tokens, or on
    every token of a completion with no span to localise to."""
    span_mask = (torch.zeros_like(mask) if span_mask is None else span_mask.float()) * mask
    localisable = span_mask.sum(dim=1, keepdim=True) > 0
    # behind the group and localisable: only the span tokens; otherwise the whole completion
    where = torch.where((zj < 0) & localisable, span_mask, torch.ones_like(span_mask))
    return zj.clamp(max=0.0) * where


def _cap_violators(seq: torch.Tensor, violating: torch.Tensor, group_size: int) -> torch.Tensor:
    """A violator's value <= min(0, lowest compliant value in its group)."""
    groups = seq.view(-1, group_size)
    bad = violating.view(-1, group_size).bool()
    compliant_min = torch.where(bad, torch.full_like(groups, float("inf")), groups).min(dim=1, keepdim=True).values
    cap = torch.clamp(compliant_min, max=0.0)
    return torch.where(bad, torch.minimum(groups, cap), groups).view(-1)
