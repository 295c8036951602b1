"""The drifting market: day-by-day determinism, each drift effect measurable, and a frozen champion losing."""
from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from plumbing.config import build_config, load_params
from plumbing.dates import shift_ds
from relate_models.compliance import ComplianceChecker
from relate_sim import drift, grammar
from relate_sim.config import SimulateConfig
from relate_sim.drift_check import frozen_champion_loss
from plumbing.errors import DataError, MissingArtifact
from relate_sim.market import market_as_of
from relate_sim.oracle import Oracle
from relate_sim.serving_tables import TEXT_POOL_SCHEMA, ServingTables, validate
from relate_sim.world import build_world
from relate_sim.writer import simulate
from tests.conftest import TINY_PARAMS

OFF = {"element_replace_rate": 0.0, "wear_out_logit": 0.0, "appeal_walk_sd": 0.0, "preference_walk_sd": 0.0,
       "season_conv_logit": 0.0, "phrase_fatigue_logit": 0.0, "rule_phrases": []}
DEFAULT_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def config(drift_overrides: dict | None = None, params: Path = TINY_PARAMS, **overrides) -> SimulateConfig:
    values = dict(load_params(params)["simulate"])
    values["drift"] = {**values["drift"], "enabled": True, **(drift_overrides or {})}  # these tests study drift
    return build_config(SimulateConfig, "simulate", {**values, **overrides})


def only(**effect) -> dict:
    """Every drift effect off but the given ones."""
    return {**OFF, **effect}


def shares(day: int) -> dict:
    return {d: np.zeros(len(grammar.LEXICON)) for d in range(day)}


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def impressions(root: Path) -> dict[str, list[dict]]:
    out = {}
    for day_dir in sorted((root / "raw").iterdir()):
        rows = []
        for part in sorted(day_dir.glob("part-*.jsonl.gz")):
            for line in gzip.decompress(part.read_bytes()).decode().splitlines():
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if event.get("event_type") == "impression" and "ad_id" in event:
                    rows.append(event)
        out[day_dir.name[3:]] = rows
    return out


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("drift_full")
    cfg = config()
    simulate(cfg, root / "raw", root / "truth")
    return cfg, root


def test_day_zero_is_the_base_world_and_drift_off_never_moves():
    cfg = config()
    base = build_world(cfg)
    assert market_as_of(base, 0) is base
    off = build_world(config({"enabled": False}))
    assert market_as_of(off, 9, shares(9)) is off
    later = market_as_of(base, 5, shares(5))
    assert later.day == 5 and later.fingerprint() == base.fingerprint()
    assert later.products[0]["appeal_click"] != base.products[0]["appeal_click"]


def test_a_day_is_a_pure_function_of_its_inputs(full_run, tmp_path):
    """Day by day (--ds per day, in order) writes the bytes of one run; rerunning a day rewrites them;
    a day simulated first catches up the days before it."""
    cfg, root = full_run
    for day in range(cfg.days):
        simulate(cfg, tmp_path / "daily" / "raw", tmp_path / "daily" / "truth", days=[day])
    assert digests(tmp_path / "daily") == digests(root)
    simulate(cfg, tmp_path / "daily" / "raw", tmp_path / "daily" / "truth", days=[3])
    assert digests(tmp_path / "daily") == digests(root)
    simulate(cfg, tmp_path / "jump" / "raw", tmp_path / "jump" / "truth", days=[4])
    jump = digests(tmp_path / "jump")
    days_0_to_4 = {f"dt={shift_ds(cfg.start_date, d)}" for d in range(5)}
    expected = {k: v for k, v in digests(root).items() if set(k.split("/")) & days_0_to_4 or k == "truth/world.json"}
    assert jump == expected


def test_launched_elements_serve_only_from_launch_and_retired_ones_stop(full_run):
    cfg, root = full_run
    base = build_world(cfg)
    gen, launch = drift.lifecycle(base, cfg.days - 1)
    rows = impressions(root)
    first_day: dict[str, int] = {}
    last_day: dict[str, int] = {}
    for d, ds in enumerate(sorted(rows)):
        for event in rows[ds]:
            if event["placement"] == "feed":
                for key in ("title_id", "image_id", "highlight_id"):
                    first_day.setdefault(event[key], d)
                    last_day[event[key]] = d
    launched = [i for i in first_day if "-g" in i]
    assert launched, "no launched element served in the tiny world"
    kinds = {"ttl": "title", "img": "image", "hlt": "highlight"}
    for element in launched:
        prefix, ad, slot, g = element.split("-")
        day_gen = [drift.lifecycle(base, d)[0][kinds[prefix]][int(ad), int(slot)] for d in range(cfg.days)]
        assert first_day[element] >= day_gen.index(int(g[1:])), element  # never before its launch day
    retired = 0
    for kind, prefix in (("title", "ttl"), ("image", "img")):
        for a, k in zip(*np.nonzero(gen[kind])):
            replaced_on = min(d for d in range(cfg.days) if drift.lifecycle(base, d)[0][kind][a, k] > 0)
            original = f"{prefix}-{a:04d}-{k:02d}"
            if original in last_day:
                assert last_day[original] < replaced_on, original
                retired += 1
    assert retired > 0


def test_appeal_random_walk_moves_true_ctr_day_by_day():
    base = Oracle(build_world(config(only(appeal_walk_sd=0.03))))
    info = base.ad_info(base.ad_ids[0])
    ctx = {"ad_id": info["ad_id"], "keyword": info["keywords"][0], "query": info["keywords"][0],
           "user_segment": "students", "position": 1}
    text = f"Shop {info['keywords'][0]}. Free shipping. Shop now"
    ctr = [base.as_of(d, shares(d)).true_text_probs(ctx, text)[0] for d in (0, 1, 10, 20)]
    assert len(set(ctr)) == 4
    assert base.as_of(10, shares(10)).true_text_probs(ctx, text)[0] == ctr[2]  # deterministic in (seed, day)
    moved = [b["appeal_click"] - a["appeal_click"] for a, b in
             zip(base.world.products, base.as_of(20, shares(20)).world.products)]
    assert 0.03 * np.sqrt(20) * 0.6 < np.std(moved) < 0.03 * np.sqrt(20) * 1.4


def test_season_raises_conversion_in_its_verticals_only():
    cfg = config(only(season_conv_logit=0.3))
    base = build_world(cfg)
    start = drift.day_index(cfg.start_date, cfg.drift.season_start)
    inside = market_as_of(base, start, shares(start))
    before = market_as_of(base, start - 1, shares(start - 1))
    after = market_as_of(base, start + cfg.drift.season_days, shares(start + cfg.drift.season_days))
    for j, product in enumerate(base.products):
        lift = inside.products[j]["appeal_conv"] - before.products[j]["appeal_conv"]
        seasonal = base.verticals[product["vertical"]] in cfg.drift.season_verticals
        assert lift == pytest.approx(0.3 if seasonal else 0.0)
        assert after.products[j]["appeal_conv"] == pytest.approx(product["appeal_conv"])


def test_phrase_fatigue_follows_the_served_share():
    cfg = config(only(phrase_fatigue_logit=0.8))
    base = build_world(cfg)
    shop_now = [p for p, _, _ in grammar.LEXICON].index("shop now")
    heavy = np.zeros(len(grammar.LEXICON))
    heavy[shop_now] = 0.9
    day = 14
    worn = market_as_of(base, day, {d: heavy for d in range(day)})
    ema = 0.9 * (1 - 0.5 ** (day / cfg.drift.phrase_fatigue_half_life_days))
    expected = 0.8 * (ema - 0.15) / 0.85
    assert base.phrase_click[shop_now] - worn.phrase_click[shop_now] == pytest.approx(expected)
    others = np.arange(len(grammar.LEXICON)) != shop_now
    assert np.array_equal(worn.phrase_click[others], base.phrase_click[others])
    light = market_as_of(base, day, {d: heavy * 0.1 for d in range(day)})  # under the free share
    assert np.array_equal(light.phrase_click, base.phrase_click)
    with pytest.raises(KeyError, match="phrase shares of day"):
        market_as_of(base, 3, {0: heavy})


def test_compliance_rule_flips_texts_with_the_banned_phrase_on_its_date():
    cfg = config()
    oracle = Oracle(build_world(cfg))
    rule_day = drift.day_index(cfg.start_date, cfg.drift.rule_date)
    info = oracle.ad_info(oracle.ad_ids[0])
    ctx = {"ad_id": info["ad_id"], "keyword": info["keywords"][0], "query": info["keywords"][0],
           "user_segment": "students", "position": 1}
    banned = f"Top rated {info['keywords'][0]}. Free shipping. Shop now"
    fine = f"Discover {info['keywords'][0]}. Free shipping. Shop now"
    day_before, on_the_day = oracle.as_of(rule_day - 1, shares(rule_day - 1)), oracle.as_of(rule_day, shares(rule_day))
    assert day_before.true_text_probs(ctx, banned)[2] is True
    assert on_the_day.true_text_probs(ctx, banned) == (0.0, 0.0, False)
    assert on_the_day.true_text_probs(ctx, fine)[2] is True
    # the pipeline's checker reads the same rule from its data file, dated the same
    previous = shift_ds(cfg.drift.rule_date, -1)
    assert ComplianceChecker.load(as_of=previous).penalty(banned) == 0.0
    assert ComplianceChecker.load(as_of=cfg.drift.rule_date).penalty(banned) > 0
    assert ComplianceChecker.load(as_of=cfg.drift.rule_date).penalty(fine) == 0.0
    for phrase in cfg.drift.rule_phrases:
        assert [v.category for v in ComplianceChecker.load(as_of=cfg.drift.rule_date).find(phrase)] == \
            [cfg.drift.rule_category]
    # the review re-reviews live pool texts that day: most using the phrase are blocked
    world = on_the_day.world
    uses = [(a, t) for a, pool in enumerate(world.texts) for t, text in enumerate(pool)
            if set(grammar.analyze_text(text, cfg.text_max_chars).phrase_ids) & world.banned_phrases]
    assert uses and np.mean([world.text_blocked[a, t] for a, t in uses]) > 0.4


def test_oracle_scores_only_live_elements():
    cfg = config()
    base = Oracle(build_world(cfg))
    day = cfg.days - 1
    late = base.as_of(day, shares(day))
    gen, _ = drift.lifecycle(base.world, day)
    a, k = (int(x[0]) for x in np.nonzero(gen["title"]))
    ad_id = base.ad_ids[a]
    new_title = late.world.title_id(a, k)
    assert new_title.endswith(f"-g{gen['title'][a, k]}")
    late.true_combo_ctr(ad_id, new_title, late.world.image_id(a, 0), late.world.highlight_id(a, 0))
    with pytest.raises(ValueError, match="not live"):
        late.true_combo_ctr(ad_id, base.world.title_id(a, k), late.world.image_id(a, 0), late.world.highlight_id(a, 0))


@pytest.mark.parametrize("seed", [None, 777], ids=["default_world", "other_world"])
def test_a_champion_frozen_after_the_first_week_loses_true_ctcvr_by_the_third_week(seed):
    """The issue's sizing: default params (not tiny), measured with the oracle on 3000 contexts."""
    world_seed = {"seed": seed} if seed else {}
    result = frozen_champion_loss(config(params=DEFAULT_PARAMS, **world_seed), n_contexts=3000)
    assert result["relative_change_ci95"][1] < -0.03, result
    # not the compliance rule alone: wear-out and the rest lose too
    without_the_rule = frozen_champion_loss(config({"rule_phrases": []}, params=DEFAULT_PARAMS, **world_seed), 3000)
    assert without_the_rule["relative_change_ci95"][1] < 0, without_the_rule


def test_stage_simulates_one_day_and_exits_2_outside_the_range(tiny_params):
    from pipelines import simulate as stage

    cfg = config()
    assert stage.main(["--ds", shift_ds(cfg.start_date, 2)]) == 0
    written = sorted(p.name for p in Path("data/raw/events").iterdir())
    assert written == [f"dt={shift_ds(cfg.start_date, d)}" for d in range(3)]
    metrics = json.loads(Path("metrics/simulate.json").read_text())
    assert sorted(metrics["days"]) == [shift_ds(cfg.start_date, d) for d in range(3)]
    assert stage.main(["--ds", shift_ds(cfg.start_date, cfg.days)]) == 2
    assert stage.main(["--ds", "2026-13-01"]) == 2


def champion_tables(cfg: SimulateConfig, day: int = 2) -> ServingTables:
    """A champion: one new text and one pool text for every (ad, keyword) of the first ads, top combos."""
    world = market_as_of(build_world(cfg), day, shares(day))
    pools, combos = [], []
    for a in range(4):
        info = world.products[world.ads[a]["product"]]
        for kw in info["keywords"]:
            pools += [{"ad_id": world.ads[a]["id"], "keyword": kw, "text": f"Discover {kw}. Free shipping. Shop now",
                       "score": 0.9, "rank": 1},
                      {"ad_id": world.ads[a]["id"], "keyword": kw, "text": world.texts[a][0], "score": 0.5, "rank": 2}]
        combos += [{"ad_id": world.ads[a]["id"], "rank": r + 1, "title_id": world.title_id(a, r),
                    "image_id": world.image_id(a, r), "highlight_id": world.highlight_id(a, 0), "score": 1.0 - r}
                   for r in range(2)]
    return ServingTables.from_tables(pa.Table.from_pylist(pools), pa.Table.from_pylist(combos), "v-test")


def test_serving_tables_are_served_mixed_with_exploration(full_run, tmp_path):
    cfg, root = full_run
    tables = champion_tables(cfg)
    for rerun in ("a", "b"):
        simulate(cfg, tmp_path / rerun / "raw", tmp_path / rerun / "truth", days=[2], serving=tables)
    day = "dt=" + shift_ds(cfg.start_date, 2)
    assert digests(tmp_path / "a") == digests(tmp_path / "b")  # a pure function of (seed, day, tables)
    assert {k: v for k, v in digests(tmp_path / "a").items() if day not in k and "world" not in k} == \
        {k: v for k, v in digests(root).items() if set(k.split("/")) & {"dt=2026-01-01", "dt=2026-01-02"}}
    summary = json.loads((tmp_path / "a" / "truth" / "state" / day / "summary.json").read_text())
    assert summary["champion_search"] > 0 and summary["champion_feed"] > 0
    oracle = Oracle.load(tmp_path / "a" / "truth").as_of(2)
    rows = impressions(tmp_path / "a")[day[3:]]
    world = oracle.world
    new_texts = {r["ad_text"] for r in rows if r["placement"] == "search" and r["ad_text"].startswith("Discover ")
                 and world.ad_index(r["ad_id"]) < 4}
    assert new_texts, "the champion's new texts were never served"
    for r in rows:
        a = world.ad_index(r["ad_id"])
        if a >= 4 or r["placement"] != "search":
            continue
        eps = world.ad_exploration[a]
        servable = int((~world.text_blocked[a]).sum())
        in_pool = r["ad_text"] in [grammar.serve(t, cfg.text_max_chars) for t in world.texts[a]]
        champion = [f"Discover {r['keyword']}. Free shipping. Shop now"]  # the pool text only if not blocked
        champion += [grammar.serve(world.texts[a][0], cfg.text_max_chars)] if not world.text_blocked[a, 0] else []
        pool_share = in_pool and not r["ad_text"].startswith("Discover ")
        expected = (1 - eps) * (r["ad_text"] in champion) / len(champion) + eps * pool_share / servable
        assert r["propensity"] == pytest.approx(expected, rel=1e-9), r
        assert r["text_id"] == hashlib.sha1(r["ad_text"].encode()).hexdigest()[:16]
    n_combos = cfg.titles_per_ad * cfg.images_per_ad * cfg.highlights_per_ad
    feed = [r for r in rows if r["placement"] == "feed" and world.ad_index(r["ad_id"]) < 4]
    for r in feed:
        a = world.ad_index(r["ad_id"])
        champion = {(world.title_id(a, k), world.image_id(a, k), world.highlight_id(a, 0)) for k in range(2)}
        chosen = (r["title_id"], r["image_id"], r["highlight_id"]) in champion
        eps = world.ad_exploration[a]
        assert r["propensity"] == pytest.approx((1 - eps) * chosen / 2 + eps / n_combos, rel=1e-9), r
    assert feed
    # the logged truth of a text the world never had is the oracle's, as of the day
    truth = pq.read_table(tmp_path / "a" / "truth" / "impressions" / day).to_pandas().set_index("impression_id")
    checked = 0
    for r in rows:
        if r["placement"] == "search" and r["ad_text"] in new_texts:
            p_click, p_conv, ok = oracle.true_text_probs(r, r["ad_text"])
            row = truth.loc[r["impression_id"]]
            assert ok and row["p_conv_given_click"] == pytest.approx(p_conv, rel=1e-9)
            assert row["p_click"] <= p_click * (1 + 1e-9)  # equal up to user fatigue
            checked += 1
    assert checked > 10


def test_serving_tables_validation_names_the_field(tmp_path):
    cfg = config()
    good = champion_tables(cfg)
    assert good.version == "v-test" and len(good.text_pools) == 4 * cfg.keywords_per_product
    bad = pa.table({"ad_id": ["ad-0000"], "keyword": ["x"], "text": ["t"], "score": [None], "rank": [1]})
    with pytest.raises(DataError, match="score"):
        validate(bad, TEXT_POOL_SCHEMA, "text_pools.parquet")
    with pytest.raises(DataError, match="missing column"):
        validate(bad.drop(["rank"]), TEXT_POOL_SCHEMA, "text_pools.parquet")
    with pytest.raises(MissingArtifact):
        ServingTables.load(tmp_path)
