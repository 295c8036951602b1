"""Benchmark: RelateGRPOTrainer beside plain TRL GRPOTrainer, same model, data and reward calls.

    python bench/grpo.py [--steps 10] [--synthetic] [--lora] [--params params.yaml]

Uses the pipeline's artifacts (models/sft, models/ctcvr, curated text_stats) or, with
--synthetic, a scratch policy of the `policy:` size and an untrained CTCVR model on
synthetic ad texts. --lora trains a LoRA adapter of `policy.lora`'s shape (enabled or not)
in both trainers instead of every weight. Prints steps/s, tokens/s and the overhead ratio
(goal <= 10%).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def synthetic_world(policy_cfg, n_keywords: int = 64):
    """(model, tokenizer, scorer, prompt rows, historical texts) with no pipeline artifacts."""
    from relate_models.ctcvr import CTCVRConfig, CTCVRModel, CTCVRScorer
    from relate_models.policy import build_policy, prompt_text
    from relate_models.tokenizer import train_tokenizer

    rng = random.Random(0)
    words = ("find shop compare discover get cheap fast new best deals offers free delivery save big today "
             "every budget minutes top brands rated customers quality").split()
    keywords = [f"{rng.choice(words)} {rng.choice(words)}" for _ in range(n_keywords)]
    texts = [f"{rng.choice(words).capitalize()} {k} " + " ".join(rng.choice(words) for _ in range(rng.randint(3, 9)))
             for k in keywords for _ in range(8)]
    tokenizer = train_tokenizer(texts, vocab_size=2000)
    model = build_policy(policy_cfg, tokenizer)
    # saved and reloaded, so TRL can build the KL reference from the model's path as in the pipeline
    from relate_models.policy import load_policy, save_policy

    saved = Path(tempfile.mkdtemp(prefix="bench-policy-")) / "sft"
    save_policy(model, tokenizer, saved)
    model, tokenizer = load_policy(saved)
    scorer = CTCVRScorer(CTCVRModel(CTCVRConfig(vocab_size=len(tokenizer))).eval(), tokenizer)
    rows = [{"prompt_id": f"v{i % 8}|{k}", "prompt": prompt_text(f"v{i % 8}", k), "vertical": f"v{i % 8}",
             "keyword": k, "user_segment": None} for i, k in enumerate(keywords)]
    return model, tokenizer, scorer, rows, texts


def pipeline_world(cfg):
    from plumbing.paths import MODELS, curated
    from relate_models.ctcvr import CTCVRScorer
    from relate_models.policy import format_prompt, load_policy, load_search_corpus, read_meta, split_prompts

    model, tokenizer = load_policy(MODELS / "sft", trainable=True)
    corpus = load_search_corpus(curated("text_stats"))
    train, _ = split_prompts(corpus, cfg.eval_fraction, None, cfg.user_segment)
    prompt_format = read_meta(MODELS / "sft")["prompt_format"]  # as the grpo stage feeds them
    train = [{**r, "prompt": format_prompt(tokenizer, r["prompt"], prompt_format)} for r in train]
    return model, tokenizer, CTCVRScorer.load(MODELS / "ctcvr"), train, sorted(set(corpus["ad_text"]))


def run(build, model, tokenizer, rewards, rows, cfg) -> dict:
    """Train the trainer `build(cfg, model, tokenizer, rewards, rows, **trl_overrides)` returns; its speed."""
    import copy

    trainer = build(cfg, copy.deepcopy(model), tokenizer, rewards, rows,
                    output_dir=tempfile.mkdtemp(prefix="bench-grpo-"), logging_steps=cfg.max_steps)
    extra = [0.0]  # seconds inside the one step RelateGRPOTrainer adds (its advantages), load-independent share
    if hasattr(trainer, "local_advantages"):
        inner = trainer.local_advantages

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                extra[0] += time.perf_counter() - t

        trainer.local_advantages = timed
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    tokens = int(trainer.state.num_input_tokens_seen)
    return {"steps": trainer.state.global_step, "seconds": round(seconds, 2),
            "steps_per_s": trainer.state.global_step / seconds, "tokens_per_s": tokens / seconds,
            "relate_advantage_share": extra[0] / seconds}


def plain_trl(cfg, model, tokenizer, rewards, rows, **trl_overrides):
    """Plain TRL GRPOTrainer on the same model, data and reward calls (the baseline)."""
    from datasets import Dataset
    from trl import GRPOTrainer

    from relate_models.grpo_trainer import trl_config

    return GRPOTrainer(model=model, processing_class=tokenizer, args=trl_config(cfg, **trl_overrides),
                       train_dataset=Dataset.from_list(rows), reward_funcs=[r.score for r in rewards])


def main(argv=None) -> int:
    from plumbing.config import load_config
    from relate_models.grpo_trainer import GRPOStageConfig, build_trainer, reward_context
    from relate_models.policy import PolicyConfig
    from relate_models.rewards import build_rewards

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--lora", action="store_true", help="a LoRA adapter (policy.lora's r, alpha, targets)")
    parser.add_argument("--params", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: grpo.torch_threads)")
    args = parser.parse_args(argv)
    cfg = load_config(GRPOStageConfig, "grpo", args.params, overrides={"max_steps": args.steps})
    threads = cfg.torch_threads if args.threads is None else args.threads
    if threads:
        torch.set_num_threads(threads)
    policy_cfg = load_config(PolicyConfig, "policy", args.params)
    if args.synthetic:
        model, tokenizer, scorer, rows, history = synthetic_world(policy_cfg)
    else:
        model, tokenizer, scorer, rows, history = pipeline_world(cfg)
    if args.lora and not hasattr(model, "peft_config"):
        from relate_models.lora import wrap

        model = wrap(model, {**policy_cfg.lora, "enabled": True})
    rewards = build_rewards(list(cfg.rewards), reward_context(cfg, scorer, history, eos_token_id=tokenizer.eos_token_id))
    results = {
        "mode": "lora" if args.lora else "full",
        "trl": run(plain_trl, model, tokenizer, rewards, rows, cfg),
        "relate": run(build_trainer, model, tokenizer, rewards, rows, cfg),
    }
    results["overhead_steps"] = results["trl"]["steps_per_s"] / results["relate"]["steps_per_s"] - 1
    results["overhead_tokens"] = results["trl"]["tokens_per_s"] / results["relate"]["tokens_per_s"] - 1
    print(json.dumps(results, indent=2))
    print(f"{results['mode']}: RELATE vs plain TRL: {results['relate']['steps_per_s']:.3f} vs {results['trl']['steps_per_s']:.3f} steps/s, "
          f"{results['relate']['tokens_per_s']:.0f} vs {results['trl']['tokens_per_s']:.0f} tokens/s, "
          f"overhead {100 * results['overhead_steps']:+.1f}% (steps) {100 * results['overhead_tokens']:+.1f}% (tokens); "
          f"time in RELATE's advantages {100 * results['relate']['relate_advantage_share']:.1f}% of its run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
