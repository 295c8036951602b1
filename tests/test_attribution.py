"""GenCO's MIL attribution model: shapes, attention, recovery under confounding, artifacts, the stage."""
from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
import pytest
import torch
from scipy.stats import spearmanr

from plumbing.logs import get_logger
from relate_models import attribution as attr
from plumbing.metrics import binomial_nll_logits, weighted_auc

N_TITLES, N_IMAGES, N_HIGHLIGHTS = 6, 6, 4


def synthetic_world(seed: int = 7, n_ads: int = 12) -> dict:
    """Planted element utilities and product appeal (logit scale), per ad."""
    rng = np.random.default_rng(seed)
    ads = {}
    for a in range(n_ads):
        ad_id = f"ad{a:03d}"
        ads[ad_id] = {
            "product_id": f"p{a:03d}",
            "appeal": rng.normal(0, 0.5),
            "title": {f"{ad_id}_t{i}": u for i, u in enumerate(rng.normal(0, 0.4, N_TITLES))},
            "image": {f"{ad_id}_i{i}": u for i, u in enumerate(rng.normal(0, 0.6, N_IMAGES))},
            "highlight": {f"{ad_id}_h{i}": u for i, u in enumerate(rng.normal(0, 0.3, N_HIGHLIGHTS))},
        }
    return ads


def confounded_policy(ad: dict, exploration: float = 0.2) -> tuple[list[tuple], np.ndarray]:
    """All combinations of an ad and the logging policy's probabilities of serving each.

    Exploiting, the policy pairs each title with a fixed image and highlight, anti-aligned
    with the truth (the worst title with the best image, ...), so an element's marginal
    CTR mostly measures its partners. Exploring, it serves uniformly.
    """
    titles = sorted(ad["title"], key=ad["title"].get)  # worst first
    images = sorted(ad["image"], key=ad["image"].get, reverse=True)  # best first
    highlights = sorted(ad["highlight"], key=ad["highlight"].get, reverse=True)
    combos = [(t, i, h) for t in ad["title"] for i in ad["image"] for h in ad["highlight"]]
    prob = np.full(len(combos), exploration / len(combos))
    index = {c: k for k, c in enumerate(combos)}
    for rank, t in enumerate(titles):
        pair = (t, images[rank % len(images)], highlights[rank % len(highlights)])
        prob[index[pair]] += (1 - exploration) / len(titles)
    return combos, prob


def true_logit(ad: dict, combo: tuple) -> float:
    t, i, h = combo
    return -3.0 + ad["appeal"] + ad["title"][t] + ad["image"][i] + ad["highlight"][h]


def synthetic_combo_stats(world: dict, days: list[str], impressions_per_ad_day: int, seed: int = 11) -> pd.DataFrame:
    """combo_stats rows (data contract schema + dt) drawn from the world under the confounded policy."""
    rng = np.random.default_rng(seed)
    rows = []
    for dt in days:
        for ad_id, ad in world.items():
            combos, prob = confounded_policy(ad)
            counts = rng.multinomial(impressions_per_ad_day, prob)
            for combo, p_serve, n in zip(combos, prob, counts):
                if n == 0:
                    continue
                clicks = int(rng.binomial(n, 1 / (1 + np.exp(-true_logit(ad, combo)))))
                rows.append({
                    "dt": dt, "ad_id": ad_id, "title_id": combo[0], "image_id": combo[1], "highlight_id": combo[2],
                    "product_id": ad["product_id"], "vertical": "travel", "impressions": int(n), "clicks": clicks,
                    "conversions": clicks // 10, "ctr": clicks / n, "mean_propensity": float(p_serve),
                })
    return pd.DataFrame(rows)


def truth_table(world: dict) -> pd.DataFrame:
    return pd.DataFrame(
        [(ad_id, slot, e, u) for ad_id, ad in world.items() for slot in attr.SLOTS for e, u in ad[slot].items()],
        columns=["ad_id", "slot", "element_id", "utility"],
    )


def mean_within_spearman(estimate: pd.DataFrame, column: str, truth: pd.DataFrame) -> float:
    merged = truth.merge(estimate, on=["ad_id", "slot", "element_id"])
    rhos = [spearmanr(g["utility"], g[column]).statistic for _, g in merged.groupby(["ad_id", "slot"])]
    return float(np.nanmean(rhos))


def write_partitions(root: Path, table: str, frame: pd.DataFrame) -> None:
    for dt, part in frame.groupby("dt"):
        out = root / "data" / "curated" / table / f"dt={dt}"
        out.mkdir(parents=True, exist_ok=True)
        part.drop(columns="dt").to_parquet(out / "part-00000.parquet", index=False)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def text(self) -> str:
        return "\n".join(self.messages)


@pytest.fixture
def relate_log():
    """The stages' log lines (the 'relate' logger does not propagate to pytest's caplog)."""
    get_logger("attribution-tests")
    handler = _Records()
    logging.getLogger("relate").addHandler(handler)
    yield handler
    logging.getLogger("relate").removeHandler(handler)


DAYS = ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world():
    return synthetic_world(n_ads=8)


@pytest.fixture(scope="module")
def fitted(world):
    """A model fitted on plenty of confounded synthetic traffic (shared: fitting is the slow part)."""
    rows = synthetic_combo_stats(world, DAYS[:3], impressions_per_ad_day=40_000)
    scorer, history = attr.fit(rows, attr.FitSettings(steps=400, seed=3, log_every=100))
    return rows, scorer, history


# --------------------------------------------------------------------------- model mechanics


def tiny_model(context_sizes=None) -> attr.GatedAttentionMIL:
    torch.manual_seed(0)
    return attr.GatedAttentionMIL(attr.ModelConfig(n_elements=10, n_products=3, context_sizes=context_sizes or {},
                                                   embed_dim=8, attention_dim=4, hash_buckets=16))


def test_forward_shapes_and_binomial_loss():
    model = tiny_model({"user_segment": 2})
    element = torch.tensor([[1, 2, 3], [4, 5, 0], [6, 7, 8], [9, 10, 1]])
    present = element > 0
    hashed = torch.where(present, element % 16 + 1, torch.zeros_like(element))
    product = torch.tensor([1, 2, 3, 0])
    out = model(element, hashed, present, product, {"user_segment": torch.tensor([1, 2, 0, 1])})
    assert out["logit"].shape == (4,)
    for key in ("attention", "instance_reward", "contribution"):
        assert out[key].shape == (4, 3)
    # the logit is the biases plus the exact sum of the per-element contributions
    biases = out["logit"] - out["contribution"].sum(-1)
    ctx = model.context_bias["user_segment"](torch.tensor([1, 2, 0, 1])).squeeze(-1)
    assert torch.allclose(biases, model.global_bias + model.product_bias(product).squeeze(-1) + ctx)

    clicks, imps = torch.tensor([1.0, 0.0, 3.0, 2.0]), torch.tensor([10.0, 5.0, 3.0, 4.0])
    p = torch.sigmoid(out["logit"])
    manual = -(clicks * torch.log(p) + (imps - clicks) * torch.log(1 - p)).sum()
    loss = binomial_nll_logits(out["logit"], clicks, imps)
    assert torch.allclose(loss, manual, atol=1e-5)
    loss.backward()
    assert model.element_emb.weight.grad[0].abs().sum() == 0  # padding row never learns
    assert model.element_emb.weight.grad[1:].abs().sum() > 0


def test_gated_attention_sums_to_one_per_bag_and_ignores_absent_slots():
    model = tiny_model()
    element = torch.tensor([[1, 2, 3], [4, 0, 5], [0, 0, 6], [7, 8, 9]])
    present = element > 0
    out = model(element, element % 16 + 1, present, torch.tensor([1, 1, 2, 3]))
    a = out["attention"]
    assert torch.allclose(a.sum(-1), torch.ones(4))
    assert (a[~present] == 0).all() and (a[present] > 0).all()
    assert torch.allclose(a[2], torch.tensor([0.0, 0.0, 1.0]))
    assert (out["contribution"][~present] == 0).all()


def test_pair_effect_is_split_between_title_and_image_and_keeps_the_logit_exact():
    torch.manual_seed(0)
    model = attr.GatedAttentionMIL(attr.ModelConfig(n_elements=10, n_products=3, n_pairs=2, embed_dim=8,
                                                    attention_dim=4, hash_buckets=16))
    with torch.no_grad():
        model.pair_bias.weight[1:] = torch.tensor([[0.8], [-0.4]])
    element = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    inputs = dict(element=element, hashed=element % 16 + 1, present=element > 0, product=torch.tensor([1, 2, 3]))
    base = model(**inputs)
    with_pair = model(**inputs, pair=torch.tensor([1, 2, 0]))
    moved = with_pair["contribution"] - base["contribution"]
    assert torch.allclose(moved, torch.tensor([[0.4, 0.4, 0.0], [-0.2, -0.2, 0.0], [0.0, 0.0, 0.0]]))
    assert torch.allclose(with_pair["logit"] - base["logit"], torch.tensor([0.8, -0.4, 0.0]))


def test_learns_a_title_image_interaction_that_moves_the_best_combination():
    """A planted bonus makes the pair of runner-up elements beat the pair of the best elements by 0.6
    logits: the fitted model's argmax must find that pair for every ad."""
    rng = np.random.default_rng(3)
    world = synthetic_world(seed=5, n_ads=4)
    rows, planted = [], {}
    for ad_id, ad in world.items():
        titles = sorted(ad["title"], key=ad["title"].get)
        images = sorted(ad["image"], key=ad["image"].get)
        planted[ad_id] = (titles[-2], images[-2])
        bonus = ad["title"][titles[-1]] + ad["image"][images[-1]] - ad["title"][titles[-2]] - ad["image"][images[-2]]
        bonus += 0.6
        for t, i, h in itertools.product(ad["title"], ad["image"], ad["highlight"]):
            logit = true_logit(ad, (t, i, h)) + bonus * ((t, i) == planted[ad_id])
            rows.append({"ad_id": ad_id, "product_id": ad["product_id"], "title_id": t, "image_id": i,
                         "highlight_id": h, "impressions": 400, "clicks": rng.binomial(400, 1 / (1 + np.exp(-logit)))})
    rows = pd.DataFrame(rows)
    scorer, _ = attr.fit(rows, attr.FitSettings(steps=300, seed=1, log_every=100, l2_pair=8.0))
    for ad_id, ad in world.items():
        grid = rows[rows["ad_id"] == ad_id].reset_index(drop=True)
        result = scorer.score_frame(grid)
        best = grid.iloc[int(np.argmax(result.p_click))]
        assert (best["title_id"], best["image_id"]) == planted[ad_id]
        # and the pair's own effect carries it (not only the attention-pooled embeddings)
        gamma = scorer.model.pair_bias.weight[:, 0].detach().numpy()
        index = {p: scorer.vocab.pair_index[attr._pair_key(ad_id, *p)] for p in itertools.product(ad["title"], ad["image"])}
        assert gamma[index[planted[ad_id]]] > 0.3 and gamma[index[planted[ad_id]]] == max(gamma[i] for i in index.values())
        # per ad, the part of the logit no element claims is one constant (global + product bias)
        rest = result.logit - result.contribution.sum(1)
        np.testing.assert_allclose(rest, rest[0], atol=1e-5)


# --------------------------------------------------------------------------- recovery under confounding


def test_recovers_planted_utilities_better_than_naive_marginal_ctr(world, fitted):
    rows, scorer, history = fitted
    truth = truth_table(world)
    rewards = scorer.element_rewards()
    assert len(rewards) == len(truth)
    mil = mean_within_spearman(rewards, "reward", truth)
    naive = mean_within_spearman(attr.naive_marginal_ctr(rows), "naive_ctr", truth)
    assert mil >= 0.85, f"MIL Spearman {mil:.3f}"
    assert naive < 0.6, f"the confounded policy should fool the naive marginal CTR, got {naive:.3f}"
    assert mil > naive + 0.3
    assert history[-1]["train_nll"] < history[0]["train_nll"]
    # attention weight stats are reported per element and are proper weights
    assert ((rewards["attention_min"] > 0) & (rewards["attention_max"] <= 1)).all()


def test_fit_is_deterministic_given_the_seed(world):
    rows = synthetic_combo_stats(world, DAYS[:1], impressions_per_ad_day=2_000)
    settings = attr.FitSettings(steps=30, seed=5, log_every=10)
    a, _ = attr.fit(rows, settings)
    b, _ = attr.fit(rows, settings)
    pd.testing.assert_frame_equal(a.element_rewards(), b.element_rewards())


def test_fit_rejects_a_window_without_clicks(world):
    rows = synthetic_combo_stats(world, DAYS[:1], impressions_per_ad_day=500).assign(clicks=0)
    with pytest.raises(ValueError, match="no clicks"):
        attr.fit(rows, attr.FitSettings(steps=5))


# --------------------------------------------------------------------------- artifacts and the score API


def test_save_load_round_trip_gives_identical_scores(fitted, tmp_path):
    rows, scorer, _ = fitted
    scorer.save(tmp_path / "model")
    loaded = attr.AttributionScorer.load(tmp_path / "model")
    sample = rows.head(50)
    before, after = scorer.score_frame(sample), loaded.score_frame(sample)
    np.testing.assert_array_equal(before.p_click, after.p_click)
    np.testing.assert_array_equal(before.contribution, after.contribution)
    assert json.loads((tmp_path / "model" / "vocab.json").read_text())["ads"] == scorer.vocab.ads
    assert not list((tmp_path / "model").glob("*.pkl")) and not list((tmp_path / "model").glob("*.pt"))


def test_load_names_the_missing_artifact(tmp_path):
    (tmp_path / "model").mkdir()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        attr.AttributionScorer.load(tmp_path / "model")


def test_score_api_contract(world, fitted):
    _, scorer, _ = fitted
    ad_id = "ad000"
    ad = world[ad_id]
    combos = [{"title": t, "image": i, "highlight": h} for t, i, h in confounded_policy(ad)[0][:20]]
    result = scorer.score(ad_id, combos)  # one ad broadcast over a batch
    assert result.p_click.shape == (20,) and result.contribution.shape == (20, 3)
    assert ((result.p_click > 0) & (result.p_click < 1)).all()
    np.testing.assert_allclose(result.attention.sum(1), 1.0, rtol=1e-6)
    # slots may be named by the *_id column names too
    by_column = scorer.score([ad_id], [{"title_id": combos[0]["title"], "image_id": combos[0]["image"],
                                        "highlight_id": combos[0]["highlight"]}])
    assert by_column.p_click[0] == pytest.approx(result.p_click[0])
    # the score follows the truth: the best true combination outscores the worst
    best = {s: max(ad[s], key=ad[s].get) for s in attr.SLOTS}
    worst = {s: min(ad[s], key=ad[s].get) for s in attr.SLOTS}
    scored = scorer.score([ad_id, ad_id], [best, worst])
    assert scored.p_click[0] > scored.p_click[1]

    with pytest.raises(attr.UnknownIdError, match="ad-nope"):
        scorer.score("ad-nope", combos[:1])
    with pytest.raises(attr.UnknownIdError, match="title element 'new-title'"):
        scorer.score(ad_id, [{**combos[0], "title": "new-title"}])
    with pytest.raises(attr.UnknownIdError, match="ad001_t0"):  # another ad's element is unknown here
        scorer.score(ad_id, [{**combos[0], "title": "ad001_t0"}])
    fallback = scorer.score(["ad-nope", ad_id], [combos[0], {**combos[0], "title": "new-title"}], on_unknown="fallback")
    assert np.isfinite(fallback.p_click).all()
    assert (fallback.unknown_ads, fallback.unknown_elements) == (1, 3 + 1)  # the unknown ad's elements too
    with pytest.raises(ValueError, match="unknown slot"):
        scorer.score(ad_id, [{**combos[0], "subtitle": "x"}])
    with pytest.raises(ValueError, match="2 ad_ids for 1 combinations"):
        scorer.score([ad_id, ad_id], combos[:1])
    partial = scorer.score(ad_id, [{"title": combos[0]["title"], "image": combos[0]["image"]}])
    assert partial.attention[0, 2] == 0 and partial.attention[0, :2].sum() == pytest.approx(1.0)


def test_weighted_auc_matches_impression_level_auc():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 40).astype(float)  # ties included
    pos, neg = rng.integers(0, 4, 40), rng.integers(0, 6, 40)
    labels = np.concatenate([np.ones(pos.sum()), np.zeros(neg.sum())])
    expanded = np.concatenate([np.repeat(scores, pos), np.repeat(scores, neg)])
    assert weighted_auc(scores, pos, neg) == pytest.approx(roc_auc_score(labels, expanded))
    assert np.isnan(weighted_auc(scores, pos * 0, neg))


# --------------------------------------------------------------------------- the stages


def synthetic_curated_tree(root: Path, world: dict, no_clicks: bool = False) -> None:
    rows = synthetic_combo_stats(world, DAYS, impressions_per_ad_day=3_000)
    if no_clicks:
        rows = rows.assign(clicks=0, ctr=0.0)
    write_partitions(root, "combo_stats", rows)
    synthetic_content_tree(root, world, DAYS)


def synthetic_content_tree(root: Path, world: dict, days: list[str], embedding_dim: int = 16) -> None:
    """What a content-aware train_attribution reads beside combo_stats: each day's landed element table
    (data/content/elements) and the shared tokenizer (models/tokenizer)."""
    from relate_models.tokenizer import save_tokenizer, train_tokenizer

    rng = np.random.default_rng(5)
    rows = [{"element_id": e, "ad_id": ad_id, "kind": slot,
             "text": None if slot == "image" else f"{slot} {e.split('_')[-1]} offer",
             "embedding": list(rng.normal(0, 1, embedding_dim)) if slot == "image" else None}
            for ad_id, ad in world.items() for slot in attr.SLOTS for e in ad[slot]]
    frame = pd.DataFrame(rows)
    for dt in days:
        out = root / "data" / "content" / "elements" / f"dt={dt}"
        out.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(out / "part-00000.parquet", index=False)
    save_tokenizer(train_tokenizer(frame["text"].dropna().tolist(), vocab_size=300, min_frequency=1),
                   root / "models" / "tokenizer")


def test_train_stage_end_to_end_on_a_tiny_curated_tree(tiny_params, world):
    from pipelines import train_attribution

    synthetic_curated_tree(Path.cwd(), world)
    assert train_attribution.main([]) == 0
    model_dir = Path("models/attribution")
    for name in ("model.safetensors", "config.json", "vocab.json", "element_rewards.parquet", "history.json"):
        assert (model_dir / name).is_file(), name
    rewards = pd.read_parquet(model_dir / "element_rewards.parquet")
    assert {"ad_id", "slot", "element_id", "reward", "attention_mean", "attention_std", "naive_ctr"} <= set(rewards)
    assert len(rewards) == len(truth_table(world))
    config = json.loads((model_dir / "config.json").read_text())
    # no labeled_impressions: the last day counts as still open, so the window ends the day before
    assert config["holdout_days"] == ["2026-01-03"] and config["train_days"] == ["2026-01-01", "2026-01-02"]
    metrics = json.loads(Path("metrics/train_attribution.json").read_text())
    assert 0.5 < metrics["holdout_auc"] <= 1.0
    assert Path("plots/attribution/training_curve.png").is_file()
    # a rerun gives the same result
    assert train_attribution.main([]) == 0
    pd.testing.assert_frame_equal(rewards, pd.read_parquet(model_dir / "element_rewards.parquet"))
    # --ds caps the window
    assert train_attribution.main(["--ds", "2026-01-02"]) == 2  # only one complete day: too short
    # a history shorter than train_days (a young deployment): trains on the days there are
    params = yaml.safe_load(tiny_params.read_text())
    params["train_attribution"]["train_days"] = 6
    tiny_params.write_text(yaml.safe_dump(params))
    assert train_attribution.main([]) == 0
    config = json.loads((model_dir / "config.json").read_text())
    assert config["train_days"] == ["2026-01-01", "2026-01-02"] and config["holdout_days"] == ["2026-01-03"]


def test_train_stage_uses_labels_as_of_to_pick_complete_days(tiny_params, world):
    from pipelines import train_attribution

    synthetic_curated_tree(Path.cwd(), world)
    # labels of 01-03 were last written on 01-03 itself: clicks may still come in
    labeled = pd.DataFrame({"dt": DAYS, "labels_as_of": ["2026-01-04", "2026-01-04", "2026-01-03", "2026-01-04"],
                            "impression_id": ["i1", "i2", "i3", "i4"]})
    write_partitions(Path.cwd(), "labeled_impressions", labeled)
    assert train_attribution.click_complete_days(DAYS, 1) == ["2026-01-01", "2026-01-02"]


def test_train_stage_exits_2_on_a_window_with_no_clicks(tiny_params, world, relate_log):
    from pipelines import train_attribution

    synthetic_curated_tree(Path.cwd(), world, no_clicks=True)
    assert train_attribution.main([]) == 2
    assert "no clicks in the training window" in relate_log.text()
    assert not Path("models/attribution").exists()


def test_train_stage_exits_2_on_missing_or_empty_input(tiny_params, world, relate_log):
    from pipelines import train_attribution

    assert train_attribution.main([]) == 2  # no curated data at all
    assert "no partitions" in relate_log.text()
    synthetic_curated_tree(Path.cwd(), world)
    empty = Path("data/curated/combo_stats/dt=2026-01-02/part-00000.parquet")
    pd.read_parquet(empty).head(0).to_parquet(empty, index=False)
    assert train_attribution.main([]) == 2
    assert "dt=2026-01-02: partition is empty" in relate_log.text()


def test_evaluate_stage_exits_2_without_a_model(tiny_params, relate_log):
    from pipelines import evaluate_attribution

    assert evaluate_attribution.main([]) == 2
    assert "missing model.safetensors" in relate_log.text()


def test_within_group_spearman():
    from pipelines.evaluate_attribution import within_group_spearman

    frame = pd.DataFrame({
        "ad_id": ["a"] * 4 + ["b"] * 4, "slot": ["title"] * 8,
        "est": [1, 2, 3, 4, 4, 3, 2, 1], "truth": [10, 20, 30, 40, 10, 20, 30, 40],
    })
    result = within_group_spearman(frame, "est", "truth", min_group_size=3)
    assert result["mean_within_ad_slot"] == pytest.approx(0.0)  # +1 and -1
    assert result["groups"] == 2 and result["by_slot"] == {"title": pytest.approx(0.0)}
    with pytest.raises(ValueError, match="no \\(ad, slot\\) group"):
        within_group_spearman(frame, "est", "truth", min_group_size=5)


def test_train_stage_on_labeled_impressions_with_context(tiny_params, world):
    """The impression-level source: feed rows only, context biases, labels_as_of picks the window."""
    import yaml

    from pipelines import train_attribution

    stats = synthetic_combo_stats(world, DAYS, impressions_per_ad_day=400)
    synthetic_content_tree(Path.cwd(), world, DAYS)
    rows = stats.loc[stats.index.repeat(stats["impressions"])].reset_index(drop=True)
    rank = rows.groupby(
        ["dt", "ad_id", "title_id", "image_id", "highlight_id"]).cumcount()
    rows["clicked"] = (rank < rows["clicks"]).astype(int)
    rows["placement"] = "feed"
    rows["user_segment"] = np.where(np.arange(len(rows)) % 3 == 0, "students", "families")
    rows["labels_as_of"] = "2026-01-04"
    rows["impression_id"] = [f"imp{i}" for i in range(len(rows))]
    search = rows.head(5).assign(placement="search", title_id=None, image_id=None, highlight_id=None)
    labeled = pd.concat([rows, search], ignore_index=True)
    write_partitions(Path.cwd(), "labeled_impressions", labeled[
        ["dt", "impression_id", "ad_id", "product_id", "title_id", "image_id", "highlight_id", "placement",
         "user_segment", "clicked", "labels_as_of"]])
    params = yaml.safe_load(tiny_params.read_text())
    params["train_attribution"].update(source="labeled_impressions", context_features=["user_segment"])
    tiny_params.write_text(yaml.safe_dump(params))
    assert train_attribution.main([]) == 0
    config = json.loads(Path("models/attribution/config.json").read_text())
    assert config["context_features"] == ["user_segment"] and config["holdout_days"] == ["2026-01-03"]
    metrics = json.loads(Path("metrics/train_attribution.json").read_text())
    assert metrics["train_impressions"] == int(stats[stats["dt"].isin(DAYS[:2])]["impressions"].sum())
    scorer = attr.AttributionScorer.load("models/attribution")
    assert set(scorer.vocab.context["user_segment"]) == {"students", "families"}

    params["train_attribution"].update(source="combo_stats")
    tiny_params.write_text(yaml.safe_dump(params))
    assert train_attribution.main([]) == 2  # context features need impression-level rows


class _SyntheticOracle:
    """Stands in for relate_sim.oracle.Oracle: true combination CTRs of the synthetic world."""

    def __init__(self, world: dict):
        self.world = world

    def true_combo_ctr(self, ad_id, title_id, image_id, highlight_id) -> float:
        return float(1 / (1 + np.exp(-true_logit(self.world[ad_id], (title_id, image_id, highlight_id)))))


def test_evaluate_stage_end_to_end_with_a_stand_in_truth(tiny_params, world, monkeypatch):
    from pipelines import evaluate_attribution, train_attribution

    synthetic_curated_tree(Path.cwd(), world)
    assert train_attribution.main([]) == 0
    # the stand-in's content function explains everything: the cold ceiling is then exactly 1
    truth = truth_table(world).assign(uniform_marginal_ctr=lambda t: t["utility"], content_utility=lambda t: t["utility"])
    monkeypatch.setattr(evaluate_attribution, "true_utilities", lambda day=None: (truth, _SyntheticOracle(world)))
    assert evaluate_attribution.main([]) == 0
    metrics = json.loads(Path("metrics/attribution.json").read_text())
    assert metrics["elements_matched"] == len(truth) and metrics["groups"] == 3 * len(world)
    assert metrics["spearman_vs_truth"] > metrics["baseline_spearman_vs_truth"]
    assert metrics["beats_baseline"] is True
    assert metrics["auc_level"] == "combination"  # no labeled_impressions in this tree
    # the oracle knows the true CTRs: its AUC bounds the model's from above (up to noise)
    assert 0.5 < metrics["holdout_auc"] <= metrics["oracle_combo_auc"] + 0.02
    assert Path("plots/attribution/scatter.png").stat().st_size > 0
    # an estimator whose priors are centred on the truth itself ranks every element right; the model does not
    ceiling = metrics["content_ceiling"]
    assert ceiling["warm"] == pytest.approx(1.0) and ceiling["cold"] == pytest.approx(1.0)
    assert metrics["spearman_vs_truth"] < ceiling["warm"]
    cold = metrics["cold_start"]  # a quarter of the ads refitted out; their elements' texts carry no signal here
    assert len(cold["held_out_ads"]) == round(0.25 * len(world)) and cold["groups"] == 3 * len(cold["held_out_ads"])
    assert metrics["spearman_cold_start"] == cold["spearman"] < 0.9
