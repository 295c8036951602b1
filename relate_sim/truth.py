"""The true click and conversion model.

The pure functions (`search_logits`, `feed_logits`, `fatigue_factor`) define the truth;
`TruthTables` precomputes the same quantities for every pool creative so the simulator
can label millions of impressions with numpy (a test checks both agree).

Search:  click = base + product + segment x vertical + position + text(context)
         conv  = base + product + segment + text conv part
Feed:    click = base + product + segment x vertical + position + u_title + u_image
               + u_highlight + title x image latent match + segment x image attributes
         conv  = base + product + segment + highlight conv part
Served probabilities: p_click = sigmoid(click) * decay ** earlier exposures (fatigue).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from relate_sim import grammar
from relate_sim.drift import signature_hash, text_key, wear
from relate_sim.world import FEED_POSITIONS, SEARCH_POSITIONS, World


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def is_compliant(world: World, analysis: grammar.TextAnalysis) -> bool:
    """The grammar's categories, plus the phrases a compliance rule in force on the world's day bans."""
    return analysis.compliant and not (world.banned_phrases and set(analysis.phrase_ids) & world.banned_phrases)


def text_wear(world: World, ad: int, signature: str) -> float:
    """Click logit the ad's creative with this signature has lost to wear-out by the world's day (drift.py)."""
    first = world.__dict__.get("text_first_served")
    if not first:
        return 0.0
    day = first.get(text_key(ad, signature))
    return 0.0 if day is None else float(wear(world.config.drift, world.day - day))


def text_base_effects(world: World, analysis: grammar.TextAnalysis) -> tuple[float, float]:
    """Context-free (click, conv) logit contributions of a parsed text."""
    c = world.coef
    click = conv = 0.0
    for slot in grammar.SLOTS:
        ids = analysis.slot_phrases[slot]
        if ids:
            click += float(np.mean(world.phrase_click[list(ids)]))
            conv += float(np.mean(world.phrase_conv[list(ids)]))
            click += c["clutter_click"] * (len(ids) - 1)
    if not analysis.slot_phrases["cta"]:
        click += c["no_cta_click"]
        conv += c["no_cta_conv"]
    if not analysis.phrase_ids:
        click += c["no_known_phrase_click"]
    if analysis.truncated:
        click += c["truncated_click"]
    return click, conv


def text_segment_effects(world: World, analysis: grammar.TextAnalysis) -> np.ndarray:
    """Click logit contribution per segment (benefits resonate differently), shape [S]."""
    ids = analysis.slot_phrases["benefit"]
    if not ids:
        return np.zeros(len(world.segments))
    return world.phrase_segment_click[list(ids)].mean(axis=0)


def text_context_effects(world: World, analysis: grammar.TextAnalysis, keyword: str, query: str) -> tuple[float, float]:
    """(click, conv) logit contributions of keyword relevance."""
    has_keyword, coverage = grammar.keyword_relevance(analysis, keyword, query)
    c = world.coef
    click = c["keyword_match_click"] * has_keyword + c["query_coverage_click"] * coverage
    conv = c["keyword_match_conv"] * has_keyword
    return click, conv


def _text_parts(world: World, text: str):
    """(analysis, base click, base conv, per-segment click) of a text, memoised per world."""
    cache = world.__dict__.setdefault("_text_cache", {})
    parts = cache.get(text)
    if parts is None:
        if len(cache) > 200_000:
            cache.clear()
        analysis = grammar.analyze_text(text, world.config.text_max_chars)
        parts = (analysis, *text_base_effects(world, analysis), text_segment_effects(world, analysis))
        cache[text] = parts
    return parts


def search_logits(world: World, ad: int, segment: int, position: int, text: str, keyword: str, query: str
                  ) -> tuple[float, float, grammar.TextAnalysis]:
    """(click logit, conv logit, parse) of `text` served for `ad` on search, fresh user."""
    if position not in SEARCH_POSITIONS:
        raise ValueError(f"search position must be one of {SEARCH_POSITIONS}, got {position!r}")
    analysis, base_click, base_conv, segment_click = _text_parts(world, text)
    product = world.products[world.ads[ad]["product"]]
    c = world.coef
    ctx_click, ctx_conv = text_context_effects(world, analysis, keyword, query)
    click = (c["base_click_search"] + product["appeal_click"] + world.segment_vertical_click[segment, product["vertical"]]
             + world.search_position_click[position - 1] + base_click + segment_click[segment] + ctx_click
             - text_wear(world, ad, analysis.signature))
    conv = c["base_conv"] + product["appeal_conv"] + world.segment_conv[segment] + base_conv + ctx_conv
    return float(click), float(conv), analysis


def feed_logits(world: World, ad: int, segment: int, position: int, title: int, image: int, highlight: int
                ) -> tuple[float, float]:
    """(click logit, conv logit) of a creative combination served for `ad` on the feed, fresh user."""
    if position not in FEED_POSITIONS:
        raise ValueError(f"feed position must be one of {FEED_POSITIONS}, got {position!r}")
    product = world.products[world.ads[ad]["product"]]
    c = world.coef
    click = (c["base_click_feed"] + product["appeal_click"] + world.segment_vertical_click[segment, product["vertical"]]
             + world.feed_position_click[position - 1] + world.title_utility[ad, title]
             + world.image_utility[ad, image] + world.highlight_utility[ad, highlight]
             + c["title_image_interaction"] * world.title_latent[ad, title] @ world.image_latent[ad, image]
             + c["segment_image_preference"] * world.segment_image_preference[segment]
             @ (world.image_attributes[ad, image] - 0.5))
    conv = c["base_conv"] + product["appeal_conv"] + world.segment_conv[segment] + world.highlight_conv[ad, highlight]
    return float(click), float(conv)


def fatigue_factor(world: World, earlier_exposures):
    """CTR multiplier after `earlier_exposures` showings of the same creative signature to a user."""
    n = np.minimum(np.asarray(earlier_exposures), world.coef["fatigue_max_exposures"])
    return world.coef["fatigue_decay"] ** n


@dataclasses.dataclass
class TruthTables:
    """Precomputed pieces of the truth for every pool creative (all arrays indexed by ad first)."""

    served_text: list[list[str]]  # [A][T]
    text_click: np.ndarray  # [A, T] context-free click part
    text_conv: np.ndarray  # [A, T]
    text_segment_click: np.ndarray  # [A, T, S]
    text_context_click: np.ndarray  # [A, T, K, M] keyword + query relevance
    text_context_conv: np.ndarray  # [A, T, K, M]
    text_compliant: np.ndarray  # [A, T]
    text_signature: np.ndarray  # [A, T] signature_hash of the text's near-duplicate signature
    combo_click: np.ndarray  # [A, Ti*I*H] element part of the click logit (no segment/position)
    combo_image: np.ndarray  # [A, Ti*I*H] image index of each combo
    combo_signature: np.ndarray  # [A, Ti*I*H] signature_hash of (title id, image id)
    combo_conv: np.ndarray  # [A, Ti*I*H]
    segment_image_click: np.ndarray  # [A, I, S]


def build_tables(world: World) -> TruthTables:
    cfg = world.config
    A, T, S = world.n_ads, cfg.texts_per_ad, len(world.segments)
    K, M = cfg.keywords_per_product, len(grammar.QUERY_MODIFIERS)
    served = [[""] * T for _ in range(A)]
    text_click, text_conv = np.zeros((A, T)), np.zeros((A, T))
    text_segment_click = np.zeros((A, T, S))
    ctx_click, ctx_conv = np.zeros((A, T, K, M)), np.zeros((A, T, K, M))
    compliant = np.zeros((A, T), dtype=bool)
    signature = np.zeros((A, T), dtype=np.int64)
    for a in range(A):
        for t, text in enumerate(world.texts[a]):
            analysis = grammar.analyze_text(text, cfg.text_max_chars)
            served[a][t] = analysis.served
            text_click[a, t], text_conv[a, t] = text_base_effects(world, analysis)
            text_click[a, t] -= text_wear(world, a, analysis.signature)
            text_segment_click[a, t] = text_segment_effects(world, analysis)
            compliant[a, t] = is_compliant(world, analysis)
            signature[a, t] = signature_hash(analysis.signature)
            for k in range(K):
                for m in range(M):
                    keyword, query = world.keyword_query(a, k, m)
                    ctx_click[a, t, k, m], ctx_conv[a, t, k, m] = text_context_effects(world, analysis, keyword, query)

    Ti, I, H = cfg.titles_per_ad, cfg.images_per_ad, cfg.highlights_per_ad
    c = world.coef
    interaction = np.einsum("atl,ail->ati", world.title_latent, world.image_latent)
    combo_click = (world.title_utility[:, :, None, None] + world.image_utility[:, None, :, None]
                   + world.highlight_utility[:, None, None, :]
                   + c["title_image_interaction"] * interaction[:, :, :, None])
    combo_conv = np.broadcast_to(world.highlight_conv[:, None, None, :], (A, Ti, I, H))
    combo_image = np.broadcast_to(np.arange(I)[None, None, :, None], (A, Ti, I, H))
    pair = np.array([[[signature_hash(f"{world.title_id(a, t)}|{world.image_id(a, i)}") for i in range(I)]
                      for t in range(Ti)] for a in range(A)], dtype=np.int64)
    combo_signature = np.broadcast_to(pair[:, :, :, None], (A, Ti, I, H))
    segment_image_click = c["segment_image_preference"] * np.einsum(
        "aid,sd->ais", world.image_attributes - 0.5, world.segment_image_preference)
    return TruthTables(
        served_text=served, text_click=text_click, text_conv=text_conv, text_segment_click=text_segment_click,
        text_context_click=ctx_click, text_context_conv=ctx_conv, text_compliant=compliant,
        text_signature=signature, combo_click=combo_click.reshape(A, -1), combo_image=combo_image.reshape(A, -1).copy(),
        combo_signature=combo_signature.reshape(A, -1).copy(), combo_conv=combo_conv.reshape(A, -1).copy(),
        segment_image_click=segment_image_click,
    )


def combo_index(world: World, title: int, image: int, highlight: int):
    cfg = world.config
    return (np.asarray(title) * cfg.images_per_ad + np.asarray(image)) * cfg.highlights_per_ad + np.asarray(highlight)


def combo_parts(world: World, combo):
    cfg = world.config
    combo = np.asarray(combo)
    highlight = combo % cfg.highlights_per_ad
    image = (combo // cfg.highlights_per_ad) % cfg.images_per_ad
    title = combo // (cfg.highlights_per_ad * cfg.images_per_ad)
    return title, image, highlight


def search_logits_vec(world: World, tables: TruthTables, ad, segment, position, text, kw, mod):
    """Vectorised `search_logits` for pool texts (indices), returning (click, conv) logit arrays."""
    c = world.coef
    prod = np.array([world.ads[a]["product"] for a in range(world.n_ads)])
    appeal_click = np.array([p["appeal_click"] for p in world.products])[prod]
    appeal_conv = np.array([p["appeal_conv"] for p in world.products])[prod]
    vert = np.array([p["vertical"] for p in world.products])[prod]
    click = (c["base_click_search"] + appeal_click[ad] + world.segment_vertical_click[segment, vert[ad]]
             + world.search_position_click[position - 1] + tables.text_click[ad, text]
             + tables.text_segment_click[ad, text, segment] + tables.text_context_click[ad, text, kw, mod])
    conv = (c["base_conv"] + appeal_conv[ad] + world.segment_conv[segment] + tables.text_conv[ad, text]
            + tables.text_context_conv[ad, text, kw, mod])
    return click, conv


def feed_logits_vec(world: World, tables: TruthTables, ad, segment, position, combo):
    """Vectorised `feed_logits` over combo indices, returning (click, conv) logit arrays."""
    c = world.coef
    prod = np.array([world.ads[a]["product"] for a in range(world.n_ads)])
    appeal_click = np.array([p["appeal_click"] for p in world.products])[prod]
    appeal_conv = np.array([p["appeal_conv"] for p in world.products])[prod]
    vert = np.array([p["vertical"] for p in world.products])[prod]
    image = tables.combo_image[ad, combo]
    click = (c["base_click_feed"] + appeal_click[ad] + world.segment_vertical_click[segment, vert[ad]]
             + world.feed_position_click[position - 1] + tables.combo_click[ad, combo]
             + tables.segment_image_click[ad, image, segment])
    conv = c["base_conv"] + appeal_conv[ad] + world.segment_conv[segment] + tables.combo_conv[ad, combo]
    return click, conv
