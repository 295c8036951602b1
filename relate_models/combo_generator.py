"""GenCO's combination generator: an autoregressive pointer policy over each ad's own elements.

For an ad with context embedding c = E_ad + E_product + E_vertical (any named context
features), the generator picks one element per slot in a fixed slot order:

    h_0 = tanh(W_0 c)
    for slot s:  q_s = W_q h_{s-1} + q_slot[s]
                 score_j = <q_s, k_j> / sqrt(d) + b_j      over the ad's candidates j of slot s
                 p(j) = softmax over the *allowed* candidates (pointer-style)
                 h_s = GRU(h_{s-1}, k_pick + e_slot[s])

k_j and b_j are per-element embeddings/biases (an element is the ad's (slot, element id)).
A candidate is allowed when it belongs to this ad's candidate set for the slot and no
pairwise constraint with an element already picked forbids it; an ad without candidates
for a slot skips it (pick -1, log-prob 0). Nothing ever enumerates the combination space,
so an ad with 10 candidates in each of 5 slots (10^5 combinations) costs 5 softmaxes of 10.

Training is group-baseline policy gradient (GRPO-style): G combinations are sampled per
ad, each scored by a reward model that returns a scalar reward and its per-slot additive
contributions (the MIL attribution model's logit and element contributions). The
advantage of slot s of sample i (`slot_advantages`) is

    A_is = [(c_is - mean_group c_.s) + (e_i - mean_group e_.) / n_present_i] / scale

where e_i = R_i - sum_s c_is is the part of the reward no element claims (spread evenly)
and scale = max(std_group R, RMS over slots of std_group c_.s) + eps (the second term only
matters when the slots' contributions cancel out, which would otherwise blow up the ratio).
So, in the usual case, the slot advantages of a sample sum to its sequence advantage,
and each slot is credited for its own element's contribution, not for the luck of the
other slots: the per-slot analogue of token-level credit in `credit.py`. With
credit_assignment off every slot gets the full sequence advantage (the ablation).
Diversity control: a cross-entropy-from-uniform regulariser (label smoothing) whose weight
adapts to hold a target entropy per slot keeps the policy from collapsing onto one
combination per ad (`diversity_metrics` measures distinct combinations per ad).

Serving decodes the top-k combinations per ad with beam search under the policy.
Artifacts (no pickle): `generator.safetensors` + `config.json` (architecture, the
candidate problem, training metadata).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

ARTIFACT_FILES = ("generator.safetensors", "config.json")
EPS = 1e-4  # as credit.py / TRL's group normalisation


# --------------------------------------------------------------------------- the candidate problem


@dataclass
class ComboProblem:
    """Per ad and slot, the candidate element ids; per ad, its context; forbidden element pairs.

    forbidden: (ad_id or None for every ad, slot_a, element_a, slot_b, element_b): the two
    elements may not appear in one combination.
    """

    ad_ids: list[str]
    slots: list[str]
    candidates: list[list[list[str]]]  # [ad][slot] -> element ids
    context: dict[str, list[str]] = field(default_factory=dict)  # feature -> value per ad
    forbidden: list[tuple] = field(default_factory=list)

    def __post_init__(self):
        if not self.ad_ids:
            raise ValueError("combination problem has no ads")
        if len(set(self.ad_ids)) != len(self.ad_ids):
            raise ValueError("combination problem: duplicate ad_id")
        if not self.slots or len(set(self.slots)) != len(self.slots):
            raise ValueError(f"combination problem: slots must be distinct and non-empty, got {self.slots}")
        if len(self.candidates) != len(self.ad_ids):
            raise ValueError(f"{len(self.candidates)} candidate lists for {len(self.ad_ids)} ads")
        for ad_id, per_slot in zip(self.ad_ids, self.candidates):
            if len(per_slot) != len(self.slots):
                raise ValueError(f"ad {ad_id!r}: {len(per_slot)} candidate lists for {len(self.slots)} slots")
            if not any(per_slot):
                raise ValueError(f"ad {ad_id!r} has no candidate element in any slot")
            for slot, elems in zip(self.slots, per_slot):
                if len(set(elems)) != len(elems):
                    raise ValueError(f"ad {ad_id!r} slot {slot!r}: duplicate candidate element")
        for name, values in self.context.items():
            if len(values) != len(self.ad_ids):
                raise ValueError(f"context feature {name!r}: {len(values)} values for {len(self.ad_ids)} ads")
        self.forbidden = [tuple(f) for f in self.forbidden]
        self.ad_index = {a: i for i, a in enumerate(self.ad_ids)}
        self.slot_index = {s: i for i, s in enumerate(self.slots)}
        for rule in self.forbidden:
            if len(rule) != 5:
                raise ValueError(f"forbidden rule {rule!r}: expected (ad_id|None, slot_a, element_a, slot_b, element_b)")
            ad_id, sa, _, sb, _ = rule
            if sa not in self.slot_index or sb not in self.slot_index or sa == sb:
                raise ValueError(f"forbidden rule {rule!r}: needs two different slots of {self.slots}")
            if ad_id is not None and ad_id not in self.ad_index:
                raise ValueError(f"forbidden rule {rule!r}: unknown ad_id")

    @property
    def max_candidates(self) -> int:
        return max(len(e) for per_slot in self.candidates for e in per_slot)

    def n_combinations(self, ad: int) -> int:
        """Size of the ad's space before pairwise constraints (absent slots count once)."""
        return math.prod(max(len(e), 1) for e in self.candidates[ad])

    def elements(self) -> list[tuple[str, str, str]]:
        """Every (ad_id, slot, element_id), in a stable order: the generator's element vocabulary."""
        return [(a, s, e) for a, per_slot in zip(self.ad_ids, self.candidates)
                for s, elems in zip(self.slots, per_slot) for e in elems]

    def tensors(self) -> "ProblemTensors":
        """Padded index tensors: candidate element index (0 = padding), validity, compatibility."""
        n_ads, n_slots, width = len(self.ad_ids), len(self.slots), self.max_candidates
        element = torch.zeros(n_ads, n_slots, width, dtype=torch.long)
        position = {}
        k = 1
        for a, per_slot in enumerate(self.candidates):
            for s, elems in enumerate(per_slot):
                for j, e in enumerate(elems):
                    element[a, s, j] = k
                    position[(a, s, e)] = j
                    k += 1
        compat = None
        if self.forbidden:
            compat = torch.ones(n_ads, n_slots, width, n_slots, width, dtype=torch.bool)
            for ad_id, sa, ea, sb, eb in self.forbidden:
                ads = range(n_ads) if ad_id is None else [self.ad_index[ad_id]]
                ia, ib = self.slot_index[sa], self.slot_index[sb]
                for a in ads:
                    ja, jb = position.get((a, ia, ea)), position.get((a, ib, eb))
                    if ja is not None and jb is not None:
                        compat[a, ia, ja, ib, jb] = False
                        compat[a, ib, jb, ia, ja] = False
        valid = element > 0
        if compat is not None:
            valid = self._arc_consistent(valid, compat)
        return ProblemTensors(element=element, valid=valid, compat=compat)

    def _arc_consistent(self, valid: torch.Tensor, compat: torch.Tensor) -> torch.Tensor:
        """Drop candidates that no candidate of some other slot goes with (repeated to a fixed point),
        so slot-by-slot decoding never walks into a slot with nothing left to pick."""
        present = valid.any(-1)  # [A, S]
        while True:
            supported = (compat & valid[:, None, None, :, :]).any(-1)  # [A, S, C, S]
            narrowed = valid & (supported | ~present[:, None, None, :]).all(-1)
            if torch.equal(narrowed, valid):
                break
            valid = narrowed
        emptied = present & ~valid.any(-1)
        if emptied.any():
            a, s = (int(x) for x in torch.nonzero(emptied)[0])
            raise ValueError(f"ad {self.ad_ids[a]!r}: the forbidden pairs leave no candidate for slot {self.slots[s]!r}")
        return valid

    def picks_to_ids(self, ad: int, picks: Sequence[int]) -> list[str | None]:
        return [self.candidates[ad][s][j] if j >= 0 else None for s, j in enumerate(picks)]

    def to_json(self) -> dict:
        return {"ad_ids": self.ad_ids, "slots": self.slots, "candidates": self.candidates,
                "context": self.context, "forbidden": [list(f) for f in self.forbidden]}

    @classmethod
    def from_json(cls, obj: dict) -> "ComboProblem":
        return cls(ad_ids=list(obj["ad_ids"]), slots=list(obj["slots"]),
                   candidates=[[list(e) for e in per_slot] for per_slot in obj["candidates"]],
                   context={k: list(v) for k, v in obj.get("context", {}).items()},
                   forbidden=[tuple(f) for f in obj.get("forbidden", [])])


@dataclass
class ProblemTensors:
    element: torch.Tensor  # [A, S, C] generator element index, 0 = padding
    valid: torch.Tensor  # [A, S, C] bool: a real candidate of that ad and slot
    compat: torch.Tensor | None  # [A, S, C, S, C] bool: the two candidates may appear together


# --------------------------------------------------------------------------- the model


@dataclass
class GeneratorConfig:
    n_elements: int
    n_slots: int
    context_sizes: dict[str, int]  # feature -> vocabulary size (index 0 = unknown)
    hidden_dim: int = 32


@dataclass
class Decoded:
    picks: torch.Tensor  # [B, S] candidate position per slot, -1 = slot absent
    logp: torch.Tensor  # [B, S] log-prob of each pick (0 where absent)
    entropy: torch.Tensor  # [B, S] entropy of each slot's distribution (0 where absent)
    present: torch.Tensor  # [B, S] bool
    uniform_ce: torch.Tensor | None = None  # [B, S] cross-entropy from uniform over the allowed candidates


class ComboGenerator(nn.Module):
    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_dim
        self.context_emb = nn.ModuleDict({name: nn.Embedding(n + 1, d) for name, n in sorted(cfg.context_sizes.items())})
        self.init = nn.Linear(d, d)
        self.element_emb = nn.Embedding(cfg.n_elements + 1, d, padding_idx=0)
        self.element_bias = nn.Embedding(cfg.n_elements + 1, 1, padding_idx=0)
        self.slot_query = nn.Parameter(torch.zeros(cfg.n_slots, d))
        self.slot_input = nn.Parameter(torch.zeros(cfg.n_slots, d))
        self.query = nn.Linear(d, d)
        self.cell = nn.GRUCell(d, d)
        for emb in self.context_emb.values():
            nn.init.normal_(emb.weight, std=0.1)
        nn.init.normal_(self.element_emb.weight, std=0.1)
        nn.init.zeros_(self.element_bias.weight)
        nn.init.normal_(self.slot_query, std=0.1)
        nn.init.normal_(self.slot_input, std=0.1)
        with torch.no_grad():
            self.element_emb.weight[0].zero_()

    def initial_state(self, context: torch.Tensor) -> torch.Tensor:
        """context: [B, F] indices, features in sorted name order -> h_0 [B, d]."""
        c = sum(emb(context[:, f]) for f, emb in enumerate(self.context_emb.values()))
        return torch.tanh(self.init(c))

    def slot_logits(self, h: torch.Tensor, slot: int, keys: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        q = self.query(h) + self.slot_query[slot]
        return torch.einsum("bd,bcd->bc", q, keys) / math.sqrt(self.cfg.hidden_dim) + bias

    def decode(
        self,
        tensors: ProblemTensors,
        context: torch.Tensor,  # [A, F]
        ads: torch.Tensor,  # [B] ad rows
        picks: torch.Tensor | None = None,  # teacher forcing: [B, S]
        greedy: bool = False,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Decoded:
        """Sample (or score given `picks`) one combination per row of `ads`, slot by slot."""
        n_slots = self.cfg.n_slots
        h = self.initial_state(context[ads])
        element = tensors.element[ads]  # [B, S, C]
        allowed_all = tensors.valid[ads]
        present = allowed_all.any(-1)  # [B, S]
        out_picks, out_logp, out_ent, out_ce = [], [], [], []
        for s in range(n_slots):
            allowed = allowed_all[:, s]
            if tensors.compat is not None:
                for earlier in range(s):
                    prev = out_picks[earlier]
                    ok = tensors.compat[ads, earlier, prev.clamp(min=0), s]  # [B, C]
                    allowed = allowed & torch.where((prev >= 0).unsqueeze(1), ok, torch.ones_like(ok))
            dead = present[:, s] & ~allowed.any(-1)
            if dead.any():
                row = int(torch.nonzero(dead)[0])
                raise ValueError(f"ad row {int(ads[row])}: constraints leave no candidate for slot {s} "
                                 "given the elements picked before it")
            keys = self.element_emb(element[:, s])
            logits = self.slot_logits(h, s, keys, self.element_bias(element[:, s]).squeeze(-1))
            logits = logits / temperature
            # an absent slot gets a dummy distribution on position 0 so nothing is NaN
            allowed_safe = allowed | (~present[:, s]).unsqueeze(1) & (torch.arange(allowed.shape[1]) == 0)
            logp_all = torch.log_softmax(logits.masked_fill(~allowed_safe, float("-inf")), dim=-1)
            if picks is not None:
                pick = picks[:, s].clamp(min=0, max=allowed.shape[1] - 1)
                out_of_range = (picks[:, s] < 0) | (picks[:, s] >= allowed.shape[1])
                bad = present[:, s] & (out_of_range | ~allowed.gather(1, pick.unsqueeze(1)).squeeze(1))
                if bad.any():
                    raise ValueError(f"slot {s}: a given pick is not an allowed candidate")
            elif greedy:
                pick = logp_all.argmax(-1)
            else:
                pick = torch.multinomial(logp_all.exp(), 1, generator=generator).squeeze(1)
            p_all = logp_all.exp()
            masked_logp = logp_all.masked_fill(~allowed_safe, 0.0)
            entropy = -(p_all * masked_logp).sum(-1)
            uniform_ce = -masked_logp.sum(-1) / allowed_safe.sum(-1)
            logp = logp_all.gather(1, pick.unsqueeze(1)).squeeze(1)
            here = present[:, s]
            out_picks.append(torch.where(here, pick, torch.full_like(pick, -1)))
            out_logp.append(torch.where(here, logp, torch.zeros_like(logp)))
            out_ent.append(torch.where(here, entropy, torch.zeros_like(entropy)))
            out_ce.append(torch.where(here, uniform_ce, torch.zeros_like(uniform_ce)))
            step_in = self.element_emb(element[:, s].gather(1, pick.unsqueeze(1)).squeeze(1)) + self.slot_input[s]
            h = torch.where(here.unsqueeze(1), self.cell(step_in, h), h)
        return Decoded(torch.stack(out_picks, 1), torch.stack(out_logp, 1), torch.stack(out_ent, 1), present,
                       torch.stack(out_ce, 1))

    @torch.no_grad()
    def beam_search(self, tensors: ProblemTensors, context: torch.Tensor, ads: torch.Tensor, k: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k combinations per ad under the policy: (picks [B, k, S], logp [B, k]); -inf logp = none left."""
        n_slots, d = self.cfg.n_slots, self.cfg.hidden_dim
        b = len(ads)
        width = tensors.element.shape[2]
        h = self.initial_state(context[ads]).unsqueeze(1).expand(b, k, d).reshape(b * k, d)
        score = torch.full((b, k), float("-inf"))
        score[:, 0] = 0.0  # one live beam to start, so every finished beam is a distinct path
        picks = torch.full((b, k, n_slots), -1, dtype=torch.long)
        flat_ads = ads.repeat_interleave(k)
        element = tensors.element[flat_ads]
        valid = tensors.valid[flat_ads]
        present = valid.any(-1)
        for s in range(n_slots):
            allowed = valid[:, s]
            if tensors.compat is not None:
                for earlier in range(s):
                    prev = picks[:, :, earlier].reshape(-1)
                    ok = tensors.compat[flat_ads, earlier, prev.clamp(min=0), s]
                    allowed = allowed & torch.where((prev >= 0).unsqueeze(1), ok, torch.ones_like(ok))
            here = present[:, s]
            allowed = allowed | (~here).unsqueeze(1) & (torch.arange(width) == 0)
            keys = self.element_emb(element[:, s])
            logits = self.slot_logits(h, s, keys, self.element_bias(element[:, s]).squeeze(-1))
            logp = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
            # rows whose constraints leave nothing: the beam dies instead of producing NaN
            logp = torch.where(torch.isnan(logp), float("-inf"), logp)
            logp = torch.where(here.unsqueeze(1), logp, torch.where(allowed, 0.0, float("-inf")))
            total = (score.reshape(-1, 1) + logp).reshape(b, k * width)
            score, flat = total.topk(k, dim=1)
            beam, cand = flat // width, flat % width
            picks = picks.gather(1, beam.unsqueeze(-1).expand(b, k, n_slots)).clone()
            here_b = here.reshape(b, k).gather(1, beam)
            picks[:, :, s] = torch.where(here_b, cand, torch.full_like(cand, -1))
            rows = (torch.arange(b).unsqueeze(1) * k + beam).reshape(-1)
            h = h[rows]
            chosen = element[rows, s].gather(1, cand.reshape(-1, 1)).squeeze(1)
            step_in = self.element_emb(chosen) + self.slot_input[s]
            h = torch.where(here_b.reshape(-1, 1), self.cell(step_in, h), h)
            element, valid, present = element[rows], valid[rows], present[rows]
        return picks, score


# --------------------------------------------------------------------------- credit assignment


def slot_advantages(
    reward: torch.Tensor,  # [N]
    contribution: torch.Tensor | None,  # [N, S] additive parts of the reward per slot (None: no credit)
    present: torch.Tensor,  # [N, S] bool
    group_size: int,
    credit_assignment: bool = True,
) -> torch.Tensor:
    """[N, S] per-slot advantages; see the module docstring. Rows are whole groups in order."""
    n = reward.shape[0]
    if group_size < 1 or n % group_size:
        raise ValueError(f"slot_advantages: {n} samples are not whole groups of {group_size}")
    present_f = present.float()
    grouped = reward.float().view(-1, group_size)
    std = grouped.std(dim=1, keepdim=True, unbiased=True) if group_size > 1 else torch.zeros_like(grouped[:, :1])
    if not credit_assignment or contribution is None:
        centred = (grouped - grouped.mean(dim=1, keepdim=True)).reshape(n, 1)
        return centred / (std + EPS).expand(-1, group_size).reshape(n, 1) * present_f
    contribution = contribution.float() * present_f
    residual = reward.float() - contribution.sum(1)
    n_present = present_f.sum(1).clamp(min=1)

    def centre(x: torch.Tensor) -> torch.Tensor:
        g = x.reshape(-1, group_size, *x.shape[1:])
        return (g - g.mean(dim=1, keepdim=True)).reshape(x.shape)

    slot_parts = centre(contribution) * present_f
    parts = slot_parts + (centre(residual) / n_present).unsqueeze(1) * present_f
    # when the slots' contributions cancel, std(R) understates how much the picks differ:
    # the scale never drops below the root-mean-square spread of one slot's contribution
    slot_var = slot_parts.reshape(-1, group_size, slot_parts.shape[1]).pow(2).sum(1) / max(group_size - 1, 1)
    rms = (slot_var.sum(1, keepdim=True) / n_present.reshape(-1, group_size)[:, :1]).sqrt()
    scale = torch.maximum(std, rms) + EPS
    return parts / scale.expand(-1, group_size).reshape(n, 1)


# --------------------------------------------------------------------------- reward: the MIL model


class MILReward:
    """Reward = the MIL attribution model's click logit; per-slot parts = its element contributions.

    elements/hashed: [A, S, C] the attribution model's element index and content hash of each
    candidate (0 where unknown / padding); product: [A] product index; pairs: [A, C, C] the
    pair index of (candidate i of slot 0, candidate j of slot 1), 0 = no pair effect.
    """

    def __init__(self, model: nn.Module, elements: torch.Tensor, hashed: torch.Tensor, product: torch.Tensor,
                 pairs: torch.Tensor | None = None, content: tuple | None = None):
        self.model, self.elements, self.hashed, self.product = model, elements, hashed, product
        self.pairs = pairs
        # content models: (content row [A, S, C], the content table's tensors, bonus [A, S, C] of cold elements)
        self.content = content

    @classmethod
    def from_scorer(cls, scorer, problem: ComboProblem, cold_bonus: float = 0.0) -> "MILReward":
        """Bind an `attribution.AttributionScorer` to the problem's candidates (slots must be the scorer's).

        With a content model, a candidate with no clicks (not in the model's vocabulary) is scored by its
        content alone, plus `cold_bonus` logits added to its contribution: an exploration bonus, so the
        generator tries new elements whose content looks as good as the incumbents' (pipelines/combo_policy.py)."""
        from relate_models import attribution as attr

        if list(problem.slots) != list(attr.SLOTS):
            raise ValueError(f"the MIL model scores slots {attr.SLOTS}, the problem has {problem.slots}")
        width = problem.max_candidates
        shape = (len(problem.ad_ids), len(problem.slots), width)
        elements = torch.zeros(shape, dtype=torch.long)
        hashed = torch.zeros(shape, dtype=torch.long)
        buckets = scorer.model.cfg.hash_buckets
        for a, (ad_id, per_slot) in enumerate(zip(problem.ad_ids, problem.candidates)):
            for s, (slot, elems) in enumerate(zip(problem.slots, per_slot)):
                for j, e in enumerate(elems):
                    # an element the MIL model never saw is scored by its content hash only (its fallback)
                    elements[a, s, j] = scorer.vocab.element_index.get(attr._element_key(ad_id, slot, e), 0)
                    hashed[a, s, j] = attr.content_hash(slot, e, buckets)
        product = torch.as_tensor([scorer.vocab.product_index.get(scorer.vocab.ad_product.get(a, ""), 0)
                                   for a in problem.ad_ids], dtype=torch.long)
        pairs = torch.zeros((len(problem.ad_ids), width, width), dtype=torch.long)
        for a, (ad_id, per_slot) in enumerate(zip(problem.ad_ids, problem.candidates)):
            for i, first in enumerate(per_slot[0]):
                for j, second in enumerate(per_slot[1]):
                    pairs[a, i, j] = scorer.vocab.pair_index.get(attr._pair_key(ad_id, first, second), 0)
        content = None
        if scorer.content is not None:  # the content rows replace the hashed id, as in attribution.encode
            from relate_models.content_encoder import content_key

            hashed.zero_()
            rows = torch.as_tensor([[[scorer.content.index.get(content_key(ad_id, slot, e), 0)
                                      for e in list(elems) + [None] * (width - len(elems))]
                                     for slot, elems in zip(problem.slots, per_slot)]
                                    for ad_id, per_slot in zip(problem.ad_ids, problem.candidates)], dtype=torch.long)
            bonus = cold_bonus * ((elements == 0) & (rows > 0)).float()
            content = (rows, (scorer.content.tokens, scorer.content.image, scorer.content.is_image), bonus)
        return cls(scorer.model, elements, hashed, product, pairs, content)

    @torch.no_grad()
    def __call__(self, ads: torch.Tensor, picks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        present = picks >= 0
        idx = picks.clamp(min=0).unsqueeze(-1)
        element = self.elements[ads].gather(2, idx).squeeze(-1) * present
        hashed = self.hashed[ads].gather(2, idx).squeeze(-1) * present
        pair = None
        if self.pairs is not None:
            pair = self.pairs[ads, idx[:, 0, 0], idx[:, 1, 0]] * (present[:, 0] & present[:, 1])
        if self.content is None:
            out = self.model(element=element, hashed=hashed, present=present, product=self.product[ads], pair=pair)
            return out["logit"], out["contribution"] * present
        rows, table, bonus = self.content
        row = rows[ads].gather(2, idx).squeeze(-1) * present
        out = self.model(element=element, hashed=hashed, present=present, product=self.product[ads], pair=pair,
                         content_index=row, content=table)
        extra = bonus[ads].gather(2, idx).squeeze(-1) * present
        return out["logit"] + extra.sum(1), (out["contribution"] + extra) * present


RewardFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


# --------------------------------------------------------------------------- training


@dataclass
class TrainSettings:
    steps: int = 300
    group_size: int = 16
    ads_per_step: int = 0  # 0 = every ad every step
    learning_rate: float = 0.02
    entropy_coef: float = 0.01  # initial weight of the entropy bonus
    entropy_target: float = 0.0  # nats per slot; > 0: the weight adapts to hold the entropy there (0: fixed)
    temperature: float = 1.0
    credit_assignment: bool = True
    seed: int = 0
    log_every: int = 25


def context_indices(problem: ComboProblem, vocab: dict[str, dict[str, int]]) -> torch.Tensor:
    """[A, F] context indices, features in sorted name order; unknown values -> 0."""
    names = sorted(vocab)
    if not names:
        return torch.zeros(len(problem.ad_ids), 0, dtype=torch.long)
    cols = [[vocab[n].get(v, 0) for v in problem.context[n]] for n in names]
    return torch.as_tensor(np.array(cols, dtype=np.int64).T.reshape(len(problem.ad_ids), len(names)))


def with_ad_context(problem: ComboProblem) -> ComboProblem:
    """`problem` with the ad id as a context feature: it is what lets one ad differ from its siblings."""
    if "ad_id" in problem.context:
        return problem
    return dataclasses.replace(problem, context={"ad_id": list(problem.ad_ids), **problem.context})


class ComboPolicy:
    """A generator bound to its problem and context vocabularies: what gets trained, saved and served."""

    def __init__(self, model: ComboGenerator, problem: ComboProblem, context_vocab: dict[str, dict[str, int]],
                 meta: dict | None = None):
        self.model, self.problem, self.context_vocab = model, problem, context_vocab
        self.meta = dict(meta or {})
        self.tensors = problem.tensors()
        self.context = context_indices(problem, context_vocab)
        if self.tensors.element.max() > model.cfg.n_elements:
            raise ValueError("problem has more elements than the generator's vocabulary")

    @classmethod
    def create(cls, problem: ComboProblem, hidden_dim: int = 32, seed: int = 0) -> "ComboPolicy":
        torch.manual_seed(seed)
        problem = with_ad_context(problem)
        vocab = {n: {v: i + 1 for i, v in enumerate(sorted(set(map(str, vals))))} for n, vals in problem.context.items()}
        cfg = GeneratorConfig(n_elements=len(problem.elements()), n_slots=len(problem.slots),
                              context_sizes={n: len(v) for n, v in vocab.items()}, hidden_dim=hidden_dim)
        return cls(ComboGenerator(cfg), problem, vocab)

    def continued_on(self, problem: ComboProblem) -> "ComboPolicy":
        """This trained generator bound to `problem` (a copy): each (ad, slot, element) keeps its rows,
        each context value its index. `problem` may lack elements (retired ones are dropped) but must
        hold no ad, element, context feature or value this generator has no rows for (a KeyError)."""
        problem = with_ad_context(problem)
        if problem.slots != self.problem.slots or set(problem.context) != set(self.context_vocab):
            raise KeyError(f"slots {problem.slots} / context features {sorted(problem.context)} differ from the "
                           f"generator's {self.problem.slots} / {sorted(self.context_vocab)}")
        unknown = [(n, v) for n, vals in problem.context.items() for v in map(str, vals)
                   if v not in self.context_vocab[n]]
        if unknown:
            raise KeyError(f"context values the generator has no rows for: {unknown[:5]}")
        index = {e: i + 1 for i, e in enumerate(self.problem.elements())}  # row 0: padding
        rows = torch.tensor([0] + [index[e] for e in problem.elements()])
        state = self.model.state_dict()
        for name in ("element_emb.weight", "element_bias.weight"):
            state[name] = state[name][rows]
        model = ComboGenerator(dataclasses.replace(self.model.cfg, n_elements=len(rows) - 1))
        model.load_state_dict(state)
        return ComboPolicy(model.eval(), problem, self.context_vocab, self.meta)

    def sample(self, ads: torch.Tensor, generator: torch.Generator | None = None, temperature: float = 1.0,
               greedy: bool = False) -> Decoded:
        return self.model.decode(self.tensors, self.context, ads, greedy=greedy, temperature=temperature,
                                 generator=generator)

    def log_prob(self, ads: torch.Tensor, picks: torch.Tensor, temperature: float = 1.0) -> Decoded:
        return self.model.decode(self.tensors, self.context, ads, picks=picks, temperature=temperature)

    def top_k(self, k: int, ads: torch.Tensor | None = None) -> list[dict]:
        """Beam-search top-k per ad: rows {ad_id, rank, slot -> element id, logp}, best first."""
        ads = torch.arange(len(self.problem.ad_ids)) if ads is None else ads
        self.model.eval()
        picks, logp = self.model.beam_search(self.tensors, self.context, ads, k)
        rows = []
        for b, a in enumerate(ads.tolist()):
            rank = 0
            for j in range(k):
                if not math.isfinite(float(logp[b, j])):
                    continue
                rank += 1
                ids = self.problem.picks_to_ids(a, picks[b, j].tolist())
                rows.append({"ad_id": self.problem.ad_ids[a], "rank": rank,
                             **dict(zip(self.problem.slots, ids)), "logp": float(logp[b, j]),
                             "picks": picks[b, j].tolist()})
        return rows

    def train(self, reward_fn: RewardFn, settings: TrainSettings, log: logging.Logger | None = None) -> list[dict]:
        """GRPO-style training on `reward_fn`; returns the per-log-step history."""
        return train_grpo(self, reward_fn, settings, log)

    # ----------------------------------------------------------------------- persistence

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, directory / "generator.safetensors")
        config = {"model": dataclasses.asdict(self.model.cfg), "problem": self.problem.to_json(),
                  "context_vocab": self.context_vocab, "meta": self.meta}
        (directory / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "ComboPolicy":
        directory = Path(directory)
        missing = [n for n in ARTIFACT_FILES if not (directory / n).is_file()]
        if missing:
            raise FileNotFoundError(f"combination generator artifact incomplete in {directory}: missing "
                                    f"{', '.join(missing)} (run pipelines.combo_policy first)")
        config = json.loads((directory / "config.json").read_text())
        model = ComboGenerator(GeneratorConfig(**config["model"]))
        model.load_state_dict(load_file(directory / "generator.safetensors"))
        return cls(model.eval(), ComboProblem.from_json(config["problem"]), config["context_vocab"], config["meta"])


def train_grpo(policy: ComboPolicy, reward_fn: RewardFn, settings: TrainSettings,
               log: logging.Logger | None = None) -> list[dict]:
    log = log or logging.getLogger(__name__)
    if settings.group_size < 2:
        raise ValueError("group_size must be >= 2 (the baseline is the group mean)")
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    model = policy.model
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    # diversity control: the regulariser is the cross-entropy from the uniform distribution over
    # the allowed candidates (label smoothing), not the entropy itself: the entropy's gradient
    # vanishes once a softmax saturates, and group-normalised advantages saturate it within a
    # few dozen steps. Its weight adapts to hold a target entropy per slot (as SAC's temperature),
    # so the policy keeps alternatives without giving up its top choice
    log_alpha = torch.tensor(math.log(max(settings.entropy_coef, 1e-8)), requires_grad=True)
    alpha_opt = torch.optim.Adam([log_alpha], lr=0.05)
    n_ads = len(policy.problem.ad_ids)
    per_step = n_ads if settings.ads_per_step <= 0 else min(settings.ads_per_step, n_ads)
    history = []
    start = time.monotonic()
    log.info("training combination generator: %d ads, %d slots, %d ads x %d samples per step, %d steps, credit=%s",
             n_ads, len(policy.problem.slots), per_step, settings.group_size, settings.steps,
             "slot" if settings.credit_assignment else "sequence")
    for step in range(1, settings.steps + 1):
        model.train()
        ads = torch.randperm(n_ads, generator=gen)[:per_step] if per_step < n_ads else torch.arange(n_ads)
        ads = ads.repeat_interleave(settings.group_size)
        with torch.no_grad():
            sampled = policy.sample(ads, gen, settings.temperature)
        reward, contribution = reward_fn(ads, sampled.picks)
        adv = slot_advantages(reward, contribution, sampled.present, settings.group_size, settings.credit_assignment)
        scored = policy.log_prob(ads, sampled.picks, settings.temperature)
        pg = -(adv * scored.logp).sum(1).mean()
        entropy = scored.entropy.sum(1).mean()
        alpha = log_alpha.exp().detach()
        loss = pg + alpha * scored.uniform_ce.sum(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if settings.entropy_target > 0:
            per_slot = float(scored.entropy.detach().sum() / scored.present.sum().clamp(min=1))
            alpha_loss = log_alpha * (per_slot - settings.entropy_target)
            alpha_opt.zero_grad()
            alpha_loss.backward()
            alpha_opt.step()
        if step == 1 or step % settings.log_every == 0 or step == settings.steps:
            grouped = sampled.picks.view(per_step, settings.group_size, -1)
            distinct = float(np.mean([len({tuple(r) for r in g.tolist()}) for g in grouped]))
            point = {"step": step, "mean_reward": float(reward.mean()), "entropy_per_ad": float(entropy.detach()),
                     "entropy_weight": float(alpha),
                     "distinct_in_group": distinct, "loss": float(loss.detach()),
                     "seconds": round(time.monotonic() - start, 2)}
            history.append(point)
            log.info("step %d/%d reward %.4f entropy %.3f (weight %.4f) distinct/group %.1f (%.1fs)", step,
                     settings.steps, point["mean_reward"], point["entropy_per_ad"], point["entropy_weight"], distinct,
                     point["seconds"])
    model.eval()
    return history


@torch.no_grad()
def diversity_metrics(policy: ComboPolicy, top_rows: list[dict], samples_per_ad: int, seed: int) -> dict:
    """Does the policy keep alternatives? Distinct combos among samples, in the top-k, across ads."""
    n_ads = len(policy.problem.ad_ids)
    gen = torch.Generator().manual_seed(seed)
    ads = torch.arange(n_ads).repeat_interleave(samples_per_ad)
    sampled = policy.sample(ads, gen)
    grouped = sampled.picks.view(n_ads, samples_per_ad, -1).tolist()
    by_ad: dict[str, list] = {}
    for r in top_rows:
        by_ad.setdefault(r["ad_id"], []).append(tuple(r["picks"]))
    top1_patterns = [v[0] for v in by_ad.values()]
    per_slot_distinct = {s: float(np.mean([len({c[i] for c in v}) for v in by_ad.values()]))
                         for i, s in enumerate(policy.problem.slots)}
    return {
        "distinct_combos_in_samples_per_ad": float(np.mean([len(set(map(tuple, g))) for g in grouped])),
        "samples_per_ad": samples_per_ad,
        "mean_slot_entropy": float(sampled.entropy.sum(1).mean() / max(len(policy.problem.slots), 1)),
        "distinct_combos_in_top_k_per_ad": float(np.mean([len(set(v)) for v in by_ad.values()])),
        "distinct_elements_in_top_k_per_slot": per_slot_distinct,
        # the same candidate positions picked for every ad would mean the context is ignored
        "distinct_top1_position_patterns_share": len(set(top1_patterns)) / max(len(top1_patterns), 1),
    }
