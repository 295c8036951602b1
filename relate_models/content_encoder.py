"""Content encoders of the MIL attribution model: what an element is -> a vector shared across ads.

The element table (docs/data_contract.md "Element table") gives a title's and a highlight's text and an
image's embedding. `ContentTable` holds them as tensors, one row per (ad, slot, element) (row 0: no
content); `ContentEncoder` maps every row to a `d`-vector:

    text:  the mean of the element's token embeddings (the shared tokenizer's tokens, models/tokenizer,
           through an embedding table of the MIL model's own)
    image: a small MLP of the embedding, Linear(E, d) -> tanh -> Linear(d, d)

The encoder's weights are shared by every ad, so what content does to clicks is learned across ads, and
an element with no clicks (launched after the training window, or of an ad never trained on) is still
represented: by its content alone.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn

TEXT_SLOTS = ("title", "highlight")
IMAGE_SLOT = "image"
CONTENT_FILES = ("content.safetensors", "content_keys.json")
_SEP = "\x1f"


def content_key(ad_id: str, slot: str, element_id: str) -> str:
    return f"{ad_id}{_SEP}{slot}{_SEP}{element_id}"


@dataclass
class ContentTable:
    """Content rows: `keys[i]` = (ad_id, slot, element_id) of row i + 1; row 0 is 'no content'."""

    keys: list[tuple[str, str, str]]
    tokens: torch.Tensor  # [C + 1, L] token ids, 0 = padding
    image: torch.Tensor  # [C + 1, E] image embeddings (zeros for text rows)
    is_image: torch.Tensor  # [C + 1] bool
    index: dict[str, int] = field(init=False)

    def __post_init__(self):
        self.index = {content_key(*k): i + 1 for i, k in enumerate(self.keys)}

    @property
    def embedding_dim(self) -> int:
        return int(self.image.shape[1])

    @classmethod
    def build(cls, elements: pd.DataFrame, tokenizer, max_tokens: int, embedding_dim: int) -> "ContentTable":
        """From element-table rows (element_id, ad_id, kind, text, embedding); the last row of a key wins."""
        frame = elements.drop_duplicates(["ad_id", "kind", "element_id"], keep="last")
        frame = frame.sort_values(["ad_id", "kind", "element_id"]).reset_index(drop=True)
        n = len(frame)
        tokens = np.zeros((n + 1, max_tokens), dtype=np.int64)
        image = np.zeros((n + 1, embedding_dim), dtype=np.float32)
        is_image = np.zeros(n + 1, dtype=bool)
        texts = frame["text"].where(frame["kind"].isin(TEXT_SLOTS))
        text_rows = np.flatnonzero(texts.notna().to_numpy())
        if len(text_rows):
            ids = tokenizer([str(t) for t in texts.iloc[text_rows]], add_special_tokens=False)["input_ids"]
            for row, seq in zip(text_rows, ids):
                seq = seq[:max_tokens]
                tokens[row + 1, : len(seq)] = seq
        for row in np.flatnonzero((frame["kind"] == IMAGE_SLOT).to_numpy()):
            emb = frame.at[row, "embedding"]
            if emb is not None and len(emb) == embedding_dim:
                image[row + 1] = np.asarray(emb, dtype=np.float32)
                is_image[row + 1] = True
        keys = [(str(a), str(k), str(e)) for a, k, e in frame[["ad_id", "kind", "element_id"]].itertuples(index=False)]
        return cls(keys, torch.as_tensor(tokens), torch.as_tensor(image), torch.as_tensor(is_image))

    def lookup(self, ad_ids: pd.Series, slot: str, element_ids: pd.Series) -> np.ndarray:
        """Content row of each (ad, slot, element); 0 where the table has none."""
        keys = ad_ids.astype(str) + _SEP + slot + _SEP + element_ids.astype(str)
        return keys.map(self.index).fillna(0).astype(np.int64).to_numpy()

    def merged(self, other: "ContentTable") -> "ContentTable":
        """This table plus the rows of `other` whose keys it lacks (its own rows and their order kept)."""
        new = [i + 1 for i, k in enumerate(other.keys) if content_key(*k) not in self.index]
        pick = torch.as_tensor(new, dtype=torch.long)
        return ContentTable(self.keys + [other.keys[i - 1] for i in new], torch.cat([self.tokens, other.tokens[pick]]),
                            torch.cat([self.image, other.image[pick]]), torch.cat([self.is_image, other.is_image[pick]]))

    def ad_elements(self, ad_id: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for a, s, e in self.keys:
            if a == ad_id:
                out.setdefault(s, []).append(e)
        return out

    def save(self, directory: Path) -> None:
        save_file({"tokens": self.tokens.contiguous(), "image": self.image.contiguous(),
                   "is_image": self.is_image.to(torch.uint8).contiguous()}, directory / CONTENT_FILES[0])
        (directory / CONTENT_FILES[1]).write_text(json.dumps([list(k) for k in self.keys]) + "\n")

    @classmethod
    def load(cls, directory: Path) -> "ContentTable":
        tensors = load_file(directory / CONTENT_FILES[0])
        keys = [tuple(k) for k in json.loads((directory / CONTENT_FILES[1]).read_text())]
        return cls(keys, tensors["tokens"], tensors["image"], tensors["is_image"].bool())


class ContentEncoder(nn.Module):
    """Content rows -> [C + 1, d] vectors (row 0, 'no content', maps to zeros)."""

    def __init__(self, token_vocab: int, embedding_dim: int, d: int):
        super().__init__()
        self.token_emb = nn.Embedding(token_vocab, d, padding_idx=0)
        self.image_mlp = nn.Sequential(nn.Linear(embedding_dim, d), nn.Tanh(), nn.Linear(d, d))
        nn.init.normal_(self.token_emb.weight, std=0.1)
        with torch.no_grad():
            self.token_emb.weight[0].zero_()

    def forward(self, tokens: torch.Tensor, image: torch.Tensor, is_image: torch.Tensor) -> torch.Tensor:
        mask = (tokens != 0).unsqueeze(-1).float()
        text = (self.token_emb(tokens) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        out = torch.where(is_image.unsqueeze(-1), self.image_mlp(image), text)
        has = is_image | (tokens != 0).any(1)
        return out * has.unsqueeze(-1).float()

    def weight_norm(self) -> torch.Tensor:
        return sum(p.pow(2).sum() for p in self.parameters())
