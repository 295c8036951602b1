"""One prepared GPU check: RELATE GRPO on a randomly initialised ~0.5B Qwen2-shaped policy.

    python bench/gpu_check.py [--steps 8] [--out bench_gpu.json] [--tiny]

Runs RelateGRPOTrainer (the pipeline's `build_trainer`, tiny.yaml's grpo knobs except the
batch: 8 prompts x 8 generations, 64 completion tokens) for --steps steps in three modes:
full fine-tuning, LoRA (policy.lora's r/alpha/targets), and LoRA with vLLM colocate
generation when vllm imports. Per mode: steps/s, tokens/s, peak GPU memory (GiB), the
parameter counts. bf16 on CUDA. --tiny: a 2-layer model of the same shape family, to check
the script on a CPU. Writes JSON to --out (and prints it). Nothing is downloaded: the model is
random, the tokenizer is trained here on synthetic ad texts, the CTCVR reward is untrained.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

# Qwen2-shaped (GQA, SwiGLU, RMSNorm, RoPE) at ~0.47B parameters with a 2k-token vocabulary
QWEN2_05B = dict(hidden_size=1024, intermediate_size=5632, num_hidden_layers=24, num_attention_heads=16,
                 num_key_value_heads=2, max_position_embeddings=512)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128)


def build_checkpoint(shape: dict, directory: Path):
    """A random Qwen2ForCausalLM + a BPE tokenizer, saved as a local checkpoint."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from relate_models.tokenizer import train_tokenizer

    words = ("find shop compare discover get cheap fast new best deals offers free delivery save big today "
             "every budget minutes top brands rated customers quality").split()
    texts = [" ".join(words[(i * 7 + j) % len(words)] for j in range(3 + i % 9)) for i in range(4000)]
    tokenizer = train_tokenizer(texts, vocab_size=2000)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, **shape)
    Qwen2ForCausalLM(config).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return words


def world(directory: Path, words, lora: dict | None):
    """(model, tokenizer, rewards, prompt rows) for one mode, the model loaded from the checkpoint."""
    from plumbing.config import load_config
    from relate_models.ctcvr import CTCVRConfig, CTCVRModel, CTCVRScorer
    from relate_models.grpo_trainer import GRPOStageConfig, reward_context
    from relate_models.policy import PolicyConfig, build_policy, policy_tokenizer, prompt_text
    from relate_models.rewards import build_rewards

    root = Path(__file__).resolve().parents[1]
    overrides = {"base_model": str(directory), "lora": lora or load_config(PolicyConfig, "policy", root / "params.yaml").lora}
    policy_cfg = load_config(PolicyConfig, "policy", root / "params.yaml", overrides=overrides)
    tokenizer = policy_tokenizer(policy_cfg, directory)
    model = build_policy(policy_cfg, tokenizer)
    cfg = load_config(GRPOStageConfig, "grpo", root / "params.yaml")
    scorer = CTCVRScorer(CTCVRModel(CTCVRConfig(vocab_size=len(tokenizer))).eval(), tokenizer)
    rewards = build_rewards(list(cfg.rewards), reward_context(cfg, scorer, [" ".join(words)],
                                                               eos_token_id=tokenizer.eos_token_id))
    rows = [{"prompt_id": f"v{i % 8}|{w}", "prompt": prompt_text(f"v{i % 8}", w), "vertical": f"v{i % 8}",
             "keyword": w, "user_segment": None} for i, w in enumerate(words)]
    return model, tokenizer, rewards, rows


def measure(directory: Path, words, steps: int, lora: dict | None, use_vllm: bool) -> dict:
    """Train `steps` GRPO steps in one mode; speed and peak memory."""
    from plumbing.config import load_config
    from relate_models.grpo_trainer import GRPOStageConfig, build_trainer

    model, tokenizer, rewards, rows = world(directory, words, lora)
    root = Path(__file__).resolve().parents[1]
    cfg = load_config(GRPOStageConfig, "grpo", root / "params.yaml", overrides=dict(
        max_steps=steps, prompts_per_step=8, num_generations=8, max_completion_length=64, use_vllm=use_vllm,
        logging_steps=steps))
    cuda = torch.cuda.is_available()
    if cuda:
        model = model.to(torch.bfloat16).cuda()
        torch.cuda.reset_peak_memory_stats()
    trainer = build_trainer(cfg, model, tokenizer, rewards, rows, output_dir=tempfile.mkdtemp(prefix="gpu-check-"),
                            bf16=cuda)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"steps": trainer.state.global_step, "seconds": round(seconds, 2),
            "steps_per_s": trainer.state.global_step / seconds,
            "tokens_per_s": int(trainer.state.num_input_tokens_seen) / seconds,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "parameters": sum(p.numel() for p in model.parameters()), "trainable": trainable}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", default="bench_gpu.json")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model: check the script on a CPU")
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="gpu-check-model-"))
    words = build_checkpoint(TINY if args.tiny else QWEN2_05B, directory)
    lora = {"enabled": True, "r": 16, "alpha": 32, "dropout": 0.0,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
    results = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
               "shape": TINY if args.tiny else QWEN2_05B}
    for mode, kwargs in (("full", dict(lora=None, use_vllm=False)), ("lora", dict(lora=lora, use_vllm=False)),
                         ("lora_vllm_colocate", dict(lora=lora, use_vllm=True))):
        try:
            results[mode] = measure(directory, words, args.steps, **kwargs)
        except Exception as err:  # noqa: BLE001 (a mode that cannot run here is reported, the others still run)
            results[mode] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
        print(mode, json.dumps(results[mode]), flush=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
