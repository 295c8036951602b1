"""What a feed element is, and the part of its true utility its content explains.

Every feed element has content a platform would hold: a title's and a highlight's text (the
grammar's phrases, relate_sim/grammar.py) and an image's attribute vector (`IMAGE_ATTRIBUTES`;
the element table carries it as an embedding: a fixed projection of the attributes plus noise,
standing in for a vision encoder). Per kind, an element's true utility is

    utility = content(element) + idiosyncratic
    content = sd_kind * sqrt(content_share) * (raw(element) - mean_0) / sd_0
    idiosyncratic ~ N(0, sd_kind^2 * (1 - content_share))

raw(title) = the weight of its hook phrase (or of the brand form "<Brand> <noun>") plus the
weights of its suffix ("for you", "by <Brand>"); raw(highlight) = the weight of its benefit phrase;
raw(image) = attribute weights . (attributes - 0.5). The weights are drawn per world and shared by
every ad, so content carries across ads; mean_0 and sd_0 are raw's mean and sd over the base world's
elements, so content explains `simulate.content_share` of each kind's utility variance there
(the oracle measures the realised share: `Oracle.content_share`). New elements of a drifting market
(relate_sim/market.py) are scored by the same function.
"""
from __future__ import annotations

import numpy as np

from relate_sim import grammar
from relate_sim.streams import stream_rng

KINDS = ("title", "image", "highlight")
UTILITY_SD = {"title": 0.4, "image": 0.4, "highlight": 0.2}  # sd of each kind's true utility (logit)
PLAIN_HOOKS = tuple(p for p, slot, cat in grammar.LEXICON if slot == "hook" and cat == "plain")
BENEFITS = tuple(p for p, slot, _ in grammar.LEXICON if slot == "benefit")
TITLE_FORMS = ("brand", "for you", "by")  # title weights after the hooks: brand form, the two suffixes
STREAM_CONTENT, STREAM_EMBEDDING = 3, 44  # world stream 1 draws the rest; drift streams are 40-43


def title_features(text: str) -> np.ndarray:
    """Indicator vector [hooks..., brand form, "for you", "by"] of a title's content."""
    x = np.zeros(len(PLAIN_HOOKS) + len(TITLE_FORMS))
    lower = text.lower()
    hook = next((i for i, h in enumerate(PLAIN_HOOKS) if lower.startswith(h + " ")), None)
    x[len(PLAIN_HOOKS) if hook is None else hook] = 1.0
    words = lower.split()
    if lower.endswith(" for you") or " for you " in lower:
        x[len(PLAIN_HOOKS) + 1] = 1.0
    if "by" in words:
        x[len(PLAIN_HOOKS) + 2] = 1.0
    return x


def highlight_features(text: str) -> np.ndarray:
    """One-hot of a highlight's benefit phrase (all zeros for a text of none)."""
    x = np.zeros(len(BENEFITS))
    lower = text.lower()
    for i, benefit in enumerate(BENEFITS):
        if lower.startswith(benefit):
            x[i] = 1.0
            break
    return x


def draw_weights(seed: int, image_weights: np.ndarray) -> dict[str, np.ndarray]:
    """The raw content weights of a world: titles and highlights from their own stream, images' given."""
    rng = stream_rng(seed, STREAM_CONTENT)
    return {"title": rng.normal(0.0, 1.0, len(PLAIN_HOOKS) + len(TITLE_FORMS)),
            "highlight": rng.normal(0.0, 1.0, len(BENEFITS)), "image": np.asarray(image_weights, dtype=float)}


def raw_title(weights: np.ndarray, text: str) -> float:
    return float(title_features(text) @ weights)


def raw_highlight(weights: np.ndarray, text: str) -> float:
    return float(highlight_features(text) @ weights)


def raw_image(weights: np.ndarray, attributes: np.ndarray) -> np.ndarray:
    return (np.asarray(attributes) - 0.5) @ weights


def scale(share: float, kind: str, raw: np.ndarray, norm: np.ndarray) -> np.ndarray:
    """Content utility of raw values, given the kind's base-world (mean, sd) `norm`."""
    sd = norm[1] if norm[1] > 0 else 1.0
    return UTILITY_SD[kind] * np.sqrt(share) * (np.asarray(raw) - norm[0]) / sd


def idiosyncratic(share: float, kind: str, z) -> np.ndarray:
    """The idiosyncratic utility part of standard normal draws `z`."""
    return UTILITY_SD[kind] * np.sqrt(1.0 - share) * np.asarray(z)


def attach(share: float, seed: int, titles: list[list[str]], highlights: list[list[str]],
           image_attributes: np.ndarray, image_weights: np.ndarray, z: dict[str, np.ndarray]) -> dict:
    """The base world's content fields and element utilities from standard normal draws `z` per kind."""
    weights = draw_weights(seed, image_weights)
    raw = {"title": np.array([[raw_title(weights["title"], t) for t in ad] for ad in titles]),
           "highlight": np.array([[raw_highlight(weights["highlight"], h) for h in ad] for ad in highlights]),
           "image": raw_image(weights["image"], image_attributes)}
    norm = np.array([[float(raw[k].mean()), float(raw[k].std())] for k in KINDS])
    out = {"content_norm": norm, "title_content_weights": weights["title"],
           "highlight_content_weights": weights["highlight"], "image_attribute_weights": weights["image"]}
    for i, kind in enumerate(KINDS):
        out[f"{kind}_utility"] = scale(share, kind, raw[kind], norm[i]) + idiosyncratic(share, kind, z[kind])
    return out


def element_content(world, kind: str, ad: int, k: int) -> float:
    """The content part of the true utility of the element live in slot `k` of `ad` (logit)."""
    if kind == "title":
        raw = raw_title(world.title_content_weights, world.titles[ad][k])
    elif kind == "highlight":
        raw = raw_highlight(world.highlight_content_weights, world.highlights[ad][k])
    elif kind == "image":
        raw = float(raw_image(world.image_attribute_weights, world.image_attributes[ad, k]))
    else:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return float(scale(world.config.content_share, kind, raw, world.content_norm[KINDS.index(kind)]))


def image_projection(seed: int, n_attributes: int, dim: int) -> np.ndarray:
    """The fixed map from image attributes to the embedding space (the stand-in vision encoder)."""
    return stream_rng(seed, STREAM_EMBEDDING).normal(0.0, 1.0 / np.sqrt(n_attributes), size=(n_attributes, dim))


def image_embedding(world, ad: int, k: int, dim: int) -> np.ndarray:
    """The `dim`-long embedding of the image live in slot `k` of `ad`: its attributes projected, plus
    noise drawn once per image (the same image has the same embedding every day)."""
    cfg = world.config
    projection = world.__dict__.get("_image_projection")
    if projection is None or projection.shape[1] != dim:
        projection = world.__dict__["_image_projection"] = image_projection(
            cfg.seed, world.image_attributes.shape[2], dim)
    noise = stream_rng(cfg.seed, STREAM_EMBEDDING, ad, k, world.generation("image", ad, k)).normal(
        0.0, cfg.image_embedding_noise, dim)
    return (world.image_attributes[ad, k] - 0.5) @ projection + noise


def element_rows(world, embedding_dim: int) -> list[dict]:
    """The element table of the world's day: one row per live feed element (docs/data_contract.md)."""
    rows = []
    for a, ad in enumerate(world.ads):
        for k, text in enumerate(world.titles[a]):
            rows.append({"element_id": world.title_id(a, k), "ad_id": ad["id"], "kind": "title", "text": text})
        for k in range(world.image_attributes.shape[1]):
            rows.append({"element_id": world.image_id(a, k), "ad_id": ad["id"], "kind": "image",
                         "embedding": [round(float(v), 6) for v in image_embedding(world, a, k, embedding_dim)]})
        for k, text in enumerate(world.highlights[a]):
            rows.append({"element_id": world.highlight_id(a, k), "ad_id": ad["id"], "kind": "highlight",
                         "text": text})
    return rows


def content_share(rows: list[dict]) -> dict:
    """Measured share of utility variance content explains (R^2 of utility on its content part), per kind
    and over all elements (the element-weighted mean), from `Oracle.element_utilities` rows."""
    out, n = {}, {}
    for kind in KINDS:
        u = np.array([r["utility"] for r in rows if r["element_type"] == kind])
        c = np.array([r["content_utility"] for r in rows if r["element_type"] == kind])
        n[kind] = len(u)
        out[kind] = float(np.corrcoef(u, c)[0, 1] ** 2) if len(u) > 2 and u.std() > 0 and c.std() > 0 else 0.0
    total = sum(n.values())
    out["all"] = float(sum(out[k] * n[k] for k in KINDS) / total) if total else 0.0
    return out
