"""pipelines.warm_start: when a training stage continues from the champion, and when it rebuilds in full."""
from __future__ import annotations

import json

import pytest
import yaml

from pipelines import warm_start
from pipelines.publish_registry import promote
from plumbing.config import ConfigError
from relate_models.tokenizer import train_tokenizer
from tests.conftest import TINY_PARAMS

V1, V2 = "2026-01-05-0123456789", "2026-01-06-abcdefabcd"


def _project(tmp_path, monkeypatch, mode="warm", **training):
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["training"].update(mode=mode, **training)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)  # a stage runs in its layout's root: the registry is relative to it
    return path


def _champion(tmp_path, version, lineage: dict | None, artifact="ctcvr", history=()):
    registry = tmp_path / "registry"
    folder = registry / version / artifact
    folder.mkdir(parents=True)
    if lineage is not None:
        (folder / warm_start.LINEAGE_FILE).write_text(json.dumps(lineage))
    champion = {"version": history[-1], "history": list(history)} if history else None
    promote(registry, champion, version, {"ds": version[:10], "eval_day": None, "serving": None, "metrics": {}})
    return folder


def _lineage(through, last_full, chain=()):
    return {"stage": "train_ctcvr", "mode": "warm" if chain else "full", "reason": "", "continued_from": None,
            "trained_through": through, "last_full_trained_through": last_full, "chain": list(chain)}


def test_full_mode_and_no_champion_train_in_full(tmp_path, monkeypatch):
    params = _project(tmp_path, monkeypatch, mode="full")
    start = warm_start.plan("train_ctcvr", "ctcvr", params, "2026-01-06")
    assert (start.mode, start.reason) == ("full", "training.mode is full")
    params = _project(tmp_path, monkeypatch)
    start = warm_start.plan("train_ctcvr", "ctcvr", params, "2026-01-06")
    assert (start.mode, start.reason) == ("full", "no champion to continue from")


def test_warm_from_the_champion_extends_its_chain(tmp_path, monkeypatch):
    params = _project(tmp_path, monkeypatch)
    source = _champion(tmp_path, V1, _lineage("2026-01-05", "2026-01-05"))
    start = warm_start.plan("train_ctcvr", "ctcvr", params, "2026-01-06")
    assert start.warm and start.source == source.relative_to(tmp_path) and start.version == V1
    assert start.new_days(["2026-01-04", "2026-01-05", "2026-01-06"]) == ["2026-01-06"]
    lineage = start.lineage("2026-01-06")
    assert lineage["continued_from"] == V1 and lineage["chain"] == [V1]
    assert lineage["last_full_trained_through"] == "2026-01-05"
    full = warm_start.Start("train_ctcvr", "full", "x").lineage("2026-01-06")
    assert full["last_full_trained_through"] == "2026-01-06" and full["chain"] == []


@pytest.mark.parametrize("lineage, through, reason", [
    (None, "2026-01-06", "has no lineage.json"),
    (_lineage("2026-01-07", "2026-01-05"), "2026-01-06", "a backfill of an early day"),
    (_lineage("2026-01-11", "2026-01-05", [V1]), "2026-01-12", "training.full_every_days is 7"),
])
def test_each_forced_full_of_the_plan_says_why(tmp_path, monkeypatch, lineage, through, reason):
    params = _project(tmp_path, monkeypatch)
    _champion(tmp_path, V1, lineage)
    start = warm_start.plan("train_ctcvr", "ctcvr", params, through)
    assert start.mode == "full" and reason in start.reason


def test_a_rerun_of_a_day_continues_from_the_champion_before_that_day(tmp_path, monkeypatch):
    params = _project(tmp_path, monkeypatch)
    _champion(tmp_path, V1, _lineage("2026-01-05", "2026-01-05"))
    _champion(tmp_path, V2, _lineage("2026-01-06", "2026-01-05", [V1]), history=[V1])  # today's run, published
    start = warm_start.plan("train_ctcvr", "ctcvr", params, "2026-01-06")  # today again
    assert start.warm and start.version == V1 and "the champion before day 2026-01-06" in start.reason
    assert warm_start.plan("train_ctcvr", "ctcvr", params, "2026-01-07").version == V2  # tomorrow


def test_a_champion_without_the_artifact_trains_in_full(tmp_path, monkeypatch):
    params = _project(tmp_path, monkeypatch)
    _champion(tmp_path, V1, _lineage("2026-01-05", "2026-01-05"), artifact="attribution")
    start = warm_start.plan("train_ctcvr", "ctcvr", params, "2026-01-06")
    assert start.mode == "full" and "has no ctcvr artifact here" in start.reason


def test_new_ids_and_unknown_words_force_full():
    warm = warm_start.Start("s", "warm", "continues", max_oov_rate=0.1)
    assert warm.check_known("ad_id values", ["a", "b"], ["b", "a"]) is warm
    forced = warm.check_known("ad_id values", ["a"], ["a", "z"])
    assert forced.mode == "full" and "1 new ad_id values" in forced.reason and "z" in forced.reason
    tokenizer = train_tokenizer(["cheap flights to rome", "cheap hotels in rome"] * 5, vocab_size=300, min_frequency=1)
    assert warm.check_vocabulary(tokenizer, ["cheap flights to rome"]) is warm
    forced = warm.check_vocabulary(tokenizer, ["zygomorphic quixotic brouhaha"])
    assert forced.mode == "full" and "out-of-vocabulary rate 1.000" in forced.reason
    # rare words of the trained days are split too: only words new to those days count
    assert warm.check_vocabulary(tokenizer, ["zygomorphic quixotic brouhaha"], ["a quixotic zygomorphic brouhaha"]) is warm
    full = warm_start.Start("s", "full", "training.mode is full")
    assert full.check_known("ad_id values", [], ["z"]) is full  # a full run has nothing to check


def test_bad_training_config_is_refused_naming_the_field(tmp_path, monkeypatch):
    for training, field in (({"mode": "lukewarm"}, "training.mode"), ({"full_every_days": 0}, "training.full_every_days"),
                            ({"max_oov_rate": 2.0}, "training.max_oov_rate")):
        params = _project(tmp_path, monkeypatch, **{"mode": "warm", **training})
        with pytest.raises(ConfigError, match=field):
            warm_start.plan("train_ctcvr", "ctcvr", params, "2026-01-06")
