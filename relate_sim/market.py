"""The market as of a day: `market_as_of(base, day, phrase_shares, first_served)` (relate_sim/drift.py
describes the effects and holds their pure parts; docs/simulator.md their sizes)."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np

from relate_sim import grammar
from relate_sim.drift import (KINDS, banned_phrase_ids, in_season, lifecycle, phrase_fatigue, random_walk,
                              smoothed_phrase_share, wear)
from relate_sim.world import World, draw_new_element, pair_images
from relate_sim.streams import stream_rng

_STREAM_ELEMENT, _STREAM_REVIEW = 41, 43


def market_as_of(base: World, day: int, phrase_shares: dict[int, np.ndarray] | None = None,
                 first_served: dict[int, int] | None = None):
    """The world on `day` (0 = start_date). Day 0 (or drift off) returns `base` itself.

    first_served: {text_key(ad, signature): first day served} of the days before `day`
    (search text wear-out); None = no text served before."""
    if day < 0:
        raise ValueError(f"day must be >= 0 (the world starts on its start_date), got {day}")
    if day == 0 or not base.config.drift.enabled:
        return base
    world = dataclasses.replace(base, products=copy.deepcopy(base.products), texts=[list(t) for t in base.texts],
                                titles=[list(t) for t in base.titles], highlights=[list(h) for h in base.highlights])
    for field in dataclasses.fields(world):
        value = getattr(world, field.name)
        if isinstance(value, np.ndarray):
            setattr(world, field.name, value.copy())
    gen, launch = lifecycle(base, day)
    _apply_lifecycle(world, base, day, gen, launch)
    _apply_walks(world, base, day)
    banned = banned_phrase_ids(base, day)
    _rereview(world, base, day, banned)
    ema = smoothed_phrase_share(base, day, phrase_shares or {})
    world.phrase_click = world.phrase_click - phrase_fatigue(base, ema)
    # a day's world is known by its base world (and the day): world.json's fingerprint
    world.__dict__.update(day=day, generations=gen, launch_days=launch, banned_phrases=banned, phrase_ema=ema,
                          text_first_served=dict(first_served or {}), _fingerprint=base.fingerprint())
    return world


def _apply_walks(world, base, day: int) -> None:
    walk = random_walk(base, day)
    season = world.config.drift.season_conv_logit if in_season(base, day) else 0.0
    season_v = {world.verticals.index(v) for v in world.config.drift.season_verticals if v in world.verticals}
    for j, product in enumerate(world.products):
        product["appeal_click"] = float(product["appeal_click"] + walk["appeal_click"][j])
        product["appeal_conv"] = float(product["appeal_conv"] + walk["appeal_conv"][j]
                                       + (season if product["vertical"] in season_v else 0.0))
    for name in ("segment_vertical_click", "phrase_segment_click", "segment_image_preference"):
        setattr(world, name, getattr(world, name) + walk[name])


def _apply_lifecycle(world, base, day: int, gen: dict, launch: dict) -> None:
    """Put every slot's live generation in place, then wear feed titles and images by age."""
    cfg, drift = world.config, world.config.drift
    for kind in KINDS:
        for a, k in zip(*np.nonzero(gen[kind])):
            rng = stream_rng(cfg.seed, _STREAM_ELEMENT, KINDS.index(kind), int(a), int(k), int(gen[kind][a, k]))
            draw_new_element(rng, world, kind, int(a), int(k), banned_phrase_ids(base, day))
    for kind, utility in (("title", world.title_utility), ("image", world.image_utility)):
        utility -= wear(drift, day - launch[kind])
    world.policy_pair_image = pair_images(world.title_utility, world.image_utility)


def _rereview(world, base, day: int, banned: frozenset[int]) -> None:
    """On and after the rule date the review blocks live texts using a banned phrase (at its catch rate)."""
    if not banned:
        return
    cfg = world.config
    rng = stream_rng(cfg.seed, _STREAM_REVIEW)
    catch = rng.random(world.text_blocked.shape) < cfg.review_catch_rate
    for a, pool in enumerate(world.texts):
        for t, text in enumerate(pool):
            if catch[a, t] and set(grammar.analyze_text(text, cfg.text_max_chars).phrase_ids) & banned:
                world.text_blocked[a, t] = True
        if world.text_blocked[a].all():  # keep the ad servable
            world.text_blocked[a, 0] = False
