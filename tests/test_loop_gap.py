"""evals/loop_gap.py re-draws a loop day's served search impressions exactly, and scores them with effects off."""
from __future__ import annotations

import json

import numpy as np
import pytest
import pyarrow as pa
import pyarrow.parquet as pq

from evals import loop_gap
from plumbing.dates import shift_ds
from plumbing.serving_schema import COMBO_SCHEMA, COMBOS_FILE, TEXT_POOL_SCHEMA, TEXT_POOLS_FILE
from relate_sim.writer import simulate
from tests.conftest import ROOT
from tests.test_drift import champion_tables, config


def _arm(root, cfg, tables, served_by):
    """A loop arm's folder: truth of 3 days, day 2 served by `tables` (when given), records.json, registry."""
    simulate(cfg, root / "data" / "raw", root / "data" / "sim_truth", days=[0, 1])
    simulate(cfg, root / "data" / "raw", root / "data" / "sim_truth", days=[2], serving=tables)
    if tables is not None:
        folder = root / "registry" / served_by / "serving"
        folder.mkdir(parents=True)
        pools = [{"ad_id": a, "keyword": k, "text": t, "score": 0.5, "rank": r + 1}
                 for (a, k), texts in tables.text_pools.items() for r, t in enumerate(texts)]
        combos = [{"ad_id": a, "rank": r + 1, "title_id": c[0], "image_id": c[1], "highlight_id": c[2], "score": 1.0}
                  for a, cs in tables.combos.items() for r, c in enumerate(cs)]
        pq.write_table(pa.Table.from_pylist(pools, schema=TEXT_POOL_SCHEMA), folder / TEXT_POOLS_FILE)
        pq.write_table(pa.Table.from_pylist(combos, schema=COMBO_SCHEMA), folder / COMBOS_FILE)
    (root / "loop").mkdir()
    (root / "loop" / "records.json").write_text(json.dumps(
        [{"ds": shift_ds(cfg.start_date, d), "served_by": served_by if d == 2 else None} for d in range(3)]))


def test_a_served_day_is_redrawn_exactly_and_scored_with_effects_off(tmp_path):
    cfg = config()
    tables = champion_tables(cfg)
    _arm(tmp_path / "logging", cfg, None, None)
    _arm(tmp_path / "daily_warm", cfg, tables, "v-test")
    ds = shift_ds(cfg.start_date, 2)
    reps = {arm: loop_gap.reproduce(tmp_path / arm, ds) for arm in loop_gap.ARMS}
    champ = reps["daily_warm"]
    assert champ.by_champion.any() and not reps["logging"].by_champion.any()
    prompts = tmp_path / "eval.jsonl"
    w = champ.sim.world
    vertical = w.verticals[w.products[w.ads[0]["product"]]["vertical"]]
    prompts.write_text(json.dumps({"vertical": vertical, "keyword": w.products[w.ads[0]["product"]]["keywords"][0]}))
    for arm, rep in reps.items():
        res = loop_gap.score_arm(rep, reps["logging"].state.phrase_shares, prompts)
        assert res["max_abs_diff_vs_truth_partition"] < 1e-12, arm  # the day's truth partition, redrawn
        assert res["single"]["no_user_fatigue"] >= res["single"]["as_measured"]
        assert res["single"]["noncompliant_zero"] <= res["single"]["as_measured"]
        assert 0 < res["heldout_impressions"] < res["impressions"]
    only = loop_gap.champion_only(champ)
    K = cfg.keywords_per_product
    rows = champ.ad * K + champ.keyword
    has = champ.sim.champion.text_champion[rows].any(axis=1)
    assert champ.sim.champion.text_champion[rows[has], only[has]].all()  # exploration replaced by champion texts
    assert np.array_equal(only[~has], champ.creative[~has])


def test_other_tables_serve_the_day_s_traffic_and_score_at_their_equilibrium(tmp_path):
    from evals import serving_counterfactual

    cfg = config()
    tables = champion_tables(cfg)
    _arm(tmp_path / "daily_warm", cfg, tables, "v-test")
    ds = shift_ds(cfg.start_date, 2)
    champ = loop_gap.reproduce(tmp_path / "daily_warm", ds)
    again = loop_gap.reproduce(tmp_path / "daily_warm", ds, tables)  # the counterfactual's swap, same tables
    assert np.array_equal(again.creative, champ.creative) and np.array_equal(again.user, champ.user)
    res = serving_counterfactual.score(champ)
    assert 0 < res["top_phrase_share"] <= 1 and res["distinct_texts"] > 1
    assert res["as_served"] > 0 and res["at_equilibrium"] > 0


def test_a_variant_overrides_nested_params_and_names_a_bad_key(tmp_path):
    from evals.serving_counterfactual import parse_variant, variant_params
    from plumbing.config import load_params

    assert parse_variant("serving.pool_ctcvr_weight=2,grpo.rewards.diversity=0.5") == \
        {"serving.pool_ctcvr_weight": 2, "grpo.rewards.diversity": 0.5}
    with pytest.raises(SystemExit, match="section.key=value"):
        parse_variant("pool_ctcvr_weight=2")
    (tmp_path / "params.yaml").write_text(f"extends: {ROOT / 'params.yaml'}\n")
    params = variant_params(tmp_path, {"grpo.rewards.diversity": 0.5}, retrain=True)
    assert params["grpo"]["rewards"]["diversity"] == 0.5 and params["training"]["mode"] == "full"
    assert params["grpo"]["rewards"]["ctcvr"] == load_params(ROOT / "params.yaml")["grpo"]["rewards"]["ctcvr"]
    with pytest.raises(SystemExit, match="nope"):
        variant_params(tmp_path, {"nope.key": 1}, retrain=False)
