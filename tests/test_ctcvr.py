"""CTCVR reward model: loss, learning a planted signal, artifacts, scoring API, train stage."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

from pipelines import evaluate_ctcvr, train_ctcvr
from plumbing.config import dump_params, load_config, load_params
from relate_models import ctcvr
from relate_models.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer
from tests.conftest import ROOT

WORDS = "save big on great deals today shop now best prices quality fast delivery trusted brand new offers".split()
VERTICALS = {"travel": ["cheap flights", "hotel deals"], "finance": ["loan rates", "credit card"], "home": ["sofa sale", "lamp"]}
BOOST, DAMPEN = "free", "guaranteed"  # BOOST raises CTR; DAMPEN lowers CVR
FATIGUE = 0.5  # CTR multiplier per earlier showing of the same text to the same user (up to 3)


def synthetic_impressions(n: int, seed: int, texts_per_ad: int = 30, users: int = 150, fatigue: float = 1.0) -> pd.DataFrame:
    """Search + feed impressions with the curated schema and planted effects (seed = day: ts grow with it).

    `fatigue` < 1 multiplies CTR per earlier showing (within this frame) of the text to the user."""
    rng = np.random.default_rng(seed)
    catalog = []
    for vertical, keywords in VERTICALS.items():
        for keyword in keywords:
            for _ in range(texts_per_ad):
                words = list(rng.choice(WORDS, size=rng.integers(4, 9)))
                if rng.random() < 0.5:
                    words.insert(rng.integers(0, len(words)), keyword)
                if rng.random() < 0.3:
                    words.insert(rng.integers(0, len(words)), BOOST)
                if rng.random() < 0.3:
                    words.insert(rng.integers(0, len(words)), DAMPEN)
                catalog.append((" ".join(words).capitalize(), keyword, vertical))
    pick = rng.integers(0, len(catalog), size=n)
    text, keyword, vertical = (np.array([c[i] for c in catalog])[pick] for i in range(3))
    segment = rng.choice(["new", "returning", "loyal"], size=n)
    modifier = rng.choice(["", "near me", "online", "best"], size=n)
    position = rng.integers(1, 5, size=n)
    has_boost = np.char.find(np.char.lower(text.astype(str)), BOOST) >= 0
    has_dampen = np.char.find(np.char.lower(text.astype(str)), DAMPEN) >= 0
    user_rng = np.random.default_rng([seed, 1])  # own stream: the label draws below stay as they were
    user = np.array([f"u{u:04d}" for u in user_rng.integers(0, users, size=n)])
    highlight = np.array([f"hlt-{h}" for h in np.random.default_rng([seed, 2]).integers(0, 3, size=n)])
    text_id = np.array([f"txt-{pick_id:05d}" for pick_id in pick])
    prior = pd.DataFrame({"u": user, "t": text_id}).groupby(["u", "t"]).cumcount().to_numpy()  # rows in ts order
    p_click = 1 / (1 + np.exp(-(-2.2 + 1.6 * has_boost - 0.25 * (position - 1)))) * fatigue ** np.minimum(prior, 3)
    p_conv = 1 / (1 + np.exp(-(-0.8 - 2.0 * has_dampen + 0.5 * (segment == "loyal"))))
    clicked = rng.random(n) < p_click
    converted = clicked & (rng.random(n) < p_conv)
    return pd.DataFrame({
        "impression_id": [f"imp-{seed}-{i}" for i in range(n)],
        "ts": seed * 86_400_000 + np.arange(n, dtype=np.int64) * 1000, "user_id": user, "text_id": text_id,
        "ad_id": [f"ad-{k.replace(' ', '-')}" for k in keyword],
        "placement": np.where(rng.random(n) < 0.85, "search", "feed"),
        "ad_text": text, "keyword": keyword, "query": [f"{k} {m}".strip() for k, m in zip(keyword, modifier)], "vertical": vertical, "user_segment": segment,
        "position": position.astype(np.int32), "highlight_id": highlight, "clicked": clicked.astype(np.int32),
        "converted": converted.astype(np.int32), "label_complete": True,
        "true_p_click": p_click, "true_p_ctcvr": p_click * p_conv,  # test oracle; the stage never reads them
        ctcvr.EXPOSURES: prior,  # what train_ctcvr derives from the logs (a test checks it does)
    })


def write_curated(root, days: dict[str, pd.DataFrame]) -> None:
    for ds, frame in days.items():
        part = root / "data" / "curated" / "labeled_impressions" / f"dt={ds}"
        part.mkdir(parents=True)
        frame.to_parquet(part / "part-00000.parquet", index=False)


def tiny_params(path, **overrides) -> None:
    """params.yaml's training (mode full), train_ctcvr and evaluate_ctcvr sections at this file's test size."""
    params = load_params(ROOT / "params.yaml")
    section = {**params["train_ctcvr"], "seed": 7, "train_days": 3, "val_fraction": 0.1, "vocab_size": 400, "epochs": 4,
               "batch_size": 256, "learning_rate": 0.01, "embed_dim": 16, "context_dim": 8, "hidden_dim": 32,
               "bigram_buckets": 5000, "baseline_n_features": 4096, "torch_threads": 1, **overrides}
    path.write_text(dump_params({"training": {**params["training"], "mode": "full"}, "train_ctcvr": section,
                                 "evaluate_ctcvr": {**params["evaluate_ctcvr"], "ece_bins": 10}}))


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(synthetic_impressions(2000, 0)["ad_text"], vocab_size=400)


@pytest.fixture(scope="module")
def trained(tokenizer):
    """A model fitted on synthetic data with the planted effects."""
    torch.set_num_threads(1)  # 2 threads thrash when other jobs share the 2 cores
    frame = synthetic_impressions(30000, 1, fatigue=FATIGUE)
    fields = (*ctcvr.CONTEXT_FIELDS, "ad_id")
    cfg = ctcvr.CTCVRConfig(vocab_size=len(tokenizer), vocabs={n: train_ctcvr.vocab(frame, n) for n in fields},
                            bigram_buckets=5000, embed_dim=16, context_dim=8, hidden_dim=32, dropout=0.0,
                            id_fields=["ad_id"], max_exposures=4)
    encoder = ctcvr.FeatureEncoder(cfg, tokenizer)
    result = ctcvr.fit(cfg, encoder, ctcvr.build_train_data(encoder, frame[:27000]),
                       ctcvr.build_train_data(encoder, frame[27000:]), epochs=6, batch_size=512, lr=0.02,
                       weight_decay=0.0, seed=3, id_dropout=0.2, ema_decay=0.9, log=lambda _: None)
    return ctcvr.CTCVRScorer(result.model, tokenizer), result


def test_esmm_loss_matches_manual_computation():
    ctr_logit = torch.tensor([0.0, 1.0, -2.0, 0.5])
    cvr_logit = torch.tensor([1.0, -1.0, 0.0, 2.0])
    clicked = torch.tensor([1.0, 1.0, 0.0, 0.0])
    converted = torch.tensor([1.0, 0.0, 0.0, 0.0])
    loss, parts = ctcvr.esmm_loss(ctr_logit, cvr_logit, clicked, converted)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    p_ctr = [sig(float(x)) for x in ctr_logit]
    p_ctcvr = [p * sig(float(x)) for p, x in zip(p_ctr, cvr_logit)]
    bce = lambda y, p: -(y * math.log(p) + (1 - y) * math.log(1 - p))  # noqa: E731
    ctr_manual = sum(bce(y, p) for y, p in zip(clicked.tolist(), p_ctr)) / 4
    ctcvr_manual = sum(bce(y, p) for y, p in zip((clicked * converted).tolist(), p_ctcvr)) / 4
    assert parts["ctr"] == pytest.approx(ctr_manual, rel=1e-5)
    assert parts["ctcvr"] == pytest.approx(ctcvr_manual, rel=1e-5)
    assert float(loss) == pytest.approx(ctr_manual + ctcvr_manual, rel=1e-5)


def test_model_shapes_and_finite_loss(tokenizer):
    frame = synthetic_impressions(64, 2)
    cfg = ctcvr.CTCVRConfig(vocab_size=len(tokenizer), vocabs={n: train_ctcvr.vocab(frame, n) for n in ctcvr.CONTEXT_FIELDS},
                            bigram_buckets=100, max_tokens=12)
    encoder = ctcvr.FeatureEncoder(cfg, tokenizer)
    data = ctcvr.build_train_data(encoder, frame)
    batch = data.batch(encoder, torch.arange(10))
    assert batch["tokens"].shape == (10, 12) and batch["bigrams"].shape == (10, 13) and batch["dense"].shape == (10, 4)
    ctr_logit, cvr_logit = ctcvr.CTCVRModel(cfg)(batch)
    assert ctr_logit.shape == cvr_logit.shape == (10,)
    loss, _ = ctcvr.esmm_loss(ctr_logit, cvr_logit, data.clicked[:10], data.converted[:10])
    loss.backward()
    assert torch.isfinite(loss)
    # the encoder on raw texts/contexts gives the same features as the training-data path
    direct = encoder.encode(frame["ad_text"][:10].tolist(), frame[:10].to_dict("records"))
    for key in batch:
        assert torch.equal(direct[key], batch[key]), key


def test_learns_planted_signal(trained):
    scorer, result = trained
    assert result.curve[-1]["val_auc_ctr"] > 0.65
    ctx = {"keyword": "cheap flights", "vertical": "travel", "position": 1, "user_segment": "new"}
    texts = ["Save big on great deals today", f"Save big on {BOOST} great deals today",
             f"Save big on {DAMPEN} great deals today"]
    out = scorer.score(texts, [ctx] * 3)
    assert out["p_ctr"][1] > out["p_ctr"][0] + 0.05, out  # BOOST raises CTR
    assert out["p_cvr"][2] < out["p_cvr"][0] - 0.05, out  # DAMPEN lowers CVR
    held = synthetic_impressions(4000, 9, fatigue=FATIGUE)
    pred = scorer.score(held["ad_text"].tolist(), held.to_dict("records"))
    boost = held["ad_text"].str.lower().str.contains(BOOST).to_numpy()
    dampen = held["ad_text"].str.lower().str.contains(DAMPEN).to_numpy()
    assert pred["p_ctr"][boost].mean() > 1.5 * pred["p_ctr"][~boost].mean()
    assert pred["p_cvr"][dampen].mean() < 0.75 * pred["p_cvr"][~dampen].mean()
    ctcvr_label = held["clicked"] * held["converted"]
    # held-out texts are new (another catalog): the model generalises through tokens, not text ids
    assert ctcvr.auc(held["clicked"], pred["p_ctr"]) > 0.9 * ctcvr.auc(held["clicked"], held["true_p_click"])
    assert ctcvr.auc(ctcvr_label, pred["p_ctcvr"]) > 0.9 * ctcvr.auc(ctcvr_label, held["true_p_ctcvr"])


def test_prior_exposures_counts_earlier_showings_in_time_order():
    users = ["a", "a", "b", "a", "a", "b"]
    items = ["x", "x", "x", "y", "x", "x"]
    ts = [30, 10, 20, 40, 10, 5]  # out of order, with a tie (rows 1 and 4: input order breaks it)
    np.testing.assert_array_equal(ctcvr.prior_exposures(users, items, ts), [2, 0, 1, 0, 1, 0])


def test_learns_fatigue_and_scores_absent_ids_as_an_average_ad(trained):
    scorer, _ = trained
    ctx = {"keyword": "lamp", "vertical": "home", "position": 1, "user_segment": "new", "ad_id": "ad-lamp"}
    texts = ["Save big on great deals today"] * 4
    out = scorer.score(texts, [ctx, {**ctx, ctcvr.EXPOSURES: 1}, {**ctx, ctcvr.EXPOSURES: 3}, {**ctx, ctcvr.EXPOSURES: 99}])
    ratio = out["p_ctr"][1:] / out["p_ctr"][0]
    assert 0.35 < ratio[0] < 0.7 and ratio[1] < 0.3, ratio  # planted: x0.5 per earlier showing, up to 3
    assert out["p_ctr"][3] == pytest.approx(out["p_ctr"][2], rel=0.3)  # clipped at max_exposures
    # the id offset is additive: without an ad id every text moves by the same logit shift
    held = synthetic_impressions(500, 11, fatigue=FATIGUE)
    with_id = scorer.score(held["ad_text"].tolist(), held.to_dict("records"))
    without = scorer.score(held["ad_text"].tolist(), held.drop(columns="ad_id").to_dict("records"))
    for key in ("p_ctr", "p_cvr"):
        shift = torch.logit(torch.from_numpy(with_id[key])) - torch.logit(torch.from_numpy(without[key]))
        by_ad = pd.Series(shift.numpy()).groupby(held["ad_id"].to_numpy()).agg(["min", "max"])
        assert (by_ad["max"] - by_ad["min"]).max() < 1e-3, by_ad
    # id dropout taught the unknown id the average ad: mean predictions stay calibrated without ids
    assert without["p_ctcvr"].mean() == pytest.approx(with_id["p_ctcvr"].mean(), rel=0.25)


def test_feed_clicks_teach_the_shared_conversion_effects(tokenizer):
    """Few search conversions, many feed clicks: the feed head's gradient reaches the search pCVR's
    segment weight and ad offset, and learns its own highlight offsets; scoring never uses it."""
    torch.set_num_threads(1)
    search = synthetic_impressions(4000, 21)
    rng = np.random.default_rng(5)
    n = 12000
    feed = pd.DataFrame({"vertical": rng.choice(list(VERTICALS), size=n), "user_segment": rng.choice(["new", "returning", "loyal"], size=n),
                         "ad_id": rng.choice(sorted(search["ad_id"].unique()), size=n), "highlight_id": rng.choice(["h0", "h1"], size=n)})
    # the same conversion truth as the search rows (loyal +0.5) plus a feed-only highlight effect
    logit = -0.8 + 0.5 * (feed["user_segment"] == "loyal") + 1.0 * (feed["highlight_id"] == "h1")
    feed["converted"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int32)
    fields = (*ctcvr.CONTEXT_FIELDS, "ad_id")
    vocabs = {**{f: train_ctcvr.vocab(search, f) for f in fields}, "highlight_id": ["h0", "h1"]}
    cfg = ctcvr.CTCVRConfig(vocab_size=len(tokenizer), vocabs=vocabs, bigram_buckets=2000, embed_dim=8, context_dim=4,
                            hidden_dim=16, dropout=0.0, id_fields=["ad_id"], feed_conversions=True, feed_fields=["highlight_id"])
    encoder = ctcvr.FeatureEncoder(cfg, tokenizer)
    train, val = ctcvr.build_train_data(encoder, search[:3600]), ctcvr.build_train_data(encoder, search[3600:])
    with pytest.raises(ValueError, match="feed_conversions is off"):
        ctcvr.fit(dataclasses.replace(cfg, feed_conversions=False), encoder, train, val, epochs=1, batch_size=512,
                  lr=0.02, weight_decay=0.0, seed=3, feed=ctcvr.build_feed_clicks(encoder, feed))
    result = ctcvr.fit(cfg, encoder, train, val, epochs=5, batch_size=256, lr=0.02, weight_decay=0.0, seed=3,
                       feed=ctcvr.build_feed_clicks(encoder, feed), log=lambda _: None)
    model = result.model
    highlight = model.feed_cvr_offset["highlight_id"].weight[:, 0].detach()
    assert float(highlight[2] - highlight[1]) == pytest.approx(1.0, abs=0.3)
    segment = model.cvr_wide.context["user_segment"].weight[:, 0].detach()
    index = encoder.index["user_segment"]
    assert float(segment[index["loyal"]] - segment[index["new"]]) == pytest.approx(0.5, abs=0.25)
    # the search pCVR carries the segment effect the feed taught (without feed rows: lift 0.13 from 125 conversions)
    scorer = ctcvr.CTCVRScorer(model, tokenizer)
    ctx = {"keyword": "lamp", "vertical": "home", "position": 1}
    out = scorer.score(["Save big on great deals today"] * 2, [{**ctx, "user_segment": "loyal"}, {**ctx, "user_segment": "new"}])
    lift = float(torch.logit(torch.from_numpy(out["p_cvr"]))[0] - torch.logit(torch.from_numpy(out["p_cvr"]))[1])
    assert lift == pytest.approx(0.5, abs=0.3)


def test_segment_token_cross_learns_which_segment_clicks_a_word(tokenizer):
    """BOOST raises CTR for loyal users only: the (segment, token) wide weights carry that."""
    torch.set_num_threads(1)
    frame = synthetic_impressions(12000, 23)
    rng = np.random.default_rng(6)
    boost = frame["ad_text"].str.lower().str.contains(BOOST).to_numpy()
    logit = -2.0 + 1.5 * (boost & (frame["user_segment"] == "loyal").to_numpy())
    frame["clicked"] = (rng.random(len(frame)) < 1 / (1 + np.exp(-logit))).astype(np.int32)
    frame["converted"] = frame["clicked"] * (rng.random(len(frame)) < 0.3)
    cfg = ctcvr.CTCVRConfig(vocab_size=len(tokenizer), vocabs={f: train_ctcvr.vocab(frame, f) for f in ctcvr.CONTEXT_FIELDS},
                            bigram_buckets=2000, embed_dim=8, context_dim=4, hidden_dim=16, dropout=0.0,
                            segment_token_cross=True)
    encoder = ctcvr.FeatureEncoder(cfg, tokenizer)
    result = ctcvr.fit(cfg, encoder, ctcvr.build_train_data(encoder, frame[:11000]),
                       ctcvr.build_train_data(encoder, frame[11000:]), epochs=4, batch_size=256, lr=0.02,
                       weight_decay=0.0, seed=3, log=lambda _: None)
    cross = result.model.ctr_wide.segment_token.weight[:, 0].detach()
    token = tokenizer.backend_tokenizer.encode(" " + BOOST, add_special_tokens=False).ids[-1]
    segment = encoder.index["user_segment"]
    assert float(cross[segment["loyal"] * cfg.vocab_size + token] - cross[segment["new"] * cfg.vocab_size + token]) > 0.3
    scorer = ctcvr.CTCVRScorer(result.model, tokenizer)
    ctx = {"keyword": "lamp", "vertical": "home", "position": 1}
    texts = ["Save big on great deals today", f"Save big on {BOOST} great deals today"]
    lift = {seg: np.diff(np.log(scorer.score(texts, [{**ctx, "user_segment": seg}] * 2)["p_ctr"]))[0]
            for seg in ("loyal", "new")}
    assert lift["loyal"] > lift["new"] + 0.15, lift  # a mean bag dilutes one word of ~8 (planted: 1.5 logits)


def test_save_load_round_trip_identical(trained, tmp_path):
    scorer, _ = trained
    scorer.save(tmp_path / "ctcvr")
    loaded = ctcvr.CTCVRScorer.load(tmp_path / "ctcvr")
    frame = synthetic_impressions(300, 4)
    a = scorer.score(frame["ad_text"].tolist(), frame.to_dict("records"))
    b = loaded.score(frame["ad_text"].tolist(), frame.to_dict("records"))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        ctcvr.CTCVRScorer.load(tmp_path / "nowhere")


def test_scoring_api_contract(trained):
    scorer, _ = trained
    texts = ["Free cheap flights today", "", "x" * 500, "Unseen wörds ✈ here"]
    contexts = [
        {"keyword": "cheap flights", "vertical": "travel", "position": 1, "user_segment": "new"},
        {"keyword": "never seen", "vertical": "space travel", "position": 99, "user_segment": "alien"},
        {},
        {"keyword": None, "position": "garbage"},
    ]
    out = scorer.score(texts, contexts)
    assert set(out) == {"p_ctr", "p_cvr", "p_ctcvr"}
    for values in out.values():
        assert values.shape == (4,) and np.all((values >= 0) & (values <= 1)) and np.all(np.isfinite(values))
    np.testing.assert_allclose(out["p_ctcvr"], out["p_ctr"] * out["p_cvr"], rtol=1e-6)
    empty = scorer.score([], [])
    assert all(v.shape == (0,) for v in empty.values())
    with pytest.raises(ValueError, match="2 texts but 1 contexts"):
        scorer.score(["a", "b"], [{}])


def test_tokenizer_round_trip_offsets_and_autotokenizer(tokenizer, tmp_path):
    text = "Free cheap flights, guaranteed ✈ today!"
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    assert tokenizer.decode(enc["input_ids"]) == text
    pieces = [text[a:b] for a, b in enc["offset_mapping"]]
    assert "Free" in "".join(pieces) and all(0 <= a <= b <= len(text) for a, b in enc["offset_mapping"])
    start = text.index("flights")
    covering = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < start + 7 and b > start]
    assert "flights" in tokenizer.decode([enc["input_ids"][i] for i in covering])
    save_tokenizer(tokenizer, tmp_path / "tok")
    auto = AutoTokenizer.from_pretrained(str(tmp_path / "tok"), local_files_only=True)
    assert auto(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert (auto.pad_token, auto.bos_token, auto.eos_token, auto.unk_token) == ("<pad>", "<bos>", "<eos>", "<unk>")
    assert load_tokenizer(tmp_path / "tok")(text)["input_ids"] == enc["input_ids"]


def test_train_stage_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    days = {f"2026-01-0{d}": synthetic_impressions(2500, d) for d in range(1, 7)}
    days["2026-01-06"]["label_complete"] = False  # last day's labels still open: eval day is 01-05
    write_curated(tmp_path, days)
    tiny_params(tmp_path / "params.yaml", feed_conversions=True)
    assert train_ctcvr.main([]) == 0
    metrics = json.loads((tmp_path / "metrics" / "ctcvr_train.json").read_text())
    assert metrics["eval_day"] == "2026-01-05" and metrics["train_days"] == ["2026-01-02", "2026-01-03", "2026-01-04"]
    assert metrics["auc_ctr"] > 0.6 and metrics["auc_ctcvr"] > 0.6 and 0 <= metrics["ece_ctcvr"] < 0.1
    # earlier showings of a text to a user are counted over the search logs, history days before the window included
    cfg = load_config(train_ctcvr.TrainCTCVRConfig, "train_ctcvr")
    train_frame, eval_frame = train_ctcvr.load_window(cfg, sorted(days), metrics["train_days"], "2026-01-05")
    logs = pd.concat([days[ds] for ds in sorted(days)]).query("placement == 'search'")  # in ts order
    expected = logs.groupby(["user_id", "text_id"]).cumcount().set_axis(logs["impression_id"])
    for frame in (train_frame, eval_frame):
        np.testing.assert_array_equal(frame[ctcvr.EXPOSURES].to_numpy(), expected.loc[frame["impression_id"]].to_numpy())
    assert (eval_frame[ctcvr.EXPOSURES] > 0).mean() > 0.2
    pred = pd.read_parquet(tmp_path / "models" / "ctcvr" / "heldout_predictions.parquet")
    assert len(pred) == metrics["n_eval"] and pred["impression_id"].is_unique
    assert {"impression_id", "p_ctr", "p_cvr", "p_ctcvr", "baseline_p_ctcvr"} <= set(pred.columns)
    np.testing.assert_allclose(pred["p_ctcvr"], pred["p_ctr"] * pred["p_cvr"], rtol=1e-6)
    scorer = ctcvr.CTCVRScorer.load(tmp_path / "models" / "ctcvr")
    assert scorer.score(["Free deals"], [{"vertical": "travel"}])["p_ctcvr"].shape == (1,)
    assert AutoTokenizer.from_pretrained(str(tmp_path / "models" / "tokenizer"), local_files_only=True) is not None
    curve = json.loads((tmp_path / "models" / "ctcvr" / "training_curve.json").read_text())
    assert len(curve["epochs"]) == 4
    # evaluate against a truth tree holding the planted probabilities of the eval day
    truth = days["2026-01-05"][["impression_id", "true_p_click", "true_p_ctcvr"]]
    truth = truth.assign(p_click=truth["true_p_click"], p_conv_given_click=truth["true_p_ctcvr"] / truth["true_p_click"])
    truth_dir = tmp_path / "data" / "sim_truth" / "impressions" / "dt=2026-01-05"
    truth_dir.mkdir(parents=True)
    truth[["impression_id", "p_click", "p_conv_given_click"]].to_parquet(truth_dir / "part-00000.parquet")
    assert evaluate_ctcvr.main([]) == 0
    report = json.loads((tmp_path / "metrics" / "ctcvr.json").read_text())
    for key in ("auc_ctcvr", "oracle_auc_ctcvr", "baseline_auc_ctcvr", "auc_ctr", "oracle_auc_ctr", "logloss_ctcvr",
                "ece_ctcvr", "auc_ratio_ctcvr"):
        assert np.isfinite(report[key]), key
    assert report["auc_ctcvr"] == pytest.approx(metrics["auc_ctcvr"])
    assert report["auc_ratio_ctcvr"] == pytest.approx(report["auc_ctcvr"] / report["oracle_auc_ctcvr"])
    assert 0.5 < report["oracle_auc_ctcvr"] < 1 and report["corr_vs_true_p_ctcvr"] > 0.5
    for name in ("training_curve.png", "training_curve.csv", "reliability.png", "reliability.csv"):
        assert (tmp_path / "plots" / "ctcvr" / name).stat().st_size > 0, name
    # a rerun gives the same predictions (determinism)
    assert train_ctcvr.main(["--ds", "2026-01-06"]) == 0
    again = pd.read_parquet(tmp_path / "models" / "ctcvr" / "heldout_predictions.parquet")
    np.testing.assert_array_equal(pred["p_ctcvr"].to_numpy(), again["p_ctcvr"].to_numpy())


def test_train_stage_rejects_window_without_clicks(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    days = {f"2026-01-0{d}": synthetic_impressions(300, d).assign(clicked=0, converted=0) for d in range(1, 4)}
    write_curated(tmp_path, days)
    tiny_params(tmp_path / "params.yaml")
    assert train_ctcvr.main([]) == 2
    assert "no clicks" in caplog.text
    assert not (tmp_path / "models" / "ctcvr").exists()


def test_train_stage_rejects_missing_data_and_bad_params(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    tiny_params(tmp_path / "params.yaml")
    assert train_ctcvr.main([]) == 2
    assert "no labeled_impressions partitions" in caplog.text
    tiny_params(tmp_path / "params.yaml", train_days=0)
    assert train_ctcvr.main([]) == 2
    assert "train_ctcvr.train_days" in caplog.text
    tiny_params(tmp_path / "params.yaml", id_fields=["keyword"])
    assert train_ctcvr.main([]) == 2
    assert "train_ctcvr.id_fields" in caplog.text
    days = {"2026-01-01": synthetic_impressions(300, 1), "2026-01-02": synthetic_impressions(300, 2).assign(converted=0)}
    write_curated(tmp_path, days)
    tiny_params(tmp_path / "params.yaml")
    assert train_ctcvr.main([]) == 2  # eval day 01-02 has no conversions
    assert "no conversions" in caplog.text
    tiny_params(tmp_path / "params.yaml", id_fields=["campaign_id"])
    assert train_ctcvr.main([]) == 2
    assert "missing column(s) campaign_id" in caplog.text
    tiny_params(tmp_path / "params.yaml", feed_conversions=True, feed_fields=["ad_text"])
    assert train_ctcvr.main([]) == 2
    assert "train_ctcvr.feed_fields" in caplog.text
    tiny_params(tmp_path / "params.yaml", wide=False)
    assert train_ctcvr.main([]) == 2
    assert "train_ctcvr.segment_token_cross" in caplog.text
    tiny_params(tmp_path / "params.yaml", feed_conversions=True, wide=False, segment_token_cross=False)
    assert train_ctcvr.main([]) == 2
    assert "train_ctcvr.feed_conversions" in caplog.text
    tiny_params(tmp_path / "params.yaml", feed_conversions=True, feed_fields=["badge_id"])
    assert train_ctcvr.main([]) == 2
    assert "missing column(s) badge_id (feed_conversions)" in caplog.text


def test_evaluate_stage_rejects_missing_predictions(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    tiny_params(tmp_path / "params.yaml")
    assert evaluate_ctcvr.main([]) == 2
    assert "heldout_predictions.parquet missing" in caplog.text
