"""The Upworthy adapter and Spark report ingest on hand-made rows, and the check's figures on a small sample of the real file."""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from plumbing.config import load_config, load_params
from relate_real import upworthy as uw

ROOT = Path(__file__).resolve().parents[1]
REAL_CSV = ROOT.parent / "shared" / "data" / "upworthy" / "packages_dev.csv.gz"

HEADER = "clickability_test_id,test_week,headline,eyecatcher_id,excerpt,lede,impressions,clicks,extra_column\n"
ROWS = [
    "t1,201446,Headline A,img1,ex,<p>l</p>,1000,30,x",   # kept
    "t1,201446,Headline B,img1,ex,<p>l</p>,1000,10,x",   # kept
    "t1,201446,Headline A,img2,ex,<p>l</p>,900,25,x",    # kept
    "t1,201446,Headline A,img2,ex,<p>l</p>,900,25,x",    # exact repeat -> duplicate_row
    "t2,201500,Other,img3,,<p>m</p>,500,5,x",            # kept; week 00 (days before 2015's first Monday)
    "t2,201500,Other 2,img3,,<p>m</p>,500,7,x",          # kept
    "t2,201500,,img3,,<p>m</p>,500,7,x",                 # no headline -> missing_field
    "t3,201446,H,,ex,<p>l</p>,100,1,x",                  # no image -> missing_field
    "t3,2014xx,H,img4,ex,<p>l</p>,100,1,x",              # week not a number -> bad_type
    "t3,201446,H,img4,ex,<p>l</p>,many,1,x",             # impressions not an integer -> bad_type
    "t3,201446,H,img4,ex,<p>l</p>,100,101,x",            # clicks > impressions -> invalid_counts
    "t3,201446,H,img4,ex,<p>l</p>,0,0,x",                # no impressions -> invalid_counts
]


def upworthy_config(**overrides) -> uw.UpworthyConfig:
    return load_config(uw.UpworthyConfig, "upworthy", ROOT / "configs" / "real_corpus.yaml", overrides=overrides)


def sha16(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


@pytest.fixture(scope="module")
def spark():
    from plumbing.spark import get_spark

    session = get_spark("local[2]", "test-upworthy", 2)  # adapt() reuses the active session
    yield session
    session.stop()


@pytest.fixture(scope="module")
def adapted(spark, tmp_path_factory):
    """adapt() on the hand-made rows, in a fresh work dir: (work dir, counts, tables, report)."""
    work = tmp_path_factory.mktemp("work")
    path = tmp_path_factory.mktemp("in") / "packages.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:  # the archive ships gzipped
        f.write(HEADER + "\n".join(ROWS) + "\n")
    with uw.working_dir(work):
        counts, tables, report = uw.adapt(upworthy_config(spark_shuffle_partitions=2), path)
    return work, counts, tables, report


def test_ingest_keeps_quarantines_and_counts(adapted):
    work, counts, tables, _ = adapted
    assert (work / "data" / "raw" / "upworthy" / "packages.csv.gz").is_file()  # landed as is
    assert counts["rows_in"] == len(ROWS) == counts["rows_kept"] + counts["rows_quarantined"]
    assert counts["rows_kept"] == 5
    assert (counts["q_missing_field"], counts["q_bad_type"], counts["q_invalid_counts"], counts["q_duplicate_row"]) \
        == (2, 2, 2, 1)
    assert sum(v for k, v in counts.items() if k.startswith("q_")) == counts["rows_quarantined"]
    quarantine = tables["quarantine"]
    assert sorted(quarantine["reason"]) == sorted(["duplicate_row", "missing_field", "missing_field", "bad_type",
                                                   "bad_type", "invalid_counts", "invalid_counts"])
    repeat = json.loads(quarantine.loc[quarantine["reason"] == "duplicate_row", "raw_line"].iloc[0])
    assert (repeat["clickability_test_id"], repeat["eyecatcher_id"], repeat["clicks"]) == ("t1", "img2", "25")
    # quarantine and ingest_quality sit in the run's partition: the latest week of the delivery
    assert set(quarantine["dt"]) == set(tables["ingest_quality"]["dt"]) == {"2014-12-29"}
    # dt is the Monday of the archive's %W week (201500: the Monday before 2015-01-01)
    combos = tables["combo_stats"]
    assert dict(zip(combos["ad_id"], combos["dt"])) == {"t1": "2014-11-17", "t2": "2014-12-29"}


def test_curated_tables_follow_the_contract_and_pass_the_gx_suites(adapted):
    from pipelines.expectations import COMBO_STATS_COLUMNS, TEXT_STATS_COLUMNS

    work, _, tables, report = adapted
    combos = tables["combo_stats"]
    assert tuple(combos.columns) == COMBO_STATS_COLUMNS
    assert tuple(tables["text_stats"].columns) == TEXT_STATS_COLUMNS
    assert len(combos) == 5 and combos["impressions"].sum() == 1000 + 1000 + 900 + 500 + 500
    assert combos["impressions"].dtype == np.int64 and combos["ctr"].dtype == np.float64
    # the three arms of t1 were randomized uniformly
    assert np.allclose(combos.loc[combos["ad_id"] == "t1", "mean_propensity"], 1 / 3)
    # element ids: the contract's text_id, the first 16 hex of SHA-1 (excerpt, US, lede for the highlight)
    t1 = combos[combos["ad_id"] == "t1"]
    assert set(t1["title_id"]) == {sha16("Headline A"), sha16("Headline B")}
    assert set(t1["highlight_id"]) == {sha16("ex\x1f<p>l</p>")}
    assert combos.loc[combos["ad_id"] == "t2", "highlight_id"].iloc[0] == sha16("\x1f<p>m</p>")  # empty excerpt
    text = tables["text_stats"].set_index(["ad_id", "ad_text"])
    assert text.loc[("t1", "Headline A"), "impressions"] == 1900  # summed over its two images
    assert text.loc[("t1", "Headline A"), "text_id"] == sha16("Headline A")
    assert text["keyword"].isna().all() and (text["cvr"] == 0).all()
    assert sorted(p.name for p in (work / "data" / "curated" / "combo_stats").iterdir() if p.name.startswith("dt=")) \
        == ["dt=2014-11-17", "dt=2014-12-29"]
    assert report["suites"]["combo_stats"]["success"] and report["suites"]["text_stats"]["success"], report
    # 7 of these 12 rows are bad: the ingest_quality suite's quarantine-rate bound (5 %) says so, and only that
    assert [f["columns"] for f in report["suites"]["ingest_quality"]["failed"]] == [["quarantine_rate"]]
    assert uw.validate_curated(tables, max_quarantine_rate=1.0)["success"]
    # the gate is real: counts that do not nest fail the combo_stats suite
    broken = dict(tables, combo_stats=combos.assign(clicks=combos["impressions"] + 1))
    assert not uw.validate_curated(broken, max_quarantine_rate=1.0)["suites"]["combo_stats"]["success"]


def test_the_element_table_holds_each_headline_of_a_test_with_its_text(adapted):
    """One title row per (test, headline), keyed as the combinations key it; no image or highlight rows."""
    work, _, tables, report = adapted
    elements = tables["elements"]
    headlines = {("t1", "Headline A"), ("t1", "Headline B"), ("t2", "Other"), ("t2", "Other 2")}
    assert sorted(zip(elements["ad_id"], elements["element_id"], elements["text"])) \
        == sorted((t, sha16(h), h) for t, h in headlines)
    assert set(elements["kind"]) == {"title"} and elements["embedding"].isna().all()
    combos = tables["combo_stats"]
    assert set(zip(combos["ad_id"], combos["title_id"])) == set(zip(elements["ad_id"], elements["element_id"]))
    assert dict(zip(elements["text"], elements["dt"])) == {"Headline A": "2014-11-17", "Headline B": "2014-11-17",
                                                           "Other": "2014-12-29", "Other 2": "2014-12-29"}
    counts = uw.element_counts(tables)
    assert (counts["rows_in"], counts["rows_kept"], counts["rows_quarantined"]) == (4, 4, 0)
    assert sorted(p.name for p in (work / "data" / "content" / "elements").iterdir()) \
        == ["dt=2014-11-17", "dt=2014-12-29"]
    assert report["suites"]["elements"]["success"] and report["suites"]["element_quality"]["success"], report


def test_a_headline_the_element_contract_refuses_is_quarantined_and_counted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stats = pd.DataFrame({"dt": ["2014-11-17"] * 3, "ad_id": ["t1"] * 3, "text_id": ["a1", "b2", "c3"],
                          "ad_text": ["Fine headline", "Two\nlines", "x" * 201]})
    counts = uw.land_elements(stats, embedding_dim=16)
    assert (counts["rows_in"], counts["rows_kept"], counts["rows_quarantined"], counts["q_bad_text"]) == (3, 1, 2, 2)
    tables = uw.read_elements(["2014-11-17"])
    assert list(tables["elements"]["text"]) == ["Fine headline"]
    assert uw.element_counts(tables) == counts


def test_a_later_delivery_replaces_every_partition(adapted, tmp_path):
    """The report ingest owns its tables: a delivery without week 201446 leaves no partition of it."""
    work = adapted[0]
    path = tmp_path / "week00.csv"
    path.write_text(HEADER + "\n".join(r for r in ROWS if r.startswith("t2,201500,Other")) + "\n", encoding="utf-8")
    with uw.working_dir(work):
        counts, tables, report = uw.adapt(upworthy_config(spark_shuffle_partitions=2), path)
    assert (counts["rows_in"], counts["rows_kept"], counts["rows_quarantined"]) == (2, 2, 0)
    assert set(tables["combo_stats"]["dt"]) == {"2014-12-29"} and len(tables["quarantine"]) == 0
    assert len(tables["ingest_quality"]) == 1 and report["success"]
    assert [p.name for p in (work / "data" / "raw" / "upworthy").iterdir()] == ["week00.csv"]


def test_sql_week_mapping_matches_strftime(spark, tmp_path, monkeypatch):
    """The SQL's %W Monday equals Python's strptime for every kind of week; impossible weeks are bad_type."""
    from pipelines import ingest_reports
    from pipelines.ingest import IngestConfig

    weeks = [201400, 201401, 201446, 201452, 201500, 201501, 201800, 201801, 201852, 201853, 202053, 201554, 196912]
    raw = tmp_path / "raw"
    raw.mkdir()
    lines = [f"t{w},{w},H{w},img,ex,le,100,1,x" for w in weeks]
    (raw / "weeks.csv").write_text(HEADER + "\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(IngestConfig, "ingest", ROOT / "params.yaml", overrides={"master": "local[2]",
                                                                           "shuffle_partitions": 2})
    quality = ingest_reports.run_source(spark, "upworthy", cfg, raw)
    combos = pd.read_parquet("data/curated/combo_stats")
    got = dict(zip(combos["ad_id"], combos["dt"].astype(str)))
    expected = {}
    for w in weeks:
        with contextlib.suppress(ValueError):
            expected[f"t{w}"] = uw.week_monday(w)
    assert got == expected
    assert quality["q_bad_type"] == len(weeks) - len(expected) >= 2  # 201554 and 196912 are no weeks


def test_file_without_a_required_column_is_rejected_by_name(tmp_path, monkeypatch, caplog):
    from pipelines import ingest_reports
    from tests.conftest import TINY_PARAMS

    monkeypatch.chdir(tmp_path)
    raw = ingest_reports.raw_dir("upworthy")
    raw.mkdir(parents=True)
    (raw / "bad.csv").write_text("clickability_test_id,headline\nt1,h\n", encoding="utf-8")
    with pytest.raises(ValueError, match="lacks column.*test_week"):
        ingest_reports.report_schema(ingest_reports.report_files(raw), ingest_reports.SOURCES["upworthy"])
    # the CLI says so and exits 2 before starting Spark
    (tmp_path / "params.yaml").write_text(TINY_PARAMS.read_text())  # a params.yaml: the run's root is tmp_path
    assert ingest_reports.main(["--source", "upworthy", "--params", str(tmp_path / "params.yaml")]) == 2
    assert "test_week" in caplog.text


def test_pairwise_accuracy_counts_ties_half():
    groups = np.array(["a", "a", "a", "b", "b"])
    observed = np.array([0.1, 0.2, 0.3, 0.5, 0.5])  # b's pair is tied in the observation: left out
    assert uw.pairwise_accuracy(groups, observed, observed) == (1.0, 3)
    assert uw.pairwise_accuracy(groups, observed, -observed) == (0.0, 3)
    assert uw.pairwise_accuracy(groups, observed, np.zeros(5)) == (0.5, 3)


def _arms(sizes: dict[str, int]) -> pd.DataFrame:
    """Combinations of tests of the given sizes, test by test, as the check sorts them."""
    return pd.DataFrame({"ad_id": [t for t, n in sizes.items() for _ in range(n)],
                         "title_id": [f"{t}-{i}" for t, n in sizes.items() for i in range(n)]})


def test_loo_folds_hold_out_each_arm_once_and_see_the_rest_of_its_test():
    combos = _arms({"a": 12, "b": 2, "c": 5, "d": 3})
    folds = uw.loo_folds(combos)
    assert folds.max() + 1 == 12  # as many fits as the largest test has arms
    for k in range(folds.max() + 1):
        held, seen = combos[folds == k], combos[folds != k]
        assert held["ad_id"].is_unique  # at most one arm of a test out per fit
        for _, arm in held.iterrows():  # never predicted by a fit that saw it; every other arm of its test seen
            others = combos[(combos["ad_id"] == arm["ad_id"]) & (combos["title_id"] != arm["title_id"])]
            assert arm["title_id"] not in set(seen["title_id"])
            assert set(others["title_id"]) <= set(seen["title_id"])
    assert np.bincount(folds).tolist() == [4, 4, 3, 2, 2] + [1] * 7  # every arm held out exactly once


def test_pair_folds_hold_out_the_two_paired_arms_of_a_test_together():
    combos = _arms({"a": 12, "b": 2, "c": 5, "d": 3})
    folds = uw.pair_folds(combos)
    held_out = combos.assign(fold=folds)[folds >= 0]
    assert folds.max() + 1 == 6
    # the two arms of test b would leave it without a training arm; the odd arm of c and d has no partner
    assert set(combos.loc[folds < 0, "title_id"]) == {"b-0", "b-1", "c-4", "d-2"}
    for (test, fold), pair in held_out.groupby(["ad_id", "fold"]):
        assert list(pair["title_id"]) == [f"{test}-{2 * fold}", f"{test}-{2 * fold + 1}"]  # exactly the paired arms
        rest = combos[(combos["ad_id"] == test) & ~combos["title_id"].isin(pair["title_id"])]
        assert len(rest) >= 1 and not (folds[rest.index] == fold).any()  # the rest of the test is in training
    assert len(held_out) == 12 + 4 + 2


def test_attribution_check_scores_loo_log_loss_and_held_out_pairs():
    """A factorial design where headline h1 doubles CTR in every test: every held-out pair differs in its
    headline, which the element models learn from the test's other pair; the per-test mean ties."""
    rng = np.random.default_rng(0)
    rows = []
    for t in range(30):
        for title, image in [("h1", "i1"), ("h0", "i1"), ("h1", "i2"), ("h0", "i2")]:  # pairs: ranks (0, 1), (2, 3)
            rows.append({"ad_id": f"t{t}", "product_id": f"t{t}", "title_id": f"{title}-{t}", "image_id": image,
                         "highlight_id": "x", "impressions": 20000,
                         "clicks": int(rng.binomial(20000, 0.04 if title == "h1" else 0.02))})
    combos = pd.DataFrame(rows)
    with uw.model_threads(1):
        out = uw.attribution_check(combos, upworthy_config(mil_steps=40))
    assert out["combinations"] == 120 and out["fits_per_model"] == {"leave_one_out": 4, "leave_pair_out": 2}
    assert out["pairs"] == 60
    # the per-test mean's log loss is that of the pooled CTR of the *other three* arms of the test
    sums = combos.groupby("ad_id")[["clicks", "impressions"]].transform("sum")
    loo_mean = (sums["clicks"] - combos["clicks"]) / (sums["impressions"] - combos["impressions"])
    expected = uw.binomial_nll_per_impression(loo_mean.to_numpy(), combos["clicks"].to_numpy(np.float64),
                                              combos["impressions"].to_numpy(np.float64))
    models = out["models"]
    assert models["test_mean"]["log_loss"] == pytest.approx(expected, rel=1e-12)
    assert models["test_mean"]["rank_accuracy"] == 0.5
    assert models["additive"]["rank_accuracy"] == 1.0 and models["mil"]["rank_accuracy"] > 0.9
    for name in ("additive", "mil"):  # the headline effect pays in log loss, well beyond its standard error
        difference = models[name]["log_loss"] - models["test_mean"]["log_loss"]
        assert models[name]["log_loss_minus_test_mean"] == pytest.approx(difference, rel=1e-9)
        assert difference < -3 * models[name]["log_loss_minus_test_mean_se"] < 0
    assert (models["test_mean"]["log_loss_minus_test_mean"], models["test_mean"]["log_loss_minus_test_mean_se"]) \
        == (0.0, 0.0)


def test_the_content_aware_mil_ranks_headlines_it_never_saw_from_their_text():
    """Every arm of a test shows its own headline: a held-out pair's two headlines are cold. A word ("great")
    doubles CTR in every test: the content-aware MIL learns it across tests and ranks the cold pairs by it;
    the content-free MIL has only hashed ids for them (no better than a coin), the per-test mean ties."""
    rng = np.random.default_rng(0)
    rows, elements = [], []
    for t in range(30):
        for i, word in enumerate(["great", "dull", "great", "dull"]):  # pairs: ranks (0, 1), (2, 3)
            title = f"{word} story number {t} {i}"
            rows.append({"ad_id": f"t{t}", "product_id": f"t{t}", "title_id": sha16(title), "image_id": "i1",
                         "highlight_id": "x", "impressions": 20000,
                         "clicks": int(rng.binomial(20000, 0.04 if word == "great" else 0.02))})
            elements.append({"element_id": sha16(title), "ad_id": f"t{t}", "kind": "title", "text": title,
                             "embedding": None})
    combos, elements = pd.DataFrame(rows), pd.DataFrame(elements)
    assert uw.cold_titles(combos, uw.pair_folds(combos)).all()
    with uw.model_threads(1):
        out = uw.attribution_check(combos, upworthy_config(mil_steps=40, tokenizer_vocab=300), elements)
    models = out["models"]
    assert out["cold_title_pairs"] == out["pairs"] == 60
    assert models["mil_content"]["rank_accuracy_cold_title_pairs"] > 0.9
    assert models["mil"]["rank_accuracy"] < 0.75 and models["test_mean"]["rank_accuracy"] == 0.5
    paired = out["mil_content_minus_mil"]["rank_accuracy_cold_title_pairs"]
    assert paired["difference"] == pytest.approx(models["mil_content"]["rank_accuracy_cold_title_pairs"]
                                                 - models["mil"]["rank_accuracy_cold_title_pairs"])
    assert paired["difference"] > 3 * paired["se"] > 0


def test_log_loss_difference_standard_error_treats_tests_as_clusters():
    clicks, imps = np.array([1.0, 2.0, 3.0, 4.0]), np.full(4, 100.0)
    reference, p = np.full(4, 0.02), np.array([0.01, 0.03, 0.03, 0.05])
    groups = np.array(["a", "a", "b", "b"])
    per_row = uw.binomial_nll(p, clicks, imps) - uw.binomial_nll(reference, clicks, imps)
    per_test = np.array([per_row[:2].sum(), per_row[2:].sum()])
    difference, se = uw.log_loss_difference(p, reference, clicks, imps, groups)
    assert difference == pytest.approx(per_test.sum() / 400)
    assert se == pytest.approx(np.std(per_test, ddof=1) * np.sqrt(2) / 400)


@pytest.mark.skipif(not REAL_CSV.is_file(), reason=f"real Upworthy sample not found at {REAL_CSV} "
                    "(public data kept outside the repo; see docs/real_data.md)")
def test_check_figures_on_a_sample_of_the_real_file(tmp_path):
    from evals import upworthy_check

    params = tmp_path / "real.yaml"
    import yaml

    config = load_params(ROOT / "configs" / "real_corpus.yaml")  # the overlay merged: the copy stands alone
    config["upworthy"].update(csv=str(REAL_CSV), workdir=str(tmp_path / "work"), max_tests=80,
                              mil_steps=20, text_epochs=1, bow_c_grid=[1.0], text_test_fraction=0.3,
                              text_val_fraction=0.2)
    params.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    out = tmp_path / "real_upworthy.json"
    assert upworthy_check.main(["--params", str(params), "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["adapter"]["rows_in"] == m["adapter"]["rows_kept"] + m["adapter"]["rows_quarantined"]
    assert m["adapter"]["validation_success"]
    elements = m["adapter"]["element_table"]
    assert elements["rows_in"] == elements["rows_kept"] + elements["rows_quarantined"] > 0
    a = m["attribution"]
    assert a["tests"] > 50 and a["pairs"] > 0 and 0 < a["cold_title_pairs"] <= a["pairs"]
    for model in ("test_mean", "additive", "mil", "mil_content"):
        r = a["models"][model]
        assert 0.0 < r["log_loss"] < 0.5  # per impression, CTRs of a few percent
        assert 0.0 <= r["rank_accuracy"] <= 1.0
    assert a["models"]["test_mean"]["rank_accuracy"] == 0.5  # no uplift predicted: all ties
    assert a["models"]["additive"]["log_loss_minus_test_mean_se"] > 0
    assert a["fits_per_model"]["leave_pair_out"] == a["fits_per_model"]["leave_one_out"] // 2
    for model in ("ctcvr_ctr_tower", "bag_of_words_logreg", "random"):
        assert 0.0 <= m["text"]["models"][model]["pairwise_accuracy"] <= 1.0
    assert m["text"]["pairs"] > 0
    assert (tmp_path / "work" / "data" / "curated" / "combo_stats").is_dir()


def test_the_entries_exit_2_naming_a_missing_csv(tmp_path, monkeypatch, caplog):
    from evals import upworthy_check

    monkeypatch.chdir(ROOT)  # the entries' default params file is cwd-relative
    missing = tmp_path / "absent.csv"
    assert upworthy_check.main(["--csv", str(missing), "--out", str(tmp_path / "m.json")]) == 2
    assert uw.main(["--csv", str(missing), "--workdir", str(tmp_path / "run")]) == 2
    lines = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(lines) == 2 and all(str(missing) in line for line in lines), lines
    assert not (tmp_path / "m.json").exists()
