"""The simulator: determinism, the raw-log contract, delivery noise, confounding, truth consistency."""
from __future__ import annotations

import collections
import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from scipy.stats import spearmanr

from plumbing.dates import day_bounds_ms, ds_range, shift_ds
from plumbing.config import ConfigError, build_config
from relate_sim import grammar
from relate_sim.config import SimulateConfig
from relate_sim.drift import text_key
from relate_sim.oracle import Oracle
from relate_sim.truth import search_logits, search_logits_vec
from relate_sim.writer import DAY_MS, day_offset, prepare, simulate
from tests.conftest import TINY_PARAMS

COMMON = {"event_id": str, "event_type": str, "ts": int}
REQUIRED = {
    "impression": {**COMMON, "impression_id": str, "user_id": str, "user_segment": str, "placement": str,
                   "vertical": str, "advertiser_id": str, "product_id": str, "ad_id": str, "position": int,
                   "propensity": float},
    "click": {**COMMON, "impression_id": str, "click_id": str},
    "conversion": {**COMMON, "click_id": str, "value": float},
}
SEARCH_ONLY = {"query": str, "keyword": str, "text_id": str, "ad_text": str}
FEED_ONLY = {"title_id": str, "image_id": str, "highlight_id": str}


def tiny_config(**overrides) -> SimulateConfig:
    values = yaml.safe_load(TINY_PARAMS.read_text())["simulate"]
    values["drift"] = {**values["drift"], "enabled": True}  # the simulator's own tests run the drifting market
    values.update(overrides)
    return build_config(SimulateConfig, "simulate", values)


def run(root: Path, **overrides) -> tuple[SimulateConfig, dict]:
    cfg = tiny_config(**overrides)
    return cfg, simulate(cfg, root / "raw", root / "truth")


def file_digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def validate(line: str):
    """The event if the line honours the contract, else None."""
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    schema = REQUIRED.get(event.get("event_type"))
    if schema is None:
        return None
    if event["event_type"] == "impression":
        schema = {**schema, **(SEARCH_ONLY if event.get("placement") == "search" else FEED_ONLY)}
    for field, typ in schema.items():
        value = event.get(field)
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, typ) or isinstance(value, bool):
            return None
    if set(event) != set(schema):
        return None
    return event


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    cfg, summary = run(root)
    lines_by_day = {}
    for part_dir in sorted((root / "raw").iterdir()):
        lines = []
        for part in sorted(part_dir.glob("part-*.jsonl.gz")):
            lines += gzip.decompress(part.read_bytes()).decode().splitlines()
        lines_by_day[part_dir.name[3:]] = lines
    return cfg, summary, root, lines_by_day


def test_same_seed_same_bytes_other_seed_differs(tiny_run, tmp_path):
    cfg, _, root, _ = tiny_run
    run(tmp_path / "again")
    assert file_digests(root) == file_digests(tmp_path / "again")
    run(tmp_path / "again")  # a rerun over existing output rewrites the same bytes
    assert file_digests(root) == file_digests(tmp_path / "again")
    run(tmp_path / "other", seed=cfg.seed + 1)
    other = file_digests(tmp_path / "other")
    assert set(other) == set(file_digests(root))
    # every log and truth file differs (a state file can be equal: the last day's pending events are always none)
    assert all(other[k] != v for k, v in file_digests(root).items() if "/state/" not in k)


def test_partitions_and_event_schema_per_contract(tiny_run):
    cfg, _, root, lines_by_day = tiny_run
    assert sorted(lines_by_day) == ds_range(cfg.start_date, shift_ds(cfg.start_date, cfg.days - 1))
    assert sorted(p.name for p in (root / "truth" / "impressions").iterdir()) == [f"dt={d}" for d in lines_by_day]
    per_type = collections.Counter()
    for ds, lines in lines_by_day.items():
        lo, hi = day_bounds_ms(ds)
        for line in lines:
            event = validate(line)
            if event is None:
                continue
            per_type[event["event_type"], event.get("placement")] += 1
            assert lo <= event["ts"] < hi, f"{event['event_id']} in dt={ds} has ts outside the day"
            if event["event_type"] == "impression":
                assert 0 < event["propensity"] <= 1
                assert event["placement"] in ("search", "feed")
                if event["placement"] == "search":
                    assert len(event["ad_text"]) <= cfg.text_max_chars
                    assert event["keyword"] in event["query"]
    assert per_type["impression", "search"] > 0.5 * cfg.impressions_per_day * cfg.days * cfg.search_share
    assert per_type["impression", "feed"] > 0.5 * cfg.impressions_per_day * cfg.days * (1 - cfg.search_share)
    assert per_type["click", None] > 0 and per_type["conversion", None] > 0


def test_rates_in_range_and_truth_matches_labels(tiny_run):
    cfg, summary, root, _ = tiny_run
    assert 0.02 <= summary["ctr"] <= 0.09, summary["ctr"]
    assert 0.05 <= summary["cvr"] <= 0.2, summary["cvr"]
    truth = pq.read_table(root / "truth" / "impressions").to_pandas()
    assert list(truth.columns[:3]) == ["impression_id", "p_click", "p_conv_given_click"]
    assert len(truth) == cfg.impressions_per_day * cfg.days and truth["impression_id"].is_unique
    assert truth["p_click"].between(0, 1).all() and truth["p_conv_given_click"].between(0, 1).all()
    # the labels were drawn from these probabilities: expected clicks match observed within noise
    expected = truth["p_click"].sum()
    assert abs(summary["totals"]["impression_clicked"] - expected) < 4 * np.sqrt(expected)
    # some noncompliant texts slip past the review; blocked ones never appear
    assert 0 < summary["noncompliant_served_share"] < 0.5


def test_late_conversions_and_event_time_routing(tiny_run):
    cfg, _, _, lines_by_day = tiny_run
    click_day, conv_day = {}, {}
    for ds, lines in lines_by_day.items():
        for line in lines:
            event = validate(line)
            if event is None:
                continue
            if event["event_type"] == "click":
                click_day[event["click_id"]] = ds
            elif event["event_type"] == "conversion":
                conv_day[event["click_id"]] = ds
    late = [c for c, ds in conv_day.items() if c in click_day and ds > click_day[c]]
    assert late, "expected some conversions in a later partition than their click"
    assert all(conv_day[c] >= click_day[c] for c in conv_day if c in click_day)
    # a click 30 s after an impression at 23:59:50 belongs to the next day's partition
    first, _ = day_bounds_ms(cfg.start_date)
    impression_ts = first + DAY_MS - 10_000
    assert day_offset(np.array([impression_ts, impression_ts + 30_000]), first).tolist() == [0, 1]


def test_duplicates_and_corrupt_lines_at_configured_rates(tiny_run):
    cfg, summary, _, lines_by_day = tiny_run
    all_lines = [line for lines in lines_by_day.values() for line in lines]
    bad = [line for line in all_lines if validate(line) is None]
    ids = collections.Counter(e["event_id"] for e in map(validate, all_lines) if e is not None)
    dup_lines = sum(n - 1 for n in ids.values() if n > 1)
    n = len(all_lines)
    assert 0.4 * cfg.corrupt_rate * n <= len(bad) <= 2.0 * cfg.corrupt_rate * n + 3, (len(bad), n)
    assert 0.5 * cfg.duplicate_rate * n <= dup_lines <= 1.6 * cfg.duplicate_rate * n, (dup_lines, n)
    # redeliveries carry the same content
    by_id = collections.defaultdict(set)
    for line in all_lines:
        event = validate(line)
        if event is not None:
            by_id[event["event_id"]].add(line)
    assert all(len(v) == 1 for v in by_id.values())
    kinds = collections.Counter()
    for line in bad:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            kinds["truncated"] += 1
            continue
        kinds["ts_string" if isinstance(event.get("ts"), str) else
              "unknown_type" if event.get("event_type") not in REQUIRED else "missing_id"] += 1
    assert len(kinds) >= 3, kinds


def test_propensity_is_the_policy_probability_and_texts_respect_review(tiny_run):
    cfg, _, _, lines_by_day = tiny_run
    sim = prepare(cfg)
    w = sim.world
    served_pool = {(w.ads[a]["id"], s): (a, t) for a in range(w.n_ads) for t, s in enumerate(sim.tables.served_text[a])}
    checked = 0
    for line in lines_by_day["2026-01-01"]:
        event = validate(line)
        if event is None or event["event_type"] != "impression" or event["placement"] != "search":
            continue
        a, t = served_pool[event["ad_id"], event["ad_text"]]
        assert not w.text_blocked[a, t]
        assert event["propensity"] == pytest.approx(sim.policy.text_probs[a, t], rel=1e-12)
        checked += 1
    assert checked > 100


@pytest.mark.parametrize("day", [0, 6], ids=["day0", "drifted_day"])
def test_vectorised_truth_equals_the_pure_function(day):
    """Also on a drifted day (relate_sim/drift.py), with worn-out texts."""
    cfg = tiny_config()
    first = {text_key(a, grammar.analyze_text(t, cfg.text_max_chars).signature): 0
             for a, pool in enumerate(prepare(cfg).world.texts) for t in pool}
    sim = prepare(cfg, day, {d: np.zeros(len(grammar.LEXICON)) for d in range(day)}, first_served=first)
    w, rng = sim.world, np.random.default_rng(0)
    assert w.day == day
    n = 300
    ad, seg = rng.integers(0, w.n_ads, n), rng.integers(0, len(w.segments), n)
    pos, text = rng.integers(1, 5, n), rng.integers(0, cfg.texts_per_ad, n)
    kw, mod = rng.integers(0, cfg.keywords_per_product, n), rng.integers(0, 7, n)
    click_vec, conv_vec = search_logits_vec(w, sim.tables, ad, seg, pos, text, kw, mod)
    for j in range(n):
        keyword, query = w.keyword_query(ad[j], kw[j], mod[j])
        click, conv, _ = search_logits(w, ad[j], seg[j], pos[j], w.texts[ad[j]][text[j]], keyword, query)
        assert click == pytest.approx(click_vec[j], abs=1e-12) and conv == pytest.approx(conv_vec[j], abs=1e-12)


def test_logged_truth_agrees_with_the_oracle_up_to_fatigue(tiny_run):
    """The logs of a day follow the oracle as of that day (the drifted market, phrase fatigue from the state)."""
    cfg, _, root, lines_by_day = tiny_run
    oracle = Oracle.load(root / "truth").as_of("2026-01-03")
    assert oracle.world.day == 2
    truth = pq.read_table(root / "truth" / "impressions" / "dt=2026-01-03").to_pandas().set_index("impression_id")
    decay = oracle.world.coef["fatigue_decay"]
    checked = 0
    for line in lines_by_day["2026-01-03"]:
        event = validate(line)
        if event is None or event["event_type"] != "impression" or event["placement"] != "search":
            continue
        p_click, p_conv, compliant = oracle.true_text_probs(event, event["ad_text"])
        if not compliant:
            continue
        row = truth.loc[event["impression_id"]]
        assert row["p_conv_given_click"] == pytest.approx(p_conv, rel=1e-9)
        ratio = row["p_click"] / p_click
        exposures = np.log(ratio) / np.log(decay)
        assert exposures == pytest.approx(round(exposures), abs=1e-6) and round(exposures) >= 0
        checked += 1
    assert checked > 100


def test_naive_marginal_ctr_is_confounded_by_the_logging_policy():
    """Per-title CTR as the logging policy serves it tracks the true title utility worse than
    under uniform serving: the policy pairs weak titles with strong images."""
    cfg = tiny_config()
    sim = prepare(cfg)
    oracle = Oracle(sim.world)
    logged, uniform, inverted = [], [], 0
    for a in range(sim.world.n_ads):
        ctr = oracle._combo_ctr_table(a)
        served = sim.policy.combo_probs[a].reshape(ctr.shape)
        naive = (served * ctr).sum(axis=(1, 2)) / served.sum(axis=(1, 2))
        truth = sim.world.title_utility[a]
        logged.append(spearmanr(naive, truth).statistic)
        uniform.append(spearmanr(ctr.mean(axis=(1, 2)), truth).statistic)
        inverted += np.argmax(naive) != np.argmax(truth)
    assert np.mean(logged) < np.mean(uniform) - 0.15, (np.mean(logged), np.mean(uniform))
    assert inverted >= sim.world.n_ads // 4
    # and the policy explores more on some ads than on others
    assert sim.world.ad_exploration.max() > 3 * sim.world.ad_exploration.min()


def test_config_rejects_bad_values_naming_the_field():
    with pytest.raises(ConfigError, match="simulate.verticals"):
        tiny_config(verticals=["a", "b", "c"])
    with pytest.raises(ConfigError, match="simulate.duplicate_rate"):
        tiny_config(duplicate_rate=1.5)
    with pytest.raises(ConfigError, match="simulate.days"):
        tiny_config(days=0)
    with pytest.raises(ConfigError, match="simulate.start_date"):
        tiny_config(start_date="2026-02-30")


def test_main_writes_partitions_and_exits_2_on_bad_config(tiny_params, tmp_path):
    from pipelines import simulate as stage

    cfg = tiny_config()
    assert stage.main([]) == 0
    last = shift_ds(cfg.start_date, cfg.days - 1)
    assert sorted(p.name for p in Path("data/raw/events").iterdir())[-1] == f"dt={last}"
    metrics = json.loads(Path("metrics/simulate.json").read_text())
    assert metrics["totals"]["impression"] == cfg.days * cfg.impressions_per_day
    bad = tmp_path / "bad.yaml"
    values = yaml.safe_load(tiny_params.read_text())
    values["simulate"]["exploration"] = -0.1
    bad.write_text(yaml.safe_dump(values))
    assert stage.main(["--params", str(bad)]) == 2


def test_chunked_days_roll_part_files(tmp_path):
    """Large days are simulated in time-ordered chunks and split into part files of part_size lines."""
    cfg, summary = run(tmp_path, days=2, chunk_size=1000, part_size=1000)
    for day_dir in sorted((tmp_path / "raw").iterdir()):
        parts = sorted(day_dir.glob("part-*.jsonl.gz"))
        assert len(parts) >= 3
        counts = [len(gzip.decompress(p.read_bytes()).decode().splitlines()) for p in parts]
        assert all(c == 1000 for c in counts[:-1]) and 0 < counts[-1] <= 1000
    truth = pq.read_table(tmp_path / "truth" / "impressions").to_pandas()
    assert len(truth) == 2 * cfg.impressions_per_day and truth["impression_id"].is_unique
    assert summary["totals"]["impression"] == 2 * cfg.impressions_per_day
