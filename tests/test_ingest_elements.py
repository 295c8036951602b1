"""The element table: landed by ingest_elements with quarantine-with-reason, gated by its GX suites."""
from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipelines import ingest_elements as ie
from pipelines import simulate as simulate_stage
from pipelines import validate
from plumbing import paths
from plumbing.config import load_config

DIM = 4
GOOD = [
    {"element_id": "ttl-0001-00", "ad_id": "ad-0001", "kind": "title", "text": "Discover shoes"},
    {"element_id": "img-0001-00", "ad_id": "ad-0001", "kind": "image", "embedding": [0.1, -0.2, 0.3, 0.0]},
    {"element_id": "hlt-0001-00", "ad_id": "ad-0001", "kind": "highlight", "text": "Free shipping"},
]
BAD = {  # one line per reason
    "malformed_json": '{"element_id": "ttl-0001-01", ',
    "missing_field": json.dumps({"element_id": "ttl-0001-02", "ad_id": "ad-0001", "kind": "title"}),
    "unknown_kind": json.dumps({"element_id": "vid-0001-00", "ad_id": "ad-0001", "kind": "video", "text": "x"}),
    "bad_id_format": json.dumps({"element_id": "ttl 0001/03", "ad_id": "ad-0001", "kind": "title", "text": "Hi"}),
    "bad_text": json.dumps({"element_id": "hlt-0001-01", "ad_id": "ad-0001", "kind": "highlight", "text": "a\u0001b"}),
    "bad_embedding": json.dumps({"element_id": "img-0001-01", "ad_id": "ad-0001", "kind": "image",
                                 "embedding": [0.1, 0.2]}),
    "duplicate_element_id": json.dumps(GOOD[0]),
}


def test_quarantine_conserves_rows_and_names_the_reason():
    lines = [json.dumps(r) for r in GOOD] + list(BAD.values())
    kept, quarantined, quality = ie.land(lines, DIM)
    assert quality["rows_in"] == len(lines) == quality["rows_kept"] + quality["rows_quarantined"]
    assert list(kept["element_id"]) == [r["element_id"] for r in GOOD]
    assert list(quarantined["reason"]) == list(BAD)
    assert all(quality[f"q_{r}"] == 1 for r in BAD)
    # a NaN, a bool or a string in an embedding is refused, never stored
    for bad in ([float("nan"), 0, 0, 0], [True, 0, 0, 0], ["0", 0, 0, 0]):
        row = {**GOOD[1], "embedding": bad}
        assert ie.check_line(json.dumps(row), DIM) == (None, "bad_embedding")


@pytest.fixture
def landed(tiny_params):
    assert simulate_stage.main(["--params", str(tiny_params), "--ds", "2026-01-02"]) == 0
    assert ie.main(["--params", str(tiny_params), "--all"]) == 0
    return tiny_params


def test_stage_lands_the_simulated_tables_and_the_suites_pass(landed):
    metrics = json.loads((paths.METRICS / "ingest_elements.json").read_text())
    assert sorted(metrics["days"]) == ["2026-01-01", "2026-01-02"]
    totals = metrics["totals"]
    assert totals["rows_in"] == totals["rows_kept"] > 0 and totals["rows_quarantined"] == 0
    table = pq.read_table(paths.partition(paths.content_table("elements"), "2026-01-02")).to_pandas()
    assert set(table["kind"]) == {"title", "image", "highlight"}
    dim = load_config(ie.IngestElementsConfig, "ingest_elements", landed).embedding_dim
    assert {len(e) for e in table.loc[table["kind"] == "image", "embedding"]} == {dim}
    gate = validate.Gate(load_config(validate.ValidateConfig, "validate", landed), dim)
    frames = validate.element_frames("2026-01-02")
    for name in ("elements", "element_quality"):
        assert gate.run_suite(name, frames[name], {"embedding_dim": dim}).success, name
    # the daily run of one day keeps every landed day in the metrics, with the same totals
    assert ie.main(["--params", str(landed), "--ds", "2026-01-02"]) == 0
    assert json.loads((paths.METRICS / "ingest_elements.json").read_text()) == metrics


def test_a_wrong_embedding_length_fails_the_elements_suite(landed):
    part = paths.partition(paths.content_table("elements"), "2026-01-02") / "part-00000.parquet"
    table = pq.read_table(part).to_pandas()
    image = table.index[table["kind"] == "image"][0]
    table.at[image, "embedding"] = [0.0, 1.0]
    table["embedding"] = table["embedding"].astype(object)
    table.to_parquet(part, index=False)
    dim = load_config(ie.IngestElementsConfig, "ingest_elements", landed).embedding_dim
    gate = validate.Gate(load_config(validate.ValidateConfig, "validate", landed), dim)
    result = gate.run_suite("elements", validate.element_frames("2026-01-02")["elements"], {"embedding_dim": dim})
    assert not result.success
    failed = [r["expectation_config"]["type"] for r in result.to_json_dict()["results"] if not r["success"]]
    assert failed == ["expect_column_values_to_be_between"]


def test_a_day_without_an_element_table_exits_2(tiny_params):
    assert ie.main(["--params", str(tiny_params), "--ds", "2026-01-03"]) == 2
    assert ie.main(["--params", str(tiny_params)]) == 2  # neither --ds nor --all
