"""`--ds` of the stages that read curated tables whole (sft, grpo, combo_policy, evaluate): the
readers they use see only partitions up to the run's day, and a bad day is refused cleanly."""
from __future__ import annotations

import pandas as pd
import pyarrow.dataset as pads
import pytest

from plumbing import paths
from pipelines.orchestration import stage_command

DAYS = ["2026-01-01", "2026-01-02", "2026-01-03"]


@pytest.fixture
def curated_days(tmp_path, monkeypatch):
    """text_stats and labeled_impressions with one partition per day; impressions = day of month."""
    monkeypatch.chdir(tmp_path)
    for day in DAYS:
        n = int(day[-2:])
        text = pd.DataFrame({"vertical": ["travel"], "keyword": ["cheap flights"], "ad_text": ["Fly cheap"],
                             "impressions": [n], "clicks": [0], "conversions": [0]})
        labeled = pd.DataFrame({"placement": ["search"] * n, "vertical": ["travel"] * n,
                                "keyword": ["cheap flights"] * n, "user_segment": ["students"] * n})
        for table, frame in (("text_stats", text), ("labeled_impressions", labeled)):
            part = paths.partition(paths.curated(table), day)
            part.mkdir(parents=True)
            frame.to_parquet(part / "part-0.parquet", index=False)
    yield tmp_path


def test_readers_see_only_partitions_up_to_ds(curated_days):
    from relate_models.policy import load_search_corpus

    with paths.read_as_of("2026-01-02") as curated:
        view = curated.table("text_stats")
        assert view.resolve() != (curated_days / "data" / "curated" / "text_stats").resolve()
        assert paths.partitions(view) == DAYS[:2]
        assert load_search_corpus(view)["impressions"].sum() == 1 + 2  # pandas over the table directory
        rows = pads.dataset(str(curated.table("labeled_impressions")), format="parquet",
                            partitioning="hive").to_table()
        assert rows.num_rows == 1 + 2  # pyarrow dataset over the table directory
        assert paths.partitions(paths.curated("text_stats")) == DAYS  # nothing global changed

    assert not view.exists()  # the view goes, the data stays
    assert load_search_corpus(paths.curated("text_stats"))["impressions"].sum() == 1 + 2 + 3
    with paths.read_as_of(None) as curated:
        assert curated.table("text_stats") == paths.curated("text_stats")


@pytest.mark.parametrize("stage", ["sft", "grpo", "combo_policy", "evaluate"])
def test_window_stages_take_ds_and_refuse_a_bad_one(stage, curated_days, caplog):
    import importlib

    module = importlib.import_module(f"pipelines.{stage}")
    assert module.main(["--ds", "2026-02-30"]) == 2
    assert "2026-02-30" in caplog.text and "not a real date" in caplog.text
    assert stage_command(stage, "2026-01-02").endswith(f"-m pipelines.{stage} --ds 2026-01-02")
