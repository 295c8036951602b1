"""Element content in the simulated world: the share of utility it explains, the element table."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from relate_sim import content
from relate_sim.oracle import Oracle
from tests.conftest import ROOT
from relate_sim.writer import simulate
from tests.test_simulator import tiny_config

EMBEDDING_DIM = 12


@pytest.fixture(scope="module")
def default_oracle():
    return Oracle.from_params(ROOT / "params.yaml")


def test_content_explains_at_most_half_of_the_utility_in_the_default_world(default_oracle):
    share = default_oracle.content_share()
    assert set(share) == {"title", "image", "highlight", "all"}
    for kind, value in share.items():
        assert 0.2 < value <= 0.5, (kind, value)  # content matters, and clicks still do


def test_content_is_one_function_shared_across_ads(default_oracle):
    rows = [r for r in default_oracle.element_utilities() if r["element_type"] == "highlight"]
    by_text = {}
    for r in rows:
        by_text.setdefault(r["text"], set()).add(round(r["content_utility"], 12))
    shared = [t for t, values in by_text.items() if len({r["ad_id"] for r in rows if r["text"] == t}) > 1]
    assert shared and all(len(by_text[t]) == 1 for t in shared)
    # the idiosyncratic part is the rest, and it is not zero
    resid = np.array([r["utility"] - r["content_utility"] for r in rows])
    assert resid.std() > 0.05


def test_elements_launched_by_drift_get_content(default_oracle):
    day = 12
    later = default_oracle.as_of(day, phrase_shares={d: np.zeros(46) for d in range(day)})
    rows = later.element_utilities()
    new = [r for r in rows if "-g" in r["element_id"]]
    assert len(new) > 30
    w = later.world
    for r in new[:20]:
        a = w.ad_index(r["ad_id"])
        k = w.parse_element_id(r["element_id"], r["element_type"], a)
        assert r["content_utility"] == pytest.approx(content.element_content(w, r["element_type"], a, k))
    assert later.content_share()["all"] <= 0.5


def _element_table(root, ds):
    return [json.loads(line) for line in gzip.decompress(
        (root / "elements" / f"dt={ds}" / "part-00000.jsonl.gz").read_bytes()).decode().splitlines()]


def test_simulator_writes_the_element_table_each_day(tmp_path):
    cfg = tiny_config(days=3)
    simulate(cfg, tmp_path / "raw", tmp_path / "truth", embedding_dim=EMBEDDING_DIM)
    oracle = Oracle.load(tmp_path / "truth")
    first = _element_table(tmp_path, "2026-01-01")
    last = _element_table(tmp_path, "2026-01-03")
    n_ads = len(oracle.ad_ids)
    assert len(first) == n_ads * (cfg.titles_per_ad + cfg.images_per_ad + cfg.highlights_per_ad)
    for row in first + last:
        assert row["kind"] in content.KINDS
        if row["kind"] == "image":
            assert set(row) == {"element_id", "ad_id", "kind", "embedding"}
            assert len(row["embedding"]) == EMBEDDING_DIM
        else:
            assert set(row) == {"element_id", "ad_id", "kind", "text"} and row["text"]
    # an image keeps its embedding from day to day; the table lists the live elements of its day
    emb = {r["element_id"]: r["embedding"] for r in first if r["kind"] == "image"}
    kept = [r for r in last if r["element_id"] in emb]
    assert kept and all(r["embedding"] == emb[r["element_id"]] for r in kept)
    live = {r["element_id"] for r in oracle.as_of("2026-01-03").element_utilities()}
    assert {r["element_id"] for r in last} == live
