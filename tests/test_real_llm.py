"""A pretrained-format policy: two tiny local checkpoints of different families (Qwen2, GPT-2),
each with its own tokenizer (not the project's: other vocabulary and merges; the Qwen2 one with
a chat template), through SFT -> GRPO -> generate, full fine-tuning and LoRA."""
from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from plumbing.config import load_config
from plumbing.errors import ConfigError
from tests.conftest import TINY_PARAMS
from tests.test_grpo import VERTICALS, flat_params, synthetic_texts, world  # noqa: F401 (fixture)

CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
torch.set_num_threads(1)


def foreign_tokenizer(texts, vocab_size: int, specials: list[str], trim_offsets: bool, **tokens):
    """A byte-level BPE that is not the project's (own vocabulary size, merges and special tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=trim_offsets)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, clean_up_tokenization_spaces=False, **tokens)


def ad_corpus() -> list[str]:
    frame = synthetic_texts(random.Random(9))
    prompts = [f"{v} | {k} |" for v, ks in VERTICALS.items() for k in ks]
    return sorted(set(frame["ad_text"])) * 2 + prompts


def build_qwen2(directory: Path) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = foreign_tokenizer(ad_corpus(), 700, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], False,
                            eos_token="<|im_end|>", pad_token="<|endoftext|>",
                            additional_special_tokens=["<|im_start|>"])
    tok.chat_template = CHATML
    torch.manual_seed(1)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    Qwen2ForCausalLM(config).save_pretrained(str(directory))
    tok.save_pretrained(str(directory))


def build_gpt2(directory: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = foreign_tokenizer(ad_corpus()[::-1], 900, ["<|endoftext|>"], True, eos_token="<|endoftext|>",
                            bos_token="<|endoftext|>", unk_token="<|endoftext|>")  # no pad token, as GPT-2
    torch.manual_seed(2)
    config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=128,
                        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(str(directory))
    tok.save_pretrained(str(directory))


FAMILIES = {"qwen2": (build_qwen2, "chat", ["q_proj", "v_proj"]), "gpt2": (build_gpt2, "plain", ["c_attn"])}


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """family -> a local pretrained checkpoint directory (save_pretrained: model + tokenizer)."""
    root = tmp_path_factory.mktemp("checkpoints")
    out = {}
    for family, (build, _, _) in FAMILIES.items():
        build(root / family)
        out[family] = root / family
    return out


def set_params(params: Path, **sections) -> None:
    values = yaml.safe_load(params.read_text())
    for section, changes in sections.items():
        values[section].update(changes)
    params.write_text(yaml.safe_dump(values, sort_keys=False))


def lora_settings(targets, enabled=True) -> dict:
    return {"enabled": enabled, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": targets}


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_pretrained_policy_pipeline(world, checkpoints, family, lora, capsys):  # noqa: F811
    from transformers import AutoTokenizer

    from pipelines import generate, grpo, sft
    from relate_models.policy import load_policy, read_meta

    _, prompt_format, targets = FAMILIES[family]
    base = checkpoints[family]
    set_params(world / "params.yaml", policy={"base_model": str(base), "prompt_format": prompt_format,
                                              "lora": lora_settings(targets, lora)})
    assert sft.main([]) == 0
    own = AutoTokenizer.from_pretrained(str(base))
    saved = AutoTokenizer.from_pretrained(str(world / "models/sft"))
    project = AutoTokenizer.from_pretrained(str(world / "models/tokenizer"))
    assert saved.get_vocab() == own.get_vocab() and saved.get_vocab() != project.get_vocab()  # the base's tokenizer
    assert read_meta(world / "models/sft") == {"prompt_format": prompt_format, "base_model": str(base), "adapter": lora}
    assert (world / "models/sft/adapter_model.safetensors").is_file() == lora
    assert (world / "models/sft/model.safetensors").is_file() != lora
    sft_model, _ = load_policy(world / "models/sft")

    assert grpo.main([]) == 0
    metrics = json.loads((world / "metrics/grpo.json").read_text())
    assert metrics["steps"] == 3 and set(metrics["held_out"]["relate"]) >= {"ctcvr", "quality_compliance"}
    relate_model, tokenizer = load_policy(world / "models/relate")
    assert tokenizer.get_vocab() == own.get_vocab() and read_meta(world / "models/relate")["adapter"] == lora
    assert not torch.equal(flat_params(sft_model), flat_params(relate_model))  # GRPO moved the policy
    if lora:  # only the adapter trained: the base weights are the checkpoint's
        from transformers import AutoModelForCausalLM

        pristine = AutoModelForCausalLM.from_pretrained(str(base)).state_dict()
        frozen = {k.replace(".base_layer", ""): v for k, v in relate_model.get_base_model().state_dict().items()
                  if "lora_" not in k}
        assert frozen.keys() == pristine.keys() and all(torch.equal(v, pristine[k]) for k, v in frozen.items())
        assert not (world / "models/relate/ref").exists()  # TRL's frozen reference adapter is not shipped

    capsys.readouterr()
    assert generate.main(["--policy", str(world / "models/relate"), "--vertical", "travel", "--keyword",
                          "cheap flights", "-n", "3", "--seed", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prompt"] == "travel | cheap flights |" and len(out["texts"]) == 3

    # evaluate's candidates: base + adapter loaded from the artifact, prompts in its format
    from pipelines.evaluate_harness import generate_candidates

    held = [json.loads(x) for x in (world / "data/prompts/eval.jsonl").read_text().splitlines()]
    gen = SimpleNamespace(texts_per_prompt=2, max_new_tokens=8, temperature=1.0, top_p=1.0, generation_seed=3)
    candidates = generate_candidates(world / "models/relate", held, gen)
    assert set(candidates) == {r["prompt_id"] for r in held} and all(len(v) == 2 for v in candidates.values())
    assert candidates == generate_candidates(world / "models/relate", held, gen)  # same seed, same texts

    # publish ships the artifact as it is (an adapter: adapter + base reference) and, for an adapter, merged
    from pipelines.publish_registry import assemble

    assemble(world / "staging", ["policy"], world / "metrics")
    assert (world / "staging/policy/relate_policy.json").is_file()
    assert (world / "staging/policy_merged").is_dir() == lora
    if lora:
        shipped, _ = load_policy(world / "staging/policy_merged")
        assert not hasattr(shipped, "peft_config") and read_meta(world / "staging/policy_merged")["adapter"] is False
        ids = torch.tensor([tokenizer("travel | cheap flights | Find", add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            assert torch.allclose(shipped(ids).logits, relate_model(ids).logits, atol=1e-5)


def test_lora_grpo_reference_is_the_sft_adapter(world, checkpoints):  # noqa: F811
    """An adapter SFT policy keeps training its adapter; TRL's KL reference is a frozen copy of it."""
    from pipelines import sft
    from relate_models.ctcvr import CTCVRScorer
    from relate_models.grpo_trainer import GRPOStageConfig, build_trainer, reward_context
    from relate_models.policy import load_policy
    from relate_models.rewards import build_rewards

    set_params(world / "params.yaml", policy={"base_model": str(checkpoints["qwen2"]), "prompt_format": "plain",
                                              "lora": lora_settings(["q_proj", "v_proj"])})
    assert sft.main([]) == 0
    model, tokenizer = load_policy(world / "models/sft", trainable=True)
    cfg = load_config(GRPOStageConfig, "grpo", TINY_PARAMS, overrides=dict(max_steps=1, beta=0.04))
    ctx = reward_context(cfg, CTCVRScorer.load(world / "models/ctcvr"), ["Find cheap flights"])
    rows = [{"prompt_id": "t|c", "prompt": "travel | cheap flights |", "vertical": "travel", "keyword": "cheap flights",
             "user_segment": None}] * 4
    trainer = build_trainer(cfg, model, tokenizer, build_rewards(list(cfg.rewards), ctx), rows,
                            output_dir=str(world / "tmp"))
    assert trainer.ref_model is None and set(trainer.model.peft_config) == {"default", "ref"}
    params = dict(trainer.model.named_parameters())
    ref = {k: v for k, v in params.items() if ".ref." in k}
    assert ref and all(torch.equal(v, params[k.replace(".ref.", ".default.")]) for k, v in ref.items())
    assert not any(v.requires_grad for v in ref.values())
    assert any(torch.count_nonzero(v) for k, v in params.items() if ".default." in k and "lora_B" in k)  # SFT trained it


def test_chat_prompts_go_through_the_template(checkpoints):
    from relate_models.policy import CHAT, PLAIN, completion_text, format_prompt

    tok = __import__("transformers").AutoTokenizer.from_pretrained(str(checkpoints["qwen2"]))
    chat = format_prompt(tok, "travel | cheap flights |", CHAT)
    assert chat == "<|im_start|>user\ntravel | cheap flights |<|im_end|>\n<|im_start|>assistant\n"
    assert format_prompt(tok, "travel | cheap flights |", PLAIN) == "travel | cheap flights |"
    assert completion_text(" Fly cheap ", CHAT) == "Fly cheap" and completion_text("Fly", PLAIN) == " Fly"
    assert tok("<|im_start|>")["input_ids"] == [tok.convert_tokens_to_ids("<|im_start|>")]  # one special token


def test_chat_without_template_and_slow_tokenizers_are_refused(world, checkpoints, caplog):  # noqa: F811
    from pipelines import sft
    from relate_models import credit
    from relate_models.policy import check_policy_tokenizer

    set_params(world / "params.yaml", policy={"base_model": str(checkpoints["gpt2"]), "prompt_format": "chat"})
    assert sft.main([]) == 2
    assert "policy.prompt_format: chat, but the tokenizer" in caplog.text and "no chat template" in caplog.text
    set_params(world / "params.yaml", policy={"base_model": "scratch"})  # the project tokenizer has none either
    assert sft.main([]) == 2
    slow = SimpleNamespace(is_fast=False, eos_token_id=0, pad_token_id=0)
    with pytest.raises(ConfigError, match="slow tokenizer without offset mapping"):
        check_policy_tokenizer(slow, "some/model")
    with pytest.raises(ConfigError, match="no offset mapping"):
        credit.token_char_offsets(slow, [[1, 2]], 2)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_spans_map_through_the_policy_tokenizers_offsets(checkpoints, family):
    from transformers import AutoTokenizer

    from relate_models import credit
    from relate_models.compliance import ComplianceChecker

    tok = AutoTokenizer.from_pretrained(str(checkpoints[family]))
    text = " Get cheap flights, guaranteed results today"
    (violation,) = ComplianceChecker.load().find(text)
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    offsets = credit.token_char_offsets(tok, [ids], len(ids) + 1)
    mask = credit.spans_to_token_mask([[(violation.start, violation.end)]], offsets)[0]
    flagged = "".join(tok.decode([t]) for t, m in zip(ids, mask.tolist()) if m)
    assert flagged.strip() == "guaranteed results" and mask[-2:].sum() == 0  # <eos> and padding: never


def test_use_vllm_is_refused_on_a_cpu_machine(monkeypatch):
    from relate_models.grpo_trainer import GRPOStageConfig, check_vllm, trl_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_config(GRPOStageConfig, "grpo", TINY_PARAMS, overrides={"use_vllm": True})
    with pytest.raises(ConfigError, match="grpo.use_vllm: vLLM generation needs a CUDA GPU"):
        check_vllm(cfg)
    args = trl_config(cfg, output_dir="unused")  # what TRL would get on a GPU machine
    assert args.use_vllm and args.vllm_mode == "colocate"
    check_vllm(load_config(GRPOStageConfig, "grpo", TINY_PARAMS))  # off: nothing to check


def test_lora_settings_are_validated():
    from relate_models.policy import PolicyConfig

    with pytest.raises(ConfigError, match="policy.lora.r: must be an int >= 1"):
        load_config(PolicyConfig, "policy", TINY_PARAMS, overrides={"lora": lora_settings(["q_proj"]) | {"r": 0}})
    with pytest.raises(ConfigError, match="policy.lora: unknown key"):
        load_config(PolicyConfig, "policy", TINY_PARAMS, overrides={"lora": lora_settings(["q_proj"]) | {"rank": 2}})
    with pytest.raises(ConfigError, match="policy.prompt_format: must be plain or chat"):
        load_config(PolicyConfig, "policy", TINY_PARAMS, overrides={"prompt_format": "xml"})
