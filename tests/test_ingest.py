"""Ingest on hand-built raw logs: every quarantine reason, dedupe, late conversions,
conservation, idempotent reruns, --all == day by day, and clean exits on bad input."""
from __future__ import annotations

import contextlib
import gzip
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from plumbing import paths
from pipelines import ingest
from plumbing.dates import day_bounds_ms

D1, D2, D3, D4 = "2026-03-01", "2026-03-02", "2026-03-03", "2026-03-04"
HOUR, MIN = 3_600_000, 60_000
TABLES = ("events", "quarantine", "labeled_impressions", "text_stats", "combo_stats", "ingest_quality")
PARAMS = """
ingest:
  master: "local[1]"
  shuffle_partitions: 2
  click_window_minutes: 60
  attribution_window_days: 3
"""


def at(ds: str, ms: int) -> int:
    return day_bounds_ms(ds)[0] + ms


def impression(eid: str, ts: int, placement: str = "search", **over) -> dict:
    ev = {"event_id": eid, "event_type": "impression", "ts": ts, "impression_id": f"i-{eid}",
          "user_id": "u1", "user_segment": "s1", "placement": placement, "vertical": "travel",
          "advertiser_id": "adv1", "product_id": "p1", "ad_id": "ad1", "position": 1, "propensity": 0.5}
    if placement == "search":
        ev.update(query="cheap flights", keyword="flights", text_id="t1", ad_text="Cheap flights today")
    else:
        ev.update(title_id="ti1", image_id="im1", highlight_id="hl1")
    ev.update(over)
    return {k: v for k, v in ev.items() if v is not None}


def click(eid: str, ts: int, imp: str) -> dict:
    return {"event_id": eid, "event_type": "click", "ts": ts, "impression_id": f"i-{imp}", "click_id": f"c-{eid}"}


def conversion(eid: str, ts: int, clk: str, value: float = 10.0) -> dict:
    return {"event_id": eid, "event_type": "conversion", "ts": ts, "click_id": f"c-{clk}", "value": value}


def raw_days() -> tuple[dict[str, list[str]], dict[str, dict[str, int]]]:
    """Lines per partition, and the quarantine reasons planted per partition."""
    j = json.dumps
    imp_a1 = j(impression("a1", at(D1, 10 * HOUR)))
    days = {
        D1: [
            imp_a1, imp_a1, imp_a1,                                   # 2 redeliveries
            j(impression("a2", at(D1, 11 * HOUR), "feed")),
            j(impression("a3", at(D1, 23 * HOUR + 50 * MIN))),        # clicked in D2
            j(click("ca1", at(D1, 10 * HOUR + 5 * MIN), "a1")),       # converts late, in D3
            '{"event_id": "m1", "ts": 12',                            # malformed_json
            "not json at all",                                        # malformed_json
            j(impression("x1", at(D1, HOUR), user_id=None)),          # missing_field
            j({"event_id": "x2", "event_type": "click"}),             # missing_field (ts)
            j(impression("x3", "soon")),                              # bad_type (ts)
            j(impression("x4", at(D1, HOUR), position="first")),      # bad_type (position)
            j(impression("x4s", str(at(D1, HOUR)))),                  # bad_type (ts as a JSON string)
            j(impression("x4p", at(D1, HOUR), propensity="0.5")),     # bad_type (propensity as a JSON string)
            j(impression("x4n", at(D1, HOUR), propensity=float("nan"))),  # bad_type (a bare NaN propensity)
            j(conversion("x4v", at(D1, 14 * HOUR), "ca1", "NaN")),    # bad_type (value as the string "NaN")
            j({"event_id": "x5", "event_type": "hover", "ts": at(D1, HOUR)}),  # unknown_event_type
            j(impression("x6", at(D2, HOUR))),                        # ts_outside_partition
            j(click("x7", at(D1, 12 * HOUR), "nope")),                # orphan_click: no impression
            j(click("x8", at(D1, 13 * HOUR), "a2")),                  # orphan_click: 2 h after
            j(conversion("x9", at(D1, 14 * HOUR), "nope")),           # orphan_conversion
        ],
        D2: [
            j(click("ca3", at(D2, 10 * MIN), "a3")),                  # links across the day boundary
            j(impression("b1", at(D2, 12 * HOUR), "feed")),
            j(click("cb1", at(D2, 12 * HOUR + 30 * MIN), "b1")),
            j(click("cb1", at(D2, 12 * HOUR + 30 * MIN), "b1")),      # duplicate_event_id
            j(conversion("vb1", at(D2, 13 * HOUR), "cb1", 7.5)),
        ],
        D3: [
            j(conversion("va1", at(D3, 9 * HOUR), "ca1", 42.0)),      # late conversion of a1
            j(impression("c1", at(D3, 8 * HOUR))),
        ],
        D4: [
            j(conversion("y1", at(D4, 11 * HOUR), "ca1")),            # orphan_conversion: > 3 days after
            j(impression("d1", at(D4, 8 * HOUR))),
        ],
    }
    planted = {
        D1: {"duplicate_event_id": 2, "malformed_json": 2, "missing_field": 2, "bad_type": 6,
             "unknown_event_type": 1, "ts_outside_partition": 1, "orphan_click": 2, "orphan_conversion": 1},
        D2: {"duplicate_event_id": 1},
        D3: {},
        D4: {"orphan_conversion": 1},
    }
    return days, planted


def write_raw(root: Path) -> None:
    days, _ = raw_days()
    for ds, lines in days.items():
        part = root / paths.RAW_EVENTS / f"dt={ds}"
        part.mkdir(parents=True)
        half = len(lines) // 2  # two files, one gzipped, to read both kinds
        with gzip.open(part / "part-00000.jsonl.gz", "wt") as fh:
            fh.write("\n".join(lines[:half]) + "\n")
        (part / "part-00001.jsonl").write_text("\n".join(lines[half:]) + "\n")
    (root / "params.yaml").write_text(PARAMS)


def table(name: str) -> pd.DataFrame:
    """A curated table as a frame sorted on all columns (set equality, not file order)."""
    path = paths.curated(name)
    if not path.is_dir():
        return pd.DataFrame()
    df = pd.read_parquet(path)
    df["dt"] = df["dt"].astype(str)
    return df.sort_values(list(df.columns)).reset_index(drop=True)


def snapshot() -> dict[str, pd.DataFrame]:
    return {name: table(name) for name in TABLES}


def labels(frame: pd.DataFrame) -> dict[str, tuple]:
    return {r.event_id: (r.dt, r.clicked, r.converted, r.conversion_value, r.labels_as_of, bool(r.label_complete))
            for r in frame.itertuples()}


@pytest.fixture(scope="module")
def spark():
    from plumbing.spark import get_spark

    # one session for the module (stage main()s reuse the active one); two cores run the
    # two shuffle partitions side by side
    session = get_spark("local[2]", "test-ingest", 2)
    yield session
    session.stop()


@pytest.fixture(scope="module")
def day_by_day(spark, tmp_path_factory):
    """Runs D1..D4 one --ds at a time; snapshots of the tables after each run."""
    root = tmp_path_factory.mktemp("day_by_day")
    write_raw(root)
    after = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for ds in (D1, D2, D3, D4):
            assert ingest.main(["--ds", ds, "--params", "params.yaml"]) == 0
            after[ds] = snapshot()
    return root, after


def test_every_quarantine_reason_counted_exactly_and_rows_conserve(day_by_day):
    _, after = day_by_day
    days, planted = raw_days()
    quality = after[D4]["ingest_quality"].set_index("dt")
    quarantine = after[D4]["quarantine"]
    for ds, lines in days.items():
        row = quality.loc[ds]
        assert row.rows_in == len(lines)
        assert row.rows_in == row.rows_kept + row.rows_quarantined
        assert row.rows_quarantined == sum(planted[ds].values())
        for reason in ingest.QUARANTINE_REASONS:
            assert row[f"q_{reason}"] == planted[ds].get(reason, 0), (ds, reason)
        got = quarantine[quarantine.dt == ds].reason.value_counts().to_dict()
        assert got == planted[ds], ds
        assert len(after[D4]["events"].query("dt == @ds")) == row.rows_kept
    # the raw line travels with its reason
    q = quarantine.set_index("event_id")
    assert q.loc["x5"].reason == "unknown_event_type" and '"hover"' in q.loc["x5"].raw_line
    assert set(quarantine[quarantine.reason == "malformed_json"].raw_line) == {'{"event_id": "m1", "ts": 12', "not json at all"}
    assert set(quarantine[quarantine.reason == "orphan_click"].event_id) == {"x7", "x8"}
    assert set(quarantine[quarantine.reason == "orphan_conversion"].event_id) == {"x9", "y1"}
    # duplicates: exactly one copy kept
    events = after[D4]["events"]
    assert (events.event_id == "a1").sum() == 1 and (events.event_id == "cb1").sum() == 1
    assert events.ts.dtype == "int64" and events.set_index("event_id").loc["a1"].position == 1


def test_late_conversion_relabels_earlier_day_and_label_complete_flips(day_by_day):
    _, after = day_by_day
    # dt, clicked, converted, value, labels_as_of, label_complete
    assert labels(after[D1]["labeled_impressions"])["a1"] == (D1, 1, 0, 0.0, D1, False)
    assert labels(after[D1]["labeled_impressions"])["a3"] == (D1, 0, 0, 0.0, D1, False)
    assert labels(after[D2]["labeled_impressions"])["a3"] == (D1, 1, 0, 0.0, D2, False)  # click from D2
    assert labels(after[D2]["labeled_impressions"])["b1"] == (D2, 1, 1, 7.5, D2, False)
    assert labels(after[D3]["labeled_impressions"])["a1"] == (D1, 1, 1, 42.0, D3, False)  # late conversion
    final = labels(after[D4]["labeled_impressions"])
    assert final["a1"] == (D1, 1, 1, 42.0, D4, True)  # D4 >= D1 + 3: final
    assert final["a2"] == (D1, 0, 0, 0.0, D4, True)
    assert final["b1"][4:] == (D4, False)
    assert final["d1"] == (D4, 0, 0, 0.0, D4, False)
    assert set(final) == {"a1", "a2", "a3", "b1", "c1", "d1"}  # one row per valid impression
    text = after[D4]["text_stats"].set_index(["dt", "text_id"]).loc[(D1, "t1")]
    assert (text.impressions, text.clicks, text.conversions, text.ctr) == (2, 2, 1, 1.0)
    combo = after[D4]["combo_stats"].set_index("dt").loc[D2]
    assert (combo.impressions, combo.clicks, combo.conversions, combo.mean_propensity) == (1, 1, 1, 0.5)


def test_metrics_total_all_partitions(day_by_day):
    root, after = day_by_day
    metrics = json.loads((root / "metrics" / "ingest.json").read_text())
    days, planted = raw_days()
    assert metrics["rows_in"] == sum(len(v) for v in days.values())
    assert metrics["rows_in"] == metrics["rows_kept"] + metrics["rows_quarantined"]
    assert metrics["quarantined_by_reason"]["orphan_conversion"] == 2
    assert sorted(metrics["per_day"]) == [D1, D2, D3, D4]


def test_rerun_is_idempotent_and_leaves_other_partitions_alone(day_by_day):
    root, after = day_by_day
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert ingest.main(["--ds", D4, "--params", "params.yaml"]) == 0
        for name in TABLES:
            pd.testing.assert_frame_equal(table(name), after[D4][name], obj=name)
        untouched = paths.partition(paths.curated("events"), D4)
        mtime = max(p.stat().st_mtime_ns for p in untouched.iterdir())
        # rerun D2: it owns events/quarantine/quality of D2 and labels of D1..D2 (as they were after D2)
        assert ingest.main(["--ds", D2, "--params", "params.yaml"]) == 0
        now = snapshot()
        for name in TABLES:
            owned = [D2] if name in ("events", "quarantine", "ingest_quality") else [D1, D2]
            for dt in (D1, D2, D3, D4):
                want = (after[D2] if dt in owned else after[D4])[name]
                pd.testing.assert_frame_equal(now[name].query("dt == @dt").reset_index(drop=True),
                                              want.query("dt == @dt").reset_index(drop=True), obj=f"{name} {dt}")
        assert max(p.stat().st_mtime_ns for p in untouched.iterdir()) == mtime


def test_all_equals_day_by_day(day_by_day, tmp_path, monkeypatch):
    """--all computes the day-by-day final state in one pass (no per-day relabels): its guard."""
    _, after = day_by_day
    write_raw(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert ingest.main(["--all", "--params", "params.yaml"]) == 0
    for name in TABLES:
        pd.testing.assert_frame_equal(table(name), after[D4][name], obj=name)


def test_last_relabels_is_the_latest_run_within_the_window():
    # runs D1, D2, D4 with W = 1; D0 is read (as D1's ds-W) but D3 has no run
    d0 = "2026-02-28"
    got = ingest.last_relabels([D4, D1, D2], [d0, D1, D2, D3, D4], 1)
    assert got == {d0: D1, D1: D2, D2: D2, D3: D4, D4: D4}
    assert ingest.last_relabels([D1], [D1], 3) == {D1: D1}


@pytest.mark.parametrize("argv, message", [
    (["--ds", "2026-02-30"], "not a real date"),
    (["--ds", "yesterday"], "YYYY-MM-DD"),
    (["--ds", "2026-05-01"], "raw partition for ds=2026-05-01 not found"),
    ([], "give one of --ds YYYY-MM-DD or --all"),
    (["--ds", D1, "--all"], "give one of --ds YYYY-MM-DD or --all"),
    (["--all"], "no raw partitions under data/raw/events"),
])
def test_bad_input_exits_2_with_one_line(argv, message, tmp_path, monkeypatch, caplog):
    (tmp_path / "params.yaml").write_text(PARAMS)
    monkeypatch.chdir(tmp_path)
    assert ingest.main([*argv, "--params", "params.yaml"]) == 2
    assert "ingest failed: " in caplog.text and message in caplog.text
    assert len([r for r in caplog.records if r.levelname == "ERROR"]) == 1


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    write_raw(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ingest, "run_days", lambda *a, **k: {}["a bug"])
    monkeypatch.setattr("plumbing.spark.stage_session", lambda *a, **k: contextlib.nullcontext())
    with pytest.raises(KeyError, match="a bug"):
        ingest.main(["--ds", D1, "--params", "params.yaml"])


def test_empty_partition_and_bad_params_exit_2(spark, tmp_path, monkeypatch, caplog):
    (tmp_path / "params.yaml").write_text(PARAMS)
    monkeypatch.chdir(tmp_path)
    part = tmp_path / paths.RAW_EVENTS / f"dt={D1}"
    part.mkdir(parents=True)
    assert ingest.main(["--ds", D1, "--params", "params.yaml"]) == 2  # no data files at all
    assert "is empty" in caplog.text
    with gzip.open(part / "part-00000.jsonl.gz", "wt") as fh:
        fh.write("")
    assert ingest.main(["--ds", D1, "--params", "params.yaml"]) == 2  # a file with no lines
    assert "has no lines" in caplog.text
    assert not paths.curated("events").exists()
    (tmp_path / "params.yaml").write_text(PARAMS.replace("attribution_window_days: 3", "attribution_window_days: 0"))
    assert ingest.main(["--ds", D1, "--params", "params.yaml"]) == 2
    assert "ingest.attribution_window_days" in caplog.text
    shutil.rmtree(part)


def test_an_emptied_partition_is_dropped_only_on_a_mounted_path(tmp_path):
    """The driver deletes an owned partition with no rows left (no JVM call, so Spark Connect too);
    a URI it cannot delete from here is refused by name, never left stale."""
    part = tmp_path / "events" / f"dt={D1}"
    part.mkdir(parents=True)
    (part / "part-0.parquet").write_text("stale")
    ingest.drop_partition(part)
    assert not part.exists() and list((tmp_path / "events").iterdir()) == []
    with pytest.raises(ingest.ConfigError, match="s3a:/bucket/events/dt=2026-03-01"):
        ingest.drop_partition(Path("s3a://bucket/events") / f"dt={D1}")
