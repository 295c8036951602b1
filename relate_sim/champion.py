"""The day's served market when a champion's serving tables are given (relate_sim/serving_tables.py).

`serve_champion(sim, tables)` appends each ad's champion texts the world never had to its
text pool (after the pool; a text's `text_id` is the hash of its served string, as for any
text), and builds the mixture the simulator samples from: per (ad, keyword) row on search and
per ad on the feed, `(1 - eps_a) * uniform(champion rows) + eps_a * exploration`, where eps_a
is the logging policy's exploration of the ad and exploration is uniform over the ad's
servable pool texts (search) or all its combinations (feed). Rows without champion entries
keep the logging policy's probabilities. Champion texts pass the serving-time review like the
advertisers' texts (a non-compliant one is blocked with probability review_catch_rate, drawn
per text); combinations with a retired element are skipped.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from plumbing.errors import DataError
from relate_sim import grammar
from relate_sim.drift import signature_hash
from relate_sim.serving_tables import ServingTables
from relate_sim.truth import build_tables, combo_index, is_compliant
from relate_sim.streams import stream_rng
from relate_sim.world import World

_STREAM_REVIEW = 44
_DRIFT_ATTRIBUTES = ("day", "generations", "launch_days", "banned_phrases", "phrase_ema", "text_first_served")


@dataclasses.dataclass
class ChampionMixture:
    text_probs: np.ndarray  # [A * K, T + E] per (ad, keyword) row: the mixture over the extended pool
    text_champion: np.ndarray  # [A * K, T + E] bool: the row's champion texts
    combo_probs: np.ndarray  # [A, Ti * I * H]
    combo_champion: np.ndarray  # [A, Ti * I * H] bool
    version: str


def _extend_texts(world: World, tables: ServingTables) -> tuple[list[list[str]], np.ndarray]:
    """Each ad's pool followed by its champion texts not in the pool; all padded to one length (pads unservable)."""
    extra: list[list[str]] = [[] for _ in range(world.n_ads)]
    for (ad_id, _), texts in sorted(tables.text_pools.items()):
        a = _ad(world, ad_id)
        for text in texts:
            if text not in world.texts[a] and text not in extra[a]:
                extra[a].append(text)
    width = world.config.texts_per_ad + max((len(e) for e in extra), default=0)
    texts, blocked = [], np.ones((world.n_ads, width), dtype=bool)
    for a, pool in enumerate(world.texts):
        row = list(pool) + extra[a]
        blocked[a, :len(pool)] = world.text_blocked[a]
        for t, text in enumerate(extra[a], start=len(pool)):
            blocked[a, t] = _review_blocks(world, text)
        texts.append(row + [pool[0]] * (width - len(row)))
    return texts, blocked


def _review_blocks(world: World, text: str) -> bool:
    analysis = grammar.analyze_text(text, world.config.text_max_chars)
    if is_compliant(world, analysis):
        return False
    return bool(stream_rng(world.config.seed, _STREAM_REVIEW, signature_hash(text)).random() < world.config.review_catch_rate)


def _ad(world: World, ad_id: str) -> int:
    try:
        return world.ad_index(ad_id)
    except ValueError:
        raise DataError(f"serving tables: unknown ad_id {ad_id!r}") from None


def extended_world(world: World, tables: ServingTables) -> tuple[World, int]:
    """The day's world with the champion texts appended to the pools, and the original pool size."""
    texts, blocked = _extend_texts(world, tables)
    T, width = world.config.texts_per_ad, blocked.shape[1]
    config = dataclasses.replace(world.config, texts_per_ad=width)
    score = np.zeros((world.n_ads, width))
    score[:, :T] = world.policy_text_score
    ext = dataclasses.replace(world, config=config, texts=texts, text_blocked=blocked, policy_text_score=score)
    ext.__dict__.update({k: world.__dict__[k] for k in _DRIFT_ATTRIBUTES if k in world.__dict__})
    ext.__dict__["_fingerprint"] = world.fingerprint()
    return ext, T


def _text_mixture(world: World, T: int, logging_probs: np.ndarray, tables: ServingTables):
    A, width, K = world.n_ads, world.config.texts_per_ad, world.config.keywords_per_product
    probs = np.zeros((A, width))
    probs[:, :T] = logging_probs
    servable = np.zeros((A, width), dtype=bool)
    servable[:, :T] = ~world.text_blocked[:, :T]
    explore = servable / servable.sum(axis=1, keepdims=True)
    rows, champion = np.repeat(probs, K, axis=0), np.zeros((A * K, width), dtype=bool)
    for (ad_id, keyword), texts in tables.text_pools.items():
        a = _ad(world, ad_id)
        keywords = world.products[world.ads[a]["product"]]["keywords"]
        if keyword not in keywords:
            raise DataError(f"serving tables: keyword {keyword!r} is not one of {ad_id}'s {keywords}")
        for text in texts:
            t = world.texts[a].index(text)
            champion[a * K + keywords.index(keyword), t] = not world.text_blocked[a, t]
    has = champion.any(axis=1)
    eps = np.repeat(world.ad_exploration, K)[:, None]
    mix = (1 - eps) * champion / np.maximum(champion.sum(axis=1, keepdims=True), 1) + eps * np.repeat(explore, K, axis=0)
    rows[has] = mix[has]
    return rows, champion


def _combo_mixture(world: World, logging_probs: np.ndarray, tables: ServingTables):
    A, C = logging_probs.shape
    champion = np.zeros((A, C), dtype=bool)
    for ad_id, combos in tables.combos.items():
        a = _ad(world, ad_id)
        for title_id, image_id, highlight_id in combos:
            try:
                parts = [world.parse_element_id(e, kind, a) for e, kind in
                         ((title_id, "title"), (image_id, "image"), (highlight_id, "highlight"))]
            except ValueError:  # retired (or not yet launched) on this day: the ad server skips it
                continue
            champion[a, int(combo_index(world, *parts))] = True
    eps = world.ad_exploration[:, None]
    mix = (1 - eps) * champion / np.maximum(champion.sum(axis=1, keepdims=True), 1) + eps / C
    probs = np.where(champion.any(axis=1, keepdims=True), mix, logging_probs)
    return probs, champion


def serve_champion(sim, tables: ServingTables):
    """`sim` (a writer.Simulation of one day) serving the champion's tables mixed with exploration."""
    world, T = extended_world(sim.world, tables)
    text_probs, text_champion = _text_mixture(world, T, sim.policy.text_probs, tables)
    combo_probs, combo_champion = _combo_mixture(world, sim.policy.combo_probs, tables)
    sim = dataclasses.replace(sim, world=world, tables=build_tables(world))
    sim.champion = ChampionMixture(text_probs, text_champion, combo_probs, combo_champion, tables.version)
    return sim
