"""The evaluate stage: the simulated A/B harness, its intervals, and a tiny end-to-end run.

The end-to-end fixture builds the tiny upstream once for the module with the real stages
(simulate, train_ctcvr, sft, grpo with 3 steps) except two clearly named fakes:
- `curated_without_spark`: labeled_impressions and text_stats built with pandas from the raw
  logs instead of the Spark ingest (Spark start-up alone would blow this file's time budget;
  ingest has its own tests);
- `fake_evaluate_combos`: the GenCO combination evaluation (another stage's artifacts), replaced
  by a stub module so this file tests only what evaluate itself does with its result;
- serving_tables runs with an empty combination table (`no_combos`: combo_policy is GenCO's),
  so that models/serving/prompt_pools.parquet, which evaluate's `relate` arm serves, is the real one.
"""
from __future__ import annotations

import gzip
import json
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from plumbing.config import build_config, load_config
from relate_sim.config import SimulateConfig
from relate_sim.oracle import Oracle
from relate_sim.world import build_world
from tests.conftest import TINY_PARAMS

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def oracle() -> Oracle:
    values = yaml.safe_load(TINY_PARAMS.read_text())["simulate"]
    return Oracle(build_world(build_config(SimulateConfig, "simulate", values)))


def contexts_for(oracle: Oracle, n: int, seed: int) -> list[dict]:
    return [{**c, "prompt_id": f"{c['vertical']}|{c['keyword']}"} for c in oracle.sample_contexts(n, seed)]


def clean_text(ctx: dict) -> str:
    return f"Shop {ctx['keyword']}. Free shipping. Book today"


# ------------------------------------------------------------------------ A/B harness
def test_ab_same_seed_same_result_and_arms_share_draws(oracle):
    from pipelines.evaluate_harness import ABTest

    contexts = contexts_for(oracle, 4000, seed=3)
    texts = [clean_text(c) for c in contexts]
    first = ABTest(oracle, contexts, seed=9).run("a", texts)
    again = ABTest(oracle, contexts, seed=9).run("a", texts)
    assert np.array_equal(first.clicked, again.clicked) and np.array_equal(first.converted, again.converted)
    assert np.array_equal(first.p_click, again.p_click)
    other_seed = ABTest(oracle, contexts, seed=10).run("a", texts)
    assert not np.array_equal(first.clicked, other_seed.clicked)
    # a non-compliant arm on the same traffic: violations earn nothing, counted per impression
    bad = ABTest(oracle, contexts, seed=9).run("bad", [f"Guaranteed results. {t}" for t in texts])
    assert bad.clicked.sum() == 0 and not bad.compliant.any()
    assert first.compliant.all()


def test_ab_intervals_contain_the_true_rate_for_large_n(oracle):
    from pipelines.evaluate_harness import ABTest, summarize

    contexts = contexts_for(oracle, 60_000, seed=4)
    texts = [clean_text(c) for c in contexts]
    outcome = ABTest(oracle, contexts, seed=5, fatigue=False).run("clean", texts)
    m = summarize(outcome, contexts, None, per_prompt=4)
    true_ctr = float(outcome.p_click.mean())
    true_ctcvr = float(outcome.true_ctcvr.mean())
    assert m["ctr_ci95"][0] <= true_ctr <= m["ctr_ci95"][1]
    assert m["ctcvr_ci95"][0] <= true_ctcvr <= m["ctcvr_ci95"][1]
    assert m["ctr_ci95"][1] - m["ctr_ci95"][0] < 0.01  # and the interval is informative at this N
    assert m["compliance_rate"] == 1.0 and m["true_ctcvr"] == pytest.approx(true_ctcvr)
    # the true-rate interval (over traffic) contains the world's rate on a fresh, larger traffic sample
    fresh = contexts_for(oracle, 120_000, seed=44)
    world_rate = np.mean([np.prod(oracle.true_text_probs(c, clean_text(c))[:2]) for c in fresh])
    assert m["true_ctcvr_ci95"][0] <= world_rate <= m["true_ctcvr_ci95"][1]


def test_paired_uplift_and_fatigue(oracle):
    from pipelines.evaluate_harness import ABTest, summarize
    from plumbing.metrics import paired_uplift

    contexts = contexts_for(oracle, 20_000, seed=6)
    ab = ABTest(oracle, contexts, seed=7)
    base = ab.run("base", [clean_text(c) for c in contexts])
    same = ab.run("same", [clean_text(c) for c in contexts])
    assert paired_uplift(base.true_ctcvr, same.true_ctcvr) == pytest.approx((0.0, 0.0, 0.0), abs=1e-12)
    # no call to action and no keyword: truly worse, and the paired interval says so
    worse = ab.run("worse", ["Discover something nice" for _ in contexts])
    up, lo, hi = paired_uplift(base.true_ctcvr, worse.true_ctcvr)
    assert hi < 0 and lo <= up <= hi
    m = summarize(worse, contexts, base, per_prompt=4)
    assert m["true_ctcvr_uplift_vs_sft"] == pytest.approx(up)
    assert m["distinct_2"] < summarize(base, contexts, None, per_prompt=4)["distinct_2"] + 1e-9
    # fatigue: one text for every impression makes repeat exposures that cost clicks
    no_fatigue = ABTest(oracle, contexts, seed=7, fatigue=False).run("base", [clean_text(c) for c in contexts])
    assert base.repeat_exposures > 0 and no_fatigue.repeat_exposures == 0
    assert base.p_click.sum() < no_fatigue.p_click.sum()


def test_serving_rules():
    from pipelines.evaluate_harness import serve_sampled, serve_top_ranked

    class LengthScorer:  # "pCTR" = text length; context-free
        def score(self, texts, contexts):
            assert all({"keyword", "vertical", "user_segment", "position"} <= set(c) for c in contexts)
            p = np.array([len(t) / 100 for t in texts])
            return {"p_ctr": p, "p_cvr": p, "p_ctcvr": p * p}

    ctx = {"vertical": "travel", "keyword": "flights", "query": "flights", "user_segment": "students", "position": 1}
    contexts = [{**ctx, "prompt_id": "p1"}, {**ctx, "prompt_id": "p2"}, {**ctx, "prompt_id": "p1", "position": 2}]
    candidates = {"p1": ["short", "a much longer text"], "p2": ["mid text", "x"]}
    assert serve_sampled(candidates, contexts, np.array([0.1, 0.9, 0.6])) == ["short", "x", "a much longer text"]
    assert serve_top_ranked(candidates, contexts, LengthScorer()) == ["a much longer text", "mid text",
                                                                     "a much longer text"]


def test_bad_config_is_rejected_with_the_field_name():
    from pipelines.evaluate import EvaluateConfig
    from plumbing.config import ConfigError
    from relate_models.serving import ServingConfig

    for overrides, field in (({"n_impressions": 0}, "evaluate.n_impressions"),
                             ({"goal_relate_compliance": 2}, "evaluate.goal_relate_compliance"),
                             ({"goals": {}}, r"evaluate: unknown key\(s\) goals"), ({"top_p": 1.5}, "evaluate.top_p")):
        with pytest.raises(ConfigError, match=field):
            load_config(EvaluateConfig, "evaluate", TINY_PARAMS, overrides=overrides)
    serving = yaml.safe_load(TINY_PARAMS.read_text())["serving"]
    with pytest.raises(ConfigError, match="serving.pool_ctcvr_weight"):
        build_config(ServingConfig, "serving", {**serving, "pool_ctcvr_weight": -1})
    with pytest.raises(ConfigError, match="serving.pool_candidates: missing"):
        build_config(ServingConfig, "serving", {"pool_ctcvr_weight": 0.1})
    pool = build_config(ServingConfig, "serving", {**serving, "pool_candidates": 4})
    with pytest.raises(ConfigError, match="serving.pool_candidates: must be 0 \\(no pool\\) or >= evaluate.texts_per_prompt"):
        pool.check_pool_size(8, "evaluate.texts_per_prompt")
    build_config(ServingConfig, "serving", {**serving, "pool_candidates": 0}).check_pool_size(8, "x")  # no pool


# ---------------------------------------------------------------------- end to end
def curated_without_spark(root: Path) -> None:
    """FAKE of the Spark ingest: labeled_impressions and text_stats from the raw logs, in pandas.

    Keeps the contract's columns the downstream stages read; corrupt lines are skipped,
    redeliveries dropped by event_id, and every label marked complete.
    """
    events = []
    for path in sorted((root / "data/raw/events").glob("dt=*/*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(event, dict) and isinstance(event.get("ts"), int) and event.get("event_id"):
                    events.append(event)
    frame = pd.DataFrame(events).drop_duplicates("event_id")
    frame["dt"] = pd.to_datetime(frame["ts"], unit="ms", utc=True).dt.strftime("%Y-%m-%d")
    imps = frame[(frame["event_type"] == "impression") & frame["impression_id"].notna()].copy()
    clicks = frame[frame["event_type"] == "click"]
    converted_clicks = set(frame.loc[frame["event_type"] == "conversion", "click_id"].dropna())
    click_of = dict(zip(clicks["impression_id"], clicks["click_id"]))
    imps["clicked"] = imps["impression_id"].map(lambda i: int(i in click_of))
    imps["converted"] = imps["impression_id"].map(lambda i: int(click_of.get(i) in converted_clicks))
    imps["conversion_value"] = 0.0
    imps["labels_as_of"] = imps["dt"].max()
    imps["label_complete"] = True
    imps["position"] = imps["position"].astype("int64")
    keep = ["impression_id", "ts", "user_id", "user_segment", "placement", "vertical", "advertiser_id", "product_id",
            "ad_id", "position", "query", "keyword", "text_id", "ad_text", "title_id", "image_id", "highlight_id",
            "clicked", "converted", "conversion_value", "labels_as_of", "label_complete"]
    for dt, part in imps.groupby("dt"):
        out = root / "data/curated/labeled_impressions" / f"dt={dt}"
        out.mkdir(parents=True, exist_ok=True)
        part[keep].to_parquet(out / "part-00000.parquet", index=False)
        search = part[part["placement"] == "search"]
        stats = search.groupby(["ad_id", "text_id"], as_index=False).agg(
            ad_text=("ad_text", "first"), keyword=("keyword", "first"), vertical=("vertical", "first"),
            impressions=("impression_id", "size"), clicks=("clicked", "sum"), conversions=("converted", "sum"))
        stats["ctr"] = stats["clicks"] / stats["impressions"]
        stats["cvr"] = stats["conversions"] / stats["clicks"].clip(lower=1)
        stats["ctcvr"] = stats["conversions"] / stats["impressions"]
        out = root / "data/curated/text_stats" / f"dt={dt}"
        out.mkdir(parents=True, exist_ok=True)
        stats.to_parquet(out / "part-00000.parquet", index=False)


def no_combos():
    """FAKE of pipelines.serving_tables.combo_table (the combination generator's artifacts): no combination."""
    from plumbing.serving_schema import COMBO_SCHEMA

    return COMBO_SCHEMA.empty_table()


def fake_evaluate_combos(params_path=None, day=None) -> dict:
    """FAKE of pipelines.evaluate_combo.evaluate_combos (GenCO's own stage and artifacts)."""
    return {"fake": True, "genco": {"true_ctr_uplift_vs_logging": 0.1}}


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    from pipelines import grpo, serving_tables, sft, simulate, train_ctcvr

    root = tmp_path_factory.mktemp("evaluate_e2e")
    params = root / "params.yaml"
    params.write_text(TINY_PARAMS.read_text())
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.setenv("RELATE_PARAMS", str(params))
    combo_module = types.ModuleType("pipelines.evaluate_combo")
    combo_module.evaluate_combos = fake_evaluate_combos
    mp.setitem(sys.modules, "pipelines.evaluate_combo", combo_module)
    mp.setattr(serving_tables, "combo_table", no_combos)
    try:
        assert simulate.main([]) == 0
        curated_without_spark(root)
        assert train_ctcvr.main([]) == 0
        assert sft.main([]) == 0
        assert grpo.main([]) == 0
        assert serving_tables.main([]) == 0
        yield root
    finally:
        mp.undo()


def test_evaluate_end_to_end_writes_required_keys(tiny_pipeline):
    from pipelines import evaluate

    assert evaluate.main([]) == 0
    metrics = json.loads((tiny_pipeline / "metrics/evaluate.json").read_text())
    for arm in ("sft", "two_stage", "relate"):
        m = metrics[arm]
        for key in ("true_ctcvr", "true_ctcvr_ci95", "ctr", "ctr_ci95", "cvr", "ctcvr", "ctcvr_ci95",
                    "compliance_rate", "compliance_rate_ci95", "distinct_2", "self_bleu", "learned_ctcvr",
                    "true_ctcvr_uplift_vs_sft", "learned_ctcvr_uplift_vs_sft", "reward_hacking_gap"):
            assert key in m, (arm, key)
        assert m["impressions"] == 3000
        assert m["ctcvr_ci95"][0] <= m["ctcvr"] <= m["ctcvr_ci95"][1]
        assert 0.0 <= m["compliance_rate"] <= 1.0
    assert metrics["sft"]["true_ctcvr_uplift_vs_sft"] == 0.0
    # tiny.yaml serves RELATE through a pool of 3 of 6 samples; the plain samples and SFT's pool stand beside it
    assert metrics["setup"]["serving"]["pool_candidates"] == 6
    for arm in ("relate_sampled", "sft_pool"):
        assert metrics[arm]["impressions"] == 3000 and isinstance(metrics[arm]["true_ctcvr_uplift_vs_sft"], float)
    assert isinstance(metrics["relate"]["unpooled_prompts"], int) and "unpooled_prompts" not in metrics["relate_sampled"]
    assert isinstance(metrics["relate"]["distinct_2"], float) and isinstance(metrics["sft"]["distinct_2"], float)
    assert isinstance(metrics["two_stage"]["true_ctcvr_uplift_vs_sft"], float)
    # the incumbent: the texts the logs show served on the same impressions
    logged, relate = metrics["logged"], metrics["relate"]
    assert logged["impressions"] == 3000 and logged["unique_texts"] > 1 and "true_ctcvr_uplift_vs_logged" not in logged
    assert relate["true_ctcvr_uplift_vs_logged"] == pytest.approx(relate["true_ctcvr"] / logged["true_ctcvr"] - 1)
    assert isinstance(metrics["goals"]["relate_beats_logged"], bool)
    assert metrics["combo"] == fake_evaluate_combos()
    assert set(metrics["goals"]) and all(isinstance(v, bool) for v in metrics["goals"].values())
    report = (tiny_pipeline / "reports/evaluate.md").read_text()
    assert "| true CTCVR (95% CI) |" in report and "two_stage" in report
    assert (tiny_pipeline / "plots/evaluate/ab.png").stat().st_size > 0
    assert set(json.loads((tiny_pipeline / "data/evaluate/sft_texts.json").read_text())["texts"]) == {
        p["prompt_id"] for p in map(json.loads, (tiny_pipeline / "data/prompts/eval.jsonl").read_text().splitlines())}
    first = (tiny_pipeline / "metrics/evaluate.json").read_text()
    assert evaluate.main([]) == 0  # a rerun with the same seeds gives the same numbers
    again = json.loads((tiny_pipeline / "metrics/evaluate.json").read_text())
    again.pop("seconds")
    previous = json.loads(first)
    previous.pop("seconds")
    assert again == previous


def _harness(root: Path):
    from pipelines.evaluate_harness import EvaluateConfig, Harness

    params = root / "params.yaml"
    return Harness.build(load_config(EvaluateConfig, "evaluate", params), params)


def test_serving_tables_pool_every_served_and_held_out_prompt_once(tiny_pipeline):
    import pyarrow.parquet as pq

    from pipelines.evaluate_config import load_prompts
    from plumbing.serving_schema import read_prompt_pools

    pools, plain = read_prompt_pools(tiny_pipeline / "models/serving/prompt_pools.parquet")
    assert {p["prompt_id"] for p in load_prompts(tiny_pipeline / "data/prompts/eval.jsonl")} <= set(pools)
    assert all(len(texts) == 3 for texts in pools.values())  # tiny: evaluate.texts_per_prompt
    served: dict[tuple, list[str]] = {}
    for row in sorted(pq.read_table(tiny_pipeline / "models/serving/text_pools.parquet").to_pylist(),
                      key=lambda r: r["rank"]):
        served.setdefault((row["ad_id"], row["keyword"]), []).append(row["text"])
    for (_, keyword), texts in served.items():  # an (ad, keyword) serves its prompt's pool
        assert any(pools[p] == texts for p in pools if p.endswith(f"|{keyword}")), keyword


def test_relate_arm_serves_the_serving_tables_pools(tiny_pipeline, tmp_path):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from plumbing.errors import DataError
    from plumbing.serving_schema import read_prompt_pools

    harness, path = _harness(tiny_pipeline), tiny_pipeline / "models/serving/prompt_pools.parquet"
    pools, _ = read_prompt_pools(path)
    arm = harness.table_arm("relate", path)
    assert all(text in pools[c["prompt_id"]] for c, text in zip(harness.contexts, arm.served))
    table = pq.read_table(path)
    edited = table.set_column(table.schema.get_field_index("text"), "text",
                              pa.array([f"Shop {k} today" for k in table.column("keyword").to_pylist()]))
    pq.write_table(edited, tmp_path / "edited.parquet")
    arm = harness.table_arm("relate", tmp_path / "edited.parquet")  # the table, not the policy, decides the arm
    assert arm.served == [f"Shop {c['keyword']} today" for c in harness.contexts]
    pq.write_table(table.filter(pc.field("prompt_id") != harness.prompts[0]["prompt_id"]), tmp_path / "short.parquet")
    with pytest.raises(DataError, match="prompt_id: 1 held-out prompt"):
        harness.table_arm("relate", tmp_path / "short.parquet")


def test_champion_serves_its_published_pools_and_samples_only_the_prompts_they_lack(tiny_pipeline, tmp_path):
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from pipelines.evaluate_champion import champion_arm
    from plumbing.serving_schema import PROMPT_POOLS_FILE, read_prompt_pools

    harness = _harness(tiny_pipeline)
    version = tmp_path / "2026-01-05-0123456789"
    (version / "serving").mkdir(parents=True)
    (version / "policy").symlink_to(tiny_pipeline / "models/relate", target_is_directory=True)
    gone = harness.contexts[0]["prompt_id"]  # a held-out prompt with traffic
    published = pq.read_table(tiny_pipeline / "models/serving/prompt_pools.parquet")
    pq.write_table(published.filter(pc.field("prompt_id") != gone), version / "serving" / PROMPT_POOLS_FILE)
    arm, counts = champion_arm(harness, version)
    assert counts == {"published": len(harness.prompts) - 1, "sampled": 1}
    pools, _ = read_prompt_pools(tiny_pipeline / "models/serving/prompt_pools.parquet")
    sampled, _ = harness.served_texts(version / "policy", [p for p in harness.prompts if p["prompt_id"] == gone])
    for c, text in zip(harness.contexts, arm.served):
        assert text in (sampled if c["prompt_id"] == gone else pools)[c["prompt_id"]]
    (version / "serving" / PROMPT_POOLS_FILE).unlink()  # published before prompt pools: sampled as before
    arm, counts = champion_arm(harness, version)
    assert counts == {"published": 0, "sampled": len(harness.prompts)}
    assert arm.served == harness.served_arm("relate", version / "policy").served


def test_champion_rescoring_reuses_the_sft_texts_evaluate_sampled(tiny_pipeline):
    import dataclasses

    from pipelines import evaluate
    from pipelines.evaluate_harness import SFT_TEXTS, generate_candidates, recorded_sft_texts
    from plumbing.paths import SFT_DIR

    if not (tiny_pipeline / SFT_TEXTS).is_file():
        assert evaluate.main([]) == 0
    harness = _harness(tiny_pipeline)
    cfg, prompts = harness.cfg, harness.prompts
    assert recorded_sft_texts(cfg, prompts) == generate_candidates(SFT_DIR, prompts, cfg)  # what sampling gives
    assert recorded_sft_texts(dataclasses.replace(cfg, generation_seed=cfg.generation_seed + 1), prompts) is None
    assert recorded_sft_texts(cfg, prompts[1:]) is None


def test_evaluate_scores_against_the_market_as_of_its_day(tiny_pipeline, tmp_path, monkeypatch):
    """Drift on: the oracle is the market of the run's day (--ds, else the newest partition read), recorded."""
    from pipelines import evaluate
    from pipelines.evaluate_harness import EvaluateConfig, Harness
    from plumbing.dates import shift_ds
    from plumbing.paths import read_as_of
    from relate_sim.writer import simulate

    values = yaml.safe_load(TINY_PARAMS.read_text())
    values["simulate"]["drift"]["enabled"] = True
    run = tmp_path / "drifting"
    (run / "data").mkdir(parents=True)
    params = run / "params.yaml"
    params.write_text(yaml.safe_dump(values))
    cfg = build_config(SimulateConfig, "simulate", values["simulate"])
    simulate(cfg, tmp_path / "raw", run / "data/sim_truth")  # the drifting market's truth and its daily memory
    for name in ("data/curated", "data/prompts", "models"):  # the drift-off run's logs and models
        (run / name).symlink_to(tiny_pipeline / name, target_is_directory=True)
    monkeypatch.chdir(run)
    monkeypatch.setenv("RELATE_PARAMS", str(params))
    eval_cfg = load_config(EvaluateConfig, "evaluate", params)
    ds, last = shift_ds(cfg.start_date, 3), shift_ds(cfg.start_date, cfg.days - 1)
    with read_as_of(ds) as curated:
        harness = Harness.build(eval_cfg, params, curated=curated)
    assert (harness.eval_day, harness.oracle.world.day) == (ds, 3)
    ctx = harness.contexts[0]
    text = f"Shop {ctx['keyword']}. Free shipping. Book today"
    assert harness.oracle.true_text_probs(ctx, text) != Oracle.load().true_text_probs(ctx, text)  # the market moved
    latest = Harness.build(eval_cfg, params)  # no --ds (dvc repro): the newest curated partition
    assert (latest.eval_day, latest.oracle.world.day) == (last, cfg.days - 1)
    assert evaluate.main(["--ds", ds]) == 0
    assert json.loads((run / "metrics/evaluate.json").read_text())["eval_day"] == ds  # what publish reads


def test_ablation_trains_and_evaluates_each_rung(tiny_pipeline):
    from pipelines import ablation

    assert ablation.main([]) == 0  # tiny: rungs structural and credit
    metrics = json.loads((tiny_pipeline / "metrics/ablation.json").read_text())
    assert metrics["rungs"] == ["structural", "credit"]
    assert set(metrics["arms"]) == {"sft", "structural", "credit"}
    assert metrics["arms"]["structural"]["rewards"] == ["quality_structural"]
    assert metrics["arms"]["credit"]["credit_assignment"] is True
    assert (tiny_pipeline / "models/ablation/structural/model.safetensors").is_file()
    assert "structural" in (tiny_pipeline / "reports/ablation.md").read_text()
    assert ablation.main(["--skip-training"]) == 0


def test_evaluate_fails_loudly_without_upstream(tmp_path, monkeypatch, caplog):
    from pipelines import evaluate

    params = tmp_path / "params.yaml"
    params.write_text(TINY_PARAMS.read_text())
    monkeypatch.chdir(tmp_path)
    assert evaluate.main(["--params", str(params)]) == 2
    assert "run `python -m pipelines.simulate` first" in caplog.text or "no simulated world" in caplog.text
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY_PARAMS.read_text().replace("n_impressions: 3000", "n_impressions: -1"))
    assert evaluate.main(["--params", str(bad)]) == 2
    assert "evaluate.n_impressions" in caplog.text
