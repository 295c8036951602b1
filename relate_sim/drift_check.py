"""The sizes of the drift effects, measured with the oracle on sampled contexts (no pipeline run).

    python -m relate_sim.drift_check [--params params.yaml] [--seed WORLD_SEED] [--contexts 4000]

Prints one JSON object: per effect its measured size between day 0 (or the freeze day) and
the evaluation day, and `frozen_champion`: the true CTCVR of a champion frozen after the
first week (each ad's best live pool texts as of `freeze_day`, served unchanged) on the same
search contexts at `freeze_day` and at `eval_day`, with the paired 95% CI of the change.
Phrase fatigue is fed the champion's own served phrase shares from the freeze day on and the
logging policy's expected shares before it (docs/simulator.md).
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from plumbing.config import build_config, load_params
from relate_sim import drift, grammar
from relate_sim.config import SimulateConfig
from relate_sim.logging_policy import build_policy
from relate_sim.market import market_as_of
from relate_sim.oracle import Oracle
from relate_sim.truth import build_tables
from relate_sim.world import build_world


def logging_phrase_shares(oracle: Oracle, contexts: list[dict]) -> np.ndarray:
    """Expected share of the logging policy's served search impressions using each phrase (day-0 market)."""
    world = oracle.world
    policy = build_policy(world, build_tables(world))
    ads = np.array([world.ad_index(c["ad_id"]) for c in contexts])
    incidence = np.zeros((world.n_ads, world.config.texts_per_ad, len(grammar.LEXICON)))
    for a, pool in enumerate(world.texts):
        for t, text in enumerate(pool):
            incidence[a, t, list(grammar.analyze_text(text, world.config.text_max_chars).phrase_ids)] = 1.0
    per_ad = np.einsum("at,atp->ap", policy.text_probs, incidence)
    return per_ad[ads].mean(axis=0)


def _ctcvr(oracle: Oracle, context: dict, text: str) -> float:
    p_click, p_conv, _ = oracle.true_text_probs(context, text)
    return p_click * p_conv


def frozen_champion_texts(oracle: Oracle, per_ad: int, seed: int, probe_contexts: int = 3000) -> dict[str, list[str]]:
    """Each ad's `per_ad` best live, unblocked pool texts by mean true CTCVR over probe contexts of the ad."""
    world = oracle.world
    probes: dict[str, list[dict]] = {}
    for ctx in oracle.sample_contexts(probe_contexts, seed + 1, "search"):
        probes.setdefault(ctx["ad_id"], []).append(ctx)
    chosen = {}
    for ad_id, ctxs in probes.items():
        a = world.ad_index(ad_id)
        pool = [t for k, t in enumerate(world.texts[a]) if not world.text_blocked[a, k]]
        scores = [np.mean([_ctcvr(oracle, c, t) for c in ctxs[:30]]) for t in pool]
        chosen[ad_id] = [pool[i] for i in np.argsort(scores)[::-1][:per_ad]]
    return chosen


def frozen_champion_loss(config: SimulateConfig, n_contexts: int = 4000, freeze_day: int = 7, eval_day: int = 20,
                         per_ad: int = 2, seed: int = 20260601) -> dict:
    """True CTCVR of a champion frozen on `freeze_day`, at that day and at `eval_day` (same contexts)."""
    base = Oracle(build_world(config))
    contexts = base.sample_contexts(n_contexts, seed, "search")
    before = logging_phrase_shares(base, contexts)
    shares = {d: before for d in range(freeze_day)}
    _, launch = drift.lifecycle(base.world, eval_day)
    pool_first = {}  # the logging policy served every pool text from its launch day on
    for d in range(eval_day + 1):
        day_world = base.as_of(d, {k: before for k in range(d)}).world
        for a, pool in enumerate(day_world.texts):
            for t, text in enumerate(pool):
                sig = grammar.analyze_text(text, config.text_max_chars).signature
                pool_first.setdefault(drift.text_key(a, sig), d)
    first = {k: d for k, d in pool_first.items() if d < freeze_day}
    frozen_oracle = base.as_of(freeze_day, shares, first)
    champion = frozen_champion_texts(frozen_oracle, per_ad, seed)
    served = [champion[c["ad_id"]][i % len(champion[c["ad_id"]])] for i, c in enumerate(contexts)]
    champion_shares = drift.served_phrase_shares(served, config.text_max_chars)
    shares.update({d: champion_shares for d in range(freeze_day, eval_day)})
    late_oracle = base.as_of(eval_day, shares, {k: d for k, d in pool_first.items() if d < eval_day})
    early = np.array([_ctcvr(frozen_oracle, c, t) for c, t in zip(contexts, served)])
    late = np.array([_ctcvr(late_oracle, c, t) for c, t in zip(contexts, served)])
    diff = late - early
    se = diff.std(ddof=1) / np.sqrt(len(diff))
    change = diff.mean() / early.mean()
    return {"freeze_day": freeze_day, "eval_day": eval_day, "contexts": n_contexts,
            "true_ctcvr_freeze_day": float(early.mean()), "true_ctcvr_eval_day": float(late.mean()),
            "relative_change": float(change),
            "relative_change_ci95": [float((diff.mean() - 1.96 * se) / early.mean()),
                                     float((diff.mean() + 1.96 * se) / early.mean())],
            "noncompliant_share_eval_day": float(np.mean(
                [not late_oracle.true_text_probs(c, t)[2] for c, t in zip(contexts, served)])),
            "max_champion_phrase_share": float(champion_shares.max())}


def effect_sizes(config: SimulateConfig, eval_day: int = 20) -> dict:
    """Each effect on its own scale, day 0 -> `eval_day` (phrase fatigue: zero shares, see frozen_champion)."""
    base = build_world(config)
    zeros = {d: np.zeros(len(grammar.LEXICON)) for d in range(eval_day)}
    late = market_as_of(base, eval_day, zeros)
    gen, _ = drift.lifecycle(base, eval_day)
    d = config.drift
    full = d.phrase_fatigue_logit
    ema_at_half = 0.5 * (1 - 0.5 ** (14 / d.phrase_fatigue_half_life_days))
    return {
        "eval_day": eval_day,
        "replaced_share_by_kind": {k: float((g > 0).mean()) for k, g in gen.items()},
        "appeal_click_change_sd": float(np.std([b["appeal_click"] - a["appeal_click"]
                                                for a, b in zip(base.products, late.products)])),
        "segment_vertical_click_change_sd": float(np.std(late.segment_vertical_click - base.segment_vertical_click)),
        "season_conv_logit": d.season_conv_logit,
        "mean_title_wear_logit_gen0": float(d.wear_out_logit * (1 - np.exp(-eval_day / d.wear_out_days))),
        "phrase_fatigue_logit_after_14_days_at_half_share": float(
            full * max(0.0, ema_at_half - d.phrase_fatigue_free_share) / (1 - d.phrase_fatigue_free_share)),
        "pool_texts_using_banned_phrase": float(np.mean([
            bool(set(grammar.analyze_text(t, config.text_max_chars).phrase_ids) & drift.banned_phrase_ids(base, eval_day))
            for pool in late.texts for t in pool])),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m relate_sim.drift_check", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=None)
    parser.add_argument("--seed", type=int, default=None, help="world seed (default: simulate.seed)")
    parser.add_argument("--contexts", type=int, default=4000)
    args = parser.parse_args(argv)
    values = dict(load_params(args.params)["simulate"])
    if args.seed is not None:
        values["seed"] = args.seed
    config = build_config(SimulateConfig, "simulate", values)
    out = {"seed": config.seed, "effects": effect_sizes(config),
           "frozen_champion": frozen_champion_loss(config, args.contexts)}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
