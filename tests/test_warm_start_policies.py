"""Warm starts of the policy stages (sft, grpo, combo_policy): continue the champion's model on the
new days, or fall back to a full run with the reason recorded (lineage.json, the metrics)."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from tests.test_grpo import flat_params, synthetic_texts, world  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
VERSION = "2026-01-05-0123456789"


def set_params(params: Path, **sections) -> None:
    values = yaml.safe_load(params.read_text())
    for section, changes in sections.items():
        values[section].update(changes)
    params.write_text(yaml.safe_dump(values, sort_keys=False))


def make_champion(root: Path, artifacts: dict[str, str], version: str = VERSION) -> Path:
    """Copy model dirs (artifact -> models/<dir>) into registry/<version>/ and point champion.json at it."""
    from pipelines.publish_registry import promote

    registry = root / "registry"
    for artifact, model_dir in artifacts.items():
        shutil.copytree(root / model_dir, registry / version / artifact, dirs_exist_ok=True)
    promote(registry, None, version, {"metrics": {}, "ds": None, "eval_day": None, "serving": None})
    return registry / version


def lineage(model_dir: Path) -> dict:
    return json.loads((model_dir / "lineage.json").read_text())


def add_text_day(root: Path, day: str, texts: pd.DataFrame) -> None:
    part = root / "data/curated/text_stats" / f"dt={day}"
    part.mkdir(parents=True)
    texts.to_parquet(part / "part-00000.parquet", index=False)


def distance(a, b) -> float:
    return float((flat_params(a) - flat_params(b)).norm())


# ------------------------------------------------------------------------------------ sft and grpo


def test_sft_and_grpo_continue_from_the_champion(world, monkeypatch):  # noqa: F811
    from pipelines import grpo, sft
    from relate_models import grpo_trainer
    from relate_models.policy import PolicyConfig, build_policy, load_policy
    from plumbing.config import load_config

    set_params(world / "params.yaml", training={"mode": "warm"}, grpo={"warm_max_steps": 2})
    assert sft.main([]) == 0 and grpo.main([]) == 0  # warm without a champion: full
    for model_dir, metrics in (("models/sft", "sft"), ("models/relate", "grpo")):
        got = lineage(world / model_dir)
        assert got["mode"] == "full" and got["reason"] == "no champion to continue from"
        assert got["trained_through"] == "2026-01-02"
        training = json.loads((world / "metrics" / f"{metrics}.json").read_text())["training"]
        assert training == {"mode": "full", "reason": "no champion to continue from", "continued_from": None,
                            "trained_days": ["2026-01-01", "2026-01-02"]}
    source = make_champion(world, {"sft": "models/sft", "policy": "models/relate"})
    champion_sft, tokenizer = load_policy(source / "sft")
    champion_relate, _ = load_policy(source / "policy")

    # a rerun of the champion's own day never continues from it (it would see the day twice): it
    # retrains as the champion was trained, to the same weights
    assert sft.main(["--ds", "2026-01-02"]) == 0 and grpo.main(["--ds", "2026-01-02"]) == 0
    assert torch.equal(flat_params(load_policy(world / "models/sft")[0]), flat_params(champion_sft))
    assert torch.equal(flat_params(load_policy(world / "models/relate")[0]), flat_params(champion_relate))
    assert "before 2026-01-02" in json.loads((world / "metrics/sft.json").read_text())["training"]["reason"]
    assert lineage(world / "models/relate")["mode"] == "full"

    # a new day: warm_epochs over its texts only, then warm_max_steps GRPO steps from the champion's RELATE
    add_text_day(world, "2026-01-03", synthetic_texts(random.Random(11)))
    assert sft.main([]) == 0
    got = lineage(world / "models/sft")
    assert (got["mode"], got["continued_from"], got["trained_through"]) == ("warm", VERSION, "2026-01-03")
    assert got["chain"] == [VERSION] and got["last_full_trained_through"] == "2026-01-02"
    metrics = json.loads((world / "metrics/sft.json").read_text())
    assert metrics["training"]["trained_days"] == ["2026-01-03"] and metrics["n_train"] > 0
    warm_sft = load_policy(world / "models/sft")[0]
    scratch = build_policy(load_config(PolicyConfig, "policy", world / "params.yaml"), tokenizer)
    moved = distance(warm_sft, champion_sft)
    assert 0 < moved < 0.5 * distance(scratch, champion_sft)  # continued, not rebuilt

    references = []
    build = grpo_trainer.build_trainer
    monkeypatch.setattr(grpo_trainer, "build_trainer",
                        lambda *a, **k: references.append(k["reference"]) or build(*a, **k))
    assert grpo.main([]) == 0
    metrics = json.loads((world / "metrics/grpo.json").read_text())
    assert metrics["steps"] == 2 and metrics["training"]["mode"] == "warm"
    # anchored to the SFT model of the chain's full retrain, not to today's warm SFT
    assert [Path(r).resolve() for r in references] == [(source / "sft").resolve()]
    assert lineage(world / "models/relate")["kl_reference"] == f"{VERSION}/sft"
    warm_relate = load_policy(world / "models/relate")[0]
    # from the champion's RELATE policy, not from today's SFT
    assert 0 < distance(warm_relate, champion_relate) < distance(warm_relate, warm_sft)
    assert lineage(world / "models/relate")["trained_through"] == "2026-01-03"


def test_grpo_reference_is_the_given_policy_not_the_trained_one(world, tmp_path):  # noqa: F811
    from plumbing.config import load_config
    from relate_models.ctcvr import CTCVRScorer
    from relate_models.grpo_trainer import GRPOStageConfig, build_trainer, reward_context
    from relate_models.policy import PolicyConfig, build_policy, load_policy, prompt_text, save_policy
    from relate_models.rewards import build_rewards
    from relate_models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(world / "models/tokenizer")
    policy_cfg = load_config(PolicyConfig, "policy", world / "params.yaml")
    save_policy(build_policy(policy_cfg, tokenizer), tokenizer, tmp_path / "reference")
    torch.manual_seed(3)
    save_policy(build_policy(policy_cfg, tokenizer).apply(_jitter), tokenizer, tmp_path / "trained")
    model, _ = load_policy(tmp_path / "trained", trainable=True)
    cfg = load_config(GRPOStageConfig, "grpo", world / "params.yaml")
    rewards = build_rewards(list(cfg.rewards), reward_context(cfg, CTCVRScorer.load(world / "models/ctcvr"), ["x"]))
    rows = [{"prompt_id": "a|b", "prompt": prompt_text("a", "b"), "vertical": "a", "keyword": "b",
             "user_segment": None}]
    trainer = build_trainer(cfg, model, tokenizer, rewards, rows, reference=tmp_path / "reference",
                            output_dir=str(tmp_path / "out"))
    reference = load_policy(tmp_path / "reference")[0]
    assert torch.equal(flat_params(trainer.ref_model), flat_params(reference))
    assert not torch.equal(flat_params(trainer.ref_model), flat_params(model))
    assert model.config._name_or_path == str(tmp_path / "trained")  # the policy's own path is kept


def _jitter(module) -> None:
    if isinstance(module, torch.nn.Linear):
        with torch.no_grad():
            module.weight.add_(0.05)


def test_sft_and_grpo_forced_full_runs_say_why(world, monkeypatch):  # noqa: F811
    from pipelines import grpo, sft
    from pipelines.warm_start import plan
    from plumbing.config import load_config
    from relate_models.policy import META_FILE, PolicyConfig

    set_params(world / "params.yaml", training={"mode": "warm"})
    assert sft.main([]) == 0 and grpo.main([]) == 0
    source = make_champion(world, {"sft": "models/sft", "policy": "models/relate"})

    def grpo_start():
        return grpo.check_champion_relate(plan("grpo", "policy", world / "params.yaml", "2026-01-03"))

    assert grpo_start().warm
    with monkeypatch.context() as patch:  # today's SFT policy on another tokenizer than the champion's RELATE
        patch.setattr(grpo, "_vocab", lambda d: {"a": 0} if Path(d).name == "policy" else {"b": 0})
        assert "differs from the champion's RELATE policy: tokenizer vocabulary" in grpo_start().reason
    (source / "policy" / META_FILE).write_text(json.dumps({"prompt_format": "plain", "base_model": "scratch",
                                                           "adapter": True}))
    assert "LoRA adapter policies are not built" in grpo_start().reason
    (source / "policy" / META_FILE).unlink()
    shutil.move(source / "sft", world / "moved_sft")  # the chain's full SFT model, the KL reference, missing
    assert "the KL reference, the chain's full SFT model" in grpo_start().reason
    shutil.move(world / "moved_sft", source / "sft")

    # new day's texts in words the champion's tokenizer never saw as words
    rng = random.Random(4)
    texts = synthetic_texts(rng)
    texts["ad_text"] = ["".join(rng.choice("qxzjvkw") for _ in range(9)) + " zorblax quiffle" for _ in texts.index]
    add_text_day(world, "2026-01-03", texts)
    assert sft.main([]) == 0
    got = lineage(world / "models/sft")
    assert got["mode"] == "full" and "out-of-vocabulary rate" in got["reason"]
    assert json.loads((world / "metrics/sft.json").read_text())["training"]["reason"] == got["reason"]

    # another policy shape: sft is rebuilt, and grpo cannot continue against a reference of that shape
    set_params(world / "params.yaml", policy={"hidden_size": 32}, training={"max_oov_rate": 1.0})
    assert sft.main([]) == 0
    got = lineage(world / "models/sft")
    assert got["mode"] == "full" and "policy config changed" in got["reason"] and "hidden_size 64 -> 32" in got["reason"]
    start = grpo_start()
    assert not start.warm and "weights model.embed_tokens.weight [" in start.reason

    # a LoRA adapter policy: warm adapters are not built, said so
    cfg = load_config(PolicyConfig, "policy", world / "params.yaml", overrides={
        "hidden_size": 64, "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj"]}})
    start = sft.check_champion_policy(plan("sft", "sft", world / "params.yaml", "2026-01-03"), cfg)
    assert not start.warm and "LoRA adapter policies are not built" in start.reason


# ------------------------------------------------------------------------------------ combo_policy


@pytest.fixture
def combo_world(tiny_params):
    """A tiny curated combo_stats tree and an attribution model trained on its first two days
    (fitted here, not by the stage: only what the generator reads)."""
    from relate_models import attribution as attr
    from tests.test_attribution import DAYS, synthetic_combo_stats, synthetic_world, write_partitions

    root = tiny_params.parent
    world = synthetic_world(n_ads=4)
    rows = synthetic_combo_stats(world, DAYS, impressions_per_ad_day=500)
    write_partitions(root, "combo_stats", rows)
    train = rows[rows["dt"].isin(DAYS[:2])].drop(columns="dt")
    scorer, _ = attr.fit(train, attr.FitSettings(steps=30, log_every=30), {"embed_dim": 4, "attention_dim": 4,
                                                                            "hash_buckets": 32})
    scorer.meta.update({"train_days": list(DAYS[:2])})
    scorer.save(root / "models/attribution")
    set_params(tiny_params, training={"mode": "warm"})
    return root


def set_reward_days(root: Path, days: list[str]) -> None:
    path = root / "models/attribution/config.json"
    config = json.loads(path.read_text())
    config["train_days"] = days
    path.write_text(json.dumps(config))


def generator_weights(directory: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(directory / "generator.safetensors")


def test_combo_policy_continues_from_the_champion(combo_world):
    from pipelines import combo_policy
    from relate_models import combo_generator as cg
    from tests.test_attribution import DAYS

    root = combo_world
    assert combo_policy.main([]) == 0
    got = lineage(root / "models/combo_policy")
    assert got["mode"] == "full" and got["reason"] == "no champion to continue from"
    assert got["trained_through"] == DAYS[1]
    source = make_champion(root, {"combo_policy": "models/combo_policy"})
    champion = generator_weights(source / "combo_policy")

    assert combo_policy.main([]) == 0  # the reward model has no new day: a rerun, retrained as the champion was
    metrics = json.loads((root / "metrics/combo_policy.json").read_text())
    assert metrics["training"]["mode"] == "full" and "before" in metrics["training"]["reason"]
    kept = generator_weights(root / "models/combo_policy")
    assert all(torch.equal(kept[k], champion[k]) for k in champion)
    assert (root / "models/combo_policy/serving.parquet").is_file()

    set_reward_days(root, list(DAYS[:3]))  # the reward model trained on a new day
    assert combo_policy.main([]) == 0
    metrics = json.loads((root / "metrics/combo_policy.json").read_text())
    assert metrics["steps"] == 5 and metrics["training"] == {
        "mode": "warm", "reason": f"continues from champion {VERSION}", "continued_from": VERSION,
        "trained_days": [DAYS[2]]}
    assert lineage(root / "models/combo_policy")["trained_through"] == DAYS[2]
    warm = generator_weights(root / "models/combo_policy")
    problem = cg.ComboPolicy.load(source / "combo_policy").problem
    fresh = cg.ComboPolicy.create(problem, 16, seed=99).model.state_dict()
    moved = sum(float((warm[k] - champion[k]).norm()) for k in champion)
    assert 0 < moved < 0.5 * sum(float((fresh[k] - champion[k]).norm()) for k in champion)


def test_combo_policy_forced_full_on_what_the_champion_has_no_rows_for(combo_world):
    from pipelines import combo_policy
    from tests.test_attribution import DAYS

    root = combo_world
    assert combo_policy.main([]) == 0
    source = make_champion(root, {"combo_policy": "models/combo_policy"}) / "combo_policy"
    original = (source / "config.json").read_text()
    set_reward_days(root, list(DAYS[:3]))

    def champion_lacks(edit) -> str:
        config = json.loads(original)
        edit(config)
        (source / "config.json").write_text(json.dumps(config))
        assert combo_policy.main([]) == 0
        got = lineage(root / "models/combo_policy")
        assert got["mode"] == "full"
        assert json.loads((root / "metrics/combo_policy.json").read_text())["training"]["reason"] == got["reason"]
        return got["reason"]

    def drop_ad(config):
        problem = config["problem"]
        for key in ("candidates",):
            problem[key] = problem[key][1:]
        for name in problem["context"]:
            problem["context"][name] = problem["context"][name][1:]
        problem["ad_ids"] = problem["ad_ids"][1:]

    def drop_element(config):
        config["problem"]["candidates"][0][0] = config["problem"]["candidates"][0][0][1:]

    def drop_vertical(config):
        config["context_vocab"]["vertical"] = {}

    set_params(root / "params.yaml", combo_policy={"hidden_dim": 8})
    assert "hidden_dim 16" in champion_lacks(lambda config: None)
    set_params(root / "params.yaml", combo_policy={"hidden_dim": 16})
    assert "1 new ads" in champion_lacks(drop_ad)
    assert "1 new elements" in champion_lacks(drop_element)
    assert "new vertical values" in champion_lacks(drop_vertical)


def test_a_continued_generator_keeps_each_elements_rows_and_drops_retired_ones():
    import dataclasses

    from relate_models import combo_generator as cg
    from tests.test_combo import grid_problem

    problem = grid_problem(n_ads=2, n_slots=3, n_candidates=3)
    policy = cg.ComboPolicy.create(problem, hidden_dim=8, seed=1)
    retired = [[per_slot[0][1:], *per_slot[1:]] if a == 0 else per_slot for a, per_slot in enumerate(problem.candidates)]
    moved = policy.continued_on(dataclasses.replace(problem, candidates=retired))
    old = {e: i + 1 for i, e in enumerate(policy.problem.elements())}
    for i, e in enumerate(moved.problem.elements()):
        assert torch.equal(moved.model.element_emb.weight[i + 1], policy.model.element_emb.weight[old[e]])
    picks = torch.tensor([[0, 1, 2], [2, 0, 1]])
    ad1 = torch.tensor([1, 1])  # an ad whose candidates did not change scores its combinations as before
    assert torch.allclose(moved.log_prob(ad1, picks).logp, policy.log_prob(ad1, picks).logp)
    grown = [[per_slot[0] + ["new"], *per_slot[1:]] for per_slot in problem.candidates]
    with pytest.raises(KeyError):
        policy.continued_on(dataclasses.replace(problem, candidates=grown))
