"""Stage `sft`: warm-start the policy LM on historical search ad texts.

Reads the curated `text_stats` (search placement) and the policy tokenizer: the shared
one (models/tokenizer/) for a scratch model, a pretrained base model's own otherwise;
trains `prompt -> ad text` (prompts in policy.prompt_format; with policy.lora only a LoRA
adapter trains) with a plain PyTorch loop on a deterministic train/val split; writes
models/sft/ (save_pretrained, safetensors + tokenizer + relate_policy.json; an adapter
artifact names its base model), metrics/sft.json and plots/sft/loss.{csv,png}.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch

from plumbing.atomic import require_finite, write_json
from plumbing.cli import StageContext, run_stage
from plumbing.config import require
from plumbing.errors import DataError
from plumbing.logs import get_logger
from plumbing.paths import METRICS, PLOTS, SFT_DIR, TOKENIZER_DIR

log = get_logger("sft")


@dataclass
class SFTConfig:
    """The `sft:` params section."""

    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    warmup_steps: int
    val_fraction: float
    max_tokens: int  # prompt + completion tokens per example
    max_examples: int  # 0 = every (vertical, keyword, ad text) of the logs
    torch_threads: int  # torch intra-op threads; 0 = torch's default
    seed: int
    log_every: int

    def __post_init__(self) -> None:
        p = "sft"
        for name in ("epochs", "batch_size", "warmup_steps", "log_every"):
            require(getattr(self, name) >= 1, f"{p}.{name}", f"must be >= 1, got {getattr(self, name)}")
        require(0 < self.learning_rate <= 10, f"{p}.learning_rate", f"must be in (0, 10], got {self.learning_rate}")
        require(self.weight_decay >= 0, f"{p}.weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(0 < self.val_fraction < 0.5, f"{p}.val_fraction", f"must be in (0, 0.5), got {self.val_fraction}")
        require(self.max_tokens >= 16, f"{p}.max_tokens", f"must be >= 16, got {self.max_tokens}")
        require(self.max_examples >= 0, f"{p}.max_examples", f"must be >= 0, got {self.max_examples}")
        require(self.torch_threads >= 0, f"{p}.torch_threads", f"must be >= 0, got {self.torch_threads}")


def main(argv: list[str] | None = None) -> int:
    return run_stage("sft", __doc__, run, argv)


def run(ctx: StageContext) -> None:
    """Train the SFT policy on the logged ad texts up to the run's day."""
    from relate_models import policy

    cfg = ctx.config(SFTConfig)
    policy_cfg = ctx.config(policy.PolicyConfig, "policy")
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    started = time.monotonic()

    tokenizer = policy.policy_tokenizer(policy_cfg, TOKENIZER_DIR)
    corpus = policy.load_search_corpus(ctx.curated.table("text_stats"))
    if cfg.max_examples and len(corpus) > cfg.max_examples:
        corpus = corpus.sample(n=cfg.max_examples, random_state=cfg.seed).sort_index()
    train, val = _split_examples(cfg, tokenizer, corpus, policy_cfg.prompt_format)
    log.info("sft: %d train / %d val examples from %d logged ad texts", len(train), len(val), len(corpus))

    model = policy.build_policy(policy_cfg, tokenizer)
    if torch.cuda.is_available() and policy_cfg.base_model != policy.SCRATCH:  # the scratch policy stays on the CPU
        model = model.cuda()
    log.info("policy %s: %d parameters", policy_cfg.base_model, policy.n_parameters(model))
    initial_val = policy.mean_loss(model, val, tokenizer.pad_token_id, cfg.batch_size * 2)
    curve = policy.fit_sft(
        model, tokenizer, train, val,
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps, seed=cfg.seed, log=log.info, log_every=cfg.log_every,
    )
    prompts = [policy.format_prompt(tokenizer, policy.prompt_text(v, k), policy_cfg.prompt_format)
               for v, k in corpus[["vertical", "keyword"]].head(3).values]
    for s in policy.generate(model, tokenizer, prompts, n=1, temperature=0.0):
        log.info("sample: %s", s[0])
    best = min(curve, key=lambda r: r["val_loss"])
    metrics = {
        "n_train": len(train),
        "n_val": len(val),
        "parameters": policy.n_parameters(model),
        "initial_val_loss": initial_val,
        "train_loss": curve[-1]["train_loss"],
        "val_loss": best["val_loss"],
        "best_epoch": best["epoch"],
        "val_perplexity": float(torch.exp(torch.tensor(best["val_loss"]))),
        "seconds": round(time.monotonic() - started, 1),
    }
    require_finite("sft", "metrics", metrics)  # a diverged run replaces neither the model nor the metrics
    policy.save_policy(model, tokenizer, SFT_DIR, meta=policy.policy_meta(policy_cfg))
    write_json(METRICS / "sft.json", metrics)
    policy.write_curves(curve, PLOTS / "sft" / "loss.csv", PLOTS / "sft" / "loss.png", "epoch",
                        ["train_loss", "val_loss"], "SFT loss")
    log.info("sft done: val loss %.4f (from %.4f) in %.1fs", metrics["val_loss"], initial_val, metrics["seconds"])


def _split_examples(cfg: SFTConfig, tokenizer, corpus, prompt_format: str) -> tuple[list, list]:
    """Encoded (train, val) examples; the split is a stable hash of each row, not a draw."""
    from relate_models import policy

    rows = list(zip(corpus["vertical"], corpus["keyword"], corpus["ad_text"]))
    is_val = [policy.stable_fraction(v, k, t) < cfg.val_fraction for v, k, t in rows]
    prompts = {(v, k): policy.format_prompt(tokenizer, policy.prompt_text(v, k), prompt_format) for v, k, _ in rows}
    examples = [policy.encode_example(tokenizer, prompts[v, k], t, cfg.max_tokens, prompt_format) for v, k, t in rows]
    train = [e for e, val in zip(examples, is_val) if not val]
    val = [e for e, val in zip(examples, is_val) if val]
    if not train or not val:
        raise DataError(f"sft: need both train and val examples, got {len(train)} train / {len(val)} val")
    return train, val


if __name__ == "__main__":
    sys.exit(main())
