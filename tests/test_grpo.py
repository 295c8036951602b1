"""SFT -> GRPO on a tiny synthetic log: policy factory, trainer, stages, save/load, bad config."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest
import torch

from plumbing.config import load_config
from relate_models.tokenizer import save_tokenizer, train_tokenizer
from tests.conftest import TINY_PARAMS

VERTICALS = {"travel": ["cheap flights", "city breaks"], "fashion": ["running shoes", "rain jackets"],
             "finance": ["credit card", "savings account"], "health": ["vitamin d", "yoga mats"]}
OPENERS = ["Find", "Shop", "Compare", "Discover", "Get"]
CLOSERS = ["with free delivery", "and save big", "for every budget", "in minutes", "guaranteed results",
           "from top brands", "act now", "rated by customers"]
SEGMENTS = ["students", "families", "professionals"]
torch.set_num_threads(1)  # tiny models: one thread is fastest on a shared 2-core machine


def synthetic_texts(rng: random.Random) -> pd.DataFrame:
    rows = []
    for vertical, keywords in VERTICALS.items():
        for keyword in keywords:
            for i in range(12):
                text = f"{rng.choice(OPENERS)} {keyword} {rng.choice(CLOSERS)}"
                rows.append({"ad_id": f"{vertical}-{i % 3}", "text_id": f"t{abs(hash(text)) % 10**8}", "ad_text": text,
                             "keyword": keyword, "vertical": vertical, "impressions": rng.randint(10, 100)})
    frame = pd.DataFrame(rows).drop_duplicates(["ad_id", "text_id"])
    frame["clicks"] = frame["impressions"] // 10
    frame["conversions"] = frame["clicks"] // 3
    frame["ctr"] = frame["clicks"] / frame["impressions"]
    frame["cvr"] = frame["conversions"] / frame["clicks"].clip(lower=1)
    frame["ctcvr"] = frame["conversions"] / frame["impressions"]
    return frame


@pytest.fixture
def world(tiny_params: Path) -> Path:
    """Curated search logs, the shared tokenizer and an (untrained, real) CTCVR artifact in the cwd."""
    from relate_models.ctcvr import CTCVRConfig, CTCVRModel, CTCVRScorer

    rng = random.Random(5)
    root = tiny_params.parent
    texts = synthetic_texts(rng)
    for day in ("2026-01-01", "2026-01-02"):
        part = root / "data/curated/text_stats" / f"dt={day}"
        part.mkdir(parents=True)
        texts.to_parquet(part / "part-00000.parquet", index=False)
        imps = pd.DataFrame([{"placement": rng.choice(["search", "feed"]), "vertical": v, "keyword": k,
                              "user_segment": rng.choice(SEGMENTS)} for v, ks in VERTICALS.items() for k in ks
                             for _ in range(10)])
        part = root / "data/curated/labeled_impressions" / f"dt={day}"
        part.mkdir(parents=True)
        imps.to_parquet(part / "part-00000.parquet", index=False)
    tokenizer = train_tokenizer(list(texts["ad_text"]) * 3 + list(VERTICALS) + [k for ks in VERTICALS.values() for k in ks],
                                vocab_size=500)
    save_tokenizer(tokenizer, root / "models/tokenizer")
    torch.manual_seed(0)
    config = CTCVRConfig(vocab_size=len(tokenizer), vocabs={"keyword": sorted(texts["keyword"].unique()),
                                                            "vertical": sorted(VERTICALS), "user_segment": SEGMENTS})
    CTCVRScorer(CTCVRModel(config).eval(), tokenizer).save(root / "models/ctcvr")
    return root


def small_policy():
    from relate_models.policy import PolicyConfig

    return load_config(PolicyConfig, "policy", TINY_PARAMS,
                       overrides=dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64))


def flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_sft_grpo_generate_pipeline(world, capsys):
    from pipelines import generate, grpo, sft
    from relate_models.policy import load_policy

    assert sft.main([]) == 0
    first = (world / "models/sft/model.safetensors").read_bytes()
    assert sft.main([]) == 0  # a rerun gives the same weights (deterministic given the seeds)
    assert (world / "models/sft/model.safetensors").read_bytes() == first
    metrics = json.loads((world / "metrics/sft.json").read_text())
    assert metrics["val_loss"] < metrics["initial_val_loss"]  # it learned something
    assert (world / "plots/sft/loss.png").stat().st_size > 0
    sft_model, _ = load_policy(world / "models/sft")

    assert grpo.main([]) == 0
    first = (world / "models/relate/model.safetensors").read_bytes()
    assert grpo.main([]) == 0
    assert (world / "models/relate/model.safetensors").read_bytes() == first  # deterministic rerun
    relate_model, tokenizer = load_policy(world / "models/relate")
    assert (world / "models/relate/model.safetensors").is_file()
    assert not torch.equal(flat_params(sft_model), flat_params(relate_model))  # GRPO steps moved the policy
    metrics = json.loads((world / "metrics/grpo.json").read_text())
    assert metrics["steps"] == 3
    assert metrics["compliance_as_of"] == "2026-01-02"  # no --ds: the newest curated partition's rules
    assert set(metrics["held_out"]["relate"]) >= {"ctcvr", "quality_structural", "quality_compliance", "diversity"}
    curves = pd.read_csv(world / "plots/grpo/rewards.csv")
    assert list(curves["step"]) == [1, 2, 3]
    assert {"ctcvr", "quality_structural", "quality_compliance", "diversity", "kl"} <= set(curves.columns)
    assert (world / "plots/grpo/rewards.png").stat().st_size > 0
    train = [json.loads(x) for x in (world / "data/prompts/train.jsonl").read_text().splitlines()]
    held = [json.loads(x) for x in (world / "data/prompts/eval.jsonl").read_text().splitlines()]
    assert held and train and not {r["prompt_id"] for r in train} & {r["prompt_id"] for r in held}
    assert all(r["user_segment"] in SEGMENTS for r in train + held)

    capsys.readouterr()
    assert generate.main(["--policy", str(world / "models/relate"), "--vertical", "travel", "--keyword",
                          "cheap flights", "-n", "3", "--seed", "1"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(out) == 1 and len(out[0]["texts"]) == 3 and all(isinstance(t, str) for t in out[0]["texts"])
    # the serving pool: 3 of 6 samples, each one of the plain samples the same seed draws
    assert generate.main(["--policy", str(world / "models/relate"), "--vertical", "travel", "--keyword",
                          "cheap flights", "-n", "6", "--seed", "1"]) == 0
    six = json.loads(capsys.readouterr().out)["texts"]
    assert generate.main(["--policy", str(world / "models/relate"), "--vertical", "travel", "--keyword",
                          "cheap flights", "-n", "3", "--pool-from", "6", "--seed", "1"]) == 0
    pool = json.loads(capsys.readouterr().out)["texts"]
    assert 1 <= len(pool) <= 3 and set(pool) <= set(six)
    assert generate.main(["--policy", str(world / "models/relate"), "--vertical", "a", "--keyword", "b",
                          "-n", "3", "--pool-from", "2"]) == 2
    assert generate.main(["--policy", str(world / "models/nope"), "--vertical", "a", "--keyword", "b"]) == 2


def test_trainer_steps_change_policy_and_ablation_runs(world):
    """A few steps of the subclass with credit assignment off (the ablation), beta 0 (no reference)."""
    from relate_models.ctcvr import CTCVRScorer
    from relate_models.grpo_trainer import GRPOStageConfig, build_trainer, reward_context
    from relate_models.policy import build_policy, prompt_text
    from relate_models.rewards import build_rewards
    from relate_models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(world / "models/tokenizer")
    model = build_policy(small_policy(), tokenizer)
    cfg = load_config(GRPOStageConfig, "grpo", TINY_PARAMS, overrides=dict(
        max_steps=2, prompts_per_step=2, num_generations=3, max_completion_length=10, beta=0.0,
        credit_assignment=False, learning_rate=1e-3, logging_steps=1))
    ctx = reward_context(cfg, CTCVRScorer.load(world / "models/ctcvr"), ["Find cheap flights with free delivery"])
    rows = [{"prompt_id": f"{v}|{k}", "prompt": prompt_text(v, k), "vertical": v, "keyword": k, "user_segment": None}
            for v, ks in VERTICALS.items() for k in ks]
    trainer = build_trainer(cfg, model, tokenizer, build_rewards(list(cfg.rewards), ctx), rows,
                            output_dir=str(world / "tmp"))
    assert trainer.credit_assignment is False
    before = flat_params(model).clone()
    trainer.train()
    assert not torch.equal(before, flat_params(trainer.model))
    logged = [e for e in trainer.state.log_history if "rewards/ctcvr/mean" in e]
    assert len(logged) == 2 and all("relate/violation_rate" in e for e in logged)


def test_advantages_are_2d_and_token_level(world):
    """The subclass hands TRL a (batch, tokens) advantage whose span tokens differ from the rest."""
    from relate_models.grpo_trainer import RelateGRPOTrainer
    from relate_models.rewards import Reward
    from relate_models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(world / "models/tokenizer")
    texts = [" Get cheap flights guaranteed results", " Get cheap flights in minutes"]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]

    def spans(completions, **kwargs):
        return [[(c.find("guaranteed results"), c.find("guaranteed results") + 18)] if "guaranteed" in c else []
                for c in completions]

    fake = RelateGRPOTrainer.__new__(RelateGRPOTrainer)  # only the advantage logic, no model needed
    fake.relate_rewards = [Reward("seq", "sequence", lambda c, **k: [0.0] * len(c)),
                           Reward("comp", "token", lambda c, **k: [0.0] * len(c), spans, constraint=True)]
    fake.credit_assignment, fake._tokenizer = True, tokenizer
    fake.accelerator = __import__("types").SimpleNamespace(num_processes=1)
    fake.reward_weights = torch.tensor([1.0, 1.0])
    fake._metrics = {"train": __import__("collections").defaultdict(list)}
    rewards = torch.tensor([[1.0, -5.0], [0.0, 0.0]])
    inputs = [{"prompt": "p", "prompt_id": "p"}] * 2
    width = max(map(len, ids)) + 1
    adv = fake.relate_advantages(inputs, ["p", "p"], texts, ids, rewards, width, 2, "train")
    assert adv.shape == (2, width)
    row = adv[0, : len(ids[0])]
    assert row.max() <= 0  # the violator gains nothing anywhere
    n_span = int((row < row.max()).sum())
    assert 0 < n_span < len(ids[0])  # the span tokens carry the extra penalty, the others do not
    # the compliant member beats the group on compliance, which only blames: it keeps its sequence part alone
    compliant = adv[1, : len(ids[1])]
    assert torch.allclose(compliant, compliant[:1].expand_as(compliant)) and adv[1, len(ids[1]) :].abs().sum() == 0
    assert row.min() < compliant.min()


def test_policy_save_load_round_trip(tmp_path, world):
    from relate_models.policy import build_policy, load_policy, save_policy
    from relate_models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(world / "models/tokenizer")
    model = build_policy(small_policy(), tokenizer).eval()
    save_policy(model, tokenizer, tmp_path / "policy")
    assert (tmp_path / "policy/model.safetensors").is_file() and not list(tmp_path.glob(".policy*"))
    loaded, loaded_tok = load_policy(tmp_path / "policy")
    ids = torch.tensor([tokenizer("travel | cheap flights | Find", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, loaded(ids).logits, atol=1e-6)
    assert loaded_tok("Find cheap flights")["input_ids"] == tokenizer("Find cheap flights")["input_ids"]
    from transformers import AutoModelForCausalLM, AutoTokenizer  # any HF consumer loads it with the Auto classes

    auto = AutoModelForCausalLM.from_pretrained(str(tmp_path / "policy"), local_files_only=True).eval()
    assert AutoTokenizer.from_pretrained(str(tmp_path / "policy")).eos_token == tokenizer.eos_token
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, auto(ids).logits, atol=1e-6)


@pytest.fixture
def relate_log():
    """Messages of the project's `relate` logger (it does not propagate to pytest's caplog)."""
    import logging

    class Collect(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

        @property
        def text(self):
            return "\n".join(self.messages)

    from plumbing.logs import get_logger

    get_logger("test")
    handler = Collect()
    logging.getLogger("relate").addHandler(handler)
    yield handler
    logging.getLogger("relate").removeHandler(handler)


def test_stages_reject_bad_config_and_missing_artifacts(world, relate_log):
    from pipelines import grpo, sft

    caplog = relate_log

    params = world / "params.yaml"
    text = params.read_text()
    params.write_text(text.replace("    diversity: 0.3\n  credit_assignment", "    diversity: -0.3\n  credit_assignment"))
    assert grpo.main([]) == 2
    assert "grpo.rewards.diversity: weight must be >= 0" in caplog.text
    params.write_text(text.replace("grpo:\n  rewards:\n    ctcvr: 1.0", "grpo:\n  rewards:\n    ctr_magic: 1.0"))
    assert grpo.main([]) == 2
    assert "grpo.rewards.ctr_magic: unknown reward" in caplog.text
    params.write_text(text.replace("sft:\n  epochs: 2", "sft:\n  epochs: 0"))
    assert sft.main([]) == 2
    assert "sft.epochs" in caplog.text
    params.write_text(text)
    assert grpo.main([]) == 2  # no models/sft yet
    assert "models/sft" in caplog.text


def _torchrun(processes: int, args: list[str], cwd: Path | None = None) -> None:
    """`torch.distributed.run` on `processes` CPU processes (gloo; `accelerate launch` wraps it, and
    `accelerate launch --cpu` alone starts one process without MPI); asserts it exits 0."""
    import os
    import socket
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--nnodes", "1",
           "--master_addr", "127.0.0.1", "--master_port", str(port), *args]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


def _launch(world: Path, out: Path, group_size: int, processes: int) -> dict:
    """tests/rank_advantages.py on `processes` CPU processes: every rank's advantage rows."""
    script = Path(__file__).resolve().parent / "rank_advantages.py"
    _torchrun(processes, [str(script), str(world / "models/tokenizer"), str(out), str(group_size)])
    return json.loads(out.read_text())


def test_two_gloo_processes_give_the_advantages_of_one(world, tmp_path):
    """RelateGRPOTrainer.local_advantages on 2 CPU processes (gloo) == on 1 process, for the same batch,
    with the one group of 8 split 4 + 4 across the ranks (group statistics need both halves)."""
    one = _launch(world, tmp_path / "one.json", 8, 1)
    two = _launch(world, tmp_path / "two.json", 8, 2)
    assert (one["num_processes"], two["num_processes"]) == (1, 2)
    assert len(one["rows"]) == len(two["rows"]) == 8
    for a, b in zip(one["rows"], two["rows"]):
        assert a == pytest.approx(b, abs=1e-6)
    flat = [v for row in one["rows"] for v in row]
    assert min(flat) < 0 < max(flat) and len({round(v, 5) for v in flat}) > 3  # a non-trivial batch


def _sft_on(world: Path, processes: int) -> dict[str, torch.Tensor]:
    """The sft stage on `processes` CPU processes; the weights it saved."""
    from safetensors.torch import load_file

    _torchrun(processes, ["-m", "pipelines.sft", "--params", str(world / "params.yaml")], cwd=world)
    return load_file(world / "models/sft/model.safetensors")


def test_two_gloo_processes_train_the_sft_model_of_one(world):
    """sft.batch_size is the global batch: 2 processes each take half of it and sum the gradients, so
    they train the weights 1 process does (up to float summation order); one rank writes them."""
    one = _sft_on(world, 1)
    two = _sft_on(world, 2)
    assert one.keys() == two.keys()
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-4), name
    metrics = json.loads((world / "metrics/sft.json").read_text())
    assert metrics["val_loss"] < metrics["initial_val_loss"]  # they trained, not just agreed
