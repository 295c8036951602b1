"""evals/loop_gap.py re-draws a loop day's served search impressions exactly, and scores them with effects off."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from evals import loop_gap
from plumbing.dates import shift_ds
from plumbing.serving_schema import COMBO_SCHEMA, COMBOS_FILE, TEXT_POOL_SCHEMA, TEXT_POOLS_FILE
from relate_sim.writer import simulate
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
