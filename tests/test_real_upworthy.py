"""The Upworthy adapter on hand-made rows, and the check's figures on a small sample of the real file."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

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


@pytest.fixture
def csv(tmp_path) -> Path:
    path = tmp_path / "packages.csv"
    path.write_text(HEADER + "\n".join(ROWS) + "\n", encoding="utf-8")
    return path


def test_adapter_keeps_quarantines_and_counts(csv):
    packages = uw.read_packages(csv)
    counts = packages.counts
    assert counts["rows_in"] == len(ROWS) == counts["rows_kept"] + counts["rows_quarantined"]
    assert counts["rows_kept"] == 5
    assert (counts["q_missing_field"], counts["q_bad_type"], counts["q_invalid_counts"], counts["q_duplicate_row"]) \
        == (2, 2, 2, 1)
    assert sum(v for k, v in counts.items() if k.startswith("q_")) == counts["rows_quarantined"]
    assert set(packages.quarantine["reason"]) == {"missing_field", "bad_type", "invalid_counts", "duplicate_row"}
    # dt is the Monday of the archive's %W week (201500: the Monday before 2015-01-01)
    assert dict(zip(packages.kept["test_id"], packages.kept["dt"])) == {"t1": "2014-11-17", "t2": "2014-12-29"}


def test_missing_columns_rejected_by_name(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("clickability_test_id,headline\nt1,h\n", encoding="utf-8")
    with pytest.raises(ValueError, match="test_week"):
        uw.read_packages(path)


def test_curated_tables_follow_the_contract_and_pass_the_gx_suites(csv, tmp_path, monkeypatch):
    from pipelines.expectations import COMBO_STATS_COLUMNS, TEXT_STATS_COLUMNS

    monkeypatch.chdir(tmp_path)
    packages = uw.read_packages(csv)
    tables = uw.write_curated(packages)
    combos = tables["combo_stats"]
    assert tuple(combos.columns) == COMBO_STATS_COLUMNS
    assert tuple(tables["text_stats"].columns) == TEXT_STATS_COLUMNS
    assert len(combos) == 5 and combos["impressions"].sum() == packages.kept["impressions"].sum()
    # the three arms of t1 were randomized uniformly
    assert np.allclose(combos.loc[combos["ad_id"] == "t1", "mean_propensity"], 1 / 3)
    text = tables["text_stats"].set_index(["ad_id", "ad_text"])
    assert text.loc[("t1", "Headline A"), "impressions"] == 1900  # summed over its two images
    assert sorted(p.name for p in Path("data/curated/combo_stats").iterdir()) == ["dt=2014-11-17", "dt=2014-12-29"]
    reread = pd.read_parquet("data/curated/combo_stats")
    assert len(reread) == len(combos)
    report = uw.validate_curated(tables, max_quarantine_rate=1.0)
    assert report["success"], report
    # the gate is real: counts that do not nest fail the combo_stats suite
    broken = dict(tables, combo_stats=combos.assign(clicks=combos["impressions"] + 1))
    assert not uw.validate_curated(broken, max_quarantine_rate=1.0)["suites"]["combo_stats"]["success"]


def test_pairwise_accuracy_counts_ties_half():
    groups = np.array(["a", "a", "a", "b", "b"])
    observed = np.array([0.1, 0.2, 0.3, 0.5, 0.5])  # b's pair is tied in the observation: left out
    assert uw.pairwise_accuracy(groups, observed, observed) == (1.0, 3)
    assert uw.pairwise_accuracy(groups, observed, -observed) == (0.0, 3)
    assert uw.pairwise_accuracy(groups, observed, np.zeros(5)) == (0.5, 3)


@pytest.mark.skipif(not REAL_CSV.is_file(), reason=f"real Upworthy sample not found at {REAL_CSV} "
                    "(public data kept outside the repo; see docs/real_data.md)")
def test_check_figures_on_a_sample_of_the_real_file(tmp_path):
    from evals import upworthy_check

    params = tmp_path / "real.yaml"
    import yaml

    config = yaml.safe_load((ROOT / "configs" / "real_corpus.yaml").read_text(encoding="utf-8"))
    config["upworthy"].update(csv=str(REAL_CSV), workdir=str(tmp_path / "work"), max_tests=80, folds=2,
                              mil_steps=20, text_epochs=1, bow_c_grid=[1.0], text_test_fraction=0.3,
                              text_val_fraction=0.2)
    params.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    out = tmp_path / "real_upworthy.json"
    assert upworthy_check.main(["--params", str(params), "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["adapter"]["rows_in"] == m["adapter"]["rows_kept"] + m["adapter"]["rows_quarantined"]
    assert m["adapter"]["validation_success"]
    a = m["attribution"]
    assert a["tests"] > 50 and a["pairs"] > 0
    for model in ("test_mean", "additive", "mil"):
        r = a["models"][model]
        assert 0.0 < r["log_loss"] < 0.5  # per impression, CTRs of a few percent
        assert 0.0 <= r["rank_accuracy"] <= 1.0
    assert a["models"]["test_mean"]["rank_accuracy"] == 0.5  # no uplift predicted: all ties
    for model in ("ctcvr_ctr_tower", "bag_of_words_logreg", "random"):
        assert 0.0 <= m["text"]["models"][model]["pairwise_accuracy"] <= 1.0
    assert m["text"]["pairs"] > 0
    assert (tmp_path / "work" / "data" / "curated" / "combo_stats").is_dir()
