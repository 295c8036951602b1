"""The validate gate on hand-built curated partitions: a clean world passes, corruptions fail by name."""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import expectations as ex
from pipelines import validate
from plumbing.config import load_config
from plumbing.dates import day_bounds_ms
from tests.conftest import TINY_PARAMS

DAYS = ("2026-01-01", "2026-01-02", "2026-01-03")
IMPRESSIONS_PER_DAY = 600
STRING_EVENT_FIELDS = [c for c in ex.EVENT_COLUMNS if c not in ("ts", "position", "propensity", "value", "dt")]
EVENT_SCHEMA = pa.schema(
    [(c, pa.int64() if c == "ts" else pa.int32() if c == "position" else
      pa.float64() if c in ("propensity", "value") else pa.string()) for c in ex.EVENT_COLUMNS if c != "dt"]
)


def _write(table: str, ds: str, frame: pd.DataFrame, schema: pa.Schema | None = None) -> None:
    """Write one partition the way Spark lays it out: dt=<ds>/part-*.parquet, no dt column inside."""
    directory = Path("data/curated") / table / f"dt={ds}"
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    frame = frame.drop(columns=["dt"], errors="ignore")
    if schema is not None:
        schema = pa.schema([f for f in schema if f.name in frame.columns])
    pq.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), directory / "part-00000.parquet")


def _read(table: str, ds: str) -> pd.DataFrame:
    return pq.read_table(Path("data/curated") / table / f"dt={ds}").to_pandas()


def write_clean_day(ds: str, n: int, seed: int) -> None:
    """A consistent day: events, labels, stats and ingest accounting that agree with each other."""
    rng = np.random.default_rng(seed)
    start, _ = day_bounds_ms(ds)
    ts = start + np.sort(rng.integers(0, 80_000_000, n))
    search = rng.random(n) < 0.6
    ad = rng.integers(0, 6, n)
    imp = pd.DataFrame({
        "event_id": [f"{ds}-e-imp-{i}" for i in range(n)],
        "event_type": "impression",
        "ts": ts,
        "impression_id": [f"{ds}-imp-{i}" for i in range(n)],
        "user_id": [f"u{u}" for u in rng.integers(0, 50, n)],
        "user_segment": np.where(rng.random(n) < 0.5, "young", "old"),
        "placement": np.where(search, "search", "feed"),
        "vertical": "travel",
        "advertiser_id": [f"adv{a // 3}" for a in ad],
        "product_id": [f"p{a}" for a in ad],
        "ad_id": [f"ad{a}" for a in ad],
        "position": rng.integers(1, 5, n).astype("int32"),
        "query": np.where(search, "cheap flights", None),
        "keyword": np.where(search, "flights", None),
        "text_id": np.where(search, [f"t{a}-{k}" for a, k in zip(ad, rng.integers(0, 3, n))], None),
        "title_id": np.where(search, None, [f"ti{k}" for k in rng.integers(0, 2, n)]),
        "image_id": np.where(search, None, [f"im{k}" for k in rng.integers(0, 2, n)]),
        "highlight_id": np.where(search, None, [f"hl{k}" for k in rng.integers(0, 2, n)]),
        "propensity": rng.uniform(0.05, 1.0, n),
    })
    imp["ad_text"] = np.where(search, "Fly cheap with " + imp["text_id"].fillna(""), None)
    clicked = rng.random(n) < 0.2
    converted = clicked & (rng.random(n) < 0.3)
    clicks = pd.DataFrame({
        "event_id": [f"{ds}-e-clk-{i}" for i in np.flatnonzero(clicked)],
        "event_type": "click",
        "ts": ts[clicked] + 1000,
        "impression_id": imp["impression_id"][clicked].values,
        "click_id": [f"{ds}-clk-{i}" for i in np.flatnonzero(clicked)],
    })
    conversions = pd.DataFrame({
        "event_id": [f"{ds}-e-cnv-{i}" for i in np.flatnonzero(converted)],
        "event_type": "conversion",
        "ts": ts[converted] + 60_000,
        "click_id": [f"{ds}-clk-{i}" for i in np.flatnonzero(converted)],
        "value": rng.uniform(10, 200, int(converted.sum())),
    })
    events = pd.concat([imp, clicks, conversions], ignore_index=True).reindex(columns=EVENT_SCHEMA.names)
    _write("events", ds, events, EVENT_SCHEMA)

    labeled = imp.drop(columns=["event_id", "event_type"]).assign(
        clicked=clicked.astype("int32"),
        converted=converted.astype("int32"),
        conversion_value=np.where(converted, 50.0, np.nan),
        labels_as_of=ds,
        label_complete=False,
    )
    _write("labeled_impressions", ds, labeled)

    def stats(rows: pd.DataFrame, keys: list[str], extra: dict) -> pd.DataFrame:
        grouped = rows.groupby(keys, as_index=False).agg(
            impressions=("impression_id", "size"), clicks=("clicked", "sum"), conversions=("converted", "sum"), **extra
        )
        grouped["ctr"] = grouped["clicks"] / grouped["impressions"]
        return grouped

    text = stats(labeled[search], ["ad_id", "text_id"],
                 {"ad_text": ("ad_text", "first"), "keyword": ("keyword", "first"), "vertical": ("vertical", "first")})
    text["cvr"] = (text["conversions"] / text["clicks"]).where(text["clicks"] > 0)
    text["ctcvr"] = text["conversions"] / text["impressions"]
    _write("text_stats", ds, text)
    combo = stats(labeled[~search], ["ad_id", "title_id", "image_id", "highlight_id"],
                  {"product_id": ("product_id", "first"), "vertical": ("vertical", "first"),
                   "mean_propensity": ("propensity", "mean")})
    _write("combo_stats", ds, combo)

    quarantined = {f"q_{r}": 0 for r in ex.QUARANTINE_REASONS}
    n_quarantined = n // 300  # well under max_quarantine_rate at any size
    quarantined.update(q_malformed_json=min(n_quarantined, 1), q_duplicate_event_id=max(n_quarantined - 1, 0))
    quality = pd.DataFrame([{
        "rows_in": len(events) + n_quarantined, "rows_kept": len(events), "rows_quarantined": n_quarantined,
        **quarantined,
    }]).astype("int64")
    _write("ingest_quality", ds, quality)


def build_world(sizes: dict[str, int]) -> None:
    for i, (ds, n) in enumerate(sizes.items()):
        write_clean_day(ds, n, seed=i)


@pytest.fixture(scope="module")
def clean_world(tmp_path_factory) -> Path:
    """Three clean days, built once and copied into each test's working directory."""
    root = tmp_path_factory.mktemp("world")
    cwd = Path.cwd()
    try:
        os.chdir(root)
        build_world({ds: IMPRESSIONS_PER_DAY + 37 * i for i, ds in enumerate(DAYS)})
    finally:
        os.chdir(cwd)
    return root / "data"


@pytest.fixture
def world(clean_world, tiny_params) -> Path:
    shutil.copytree(clean_world, Path("data"))
    return tiny_params


@pytest.fixture
def validate_log():
    """The stage's log lines (the project logger does not propagate to the root, so caplog misses it)."""
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Collect()
    logger = logging.getLogger("relate.validate")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def _metrics() -> dict:
    return json.loads(Path("metrics/validate.json").read_text())


def test_clean_world_passes_and_writes_docs_results_metrics_marker(world, validate_log):
    assert validate.main(["--all"]) == 0
    assert Path("data/validation/_SUCCESS").read_text().split() == list(DAYS)
    metrics = _metrics()
    assert metrics["success"] is True and metrics["days_validated"] == 3 and metrics["days_failed"] == []
    for ds in DAYS:
        day = metrics["days"][ds]
        assert day["success"] is True
        assert set(day["suites"]) == set(ex.SUITE_TABLES)
        out = Path("data/validation") / ds
        assert (out / "data_docs" / "index.html").is_file()
        html = list((out / "data_docs" / "validations").rglob("*.html"))
        assert len(html) == (5 if ds == DAYS[0] else 6)  # no volume history on the first day
        for suite, result in day["suites"].items():
            if suite == "volume" and ds == DAYS[0] or suite in ex.ELEMENT_SUITES:
                assert "skipped" in result  # this world has no element table (tests/test_ingest_elements.py)
                continue
            assert result["success"] and result["failed"] == 0 and result["evaluated"] > 0
            saved = json.loads((out / f"{suite}.json").read_text())
            assert saved["success"] is True and len(saved["results"]) == result["evaluated"]
    # day 3's band comes from days 1 and 2
    volume = metrics["days"][DAYS[2]]["volume"]
    assert volume["history_days"] == 2 and volume["today"] == IMPRESSIONS_PER_DAY + 74
    assert any("volume check skipped" in line for line in validate_log)
    assert not list(Path("data/validation").glob(".*")), "staging directories left behind"

    # a rerun of a day replaces its outputs with the same result
    first = json.loads((Path("data/validation") / DAYS[2] / "summary.json").read_text())
    assert validate.main(["--ds", DAYS[2]]) == 0
    assert _metrics()["days"] == {DAYS[2]: metrics["days"][DAYS[2]]}
    assert Path("data/validation/_SUCCESS").read_text() == f"{DAYS[2]}\n"
    assert json.loads((Path("data/validation") / DAYS[2] / "summary.json").read_text()) == first
    assert not list(Path("data/validation").glob(".*"))


def _set(table, ds, column, row, value):
    frame = _read(table, ds)
    frame[column] = frame[column].astype(object)
    frame.loc[row, column] = value
    return frame


def corrupt_null_impression_id(ds):
    _write("labeled_impressions", ds, _set("labeled_impressions", ds, "impression_id", 3, None))


def corrupt_duplicate_event_id(ds):
    frame = _read("events", ds)
    frame.loc[5, "event_id"] = frame.loc[4, "event_id"]
    _write("events", ds, frame, EVENT_SCHEMA)


def corrupt_converted_without_click(ds):
    frame = _read("labeled_impressions", ds)
    row = frame.index[frame["clicked"] == 0][0]
    frame.loc[row, "converted"] = 1
    _write("labeled_impressions", ds, frame)


def corrupt_ctr_above_one(ds):
    frame = _read("text_stats", ds)
    frame.loc[0, "ctr"] = 1.5
    _write("text_stats", ds, frame)


def corrupt_negative_clicks(ds):
    frame = _read("combo_stats", ds)
    frame.loc[0, "clicks"] = -2
    _write("combo_stats", ds, frame)


def corrupt_count_conservation(ds):
    frame = _read("ingest_quality", ds)
    frame["rows_in"] += 7
    _write("ingest_quality", ds, frame)


def corrupt_quarantine_rate(ds):
    frame = _read("ingest_quality", ds)
    frame["rows_in"] += 400
    frame["rows_quarantined"] += 400
    frame["q_malformed_json"] += 400
    _write("ingest_quality", ds, frame)


def corrupt_missing_column(ds):
    _write("events", ds, _read("events", ds).drop(columns=["user_segment"]), EVENT_SCHEMA)


def corrupt_unknown_event_type(ds):
    frame = _read("events", ds)
    frame.loc[frame.index[-1], "event_type"] = "hover"
    _write("events", ds, frame, EVENT_SCHEMA)


def corrupt_ts_outside_day(ds):
    frame = _read("events", ds)
    frame.loc[0, "ts"] = day_bounds_ms(ds)[1] + 5
    _write("events", ds, frame, EVENT_SCHEMA)


def corrupt_json_object_in_an_id(ds):  # what a Spark string field makes of {"a": 1}
    _write("events", ds, _set("events", ds, "user_id", 2, '{"a":1}'), EVENT_SCHEMA)


def corrupt_id_too_long(ds):
    _write("events", ds, _set("events", ds, "event_id", 2, "e" * 65), EVENT_SCHEMA)


def corrupt_huge_ad_text(ds):
    frame = _read("events", ds)
    row = frame.index[frame["placement"] == "search"][0]
    frame.loc[row, "ad_text"] = "A" * 5_000_000
    _write("events", ds, frame, EVENT_SCHEMA)


def corrupt_position_out_of_bounds(ds):
    frame = _read("events", ds)
    frame.loc[0, "position"] = 1000
    _write("events", ds, frame, EVENT_SCHEMA)


def corrupt_rows_lost_between_tables(ds):
    frame = _read("labeled_impressions", ds)
    _write("labeled_impressions", ds, frame.iloc[:-10])


def corrupt_volume_drop(ds):
    write_clean_day(ds, IMPRESSIONS_PER_DAY // 10, seed=99)


@pytest.mark.parametrize(
    "corrupt, suite, expectation, column",
    [
        (corrupt_null_impression_id, "labeled_impressions", "expect_column_values_to_not_be_null", "impression_id"),
        (corrupt_duplicate_event_id, "events", "expect_column_values_to_be_unique", "event_id"),
        (corrupt_converted_without_click, "labeled_impressions", "expect_column_pair_values_a_to_be_greater_than_b",
         "converted"),
        (corrupt_ctr_above_one, "text_stats", "expect_column_values_to_be_between", "ctr"),
        (corrupt_negative_clicks, "combo_stats", "expect_column_values_to_be_between", "clicks"),
        (corrupt_count_conservation, "ingest_quality", "expect_column_pair_values_to_be_equal", "rows_in"),
        (corrupt_quarantine_rate, "ingest_quality", "expect_column_values_to_be_between", "quarantine_rate"),
        (corrupt_missing_column, "events", "expect_table_columns_to_match_set", None),
        (corrupt_unknown_event_type, "events", "expect_column_values_to_be_in_set", "event_type"),
        (corrupt_ts_outside_day, "events", "expect_column_values_to_be_between", "ts"),
        (corrupt_json_object_in_an_id, "events", "expect_column_values_to_not_match_regex", "user_id"),
        (corrupt_id_too_long, "events", "expect_column_value_lengths_to_be_between", "event_id"),
        (corrupt_huge_ad_text, "events", "expect_column_value_lengths_to_be_between", "ad_text"),
        (corrupt_position_out_of_bounds, "events", "expect_column_values_to_be_between", "position"),
        (corrupt_rows_lost_between_tables, "labeled_impressions", "expect_table_row_count_to_equal", None),
        (corrupt_volume_drop, "volume", "expect_table_row_count_to_be_between", None),
    ],
    ids=lambda v: v.__name__.removeprefix("corrupt_") if callable(v) else None,
)
def test_corruption_fails_the_gate_naming_suite_and_expectation(world, validate_log, corrupt, suite, expectation,
                                                                column):
    bad_day = DAYS[2]  # the last day, so the volume check has two days of history
    Path("data/validation").mkdir(parents=True)
    Path("data/validation/_SUCCESS").write_text("stale\n")
    corrupt(bad_day)

    assert validate.main(["--ds", bad_day]) == 1
    assert not Path("data/validation/_SUCCESS").exists()
    metrics = _metrics()
    assert metrics["success"] is False and metrics["days_failed"] == [bad_day]
    others = {name: s["success"] for name, s in metrics["days"][bad_day]["suites"].items() if name != suite}
    assert all(others.values()), f"a corruption of {suite} should fail only {suite}: {others}"
    failed = metrics["days"][bad_day]["suites"][suite]
    assert failed["success"] is False and failed["failed"] >= 1
    assert expectation in failed["failed_expectation_types"]

    details = json.loads((Path("data/validation") / bad_day / "summary.json").read_text())
    named = [f for f in details["suites"][suite]["failed_expectations"] if f["expectation"] == expectation]
    assert named and (column is None or any(column in f["columns"] for f in named))
    if corrupt is corrupt_missing_column:
        assert named[0]["observed"] == {"missing": ["user_segment"]}
    if corrupt is corrupt_unknown_event_type:  # the logged summary: column, observed, expected, examples
        line = next(line for line in validate_log if f"FAILED {suite}.{expectation}" in line)
        assert "[event_type]" in line and "1 of" in line and "hover" in line and "impression" in line
    result = json.loads((Path("data/validation") / bad_day / f"{suite}.json").read_text())
    assert result["success"] is False
    assert (Path("data/validation") / bad_day / "data_docs" / "index.html").is_file()
    assert any(f"FAILED {suite}.{expectation}" in line for line in validate_log)


def test_missing_partition_exits_2_with_clear_message(world, validate_log):
    shutil.rmtree(Path("data/curated/text_stats") / f"dt={DAYS[1]}")
    Path("data/validation").mkdir(parents=True)
    Path("data/validation/_SUCCESS").write_text("stale\n")
    assert validate.main(["--all"]) == 2
    assert any(f"text_stats/dt={DAYS[1]}" in line and "missing curated partition" in line for line in validate_log)
    assert not Path("data/validation/_SUCCESS").exists()
    assert validate.main(["--ds", "2026-02-01"]) == 2  # never ingested


def test_unreadable_partition_exits_2(world, validate_log):
    (Path("data/curated/combo_stats") / f"dt={DAYS[0]}" / "part-00000.parquet").write_bytes(b"not parquet")
    assert validate.main(["--ds", DAYS[0]]) == 2
    assert any(f"cannot read data/curated/combo_stats/dt={DAYS[0]}" in line for line in validate_log)
    assert not Path("data/validation/_SUCCESS").exists()


def test_no_ingested_days_and_bad_arguments_exit_2(tiny_params, validate_log):
    assert validate.main(["--all"]) == 2
    assert any("no ingested days" in line for line in validate_log)
    assert validate.main(["--ds", "2026-13-01"]) == 2
    assert any("validate failed: ds '2026-13-01' is not a real date" in line for line in validate_log)
    assert validate.main([]) == 2  # --ds or --all is required
    assert validate.main(["--ds", "2026-01-01", "--all"]) == 2
    assert any("give one of --ds YYYY-MM-DD or --all" in line for line in validate_log)


def test_bad_config_is_rejected_naming_the_field(world, validate_log):
    text = TINY_PARAMS.read_text().replace("max_quarantine_rate: 0.01", "max_quarantine_rate: 2")
    assert text != TINY_PARAMS.read_text()
    world.write_text(text)
    assert validate.main(["--all"]) == 2
    assert any("validate.max_quarantine_rate" in line for line in validate_log)


def test_volume_band_uses_trailing_history(world):
    cfg = load_config(validate.ValidateConfig, "validate", TINY_PARAMS,
                      overrides={"volume_drift_tolerance": 0.5, "volume_history_days": 1, "max_quarantine_rate": 0.01})
    band = validate.volume_band(DAYS[2], 10, cfg)
    assert band.history == {DAYS[1]: IMPRESSIONS_PER_DAY + 37}
    assert band.low == int(np.ceil((IMPRESSIONS_PER_DAY + 37) * 0.5))
    assert validate.volume_band(DAYS[0], 10, cfg) is None


def test_an_element_table_delivered_but_not_landed_fails_the_day(world, validate_log):
    delivered = Path("data/raw/elements") / f"dt={DAYS[1]}"
    delivered.mkdir(parents=True)
    (delivered / "part-00000.jsonl").write_text("{}\n")
    assert validate.main(["--all"]) == 1
    day = _metrics()["days"][DAYS[1]]
    assert day["success"] is False
    for suite in ex.ELEMENT_SUITES:
        assert day["suites"][suite]["failed_expectation_types"] == ["element_table_landed"]
    assert any(f"pipelines.ingest_elements --ds {DAYS[1]}" in line for line in validate_log)
    assert all(_metrics()["days"][ds]["success"] for ds in (DAYS[0], DAYS[2]))  # not delivered: skipped
