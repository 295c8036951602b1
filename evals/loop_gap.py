"""Why the closed loop's champion gains only +10..+17% true search CTCVR over `logging` while the
offline evaluate stage's A/B says +50..+90%: the gap decomposed with the simulator's own truth.

    python -m evals.loop_gap [--run runs/loop_params] [--days 2026-01-10 2026-01-12] [--out metrics/loop_gap.json]

For each day it re-draws, in memory, exactly what each arm served that day (the simulator's own
traffic and serving draws: relate_sim.writer, keyed by (seed, day); checked against the day's truth
partition), then scores the served search texts with the truth with one effect switched off at a
time, and cumulatively, towards the offline evaluate stage's conditions:

- `noncompliant_zero`: a non-compliant text earns nothing (the oracle's rule; the simulator lets
  the ones the review missed earn clicks);
- `no_exploration`: the champion's 19% exploration impressions get one of the row's champion texts;
- `heldout_prompts`: only the (vertical, keyword) prompts held out of GRPO (evaluate's traffic);
- `no_user_history`: per-user repeat-exposure fatigue counts only the day's own showings;
- `no_user_fatigue`: no per-user repeat-exposure fatigue at all;
- `logging_phrase_market`: each arm scored on the logging arm's market, whose phrase shares the
  logging policy set (the market an offline evaluation scores the champion's pools on);
- `no_phrase_fatigue`: no phrase fatigue in either arm;
- `no_wear`: no text wear-out.

It also lists, per arm, the phrases with the largest smoothed share of served search impressions
going into the day and the click logit each loses, and the champion pools' phrase shares at
equilibrium. Reads the run folder, never writes there. It reads the simulator: an evaluation.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from plumbing.config import build_config
from plumbing.dates import day_bounds_ms
from relate_sim import grammar
from relate_sim.champion import serve_champion
from relate_sim.config import SimulateConfig
from relate_sim.drift import day_index, phrase_fatigue
from relate_sim.logging_policy import sample_traffic
from relate_sim.serving_tables import ServingTables
from relate_sim.truth import build_tables, fatigue_factor, search_logits_vec, sigmoid
from relate_sim.streams import stream_rng
from relate_sim.world import build_world
from relate_sim.writer import DAY_MS, ExposureCounter, serve_impressions, load_state, prepare

ARMS = ("logging", "daily_warm")


@dataclasses.dataclass
class Served:
    """One arm's search impressions of one day, as the simulator served them."""

    arm: str
    config: SimulateConfig
    base: object
    day: int
    tables: ServingTables | None
    sim: object  # the day's Simulation (champion mixture included)
    state: object  # writer.CarryState before the day
    ad: np.ndarray
    segment: np.ndarray
    position: np.ndarray
    keyword: np.ndarray
    modifier: np.ndarray
    user: np.ndarray
    chunk: np.ndarray
    creative: np.ndarray
    by_champion: np.ndarray
    sim_p_click: np.ndarray  # the day's truth partition (check)
    sim_p_conv: np.ndarray


def reproduce(arm_dir: Path, ds: str, tables: ServingTables | None = None) -> Served:
    """What the arm served on `ds`; with `tables`, what it would have served from those instead
    (the same traffic and draws; the truth-partition check then holds only for the arm's own)."""
    truth = arm_dir / "data" / "sim_truth"
    stored = json.loads((truth / "world.json").read_text())
    config = build_config(SimulateConfig, "simulate", stored["config"])
    base = build_world(config)
    day = day_index(config.start_date, ds)
    state = load_state(config, truth, day, base.fingerprint())
    records = json.loads((arm_dir / "loop" / "records.json").read_text())
    served_by = next(r.get("served_by") for r in records if r["ds"] == ds)
    if tables is None and served_by:
        tables = ServingTables.load(arm_dir / "registry" / served_by / "serving", served_by)
    sim = prepare(config, day, state.phrase_shares, base, state.first_served)
    if tables is not None:
        sim = serve_champion(sim, tables)
    n_chunks = max(1, int(np.ceil(config.impressions_per_day / config.chunk_size)))
    first_ms, _ = day_bounds_ms(config.start_date)
    sizes = np.diff(np.linspace(0, config.impressions_per_day, n_chunks + 1).round().astype(np.int64))
    cols = {k: [] for k in ("ad", "segment", "position", "keyword", "modifier", "user", "chunk", "creative",
                            "by_champion", "search")}
    for chunk, n in enumerate(sizes.tolist()):
        rng = stream_rng(config.seed, 2, day, chunk)
        traffic = sample_traffic(sim.world, rng, n, config.search_share)
        lo = first_ms + day * DAY_MS + chunk * DAY_MS // n_chunks
        hi = first_ms + day * DAY_MS + (chunk + 1) * DAY_MS // n_chunks
        rng.integers(lo, hi, size=n)  # the impressions' timestamps (writer._simulate_chunk draws them here)
        creative, _, by_champion = serve_impressions(sim, rng, traffic)
        for name in ("ad", "segment", "position", "keyword", "modifier", "user", "search"):
            cols[name].append(getattr(traffic, name))
        cols["chunk"].append(np.full(n, chunk))
        cols["creative"].append(creative)
        cols["by_champion"].append(by_champion)
    c = {k: np.concatenate(v) for k, v in cols.items()}
    s = c.pop("search")
    part = pq.read_table(truth / "impressions" / f"dt={ds}" / "part-00000.parquet").to_pandas()
    return Served(arm_dir.name, config, base, day, tables, sim, state, **{k: v[s] for k, v in c.items()},
                  sim_p_click=part["p_click"].to_numpy()[s], sim_p_conv=part["p_conv_given_click"].to_numpy()[s])


def market(rep: Served, shares: dict | None = None, first_served: dict | None = None):
    """The arm's day with other phrase shares or first-served memory; the served pools unchanged."""
    sim = prepare(rep.config, rep.day, rep.state.phrase_shares if shares is None else shares, rep.base,
                  rep.state.first_served if first_served is None else first_served)
    if rep.tables is not None:
        sim = serve_champion(sim, rep.tables)
    assert sim.world.texts == rep.sim.world.texts
    return sim


def market_at_equilibrium(rep: Served, ema: np.ndarray):
    """The arm's day with every phrase's smoothed share held at `ema` (the steady state of serving so every day)."""
    zero = {d: np.zeros(len(grammar.LEXICON)) for d in rep.state.phrase_shares}
    sim = prepare(rep.config, rep.day, zero, rep.base, rep.state.first_served)
    world = sim.world
    world.phrase_click = world.phrase_click - phrase_fatigue(rep.base, ema)
    world.__dict__["phrase_ema"] = np.asarray(ema, dtype=float)
    world.__dict__.pop("_text_cache", None)
    sim = dataclasses.replace(sim, tables=build_tables(world))
    if rep.tables is not None:
        sim = serve_champion(sim, rep.tables)
    assert sim.world.texts == rep.sim.world.texts
    return sim


def earlier_exposures(rep: Served, creative: np.ndarray, history: bool) -> np.ndarray:
    """Earlier showings of each impression's text signature to its user (with or without the days before)."""
    counter = ExposureCounter()
    if history:
        counter.keys, counter.counts = rep.state.exposures.keys.copy(), rep.state.exposures.counts.copy()
    sig = rep.sim.tables.text_signature[rep.ad, creative]
    keys = (sig.astype(np.uint64) ^ (rep.user.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))).view(np.int64)
    out = np.empty(len(keys), dtype=np.int64)
    for chunk in np.unique(rep.chunk):  # chunk by chunk, as the simulator counts
        rows = np.flatnonzero(rep.chunk == chunk)
        out[rows] = counter.count_and_update(keys[rows])
    return out


def true_ctcvr(rep: Served, sim, creative: np.ndarray, seen: np.ndarray | None, comply: bool) -> np.ndarray:
    click, conv = search_logits_vec(sim.world, sim.tables, rep.ad, rep.segment, rep.position, creative,
                                    rep.keyword, rep.modifier)
    p = sigmoid(click) * sigmoid(conv)
    if seen is not None:
        p = p * fatigue_factor(sim.world, seen)
    if comply:
        p = p * sim.tables.text_compliant[rep.ad, creative]
    return p


def champion_only(rep: Served) -> np.ndarray:
    """The served texts with every exploration impression of a champion row given a champion text instead."""
    creative = rep.creative.copy()
    if rep.sim.champion is None:
        return creative
    K = rep.config.keywords_per_product
    rows = rep.ad * K + rep.keyword
    champ = rep.sim.champion.text_champion
    rng = np.random.default_rng([rep.day, 7])
    for i in np.flatnonzero(~rep.by_champion & champ[rows].any(axis=1)):
        options = np.flatnonzero(champ[rows[i]])
        creative[i] = options[rng.integers(len(options))]
    return creative


def heldout_mask(rep: Served, prompts_path: Path) -> np.ndarray:
    held = {(r["vertical"], r["keyword"]) for r in map(json.loads, prompts_path.read_text().splitlines()) if r}
    w = rep.sim.world
    keys = [(w.verticals[w.products[w.ads[a]["product"]]["vertical"]], w.keyword_query(a, k, 0)[0])
            for a, k in zip(rep.ad.tolist(), rep.keyword.tolist())]
    return np.array([k in held for k in keys])


# ----------------------------------------------------------------------------- the ladder
def settings(rep: Served, logging_shares: dict, prompts_path: Path) -> dict:
    """Per setting name: the arm's (world, creative, history, user fatigue, comply, mask) knobs."""
    zero = {d: np.zeros(len(grammar.LEXICON)) for d in rep.state.phrase_shares}
    return {"zero": zero, "logging": logging_shares, "champion_only": champion_only(rep),
            "heldout": heldout_mask(rep, prompts_path)}


STEPS = ("as_measured", "noncompliant_zero", "no_exploration", "heldout_prompts", "no_user_history",
         "logging_phrase_market", "no_user_fatigue", "no_phrase_fatigue", "no_wear")
OFFLINE_LIKE = "logging_phrase_market"  # the cumulative step whose conditions are the evaluate stage's


def score_arm(rep: Served, logging_shares: dict, prompts_path: Path) -> dict[str, dict[str, float]]:
    """{'single': {step: mean}, 'cumulative': {step: mean}}: each effect off alone, and the ladder."""
    k = settings(rep, logging_shares, prompts_path)
    worlds = {"own": rep.sim, "zero": market(rep, k["zero"]), "logging": market(rep, logging_shares),
              "nowear": market(rep, None, {}), "zero_nowear": market(rep, k["zero"], {})}
    served, champ = rep.creative, k["champion_only"]
    seen = {(c, h): earlier_exposures(rep, cr, h) for c, cr in (("served", served), ("champ", champ))
            for h in (True, False)}
    all_rows = np.ones(len(served), dtype=bool)

    def run(world="own", creative="served", history=True, fatigue=True, comply=False, mask=all_rows):
        cr = served if creative == "served" else champ
        p = true_ctcvr(rep, worlds[world], cr, seen[(creative, history)] if fatigue else None, comply)
        return float(p[mask].mean())

    single = {"as_measured": run(), "noncompliant_zero": run(comply=True), "no_exploration": run(creative="champ"),
              "heldout_prompts": run(mask=k["heldout"]), "no_user_history": run(history=False),
              "no_user_fatigue": run(fatigue=False), "logging_phrase_market": run(world="logging"),
              "no_phrase_fatigue": run(world="zero"), "no_wear": run(world="nowear")}
    h = k["heldout"]
    cumulative = {"as_measured": single["as_measured"], "noncompliant_zero": single["noncompliant_zero"],
                  "no_exploration": run(creative="champ", comply=True),
                  "heldout_prompts": run(creative="champ", comply=True, mask=h),
                  "no_user_history": run(creative="champ", comply=True, mask=h, history=False),
                  # the offline evaluate stage's conditions end here; the steps below go past them
                  "logging_phrase_market": run("logging", "champ", comply=True, mask=h, history=False),
                  "no_user_fatigue": run("logging", "champ", comply=True, mask=h, fatigue=False),
                  "no_phrase_fatigue": run("zero", "champ", comply=True, mask=h, fatigue=False),
                  "no_wear": run("zero_nowear", "champ", comply=True, mask=h, fatigue=False)}
    eq_ema = served_shares(rep, served)
    eq = {"served_shares_max": float(eq_ema.max()),
          "as_served": run(),
          "at_equilibrium": float(true_ctcvr(rep, market_at_equilibrium(rep, eq_ema), served,
                                             seen[("served", True)], False).mean()),
          "no_phrase_fatigue": single["no_phrase_fatigue"]}
    check = float(np.abs(rep.sim_p_click * rep.sim_p_conv - true_ctcvr(rep, rep.sim, served, seen[("served", True)],
                                                                        False)).max())
    return {"single": single, "cumulative": cumulative, "phrase_equilibrium": eq, "max_abs_diff_vs_truth_partition": check,
            "impressions": int(len(served)), "heldout_impressions": int(h.sum()),
            "champion_share": float(rep.by_champion.mean()),
            "repeat_share": float((seen[("served", True)] > 0).mean()),
            "distinct_signatures": int(len(np.unique(rep.sim.tables.text_signature[rep.ad, served])))}


# ----------------------------------------------------------------------------- phrases
def served_shares(rep: Served, creative: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Share of the impressions (rows) whose served text uses each lexicon phrase."""
    rows = np.ones(len(creative), dtype=bool) if rows is None else rows
    T = rep.sim.world.config.texts_per_ad
    counts = np.bincount(rep.ad[rows] * T + creative[rows], minlength=rep.sim.world.n_ads * T)
    incidence = np.zeros((len(counts), len(grammar.LEXICON)))
    for i in np.flatnonzero(counts):
        a, t = divmod(int(i), T)
        incidence[i, list(grammar.analyze_text(rep.sim.world.texts[a][t], rep.config.text_max_chars).phrase_ids)] = 1
    return counts @ incidence / max(rows.sum(), 1)


def phrase_table(rep: Served, top: int = 8) -> list[dict]:
    ema = rep.sim.world.phrase_ema
    today = served_shares(rep, rep.creative)
    loss = phrase_fatigue(rep.base, ema)
    order = np.argsort(-np.maximum(ema, today))[:top]
    return [{"phrase": grammar.LEXICON[i][0], "slot": grammar.LEXICON[i][1], "ema_share": float(ema[i]),
             "served_share_today": float(today[i]), "fatigue_logit": float(loss[i])} for i in order]


def restate_offline(run: Path, ds: str, prompts: Path, evaluate_json: Path) -> dict:
    """An offline uplift over `logged` (non-compliant logged texts earn nothing) restated with the logged texts
    earning what they earn in the market: the logging arm of day `ds` (the default run's market on its eval day)
    scored both ways, on the held-out prompts of `prompts`. The policy's texts are taken as compliant."""
    rep = reproduce(run / "logging", ds)
    seen = earlier_exposures(rep, rep.creative, True)
    held = heldout_mask(rep, prompts)
    earn = true_ctcvr(rep, rep.sim, rep.creative, seen, False)[held].mean()
    zero = true_ctcvr(rep, rep.sim, rep.creative, seen, True)[held].mean()
    ev = json.loads(evaluate_json.read_text())
    offline = ev["relate"]["true_ctcvr_uplift_vs_logged"]
    comp = 1 - float(rep.sim.tables.text_compliant[rep.ad, rep.creative][held].mean())
    return {"ds": ds, "evaluate_json": str(evaluate_json), "eval_day": ev.get("eval_day"),
            "offline_uplift_vs_logged": offline, "relate_compliance": ev["relate"].get("compliance_rate"),
            "logged_noncompliant_share_offline": 1 - ev["logged"].get("compliance_rate", 1.0),
            "logging_noncompliant_share_served": comp, "logging_ctcvr_noncompliant_earning": float(earn),
            "logging_ctcvr_noncompliant_zero": float(zero),
            "offline_uplift_restated": float((1 + offline) * zero / earn - 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=Path("runs/loop_params"))
    ap.add_argument("--days", nargs="+", default=["2026-01-10", "2026-01-12"])
    ap.add_argument("--main-day", default="2026-01-14", help="eval day of --main-evaluate (its market = the "
                    "logging arm's on that day)")
    ap.add_argument("--main-evaluate", type=Path, default=Path("metrics/evaluate.json"))
    ap.add_argument("--main-prompts", type=Path, default=Path("data/prompts/eval.jsonl"))
    ap.add_argument("--out", type=Path, default=Path("metrics/loop_gap.json"))
    args = ap.parse_args(argv)
    prompts = args.run / "daily_warm" / "data" / "prompts" / "eval.jsonl"
    out = {"run": str(args.run), "days": {}}
    for ds in args.days:
        reps = {arm: reproduce(args.run / arm, ds) for arm in ARMS}
        logging_shares = reps["logging"].state.phrase_shares
        res = {arm: score_arm(rep, logging_shares, prompts) for arm, rep in reps.items()}
        day = {"arms": res, "phrases": {arm: phrase_table(rep) for arm, rep in reps.items()}}
        for kind in ("single", "cumulative"):
            day[f"uplift_{kind}"] = {s: res["daily_warm"][kind][s] / res["logging"][kind][s] - 1 for s in STEPS}
        out["days"][ds] = day
        print_day(ds, day)
    if args.main_evaluate.is_file() and args.main_prompts.is_file():
        r = out["offline_restated"] = restate_offline(args.run, args.main_day, args.main_prompts, args.main_evaluate)
        print(f"\n== {args.main_evaluate} (eval day {r['eval_day']}): relate +{r['offline_uplift_vs_logged']:.1%} over "
              f"`logged` with non-compliant logged texts ({r['logged_noncompliant_share_offline']:.1%}) earning 0; "
              f"the logging policy on {r['ds']} serves {r['logging_noncompliant_share_served']:.1%} non-compliant "
              f"texts, CTCVR {r['logging_ctcvr_noncompliant_earning']:.5f} as they earn vs "
              f"{r['logging_ctcvr_noncompliant_zero']:.5f} zeroed: restated {r['offline_uplift_restated']:+.1%}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"-> {args.out}")
    return 0


def print_day(ds: str, day: dict) -> None:
    res = day["arms"]
    print(f"\n== {ds}: search impressions {res['logging']['impressions']} (held-out prompts "
          f"{res['logging']['heldout_impressions']}); champion share {res['daily_warm']['champion_share']:.3f}; "
          f"check vs truth partition {max(r['max_abs_diff_vs_truth_partition'] for r in res.values()):.1e}")
    print(f"{'step':24s} | {'single: champ':>13s} {'logging':>9s} {'uplift':>8s} | "
          f"{'cumul: champ':>12s} {'logging':>9s} {'uplift':>8s}")
    for s in STEPS:
        if s == "no_user_fatigue":
            print(f"{'-- past offline conditions':24s} |")
        a, b = res["daily_warm"], res["logging"]
        print(f"{s:24s} | {a['single'][s]:13.5f} {b['single'][s]:9.5f} {day['uplift_single'][s]:+8.1%} | "
              f"{a['cumulative'][s]:12.5f} {b['cumulative'][s]:9.5f} {day['uplift_cumulative'][s]:+8.1%}")
    for arm in ARMS:
        e = res[arm]["phrase_equilibrium"]
        print(f"  {arm}: phrase shares held at today's served shares (max {e['served_shares_max']:.3f}): "
              f"{e['at_equilibrium']:.5f} vs {e['no_phrase_fatigue']:.5f} without phrase fatigue "
              f"({e['at_equilibrium'] / e['no_phrase_fatigue'] - 1:+.2%}); as served today {e['as_served']:.5f}")
    for arm, rows in day["phrases"].items():
        print(f"  {arm}: repeat share {res[arm]['repeat_share']:.3f}, distinct signatures "
              f"{res[arm]['distinct_signatures']}; top phrases (ema share, today, fatigue logit):")
        for r in rows:
            print(f"    {r['phrase']:24s} {r['slot']:8s} {r['ema_share']:.3f} {r['served_share_today']:.3f} "
                  f"{-r['fatigue_logit']:+.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
