"""How close to the oracle's best combination any generator can get from the logs the run holds.

    python -m evals.generator_ceiling [--params params.yaml] [--replicates 3] [--out metrics/generator_ceiling.json]

The combination generator's goal is a ratio to the oracle's best true CTR. Its reward model only
sees clicks, so the ratio is capped by what the clicks can tell. This scores, in the evaluate
stage's simulated A/B (the combo eval's traffic on its day), arms that pick each ad's combination
by the argmax of a score:

- `true_element_utility`: the true element utilities summed, a perfect element ranker; below 1
  because the oracle's combinations interact beyond their elements (title x image latents, the
  segments' image tastes).
- `content_prior_ceiling_<k>`: the estimator behind `content_ceiling.warm` in
  metrics/attribution.json: a MAP fit given the true content function and the true residual sd, on
  clicks redrawn from the true CTRs of the window's logged impressions. An element with no rows
  gets its true content utility, the best any model can know of it. Additive, as the elements are.
- `content_pair_ceiling_<k>`: the same fit with one effect per logged (title, image) pair too,
  ~ N(0, the true sd of the pairs' interactions): the ceiling of a model shaped like the MIL's
  (element effects plus pair effects), given the true priors.
- `true_element_pair_ceiling_<k>`: the elements pinned to their true utilities, the pairs fitted
  as above: what the clicks can tell about interactions when everything else is known.

One arm of each fitted kind per replicate (`<k>`), each on its own redrawn clicks, beside the run's own generator top-1 (models/combo_policy/serving.parquet) and the oracle's best.
Reads the simulator's truth: an evaluation, never a stage. Run it in the workdir of a finished
default run (`dvc repro`), from the repository root.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from pipelines import evaluate_attribution as ea
from pipelines import evaluate_combo as ec
from plumbing import atomic
from plumbing.config import load_config
from plumbing.dates import shift_ds
from relate_models import attribution as attr


def by_element(rows: list[dict], field: str) -> dict:
    """(ad_id, slot, element_id) -> `field` of the oracle's element_utilities rows."""
    return {(r["ad_id"], r["element_type"], r["element_id"]): r[field] for r in rows}


def argmax_choices(oracle, score: dict) -> dict[str, tuple]:
    """ad -> the combination of its live elements with the highest score in each slot (ties: lowest id)."""
    out = {}
    for ad in oracle.ad_ids:
        info = oracle.ad_info(ad)
        out[ad] = tuple(max(sorted(info[f"{s}_ids"]), key=lambda e, s=s: score[(ad, s, e)]) for s in attr.SLOTS)
    return out


def pair_interactions(oracle) -> dict:
    """(ad, title, image) -> the true logit interaction of the pair, averaged over highlights, centred
    within the ad: the oracle's combination CTRs beyond the sum of the element utilities."""
    w, out = oracle.world, {}
    for ad in oracle.ad_ids:
        a = w.ad_index(ad)
        ctr = oracle._combo_ctr_table(a)
        logit = np.log(ctr) - np.log1p(-ctr)
        resid = (logit - w.title_utility[a][:, None, None] - w.image_utility[a][None, :, None]
                 - w.highlight_utility[a][None, None, :]).mean(axis=2)
        resid -= resid.mean()
        info = oracle.ad_info(ad)
        out.update({(ad, t, i): resid[k, j] for k, t in enumerate(info["title_ids"])
                    for j, i in enumerate(info["image_ids"])})
    return out


def pair_prior_scores(problem: dict, prior: dict, pair_sd: float, rng: np.random.Generator) -> dict:
    """One replicate of a ceiling with pair effects: clicks redrawn from the true CTRs, then a MAP fit of the
    window's elements, each ~ N(prior[element]) as (mean, sd), and of each logged (title, image) pair's
    effect ~ N(0, pair_sd^2). {("el", ad, slot, id) or ("pair", ad, title, image): estimate}."""
    elements = problem["elements"]
    row_pairs = [(elements[t][0], elements[t][2], elements[i][2]) for t, i in problem["index"][:, 1:3]]
    pairs = sorted(set(row_pairs))
    keys = [("el", *e) for e in elements] + [("pair", *p) for p in pairs]
    pair_pos = {p: len(elements) + j for j, p in enumerate(pairs)}
    index = np.column_stack([problem["index"], [pair_pos[p] for p in row_pairs]])
    mean = np.array([prior[k[1:]][0] for k in keys[:len(elements)]] + [0.0] * len(pairs))
    sd = np.array([prior[k[1:]][1] for k in keys[:len(elements)]] + [pair_sd] * len(pairs))
    y = rng.binomial(problem["n"].astype(np.int64), problem["p_true"]).astype(np.float64)
    return dict(zip(keys, ea.fit_content_prior_glm(index, problem["n"], y, problem["n_ads"], mean, sd)))


def pair_argmax_choices(oracle, est: dict, fallback: dict) -> dict[str, tuple]:
    """ad -> its live combination with the highest score under `est`; an element the fit lacks scores
    `fallback[(ad, slot, id)]`, a pair it lacks 0."""
    out = {}
    for ad in oracle.ad_ids:
        info = oracle.ad_info(ad)
        score = {s: {e: est.get(("el", ad, s, e), fallback[(ad, s, e)]) for e in info[f"{s}_ids"]} for s in attr.SLOTS}
        pair = {(t, i): score["title"][t] + score["image"][i] + est.get(("pair", ad, t, i), 0.0)
                for t in info["title_ids"] for i in info["image_ids"]}
        out[ad] = (*max(sorted(pair), key=pair.get), max(sorted(score["highlight"]), key=score["highlight"].get))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--replicates", type=int, default=3)
    ap.add_argument("--day", default=None, help="the combo eval's day (default: the day after the window)")
    ap.add_argument("--out", type=Path, default=Path("metrics/generator_ceiling.json"))
    args = ap.parse_args(argv)
    out = generator_ceiling(args.params, args.replicates, args.day)
    atomic.write_json(args.out, out)
    for name, arm in out["arms"].items():
        print(f"{name:28s} true CTR {arm['expected_ctr']:.5f}  ratio to oracle best {arm['ratio_to_oracle']:.3f}")
    return 0


def generator_ceiling(params: Path, replicates: int, day: str | None) -> dict:
    """The arms' expected true CTR and ratio to the oracle's best on the combo eval's day."""
    acfg = load_config(ea.EvaluateAttributionConfig, "evaluate_attribution", params)
    ccfg = load_config(ec.EvaluateComboConfig, "evaluate_combo", params)
    scorer = attr.AttributionScorer.load(ea.MODEL_DIR)
    window = ea.window_day(scorer)
    truth, then = ea.true_utilities(window)
    problem = ea.content_prior_problem(then, truth, ea.window_rows(scorer))
    day = day or shift_ds(window, 1)
    oracle, live, rows = ec.market(scorer, day)
    then_rows, now_rows = then.element_utilities(), oracle.element_utilities()
    utility, content = ({**by_element(then_rows, f), **by_element(now_rows, f)} for f in ("utility", "content_utility"))
    pair_sd = float(np.std(list(pair_interactions(oracle).values())))
    arms = {"generator_top1": ec.top1_choices(ec.load_serving()),
            "oracle_best": ec.oracle_best_choices({ad: oracle.oracle_best_combo(ad) for ad in oracle.ad_ids}),
            "true_element_utility": argmax_choices(oracle, utility)}
    content_prior = {e: (m, sd) for e, m, sd in zip(problem["elements"], problem["prior_mean"], problem["prior_sd"])}
    pinned = {e: (utility.get(e, 0.0), 1e-3) for e in problem["elements"]}  # 0: retired before the window's end
    rng = np.random.default_rng(acfg.seed)
    for k in range(replicates):
        est = ea.content_prior_estimates(problem, rng)
        score = dict(content)  # an element without rows: its true content utility
        score.update(dict(zip(map(tuple, est[ea.KEYS].itertuples(index=False)), est["estimate"])))
        arms[f"content_prior_ceiling_{k}"] = argmax_choices(oracle, score)
        arms[f"content_pair_ceiling_{k}"] = pair_argmax_choices(
            oracle, pair_prior_scores(problem, content_prior, pair_sd, rng), content)
        arms[f"true_element_pair_ceiling_{k}"] = pair_argmax_choices(
            oracle, pair_prior_scores(problem, pinned, pair_sd, rng), utility)
    results = {name: ec.ab_test(ccfg, oracle, rows, ec.live_choices(c, live)) for name, c in arms.items()}
    best = results["oracle_best"].expected_ctr
    return {"day": day, "window_day": window, "n_impressions_per_arm": ccfg.n_impressions, "pair_sd": pair_sd,
            "arms": {name: {"expected_ctr": r.expected_ctr, "ratio_to_oracle": r.expected_ctr / best}
                     for name, r in results.items()}}


if __name__ == "__main__":
    sys.exit(main())
