"""GenCO's multi-instance attribution reward model: combination clicks -> element rewards.

A served combination is a bag of element instances, one per slot (title, image,
highlight). Each instance k is embedded from what the curated logs give:

    h_k = E_element[(ad, slot, element_id)] + E_slot[slot] + E_hash[hash(slot, element_id)]

(the hashed id is the content feature: it is all the curated tables carry about an
element, and it is what scores an element the model never saw). A linear reward head
scores each instance, r_k = u^T h_k, and gated attention (Ilse et al. 2018)

    a_k = softmax_k( w^T (tanh(V h_k) * sigmoid(U h_k)) )

pools the bag. The click logit of the combination is

    logit = b_0 + b_product + sum_c b_context[c] + sum_k (beta_k + a_k r_k) + gamma_(title, image)

where beta_k is the element's own scalar effect and gamma the (ad's title, image) pair's
own effect. An element's contribution beta_k + a_k r_k (+ half of gamma for the title and
the image: the Shapley split of a two-element effect) to the logit is exact and additive:
that is the per-slot credit the combination generator gets. The per-product bias takes the product's inherent appeal, so
elements are not credited for the product they sell.

Why beta_k outside the attention: at the data sizes of a real feed (a few hundred clicks
per ad) the element effects are all the data can pin down; inside the attention a scalar
effect is scaled by a_k, so a slot the attention down-weights (highlights) has its effects
shrunk to noise by the prior. Outside, the model nests the additive logit model, and the
attention-pooled embeddings (shrunk harder, `l2`) add interactions and content sharing on
top where the data supports them. Measured on the default simulated world this moved the
Spearman vs the true utilities from 0.52 to 0.68 (the additive logit model's ceiling there).

Why gamma: which title goes with which image matters (creatives are judged as a whole), and
the best combination is often not the one of the best elements. With a handful of clicks per
pair only a per-pair scalar under a tight prior (`l2_pair`) is estimable: it moves the
argmax where a pair's data is strong, and shrinks to the additive model where it is not.

Content-aware (issue 18; `token_vocab > 0`, with a `ContentTable` of the element table): what an
element is comes from its content, not its hashed id,

    c_k = ContentEncoder(text or image embedding of k)      (relate_models/content_encoder.py)
    h_k = E_element[(ad, slot, element_id)] + E_slot[slot]   (no hashed id)
    contribution_k = a_k r_k + s_k + beta_k (+ half of gamma),  s_k = v_slot^T c_k

The encoder and the per-slot content head v are shared by every ad (content effects are learned
across ads); beta_k and E_element are the element's residual beyond its content, under their own
Gaussian priors (`l2_residual`, `l2`), so an element's own clicks move it away from what its content
predicts only as far as its evidence carries. The content vector enters through the scalar head only:
added to h_k as well (the attention path) it measured worse (docs/decisions.md, 2026-12-04). An element with no clicks (unknown id, or a held-out
ad) has beta_k = 0 and E_element = 0: its reward is its content's alone (`element_rewards` marks it
`warm` False). `AttributionScorer.with_elements` adds new elements' content to a trained scorer.

Training maximises the binomial likelihood of (impressions, clicks) of every logged
combination, all slots jointly. An element's effect is then identified by how CTR moves
when *it* changes with the rest of the bag held fixed, not by the company the logging
policy kept it in, which is what fools per-element marginal CTR. We use the full-data
likelihood rather than inverse-propensity weights: when the logging policy depends only
on what the model conditions on (the ad, and the context features if given) the
likelihood is already unbiased, and IPW only adds variance.

Artifacts (no pickle): `model.safetensors`, `config.json` (architecture + training
metadata), `vocab.json` (id vocabularies). `AttributionScorer` loads them and serves the
batched `score(ad_ids, combinations)` API.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from plumbing.errors import MissingArtifact
from plumbing.metrics import binomial_nll_logits
from relate_models.content_encoder import CONTENT_FILES, ContentEncoder, ContentTable

SLOTS = ("title", "image", "highlight")
SLOT_COLUMNS = {"title": "title_id", "image": "image_id", "highlight": "highlight_id"}
PAIR_SLOTS = ("title", "image")  # the pair effect gamma couples these two slots (positions 0 and 1)
ELEMENT_COLUMNS = tuple(SLOT_COLUMNS[s] for s in SLOTS)
ARTIFACT_FILES = ("model.safetensors", "config.json", "vocab.json")  # + CONTENT_FILES and tokenizer/ (content models)
TOKENIZER_SUBDIR = "tokenizer"
_KEY_SEP = "\x1f"


class UnknownIdError(ValueError):
    """An ad or element id the model was not trained on (score with on_unknown='fallback')."""


# --------------------------------------------------------------------------- vocabularies


def _element_key(ad_id: str, slot: str, element_id: str) -> str:
    return f"{ad_id}{_KEY_SEP}{slot}{_KEY_SEP}{element_id}"


def _pair_key(ad_id: str, first: str, second: str) -> str:
    return f"{ad_id}{_KEY_SEP}{first}{_KEY_SEP}{second}"


def content_hash(slot: str, element_id: str, buckets: int) -> int:
    """Stable hash bucket in 1..buckets (0 is padding) of an element's content features."""
    digest = hashlib.blake2b(f"{slot}:{element_id}".encode(), digest_size=8).digest()
    return 1 + int.from_bytes(digest, "little") % buckets


@dataclass
class Vocab:
    """Index 0 of every table means unknown/absent; real ids start at 1."""

    ads: list[str]
    ad_product: dict[str, str]
    products: list[str]
    elements: list[tuple[str, str, str]]  # (ad_id, slot, element_id)
    context: dict[str, list[str]] = field(default_factory=dict)
    pairs: list[tuple[str, str, str]] = field(default_factory=list)  # (ad_id, title_id, image_id) logged together

    def __post_init__(self):
        self.ad_index = {a: i + 1 for i, a in enumerate(self.ads)}
        self.product_index = {p: i + 1 for i, p in enumerate(self.products)}
        self.element_index = {_element_key(*e): i + 1 for i, e in enumerate(self.elements)}
        self.context_index = {c: {v: i + 1 for i, v in enumerate(vals)} for c, vals in self.context.items()}
        self.pair_index = {_pair_key(*p): i + 1 for i, p in enumerate(self.pairs)}

    @classmethod
    def from_frame(cls, rows: pd.DataFrame, context_features: Sequence[str] = (), with_pairs: bool = False) -> "Vocab":
        ad_product = (
            rows[["ad_id", "product_id"]].drop_duplicates("ad_id").sort_values("ad_id").set_index("ad_id")["product_id"]
        )
        elements = set()
        for slot in SLOTS:
            pairs = rows[["ad_id", SLOT_COLUMNS[slot]]].dropna().drop_duplicates()
            elements.update((a, slot, e) for a, e in pairs.itertuples(index=False))
        return cls(
            ads=sorted(ad_product.index),
            ad_product={a: str(p) for a, p in ad_product.items()},
            products=sorted({str(p) for p in ad_product.values}),
            elements=sorted(elements, key=lambda e: (e[0], SLOTS.index(e[1]), e[2])),
            context={c: sorted(rows[c].dropna().astype(str).unique()) for c in context_features},
            pairs=sorted(rows[["ad_id", *(SLOT_COLUMNS[s] for s in PAIR_SLOTS)]].dropna().drop_duplicates()
                         .astype(str).itertuples(index=False, name=None)) if with_pairs else [],
        )

    def to_json(self) -> dict:
        return {
            "ads": self.ads,
            "ad_product": self.ad_product,
            "products": self.products,
            "elements": [list(e) for e in self.elements],
            "context": self.context,
            "pairs": [list(p) for p in self.pairs],
        }

    @classmethod
    def from_json(cls, obj: dict) -> "Vocab":
        return cls(
            ads=list(obj["ads"]),
            ad_product=dict(obj["ad_product"]),
            products=list(obj["products"]),
            elements=[tuple(e) for e in obj["elements"]],
            context={c: list(v) for c, v in obj.get("context", {}).items()},
            pairs=[tuple(p) for p in obj.get("pairs", [])],
        )

    def ad_elements(self, ad_id: str) -> dict[str, list[str]]:
        """The trained candidate elements of one ad, per slot."""
        out = {s: [] for s in SLOTS}
        for a, s, e in self.elements:
            if a == ad_id:
                out[s].append(e)
        return out


# --------------------------------------------------------------------------- the model


@dataclass
class ModelConfig:
    n_elements: int
    n_products: int
    context_sizes: dict[str, int] = field(default_factory=dict)
    embed_dim: int = 16
    attention_dim: int = 16
    hash_buckets: int = 1024
    n_slots: int = len(SLOTS)
    n_pairs: int = 0  # (title, image) pairs with their own effect; 0 = none
    token_vocab: int = 0  # the shared tokenizer's vocabulary size: > 0 turns the content encoders on
    content_dim: int = 0  # the element table's image embedding length (content encoders only)


class GatedAttentionMIL(nn.Module):
    """Bag of element instances -> click logit, with exact per-instance contributions."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.element_emb = nn.Embedding(cfg.n_elements + 1, d, padding_idx=0)
        self.hash_emb = nn.Embedding(cfg.hash_buckets + 1, d, padding_idx=0)
        self.slot_emb = nn.Parameter(torch.zeros(cfg.n_slots, d))
        self.attn_v = nn.Linear(d, cfg.attention_dim)
        self.attn_u = nn.Linear(d, cfg.attention_dim)
        self.attn_w = nn.Linear(cfg.attention_dim, 1, bias=False)
        self.reward_head = nn.Linear(d, 1, bias=False)
        self.element_bias = nn.Embedding(cfg.n_elements + 1, 1, padding_idx=0)
        self.pair_bias = nn.Embedding(cfg.n_pairs + 1, 1, padding_idx=0)
        self.product_bias = nn.Embedding(cfg.n_products + 1, 1, padding_idx=0)
        self.context_bias = nn.ModuleDict(
            {c: nn.Embedding(n + 1, 1, padding_idx=0) for c, n in sorted(cfg.context_sizes.items())}
        )
        self.global_bias = nn.Parameter(torch.zeros(()))
        if cfg.token_vocab > 0:  # content encoders shared across ads, and a content reward head per slot
            self.content_encoder = ContentEncoder(cfg.token_vocab, cfg.content_dim, d)
            self.content_head = nn.Parameter(torch.zeros(cfg.n_slots, d))
        # the impression-weighted mean context bias of the training data: added when a
        # caller scores without a context, so p_click is the average over contexts
        self.register_buffer("context_offset", torch.zeros(()))
        for emb in (self.element_emb, self.hash_emb):
            nn.init.normal_(emb.weight, std=0.1)
            with torch.no_grad():
                emb.weight[0].zero_()
        nn.init.normal_(self.slot_emb, std=0.1)
        nn.init.zeros_(self.product_bias.weight)
        nn.init.zeros_(self.element_bias.weight)
        nn.init.zeros_(self.pair_bias.weight)
        for emb in self.context_bias.values():
            nn.init.zeros_(emb.weight)

    def forward(
        self,
        element: torch.Tensor,  # [B, K] element index, 0 = unknown
        hashed: torch.Tensor,  # [B, K] content hash bucket, 0 = absent
        present: torch.Tensor,  # [B, K] bool: the slot holds an element
        product: torch.Tensor,  # [B] product index, 0 = unknown
        context: Mapping[str, torch.Tensor] | None = None,  # feature -> [B] index; None = average context
        pair: torch.Tensor | None = None,  # [B] (title, image) pair index, 0 = unknown/none
        content_index: torch.Tensor | None = None,  # [B, K] content table row, 0 = none (content encoders only)
        content: tuple[torch.Tensor, ...] | None = None,  # the content table's (tokens, image, is_image)
    ) -> dict[str, torch.Tensor]:
        h = self.element_emb(element) + self.hash_emb(hashed) + self.slot_emb.unsqueeze(0)
        content_reward = 0.0
        if content_index is not None:  # content through the per-slot scalar head (module doc)
            vec = self.content_encoder(*content)[content_index]
            content_reward = (vec * self.content_head.unsqueeze(0)).sum(-1)
        gate = self.attn_w(torch.tanh(self.attn_v(h)) * torch.sigmoid(self.attn_u(h))).squeeze(-1)
        attention = torch.softmax(gate.masked_fill(~present, float("-inf")), dim=-1)
        instance_reward = self.reward_head(h).squeeze(-1)
        contribution = attention * instance_reward + self.element_bias(element).squeeze(-1) + content_reward
        if pair is not None:
            # Shapley split: half of the pair's effect to each of its two elements
            half = 0.5 * self.pair_bias(pair)
            contribution = contribution + nn.functional.pad(half.expand(-1, 2), (0, contribution.shape[-1] - 2))
        logit = self.global_bias + self.product_bias(product).squeeze(-1) + contribution.sum(-1)
        if context is None:
            logit = logit + self.context_offset
        else:
            for name, emb in self.context_bias.items():
                logit = logit + emb(context[name]).squeeze(-1)
        return {
            "logit": logit,
            "attention": attention,
            "instance_reward": instance_reward,
            "contribution": contribution,
        }

    def penalties(self) -> dict[str, torch.Tensor]:
        """Squared norms of the per-id parameters (Gaussian priors that shrink rarely-logged ids towards
        the average, or towards what their content predicts): embeddings `emb`, product and context
        biases `bias`, the element residuals `residual`; and of the content encoders' weights `content`."""
        emb = self.element_emb.weight.pow(2).sum() + self.hash_emb.weight.pow(2).sum()
        bias = self.product_bias.weight.pow(2).sum()
        for table in self.context_bias.values():
            bias = bias + table.weight.pow(2).sum()
        content = torch.zeros(())
        if self.cfg.token_vocab > 0:
            content = self.content_encoder.weight_norm() + self.content_head.pow(2).sum()
        return {"emb": emb, "bias": bias, "residual": self.element_bias.weight.pow(2).sum(), "content": content}


# --------------------------------------------------------------------------- encoding


@dataclass
class Batch:
    element: torch.Tensor
    hashed: torch.Tensor
    present: torch.Tensor
    product: torch.Tensor
    context: dict[str, torch.Tensor] | None
    pair: torch.Tensor | None = None
    n_unknown_ads: int = 0
    n_unknown_elements: int = 0
    content_index: torch.Tensor | None = None
    content: tuple[torch.Tensor, ...] | None = None

    def inputs(self) -> dict[str, Any]:
        return {
            "element": self.element,
            "hashed": self.hashed,
            "present": self.present,
            "product": self.product,
            "context": self.context,
            "pair": self.pair,
            "content_index": self.content_index,
            "content": self.content,
        }


def encode(
    rows: pd.DataFrame,
    vocab: Vocab,
    hash_buckets: int,
    context_features: Sequence[str] | None = None,
    on_unknown: str = "error",
    content: ContentTable | None = None,
) -> Batch:
    """Rows with ad_id, title_id, image_id, highlight_id (+ context columns) -> model inputs.

    on_unknown='error' raises UnknownIdError naming the first unknown id; 'fallback' scores
    an unknown element by its content features only (slot + hashed id, or with a `content` table
    its content row) and an unknown ad with no product bias, i.e. as an average product.
    """
    if on_unknown not in ("error", "fallback"):
        raise ValueError(f"on_unknown must be 'error' or 'fallback', got {on_unknown!r}")
    missing = [c for c in ("ad_id", *ELEMENT_COLUMNS) if c not in rows.columns]
    if missing:
        raise ValueError(f"rows lack column(s) {', '.join(missing)}")
    ad_ids = rows["ad_id"].astype(str)
    ad_known = ad_ids.map(vocab.ad_index).notna().to_numpy()
    if on_unknown == "error" and not ad_known.all():
        raise UnknownIdError(f"unknown ad_id {ad_ids[~ad_known].iloc[0]!r}: not in the model's training data")
    product_ids = ad_ids.map(vocab.ad_product)
    product = product_ids.map(vocab.product_index).fillna(0).astype(np.int64).to_numpy()
    elements, hashed, present, n_unknown_elements = _encode_slots(rows, ad_ids, vocab, hash_buckets, on_unknown)
    if len(rows) and not present.any(axis=1).all():
        raise ValueError("a combination has no element in any slot")
    context = None if context_features is None else _encode_context(rows, vocab, context_features)
    # an unseen pair (or one with an absent slot) gets no pair effect: the additive model's score
    first, second = (rows[SLOT_COLUMNS[s]].astype(str) for s in PAIR_SLOTS)
    pair = (ad_ids + _KEY_SEP + first + _KEY_SEP + second).map(vocab.pair_index).fillna(0).astype(np.int64)
    content_index = None
    if content is not None:  # the content rows replace the hashed id as what an element is
        hashed = np.zeros_like(hashed)
        content_index = torch.as_tensor(np.stack(
            [content.lookup(ad_ids, s, rows[SLOT_COLUMNS[s]].fillna("")) * present[:, k]
             for k, s in enumerate(SLOTS)], axis=1))
    return Batch(
        content_index=content_index,
        content=None if content is None else (content.tokens, content.image, content.is_image),
        element=torch.as_tensor(elements),
        pair=torch.as_tensor(pair.to_numpy()),
        hashed=torch.as_tensor(hashed),
        present=torch.as_tensor(present),
        product=torch.as_tensor(product),
        context=context,
        n_unknown_ads=int((~ad_known).sum()),
        n_unknown_elements=n_unknown_elements,
    )


def _encode_slots(rows: pd.DataFrame, ad_ids: pd.Series, vocab: Vocab, hash_buckets: int,
                  on_unknown: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Per slot: element index (0 = unknown), content hash bucket and presence, as [n, slots]
    arrays, plus the count of unknown elements."""
    elements, hashed, present = [], [], []
    n_unknown_elements = 0
    for slot in SLOTS:
        values = rows[SLOT_COLUMNS[slot]]
        has = values.notna().to_numpy()
        as_str = values.where(~has, values.astype(str))
        index = (ad_ids + _KEY_SEP + slot + _KEY_SEP + as_str.fillna("")).map(vocab.element_index)
        unknown = has & index.isna().to_numpy()
        if on_unknown == "error" and unknown.any():
            i = int(np.flatnonzero(unknown)[0])
            raise UnknownIdError(
                f"unknown {slot} element {values.iloc[i]!r} for ad_id {ad_ids.iloc[i]!r}: not in the model's training data"
            )
        n_unknown_elements += int(unknown.sum())
        elements.append(index.fillna(0).astype(np.int64).to_numpy())
        buckets = {v: content_hash(slot, v, hash_buckets) for v in as_str.dropna().unique()}
        hashed.append(as_str.map(buckets).fillna(0).astype(np.int64).to_numpy())
        present.append(has)
    return np.stack(elements, axis=1), np.stack(hashed, axis=1), np.stack(present, axis=1), n_unknown_elements


def _encode_context(rows: pd.DataFrame, vocab: Vocab, context_features: Sequence[str]) -> dict[str, torch.Tensor]:
    """Context column -> vocabulary index (0 = unseen value)."""
    context = {}
    for c in context_features:
        if c not in rows.columns:
            raise ValueError(f"rows lack context column {c!r}")
        context[c] = torch.as_tensor(
            rows[c].astype(str).map(vocab.context_index[c]).fillna(0).astype(np.int64).to_numpy()
        )
    return context


# --------------------------------------------------------------------------- training


@dataclass
class FitSettings:
    steps: int = 400
    learning_rate: float = 0.05
    l2: float = 100.0  # prior precision on per-id embeddings, in units of one impression
    l2_bias: float = 1.0  # prior precision on per-id scalar effects (element, product, context)
    l2_pair: float | None = None  # prior precision on (title, image) pair effects, sd 1/sqrt(2 l2_pair); None: off
    l2_residual: float | None = None  # prior precision on element residuals; None: l2_bias
    l2_content: float | None = None  # prior precision on the content encoders' weights (content models)
    seed: int = 0
    log_every: int = 50


def aggregate(rows: pd.DataFrame, context_features: Sequence[str] = ()) -> pd.DataFrame:
    """Sum impressions/clicks per (ad, combination, context): the likelihood is the same, the data smaller."""
    keys = ["ad_id", "product_id", *ELEMENT_COLUMNS, *context_features]
    return (
        rows.groupby(keys, dropna=False, sort=True)[["impressions", "clicks"]]
        .sum()
        .reset_index()
    )


def fit(
    train: pd.DataFrame,
    settings: FitSettings,
    model_cfg: dict[str, Any] | None = None,
    context_features: Sequence[str] = (),
    holdout: pd.DataFrame | None = None,
    log: logging.Logger | None = None,
    init: "AttributionScorer | None" = None,
    content: ContentTable | None = None,
    tokenizer=None,
) -> tuple["AttributionScorer", list[dict]]:
    """Train on aggregated (impressions, clicks) rows; return the scorer and the training curve.

    `init` (a warm start): training continues from a copy of its model with its vocabularies (every
    ad and element of `train` must be in them: UnknownIdError otherwise); the optimizer starts afresh.
    `content` (with the `tokenizer` that made its text rows): the content-aware model, whose element
    representations come from the content encoders (model_cfg must set token_vocab and content_dim)."""
    log = log or logging.getLogger(__name__)
    context_features = list(context_features)
    train = aggregate(train, context_features)
    if train["impressions"].sum() <= 0:
        raise ValueError("training window has no impressions")
    if train["clicks"].sum() <= 0:
        raise ValueError("training window has no clicks: nothing to attribute")
    torch.manual_seed(settings.seed)
    clicks, impressions = _counts(train)
    n_imp = float(impressions.sum())
    vocab, model = _start_model(train, settings, model_cfg, context_features, clicks, init)
    cfg = model.cfg
    ctx = context_features if context_features else None
    if (content is None) != (cfg.token_vocab == 0):
        raise ValueError("fit: a content table goes with a content model (model_cfg token_vocab > 0), and only with one")
    batch = encode(train, vocab, cfg.hash_buckets, ctx, content=content)
    hold = None
    if holdout is not None and len(holdout):
        hold_rows = aggregate(holdout, context_features)
        hold = (encode(hold_rows, vocab, cfg.hash_buckets, ctx, on_unknown="fallback", content=content),
                *_counts(hold_rows))
    log.info(
        "training MIL attribution: %d rows, %d impressions, %d clicks, %d ads, %d elements",
        len(train), int(n_imp), int(clicks.sum()), len(vocab.ads), len(vocab.elements),
    )
    history = _train_full_batch(model, batch, clicks, impressions, hold, settings, log)
    if context_features:
        # the impression-weighted mean context effect: what a context-free score assumes
        with torch.no_grad():
            offset = sum(model.context_bias[c](batch.context[c]).squeeze(-1) for c in context_features)
            model.context_offset.fill_(float((offset * impressions).sum() / n_imp))
    meta = {"context_features": context_features, "train_rows": len(train), "train_impressions": int(n_imp),
            "train_clicks": int(clicks.sum()), "fit": dataclasses.asdict(settings)}
    return AttributionScorer(model.eval(), vocab, meta, content, tokenizer), history


def _start_model(train: pd.DataFrame, settings: FitSettings, model_cfg: dict[str, Any] | None,
                 context_features: list[str], clicks: torch.Tensor, init: "AttributionScorer | None"
                 ) -> tuple[Vocab, GatedAttentionMIL]:
    """(vocabularies, model) training starts from: a copy of `init`'s, or new ones built on `train`."""
    if init is not None:
        wanted = {**dataclasses.asdict(init.model.cfg), **(model_cfg or {})}
        if wanted != dataclasses.asdict(init.model.cfg) or init.context_features != context_features:
            raise ValueError("fit: the initial model differs from model_cfg or context_features")
        if (settings.l2_pair is None) != (init.meta.get("fit", {}).get("l2_pair") is None):
            raise ValueError("fit: l2_pair turns pair effects on or off, unlike the initial model")
        return init.vocab, copy.deepcopy(init.model)
    vocab = Vocab.from_frame(train, context_features, with_pairs=settings.l2_pair is not None)
    cfg = ModelConfig(
        n_elements=len(vocab.elements),
        n_products=len(vocab.products),
        n_pairs=len(vocab.pairs),
        context_sizes={c: len(v) for c, v in vocab.context.items()},
        **(model_cfg or {}),
    )
    model = GatedAttentionMIL(cfg)
    with torch.no_grad():
        ctr = float(clicks.sum()) / float(train["impressions"].sum())
        model.global_bias.fill_(math.log(ctr / (1 - ctr)) if 0 < ctr < 1 else 0.0)
    return vocab, model


def _counts(rows: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
    """(clicks, impressions) of aggregated rows as float32 tensors."""
    clicks = torch.as_tensor(rows["clicks"].to_numpy(np.float64), dtype=torch.float32)
    impressions = torch.as_tensor(rows["impressions"].to_numpy(np.float64), dtype=torch.float32)
    return clicks, impressions


def _train_full_batch(model: GatedAttentionMIL, batch: Batch, clicks: torch.Tensor, impressions: torch.Tensor,
                      hold: tuple[Batch, torch.Tensor, torch.Tensor] | None, settings: FitSettings,
                      log: logging.Logger) -> list[dict]:
    """Adam on the penalised binomial NLL per impression; return the logged curve."""
    n_imp = float(impressions.sum())
    # full batch: aggregated rows are bounded by ads x combinations x contexts, small enough
    # for one pass per step, and a full-batch run is deterministic for a given seed
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    # cosine decay: full-batch Adam at a fixed rate keeps jittering around the optimum
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=settings.steps, eta_min=settings.learning_rate * 0.01
    )
    history = []
    for step in range(1, settings.steps + 1):
        optimizer.zero_grad()
        nll = binomial_nll_logits(model(**batch.inputs())["logit"], clicks, impressions) / n_imp
        sq = model.penalties()
        l2_residual = settings.l2_bias if settings.l2_residual is None else settings.l2_residual
        penalty = (settings.l2 * sq["emb"] + settings.l2_bias * sq["bias"] + l2_residual * sq["residual"]
                   + (settings.l2_content or 0.0) * sq["content"]) / n_imp
        if settings.l2_pair is not None:
            penalty = penalty + settings.l2_pair * model.pair_bias.weight.pow(2).sum() / n_imp
        (nll + penalty).backward()
        optimizer.step()
        schedule.step()
        if step % settings.log_every == 0 or step == 1 or step == settings.steps:
            point = {"step": step, "train_nll": float(nll.detach()), "penalty": float(penalty.detach())}
            if hold is not None:
                with torch.no_grad():
                    hold_logit = model(**hold[0].inputs())["logit"]
                    point["holdout_nll"] = float(binomial_nll_logits(hold_logit, hold[1], hold[2]) / hold[2].sum())
            history.append(point)
            shown = " ".join(f"{k}={v:.5f}" for k, v in point.items() if k != "step")
            log.info("step %d/%d %s", step, settings.steps, shown)
    return history


# --------------------------------------------------------------------------- scoring API


@dataclass
class ScoreResult:
    p_click: np.ndarray  # [n]
    logit: np.ndarray  # [n]
    contribution: np.ndarray  # [n, len(SLOTS)] each element's additive share of the logit; 0 if absent
    attention: np.ndarray  # [n, len(SLOTS)] gated-attention weights, summing to 1 per combination
    unknown_ads: int = 0  # rows scored with the fallback (on_unknown='fallback' only)
    unknown_elements: int = 0


class AttributionScorer:
    """The trained model plus its vocabularies: the reward the combination generator calls."""

    def __init__(self, model: GatedAttentionMIL, vocab: Vocab, meta: dict | None = None,
                 content: ContentTable | None = None, tokenizer=None):
        self.model, self.vocab, self.meta = model, vocab, dict(meta or {})
        self.content, self.tokenizer = content, tokenizer

    def cold_slots(self, rows: pd.DataFrame) -> np.ndarray:
        """[n, len(SLOTS)] bool: the row's element in that slot is present but has no clicks in training."""
        ad_ids = rows["ad_id"].astype(str)
        return np.stack([(rows[SLOT_COLUMNS[s]].notna() & ~(ad_ids + _KEY_SEP + s + _KEY_SEP + rows[SLOT_COLUMNS[s]]
                                                            .astype(str)).isin(self.vocab.element_index)).to_numpy()
                         for s in SLOTS], axis=1)

    def with_elements(self, elements: pd.DataFrame) -> "AttributionScorer":
        """This scorer with `elements` (element-table rows) added to its content table: an element it
        never saw clicks for is then scored from its content alone (the rows it has keep theirs)."""
        if self.content is None:
            raise ValueError("with_elements: a content-free model has no content table")
        table = ContentTable.build(elements, self.tokenizer, int(self.content.tokens.shape[1]),
                                   self.content.embedding_dim)
        return AttributionScorer(self.model, self.vocab, self.meta, self.content.merged(table), self.tokenizer)

    @property
    def context_features(self) -> list[str]:
        return list(self.meta.get("context_features", []))

    def score_frame(self, rows: pd.DataFrame, on_unknown: str = "error", use_context: bool = False) -> ScoreResult:
        """Score rows with ad_id and title_id/image_id/highlight_id columns (+ context if use_context)."""
        ctx = self.context_features if use_context else None
        batch = encode(rows, self.vocab, self.model.cfg.hash_buckets, ctx, on_unknown=on_unknown, content=self.content)
        with torch.no_grad():
            out = self.model(**batch.inputs())
        return ScoreResult(
            p_click=torch.sigmoid(out["logit"]).double().numpy(),
            logit=out["logit"].double().numpy(),
            contribution=out["contribution"].double().numpy(),
            attention=out["attention"].double().numpy(),
            unknown_ads=batch.n_unknown_ads,
            unknown_elements=batch.n_unknown_elements,
        )

    def score(
        self,
        ad_ids: Sequence[str] | str,
        combinations: Sequence[Mapping[str, str | None]] | Mapping[str, str | None],
        on_unknown: str = "error",
    ) -> ScoreResult:
        """p_click of each (ad_id, combination), averaged over contexts, with per-slot credit.

        A combination maps slot ('title', 'image', 'highlight'; or the *_id column names) to
        an element id; a missing slot is absent from the bag. One ad_id is broadcast over all
        combinations. Unknown ids raise UnknownIdError unless on_unknown='fallback'
        (see `encode`).
        """
        if isinstance(combinations, Mapping):
            combinations = [combinations]
        if isinstance(ad_ids, str):
            ad_ids = [ad_ids] * len(combinations)
        if len(ad_ids) != len(combinations):
            raise ValueError(f"{len(ad_ids)} ad_ids for {len(combinations)} combinations")
        records = []
        for ad_id, combo in zip(ad_ids, combinations):
            record = {"ad_id": ad_id}
            for slot in SLOTS:
                record[SLOT_COLUMNS[slot]] = combo.get(slot, combo.get(SLOT_COLUMNS[slot]))
            unknown_slots = set(combo) - set(SLOTS) - set(ELEMENT_COLUMNS)
            if unknown_slots:
                raise ValueError(f"unknown slot(s) {sorted(unknown_slots)}; slots are {SLOTS}")
            records.append(record)
        return self.score_frame(pd.DataFrame.from_records(records, columns=["ad_id", *ELEMENT_COLUMNS]), on_unknown)

    def element_rewards(self, max_combinations_per_ad: int = 4096, seed: int = 0) -> pd.DataFrame:
        """Per ad and element: its mean contribution to the logit over the ad's combination space.

        The reward of element e of an ad is the mean of its contribution beta_e + a_e r_e (+ its content
        reward) over all combinations of the ad's candidate elements that contain e (the other slots
        uniform, not as logged: the logging policy's preferences do not leak into it). The candidates are
        the elements trained on, and with a content table also those it holds content for: an element
        with no clicks (`warm` False) is scored from its content alone. Ads with more combinations than
        `max_combinations_per_ad` use a seeded uniform sample of them.
        """
        rng = np.random.default_rng(seed)
        ads = sorted(set(self.vocab.ads) | ({k[0] for k in self.content.keys} if self.content is not None else set()))
        frames = []
        for ad_id in ads:
            per_slot = [c or [None] for c in self._candidates(ad_id)]
            n_combos = math.prod(len(c) for c in per_slot)
            if n_combos <= max_combinations_per_ad:
                combos = list(itertools.product(*per_slot))
            else:
                combos = [tuple(c[rng.integers(len(c))] for c in per_slot) for _ in range(max_combinations_per_ad)]
            grid = pd.DataFrame(combos, columns=list(ELEMENT_COLUMNS))
            grid.insert(0, "ad_id", ad_id)
            frames += self._reward_stats(ad_id, grid, self.score_frame(grid, on_unknown="fallback"))
        table = pd.concat(frames, ignore_index=True)
        table["attention_std"] = table["attention_std"].fillna(0.0)
        keys = [_element_key(a, s, e) for a, s, e in table[["ad_id", "slot", "element_id"]].itertuples(index=False)]
        table["warm"] = [k in self.vocab.element_index for k in keys]
        return self._bag_free_parts(table, keys)

    def _candidates(self, ad_id: str) -> list[list[str]]:
        """The ad's candidate elements per slot: trained on, or with content."""
        trained = self.vocab.ad_elements(ad_id)
        with_content = self.content.ad_elements(ad_id) if self.content is not None else {}
        return [sorted(set(trained[s]) | set(with_content.get(s, []))) for s in SLOTS]

    @staticmethod
    def _reward_stats(ad_id: str, grid: pd.DataFrame, result: "ScoreResult") -> list[pd.DataFrame]:
        frames = []
        for k, slot in enumerate(SLOTS):
            part = pd.DataFrame({"element_id": grid[SLOT_COLUMNS[slot]], "reward": result.contribution[:, k],
                                 "attention": result.attention[:, k], "p_click": result.p_click,
                                 }).dropna(subset=["element_id"])
            stats = part.groupby("element_id", sort=True).agg(
                reward=("reward", "mean"), attention_mean=("attention", "mean"), attention_std=("attention", "std"),
                attention_min=("attention", "min"), attention_max=("attention", "max"),
                mean_p_click=("p_click", "mean"), combinations=("reward", "size"),
            ).reset_index()
            stats.insert(0, "slot", slot)
            stats.insert(0, "ad_id", ad_id)
            frames.append(stats)
        return frames

    def _bag_free_parts(self, table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
        """Add the parts of the contribution that do not depend on the bag: r_e, beta_e and (content models)
        the content reward."""
        elem_idx = torch.as_tensor([self.vocab.element_index.get(k, 0) for k in keys])
        slot_idx = torch.as_tensor([SLOTS.index(s) for s in table["slot"]])
        model = self.model
        with torch.no_grad():
            h = model.element_emb(elem_idx) + model.slot_emb[slot_idx]
            if self.content is None:
                h = h + model.hash_emb(torch.as_tensor([content_hash(s, e, model.cfg.hash_buckets) for s, e in
                                                        table[["slot", "element_id"]].itertuples(index=False)]))
            else:
                rows = torch.as_tensor([self.content.index.get(k, 0) for k in keys])
                vec = model.content_encoder(self.content.tokens, self.content.image, self.content.is_image)[rows]
                table["content_reward"] = (vec * model.content_head[slot_idx]).sum(-1).double().numpy()
            table["instance_reward"] = model.reward_head(h).squeeze(-1).double().numpy()
            table["element_bias"] = model.element_bias(elem_idx).squeeze(-1).double().numpy()
        return table

    # ----------------------------------------------------------------------- persistence

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, directory / "model.safetensors")
        config = {"model": dataclasses.asdict(self.model.cfg), "slots": list(SLOTS), **self.meta}
        (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (directory / "vocab.json").write_text(json.dumps(self.vocab.to_json(), sort_keys=True) + "\n")
        if self.content is not None:  # the content table and the tokenizer of its text rows
            self.content.save(directory)
            self.tokenizer.save_pretrained(str(directory / TOKENIZER_SUBDIR))

    @classmethod
    def load(cls, directory: str | Path) -> "AttributionScorer":
        directory = Path(directory)
        missing = [name for name in ARTIFACT_FILES if not (directory / name).is_file()]
        if missing:
            raise MissingArtifact(
                f"attribution model artifact incomplete in {directory}: missing {', '.join(missing)} "
                "(run pipelines.train_attribution first)"
            )
        config = json.loads((directory / "config.json").read_text())
        if tuple(config.get("slots", ())) != SLOTS:
            raise ValueError(f"{directory}/config.json: slots {config.get('slots')} do not match {SLOTS}")
        model = GatedAttentionMIL(ModelConfig(**config.pop("model")))
        config.pop("slots")
        model.load_state_dict(load_file(directory / "model.safetensors"))
        vocab = Vocab.from_json(json.loads((directory / "vocab.json").read_text()))
        if model.cfg.token_vocab == 0:
            return cls(model.eval(), vocab, config)
        missing = [name for name in CONTENT_FILES if not (directory / name).is_file()]
        if missing or not (directory / TOKENIZER_SUBDIR / "tokenizer.json").is_file():
            raise MissingArtifact(f"content attribution model in {directory} lacks its content table or tokenizer "
                                  f"({', '.join(missing) or TOKENIZER_SUBDIR})")
        from relate_models.tokenizer import load_tokenizer

        return cls(model.eval(), vocab, config, ContentTable.load(directory), load_tokenizer(directory / TOKENIZER_SUBDIR))


# --------------------------------------------------------------------------- baselines and metrics


def naive_marginal_ctr(rows: pd.DataFrame) -> pd.DataFrame:
    """Per ad, slot and element: clicks / impressions of every logged combination containing it."""
    frames = []
    for slot in SLOTS:
        col = SLOT_COLUMNS[slot]
        g = rows.dropna(subset=[col]).groupby(["ad_id", col], sort=True)[["impressions", "clicks"]].sum().reset_index()
        g = g.rename(columns={col: "element_id"})
        g.insert(1, "slot", slot)
        frames.append(g)
    out = pd.concat(frames, ignore_index=True)
    out["naive_ctr"] = out["clicks"] / out["impressions"].where(out["impressions"] > 0)
    return out
