"""The CTCVR reward model: ESMM over the entire impression space, in one file.

    text -> token ids + hashed bigrams -> mean embedding bags --+
    keyword, vertical, user_segment, position -> embeddings  --+--> pCTR tower -> pCTR
    keyword-in-text, query overlap, length, tokens (dense)   --+--> pCVR tower -> pCVR
    + per-id offsets (e.g. ad_id) and an earlier-exposures offset, added to both logits
    + wide (linear) parts per tower; the pCTR one optionally per (user segment, token)
                                                                    pCTCVR = pCTR * pCVR

The id offsets carry what the text cannot (an ad's product appeal); they are additive, so
the ranking of texts within one context never depends on them, and training drops them for
a share of rows so an absent id (the GRPO reward knows no ad) scores as an average ad. The
exposure offset (earlier showings of the same text to the same user: fatigue) defaults to 0
exposures, i.e. a fresh user, when a context does not give `prior_exposures`.

Optionally (`feed_conversions`) clicked feed impressions train the conversion effects both
placements share: a feed conversion head adds the pCVR side's ad offset and wide
vertical/segment weights to its own feed-only terms (e.g. per highlight), so those shared
effects learn from the feed's conversions too. The head is used in training only.

Both towers share the embeddings. ESMM trains on every impression:
    loss = BCE(clicked, pCTR) + BCE(clicked AND converted, pCTR * pCVR)
so pCVR is learned without the sample-selection bias of training on clicks only.
`CTCVRScorer` is the batched scoring API the GRPO reward uses.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.optim.swa_utils import AveragedModel

from plumbing.errors import MissingArtifact
from plumbing.metrics import auc
from relate_models.tokenizer import load_tokenizer, save_tokenizer

CONTEXT_FIELDS = ("keyword", "vertical", "user_segment")  # categorical; id 0 = unknown
FEED_SHARED = ("vertical", "user_segment")  # context fields feed impressions have too (no keyword)
EXPOSURES = "prior_exposures"  # context key: earlier impressions of this text to this user
N_DENSE = 4  # keyword_in_text, query_overlap, n_chars / char_scale, n_tokens / max_tokens
_WORD = re.compile(r"[a-z0-9]+")
_BIGRAM_MUL = 1_000_003  # prime; (a * mul + b) mod buckets spreads id pairs over buckets


@dataclass
class CTCVRConfig:
    """Everything needed to rebuild the model and its feature encoding (saved as JSON)."""

    vocab_size: int
    vocabs: dict[str, list[str]] = field(default_factory=dict)  # field -> known values (id = index + 1)
    max_tokens: int = 48
    bigram_buckets: int = 50_000
    max_position: int = 10
    char_scale: float = 100.0
    normalize_case: bool = True
    embed_dim: int = 32
    context_dim: int = 16
    hidden_dim: int = 64
    dropout: float = 0.1
    wide: bool = True  # add a linear (wide) part per tower: additive effects learn from few conversions
    id_fields: list[str] = field(default_factory=list)  # context keys with a learned (ctr, cvr) offset per value
    max_exposures: int = 0  # earlier-exposure counts above this share one offset; 0 = no exposure feature
    segment_token_cross: bool = False  # pCTR wide part: one weight per (user segment, token) pair
    feed_conversions: bool = False  # a training-only feed conversion head shares the CVR side's additive effects
    feed_fields: list[str] = field(default_factory=list)  # feed-only keys with a conversion offset (highlight_id)
    bos_id: int = 1
    eos_id: int = 2

    def n_ids(self, name: str) -> int:
        return len(self.vocabs.get(name, [])) + 1

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "CTCVRConfig":
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"CTCVR config: unknown key(s) {', '.join(unknown)}")
        return cls(**data)


# ---------------------------------------------------------------------------- features
class FeatureEncoder:
    """Turns (texts, contexts) into the model's tensors; unknown context values map to id 0."""

    def __init__(self, config: CTCVRConfig, tokenizer):
        self.config = config
        self.tokenizer = tokenizer
        self.backend = tokenizer.backend_tokenizer
        self.index = {name: {v: i + 1 for i, v in enumerate(config.vocabs.get(name, []))}
                      for name in (*CONTEXT_FIELDS, *config.id_fields, *config.feed_fields)}

    def encode_texts(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Per-text tensors: tokens (N, L), bigrams (N, L + 1), n_chars (N,), n_tokens (N,)."""
        cfg = self.config
        texts = ["" if t is None else str(t) for t in texts]
        if cfg.normalize_case:
            # " free" at the start and mid-text should be one feature: lowercase and lead with a space
            normalized = [" " + t.lower() for t in texts]
        else:
            normalized = texts
        encodings = self.backend.encode_batch(normalized, add_special_tokens=False) if texts else []
        n = len(texts)
        length = cfg.max_tokens
        tokens = np.zeros((n, length), dtype=np.int64)
        # bigrams over <bos> t1 .. tk <eos>, so opening and closing words get their own features
        framed = np.zeros((n, length + 2), dtype=np.int64)
        n_tokens = np.zeros(n, dtype=np.float32)
        for i, enc in enumerate(encodings):
            ids = enc.ids[:length]
            k = len(ids)
            tokens[i, :k] = ids
            framed[i, 0] = cfg.bos_id
            framed[i, 1 : k + 1] = ids
            framed[i, k + 1] = cfg.eos_id
            n_tokens[i] = k
        left, right = framed[:, :-1], framed[:, 1:]
        bigrams = (left * _BIGRAM_MUL + right) % cfg.bigram_buckets + 1
        bigrams[right == 0] = 0  # past <eos>: padding
        n_chars = np.array([len(t) for t in texts], dtype=np.float32)
        return {
            "tokens": torch.from_numpy(tokens),
            "bigrams": torch.from_numpy(bigrams),
            "n_chars": torch.from_numpy(n_chars),
            "n_tokens": torch.from_numpy(n_tokens),
        }

    def context_ids(self, name: str, values: Sequence) -> torch.Tensor:
        index = self.index[name]
        return torch.tensor([index.get(v, 0) if isinstance(v, str) else 0 for v in values], dtype=torch.long)

    def position_ids(self, values: Sequence) -> torch.Tensor:
        out = np.zeros(len(values), dtype=np.int64)
        for i, v in enumerate(values):
            try:
                p = int(v)
            except (TypeError, ValueError):
                continue  # missing or garbage position -> unknown (0)
            if p >= 1:
                out[i] = min(p, self.config.max_position)
        return torch.from_numpy(out)

    def exposure_ids(self, values: Sequence) -> torch.Tensor:
        """Earlier exposures clipped to max_exposures; missing or garbage -> 0 (a fresh user)."""
        out = np.zeros(len(values), dtype=np.int64)
        for i, v in enumerate(values):
            try:
                out[i] = min(max(int(v), 0), self.config.max_exposures)
            except (TypeError, ValueError):
                continue
        return torch.from_numpy(out)

    @staticmethod
    def relevance(texts: Sequence[str], keywords: Sequence, queries: Sequence) -> torch.Tensor:
        """(N, 2): keyword present in the text; share of the query's words in the text.

        Without a query (the GRPO reward scores texts for a keyword) the keyword stands in for it.
        """
        out = np.zeros((len(texts), 2), dtype=np.float32)
        for i, (text, keyword, query) in enumerate(zip(texts, keywords, queries)):
            text = str(text).lower()
            keyword = keyword.lower() if isinstance(keyword, str) else ""
            query = query.lower() if isinstance(query, str) and query.strip() else keyword
            out[i, 0] = float(bool(keyword.strip()) and keyword in text)
            query_words = set(_WORD.findall(query))
            if query_words:
                out[i, 1] = len(query_words & set(_WORD.findall(text))) / len(query_words)
        return torch.from_numpy(out)

    def dense(self, relevance: torch.Tensor, n_chars: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [relevance, (n_chars / self.config.char_scale)[:, None], (n_tokens / self.config.max_tokens)[:, None]], dim=1
        )

    def encode(self, texts: Sequence[str], contexts: Sequence[dict]) -> dict[str, torch.Tensor]:
        """Model inputs for aligned texts and contexts {keyword, vertical, position, user_segment[, query]}.

        Missing keys and unseen values map to "unknown"."""
        if len(texts) != len(contexts):
            raise ValueError(f"score: {len(texts)} texts but {len(contexts)} contexts")
        contexts = [c if isinstance(c, dict) else {} for c in contexts]
        text = self.encode_texts(texts)
        keywords = [c.get("keyword") for c in contexts]
        batch = {
            "tokens": text["tokens"],
            "bigrams": text["bigrams"],
            "position": self.position_ids([c.get("position") for c in contexts]),
            "dense": self.dense(
                self.relevance(texts, keywords, [c.get("query") for c in contexts]), text["n_chars"], text["n_tokens"]
            ),
        }
        for name in (*CONTEXT_FIELDS, *self.config.id_fields):
            batch[name] = self.context_ids(name, [c.get(name) for c in contexts])
        batch["exposures"] = self.exposure_ids([c.get(EXPOSURES) for c in contexts])
        return batch


def prior_exposures(users: Sequence, items: Sequence, ts: Sequence) -> np.ndarray:
    """Per row: earlier rows with the same (user, item), in time order (ties: input order)."""
    frame = pd.DataFrame({"user": users, "item": items, "ts": ts})
    order = np.lexsort((np.arange(len(frame)), frame["ts"].to_numpy()))
    counts = np.empty(len(frame), dtype=np.int64)
    counts[order] = frame.iloc[order].groupby(["user", "item"], sort=False, dropna=False).cumcount().to_numpy()
    return counts


# ------------------------------------------------------------------------------- model
def _tower(in_dim: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, hidden // 2),
        nn.ReLU(),
        nn.Linear(hidden // 2, 1),
    )


def _bag(bag: nn.EmbeddingBag, ids: torch.Tensor) -> torch.Tensor:
    """Mean of the non-padding (id 0) embeddings per row; an all-padding row gives zeros.

    Flat ids + offsets: much faster on CPU than a padded 2-D input with padding_idx.
    """
    keep = ids != 0
    lengths = keep.sum(dim=1)
    offsets = torch.zeros_like(lengths)
    offsets[1:] = lengths.cumsum(0)[:-1]
    return bag(ids[keep], offsets)


class _Wide(nn.Module):
    """One weight per token, bigram, context value and dense feature, summed into a logit;
    with `segment_token`, also per (user segment, token): segments differ in which benefits they click."""

    def __init__(self, c: CTCVRConfig, segment_token: bool = False):
        super().__init__()
        self.vocab_size = c.vocab_size
        self.segment_token = nn.EmbeddingBag(c.n_ids("user_segment") * c.vocab_size, 1, mode="mean") if segment_token else None
        self.token = nn.EmbeddingBag(c.vocab_size, 1, mode="mean")
        self.bigram = nn.EmbeddingBag(c.bigram_buckets + 1, 1, mode="mean")
        self.context = nn.ModuleDict({name: nn.Embedding(c.n_ids(name), 1) for name in CONTEXT_FIELDS})
        self.position = nn.Embedding(c.max_position + 1, 1)
        self.dense = nn.Linear(N_DENSE, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = _bag(self.token, batch["tokens"]) + _bag(self.bigram, batch["bigrams"])
        out = out + self.position(batch["position"]) + self.dense(batch["dense"])
        if self.segment_token is not None:
            tokens = batch["tokens"]
            pairs = torch.where(tokens != 0, batch["user_segment"][:, None] * self.vocab_size + tokens, 0)
            out = out + _bag(self.segment_token, pairs)
        for name in CONTEXT_FIELDS:
            out = out + self.context[name](batch[name])
        return out.squeeze(1)


class CTCVRModel(nn.Module):
    """Shared embeddings, a pCTR tower and a pCVR tower; forward returns the two logits."""

    def __init__(self, config: CTCVRConfig):
        super().__init__()
        self.config = c = config
        # mean bags skip padding (id 0, see _bag), so text length does not dilute the text signal
        self.token_bag = nn.EmbeddingBag(c.vocab_size, c.embed_dim, mode="mean")
        self.bigram_bag = nn.EmbeddingBag(c.bigram_buckets + 1, c.embed_dim, mode="mean")
        self.context = nn.ModuleDict({name: nn.Embedding(c.n_ids(name), c.context_dim) for name in CONTEXT_FIELDS})
        self.position = nn.Embedding(c.max_position + 1, c.context_dim)
        in_dim = 2 * c.embed_dim + (len(CONTEXT_FIELDS) + 1) * c.context_dim + N_DENSE
        self.ctr_tower = _tower(in_dim, c.hidden_dim, c.dropout)
        self.cvr_tower = _tower(in_dim, c.hidden_dim, c.dropout)
        if c.wide:
            self.ctr_wide, self.cvr_wide = _Wide(c, segment_token=c.segment_token_cross), _Wide(c)
        # (ctr, cvr) logit offsets; zero at the start so an unseen id or exposure count changes nothing
        self.id_offset = nn.ModuleDict({name: nn.Embedding(c.n_ids(name), 2) for name in c.id_fields})
        self.exposure_offset = nn.Embedding(c.max_exposures + 1, 2)
        if c.feed_conversions:
            self.feed_cvr_bias = nn.Parameter(torch.zeros(1))
            self.feed_cvr_offset = nn.ModuleDict({name: nn.Embedding(c.n_ids(name), 1) for name in c.feed_fields})
        self.apply(self._init)
        for emb in (*self.id_offset.values(), self.exposure_offset, *getattr(self, "feed_cvr_offset", {}).values()):
            nn.init.zeros_(emb.weight)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            nn.init.normal_(module.weight, std=0.05)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [_bag(self.token_bag, batch["tokens"]), _bag(self.bigram_bag, batch["bigrams"])]
        parts += [self.context[name](batch[name]) for name in CONTEXT_FIELDS]
        parts += [self.position(batch["position"]), batch["dense"]]
        shared = torch.cat(parts, dim=1)
        ctr_logit, cvr_logit = self.ctr_tower(shared).squeeze(1), self.cvr_tower(shared).squeeze(1)
        if self.config.wide:
            ctr_logit, cvr_logit = ctr_logit + self.ctr_wide(batch), cvr_logit + self.cvr_wide(batch)
        offset = self.exposure_offset(batch["exposures"])
        for name, emb in self.id_offset.items():
            offset = offset + emb(batch[name])
        return ctr_logit + offset[:, 0], cvr_logit + offset[:, 1]

    def feed_cvr_logit(self, ids: dict[str, torch.Tensor]) -> torch.Tensor:
        """Conversion logit of clicked feed impressions: the search CVR side's additive (ad, wide
        vertical and segment) effects plus feed-only offsets; no text, so no towers."""
        out = self.feed_cvr_bias + sum(self.cvr_wide.context[name](ids[name]).squeeze(1) for name in FEED_SHARED)
        for name, emb in self.id_offset.items():
            out = out + emb(ids[name])[:, 1]
        for name, emb in self.feed_cvr_offset.items():
            out = out + emb(ids[name]).squeeze(1)
        return out


def esmm_loss(
    ctr_logit: torch.Tensor, cvr_logit: torch.Tensor, clicked: torch.Tensor, converted: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """BCE(clicked, pCTR) + BCE(clicked * converted, pCTR * pCVR), both means over impressions."""
    clicked = clicked.float()
    ctcvr_label = clicked * converted.float()
    ctr_loss = F.binary_cross_entropy_with_logits(ctr_logit, clicked)
    # log pCTCVR = log sigmoid(a) + log sigmoid(b); log(1 - p) via expm1 stays finite near p -> 0 and 1
    log_p = F.logsigmoid(ctr_logit) + F.logsigmoid(cvr_logit)
    log_1mp = torch.log(-torch.expm1(log_p.clamp(max=-1e-7)))
    ctcvr_loss = -(ctcvr_label * log_p + (1 - ctcvr_label) * log_1mp).mean()
    loss = ctr_loss + ctcvr_loss
    return loss, {"ctr": float(ctr_loss.detach()), "ctcvr": float(ctcvr_loss.detach())}


# ---------------------------------------------------------------------------- training
@dataclass
class TrainData:
    """Training rows as indices into per-unique-text tensors (texts repeat across impressions)."""

    text_features: dict[str, torch.Tensor]  # tokens, bigrams, n_chars, n_tokens per unique text
    text_index: torch.Tensor  # (N,) row -> unique text
    context: dict[str, torch.Tensor]  # context fields, id fields, position, exposures: (N,); relevance: (N, 2)
    clicked: torch.Tensor
    converted: torch.Tensor

    def __len__(self) -> int:
        return int(self.text_index.shape[0])

    def batch(self, encoder: FeatureEncoder, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        t = self.text_index[rows]
        out = {
            "tokens": self.text_features["tokens"][t],
            "bigrams": self.text_features["bigrams"][t],
            "position": self.context["position"][rows],
            "dense": encoder.dense(
                self.context["relevance"][rows], self.text_features["n_chars"][t], self.text_features["n_tokens"][t]
            ),
        }
        for name in (*CONTEXT_FIELDS, *encoder.config.id_fields, "exposures"):
            out[name] = self.context[name][rows]
        return out


def build_train_data(encoder: FeatureEncoder, frame: pd.DataFrame) -> TrainData:
    """Frame columns: ad_text, keyword, vertical, user_segment, position, clicked, converted, the config's
    id fields[, query][, prior_exposures]."""
    texts = frame["ad_text"].fillna("").astype(str)
    codes, uniques = texts.factorize(sort=True)
    context = {name: encoder.context_ids(name, frame[name].tolist())
               for name in (*CONTEXT_FIELDS, *encoder.config.id_fields)}
    context["position"] = encoder.position_ids(frame["position"].tolist())
    context["exposures"] = encoder.exposure_ids(frame[EXPOSURES].tolist() if EXPOSURES in frame else [0] * len(frame))
    # relevance per distinct (text, keyword, query): far fewer than impressions
    keys = pd.DataFrame({
        "ad_text": texts.to_numpy(dtype=object),
        "keyword": frame["keyword"].fillna("").astype(str).to_numpy(dtype=object),
        "query": (frame["query"] if "query" in frame else pd.Series("", index=frame.index)).fillna("").astype(str)
        .to_numpy(dtype=object),
    })
    groups = keys.groupby(["ad_text", "keyword", "query"], sort=True)
    distinct = groups.size().index.to_frame(index=False)
    relevance = encoder.relevance(distinct["ad_text"].tolist(), distinct["keyword"].tolist(), distinct["query"].tolist())
    context["relevance"] = relevance[torch.from_numpy(groups.ngroup().to_numpy(dtype=np.int64))]
    return TrainData(
        text_features=encoder.encode_texts(list(uniques)),
        text_index=torch.from_numpy(codes.astype(np.int64)),
        context=context,
        clicked=torch.tensor(frame["clicked"].to_numpy(dtype=np.float32)),
        converted=torch.tensor(frame["converted"].to_numpy(dtype=np.float32)),
    )


@dataclass
class FeedClicks:
    """Clicked feed impressions as ids (FEED_SHARED, id fields, feed fields) and conversion labels."""

    ids: dict[str, torch.Tensor]
    converted: torch.Tensor

    def __len__(self) -> int:
        return int(self.converted.shape[0])


def build_feed_clicks(encoder: FeatureEncoder, frame: pd.DataFrame) -> FeedClicks:
    """Frame columns: vertical, user_segment, converted, the config's id fields and feed fields."""
    cfg = encoder.config
    names = (*FEED_SHARED, *cfg.id_fields, *cfg.feed_fields)
    return FeedClicks(
        ids={name: encoder.context_ids(name, frame[name].tolist()) for name in names},
        converted=torch.tensor(frame["converted"].to_numpy(dtype=np.float32)),
    )


def feed_cvr_loss(model: CTCVRModel, feed: FeedClicks, rows: torch.Tensor, n_search: int) -> torch.Tensor:
    """Summed BCE of the feed rows over the search batch size: a feed click weighs like a search click
    in the ESMM loss (whose CTCVR term is a mean over the batch's impressions)."""
    logit = model.feed_cvr_logit({name: ids[rows] for name, ids in feed.ids.items()})
    return F.binary_cross_entropy_with_logits(logit, feed.converted[rows], reduction="sum") / max(n_search, 1)


@dataclass
class FitResult:
    model: CTCVRModel
    curve: list[dict]  # one row per epoch
    best_epoch: int


@torch.no_grad()
def predict(model: CTCVRModel, encoder: FeatureEncoder, data: TrainData, batch_size: int = 8192) -> dict[str, np.ndarray]:
    model.eval()
    ctr, cvr = [], []
    for start in range(0, len(data), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(data)))
        a, b = model(data.batch(encoder, rows))
        ctr.append(torch.sigmoid(a))
        cvr.append(torch.sigmoid(b))
    p_ctr = torch.cat(ctr).numpy() if ctr else np.zeros(0, np.float32)
    p_cvr = torch.cat(cvr).numpy() if cvr else np.zeros(0, np.float32)
    return {"p_ctr": p_ctr, "p_cvr": p_cvr, "p_ctcvr": p_ctr * p_cvr}


def _ema(decay: float):
    """Moving-average update whose decay warms up as (1 + n) / (10 + n) (as in TensorFlow's
    ExponentialMovingAverage), so short runs average recent weights, not the initial ones."""

    def update(average: torch.Tensor, current: torch.Tensor, n_averaged) -> torch.Tensor:
        d = min(decay, (1.0 + float(n_averaged)) / (10.0 + float(n_averaged)))
        return d * average + (1.0 - d) * current

    return update


def fit(
    config: CTCVRConfig,
    encoder: FeatureEncoder,
    train: TrainData,
    val: TrainData,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    id_dropout: float = 0.0,
    ema_decay: float = 0.0,
    feed: FeedClicks | None = None,
    init: CTCVRModel | None = None,
    log: Callable[[str], None] = print,
) -> FitResult:
    """Adam over shuffled mini-batches; keeps the epoch with the best validation ESMM loss.

    `ema_decay` > 0: validate and keep an exponential moving average of the weights instead of the
    last step's: with a few thousand conversions the last step's CVR tower is noisy.

    `id_dropout`: share of training rows whose id fields are set to unknown (0), so the unknown
    id learns the average offset that contexts without ids (the GRPO reward's) are scored with.

    `feed` (needs config.feed_conversions): clicked feed rows, spread evenly over each epoch's
    steps, add their conversion loss (`feed_cvr_loss`).

    `init` (a warm start): training continues from a copy of its weights (its config must be
    `config`); the optimizer starts afresh."""
    if feed is not None and not config.feed_conversions:
        raise ValueError("fit: feed rows given but config.feed_conversions is off")
    torch.manual_seed(seed)
    model = CTCVRModel(config)
    if init is not None:
        if init.config != config:
            raise ValueError("fit: the initial model's config differs from `config`")
        model.load_state_dict(init.state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    averaged = AveragedModel(model, avg_fn=_ema(ema_decay)) if ema_decay > 0 else None
    scored = averaged.module if averaged is not None else model
    curve, best_loss, best_state, best_epoch = [], math.inf, None, 0
    for epoch in range(1, epochs + 1):
        start = time.monotonic()
        train_loss = _train_epoch(model, optimizer, averaged, encoder, train, feed, generator, batch_size, id_dropout)
        row = {"epoch": epoch, "train_loss": train_loss, **evaluate(scored, encoder, val)}
        row["seconds"] = round(time.monotonic() - start, 2)
        curve.append(row)
        log(
            f"epoch {epoch}/{epochs}: train loss {row['train_loss']:.5f}, val loss {row['val_loss']:.5f}, "
            f"val auc ctr {row['val_auc_ctr']:.4f}, val auc ctcvr {row['val_auc_ctcvr']:.4f}, {row['seconds']:.1f}s"
        )
        if row["val_loss"] < best_loss:
            best_loss, best_epoch = row["val_loss"], epoch
            best_state = {k: v.detach().clone() for k, v in scored.state_dict().items()}
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FitResult(model=model, curve=curve, best_epoch=best_epoch)


def _train_epoch(model: CTCVRModel, optimizer: torch.optim.Optimizer, averaged: AveragedModel | None,
                 encoder: FeatureEncoder, train: TrainData, feed: FeedClicks | None, generator: torch.Generator,
                 batch_size: int, id_dropout: float) -> float:
    """One shuffled pass over `train` (feed rows spread over its steps); return the mean training loss."""
    model.train()
    order = torch.randperm(len(train), generator=generator)
    n_steps = math.ceil(len(order) / batch_size)
    feed_order = torch.randperm(len(feed), generator=generator) if feed is not None else None
    total, seen = 0.0, 0
    for step, s in enumerate(range(0, len(order), batch_size)):
        rows = order[s : s + batch_size]
        batch = train.batch(encoder, rows)
        if id_dropout > 0:
            drop = torch.rand(len(rows), generator=generator) < id_dropout
            for name in model.config.id_fields:
                batch[name] = batch[name].masked_fill(drop, 0)
        ctr_logit, cvr_logit = model(batch)
        loss, _ = esmm_loss(ctr_logit, cvr_logit, train.clicked[rows], train.converted[rows])
        if feed_order is not None:
            feed_rows = feed_order[step * len(feed) // n_steps : (step + 1) * len(feed) // n_steps]
            loss = loss + feed_cvr_loss(model, feed, feed_rows, len(rows))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if averaged is not None:
            averaged.update_parameters(model)
        total += float(loss.detach()) * len(rows)
        seen += len(rows)
    return total / max(seen, 1)


def evaluate(model: CTCVRModel, encoder: FeatureEncoder, data: TrainData) -> dict[str, float]:
    pred = predict(model, encoder, data)
    clicked = data.clicked.numpy()
    ctcvr = clicked * data.converted.numpy()
    with torch.no_grad():
        p_ctr = torch.from_numpy(pred["p_ctr"]).clamp(1e-7, 1 - 1e-7)
        p_cvr = torch.from_numpy(pred["p_cvr"]).clamp(1e-7, 1 - 1e-7)
        loss, _ = esmm_loss(torch.logit(p_ctr), torch.logit(p_cvr), data.clicked, data.converted)
    return {
        "val_loss": float(loss),
        "val_auc_ctr": auc(clicked, pred["p_ctr"]),
        "val_auc_ctcvr": auc(ctcvr, pred["p_ctcvr"]),
    }


# ----------------------------------------------------------------------------- scoring
WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_DIR = "model.safetensors", "config.json", "tokenizer"


class CTCVRScorer:
    """Batched scoring: `CTCVRScorer.load(dir).score(texts, contexts)` -> {p_ctr, p_cvr, p_ctcvr}."""

    def __init__(self, model: CTCVRModel, tokenizer, batch_size: int = 4096):
        self.model = model.eval()
        self.config = model.config
        self.tokenizer = tokenizer
        self.encoder = FeatureEncoder(model.config, tokenizer)
        self.batch_size = batch_size

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE))
        (directory / CONFIG_FILE).write_text(self.config.to_json(), encoding="utf-8")
        save_tokenizer(self.tokenizer, directory / TOKENIZER_DIR)

    @classmethod
    def load(cls, directory: str | os.PathLike, batch_size: int = 4096) -> "CTCVRScorer":
        directory = Path(directory)
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            if not (directory / name).is_file():
                raise MissingArtifact(f"CTCVR artifact incomplete: {directory / name} missing; run train_ctcvr first")
        config = CTCVRConfig.from_json((directory / CONFIG_FILE).read_text(encoding="utf-8"))
        model = CTCVRModel(config)
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
        return cls(model, load_tokenizer(directory / TOKENIZER_DIR), batch_size=batch_size)

    def grown(self, new_values: dict[str, Sequence[str]]) -> "CTCVRScorer":
        """This scorer with `new_values` (field -> values) appended to its vocabularies, for a warm start.

        Appending keeps every known value's id and rows; a new value's rows start as copies of the
        unknown row 0, so the grown model scores it exactly as this one did, until training moves
        them. `user_segment` cannot grow (the segment x token cross lays its rows out by segment)."""
        if "user_segment" in new_values:
            raise ValueError("CTCVR vocabularies: user_segment cannot grow; retrain in full")
        vocabs = {name: list(values) for name, values in self.config.vocabs.items()}
        for name, values in new_values.items():
            known = set(vocabs.get(name, []))
            vocabs[name] = vocabs.get(name, []) + sorted(set(values) - known)
        model = CTCVRModel(dataclasses.replace(self.config, vocabs=vocabs))
        old = self.model.state_dict()
        state = {}
        for key, fresh in model.state_dict().items():
            rows = old[key]
            if rows.shape != fresh.shape:  # an embedding of a grown vocabulary: new rows copy row 0
                extra = fresh.shape[0] - rows.shape[0]
                rows = torch.cat([rows, rows[:1].expand(extra, *rows.shape[1:])])
            state[key] = rows
        model.load_state_dict(state)
        return CTCVRScorer(model, self.tokenizer, self.batch_size)

    @torch.no_grad()
    def score(self, texts: Sequence[str], contexts: Sequence[dict]) -> dict[str, np.ndarray]:
        """Probabilities for aligned texts and contexts ({keyword, vertical, position, user_segment[, query]}
        plus, optionally, the config's id fields and prior_exposures)."""
        texts = list(texts)
        contexts = list(contexts)
        if len(texts) != len(contexts):
            raise ValueError(f"score: {len(texts)} texts but {len(contexts)} contexts")
        ctr, cvr = [np.zeros(0, np.float32)], [np.zeros(0, np.float32)]
        for s in range(0, len(texts), self.batch_size):
            a, b = self.model(self.encoder.encode(texts[s : s + self.batch_size], contexts[s : s + self.batch_size]))
            ctr.append(torch.sigmoid(a).numpy())
            cvr.append(torch.sigmoid(b).numpy())
        p_ctr, p_cvr = np.concatenate(ctr), np.concatenate(cvr)
        return {"p_ctr": p_ctr, "p_cvr": p_cvr, "p_ctcvr": p_ctr * p_cvr}
