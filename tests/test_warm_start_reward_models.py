"""Warm starts of the reward models: train_ctcvr (with the shared tokenizer) and train_attribution
continue from the champion's published models, or rebuild in full with the reason recorded."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from pipelines import publish_registry, train_attribution, train_ctcvr
from pipelines.warm_start import Start
from plumbing.config import load_config
from relate_models import attribution as attr
from relate_models import ctcvr
from tests.conftest import TINY_PARAMS
from tests.test_attribution import synthetic_combo_stats, synthetic_content_tree, synthetic_world, write_partitions
from tests.test_ctcvr import synthetic_impressions, write_curated
from tests.test_ctcvr import tiny_params as ctcvr_params

VERSION = "2026-01-05-0123456789"
CTCVR_DAYS = [f"2026-01-0{d}" for d in range(1, 7)]  # champion: eval 01-05 (trains 02..04); warm: eval 01-06
NEW_CTCVR_DAY = "2026-01-05"
ATTR_DAYS = [f"2026-01-0{d}" for d in range(1, 6)]  # the last day counts as still open (no labeled_impressions)
NEW_ATTR_DAY = "2026-01-03"  # champion: --ds 01-04 trains 01..02; warm: trains 02..03, holds out 01-04

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def publish(artifacts: dict[str, str]) -> None:
    """Copy the model directories into registry/VERSION/<artifact> and make VERSION the champion
    (relative paths, as publish writes them: the project is copied per test)."""
    registry = Path("registry")
    for name, source in artifacts.items():
        shutil.copytree(source, registry / VERSION / name)
    publish_registry.promote(registry, None, VERSION, {"metrics": {}, "ds": None, "eval_day": None, "serving": None})


def set_params(path: Path, **sections) -> None:
    """Update keys of the params file's sections."""
    params = yaml.safe_load(path.read_text())
    for section, values in sections.items():
        params.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(params))


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(sum((a[k].double() - b[k].double()).pow(2).sum() for k in a) ** 0.5)


def read_json(path: str) -> dict:
    return json.loads(Path(path).read_text())


def copy_project(source: Path, target: Path, monkeypatch) -> Path:
    shutil.copytree(source, target, dirs_exist_ok=True)
    monkeypatch.chdir(target)
    return target


# ------------------------------------------------------------------------------------ train_ctcvr
@pytest.fixture(scope="module")
def ctcvr_project(tmp_path_factory) -> Path:
    """Six days of labeled impressions and a champion trained in full through 01-04 (eval day 01-05)."""
    root = tmp_path_factory.mktemp("ctcvr-warm")
    write_curated(root, {ds: synthetic_impressions(2500, d) for d, ds in enumerate(CTCVR_DAYS, 1)})
    ctcvr_params(root / "params.yaml", feed_conversions=True)
    set_params(root / "params.yaml", publish={"registry_dir": "registry"})
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        assert train_ctcvr.main(["--ds", NEW_CTCVR_DAY]) == 0
        publish({"ctcvr": "models/ctcvr", "tokenizer": "models/tokenizer"})
    shutil.rmtree(root / "models")
    shutil.rmtree(root / "metrics")
    set_params(root / "params.yaml", training={"mode": "warm"})
    return root


def test_ctcvr_warm_continues_the_champion_on_the_new_day(ctcvr_project, tmp_path, monkeypatch):
    copy_project(ctcvr_project, tmp_path, monkeypatch)
    champion = Path("registry", VERSION)
    assert train_ctcvr.main([]) == 0
    metrics = read_json("metrics/ctcvr_train.json")
    assert metrics["training"] == {"mode": "warm", "reason": f"continues from champion {VERSION}",
                                   "continued_from": VERSION, "trained_days": [NEW_CTCVR_DAY],
                                   "grown_vocabularies": {}}
    assert metrics["train_days"] == ["2026-01-03", "2026-01-04", NEW_CTCVR_DAY] and metrics["eval_day"] == "2026-01-06"
    assert len(read_json("models/ctcvr/training_curve.json")["epochs"]) == 2  # train_ctcvr.warm_epochs
    for directory in ("models/ctcvr", "models/tokenizer"):
        lineage = read_json(f"{directory}/lineage.json")
        assert lineage["mode"] == "warm" and lineage["continued_from"] == VERSION and lineage["chain"] == [VERSION]
        assert lineage["trained_through"] == NEW_CTCVR_DAY and lineage["last_full_trained_through"] == "2026-01-04"
    # the champion's tokenizer is kept, for the model and for everything reading models/tokenizer
    for tokenizer in ("models/tokenizer", "models/ctcvr/tokenizer"):
        assert Path(tokenizer, "tokenizer.json").read_bytes() == (champion / "tokenizer" / "tokenizer.json").read_bytes()
    # moved from the champion's weights, but far less than a model trained from scratch on the same window
    warm, start = weights(Path("models/ctcvr")), weights(champion / "ctcvr")
    torch.manual_seed(0)
    scratch = ctcvr.CTCVRModel(ctcvr.CTCVRScorer.load(champion / "ctcvr").config).state_dict()
    assert 0 < distance(warm, start) < 0.25 * distance(scratch, start)
    assert metrics["auc_ctcvr"] > 0.6 and metrics["baseline_auc_ctcvr"] > 0.5


def test_ctcvr_rerun_of_the_champions_day_retrains_it_as_it_was(ctcvr_project, tmp_path, monkeypatch):
    copy_project(ctcvr_project, tmp_path, monkeypatch)
    assert train_ctcvr.main(["--ds", NEW_CTCVR_DAY]) == 0  # the champion's own day again: it must not see it twice
    training = read_json("metrics/ctcvr_train.json")["training"]
    assert training["mode"] == "full" and "trained ctcvr before 2026-01-04" in training["reason"]
    champion = weights(Path("registry", VERSION, "ctcvr"))
    assert distance(weights(Path("models/ctcvr")), champion) == 0  # the same model: a rerun is idempotent
    assert read_json("models/tokenizer/lineage.json")["trained_through"] == "2026-01-04"


def add_unknown(column: str, value: str):
    """A change of the new day: some of its rows get `value` in `column`."""
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        rows = frame["placement"] == "feed" if column == "highlight_id" else frame["placement"] == "search"
        frame.loc[rows[rows].index[:50], column] = value
        return frame
    return change


def new_words(frame: pd.DataFrame) -> pd.DataFrame:
    novel = [f"zq{chr(97 + i)}xv" for i in range(12)]
    frame["ad_text"] = [f"{t} {novel[i % len(novel)]}" for i, t in enumerate(frame["ad_text"])]
    return frame


@pytest.mark.parametrize("change, reason", [
    (new_words, "tokenizer out-of-vocabulary rate"),
    (add_unknown("user_segment", "vip"), "1 new user_segment values the champion's model has no rows for (vip)"),
    ("embed_dim", "built with other train_ctcvr params: embed_dim 16 -> 8"),
])
def test_ctcvr_forced_full_records_its_reason(ctcvr_project, tmp_path, monkeypatch, change, reason):
    copy_project(ctcvr_project, tmp_path, monkeypatch)
    if change == "embed_dim":
        set_params(tmp_path / "params.yaml", train_ctcvr={"embed_dim": 8})
    else:
        part = next(Path(f"data/curated/labeled_impressions/dt={NEW_CTCVR_DAY}").glob("*.parquet"))
        change(pd.read_parquet(part)).to_parquet(part, index=False)
    assert train_ctcvr.main([]) == 0
    training = read_json("metrics/ctcvr_train.json")["training"]
    assert training["mode"] == "full" and reason in training["reason"] and training["continued_from"] is None
    assert training["trained_days"] == ["2026-01-03", "2026-01-04", NEW_CTCVR_DAY]
    lineage = read_json("models/ctcvr/lineage.json")
    assert lineage["mode"] == "full" and reason in lineage["reason"] and lineage["chain"] == []
    assert read_json("models/tokenizer/lineage.json") == lineage


def test_ctcvr_warm_grows_rows_for_new_ads_keywords_and_highlights(ctcvr_project, tmp_path, monkeypatch):
    """A market launches things every day: their values get rows that start as the unknown row."""
    copy_project(ctcvr_project, tmp_path, monkeypatch)
    part = next(Path(f"data/curated/labeled_impressions/dt={NEW_CTCVR_DAY}").glob("*.parquet"))
    frame = pd.read_parquet(part)
    for column, value in (("ad_id", "ad-brand-new"), ("keyword", "garden hose"), ("highlight_id", "hlt-new")):
        frame = add_unknown(column, value)(frame)
    frame.to_parquet(part, index=False)
    assert train_ctcvr.main([]) == 0
    training = read_json("metrics/ctcvr_train.json")["training"]
    assert training["mode"] == "warm" and training["grown_vocabularies"] == {"keyword": 1, "ad_id": 1,
                                                                            "highlight_id": 1}
    champion = ctcvr.CTCVRScorer.load(Path("registry", VERSION, "ctcvr"))
    warm = ctcvr.CTCVRScorer.load("models/ctcvr")
    for name, value in (("ad_id", "ad-brand-new"), ("keyword", "garden hose"), ("highlight_id", "hlt-new")):
        assert warm.config.vocabs[name][:-1] == champion.config.vocabs[name]  # known ids keep their rows
        assert warm.config.vocabs[name][-1] == value
    new_row = warm.model.id_offset["ad_id"].weight[-1]
    assert not torch.equal(new_row, champion.model.id_offset["ad_id"].weight[0])  # trained away from the unknown row


def test_a_grown_scorer_scores_as_its_source_until_trained(ctcvr_project, tmp_path, monkeypatch):
    copy_project(ctcvr_project, tmp_path, monkeypatch)
    champion = ctcvr.CTCVRScorer.load(Path("registry", VERSION, "ctcvr"))
    grown = champion.grown({"keyword": ["garden hose"], "ad_id": ["ad-brand-new"]})
    contexts = [{"vertical": "travel", "keyword": k, "position": 1, "user_segment": champion.config.vocabs["user_segment"][0],
                 "ad_id": a} for k, a in (("garden hose", "ad-brand-new"), (champion.config.vocabs["keyword"][0], "x"))]
    texts = ["Find cheap flights today", "Shop rain jackets"]
    for key in ("p_ctr", "p_cvr"):
        assert grown.score(texts, contexts)[key] == pytest.approx(champion.score(texts, contexts)[key], abs=1e-6)
    assert grown.encoder.index["keyword"]["garden hose"] == len(champion.config.vocabs["keyword"]) + 1
    with pytest.raises(ValueError, match="user_segment cannot grow"):
        champion.grown({"user_segment": ["vip"]})


def test_ctcvr_warm_without_a_champion_trains_in_full(ctcvr_project, tmp_path, monkeypatch):
    copy_project(ctcvr_project, tmp_path, monkeypatch)
    shutil.rmtree("registry")
    assert train_ctcvr.main([]) == 0
    training = read_json("metrics/ctcvr_train.json")["training"]
    assert training["mode"] == "full" and training["reason"] == "no champion to continue from"
    assert len(read_json("models/ctcvr/training_curve.json")["epochs"]) == 4  # train_ctcvr.epochs


# ------------------------------------------------------------------------------ train_attribution
@pytest.fixture(scope="module")
def attribution_project(tmp_path_factory) -> Path:
    """Five days of combo_stats and a champion trained in full on 01-01..01-02 (held out: 01-03)."""
    root = tmp_path_factory.mktemp("attribution-warm")
    (root / "params.yaml").write_text(TINY_PARAMS.read_text())
    world = synthetic_world(n_ads=8)
    write_partitions(root, "combo_stats", synthetic_combo_stats(world, ATTR_DAYS, 3_000))
    synthetic_content_tree(root, world, ATTR_DAYS)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("RELATE_PARAMS", str(root / "params.yaml"))
        assert train_attribution.main(["--ds", "2026-01-04"]) == 0
        publish({"attribution": "models/attribution"})
    for generated in ("models/attribution", "metrics", "plots"):  # the shared tokenizer stays
        shutil.rmtree(root / generated)
    set_params(root / "params.yaml", training={"mode": "warm"})
    return root


@pytest.fixture
def attribution_copy(attribution_project, tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("RELATE_PARAMS", str(tmp_path / "params.yaml"))
    return copy_project(attribution_project, tmp_path, monkeypatch)


def element_rewards(directory: Path) -> pd.Series:
    frame = pd.read_parquet(directory / "element_rewards.parquet")
    return frame.set_index(["ad_id", "slot", "element_id"])["reward"]


def test_attribution_warm_continues_the_champion(attribution_copy):
    champion = Path("registry", VERSION, "attribution")
    assert train_attribution.main([]) == 0
    metrics = read_json("metrics/train_attribution.json")
    assert metrics["training"] == {"mode": "warm", "reason": f"continues from champion {VERSION}",
                                   "continued_from": VERSION, "trained_days": ["2026-01-02", NEW_ATTR_DAY]}
    assert metrics["window_end"] == "2026-01-04" and 0.5 < metrics["holdout_auc"] <= 1
    assert read_json("models/attribution/history.json")[-1]["step"] == 100  # train_attribution.warm_steps
    lineage = read_json("models/attribution/lineage.json")
    assert lineage["mode"] == "warm" and lineage["trained_through"] == NEW_ATTR_DAY and lineage["chain"] == [VERSION]
    assert read_json("models/attribution/vocab.json") == read_json(str(champion / "vocab.json"))
    warm = distance(weights(Path("models/attribution")), weights(champion))
    # a model trained in full on the same window (same vocabulary here) lands further from the champion's weights
    set_params(attribution_copy / "params.yaml", training={"mode": "full"})
    assert train_attribution.main([]) == 0
    assert read_json("models/attribution/vocab.json") == read_json(str(champion / "vocab.json"))
    assert 0 < warm < distance(weights(Path("models/attribution")), weights(champion))


def test_attribution_rerun_of_the_champions_day_retrains_it_as_it_was(attribution_copy):
    assert train_attribution.main(["--ds", "2026-01-04"]) == 0  # the champion's own day again
    training = read_json("metrics/train_attribution.json")["training"]
    assert training["mode"] == "full" and "trained attribution before" in training["reason"]
    champion = Path("registry", VERSION, "attribution")
    assert distance(weights(Path("models/attribution")), weights(champion)) == 0  # a rerun is idempotent


def new_day_rows(change) -> None:
    part = Path(f"data/curated/combo_stats/dt={NEW_ATTR_DAY}/part-00000.parquet")
    change(pd.read_parquet(part)).to_parquet(part, index=False)


@pytest.mark.parametrize("change, reason", [
    (lambda f: f.assign(ad_id=np.where(f.index < 5, "ad999", f["ad_id"])), "1 new ads the champion's model has no rows"),
    (lambda f: f.assign(title_id=np.where(f.index < 1, "brand-new-title", f["title_id"])),
     "1 new elements the champion's model has no rows for (ad000/title/brand-new-title)"),
    (None, "built with other train_attribution params: embed_dim 8 -> 4"),
])
def test_attribution_forced_full_records_its_reason(attribution_copy, change, reason):
    if change is None:
        set_params(attribution_copy / "params.yaml", train_attribution={"embed_dim": 4})
    else:
        new_day_rows(change)
    assert train_attribution.main([]) == 0
    training = read_json("metrics/train_attribution.json")["training"]
    assert training["mode"] == "full" and reason in training["reason"] and training["continued_from"] is None
    lineage = read_json("models/attribution/lineage.json")
    assert lineage["mode"] == "full" and reason in lineage["reason"]
    assert read_json("models/attribution/history.json")[-1]["step"] == 150  # train_attribution.steps (tiny)


def test_attribution_checks_pairs_and_context_values(attribution_copy):
    """The forced-full checks the combo_stats source cannot reach: unseen pairs, context values."""
    champion = attr.AttributionScorer.load(Path("registry", VERSION, "attribution"))
    cfg = load_config(train_attribution.TrainAttributionConfig, "train_attribution")
    warm = Start("train_attribution", "warm", "test", Path("registry"), VERSION, "2026-01-02")
    ad, (title, image) = champion.vocab.ads[0], champion.vocab.pairs[0][1:]
    known = [e for a, s, e in champion.vocab.elements if a == ad and s == "title" and e != title][0]
    assert (ad, known, image) not in champion.vocab.pairs or True
    rows = pd.DataFrame({"ad_id": [ad], "title_id": [title], "image_id": [image], "highlight_id": [None]})
    assert train_attribution.check_champion(cfg, warm, champion, rows).warm
    unpaired = [(t, i) for t in champion.vocab.ad_elements(ad)["title"] for i in champion.vocab.ad_elements(ad)["image"]
                if (ad, t, i) not in champion.vocab.pairs]
    if unpaired:
        rows = rows.assign(title_id=[unpaired[0][0]], image_id=[unpaired[0][1]])
        assert "new (title, image) pairs" in train_attribution.check_champion(cfg, warm, champion, rows).reason
    champion.meta["context_features"] = ["user_segment"]
    champion.vocab.context["user_segment"] = ["students"]
    cfg.context_features = ["user_segment"]
    cfg.source = champion.meta["source"] = "labeled_impressions"
    rows = rows.assign(title_id=[title], image_id=[image], user_segment=["retirees"])
    assert "1 new user_segment values the champion's model has no rows for (retirees)" in \
        train_attribution.check_champion(cfg, warm, champion, rows).reason


def test_attribution_warm_without_a_champion_trains_in_full(attribution_copy):
    (attribution_copy / "registry" / "champion.json").unlink()
    assert train_attribution.main([]) == 0
    training = read_json("metrics/train_attribution.json")["training"]
    assert training == {"mode": "full", "reason": "no champion to continue from", "continued_from": None,
                        "trained_days": ["2026-01-02", NEW_ATTR_DAY]}
